// Command ticker is a Herald producer that publishes a simulated price tick as
// JSON to a topic (broadcast:global by default) every 100 ms, until it is
// interrupted.
//
//	go run ./ticker -addr 127.0.0.1:50051
//
// A WebSocket client subscribed to the topic receives frames such as
//
//	{"type":"message","topic":"broadcast:global","seq":7,"data":{"symbol":"EUR-USD","price":1.08412,"ts":1764074000123}}
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"syscall"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
)

// Tick is one price update.
type Tick struct {
	Symbol string  `json:"symbol"`
	Price  float64 `json:"price"`
	TS     int64   `json:"ts"` // milliseconds since the Unix epoch
}

func main() {
	addr := flag.String("addr", envOr("HERALD_GRPC_ADDR", "127.0.0.1:50051"), "engine gRPC address")
	topic := flag.String("topic", "broadcast:global", "topic to publish to")
	symbol := flag.String("symbol", "EUR-USD", "instrument name in the ticks")
	interval := flag.Duration("interval", 100*time.Millisecond, "time between ticks")
	count := flag.Int("count", 0, "stop after this many ticks (0: run until interrupted)")
	apiKey := flag.String("api-key", os.Getenv("HERALD_API_KEY"), "API key sent with every call")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *addr, *topic, *symbol, *interval, *count, *apiKey); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, addr, topic, symbol string, interval time.Duration, count int, apiKey string) error {
	var opts []herald.Option
	if apiKey != "" {
		opts = append(opts, herald.WithAPIKey(apiKey))
	}
	c, err := herald.NewClient(addr, opts...)
	if err != nil {
		return err
	}
	defer c.Close()

	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	price := 1.08
	for sent := 0; count == 0 || sent < count; {
		select {
		case <-ctx.Done():
			return nil
		case now := <-ticker.C:
			price = math.Max(0.01, price*(1+rand.NormFloat64()*0.0005))
			tick := Tick{Symbol: symbol, Price: math.Round(price*1e5) / 1e5, TS: now.UnixMilli()}
			// A tick is worthless once stale: let slow connections drop it.
			callCtx, cancel := context.WithTimeout(ctx, interval*5)
			res, err := c.Publish(callCtx, topic, herald.JSON(tick), herald.WithTTL(time.Second))
			cancel()
			switch {
			case err == nil:
				sent++
				fmt.Printf("seq %d price %.5f\n", res.Sequence, price)
			case herald.IsUnavailable(err) || herald.IsDeadlineExceeded(err):
				log.Printf("engine unavailable, will retry on the next tick: %v", err)
			case ctx.Err() != nil:
				return nil
			default:
				return fmt.Errorf("publish: %w", err)
			}
		}
	}
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
