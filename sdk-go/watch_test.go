package herald_test

import (
	"context"
	"strings"
	"testing"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
)

// watchRoot returns a fresh first topic segment, so that "root:*" patterns see
// only this test's topics.
func watchRoot(t *testing.T) string {
	return strings.ReplaceAll(uniqueTopic(t, "w"), ":", "-")
}

// eventStream runs a watch in the background and hands its events over.
type eventStream struct {
	t      *testing.T
	events chan herald.PresenceEvent
	errs   chan error
}

func startWatch(t *testing.T, c *herald.Client, opts herald.WatchOptions) *eventStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	es := &eventStream{t: t, events: make(chan herald.PresenceEvent, 256), errs: make(chan error, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev, err := range c.WatchPresence(ctx, opts) {
			if err != nil {
				es.errs <- err
				return
			}
			es.events <- ev
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return es
}

func (es *eventStream) next(timeout time.Duration) herald.PresenceEvent {
	es.t.Helper()
	select {
	case ev := <-es.events:
		return ev
	case err := <-es.errs:
		es.t.Fatalf("watch ended: %v", err)
	case <-time.After(timeout):
		es.t.Fatalf("no presence event within %v", timeout)
	}
	return herald.PresenceEvent{}
}

// expect reads the next event and checks its kind, topic and connection.
func (es *eventStream) expect(kind herald.EventKind, topic, connID string) herald.PresenceEvent {
	es.t.Helper()
	ev := es.next(10 * time.Second)
	if ev.Kind != kind || ev.Topic != topic || ev.Member.ConnectionID != connID {
		es.t.Fatalf("event %v topic %q conn %q, want %v topic %q conn %q", ev.Kind, ev.Topic, ev.Member.ConnectionID, kind, topic, connID)
	}
	return ev
}

func TestWatchPresenceSnapshotThenLive(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	root := watchRoot(t)
	a, b := root+":a", root+":b"

	first := dialWS(t, e, "judy")
	first.subscribe(a)

	es := startWatch(t, c, herald.WatchOptions{Topics: []string{root + ":*"}, IncludeSnapshot: true})
	snap := es.expect(herald.EventSnapshot, a, first.connID)
	if snap.Member.UserID != "judy" || snap.NodeID == "" || snap.Time.IsZero() {
		t.Fatalf("snapshot event %+v", snap)
	}
	es.expect(herald.EventSnapshotEnd, "", "")

	second := dialWS(t, e, "mallory")
	second.subscribe(b)
	join := es.expect(herald.EventJoin, b, second.connID)
	if join.Member.UserID != "mallory" {
		t.Fatalf("join event %+v", join)
	}
	second.send(map[string]any{"type": "unsubscribe", "topics": []string{b}})
	es.expect(herald.EventLeave, b, second.connID)

	// Closing a connection is a leave from each of its topics.
	first.close()
	es.expect(herald.EventLeave, a, first.connID)

	// Topics outside the pattern are not reported.
	other := dialWS(t, e, "")
	other.subscribe(root + "-other:a")
	select {
	case ev := <-es.events:
		t.Fatalf("unexpected event %+v", ev)
	case <-time.After(300 * time.Millisecond):
	}
}

func TestWatchPresenceConnections(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	root := watchRoot(t)
	es := startWatch(t, c, herald.WatchOptions{Topics: []string{root + ":>"}, IncludeConnections: true, IncludeSnapshot: true})
	// The (empty) snapshot's end shows the watch is live before the connection opens.
	es.expect(herald.EventSnapshotEnd, "", "")

	ws := dialWS(t, e, "oscar")
	var connect herald.PresenceEvent
	for {
		connect = es.next(10 * time.Second)
		if connect.Kind == herald.EventConnect && connect.Member.ConnectionID == ws.connID {
			break
		}
		if connect.Kind != herald.EventConnect && connect.Kind != herald.EventDisconnect {
			t.Fatalf("unexpected event %+v", connect)
		}
	}
	if connect.Topic != "" || connect.Member.UserID != "oscar" {
		t.Fatalf("connect event %+v", connect)
	}
	ws.subscribe(root + ":x:y")
	es.expect(herald.EventJoin, root+":x:y", ws.connID)
	ws.close()
	var leave, disconnect bool
	for !leave || !disconnect {
		ev := es.next(10 * time.Second)
		switch {
		case ev.Kind == herald.EventLeave && ev.Member.ConnectionID == ws.connID:
			leave = true
		case ev.Kind == herald.EventDisconnect && ev.Member.ConnectionID == ws.connID:
			disconnect = true
		case ev.Kind == herald.EventConnect || ev.Kind == herald.EventDisconnect:
		default:
			t.Fatalf("unexpected event %+v", ev)
		}
	}
}

func TestWatchPresenceBadPattern(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	es := startWatch(t, c, herald.WatchOptions{Topics: []string{"room:*:x"}})
	select {
	case err := <-es.errs:
		if !herald.IsInvalidArgument(err) {
			t.Fatalf("err = %v, want INVALID_ARGUMENT", err)
		}
	case ev := <-es.events:
		t.Fatalf("event %+v for a bad pattern", ev)
	case <-time.After(10 * time.Second):
		t.Fatal("no error for a bad pattern")
	}
}

func TestWatchPresenceSurvivesEngineRestart(t *testing.T) {
	e := ownEngine(t)
	c := e.client(t)
	root := watchRoot(t)
	topic := root + ":room"

	before := dialWS(t, e, "peggy")
	before.subscribe(topic)
	es := startWatch(t, c, herald.WatchOptions{
		Topics: []string{root + ":*"}, IncludeSnapshot: true,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	es.expect(herald.EventSnapshot, topic, before.connID)
	es.expect(herald.EventSnapshotEnd, "", "")

	// The engine dies; the watch says so at once.
	if err := e.kill(); err != nil {
		t.Fatal(err)
	}
	resync := es.next(10 * time.Second)
	if resync.Kind != herald.EventResync || resync.Cause == nil {
		t.Fatalf("after the engine died: %+v, want RESYNC with a cause", resync)
	}

	// A new engine on the same addresses: the watch reconnects and snapshots again.
	if err := e.start(); err != nil {
		t.Fatalf("restarting the engine: %v", err)
	}
	after := dialWS(t, e, "trent")
	after.subscribe(topic)
	var sawEnd, sawAfter bool
	for !sawEnd || !sawAfter {
		ev := es.next(10 * time.Second)
		switch ev.Kind {
		case herald.EventSnapshotEnd:
			sawEnd = true
		case herald.EventSnapshot, herald.EventJoin:
			// Connection ids may repeat across engine runs: tell by user.
			if ev.Member.UserID == "peggy" {
				t.Fatalf("connection of the dead engine reported: %+v", ev)
			}
			if ev.Kind == herald.EventSnapshot && sawEnd {
				t.Fatalf("snapshot after SNAPSHOT_END: %+v", ev)
			}
			if ev.Member.ConnectionID == after.connID && ev.Member.UserID == "trent" {
				sawAfter = true
			}
		case herald.EventResync:
			// More failed attempts while the engine was down do not repeat it.
			t.Fatalf("second RESYNC %+v", ev)
		default:
			t.Fatalf("unexpected event %+v", ev)
		}
	}
}
