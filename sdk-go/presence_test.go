package herald_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"path"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	herald "github.com/heraldrt/herald/sdk-go"
	"google.golang.org/grpc"
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

// dialMember opens a WebSocket connection as user, subscribes it to topics and
// returns its connection id. Unlike dialWS it keeps no frames: the connection
// only discards what arrives (answering pings) until the test ends, so a test
// can hold hundreds of them.
func dialMember(t *testing.T, e *engine, user string, topics ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn := dialUser(ctx, t, e, user)
	read := func() frame {
		t.Helper()
		_, data, err := conn.Read(ctx)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		var f frame
		if err := json.Unmarshal(data, &f); err != nil {
			t.Fatalf("frame %s: %v", data, err)
		}
		f.raw = string(data)
		return f
	}
	hello := read()
	if hello.Type != "connected" || hello.ConnID == "" {
		t.Fatalf("first frame %s, want connected", hello.raw)
	}
	if len(topics) > 0 {
		sub, _ := json.Marshal(map[string]any{"type": "subscribe", "id": 1, "topics": topics})
		if err := conn.Write(ctx, websocket.MessageText, sub); err != nil {
			t.Fatalf("write: %v", err)
		}
		for {
			f := read()
			if f.ID != nil && *f.ID == 1 {
				if f.Type != "subscribed" {
					t.Fatalf("subscribe %v: %s", topics, f.raw)
				}
				break
			}
		}
	}
	conn.CloseRead(context.Background())
	return hello.ConnID
}

// countCalls counts the unary calls the client makes, by method name.
type countCalls struct {
	mu sync.Mutex
	n  map[string]int
}

func (cc *countCalls) interceptor(ctx context.Context, method string, req, reply any, conn *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	cc.mu.Lock()
	if cc.n == nil {
		cc.n = map[string]int{}
	}
	cc.n[path.Base(method)]++
	cc.mu.Unlock()
	return invoker(ctx, method, req, reply, conn, opts...)
}

func (cc *countCalls) get(method string) int {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.n[method]
}

func (cc *countCalls) option() herald.Option {
	return herald.WithDialOptions(grpc.WithChainUnaryInterceptor(cc.interceptor))
}

func TestPresencePagesThroughManyMembers(t *testing.T) {
	e := needEngine(t)
	var calls countCalls
	c := e.client(t, calls.option())
	ctx := testCtx(t)
	topic := uniqueTopic(t, "pres")

	const members = 250
	want := map[string]string{}
	for i := range members {
		user := fmt.Sprintf("p%03d", i)
		want[dialMember(t, e, user, topic)] = user
	}

	got := map[string]bool{}
	for m, err := range c.Presence(ctx, topic, herald.WithPageSize(100)) {
		if err != nil {
			t.Fatalf("Presence: %v", err)
		}
		if got[m.ConnectionID] {
			t.Fatalf("member %s listed twice", m.ConnectionID)
		}
		got[m.ConnectionID] = true
		if user, ok := want[m.ConnectionID]; !ok || m.UserID != user {
			t.Fatalf("member %+v, want one of the %d connections with its user", m, members)
		}
	}
	if len(got) != members {
		t.Fatalf("%d members listed, want %d", len(got), members)
	}
	if n := calls.get("Presence"); n != 3 {
		t.Fatalf("%d Presence calls for %d members in pages of 100, want 3", n, members)
	}

	// Stopping early fetches no further page.
	n := 0
	for _, err := range c.Presence(ctx, topic, herald.WithPageSize(100)) {
		if err != nil {
			t.Fatalf("Presence: %v", err)
		}
		n++
		if n == 3 {
			break
		}
	}
	if n != 3 || calls.get("Presence") != 4 {
		t.Fatalf("early break after %d members, %d Presence calls in all; want 3 and 4", n, calls.get("Presence"))
	}
}
