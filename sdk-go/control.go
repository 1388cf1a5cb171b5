package herald

import (
	"context"
	"maps"
	"slices"

	heraldv1 "github.com/heraldrt/herald/sdk-go/gen/herald/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Target names the connections a subscribe, unsubscribe or disconnect applies
// to: one connection ([Conn]) or every current connection of a user ([User]).
//
// The zero Target names nothing: a call given it (or Conn(""), or User(""))
// fails with INVALID_ARGUMENT before anything is sent, with the engine's own
// message ("target is missing: set connection_id or user_id", or "user_id is
// empty").
type Target struct {
	connectionID string
	userID       string
	byUser       bool
}

// Conn targets one connection, by the id the engine gave it (the conn_id of the
// WebSocket "connected" frame, or Member.ConnectionID from presence).
func Conn(connectionID string) Target { return Target{connectionID: connectionID} }

// User targets every current connection of a user.
func User(userID string) Target { return Target{userID: userID, byUser: true} }

// String describes the target, for logs.
func (t Target) String() string {
	switch {
	case t.byUser:
		return "user " + t.userID
	case t.connectionID == "":
		return "no target"
	default:
		return "connection " + t.connectionID
	}
}

// check refuses a target that names nothing, as the engine would.
func (t Target) check() error {
	switch {
	case t.byUser && t.userID == "":
		return status.Error(codes.InvalidArgument, "user_id is empty")
	case !t.byUser && t.connectionID == "":
		return status.Error(codes.InvalidArgument, "target is missing: set connection_id or user_id")
	default:
		return nil
	}
}

func (t Target) proto() *heraldv1.Target {
	if t.byUser {
		return &heraldv1.Target{Target: &heraldv1.Target_UserId{UserId: t.userID}}
	}
	return &heraldv1.Target{Target: &heraldv1.Target_ConnectionId{ConnectionId: t.connectionID}}
}

// DisconnectOption adjusts how [Client.Disconnect] and [ControlStream.Disconnect]
// close connections. Without any, connections are closed with code 4500, no
// reason, and the hint not to reconnect.
type DisconnectOption func(*disconnectOptions)

type disconnectOptions struct {
	code      uint32
	reason    string
	reconnect bool
}

// WithCloseCode sets the WebSocket close code, 4000-4999 (anything else is
// INVALID_ARGUMENT). 0, the default, means 4003 when [WithReconnect](true) is
// given and 4500 otherwise.
func WithCloseCode(code uint32) DisconnectOption {
	return func(o *disconnectOptions) { o.code = code }
}

// WithReason sets a short text for people sent with the disconnect, at most 120
// bytes.
func WithReason(reason string) DisconnectOption {
	return func(o *disconnectOptions) { o.reason = reason }
}

// WithReconnect sets the hint telling the client whether it should reconnect
// (default false).
func WithReconnect(reconnect bool) DisconnectOption {
	return func(o *disconnectOptions) { o.reconnect = reconnect }
}

func subscribeRequest(t Target, topics []string) (*heraldv1.SubscribeRequest, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	return &heraldv1.SubscribeRequest{Target: t.proto(), Topics: topics}, nil
}

func unsubscribeRequest(t Target, topics []string) (*heraldv1.UnsubscribeRequest, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	return &heraldv1.UnsubscribeRequest{Target: t.proto(), Topics: topics}, nil
}

func disconnectRequest(t Target, opts []DisconnectOption) (*heraldv1.DisconnectRequest, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	var o disconnectOptions
	for _, opt := range opts {
		opt(&o)
	}
	return &heraldv1.DisconnectRequest{Target: t.proto(), Code: o.code, Reason: o.reason, Reconnect: o.reconnect}, nil
}

// Subscribe puts the target's connections into topics and returns how many
// connections it reached. Each client is told with a server-initiated
// "subscribed" push. NOT_FOUND ([IsNotFound]) for an unknown connection or user,
// INVALID_ARGUMENT for a bad topic or a target that names nothing. Retried
// while the engine is UNAVAILABLE (subscribing twice is harmless).
func (c *Client) Subscribe(ctx context.Context, target Target, topics ...string) (int, error) {
	req, err := subscribeRequest(target, topics)
	if err != nil {
		return 0, err
	}
	r, err := c.rpc.Subscribe(ctx, req)
	if err != nil {
		return 0, err
	}
	return int(r.GetConnections()), nil
}

// SubscribeResult is the answer to [Client.SubscribeSince].
type SubscribeResult struct {
	// Connections is how many connections the command reached.
	Connections int
	// Recovered says, per topic of since, whether every connection reached was
	// sent everything it missed (then the live messages, with no gap and no
	// duplicate). False when the engine no longer had it all: the epoch
	// changed (the engine restarted, or the topic was created again), the
	// messages left the topic's history or it keeps none, or the connection
	// was already in the topic. The client should then reload its state.
	Recovered map[string]bool
	// Positions is, per topic of since, where live delivery continues (for the
	// last connection reached).
	Positions map[string]Position
}

// NotRecovered returns the topics of since that did not recover, sorted.
func (r SubscribeResult) NotRecovered() []string {
	var lost []string
	for topic, ok := range r.Recovered {
		if !ok {
			lost = append(lost, topic)
		}
	}
	slices.Sort(lost)
	return lost
}

// SubscribeSince puts the target's connections into the topics of since and
// into topics, recovering what they missed: since maps a topic to the last
// position the client saw (the "seq" and "epoch" of its last WebSocket
// message). Each connection is first sent every message after that position,
// in order, then the live ones, with no gap and no duplicate, when the topic
// still keeps them all (see the history_size and history_ttl of the engine's
// [[topics]] rules). The result says per topic whether that worked; the
// client's "subscribed" push carries the same "recovered" and "positions".
// Errors as for [Client.Subscribe]; retried the same way.
//
//	r, err := c.SubscribeSince(ctx, herald.Conn(connID),
//		map[string]herald.Position{"room:a": {Sequence: 41, Epoch: epoch}})
//	for _, topic := range r.NotRecovered() { /* reload topic's state */ }
func (c *Client) SubscribeSince(ctx context.Context, target Target, since map[string]Position, topics ...string) (SubscribeResult, error) {
	// A copy: topics of since are appended, never into the caller's array.
	req, err := subscribeRequest(target, slices.Clone(topics))
	if err != nil {
		return SubscribeResult{}, err
	}
	req.Since = make(map[string]*heraldv1.StreamPosition, len(since))
	// The engine wants every topic of since in topics too.
	for _, topic := range slices.Sorted(maps.Keys(since)) {
		req.Since[topic] = since[topic].proto()
		if !slices.Contains(topics, topic) {
			req.Topics = append(req.Topics, topic)
		}
	}
	r, err := c.rpc.Subscribe(ctx, req)
	if err != nil {
		return SubscribeResult{}, err
	}
	res := SubscribeResult{
		Connections: int(r.GetConnections()),
		Recovered:   r.GetRecovered(),
		Positions:   make(map[string]Position, len(r.GetPositions())),
	}
	if res.Recovered == nil {
		res.Recovered = map[string]bool{}
	}
	for topic, p := range r.GetPositions() {
		res.Positions[topic] = positionFromProto(p)
	}
	return res, nil
}

// Unsubscribe takes the target's connections out of topics and returns how many
// connections it reached. Topics a connection is not in are ignored. Retried
// while the engine is UNAVAILABLE.
func (c *Client) Unsubscribe(ctx context.Context, target Target, topics ...string) (int, error) {
	req, err := unsubscribeRequest(target, topics)
	if err != nil {
		return 0, err
	}
	r, err := c.rpc.Unsubscribe(ctx, req)
	if err != nil {
		return 0, err
	}
	return int(r.GetConnections()), nil
}

// Disconnect closes the target's connections and returns how many it closed.
// Each client receives a "disconnect" frame with the code, reason and reconnect
// hint ([WithCloseCode], [WithReason], [WithReconnect]), then a close frame.
// Never retried.
//
//	n, err := c.Disconnect(ctx, herald.User("mallory"), herald.WithReason("banned"))
func (c *Client) Disconnect(ctx context.Context, target Target, opts ...DisconnectOption) (int, error) {
	req, err := disconnectRequest(target, opts)
	if err != nil {
		return 0, err
	}
	r, err := c.rpc.Disconnect(ctx, req)
	if err != nil {
		return 0, err
	}
	return int(r.GetConnections()), nil
}

// ControlStream sends subscribe, unsubscribe and disconnect commands over one
// Control stream. It is safe for concurrent use: commands are sent in call
// order and each call waits for its own result, so concurrent callers are
// pipelined. A failing command (for example NOT_FOUND) returns its error and
// leaves the stream open.
//
// Create one with [Client.Control] and Close it when done.
type ControlStream struct {
	mux *muxStream[heraldv1.ControlRequest, heraldv1.ControlResponse, uint32]
}

// Control opens a Control stream. It lives until Close is called or ctx is
// canceled.
func (c *Client) Control(ctx context.Context) (*ControlStream, error) {
	mux, err := openMux(ctx, c.rpc.Control, decodeControlResponse, "herald: control stream ended before the result")
	if err != nil {
		return nil, err
	}
	return &ControlStream{mux: mux}, nil
}

func decodeControlResponse(resp *heraldv1.ControlResponse) (uint64, uint32, error) {
	var (
		n      uint32
		resErr error
	)
	switch r := resp.GetResult().(type) {
	case *heraldv1.ControlResponse_Subscribe:
		n = r.Subscribe.GetConnections()
	case *heraldv1.ControlResponse_Unsubscribe:
		n = r.Unsubscribe.GetConnections()
	case *heraldv1.ControlResponse_Disconnect:
		n = r.Disconnect.GetConnections()
	case *heraldv1.ControlResponse_Error:
		resErr = itemError(r.Error.GetCode(), r.Error.GetMessage())
	default:
		resErr = status.Error(codes.Internal, "herald: control response without a result")
	}
	return resp.GetRequestId(), n, resErr
}

func (s *ControlStream) do(ctx context.Context, build func(req *heraldv1.ControlRequest) error) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, status.FromContextError(err).Err()
	}
	req := &heraldv1.ControlRequest{}
	if err := build(req); err != nil {
		return 0, err
	}

	pend, err := s.mux.send(func(id uint64) *heraldv1.ControlRequest {
		req.RequestId = id
		return req
	})
	if err != nil {
		return 0, err
	}

	select {
	case <-pend.done:
		return int(pend.val), pend.err
	case <-ctx.Done():
		return 0, status.FromContextError(ctx.Err()).Err()
	}
}

// Subscribe is [Client.Subscribe] over the stream.
func (s *ControlStream) Subscribe(ctx context.Context, target Target, topics ...string) (int, error) {
	return s.do(ctx, func(req *heraldv1.ControlRequest) error {
		sub, err := subscribeRequest(target, topics)
		req.Command = &heraldv1.ControlRequest_Subscribe{Subscribe: sub}
		return err
	})
}

// Unsubscribe is [Client.Unsubscribe] over the stream.
func (s *ControlStream) Unsubscribe(ctx context.Context, target Target, topics ...string) (int, error) {
	return s.do(ctx, func(req *heraldv1.ControlRequest) error {
		unsub, err := unsubscribeRequest(target, topics)
		req.Command = &heraldv1.ControlRequest_Unsubscribe{Unsubscribe: unsub}
		return err
	})
}

// Disconnect is [Client.Disconnect] over the stream.
func (s *ControlStream) Disconnect(ctx context.Context, target Target, opts ...DisconnectOption) (int, error) {
	return s.do(ctx, func(req *heraldv1.ControlRequest) error {
		dis, err := disconnectRequest(target, opts)
		req.Command = &heraldv1.ControlRequest_Disconnect{Disconnect: dis}
		return err
	})
}

// Close stops sending, waits for the results of the commands already sent, and
// ends the stream. It returns the error that broke the stream, if one did.
func (s *ControlStream) Close() error { return s.mux.close() }
