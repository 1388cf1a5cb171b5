package herald

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"google.golang.org/grpc/status"
)

// RetryPolicy says how calls that are safe to repeat are retried when the
// engine is UNAVAILABLE (not reachable, restarting, or shutting down).
//
// Retried: Subscribe, Unsubscribe, Presence, PresenceStats, Info and Health,
// and Publish and Broadcast when they carry an idempotency key (the engine
// drops a repeat and answers Duplicate). A plain Publish or Broadcast, and
// Disconnect, are never retried: they might have been applied before the
// connection failed. Streams are not retried either ([Client.WatchPresence]
// reconnects by itself).
type RetryPolicy struct {
	// MaxAttempts is the number of attempts, the first included: 1 disables
	// retries. gRPC caps it at 5. Default 4.
	MaxAttempts int
	// InitialBackoff is the wait before the first retry; later waits double
	// up to MaxBackoff, with jitter. Default 100ms.
	InitialBackoff time.Duration
	// MaxBackoff caps the wait between attempts. Default 2s.
	MaxBackoff time.Duration
}

// DefaultRetryPolicy is the policy a client uses without [WithRetry].
var DefaultRetryPolicy = RetryPolicy{MaxAttempts: 4, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second}

// WithRetry sets how safe calls are retried; RetryPolicy{MaxAttempts: 1}
// turns retries off. Zero fields take the defaults of [DefaultRetryPolicy].
func WithRetry(p RetryPolicy) Option {
	return func(o *clientOptions) { o.retry = p }
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = DefaultRetryPolicy.MaxAttempts
	}
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = DefaultRetryPolicy.InitialBackoff
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = DefaultRetryPolicy.MaxBackoff
	}
	p.MaxBackoff = max(p.MaxBackoff, p.InitialBackoff)
	return p
}

// serviceConfig is the gRPC service config that retries the safe unary calls.
func (p RetryPolicy) serviceConfig() (string, error) {
	type name struct {
		Service string `json:"service"`
		Method  string `json:"method,omitempty"`
	}
	type retryPolicy struct {
		MaxAttempts          int      `json:"maxAttempts"`
		InitialBackoff       string   `json:"initialBackoff"`
		MaxBackoff           string   `json:"maxBackoff"`
		BackoffMultiplier    float64  `json:"backoffMultiplier"`
		RetryableStatusCodes []string `json:"retryableStatusCodes"`
	}
	type methodConfig struct {
		Name        []name      `json:"name"`
		RetryPolicy retryPolicy `json:"retryPolicy"`
	}
	var names []name
	for _, m := range []string{"Subscribe", "Unsubscribe", "Presence", "PresenceStats", "Info"} {
		names = append(names, name{Service: ServiceName, Method: m})
	}
	names = append(names, name{Service: "grpc.health.v1.Health", Method: "Check"})
	cfg := map[string]any{"methodConfig": []methodConfig{{
		Name: names,
		RetryPolicy: retryPolicy{
			MaxAttempts:          min(p.MaxAttempts, 5),
			InitialBackoff:       seconds(p.InitialBackoff),
			MaxBackoff:           seconds(p.MaxBackoff),
			BackoffMultiplier:    2,
			RetryableStatusCodes: []string{"UNAVAILABLE"},
		},
	}}}
	b, err := json.Marshal(cfg)
	return string(b), err
}

func seconds(d time.Duration) string {
	return fmt.Sprintf("%.3fs", d.Seconds())
}

// retryUnavailable runs call until it succeeds, fails with anything but
// UNAVAILABLE, runs out of attempts, or ctx ends.
func retryUnavailable(ctx context.Context, p RetryPolicy, call func() error) error {
	for attempt := 1; ; attempt++ {
		err := call()
		if err == nil || attempt >= p.MaxAttempts || !IsUnavailable(err) {
			return err
		}
		if !sleepCtx(ctx, backoff(attempt-1, p.InitialBackoff, p.MaxBackoff)) {
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}
