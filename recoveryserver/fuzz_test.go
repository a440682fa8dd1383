package recoveryserver

import (
	"encoding/hex"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/diskmapper/disk-mapper/recoverproto"
)

// FuzzRecoverMessages fuzzes the handling of the two messages of a Recover
// stream, as they arrive on the wire (protobuf bytes). Seeds:
// testdata/fuzz/FuzzRecoverMessages plus valid and out-of-order pairs made
// here. Invariants: no panic; every refusal is InvalidArgument and echoes
// none of the bytes the client sent; an accepted key has 32-byte parts.
func FuzzRecoverMessages(f *testing.F) {
	k := make([]byte, secretSize)
	for i := range k {
		k[i] = byte(i + 1)
	}
	secret, _ := proto.Marshal(&recoverproto.RecoverMessage{
		Request: &recoverproto.RecoverMessage_MeasurementSecret{MeasurementSecret: k}, MeasurementSalt: k})
	key, _ := proto.Marshal(&recoverproto.RecoverMessage{Request: &recoverproto.RecoverMessage_StateDiskKey{StateDiskKey: k}})
	f.Add(secret, key)
	f.Add(key, secret)
	f.Add(secret, secret)
	f.Add([]byte{}, []byte{0x0a, 0x00})
	f.Fuzz(func(t *testing.T, firstRaw, secondRaw []byte) {
		var first, second recoverproto.RecoverMessage
		if proto.Unmarshal(firstRaw, &first) != nil || proto.Unmarshal(secondRaw, &second) != nil {
			return
		}
		sent := [][]byte{first.GetMeasurementSecret(), first.GetMeasurementSalt(), first.GetStateDiskKey(),
			second.GetMeasurementSecret(), second.GetMeasurementSalt(), second.GetStateDiskKey()}
		checkRefusal := func(err error) {
			t.Helper()
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("refusal %v is not InvalidArgument", err)
			}
			msg := strings.ToLower(err.Error())
			for _, b := range sent {
				if len(b) >= 4 && strings.Contains(msg, hex.EncodeToString(b)) {
					t.Fatalf("refusal echoes client bytes: %v", err)
				}
			}
		}
		if err := validateSecretMessage(&first); err != nil {
			checkRefusal(err)
			return
		}
		got, err := keyFromMessages(&first, &second)
		if err != nil {
			checkRefusal(err)
			return
		}
		if len(got.DiskKey) != secretSize || len(got.MeasurementSecret) != secretSize ||
			(len(got.MeasurementSalt) != 0 && len(got.MeasurementSalt) != secretSize) {
			t.Fatalf("accepted key with parts of %d, %d, %d bytes", len(got.DiskKey), len(got.MeasurementSecret), len(got.MeasurementSalt))
		}
		zeroMessage(&first)
		zeroMessage(&second)
		for _, b := range [][]byte{got.DiskKey, got.MeasurementSecret, got.MeasurementSalt} {
			for _, c := range b {
				if c != 0 {
					t.Fatal("zeroing the messages did not zero the key that aliases them")
				}
			}
		}
	})
}
