// Command placeholder stands in for cmd/disk-mapper in the harness's own
// smoke test, so the image and the harness are proven independently of the
// daemon. It has the daemon's shape: a cgo binary linked against
// libcryptsetup (so the image's ldd closure + libgcc_s is exercised), the
// daemon's flags, JSON log lines on stdout, exit 0 once /dev/mapper/state is
// open. It maps the disk with a fixed, publicly known test passphrase: it
// protects nothing and must never be used outside the test image.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	cryptsetup "github.com/martinjungblut/go-cryptsetup"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/logging"
)

// testPassphrase is public on purpose: the placeholder tests the image, not secrecy.
const testPassphrase = "vmtest-placeholder-not-a-secret"

func main() {
	log := logging.New(zapcore.Lock(os.Stdout), zapcore.InfoLevel)
	os.Exit(run(log, os.Args[1:]))
}

func run(log *zap.Logger, args []string) int {
	fs := flag.NewFlagSet("placeholder", flag.ContinueOnError)
	stateDisk := fs.String("state-disk", constants.DefaultStateDisk, "state disk")
	tpmDevice := fs.String("tpm-device", constants.TPMDevice, "TPM device")
	exitCode := fs.Int("exit", 0, "exit with this code right after the TPM check (tests init's failure path)")
	// The daemon's other flags are accepted so the same command lines boot both.
	for _, name := range []string{"recovery-addr", "join-endpoints", "metadata-url", "attestation", "join-ca", "integrity", "cloud-provider"} {
		fs.String(name, "", "accepted and ignored")
	}
	if err := fs.Parse(args); err != nil {
		log.Error("Bad flags", logging.Event("bad_flags"), zap.Error(err))
		return 2
	}
	log.Info("Starting disk-mapper", logging.Event("start"), zap.String("version", "placeholder"))

	if err := logTPM(log, *tpmDevice); err != nil {
		log.Error("TPM check failed", logging.Event("tpm_failed"), zap.Error(err))
		return 3
	}
	if *exitCode != 0 {
		log.Info("Exiting as asked", logging.Event("exit_requested"), zap.Int("code", *exitCode))
		return *exitCode
	}
	start := time.Now()
	formatted, err := mapDisk(*stateDisk)
	if err != nil {
		log.Error("Mapping the state disk failed", logging.Event("map_failed"), zap.Error(err))
		return 1
	}
	log.Info("State disk mapped", logging.Event("mapped"), zap.Bool("formatted", formatted),
		zap.String("device", constants.MappedDevicePath), zap.Duration("duration", time.Since(start)))
	return 0
}

// logTPM reads PCRs 11, 12 and 15 so the harness can check the init's
// measurements against what it computed for the boot (Image.Expected).
func logTPM(log *zap.Logger, device string) error {
	tpm, err := linuxtpm.Open(device)
	if err != nil {
		return err
	}
	defer tpm.Close()
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(constants.PCRImage, constants.PCRConfig, constants.PCRClusterID),
	}}}
	rsp, err := tpm2.PCRRead{PCRSelectionIn: sel}.Execute(tpm)
	if err != nil {
		return fmt.Errorf("PCRRead: %w", err)
	}
	if len(rsp.PCRValues.Digests) != 3 {
		return fmt.Errorf("PCRRead returned %d digests, want 3", len(rsp.PCRValues.Digests))
	}
	log.Info("TPM present", logging.Event("tpm"), zap.String("device", device),
		zap.String("pcr11", fmt.Sprintf("%x", rsp.PCRValues.Digests[0].Buffer)),
		zap.String("pcr12", fmt.Sprintf("%x", rsp.PCRValues.Digests[1].Buffer)),
		zap.String("pcr15", fmt.Sprintf("%x", rsp.PCRValues.Digests[2].Buffer)))
	return nil
}

// mapDisk opens the LUKS2 disk as "state", formatting a non-LUKS disk first
// (the placeholder does not check for blankness: its disks are test files).
func mapDisk(disk string) (formatted bool, err error) {
	dev, err := cryptsetup.Init(disk)
	if err != nil {
		return false, fmt.Errorf("init %s: %w", disk, err)
	}
	defer dev.Free()
	if err := dev.Load(cryptsetup.LUKS2{}); err != nil {
		if err := format(dev); err != nil {
			return false, err
		}
		formatted = true
	}
	if err := dev.ActivateByPassphrase(constants.MappingName, cryptsetup.CRYPT_ANY_SLOT, testPassphrase, 0); err != nil {
		return formatted, fmt.Errorf("activate: %w", err)
	}
	if formatted {
		if out, err := exec.Command("mkfs.ext4", "-q", "-b", "4096", constants.MappedDevicePath).CombinedOutput(); err != nil {
			return formatted, fmt.Errorf("mkfs.ext4: %w: %s", err, out)
		}
	}
	return formatted, nil
}

func format(dev *cryptsetup.Device) error {
	err := dev.Format(cryptsetup.LUKS2{
		SectorSize: 4096,
		PBKDFType: &cryptsetup.PbkdfType{
			Type: "pbkdf2", Hash: "sha256", Iterations: 1000, Flags: cryptsetup.CRYPT_PBKDF_NO_BENCHMARK,
		},
	}, cryptsetup.GenericParams{Cipher: "aes", CipherMode: "xts-plain64", VolumeKeySize: 64})
	if err != nil {
		return fmt.Errorf("format: %w", err)
	}
	if err := dev.KeyslotAddByVolumeKey(0, "", testPassphrase); err != nil {
		return errors.Join(errors.New("keyslot add"), err)
	}
	return nil
}
