package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/diskmapper/disk-mapper/dmctl"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/diskmapper/disk-mapper/internal/masterkey"
	"go.uber.org/zap/zapcore"
)

// endpointList is a repeatable -e flag that also takes comma-separated lists.
type endpointList []string

func (l *endpointList) String() string { return strings.Join(*l, ",") }
func (l *endpointList) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*l = append(*l, part)
		}
	}
	return nil
}

func (e env) recoverCmd(args []string) int {
	fl := flag.NewFlagSet("dmctl recover", flag.ContinueOnError)
	fl.SetOutput(e.stderr)
	var endpoints endpointList
	fl.Var(&endpoints, "e", fmt.Sprintf("node to recover, HOST[:PORT] (default port %d); repeat or comma-separate for several", constants.RecoveryPort))
	secretPath := fl.String("master-secret", "", "the cluster's master-secret file")
	timeout := fl.Duration("timeout", 5*time.Minute, "give up on nodes that have not taken their key after this long")
	jsonOut := fl.Bool("json", false, "print one JSON object per line instead of text")
	var cf credentialFlags
	cf.attestation.Register(fl)
	fl.StringVar(&cf.clientCert, "client-cert", "", "PEM client certificate chaining to the cluster CA (required by every node whose image carries a cluster CA, --join-ca)")
	fl.StringVar(&cf.clientKey, "client-key", "", "PEM private key of --client-cert")
	if err := fl.Parse(args); err != nil {
		return exitUsage
	}
	if fl.NArg() != 0 {
		fmt.Fprintf(e.stderr, "dmctl recover: unexpected argument %q\n", fl.Arg(0))
		return exitUsage
	}
	if *secretPath == "" {
		fmt.Fprintln(e.stderr, "dmctl recover: --master-secret is required")
		return exitUsage
	}
	if *timeout <= 0 {
		fmt.Fprintln(e.stderr, "dmctl recover: --timeout must be positive")
		return exitUsage
	}
	eps, err := dmctl.NormalizeEndpoints(endpoints, constants.RecoveryPort)
	if err != nil {
		fmt.Fprintf(e.stderr, "dmctl recover: %v (give nodes with -e HOST[:PORT])\n", err)
		return exitUsage
	}
	secret, err := masterkey.Load(e.fs, *secretPath)
	if err != nil {
		fmt.Fprintf(e.stderr, "dmctl recover: %v\n", err)
		return exitUsage
	}
	defer func() { clear(secret.Key); clear(secret.Salt) }()

	// Warnings (development attestation) go to stderr as log lines.
	log := logging.New(zapcore.Lock(zapcore.AddSync(e.stderr)), zapcore.WarnLevel)
	creds, err := recoverCredentials(e.fs, cf, log)
	if err != nil {
		fmt.Fprintf(e.stderr, "dmctl recover: %v\n", err)
		return exitUsage
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	rep := newReporter(e, *jsonOut, len(eps) == 1)
	results, err := dmctl.Recover(ctx, dmctl.RecoverConfig{
		Endpoints:    eps,
		MasterSecret: secret,
		Credentials:  creds,
		Progress:     rep.progress,
	})
	if err != nil {
		fmt.Fprintf(e.stderr, "dmctl recover: %v\n", err)
		return exitUsage
	}
	return rep.summary(results)
}

// reporter prints progress as text (steps on stderr, outcomes on stdout,
// "Pushed recovery key." as in the seed) or as JSON lines on stdout.
type reporter struct {
	env
	json   bool
	single bool
}

func newReporter(e env, jsonOut, single bool) *reporter {
	return &reporter{env: e, json: jsonOut, single: single}
}

// progressLine is the JSON form of a step.
type progressLine struct {
	Endpoint  string `json:"endpoint,omitempty"`
	Event     string `json:"event"`
	Attempt   int    `json:"attempt,omitempty"`
	DiskUUID  string `json:"diskUUID,omitempty"`
	RetryInMs int64  `json:"retryInMs,omitempty"`
	Error     string `json:"error,omitempty"`
	// Outcome is set on a node's final line (pushed, already_unlocked,
	// failed): unlocked, already_unlocked, refused or unreachable.
	Outcome string `json:"outcome,omitempty"`
	Detail  string `json:"detail,omitempty"`
	Pushed  *int   `json:"pushed,omitempty"`
	Failed  *int   `json:"failed,omitempty"`
	// Summary counts per outcome.
	Unlocked        *int `json:"unlocked,omitempty"`
	AlreadyUnlocked *int `json:"alreadyUnlocked,omitempty"`
	Refused         *int `json:"refused,omitempty"`
	Unreachable     *int `json:"unreachable,omitempty"`
	ExitCode        *int `json:"exitCode,omitempty"`
}

func (r *reporter) progress(p dmctl.Progress) {
	if r.json {
		line := progressLine{Endpoint: p.Endpoint, Event: string(p.Stage), Attempt: p.Attempt, DiskUUID: p.DiskUUID,
			RetryInMs: p.RetryIn.Milliseconds(), Detail: p.Detail}
		if p.Err != nil {
			line.Error = p.Err.Error()
		}
		switch p.Stage {
		case dmctl.StagePushed:
			line.Outcome = string(dmctl.OutcomeUnlocked)
		case dmctl.StageAlreadyUnlocked:
			line.Outcome = string(dmctl.OutcomeAlreadyUnlocked)
		case dmctl.StageFailed:
			line.Outcome = string(failedOutcome(p.Err))
		}
		r.writeJSON(line)
		return
	}
	switch p.Stage {
	case dmctl.StageConnecting:
		if p.Attempt == 1 {
			fmt.Fprintf(r.stderr, "%s: connecting\n", p.Endpoint)
		}
	case dmctl.StageRetrying:
		fmt.Fprintf(r.stderr, "%s: not ready (%v); retrying in %s (attempt %d)\n", p.Endpoint, p.Err, p.RetryIn.Round(time.Millisecond), p.Attempt+1)
	case dmctl.StageDiskUUID:
		fmt.Fprintf(r.stderr, "%s: node attested, disk %s: pushing its key\n", p.Endpoint, p.DiskUUID)
	case dmctl.StagePushed:
		if r.single {
			fmt.Fprintln(r.stdout, "Pushed recovery key.")
		} else {
			fmt.Fprintf(r.stdout, "%s: Pushed recovery key.\n", p.Endpoint)
		}
	case dmctl.StageAlreadyUnlocked:
		// The node's own words say by whom ("already unlocked by its
		// JoinService: ..."); the operator has nothing left to do.
		if r.single {
			fmt.Fprintf(r.stdout, "Node is %s.\n", p.Detail)
		} else {
			fmt.Fprintf(r.stdout, "%s: Node is %s.\n", p.Endpoint, p.Detail)
		}
	case dmctl.StageFailed:
		if failedOutcome(p.Err) == dmctl.OutcomeUnreachable {
			fmt.Fprintf(r.stderr, "%s: UNREACHABLE: %v\n", p.Endpoint, p.Err)
		} else {
			fmt.Fprintf(r.stderr, "%s: REFUSED: %v\n", p.Endpoint, p.Err)
		}
	}
}

// failedOutcome classifies the error of a StageFailed step like Recover's
// Result.Outcome.
func failedOutcome(err error) dmctl.Outcome {
	if dmctl.GaveUp(err) {
		return dmctl.OutcomeUnreachable
	}
	return dmctl.OutcomeRefused
}

// recoverExitCode: 0 all unlocked, 1 some refused, 3 some unreachable (and
// none refused).
func recoverExitCode(refused, unreachable int) int {
	switch {
	case refused > 0:
		return exitFailed
	case unreachable > 0:
		return exitUnreachable
	}
	return exitOK
}

func (r *reporter) summary(results []dmctl.Result) int {
	counts := map[dmctl.Outcome]int{}
	for _, res := range results {
		counts[res.Outcome]++
	}
	unlocked, already := counts[dmctl.OutcomeUnlocked], counts[dmctl.OutcomeAlreadyUnlocked]
	refused, unreachable := counts[dmctl.OutcomeRefused], counts[dmctl.OutcomeUnreachable]
	pushed, failed := unlocked+already, refused+unreachable
	code := recoverExitCode(refused, unreachable)
	if r.json {
		r.writeJSON(progressLine{Event: "summary", Pushed: &pushed, Failed: &failed, Unlocked: &unlocked,
			AlreadyUnlocked: &already, Refused: &refused, Unreachable: &unreachable, ExitCode: &code})
	} else if !r.single || failed > 0 {
		fmt.Fprintf(r.stderr, "Recovered %d of %d nodes (%d pushed, %d already unlocked, %d refused, %d unreachable).\n",
			pushed, len(results), unlocked, already, refused, unreachable)
	}
	return code
}

func (r *reporter) writeJSON(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintf(r.stderr, "dmctl: encoding progress: %v\n", err)
		return
	}
	fmt.Fprintln(r.stdout, string(b))
}
