package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/diskmapper/disk-mapper/dmctl"
	"github.com/diskmapper/disk-mapper/internal/constants"
	"github.com/diskmapper/disk-mapper/internal/logging"
	"github.com/diskmapper/disk-mapper/recoverproto"
)

// statusLine is the JSON form of one node's status.
type statusLine struct {
	Endpoint       string           `json:"endpoint"`
	State          string           `json:"state,omitempty"`
	DiskUUID       string           `json:"diskUUID,omitempty"`
	Reason         string           `json:"reason,omitempty"`
	WaitingSince   string           `json:"waitingSince,omitempty"`
	RejoinRunning  bool             `json:"rejoinRunning"`
	RejoinAttempts uint32           `json:"rejoinAttempts"`
	NextRejoinInMs *int64           `json:"nextRejoinInMs,omitempty"`
	Endpoints      []endpointStatus `json:"joinEndpoints,omitempty"`
	UnlockedBy     string           `json:"unlockedBy,omitempty"`
	// Outcome is "answered", "refused" or "unreachable".
	Outcome string `json:"outcome"`
	Error   string `json:"error,omitempty"`
}

type endpointStatus struct {
	Endpoint       string `json:"endpoint"`
	Attempts       uint32 `json:"attempts"`
	LastErrorClass string `json:"lastErrorClass,omitempty"`
	LastAttempt    string `json:"lastAttempt,omitempty"`
}

// stateNames are the JSON and text names of the node states.
var stateNames = map[recoverproto.StatusResponse_State]string{
	recoverproto.StatusResponse_WAITING_FOR_KEY:  "waiting_for_key",
	recoverproto.StatusResponse_DISK_REFUSED:     "disk_refused",
	recoverproto.StatusResponse_WAITING_FOR_DISK: "waiting_for_disk",
	recoverproto.StatusResponse_UNLOCKED:         "unlocked",
}

func (e env) statusCmd(args []string) int {
	fl := flag.NewFlagSet("dmctl status", flag.ContinueOnError)
	fl.SetOutput(e.stderr)
	var endpoints endpointList
	fl.Var(&endpoints, "e", fmt.Sprintf("node to ask, HOST[:PORT] (default port %d); repeat or comma-separate for several", constants.RecoveryPort))
	timeout := fl.Duration("timeout", 30*time.Second, "give up on nodes that have not answered after this long")
	jsonOut := fl.Bool("json", false, "print one JSON object per node instead of text")
	var cf credentialFlags
	cf.attestation.Register(fl)
	fl.StringVar(&cf.clientCert, "client-cert", "", "PEM client certificate chaining to the cluster CA (required by every node whose image carries a cluster CA, --join-ca)")
	fl.StringVar(&cf.clientKey, "client-key", "", "PEM private key of --client-cert")
	if err := fl.Parse(args); err != nil {
		return exitUsage
	}
	if fl.NArg() != 0 {
		fmt.Fprintf(e.stderr, "dmctl status: unexpected argument %q\n", fl.Arg(0))
		return exitUsage
	}
	if *timeout <= 0 {
		fmt.Fprintln(e.stderr, "dmctl status: --timeout must be positive")
		return exitUsage
	}
	eps, err := dmctl.NormalizeEndpoints(endpoints, constants.RecoveryPort)
	if err != nil {
		fmt.Fprintf(e.stderr, "dmctl status: %v (give nodes with -e HOST[:PORT])\n", err)
		return exitUsage
	}
	log := logging.New(zapcore.Lock(zapcore.AddSync(e.stderr)), zapcore.WarnLevel)
	creds, err := recoverCredentials(e.fs, cf, log)
	if err != nil {
		fmt.Fprintf(e.stderr, "dmctl status: %v\n", err)
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	results, err := dmctl.Status(ctx, eps, creds)
	if err != nil {
		fmt.Fprintf(e.stderr, "dmctl status: %v\n", err)
		return exitUsage
	}
	rep := newReporter(e, *jsonOut, len(eps) == 1)
	refused, unreachable := 0, 0
	now := time.Now()
	for _, res := range results {
		switch res.Outcome {
		case dmctl.OutcomeRefused:
			refused++
		case dmctl.OutcomeUnreachable:
			unreachable++
		}
		if *jsonOut {
			rep.writeJSON(toStatusLine(res, now))
		} else {
			fmt.Fprint(e.stdout, statusText(res, now))
		}
	}
	return recoverExitCode(refused, unreachable)
}

func toStatusLine(res dmctl.StatusResult, now time.Time) statusLine {
	l := statusLine{Endpoint: res.Endpoint, Outcome: "answered"}
	if res.Err != nil {
		l.Outcome, l.Error = string(res.Outcome), res.Err.Error()
		return l
	}
	st := res.Status
	l.State = stateNames[st.GetState()]
	if l.State == "" {
		l.State = "unknown"
	}
	l.DiskUUID, l.Reason, l.UnlockedBy = st.GetDiskUuid(), st.GetReason(), st.GetUnlockedBy()
	if st.GetWaitingSinceUnix() > 0 {
		l.WaitingSince = time.Unix(st.GetWaitingSinceUnix(), 0).UTC().Format(time.RFC3339)
	}
	l.RejoinRunning, l.RejoinAttempts = st.GetRejoinRunning(), st.GetRejoinAttempts()
	if ms := st.GetNextRejoinUnixMs(); ms > 0 {
		in := max(time.UnixMilli(ms).Sub(now).Milliseconds(), 0)
		l.NextRejoinInMs = &in
	}
	for _, ep := range st.GetEndpoints() {
		e := endpointStatus{Endpoint: ep.GetEndpoint(), Attempts: ep.GetAttempts(), LastErrorClass: ep.GetLastErrorClass()}
		if ep.GetLastAttemptUnix() > 0 {
			e.LastAttempt = time.Unix(ep.GetLastAttemptUnix(), 0).UTC().Format(time.RFC3339)
		}
		l.Endpoints = append(l.Endpoints, e)
	}
	return l
}

// statusText is the operator's reading of one node: what it waits for and
// what to do.
func statusText(res dmctl.StatusResult, now time.Time) string {
	var b strings.Builder
	l := toStatusLine(res, now)
	switch {
	case res.Err != nil && res.Outcome == dmctl.OutcomeUnreachable:
		fmt.Fprintf(&b, "%s: UNREACHABLE: %v\n", l.Endpoint, res.Err)
		return b.String()
	case res.Err != nil:
		fmt.Fprintf(&b, "%s: REFUSED: %v\n", l.Endpoint, res.Err)
		return b.String()
	}
	since := ""
	if l.WaitingSince != "" {
		since = fmt.Sprintf(" since %s (%s)", l.WaitingSince, now.Sub(time.Unix(res.Status.GetWaitingSinceUnix(), 0)).Round(time.Second))
	}
	switch l.State {
	case "waiting_for_key":
		fmt.Fprintf(&b, "%s: waiting for its decryption key%s, disk %s\n", l.Endpoint, since, l.DiskUUID)
		if !l.RejoinRunning {
			fmt.Fprintf(&b, "  rejoin: not running (no JoinService endpoints); push the key with dmctl recover\n")
		} else {
			next := "a round is under way"
			if l.NextRejoinInMs != nil {
				next = fmt.Sprintf("next round in %s", (time.Duration(*l.NextRejoinInMs) * time.Millisecond).Round(100*time.Millisecond))
			}
			fmt.Fprintf(&b, "  rejoin: %d attempts, %s\n", l.RejoinAttempts, next)
			for _, ep := range l.Endpoints {
				last := "no failure"
				if ep.LastErrorClass != "" {
					last = "last error: " + ep.LastErrorClass
				}
				fmt.Fprintf(&b, "    %s: %d attempts, %s\n", ep.Endpoint, ep.Attempts, last)
			}
		}
	case "disk_refused":
		fmt.Fprintf(&b, "%s: state disk refused: %s (waiting for an operator%s)\n", l.Endpoint, l.Reason, since)
	case "waiting_for_disk":
		fmt.Fprintf(&b, "%s: waiting for a state disk: %s%s\n", l.Endpoint, l.Reason, since)
	case "unlocked":
		fmt.Fprintf(&b, "%s: unlocked (key from %s), shutting down its RecoveryServer\n", l.Endpoint, l.UnlockedBy)
	default:
		fmt.Fprintf(&b, "%s: unknown state %v\n", l.Endpoint, res.Status.GetState())
	}
	return b.String()
}
