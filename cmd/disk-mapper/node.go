package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/atls"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/diskmapper/disk-mapper/internal/nodestatus"
	"github.com/diskmapper/disk-mapper/recoveryserver"
	"github.com/diskmapper/disk-mapper/rejoinclient"
	"github.com/diskmapper/disk-mapper/rejoinclient/metadata"
	"github.com/diskmapper/disk-mapper/setup"
	"github.com/spf13/afero"
	"go.uber.org/zap"
)

// node is the daemon's wiring: attestation, the PCR marker and the key
// sources, built from the flags.
type node struct {
	marker  setup.PCRMarker
	sources setup.SourceFactory
	// blankDiskRefusal is why this node must not enrol a new disk ("" = it may).
	blankDiskRefusal string
}

func newNode(o options, log *zap.Logger) (*node, error) {
	logProvider(o, log)
	openTPM := attestation.OpenPath(o.tpmDevice)
	var issuer attestation.Issuer
	switch o.attestation {
	case attestationDev:
		issuer = attestation.NewDevIssuer(log.Named("attestation"))
	default:
		var err error
		if issuer, err = newTPMIssuer(o, openTPM, log.Named("attestation")); err != nil {
			return nil, fmt.Errorf("TPM attestation: %w", err)
		}
	}

	// Anyone who reaches port 9999 can ask for a quote: the RecoveryServer's
	// are bounded and queue behind the RejoinClient's.
	recoveryIssuer := attestation.NewBackgroundIssuer(issuer, attestation.QuoteLimits{})

	var joinCA *x509.CertPool
	if o.joinCA != "" {
		pem, err := os.ReadFile(o.joinCA)
		if err != nil {
			return nil, fmt.Errorf("reading --join-ca: %w", err)
		}
		joinCA = x509.NewCertPool()
		if !joinCA.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--join-ca %s holds no PEM certificate", o.joinCA)
		}
	}

	endpoints, err := endpointSource(o, log)
	if err != nil {
		return nil, err
	}

	// What `dmctl status` reports about the RejoinClient, learnt from its log.
	board := nodestatus.New()
	sources := func(uuid string, mode setup.DiskMode) ([]setup.KeySource, error) {
		var out []setup.KeySource
		// For a blank disk nothing can check a key, so every source must
		// authenticate its sender against the configured CA.
		if mode == setup.ModeBlank && joinCA == nil {
			if o.attestation != attestationDev {
				return nil, errors.New("a blank disk needs --join-ca: without it a forged key could encrypt the node's data to an attacker")
			}
			log.Warn("Blank disk without --join-ca: accepting unauthenticated keys (development only)")
		}
		// With a CA, every push (blank or existing disk) must come from an
		// operator certificate of it: otherwise the host could build a disk
		// of its own that passes the allow-list, push its key, and the node
		// would run on state the host wrote. Without a CA the key itself is
		// the only proof (logged at start, see warnUnauthenticatedPushes).
		lis, err := net.Listen("tcp", o.recoveryAddr)
		if err != nil {
			// The rejoin path goes on without the listener.
			log.Error("Cannot listen for recovery", zap.String("addr", o.recoveryAddr), zap.Error(err))
		} else {
			creds := atls.NewCredentials(atls.Config{Issuer: recoveryIssuer, RootCAs: joinCA,
				HandshakeTimeout: constants.RecoveryHandshakeTimeout, Log: log.Named("atls")})
			out = append(out, recoveryserver.New(recoveryserver.Config{
				DiskUUID: uuid, Listener: lis, Credentials: creds, Log: log.Named(constants.LoggerRecoveryServer),
				Rejoin: board.Rejoin,
			}))
		}
		if mode != setup.ModeRefused && endpoints != nil {
			creds := atls.NewCredentials(atls.Config{Issuer: issuer, RootCAs: joinCA, Log: log.Named("atls")})
			out = append(out, rejoinclient.New(rejoinclient.Config{
				DiskUUID: uuid, Endpoints: endpoints, Credentials: creds, Log: board.Observe(log.Named(constants.LoggerRejoinClient)),
			}))
		}
		if len(out) == 0 {
			return nil, errors.New("no key source could start")
		}
		return out, nil
	}
	if joinCA == nil {
		warnUnauthenticatedPushes(log)
	}
	n := &node{marker: newMarker(o, openTPM, log), sources: sources}
	if joinCA == nil && o.attestation != attestationDev {
		n.blankDiskRefusal = "no --join-ca to authenticate the key service and operators with"
	}
	return n, nil
}

// warnUnauthenticatedPushes says at start that, without --join-ca, the
// RecoveryServer accepts a push from anyone who reaches its port with a key
// that opens the disk (the host can build such a disk itself).
func warnUnauthenticatedPushes(log *zap.Logger) {
	log.Warn("Recovery pushes are not authenticated: no --join-ca, so any key that opens the state disk is accepted from anyone who reaches the RecoveryServer",
		logging.Event("recovery_unauthenticated"))
}

func endpointSource(o options, log *zap.Logger) (rejoinclient.EndpointSource, error) {
	if o.joinEndpoints != "" {
		return rejoinclient.ParseEndpoints(o.joinEndpoints)
	}
	fromCmdline, err := rejoinclient.EndpointsFromKernelCmdline(afero.NewOsFs(), o.kernelCmdline)
	switch {
	case err == nil:
		return fromCmdline, nil
	case !errors.Is(err, rejoinclient.ErrNoCmdlineEndpoints) && !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("kernel command line %s: %w", o.kernelCmdline, err)
	}
	if p, err := newProvider(o); err != nil || p != nil {
		return p, err
	}
	if o.metadataURL != "" {
		return metadata.New(o.metadataURL)
	}
	log.Warn("No JoinService endpoints configured; only the RecoveryServer will run")
	return nil, nil
}
