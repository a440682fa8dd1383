# image/image.mk — the test image's targets; the top Makefile includes it
# (`include image/image.mk`). Paths are relative to the repository root.
#
#   make image              kernel + initramfs (real disk-mapper, dm-measure) + measurements.json + initrd-root/
#   make image-kernel       only the pinned kernel (build/kernel/vmlinux + modules)
#   make image-verify-unit  systemd-analyze verify of image/systemd/disk-mapper.service
#
# IMAGE_CONFIG_DIR: optional directory copied to /etc/disk-mapper/ in the image.
# IMAGE_ENV_FILE:   optional file installed as /etc/default/disk-mapper.
# IMAGE_PARAMS:     the kernel command line of a genuine boot (console=…,
#                   dm.<flag>=<value> …); measurements.json is for it.
#                   Any other command line: dm-measure expected -root
#                   build/image/initrd-root -cmdline '…' (docs/pcr-map.md).

GO ?= go
IMAGE_OUT := build/image
IMAGE_CONFIG_DIR ?=
IMAGE_ENV_FILE ?=
IMAGE_PARAMS ?=

.PHONY: image image-kernel image-bins image-verify-unit

image-kernel:
	./image/fetch-kernel.sh

# disk-mapper links libcryptsetup (cgo): mkinitramfs.sh copies its ldd closure.
# dm-measure is static. Both are rebuilt every time; go's cache makes that cheap.
# GO_IMAGE_FLAGS (test/vmtest.ImageBuildFlags too): stripped; dm-measure
# hashes the daemon at every boot, so its size is boot time. Link flags only,
# so the tools built beside the image share the compiled packages.
GO_IMAGE_FLAGS := -ldflags='-s -w'
image-bins:
	mkdir -p $(IMAGE_OUT)/bin
	$(GO) build $(GO_IMAGE_FLAGS) -o $(IMAGE_OUT)/bin/disk-mapper ./cmd/disk-mapper
	CGO_ENABLED=0 $(GO) build $(GO_IMAGE_FLAGS) -o $(IMAGE_OUT)/bin/dm-measure ./cmd/dm-measure

image: image-kernel image-bins
	./image/mkinitramfs.sh -o $(IMAGE_OUT)/initrd.cpio -m $(IMAGE_OUT)/bin/dm-measure \
		$(if $(IMAGE_CONFIG_DIR),-c $(IMAGE_CONFIG_DIR)) $(if $(IMAGE_ENV_FILE),-e $(IMAGE_ENV_FILE)) \
		-p '$(IMAGE_PARAMS)' $(IMAGE_OUT)/bin/disk-mapper

image-verify-unit:
	./image/verify-unit.sh

# The systemd test image (image/systemd-initrd/README.md): a systemd 252
# initrd from bookworm packages (dracut in an mmdebstrap chroot cached in
# build/systemd-initrd/), the shipped unit unchanged, its configuration in
# IMAGE_ENV_FILE (default image/systemd-initrd/disk-mapper.default).
IMAGE_SYSTEMD_OUT := build/image-systemd
IMAGE_SYSTEMD_ENV ?= $(or $(IMAGE_ENV_FILE),image/systemd-initrd/disk-mapper.default)

.PHONY: image-systemd image-systemd-check

image-systemd: image-kernel image-bins
	./image/systemd-initrd/build.sh -o $(IMAGE_SYSTEMD_OUT)/initrd.cpio \
		-d $(IMAGE_OUT)/bin/disk-mapper -m $(IMAGE_OUT)/bin/dm-measure -e $(IMAGE_SYSTEMD_ENV) \
		$(if $(IMAGE_CONFIG_DIR),-c $(IMAGE_CONFIG_DIR))

# Builds the systemd image twice from the same inputs and compares the cpios.
image-systemd-check: image-kernel image-bins
	./image/systemd-initrd/check-reproducible.sh $(IMAGE_OUT)/bin/disk-mapper $(IMAGE_OUT)/bin/dm-measure $(IMAGE_SYSTEMD_ENV)
