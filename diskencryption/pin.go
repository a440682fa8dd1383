package diskencryption

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
)

// headerPin is the identity of the header a Device stands for: its UUID and
// every section of the JSON metadata except the tokens (our state token is
// the one thing that legitimately changes under a pin, and the allow-list
// checks it). The digest section names the volume key (digest value, salt,
// iterations) and binds it to the keyslots and the segment; the keyslot and
// segment sections say where the key material and the data live.
//
// The allow-list only says a header looks like one of ours; the pin says it
// is the one this node wrote. Without it the host could, while the node
// waits for its key, put an allow-list-compliant header of its own (same
// UUID, its volume key) or move a keyslot area, and the cluster key would
// be enrolled into, or used to map, that header.
type headerPin struct {
	uuid     string
	sections map[string]any // decoded with UseNumber, for exact comparison
}

// pinnedSections are compared in this order, so that a swapped volume key
// is named by its digest first.
var pinnedSections = []string{"digests", "segments", "keyslots", "config"}

func newPin(uuid string, m *metadata) (*headerPin, error) {
	p := &headerPin{uuid: uuid, sections: map[string]any{}}
	for _, name := range pinnedSections {
		v, err := decodeAny(m.top[name])
		if err != nil {
			return nil, fmt.Errorf("pinning LUKS2 metadata %q: %w", name, err)
		}
		p.sections[name] = v
	}
	return p, nil
}

// check returns a *HeaderError naming the first field where m (with uuid)
// differs from the pin.
func (p *headerPin) check(uuid string, m *metadata) error {
	if uuid != p.uuid {
		return refuse("uuid", quote(uuid), quote(p.uuid)+" (pinned)")
	}
	for _, name := range pinnedSections {
		got, err := decodeAny(m.top[name])
		if err != nil {
			return refuse(name, "undecodable", "the pinned section")
		}
		if field, g, w, differ := firstDifference(name, p.sections[name], got); differ {
			return refuse(field, g, w+" (pinned when this node wrote the header)")
		}
	}
	return nil
}

func decodeAny(raw json.RawMessage) (any, error) {
	var v any
	err := decodeStrict(raw, &v)
	return v, err
}

// firstDifference walks want and got in a fixed order and returns the JSON
// path of the first difference with both values for the log.
func firstDifference(path string, want, got any) (string, string, string, bool) {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return path, describe(got), "an object", true
		}
		keys := sortedKeys(w)
		for k := range g {
			if _, ok := w[k]; !ok {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			wv, inWant := w[k]
			gv, inGot := g[k]
			switch {
			case !inGot:
				return path + "." + k, "absent", describe(wv), true
			case !inWant:
				return path + "." + k, describe(gv), "absent", true
			}
			if f, gs, ws, differ := firstDifference(path+"."+k, wv, gv); differ {
				return f, gs, ws, true
			}
		}
		return "", "", "", false
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return path, describe(got), describe(want), true
		}
		for i := range w {
			if f, gs, ws, differ := firstDifference(path+"."+strconv.Itoa(i), w[i], g[i]); differ {
				return f, gs, ws, true
			}
		}
		return "", "", "", false
	default:
		if want != got { // string, json.Number, bool or nil: comparable
			return path, describe(got), describe(want), true
		}
		return "", "", "", false
	}
}

func describe(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return abbreviate(string(bytes.TrimSpace(b)))
}
