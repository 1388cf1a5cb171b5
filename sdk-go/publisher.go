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
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// DefaultMaxInFlight is how many messages a [Publisher] holds queued or waiting
// for their ack unless [WithMaxInFlight] says otherwise.
const DefaultMaxInFlight = 1024

// maxStreamBatch is the most messages one PublishStream request carries: its
// message and up to 1024 more.
const maxStreamBatch = 1 + 1024

// maxStreamBatchBytes is the most bytes of messages one PublishStream request
// carries, unless its first message alone is larger (a request always carries
// at least one). The engine refuses a gRPC request larger than its
// grpc_max_message_bytes, and the request's stream with it; by default that
// limit is max_payload_bytes plus room for topic lists (about 394 KB with the
// default 64 KiB payloads), so one message always fits and 256 KiB of them do
// too.
const maxStreamBatchBytes = 256 << 10

// Publisher publishes many messages over one PublishStream. It is safe for
// concurrent use. Messages are sent in the order of the calls to
// [Publisher.PublishAsync] (and [Publisher.Publish]), so the engine applies them
// in that order and the order within each topic is kept. Every message gets its
// own result: an ack with the topic sequence, or an error for that message alone
// (a bad message does not end the stream).
//
// PublishAsync only queues the message. One sender writes whatever is queued
// when the stream is ready for its next write as one request (up to 1025
// messages and 256 KiB of them, within the engine's gRPC message limit), so a
// busy producer sends many messages per stream write while a lone message
// still goes out at once. At most [WithMaxInFlight] messages
// (default 1024) are queued or waiting for their ack: PublishAsync waits while
// that many are.
//
// Create one with [Client.NewPublisher] and Close it when done.
type Publisher struct {
	stream grpc.BidiStreamingClient[heraldv1.PublishStreamRequest, heraldv1.PublishStreamResponse]
	cancel context.CancelFunc
	slots  chan struct{} // one per message queued or waiting for its ack
	work   chan struct{} // wakes the sender
	over   chan struct{} // closed when the stream is over

	mu      sync.Mutex
	queue   []queuedPublish                      // not sent yet, in call order
	sent    map[uint64][]*pending[PublishResult] // by the client_seq of their request
	nextSeq uint64
	closed  bool  // Close was called
	err     error // why the stream is over; set before over is closed

	recvDone chan struct{}
	recvErr  error // the error that broke the stream; read after recvDone
}

type queuedPublish struct {
	msg  *heraldv1.PublishRequest
	size int // the encoded size of msg inside a request's more
	pend *pending[PublishResult]
}

// streamMessageSize is the encoded size of msg inside a PublishStream
// request's more: the message, its length and its field tag.
func streamMessageSize(msg *heraldv1.PublishRequest) int {
	return 1 + protowire.SizeBytes(proto.Size(msg))
}

// streamBatchLen is how many of the queued messages, from the front, the next
// request carries: as many as keep within maxStreamBatch and
// maxStreamBatchBytes, and always the first.
func streamBatchLen(queue []queuedPublish) int {
	n, size := 1, queue[0].size
	for n < len(queue) && n < maxStreamBatch {
		size += queue[n].size
		if size > maxStreamBatchBytes {
			break
		}
		n++
	}
	return n
}

// PublisherOption adjusts a [Publisher] made by [Client.NewPublisher].
type PublisherOption func(*publisherOptions)

type publisherOptions struct {
	maxInFlight int
}

// WithMaxInFlight bounds the messages queued or waiting for their ack (default
// [DefaultMaxInFlight]); PublishAsync waits while that many are. Values below 1
// count as 1.
func WithMaxInFlight(n int) PublisherOption {
	return func(o *publisherOptions) { o.maxInFlight = max(1, n) }
}

// NewPublisher opens a PublishStream. The stream lives until Close is called or
// ctx is canceled; canceling ctx fails every message still waiting for its ack.
func (c *Client) NewPublisher(ctx context.Context, opts ...PublisherOption) (*Publisher, error) {
	o := publisherOptions{maxInFlight: DefaultMaxInFlight}
	for _, opt := range opts {
		opt(&o)
	}
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.rpc.PublishStream(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	p := &Publisher{
		stream:   stream,
		cancel:   cancel,
		slots:    make(chan struct{}, o.maxInFlight),
		work:     make(chan struct{}, 1),
		over:     make(chan struct{}),
		sent:     make(map[uint64][]*pending[PublishResult]),
		nextSeq:  1,
		recvDone: make(chan struct{}),
	}
	go p.send()
	go p.receive()
	return p, nil
}

// send writes the queued messages, as many per request as are queued (up to
// maxStreamBatch messages and maxStreamBatchBytes), until the publisher is
// closed and drained or the stream is over.
func (p *Publisher) send() {
	for {
		select {
		case <-p.work:
		case <-p.over:
			return
		}
		for {
			p.mu.Lock()
			if p.err != nil {
				p.mu.Unlock()
				return
			}
			if len(p.queue) == 0 {
				closed := p.closed
				p.mu.Unlock()
				if closed {
					_ = p.stream.CloseSend()
					return
				}
				break
			}
			n := streamBatchLen(p.queue)
			batch := p.queue[:n:n]
			p.queue = p.queue[n:]
			seq := p.nextSeq
			p.nextSeq += uint64(n)
			pends := make([]*pending[PublishResult], n)
			for i, q := range batch {
				pends[i] = q.pend
			}
			p.sent[seq] = pends
			p.mu.Unlock()

			req := &heraldv1.PublishStreamRequest{ClientSeq: seq, Message: batch[0].msg}
			if n > 1 {
				req.More = make([]*heraldv1.PublishRequest, n-1)
				for i, q := range batch[1:] {
					req.More[i] = q.msg
				}
			}
			if err := p.stream.Send(req); err != nil {
				// io.EOF: the stream broke, and the receiver gets the real
				// status from Recv and fails everything with it.
				if !errors.Is(err, io.EOF) {
					p.answer(seq, func(int) (PublishResult, error) { return PublishResult{}, err })
				}
			}
		}
	}
}

// receive hands every response to the messages of its request.
func (p *Publisher) receive() {
	defer close(p.recvDone)
	for {
		resp, err := p.stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				// The engine ended the stream normally (after CloseSend);
				// anything still waiting will never get its answer.
				p.end(status.Error(codes.Unavailable, "herald: publish stream ended before the ack"))
			} else {
				p.recvErr = err
				p.end(err)
			}
			return
		}
		more := resp.GetMore()
		p.answer(resp.GetClientSeq(), func(i int) (PublishResult, error) {
			if i == 0 {
				return decodePublishStreamResponse(resp)
			}
			if i-1 >= len(more) {
				return PublishResult{}, status.Error(codes.Unimplemented, "herald: the engine did not answer every message of a batched PublishStream request (it predates `more`)")
			}
			return decodePublishResult(more[i-1])
		})
	}
}

// answer settles the messages of the request numbered seq with result(i) for
// the i-th of them, and frees their slots.
func (p *Publisher) answer(seq uint64, result func(i int) (PublishResult, error)) {
	p.mu.Lock()
	pends := p.sent[seq]
	delete(p.sent, seq)
	p.mu.Unlock()
	for i, pend := range pends {
		pend.finish(result(i))
		<-p.slots
	}
}

// end fails everything queued or waiting with err; later publishes fail with
// ErrClosed after Close, else with err.
func (p *Publisher) end(err error) {
	p.mu.Lock()
	if p.err != nil {
		p.mu.Unlock()
		return
	}
	p.err = err
	if p.closed {
		p.err = ErrClosed
	}
	var waiting []*pending[PublishResult]
	for _, pends := range p.sent {
		waiting = append(waiting, pends...)
	}
	for _, q := range p.queue {
		waiting = append(waiting, q.pend)
	}
	p.sent, p.queue = nil, nil
	close(p.over)
	p.mu.Unlock()
	for _, pend := range waiting {
		pend.finish(PublishResult{}, err)
	}
}

func decodePublishStreamResponse(resp *heraldv1.PublishStreamResponse) (PublishResult, error) {
	switch r := resp.GetResult().(type) {
	case *heraldv1.PublishStreamResponse_Ack:
		return publishResultFromProto(r.Ack), nil
	case *heraldv1.PublishStreamResponse_Error:
		return PublishResult{}, itemError(r.Error.GetCode(), r.Error.GetMessage())
	default:
		return PublishResult{}, status.Error(codes.Internal, "herald: publish stream response without a result")
	}
}

func decodePublishResult(r *heraldv1.PublishResult) (PublishResult, error) {
	switch r := r.GetResult().(type) {
	case *heraldv1.PublishResult_Ack:
		return publishResultFromProto(r.Ack), nil
	case *heraldv1.PublishResult_Error:
		return PublishResult{}, itemError(r.Error.GetCode(), r.Error.GetMessage())
	default:
		return PublishResult{}, status.Error(codes.Internal, "herald: publish stream result without an ack or error")
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

// PublishAsync queues one message and returns without waiting for its ack,
// once the message has a place: it waits while [WithMaxInFlight] messages are
// queued or unanswered. The result is on the returned value. ctx bounds that
// wait; it cannot withdraw a message once queued.
func (p *Publisher) PublishAsync(ctx context.Context, topic string, payload Payload, opts ...PublishOption) *PendingPublish {
	if err := ctx.Err(); err != nil {
		return failedPublish(status.FromContextError(err).Err())
	}
	msg, err := newPublishRequest(topic, payload, opts)
	if err != nil {
		return failedPublish(err)
	}
	size := streamMessageSize(msg)
	select {
	case p.slots <- struct{}{}:
	case <-p.over:
		return failedPublish(p.overErr())
	case <-ctx.Done():
		return failedPublish(status.FromContextError(ctx.Err()).Err())
	}
	pend := newPending[PublishResult]()
	p.mu.Lock()
	switch {
	case p.err != nil:
		err = p.err
	case p.closed:
		err = ErrClosed
	default:
		p.queue = append(p.queue, queuedPublish{msg: msg, size: size, pend: pend})
	}
	p.mu.Unlock()
	if err != nil {
		<-p.slots
		return failedPublish(err)
	}
	select {
	case p.work <- struct{}{}:
	default: // the sender is awake already
	}
	return &PendingPublish{p: pend}
}

func (p *Publisher) overErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Publish sends one message and waits for its ack. Concurrent calls share the
// stream and are pipelined.
func (p *Publisher) Publish(ctx context.Context, topic string, payload Payload, opts ...PublishOption) (PublishResult, error) {
	return p.PublishAsync(ctx, topic, payload, opts...).Wait(ctx)
}

// Close stops taking messages, sends the ones queued, waits for the acks of
// every message, and ends the stream. It returns the error that broke the
// stream, if one did. Later publishes fail with [ErrClosed]. Cancel the context
// given to NewPublisher to stop waiting.
func (p *Publisher) Close() error {
	p.mu.Lock()
	already := p.closed
	p.closed = true
	p.mu.Unlock()
	select {
	case p.work <- struct{}{}:
	default:
	}
	<-p.recvDone
	p.cancel()
	if already {
		return nil
	}
	return p.recvErr
}
