package herald

import (
	"encoding/json"
	"time"

	heraldv1 "github.com/heraldrt/herald/sdk-go/gen/herald/v1"
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
func JSON(v any) (Payload, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return Payload{}, err
	}
	return Payload{Data: data, ContentType: ContentTypeJSON}, nil
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

func newPublishRequest(topic string, p Payload, opts []PublishOption) *heraldv1.PublishRequest {
	o := buildPublishOptions(opts)
	return &heraldv1.PublishRequest{
		Topic:          topic,
		Data:           p.Data,
		ContentType:    p.ContentType,
		IdempotencyKey: o.idempotencyKey,
		TtlMs:          o.ttlMs,
	}
}

// PublishResult is the engine's answer to one accepted message.
type PublishResult struct {
	// Sequence is the message's sequence number in its topic (1, 2, 3, ...): the
	// "seq" WebSocket clients see.
	Sequence uint64
	// Duplicate is true when the idempotency key matched an earlier publish and
	// nothing was sent; Sequence is then the original message's.
	Duplicate bool
}

func publishResultFromProto(r *heraldv1.PublishResponse) PublishResult {
	return PublishResult{Sequence: r.GetSequence(), Duplicate: r.GetDuplicate()}
}
