package herald_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
)

func TestHealthServing(t *testing.T) {
	e := needEngine(t)
	st, err := e.client(t).Health(testCtx(t))
	if err != nil || st != herald.HealthServing {
		t.Fatalf("Health = %v, %v; want SERVING", st, err)
	}
}

// healthProbe finds grpc-health-probe: $HEALTH_PROBE, or the one
// scripts/tools.sh installs into .tools/bin.
func healthProbe(t *testing.T) string {
	t.Helper()
	p := os.Getenv("HEALTH_PROBE")
	if p == "" {
		p = filepath.Join(".tools", "bin", "grpc-health-probe")
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(abs); err != nil {
		t.Fatalf("no grpc-health-probe at %s: run scripts/tools.sh or set HEALTH_PROBE", abs)
	}
	return abs
}

// probe runs grpc-health-probe and returns its exit code and output.
func probe(t *testing.T, bin, addr, service string) (int, string) {
	t.Helper()
	cmd := exec.Command(bin, "-addr="+addr, "-service="+service, "-connect-timeout=2s", "-rpc-timeout=2s")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &exit):
		return exit.ExitCode(), string(out)
	default:
		t.Fatalf("running %s: %v", bin, err)
		return -1, ""
	}
}

func TestHealthProbeServing(t *testing.T) {
	e := needEngine(t)
	bin := healthProbe(t)
	for _, svc := range []string{"", herald.ServiceName} {
		if code, out := probe(t, bin, e.grpcAddr, svc); code != 0 {
			t.Fatalf("probe service %q: exit %d, want 0 (SERVING): %s", svc, code, out)
		}
	}
}

func TestHealthProbeNotServingDuringShutdown(t *testing.T) {
	bin := healthProbe(t)
	e := ownEngine(t, "--shutdown-timeout", "30s")
	c := e.client(t)

	// An open WebSocket client that never answers the close handshake keeps
	// the shutdown going for a while.
	dialIdle(t, e, "lingering")

	if code, out := probe(t, bin, e.grpcAddr, herald.ServiceName); code != 0 {
		t.Fatalf("before SIGTERM: exit %d, want 0: %s", code, out)
	}
	if err := e.terminate(); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, out := probe(t, bin, e.grpcAddr, herald.ServiceName)
		if code == 4 {
			break
		}
		if code != 0 || time.Now().After(deadline) {
			t.Fatalf("after SIGTERM: exit %d, want 4 (NOT_SERVING): %s", code, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	st, err := c.Health(testCtx(t))
	if err != nil || st != herald.HealthNotServing {
		t.Fatalf("SDK Health during shutdown = %v, %v; want NOT_SERVING", st, err)
	}
	select {
	case <-e.exited:
		t.Logf("engine exited quickly after SIGTERM: %v", e.exitErr)
	default:
	}
}
