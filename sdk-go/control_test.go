package herald_test

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	herald "github.com/heraldrt/herald/sdk-go"
)

// serverPush waits for a server-initiated subscribed/unsubscribed frame.
func serverPush(t *testing.T, ws *wsClient, typ string, topics ...string) {
	t.Helper()
	f := ws.waitFor(5*time.Second, func(f frame) bool { return f.Type == typ && f.ID == nil })
	if !f.Server || !slices.Equal(f.Topics, topics) {
		t.Fatalf("%s push %s, want server:true and topics %v", typ, f.raw, topics)
	}
}

func TestSubscribeUnsubscribeConnection(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "ctl")
	ws := dialWS(t, e, "dave")

	n, err := c.Subscribe(ctx, herald.Conn(ws.connID), topic)
	if err != nil || n != 1 {
		t.Fatalf("Subscribe = %d, %v; want 1", n, err)
	}
	serverPush(t, ws, "subscribed", topic)
	r, err := c.Publish(ctx, topic, herald.Text("in"))
	if err != nil {
		t.Fatal(err)
	}
	if m := ws.message(); m.Seq != r.Sequence || *m.Text != "in" {
		t.Fatalf("frame %s", m.raw)
	}

	n, err = c.Unsubscribe(ctx, herald.Conn(ws.connID), topic)
	if err != nil || n != 1 {
		t.Fatalf("Unsubscribe = %d, %v; want 1", n, err)
	}
	serverPush(t, ws, "unsubscribed", topic)
	if _, err := c.Publish(ctx, topic, herald.Text("out")); err != nil {
		t.Fatal(err)
	}
	ws.expectNone(300 * time.Millisecond)
}

func TestSubscribeUser(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "ctl")
	user := "user-" + topic[len("ctl:"):]
	ws1, ws2 := dialWS(t, e, user), dialWS(t, e, user)
	other := dialWS(t, e, user+"-other")

	n, err := c.Subscribe(ctx, herald.User(user), topic)
	if err != nil || n != 2 {
		t.Fatalf("Subscribe user = %d, %v; want 2", n, err)
	}
	serverPush(t, ws1, "subscribed", topic)
	serverPush(t, ws2, "subscribed", topic)
	if _, err := c.Publish(ctx, topic, herald.Text("both")); err != nil {
		t.Fatal(err)
	}
	ws1.message()
	ws2.message()
	other.expectNone(200 * time.Millisecond)

	n, err = c.Unsubscribe(ctx, herald.User(user), topic)
	if err != nil || n != 2 {
		t.Fatalf("Unsubscribe user = %d, %v; want 2", n, err)
	}
}

func TestSubscribeErrors(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	if _, err := c.Subscribe(ctx, herald.Conn("no-such-connection"), "room:a"); !herald.IsNotFound(err) {
		t.Errorf("unknown connection: err = %v, want NOT_FOUND", err)
	}
	if _, err := c.Subscribe(ctx, herald.User("no-such-user-ever"), "room:a"); !herald.IsNotFound(err) {
		t.Errorf("unknown user: err = %v, want NOT_FOUND", err)
	}
	ws := dialWS(t, e, "")
	if _, err := c.Subscribe(ctx, herald.Conn(ws.connID), "room::bad"); !herald.IsInvalidArgument(err) {
		t.Errorf("bad topic: err = %v, want INVALID_ARGUMENT", err)
	}
	if _, err := c.Disconnect(ctx, herald.Conn("no-such-connection")); !herald.IsNotFound(err) {
		t.Errorf("disconnect unknown: err = %v, want NOT_FOUND", err)
	}
}

func expectDisconnect(t *testing.T, ws *wsClient, code int, reason string, reconnect bool) {
	t.Helper()
	f := ws.waitFor(5*time.Second, func(f frame) bool { return f.Type == "disconnect" })
	if string(f.Code) != strconv.Itoa(code) || f.Reason != reason || f.Reconnect != reconnect {
		t.Fatalf("disconnect frame %s, want code %d reason %q reconnect %v", f.raw, code, reason, reconnect)
	}
	err := ws.closed(5 * time.Second)
	if got := websocket.CloseStatus(err); int(got) != code {
		t.Fatalf("close status %d (%v), want %d", got, err, code)
	}
}

func TestDisconnect(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)

	ws := dialWS(t, e, "erin")
	n, err := c.Disconnect(ctx, herald.Conn(ws.connID), herald.WithCloseCode(4100), herald.WithReason("maintenance"), herald.WithReconnect(true))
	if err != nil || n != 1 {
		t.Fatalf("Disconnect = %d, %v; want 1", n, err)
	}
	expectDisconnect(t, ws, 4100, "maintenance", true)

	// Code 0 takes the default for the reconnect hint.
	ws = dialWS(t, e, "erin")
	if _, err := c.Disconnect(ctx, herald.Conn(ws.connID), herald.WithReason("banned")); err != nil {
		t.Fatalf("Disconnect: %v", err)
	}
	expectDisconnect(t, ws, 4500, "banned", false)

	ws = dialWS(t, e, "erin")
	if _, err := c.Disconnect(ctx, herald.Conn(ws.connID), herald.WithReconnect(true)); err != nil {
		t.Fatalf("Disconnect: %v", err)
	}
	expectDisconnect(t, ws, 4003, "", true)

	if _, err := c.Disconnect(ctx, herald.Conn(dialWS(t, e, "").connID), herald.WithCloseCode(1000)); !herald.IsInvalidArgument(err) {
		t.Fatalf("code 1000: err = %v, want INVALID_ARGUMENT", err)
	}
}

func TestControlStream(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "ctl")
	ws := dialWS(t, e, "frank")

	s, err := c.Control(ctx)
	if err != nil {
		t.Fatalf("Control: %v", err)
	}
	if n, err := s.Subscribe(ctx, herald.Conn(ws.connID), topic); err != nil || n != 1 {
		t.Fatalf("stream Subscribe = %d, %v", n, err)
	}
	serverPush(t, ws, "subscribed", topic)
	// A failing command leaves the stream usable.
	if _, err := s.Subscribe(ctx, herald.Conn("no-such-connection"), topic); !herald.IsNotFound(err) {
		t.Fatalf("stream Subscribe unknown: err = %v, want NOT_FOUND", err)
	}
	if n, err := s.Unsubscribe(ctx, herald.Conn(ws.connID), topic); err != nil || n != 1 {
		t.Fatalf("stream Unsubscribe = %d, %v", n, err)
	}
	serverPush(t, ws, "unsubscribed", topic)
	if n, err := s.Disconnect(ctx, herald.User("frank"), herald.WithCloseCode(4200), herald.WithReason("stream"), herald.WithReconnect(true)); err != nil || n != 1 {
		t.Fatalf("stream Disconnect = %d, %v", n, err)
	}
	expectDisconnect(t, ws, 4200, "stream", true)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func TestSubscribeOverLimitIsFailedPrecondition(t *testing.T) {
	e := ownEngine(t, "--max-subscriptions", "2")
	c := e.client(t)
	ctx := testCtx(t)
	ws := dialWS(t, e, "")
	if _, err := c.Subscribe(ctx, herald.Conn(ws.connID), "room:a", "room:b"); err != nil {
		t.Fatalf("Subscribe within the limit: %v", err)
	}
	serverPush(t, ws, "subscribed", "room:a", "room:b")
	if _, err := c.Subscribe(ctx, herald.Conn(ws.connID), "room:c"); !herald.IsFailedPrecondition(err) {
		t.Fatalf("Subscribe over the limit: err = %v, want FAILED_PRECONDITION", err)
	}
}

// Commands from many goroutines share one control stream; each gets its own
// answer (the reach differs per goroutine), and failing commands in between
// fail alone.
func TestControlStreamConcurrentAnswersMatch(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	s, err := c.Control(ctx)
	if err != nil {
		t.Fatalf("Control: %v", err)
	}
	const workers = 8
	type worker struct {
		user  string
		conns []*wsClient
		topic string
	}
	ws := make([]worker, workers)
	for g := range ws {
		topic := uniqueTopic(t, "ctl")
		ws[g] = worker{user: "u-" + strings.ReplaceAll(topic, ":", "-"), topic: topic}
		for range g%4 + 1 {
			ws[g].conns = append(ws[g].conns, dialWS(t, e, ws[g].user))
		}
	}
	var wg sync.WaitGroup
	for g, w := range ws {
		want := len(w.conns)
		wg.Go(func() {
			for i := range 20 {
				if n, err := s.Subscribe(ctx, herald.User(w.user), w.topic); err != nil || n != want {
					t.Errorf("worker %d round %d: Subscribe user = %d, %v; want %d", g, i, n, err, want)
					return
				}
				if _, err := s.Subscribe(ctx, herald.Conn(w.conns[0].connID), w.topic+"::bad"); !herald.IsInvalidArgument(err) {
					t.Errorf("worker %d round %d: bad topic: err = %v, want INVALID_ARGUMENT", g, i, err)
					return
				}
				if _, err := s.Subscribe(ctx, herald.User(w.user+"-nobody"), w.topic); !herald.IsNotFound(err) {
					t.Errorf("worker %d round %d: unknown user: err = %v, want NOT_FOUND", g, i, err)
					return
				}
				if n, err := s.Unsubscribe(ctx, herald.Conn(w.conns[len(w.conns)-1].connID), w.topic); err != nil || n != 1 {
					t.Errorf("worker %d round %d: Unsubscribe conn = %d, %v; want 1", g, i, n, err)
					return
				}
				if n, err := s.Unsubscribe(ctx, herald.User(w.user), w.topic); err != nil || n != want {
					t.Errorf("worker %d round %d: Unsubscribe user = %d, %v; want %d", g, i, n, err, want)
					return
				}
			}
			if n, err := s.Disconnect(ctx, herald.User(w.user), herald.WithReason("done")); err != nil || n != want {
				t.Errorf("worker %d: Disconnect = %d, %v; want %d", g, n, err, want)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, w := range ws {
		for _, conn := range w.conns {
			expectDisconnectReason(t, conn, "done")
		}
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := s.Subscribe(ctx, herald.User(ws[0].user), ws[0].topic); !errors.Is(err, herald.ErrClosed) {
		t.Fatalf("after Close: err = %v, want ErrClosed", err)
	}
}

func expectDisconnectReason(t *testing.T, ws *wsClient, reason string) {
	t.Helper()
	f := ws.waitFor(5*time.Second, func(f frame) bool { return f.Type == "disconnect" })
	if f.Reason != reason {
		t.Fatalf("disconnect frame %s, want reason %q", f.raw, reason)
	}
}
