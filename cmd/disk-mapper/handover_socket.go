package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"

	"github.com/diskmapper/disk-mapper/diskencryption"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/keysocket"
	"github.com/diskmapper/disk-mapper/internal/logging"
	"go.uber.org/zap"
)

// volumeName is a crypttab volume name (a device-mapper name).
var volumeName = regexp.MustCompile(`^[A-Za-z0-9_.+-]{1,64}$`)

func checkKeyHandoverSocket(o options) error {
	if o.keyHandoverSocket == "" {
		return nil
	}
	if !volumeName.MatchString(o.keyHandoverSocket) {
		return fmt.Errorf("--key-handover-socket %q: not a crypttab volume name", o.keyHandoverSocket)
	}
	if o.keyHandoverFile != "" {
		return errors.New("--key-handover-socket and --key-handover-file exclude each other")
	}
	return nil
}

// socketHandover is the socket hand-over mode: the daemon verifies the key
// by mapping the disk (reading the node state, marking PCR 15), closes its
// mapping again and hands the key, from memory, to systemd-cryptsetup,
// which maps the disk as crypttab says.
type socketHandover struct {
	volume string
	l      *net.UnixListener
	log    *zap.Logger
	key    []byte
}

func newSocketHandover(o options, log *zap.Logger) (*socketHandover, error) {
	if o.keyHandoverSocket == "" {
		return nil, nil
	}
	l, err := keysocket.FromSystemd()
	if err != nil {
		return nil, fmt.Errorf("--key-handover-socket: %w", err)
	}
	return &socketHandover{volume: o.keyHandoverSocket, l: l, log: log}, nil
}

// verifyMapping is the name and path of the daemon's own, temporary mapping.
func (s *socketHandover) verifyMapping() (string, string) {
	name := constants.MappingName + "-verify"
	return name, "/dev/mapper/" + name
}

// take keeps a copy of the verified key (setup zeroes its own).
func (s *socketHandover) take(key []byte) error {
	s.key = append([]byte(nil), key...)
	return nil
}

// serve closes the daemon's mapping and serves the key once.
func (s *socketHandover) serve(ctx context.Context, mapping string) error {
	defer clear(s.key)
	if len(s.key) == 0 {
		return errors.New("no key was handed over")
	}
	// Through diskencryption: every libcryptsetup call holds its one lock.
	if err := diskencryption.Deactivate(mapping); err != nil {
		return fmt.Errorf("closing our mapping %s: %w", mapping, err)
	}
	s.log.Info("Closed our mapping; systemd-cryptsetup maps the disk", logging.Event("mapping_closed"), zap.String("mapping", mapping))
	return keysocket.Serve(ctx, s.l, s.volume, s.key, s.log)
}
