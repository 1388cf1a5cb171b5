package herald_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
	"google.golang.org/grpc/codes"
)

func TestPublisherStreamsInOrder(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "ps")
	ws := dialWS(t, e, "")
	ws.subscribe(topic)

	p, err := c.NewPublisher(ctx)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	const n = 300
	// A bad topic and a payload that is not JSON fail alone, in the middle.
	const badTopic, badJSON = 150, 151
	bad := func(i int) bool { return i == badTopic || i == badJSON }
	pend := make([]*herald.PendingPublish, n)
	for i := range n {
		tp := topic
		if i == badTopic {
			tp = "not a topic"
		}
		pl := herald.JSON(map[string]int{"i": i})
		if i == badJSON {
			pl = herald.RawJSON([]byte(`{"i":`))
		}
		pend[i] = p.PublishAsync(ctx, tp, pl)
	}
	seq := uint64(0)
	for i, pp := range pend {
		r, err := pp.Wait(ctx)
		if bad(i) {
			if !herald.IsInvalidArgument(err) {
				t.Fatalf("message %d: err = %v, want INVALID_ARGUMENT", i, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		seq++
		if r.Sequence != seq {
			t.Fatalf("message %d: sequence %d, want %d", i, r.Sequence, seq)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for i := range n {
		if bad(i) {
			continue
		}
		m := ws.message()
		if want := fmt.Sprintf(`{"i":%d}`, i); string(m.Data) != want {
			t.Fatalf("frame %s, want data %s", m.raw, want)
		}
	}
	if _, err := p.Publish(ctx, topic, herald.Text("late")); !errors.Is(err, herald.ErrClosed) {
		t.Fatalf("after Close: err = %v, want ErrClosed", err)
	}
}

func TestPublisherConcurrentUse(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	p, err := c.NewPublisher(ctx)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	defer p.Close()
	const workers, each = 6, 40
	var wg sync.WaitGroup
	for w := range workers {
		topic := uniqueTopic(t, "ps")
		wg.Go(func() {
			for i := range each {
				r, err := p.Publish(ctx, topic, herald.Text(fmt.Sprint(w, i)))
				if err != nil {
					t.Errorf("worker %d: %v", w, err)
					return
				}
				if r.Sequence != uint64(i+1) {
					t.Errorf("worker %d message %d: sequence %d", w, i, r.Sequence)
					return
				}
			}
		})
	}
	wg.Wait()
}

// Many goroutines publishing to one topic: each sees its own sequences rise,
// and every sequence of the topic is acked exactly once.
func TestPublisherConcurrentOneTopic(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "ps")
	p, err := c.NewPublisher(ctx)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	const workers, each = 16, 50
	var wg sync.WaitGroup
	seen := make(chan uint64, workers*each)
	for w := range workers {
		wg.Go(func() {
			last := uint64(0)
			for i := range each {
				r, err := p.Publish(ctx, topic, herald.Text(fmt.Sprint(w, i)))
				if err != nil {
					t.Errorf("worker %d: %v", w, err)
					return
				}
				if r.Sequence <= last {
					t.Errorf("worker %d: sequence %d after %d", w, r.Sequence, last)
					return
				}
				last = r.Sequence
				seen <- r.Sequence
			}
		})
	}
	wg.Wait()
	close(seen)
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	got := map[uint64]bool{}
	for s := range seen {
		if got[s] {
			t.Fatalf("sequence %d acked twice", s)
		}
		got[s] = true
	}
	for s := uint64(1); s <= workers*each; s++ {
		if !got[s] {
			t.Fatalf("sequence %d never acked (%d acks)", s, len(got))
		}
	}
}

// When the engine dies mid-stream, messages waiting for their ack and later
// publishes fail with a status error instead of hanging.
func TestPublisherStreamBreakFailsWaiting(t *testing.T) {
	e := ownEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "ps")
	p, err := c.NewPublisher(ctx)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	if _, err := p.Publish(ctx, topic, herald.Text("first")); err != nil {
		t.Fatalf("Publish: %v", err)
	}

	// Keep publishing without waiting while the engine is killed.
	var pend []*herald.PendingPublish
	sending := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for i := 0; ; i++ {
			pp := p.PublishAsync(ctx, topic, herald.Text(fmt.Sprint(i)))
			pend = append(pend, pp)
			if i == 100 {
				close(sending)
			}
			select {
			case <-pp.Done():
				if _, err := pp.Result(); err != nil {
					return // the stream broke: later ones fail at once
				}
			default:
			}
			if ctx.Err() != nil {
				return
			}
		}
	}()
	<-sending
	if err := e.kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("publishes kept succeeding after the engine was killed")
	}

	failed := 0
	for i, pp := range pend {
		select {
		case <-pp.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("message %d of %d still waiting after the engine died", i, len(pend))
		}
		if _, err := pp.Result(); err != nil {
			failed++
			if herald.Code(err) == codes.OK || herald.Code(err) == codes.Unknown {
				t.Fatalf("message %d: error without a status: %v", i, err)
			}
		}
	}
	if failed == 0 {
		t.Fatal("no publish failed although the engine died")
	}
	// Later publishes fail at once too.
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := p.Publish(lctx, topic, herald.Text("later")); err == nil || herald.IsDeadlineExceeded(err) {
		t.Fatalf("publish after the break: err = %v, want the stream's error", err)
	}
	if err := p.Close(); err == nil {
		t.Fatal("Close after a broken stream returned nil")
	}
}

// A producer publishing small messages as fast as it can: the Publisher sends
// what is queued as one request (the request's message and its more), so the
// engine's HTTP/2 server does not see a flood of tiny DATA frames (which it
// answers with GOAWAY ENHANCE_YOUR_CALM), and every message is acked in order.
func TestPublisherFloodOfSmallMessages(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "flood")
	p, err := c.NewPublisher(ctx)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	const n = 50_000
	pend := make([]*herald.PendingPublish, 0, n)
	for i := range n {
		pend = append(pend, p.PublishAsync(ctx, topic, herald.Bytes([]byte{byte(i)})))
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for i, pp := range pend {
		r, err := pp.Wait(ctx)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if r.Sequence != uint64(i+1) {
			t.Fatalf("message %d: sequence %d", i, r.Sequence)
		}
	}
}

// WithMaxInFlight bounds the messages queued or unanswered: with a window of 1
// every message still gets through, one at a time, in order.
func TestPublisherMaxInFlight(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "window")
	p, err := c.NewPublisher(ctx, herald.WithMaxInFlight(1))
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	defer p.Close()
	var pend []*herald.PendingPublish
	for i := range 50 {
		pp := p.PublishAsync(ctx, topic, herald.Text(fmt.Sprint(i)))
		// With one place, the previous message has been answered before this
		// one was taken.
		if len(pend) > 0 {
			select {
			case <-pend[len(pend)-1].Done():
			default:
				t.Fatalf("message %d taken while message %d was unanswered", i, i-1)
			}
		}
		pend = append(pend, pp)
	}
	for i, pp := range pend {
		if r, err := pp.Wait(ctx); err != nil || r.Sequence != uint64(i+1) {
			t.Fatalf("message %d: %+v, %v", i, r, err)
		}
	}
	// A context that ends while waiting for a place fails that message only.
	blocked, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_ = p.PublishAsync(ctx, topic, herald.Text("holds the place"))
	pp := p.PublishAsync(blocked, topic, herald.Text("waits"))
	if _, err := pp.Wait(ctx); err != nil && !herald.IsDeadlineExceeded(err) {
		t.Fatalf("waiting for a place: err = %v, want an ack or DEADLINE_EXCEEDED", err)
	}
}
