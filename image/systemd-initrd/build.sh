#!/usr/bin/env bash
# build.sh — the systemd test image: a systemd 252 initrd made by dracut 059
# from Debian bookworm packages, inside an mmdebstrap chroot under build/
# (the host's systemd is never touched; dracut collects the chroot's
# binaries, not the host's). Recipe and pitfalls: image/systemd-initrd/README.md.
#
#   image/systemd-initrd/build.sh -d DISK_MAPPER -m DM_MEASURE [-o OUT.cpio]
#       [-e ENV_FILE] [-c CONFIG_DIR] [-x EXTRA_OVERLAY_DIR]
#
#   -d  the real (cgo) disk-mapper: installed as /usr/bin/disk-mapper with
#       its ldd closure (dracut-install)
#   -m  dm-measure (static): /usr/bin/dm-measure
#   -o  output cpio (default build/image-systemd/initrd.cpio); beside it
#       OUT-root/ (the files dm-measure expected reads) and manifest.txt
#   -e  installed as /etc/default/disk-mapper (the unit's EnvironmentFile)
#   -c  copied to /etc/disk-mapper/
#   -x  copied over the overlay last (test variants: crypttab, key socket)
#
# The chroot (build/systemd-initrd/root, ~250 MB) is made once and reused
# while the package list is unchanged; a warm build is one dracut run.
# Same inputs give the same cpio (dracut --reproducible, fixed
# SOURCE_DATE_EPOCH, the overlay's mtimes reset).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/image/systemd-initrd
out=$repo/build/image-systemd/initrd.cpio
disk_mapper= dm_measure= env_file= config_dir= extra=
while getopts "d:m:o:e:c:x:" opt; do
	case $opt in
	d) disk_mapper=$(realpath "$OPTARG") ;;
	m) dm_measure=$(realpath "$OPTARG") ;;
	o) out=$(realpath -m "$OPTARG") ;;
	e) env_file=$(realpath "$OPTARG") ;;
	c) config_dir=$(realpath "$OPTARG") ;;
	x) extra=$(realpath "$OPTARG") ;;
	*) sed -n '8,19p' "$0" >&2; exit 2 ;;
	esac
done
log() { echo "image-systemd: $*" >&2; }
die() { log "$*"; exit 1; }
[[ -x $disk_mapper ]] || die "-d DISK_MAPPER is required (the cgo daemon)"
[[ -x $dm_measure ]] || die "-m DM_MEASURE is required"
((EUID == 0)) || die "must run as root (mmdebstrap, chroot, mount)"
command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (scripts/install-deps.sh)"

kdir=$repo/build/kernel
KREL=$(cat "$kdir/release" 2>/dev/null) || die "no $kdir/release: run image/fetch-kernel.sh (make image-kernel)"
ktree=$kdir/tree
work=$repo/build/systemd-initrd
root=$work/root
PKGS=systemd,udev,dracut-core,dracut-network,cryptsetup-bin,dmsetup,kmod,dbus,iproute2,e2fsprogs
MODULES="virtio_pci virtio_blk virtio_net virtio_rng dm_mod dm_crypt dm_integrity ecb xts authenc aesni_intel crc32c_generic ext4"
# No dracut-systemd (its shell hooks cost ~4 s under TCG), no systemd-pcrphase/tpm2-tss.
DRACUT_MODS="systemd systemd-initrd systemd-journald systemd-udevd systemd-modules-load systemd-tmpfiles systemd-sysctl base fs-lib kernel-modules udev-rules dm crypt systemd-networkd"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

mkdir -p "$work"
stamp="pkgs=$PKGS"
if [[ ! -f $root/.done || $(<"$root/.done") != "$stamp" ]]; then
	log "creating the bookworm chroot in $root (once)"
	rm -rf "$root"
	# No mirror argument: mmdebstrap uses the host's apt sources (the Debian mirror).
	mmdebstrap --quiet --variant=apt --include="$PKGS" bookworm "$root"
	rm -f "$root/etc/dracut.conf.d/11-ifcfg.conf" # pulls in 40network (pgrep): pitfall P6
	mv "$root/usr/lib/udev/hwdb.bin" "$root/usr/lib/udev/hwdb.bin.off" 2>/dev/null || true
	chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' >"$work/manifest.txt"
	printf '%s' "$stamp" >"$root/.done"
fi

# A pruned module tree: MODULES and their dependencies only (otherwise dracut's
# dm and network modules pull in all of drivers/md and drivers/net).
km=$root/kmods/lib/modules/$KREL
if [[ ! -f $km/.done || $(<"$km/.done") != "$MODULES" ]]; then
	rm -rf "$root/kmods" "$root/usr/lib/modules/$KREL"
	mkdir -p "$root/usr/lib/modules" "$km"
	cp -a "$ktree/lib/modules/$KREL" "$root/usr/lib/modules/"
	chroot "$root" depmod "$KREL"
	deps=$(for m in $MODULES; do chroot "$root" modprobe -S "$KREL" --show-depends "$m"; done)
	for f in $(awk '$1 == "insmod" { print $2 }' <<<"$deps" | sort -u); do
		rel=${f#/lib/modules/$KREL/}
		mkdir -p "$km/$(dirname "$rel")"
		cp "$root$f" "$km/$rel"
	done
	cp "$root/usr/lib/modules/$KREL"/modules.{builtin,builtin.modinfo,order} "$km/"
	chroot "$root" depmod -b /kmods "$KREL"
	printf '%s' "$MODULES" >"$km/.done"
fi

# The overlay: the shipped unit byte for byte, the image's units and config.
ov=$root/overlay
rm -rf "$ov"
cp -a "$here/overlay" "$ov"
install -D -m 0644 "$repo/image/systemd/disk-mapper.service" "$ov/etc/systemd/system/disk-mapper.service"
install -D -m 0755 "$dm_measure" "$ov/usr/bin/dm-measure"
if [[ -n $env_file ]]; then install -D -m 0644 "$env_file" "$ov/etc/default/disk-mapper"; fi
if [[ -n $config_dir ]]; then mkdir -p "$ov/etc/disk-mapper" && cp -r "$config_dir"/. "$ov/etc/disk-mapper/"; fi
if [[ -n $extra ]]; then cp -a "$extra"/. "$ov/"; fi
# The [Install] sections, as links (systemctl enable is not run in the chroot).
wants() { mkdir -p "$ov/etc/systemd/system/$1.wants" && ln -sf "../$2" "$ov/etc/systemd/system/$1.wants/$2"; }
wants initrd.target disk-mapper.service
for u in "$ov"/etc/systemd/system/*.service "$ov"/etc/systemd/system/*.socket; do
	[[ -f $u ]] || continue
	while read -r target; do
		wants "$target" "$(basename "$u")"
	done < <(awk -F= '$1 == "WantedBy" { n = split($2, w, " "); for (i = 1; i <= n; i++) print w[i] }' "$u")
done
find "$ov" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
# The daemon at its final path, so dracut-install copies its ldd closure.
install -D -m 0755 "$disk_mapper" "$root/usr/bin/disk-mapper"
touch -d "@$SOURCE_DATE_EPOCH" "$root/usr/bin/disk-mapper"

mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
trap 'umount "$root/proc"' EXIT
chroot "$root" env SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" dracut --force --quiet --no-hostonly --no-hostonly-cmdline \
	--no-compress --reproducible --no-early-microcode --kver "$KREL" --kmoddir "/kmods/lib/modules/$KREL" \
	-m "$DRACUT_MODS" --drivers "$MODULES" --include /overlay / \
	-I "/usr/bin/disk-mapper /usr/sbin/mke2fs /sbin/mkfs.ext4 /etc/mke2fs.conf /usr/bin/systemctl /usr/bin/journalctl /usr/bin/sync" \
	/initrd.cpio 2> >(awk '!/firmware_class\/parameters\/path/' >&2)
mkdir -p "$(dirname "$out")"
mv "$root/initrd.cpio" "$out"

# The image tree, for dm-measure expected (the config the daemon's PCR 12
# events cover) and for inspection.
tree=${out%.cpio}-root
rm -rf "$tree" && mkdir -p "$tree"
(cd "$tree" && busybox cpio -id 2>/dev/null <"$out")
cp "$work/manifest.txt" "$(dirname "$out")/manifest.txt"
log "ok: $out ($(du -h "$out" | cut -f1)), sha256 $(sha256sum "$out" | cut -d' ' -f1)"
