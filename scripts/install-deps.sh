#!/usr/bin/env bash
# Install everything the agent, the lab and the tests need on a Debian/Ubuntu machine (as root).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  util-linux mount e2fsprogs dosfstools fdisk parted ntfs-3g   # disks, loop devices, resource disk
  passwd sudo openssh-client openssh-server openssl           # provisioning: users, sudoers, ssh keys, hashes
  iproute2 iptables nftables isc-dhcp-client procps psmisc    # network, firewall, processes
  python3-venv
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -x scripts/vm/install-host-deps.sh ]; then
  scripts/vm/install-host-deps.sh
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import guestagent, cryptography, asn1crypto, psutil, pytest, pytest_timeout, xdist' 2>/dev/null \
   || [ "$("$PY" -c 'import guestagent,os;print(os.path.dirname(guestagent.__file__))' 2>/dev/null)" != "$PWD/guestagent" ]; then
  echo "== pip: installing guestagent (editable) with test extras"
  "$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
fi
