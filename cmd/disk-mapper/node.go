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
	openTPM := attestation.OpenPath(o.tpmDevice)
	var issuer attestation.Issuer
	switch o.attestation {
	case attestationDev:
		issuer = attestation.NewDevIssuer(log.Named("attestation"))
	default:
		var err error
		if issuer, err = attestation.NewTPMIssuer(openTPM, log.Named("attestation")); err != nil {
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
		lis, err := net.Listen("tcp", o.recoveryAddr)
		if err != nil {
			// The rejoin path goes on without the listener.
			log.Error("Cannot listen for recovery", zap.String("addr", o.recoveryAddr), zap.Error(err))
		} else {
			creds := atls.NewCredentials(atls.Config{Issuer: recoveryIssuer, RootCAs: rootsFor(mode, joinCA),
				HandshakeTimeout: constants.RecoveryHandshakeTimeout, Log: log.Named("atls")})
			out = append(out, recoveryserver.New(recoveryserver.Config{
				DiskUUID: uuid, Listener: lis, Credentials: creds, Log: log.Named(constants.LoggerRecoveryServer),
			}))
		}
		if mode != setup.ModeRefused && endpoints != nil {
			creds := atls.NewCredentials(atls.Config{Issuer: issuer, RootCAs: joinCA, Log: log.Named("atls")})
			out = append(out, rejoinclient.New(rejoinclient.Config{
				DiskUUID: uuid, Endpoints: endpoints, Credentials: creds, Log: log.Named(constants.LoggerRejoinClient),
			}))
		}
		if len(out) == 0 {
			return nil, errors.New("no key source could start")
		}
		return out, nil
	}
	n := &node{marker: newMarker(o, openTPM, log), sources: sources}
	if joinCA == nil && o.attestation != attestationDev {
		n.blankDiskRefusal = "no --join-ca to authenticate the key service and operators with"
	}
	return n, nil
}

// rootsFor: on a blank disk the operator must present a certificate from the
// cluster CA; on an existing disk the key itself is checked against the disk.
func rootsFor(mode setup.DiskMode, joinCA *x509.CertPool) *x509.CertPool {
	if mode == setup.ModeBlank {
		return joinCA
	}
	return nil
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
	if o.metadataURL != "" {
		return metadata.New(o.metadataURL)
	}
	log.Warn("No JoinService endpoints configured; only the RecoveryServer will run")
	return nil, nil
}
