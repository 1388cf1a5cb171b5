package herald

import (
	"context"
	"errors"
	"io"
	"sync"

	heraldv1 "github.com/heraldrt/herald/sdk-go/gen/herald/v1"
	"google.golang.org/grpc"
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
	stream grpc.BidiStreamingClient[heraldv1.PublishStreamRequest, heraldv1.PublishStreamResponse]
	cancel context.CancelFunc

	sendMu sync.Mutex // orders client_seq assignment and sends
	next   uint64
	closed bool

	inflight *inflight[PublishResult]
	recvDone chan struct{}
	recvErr  error // why the stream ended; read after recvDone
}

// NewPublisher opens a PublishStream. The stream lives until Close is called or
// ctx is canceled; canceling ctx fails every message still waiting for its ack.
func (c *Client) NewPublisher(ctx context.Context) (*Publisher, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.rpc.PublishStream(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	p := &Publisher{
		stream:   stream,
		cancel:   cancel,
		inflight: newInflight[PublishResult](),
		recvDone: make(chan struct{}),
	}
	go p.receive()
	return p, nil
}

func (p *Publisher) receive() {
	defer close(p.recvDone)
	for {
		resp, err := p.stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				// The server ended the stream normally (after CloseSend);
				// anything still waiting will never get its answer.
				p.inflight.close(status.Error(codes.Unavailable, "herald: publish stream ended before the ack"))
				p.recvErr = nil
			} else {
				p.inflight.close(err)
				p.recvErr = err
			}
			return
		}
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
		p.inflight.resolve(resp.GetClientSeq(), res, resErr)
	}
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
	msg := newPublishRequest(topic, payload, opts)

	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	if p.closed {
		return failedPublish(ErrClosed)
	}
	p.next++
	seq := p.next
	pend, err := p.inflight.add(seq)
	if err != nil {
		return failedPublish(err)
	}
	if err := p.stream.Send(&heraldv1.PublishStreamRequest{ClientSeq: seq, Message: msg}); err != nil {
		// Send reports io.EOF when the stream broke; the receiver then gets the
		// real status from Recv and fails every waiting message with it.
		if !errors.Is(err, io.EOF) {
			p.inflight.resolve(seq, PublishResult{}, err)
		}
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
func (p *Publisher) Close() error {
	p.sendMu.Lock()
	already := p.closed
	p.closed = true
	if !already {
		_ = p.stream.CloseSend()
	}
	p.sendMu.Unlock()

	<-p.recvDone
	p.cancel()
	if already {
		return nil
	}
	return p.recvErr
}
