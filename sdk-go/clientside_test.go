package herald_test

// What the SDK refuses on the client side, before any RPC: a target that names
// nothing and a JSON payload that could not be marshaled. The refusals are
// checked against an address where nothing listens (a call that did go out
// would fail UNAVAILABLE there) and against the real engine.

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net"
	"testing"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
	heraldv1 "github.com/heraldrt/herald/sdk-go/gen/herald/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	msgTargetMissing = "target is missing: set connection_id or user_id"
	msgUserEmpty     = "user_id is empty"
)

// deadAddress returns a loopback address where nothing listens.
func deadAddress(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// wantStatus fails unless err is a status error with this code and message.
func wantStatus(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code || (msg != "" && st.Message() != msg) {
		t.Errorf("%s: err = %v, want %v %q", what, err, code, msg)
	}
}

// emptyTargets are the targets that name nothing, with the engine's message.
var emptyTargets = []struct {
	name   string
	target herald.Target
	msg    string
}{
	{"zero Target", herald.Target{}, msgTargetMissing},
	{`Conn("")`, herald.Conn(""), msgTargetMissing},
	{`User("")`, herald.User(""), msgUserEmpty},
}

func TestRefusedBeforeAnyRPC(t *testing.T) {
	c, err := herald.NewClient(deadAddress(t), herald.WithRetry(herald.RetryPolicy{MaxAttempts: 1}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// The address is dead: a call that goes out fails UNAVAILABLE.
	if _, err := c.Subscribe(ctx, herald.Conn("c1"), "room:a"); !herald.IsUnavailable(err) {
		t.Fatalf("a real call to a dead address: err = %v, want UNAVAILABLE", err)
	}

	for _, tc := range emptyTargets {
		_, err := c.Subscribe(ctx, tc.target, "room:a")
		wantStatus(t, "Subscribe "+tc.name, err, codes.InvalidArgument, tc.msg)
		_, err = c.Unsubscribe(ctx, tc.target, "room:a")
		wantStatus(t, "Unsubscribe "+tc.name, err, codes.InvalidArgument, tc.msg)
		_, err = c.Disconnect(ctx, tc.target, herald.WithReason("x"))
		wantStatus(t, "Disconnect "+tc.name, err, codes.InvalidArgument, tc.msg)
	}
	if got := (herald.Target{}).String(); got != "no target" {
		t.Errorf("Target{}.String() = %q", got)
	}

	bad := herald.JSON(map[string]any{"price": math.NaN()})
	var unsupported *json.UnsupportedValueError
	if err := bad.Err(); err == nil || !herald.IsInvalidArgument(err) || !errors.As(err, &unsupported) {
		t.Fatalf("JSON(NaN).Err() = %v, want INVALID_ARGUMENT wrapping *json.UnsupportedValueError", err)
	}
	_, err = c.Publish(ctx, "room:a", bad)
	if !herald.IsInvalidArgument(err) || !errors.As(err, &unsupported) {
		t.Errorf("Publish JSON(NaN): err = %v, want INVALID_ARGUMENT wrapping *json.UnsupportedValueError", err)
	}
	var badType *json.UnsupportedTypeError
	_, err = c.Broadcast(ctx, []string{"room:a", "room:b"}, herald.JSON(make(chan int)))
	if !herald.IsInvalidArgument(err) || !errors.As(err, &badType) {
		t.Errorf("Broadcast JSON(chan): err = %v, want INVALID_ARGUMENT wrapping *json.UnsupportedTypeError", err)
	}
	if err := herald.JSON(map[string]int{"n": 1}).Err(); err != nil {
		t.Errorf("JSON of a map: Err() = %v", err)
	}

	if cc := c.GRPCConn(); cc == nil || cc.CanonicalTarget() == "" {
		t.Errorf("GRPCConn() = %v", cc)
	}
}

func TestEmptyTargetAgainstEngine(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "tgt")

	for _, tc := range emptyTargets {
		_, err := c.Subscribe(ctx, tc.target, topic)
		wantStatus(t, "Subscribe "+tc.name, err, codes.InvalidArgument, tc.msg)
	}

	// Over a Control stream the refusal fails that command alone.
	s, err := c.Control(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, tc := range emptyTargets {
		_, err := s.Subscribe(ctx, tc.target, topic)
		wantStatus(t, "ControlStream.Subscribe "+tc.name, err, codes.InvalidArgument, tc.msg)
		_, err = s.Disconnect(ctx, tc.target)
		wantStatus(t, "ControlStream.Disconnect "+tc.name, err, codes.InvalidArgument, tc.msg)
	}
	ws := dialWS(t, e, "")
	if n, err := s.Subscribe(ctx, herald.Conn(ws.connID), topic); err != nil || n != 1 {
		t.Fatalf("a good command after the refusals: %d, %v", n, err)
	}

	// The engine gives the same answers to the raw requests the SDK no longer
	// sends: no target at all, an empty connection id, an empty user id.
	raw := map[string]*heraldv1.Target{
		"no target":           nil,
		"empty target":        {},
		"empty connection id": {Target: &heraldv1.Target_ConnectionId{}},
		"empty user id":       {Target: &heraldv1.Target_UserId{}},
	}
	for name, tgt := range raw {
		_, err := c.Raw().Subscribe(ctx, &heraldv1.SubscribeRequest{Target: tgt, Topics: []string{topic}})
		wantStatus(t, "engine, "+name, err, codes.InvalidArgument, "")
	}
}

func TestPublisherRefusesUnmarshalableJSONAlone(t *testing.T) {
	e := needEngine(t)
	c := e.client(t)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "pubjson")
	ws := dialWS(t, e, "")
	ws.subscribe(topic)

	p, err := c.NewPublisher(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var badType *json.UnsupportedTypeError
	if _, err := p.Publish(ctx, topic, herald.JSON(func() {})); !herald.IsInvalidArgument(err) || !errors.As(err, &badType) {
		t.Fatalf("PublishAsync JSON(func): err = %v, want INVALID_ARGUMENT wrapping *json.UnsupportedTypeError", err)
	}
	r, err := p.Publish(ctx, topic, herald.JSON(map[string]int{"n": 1}))
	if err != nil || r.Sequence != 1 {
		t.Fatalf("next publish: %+v, %v; want sequence 1 (nothing was sent before)", r, err)
	}
	if m := ws.message(); m.Seq != 1 || string(m.Data) != `{"n":1}` {
		t.Fatalf("frame %s", m.raw)
	}
}

// The engine serves plain text only: a client set up for TLS cannot talk to it
// (as README.md says), and fails UNAVAILABLE rather than hanging.
func TestTLSClientCannotTalkToPlainEngine(t *testing.T) {
	e := needEngine(t)
	c := e.client(t, herald.WithTLSConfig(nil), herald.WithRetry(herald.RetryPolicy{MaxAttempts: 1}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Info(ctx); !herald.IsUnavailable(err) {
		t.Fatalf("Info over TLS to the plain-text engine: err = %v, want UNAVAILABLE", err)
	}
}
