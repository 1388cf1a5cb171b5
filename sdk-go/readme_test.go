package herald_test

// README.md cannot drift from the SDK: this test runs its install commands
// and compiles (or runs) every Go block in it.
//
//   - The sh blocks of the "Install" section run in order, with sh -e, in a
//     scratch directory, exactly as written except the line
//     `git clone https://github.com/heraldrt/herald.git`: a link named herald
//     to this checkout stands in for the clone. A `package main` block in that
//     section is saved as main.go in the directory the commands before it
//     ended in, as the text says. The Go tools fetch the SDK's dependencies from
//     the module proxy ($GOPROXY); GOFLAGS is cleared, so the commands must work
//     in the default -mod=readonly mode a user has.
//   - Every other `package main` block is built in the module the install
//     commands made and run against the test engine, with 127.0.0.1:50051
//     replaced by the engine's gRPC address; it must exit 0 within 30 s.
//   - Every other Go block is a fragment: it is compiled (go build and go vet)
//     as the body of func(ctx context.Context, c *herald.Client, connID string)
//     error, with imports added for the packages it names. Compile errors point
//     at README.md lines.

import (
	"bufio"
	"context"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

const readmeCloneLine = "git clone https://github.com/heraldrt/herald.git"

// readmeBlock is one fenced code block of README.md.
type readmeBlock struct {
	lang    string
	text    string
	line    int    // README line of the block's first line of code
	section string // the "## " heading it is under
}

func readmeBlocks(t *testing.T, path string) []readmeBlock {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fence := regexp.MustCompile("^```([a-z]*)\\s*$")
	var (
		blocks  []readmeBlock
		cur     *readmeBlock
		body    []string
		section string
		n       int
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		l := sc.Text()
		switch {
		case cur != nil && l == "```":
			cur.text = strings.Join(body, "\n") + "\n"
			blocks = append(blocks, *cur)
			cur, body = nil, nil
		case cur != nil:
			body = append(body, l)
		case fence.MatchString(l):
			cur = &readmeBlock{lang: fence.FindStringSubmatch(l)[1], line: n + 1, section: section}
		case strings.HasPrefix(l, "## "):
			section = strings.TrimPrefix(l, "## ")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("README.md:%d: unclosed code block", cur.line-1)
	}
	return blocks
}

func isProgram(b readmeBlock) bool { return strings.HasPrefix(b.text, "package main\n") }

// readmeEnv is the environment of the commands: a user's, with the module
// proxy, no GOFLAGS and no workspace.
func readmeEnv() []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "GOFLAGS=") || strings.HasPrefix(kv, "GOWORK=")
	})
	return append(env, "GOFLAGS=", "GOWORK=off")
}

func TestReadme(t *testing.T) {
	e := needEngine(t)
	if testing.Short() {
		t.Skip("-short: the README check builds and runs programs")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatalf("the README check needs the go command on PATH: %v", err)
	}
	blocks := readmeBlocks(t, "README.md")
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	scratch := t.TempDir()
	if err := os.Symlink(root, filepath.Join(scratch, "herald")); err != nil {
		t.Fatal(err)
	}
	address := func(s string) string { return strings.ReplaceAll(s, "127.0.0.1:50051", e.grpcAddr) }

	// The Install section, in order.
	dir := scratch
	var ranGet, ranMain bool
	for _, b := range blocks {
		if b.section != "Install" {
			continue
		}
		switch {
		case b.lang == "sh":
			var script []string
			for _, l := range strings.Split(strings.TrimSpace(b.text), "\n") {
				switch {
				case l == readmeCloneLine:
					continue // the link to this checkout stands in for it
				case strings.HasPrefix(l, "git "):
					t.Fatalf("README.md:%d: a git command the check cannot stand in for: %q", b.line, l)
				case strings.Contains(l, "go get github.com/heraldrt/herald/sdk-go"):
					ranGet = true
				case l == "go run .":
					ranMain = true
				}
				script = append(script, l)
			}
			pwdFile := filepath.Join(scratch, ".pwd")
			out, err := runReadme(t, dir, 5*time.Minute, "sh", "-e", "-x", "-c",
				strings.Join(script, "\n")+"\npwd > '"+pwdFile+"'\n")
			if err != nil {
				t.Fatalf("README.md:%d: the install commands failed: %v\n%s", b.line, err, out)
			}
			t.Logf("README.md:%d: install commands:\n%s", b.line, out)
			pwd, err := os.ReadFile(pwdFile)
			if err != nil {
				t.Fatal(err)
			}
			dir = strings.TrimSpace(string(pwd))
		case b.lang == "go" && isProgram(b):
			writeReadmeFile(t, filepath.Join(dir, "main.go"), b, address(b.text))
		case b.lang == "go":
			t.Fatalf("README.md:%d: a Go fragment in the Install section", b.line)
		}
	}
	if !ranGet || !ranMain {
		t.Fatalf("the Install section must go get the SDK and go run the program (go get: %v, go run: %v)", ranGet, ranMain)
	}
	module := dir

	// The other programs: built and run against the engine.
	programs := 0
	for _, b := range blocks {
		if b.lang != "go" || b.section == "Install" || !isProgram(b) {
			continue
		}
		programs++
		pkg := fmt.Sprintf("readme_program_%d", b.line)
		writeReadmeFile(t, filepath.Join(module, pkg, "main.go"), b, address(b.text))
		exe := filepath.Join(scratch, pkg)
		if out, err := runReadme(t, module, 2*time.Minute, "go", "build", "-o", exe, "./"+pkg); err != nil {
			t.Fatalf("README.md:%d: the program does not build: %v\n%s", b.line, err, out)
		}
		out, err := runReadme(t, module, 30*time.Second, exe)
		if err != nil {
			t.Fatalf("README.md:%d: the program failed against the engine: %v\n%s", b.line, err, out)
		}
		t.Logf("README.md:%d: program output:\n%s", b.line, out)
	}

	// The fragments: compiled and vetted.
	fragments := 0
	pkgDir := filepath.Join(module, "readme_fragments")
	for _, b := range blocks {
		if b.lang != "go" || isProgram(b) {
			continue
		}
		fragments++
		src := fragmentSource(t, b)
		writeReadmeFile(t, filepath.Join(pkgDir, fmt.Sprintf("fragment_%d.go", b.line)), b, src)
	}
	for _, args := range [][]string{{"build", "./readme_fragments"}, {"vet", "./readme_fragments"}} {
		if out, err := runReadme(t, module, 2*time.Minute, "go", args...); err != nil {
			t.Fatalf("README fragments: go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	if programs == 0 || fragments == 0 {
		t.Fatalf("found %d programs and %d fragments outside Install: the check is not seeing the README", programs, fragments)
	}
	t.Logf("README: install commands ran; %d more programs ran; %d fragments compiled", programs, fragments)
}

func runReadme(t *testing.T, dir string, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = readmeEnv()
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (killed after %v)", err, timeout)
	}
	return string(out), err
}

func writeReadmeFile(t *testing.T, path string, b readmeBlock, src string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if b.lang == "go" && isProgram(b) {
		// Positions in compile errors are README lines.
		src = strings.Replace(src, "package main\n", fmt.Sprintf("package main\n\n//line README.md:%d\n", b.line+1), 1)
	}
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
}

// readmeImports are the packages fragments may name, by their name in code.
var readmeImports = map[string]string{
	"context":   "context",
	"errors":    "errors",
	"fmt":       "fmt",
	"log":       "log",
	"time":      "time",
	"tls":       "crypto/tls",
	"x509":      "crypto/x509",
	"os":        "os",
	"json":      "encoding/json",
	"herald":    `herald "github.com/heraldrt/herald/sdk-go"`,
	"heraldv1":  `heraldv1 "github.com/heraldrt/herald/sdk-go/gen/herald/v1"`,
	"grpc":      "google.golang.org/grpc",
	"keepalive": "google.golang.org/grpc/keepalive",
	"codes":     "google.golang.org/grpc/codes",
	"status":    "google.golang.org/grpc/status",
}

// fragmentSource wraps a fragment into a function of its own file, with the
// imports of the packages it names.
func fragmentSource(t *testing.T, b readmeBlock) string {
	t.Helper()
	body := fmt.Sprintf("func readmeFragment%d(ctx context.Context, c *herald.Client, connID string) error {\n//line README.md:%d\n%s\treturn nil\n}\n", b.line, b.line, b.text)
	f, err := parser.ParseFile(token.NewFileSet(), "README.md", "package readme_fragments\n"+body, parser.SkipObjectResolution)
	if err != nil {
		t.Fatalf("README.md:%d: the fragment is not Go statements: %v", b.line, err)
	}
	used := map[string]bool{"context": true, "herald": true}
	ast.Inspect(f, func(n ast.Node) bool {
		if sel, ok := n.(*ast.SelectorExpr); ok {
			if id, ok := sel.X.(*ast.Ident); ok && readmeImports[id.Name] != "" {
				used[id.Name] = true
			}
		}
		return true
	})
	var imports []string
	for name := range used {
		imports = append(imports, "\t"+quoteImport(readmeImports[name]))
	}
	slices.Sort(imports)
	return fmt.Sprintf("package readme_fragments\n\nimport (\n%s\n)\n\n%s", strings.Join(imports, "\n"), body)
}

func quoteImport(spec string) string {
	if strings.Contains(spec, `"`) {
		return spec
	}
	return `"` + spec + `"`
}
