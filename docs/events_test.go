package docs

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/logging"
)

// daemonPackages are the packages whose log lines reach a node's serial
// console (the disk-mapper daemon and what it links).
var daemonPackages = []string{
	"cmd/disk-mapper", "setup", "recoveryserver", "rejoinclient", "rejoinclient/metadata",
	"diskencryption", "internal/attestation", "internal/attestation/atls", "internal/logging",
	"internal/measure", "internal/nodestatus", "internal/keysocket",
	"cloud", "cloud/aws", "cloud/azure", "cloud/gcp", "cloud/openstack", "cloud/internal/imds",
}

// codeEvent is what the code says about one event.
type codeEvent struct {
	levels map[string]bool
	fields map[string]bool
	where  []string
}

var logLevels = map[string]string{"Debug": "DEBUG", "Info": "INFO", "Warn": "WARN", "Error": "ERROR"}

// zapFieldFuncs are the zap constructors whose first argument is the key.
var zapFieldFuncs = regexp.MustCompile(`^(String|Strings|Int|Int64|Int32|Uint|Uint64|Uint32|Bool|Duration|Float64|Any|Stringer|ByteString|Time|NamedError|Binary|Stringers)$`)

// scanEvents walks the daemon's non-test Go files and collects every log
// call's event, level and field keys. Calls it cannot resolve (a message
// that is not a constant, without an explicit event) are returned as
// problems: every line must have a stable, documented event.
func scanEvents(t *testing.T) (map[string]*codeEvent, []string) {
	t.Helper()
	events := map[string]*codeEvent{}
	var problems []string
	// forwarded: functions that log a message their caller passes in
	// (paramIndex of the message), resolved at their call sites.
	type forward struct {
		param int
		level string
		keys  []string
	}
	forwarded := map[string]forward{"remind": {param: 1, level: "INFO"}}
	type pending struct {
		fn    string
		call  *ast.CallExpr
		where string
	}
	var calls []pending
	add := func(ev, level string, fields []string, where string) {
		e := events[ev]
		if e == nil {
			e = &codeEvent{levels: map[string]bool{}, fields: map[string]bool{}}
			events[ev] = e
		}
		if level != "" {
			e.levels[level] = true
		}
		for _, f := range fields {
			e.fields[f] = true
		}
		e.where = append(e.where, where)
	}
	for _, pkg := range daemonPackages {
		files, _ := filepath.Glob(filepath.Join("..", pkg, "*.go"))
		fset := token.NewFileSet()
		var parsed []*ast.File
		consts := map[string]string{}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			af, err := parser.ParseFile(fset, f, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			parsed = append(parsed, af)
			ast.Inspect(af, func(n ast.Node) bool {
				if vs, ok := n.(*ast.ValueSpec); ok {
					for i, name := range vs.Names {
						if i < len(vs.Values) {
							if s, ok := stringValue(vs.Values[i], nil); ok {
								consts[name.Name] = s
							}
						}
					}
				}
				return true
			})
		}
		for _, af := range parsed {
			for _, decl := range af.Decls {
				fn, ok := decl.(*ast.FuncDecl)
				if !ok || fn.Body == nil {
					continue
				}
				if fn.Name.Name == "remind" {
					continue // its callers' messages are scanned at the call sites
				}
				ast.Inspect(fn.Body, func(n ast.Node) bool {
					call, ok := n.(*ast.CallExpr)
					if !ok {
						return true
					}
					if sel, ok := call.Fun.(*ast.SelectorExpr); ok {
						calls = append(calls, pending{fn: sel.Sel.Name, call: call, where: fset.Position(call.Pos()).String()})
					}
					sel, ok := call.Fun.(*ast.SelectorExpr)
					if !ok || len(call.Args) == 0 {
						return true
					}
					where := fset.Position(call.Pos()).String()
					where = strings.TrimPrefix(where, "../")
					var level string
					var msgArg ast.Expr
					var fieldArgs []ast.Expr
					switch {
					case logLevels[sel.Sel.Name] != "" && isLogger(sel.X):
						level, msgArg, fieldArgs = logLevels[sel.Sel.Name], call.Args[0], call.Args[1:]
					case sel.Sel.Name == "remind" && len(call.Args) >= 2:
						level, msgArg, fieldArgs = "INFO", call.Args[1], call.Args[2:]
					case sel.Sel.Name == "Check" && isLogger(sel.X) && len(call.Args) == 2:
						// log.Check(level, msg) then ce.Write(fields): the level
						// is computed; the event and fields are in the Write.
						level, msgArg, fieldArgs = "", call.Args[1], writeArgs(fn.Body, call)
					default:
						return true
					}
					keys, explicit := fieldKeys(fn.Body, fieldArgs)
					if explicit == "" {
						msg, ok := stringValue(msgArg, consts)
						if id, isIdent := msgArg.(*ast.Ident); !ok && isIdent {
							if idx := paramIndex(fn, id.Name); idx >= 0 {
								forwarded[fn.Name.Name] = forward{param: idx, level: level, keys: keys}
								return true
							}
						}
						if !ok {
							problems = append(problems, where+": a log line whose message is not constant needs logging.Event(\"...\")")
							return true
						}
						explicit = logging.EventFromMessage(msg)
					}
					add(explicit, level, keys, where)
					return true
				})
			}
		}
	}
	for _, c := range calls {
		f, ok := forwarded[c.fn]
		if !ok || c.fn == "remind" || len(c.call.Args) <= f.param {
			continue
		}
		msg, ok := stringValue(c.call.Args[f.param], nil)
		if !ok {
			problems = append(problems, c.where+": the message passed to "+c.fn+" is not constant")
			continue
		}
		add(logging.EventFromMessage(msg), f.level, f.keys, strings.TrimPrefix(c.where, "../"))
	}
	return events, problems
}

// paramIndex is the position of the parameter name among fn's parameters
// (counting the receiver-less list), or -1.
func paramIndex(fn *ast.FuncDecl, name string) int {
	i := 0
	for _, field := range fn.Type.Params.List {
		for _, n := range field.Names {
			if n.Name == name {
				return i
			}
			i++
		}
	}
	return -1
}

// isLogger: the receiver reads like a *zap.Logger (log, c.log, s.cfg.Log, …).
func isLogger(x ast.Expr) bool {
	var name string
	switch v := x.(type) {
	case *ast.Ident:
		name = v.Name
	case *ast.SelectorExpr:
		name = v.Sel.Name
	case *ast.CallExpr: // log.Named("x").Info
		if s, ok := v.Fun.(*ast.SelectorExpr); ok && (s.Sel.Name == "Named" || s.Sel.Name == "With") {
			return true
		}
	}
	n := strings.ToLower(name)
	return n == "log" || n == "logger" || strings.HasSuffix(n, "log")
}

// stringValue evaluates a constant string expression (literals, known
// constants, +).
func stringValue(e ast.Expr, consts map[string]string) (string, bool) {
	switch v := e.(type) {
	case *ast.BasicLit:
		if v.Kind == token.STRING {
			s, err := strconv.Unquote(v.Value)
			return s, err == nil
		}
	case *ast.Ident:
		s, ok := consts[v.Name]
		return s, ok
	case *ast.BinaryExpr:
		if v.Op == token.ADD {
			a, ok1 := stringValue(v.X, consts)
			b, ok2 := stringValue(v.Y, consts)
			return a + b, ok1 && ok2
		}
	case *ast.ParenExpr:
		return stringValue(v.X, consts)
	}
	return "", false
}

// fieldKeys returns the keys of the zap fields among args (following
// `fields...` to what the function assigns to fields) and the explicit
// event, if one is set.
func fieldKeys(body *ast.BlockStmt, args []ast.Expr) (keys []string, event string) {
	var visit func(e ast.Expr)
	visit = func(e ast.Expr) {
		ast.Inspect(e, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				if id, ok := n.(*ast.Ident); ok && id.Obj == nil {
					_ = id
				}
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			pkg, _ := sel.X.(*ast.Ident)
			switch {
			case pkg != nil && pkg.Name == "logging" && sel.Sel.Name == "Event":
				if s, ok := stringValue(call.Args[0], nil); ok {
					event = s
				}
				return false
			case pkg != nil && pkg.Name == "zap" && sel.Sel.Name == "Error":
				keys = append(keys, "error")
			case pkg != nil && pkg.Name == "zap" && zapFieldFuncs.MatchString(sel.Sel.Name):
				if s, ok := stringValue(call.Args[0], nil); ok {
					keys = append(keys, s)
				}
			}
			return true
		})
	}
	for _, a := range args {
		if id, ok := a.(*ast.Ident); ok {
			// A []zap.Field variable: everything assigned or appended to it
			// in this function.
			ast.Inspect(body, func(n ast.Node) bool {
				as, ok := n.(*ast.AssignStmt)
				if !ok {
					return true
				}
				for i, l := range as.Lhs {
					if li, ok := l.(*ast.Ident); ok && li.Name == id.Name && i < len(as.Rhs) {
						visit(as.Rhs[i])
					}
				}
				return true
			})
			continue
		}
		visit(a)
	}
	return keys, event
}

// writeArgs finds the arguments of the ce.Write that follows a log.Check.
func writeArgs(body *ast.BlockStmt, check *ast.CallExpr) []ast.Expr {
	var out []ast.Expr
	ast.Inspect(body, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if ok && call.Pos() > check.Pos() {
			if sel, ok := call.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "Write" && out == nil {
				out = call.Args
				return false
			}
		}
		return true
	})
	return out
}

// referenceRow is `| `"event":"x"` | LEVEL[, LEVEL] | `f`, `g` | meaning |`.
var referenceRow = regexp.MustCompile("^\\| `\"event\":\"([a-z0-9_]+)\"` \\| ([A-Z, ]+|by code[^|]*) \\| ([^|]*) \\| [^|]+\\|$")

// TestEventReferenceMatchesTheCode holds docs/operations.md's reference of
// log events to the code in both directions: every event a daemon log call
// emits is documented with its level(s) and exactly its fields, and every
// documented event is emitted.
func TestEventReferenceMatchesTheCode(t *testing.T) {
	events, problems := scanEvents(t)
	for _, p := range problems {
		t.Error(p)
	}
	data, err := os.ReadFile("operations.md")
	if err != nil {
		t.Fatal(err)
	}
	_, ref, ok := strings.Cut(string(data), "## Log event reference")
	if !ok {
		t.Fatal("operations.md has no \"## Log event reference\" section")
	}
	documented := map[string]bool{}
	for _, line := range strings.Split(ref, "\n") {
		m := referenceRow.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		name, levels, fields := m[1], m[2], m[3]
		documented[name] = true
		e, ok := events[name]
		if !ok {
			t.Errorf("operations.md documents %q, which no daemon log call emits", name)
			continue
		}
		if !strings.HasPrefix(levels, "by code") {
			if got, want := setString(e.levels), normalizeList(levels); got != want {
				t.Errorf("%q: documented level %q, code logs it at %q (%v)", name, want, got, e.where)
			}
		}
		docFields := regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(fields, -1)
		var df []string
		for _, f := range docFields {
			df = append(df, f[1])
		}
		if got, want := setString(e.fields), normalizeList(strings.Join(df, ",")); got != want {
			t.Errorf("%q: documented fields %q, code sets %q (%v)", name, want, got, e.where)
		}
	}
	var missing []string
	for name, e := range events {
		if !documented[name] {
			missing = append(missing, name+" ("+setString(e.levels)+"; fields "+setString(e.fields)+"; "+e.where[0]+")")
		}
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("the code emits an event operations.md does not document: %s", m)
	}
}

func setString(m map[string]bool) string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	sort.Strings(s)
	return strings.Join(s, ",")
}

func normalizeList(s string) string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" && p != "—" {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}
