// Command disk-mapper unlocks (or, on a blank disk, creates) the node's
// encrypted state disk early in boot and leaves it mapped at
// /dev/mapper/state. Exit codes: 0 mapped; 1 failed; 2 bad usage.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/diskmapper/disk-mapper/setup"
	"github.com/spf13/afero"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/grpclog"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "0.0.0-dev"

func main() {
	os.Exit(run())
}

func run() int {
	log := logging.New(zapcore.Lock(os.Stdout), zapcore.InfoLevel)
	defer log.Sync()
	flags, err := parseFlags(os.Args[1:])
	if err != nil {
		// On the serial console as JSON too: it is the operator's only
		// window, and a refused --key-handover-file must be visible there.
		fmt.Fprintln(os.Stderr, err)
		log.Error("Invalid flags", logging.Event("bad_flags"), zap.Error(err))
		return 2
	}
	// gRPC's own logger would write non-JSON lines to the console.
	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, io.Discard))
	log.Info("Starting disk-mapper", zap.String("version", version), zap.String("cloudProvider", flags.cloudProvider))

	// The process holds disk keys: keep it out of core dumps and ptrace by
	// unprivileged users.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		log.Warn("Cannot make the process non-dumpable", zap.Error(err))
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	defer startDiskHelper(ctx, flags, log)()

	socket, err := newSocketHandover(flags, log)
	if err != nil {
		log.Error("Key hand-over socket unusable", logging.Event("bad_flags"), zap.Error(err))
		return 2
	}

	node, err := newNode(flags, log)
	if err != nil {
		log.Error("Failed to configure disk-mapper", zap.Error(err))
		return 1
	}

	cfg := setup.DefaultConfig()
	cfg.StateDisk = flags.stateDisk
	cfg.Integrity = flags.integrity
	cfg.KeyHandoverFile = flags.keyHandoverFile
	cfg.BlankDiskRefusal = node.blankDiskRefusal
	if socket != nil {
		cfg.KeyHandover = socket.take
		// Our own mapping is only for verifying (node state, PCR 15): under
		// another name, so that dev-mapper-state.device appears only once
		// systemd-cryptsetup mapped the volume.
		cfg.MappingName, cfg.MappedDevice = socket.verifyMapping()
	}
	mgr := setup.New(cfg, log.Named(constants.LoggerSetup), setup.LUKSBackend(), setup.SystemMounter{},
		afero.NewOsFs(), node.marker, node.sources)
	if _, err := mgr.Run(ctx); err != nil {
		if errors.Is(err, context.Canceled) {
			log.Warn("Stopped before the state disk was mapped", zap.Error(err))
		} else {
			log.Error("Failed to prepare state disk", zap.Error(err))
		}
		return 1
	}
	if socket != nil {
		if err := socket.serve(ctx, cfg.MappingName); err != nil {
			log.Error("Failed to hand the key to systemd-cryptsetup", zap.Error(err))
			return 1
		}
	}
	return 0
}
