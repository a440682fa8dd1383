package testutil

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/masterkey"
)

// RandomBytes returns n bytes from crypto/rand.
func RandomBytes(tb testing.TB, n int) []byte {
	tb.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return b
}

// KeyEncodings are the forms, by name, in which key material could leak
// into a log or a file: the raw bytes, hex in both cases and the four
// base64 alphabets. A key-hygiene test searches its output for every one.
func KeyEncodings(k []byte) map[string]string {
	return map[string]string{
		"raw":           string(k),
		"hex":           hex.EncodeToString(k),
		"HEX":           strings.ToUpper(hex.EncodeToString(k)),
		"base64":        base64.StdEncoding.EncodeToString(k),
		"base64-raw":    base64.RawStdEncoding.EncodeToString(k),
		"base64url":     base64.URLEncoding.EncodeToString(k),
		"base64url-raw": base64.RawURLEncoding.EncodeToString(k),
	}
}

// NewMasterSecret returns a fresh random cluster master secret.
func NewMasterSecret(tb testing.TB) masterkey.MasterSecret {
	tb.Helper()
	s, err := masterkey.New()
	if err != nil {
		tb.Fatal(err)
	}
	return s
}
