package herald

import (
	"encoding/json"
	"time"

	heraldv1 "github.com/heraldrt/herald/sdk-go/gen/herald/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Content types understood by the engine. They decide how WebSocket clients see
// a payload: a JSON value in "data", a string in "text", or base64 in "b64".
const (
	ContentTypeJSON = "application/json"
	ContentTypeText = "text/plain; charset=utf-8"
)

// Payload is the body of a message and its content type.
type Payload struct {
	// Data is the payload itself: at most the engine's maximum payload size
	// (64 KiB by default).
	Data []byte
	// ContentType is "application/json" (or any "+json" type), "text/..." or
	// anything else for opaque bytes. Empty means application/octet-stream.
	ContentType string

	// err is why the payload could not be built ([JSON] of a value
	// encoding/json cannot marshal); publishing it fails with this error.
	err error
}

// Err reports why the payload could not be built: non-nil only for a [JSON]
// payload whose value encoding/json could not marshal. Publishing such a
// payload fails with the same error before anything is sent, so checking Err
// first is optional.
func (p Payload) Err() error { return p.err }

// payloadError is a payload that could not be built. It is INVALID_ARGUMENT
// for [Code] and status.FromError, and unwraps to the encoding/json error.
type payloadError struct{ err error }

func (e *payloadError) Error() string { return "herald: payload: " + e.err.Error() }
func (e *payloadError) Unwrap() error { return e.err }
func (e *payloadError) GRPCStatus() *status.Status {
	return status.New(codes.InvalidArgument, e.Error())
}

// Bytes is an opaque binary payload with no content type (that is,
// application/octet-stream); WebSocket clients receive it base64-encoded in the
// "b64" field. For another binary type, set Payload.ContentType (for example
// "application/x-protobuf"): clients then also get it in "content_type".
func Bytes(data []byte) Payload {
	return Payload{Data: data}
}

// Text is a UTF-8 text payload (text/plain; charset=utf-8); WebSocket clients
// receive it as a JSON string in the "text" field.
func Text(s string) Payload {
	return Payload{Data: []byte(s), ContentType: ContentTypeText}
}

// JSON marshals v with encoding/json into an application/json payload;
// WebSocket clients receive the JSON value itself in the "data" field.
//
// A value encoding/json cannot marshal (a channel, a function, a NaN, a
// failing MarshalJSON, ...) gives a payload that carries the error: Publish,
// Broadcast and PublishAsync return it, as INVALID_ARGUMENT ([IsInvalidArgument])
// wrapping the encoding/json error, without sending anything. So one error
// check per publish is enough:
//
//	res, err := c.Publish(ctx, "prices:EUR-USD", herald.JSON(tick))
//
// [Payload.Err] tells it before publishing, if wanted.
func JSON(v any) Payload {
	data, err := json.Marshal(v)
	if err != nil {
		return Payload{ContentType: ContentTypeJSON, err: &payloadError{err: err}}
	}
	return Payload{Data: data, ContentType: ContentTypeJSON}
}

// RawJSON is an application/json payload from bytes that already hold JSON. The
// engine refuses invalid JSON with INVALID_ARGUMENT.
func RawJSON(data []byte) Payload {
	return Payload{Data: data, ContentType: ContentTypeJSON}
}

// PublishOption adjusts one publish or broadcast.
type PublishOption func(*publishOptions)

type publishOptions struct {
	idempotencyKey *string
	ttlMs          *uint32
}

// WithIdempotencyKey makes the publish idempotent: a publish whose (topic, key)
// was already accepted within the engine's idempotency window is not delivered
// again, and its result has Duplicate set and the original sequence.
func WithIdempotencyKey(key string) PublishOption {
	return func(o *publishOptions) { o.idempotencyKey = &key }
}

// WithTTL sets the message's time to live: a connection whose queue still holds
// the message this long after it was published drops it instead of sending it.
// The engine counts in whole milliseconds; 0 means no limit. Durations beyond
// the range of a uint32 count of milliseconds are capped.
func WithTTL(ttl time.Duration) PublishOption {
	ms := ttl.Milliseconds()
	if ttl > 0 && ms == 0 {
		ms = 1
	}
	ms = max(0, min(ms, int64(^uint32(0))))
	v := uint32(ms)
	return func(o *publishOptions) { o.ttlMs = &v }
}

func buildPublishOptions(opts []PublishOption) publishOptions {
	var o publishOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// newPublishRequest builds the request, or returns the payload's error.
func newPublishRequest(topic string, p Payload, opts []PublishOption) (*heraldv1.PublishRequest, error) {
	if p.err != nil {
		return nil, p.err
	}
	o := buildPublishOptions(opts)
	return &heraldv1.PublishRequest{
		Topic:          topic,
		Data:           p.Data,
		ContentType:    p.ContentType,
		IdempotencyKey: o.idempotencyKey,
		TtlMs:          o.ttlMs,
	}, nil
}

// PublishResult is the engine's answer to one accepted message.
type PublishResult struct {
	// Sequence is the message's sequence number in its topic (1, 2, 3, ...): the
	// "seq" WebSocket clients see.
	Sequence uint64
	// Duplicate is true when the idempotency key matched an earlier publish and
	// nothing was sent; Sequence is then the original message's.
	Duplicate bool
	// Epoch is the topic's epoch, the random id of its incarnation: sequences
	// count within it (the "epoch" WebSocket clients see).
	Epoch string
}

func publishResultFromProto(r *heraldv1.PublishResponse) PublishResult {
	return PublishResult{Sequence: r.GetSequence(), Duplicate: r.GetDuplicate(), Epoch: r.GetEpoch()}
}
