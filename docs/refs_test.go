// Package docs holds the operator- and integrator-facing documents. Its test
// keeps them true to the code: every test, benchmark, log event and file
// they name must exist.
package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/diskmapper/disk-mapper/internal/logging"
)

var (
	testName      = regexp.MustCompile("`((?:Test|Benchmark|Fuzz)[A-Z][A-Za-z0-9_]*)`")
	eventName     = regexp.MustCompile("`\"event\":\"([a-z0-9_]+)\"`")
	stringLiteral = regexp.MustCompile(`"([A-Z][^"\\\n]*)"`)
	repoPath      = regexp.MustCompile("`((?:cmd|internal|setup|diskencryption|recoveryserver|rejoinclient|joinservice|dmctl|image|scripts|test|docs)/[A-Za-z0-9_./-]+)`")
)

// corpus is the text of every file below root whose name ends in one of exts.
func corpus(t *testing.T, root string, exts ...string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "build" || strings.HasPrefix(d.Name(), ".")) && p != root {
			return filepath.SkipDir
		}
		for _, e := range exts {
			if !d.IsDir() && strings.HasSuffix(p, e) {
				data, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				b.Write(data)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestDocsNameOnlyWhatExists(t *testing.T) {
	docs, err := filepath.Glob("*.md")
	if err != nil || len(docs) == 0 {
		t.Fatalf("no documents here (%v)", err)
	}
	tests := corpus(t, "..", "_test.go")
	code := corpus(t, "..", ".go")
	// A line without an explicit event gets one derived from its message.
	derived := map[string]bool{}
	for _, m := range stringLiteral.FindAllStringSubmatch(code, -1) {
		derived[logging.EventFromMessage(m[1])] = true
	}
	for _, doc := range docs {
		data, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		text := string(data)
		for _, m := range testName.FindAllStringSubmatch(text, -1) {
			if !regexp.MustCompile(`func ` + m[1] + `\(`).MatchString(tests) {
				t.Errorf("%s names %s, which no _test.go file defines", doc, m[1])
			}
		}
		for _, m := range eventName.FindAllStringSubmatch(text, -1) {
			if !strings.Contains(code, `"`+m[1]+`"`) && !derived[m[1]] {
				t.Errorf("%s names the log event %q, which no Go file emits", doc, m[1])
			}
		}
		for _, m := range repoPath.FindAllStringSubmatch(text, -1) {
			if !pathExists(m[1]) {
				t.Errorf("%s names %s, which does not exist", doc, m[1])
			}
		}
	}
}

// pathExists: a file or directory of the repository, or pkg/dir.Identifier
// (a Go package and a name one of its files declares).
func pathExists(ref string) bool {
	ref = strings.TrimRight(ref, ".")
	if _, err := os.Stat(filepath.Join("..", ref)); err == nil {
		return true
	}
	dir, ident, ok := cutLast(ref, ".")
	if !ok {
		return false
	}
	files, _ := filepath.Glob(filepath.Join("..", dir, "*.go"))
	decl := regexp.MustCompile(`(?m)^(func( \([^)]*\))?|type|var|const)? *` + regexp.QuoteMeta(ident) + `\b`)
	for _, f := range files {
		if data, err := os.ReadFile(f); err == nil && decl.Match(data) {
			return true
		}
	}
	return false
}

func cutLast(s, sep string) (before, after string, found bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}
