package attestation_test

import (
	"context"
	"crypto"
	"strings"
	"testing"

	"github.com/spf13/afero"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/attestation/attestationtest"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/testutil"
)

// A node whose PCR 12 (its configuration) differs from the expected value
// is refused even though its image (PCR 11) is the genuine one, and the
// error says the measurements differ and names the PCR.
func TestValidatorRefusesADifferentConfigurationPCR(t *testing.T) {
	tpm := attestationtest.StartSwTPM(t, "")
	pcr11 := extend(t, tpm, constants.PCRImage, "genuine image")
	pcr12 := extend(t, tpm, constants.PCRConfig, "argv of a boot with one more flag")
	genuine12 := attestation.ExtendedValue(make([]byte, 32))
	iss := newIssuer(t, tpm)
	ak := []crypto.PublicKey{testutil.AKPublicKey(t, tpm)}
	zero := make([]byte, 32)
	binding := randomBinding(t)
	doc, err := iss.Issue(context.Background(), binding)
	if err != nil {
		t.Fatal(err)
	}

	v := newValidator(t, attestation.ValidatorConfig{PinnedAKs: ak, Measurements: attestation.Measurements{
		constants.PCRImage: pcr11, constants.PCRConfig: genuine12, constants.PCRClusterID: zero}})
	err = v.Validate(context.Background(), doc, binding)
	wantRejected(t, err, "measurements differ")
	if err != nil && (!strings.Contains(err.Error(), "PCR 12 mismatch") || strings.Contains(err.Error(), "PCR 11 mismatch")) {
		t.Errorf("error %q should name PCR 12 and only PCR 12", err)
	}

	ok := newValidator(t, attestation.ValidatorConfig{PinnedAKs: ak, Measurements: attestation.Measurements{
		constants.PCRImage: pcr11, constants.PCRConfig: pcr12, constants.PCRClusterID: zero}})
	if err := ok.Validate(context.Background(), doc, binding); err != nil {
		t.Fatalf("the node's own values refused: %v", err)
	}
}

func TestMeasurementsMissing(t *testing.T) {
	full := attestation.Measurements{11: make([]byte, 32), 12: make([]byte, 32), 15: make([]byte, 32)}
	if got := full.Missing(constants.RequiredPCRs()); len(got) != 0 {
		t.Errorf("full: missing %v", got)
	}
	if got := (attestation.Measurements{11: make([]byte, 32), 15: make([]byte, 32)}).Missing(constants.RequiredPCRs()); len(got) != 1 || got[0] != 12 {
		t.Errorf("without 12: missing %v, want [12]", got)
	}
	if got := (attestation.Measurements{}).Missing(constants.RequiredPCRs()); len(got) != 3 {
		t.Errorf("empty: missing %v, want all three", got)
	}
}

func TestLoadMeasurementsRefusesAnEmptyFile(t *testing.T) {
	fs := afero.NewMemMapFs()
	for _, content := range []string{"", " \n"} {
		_ = afero.WriteFile(fs, "/m.json", []byte(content), 0o644)
		if _, err := attestation.LoadMeasurements(fs, "/m.json"); err == nil || !strings.Contains(err.Error(), "is empty") {
			t.Errorf("%q: err = %v, want one saying the file is empty", content, err)
		}
	}
}
