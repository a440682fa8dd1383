package vmtest

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Line is one line the guest wrote on its JSON serial port (ttyS1): the
// daemon's zap lines and the image init's {"logger":"init",…} lines.
type Line struct {
	// Index is the line's position in the VM's output, from 0.
	Index int
	// At is when the host read the line, measured from QEMU's start. The
	// guest's own clock is unreliable this early under TCG.
	At time.Duration
	// Raw is the line as received, without the line ending.
	Raw string
	// Fields is the parsed JSON object, nil when the line is not JSON (a Go
	// panic on stderr, say: the init sends the daemon's stderr here too).
	Fields map[string]any
}

// parseLine parses from the first '{' so stray bytes before the object
// (serial noise) do not lose the line.
func parseLine(index int, at time.Duration, raw string) Line {
	l := Line{Index: index, At: at, Raw: raw}
	if i := strings.IndexByte(raw, '{'); i >= 0 {
		var fields map[string]any
		if json.Unmarshal([]byte(raw[i:]), &fields) == nil {
			l.Fields = fields
		}
	}
	return l
}

// Str returns the field as a string ("" when absent); non-strings are
// formatted with %v, so numbers and booleans compare as text.
func (l Line) Str(key string) string {
	v, ok := l.Fields[key]
	if !ok || v == nil {
		return ""
	}
	if s, ok := v.(string); ok {
		return s
	}
	return fmt.Sprintf("%v", v)
}

// Has reports whether the line carries the field.
func (l Line) Has(key string) bool { _, ok := l.Fields[key]; return ok }

// Msg is the zap message.
func (l Line) Msg() string { return l.Str("msg") }

// Event is the stable event name every line carries.
func (l Line) Event() string { return l.Str("event") }

// String is for test logs: host time and the raw line.
func (l Line) String() string { return fmt.Sprintf("+%6dms %s", l.At.Milliseconds(), l.Raw) }

// Predicate selects lines for WaitFor.
type Predicate func(Line) bool

// Msg matches lines whose zap message is exactly msg.
func Msg(msg string) Predicate { return func(l Line) bool { return l.Msg() == msg } }

// Event matches lines whose event field is exactly name.
func Event(name string) Predicate { return func(l Line) bool { return l.Event() == name } }

// Field matches lines whose field key has the textual value want.
func Field(key, want string) Predicate {
	return func(l Line) bool { return l.Has(key) && l.Str(key) == want }
}

// All matches lines that every predicate matches.
func All(ps ...Predicate) Predicate {
	return func(l Line) bool {
		for _, p := range ps {
			if !p(l) {
				return false
			}
		}
		return true
	}
}

// Any matches lines that at least one predicate matches.
func Any(ps ...Predicate) Predicate {
	return func(l Line) bool {
		for _, p := range ps {
			if p(l) {
				return true
			}
		}
		return false
	}
}

// InitDone matches the image init's last line, printed on every path.
var InitDone = Event("init_done")
