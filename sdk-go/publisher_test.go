package herald_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	herald "github.com/heraldrt/herald/sdk-go"
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
	const bad = 150
	pend := make([]*herald.PendingPublish, n)
	for i := range n {
		tp := topic
		if i == bad {
			tp = "not a topic"
		}
		pl, err := herald.JSON(map[string]int{"i": i})
		if err != nil {
			t.Fatal(err)
		}
		pend[i] = p.PublishAsync(ctx, tp, pl)
	}
	seq := uint64(0)
	for i, pp := range pend {
		r, err := pp.Wait(ctx)
		if i == bad {
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
		if i == bad {
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
