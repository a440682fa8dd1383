package setup

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/spf13/afero"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/diskmapper/disk-mapper/internal/prereq"
	"github.com/diskmapper/disk-mapper/internal/testutil"
	"github.com/diskmapper/disk-mapper/internal/unlock"
)

// Issue 9 item 1 through the lifecycle, on a real LUKS2 file: the host
// rewrites the header while the node waits for its key. The node must not
// enrol, must say which field changed, and must wait for an operator with
// its recovery listener up (not exit, not reformat).
func TestBlankDiskHeaderRewrittenDuringKeyWaitIsRefused(t *testing.T) {
	path := testutil.SparseFile(t, "state.img", 40<<20)
	ms := testSecret(t)
	var logs testutil.LogBuffer
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), &logs, zapcore.DebugLevel))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var modes []DiskMode
	var key unlock.Key
	var refusedAnswer error
	factory := func(uuid string, mode DiskMode) ([]KeySource, error) {
		modes = append(modes, mode)
		if mode == ModeBlank {
			return []KeySource{sourceFunc{name: "RecoveryServer", serve: func(c context.Context, check unlock.Check) error {
				testutil.RewriteLUKS2HeaderJSON(t, path, func(m map[string]any) {
					m["segments"].(map[string]any)["0"].(map[string]any)["encryption"] = "cipher_null-ecb"
				})
				key = ticketFor(t, ms, uuid)
				return check(c, cloneKey(key))
			}}}, nil
		}
		return []KeySource{sourceFunc{name: "RecoveryServer", serve: func(c context.Context, check unlock.Check) error {
			refusedAnswer = check(c, cloneKey(key))
			cancel()
			<-c.Done()
			return c.Err()
		}}}, nil
	}
	cfg := DefaultConfig()
	cfg.StateDisk = path
	cfg.MappingName = "disk-mapper-setup-test-never"
	cfg.Integrity = false // needs device-mapper
	mgr := New(cfg, log, LUKSBackend(), &fakeMounter{}, afero.NewMemMapFs(), &fakeMarker{}, factory)

	_, err := mgr.Run(ctx)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "segments.0.encryption") {
		t.Fatalf("Run = %v, want ErrRefused naming segments.0.encryption", err)
	}
	if len(modes) != 2 || modes[0] != ModeBlank || modes[1] != ModeRefused {
		t.Fatalf("source modes %v, want blank then refused", modes)
	}
	if !errors.Is(refusedAnswer, unlock.ErrRefusedDisk) {
		t.Fatalf("push to the refused node answered %v", refusedAnswer)
	}
	var refusal map[string]any
	for _, l := range testutil.ParseLogLines(t, logs.String()) {
		if l["msg"] == "Refusing state disk; waiting for an operator" {
			refusal = l
		}
	}
	if reason, _ := refusal["reason"].(string); !strings.Contains(reason, "segments.0.encryption") {
		t.Fatalf("refusal log %v does not name the field", refusal)
	}
	// No allow-list here: would the key open any keyslot at all?
	check := exec.Command(prereq.NeedTool(t, "cryptsetup", "cryptsetup-bin"), "open", "--test-passphrase", "--key-file", "-", path)
	check.Stdin = bytes.NewReader(key.DiskKey)
	if check.Run() == nil {
		t.Fatal("the cluster key was enrolled into the rewritten header")
	}
}
