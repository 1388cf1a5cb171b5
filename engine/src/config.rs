//! Engine configuration: one field list gives the TOML file schema, the command-line
//! flags and their `HERALD_*` environment variables, so they can never drift apart.
//!
//! Precedence, highest first: flag, environment variable, config file, built-in
//! default. `herald --help` lists every option.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use clap::Parser;
use serde::Deserialize;

pub use crate::rules::{TopicRule, Who};
use crate::topic_name::TopicPattern;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: toml::de::Error,
    },
    /// A value is out of its allowed range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A duration written the human way: `250ms`, `25s`, `5m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = humantime::DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s).map(Dur)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

macro_rules! settings {
    (
        $( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr, env $env:literal $(, $extra:meta)*; )*
        @file_only {
            $( $(#[doc = $fdoc:literal])* $fname:ident : $fty:ty = $fdefault:expr; )*
        }
    ) => {
        /// The complete engine configuration, with every value resolved.
        // The field docs double as `--help` text, whose `[default: …]` is not a link.
        #[allow(rustdoc::broken_intra_doc_links)]
        #[derive(Debug, Clone, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $name: $ty, )*
            $( $(#[doc = $fdoc])* pub $fname: $fty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Self { $( $name: $default, )* $( $fname: $fdefault, )* }
            }
        }

        /// Values given on the command line or in the environment.
        #[derive(Debug, Default, clap::Args)]
        struct Overrides {
            $( $(#[doc = $doc])* #[arg(long, env = $env $(, $extra)*)] $name: Option<$ty>, )*
        }

        impl Overrides {
            fn apply(self, config: &mut Config) {
                $( if let Some(v) = self.$name { config.$name = v; } )*
            }
        }
    };
}

settings! {
    /// WebSocket listen address [default: 0.0.0.0:8080]
    ws_addr: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 8080)), env "HERALD_WS_ADDR";
    /// HTTP path of the WebSocket endpoint [default: /ws]
    ws_path: String = "/ws".to_owned(), env "HERALD_WS_PATH";
    /// gRPC listen address [default: 0.0.0.0:50051]
    grpc_addr: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 50051)), env "HERALD_GRPC_ADDR";
    /// HTTP admin listen address for /metrics, /healthz, /readyz and the status page, e.g. 127.0.0.1:9090; empty: no admin listener [default: off]
    admin_addr: String = String::new(), env "HERALD_ADMIN_ADDR";
    /// This node's id, reported by Info and presence [default: random]
    node_id: String = String::new(), env "HERALD_NODE_ID";
    /// Longest topic name in bytes [default: 255]
    max_topic_len: usize = 255, env "HERALD_MAX_TOPIC_LEN";
    /// Largest published payload in bytes [default: 65536]
    max_payload_bytes: usize = 64 * 1024, env "HERALD_MAX_PAYLOAD_BYTES";
    /// Largest WebSocket frame or message a client may send, in bytes [default: 65536]
    max_frame_bytes: usize = 64 * 1024, env "HERALD_MAX_FRAME_BYTES";
    /// Most topics one connection may be subscribed to [default: 256]
    max_subscriptions: usize = 256, env "HERALD_MAX_SUBSCRIPTIONS";
    /// Most topics named in one subscribe or unsubscribe command [default: 256]
    max_topics_per_command: usize = 256, env "HERALD_MAX_TOPICS_PER_COMMAND";
    /// Most topics in one Broadcast call [default: 1000]
    max_broadcast_topics: usize = 1000, env "HERALD_MAX_BROADCAST_TOPICS";
    /// Largest gRPC request in bytes; 0 derives it from max_payload_bytes and the per-call topic limits (larger requests get OUT_OF_RANGE) [default: 0]
    grpc_max_message_bytes: usize = 0, env "HERALD_GRPC_MAX_MESSAGE_BYTES";
    /// Pending-connection backlog of the WebSocket and gRPC listeners, sized for reconnect storms (the kernel caps it at net.core.somaxconn) [default: 4096]
    listen_backlog: u32 = 4096, env "HERALD_LISTEN_BACKLOG";
    /// Most gRPC calls served at once; further calls wait (streams count while they are being opened) [default: 4096]
    grpc_max_concurrent_calls: usize = 4096, env "HERALD_GRPC_MAX_CONCURRENT_CALLS";
    /// Most concurrent HTTP/2 streams one gRPC connection may open [default: 1024]
    grpc_max_streams_per_connection: u32 = 1024, env "HERALD_GRPC_MAX_STREAMS_PER_CONNECTION";
    /// Longest user id in bytes [default: 128]
    max_user_id_len: usize = 128, env "HERALD_MAX_USER_ID_LEN";
    /// Largest client info (JSON) in bytes [default: 1024]
    max_info_bytes: usize = 1024, env "HERALD_MAX_INFO_BYTES";
    /// Most messages waiting in one connection's outgoing queue before it is closed as a slow consumer (4001) [default: 8192]
    queue_max_messages: usize = 8192, env "HERALD_QUEUE_MAX_MESSAGES";
    /// Most bytes waiting in one connection's outgoing queue before it is closed as a slow consumer (4001) [default: 1048576]
    queue_max_bytes: usize = 1024 * 1024, env "HERALD_QUEUE_MAX_BYTES";
    /// Initial read buffer per connection in bytes; it grows for larger frames [default: 2048]
    read_buffer_bytes: usize = 2048, env "HERALD_READ_BUFFER_BYTES";
    /// Interval between server pings [default: 25s]
    ping_interval: Dur = Dur(Duration::from_secs(25)), env "HERALD_PING_INTERVAL";
    /// Close a connection (4002) when nothing was received from it for this long [default: 60s]
    idle_timeout: Dur = Dur(Duration::from_secs(60)), env "HERALD_IDLE_TIMEOUT";
    /// Close a connection whose socket accepts no data for this long [default: 10s]
    write_timeout: Dur = Dur(Duration::from_secs(10)), env "HERALD_WRITE_TIMEOUT";
    /// Time a condemned connection (slow consumer, protocol error) gets for its disconnect notice and close frame before its socket is dropped [default: 1s]
    close_grace: Dur = Dur(Duration::from_secs(1)), env "HERALD_CLOSE_GRACE";
    /// Time allowed for the WebSocket handshake [default: 10s]
    handshake_timeout: Dur = Dur(Duration::from_secs(10)), env "HERALD_HANDSHAKE_TIMEOUT";
    /// Time between reporting NOT_SERVING and closing connections, so load balancers stop routing first [default: 0s]
    shutdown_delay: Dur = Dur(Duration::ZERO), env "HERALD_SHUTDOWN_DELAY";
    /// Time allowed for a graceful shutdown before remaining connections are dropped [default: 10s]
    shutdown_timeout: Dur = Dur(Duration::from_secs(10)), env "HERALD_SHUTDOWN_TIMEOUT";
    /// How long a topic with no subscribers keeps its sequence and idempotency keys after its last activity [default: 5m]
    topic_retention: Dur = Dur(Duration::from_secs(300)), env "HERALD_TOPIC_RETENTION";
    /// How long an idempotency key is remembered [default: 5m]
    idempotency_window: Dur = Dur(Duration::from_secs(300)), env "HERALD_IDEMPOTENCY_WINDOW";
    /// Most idempotency keys the node remembers in all topics together; past it a topic's oldest keys are forgotten first [default: 1000000]
    idempotency_max_keys: usize = 1_000_000, env "HERALD_IDEMPOTENCY_MAX_KEYS";
    /// Most bytes all topic history may hold together (frames and bookkeeping); past it the node's oldest kept messages are evicted first, whatever their topic. Which topics keep history, and how much, is set by the history_size and history_ttl of [[topics]] rules [default: 67108864]
    history_max_bytes: usize = 64 * 1024 * 1024, env "HERALD_HISTORY_MAX_BYTES";
    /// Topics whose joins and leaves produce presence events, as comma-separated topics or patterns ("room:*", "room:>", ">" for all) [default: >]
    presence_topics: String = ">".to_owned(), env "HERALD_PRESENCE_TOPICS";
    /// Events one WatchPresence stream may have waiting before it is told to resync [default: 4096]
    presence_watch_buffer: usize = 4096, env "HERALD_PRESENCE_WATCH_BUFFER";
    /// WatchPresence snapshots building a step at the same time (a step reads up to 256 topics with members, or turns 64 members into events); the others wait their turn [default: 1]
    presence_max_snapshots: usize = 1, env "HERALD_PRESENCE_MAX_SNAPSHOTS";
    /// gRPC API key: calls must carry `authorization: Bearer <key>` (health excepted). Repeat the flag for several keys; HERALD_API_KEYS takes them comma-separated. No key at all leaves the API open [default: none]
    api_key: Vec<Secret> = Vec::new(), env "HERALD_API_KEYS", value_delimiter = ',', value_name = "KEY", hide_env_values = true;
    /// File of further gRPC API keys, one per line ('#' comments); read again on SIGHUP and when it changes [default: none]
    api_keys_file: PathBuf = PathBuf::new(), env "HERALD_API_KEYS_FILE";
    /// TLS certificate chain (PEM) for the WebSocket listener (wss://) and, unless grpc_tls_cert is given, for gRPC [default: none]
    tls_cert: PathBuf = PathBuf::new(), env "HERALD_TLS_CERT";
    /// Private key (PEM) of tls_cert [default: none]
    tls_key: PathBuf = PathBuf::new(), env "HERALD_TLS_KEY";
    /// TLS certificate chain (PEM) for the gRPC listener only, instead of tls_cert [default: tls_cert]
    grpc_tls_cert: PathBuf = PathBuf::new(), env "HERALD_GRPC_TLS_CERT";
    /// Private key (PEM) of grpc_tls_cert [default: tls_key]
    grpc_tls_key: PathBuf = PathBuf::new(), env "HERALD_GRPC_TLS_KEY";
    /// Serve gRPC in plain text even when tls_cert is given (only wss:// uses TLS; for a gRPC port on a private network) [default: false]
    grpc_plaintext: bool = false, env "HERALD_GRPC_PLAINTEXT";
    /// CA certificates (PEM): gRPC clients must present a certificate signed by one of them (mutual TLS; needs gRPC TLS) [default: none]
    grpc_client_ca: PathBuf = PathBuf::new(), env "HERALD_GRPC_CLIENT_CA";
    /// Origins allowed to open WebSocket connections, comma-separated: exact ("https://app.example.com") or a wildcard for subdomains ("*.example.com", "https://*.example.com"); a handshake from another origin gets HTTP 403, one without an Origin header (not a browser) is allowed; empty: any origin [default: any]
    allowed_origins: String = String::new(), env "HERALD_ALLOWED_ORIGINS";
    /// Most WebSocket connections on this node; further handshakes get HTTP 503 with Retry-After; 0: no limit beyond the open-files limit [default: 0]
    max_connections: usize = 0, env "HERALD_MAX_CONNECTIONS";
    /// Most WebSocket connections of one user id; further ones are refused (HTTP 429, or close 4007 after a connect frame); 0: no limit [default: 0]
    max_connections_per_user: usize = 0, env "HERALD_MAX_CONNECTIONS_PER_USER";
    /// Most WebSocket connections from one client IP address (HTTP 429); 0: no limit. Behind a proxy every client has the proxy's address: leave it off there [default: 0]
    max_connections_per_ip: usize = 0, env "HERALD_MAX_CONNECTIONS_PER_IP";
    /// New WebSocket connections per second one client IP address may open (token bucket; over it HTTP 429 with Retry-After); 0: no limit [default: 0]
    ip_connect_rate: f64 = 0.0, env "HERALD_IP_CONNECT_RATE";
    /// Burst of new connections one IP address may open above ip_connect_rate; 0: the rate rounded up [default: 0]
    ip_connect_burst: u32 = 0, env "HERALD_IP_CONNECT_BURST";
    /// Commands (text, binary and ping frames) per second one WebSocket connection may send (token bucket); excess commands get `rate_limited` errors; 0: no limit [default: 100]
    client_command_rate: f64 = 100.0, env "HERALD_CLIENT_COMMAND_RATE";
    /// Burst of commands one connection may send above client_command_rate; 0: the rate rounded up [default: 200]
    client_command_burst: u32 = 200, env "HERALD_CLIENT_COMMAND_BURST";
    /// Commands refused for the rate within 10 seconds that close the connection as a flood (4006); 0: never close [default: 100]
    client_command_flood: u32 = 100, env "HERALD_CLIENT_COMMAND_FLOOD";
    /// Close a gRPC connection whose client has not sent its first bytes (the HTTP/2 preface, or the TLS hello) within this time [default: 10s]
    grpc_setup_timeout: Dur = Dur(Duration::from_secs(10)), env "HERALD_GRPC_SETUP_TIMEOUT";
    /// Close a gRPC connection from which nothing was received for this long (answers to keepalive pings count); 0s: never [default: 5m]
    grpc_idle_timeout: Dur = Dur(Duration::from_secs(300)), env "HERALD_GRPC_IDLE_TIMEOUT";
    /// Interval of HTTP/2 keepalive pings on gRPC connections; a peer that does not answer within grpc_keepalive_timeout is dropped; 0s: no pings [default: 60s]
    grpc_keepalive_interval: Dur = Dur(Duration::from_secs(60)), env "HERALD_GRPC_KEEPALIVE_INTERVAL";
    /// Time a gRPC peer has to answer a keepalive ping [default: 20s]
    grpc_keepalive_timeout: Dur = Dur(Duration::from_secs(20)), env "HERALD_GRPC_KEEPALIVE_TIMEOUT";
    /// TCP keepalive idle time on accepted gRPC sockets (the kernel probes dead peers); 0s: off [default: 60s]
    grpc_tcp_keepalive: Dur = Dur(Duration::from_secs(60)), env "HERALD_GRPC_TCP_KEEPALIVE";
    /// Most WatchPresence streams open at once on this node; further ones get RESOURCE_EXHAUSTED [default: 1024]
    max_presence_watchers: usize = 1024, env "HERALD_MAX_PRESENCE_WATCHERS";
    /// NATS server URL that makes this node part of a cluster (nats:// or tls://); repeat the flag for several servers of one NATS cluster; HERALD_NATS_URLS takes them comma-separated. None: a single node [default: none]
    nats_url: Vec<String> = Vec::new(), env "HERALD_NATS_URLS", value_delimiter = ',', value_name = "URL";
    /// NATS credentials file (JWT and NKey seed) [default: none]
    nats_creds: PathBuf = PathBuf::new(), env "HERALD_NATS_CREDS";
    /// NATS user name (with nats_password) [default: none]
    nats_user: String = String::new(), env "HERALD_NATS_USER";
    /// NATS password [default: none]
    nats_password: Secret = Secret::default(), env "HERALD_NATS_PASSWORD", hide_env_values = true;
    /// NATS authentication token [default: none]
    nats_token: Secret = Secret::default(), env "HERALD_NATS_TOKEN", hide_env_values = true;
    /// CA certificates (PEM) that verify the NATS servers; implies TLS [default: system roots for tls:// URLs]
    nats_tls_ca: PathBuf = PathBuf::new(), env "HERALD_NATS_TLS_CA";
    /// Client certificate (PEM) presented to NATS (mutual TLS, with nats_tls_key) [default: none]
    nats_tls_cert: PathBuf = PathBuf::new(), env "HERALD_NATS_TLS_CERT";
    /// Private key (PEM) of nats_tls_cert [default: none]
    nats_tls_key: PathBuf = PathBuf::new(), env "HERALD_NATS_TLS_KEY";
    /// First token of every NATS subject and JetStream stream name of this cluster, so several clusters can share one NATS [default: herald]
    nats_prefix: String = "herald".to_owned(), env "HERALD_NATS_PREFIX";
    /// Longest wait for NATS on a publish, a cluster-wide question or a history read; past it the call answers UNAVAILABLE [default: 2s]
    nats_timeout: Dur = Dur(Duration::from_secs(2)), env "HERALD_NATS_TIMEOUT";
    /// JetStream storage of topic history in a cluster: file or memory [default: file]
    nats_history_storage: String = "file".to_owned(), env "HERALD_NATS_HISTORY_STORAGE";
    /// JetStream replicas of each history stream (1, or up to 5 in a NATS cluster) [default: 1]
    nats_history_replicas: usize = 1, env "HERALD_NATS_HISTORY_REPLICAS";
    /// How long a node keeps its NATS interest in a topic after the topic's last local subscriber left, so that churn does not turn into subscribe/unsubscribe traffic [default: 5s]
    nats_interest_linger: Dur = Dur(Duration::from_secs(5)), env "HERALD_NATS_INTEREST_LINGER";
    /// Interval of this node's heartbeat to the cluster; a node silent for three intervals is taken as gone [default: 1s]
    node_heartbeat: Dur = Dur(Duration::from_secs(1)), env "HERALD_NODE_HEARTBEAT";
    /// WebSocket URL other nodes and the Info call report for this node [default: ws://<ws_addr><ws_path>]
    advertise_ws_url: String = String::new(), env "HERALD_ADVERTISE_WS_URL";
    /// gRPC address other nodes and the Info call report for this node [default: grpc_addr]
    advertise_grpc_addr: String = String::new(), env "HERALD_ADVERTISE_GRPC_ADDR";
    /// Log format [default: text]
    log_format: LogFormat = LogFormat::Text, env "HERALD_LOG_FORMAT";
    /// Log filter, in RUST_LOG syntax [default: info]
    log: String = "info".to_owned(), env "HERALD_LOG";
    /// Shared secret that verifies HS256 connection tokens ("HS384=secret" or "HS512=secret" pins another HMAC algorithm); with any token key set, clients must authenticate [default: none]
    token_hmac_secret: Secret = Secret::default(), env "HERALD_TOKEN_HMAC_SECRET";
    /// Public keys (PEM files, comma-separated) that verify connection tokens: RSA keys verify RS256, EC P-256 keys ES256, Ed25519 keys EdDSA; "ALG=path" pins another algorithm of the key's family (RS384, PS256, ES384, ...) [default: none]
    token_public_key: String = String::new(), env "HERALD_TOKEN_PUBLIC_KEY";
    /// JWKS file (JSON) whose public keys verify connection tokens; a key's "alg" pins its algorithm and "kid" selects it [default: none]
    token_jwks_file: String = String::new(), env "HERALD_TOKEN_JWKS_FILE";
    /// Accept connection tokens without an exp claim (they never expire) [default: false]
    token_allow_no_exp: bool = false, env "HERALD_TOKEN_ALLOW_NO_EXP", num_args = 0..=1, default_missing_value = "true";
    /// Required aud claim of connection tokens [default: not checked]
    token_audience: String = String::new(), env "HERALD_TOKEN_AUDIENCE";
    /// Required iss claim of connection tokens [default: not checked]
    token_issuer: String = String::new(), env "HERALD_TOKEN_ISSUER";
    /// Clock skew allowed when checking exp and nbf [default: 0s]
    token_leeway: Dur = Dur(Duration::ZERO), env "HERALD_TOKEN_LEEWAY";
    /// How long before a token's exp the server sends refresh_required [default: 30s]
    token_refresh_before: Dur = Dur(Duration::from_secs(30)), env "HERALD_TOKEN_REFRESH_BEFORE";
    @file_only {
        /// Topic rules (`[[topics]]` tables in the config file): who may subscribe to
        /// the topics a pattern matches, and per-pattern publish limits. The first
        /// matching rule applies. See docs/security.md.
        topics: Vec<TopicRule> = Vec::new();
    }
}

/// A secret given in the configuration: never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

/// Command-line interface of the `herald` binary.
#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Herald: real-time WebSocket fan-out driven over gRPC"
)]
struct Cli {
    /// TOML config file; its keys are the long option names with '_' for '-'
    #[arg(long, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

impl Config {
    /// Builds the configuration from the process's arguments and environment.
    pub fn from_args() -> Result<Self, ConfigError> {
        Self::from_cli(Cli::parse())
    }

    /// Builds the configuration from the given arguments (the first is the program
    /// name) and the process environment; errors in the arguments are returned
    /// as clap errors by exiting, like `from_args`.
    pub fn from_arg_list<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::from_cli(Cli::parse_from(args))
    }

    fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        let mut config = match &cli.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        cli.overrides.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML config file; missing keys take their defaults.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Checks ranges that would make the engine misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_topic_len", self.max_topic_len),
            ("max_payload_bytes", self.max_payload_bytes),
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_subscriptions", self.max_subscriptions),
            ("max_topics_per_command", self.max_topics_per_command),
            ("max_broadcast_topics", self.max_broadcast_topics),
            ("queue_max_messages", self.queue_max_messages),
            ("queue_max_bytes", self.queue_max_bytes),
            ("read_buffer_bytes", self.read_buffer_bytes),
            ("presence_watch_buffer", self.presence_watch_buffer),
            ("listen_backlog", self.listen_backlog as usize),
            ("idempotency_max_keys", self.idempotency_max_keys),
            ("presence_max_snapshots", self.presence_max_snapshots),
            ("max_presence_watchers", self.max_presence_watchers),
            ("grpc_max_concurrent_calls", self.grpc_max_concurrent_calls),
            (
                "grpc_max_streams_per_connection",
                self.grpc_max_streams_per_connection as usize,
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!(
                "{name} must be greater than 0"
            )));
        }
        if !self.ws_path.starts_with('/') {
            return Err(ConfigError::Invalid("ws_path must start with '/'".into()));
        }
        if self.ping_interval.0.is_zero() || self.idle_timeout.0 <= self.ping_interval.0 {
            return Err(ConfigError::Invalid(
                "ping_interval must be positive and shorter than idle_timeout".into(),
            ));
        }
        if self.queue_max_messages > u32::MAX as usize || self.queue_max_bytes > u32::MAX as usize {
            return Err(ConfigError::Invalid(
                "queue limits must fit in 32 bits".into(),
            ));
        }
        for (name, rate) in [
            ("ip_connect_rate", self.ip_connect_rate),
            ("client_command_rate", self.client_command_rate),
        ] {
            if !rate.is_finite() || rate < 0.0 {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be a number of at least 0 (0: no limit)"
                )));
            }
        }
        if self.grpc_setup_timeout.0.is_zero() {
            return Err(ConfigError::Invalid(
                "grpc_setup_timeout must be positive".into(),
            ));
        }
        if !self.grpc_keepalive_interval.0.is_zero() && self.grpc_keepalive_timeout.0.is_zero() {
            return Err(ConfigError::Invalid(
                "grpc_keepalive_timeout must be positive when keepalive pings are on".into(),
            ));
        }
        self.check_cluster()?;
        crate::limits::Origins::parse(&self.allowed_origins).map_err(ConfigError::Invalid)?;
        self.presence_patterns()?;
        self.admin_socket_addr()?;
        crate::rules::Rules::compile(&self.topics, self.max_topic_len)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.check_tls_paths()?;
        Ok(())
    }

    /// Whether this node is part of a cluster (`nats_url` given).
    pub fn clustered(&self) -> bool {
        !self.nats_url.is_empty()
    }

    fn check_cluster(&self) -> Result<(), ConfigError> {
        if !self.clustered() {
            return Ok(());
        }
        let prefix_ok = !self.nats_prefix.is_empty()
            && self
                .nats_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !prefix_ok {
            return Err(ConfigError::Invalid(format!(
                "nats_prefix {:?} must be one or more of A-Z a-z 0-9 _ - (it starts every subject and stream name)",
                self.nats_prefix
            )));
        }
        if !matches!(self.nats_history_storage.as_str(), "file" | "memory") {
            return Err(ConfigError::Invalid(format!(
                "nats_history_storage {:?} must be file or memory",
                self.nats_history_storage
            )));
        }
        if !(1..=5).contains(&self.nats_history_replicas) {
            return Err(ConfigError::Invalid(
                "nats_history_replicas must be 1 to 5".into(),
            ));
        }
        if self.nats_timeout.0.is_zero() || self.node_heartbeat.0.is_zero() {
            return Err(ConfigError::Invalid(
                "nats_timeout and node_heartbeat must be positive".into(),
            ));
        }
        if self.nats_tls_cert.as_os_str().is_empty() != self.nats_tls_key.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "nats_tls_cert and nats_tls_key go together".into(),
            ));
        }
        Ok(())
    }

    /// The admin listener's address; `None` when `admin_addr` is empty (off).
    pub fn admin_socket_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let addr = self.admin_addr.trim();
        if addr.is_empty() {
            return Ok(None);
        }
        addr.parse().map(Some).map_err(|_| {
            ConfigError::Invalid(format!(
                "admin_addr {addr:?} is not an address such as 127.0.0.1:9090 (empty: off)"
            ))
        })
    }

    /// The largest gRPC request the engine decodes: the configured value, or room
    /// for a full-size payload plus the largest topic list one call may carry.
    pub fn grpc_message_limit(&self) -> usize {
        if self.grpc_max_message_bytes > 0 {
            return self.grpc_max_message_bytes;
        }
        let topics = self.max_broadcast_topics.max(self.max_topics_per_command);
        self.max_payload_bytes + topics * (self.max_topic_len + 8) + 64 * 1024
    }

    /// The WebSocket listener's certificate and key files, when it serves TLS.
    pub(crate) fn ws_tls_files(&self) -> Option<(&Path, &Path)> {
        given(&self.tls_cert).zip(given(&self.tls_key))
    }

    /// The gRPC listener's certificate and key files, when it serves TLS.
    pub(crate) fn grpc_tls_files(&self) -> Option<(&Path, &Path)> {
        match given(&self.grpc_tls_cert) {
            Some(cert) => Some(cert).zip(given(&self.grpc_tls_key)),
            None if self.grpc_plaintext => None,
            None => self.ws_tls_files(),
        }
    }

    /// The keys file, if one is configured.
    pub(crate) fn api_keys_path(&self) -> Option<&Path> {
        given(&self.api_keys_file)
    }

    /// The CA for gRPC client certificates, if one is configured.
    pub(crate) fn grpc_client_ca_path(&self) -> Option<&Path> {
        given(&self.grpc_client_ca)
    }

    /// Certificates come with their keys, and a client CA needs gRPC TLS.
    fn check_tls_paths(&self) -> Result<(), ConfigError> {
        let pairs = [
            ("tls_cert", &self.tls_cert, "tls_key", &self.tls_key),
            (
                "grpc_tls_cert",
                &self.grpc_tls_cert,
                "grpc_tls_key",
                &self.grpc_tls_key,
            ),
        ];
        for (cert_name, cert, key_name, key) in pairs {
            if given(cert).is_some() != given(key).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "{cert_name} and {key_name} must be given together"
                )));
            }
        }
        if self.grpc_plaintext && given(&self.grpc_tls_cert).is_some() {
            return Err(ConfigError::Invalid(
                "grpc_plaintext and grpc_tls_cert contradict each other".into(),
            ));
        }
        if self.grpc_client_ca_path().is_some() && self.grpc_tls_files().is_none() {
            return Err(ConfigError::Invalid(
                "grpc_client_ca needs a gRPC certificate (tls_cert/tls_key or grpc_tls_cert/grpc_tls_key)".into(),
            ));
        }
        Ok(())
    }

    /// The parsed `presence_topics` patterns.
    pub(crate) fn presence_patterns(&self) -> Result<Vec<TopicPattern>, ConfigError> {
        self.presence_topics
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                TopicPattern::parse(p, self.max_topic_len)
                    .map_err(|e| ConfigError::Invalid(format!("presence_topics: {e}")))
            })
            .collect()
    }
}

/// An optional path: empty means not given.
fn given(path: &Path) -> Option<&Path> {
    (!path.as_os_str().is_empty()).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("herald-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let file = dir.join("herald.toml");
        std::fs::write(
            &file,
            "ws_addr = \"127.0.0.1:9000\"\nping_interval = \"5s\"\nqueue_max_messages = 7\n",
        )
        .ok();
        let config = Config::from_arg_list([
            "herald",
            "--config",
            file.to_str().unwrap(),
            "--queue-max-messages",
            "9",
        ]);
        let config = config.unwrap();
        assert_eq!(config.ws_addr, SocketAddr::from(([127, 0, 0, 1], 9000)));
        assert_eq!(config.ping_interval, Dur(Duration::from_secs(5)));
        assert_eq!(config.queue_max_messages, 9);
        assert_eq!(config.grpc_addr.port(), 50051);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn topic_rules_are_a_file_only_array_of_tables() {
        let config: Config = toml::from_str(
            "log = \"debug\"\n\n[[topics]]\npattern = \"user:*\"\nsubscribe = \"owner\"\n\n\
             [[topics]]\npattern = \"broadcast:*\"\nsubscribe = \"authenticated\"\n\
             publish_rate = 10\npublish_burst = 20\nmessage_ttl = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(config.topics.len(), 2);
        assert_eq!(config.topics[0].subscribe, Some(Who::Owner));
        assert_eq!(config.topics[1].publish_burst, Some(20));
        assert!(config.validate().is_ok());
        let bad: Config =
            toml::from_str("[[topics]]\npattern = \"user:>\"\nsubscribe = \"owner\"\n").unwrap();
        assert!(bad.validate().is_err());
        assert!(
            toml::from_str::<Config>("[[topics]]\npattern = \"a\"\nsubscribe = \"owner\"\nx = 1\n")
                .is_err()
        );
        assert_eq!(format!("{:?}", Secret("s3cret".into())), "\"***\"");
    }

    #[test]
    fn unknown_keys_and_bad_ranges_are_refused() {
        assert!(toml::from_str::<Config>("no_such_key = 1").is_err());
        let config = Config {
            idle_timeout: Dur(Duration::from_secs(1)),
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn the_admin_listener_is_off_unless_an_address_is_given() {
        assert_eq!(Config::default().admin_socket_addr().unwrap(), None);
        let on = Config {
            admin_addr: "127.0.0.1:9090".into(),
            ..Config::default()
        };
        assert_eq!(
            on.admin_socket_addr().unwrap(),
            Some(SocketAddr::from(([127, 0, 0, 1], 9090)))
        );
        let bad = Config {
            admin_addr: "localhost".into(),
            ..Config::default()
        };
        assert!(bad.validate().is_err());
    }
}
