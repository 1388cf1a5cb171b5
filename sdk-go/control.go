package herald

import (
	"context"

	heraldv1 "github.com/heraldrt/herald/sdk-go/gen/herald/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Target names the connections a subscribe, unsubscribe or disconnect applies
// to: one connection ([Conn]) or every current connection of a user ([User]).
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
	if t.byUser {
		return "user " + t.userID
	}
	return "connection " + t.connectionID
}

func (t Target) proto() *heraldv1.Target {
	if t.byUser {
		return &heraldv1.Target{Target: &heraldv1.Target_UserId{UserId: t.userID}}
	}
	return &heraldv1.Target{Target: &heraldv1.Target_ConnectionId{ConnectionId: t.connectionID}}
}

// DisconnectOptions say how connections are closed.
type DisconnectOptions struct {
	// Code is the WebSocket close code, 4000-4999. 0 means the default: 4003
	// when Reconnect is true, 4500 when it is false.
	Code uint32
	// Reason is a short text for people, at most 120 bytes.
	Reason string
	// Reconnect tells the client whether it should reconnect.
	Reconnect bool
}

func subscribeRequest(t Target, topics []string) *heraldv1.SubscribeRequest {
	return &heraldv1.SubscribeRequest{Target: t.proto(), Topics: topics}
}

func unsubscribeRequest(t Target, topics []string) *heraldv1.UnsubscribeRequest {
	return &heraldv1.UnsubscribeRequest{Target: t.proto(), Topics: topics}
}

func disconnectRequest(t Target, o DisconnectOptions) *heraldv1.DisconnectRequest {
	return &heraldv1.DisconnectRequest{Target: t.proto(), Code: o.Code, Reason: o.Reason, Reconnect: o.Reconnect}
}

// Subscribe puts the target's connections into topics and returns how many
// connections it reached. Each client is told with a server-initiated
// "subscribed" push. NOT_FOUND ([IsNotFound]) for an unknown connection or user,
// INVALID_ARGUMENT for a bad topic. Retried while the engine is UNAVAILABLE
// (subscribing twice is harmless).
func (c *Client) Subscribe(ctx context.Context, target Target, topics ...string) (int, error) {
	r, err := c.rpc.Subscribe(ctx, subscribeRequest(target, topics))
	if err != nil {
		return 0, err
	}
	return int(r.GetConnections()), nil
}

// Unsubscribe takes the target's connections out of topics and returns how many
// connections it reached. Topics a connection is not in are ignored. Retried
// while the engine is UNAVAILABLE.
func (c *Client) Unsubscribe(ctx context.Context, target Target, topics ...string) (int, error) {
	r, err := c.rpc.Unsubscribe(ctx, unsubscribeRequest(target, topics))
	if err != nil {
		return 0, err
	}
	return int(r.GetConnections()), nil
}

// Disconnect closes the target's connections and returns how many it closed.
// Each client receives a "disconnect" frame with the code, reason and reconnect
// hint, then a close frame. Never retried.
func (c *Client) Disconnect(ctx context.Context, target Target, opts DisconnectOptions) (int, error) {
	r, err := c.rpc.Disconnect(ctx, disconnectRequest(target, opts))
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

func (s *ControlStream) do(ctx context.Context, build func(req *heraldv1.ControlRequest)) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, status.FromContextError(err).Err()
	}
	req := &heraldv1.ControlRequest{}
	build(req)

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
	return s.do(ctx, func(req *heraldv1.ControlRequest) {
		req.Command = &heraldv1.ControlRequest_Subscribe{Subscribe: subscribeRequest(target, topics)}
	})
}

// Unsubscribe is [Client.Unsubscribe] over the stream.
func (s *ControlStream) Unsubscribe(ctx context.Context, target Target, topics ...string) (int, error) {
	return s.do(ctx, func(req *heraldv1.ControlRequest) {
		req.Command = &heraldv1.ControlRequest_Unsubscribe{Unsubscribe: unsubscribeRequest(target, topics)}
	})
}

// Disconnect is [Client.Disconnect] over the stream.
func (s *ControlStream) Disconnect(ctx context.Context, target Target, opts DisconnectOptions) (int, error) {
	return s.do(ctx, func(req *heraldv1.ControlRequest) {
		req.Command = &heraldv1.ControlRequest_Disconnect{Disconnect: disconnectRequest(target, opts)}
	})
}

// Close stops sending, waits for the results of the commands already sent, and
// ends the stream. It returns the error that broke the stream, if one did.
func (s *ControlStream) Close() error { return s.mux.close() }
