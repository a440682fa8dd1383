package attestation_test

import (
	"context"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/diskmapper/disk-mapper/internal/attestation"
)

func TestDevIssuerValidatorWarnOnEveryUse(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	log := zap.New(core)
	iss, v := attestation.NewDevIssuer(log), attestation.NewDevValidator(log)
	issueAndValidate(t, iss, v, 3)
	if n := logs.FilterField(zap.String("event", "attestation_dev_issue")).Len(); n != 3 {
		t.Errorf("dev issuer warned %d times for 3 uses", n)
	}
	if n := logs.FilterField(zap.String("event", "attestation_dev_validate")).Len(); n != 3 {
		t.Errorf("dev validator warned %d times for 3 uses", n)
	}

	doc, err := iss.Issue(context.Background(), randomBinding(t))
	if err != nil {
		t.Fatal(err)
	}
	wantRejected(t, v.Validate(context.Background(), doc, randomBinding(t)), "not bound to this session")
	// A production validator never accepts a dev document.
	prod, err := attestation.NewTPMValidator(attestation.ValidatorConfig{TrustAnyAK: true})
	if err != nil {
		t.Fatal(err)
	}
	b := randomBinding(t)
	doc, err = iss.Issue(context.Background(), b)
	if err != nil {
		t.Fatal(err)
	}
	wantRejected(t, prod.Validate(context.Background(), doc, b), `type "dev"`)
}
