#!/usr/bin/env bash
# Install the host packages the VM tier (tests/vm) needs on a Debian/Ubuntu machine, as root.
# Idempotent: a second run only checks. Called by .ci/run and by scripts/install-deps.sh.
#   qemu-system-x86 qemu-utils   the emulator (TCG) and qemu-img (copy-on-write overlays)
#   debootstrap                  builds the Debian bookworm guest image
#   e2fsprogs                    mkfs.ext4 -d packs the guest tree without a loop device
#   genisoimage                  the provisioning DVD (UDF + ISO9660) holding ovf-env.xml
#   ntfs-3g fdisk                the NTFS resource disk (mkfs.ntfs, ntfscp, sfdisk)
#   socat                        guestfwd relay: one socat per guest TCP connection to the fabric
#   openssh-client               the scenarios log in to the provisioned user with a real ssh
set -euo pipefail

PKGS=(qemu-system-x86 qemu-utils debootstrap e2fsprogs genisoimage ntfs-3g fdisk socat openssh-client)

missing=()
for pkg in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "ci-vm-deps: need root to install ${missing[*]}" >&2; exit 1; }
  echo "== apt (vm tier): installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v qemu-system-x86_64 >/dev/null || { echo "ci-vm-deps: qemu-system-x86_64 missing after install" >&2; exit 1; }
