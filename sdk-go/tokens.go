package herald

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TokenClaims describes a WebSocket connection token (docs/protocol.md,
// "Authentication"). Only Subject is required.
type TokenClaims struct {
	// Subject (sub) is the connection's user id.
	Subject string
	// TTL sets exp to now + TTL; 0 means one hour. A negative TTL mints a token
	// without exp, accepted only by an engine started with --token-allow-no-exp.
	TTL time.Duration
	// Topics (topics) lists topics or patterns ("room:*") the client may
	// subscribe to where a topic rule says "granted".
	Topics []string
	// Subscribe (subscribe) lists topics the engine subscribes the connection
	// to when it connects.
	Subscribe []string
	// Info (info) is any JSON-encodable value shown to producers in presence.
	Info any
	// Audience (aud) and Issuer (iss), for engines that check them.
	Audience string
	Issuer   string
	// NotBefore, when positive, sets nbf to now + NotBefore.
	NotBefore time.Duration
	// KeyID sets the kid header, which selects a key of the engine's JWKS file.
	KeyID string
	// Extra claims, set last.
	Extra map[string]any
}

// MintToken signs a connection token for a WebSocket client with the
// algorithm alg ("HS256", "HS384", "HS512", "RS256", "PS256", "ES256",
// "ES384", "EdDSA", ...), which must be the one the engine's key is pinned to.
// key is the HMAC secret ([]byte or string) for HS*, or a private key
// (*rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey, for example from
// ParsePrivateKeyPEM) for the others.
//
// The client passes the token as ?token= in the WebSocket URL or in its first
// frame, {"type":"connect","token":"..."}.
func MintToken(key any, alg string, claims TokenClaims) (string, error) {
	if claims.Subject == "" {
		return "", errors.New("herald: MintToken: Subject is empty")
	}
	method := jwt.GetSigningMethod(alg)
	if method == nil || alg == "none" {
		return "", fmt.Errorf("herald: MintToken: unknown algorithm %q", alg)
	}
	if s, ok := key.(string); ok {
		key = []byte(s)
	}
	if b, ok := key.([]byte); ok && len(b) == 0 {
		return "", errors.New("herald: MintToken: empty secret")
	}
	now := time.Now()
	m := jwt.MapClaims{"sub": claims.Subject, "iat": now.Unix(), "jti": randomID()}
	switch {
	case claims.TTL == 0:
		m["exp"] = now.Add(time.Hour).Unix()
	case claims.TTL > 0:
		m["exp"] = now.Add(claims.TTL).Unix()
	}
	if claims.NotBefore > 0 {
		m["nbf"] = now.Add(claims.NotBefore).Unix()
	}
	if claims.Topics != nil {
		m["topics"] = claims.Topics
	}
	if claims.Subscribe != nil {
		m["subscribe"] = claims.Subscribe
	}
	if claims.Info != nil {
		m["info"] = claims.Info
	}
	if claims.Audience != "" {
		m["aud"] = claims.Audience
	}
	if claims.Issuer != "" {
		m["iss"] = claims.Issuer
	}
	for k, v := range claims.Extra {
		m[k] = v
	}
	token := jwt.NewWithClaims(method, m)
	if claims.KeyID != "" {
		token.Header["kid"] = claims.KeyID
	}
	signed, err := token.SignedString(key)
	if err != nil {
		return "", fmt.Errorf("herald: MintToken: %w", err)
	}
	return signed, nil
}

// ParsePrivateKeyPEM reads a PKCS#8 ("BEGIN PRIVATE KEY"), PKCS#1 ("BEGIN RSA
// PRIVATE KEY") or SEC 1 ("BEGIN EC PRIVATE KEY") private key for MintToken.
func ParsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("herald: no PEM block found")
	}
	switch block.Type {
	case "RSA PRIVATE KEY":
		return x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		return x509.ParseECPrivateKey(block.Bytes)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("herald: %w", err)
	}
	switch k := k.(type) {
	case *rsa.PrivateKey:
		return k, nil
	case *ecdsa.PrivateKey:
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	default:
		return nil, fmt.Errorf("herald: unsupported private key type %T", k)
	}
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
