package herald_test

import (
	"errors"
	"fmt"
	"testing"

	herald "github.com/heraldrt/herald/sdk-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The error helpers on constructed statuses; the errors the engine really
// returns are checked by the tests of each call.
func TestErrorHelpers(t *testing.T) {
	err := fmt.Errorf("wrapped: %w", status.Error(codes.NotFound, "no such connection"))
	if !herald.IsNotFound(err) || herald.Code(err) != codes.NotFound || herald.IsUnavailable(err) {
		t.Fatalf("helpers on a wrapped NOT_FOUND: code %v", herald.Code(err))
	}
	checks := map[codes.Code]func(error) bool{
		codes.InvalidArgument:    herald.IsInvalidArgument,
		codes.FailedPrecondition: herald.IsFailedPrecondition,
		codes.Unavailable:        herald.IsUnavailable,
		codes.Unimplemented:      herald.IsUnimplemented,
		codes.ResourceExhausted:  herald.IsResourceExhausted,
		codes.DeadlineExceeded:   herald.IsDeadlineExceeded,
		codes.Canceled:           herald.IsCanceled,
	}
	for code, is := range checks {
		if !is(status.Error(code, "x")) || is(status.Error(codes.Internal, "x")) || is(nil) {
			t.Errorf("helper for %v", code)
		}
	}
	if herald.Code(nil) != codes.OK || herald.Code(errors.New("plain")) != codes.Unknown {
		t.Fatal("Code on nil or a plain error")
	}
}
