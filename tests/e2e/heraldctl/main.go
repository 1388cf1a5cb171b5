// Command heraldctl drives a Herald engine through the Go SDK from the command
// line. The end-to-end tests use it so that the Go SDK, the Python SDK and
// WebSocket clients act on the same engine in one scenario.
//
//	heraldctl -addr 127.0.0.1:50051 publish -topic room:a -json '{"n":1}'
//	heraldctl -addr 127.0.0.1:50051 subscribe -user alice room:a room:b
//	heraldctl -addr 127.0.0.1:50051 disconnect -user alice -code 4321 -reason bye -reconnect
//	heraldctl -addr 127.0.0.1:50051 watch -n 5 'room:*'
//	heraldctl -addr 127.0.0.1:50051 stats room:a
//
// Every command prints one JSON object per line on stdout.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "engine gRPC address")
	timeout := flag.Duration("timeout", 10*time.Second, "give up after this long")
	flag.Parse()
	if flag.NArg() < 1 {
		fail(fmt.Errorf("usage: heraldctl [-addr A] publish|subscribe|unsubscribe|disconnect|watch|stats ..."))
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	c, err := herald.NewClient(*addr)
	if err != nil {
		fail(err)
	}
	defer c.Close()
	if err := run(ctx, c, flag.Arg(0), flag.Args()[1:]); err != nil {
		fail(err)
	}
}

func run(ctx context.Context, c *herald.Client, cmd string, args []string) error {
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	switch cmd {
	case "publish":
		topic := fs.String("topic", "", "topic")
		raw := fs.String("json", "", "JSON payload")
		_ = fs.Parse(args)
		res, err := c.Publish(ctx, *topic, herald.RawJSON([]byte(*raw)))
		if err != nil {
			return err
		}
		return emit(map[string]any{"sequence": res.Sequence})
	case "subscribe", "unsubscribe":
		target := targetFlags(fs)
		_ = fs.Parse(args)
		op := c.Subscribe
		if cmd == "unsubscribe" {
			op = c.Unsubscribe
		}
		n, err := op(ctx, target(), fs.Args()...)
		if err != nil {
			return err
		}
		return emit(map[string]any{"connections": n})
	case "disconnect":
		target := targetFlags(fs)
		code := fs.Int("code", 0, "close code")
		reason := fs.String("reason", "", "reason")
		reconnect := fs.Bool("reconnect", false, "tell the client to reconnect")
		_ = fs.Parse(args)
		n, err := c.Disconnect(ctx, target(), herald.WithCloseCode(uint32(*code)), herald.WithReason(*reason), herald.WithReconnect(*reconnect))
		if err != nil {
			return err
		}
		return emit(map[string]any{"connections": n})
	case "watch":
		snapshot := fs.Bool("snapshot", true, "send the current members first (-snapshot=false: live events only)")
		count := fs.Int("n", 1, "stop after this many events")
		_ = fs.Parse(args)
		// A line on stderr once the watch is open, so callers know when to act.
		seen := 0
		fmt.Fprintln(os.Stderr, "watching")
		for ev, err := range c.WatchPresence(ctx, fs.Args(), herald.WithSnapshot(*snapshot)) {
			if err != nil {
				return err
			}
			if err := emit(map[string]any{
				"kind": ev.Kind.String(), "topic": ev.Topic, "conn": ev.Member.ConnectionID,
				"user": ev.Member.UserID, "node": ev.NodeID,
			}); err != nil {
				return err
			}
			if seen++; seen >= *count {
				return nil
			}
		}
		return ctx.Err()
	case "stats":
		_ = fs.Parse(args)
		s, err := c.PresenceStats(ctx, fs.Arg(0))
		if err != nil {
			return err
		}
		return emit(map[string]any{"connections": s.Connections, "users": s.Users})
	default:
		return fmt.Errorf("unknown command %q", cmd)
	}
}

func targetFlags(fs *flag.FlagSet) func() herald.Target {
	user := fs.String("user", "", "every connection of this user")
	conn := fs.String("conn", "", "this connection")
	return func() herald.Target {
		if *user != "" {
			return herald.User(*user)
		}
		return herald.Conn(*conn)
	}
}

func emit(v map[string]any) error {
	line, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Println(string(line))
	return err
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "heraldctl:", err)
	os.Exit(1)
}
