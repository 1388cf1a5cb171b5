package herald_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
	heraldv1 "github.com/heraldrt/herald/sdk-go/gen/herald/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestUnitAPIKeySentAsMetadata(t *testing.T) {
	fe := startFake(t, newFakeHerald())
	c := fe.client(herald.WithAPIKey("k-123"))
	if _, err := c.Publish(testCtx(t), "room:a", herald.Text("hi")); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	fe.svc.mu.Lock()
	got := fe.svc.lastMD.Get("authorization")
	fe.svc.mu.Unlock()
	if len(got) != 1 || got[0] != "Bearer k-123" {
		t.Fatalf("authorization metadata = %q, want [Bearer k-123]", got)
	}
}

func TestUnitPublisherOrderAndItemErrors(t *testing.T) {
	fe := startFake(t, newFakeHerald())
	c := fe.client()
	ctx := testCtx(t)
	p, err := c.NewPublisher(ctx)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	var pend []*herald.PendingPublish
	for i := range 100 {
		topic := "room:a"
		if i == 50 {
			topic = "room::bad"
		}
		pend = append(pend, p.PublishAsync(ctx, topic, herald.Text(fmt.Sprint(i))))
	}
	want := uint64(1)
	for i, pp := range pend {
		res, err := pp.Wait(ctx)
		if i == 50 {
			if !herald.IsInvalidArgument(err) {
				t.Fatalf("message 50: err = %v, want INVALID_ARGUMENT", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if res.Sequence != want {
			t.Fatalf("message %d: seq %d, want %d", i, res.Sequence, want)
		}
		want++
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := p.Publish(ctx, "room:a", herald.Text("late")); !errors.Is(err, herald.ErrClosed) {
		t.Fatalf("publish after Close: err = %v, want ErrClosed", err)
	}
}

func TestUnitPublisherConcurrent(t *testing.T) {
	fe := startFake(t, newFakeHerald())
	c := fe.client()
	ctx := testCtx(t)
	p, err := c.NewPublisher(ctx)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	defer p.Close()
	const workers, each = 8, 50
	var wg sync.WaitGroup
	seen := make(chan uint64, workers*each)
	for range workers {
		wg.Go(func() {
			last := uint64(0)
			for range each {
				res, err := p.Publish(ctx, "room:c", herald.Bytes([]byte{1}))
				if err != nil {
					t.Errorf("Publish: %v", err)
					return
				}
				if res.Sequence <= last {
					t.Errorf("seq %d after %d from the same goroutine", res.Sequence, last)
				}
				last = res.Sequence
				seen <- res.Sequence
			}
		})
	}
	wg.Wait()
	close(seen)
	got := map[uint64]bool{}
	for s := range seen {
		if got[s] {
			t.Fatalf("sequence %d acked twice", s)
		}
		got[s] = true
	}
	if len(got) != workers*each {
		t.Fatalf("got %d acks, want %d", len(got), workers*each)
	}
}

func TestUnitPublisherStreamBreakFailsWaiting(t *testing.T) {
	svc := newFakeHerald()
	fe := startFake(t, svc)
	c := fe.client()
	ctx := testCtx(t)
	p, err := c.NewPublisher(ctx)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	if _, err := p.Publish(ctx, "room:a", herald.Text("x")); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	fe.stop()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := p.Publish(ctx, "room:a", herald.Text("y"))
		if err != nil {
			if herald.Code(err) == codes.OK {
				t.Fatalf("error without a status: %v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("publishes still succeed after the server stopped")
		}
	}
	if err := p.Close(); err == nil {
		t.Fatal("Close after a broken stream returned nil")
	}
}

func TestUnitControlStream(t *testing.T) {
	fe := startFake(t, newFakeHerald())
	c := fe.client()
	ctx := testCtx(t)
	s, err := c.Control(ctx)
	if err != nil {
		t.Fatalf("Control: %v", err)
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			if n, err := s.Subscribe(ctx, herald.Conn("c1"), "room:a"); err != nil || n != 1 {
				t.Errorf("Subscribe c1 = %d, %v; want 1, nil", n, err)
			}
			if _, err := s.Subscribe(ctx, herald.Conn("nope"), "room:a"); !herald.IsNotFound(err) {
				t.Errorf("Subscribe nope: err = %v, want NOT_FOUND", err)
			}
			if n, err := s.Unsubscribe(ctx, herald.User("u"), "room:a"); err != nil || n != 2 {
				t.Errorf("Unsubscribe = %d, %v; want 2, nil", n, err)
			}
			if n, err := s.Disconnect(ctx, herald.User("u"), herald.DisconnectOptions{Reason: "bye"}); err != nil || n != 3 {
				t.Errorf("Disconnect = %d, %v; want 3, nil", n, err)
			}
		})
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := s.Subscribe(ctx, herald.Conn("c1"), "room:a"); !errors.Is(err, herald.ErrClosed) {
		t.Fatalf("after Close: err = %v, want ErrClosed", err)
	}
}

func TestUnitPresencePages(t *testing.T) {
	svc := newFakeHerald()
	for i := range 25 {
		svc.members = append(svc.members, &heraldv1.Member{ConnectionId: fmt.Sprintf("c%02d", i), UserId: "u"})
	}
	fe := startFake(t, svc)
	c := fe.client()
	ctx := testCtx(t)

	var ids []string
	for m, err := range c.Presence(ctx, "room:a", herald.WithPageSize(10)) {
		if err != nil {
			t.Fatalf("Presence: %v", err)
		}
		ids = append(ids, m.ConnectionID)
	}
	if len(ids) != 25 || ids[0] != "c00" || ids[24] != "c24" {
		t.Fatalf("members = %v, want c00..c24", ids)
	}

	// Stopping early stops fetching.
	n := 0
	for range c.Presence(ctx, "room:a", herald.WithPageSize(10)) {
		n++
		if n == 3 {
			break
		}
	}
	if n != 3 {
		t.Fatalf("early break: %d", n)
	}
}

func TestUnitPresenceErrorIsYielded(t *testing.T) {
	fe := startFake(t, newFakeHerald())
	c := fe.client()
	fe.stop()
	var errs []error
	for m, err := range c.Presence(testCtx(t), "room:a") {
		if err == nil {
			t.Fatalf("member %+v from a stopped server", m)
		}
		errs = append(errs, err)
	}
	if len(errs) != 1 || !herald.IsUnavailable(errs[0]) {
		t.Fatalf("errors = %v, want one UNAVAILABLE", errs)
	}
}

func TestUnitErrorHelpers(t *testing.T) {
	err := fmt.Errorf("wrapped: %w", status.Error(codes.NotFound, "no such connection"))
	if !herald.IsNotFound(err) || herald.Code(err) != codes.NotFound || herald.IsUnavailable(err) {
		t.Fatalf("helpers on a wrapped NOT_FOUND: code %v", herald.Code(err))
	}
	checks := map[codes.Code]func(error) bool{
		codes.InvalidArgument:    herald.IsInvalidArgument,
		codes.FailedPrecondition: herald.IsFailedPrecondition,
		codes.Unavailable:        herald.IsUnavailable,
		codes.Unimplemented:      herald.IsUnimplemented,
		codes.ResourceExhausted:  herald.IsResourceExhausted,
		codes.DeadlineExceeded:   herald.IsDeadlineExceeded,
		codes.Canceled:           herald.IsCanceled,
	}
	for code, is := range checks {
		if !is(status.Error(code, "x")) || is(status.Error(codes.Internal, "x")) || is(nil) {
			t.Errorf("helper for %v", code)
		}
	}
	if herald.Code(nil) != codes.OK || herald.Code(errors.New("plain")) != codes.Unknown {
		t.Fatal("Code on nil or a plain error")
	}
}
