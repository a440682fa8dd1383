package diskencryption

import (
	"crypto/rand"
	"strings"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/testutil"
)

func TestProbeDevice(t *testing.T) {
	pass := randomKey(t)
	tests := map[string]struct {
		make       func(t *testing.T) string
		wantKind   Kind
		wantState  State
		wantReason string // substring; "" means the reason must be empty
	}{
		"zero disk": {
			make:     func(t *testing.T) string { return newDisk(t, testDiskSize) },
			wantKind: KindBlank,
		},
		"zero disk too small": {
			make:       func(t *testing.T) string { return newDisk(t, 4<<20) },
			wantKind:   KindForeign,
			wantReason: "smaller than",
		},
		"ext4 superblock magic": {
			make: func(t *testing.T) string {
				p := newDisk(t, testDiskSize)
				testutil.WriteAt(t, p, 1024+56, []byte{0x53, 0xEF})
				return p
			},
			wantKind:   KindForeign,
			wantReason: "ext2/3/4",
		},
		"MBR boot signature": {
			make: func(t *testing.T) string {
				p := newDisk(t, testDiskSize)
				testutil.WriteAt(t, p, 510, []byte{0x55, 0xAA})
				return p
			},
			wantKind:   KindForeign,
			wantReason: "MBR",
		},
		"backup GPT header at the end": {
			make: func(t *testing.T) string {
				p := newDisk(t, testDiskSize)
				testutil.WriteAt(t, p, testDiskSize-512, []byte("EFI PART"))
				return p
			},
			wantKind:   KindForeign,
			wantReason: "backup GPT",
		},
		"one byte in the last MiB": {
			make: func(t *testing.T) string {
				p := newDisk(t, testDiskSize)
				testutil.WriteAt(t, p, testDiskSize-100, []byte{1})
				return p
			},
			wantKind:   KindForeign,
			wantReason: "last MiB",
		},
		"random data": {
			make: func(t *testing.T) string {
				p := newDisk(t, testDiskSize)
				junk := make([]byte, 2<<20)
				if _, err := rand.Read(junk); err != nil {
					t.Fatal(err)
				}
				testutil.WriteAt(t, p, 0, junk)
				return p
			},
			wantKind:   KindForeign,
			wantReason: "non-zero data in the first MiB",
		},
		"crash after the format marker": {
			make:       func(t *testing.T) string { return markedDisk(t) },
			wantKind:   KindBlank,
			wantReason: "interrupted disk-mapper format",
		},
		"crash while crypt_format fills the keyslot area": {
			make: func(t *testing.T) string {
				p := markedDisk(t)
				junk := make([]byte, 1<<20)
				if _, err := rand.Read(junk); err != nil {
					t.Fatal(err)
				}
				testutil.WriteAt(t, p, 32768, junk)
				return p
			},
			wantKind:   KindBlank,
			wantReason: "interrupted disk-mapper format",
		},
		"crash with a torn LUKS2 header": {
			make: func(t *testing.T) string {
				p := markedDisk(t)
				hdr := make([]byte, 4096)
				copy(hdr, "LUKS\xba\xbe\x00\x02")
				testutil.WriteAt(t, p, 0, hdr)
				return p
			},
			wantKind:   KindBlank,
			wantReason: "interrupted disk-mapper format",
		},
		// What an earlier attempt's integrity wipe leaves next to the marker
		// of a re-format (probe_reformat_test.go has the whole sequence).
		"format marker plus other data at the end": {
			make: func(t *testing.T) string {
				p := markedDisk(t)
				testutil.WriteAt(t, p, testDiskSize-(1<<20), []byte("data"))
				return p
			},
			wantKind:   KindBlank,
			wantReason: "interrupted disk-mapper format",
		},
		"format marker behind an ext4 superblock": {
			make: func(t *testing.T) string {
				p := markedDisk(t)
				testutil.WriteAt(t, p, 1024+56, []byte{0x53, 0xEF})
				return p
			},
			wantKind:   KindForeign,
			wantReason: "ext2/3/4",
		},
		"LUKS1": {
			make:       func(t *testing.T) string { return cliLUKS1(t, pass) },
			wantKind:   KindForeign,
			wantReason: "LUKS1",
		},
		"LUKS2 damaged beyond loading": {
			make: func(t *testing.T) string {
				p := cliFormat(t, pass)
				testutil.WriteAt(t, p, 4096, []byte("garbage")) // primary JSON
				testutil.WriteAt(t, p, 16384+4096, []byte("garbage"))
				return p
			},
			wantKind:   KindForeign,
			wantReason: "cannot load",
		},
		"LUKS2 of someone else (no token)": {
			make:       func(t *testing.T) string { return cliFormat(t, pass) },
			wantKind:   KindLUKS2,
			wantReason: "without a disk-mapper-state token",
		},
		// Anyone can make such a header; only our marker says it is the
		// crypt_format step of an interrupted Format.
		"LUKS2 without keyslots or token, no marker (not ours)": {
			make: func(t *testing.T) string {
				p := cliFormat(t, pass)
				testutil.CryptsetupCLI(t, nil, "luksKillSlot", "-q", p, "0")
				return p
			},
			wantKind:   KindForeign,
			wantReason: "no format marker",
		},
		"LUKS2 without keyslots or token, with the marker (interrupted format)": {
			make: func(t *testing.T) string {
				p := cliFormat(t, pass)
				testutil.CryptsetupCLI(t, nil, "luksKillSlot", "-q", p, "0")
				if err := setFormatMarker(p, true); err != nil {
					t.Fatal(err)
				}
				return p
			},
			wantKind:   KindLUKS2,
			wantState:  StateFormatting,
			wantReason: "interrupted format",
		},
		"ours formatting": {
			make:      func(t *testing.T) string { return oursInState(t, StateFormatting) },
			wantKind:  KindLUKS2,
			wantState: StateFormatting,
		},
		"ours keyed": {
			make:      func(t *testing.T) string { return oursInState(t, StateKeyed) },
			wantKind:  KindLUKS2,
			wantState: StateKeyed,
		},
		"ours initialized": {
			make:      func(t *testing.T) string { return oursInState(t, StateInitialized) },
			wantKind:  KindLUKS2,
			wantState: StateInitialized,
		},
		"ours with the primary header destroyed": {
			make: func(t *testing.T) string {
				p := oursInState(t, StateInitialized)
				testutil.WriteAt(t, p, 0, make([]byte, 4096))
				return p
			},
			wantKind:  KindLUKS2,
			wantState: StateInitialized,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			path := tc.make(t)
			before := fileHash(t, path)
			p, err := ProbeDevice(path)
			if err != nil {
				t.Fatalf("ProbeDevice: %v", err)
			}
			if fileHash(t, path) != before {
				t.Fatal("ProbeDevice changed the device")
			}
			if p.Kind != tc.wantKind || p.State != tc.wantState {
				t.Fatalf("ProbeDevice = %+v, want kind %v state %q", p, tc.wantKind, tc.wantState)
			}
			if (tc.wantReason == "") != (p.Reason == "") || !strings.Contains(p.Reason, tc.wantReason) {
				t.Fatalf("Reason = %q, want it to contain %q", p.Reason, tc.wantReason)
			}
			if p.Kind == KindLUKS2 {
				uuid := strings.TrimSpace(string(testutil.CryptsetupCLI(t, nil, "luksUUID", path)))
				if p.UUID != strings.ToLower(uuid) {
					t.Fatalf("UUID = %q, cryptsetup says %q", p.UUID, uuid)
				}
			} else if p.UUID != "" {
				t.Fatalf("UUID %q on a %v device", p.UUID, p.Kind)
			}
		})
	}
}

func TestProbeDeviceMissing(t *testing.T) {
	if _, err := ProbeDevice(t.TempDir() + "/nope"); err == nil {
		t.Fatal("ProbeDevice of a missing path succeeded")
	}
}

func oursInState(t *testing.T, s State) string {
	d, _ := formatOurs(t)
	if s != StateFormatting {
		if err := d.SetState(s); err != nil {
			t.Fatal(err)
		}
	}
	return d.Path()
}

func markedDisk(t *testing.T) string {
	p := newDisk(t, testDiskSize)
	if err := setFormatMarker(p, true); err != nil {
		t.Fatal(err)
	}
	return p
}

// A Format that fails half-way must leave a disk the next boot formats
// again. On the host, crypt_format with integrity fails after it has
// written to the disk (no device-mapper), which is such a crash.
func TestFailedFormatLeavesRedoableDisk(t *testing.T) {
	path := newDisk(t, testDiskSize)
	d, err := Format(path, FormatOptions{Integrity: true}, randomKey(t))
	if err == nil {
		d.Close()
		t.Skip("this machine has device-mapper with dm-integrity; the failure cannot be provoked")
	}
	t.Logf("Format failed as expected on a host without device-mapper: %v", err)
	p, err := ProbeDevice(path)
	if err != nil {
		t.Fatal(err)
	}
	redoable := p.Kind == KindBlank || (p.Kind == KindLUKS2 && p.State == StateFormatting)
	if !redoable {
		t.Fatalf("after a failed Format, ProbeDevice = %+v; want blank or LUKS2 formatting", p)
	}
}
