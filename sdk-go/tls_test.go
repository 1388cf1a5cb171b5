package herald_test

// The SDK against an engine that serves TLS on both listeners and checks API
// keys: a test CA and a server certificate are made here with crypto/x509.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	herald "github.com/heraldrt/herald/sdk-go"
)

// testPKI writes a CA and a server certificate for localhost and 127.0.0.1 into
// dir, returning the certificate and key paths and a client configuration that
// trusts the CA.
func testPKI(t *testing.T, dir string) (certFile, keyFile string, client *tls.Config) {
	t.Helper()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTemplate := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "herald test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	serverKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serverTemplate := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	serverDER, err := x509.CreateCertificate(rand.Reader, serverTemplate, caCert, &serverKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(serverKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile = filepath.Join(dir, "server.pem")
	keyFile = filepath.Join(dir, "server.key")
	write := func(path, kind string, der []byte) {
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(certFile, "CERTIFICATE", serverDER)
	write(keyFile, "PRIVATE KEY", keyDER)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return certFile, keyFile, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

// tlsEngine starts an engine with TLS on both listeners and one API key.
func tlsEngine(t *testing.T, key string) *engine {
	t.Helper()
	shared := needEngine(t)
	cert, keyFile, clientTLS := testPKI(t, t.TempDir())
	e, err := startEngineTLS(shared.bin, clientTLS,
		"--tls-cert", cert, "--tls-key", keyFile, "--api-key", key)
	if err != nil {
		t.Fatalf("starting a TLS engine: %v", err)
	}
	t.Cleanup(func() {
		_ = e.kill()
		if t.Failed() {
			t.Logf("engine log:\n%s", e.logTail(4096))
		}
	})
	return e
}

// Over TLS with the right key: unary calls, the streaming publisher and a
// wss:// client that receives what was published.
func TestTLSWithAPIKey(t *testing.T) {
	const key = "tls-key-0123456789"
	e := tlsEngine(t, key)
	ctx := testCtx(t)
	c := e.client(t, append(e.tlsOptions(), herald.WithAPIKey(key))...)
	topic := uniqueTopic(t, "tls")
	ws := dialWS(t, e, "alice")
	ws.subscribe(topic)

	if _, err := c.Info(ctx); err != nil {
		t.Fatalf("Info: %v", err)
	}
	r, err := c.Publish(ctx, topic, herald.Text("over tls"))
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if m := ws.message(); m.Seq != r.Sequence || m.Text == nil || *m.Text != "over tls" {
		t.Fatalf("frame %s", m.raw)
	}
	p, err := c.NewPublisher(ctx)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	if _, err := p.Publish(ctx, topic, herald.Text("stream")); err != nil {
		t.Fatalf("Publisher.Publish: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Publisher.Close: %v", err)
	}
	if m := ws.message(); m.Text == nil || *m.Text != "stream" {
		t.Fatalf("frame %s", m.raw)
	}
}

// A missing or wrong key is UNAUTHENTICATED; health needs no key.
func TestTLSAPIKeyRefused(t *testing.T) {
	e := tlsEngine(t, "right-key-0123456789")
	ctx := testCtx(t)
	for name, opts := range map[string][]herald.Option{
		"no key":    e.tlsOptions(),
		"wrong key": append(e.tlsOptions(), herald.WithAPIKey("wrong-key-0123456789")),
	} {
		c := e.client(t, opts...)
		if _, err := c.Info(ctx); herald.Code(err).String() != "Unauthenticated" {
			t.Fatalf("%s: Info error %v, want Unauthenticated", name, err)
		}
		if _, err := c.Publish(ctx, uniqueTopic(t, "tls"), herald.Text("x")); herald.Code(err).String() != "Unauthenticated" {
			t.Fatalf("%s: Publish error %v, want Unauthenticated", name, err)
		}
		if st, err := c.Health(ctx); err != nil || st != herald.HealthServing {
			t.Fatalf("%s: Health %v, %v", name, st, err)
		}
	}
}

// A plain-text client cannot use a TLS engine.
func TestTLSPlainClientFails(t *testing.T) {
	e := tlsEngine(t, "some-key-0123456789")
	ctx := testCtx(t)
	c := e.client(t, herald.WithAPIKey("some-key-0123456789"))
	if _, err := c.Info(ctx); !herald.IsUnavailable(err) {
		t.Fatalf("Info over plain text: %v, want Unavailable", err)
	}
}
