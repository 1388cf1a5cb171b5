package herald

import (
	"context"
	"errors"
	"fmt"
	"time"

	heraldv1 "github.com/heraldrt/herald/sdk-go/gen/herald/v1"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// ServiceName is the fully qualified gRPC service name of the Herald API, also
// the name under which the engine reports its health.
const ServiceName = "herald.v1.Herald"

// Client is a connection to one Herald engine node. It is safe for concurrent
// use; create one per engine and share it.
type Client struct {
	conn   *grpc.ClientConn
	rpc    heraldv1.HeraldClient
	health healthpb.HealthClient
	retry  RetryPolicy
}

// NewClient creates a client for the engine's gRPC address, for example
// "127.0.0.1:50051" or "dns:///herald.internal:50051" (any grpc.NewClient
// target). Like grpc.NewClient it does not connect: the connection is made on
// the first call and re-made as needed, so NewClient fails only on bad options.
//
// Without [WithTLSConfig] or [WithTransportCredentials] the connection is plain
// text. After a failure the connection is re-made with backoff capped at 5s
// (override with WithDialOptions(grpc.WithConnectParams(...))).
func NewClient(target string, opts ...Option) (*Client, error) {
	o := defaultClientOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if o.creds == nil {
		return nil, errors.New("herald: nil transport credentials")
	}
	o.retry = o.retry.withDefaults()
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(o.creds),
		// Reconnect within seconds once an engine is back, rather than
		// gRPC's default of up to two minutes after a long outage.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
	if o.retry.MaxAttempts > 1 {
		serviceConfig, err := o.retry.serviceConfig()
		if err != nil {
			return nil, fmt.Errorf("herald: %w", err)
		}
		dial = append(dial, grpc.WithDefaultServiceConfig(serviceConfig))
	}
	if o.apiKey != "" {
		secure := o.creds.Info().SecurityProtocol != "insecure"
		dial = append(dial, grpc.WithPerRPCCredentials(newAPIKeyCreds(o.apiKey, secure)))
	}
	dial = append(dial, o.dialOptions...)
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, fmt.Errorf("herald: %w", err)
	}
	return &Client{
		conn:   conn,
		rpc:    heraldv1.NewHeraldClient(conn),
		health: healthpb.NewHealthClient(conn),
		retry:  o.retry,
	}, nil
}

// Close closes the connection. Calls and streams still running fail with
// codes.Canceled.
func (c *Client) Close() error {
	return c.conn.Close()
}

// Raw returns the generated gRPC stub, for calls or fields this package does
// not wrap.
func (c *Client) Raw() heraldv1.HeraldClient { return c.rpc }

// GRPCConn returns the underlying gRPC connection, for example to create
// other gRPC service stubs on it or to watch its connectivity state. (Not to be
// confused with [Conn], which names a WebSocket connection as a [Target].)
func (c *Client) GRPCConn() *grpc.ClientConn { return c.conn }

// Publish publishes one message to one topic and returns its sequence number in
// that topic. A bad topic, an oversize payload, or a JSON payload that is not
// valid JSON is INVALID_ARGUMENT ([IsInvalidArgument]), and so is a [JSON]
// payload whose value could not be marshaled (then nothing is sent). With an
// idempotency key the call is retried while the engine is UNAVAILABLE (see
// [RetryPolicy]).
func (c *Client) Publish(ctx context.Context, topic string, payload Payload, opts ...PublishOption) (PublishResult, error) {
	req, err := newPublishRequest(topic, payload, opts)
	if err != nil {
		return PublishResult{}, err
	}
	var resp *heraldv1.PublishResponse
	err = c.maybeRetry(ctx, req.IdempotencyKey != nil, func() (err error) {
		resp, err = c.rpc.Publish(ctx, req)
		return err
	})
	if err != nil {
		return PublishResult{}, err
	}
	return publishResultFromProto(resp), nil
}

// maybeRetry runs call once, or with retries on UNAVAILABLE when retry is set.
func (c *Client) maybeRetry(ctx context.Context, retry bool, call func() error) error {
	if !retry {
		return call()
	}
	return retryUnavailable(ctx, c.retry, call)
}

// Broadcast publishes one payload to many topics in one call and returns one
// result per topic, in the order given. All topics are checked first: if any is
// bad, nothing is published and the error is INVALID_ARGUMENT (as for a [JSON]
// payload whose value could not be marshaled). With an idempotency key the
// call is retried while the engine is UNAVAILABLE.
func (c *Client) Broadcast(ctx context.Context, topics []string, payload Payload, opts ...PublishOption) ([]PublishResult, error) {
	if payload.err != nil {
		return nil, payload.err
	}
	o := buildPublishOptions(opts)
	req := &heraldv1.BroadcastRequest{
		Topics:         topics,
		Data:           payload.Data,
		ContentType:    payload.ContentType,
		IdempotencyKey: o.idempotencyKey,
		TtlMs:          o.ttlMs,
	}
	var resp *heraldv1.BroadcastResponse
	err := c.maybeRetry(ctx, req.IdempotencyKey != nil, func() (err error) {
		resp, err = c.rpc.Broadcast(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	results := make([]PublishResult, len(resp.GetResults()))
	for i, r := range resp.GetResults() {
		results[i] = publishResultFromProto(r)
	}
	return results, nil
}

// Info describes an engine node and its counters since it started.
type Info struct {
	NodeID            string
	Version           string
	Uptime            time.Duration
	Connections       uint64 // open WebSocket connections
	Topics            uint64 // topics with a subscriber or a retained sequence
	Subscriptions     uint64 // sum over connections of their subscriptions
	MessagesPublished uint64 // accepted for publishing, each broadcast topic once
	MessagesDelivered uint64 // queued to connections
	MessagesDropped   uint64 // dropped on queue overflow or expired by TTL
	SlowDisconnects   uint64 // connections closed because their queue overflowed
	// ClientAuth reports whether WebSocket clients must authenticate with a
	// token; false means the node runs open (any client may claim any user id).
	ClientAuth bool
	// HistoryBytes is what topic history holds, bounded by the engine's
	// history_max_bytes; HistoryMessages is how many messages that is.
	HistoryBytes    uint64
	HistoryMessages uint64
}

// Info returns the node's identity, version, uptime and counters.
func (c *Client) Info(ctx context.Context) (Info, error) {
	r, err := c.rpc.Info(ctx, &heraldv1.InfoRequest{})
	if err != nil {
		return Info{}, err
	}
	return Info{
		NodeID:            r.GetNodeId(),
		Version:           r.GetVersion(),
		Uptime:            time.Duration(r.GetUptimeSeconds()) * time.Second,
		Connections:       r.GetConnections(),
		Topics:            r.GetTopics(),
		Subscriptions:     r.GetSubscriptions(),
		MessagesPublished: r.GetMessagesPublished(),
		MessagesDelivered: r.GetMessagesDelivered(),
		MessagesDropped:   r.GetMessagesDropped(),
		SlowDisconnects:   r.GetSlowDisconnects(),
		ClientAuth:        r.GetClientAuth(),
		HistoryBytes:      r.GetHistoryBytes(),
		HistoryMessages:   r.GetHistoryMessages(),
	}, nil
}

// HealthStatus is a node's serving status as reported by the standard
// grpc.health.v1 service.
type HealthStatus int

// Health statuses, as in grpc.health.v1.
const (
	HealthUnknown        HealthStatus = HealthStatus(healthpb.HealthCheckResponse_UNKNOWN)
	HealthServing        HealthStatus = HealthStatus(healthpb.HealthCheckResponse_SERVING)
	HealthNotServing     HealthStatus = HealthStatus(healthpb.HealthCheckResponse_NOT_SERVING)
	HealthServiceUnknown HealthStatus = HealthStatus(healthpb.HealthCheckResponse_SERVICE_UNKNOWN)
)

// String returns the grpc.health.v1 name of the status, such as "SERVING".
func (s HealthStatus) String() string {
	return healthpb.HealthCheckResponse_ServingStatus(s).String()
}

// Health asks the node's grpc.health.v1 service for the status of the Herald
// service. The engine reports SERVING once its WebSocket and gRPC listeners are
// up, and NOT_SERVING as soon as it starts shutting down.
func (c *Client) Health(ctx context.Context) (HealthStatus, error) {
	r, err := c.health.Check(ctx, &healthpb.HealthCheckRequest{Service: ServiceName})
	if err != nil {
		return HealthUnknown, err
	}
	return HealthStatus(r.GetStatus()), nil
}
