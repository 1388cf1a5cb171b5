package main

// Runs the ticker against a real engine ($HERALD_BIN, default the repository's
// target/release/herald) and checks that a WebSocket client subscribed to the
// topic receives JSON ticks.

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	herald "github.com/heraldrt/herald/sdk-go"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startEngine(t *testing.T) (wsAddr, grpcAddr string) {
	t.Helper()
	bin := os.Getenv("HERALD_BIN")
	if bin == "" {
		bin = filepath.Join("..", "..", "..", "target", "release", "herald")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("no engine binary at %s: build it with `cargo build --release -p herald` or set HERALD_BIN", bin)
	}
	wsAddr, grpcAddr = freeAddr(t), freeAddr(t)
	cmd := exec.Command(bin, "--ws-addr", wsAddr, "--grpc-addr", grpcAddr, "--shutdown-timeout", "2s")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	c, err := herald.NewClient(grpcAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for deadline := time.Now().Add(30 * time.Second); ; {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		st, err := c.Health(ctx)
		cancel()
		if err == nil && st == herald.HealthServing {
			return wsAddr, grpcAddr
		}
		if time.Now().After(deadline) {
			t.Fatalf("engine not serving: %v %v", st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestTickerPublishesJSONTicks(t *testing.T) {
	wsAddr, grpcAddr := startEngine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	ws, _, err := websocket.Dial(ctx, "ws://"+wsAddr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	read := func() map[string]any {
		t.Helper()
		_, data, err := ws.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var f map[string]any
		if err := json.Unmarshal(data, &f); err != nil {
			t.Fatalf("frame %s: %v", data, err)
		}
		return f
	}
	if f := read(); f["type"] != "connected" {
		t.Fatalf("first frame %v", f)
	}
	if err := ws.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","id":1,"topics":["broadcast:global"]}`)); err != nil {
		t.Fatal(err)
	}
	if f := read(); f["type"] != "subscribed" {
		t.Fatalf("subscribe reply %v", f)
	}

	if err := run(ctx, grpcAddr, "broadcast:global", "EUR-USD", 20*time.Millisecond, 3, ""); err != nil {
		t.Fatalf("run: %v", err)
	}
	for want := 1.0; want <= 3; want++ {
		f := read()
		if f["type"] != "message" || f["topic"] != "broadcast:global" || f["seq"] != want {
			t.Fatalf("frame %v, want message %v on broadcast:global", f, want)
		}
		tick, ok := f["data"].(map[string]any)
		if !ok || tick["symbol"] != "EUR-USD" {
			t.Fatalf("tick %v, want a JSON object for EUR-USD", f["data"])
		}
		if p, ok := tick["price"].(float64); !ok || p <= 0 {
			t.Fatalf("price %v", tick["price"])
		}
		if ts, ok := tick["ts"].(float64); !ok || ts <= 0 {
			t.Fatalf("ts %v", tick["ts"])
		}
	}
}
