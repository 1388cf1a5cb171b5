package herald_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
)

const tokenSecret = "go-test-secret-not-for-production"

// authEngine starts an engine that authenticates clients with tokenSecret and
// an ES256 public key, with topic rules.
func authEngine(t *testing.T) (*engine, *ecdsa.PrivateKey) {
	t.Helper()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pub := filepath.Join(dir, "ec-public.pem")
	if err := os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	rules := filepath.Join(dir, "herald.toml")
	config := "[[topics]]\npattern = \"user:*\"\nsubscribe = \"owner\"\n\n" +
		"[[topics]]\npattern = \"room:>\"\nsubscribe = \"granted\"\n"
	if err := os.WriteFile(rules, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	e := ownEngine(t, "--config", rules, "--token-hmac-secret", tokenSecret, "--token-public-key", pub)
	return e, key
}

func TestMintTokenAgainstTheEngine(t *testing.T) {
	e, ecKey := authEngine(t)
	ctx := testCtx(t)
	c := e.client(t)
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !info.ClientAuth {
		t.Fatalf("Info.ClientAuth = false on an engine with a token key")
	}

	token, err := herald.MintToken(tokenSecret, "HS256", herald.TokenClaims{
		Subject:   "gopher",
		TTL:       time.Minute,
		Topics:    []string{"room:team:*"},
		Subscribe: []string{"user:gopher"},
		Info:      map[string]any{"name": "Gopher"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ws := dialWSQuery(t, e, url.Values{"token": {token}})
	announced := ws.next(5 * time.Second)
	if announced.Type != "subscribed" || !announced.Server || len(announced.Topics) != 1 || announced.Topics[0] != "user:gopher" {
		t.Fatalf("after connected: %s, want the subscribe claim", announced.raw)
	}
	if _, err := c.Publish(ctx, "user:gopher", herald.Text("hi")); err != nil {
		t.Fatal(err)
	}
	if m := ws.message(); m.Topic != "user:gopher" {
		t.Fatalf("message %s", m.raw)
	}
	ws.subscribe("room:team:1")

	ws.send(map[string]any{"type": "subscribe", "id": 900, "topics": []string{"user:someone-else"}})
	refused := ws.waitFor(5*time.Second, func(f frame) bool { return f.ID != nil && *f.ID == 900 })
	if refused.Type != "error" || string(refused.Code) != `"forbidden"` || !strings.Contains(refused.Message, "user:someone-else") {
		t.Fatalf("subscribe to another user's topic: %s, want a forbidden error", refused.raw)
	}

	// ES256 with a private key from PEM.
	der, err := x509.MarshalPKCS8PrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := herald.ParsePrivateKeyPEM(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	es, err := herald.MintToken(signer, "ES256", herald.TokenClaims{Subject: "gopher-es"})
	if err != nil {
		t.Fatal(err)
	}
	dialWSQuery(t, e, url.Values{"token": {es}})
}

func TestMintTokenRefusesBadInput(t *testing.T) {
	if _, err := herald.MintToken(tokenSecret, "HS256", herald.TokenClaims{}); err == nil {
		t.Fatal("an empty Subject was accepted")
	}
	if _, err := herald.MintToken(tokenSecret, "none", herald.TokenClaims{Subject: "a"}); err == nil {
		t.Fatal("alg none was accepted")
	}
	if _, err := herald.MintToken("", "HS256", herald.TokenClaims{Subject: "a"}); err == nil {
		t.Fatal("an empty secret was accepted")
	}
	if _, err := herald.ParsePrivateKeyPEM([]byte("nope")); err == nil {
		t.Fatal("garbage parsed as a key")
	}
}
