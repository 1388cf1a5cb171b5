package herald_test

import (
	"testing"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
)

// startLater starts e after delay in the background; the test fails if the
// start does.
func startLater(t *testing.T, e *engine, delay time.Duration) {
	t.Helper()
	started := make(chan error, 1)
	go func() {
		time.Sleep(delay)
		started <- e.start()
	}()
	t.Cleanup(func() {
		if err := <-started; err != nil {
			t.Errorf("starting the engine: %v", err)
		}
	})
}

// fastReconnect makes the client's connection retry every 50-100 ms, so that
// it notices a newly started engine at once.
func fastReconnect() herald.Option {
	return herald.WithDialOptions(grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           grpcbackoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, MaxDelay: 100 * time.Millisecond},
		MinConnectTimeout: time.Second,
	}))
}

// lateEngineCountingCalls returns a client, retrying every 50-100 ms, of an
// engine that starts listening only after 300 ms, and the count of the calls
// the client makes.
func lateEngineCountingCalls(t *testing.T) (*herald.Client, *countCalls) {
	t.Helper()
	addr, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	e := engineAt(t, addr)
	calls := &countCalls{}
	c := e.client(t, calls.option(),
		herald.WithRetry(herald.RetryPolicy{MaxAttempts: 100, InitialBackoff: 50 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}))
	startLater(t, e, 300*time.Millisecond)
	return c, calls
}

// A keyed publish made before the engine listens is retried until it is up.
func TestRetryKeyedPublishWaitsForEngine(t *testing.T) {
	c, calls := lateEngineCountingCalls(t)

	r, err := c.Publish(testCtx(t), uniqueTopic(t, "retry"), herald.Text("x"), herald.WithIdempotencyKey("k1"))
	if err != nil || r.Sequence != 1 || r.Duplicate {
		t.Fatalf("keyed publish = %+v, %v; want sequence 1", r, err)
	}
	if n := calls.get("Publish"); n < 2 {
		t.Fatalf("%d Publish attempts, want retries while the engine was not up", n)
	}
}

// Info (retried by gRPC's retry policy) made before the engine listens
// succeeds once it is up.
func TestRetryInfoWaitsForEngine(t *testing.T) {
	addr, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	e := engineAt(t, addr)
	// gRPC waits a random time of up to InitialBackoff * 2^n between attempts
	// (at most 5): long backoffs keep the attempts from running out before the
	// engine is up.
	c := e.client(t, fastReconnect(),
		herald.WithRetry(herald.RetryPolicy{MaxAttempts: 5, InitialBackoff: 2 * time.Second, MaxBackoff: 5 * time.Second}))
	startLater(t, e, 300*time.Millisecond)

	start := time.Now()
	info, err := c.Info(testCtx(t))
	if err != nil || info.NodeID == "" {
		t.Fatalf("Info = %+v, %v", info, err)
	}
	if time.Since(start) < 300*time.Millisecond {
		t.Fatalf("Info answered after %v, before the engine was started", time.Since(start))
	}
}

// A plain publish might have been applied before a failure, so it is never
// retried: it fails at once with UNAVAILABLE.
func TestRetryPlainPublishFailsFast(t *testing.T) {
	c, calls := lateEngineCountingCalls(t)

	if _, err := c.Publish(testCtx(t), uniqueTopic(t, "retry"), herald.Text("x")); !herald.IsUnavailable(err) {
		t.Fatalf("plain publish: err = %v, want UNAVAILABLE", err)
	}
	if n := calls.get("Publish"); n != 1 {
		t.Fatalf("%d Publish attempts for a plain publish, want 1", n)
	}
}

// With MaxAttempts 1 nothing is retried, keyed or not.
func TestRetriesCanBeTurnedOff(t *testing.T) {
	needEngine(t)
	addr, err := freePort() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	var calls countCalls
	c, err := herald.NewClient(addr, calls.option(), herald.WithRetry(herald.RetryPolicy{MaxAttempts: 1}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := testCtx(t)
	if _, err := c.Info(ctx); !herald.IsUnavailable(err) {
		t.Fatalf("Info: err = %v, want UNAVAILABLE", err)
	}
	if _, err := c.Publish(ctx, "room:a", herald.Text("x"), herald.WithIdempotencyKey("k")); !herald.IsUnavailable(err) {
		t.Fatalf("keyed publish: err = %v, want UNAVAILABLE", err)
	}
	if n := calls.get("Publish"); n != 1 {
		t.Fatalf("%d Publish attempts, want 1", n)
	}
	// Presence yields the error once and ends.
	var errs []error
	for _, err := range c.Presence(ctx, "room:a") {
		errs = append(errs, err)
	}
	if len(errs) != 1 || !herald.IsUnavailable(errs[0]) {
		t.Fatalf("Presence yielded %v, want one UNAVAILABLE", errs)
	}
}
