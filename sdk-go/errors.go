package herald

import (
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrClosed is returned by a [Publisher] or [ControlStream] used after Close, or
// after its stream ended.
var ErrClosed = errors.New("herald: stream closed")

// Code returns the gRPC status code of err: codes.OK for nil, codes.Unknown for
// an error that carries no status. It looks through wrapped errors.
func Code(err error) codes.Code {
	return status.Code(err)
}

// IsInvalidArgument reports whether err is INVALID_ARGUMENT: a bad topic, an
// oversize payload, invalid JSON or text, a bad close code, ...
func IsInvalidArgument(err error) bool { return Code(err) == codes.InvalidArgument }

// IsNotFound reports whether err is NOT_FOUND: an unknown connection or user.
func IsNotFound(err error) bool { return Code(err) == codes.NotFound }

// IsFailedPrecondition reports whether err is FAILED_PRECONDITION: a subscribe
// that would exceed a connection's subscription limit, or a watch of an exact
// topic whose presence the engine does not track.
func IsFailedPrecondition(err error) bool { return Code(err) == codes.FailedPrecondition }

// IsUnavailable reports whether err is UNAVAILABLE: the engine cannot be reached
// or is shutting down. Such calls may be retried.
func IsUnavailable(err error) bool { return Code(err) == codes.Unavailable }

// IsUnimplemented reports whether err is UNIMPLEMENTED: this engine version does
// not implement the call yet.
func IsUnimplemented(err error) bool { return Code(err) == codes.Unimplemented }

// IsResourceExhausted reports whether err is RESOURCE_EXHAUSTED: a limit was hit.
func IsResourceExhausted(err error) bool { return Code(err) == codes.ResourceExhausted }

// IsDeadlineExceeded reports whether err is DEADLINE_EXCEEDED.
func IsDeadlineExceeded(err error) bool { return Code(err) == codes.DeadlineExceeded }

// IsCanceled reports whether err is CANCELED, for example because the call's
// context was canceled or the client closed.
func IsCanceled(err error) bool { return Code(err) == codes.Canceled }

// itemError turns a per-item error from a stream into a status error, so that
// the helpers above work on it too.
func itemError(code int32, msg string) error {
	c := codes.Code(code)
	if c == codes.OK {
		c = codes.Unknown
	}
	return status.Error(c, msg)
}
