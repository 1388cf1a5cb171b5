package herald_test

import (
	"testing"

	herald "github.com/heraldrt/herald/sdk-go"
)

// An engine without API keys accepts any key: a client that sends one works
// like any other, over unary calls and streams. (What is sent is checked by
// TestAPIKeyCredsMetadata; an engine with keys, by tls_test.go.)
func TestAPIKeyClientWorks(t *testing.T) {
	e := needEngine(t)
	c := e.client(t, herald.WithAPIKey("k-123"))
	ctx := testCtx(t)
	topic := uniqueTopic(t, "key")
	ws := dialWS(t, e, "")
	ws.subscribe(topic)

	if _, err := c.Info(ctx); err != nil {
		t.Fatalf("Info: %v", err)
	}
	r, err := c.Publish(ctx, topic, herald.Text("unary"))
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if m := ws.message(); m.Seq != r.Sequence || m.Text == nil || *m.Text != "unary" {
		t.Fatalf("frame %s", m.raw)
	}
	p, err := c.NewPublisher(ctx)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	if _, err := p.Publish(ctx, topic, herald.Text("stream")); err != nil {
		t.Fatalf("Publisher.Publish: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Publisher.Close: %v", err)
	}
	if m := ws.message(); m.Text == nil || *m.Text != "stream" {
		t.Fatalf("frame %s", m.raw)
	}
	n := 0
	for m, err := range c.Presence(ctx, topic) {
		if err != nil || m.ConnectionID != ws.connID {
			t.Fatalf("Presence: %+v, %v", m, err)
		}
		n++
	}
	if n != 1 {
		t.Fatalf("%d members, want 1", n)
	}
}
