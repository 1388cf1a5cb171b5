package herald_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
)

func TestPublishPayloadsReachWebSocketClients(t *testing.T) {
	e := needEngine(t)
	c := e.client(t, herald.WithAPIKey("test-key"))
	ctx := testCtx(t)
	topic := uniqueTopic(t, "pub")
	ws := dialWS(t, e, "alice")
	ws.subscribe(topic)

	// JSON: the client sees the value itself.
	tick := map[string]any{"symbol": "EUR-USD", "price": 101.5, "tags": []any{"fx", true}}
	r1, err := c.Publish(ctx, topic, herald.JSON(tick))
	if err != nil {
		t.Fatalf("Publish JSON: %v", err)
	}
	if r1.Sequence != 1 || r1.Duplicate {
		t.Fatalf("first publish: %+v, want sequence 1", r1)
	}
	m := ws.message()
	if m.Topic != topic || m.Seq != r1.Sequence {
		t.Fatalf("JSON message: %s", m.raw)
	}
	var got any
	if err := json.Unmarshal(m.Data, &got); err != nil {
		t.Fatalf("data is not JSON: %s", m.raw)
	}
	if !reflect.DeepEqual(got, tick) {
		t.Fatalf("data = %#v, want %#v", got, tick)
	}
	if m.Text != nil || m.B64 != nil {
		t.Fatalf("JSON message has text or b64: %s", m.raw)
	}

	// Text: a JSON string.
	r2, err := c.Publish(ctx, topic, herald.Text("héllo \"wörld\"\n"))
	if err != nil {
		t.Fatalf("Publish text: %v", err)
	}
	m = ws.message()
	if m.Seq != r2.Sequence || r2.Sequence != 2 || m.Text == nil || *m.Text != "héllo \"wörld\"\n" || m.Data != nil {
		t.Fatalf("text message: %s (publish %+v)", m.raw, r2)
	}

	// Bytes: base64, without a content type.
	raw := []byte{0, 1, 2, 0xfe, 0xff, '{'}
	r3, err := c.Publish(ctx, topic, herald.Bytes(raw))
	if err != nil {
		t.Fatalf("Publish bytes: %v", err)
	}
	m = ws.message()
	if m.Seq != r3.Sequence || r3.Sequence != 3 || m.B64 == nil {
		t.Fatalf("bytes message: %s (publish %+v)", m.raw, r3)
	}
	dec, err := base64.StdEncoding.DecodeString(*m.B64)
	if err != nil || !bytes.Equal(dec, raw) {
		t.Fatalf("b64 %q decodes to %v (%v), want %v", *m.B64, dec, err, raw)
	}
	if m.ContentType != "" {
		t.Fatalf("content_type = %q for plain bytes, want none", m.ContentType)
	}

	// Another binary type: base64 plus the content type.
	if _, err := c.Publish(ctx, topic, herald.Payload{Data: []byte{8, 1}, ContentType: "application/x-protobuf"}); err != nil {
		t.Fatalf("Publish protobuf: %v", err)
	}
	if m = ws.message(); m.B64 == nil || *m.B64 != "CAE=" || m.ContentType != "application/x-protobuf" {
		t.Fatalf("protobuf message: %s", m.raw)
	}

	// A +json content type is JSON too; RawJSON keeps the bytes as they are.
	if _, err := c.Publish(ctx, topic, herald.Payload{Data: []byte(`[1,2,3]`), ContentType: "application/vnd.tick+json"}); err != nil {
		t.Fatalf("Publish +json: %v", err)
	}
	if m = ws.message(); string(m.Data) != "[1,2,3]" {
		t.Fatalf("+json message: %s", m.raw)
	}
	if _, err := c.Publish(ctx, topic, herald.RawJSON([]byte(`"just a string"`))); err != nil {
		t.Fatalf("Publish RawJSON: %v", err)
	}
	if m = ws.message(); string(m.Data) != `"just a string"` {
		t.Fatalf("RawJSON message: %s", m.raw)
	}
}

func TestPublishRejectsBadInput(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "pub")
	ws := dialWS(t, e, "")
	ws.subscribe(topic)

	cases := []struct {
		name    string
		topic   string
		payload herald.Payload
	}{
		{"empty segment", "room::x", herald.Text("x")},
		{"empty topic", "", herald.Text("x")},
		{"pattern", "room:*", herald.Text("x")},
		{"space", "room general", herald.Text("x")},
		{"too long", strings.Repeat("a", 256), herald.Text("x")},
		{"invalid JSON", topic, herald.RawJSON([]byte(`{"price":`))},
		{"invalid UTF-8 text", topic, herald.Payload{Data: []byte{'a', 0xff}, ContentType: "text/plain"}},
		{"oversize", topic, herald.Bytes(make([]byte, 64*1024+1))},
	}
	for _, tc := range cases {
		_, err := c.Publish(ctx, tc.topic, tc.payload)
		if !herald.IsInvalidArgument(err) {
			t.Errorf("%s: err = %v, want INVALID_ARGUMENT", tc.name, err)
		}
	}
	// Nothing was delivered, and the sequence was not used up.
	r, err := c.Publish(ctx, topic, herald.Text("ok"))
	if err != nil || r.Sequence != 1 {
		t.Fatalf("publish after refusals: %+v, %v; want sequence 1", r, err)
	}
	if m := ws.next(5 * time.Second); m.Type != "message" || m.Seq != 1 || m.Text == nil || *m.Text != "ok" {
		t.Fatalf("first frame after refusals: %s", m.raw)
	}
}

func TestPublishMaxPayloadAccepted(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	if _, err := c.Publish(testCtx(t), uniqueTopic(t, "pub"), herald.Bytes(make([]byte, 64*1024))); err != nil {
		t.Fatalf("64 KiB payload: %v", err)
	}
}

func TestPublishIdempotencyKey(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "pub")
	ws := dialWS(t, e, "")
	ws.subscribe(topic)

	first, err := c.Publish(ctx, topic, herald.Text("once"), herald.WithIdempotencyKey("order-42"))
	if err != nil || first.Duplicate {
		t.Fatalf("first: %+v, %v", first, err)
	}
	again, err := c.Publish(ctx, topic, herald.Text("once"), herald.WithIdempotencyKey("order-42"))
	if err != nil {
		t.Fatalf("again: %v", err)
	}
	if !again.Duplicate || again.Sequence != first.Sequence {
		t.Fatalf("again: %+v, want duplicate of sequence %d", again, first.Sequence)
	}
	other, err := c.Publish(ctx, topic, herald.Text("next"), herald.WithIdempotencyKey("order-43"))
	if err != nil || other.Duplicate || other.Sequence != first.Sequence+1 {
		t.Fatalf("other key: %+v, %v", other, err)
	}
	if m := ws.message(); m.Seq != first.Sequence || *m.Text != "once" {
		t.Fatalf("first frame %s", m.raw)
	}
	if m := ws.message(); m.Seq != other.Sequence || *m.Text != "next" {
		t.Fatalf("second frame %s (the duplicate must not be delivered)", m.raw)
	}
}

func TestPublishWithTTLIsDelivered(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	topic := uniqueTopic(t, "pub")
	ws := dialWS(t, e, "")
	ws.subscribe(topic)
	r, err := c.Publish(testCtx(t), topic, herald.Text("fresh"), herald.WithTTL(time.Minute))
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if m := ws.message(); m.Seq != r.Sequence || *m.Text != "fresh" {
		t.Fatalf("frame %s", m.raw)
	}
}
