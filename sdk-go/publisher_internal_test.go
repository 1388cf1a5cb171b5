package herald

// The publisher's request sizing, without an engine.

import (
	"testing"

	heraldv1 "github.com/heraldrt/herald/sdk-go/gen/herald/v1"
	"google.golang.org/protobuf/proto"
)

func queued(sizes ...int) []queuedPublish {
	q := make([]queuedPublish, len(sizes))
	for i, s := range sizes {
		q[i].size = s
	}
	return q
}

func TestStreamBatchLen(t *testing.T) {
	const c = maxStreamBatchBytes
	many := make([]int, 5000)
	for i := range many {
		many[i] = 1
	}
	for _, tc := range []struct {
		sizes []int
		want  int
	}{
		{[]int{2 * c, 1}, 1},                          // the first always goes, however large
		{[]int{c / 4, c / 4, c / 4, c / 4, c / 4}, 4}, // then as many as fit in the byte cap
		{[]int{c / 4, c / 4, c, 1}, 2},                // and never one past a message that does not fit
		{[]int{1, 2, 3}, 3},
		{many, maxStreamBatch}, // and in the count cap
	} {
		if got := streamBatchLen(queued(tc.sizes...)); got != tc.want {
			t.Errorf("streamBatchLen(%d sizes, first %v) = %d, want %d", len(tc.sizes), tc.sizes[:min(3, len(tc.sizes))], got, tc.want)
		}
	}
}

func TestStreamMessageSizeIsItsSizeInARequest(t *testing.T) {
	for _, msg := range []*heraldv1.PublishRequest{
		{Topic: "t"},
		{Topic: "room:a", Data: make([]byte, 60<<10), ContentType: "application/octet-stream"},
		{Topic: "room:a", Data: []byte(`{"k":1}`), ContentType: "application/json", IdempotencyKey: proto.String("key-1"), TtlMs: proto.Uint32(3600000)},
	} {
		empty := proto.Size(&heraldv1.PublishStreamRequest{ClientSeq: 1})
		with := proto.Size(&heraldv1.PublishStreamRequest{ClientSeq: 1, More: []*heraldv1.PublishRequest{msg}})
		if got, want := streamMessageSize(msg), with-empty; got != want {
			t.Errorf("streamMessageSize = %d, want %d", got, want)
		}
	}
}
