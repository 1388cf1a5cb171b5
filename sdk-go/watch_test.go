package herald_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
	"google.golang.org/grpc"
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

func startWatch(t *testing.T, c *herald.Client, topics []string, opts ...herald.WatchOption) *eventStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	es := &eventStream{t: t, events: make(chan herald.PresenceEvent, 256), errs: make(chan error, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev, err := range c.WatchPresence(ctx, topics, opts...) {
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

	// No options: the snapshot comes first by default.
	es := startWatch(t, c, []string{root + ":*"})
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
	es := startWatch(t, c, []string{root + ":>"}, herald.WithConnectionEvents(true))
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

// An error retrying cannot fix is yielded once and ends the iteration.
func TestWatchPresencePermanentErrorEnds(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	for _, pattern := range []string{"ro*m", "room:*:x", "room::a"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var errs []error
		for ev, err := range c.WatchPresence(ctx, []string{pattern}) {
			if err == nil {
				t.Fatalf("pattern %q: event %+v", pattern, ev)
			}
			errs = append(errs, err)
		}
		ended := ctx.Err() == nil
		cancel()
		if !ended {
			t.Fatalf("pattern %q: the iteration did not end by itself (errors %v)", pattern, errs)
		}
		if len(errs) != 1 || !herald.IsInvalidArgument(errs[0]) {
			t.Fatalf("pattern %q: errors %v, want one INVALID_ARGUMENT", pattern, errs)
		}
	}
}

// Canceling ctx ends the iteration without an error, whether the watch is
// waiting for events or has just had some.
func TestWatchPresenceCancelEndsQuietly(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	root := watchRoot(t)
	dialMember(t, e, "quiet", root+":a")

	for _, cancelOn := range []herald.EventKind{herald.EventSnapshot, herald.EventSnapshotEnd} {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		var got []herald.PresenceEvent
		var errs []error
		go func() {
			defer close(done)
			for ev, err := range c.WatchPresence(ctx, []string{root + ":*"}, herald.WithSnapshot(true)) {
				if err != nil {
					errs = append(errs, err)
					continue
				}
				got = append(got, ev)
				if ev.Kind == cancelOn {
					cancel()
				}
			}
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cancel()
			t.Fatalf("cancel on %v: the iteration did not end", cancelOn)
		}
		cancel()
		if len(errs) != 0 {
			t.Fatalf("cancel on %v: errors %v, want none", cancelOn, errs)
		}
		if len(got) == 0 || got[len(got)-1].Kind != cancelOn {
			t.Fatalf("cancel on %v: events %+v, want it to be the last", cancelOn, got)
		}
	}

	// A watch that never sees an event (no snapshot asked for, nobody in its
	// topics) ends quietly at its deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	for ev, err := range c.WatchPresence(ctx, []string{root + "-none:*"}, herald.WithSnapshot(false)) {
		t.Fatalf("idle watch yielded %+v, %v", ev, err)
	}
}

// A watcher that stops reading falls behind; the engine tells it to resync.
// The SDK yields RESYNC with a nil Cause and starts over with a fresh snapshot.
func TestWatchPresenceEngineResync(t *testing.T) {
	e := ownEngine(t, "--presence-watch-buffer", "8")
	// Small HTTP/2 windows, so that the engine's sends stall soon after the
	// watcher stops reading.
	c := e.client(t, herald.WithDialOptions(grpc.WithInitialWindowSize(65535), grpc.WithInitialConnWindowSize(65535)))
	root := watchRoot(t)
	keep := dialMember(t, e, "keeper", root+":keep")

	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan herald.PresenceEvent, 1<<15)
	errs := make(chan error, 1)
	resume := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		paused := false
		for ev, err := range c.WatchPresence(ctx, []string{root + ":*"}, herald.WithSnapshot(true)) {
			if err != nil {
				errs <- err
				return
			}
			events <- ev
			if ev.Kind == herald.EventSnapshotEnd && !paused {
				paused = true
				select { // stop pulling from the iterator for a while
				case <-resume:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	es := &eventStream{t: t, events: events, errs: errs}
	es.expect(herald.EventSnapshot, root+":keep", keep)
	es.expect(herald.EventSnapshotEnd, "", "")

	// Thousands of joins and leaves while the watcher is paused, in commands of
	// a few topics each: a watcher that kept reading would keep up with them.
	const clients, topicsEach, rounds = 4, 248, 3
	var topics []string
	for i := range topicsEach {
		topics = append(topics, fmt.Sprintf("%s:%s-%03d", root, strings.Repeat("p", 120), i))
	}
	const batch = 4
	for range rounds {
		for range clients {
			ws := dialWS(t, e, "churn")
			for i := 0; i < len(topics); i += batch {
				ws.subscribe(topics[i : i+batch]...)
			}
			for i := 0; i < len(topics); i += batch {
				ws.unsubscribe(topics[i : i+batch]...)
			}
			ws.close()
		}
	}
	close(resume)

	var churn int
	for {
		ev := es.next(10 * time.Second)
		if ev.Kind == herald.EventResync {
			if ev.Cause != nil {
				t.Fatalf("RESYNC after %d events with cause %v, want the engine's (nil cause)", churn, ev.Cause)
			}
			break
		}
		if (ev.Kind != herald.EventJoin && ev.Kind != herald.EventLeave) || ev.Member.UserID != "churn" {
			t.Fatalf("event %+v before RESYNC", ev)
		}
		churn++
	}
	if churn >= 2*clients*topicsEach*rounds {
		t.Fatalf("all %d events arrived before RESYNC", churn)
	}
	t.Logf("RESYNC after %d of %d events", churn, 2*clients*topicsEach*rounds)
	// The fresh snapshot: only the member that stayed.
	es.expect(herald.EventSnapshot, root+":keep", keep)
	es.expect(herald.EventSnapshotEnd, "", "")
	select {
	case ev := <-events:
		t.Fatalf("unexpected event after the new snapshot: %+v", ev)
	case err := <-errs:
		t.Fatalf("watch ended: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestWatchPresenceSurvivesEngineRestart(t *testing.T) {
	e := ownEngine(t)
	c := e.client(t)
	root := watchRoot(t)
	topic := root + ":room"

	before := dialWS(t, e, "peggy")
	before.subscribe(topic)
	es := startWatch(t, c, []string{root + ":*"}, herald.WithWatchBackoff(50*time.Millisecond, 200*time.Millisecond))
	es.expect(herald.EventSnapshot, topic, before.connID)
	es.expect(herald.EventSnapshotEnd, "", "")

	// The engine dies; the watch says so at once.
	if err := e.kill(); err != nil {
		t.Fatal(err)
	}
	resync := es.next(10 * time.Second)
	if resync.Kind != herald.EventResync || !herald.IsUnavailable(resync.Cause) {
		t.Fatalf("after the engine died: %+v, want RESYNC with an UNAVAILABLE cause", resync)
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
