package herald

import (
	"context"
	"crypto/tls"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Option configures a [Client] created by [NewClient].
type Option func(*clientOptions)

type clientOptions struct {
	apiKey      string
	creds       credentials.TransportCredentials
	retry       RetryPolicy
	dialOptions []grpc.DialOption
}

func defaultClientOptions() clientOptions {
	return clientOptions{creds: insecure.NewCredentials(), retry: DefaultRetryPolicy}
}

// WithAPIKey sends key with every call, as the gRPC metadata entry
// "authorization: Bearer <key>".
//
// An engine started with API keys (--api-key, --api-keys-file) answers a call
// without one of them with codes.Unauthenticated; an engine without keys accepts
// any key, or none. Without TLS (see [WithTLSConfig]) the key travels in clear
// text.
func WithAPIKey(key string) Option {
	return func(o *clientOptions) { o.apiKey = key }
}

// WithTransportCredentials sets the transport credentials, for example
// credentials.NewTLS(cfg) or credentials.NewClientTLSFromFile(...). Without this
// option (or [WithTLSConfig]) the client connects without TLS.
func WithTransportCredentials(creds credentials.TransportCredentials) Option {
	return func(o *clientOptions) { o.creds = creds }
}

// WithTLSConfig connects over TLS with the given configuration. A nil cfg uses
// the system roots and the target's host name.
func WithTLSConfig(cfg *tls.Config) Option {
	if cfg == nil {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return WithTransportCredentials(credentials.NewTLS(cfg))
}

// WithDialOptions adds options passed to grpc.NewClient, after the ones this
// package sets, so they can override them (interceptors, keepalive, a custom
// resolver, message size limits, ...).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *clientOptions) { o.dialOptions = append(o.dialOptions, opts...) }
}

// apiKeyCreds attaches the API key to every call.
type apiKeyCreds struct {
	header map[string]string
	secure bool
}

func newAPIKeyCreds(key string, secure bool) apiKeyCreds {
	return apiKeyCreds{header: map[string]string{"authorization": "Bearer " + key}, secure: secure}
}

func (c apiKeyCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return c.header, nil
}

// RequireTransportSecurity is false for plain-text connections so that the key
// can be sent to an engine on a trusted network (the engine does not check it
// yet); with TLS configured it is true.
func (c apiKeyCreds) RequireTransportSecurity() bool { return c.secure }
