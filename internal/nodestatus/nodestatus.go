// Package nodestatus keeps what `dmctl status` reports about the
// RejoinClient: rejoin attempts, the last error class per endpoint and the
// next retry. It learns them from the RejoinClient's own log events
// (rejoin_client_started, rejoin_ticket_requested, rejoin_endpoint_failed,
// rejoin_ticket_accepted, rejoin_backoff), so what the node answers is what
// its console says. It holds no key material: the events carry none.
package nodestatus

import (
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/diskmapper/disk-mapper/internal/logging"
)

// Endpoint is one JoinService endpoint's record.
type Endpoint struct {
	Endpoint       string
	Attempts       int
	LastErrorClass string
	LastAttempt    time.Time
}

// Rejoin is a snapshot of the RejoinClient's progress.
type Rejoin struct {
	Running   bool
	Since     time.Time
	Attempts  int
	Endpoints []Endpoint // sorted by endpoint
	NextRound time.Time  // zero: unknown, or a round is under way
}

// Board collects the RejoinClient's progress. The zero value is not usable;
// call New. It is safe for concurrent use.
type Board struct {
	mu        sync.Mutex
	running   bool
	since     time.Time
	attempts  int
	endpoints map[string]*Endpoint
	nextRound time.Time
	now       func() time.Time
}

// New returns an empty Board.
func New() *Board { return &Board{endpoints: map[string]*Endpoint{}, now: time.Now} }

// Observe returns log with the Board listening to its events (at every
// level, Debug included; what log itself writes is unchanged).
func (b *Board) Observe(log *zap.Logger) *zap.Logger {
	return log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewTee(c, &observer{board: b})
	}))
}

// Rejoin returns a snapshot.
func (b *Board) Rejoin() Rejoin {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := Rejoin{Running: b.running, Since: b.since, Attempts: b.attempts, NextRound: b.nextRound}
	for _, e := range b.endpoints {
		r.Endpoints = append(r.Endpoints, *e)
	}
	sort.Slice(r.Endpoints, func(i, j int) bool { return r.Endpoints[i].Endpoint < r.Endpoints[j].Endpoint })
	return r
}

func (b *Board) event(name string, fields map[string]any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	endpoint, _ := fields["endpoint"].(string)
	ep := func() *Endpoint {
		e, ok := b.endpoints[endpoint]
		if !ok {
			e = &Endpoint{Endpoint: endpoint}
			b.endpoints[endpoint] = e
		}
		return e
	}
	switch name {
	case "rejoin_client_started":
		b.running, b.since, b.attempts, b.nextRound = true, now, 0, time.Time{}
		b.endpoints = map[string]*Endpoint{}
	case "rejoin_client_stopped":
		b.running, b.nextRound = false, time.Time{}
	case "rejoin_ticket_requested":
		b.attempts++
		b.nextRound = time.Time{}
		e := ep()
		e.Attempts++
		e.LastAttempt = now
	case "rejoin_endpoint_failed":
		class, _ := fields["errorClass"].(string)
		if class == "" {
			class = "unknown"
		}
		ep().LastErrorClass = class
	case "rejoin_ticket_accepted":
		ep().LastErrorClass = ""
	case "rejoin_backoff":
		if ms, ok := fields["retryInMs"].(int64); ok {
			b.nextRound = now.Add(time.Duration(ms) * time.Millisecond)
		}
	}
}

// observer is a zapcore.Core that feeds events to the Board.
type observer struct {
	board  *Board
	fields []zapcore.Field
}

func (o *observer) Enabled(zapcore.Level) bool { return true }

func (o *observer) With(fields []zapcore.Field) zapcore.Core {
	return &observer{board: o.board, fields: append(append([]zapcore.Field(nil), o.fields...), fields...)}
}

func (o *observer) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	return ce.AddCore(e, o)
}

func (o *observer) Write(_ zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range o.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	if name, ok := enc.Fields[logging.EventKey].(string); ok {
		o.board.event(name, enc.Fields)
	}
	return nil
}

func (o *observer) Sync() error { return nil }
