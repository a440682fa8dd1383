package keysocket

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

func TestCheckPeer(t *testing.T) {
	root := &unix.Ucred{Uid: 0, Pid: 42}
	for _, c := range []struct {
		addr string
		cred *unix.Ucred
		ok   bool
	}{
		{"@3077166e1b4c0986/cryptsetup/state", root, true},
		{"@1/cryptsetup/state", root, true},
		{"@3077166e1b4c0986/cryptsetup/other", root, false},
		{"@3077166e1b4c0986/cryptsetup/state2", root, false},
		{"@3077166e1b4c0986/cryptsetup/state", &unix.Ucred{Uid: 1000}, false},
		{"@3077166e1b4c0986/cryptsetup/state", nil, false},
		{"/run/x/cryptsetup/state", root, false},
		{"", root, false},
		{"@zz/cryptsetup/state", root, false},
	} {
		if err := CheckPeer("state", c.addr, c.cred); (err == nil) != c.ok {
			t.Errorf("CheckPeer(%q, %+v) = %v, want ok=%v", c.addr, c.cred, err, c.ok)
		}
	}
}

// dial connects to path from a socket bound to the abstract name (as
// systemd-cryptsetup does) and reads to EOF.
func dial(t *testing.T, path, abstract string) ([]byte, error) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.UnixAddr{Name: abstract, Net: "unix"}, Timeout: 5 * time.Second}
	c, err := d.Dial("unix", path)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	return io.ReadAll(c)
}

func TestServeRefusesOtherPeersThenServesCryptsetup(t *testing.T) {
	if os.Getuid() != 0 {
		t.Log("not root: the served peer is refused by its credentials; only the refusals are checked")
	}
	path := filepath.Join(t.TempDir(), "key.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	key := []byte("0123456789abcdef0123456789abcdef")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, "state", key, zap.NewNop()) }()

	for _, name := range []string{"@0123456789abcdef/cryptsetup/other", "@not-cryptsetup"} {
		got, err := dial(t, path, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(got) != 0 {
			t.Fatalf("%s got %d bytes of the key", name, len(got))
		}
	}
	if os.Getuid() != 0 {
		cancel()
		<-done
		return
	}
	got, err := dial(t, path, "@0123456789abcdef/cryptsetup/state")
	if err != nil || string(got) != string(key) {
		t.Fatalf("cryptsetup's peer got %q, %v", got, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := dial(t, path, "@0123456789abcdef/cryptsetup/state"); err == nil {
		t.Fatal("the socket still serves after the key was handed over")
	}
}
