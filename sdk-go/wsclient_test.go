package herald_test

// A real WebSocket client (docs/protocol.md) for checking what WebSocket clients
// receive from what the SDK does.

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// frame is any server frame; which fields are set depends on Type.
type frame struct {
	Type        string          `json:"type"`
	ID          *uint64         `json:"id"`
	ConnID      string          `json:"conn_id"`
	Topic       string          `json:"topic"`
	Seq         uint64          `json:"seq"`
	Epoch       string          `json:"epoch"`
	Data        json.RawMessage `json:"data"`
	Text        *string         `json:"text"`
	B64         *string         `json:"b64"`
	ContentType string          `json:"content_type"`
	Topics      []string        `json:"topics"`
	Server      bool            `json:"server"`
	Recovered   map[string]bool `json:"recovered"`
	Positions   map[string]struct {
		Seq   uint64 `json:"seq"`
		Epoch string `json:"epoch"`
	} `json:"positions"`
	Code      json.RawMessage `json:"code"` // a number in disconnect, a string in error
	Reason    string          `json:"reason"`
	Reconnect bool            `json:"reconnect"`
	Message   string          `json:"message"`
	raw       string
}

type wsClient struct {
	t       *testing.T
	conn    *websocket.Conn
	connID  string
	frames  chan frame
	readErr chan error
	cancel  context.CancelFunc

	mu      sync.Mutex
	nextID  uint64
	backlog []frame
}

// dialWS connects as user (empty: anonymous), reads the connected frame and
// keeps reading in the background.
func dialWS(t *testing.T, e *engine, user string) *wsClient {
	t.Helper()
	q := url.Values{}
	if user != "" {
		q.Set("user", user)
	}
	return dialWSQuery(t, e, q)
}

// dialWSQuery is dialWS with any query parameters (user, info).
func dialWSQuery(t *testing.T, e *engine, q url.Values) *wsClient {
	t.Helper()
	u := url.URL{Scheme: "ws", Host: e.wsAddr, Path: "/ws", RawQuery: q.Encode()}
	var opts *websocket.DialOptions
	if e.tls != nil {
		u.Scheme = "wss"
		opts = &websocket.DialOptions{HTTPClient: &http.Client{
			Transport: &http.Transport{TLSClientConfig: e.tls.Clone()},
		}}
	}
	ctx, cancel := context.WithCancel(context.Background())
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	defer dcancel()
	conn, _, err := websocket.Dial(dctx, u.String(), opts)
	if err != nil {
		cancel()
		t.Fatalf("dial %s: %v", u.String(), err)
	}
	conn.SetReadLimit(1 << 20)
	c := &wsClient{t: t, conn: conn, frames: make(chan frame, 4096), readErr: make(chan error, 1), cancel: cancel}
	go c.readLoop(ctx)
	t.Cleanup(c.close)

	f := c.next(5 * time.Second)
	if f.Type != "connected" || f.ConnID == "" {
		t.Fatalf("first frame %s, want connected with a conn_id", f.raw)
	}
	c.connID = f.ConnID
	return c
}

func (c *wsClient) readLoop(ctx context.Context) {
	for {
		typ, data, err := c.conn.Read(ctx)
		if err != nil {
			c.readErr <- err
			close(c.frames)
			return
		}
		if typ != websocket.MessageText {
			c.readErr <- errBinaryFrame
			close(c.frames)
			return
		}
		var f frame
		if err := json.Unmarshal(data, &f); err != nil {
			f = frame{Type: "<invalid json>"}
		}
		f.raw = string(data)
		c.frames <- f
	}
}

type wsError string

func (e wsError) Error() string { return string(e) }

const errBinaryFrame = wsError("server sent a binary frame")

func (c *wsClient) close() {
	_ = c.conn.Close(websocket.StatusNormalClosure, "")
	c.cancel()
}

// next returns the next frame (backlog first), failing the test on timeout or
// a closed connection.
func (c *wsClient) next(timeout time.Duration) frame {
	c.t.Helper()
	c.mu.Lock()
	if len(c.backlog) > 0 {
		f := c.backlog[0]
		c.backlog = c.backlog[1:]
		c.mu.Unlock()
		return f
	}
	c.mu.Unlock()
	select {
	case f, ok := <-c.frames:
		if !ok {
			c.t.Fatalf("connection %s closed: %v", c.connID, <-c.readErr)
		}
		return f
	case <-time.After(timeout):
		c.t.Fatalf("connection %s: no frame within %v", c.connID, timeout)
	}
	return frame{}
}

// expectNone fails if a frame arrives within d.
func (c *wsClient) expectNone(d time.Duration) {
	c.t.Helper()
	c.mu.Lock()
	if len(c.backlog) > 0 {
		c.t.Fatalf("unexpected frame %s", c.backlog[0].raw)
	}
	c.mu.Unlock()
	select {
	case f, ok := <-c.frames:
		if ok {
			c.t.Fatalf("unexpected frame %s", f.raw)
		}
	case <-time.After(d):
	}
}

// waitFor returns the first frame matching match; frames before it are kept
// for later calls to next.
func (c *wsClient) waitFor(timeout time.Duration, match func(frame) bool) frame {
	c.t.Helper()
	c.mu.Lock()
	for i, f := range c.backlog {
		if match(f) {
			c.backlog = append(c.backlog[:i:i], c.backlog[i+1:]...)
			c.mu.Unlock()
			return f
		}
	}
	c.mu.Unlock()
	deadline := time.After(timeout)
	for {
		select {
		case f, ok := <-c.frames:
			if !ok {
				c.t.Fatalf("connection %s closed: %v", c.connID, <-c.readErr)
			}
			if match(f) {
				return f
			}
			c.mu.Lock()
			c.backlog = append(c.backlog, f)
			c.mu.Unlock()
		case <-deadline:
			c.t.Fatalf("connection %s: no matching frame within %v", c.connID, timeout)
			return frame{}
		}
	}
}

func (c *wsClient) send(v any) {
	c.t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, data); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// closed waits for the server to close the connection and returns the read
// error, which carries the close status (websocket.CloseStatus).
func (c *wsClient) closed(timeout time.Duration) error {
	c.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case f, ok := <-c.frames:
			if !ok {
				return <-c.readErr
			}
			c.mu.Lock()
			c.backlog = append(c.backlog, f)
			c.mu.Unlock()
		case <-deadline:
			c.t.Fatalf("connection %s still open after %v", c.connID, timeout)
			return nil
		}
	}
}

// subscribe subscribes and waits for the reply.
func (c *wsClient) subscribe(topics ...string) {
	c.t.Helper()
	c.mu.Lock()
	c.nextID++
	id := c.nextID
	c.mu.Unlock()
	c.send(map[string]any{"type": "subscribe", "id": id, "topics": topics})
	f := c.waitFor(5*time.Second, func(f frame) bool { return f.ID != nil && *f.ID == id })
	if f.Type != "subscribed" {
		c.t.Fatalf("subscribe %v: %s", topics, f.raw)
	}
}

// unsubscribe unsubscribes and waits for the reply.
func (c *wsClient) unsubscribe(topics ...string) {
	c.t.Helper()
	c.mu.Lock()
	c.nextID++
	id := c.nextID
	c.mu.Unlock()
	c.send(map[string]any{"type": "unsubscribe", "id": id, "topics": topics})
	f := c.waitFor(5*time.Second, func(f frame) bool { return f.ID != nil && *f.ID == id })
	if f.Type != "unsubscribed" {
		c.t.Fatalf("unsubscribe %v: %s", topics, f.raw)
	}
}

// message waits for the next message frame.
func (c *wsClient) message() frame {
	c.t.Helper()
	return c.waitFor(5*time.Second, func(f frame) bool { return f.Type == "message" })
}

// dialUser opens a raw WebSocket connection as user, closed when the test
// ends.
func dialUser(ctx context.Context, t *testing.T, e *engine, user string) *websocket.Conn {
	t.Helper()
	u := url.URL{Scheme: "ws", Host: e.wsAddr, Path: "/ws", RawQuery: url.Values{"user": {user}}.Encode()}
	conn, _, err := websocket.Dial(ctx, u.String(), nil)
	if err != nil {
		t.Fatalf("dial %s: %v", u.String(), err)
	}
	t.Cleanup(func() { _ = conn.CloseNow() })
	return conn
}

// dialIdle connects, reads the connected frame and then never reads again, so
// it does not answer the server's close handshake either.
func dialIdle(t *testing.T, e *engine, user string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn := dialUser(ctx, t, e, user)
	_, data, err := conn.Read(ctx)
	if err != nil {
		t.Fatalf("reading the connected frame: %v", err)
	}
	var f frame
	if err := json.Unmarshal(data, &f); err != nil || f.Type != "connected" {
		t.Fatalf("first frame %s, want connected", data)
	}
	return conn
}
