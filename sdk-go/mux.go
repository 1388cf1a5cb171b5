package herald

import (
	"context"
	"errors"
	"io"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// muxStream is a bidirectional stream on which many requests are in flight at
// once: each request carries an id, and a receive loop hands every response to
// the request that waits for it. ControlStream is built on it (Publisher batches
// its messages into requests of its own, see publisher.go).
type muxStream[Req, Resp, T any] struct {
	stream grpc.BidiStreamingClient[Req, Resp]
	cancel context.CancelFunc

	sendMu sync.Mutex // orders id assignment and sends
	next   uint64
	closed bool

	inflight *inflight[T]
	recvDone chan struct{}
	recvErr  error // why the stream ended; read after recvDone
}

// openMux opens a stream with open and starts its receive loop. decode turns a
// response into the id it answers and its result; ended is the message of the
// UNAVAILABLE error that fails the requests still waiting when the server ends
// the stream normally. The stream lives until close is called or ctx is
// canceled.
func openMux[Req, Resp, T any](
	ctx context.Context,
	open func(context.Context, ...grpc.CallOption) (grpc.BidiStreamingClient[Req, Resp], error),
	decode func(*Resp) (uint64, T, error),
	ended string,
) (*muxStream[Req, Resp, T], error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := open(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	m := &muxStream[Req, Resp, T]{
		stream:   stream,
		cancel:   cancel,
		inflight: newInflight[T](),
		recvDone: make(chan struct{}),
	}
	go m.receive(decode, ended)
	return m, nil
}

func (m *muxStream[Req, Resp, T]) receive(decode func(*Resp) (uint64, T, error), ended string) {
	defer close(m.recvDone)
	for {
		resp, err := m.stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				// The server ended the stream normally (after CloseSend);
				// anything still waiting will never get its answer.
				m.inflight.close(status.Error(codes.Unavailable, ended))
			} else {
				m.inflight.close(err)
				m.recvErr = err
			}
			return
		}
		id, v, resErr := decode(resp)
		m.inflight.resolve(id, v, resErr)
	}
}

// send gives the next request id to build and sends the request it returns,
// registered first so that even a fast response finds it. It fails with
// [ErrClosed] after close, and with the stream's error once the stream is over.
func (m *muxStream[Req, Resp, T]) send(build func(id uint64) *Req) (*pending[T], error) {
	m.sendMu.Lock()
	defer m.sendMu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	m.next++
	id := m.next
	pend, err := m.inflight.add(id)
	if err != nil {
		return nil, err
	}
	if err := m.stream.Send(build(id)); err != nil {
		// Send reports io.EOF when the stream broke; the receiver then gets the
		// real status from Recv and fails every waiting request with it.
		if !errors.Is(err, io.EOF) {
			var zero T
			m.inflight.resolve(id, zero, err)
		}
	}
	return pend, nil
}

// close stops sending, waits for the responses to the requests already sent,
// and ends the stream. It returns the error that broke the stream, if one did,
// and nil when called again.
func (m *muxStream[Req, Resp, T]) close() error {
	m.sendMu.Lock()
	already := m.closed
	m.closed = true
	if !already {
		_ = m.stream.CloseSend()
	}
	m.sendMu.Unlock()

	<-m.recvDone
	m.cancel()
	if already {
		return nil
	}
	return m.recvErr
}
