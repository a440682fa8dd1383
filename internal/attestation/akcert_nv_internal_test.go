package attestation

import (
	"bytes"
	"testing"
)

func TestTrimDER(t *testing.T) {
	cert, _, err := NewPlatformCA("ca")
	if err != nil {
		t.Fatal(err)
	}
	der := cert.Raw
	if got, err := trimDER(append(bytes.Clone(der), make([]byte, 4096-len(der))...)); err != nil || !bytes.Equal(got, der) {
		t.Fatalf("zero-padded: %v", err)
	}
	for name, b := range map[string][]byte{
		"non-zero after": append(bytes.Clone(der), 0, 0, 1),
		"not DER":        []byte("\xab\xab\xab"),
		"truncated":      der[:len(der)-10],
		"empty":          nil,
	} {
		if _, err := trimDER(b); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}
