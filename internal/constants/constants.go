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
	// RuntimeDir is the daemon's runtime directory (tmpfs). It is the only
	// place a key handover file may be written: the host controls the
	// command line, so a flag must never be able to aim the key at a serial
	// port, a disk or a file that outlives the boot.
	RuntimeDir = "/run/disk-mapper"
	// StateMountPoint is where the daemon briefly mounts the unlocked disk
	// to write or read the node state.
	StateMountPoint = RuntimeDir + "/state"
	// NodeStateFile is the node-state JSON file, relative to the root of the
	// state disk's file system.
	NodeStateFile = "disk-mapper/node_state.json"
	// KeyHandoverFile is where the disk key is written only when the image
	// asks to hand it to systemd-cryptsetup.
	KeyHandoverFile = RuntimeDir + "/state.key"

	// ConfigDir holds the daemon's configuration files in the image (join
	// CA, …). Its files are measured into PCRConfig before the daemon runs.
	ConfigDir = "/etc/disk-mapper"
	// EnvironmentFile is the EnvironmentFile of the systemd unit
	// (DISK_MAPPER_ARGS); measured into PCRConfig when present.
	EnvironmentFile = "/etc/default/disk-mapper"

	// LUKSTokenType is the type of the LUKS2 token that records how far the
	// lifecycle of a disk got (formatting → keyed → initialized).
	LUKSTokenType = "disk-mapper-state"

	// The PCR map (docs/pcr-map.md), one for the test image and for real
	// UKI images. It follows systemd-stub: PCR 11 is what the image is, PCR
	// 12 what the boot was told, so a host that can only change the command
	// line changes PCR 12 and nothing it can do resets it.
	//
	// PCRImage holds the image's code: in a UKI the stub's measurement of
	// its sections (kernel, initrd with the daemon, embedded command line);
	// in the test image, which boots without a stub, /init's measurement of
	// itself and the daemon binary.
	PCRImage = 11
	// PCRConfig holds what steers the daemon: the exact argv it runs with,
	// its environment, the kernel parameters it reads itself, every file in
	// ConfigDir and the EnvironmentFile, measured by dm-measure right before
	// the daemon runs. In a UKI the stub's measurements of a host-supplied
	// command line and credentials come first.
	PCRConfig = 12
	// PCRClusterID is extended with the cluster ID once the node has its
	// keys. It must be zero while the node asks for keys.
	PCRClusterID = 15

	// TPMDevice is the kernel's TPM resource manager.
	TPMDevice = "/dev/tpmrm0"
	// KernelCmdline is read for static JoinService endpoints
	// (disk_mapper.join_endpoints=IP:PORT,IP:PORT) and other boot options.
	KernelCmdline = "/proc/cmdline"
	// KernelCmdlinePrefix starts every kernel parameter the daemon reads
	// from the command line itself; dm-measure measures each of them.
	KernelCmdlinePrefix = "disk_mapper."
	// KernelCmdlineJoinEndpoints is the kernel command-line key for static
	// JoinService endpoints.
	KernelCmdlineJoinEndpoints = KernelCmdlinePrefix + "join_endpoints"

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

// RequiredPCRs are the PCRs every measurements file a validator loads must
// pin: without one of them a node could run another daemon, or the right
// daemon steered by the host, and still attest.
func RequiredPCRs() []uint32 { return []uint32{PCRImage, PCRConfig, PCRClusterID} }
