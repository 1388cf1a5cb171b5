// Package herald is the Go SDK for Herald, a real-time broadcast engine.
//
// Backends use it to drive an engine node over gRPC: publish messages to topics,
// move WebSocket connections in and out of topics, disconnect them, and watch who
// is present. WebSocket clients never use this package; they speak the JSON
// protocol described in docs/protocol.md of the Herald repository.
//
// A minimal producer:
//
//	c, err := herald.NewClient("127.0.0.1:50051")
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//
//	res, err := c.Publish(ctx, "prices:EUR-USD", herald.JSON(map[string]any{"price": 101.5}))
//
// Every call takes a context first. Errors returned by calls keep their gRPC
// status, so [Code], [IsNotFound], [IsInvalidArgument] and friends (or
// google.golang.org/grpc/status directly) tell what went wrong.
//
// The generated protobuf and gRPC code lives in the package
// github.com/heraldrt/herald/sdk-go/gen/herald/v1; [Client.Raw] gives access to
// the raw stub for anything this package does not wrap.
package herald
