package herald

import (
	"context"
	"iter"

	heraldv1 "github.com/heraldrt/herald/sdk-go/gen/herald/v1"
)

// Member is one connection in a topic.
type Member struct {
	// ConnectionID is the connection's id, usable with [Conn].
	ConnectionID string
	// UserID is the user the connection belongs to; empty for an anonymous one.
	UserID string
	// Info is the client info given at connect time, as JSON text; empty if none.
	Info string
}

func memberFromProto(m *heraldv1.Member) Member {
	return Member{ConnectionID: m.GetConnectionId(), UserID: m.GetUserId(), Info: m.GetInfo()}
}

// PresenceOption adjusts a [Client.Presence] listing.
type PresenceOption func(*presenceOptions)

type presenceOptions struct {
	pageSize uint32
}

// WithPageSize sets how many members each request fetches: 1 to 10000. Without
// it the engine's default (1000) is used.
func WithPageSize(n int) PresenceOption {
	return func(o *presenceOptions) { o.pageSize = uint32(max(0, min(n, 10000))) }
}

// Presence lists the members of a topic (its subscribed connections), fetching
// page after page as the iteration goes on. An error ends the iteration after
// being yielded once, with a zero Member:
//
//	for m, err := range c.Presence(ctx, "room:general") {
//		if err != nil {
//			return err
//		}
//		fmt.Println(m.ConnectionID, m.UserID)
//	}
//
// Members that join or leave while the listing runs may or may not be included;
// use [Client.WatchPresence] for a consistent live view.
func (c *Client) Presence(ctx context.Context, topic string, opts ...PresenceOption) iter.Seq2[Member, error] {
	var o presenceOptions
	for _, opt := range opts {
		opt(&o)
	}
	return func(yield func(Member, error) bool) {
		cursor := ""
		for {
			resp, err := c.rpc.Presence(ctx, &heraldv1.PresenceRequest{Topic: topic, Limit: o.pageSize, Cursor: cursor})
			if err != nil {
				yield(Member{}, err)
				return
			}
			for _, m := range resp.GetMembers() {
				if !yield(memberFromProto(m), nil) {
					return
				}
			}
			cursor = resp.GetNextCursor()
			if cursor == "" {
				return
			}
		}
	}
}

// TopicStats counts the connections and users in a topic.
type TopicStats struct {
	// Connections is the number of connections subscribed to the topic.
	Connections uint64
	// Users is the number of distinct non-empty user ids among them.
	Users uint64
}

// PresenceStats returns how many connections and distinct users a topic has,
// answered by the engine in constant time.
func (c *Client) PresenceStats(ctx context.Context, topic string) (TopicStats, error) {
	r, err := c.rpc.PresenceStats(ctx, &heraldv1.PresenceStatsRequest{Topic: topic})
	if err != nil {
		return TopicStats{}, err
	}
	return TopicStats{Connections: r.GetConnections(), Users: r.GetUsers()}, nil
}
