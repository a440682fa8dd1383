package dmctl

import (
	"fmt"
	"maps"

	"github.com/diskmapper/disk-mapper/internal/attestation"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/masterkey"
)

// ExpectedMeasurements returns the PCR values a node of this cluster shows
// once it has its keys and marked itself: the image's measurements plus PCR
// 15 extended with the cluster ID (derived from the measurement secret and
// salt). While a node asks for keys its PCR 15 is zero instead; validators
// take the image measurements for that.
func ExpectedMeasurements(image attestation.Measurements, secret masterkey.MasterSecret) (attestation.Measurements, error) {
	measurementSecret, err := secret.MeasurementSecret()
	if err != nil {
		return nil, fmt.Errorf("deriving measurement secret: %w", err)
	}
	defer clear(measurementSecret)
	measurementSalt, err := secret.MeasurementSalt()
	if err != nil {
		return nil, fmt.Errorf("deriving measurement salt: %w", err)
	}
	clusterID, err := masterkey.ClusterID(measurementSecret, measurementSalt)
	if err != nil {
		return nil, fmt.Errorf("deriving cluster ID: %w", err)
	}
	out := maps.Clone(image)
	if out == nil {
		out = attestation.Measurements{}
	}
	out[constants.PCRClusterID] = attestation.ExpectedPCR15(clusterID)
	return out, nil
}
