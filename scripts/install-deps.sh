#!/usr/bin/env bash
# Installs what building and testing disk-mapper needs on Debian 12. Idempotent.
set -euo pipefail
pkgs=(protobuf-compiler libcryptsetup-dev cryptsetup-bin pkg-config gcc swtpm swtpm-tools
      qemu-system-x86 busybox-static e2fsprogs mmdebstrap)
missing=()
for p in "${pkgs[@]}"; do
	[[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "installing: ${missing[*]}"
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
export PATH=/usr/local/go/bin:$PATH
go mod download
