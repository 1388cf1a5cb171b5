package herald_test

import (
	"testing"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
)

func TestUnitSafeCallsAreRetried(t *testing.T) {
	svc := newFakeHerald()
	svc.fail["Info"] = 2
	fe := startFake(t, svc)
	c := fe.client(herald.WithRetry(herald.RetryPolicy{InitialBackoff: time.Millisecond}))
	info, err := c.Info(testCtx(t))
	if err != nil || info.NodeID != "fake" || info.Uptime != 3*time.Second {
		t.Fatalf("Info = %+v, %v", info, err)
	}
	if n := svc.callCount("Info"); n != 3 {
		t.Fatalf("%d Info calls, want 3", n)
	}
}

func TestUnitRetriesCanBeTurnedOff(t *testing.T) {
	svc := newFakeHerald()
	svc.fail["Info"] = 1
	fe := startFake(t, svc)
	c := fe.client(herald.WithRetry(herald.RetryPolicy{MaxAttempts: 1}))
	if _, err := c.Info(testCtx(t)); !herald.IsUnavailable(err) {
		t.Fatalf("err = %v, want UNAVAILABLE", err)
	}
	if n := svc.callCount("Info"); n != 1 {
		t.Fatalf("%d Info calls, want 1", n)
	}
}

func TestUnitPublishRetriedOnlyWithIdempotencyKey(t *testing.T) {
	svc := newFakeHerald()
	fe := startFake(t, svc)
	c := fe.client(herald.WithRetry(herald.RetryPolicy{InitialBackoff: time.Millisecond}))
	ctx := testCtx(t)

	svc.fail["Publish"] = 1
	if _, err := c.Publish(ctx, "room:a", herald.Text("x")); !herald.IsUnavailable(err) {
		t.Fatalf("plain publish: err = %v, want UNAVAILABLE (never retried)", err)
	}
	if n := svc.callCount("Publish"); n != 1 {
		t.Fatalf("%d calls for a plain publish, want 1", n)
	}

	svc.fail["Publish"] = 2
	r, err := c.Publish(ctx, "room:a", herald.Text("x"), herald.WithIdempotencyKey("k1"))
	if err != nil || r.Sequence != 1 {
		t.Fatalf("keyed publish = %+v, %v; want sequence 1", r, err)
	}
	if n := svc.callCount("Publish"); n != 4 {
		t.Fatalf("%d calls in all, want 4", n)
	}

	svc.fail["Publish"] = 10
	if _, err := c.Publish(ctx, "room:a", herald.Text("x"), herald.WithIdempotencyKey("k2")); !herald.IsUnavailable(err) {
		t.Fatalf("keyed publish past the attempts: err = %v, want UNAVAILABLE", err)
	}
	if n := svc.callCount("Publish"); n != 8 {
		t.Fatalf("%d calls in all, want 8 (4 attempts)", n)
	}
}
