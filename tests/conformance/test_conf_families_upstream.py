"""Each family's rendered waagent.conf against upstream 2.15's own file for that family: our
``-show-configuration`` on config/<family>/waagent.conf must print what upstream's conf code prints for
config/<family>/waagent.conf of v2.15.0.1. Upstream's conf code runs from a ``git archive`` of the local
upstream mirror into a temp dir (skipped where the mirror is absent); nothing of it is kept.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from guestagent import conf, conffamilies

REPO = Path(__file__).resolve().parents[2]
MIRROR = Path("/work/.mirror/Azure+WALinuxAgent/repo")
TAG = "v2.15.0.1"
SHOW = """
import sys
from azurelinuxagent.common import conf
for path in sys.argv[1:]:
    provider = conf.ConfigurationProvider()
    conf.load_conf_from_file(path, provider)
    values = conf.get_configuration(provider)
    print("".join("{0} = {1}\\n".format(k, values[k]) for k in sorted(values.keys())), end="\\0")
"""


@pytest.fixture(scope="module")
def upstream_shows(tmp_path_factory) -> dict[str, str]:
    if not (MIRROR / "HEAD").exists():
        pytest.skip(f"upstream mirror not present at {MIRROR}")
    tmp = tmp_path_factory.mktemp("upstream")
    archive = subprocess.run(["git", "-C", str(MIRROR), "archive", TAG, "azurelinuxagent", "config"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "x", "-C", str(tmp)], input=archive, check=True)
    families = list(conffamilies.FAMILIES)
    out = subprocess.run([sys.executable, "-c", SHOW, *(str(tmp / "config" / f / "waagent.conf") for f in families)],
                         cwd=tmp, check=True, capture_output=True, text=True).stdout
    return dict(zip(families, out.split("\0")))


@pytest.mark.parametrize("family", list(conffamilies.FAMILIES))
def test_show_configuration_matches_upstreams_for_the_family(upstream_shows, family):
    config = conf.load(str(REPO / "config" / family / "waagent.conf"), log_now=False)
    assert conf.show_configuration(config) == upstream_shows[family]
