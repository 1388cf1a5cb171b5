package herald

// Checks of the SDK's own arithmetic and metadata that need no engine.

import (
	"context"
	"encoding/json"
	"testing"
	"time"
)

func TestAPIKeyCredsMetadata(t *testing.T) {
	for _, secure := range []bool{false, true} {
		c := newAPIKeyCreds("k-123", secure)
		md, err := c.GetRequestMetadata(context.Background(), "https://127.0.0.1:50051/herald.v1.Herald/Publish")
		if err != nil {
			t.Fatalf("GetRequestMetadata: %v", err)
		}
		if len(md) != 1 || md["authorization"] != "Bearer k-123" {
			t.Fatalf("metadata = %v, want only authorization: Bearer k-123", md)
		}
		if c.RequireTransportSecurity() != secure {
			t.Fatalf("RequireTransportSecurity() = %v with secure = %v", c.RequireTransportSecurity(), secure)
		}
	}
}

func TestBackoffBounds(t *testing.T) {
	minB, maxB := 100*time.Millisecond, time.Second
	for n, want := range []time.Duration{100, 200, 400, 800, 1000, 1000, 1000} {
		want *= time.Millisecond
		for range 200 {
			if d := backoff(n, minB, maxB); d < want/2 || d > want {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", n, d, want/2, want)
			}
		}
	}
	if d := backoff(1000, minB, maxB); d < maxB/2 || d > maxB {
		t.Fatalf("backoff(1000) = %v, want within [%v, %v]", d, maxB/2, maxB)
	}
}

func TestRetryPolicyDefaultsAndServiceConfig(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 9, InitialBackoff: 3 * time.Second}.withDefaults()
	if p.MaxBackoff != 3*time.Second {
		t.Fatalf("MaxBackoff = %v, want raised to InitialBackoff", p.MaxBackoff)
	}
	if d := (RetryPolicy{}).withDefaults(); d != DefaultRetryPolicy {
		t.Fatalf("zero policy = %+v, want %+v", d, DefaultRetryPolicy)
	}
	js, err := p.serviceConfig()
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		MethodConfig []struct {
			Name []struct {
				Service, Method string
			}
			RetryPolicy struct {
				MaxAttempts          int
				InitialBackoff       string
				MaxBackoff           string
				RetryableStatusCodes []string
			}
		}
	}
	if err := json.Unmarshal([]byte(js), &cfg); err != nil {
		t.Fatalf("service config %s: %v", js, err)
	}
	mc := cfg.MethodConfig[0]
	methods := map[string]bool{}
	for _, n := range mc.Name {
		methods[n.Service+"/"+n.Method] = true
	}
	for _, m := range []string{"Subscribe", "Unsubscribe", "Presence", "PresenceStats", "Info"} {
		if !methods[ServiceName+"/"+m] {
			t.Errorf("%s not retried by the service config %s", m, js)
		}
	}
	for _, m := range []string{"Publish", "Broadcast", "Disconnect"} {
		if methods[ServiceName+"/"+m] {
			t.Errorf("%s retried by the service config %s", m, js)
		}
	}
	rp := mc.RetryPolicy
	if rp.MaxAttempts != 5 || rp.InitialBackoff != "3.000s" || rp.MaxBackoff != "3.000s" || len(rp.RetryableStatusCodes) != 1 || rp.RetryableStatusCodes[0] != "UNAVAILABLE" {
		t.Fatalf("retry policy %+v, want 5 attempts (the gRPC cap), 3s backoffs, UNAVAILABLE only", rp)
	}
}
