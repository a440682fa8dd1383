# image/image.mk — the test image's targets; the top Makefile includes it
# (`include image/image.mk`). Paths are relative to the repository root.
#
#   make image              kernel + initramfs (real disk-mapper, dm-measure) + measurements.json
#   make image-kernel       only the pinned kernel (build/kernel/vmlinux + modules)
#   make image-verify-unit  systemd-analyze verify of image/systemd/disk-mapper.service
#
# IMAGE_CONFIG_DIR: optional directory copied to /etc/disk-mapper/ in the image.

GO ?= go
IMAGE_OUT := build/image
IMAGE_CONFIG_DIR ?=

.PHONY: image image-kernel image-bins image-verify-unit

image-kernel:
	./image/fetch-kernel.sh

# disk-mapper links libcryptsetup (cgo): mkinitramfs.sh copies its ldd closure.
# dm-measure is static. Both are rebuilt every time; go's cache makes that cheap.
image-bins:
	mkdir -p $(IMAGE_OUT)/bin
	$(GO) build -o $(IMAGE_OUT)/bin/disk-mapper ./cmd/disk-mapper
	CGO_ENABLED=0 $(GO) build -o $(IMAGE_OUT)/bin/dm-measure ./cmd/dm-measure

image: image-kernel image-bins
	./image/mkinitramfs.sh -o $(IMAGE_OUT)/initrd.cpio -m $(IMAGE_OUT)/bin/dm-measure \
		$(if $(IMAGE_CONFIG_DIR),-c $(IMAGE_CONFIG_DIR)) $(IMAGE_OUT)/bin/disk-mapper

image-verify-unit:
	./image/verify-unit.sh
