package herald_test

import (
	"testing"

	herald "github.com/heraldrt/herald/sdk-go"
)

func TestBroadcast(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	a, b, d := uniqueTopic(t, "bc"), uniqueTopic(t, "bc"), uniqueTopic(t, "bc")
	ws := dialWS(t, e, "bob")
	ws.subscribe(a, d)

	// b already has one message, so its sequence differs.
	if _, err := c.Publish(ctx, b, herald.Text("before")); err != nil {
		t.Fatal(err)
	}
	res, err := c.Broadcast(ctx, []string{a, b, d}, herald.JSON(map[string]string{"alert": "market closed"}))
	if err != nil {
		t.Fatalf("Broadcast: %v", err)
	}
	want := []uint64{1, 2, 1}
	if len(res) != len(want) {
		t.Fatalf("results %+v, want %d", res, len(want))
	}
	for i, r := range res {
		if r.Sequence != want[i] || r.Duplicate {
			t.Fatalf("result %d = %+v, want sequence %d", i, r, want[i])
		}
	}
	got := map[string]uint64{}
	for range 2 {
		m := ws.message()
		if string(m.Data) != `{"alert":"market closed"}` {
			t.Fatalf("broadcast frame %s", m.raw)
		}
		got[m.Topic] = m.Seq
	}
	if got[a] != 1 || got[d] != 1 || len(got) != 2 {
		t.Fatalf("received %v, want %s and %s at sequence 1", got, a, d)
	}
}

func TestBroadcastBadTopicPublishesNothing(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	a := uniqueTopic(t, "bc")
	ws := dialWS(t, e, "")
	ws.subscribe(a)

	_, err := c.Broadcast(ctx, []string{a, "bad::topic"}, herald.Text("no"))
	if !herald.IsInvalidArgument(err) {
		t.Fatalf("err = %v, want INVALID_ARGUMENT", err)
	}
	r, err := c.Publish(ctx, a, herald.Text("marker"))
	if err != nil || r.Sequence != 1 {
		t.Fatalf("marker: %+v, %v; want sequence 1", r, err)
	}
	if m := ws.message(); m.Text == nil || *m.Text != "marker" {
		t.Fatalf("first frame %s, want the marker (the refused broadcast must not arrive)", m.raw)
	}
}
