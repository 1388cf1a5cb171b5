package herald

import "sync"

// pending is the outcome of one request on a multiplexed stream, filled in once.
type pending[T any] struct {
	done chan struct{}
	val  T
	err  error
}

func newPending[T any]() *pending[T] { return &pending[T]{done: make(chan struct{})} }

func (p *pending[T]) finish(v T, err error) {
	p.val, p.err = v, err
	close(p.done)
}

// inflight matches the responses of a bidirectional stream to the requests
// waiting for them, by the id each request carried.
type inflight[T any] struct {
	mu  sync.Mutex
	m   map[uint64]*pending[T]
	err error // set once the stream is over; no more requests are accepted
}

func newInflight[T any]() *inflight[T] {
	return &inflight[T]{m: make(map[uint64]*pending[T])}
}

// add registers a request before it is sent, so that even a fast response finds
// it. It fails once the stream is over.
func (f *inflight[T]) add(id uint64) (*pending[T], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	p := newPending[T]()
	f.m[id] = p
	return p, nil
}

// resolve completes the request with the given id; it reports false for an id
// nobody waits for.
func (f *inflight[T]) resolve(id uint64, v T, err error) bool {
	f.mu.Lock()
	p, ok := f.m[id]
	delete(f.m, id)
	f.mu.Unlock()
	if ok {
		p.finish(v, err)
	}
	return ok
}

// close ends the stream: every request still waiting fails with err, and so
// does every later add.
func (f *inflight[T]) close(err error) {
	f.mu.Lock()
	if f.err == nil {
		f.err = err
	}
	waiting := f.m
	f.m = make(map[uint64]*pending[T])
	f.mu.Unlock()
	var zero T
	for _, p := range waiting {
		p.finish(zero, err)
	}
}
