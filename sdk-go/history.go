package herald

import (
	"context"
	"time"

	heraldv1 "github.com/heraldrt/herald/sdk-go/gen/herald/v1"
)

// Position is a place in a topic: a sequence number and the epoch (the random
// id of the topic's incarnation) it counts in. WebSocket messages carry both
// as "seq" and "epoch".
type Position struct {
	Sequence uint64
	// Epoch is empty when not checked (History) or when the node does not hold
	// the topic.
	Epoch string
}

func (p Position) proto() *heraldv1.StreamPosition {
	return &heraldv1.StreamPosition{Sequence: p.Sequence, Epoch: p.Epoch}
}

func positionFromProto(p *heraldv1.StreamPosition) Position {
	return Position{Sequence: p.GetSequence(), Epoch: p.GetEpoch()}
}

// HistoryMessage is one kept message of a topic.
type HistoryMessage struct {
	Sequence uint64
	// Data is the payload as published.
	Data        []byte
	ContentType string
	// Published is when the engine accepted the message.
	Published time.Time
}

// HistoryPage is one page of a topic's history.
type HistoryPage struct {
	// Messages are oldest first, or newest first with [WithReverse].
	Messages []HistoryMessage
	// Position is the topic's current sequence and epoch.
	Position Position
	// FirstSequence is the oldest sequence still kept; 0 when none is. A client
	// whose last sequence is below FirstSequence-1 cannot recover.
	FirstSequence uint64
}

// HistoryOption adjusts a [Client.History] request.
type HistoryOption func(*heraldv1.HistoryRequest)

// WithSince asks for the messages after p (before p with [WithReverse]). An
// empty epoch is not checked; another epoch than the topic's is
// FailedPrecondition.
func WithSince(p Position) HistoryOption {
	return func(r *heraldv1.HistoryRequest) { r.Since = p.proto() }
}

// WithLimit sets the most messages returned: 1 to 10000 (the engine's default
// is 100).
func WithLimit(n int) HistoryOption {
	return func(r *heraldv1.HistoryRequest) { r.Limit = uint32(max(0, min(n, 10000))) }
}

// WithReverse returns the newest messages first, before the [WithSince]
// position (from the newest without it).
func WithReverse() HistoryOption {
	return func(r *heraldv1.HistoryRequest) { r.Reverse = true }
}

// History returns a page of a topic's kept messages (topics whose engine rule
// sets history_size). Page forward by passing the last message's position to
// [WithSince], backward (with [WithReverse]) the oldest's.
func (c *Client) History(ctx context.Context, topic string, opts ...HistoryOption) (HistoryPage, error) {
	req := &heraldv1.HistoryRequest{Topic: topic}
	for _, opt := range opts {
		opt(req)
	}
	var resp *heraldv1.HistoryResponse
	err := c.maybeRetry(ctx, true, func() error {
		var err error
		resp, err = c.rpc.History(ctx, req)
		return err
	})
	if err != nil {
		return HistoryPage{}, err
	}
	page := HistoryPage{
		Messages:      make([]HistoryMessage, 0, len(resp.GetMessages())),
		Position:      positionFromProto(resp.GetPosition()),
		FirstSequence: resp.GetFirstSequence(),
	}
	for _, m := range resp.GetMessages() {
		page.Messages = append(page.Messages, HistoryMessage{
			Sequence:    m.GetSequence(),
			Data:        m.GetData(),
			ContentType: m.GetContentType(),
			Published:   time.UnixMilli(m.GetTimestampMs()),
		})
	}
	return page, nil
}

// RemoveHistory drops a topic's kept messages and returns how many there were.
// Sequence numbers go on: clients behind the current one can no longer recover.
func (c *Client) RemoveHistory(ctx context.Context, topic string) (uint64, error) {
	var removed uint64
	err := c.maybeRetry(ctx, true, func() error {
		r, err := c.rpc.RemoveHistory(ctx, &heraldv1.RemoveHistoryRequest{Topic: topic})
		removed = r.GetRemoved()
		return err
	})
	return removed, err
}
