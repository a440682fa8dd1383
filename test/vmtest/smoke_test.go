//go:build vmtest

package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diskmapper/disk-mapper/internal/constants"
)

// The smoke tests boot the real image build (fetch-kernel.sh +
// mkinitramfs.sh) with the placeholder daemon from testdata/placeholder, so
// they prove the image and the harness without the real daemon.

var (
	smokeOnce sync.Once
	smokeImg  Image
	smokeErr  error
)

// smokeImage builds the placeholder image once per test binary, with
// cmd/dm-measure (the guest's PCRs 11 and 12 must then be what
// Image.Expected computes for each boot's command line).
func smokeImage(t *testing.T) Image {
	t.Helper()
	smokeOnce.Do(func() {
		root, err := RepoRoot()
		if err != nil {
			smokeErr = err
			return
		}
		dir := filepath.Join(root, "build", "vmtest", "smoke")
		if smokeErr = os.MkdirAll(dir, 0o755); smokeErr != nil {
			return
		}
		start := time.Now()
		if _, smokeErr = FetchKernel(t); smokeErr != nil {
			return
		}
		spec := ImageSpec{DiskMapper: filepath.Join(dir, "placeholder"), Out: filepath.Join(dir, "initrd.cpio")}
		if smokeErr = BuildGo(t, "./test/vmtest/testdata/placeholder", spec.DiskMapper); smokeErr != nil {
			return
		}
		spec.DMMeasure = filepath.Join(dir, "dm-measure")
		if smokeErr = BuildGo(t, "./cmd/dm-measure", spec.DMMeasure, "CGO_ENABLED=0"); smokeErr != nil {
			return
		}
		smokeImg, smokeErr = BuildInitrd(t, spec)
		t.Logf("smoke image built in %v", time.Since(start).Round(time.Millisecond))
	})
	if smokeErr != nil {
		t.Fatalf("building the smoke image: %v", smokeErr)
	}
	return smokeImg
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// waitInitDone waits for the init's last line, logs the boot's timings and
// checks that QEMU then exits cleanly (the init powers off).
func waitInitDone(ctx context.Context, t *testing.T, vm *VM) Line {
	t.Helper()
	done, err := vm.WaitFor(ctx, InitDone)
	if err != nil {
		t.Fatalf("no init_done: %v", err)
	}
	if err := vm.Wait(); err != nil {
		t.Fatalf("QEMU exit after init_done: %v", err)
	}
	lines := vm.Lines()
	if testing.Verbose() {
		for _, l := range lines {
			t.Log(l.String())
		}
	}
	t.Logf("timings: first line %v, init_done %v, QEMU exited %v",
		lines[0].At.Round(time.Millisecond), done.At.Round(time.Millisecond), vm.ExitedAfter().Round(time.Millisecond))
	return done
}

func mustLine(ctx context.Context, t *testing.T, vm *VM, p Predicate, what string) Line {
	t.Helper()
	l, err := vm.WaitFor(ctx, p)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return l
}

func TestSmokeBootTwiceKeepsDiskAndTPM(t *testing.T) {
	img := smokeImage(t)
	ctx := testContext(t)
	dir := t.TempDir()
	disk, tpmDir := filepath.Join(dir, "state.img"), filepath.Join(dir, "tpm")

	// The provisioning hook writes NV before the first boot; it must survive both boots.
	nvData := []byte("provisioned-before-boot")
	if err := ProvisionTPM(ctx, t, tpmDir, func(ctx context.Context, socket string) error {
		return nvDefineWrite(ctx, socket, nvData)
	}); err != nil {
		t.Fatalf("provision: %v", err)
	}

	content := fmt.Sprintf("boot1-%d", time.Now().UnixNano())

	for boot, tc := range []struct {
		cmdline       []string
		wantFormatted string
	}{
		{[]string{"dm.cloud-provider=qemu", "dm.write=dir/hello.txt:" + content}, "true"},
		{[]string{"dm.cloud-provider=qemu", "dm.read=dir/hello.txt"}, "false"},
	} {
		vm, err := Boot(ctx, t, Config{Disk: disk, DiskSize: 64 << 20, TPMStateDir: tpmDir, Initrd: img.Initrd, Cmdline: tc.cmdline})
		if err != nil {
			t.Fatalf("boot %d: %v", boot+1, err)
		}
		ready := mustLine(ctx, t, vm, Event("init_ready"), "init_ready")
		if ready.Str("tpm") != "true" {
			t.Errorf("boot %d: guest has no /dev/tpmrm0: %s", boot+1, ready.Raw)
		}
		exec := mustLine(ctx, t, vm, Event("init_exec"), "init_exec")
		if !strings.Contains(exec.Str("args"), "--cloud-provider=qemu") {
			t.Errorf("boot %d: dm.cloud-provider not mapped to a flag: %s", boot+1, exec.Raw)
		}
		tpm := mustLine(ctx, t, vm, Event("tpm"), "placeholder TPM line")
		if got := tpm.Str("pcr15"); got != strings.Repeat("0", 64) {
			t.Errorf("boot %d: PCR 15 = %s, want zero while asking for keys", boot+1, got)
		}
		// The guest's init + dm-measure and the host's computation agree,
		// for this boot's command line.
		want, err := img.Expected(tc.cmdline)
		if err != nil {
			t.Fatal(err)
		}
		for field, pcr := range map[string]uint32{"pcr11": constants.PCRImage, "pcr12": constants.PCRConfig} {
			if got := tpm.Str(field); got != fmt.Sprintf("%x", want[pcr]) {
				t.Errorf("boot %d: PCR %d = %s, want %x", boot+1, pcr, got, want[pcr])
			}
		}
		mapped := mustLine(ctx, t, vm, Event("mapped"), "placeholder mapped")
		if mapped.Str("formatted") != tc.wantFormatted {
			t.Errorf("boot %d: formatted = %s, want %s", boot+1, mapped.Str("formatted"), tc.wantFormatted)
		}
		if boot == 1 {
			file := mustLine(ctx, t, vm, Event("file"), "file read back")
			if file.Str("name") != "dir/hello.txt" || file.Str("content") != content {
				t.Errorf("read back %s, want content %q", file.Raw, content)
			}
		}
		done := waitInitDone(ctx, t, vm)
		if done.Str("status") != "0" || done.Str("actions_ok") != "true" {
			t.Errorf("boot %d: %s", boot+1, done.Raw)
		}
	}

	got, err := nvRead(ctx, t, tpmDir)
	if err != nil || !bytes.Equal(got, nvData) {
		t.Fatalf("NV after two boots = %q (%v), want %q", got, err, nvData)
	}
}

func TestSmokeDaemonFailureSkipsActions(t *testing.T) {
	img := smokeImage(t)
	ctx := testContext(t)
	dir := t.TempDir()
	vm, err := Boot(ctx, t, Config{
		Disk: filepath.Join(dir, "state.img"), DiskSize: 64 << 20, TPMStateDir: filepath.Join(dir, "tpm"),
		Initrd: img.Initrd, Cmdline: []string{"dm.exit=7", "dm.write=x:y"},
	})
	if err != nil {
		t.Fatal(err)
	}
	done := waitInitDone(ctx, t, vm)
	if done.Str("status") != "7" || done.Str("actions_ok") != "false" {
		t.Errorf("init_done = %s, want status 7 and no actions", done.Raw)
	}
	for _, l := range vm.Lines() {
		if l.Event() == "mapped" || l.Event() == "init_write_failed" {
			t.Errorf("line after a failed daemon: %s", l.Raw)
		}
	}
}

func TestSmokeNetworkOnlyReachesForwards(t *testing.T) {
	img := smokeImage(t)
	ctx := testContext(t)
	dir := t.TempDir()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the host, path %s", r.URL.Path)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	port := l.Addr().(*net.TCPAddr).Port

	vm, err := Boot(ctx, t, Config{
		Disk: filepath.Join(dir, "state.img"), DiskSize: 64 << 20, TPMStateDir: filepath.Join(dir, "tpm"),
		Initrd:   img.Initrd,
		Forwards: []Forward{{Guest: "10.0.2.100:8080", HostPort: port}},
		Cmdline: []string{
			"dm.get=http://10.0.2.100:8080/self",                // the forward: reachable
			fmt.Sprintf("dm.get=http://10.0.2.2:%d/self", port), // the host directly: restrict=on blocks it
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	fwd := mustLine(ctx, t, vm, Event("http_get"), "first http_get")
	if fwd.Str("ok") != "true" || fwd.Str("body") != "hello from the host, path /self" {
		t.Errorf("through the forward: %s", fwd.Raw)
	}
	direct, err := vm.WaitForFrom(ctx, fwd.Index+1, Event("http_get"))
	if err != nil {
		t.Fatal(err)
	}
	if direct.Str("ok") != "false" {
		t.Errorf("the guest reached the host outside the forwards: %s", direct.Raw)
	}
	waitInitDone(ctx, t, vm)
}

func TestSmokeKillIsPowerLoss(t *testing.T) {
	img := smokeImage(t)
	ctx := testContext(t)
	dir := t.TempDir()
	vm, err := Boot(ctx, t, Config{
		Disk: filepath.Join(dir, "state.img"), DiskSize: 64 << 20, TPMStateDir: filepath.Join(dir, "tpm"),
		Initrd: img.Initrd,
	})
	if err != nil {
		t.Fatal(err)
	}
	mustLine(ctx, t, vm, Event("start"), "daemon start")
	if err := vm.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if err := vm.Wait(); err == nil {
		t.Fatal("Wait after Kill returned nil, want the kill signal")
	}
	if _, err := vm.WaitFor(ctx, InitDone); !errors.Is(err, ErrExited) {
		t.Fatalf("WaitFor after Kill = %v, want ErrExited", err)
	}
}

func TestSmokeContextEndStopsVM(t *testing.T) {
	img := smokeImage(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(testContext(t))
	// The guest's network fetch of a forward that never answers keeps the
	// init busy; only the harness can end this VM.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	vm, err := Boot(ctx, t, Config{
		Disk: filepath.Join(dir, "state.img"), DiskSize: 64 << 20, TPMStateDir: filepath.Join(dir, "tpm"),
		Initrd:   img.Initrd,
		Forwards: []Forward{{Guest: "10.0.2.100:8080", HostPort: l.Addr().(*net.TCPAddr).Port}},
		Cmdline:  []string{"dm.get=http://10.0.2.100:8080/never"},
	})
	if err != nil {
		t.Fatal(err)
	}
	mustLine(ctx, t, vm, Event("init_daemon_exit"), "daemon exit")
	cancel()
	_, err = vm.WaitFor(context.Background(), InitDone)
	if !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), "context ended") {
		t.Fatalf("WaitFor after the context ended = %v, want ErrExited naming the context", err)
	}
}
