// Command presence watches who is in a set of topics and prints the member
// count of each topic whenever it changes. It keeps an exact view: a snapshot
// first, then joins and leaves; after a RESYNC (the connection broke or the
// watcher fell behind) it drops the view and rebuilds it from a fresh snapshot.
//
//	go run ./presence -addr 127.0.0.1:50051 -topics 'room:*'
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	herald "github.com/heraldrt/herald/sdk-go"
)

func main() {
	addr := flag.String("addr", envOr("HERALD_GRPC_ADDR", "127.0.0.1:50051"), "engine gRPC address")
	topics := flag.String("topics", "room:>", "comma-separated topics and patterns to watch")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := herald.NewClient(*addr)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	v := newView()
	// A snapshot of the current members comes first (the default), then live
	// joins and leaves.
	for ev, err := range c.WatchPresence(ctx, strings.Split(*topics, ",")) {
		if err != nil {
			log.Fatal(err)
		}
		switch ev.Kind {
		case herald.EventResync:
			if ev.Cause != nil {
				log.Printf("connection lost (%v); reconnecting", ev.Cause)
			} else {
				log.Print("fell behind; starting over")
			}
			v = newView()
		case herald.EventSnapshot:
			v.add(ev.Topic, ev.Member)
		case herald.EventSnapshotEnd:
			v.synced = true
			v.print()
		case herald.EventJoin:
			v.add(ev.Topic, ev.Member)
			v.print()
		case herald.EventLeave:
			v.remove(ev.Topic, ev.Member)
			v.print()
		}
	}
}

// view is the members of each watched topic, by connection id.
type view struct {
	topics map[string]map[string]herald.Member
	synced bool // the snapshot is complete
}

func newView() *view { return &view{topics: map[string]map[string]herald.Member{}} }

func (v *view) add(topic string, m herald.Member) {
	if v.topics[topic] == nil {
		v.topics[topic] = map[string]herald.Member{}
	}
	v.topics[topic][m.ConnectionID] = m
}

func (v *view) remove(topic string, m herald.Member) {
	delete(v.topics[topic], m.ConnectionID)
	if len(v.topics[topic]) == 0 {
		delete(v.topics, topic)
	}
}

func (v *view) print() {
	if !v.synced {
		return
	}
	names := make([]string, 0, len(v.topics))
	for t := range v.topics {
		names = append(names, t)
	}
	sort.Strings(names)
	parts := make([]string, 0, len(names))
	for _, t := range names {
		parts = append(parts, fmt.Sprintf("%s=%d", t, len(v.topics[t])))
	}
	if len(parts) == 0 {
		fmt.Println("no members")
		return
	}
	fmt.Println(strings.Join(parts, " "))
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
