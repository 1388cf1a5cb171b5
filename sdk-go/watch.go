package herald

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"math/rand/v2"
	"time"

	heraldv1 "github.com/heraldrt/herald/sdk-go/gen/herald/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// EventKind is the kind of a [PresenceEvent].
type EventKind int

// Presence event kinds, as in herald.v1.PresenceEventKind.
const (
	// EventSnapshot is a current member, sent before live events unless the
	// snapshot was turned off with WithSnapshot(false).
	EventSnapshot EventKind = EventKind(heraldv1.PresenceEventKind_PRESENCE_EVENT_KIND_SNAPSHOT)
	// EventSnapshotEnd says the snapshot is complete; live events follow.
	EventSnapshotEnd EventKind = EventKind(heraldv1.PresenceEventKind_PRESENCE_EVENT_KIND_SNAPSHOT_END)
	// EventJoin is a connection joining a topic.
	EventJoin EventKind = EventKind(heraldv1.PresenceEventKind_PRESENCE_EVENT_KIND_JOIN)
	// EventLeave is a connection leaving a topic.
	EventLeave EventKind = EventKind(heraldv1.PresenceEventKind_PRESENCE_EVENT_KIND_LEAVE)
	// EventConnect is a connection being opened (WithConnectionEvents only).
	EventConnect EventKind = EventKind(heraldv1.PresenceEventKind_PRESENCE_EVENT_KIND_CONNECT)
	// EventDisconnect is a connection being closed (WithConnectionEvents only).
	EventDisconnect EventKind = EventKind(heraldv1.PresenceEventKind_PRESENCE_EVENT_KIND_DISCONNECT)
	// EventResync means events were lost: drop the view built so far. The
	// watch starts over by itself and a fresh snapshot (EventSnapshot...
	// EventSnapshotEnd) follows, unless the snapshot was turned off.
	EventResync EventKind = EventKind(heraldv1.PresenceEventKind_PRESENCE_EVENT_KIND_RESYNC)
)

// String returns a short name such as "JOIN".
func (k EventKind) String() string {
	switch k {
	case EventSnapshot:
		return "SNAPSHOT"
	case EventSnapshotEnd:
		return "SNAPSHOT_END"
	case EventJoin:
		return "JOIN"
	case EventLeave:
		return "LEAVE"
	case EventConnect:
		return "CONNECT"
	case EventDisconnect:
		return "DISCONNECT"
	case EventResync:
		return "RESYNC"
	default:
		return fmt.Sprintf("EventKind(%d)", int(k))
	}
}

// PresenceEvent is one event of a presence watch.
type PresenceEvent struct {
	// Kind says what happened.
	Kind EventKind
	// Topic is set for EventSnapshot, EventJoin and EventLeave.
	Topic string
	// Member is the connection concerned; zero for EventSnapshotEnd and
	// EventResync.
	Member Member
	// NodeID is the node that saw the event; empty for a resync made by the
	// SDK itself.
	NodeID string
	// Time is when the event happened.
	Time time.Time
	// Cause is set only on an EventResync made by the SDK because the stream
	// to the engine broke: it is the error that broke it, and the watch is
	// reconnecting. It is nil on an EventResync sent by the engine because
	// the watcher fell behind.
	Cause error
}

// WatchOption adjusts a [Client.WatchPresence] watch.
type WatchOption func(*watchOptions)

type watchOptions struct {
	snapshot    bool
	connections bool
	minBackoff  time.Duration
	maxBackoff  time.Duration
}

// WithSnapshot says whether the watch starts with the current members of the
// matching topics (EventSnapshot events, then one EventSnapshotEnd), again
// after every resync. On by default; WithSnapshot(false) sends live events
// only.
func WithSnapshot(on bool) WatchOption {
	return func(o *watchOptions) { o.snapshot = on }
}

// WithConnectionEvents says whether the watch also sends EventConnect and
// EventDisconnect for every connection of the node (off by default).
func WithConnectionEvents(on bool) WatchOption {
	return func(o *watchOptions) { o.connections = on }
}

// WithWatchBackoff sets the first wait before reconnecting (default 100ms) and
// the cap of the waits between attempts (default 5s); zero keeps a default.
func WithWatchBackoff(minBackoff, maxBackoff time.Duration) WatchOption {
	return func(o *watchOptions) { o.minBackoff, o.maxBackoff = minBackoff, maxBackoff }
}

// WatchPresence streams presence events for topics and patterns, and keeps
// doing so across engine restarts and network failures until ctx is canceled or
// the loop stops. A topic is "room:general"; in a pattern a last segment "*"
// matches any one segment ("room:*") and a last segment ">" one or more
// ("room:>").
//
// By default the watch starts with a snapshot of the current members
// (EventSnapshot events, then EventSnapshotEnd) before live events;
// [WithSnapshot](false) turns that off, [WithConnectionEvents](true) adds the
// node's connects and disconnects, [WithWatchBackoff] tunes the reconnects.
//
// When the stream breaks after it was established, the iteration yields an
// EventResync whose Cause is the error, then reconnects with exponential
// backoff and jitter; when the engine itself sends RESYNC (the watcher fell
// behind), that event is yielded with a nil Cause and the watch reconnects at
// once (with backoff if the engine keeps sending RESYNC). Either way the caller
// must drop its view: a fresh snapshot follows on the new stream, ending with
// EventSnapshotEnd (unless the snapshot was turned off).
//
// Errors that retrying cannot fix (INVALID_ARGUMENT for a bad topic or pattern,
// UNIMPLEMENTED, an authentication error, a closed client) are yielded once
// with a zero event and end the iteration. Canceling ctx ends the iteration
// without an error.
//
//	for ev, err := range c.WatchPresence(ctx, []string{"room:*"}) {
//		if err != nil {
//			return err
//		}
//		switch ev.Kind {
//		case herald.EventResync:
//			view = map[string]herald.Member{} // a fresh snapshot follows
//		case herald.EventSnapshot, herald.EventJoin:
//			view[ev.Member.ConnectionID] = ev.Member
//		case herald.EventLeave:
//			delete(view, ev.Member.ConnectionID)
//		}
//	}
func (c *Client) WatchPresence(ctx context.Context, topics []string, opts ...WatchOption) iter.Seq2[PresenceEvent, error] {
	o := watchOptions{snapshot: true}
	for _, opt := range opts {
		opt(&o)
	}
	minB, maxB := o.minBackoff, o.maxBackoff
	if minB <= 0 {
		minB = 100 * time.Millisecond
	}
	if maxB <= 0 {
		maxB = 5 * time.Second
	}
	maxB = max(maxB, minB)
	req := &heraldv1.WatchPresenceRequest{
		Topics:             topics,
		IncludeSnapshot:    o.snapshot,
		IncludeConnections: o.connections,
	}

	return func(yield func(PresenceEvent, error) bool) {
		w := watcher{c: c, req: req, yield: yield}
		attempt := 0
		var lastResync time.Time
		for {
			established, err := w.run(ctx)
			if ctx.Err() != nil || w.stopped {
				return
			}
			if err == nil {
				// The engine sent RESYNC: start over at once, unless it
				// keeps doing so.
				if time.Since(lastResync) < maxB {
					if !sleepCtx(ctx, backoff(attempt, minB, maxB)) {
						return
					}
					attempt++
				} else {
					attempt = 0
				}
				lastResync = time.Now()
				continue
			}
			if !retryable(err) {
				yield(PresenceEvent{}, err)
				return
			}
			if established {
				attempt = 0
				if !yield(PresenceEvent{Kind: EventResync, Time: time.Now(), Cause: err}, nil) {
					return
				}
			}
			if !sleepCtx(ctx, backoff(attempt, minB, maxB)) {
				return
			}
			attempt++
		}
	}
}

type watcher struct {
	c       *Client
	req     *heraldv1.WatchPresenceRequest
	yield   func(PresenceEvent, error) bool
	stopped bool // the caller stopped the loop
}

// run opens one stream and yields its events. It returns a nil error when the
// engine sent RESYNC, and whether the stream was established (the engine
// answered with headers or an event) before it ended.
func (w *watcher) run(ctx context.Context) (established bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := w.c.rpc.WatchPresence(sctx, w.req)
	if err != nil {
		return false, err
	}
	if md, err := stream.Header(); err == nil && md != nil {
		established = true
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = status.Error(codes.Unavailable, "herald: presence watch ended by the engine")
			}
			return established, err
		}
		established = true
		if ctx.Err() != nil {
			// Canceled: an event received before the cancel is not yielded.
			return established, ctx.Err()
		}
		e := eventFromProto(ev)
		if !w.yield(e, nil) {
			w.stopped = true
			return established, nil
		}
		if e.Kind == EventResync {
			return established, nil
		}
	}
}

func eventFromProto(ev *heraldv1.PresenceEvent) PresenceEvent {
	e := PresenceEvent{
		Kind:   EventKind(ev.GetKind()),
		Topic:  ev.GetTopic(),
		NodeID: ev.GetNodeId(),
		Time:   time.UnixMilli(ev.GetTimestampMs()),
	}
	if ev.GetMember() != nil {
		e.Member = memberFromProto(ev.GetMember())
	}
	return e
}

// retryable reports whether a watch that failed with err should reconnect.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.Internal, codes.Unknown, codes.Aborted, codes.ResourceExhausted, codes.DeadlineExceeded:
		return true
	default:
		return false
	}
}

// backoff is the wait before reconnect attempt n (0-based): exponential from
// minB, capped at maxB, with jitter in [d/2, d].
func backoff(n int, minB, maxB time.Duration) time.Duration {
	d := minB
	for i := 0; i < n && d < maxB; i++ {
		d *= 2
	}
	d = min(d, maxB)
	half := d / 2
	return half + rand.N(d-half+1)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
