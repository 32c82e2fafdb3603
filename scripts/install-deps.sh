#!/usr/bin/env bash
# Install everything the agent, the lab and the tests need on a Debian/Ubuntu machine (as root).
# Idempotent: a second run only checks.
#
# The agent's libraries are the distribution's own packages (python3-requests, -lxml, -pyroute2,
# -psutil, -cryptography, -asn1crypto: the versions the .deb depends on), so the tests run on exactly
# what a Debian 12 VM has. The test tools (pytest, ruff...) go into a project venv, .venv, made from
# /usr/bin/python3 with --system-site-packages: a stock Debian 12 refuses `pip install` into the
# system interpreter (PEP 668). Print the venv's interpreter: `scripts/install-deps.sh --python`.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  util-linux mount e2fsprogs dosfstools fdisk parted ntfs-3g   # disks, loop devices, resource disk
  passwd sudo openssh-client openssh-server openssl           # provisioning: users, sudoers, ssh keys, hashes
  iproute2 iptables nftables isc-dhcp-client procps psmisc    # network, firewall, processes
  python3 python3-venv python3-pip                            # the system interpreter and its venv
  python3-requests python3-lxml python3-pyroute2 python3-psutil python3-cryptography python3-asn1crypto
  lintian                                                     # checks the .deb scripts/build-deb makes
)

quiet=0
[ "${1:-}" = "--python" ] && quiet=1
say() { [ $quiet = 1 ] && echo "$*" >&2 || echo "$*"; }

apt_get() {  # waits for another apt/dpkg (unattended-upgrades at boot) instead of failing on its lock
  local waited=0
  while ! apt-get -o DPkg::Lock::Timeout=600 "$@"; do
    waited=$((waited + 1))
    [ $waited -lt 3 ] || return 1
    say "== apt: retrying in 10 s (another package manager may hold the lock)"
    sleep 10
  done
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "== apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt_get update -qq >&2
  apt_get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -x scripts/vm/install-host-deps.sh ]; then
  scripts/vm/install-host-deps.sh >&2
fi

VENV=${GUESTAGENT_VENV:-$PWD/.venv}
PY=$VENV/bin/python
if [ ! -x "$PY" ] || ! "$PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null; then
  say "== venv: $VENV (from /usr/bin/python3, with the system's site packages)"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
if ! "$PY" -c 'import guestagent, requests, lxml, pyroute2, psutil, cryptography, asn1crypto, pytest, pytest_timeout, xdist' 2>/dev/null \
   || [ "$("$PY" -c 'import guestagent,os;print(os.path.dirname(guestagent.__file__))' 2>/dev/null)" != "$PWD/guestagent" ]; then
  say "== pip (venv): guestagent (editable) with its test extras"
  "$PY" -m pip install -q --disable-pip-version-check -e '.[test]' >&2
fi
[ $quiet = 1 ] && echo "$PY"
exit 0
