// Command metadata is the QEMU test setup's metadata API: GET /self and GET
// /peers answer JSON instance records {"name","role","vpcIP"} from a file or
// flags, so that a node can discover its role and the JoinService endpoints.
//
//	metadata --instances cluster.json --self node-1 [--listen 127.0.0.1:8080]
//	metadata --instance cp-0,ControlPlane,10.0.2.100 --instance node-1,Worker,10.0.2.15 --self node-1
//
// /self must name the requesting node, but under QEMU user networking every
// guest has the address 10.0.2.15, so run one metadata server per node, each
// with --self set to that node's name, and forward each guest's metadata
// address (guestfwd) to its own server. /peers lists every record, the
// requester included; control-plane nodes remove themselves.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/spf13/afero"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// DefaultListen binds loopback only: the metadata API is reached by guests
// through QEMU port forwarding, never from the network.
const DefaultListen = "127.0.0.1:8080"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr, afero.NewOsFs(), nil))
}

// run serves until ctx ends. ready, when set, receives the bound address.
func run(ctx context.Context, args []string, stderr io.Writer, fs afero.Fs, ready func(addr string)) int {
	fl := flag.NewFlagSet("metadata", flag.ContinueOnError)
	fl.SetOutput(stderr)
	listen := fl.String("listen", DefaultListen, "address to listen on")
	file := fl.String("instances", "", "JSON array of {\"name\",\"role\",\"vpcIP\"} records")
	self := fl.String("self", "", "name of the record /self returns (one server per node under QEMU user networking)")
	var extra []Instance
	fl.Func("instance", "a record as NAME,ROLE,VPC_IP (repeatable; ROLE is ControlPlane or Worker)", func(v string) error {
		in, err := parseInstanceFlag(v)
		extra = append(extra, in)
		return err
	})
	if err := fl.Parse(args); err != nil {
		return 2
	}
	log := logging.New(zapcore.Lock(zapcore.AddSync(stderr)), zapcore.InfoLevel).Named("metadata")

	var instances []Instance
	if *file != "" {
		loaded, err := loadInstances(fs, *file)
		if err != nil {
			fmt.Fprintf(stderr, "metadata: %v\n", err)
			return 2
		}
		instances = loaded
	}
	instances = append(instances, extra...)
	if err := validateInstances(instances); err != nil {
		fmt.Fprintf(stderr, "metadata: %v\n", err)
		return 2
	}
	h := &metadataHandler{instances: instances, self: *self, log: log}
	if *self != "" {
		if _, ok := h.byName(*self); !ok {
			fmt.Fprintf(stderr, "metadata: --self %q names no instance\n", *self)
			return 2
		}
	}

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "metadata: %v\n", err)
		return 1
	}
	srv := &http.Server{Handler: h.routes(), ReadHeaderTimeout: 5 * time.Second}
	log.Info("Serving metadata API", logging.Event("metadata_started"),
		zap.String("endpoint", lis.Addr().String()), zap.String("self", *self), zap.Int("instances", len(instances)))
	if ready != nil {
		ready(lis.Addr().String())
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	select {
	case err := <-served:
		fmt.Fprintf(stderr, "metadata: %v\n", err)
		return 1
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(stderr, "metadata: %v\n", err)
		return 1
	}
	return 0
}
