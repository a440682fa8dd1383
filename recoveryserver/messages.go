package recoveryserver

import (
	"bytes"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/diskmapper/disk-mapper/internal/unlock"
	"github.com/diskmapper/disk-mapper/recoverproto"
)

// secretSize is the length of the disk key, the measurement secret and the
// measurement salt (HKDF-SHA256 outputs of 32 bytes, DESIGN.md §3).
const secretSize = 32

// validateSecretMessage checks the first message of a Recover stream: it must
// carry a measurement_secret and may carry a measurement_salt.
func validateSecretMessage(msg *recoverproto.RecoverMessage) error {
	if _, ok := msg.GetRequest().(*recoverproto.RecoverMessage_MeasurementSecret); !ok {
		return invalid("the first message must carry measurement_secret (got %s)", describe(msg))
	}
	if err := checkLength("measurement_secret", msg.GetMeasurementSecret()); err != nil {
		return err
	}
	return checkOptionalSalt(msg.GetMeasurementSalt())
}

// keyFromMessages checks the second message (it must carry state_disk_key)
// and assembles the candidate. The key aliases the messages' byte slices.
// measurement_salt may ride on either message; if both carry one, they must
// agree.
func keyFromMessages(first, second *recoverproto.RecoverMessage) (unlock.Key, error) {
	if _, ok := second.GetRequest().(*recoverproto.RecoverMessage_StateDiskKey); !ok {
		return unlock.Key{}, invalid("the second message must carry state_disk_key (got %s)", describe(second))
	}
	if err := checkLength("state_disk_key", second.GetStateDiskKey()); err != nil {
		return unlock.Key{}, err
	}
	salt := first.GetMeasurementSalt()
	if later := second.GetMeasurementSalt(); len(later) > 0 {
		if err := checkOptionalSalt(later); err != nil {
			return unlock.Key{}, err
		}
		if len(salt) > 0 && !bytes.Equal(salt, later) {
			return unlock.Key{}, invalid("the two messages carry different measurement_salt values")
		}
		salt = later
	}
	return unlock.Key{
		DiskKey:           second.GetStateDiskKey(),
		MeasurementSecret: first.GetMeasurementSecret(),
		MeasurementSalt:   salt,
	}, nil
}

func checkOptionalSalt(salt []byte) error {
	if len(salt) == 0 {
		return nil
	}
	return checkLength("measurement_salt", salt)
}

// checkLength reports a wrong length; it names the length, never the bytes.
func checkLength(field string, b []byte) error {
	if len(b) != secretSize {
		return invalid("%s must be %d bytes, got %d", field, secretSize, len(b))
	}
	return nil
}

// describe names what a message carries, for error messages.
func describe(msg *recoverproto.RecoverMessage) string {
	switch msg.GetRequest().(type) {
	case *recoverproto.RecoverMessage_MeasurementSecret:
		return "measurement_secret"
	case *recoverproto.RecoverMessage_StateDiskKey:
		return "state_disk_key"
	default:
		return "neither state_disk_key nor measurement_secret"
	}
}

func invalid(format string, args ...any) error {
	return status.Error(codes.InvalidArgument, fmt.Sprintf(format, args...))
}

// zeroMessage overwrites the secrets a message carries. gRPC's receive
// buffers are pooled and out of reach; this is what Go lets us clear.
func zeroMessage(msg *recoverproto.RecoverMessage) {
	if msg == nil {
		return
	}
	clear(msg.GetStateDiskKey())
	clear(msg.GetMeasurementSecret())
	clear(msg.GetMeasurementSalt())
}
