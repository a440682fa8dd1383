// Command joinservice is the reference JoinService: it issues rejoin tickets
// to attested nodes over aTLS.
//
//	joinservice --master-secret FILE --cert FILE --key FILE --measurements FILE [--listen 127.0.0.1:30090] [--max-concurrent N]
//	joinservice gen-cert --dir DIR [--hosts 127.0.0.1,10.0.2.100]   (also issues an operator client certificate for dmctl)
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/diskmapper/disk-mapper/internal/masterkey"
	"github.com/diskmapper/disk-mapper/joinservice"
	"github.com/spf13/afero"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, afero.NewOsFs()))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, fs afero.Fs) int {
	if len(args) > 0 && args[0] == "gen-cert" {
		return genCert(args[1:], stdout, stderr, fs)
	}
	return serve(ctx, args, stderr, fs)
}

func serve(ctx context.Context, args []string, stderr io.Writer, fs afero.Fs) int {
	fl := flag.NewFlagSet("joinservice", flag.ContinueOnError)
	fl.SetOutput(stderr)
	listen := fl.String("listen", fmt.Sprintf("127.0.0.1:%d", constants.JoinServicePort), "address to listen on")
	secretPath := fl.String("master-secret", "", "the cluster's master-secret file")
	maxConcurrent := fl.Int("max-concurrent", 4*runtime.NumCPU(), "tickets issued at once; more requests are pushed back with RESOURCE_EXHAUSTED and a retry hint")
	level := zapcore.InfoLevel
	fl.TextVar(&level, "log-level", zapcore.InfoLevel, "minimum log level (debug, info, warn, error)")
	var cf credentialFlags
	fl.StringVar(&cf.cert, "cert", "", "PEM certificate the nodes verify")
	fl.StringVar(&cf.key, "key", "", "PEM private key of --cert")
	cf.attestation.Register(fl)
	if err := fl.Parse(args); err != nil {
		return exitUsage
	}
	if fl.NArg() != 0 || *secretPath == "" {
		fmt.Fprintln(stderr, "usage: joinservice --master-secret FILE --cert FILE --key FILE --measurements FILE [--listen ADDR] [--max-concurrent N]")
		return exitUsage
	}
	log := logging.New(zapcore.Lock(zapcore.AddSync(stderr)), level)
	defer func() { _ = log.Sync() }()

	secret, err := masterkey.Load(fs, *secretPath)
	if err != nil {
		log.Error("Failed to load master secret", logging.Event("master_secret_load_failed"), zap.Error(err))
		return exitUsage
	}
	creds, err := serverCredentials(fs, cf, log)
	if err != nil {
		log.Error("Failed to set up credentials", logging.Event("credentials_failed"), zap.Error(err))
		return exitUsage
	}
	server, err := joinservice.New(joinservice.Config{MasterSecret: secret, MaxConcurrent: *maxConcurrent, Log: log})
	clear(secret.Key)
	clear(secret.Salt)
	if err != nil {
		log.Error("Failed to create JoinService", logging.Event("joinservice_config_failed"), zap.Error(err))
		return exitUsage
	}
	defer server.Close()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Error("Failed to listen", logging.Event("listen_failed"), zap.String("endpoint", *listen), zap.Error(err))
		return exitFailed
	}
	if err := server.Serve(ctx, lis, creds); err != nil {
		log.Error("JoinService failed", logging.Event("joinservice_failed"), zap.Error(err))
		return exitFailed
	}
	return exitOK
}

func genCert(args []string, stdout, stderr io.Writer, fs afero.Fs) int {
	fl := flag.NewFlagSet("joinservice gen-cert", flag.ContinueOnError)
	fl.SetOutput(stderr)
	dir := fl.String("dir", "", "directory to write ca.pem, cert.pem, key.pem, operator-cert.pem and operator-key.pem to")
	hosts := fl.String("hosts", "127.0.0.1,10.0.2.100", "comma-separated IPs/names the certificate is for")
	validity := fl.Duration("validity", 365*24*time.Hour, "validity of CA and certificate")
	if err := fl.Parse(args); err != nil {
		return exitUsage
	}
	if *dir == "" || fl.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: joinservice gen-cert --dir DIR [--hosts 127.0.0.1,10.0.2.100]")
		return exitUsage
	}
	certs, err := joinservice.GenerateTestCertificates(strings.Split(*hosts, ","), *validity)
	if err != nil {
		fmt.Fprintf(stderr, "joinservice gen-cert: %v\n", err)
		return exitFailed
	}
	defer clear(certs.KeyPEM)
	defer clear(certs.OperatorKeyPEM)
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"ca.pem", certs.CAPEM, 0o644},
		{"cert.pem", certs.CertPEM, 0o644},
		{"key.pem", certs.KeyPEM, 0o600},
		{"operator-cert.pem", certs.OperatorCertPEM, 0o644},
		{"operator-key.pem", certs.OperatorKeyPEM, 0o600},
	}
	if err := fs.MkdirAll(*dir, 0o755); err != nil {
		fmt.Fprintf(stderr, "joinservice gen-cert: %v\n", err)
		return exitFailed
	}
	for _, f := range files {
		path := filepath.Join(*dir, f.name)
		if err := writeNew(fs, path, f.data, f.mode); err != nil {
			fmt.Fprintf(stderr, "joinservice gen-cert: %v\n", err)
			return exitFailed
		}
	}
	fmt.Fprintf(stdout, "Wrote %s/ca.pem (give it to the nodes), cert.pem and key.pem (for --cert/--key), "+
		"operator-cert.pem and operator-key.pem (for dmctl recover --client-cert/--client-key). Test use only.\n", *dir)
	return exitOK
}

// writeNew creates path with mode and refuses to overwrite.
func writeNew(fs afero.Fs, path string, data []byte, mode os.FileMode) error {
	f, err := fs.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
