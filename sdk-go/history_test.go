package herald_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
)

// historyEngine starts an engine whose "hist:*" topics keep 100 messages.
func historyEngine(t *testing.T) *engine {
	t.Helper()
	rules := filepath.Join(t.TempDir(), "herald.toml")
	toml := "[[topics]]\npattern = \"hist:*\"\nsubscribe = \"anyone\"\nhistory_size = 100\nhistory_ttl = \"2m\"\n"
	if err := os.WriteFile(rules, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	return ownEngine(t, "--config", rules)
}

func TestHistoryPagesAndRemoveHistory(t *testing.T) {
	c := historyEngine(t).client(t)
	ctx := testCtx(t)
	var epoch string
	for n := 1; n <= 5; n++ {
		r, err := c.Publish(ctx, "hist:a", herald.JSON(map[string]int{"n": n}))
		if err != nil {
			t.Fatalf("Publish: %v", err)
		}
		if len(r.Epoch) != 16 || (epoch != "" && r.Epoch != epoch) {
			t.Fatalf("epoch %q after %q", r.Epoch, epoch)
		}
		epoch = r.Epoch
	}
	seqs := func(p herald.HistoryPage) []uint64 {
		var s []uint64
		for _, m := range p.Messages {
			s = append(s, m.Sequence)
		}
		return s
	}
	first, err := c.History(ctx, "hist:a", herald.WithLimit(2))
	if err != nil {
		t.Fatalf("History: %v", err)
	}
	if !slices.Equal(seqs(first), []uint64{1, 2}) || string(first.Messages[0].Data) != `{"n":1}` ||
		first.Messages[0].ContentType != "application/json" || first.Position != (herald.Position{Sequence: 5, Epoch: epoch}) ||
		first.FirstSequence != 1 {
		t.Fatalf("first page %+v", first)
	}
	next, err := c.History(ctx, "hist:a", herald.WithSince(herald.Position{Sequence: 2, Epoch: epoch}))
	if err != nil || !slices.Equal(seqs(next), []uint64{3, 4, 5}) {
		t.Fatalf("next page %+v, %v", next, err)
	}
	newest, err := c.History(ctx, "hist:a", herald.WithReverse(), herald.WithLimit(2))
	if err != nil || !slices.Equal(seqs(newest), []uint64{5, 4}) {
		t.Fatalf("newest page %+v, %v", newest, err)
	}
	_, err = c.History(ctx, "hist:a", herald.WithSince(herald.Position{Sequence: 1, Epoch: "0000000000000000"}))
	if !herald.IsFailedPrecondition(err) {
		t.Fatalf("another epoch: %v, want FAILED_PRECONDITION", err)
	}
	removed, err := c.RemoveHistory(ctx, "hist:a")
	if err != nil || removed != 5 {
		t.Fatalf("RemoveHistory = %d, %v", removed, err)
	}
	empty, err := c.History(ctx, "hist:a")
	if err != nil || len(empty.Messages) != 0 || empty.Position.Sequence != 5 {
		t.Fatalf("after RemoveHistory: %+v, %v", empty, err)
	}
}

// untilPush returns the messages that arrive before the next server-initiated
// "subscribed" push, and the push.
func untilPush(t *testing.T, ws *wsClient) ([]frame, frame) {
	t.Helper()
	var msgs []frame
	for {
		f := ws.next(5 * time.Second)
		switch {
		case f.Type == "subscribed" && f.Server:
			return msgs, f
		case f.Type == "message":
			msgs = append(msgs, f)
		}
	}
}

func TestSubscribeSinceRecoversWhatTheConnectionMissed(t *testing.T) {
	e := historyEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	ws := dialWS(t, e, "")
	var epoch string
	for n := 1; n <= 5; n++ {
		r, err := c.Publish(ctx, "hist:r", herald.JSON(map[string]int{"n": n}))
		if err != nil {
			t.Fatalf("Publish: %v", err)
		}
		epoch = r.Epoch
	}
	topics := make([]string, 1, 8) // room to append: SubscribeSince must not write there
	topics[0] = "plain:r"
	r, err := c.SubscribeSince(ctx, herald.Conn(ws.connID),
		map[string]herald.Position{"hist:r": {Sequence: 2, Epoch: epoch}}, topics...)
	if err != nil {
		t.Fatalf("SubscribeSince: %v", err)
	}
	if r.Connections != 1 || !r.Recovered["hist:r"] || len(r.Recovered) != 1 ||
		r.Positions["hist:r"] != (herald.Position{Sequence: 5, Epoch: epoch}) || len(r.NotRecovered()) != 0 {
		t.Fatalf("result %+v", r)
	}
	if topics[:2][1] != "" {
		t.Fatalf("SubscribeSince wrote into the caller's topics: %q", topics[:2])
	}
	replayed, push := untilPush(t, ws)
	var got []uint64
	for _, m := range replayed {
		if m.Topic != "hist:r" || m.Epoch != epoch {
			t.Fatalf("replayed %s", m.raw)
		}
		got = append(got, m.Seq)
	}
	if !slices.Equal(got, []uint64{3, 4, 5}) {
		t.Fatalf("replayed sequences %v, want [3 4 5]", got)
	}
	slices.Sort(push.Topics)
	if !slices.Equal(push.Topics, []string{"hist:r", "plain:r"}) || !push.Recovered["hist:r"] ||
		push.Positions["hist:r"].Seq != 5 || push.Positions["hist:r"].Epoch != epoch {
		t.Fatalf("push %s", push.raw)
	}
	if _, err := c.Publish(ctx, "hist:r", herald.Text("live")); err != nil {
		t.Fatal(err)
	}
	if live := ws.waitFor(5*time.Second, func(f frame) bool { return f.Type == "message" }); live.Seq != 6 {
		t.Fatalf("live message %s, want seq 6", live.raw)
	}
}

func TestSubscribeSinceReportsWhatCannotBeRecovered(t *testing.T) {
	e := historyEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	var hist, plain herald.PublishResult
	for n := range 3 {
		var err error
		if hist, err = c.Publish(ctx, "hist:s", herald.JSON(n)); err != nil {
			t.Fatal(err)
		}
		if plain, err = c.Publish(ctx, "plain:s", herald.JSON(n)); err != nil {
			t.Fatal(err)
		}
	}
	ws := dialWS(t, e, "bob")
	r, err := c.SubscribeSince(ctx, herald.User("bob"), map[string]herald.Position{
		"hist:s":  {Sequence: 1, Epoch: "0000000000000000"}, // another epoch
		"plain:s": {Sequence: 1, Epoch: plain.Epoch},        // behind, no history
	})
	if err != nil {
		t.Fatalf("SubscribeSince: %v", err)
	}
	if !slices.Equal(r.NotRecovered(), []string{"hist:s", "plain:s"}) ||
		r.Positions["hist:s"] != (herald.Position{Sequence: 3, Epoch: hist.Epoch}) ||
		r.Positions["plain:s"] != (herald.Position{Sequence: 3, Epoch: plain.Epoch}) {
		t.Fatalf("result %+v", r)
	}
	replayed, push := untilPush(t, ws)
	if len(replayed) != 0 || push.Recovered["hist:s"] || push.Recovered["plain:s"] || len(push.Recovered) != 2 {
		t.Fatalf("replayed %d, push %s", len(replayed), push.raw)
	}

	// Up to date recovers even without history; a topic already joined is false.
	ws2 := dialWS(t, e, "")
	upToDate := map[string]herald.Position{"plain:s": {Sequence: 3, Epoch: plain.Epoch}}
	if r, err := c.SubscribeSince(ctx, herald.Conn(ws2.connID), upToDate); err != nil || !r.Recovered["plain:s"] {
		t.Fatalf("up to date: %+v, %v", r, err)
	}
	if r, err := c.SubscribeSince(ctx, herald.Conn(ws2.connID), upToDate); err != nil || r.Recovered["plain:s"] {
		t.Fatalf("already subscribed: %+v, %v", r, err)
	}
	if _, err := c.SubscribeSince(ctx, herald.User("nobody-here"), upToDate); !herald.IsNotFound(err) {
		t.Fatalf("unknown user: %v, want NOT_FOUND", err)
	}
	if _, err := c.SubscribeSince(ctx, herald.Target{}, upToDate); !herald.IsInvalidArgument(err) {
		t.Fatalf("no target: %v, want INVALID_ARGUMENT", err)
	}
}
