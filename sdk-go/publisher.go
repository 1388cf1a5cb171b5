package herald

import (
	"context"
	"errors"

	heraldv1 "github.com/heraldrt/herald/sdk-go/gen/herald/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Publisher publishes many messages over one PublishStream. It is safe for
// concurrent use. Messages are sent in the order of the calls to
// [Publisher.PublishAsync] (and [Publisher.Publish]), so the engine applies them
// in that order and the order within each topic is kept. Every message gets its
// own result: an ack with the topic sequence, or an error for that message alone
// (a bad message does not end the stream).
//
// Create one with [Client.NewPublisher] and Close it when done.
type Publisher struct {
	mux *muxStream[heraldv1.PublishStreamRequest, heraldv1.PublishStreamResponse, PublishResult]
}

// NewPublisher opens a PublishStream. The stream lives until Close is called or
// ctx is canceled; canceling ctx fails every message still waiting for its ack.
func (c *Client) NewPublisher(ctx context.Context) (*Publisher, error) {
	mux, err := openMux(ctx, c.rpc.PublishStream, decodePublishStreamResponse, "herald: publish stream ended before the ack")
	if err != nil {
		return nil, err
	}
	return &Publisher{mux: mux}, nil
}

func decodePublishStreamResponse(resp *heraldv1.PublishStreamResponse) (uint64, PublishResult, error) {
	var (
		res    PublishResult
		resErr error
	)
	switch r := resp.GetResult().(type) {
	case *heraldv1.PublishStreamResponse_Ack:
		res = publishResultFromProto(r.Ack)
	case *heraldv1.PublishStreamResponse_Error:
		resErr = itemError(r.Error.GetCode(), r.Error.GetMessage())
	default:
		resErr = status.Error(codes.Internal, "herald: publish stream response without a result")
	}
	return resp.GetClientSeq(), res, resErr
}

// PendingPublish is the outcome of one message sent by [Publisher.PublishAsync].
type PendingPublish struct {
	p *pending[PublishResult]
}

// Done is closed once the message's ack or error has arrived (or the stream
// ended).
func (pp *PendingPublish) Done() <-chan struct{} { return pp.p.done }

// Result returns the message's result. It must be called only after Done is
// closed; use Wait otherwise.
func (pp *PendingPublish) Result() (PublishResult, error) {
	select {
	case <-pp.p.done:
		return pp.p.val, pp.p.err
	default:
		return PublishResult{}, errors.New("herald: publish result not ready; wait for Done")
	}
}

// Wait waits for the message's ack or error, or for ctx to end. A ctx that ends
// first does not withdraw the message.
func (pp *PendingPublish) Wait(ctx context.Context) (PublishResult, error) {
	select {
	case <-pp.p.done:
		return pp.p.val, pp.p.err
	case <-ctx.Done():
		return PublishResult{}, status.FromContextError(ctx.Err()).Err()
	}
}

func failedPublish(err error) *PendingPublish {
	p := newPending[PublishResult]()
	p.finish(PublishResult{}, err)
	return &PendingPublish{p: p}
}

// PublishAsync sends one message and returns at once (or when gRPC flow control
// lets the message go), without waiting for its ack. The result is on the
// returned value. ctx is checked before sending; it cannot withdraw a message
// already sent.
func (p *Publisher) PublishAsync(ctx context.Context, topic string, payload Payload, opts ...PublishOption) *PendingPublish {
	if err := ctx.Err(); err != nil {
		return failedPublish(status.FromContextError(err).Err())
	}
	msg, err := newPublishRequest(topic, payload, opts)
	if err != nil {
		return failedPublish(err)
	}

	pend, err := p.mux.send(func(seq uint64) *heraldv1.PublishStreamRequest {
		return &heraldv1.PublishStreamRequest{ClientSeq: seq, Message: msg}
	})
	if err != nil {
		return failedPublish(err)
	}
	return &PendingPublish{p: pend}
}

// Publish sends one message and waits for its ack. Concurrent calls share the
// stream and are pipelined.
func (p *Publisher) Publish(ctx context.Context, topic string, payload Payload, opts ...PublishOption) (PublishResult, error) {
	return p.PublishAsync(ctx, topic, payload, opts...).Wait(ctx)
}

// Close stops sending, waits for the acks of every message already sent, and
// ends the stream. It returns the error that broke the stream, if one did. Later
// publishes fail with [ErrClosed]. Cancel the context given to NewPublisher to
// stop waiting.
func (p *Publisher) Close() error { return p.mux.close() }
