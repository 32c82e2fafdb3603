"""``guestagent``: the modern tooling beside the faithful ``waagent`` CLI."""

from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

from guestagent.version import AGENT_VERSION, GUESTAGENT_VERSION

COMMANDS = {
    "fabric": ("guestagent.fabric.cli", "Run the fabric emulator (WireServer, HostGAPlugin, IMDS) or show what it saw"),
    "lab": ("guestagent.lab.main", "Run the real daemon against the fabric in a throwaway sandbox (root)"),
    "ext-test": ("guestagent.kit.main", "Run an extension handler through its whole lifecycle in a throwaway sandbox (root)"),
    "doctor": ("guestagent.doctor.main", "Diagnose this VM like support would (read-only; --json for tools)"),
}

USAGE = "usage: guestagent {" + ",".join(COMMANDS) + ",version} [args...]\n\n" + "\n".join(
    f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name in ("version", "--version"):
        print(f"guestagent {GUESTAGENT_VERSION} (WALinuxAgent {AGENT_VERSION} compatible)")
        return 0
    if name not in COMMANDS:
        print(f"guestagent: unknown command {name!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
