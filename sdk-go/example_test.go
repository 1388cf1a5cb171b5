package herald_test

import (
	"context"
	"fmt"
	"log"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
)

func ExampleNewClient() {
	c, err := herald.NewClient("127.0.0.1:50051", herald.WithAPIKey("KEY"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
}

func ExampleClient_Publish() {
	ctx := context.Background()
	c, err := herald.NewClient("127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	tick := map[string]any{"symbol": "EUR-USD", "price": 1.0841}
	res, err := c.Publish(ctx, "prices:EUR-USD", herald.JSON(tick), herald.WithTTL(time.Second))
	switch {
	case herald.IsInvalidArgument(err):
		log.Printf("refused: %v", err)
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Println("sequence", res.Sequence)
	}
}

func ExamplePublisher() {
	ctx := context.Background()
	c, err := herald.NewClient("127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	pub, err := c.NewPublisher(ctx)
	if err != nil {
		log.Fatal(err)
	}
	var pending []*herald.PendingPublish
	for i := range 10 {
		pending = append(pending, pub.PublishAsync(ctx, "room:general", herald.Text(fmt.Sprint("message ", i))))
	}
	for i, pp := range pending {
		res, err := pp.Wait(ctx)
		fmt.Println(i, res.Sequence, err)
	}
	if err := pub.Close(); err != nil {
		log.Fatal(err)
	}
}

func ExampleClient_Presence() {
	ctx := context.Background()
	c, err := herald.NewClient("127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	for m, err := range c.Presence(ctx, "room:general") {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(m.ConnectionID, m.UserID)
	}
}

func ExampleClient_WatchPresence() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := herald.NewClient("127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	members := map[string]herald.Member{} // by topic and connection
	for ev, err := range c.WatchPresence(ctx, []string{"room:*"}) {
		if err != nil {
			log.Fatal(err)
		}
		key := ev.Topic + " " + ev.Member.ConnectionID
		switch ev.Kind {
		case herald.EventResync:
			clear(members) // a fresh snapshot follows (snapshots are on by default)
		case herald.EventSnapshot, herald.EventJoin:
			members[key] = ev.Member
		case herald.EventLeave:
			delete(members, key)
		}
	}
}
