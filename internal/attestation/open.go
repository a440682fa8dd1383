package attestation

import (
	"fmt"
	"os"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"
)

// OpenPath returns an OpenFunc for path: a TPM device (/dev/tpmrm0, the
// kernel's resource manager) or an swtpm unix socket (swtpm started with
// --server type=unixio and --flags not-need-init,startup-clear).
func OpenPath(path string) OpenFunc {
	return func() (transport.TPMCloser, error) {
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("opening TPM %s: %w", path, err)
		}
		if fi.Mode()&os.ModeSocket != 0 {
			return linuxudstpm.Open(path)
		}
		t, err := linuxtpm.Open(path)
		if err != nil {
			return nil, fmt.Errorf("opening TPM %s: %w", path, err)
		}
		return t, nil
	}
}
