// Package constants holds the paths, ports, PCR indices and names that the
// daemon, the operator tools, the image and the tests must agree on. Anything
// an operator, a wire contract or the image build depends on lives here and
// nowhere else.
package constants

import "time"

const (
	// RecoveryPort is where the RecoveryServer listens for `dmctl recover`.
	RecoveryPort = 9999
	// JoinServicePort is the port of every JoinService endpoint (IP:30090).
	JoinServicePort = 30090

	// MappingName is the device-mapper name of the unlocked state disk.
	MappingName = "state"
	// MappedDevicePath is where the unlocked state disk appears.
	MappedDevicePath = "/dev/mapper/" + MappingName
	// DefaultStateDisk is the state disk of a node (the first virtio disk).
	DefaultStateDisk = "/dev/vda"
	// StateMountPoint is where the daemon briefly mounts the unlocked disk
	// to write or read the node state.
	StateMountPoint = "/run/disk-mapper/state"
	// NodeStateFile is the node-state JSON file, relative to the root of the
	// state disk's file system.
	NodeStateFile = "disk-mapper/node_state.json"
	// KeyHandoverFile is where the disk key is written only when the image
	// asks to hand it to systemd-cryptsetup.
	KeyHandoverFile = "/run/disk-mapper/state.key"

	// LUKSTokenType is the type of the LUKS2 token that records how far the
	// lifecycle of a disk got (formatting → keyed → initialized).
	LUKSTokenType = "disk-mapper-state"

	// PCRClusterID is extended with the cluster ID once the node has its
	// keys. It must be zero while the node asks for keys.
	PCRClusterID = 15
	// PCRImage is where the image's init measures what it runs before it
	// runs it (the disk-mapper binary).
	PCRImage = 11

	// TPMDevice is the kernel's TPM resource manager.
	TPMDevice = "/dev/tpmrm0"
	// KernelCmdline is read for static JoinService endpoints
	// (disk_mapper.join_endpoints=IP:PORT,IP:PORT) and other boot options.
	KernelCmdline = "/proc/cmdline"
	// KernelCmdlineJoinEndpoints is the kernel command-line key for static
	// JoinService endpoints.
	KernelCmdlineJoinEndpoints = "disk_mapper.join_endpoints"

	// MaxRecoverMessageSize bounds every gRPC message the RecoveryServer
	// accepts; a Recover message carries two 32-byte secrets.
	MaxRecoverMessageSize = 4 << 10
	// RecoveryHandshakeTimeout bounds the TLS+attestation handshake of one
	// recovery connection.
	RecoveryHandshakeTimeout = 10 * time.Second
	// RecoveryIdleTimeout closes a recovery connection that sends nothing.
	RecoveryIdleTimeout = 30 * time.Second
	// RecoveryMaxConcurrentQuotes bounds the TPM quotes the RecoveryServer's
	// aTLS handshakes may have admitted at once (running or waiting for the
	// TPM); beyond it a handshake fails at once. The RejoinClient's quotes
	// are not counted and go first.
	RecoveryMaxConcurrentQuotes = 4
	// RecoveryMaxQuotesPerSource bounds those quotes per peer IP address.
	RecoveryMaxQuotesPerSource = 2
	// RecoveryMessageTimeout bounds the wait for each client message of a
	// Recover stream (`dmctl recover` sends each at once), so that a stream
	// that sends nothing is ended after seconds, not the stream timeout.
	RecoveryMessageTimeout = 5 * time.Second

	// Logger names (the seed's operators grep for them).
	LoggerSetup          = "setupManager"
	LoggerRecoveryServer = "recoveryServer"
	LoggerRecoveryGRPC   = "recoveryServer.gRPC"
	LoggerRejoinClient   = "rejoinClient"
)
