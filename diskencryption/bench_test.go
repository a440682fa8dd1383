package diskencryption

import (
	"fmt"
	"testing"
	"time"

	cryptsetup "github.com/martinjungblut/go-cryptsetup"
)

// BenchmarkCheckKey compares opening a keyslot with a random 32-byte key
// under our parameters (PBKDF2-sha256, 1000 iterations) with an Argon2id
// keyslot benchmarked the way cryptsetup would (2000 ms, at most 64 MiB,
// 4 threads), in the same run. DESIGN.md §8 target: ours/argon2id ≤ 0.01.
func BenchmarkCheckKey(b *testing.B) {
	var oursPerOp time.Duration

	b.Run("ours", func(b *testing.B) {
		d, key := formatOurs(b)
		b.ResetTimer()
		for b.Loop() {
			if err := d.CheckKey(key); err != nil {
				b.Fatal(err)
			}
		}
		oursPerOp = b.Elapsed() / time.Duration(b.N)
	})

	b.Run("argon2id", func(b *testing.B) {
		start := time.Now()
		d, key := formatArgon2id(b)
		b.Logf("argon2id format (with libcryptsetup's PBKDF benchmark) took %v", time.Since(start).Round(time.Millisecond))
		b.ResetTimer()
		for b.Loop() {
			// The allow-list refuses Argon2id headers, so this calls the
			// key check beneath it; the KDF is all that differs.
			lockLib()
			err := d.checkKeyLocked(key)
			libMu.Unlock()
			if err != nil {
				b.Fatal(err)
			}
		}
		argonPerOp := b.Elapsed() / time.Duration(b.N)
		if oursPerOp > 0 {
			ratio := float64(oursPerOp) / float64(argonPerOp)
			b.ReportMetric(ratio, "ours/argon2id")
			fmt.Printf("CheckKey ours %v, argon2id %v, ratio ours/argon2id %.5f (target <= 0.01)\n", oursPerOp, argonPerOp, ratio)
		}
	})
}

// formatArgon2id formats a disk whose keyslot libcryptsetup benchmarks to
// 2000 ms with Argon2id (memory capped at 64 MiB, 4 threads).
func formatArgon2id(b *testing.B) (*Device, []byte) {
	b.Helper()
	path := newDisk(b, testDiskSize)
	key := randomKey(b)
	lockLib()
	func() {
		defer libMu.Unlock()
		dev, err := cryptsetup.Init(path)
		if err != nil {
			b.Fatal(err)
		}
		defer dev.Free()
		params := cryptsetup.LUKS2{
			SectorSize: sectorSize,
			PBKDFType: &cryptsetup.PbkdfType{
				Type:            cryptsetup.CRYPT_KDF_ARGON2ID,
				Hash:            "sha256",
				TimeMs:          2000,
				MaxMemoryKb:     64 << 10,
				ParallelThreads: 4,
			},
		}
		if err := dev.Format(params, cryptsetup.GenericParams{Cipher: "aes", CipherMode: "xts-plain64", VolumeKeySize: xtsKeySize}); err != nil {
			b.Fatal(err)
		}
		if err := dev.KeyslotAddByVolumeKey(cryptsetup.CRYPT_ANY_SLOT, "", keyString(key)); err != nil {
			b.Fatal(err)
		}
	}()
	d, err := Open(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	lockLib()
	m, err := d.metadataLocked()
	libMu.Unlock()
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("argon2id keyslot kdf: %s", objectField(m.keyslots["0"], "kdf"))
	return d, key
}
