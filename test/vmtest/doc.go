// Package vmtest boots the disk-mapper test image in QEMU (TCG, qboot + PVH
// vmlinux + cpio initramfs) with a swtpm TPM, and gives integration tests the
// guest's JSON log lines with host-side timestamps.
//
// The guest writes its JSON lines on ttyS1 (QEMU's stdout pipe here); the
// kernel console goes to console.log. The network is always slirp with
// restrict=on: the guest reaches only the Forwards (to 127.0.0.1), and the
// host reaches the guest's recovery port at VM.RecoveryAddr.
//
// Tests never sleep: they wait for lines (VM.WaitFor) and for QEMU's exit
// (VM.Wait). Every VM has a timeout, and swtpm and QEMU are stopped by PID.
// Tests that boot VMs carry the build tag vmtest (go test -tags vmtest).
package vmtest
