"""The pre-provisioned VM figure: claim → Ready with the customer's provisioning, in the lab.

``sudo python3 bench/pps_claim.py [--runs N] [--scenario pps-running,pps-savable]``: each run is one
``guestagent lab`` session (fresh sandbox, fabric, real daemon): the VM reports Ready in the pool, the
lab claims it (the network move in the sandbox, then IMDS reprovisiondata answers), and the figure is
the time from the start of the claim to the fabric's Ready health report after it. Median, min, max.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guestagent.lab.main import Lab


def measure(scenario: str, runs: int) -> list[float]:
    out = []
    for i in range(runs):
        lab = Lab(scenario, until="ready", timeout=120, out=io.StringIO())
        code = lab.run()
        if code != 0 or lab.claim_to_ready is None:
            raise SystemExit(f"{scenario} run {i + 1} failed: {lab.result}")
        out.append(lab.claim_to_ready)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--scenario", default="pps-running,pps-savable")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root (the lab's sandbox)", file=sys.stderr)
        return 2
    for scenario in args.scenario.split(","):
        values = measure(scenario, args.runs)
        print(f"{scenario}: claim -> Ready median {statistics.median(values):.2f} s, min {min(values):.2f}, "
              f"max {max(values):.2f} ({args.runs} runs: {', '.join(f'{v:.2f}' for v in values)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
