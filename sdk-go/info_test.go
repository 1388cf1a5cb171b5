package herald_test

import (
	"testing"

	herald "github.com/heraldrt/herald/sdk-go"
)

func TestInfo(t *testing.T) {
	e := needEngine(t)
	nodeLocal(t, "Info counts the connections, topics and deliveries of the node asked; the WebSocket client is on the other node")
	c := e.client(t)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "info")
	ws := dialWS(t, e, "ivan")
	ws.subscribe(topic)

	before, err := c.Info(ctx)
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	if before.NodeID == "" || before.Version == "" {
		t.Fatalf("Info without node id or version: %+v", before)
	}
	if before.Connections < 1 || before.Topics < 1 || before.Subscriptions < 1 {
		t.Fatalf("Info counts %+v, want at least the test's connection", before)
	}
	if _, err := c.Publish(ctx, topic, herald.Text("count me")); err != nil {
		t.Fatal(err)
	}
	ws.message()
	after, err := c.Info(ctx)
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	if after.NodeID != before.NodeID || after.Version != before.Version {
		t.Fatalf("identity changed: %+v -> %+v", before, after)
	}
	if after.MessagesPublished < before.MessagesPublished+1 || after.MessagesDelivered < before.MessagesDelivered+1 {
		t.Fatalf("counters did not grow: %+v -> %+v", before, after)
	}
	if after.Uptime < before.Uptime {
		t.Fatalf("uptime went back: %v -> %v", before.Uptime, after.Uptime)
	}
}
