package herald_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	herald "github.com/heraldrt/herald/sdk-go"
)

// historyEngine starts an engine whose "hist:*" topics keep 100 messages.
func historyEngine(t *testing.T) *herald.Client {
	t.Helper()
	rules := filepath.Join(t.TempDir(), "herald.toml")
	toml := "[[topics]]\npattern = \"hist:*\"\nsubscribe = \"anyone\"\nhistory_size = 100\nhistory_ttl = \"2m\"\n"
	if err := os.WriteFile(rules, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	return ownEngine(t, "--config", rules).client(t)
}

func TestHistoryPagesAndRemoveHistory(t *testing.T) {
	c := historyEngine(t)
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
