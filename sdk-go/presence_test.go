package herald_test

import (
	"encoding/json"
	"net/url"
	"reflect"
	"testing"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
)

func TestPresenceAndStats(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "pres")

	info := `{"name":"Grace","device":"phone"}`
	g := dialWSQuery(t, e, url.Values{"user": {"grace"}, "info": {info}})
	h1, h2 := dialWS(t, e, "heidi"), dialWS(t, e, "heidi")
	anon := dialWS(t, e, "")
	want := map[string]string{g.connID: "grace", h1.connID: "heidi", h2.connID: "heidi", anon.connID: ""}
	for _, ws := range []*wsClient{g, h1, h2, anon} {
		ws.subscribe(topic)
	}

	got := map[string]herald.Member{}
	for m, err := range c.Presence(ctx, topic, herald.WithPageSize(3)) {
		if err != nil {
			t.Fatalf("Presence: %v", err)
		}
		if _, dup := got[m.ConnectionID]; dup {
			t.Fatalf("member %s listed twice", m.ConnectionID)
		}
		got[m.ConnectionID] = m
	}
	if len(got) != len(want) {
		t.Fatalf("members %v, want %v", got, want)
	}
	for id, user := range want {
		if m, ok := got[id]; !ok || m.UserID != user {
			t.Fatalf("member %s = %+v, want user %q", id, m, user)
		}
	}
	var gotInfo, wantInfo any
	if err := json.Unmarshal([]byte(got[g.connID].Info), &gotInfo); err != nil {
		t.Fatalf("info %q is not JSON: %v", got[g.connID].Info, err)
	}
	_ = json.Unmarshal([]byte(info), &wantInfo)
	if !reflect.DeepEqual(gotInfo, wantInfo) {
		t.Fatalf("info = %s, want %s", got[g.connID].Info, info)
	}
	if got[h1.connID].Info != "" {
		t.Fatalf("info without one given: %q", got[h1.connID].Info)
	}

	st, err := c.PresenceStats(ctx, topic)
	if err != nil {
		t.Fatalf("PresenceStats: %v", err)
	}
	if st.Connections != 4 || st.Users != 2 {
		t.Fatalf("stats %+v, want 4 connections and 2 users", st)
	}

	// Leaving shows at once in the stats.
	anon.close()
	h2.send(map[string]any{"type": "unsubscribe", "id": 9, "topics": []string{topic}})
	h2.waitFor(5*time.Second, func(f frame) bool { return f.Type == "unsubscribed" })
	waitStats(t, c, topic, herald.TopicStats{Connections: 2, Users: 2})
}

func waitStats(t *testing.T, c *herald.Client, topic string, want herald.TopicStats) {
	t.Helper()
	ctx := testCtx(t)
	var st herald.TopicStats
	var err error
	for range 100 {
		if st, err = c.PresenceStats(ctx, topic); err == nil && st == want {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("stats %+v (%v), want %+v", st, err, want)
}

func TestPresenceEmptyAndBadTopic(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	for m, err := range c.Presence(ctx, uniqueTopic(t, "pres")) {
		t.Fatalf("empty topic yielded %+v, %v", m, err)
	}
	if st, err := c.PresenceStats(ctx, uniqueTopic(t, "pres")); err != nil || st != (herald.TopicStats{}) {
		t.Fatalf("empty stats = %+v, %v", st, err)
	}
	n := 0
	for _, err := range c.Presence(ctx, "bad::topic") {
		n++
		if !herald.IsInvalidArgument(err) {
			t.Fatalf("bad topic: err = %v, want INVALID_ARGUMENT", err)
		}
	}
	if n != 1 {
		t.Fatalf("bad topic yielded %d times, want once", n)
	}
	if _, err := c.PresenceStats(ctx, "bad::topic"); !herald.IsInvalidArgument(err) {
		t.Fatalf("stats bad topic: err = %v, want INVALID_ARGUMENT", err)
	}
}
