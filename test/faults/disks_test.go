package faults

import (
	"crypto/sha256"
	"encoding/binary"
	"os"
	"os/exec"
	"sort"
	"testing"

	"github.com/diskmapper/disk-mapper/diskencryption"
	"github.com/diskmapper/disk-mapper/internal/testutil"

	"github.com/diskmapper/disk-mapper/internal/prereq"
)

const (
	mib      = 1 << 20
	diskSize = 40 * mib
	// headerRegion is what Format writes at the front (two header copies
	// and the keyslot area; the data segment starts here). Everything after
	// it is the user's data on an initialized disk.
	headerRegion = 16 * mib
)

// newBlankFile creates a sparse zero file of size bytes.
func newBlankFile(t testing.TB, size int64) string {
	t.Helper()
	return testutil.SparseFile(t, "state.img", size)
}

// ourDisk is a state disk formatted by the real diskencryption.Format, with
// the cluster key enrolled, moved to state, and (if initialized) random
// "user data" in its data area.
type ourDisk struct {
	path string
	uuid string
	key  []byte
}

func newOurDisk(t testing.TB, state diskencryption.State, keyFor func(uuid string) []byte) ourDisk {
	t.Helper()
	path := newBlankFile(t, diskSize)
	temp := randomKey(t)
	d, err := diskencryption.Format(path, diskencryption.FormatOptions{}, temp)
	if err != nil {
		t.Fatalf("Format: %v", err)
	}
	defer d.Close()
	key := keyFor(d.UUID())
	if state != diskencryption.StateFormatting {
		if err := d.EnrollKey(temp, key); err != nil {
			t.Fatalf("EnrollKey: %v", err)
		}
		if err := d.SetState(state); err != nil {
			t.Fatalf("SetState: %v", err)
		}
	}
	if state == diskencryption.StateInitialized {
		// Stand-in for the file system: ciphertext-like random bytes in the
		// first, a middle and the last MiB of the data area.
		for _, off := range []int64{headerRegion, diskSize / 2, diskSize - mib} {
			testutil.WriteAt(t, path, off, testutil.RandomBytes(t, mib))
		}
	}
	return ourDisk{path: path, uuid: d.UUID(), key: key}
}

func readAll(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return b
}

// changedBytes counts the bytes of before[from:] that after does not hold
// any more (a shorter after counts the missing tail as lost).
func changedBytes(before, after []byte, from int) int64 {
	var n int64
	for i := from; i < len(before); i++ {
		if i >= len(after) || before[i] != after[i] {
			n++
		}
	}
	return n
}

func sum(b []byte) [32]byte { return sha256.Sum256(b) }

// --- fault injectors -------------------------------------------------------

// corruptHeaderCopy overwrites the JSON area of the header copy at off with
// garbage (its checksum no longer matches), as a torn write or bit rot would.
func corruptHeaderCopy(t testing.TB, path string, off int64) {
	t.Helper()
	testutil.WriteAt(t, path, off+4096, testutil.RandomBytes(t, 512))
}

// section returns entry id of a header section, or its first entry for id "".
func section(m map[string]any, name, id string) map[string]any {
	entries := m[name].(map[string]any)
	if id == "" {
		for _, k := range sortedKeys(entries) {
			return entries[k].(map[string]any)
		}
	}
	return entries[id].(map[string]any)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// makeExt4 puts a real ext4 file system on a file with mkfs.ext4.
func makeExt4(t testing.TB) string {
	t.Helper()
	bin := prereq.NeedTool(t, "mkfs.ext4", "e2fsprogs")
	path := newBlankFile(t, diskSize)
	if out, err := exec.Command(bin, "-q", "-F", path).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return path
}

// makeGPT writes a protective MBR and a GPT header (primary and backup), the
// signatures every partitioning tool writes; the rest stays zero.
func makeGPT(t testing.TB) string {
	t.Helper()
	path := newBlankFile(t, diskSize)
	mbr := make([]byte, 512)
	mbr[446+4] = 0xEE // partition type: GPT protective
	binary.LittleEndian.PutUint32(mbr[446+8:], 1)
	binary.LittleEndian.PutUint32(mbr[446+12:], uint32(diskSize/512-1))
	mbr[510], mbr[511] = 0x55, 0xAA
	testutil.WriteAt(t, path, 0, mbr)
	hdr := make([]byte, 92)
	copy(hdr, "EFI PART")
	binary.LittleEndian.PutUint32(hdr[8:], 0x00010000)
	binary.LittleEndian.PutUint32(hdr[12:], 92)
	testutil.WriteAt(t, path, 512, hdr)
	testutil.WriteAt(t, path, diskSize-512, hdr)
	return path
}

// makeMBR writes a DOS partition table with one Linux partition.
func makeMBR(t testing.TB) string {
	t.Helper()
	path := newBlankFile(t, diskSize)
	mbr := make([]byte, 512)
	mbr[446+4] = 0x83
	binary.LittleEndian.PutUint32(mbr[446+8:], 2048)
	binary.LittleEndian.PutUint32(mbr[446+12:], uint32(diskSize/512-2048))
	mbr[510], mbr[511] = 0x55, 0xAA
	testutil.WriteAt(t, path, 0, mbr)
	return path
}

// makeCLILUKS2 formats a LUKS2 header with the cryptsetup CLI: a valid LUKS2
// disk that is not ours (no state token).
func makeCLILUKS2(t testing.TB, passphrase []byte) string {
	t.Helper()
	path := newBlankFile(t, diskSize)
	testutil.CLIFormatLUKS2(t, path, passphrase)
	return path
}
