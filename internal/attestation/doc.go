// Package attestation produces and checks TPM 2.0 attestation documents
// (DESIGN.md §6), marks a bootstrapped node in PCR 15, and provisions the
// attestation key (AK) certificate a platform CA issues.
//
// # Binding
//
// An Issuer quotes over a 32-byte binding it is given; a Validator checks the
// document against the binding it computed itself. The aTLS layer
// (package atls) passes
//
//	binding = SHA-256(exporter || SHA-256(attester's certificate SubjectPublicKeyInfo))
//	exporter = tls.ConnectionState.ExportKeyingMaterial("disk-mapper aTLS", nil, 32)
//
// so a document is bound to one TLS session (freshness: both sides contribute
// to the exporter, a replayed document never matches) and to the attester's
// TLS key.
//
// # Document format (version 1)
//
// A document is a JSON object:
//
//	{
//	  "version": 1,
//	  "type": "tpm2-quote",
//	  "quote": base64(TPMS_ATTEST as the TPM returned it from TPM2_Quote),
//	  "signature": base64(TPMT_SIGNATURE over SHA-256(quote)),
//	  "pcrs": {"0": "<hex sha256>", …, "15": "<hex sha256>"},
//	  "ak_public": base64(TPMT_PUBLIC of the attestation key),
//	  "ak_certificate": base64(DER X.509 certificate of the AK)   // optional
//	}
//
// The quote covers QuotedPCRs (PCRs 0–15 of the SHA-256 bank) with
// qualifying data (extraData) = binding. The AK is a restricted ECC P-256
// ECDSA-SHA256 signing key, created as a primary under the endorsement
// hierarchy from a fixed template (akTemplate), so a TPM has the same AK on
// every boot without persisting it. A document is at most MaxDocumentSize.
// Development documents ("type": "dev", no TPM) carry only the binding and
// are accepted only by the development validator.
//
// # Validation
//
// A TPM validator checks, in this order: the document parses and has version
// 1 and type tpm2-quote; the AK is trusted (see below) and is a restricted
// signing key; the signature over the quote is by the AK; the quote is a
// TPM-generated TPM_ST_ATTEST_QUOTE; its qualifying data equals the binding;
// it selects exactly QuotedPCRs; its PCR digest equals SHA-256 of the
// reported PCR values; every expected PCR (Measurements) matches; PCR 15 is
// all zero (a node asks for keys only before it marked itself).
//
// AK trust, in ValidatorConfig: an AK certificate (stored by the platform in
// TPM NV at AKCertNVIndex, sent in the document) that chains to a platform
// CA pool and whose key is the AK; or pinned AK public keys; or TrustAnyAK,
// for development only, which logs a warning on every validation.
//
// # Scheduling quotes
//
// A TPM runs one command at a time and a quote takes tens of milliseconds on
// hardware, so who may ask for one, and in which order, is part of the
// node's availability. A TPMIssuer serialises its quotes on one device lock
// with two queues: Issue (the RejoinClient) is foreground, quotes through
// NewBackgroundIssuer (the RecoveryServer's handshakes, which anybody who
// reaches the port can cause) are background and bounded by QuoteLimits
// (fail fast when full, and a cap per source address). A foreground quote
// waits at most for the one quote the TPM is running. Waiting honours the
// context, and the context is checked again right before TPM2_Quote; the
// aTLS layer ends it when the peer's connection fails, so a peer that hung
// up, was evicted or timed out costs no quote. The AK is derived once and
// then loaded from its saved context (TPM2_ContextSave/ContextLoad), which
// makes a quote cheaper without changing the key.
//
// # PCR 15 marking
//
// After the node obtained its keys it extends the 32-byte cluster ID
// directly as the SHA-256 bank digest into PCR 15 (constants.PCRClusterID):
//
//	clusterID = HKDF-SHA256(ikm=measurement secret, salt=measurement salt, info="key-clusterID", 32)
//	PCR15     = SHA-256(32 zero bytes || clusterID)
//
// which ExpectedPCR15 computes, so an operator can check a marked node from
// the master secret alone (measurement secret and salt derive from it).
package attestation
