// Command herald-sdk-bench-go measures the Go SDK against a running engine and
// prints exactly one JSON line on stdout:
//
//	{"sdk":"go","mode":"unary","messages":N,"seconds":S,"per_s":R,"p50_us":X,"p99_us":Y,"errors":E}
//
// Modes:
//
//   - unary: sequential Client.Publish calls, one at a time; the latency is
//     each call's, from the call to its return.
//   - stream: one Publisher with up to --window messages queued or waiting
//     for their ack (herald.WithMaxInFlight; 4096 by default, as the Python
//     driver's); PublishAsync as fast as the Publisher takes messages. The
//     latency is from PublishAsync to the ack.
//
// messages counts the successful calls (acks); errors the failed ones;
// seconds runs from the first measured call to the last answer.
//
//	herald-sdk-bench-go --addr 127.0.0.1:50051 --mode unary --duration 5
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
)

// result is the one line printed.
type result struct {
	SDK      string  `json:"sdk"`
	Mode     string  `json:"mode"`
	Messages int     `json:"messages"`
	Seconds  float64 `json:"seconds"`
	PerS     float64 `json:"per_s"`
	P50us    float64 `json:"p50_us"`
	P99us    float64 `json:"p99_us"`
	Errors   int     `json:"errors"`
}

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "engine gRPC address")
	mode := flag.String("mode", "unary", "unary or stream")
	duration := flag.Float64("duration", 5, "seconds of measured publishing")
	topic := flag.String("topic", "bench:sdk", "topic to publish to")
	payloadBytes := flag.Int("payload-bytes", 64, "payload size in bytes (opaque bytes)")
	window := flag.Int("window", 4096, "stream: messages queued or waiting for their ack")
	flag.Parse()
	if flag.NArg() > 0 || *duration <= 0 || *payloadBytes < 0 || *window < 1 || (*mode != "unary" && *mode != "stream") {
		fmt.Fprintln(os.Stderr, "usage: herald-sdk-bench-go --addr HOST:PORT --mode unary|stream --duration SECONDS [--topic T] [--payload-bytes N] [--window N]")
		os.Exit(2)
	}
	res, err := run(*addr, *mode, time.Duration(*duration*float64(time.Second)), *topic, *payloadBytes, *window)
	if err != nil {
		fmt.Fprintln(os.Stderr, "herald-sdk-bench-go:", err)
		os.Exit(1)
	}
	line, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintln(os.Stderr, "herald-sdk-bench-go:", err)
		os.Exit(1)
	}
	fmt.Println(string(line))
}

func run(addr, mode string, duration time.Duration, topic string, payloadBytes, window int) (result, error) {
	c, err := herald.NewClient(addr)
	if err != nil {
		return result{}, err
	}
	defer c.Close()
	if err := waitServing(c, 10*time.Second); err != nil {
		return result{}, err
	}
	payload := herald.Bytes(make([]byte, payloadBytes))

	// Warm-up, not measured: the connection is made and the code paths are hot.
	ctx := context.Background()
	for range 200 {
		if _, err := c.Publish(ctx, topic, payload); err != nil {
			return result{}, fmt.Errorf("warm-up publish: %w", err)
		}
	}

	var (
		lat     []time.Duration
		errs    int
		elapsed time.Duration
	)
	switch mode {
	case "unary":
		lat, errs, elapsed = unary(ctx, c, topic, payload, duration)
	case "stream":
		lat, errs, elapsed, err = stream(ctx, c, topic, payload, duration, window)
		if err != nil {
			return result{}, err
		}
	}
	res := result{SDK: "go", Mode: mode, Messages: len(lat), Seconds: elapsed.Seconds(), Errors: errs}
	if elapsed > 0 {
		res.PerS = float64(len(lat)) / elapsed.Seconds()
	}
	slices.Sort(lat)
	res.P50us = quantileUs(lat, 0.50)
	res.P99us = quantileUs(lat, 0.99)
	return res, nil
}

func waitServing(c *herald.Client, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := c.Health(ctx)
		cancel()
		if err == nil && st == herald.HealthServing {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("engine not SERVING after %v: status %v, %v", timeout, st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// unary publishes one message at a time until duration has passed.
func unary(ctx context.Context, c *herald.Client, topic string, payload herald.Payload, duration time.Duration) ([]time.Duration, int, time.Duration) {
	lat := make([]time.Duration, 0, 1<<16)
	errs := 0
	start := time.Now()
	for time.Since(start) < duration {
		t0 := time.Now()
		_, err := c.Publish(ctx, topic, payload)
		d := time.Since(t0)
		if err != nil {
			errs++
			continue
		}
		lat = append(lat, d)
	}
	return lat, errs, time.Since(start)
}

// sent is one message waiting for its ack.
type sent struct {
	pp *herald.PendingPublish
	t0 time.Time
}

// stream publishes over one Publisher as fast as it takes messages until
// duration has passed, then waits for every ack.
func stream(ctx context.Context, c *herald.Client, topic string, payload herald.Payload, duration time.Duration, window int) ([]time.Duration, int, time.Duration, error) {
	pub, err := c.NewPublisher(ctx, herald.WithMaxInFlight(window))
	if err != nil {
		return nil, 0, 0, err
	}
	// Acks come in order: one collector waits for each message in turn.
	queue := make(chan sent, window)
	type collected struct {
		lat  []time.Duration
		errs int
		last time.Time
	}
	done := make(chan collected)
	go func() {
		var col collected
		col.lat = make([]time.Duration, 0, 1<<20)
		for s := range queue {
			<-s.pp.Done()
			now := time.Now()
			if _, err := s.pp.Result(); err != nil {
				col.errs++
			} else {
				col.lat = append(col.lat, now.Sub(s.t0))
			}
			col.last = now
		}
		done <- col
	}()

	start := time.Now()
	for time.Since(start) < duration {
		// The clock is checked for the end every 64 messages.
		for range 64 {
			t0 := time.Now()
			queue <- sent{pp: pub.PublishAsync(ctx, topic, payload), t0: t0}
		}
	}
	close(queue)
	col := <-done
	closeErr := pub.Close()
	if closeErr != nil && !errors.Is(closeErr, herald.ErrClosed) {
		return nil, 0, 0, fmt.Errorf("publisher: %w", closeErr)
	}
	elapsed := col.last.Sub(start)
	return col.lat, col.errs, elapsed, nil
}

func quantileUs(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q * float64(len(sorted)-1))
	return float64(sorted[i].Nanoseconds()) / 1e3
}
