package herald_test

// The real engine for the integration tests: TestMain starts one from
// $HERALD_BIN (default: ../target/release/herald, built by
// `cargo build --release -p herald` at the repository root) on free loopback
// ports, waits until its health check reports SERVING, and stops it at the end.
// HERALD_GO_UNIT_ONLY=1 runs only the tests that need no engine.
//
// With HERALD_TEST_CLUSTER=1 the shared engine is a two-node cluster instead: a
// nats-server ($HERALD_NATS_SERVER, else ../.tools/bin/nats-server) with
// JetStream and two engines joined to it. SDK clients talk to node A, WebSocket
// clients connect to node B, so every message a test sees has crossed NATS.
// Every topic keeps history there (a ">" rule), so that Publish answers with the
// cluster-wide sequence the tests check (topics without history answer 0 in a
// cluster: their sequence is per node). Tests of what only one node knows call
// nodeLocal and are skipped in that run; engines a test starts for itself
// (ownEngine, engineAt) are single nodes either way.

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
	heraldv1 "github.com/heraldrt/herald/sdk-go/gen/herald/v1"
)

// sharedEngine is the engine started by TestMain; nil with HERALD_GO_UNIT_ONLY=1.
var sharedEngine *engine

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if os.Getenv("HERALD_GO_UNIT_ONLY") == "1" {
		return m.Run()
	}
	bin, err := engineBinary()
	if err != nil {
		fmt.Fprintln(os.Stderr, "herald tests:", err)
		return 1
	}
	var e *engine
	if os.Getenv("HERALD_TEST_CLUSTER") == "1" {
		e, err = startCluster(bin)
	} else {
		e, err = startEngine(bin, "--shutdown-timeout", "5s")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "herald tests: starting the engine:", err)
		return 1
	}
	sharedEngine = e
	code := m.Run()
	if err := e.stop(10 * time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "herald tests: stopping the engine:", err)
		if code == 0 {
			code = 1
		}
	}
	if code != 0 {
		fmt.Fprintf(os.Stderr, "--- engine log (last 4 KiB) ---\n%s\n", e.logTail(4096))
		if e.peer != nil {
			fmt.Fprintf(os.Stderr, "--- node B log (last 4 KiB) ---\n%s\n", e.peer.logTail(4096))
		}
	}
	return code
}

// clusterConfig is the config file of both cluster nodes: every topic keeps
// history (see the file comment).
const clusterConfig = `
[[topics]]
pattern = ">"
history_size = 10000
`

// startCluster starts a nats-server and two engines joined to it, and returns
// node A with its WebSocket address set to node B's.
func startCluster(bin string) (*engine, error) {
	dir, err := os.MkdirTemp("", "herald-go-cluster-")
	if err != nil {
		return nil, err
	}
	nats, err := startNats(dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	config := filepath.Join(dir, "cluster.toml")
	if err := os.WriteFile(config, []byte(clusterConfig), 0o600); err != nil {
		nats.kill()
		return nil, err
	}
	common := []string{"--shutdown-timeout", "5s", "--nats-url", nats.url(), "--config", config}
	b, err := startEngine(bin, append(slices.Clone(common), "--node-id", "node-b")...)
	if err != nil {
		nats.kill()
		return nil, fmt.Errorf("node B: %w", err)
	}
	a, err := startEngine(bin, append(slices.Clone(common), "--node-id", "node-a")...)
	if err != nil {
		_ = b.kill()
		nats.kill()
		return nil, fmt.Errorf("node A: %w", err)
	}
	a.peer, a.nats, a.wsAddr = b, nats, b.wsAddr
	// Node A learns of node B from B's next heartbeat; until then presence and
	// control on A would not see B's connections. Info lists the nodes A knows.
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := knownNodes(a)
		if err != nil || n >= 2 {
			if err != nil {
				_ = a.stop(5 * time.Second)
				return nil, err
			}
			return a, nil
		}
		if time.Now().After(deadline) {
			_ = a.stop(5 * time.Second)
			return nil, errors.New("node A did not hear of node B")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// knownNodes is how many nodes e's Info lists.
func knownNodes(e *engine) (int, error) {
	c, err := herald.NewClient(e.grpcAddr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.Raw().Info(ctx, &heraldv1.InfoRequest{})
	if err != nil {
		return 0, err
	}
	return len(resp.GetNodes()), nil
}

// natsServer is one nats-server process with JetStream, its store in a
// directory removed when it is killed.
type natsServer struct {
	dir  string
	addr string
	cmd  *exec.Cmd
	log  *lockedBuffer
}

func (n *natsServer) url() string { return "nats://" + n.addr }

func natsBinary() string {
	if bin := os.Getenv("HERALD_NATS_SERVER"); bin != "" {
		return bin
	}
	return filepath.Join("..", ".tools", "bin", "nats-server")
}

func startNats(dir string) (*natsServer, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	n := &natsServer{dir: dir, addr: addr, log: &lockedBuffer{}}
	n.cmd = exec.Command(natsBinary(), "-a", host, "-p", port, "-js", "-sd", filepath.Join(dir, "store"))
	n.cmd.Stdout = n.log
	n.cmd.Stderr = n.log
	if err := n.cmd.Start(); err != nil {
		return nil, fmt.Errorf("nats-server (run scripts/install-nats-server or set HERALD_NATS_SERVER): %w", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = conn.Close()
			return n, nil
		}
		if time.Now().After(deadline) {
			n.kill()
			return nil, fmt.Errorf("nats-server not listening on %s: %v\n%s", addr, err, n.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (n *natsServer) kill() {
	_ = n.cmd.Process.Kill()
	_ = n.cmd.Wait()
	_ = os.RemoveAll(n.dir)
}

// engineBinary finds the engine: $HERALD_BIN, or the repository's release build.
func engineBinary() (string, error) {
	bin := os.Getenv("HERALD_BIN")
	if bin == "" {
		// The tests run in the module directory, sdk-go/.
		bin = filepath.Join("..", "target", "release", "herald")
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		return "", err
	}
	if st, err := os.Stat(abs); err != nil || st.IsDir() {
		return "", fmt.Errorf("no engine binary at %s: build it with `cargo build --release -p herald` at the repository root, or set HERALD_BIN (HERALD_GO_UNIT_ONLY=1 runs the tests that need no engine)", abs)
	}
	return abs, nil
}

// nodeLocal skips a test in the cluster run: it checks what only one node
// knows (reason says what).
func nodeLocal(t *testing.T, reason string) {
	t.Helper()
	if sharedEngine != nil && sharedEngine.peer != nil {
		t.Skip("node-local in a cluster: " + reason)
	}
}

// needEngine returns the shared engine, or skips the test when the run was
// explicitly limited to unit tests.
func needEngine(t *testing.T) *engine {
	t.Helper()
	if sharedEngine == nil {
		t.Skip("HERALD_GO_UNIT_ONLY=1: no engine")
	}
	return sharedEngine
}

// engine is one running engine process.
type engine struct {
	bin      string
	args     []string
	wsAddr   string
	grpcAddr string
	cmd      *exec.Cmd
	log      *lockedBuffer
	exited   chan struct{}
	exitErr  error
	// tls, when set, is how clients reach an engine started with --tls-cert:
	// the health check, SDK clients and WebSocket clients all use it.
	tls *tls.Config
	// peer and nats are set on the shared engine of a cluster run: node B (whose
	// WebSocket address wsAddr is) and the nats-server, stopped with this node.
	peer *engine
	nats *natsServer
}

// tlsOptions are the SDK options that reach this engine (none for plain text).
func (e *engine) tlsOptions() []herald.Option {
	if e.tls == nil {
		return nil
	}
	return []herald.Option{herald.WithTLSConfig(e.tls.Clone())}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startEngine starts the engine on fresh ports with extra flags and waits until
// it is healthy. A start that fails (a port taken in between) is tried again.
func startEngine(bin string, extra ...string) (*engine, error) {
	return startEngineTLS(bin, nil, extra...)
}

// startEngineTLS is startEngine for an engine that serves TLS (extra carries
// its --tls-cert and --tls-key); clientTLS trusts its certificate.
func startEngineTLS(bin string, clientTLS *tls.Config, extra ...string) (*engine, error) {
	var lastErr error
	for range 3 {
		wsAddr, err := freePort()
		if err != nil {
			return nil, err
		}
		grpcAddr, err := freePort()
		if err != nil {
			return nil, err
		}
		e := &engine{bin: bin, args: extra, wsAddr: wsAddr, grpcAddr: grpcAddr, log: &lockedBuffer{}, tls: clientTLS}
		if lastErr = e.start(); lastErr == nil {
			return e, nil
		}
	}
	return nil, lastErr
}

// start runs the engine on its addresses and waits for SERVING.
func (e *engine) start() error {
	args := append([]string{"--ws-addr", e.wsAddr, "--grpc-addr", e.grpcAddr, "--log-format", "text"}, e.args...)
	e.cmd = exec.Command(e.bin, args...)
	e.cmd.Stdout = e.log
	e.cmd.Stderr = e.log
	e.exited = make(chan struct{})
	if err := e.cmd.Start(); err != nil {
		return err
	}
	go func() {
		e.exitErr = e.cmd.Wait()
		close(e.exited)
	}()
	if err := e.waitServing(30 * time.Second); err != nil {
		_ = e.kill()
		return fmt.Errorf("%w\n%s", err, e.logTail(2048))
	}
	return nil
}

func (e *engine) waitServing(timeout time.Duration) error {
	c, err := herald.NewClient(e.grpcAddr, e.tlsOptions()...)
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-e.exited:
			return fmt.Errorf("engine exited during start: %v", e.exitErr)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		st, err := c.Health(ctx)
		cancel()
		if err == nil && st == herald.HealthServing {
			return nil
		}
		last = err
		if err == nil {
			last = fmt.Errorf("health %v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("engine not SERVING after %v: %v", timeout, last)
}

// signal sends SIGTERM (a graceful shutdown).
func (e *engine) terminate() error { return e.cmd.Process.Signal(syscall.SIGTERM) }

// kill ends the engine at once and waits for it.
func (e *engine) kill() error {
	_ = e.cmd.Process.Kill()
	<-e.exited
	return nil
}

// stop shuts the engine down with SIGTERM and waits up to timeout, then kills
// it. It reports an engine that had to be killed. For the shared engine of a
// cluster run it stops node B and the nats-server too.
func (e *engine) stop(timeout time.Duration) error {
	err := e.stopOne(timeout)
	if e.peer != nil {
		if perr := e.peer.stopOne(timeout); err == nil {
			err = perr
		}
	}
	if e.nats != nil {
		e.nats.kill()
	}
	return err
}

func (e *engine) stopOne(timeout time.Duration) error {
	select {
	case <-e.exited:
		return nil
	default:
	}
	if err := e.terminate(); err != nil {
		return err
	}
	select {
	case <-e.exited:
		return nil
	case <-time.After(timeout):
		_ = e.kill()
		return errors.New("engine still running after SIGTERM; killed")
	}
}

func (e *engine) logTail(n int) string {
	s := e.log.String()
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return strings.TrimSpace(s)
}

// client returns an SDK client for the engine, closed at the end of the test.
func (e *engine) client(t *testing.T, opts ...herald.Option) *herald.Client {
	t.Helper()
	c, err := herald.NewClient(e.grpcAddr, opts...)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// ownEngine starts an engine for one test (for shutdown and restart tests) and
// kills it at the end.
func ownEngine(t *testing.T, extra ...string) *engine {
	t.Helper()
	shared := needEngine(t)
	e, err := startEngine(shared.bin, extra...)
	if err != nil {
		t.Fatalf("starting an engine: %v", err)
	}
	t.Cleanup(func() {
		_ = e.kill()
		if t.Failed() {
			t.Logf("engine log:\n%s", e.logTail(4096))
		}
	})
	return e
}

// testCtx is a context for one test, bounded so that a hang fails the test.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// engineAt returns an engine that will listen on grpcAddr (and a fresh
// WebSocket port) once started; it is not running yet. It is killed at the end
// of the test.
func engineAt(t *testing.T, grpcAddr string, extra ...string) *engine {
	t.Helper()
	shared := needEngine(t)
	wsAddr, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	e := &engine{bin: shared.bin, args: extra, wsAddr: wsAddr, grpcAddr: grpcAddr, log: &lockedBuffer{}}
	t.Cleanup(func() {
		if e.cmd != nil && e.cmd.Process != nil {
			_ = e.kill()
		}
		if t.Failed() {
			t.Logf("engine log:\n%s", e.logTail(4096))
		}
	})
	return e
}

// uniqueTopic returns a topic no other test uses.
func uniqueTopic(t *testing.T, prefix string) string {
	t.Helper()
	topicSeq.Lock()
	defer topicSeq.Unlock()
	topicSeq.n++
	return fmt.Sprintf("%s:t%d-%d", prefix, os.Getpid(), topicSeq.n)
}

var topicSeq struct {
	sync.Mutex
	n int
}
