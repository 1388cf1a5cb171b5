package herald_test

import (
	"context"
	"testing"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
	heraldv1 "github.com/heraldrt/herald/sdk-go/gen/herald/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type watchStream = grpc.ServerStreamingServer[heraldv1.PresenceEvent]

func ev(kind heraldv1.PresenceEventKind, topic, conn string) *heraldv1.PresenceEvent {
	e := &heraldv1.PresenceEvent{Kind: kind, Topic: topic, NodeId: "n1", TimestampMs: time.Now().UnixMilli()}
	if conn != "" {
		e.Member = &heraldv1.Member{ConnectionId: conn, UserId: "u-" + conn}
	}
	return e
}

func sendAll(s watchStream, evs ...*heraldv1.PresenceEvent) error {
	for _, e := range evs {
		if err := s.Send(e); err != nil {
			return err
		}
	}
	return nil
}

const (
	kSnap    = heraldv1.PresenceEventKind_PRESENCE_EVENT_KIND_SNAPSHOT
	kSnapEnd = heraldv1.PresenceEventKind_PRESENCE_EVENT_KIND_SNAPSHOT_END
	kJoin    = heraldv1.PresenceEventKind_PRESENCE_EVENT_KIND_JOIN
	kResync  = heraldv1.PresenceEventKind_PRESENCE_EVENT_KIND_RESYNC
)

// collect reads events until n have arrived or the iteration ends.
func collect(t *testing.T, seq func(func(herald.PresenceEvent, error) bool), n int) ([]herald.PresenceEvent, error) {
	t.Helper()
	var got []herald.PresenceEvent
	var gotErr error
	seq(func(e herald.PresenceEvent, err error) bool {
		if err != nil {
			gotErr = err
			return false
		}
		got = append(got, e)
		return len(got) < n
	})
	return got, gotErr
}

func kinds(evs []herald.PresenceEvent) []herald.EventKind {
	var ks []herald.EventKind
	for _, e := range evs {
		ks = append(ks, e.Kind)
	}
	return ks
}

func sameKinds(a, b []herald.EventKind) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestUnitWatchReconnectsAndResnapshots(t *testing.T) {
	svc := newFakeHerald()
	dropped := make(chan struct{})
	svc.watchFns = []func(*heraldv1.WatchPresenceRequest, watchStream) error{
		func(req *heraldv1.WatchPresenceRequest, s watchStream) error {
			if !req.GetIncludeSnapshot() || len(req.GetTopics()) != 1 || req.GetTopics()[0] != "room:*" {
				return status.Errorf(codes.InvalidArgument, "unexpected request %v", req)
			}
			if err := sendAll(s, ev(kSnap, "room:a", "c1"), ev(kSnapEnd, "", ""), ev(kJoin, "room:a", "c2")); err != nil {
				return err
			}
			<-dropped // the test stops the server here
			return status.Error(codes.Unavailable, "going away")
		},
		func(_ *heraldv1.WatchPresenceRequest, s watchStream) error {
			if err := sendAll(s, ev(kSnap, "room:a", "c1"), ev(kSnap, "room:a", "c2"), ev(kSnapEnd, "", "")); err != nil {
				return err
			}
			<-s.Context().Done()
			return nil
		},
	}
	fe := startFake(t, svc)
	c := fe.client()
	ctx := testCtx(t)

	events := make(chan herald.PresenceEvent, 16)
	errs := make(chan error, 1)
	go func() {
		for e, err := range c.WatchPresence(ctx, herald.WatchOptions{
			Topics: []string{"room:*"}, IncludeSnapshot: true,
			MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		}) {
			if err != nil {
				errs <- err
				return
			}
			events <- e
		}
	}()
	next := func() herald.PresenceEvent {
		t.Helper()
		select {
		case e := <-events:
			return e
		case err := <-errs:
			t.Fatalf("watch ended: %v", err)
		case <-ctx.Done():
			t.Fatal("timed out waiting for an event")
		}
		return herald.PresenceEvent{}
	}

	var first []herald.EventKind
	for range 3 {
		first = append(first, next().Kind)
	}
	if want := []herald.EventKind{herald.EventSnapshot, herald.EventSnapshotEnd, herald.EventJoin}; !sameKinds(first, want) {
		t.Fatalf("first stream: %v, want %v", first, want)
	}

	// Break the connection: stop the server, then bring it back on the same port.
	close(dropped)
	fe.stop()
	resync := next()
	if resync.Kind != herald.EventResync || resync.Cause == nil {
		t.Fatalf("after the drop: %+v, want RESYNC with a cause", resync)
	}
	if !herald.IsUnavailable(resync.Cause) {
		t.Fatalf("resync cause %v, want UNAVAILABLE", resync.Cause)
	}
	time.Sleep(100 * time.Millisecond) // let a reconnect attempt or two fail
	fe.start()

	var second []herald.PresenceEvent
	for range 3 {
		second = append(second, next())
	}
	if want := []herald.EventKind{herald.EventSnapshot, herald.EventSnapshot, herald.EventSnapshotEnd}; !sameKinds(kinds(second), want) {
		t.Fatalf("after reconnect: %v, want %v", kinds(second), want)
	}
	if second[1].Member.ConnectionID != "c2" || second[1].Member.UserID != "u-c2" || second[1].Topic != "room:a" || second[1].NodeID != "n1" {
		t.Fatalf("snapshot member: %+v", second[1])
	}
	select {
	case e := <-events:
		t.Fatalf("unexpected extra event %+v", e)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestUnitWatchEngineResyncStartsOver(t *testing.T) {
	svc := newFakeHerald()
	svc.watchFns = []func(*heraldv1.WatchPresenceRequest, watchStream) error{
		func(_ *heraldv1.WatchPresenceRequest, s watchStream) error {
			if err := sendAll(s, ev(kSnapEnd, "", ""), ev(kJoin, "room:a", "c1"), ev(kResync, "", "")); err != nil {
				return err
			}
			<-s.Context().Done() // the SDK must leave by itself
			return nil
		},
		func(_ *heraldv1.WatchPresenceRequest, s watchStream) error {
			if err := sendAll(s, ev(kSnap, "room:a", "c1"), ev(kSnapEnd, "", "")); err != nil {
				return err
			}
			<-s.Context().Done()
			return nil
		},
	}
	fe := startFake(t, svc)
	c := fe.client()
	got, err := collect(t, c.WatchPresence(testCtx(t), herald.WatchOptions{Topics: []string{"room:a"}, IncludeSnapshot: true}), 5)
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	want := []herald.EventKind{herald.EventSnapshotEnd, herald.EventJoin, herald.EventResync, herald.EventSnapshot, herald.EventSnapshotEnd}
	if !sameKinds(kinds(got), want) {
		t.Fatalf("events %v, want %v", kinds(got), want)
	}
	if got[2].Cause != nil {
		t.Fatalf("engine RESYNC has a cause: %v", got[2].Cause)
	}
}

func TestUnitWatchPermanentErrorEnds(t *testing.T) {
	svc := newFakeHerald()
	svc.watchFns = []func(*heraldv1.WatchPresenceRequest, watchStream) error{
		func(*heraldv1.WatchPresenceRequest, watchStream) error {
			return status.Error(codes.InvalidArgument, "bad pattern")
		},
	}
	fe := startFake(t, svc)
	c := fe.client()
	got, err := collect(t, c.WatchPresence(testCtx(t), herald.WatchOptions{Topics: []string{"room:>:x"}}), 10)
	if len(got) != 0 || !herald.IsInvalidArgument(err) {
		t.Fatalf("got %v, %v; want no event and INVALID_ARGUMENT", got, err)
	}
	svc.mu.Lock()
	calls := svc.watches
	svc.mu.Unlock()
	if calls != 1 {
		t.Fatalf("%d watch calls, want 1 (no retry on INVALID_ARGUMENT)", calls)
	}
}

func TestUnitWatchCancelEndsQuietly(t *testing.T) {
	svc := newFakeHerald()
	svc.watchFns = []func(*heraldv1.WatchPresenceRequest, watchStream) error{
		func(_ *heraldv1.WatchPresenceRequest, s watchStream) error {
			<-s.Context().Done()
			return nil
		},
	}
	fe := startFake(t, svc)
	c := fe.client()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	got, err := collect(t, c.WatchPresence(ctx, herald.WatchOptions{Topics: []string{"room:a"}}), 1)
	if len(got) != 0 || err != nil {
		t.Fatalf("got %v, %v; want nothing", got, err)
	}
}
