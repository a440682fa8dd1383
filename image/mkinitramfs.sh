#!/usr/bin/env bash
# mkinitramfs.sh — builds the test image's uncompressed cpio initramfs
# (uncompressed: gzip unpacking costs ~0.45 s per boot under TCG).
#
#   image/mkinitramfs.sh -m DM_MEASURE [-o OUT.cpio] [-k KERNEL_DIR] [-c CONFIG_DIR] [-e ENV_FILE] [-p 'PARAMS'] DISK_MAPPER
#
#   -m  dm-measure binary (required: /init runs the daemon through it)
#   -o  output (default build/image/initrd.cpio); beside it: measurements.json
#       and the image tree OUT-root/ (dm-measure expected -root computes the
#       measurements of other command lines from it)
#   -k  output dir of fetch-kernel.sh (default build/kernel)
#   -c  directory copied to /etc/disk-mapper/ (join CA PEM, …)
#   -e  file installed as /etc/default/disk-mapper (the unit's EnvironmentFile)
#   -p  the kernel command line of a genuine boot (console=…, dm.<flag>=<value> …;
#       test actions aside): measurements.json is the expected PCRs of a boot with it
#
# Contents: busybox-static + applet symlinks, /init (image/init), the module
# closure of the list below with a busybox-generated modules.dep, e2fsprogs'
# mke2fs (busybox's picks 1 KiB blocks that ext4 on 4 KiB-sector LUKS
# refuses), disk-mapper and dm-measure, the ldd closure of every dynamic
# binary PLUS libgcc_s.so.1 (glibc dlopens it for pthread_exit; ldd does not
# list it, and cryptsetup's argon2 threads abort without it).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/build/image/initrd.cpio
kdir=$root/build/kernel
config_dir=
env_file=
dm_measure=
params=
while getopts "o:k:c:e:m:p:" opt; do
	case $opt in
	o) out=$OPTARG ;;
	k) kdir=$OPTARG ;;
	c) config_dir=$OPTARG ;;
	e) env_file=$OPTARG ;;
	m) dm_measure=$OPTARG ;;
	p) params=$OPTARG ;;
	*) sed -n '4,17p' "$0" >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
disk_mapper=${1:?usage: mkinitramfs.sh -m DM_MEASURE [-o OUT] [-k KERNEL_DIR] [-c CONFIG_DIR] [-e ENV_FILE] [-p PARAMS] DISK_MAPPER}

# The staging step cd's away: make every path absolute first.
out=$(realpath -m "$out"); kdir=$(realpath -m "$kdir"); disk_mapper=$(realpath -m "$disk_mapper")
[[ -n $config_dir ]] && config_dir=$(realpath -m "$config_dir")
[[ -n $env_file ]] && env_file=$(realpath -m "$env_file")
[[ -n $dm_measure ]] && dm_measure=$(realpath -m "$dm_measure")

MODULES="virtio_pci virtio_blk virtio_net virtio_rng dm_mod dm_crypt dm_integrity ecb xts authenc aesni_intel crc32c_generic ext4"

log() { echo "mkinitramfs: $*" >&2; }
die() { log "$*"; exit 1; }

[[ -x $disk_mapper ]] || die "disk-mapper binary $disk_mapper is missing or not executable"
[[ -n $dm_measure ]] || die "-m DM_MEASURE is required: /init runs the daemon through it"
[[ -x $dm_measure ]] || die "dm-measure binary $dm_measure is missing or not executable"
[[ -z $config_dir || -d $config_dir ]] || die "config dir $config_dir does not exist"
[[ -z $env_file || -f $env_file ]] || die "environment file $env_file does not exist"
release=$(cat "$kdir/release" 2>/dev/null) || die "no $kdir/release: run image/fetch-kernel.sh first"
kmods=$kdir/tree/lib/modules/$release
[[ -f $kmods/modules.dep ]] || die "no $kmods/modules.dep: run image/fetch-kernel.sh first"
busybox=$(command -v busybox) || die "busybox-static is not installed"
if ldd "$busybox" >/dev/null 2>&1; then die "$busybox is dynamic: install busybox-static"; fi

mkdir -p "$(dirname "$out")"
stage=$(mktemp -d "$(dirname "$out")/.stage.XXXXXX")
trap '[[ -d $stage ]] && rm -rf "$stage"' EXIT
cd "$stage"
mkdir -p bin sbin usr/bin usr/sbin etc/disk-mapper proc sys dev run tmp mnt/state lib/modules

# busybox and its applets (symlinks; real binaries copied later win).
cp "$busybox" bin/busybox
for applet in $(bin/busybox --list-full); do
	[[ -e $applet || -L $applet ]] || ln -s /bin/busybox "$applet"
done
install -m 0755 "$root/image/init" init

# Module closure, resolved over modules.dep (which already lists transitive
# dependencies; resolving recursively keeps this correct if it ever does not).
closure=$(awk -v want="$MODULES" '
	function norm(s) { sub(/.*\//, "", s); sub(/\.ko.*$/, "", s); gsub(/-/, "_", s); return s }
	function add(p,    i, n, d) {
		if (p in seen) return
		seen[p] = 1
		n = split(deps[p], d, " ")
		for (i = 1; i <= n; i++) add(d[i])
		order[++count] = p
	}
	{ p = $1; sub(/:$/, "", p); byname[norm(p)] = p; $1 = ""; deps[p] = $0 }
	END {
		n = split(want, w, " ")
		for (i = 1; i <= n; i++) {
			m = w[i]; gsub(/-/, "_", m)
			if (!(m in byname)) { print "MISSING " m; continue }
			add(byname[m])
		}
		for (i = 1; i <= count; i++) print order[i]
	}' "$kmods/modules.dep")
if grep -q '^MISSING' <<<"$closure"; then
	die "modules not in $release (built in or renamed?): $(grep '^MISSING' <<<"$closure" | cut -d' ' -f2 | tr '\n' ' ')"
fi
for m in $closure; do
	mkdir -p "lib/modules/$release/$(dirname "$m")"
	cp "$kmods/$m" "lib/modules/$release/$m"
done
cp "$kmods"/modules.builtin "$kmods"/modules.order "lib/modules/$release/" 2>/dev/null || true
bin/busybox depmod -b "$stage" "$release"
tr ' ' '\n' <<<"$MODULES" >etc/modules

# Real programs: the daemon, the measurer, e2fsprogs' mke2fs.
install -m 0755 "$disk_mapper" bin/disk-mapper
install -m 0755 "$dm_measure" bin/dm-measure
mke2fs=$(command -v mke2fs) || die "e2fsprogs mke2fs is not installed"
rm -f sbin/mke2fs sbin/mkfs.ext2 sbin/mkfs.ext4
install -m 0755 "$mke2fs" sbin/mke2fs
ln -s mke2fs sbin/mkfs.ext4
[[ -f /etc/mke2fs.conf ]] && cp /etc/mke2fs.conf etc/mke2fs.conf

# Shared-library closure of every dynamic binary, at the paths ldd reports
# (the ELF interpreter is /lib64/ld-linux-x86-64.so.2), plus libgcc_s.
copy_lib() {
	local lib=$1
	[[ -e ${lib#/} ]] && return 0
	mkdir -p "$(dirname "${lib#/}")"
	cp -L "$lib" "${lib#/}"
}
for b in bin/disk-mapper bin/dm-measure sbin/mke2fs; do
	[[ -e $b ]] || continue
	ldd "$b" >/dev/null 2>&1 || continue # static
	while read -r lib; do
		copy_lib "$lib"
	done < <(ldd "$b" | awk '/=> \// { print $3 } /^\t\/.*ld-linux/ { print $1 }')
done
# awk reads to the end (no early exit): under pipefail an early exit would
# SIGPIPE ldconfig and fail the build now and then.
libgcc=$(ldconfig -p | awk '/libgcc_s.so.1 .*x86-64/ && !found { found = $NF } END { print found }')
[[ -n $libgcc ]] || die "libgcc_s.so.1 not found (install libgcc-s1)"
copy_lib "$libgcc"
[[ -d lib64 ]] || { mkdir -p lib64 && cp -L /lib64/ld-linux-x86-64.so.2 lib64/; }

# Optional configuration for the daemon.
if [[ -n $config_dir ]]; then
	cp -r "$config_dir"/. etc/disk-mapper/
fi
if [[ -n $env_file ]]; then
	mkdir -p etc/default
	install -m 0644 "$env_file" etc/default/disk-mapper
fi

# The cpio archive (newc), in sorted order, owned by root.
find . -mindepth 1 ! -path . | LC_ALL=C sort | sed 's|^\./||' |
	bin/busybox cpio -o -H newc -R 0:0 --ignore-devno --renumber-inodes >"$out.tmp" 2>/dev/null
mv "$out.tmp" "$out"

# Expected PCR values of a genuine boot (-p) of exactly this tree, which is
# kept beside the cpio for other command lines.
"$root/image/measurements.sh" "$dm_measure" "$stage" "$params" >"$(dirname "$out")/measurements.json.tmp"
mv "$(dirname "$out")/measurements.json.tmp" "$(dirname "$out")/measurements.json"
tree=${out%.cpio}-root
rm -rf "$tree"
cd / && mv "$stage" "$tree"
log "ok: $out ($(du -h "$out" | cut -f1), $(wc -w <<<"$closure") modules), $(dirname "$out")/measurements.json, $tree/"
