// Package keysocket hands the verified disk key to systemd-cryptsetup over
// a socket-activated AF_UNIX socket, without the key ever touching a file
// system (docs/key-handover.md).
//
// crypttab names the socket as the volume's key file:
//
//	state /dev/vda /run/disk-mapper/key.sock luks,headless=true
//
// and disk-mapper-key.socket (ListenStream=/run/disk-mapper/key.sock,
// Service=disk-mapper.service) passes the listening socket to the daemon as
// fd 3 (LISTEN_FDS=1, LISTEN_PID). systemd-cryptsetup (252+) connects from
// a socket bound to the abstract address "@<16 hex digits>/cryptsetup/<volume>"
// and reads the key up to EOF. Serve writes the key to the first peer whose
// address names the volume and whose credentials are root's, then returns;
// every other peer is refused (logged, closed) and Serve keeps waiting.
//
// The peer check keeps other readers (a process connecting by mistake, a
// cryptsetup unit of another volume) from taking the key; it is not an
// authentication against root in the guest, who can bind any abstract
// name: the socket is root-only (SocketMode=0600, DirectoryMode=0700).
package keysocket

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/diskmapper/disk-mapper/internal/logging"
)

// listenFDsStart is SD_LISTEN_FDS_START: the first passed fd.
const listenFDsStart = 3

// FromSystemd returns the one listening AF_UNIX stream socket systemd
// passed (LISTEN_PID is this process, LISTEN_FDS=1) and unsets the
// variables, as sd_listen_fds(unset_environment=1) does.
func FromSystemd() (*net.UnixListener, error) {
	pid, fds := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	if pid == "" || fds == "" {
		return nil, errors.New("no socket passed: LISTEN_PID/LISTEN_FDS unset (is disk-mapper-key.socket installed?)")
	}
	if pid != strconv.Itoa(os.Getpid()) {
		return nil, fmt.Errorf("LISTEN_PID=%s is not this process (%d)", pid, os.Getpid())
	}
	if fds != "1" {
		return nil, fmt.Errorf("LISTEN_FDS=%s, want exactly one socket", fds)
	}
	fd := listenFDsStart
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("fd %d: %w", fd, err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil, fmt.Errorf("fd %d: %w", fd, err)
	}
	if _, ok := sa.(*unix.SockaddrUnix); !ok || typ != unix.SOCK_STREAM {
		return nil, fmt.Errorf("fd %d is not an AF_UNIX stream socket", fd)
	}
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "disk-mapper-key.socket")
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("fd %d: %w", fd, err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("fd %d is not a unix listener", fd)
	}
	return ul, nil
}

// peerName matches systemd-cryptsetup's client address for volume
// (src/basic/fileio.c: "@%" PRIx64 "/cryptsetup/%s", random 64 bits; Go
// shows the abstract namespace's leading NUL as '@').
func peerName(volume string) *regexp.Regexp {
	return regexp.MustCompile(`^@[0-9a-f]{1,16}/cryptsetup/` + regexp.QuoteMeta(volume) + `$`)
}

// CheckPeer says why a peer with abstract address addr and credentials
// cred may not have the key of volume (nil: it may).
func CheckPeer(volume, addr string, cred *unix.Ucred) error {
	if !peerName(volume).MatchString(addr) {
		return fmt.Errorf("peer address %q is not systemd-cryptsetup's for volume %q (@<hex>/cryptsetup/%s)", addr, volume, volume)
	}
	if cred == nil || cred.Uid != 0 {
		return fmt.Errorf("peer %q is not root (%+v)", addr, cred)
	}
	return nil
}

// Serve hands key to the first peer CheckPeer accepts, then closes l. It
// refuses every other peer and keeps waiting until ctx ends.
func Serve(ctx context.Context, l *net.UnixListener, volume string, key []byte, log *zap.Logger) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()
	log.Info("Serving the disk key to systemd-cryptsetup", logging.Event("key_socket_serving"),
		zap.String("socket", l.Addr().String()), zap.String("volume", volume))
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("key socket: %w", err)
		}
		addr := ""
		if ra := c.RemoteAddr(); ra != nil {
			addr = ra.String()
		}
		var cred *unix.Ucred
		if raw, err := c.SyscallConn(); err == nil {
			_ = raw.Control(func(fd uintptr) {
				cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
			})
		}
		if err := CheckPeer(volume, addr, cred); err != nil {
			log.Warn("Key socket peer refused", logging.Event("key_socket_refused"), zap.Error(err))
			c.Close()
			continue
		}
		_, werr := c.Write(key)
		cerr := c.Close()
		if werr == nil {
			werr = cerr
		}
		if werr != nil {
			log.Warn("Handing the key to systemd-cryptsetup failed", logging.Event("key_socket_write_failed"),
				zap.String("peer", addr), zap.Error(werr))
			continue
		}
		log.Info("Disk key handed to systemd-cryptsetup", logging.Event("key_socket_served"),
			zap.String("peer", addr), zap.Int32("peer_pid", cred.Pid))
		return nil
	}
}
