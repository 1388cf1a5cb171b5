package herald_test

// An in-process stand-in for the engine's gRPC API, for checking the SDK's own
// logic (stream multiplexing, paging, reconnects) independently of the engine.

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
	heraldv1 "github.com/heraldrt/herald/sdk-go/gen/herald/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

type fakeHerald struct {
	heraldv1.UnimplementedHeraldServer

	mu       sync.Mutex
	fail     map[string]int // method -> how many more calls answer UNAVAILABLE
	calls    map[string]int // method -> calls so far
	seqs     map[string]uint64
	lastMD   metadata.MD
	members  []*heraldv1.Member
	watches  int
	watchFns []func(*heraldv1.WatchPresenceRequest, grpc.ServerStreamingServer[heraldv1.PresenceEvent]) error
}

func newFakeHerald() *fakeHerald {
	return &fakeHerald{seqs: map[string]uint64{}, fail: map[string]int{}, calls: map[string]int{}}
}

// called counts a call and reports the injected failure, if any is left.
func (f *fakeHerald) called(method string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[method]++
	if f.fail[method] > 0 {
		f.fail[method]--
		return status.Error(codes.Unavailable, "injected failure")
	}
	return nil
}

func (f *fakeHerald) callCount(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

func (f *fakeHerald) Info(context.Context, *heraldv1.InfoRequest) (*heraldv1.InfoResponse, error) {
	if err := f.called("Info"); err != nil {
		return nil, err
	}
	return &heraldv1.InfoResponse{NodeId: "fake", Version: "0.0.0", UptimeSeconds: 3}, nil
}

func badTopic(topic string) bool {
	return topic == "" || strings.Contains(topic, "::") || strings.ContainsAny(topic, " .*>")
}

func (f *fakeHerald) publish(req *heraldv1.PublishRequest) (*heraldv1.PublishResponse, error) {
	if badTopic(req.GetTopic()) {
		return nil, status.Errorf(codes.InvalidArgument, "topic %q: invalid", req.GetTopic())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seqs[req.GetTopic()]++
	return &heraldv1.PublishResponse{Sequence: f.seqs[req.GetTopic()]}, nil
}

func (f *fakeHerald) Publish(ctx context.Context, req *heraldv1.PublishRequest) (*heraldv1.PublishResponse, error) {
	if err := f.called("Publish"); err != nil {
		return nil, err
	}
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.lastMD = md
	f.mu.Unlock()
	return f.publish(req)
}

func (f *fakeHerald) PublishStream(stream grpc.BidiStreamingServer[heraldv1.PublishStreamRequest, heraldv1.PublishStreamResponse]) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		resp := &heraldv1.PublishStreamResponse{ClientSeq: req.GetClientSeq()}
		if ack, err := f.publish(req.GetMessage()); err != nil {
			st := status.Convert(err)
			resp.Result = &heraldv1.PublishStreamResponse_Error{Error: &heraldv1.Error{Code: int32(st.Code()), Message: st.Message()}}
		} else {
			resp.Result = &heraldv1.PublishStreamResponse_Ack{Ack: ack}
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

func (f *fakeHerald) Control(stream grpc.BidiStreamingServer[heraldv1.ControlRequest, heraldv1.ControlResponse]) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		resp := &heraldv1.ControlResponse{RequestId: req.GetRequestId()}
		notFound := &heraldv1.ControlResponse_Error{Error: &heraldv1.Error{Code: int32(codes.NotFound), Message: "unknown connection"}}
		switch c := req.GetCommand().(type) {
		case *heraldv1.ControlRequest_Subscribe:
			if c.Subscribe.GetTarget().GetConnectionId() == "c1" {
				resp.Result = &heraldv1.ControlResponse_Subscribe{Subscribe: &heraldv1.SubscribeResponse{Connections: 1}}
			} else {
				resp.Result = notFound
			}
		case *heraldv1.ControlRequest_Unsubscribe:
			resp.Result = &heraldv1.ControlResponse_Unsubscribe{Unsubscribe: &heraldv1.UnsubscribeResponse{Connections: 2}}
		case *heraldv1.ControlRequest_Disconnect:
			resp.Result = &heraldv1.ControlResponse_Disconnect{Disconnect: &heraldv1.DisconnectResponse{Connections: 3}}
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

func (f *fakeHerald) Presence(_ context.Context, req *heraldv1.PresenceRequest) (*heraldv1.PresenceResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	start := 0
	if req.GetCursor() != "" {
		n, err := strconv.Atoi(req.GetCursor())
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, "bad cursor")
		}
		start = n
	}
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = 1000
	}
	end := min(start+limit, len(f.members))
	resp := &heraldv1.PresenceResponse{Members: f.members[start:end]}
	if end < len(f.members) {
		resp.NextCursor = strconv.Itoa(end)
	}
	return resp, nil
}

// WatchPresence runs the next scripted behaviour; the last one repeats.
func (f *fakeHerald) WatchPresence(req *heraldv1.WatchPresenceRequest, stream grpc.ServerStreamingServer[heraldv1.PresenceEvent]) error {
	f.mu.Lock()
	i := min(f.watches, len(f.watchFns)-1)
	f.watches++
	fn := f.watchFns[i]
	f.mu.Unlock()
	return fn(req, stream)
}

// fakeEngine serves a fakeHerald on a loopback port that survives restarts.
type fakeEngine struct {
	t    *testing.T
	svc  *fakeHerald
	addr string
	srv  *grpc.Server
}

func startFake(t *testing.T, svc *fakeHerald) *fakeEngine {
	t.Helper()
	fe := &fakeEngine{t: t, svc: svc, addr: "127.0.0.1:0"}
	fe.start()
	t.Cleanup(fe.stop)
	return fe
}

func (fe *fakeEngine) start() {
	fe.t.Helper()
	var lis net.Listener
	var err error
	for range 50 { // the port of a stopped server may take a moment to free
		if lis, err = net.Listen("tcp", fe.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		fe.t.Fatalf("listen: %v", err)
	}
	fe.addr = lis.Addr().String()
	srv := grpc.NewServer()
	heraldv1.RegisterHeraldServer(srv, fe.svc)
	fe.srv = srv
	go func() { _ = srv.Serve(lis) }()
}

func (fe *fakeEngine) stop() {
	if fe.srv != nil {
		fe.srv.Stop()
		fe.srv = nil
	}
}

func (fe *fakeEngine) client(opts ...herald.Option) *herald.Client {
	fe.t.Helper()
	c, err := herald.NewClient(fe.addr, opts...)
	if err != nil {
		fe.t.Fatalf("NewClient: %v", err)
	}
	fe.t.Cleanup(func() { _ = c.Close() })
	return c
}
