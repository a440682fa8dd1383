// Package logging builds the zap logger whose JSON lines are the operator's
// only window into a booting node (DESIGN.md §5): one object per line, UTC
// RFC 3339 timestamps to the second, upper-case levels, dir/file.go:line
// callers, named loggers, and a stable "event" field on every line.
package logging

import (
	"os"
	"strings"
	"time"
	"unicode"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// EventKey is the field every line carries; tests and operators match on it.
const EventKey = "event"

// Event names a log line for machines. Lines without one get an event
// derived from their message (see eventCore).
func Event(name string) zap.Field { return zap.String(EventKey, name) }

// New returns a logger that writes the JSON contract to w at level and above.
func New(w zapcore.WriteSyncer, level zapcore.Level) *zap.Logger {
	enc := zapcore.NewJSONEncoder(zapcore.EncoderConfig{
		TimeKey:        "ts",
		LevelKey:       "level",
		NameKey:        "logger",
		CallerKey:      "caller",
		MessageKey:     "msg",
		StacktraceKey:  "stacktrace",
		LineEnding:     zapcore.DefaultLineEnding,
		EncodeLevel:    zapcore.CapitalLevelEncoder,
		EncodeTime:     utcSeconds,
		EncodeDuration: zapcore.StringDurationEncoder,
		EncodeCaller:   zapcore.ShortCallerEncoder,
		EncodeName:     zapcore.FullNameEncoder,
	})
	core := eventCore{Core: zapcore.NewCore(enc, w, level)}
	return zap.New(core, zap.AddCaller())
}

// NewStderr is New on standard error at info level.
func NewStderr() *zap.Logger { return New(zapcore.Lock(os.Stderr), zapcore.InfoLevel) }

func utcSeconds(t time.Time, enc zapcore.PrimitiveArrayEncoder) {
	enc.AppendString(t.UTC().Format(time.RFC3339))
}

// eventCore adds an "event" field, derived from the message, to every entry
// that does not carry one, so that no line (not even a library's) lacks it.
type eventCore struct {
	zapcore.Core
	hasEvent bool // an event field was added with With
}

func (c eventCore) With(fields []zapcore.Field) zapcore.Core {
	return eventCore{Core: c.Core.With(fields), hasEvent: c.hasEvent || hasEvent(fields)}
}

func hasEvent(fields []zapcore.Field) bool {
	for _, f := range fields {
		if f.Key == EventKey {
			return true
		}
	}
	return false
}

func (c eventCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c eventCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	if c.hasEvent || hasEvent(fields) {
		return c.Core.Write(e, fields)
	}
	return c.Core.Write(e, append(fields, Event(EventFromMessage(e.Message))))
}

// EventFromMessage turns "Waiting for decryption key" into
// "waiting_for_decryption_key".
func EventFromMessage(msg string) string {
	var b strings.Builder
	underscore := false
	for _, r := range strings.ToLower(msg) {
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			b.WriteRune(r)
			underscore = false
		} else if !underscore && b.Len() > 0 {
			b.WriteByte('_')
			underscore = true
		}
	}
	return strings.TrimSuffix(b.String(), "_")
}
