#!/usr/bin/env bash
# Issue 12, item 5: the package on a stock Debian kernel with real PPTP
# stacks. Builds a Debian 12 root file system (mmdebstrap) with the
# distribution kernel, pptpd, pptp-linux, ppp, nftables and the .deb given
# (default: the one `make deb` wrote here), boots it under qemu (KVM when
# /dev/kvm works, else TCG) with scripts/vm/guest-test.sh as PID 1, and
# passes when the guest prints "PPTP-VM-TEST: PASS": pptpd outside and
# behind the NAT, pptp-linux clients with one call each and two calls on
# one control connection, each pinging through its tunnel, through the
# packaged daemon with the nft queue backend.
#
#   sudo scripts/vm-test.sh [pptp-alg_<version>_<arch>.deb]
#
# Needs root, network access to the Debian mirror, and
# qemu-system-x86 mmdebstrap e2fsprogs (installed when missing).
# VM_DIR (default /var/tmp/pptp-alg-vm) keeps the root file system between
# runs; delete it to rebuild from the mirror.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "vm-test: needs root" >&2; exit 1; }

deb=${1:-pptp-alg_$(dpkg-parsechangelog -S Version)_$(dpkg-architecture -qDEB_HOST_ARCH).deb}
[ -f "$deb" ] || { echo "vm-test: no $deb (run make deb)" >&2; exit 1; }
deb=$(realpath "$deb")
vm=${VM_DIR:-/var/tmp/pptp-alg-vm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

export DEBIAN_FRONTEND=noninteractive
for p in qemu-system-x86 mmdebstrap e2fsprogs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        apt-get install -y -qq --no-install-recommends qemu-system-x86 mmdebstrap e2fsprogs >/dev/null
done

mkdir -p "$vm"
if [ ! -x "$vm/rootfs/usr/sbin/pptpd" ]; then
    echo "== vm-test: building the root file system from $mirror"
    rm -rf "$vm/rootfs"
    mmdebstrap --variant=minbase --mode=root \
        --include=linux-image-amd64,ppp,pptpd,pptp-linux,nftables,iproute2,iputils-ping,procps,kmod,libnftnl11,libmnl0 \
        bookworm "$vm/rootfs" "$mirror"
fi
echo "== vm-test: installing $(basename "$deb")"
cp "$deb" "$vm/rootfs/tmp/pptp-alg.deb"
chroot "$vm/rootfs" sh -c 'dpkg -P pptp-alg >/dev/null 2>&1; dpkg -i /tmp/pptp-alg.deb' >/dev/null
install -m 0755 scripts/vm/guest-test.sh "$vm/rootfs/pptp-vm-test"

rm -f "$vm/root.img"
mkfs.ext4 -q -L root -d "$vm/rootfs" "$vm/root.img" 2G
# TCG unless VM_KVM=1: on the build machine /dev/kvm creates VMs but a
# guest under it hangs after the BIOS (nested virtualisation), and
# `-cpu host` fails on MSR 0x10a.
accel=(-machine accel=tcg -cpu max)
[ "${VM_KVM:-0}" != 1 ] || accel=(-enable-kvm)
echo "== vm-test: booting (${accel[*]})"
start=$(date +%s)
timeout "${VM_TIMEOUT:-600}" qemu-system-x86_64 "${accel[@]}" -m 1024 -smp 2 -nographic -no-reboot -nic none \
    -kernel "$(ls "$vm"/rootfs/boot/vmlinuz-* | tail -n1)" \
    -initrd "$(ls "$vm"/rootfs/boot/initrd.img-* | tail -n1)" \
    -drive "file=$vm/root.img,format=raw,if=virtio" \
    -append "root=/dev/vda rw console=ttyS0 init=/pptp-vm-test panic=-1 loglevel=4" |
    tee "$vm/console.log" | grep -v '^\[' || true
echo "== vm-test: $(($(date +%s) - start)) s in the VM"
grep -q 'PPTP-VM-TEST: PASS' "$vm/console.log"
