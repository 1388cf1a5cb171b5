package herald_test

import (
	"bytes"
	"fmt"
	"testing"

	herald "github.com/heraldrt/herald/sdk-go"
)

// A burst of large messages through one Publisher: the publisher splits what
// is queued into requests the engine takes (with its default limits, seven of
// these messages in one request exceed the engine's gRPC message limit, which
// would end the stream), so every message is acked, in order, and the stream
// goes on.
func TestPublisherBurstOfLargeMessages(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "large")

	p, err := c.NewPublisher(ctx)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	defer p.Close()
	const n, size = 40, 60 << 10 // within the default max_payload_bytes
	pend := make([]*herald.PendingPublish, n)
	for i := range n {
		pend[i] = p.PublishAsync(ctx, topic, herald.Bytes(bytes.Repeat([]byte{byte(i)}, size)))
	}
	for i, pp := range pend {
		r, err := pp.Wait(ctx)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if r.Sequence != uint64(i+1) {
			t.Fatalf("message %d: sequence %d, want %d", i, r.Sequence, i+1)
		}
	}
	r, err := p.Publish(ctx, topic, herald.Text("after"))
	if err != nil || r.Sequence != n+1 {
		t.Fatalf("after the burst: %+v, %v; want sequence %d", r, err, n+1)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// Large and small messages mixed: every 10th is 60 KiB.
func TestPublisherLargeAndSmallMessagesMixed(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "mixed")

	p, err := c.NewPublisher(ctx)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	defer p.Close()
	const n = 1000
	pend := make([]*herald.PendingPublish, n)
	for i := range n {
		data := []byte(fmt.Sprint(i))
		if i%10 == 0 {
			data = bytes.Repeat([]byte{'y'}, 60<<10)
		}
		pend[i] = p.PublishAsync(ctx, topic, herald.Bytes(data))
	}
	for i, pp := range pend {
		r, err := pp.Wait(ctx)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if r.Sequence != uint64(i+1) {
			t.Fatalf("message %d: sequence %d, want %d", i, r.Sequence, i+1)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}
