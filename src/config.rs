//! The service's configuration: one struct, filled from CLI flags, then
//! `SHARDCAST_*` environment variables, then an optional TOML file, then
//! defaults, in that order of precedence; and checked once by `validate`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use serde::{Deserialize, Serialize};

mod reference;
mod rules;

pub use reference::reference_markdown;

/// Exit code for bad configuration (EX_USAGE in sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Longest any duration setting may be. Durations are added to clock
/// readings (a drain's deadline), multiplied, and sent to Redis in
/// milliseconds: far past this, those overflow.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// When a count reply may go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Reply at once; Redis gets the count within `flush_interval`.
    Async,
    /// Reply only after Redis has the new count.
    Sync,
}

/// Which Redis pub/sub commands carry broadcasts and session kicks. Every
/// process sharing a Redis must use the same mode: the two are separate
/// namespaces, and a PUBLISH never reaches an SSUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PubsubMode {
    /// PUBLISH / SUBSCRIBE: on a Redis Cluster every node sees every message.
    Plain,
    /// SPUBLISH / SSUBSCRIBE (Redis 7+): a channel lives on its slot's node
    /// only, so a cluster spreads rooms over its nodes.
    Sharded,
}

/// How a shard's socket plane talks to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Io {
    /// io_uring where the kernel has every operation the plane uses and
    /// `kernel.io_uring_disabled` allows it, else epoll.
    Auto,
    /// io_uring: multishot receives into buffers the shard's sockets share,
    /// a loop turn's sends submitted together. The start fails without it.
    Uring,
    /// epoll readiness, then a `recv` and a `send` per ready socket.
    Epoll,
}

impl Io {
    pub fn name(self) -> &'static str {
        match self {
            Io::Auto => "auto",
            Io::Uring => "uring",
            Io::Epoll => "epoll",
        }
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for machines.
    Json,
    /// Coloured text, for people.
    Pretty,
}

/// Everything the service can be told, defined once: each field is a flag
/// (`--field-name`), an environment variable (`SHARDCAST_FIELD_NAME`) and a
/// TOML key (`field_name`), with its default here. Field docs double as the
/// README's table and as `--help`.
#[derive(Debug, Clone, Serialize, Deserialize, Parser)]
#[serde(default, deny_unknown_fields)]
#[command(
    name = "shardcast",
    version,
    about = "Sharded thread-per-core WebSocket counter service"
)]
pub struct Config {
    /// TOML file with any of the settings below (flags and env win over it).
    #[arg(long, env = "SHARDCAST_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address every shard listens on (SO_REUSEPORT).
    #[arg(long, env = "SHARDCAST_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Admin address for /metrics, /healthz and /readyz, and for the server
    /// API (open here only while this is a loopback address and no api_key
    /// is set; behind the key otherwise) and its console. Served by a thread
    /// of its own that stays up through a drain (the shards' listeners close
    /// when it starts). `off`: no admin listener.
    #[arg(long, env = "SHARDCAST_ADMIN_LISTEN", default_value = "127.0.0.1:9180")]
    pub admin_listen: AdminListen,
    /// A request on the admin listener must be read and answered within this.
    #[serde(with = "dur")]
    #[arg(long, env = "SHARDCAST_ADMIN_REQUEST_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub admin_request_timeout: Duration,
    /// Connections the admin listener serves at once; more are closed at
    /// accept.
    #[arg(long, env = "SHARDCAST_ADMIN_MAX_CONNECTIONS", default_value_t = 256)]
    pub admin_max_connections: usize,
    /// Keys for the server API (`/api/*`, `/status`, and `/metrics` on the
    /// service port): a request sends one as `Authorization: apikey <KEY>` or
    /// `X-API-Key: <KEY>`. Several (comma-separated) may be valid at once, so
    /// a key can be rotated without downtime. None: the service port does not
    /// serve the API at all. Give them by environment or TOML file, not on
    /// the command line (ps shows that).
    #[arg(
        long,
        env = "SHARDCAST_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_key: Vec<String>,
    /// Number of shards; 0 = one per online CPU.
    #[arg(long, env = "SHARDCAST_SHARDS", default_value_t = 0)]
    pub shards: usize,
    /// Pin each shard to its own CPU.
    #[arg(long, env = "SHARDCAST_PIN", default_value_t = true, action = ArgAction::Set)]
    pub pin: bool,
    /// Accept backlog per shard (the kernel caps it at net.core.somaxconn).
    #[arg(long, env = "SHARDCAST_BACKLOG", default_value_t = 4096)]
    pub backlog: u32,
    /// Redis for sessions and pub/sub.
    #[arg(long, env = "SHARDCAST_REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// Sentinels (`host:port`) that name the Redis master; when set, the
    /// shards ask them for `redis_master_name` instead of using `redis_url`.
    #[arg(long, env = "SHARDCAST_REDIS_SENTINELS", value_delimiter = ',')]
    pub redis_sentinels: Vec<String>,
    /// Seed nodes (`host:port`) of a Redis Cluster; when set, the shards
    /// route each request to the master of its keys' slot instead of using
    /// `redis_url`.
    #[arg(long, env = "SHARDCAST_REDIS_CLUSTER", value_delimiter = ',')]
    pub redis_cluster: Vec<String>,
    /// The master's name in the Sentinels' configuration.
    #[arg(long, env = "SHARDCAST_REDIS_MASTER_NAME", default_value = "")]
    pub redis_master_name: String,
    /// The Redis servers' password (`AUTH`), for a URL that should not
    /// carry it, and for the master the Sentinels name. Give it here or in
    /// `redis_url`, not both.
    #[arg(long, env = "SHARDCAST_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// The database of the master the Sentinels name (with `redis_url`, the
    /// database is the URL's path).
    #[arg(long, env = "SHARDCAST_REDIS_DB", default_value_t = 0)]
    pub redis_db: u32,
    /// The Sentinels' own password (`requirepass` in their configuration),
    /// which is not the master's.
    #[arg(
        long,
        env = "SHARDCAST_REDIS_SENTINEL_PASSWORD",
        hide_env_values = true
    )]
    pub redis_sentinel_password: Option<String>,
    /// The Redis servers' ACL user (`AUTH user password`), for a URL that
    /// does not carry one, for the master the Sentinels name and for the
    /// cluster's nodes. None: the `default` user, `AUTH password`.
    #[arg(long, env = "SHARDCAST_REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// The Sentinels' own ACL user, beside `redis_sentinel_password`.
    #[arg(long, env = "SHARDCAST_REDIS_SENTINEL_USERNAME")]
    pub redis_sentinel_username: Option<String>,
    /// TLS to the master the Sentinels name and to the cluster's nodes (a
    /// `rediss://` URL says so by itself).
    #[arg(long, env = "SHARDCAST_REDIS_TLS", default_value_t = false, action = ArgAction::Set)]
    pub redis_tls: bool,
    /// TLS to the Sentinels themselves.
    #[arg(long, env = "SHARDCAST_REDIS_SENTINEL_TLS", default_value_t = false, action = ArgAction::Set)]
    pub redis_sentinel_tls: bool,
    /// PEM file of the CAs that sign the Redis servers' certificates. None:
    /// the Mozilla roots built into the binary.
    #[arg(long, env = "SHARDCAST_REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<PathBuf>,
    /// Replicas that must confirm a write (`WAIT`) before it counts as done:
    /// in sync durability before the reply, in async before the flush is
    /// taken as written. 0: a master's own reply is enough.
    #[arg(long, env = "SHARDCAST_REDIS_MIN_REPLICAS", default_value_t = 0)]
    pub redis_min_replicas: u32,
    /// Deployment color, reported in logs, `/status` and `app_info`.
    #[arg(long, env = "SHARDCAST_COLOR", default_value = "blue")]
    pub color: String,
    /// `plain` (PUBLISH/SUBSCRIBE) or `sharded` (SPUBLISH/SSUBSCRIBE).
    #[arg(long, env = "SHARDCAST_PUBSUB", value_enum, default_value = "plain")]
    pub pubsub: PubsubMode,
    /// Rooms with members on one shard (one subscription each); a connect
    /// that would open one more gets `503`. Empty rooms whose subscription
    /// lingers make way first.
    #[arg(long, env = "SHARDCAST_MAX_ROOMS", default_value_t = 10_000)]
    pub max_rooms: usize,
    /// Rooms one socket may be in at once: its upgrade's `?room=` and those
    /// it joins on the open socket. A join past it is refused
    /// (`too_many_rooms`); the socket stays open.
    #[arg(long, env = "SHARDCAST_MAX_ROOMS_PER_SOCKET", default_value_t = 64)]
    pub max_rooms_per_socket: usize,
    /// Keep who is in each room in Redis, for `GET /api/rooms/{room}/presence`
    /// and presence frames.
    #[arg(long, env = "SHARDCAST_PRESENCE", default_value_t = true, action = ArgAction::Set)]
    pub presence: bool,
    /// How long a socket's presence in a room lasts unless renewed; the
    /// heartbeat walk renews it every `heartbeat_interval`, so a node that
    /// dies drops out of every room within this. At least twice
    /// `heartbeat_interval`.
    #[serde(with = "dur")]
    #[arg(long, env = "SHARDCAST_PRESENCE_TTL", value_parser = parse_duration, default_value = "75s")]
    pub presence_ttl: Duration,
    /// Rooms whose members are sent presence frames (who joined, who left):
    /// names, or prefixes ending in `*` (`chat:*`; `*` for every room).
    /// Empty: none.
    #[arg(long, env = "SHARDCAST_PRESENCE_EVENTS", value_delimiter = ',')]
    pub presence_events: Vec<String>,
    /// Broadcasts each channel (the global one, each room) keeps in its Redis
    /// Stream for clients that reconnect with `since`. 0: no history and no
    /// offsets, the frames of before.
    #[arg(long, env = "SHARDCAST_HISTORY_SIZE", default_value_t = 100)]
    pub history_size: usize,
    /// How long a broadcast stays in history; a channel with no broadcast
    /// for this long loses its stream.
    #[serde(with = "dur")]
    #[arg(long, env = "SHARDCAST_HISTORY_TTL", value_parser = parse_duration, default_value = "5m")]
    pub history_ttl: Duration,
    /// With history on, how often each shard compares every channel it
    /// delivers with its stream in Redis, so that a subscription that died
    /// without a word is found and its gap read back. 0 turns the probe off
    /// (a gap is then found by the next broadcast on the channel).
    #[serde(with = "dur")]
    #[arg(long, env = "SHARDCAST_HISTORY_PROBE_INTERVAL", value_parser = parse_duration, default_value = "10s")]
    pub history_probe_interval: Duration,
    /// Interval between heartbeat frames to every socket.
    #[serde(with = "dur")]
    #[arg(long, env = "SHARDCAST_HEARTBEAT_INTERVAL", value_parser = parse_duration, default_value = "30s")]
    pub heartbeat_interval: Duration,
    /// A socket that sends nothing for half of this gets a Ping (in the same
    /// send as its heartbeat, so give or take half a `heartbeat_interval`, at
    /// most a quarter of this); one still silent after all of it is closed
    /// (goodbye with reason `idle`, Close 1001). Pongs count as activity. 0
    /// turns it off.
    #[serde(with = "dur")]
    #[arg(long, env = "SHARDCAST_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "120s")]
    pub idle_timeout: Duration,
    /// A session lives this long after its last activity.
    #[serde(with = "dur")]
    #[arg(long, env = "SHARDCAST_SESSION_TTL", value_parser = parse_duration, default_value = "1h")]
    pub session_ttl: Duration,
    /// How often each shard writes dirty session counts to Redis.
    #[serde(with = "dur")]
    #[arg(long, env = "SHARDCAST_FLUSH_INTERVAL", value_parser = parse_duration, default_value = "10ms")]
    pub flush_interval: Duration,
    /// `async`: reply at once; `sync`: reply after Redis has the count.
    #[arg(
        long,
        env = "SHARDCAST_DURABILITY",
        value_enum,
        default_value = "async"
    )]
    pub durability: Durability,
    /// In sync durability, how long a reply may wait for Redis (through a
    /// failover, say) before it answers with what it knows: counted but
    /// not confirmed when a write may have reached Redis, not counted when
    /// none can have.
    #[serde(with = "dur")]
    #[arg(long, env = "SHARDCAST_SYNC_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub sync_timeout: Duration,
    /// How long a drain may take before the process exits anyway.
    #[serde(with = "dur")]
    #[arg(long, env = "SHARDCAST_SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "10s")]
    pub shutdown_grace: Duration,
    /// Largest message (all fragments together) a client may send.
    #[arg(long, env = "SHARDCAST_MAX_MESSAGE_BYTES", default_value_t = 64 << 10)]
    pub max_message_bytes: usize,
    /// Offer permessage-deflate (RFC 7692) to clients that ask for it. Each
    /// message is compressed on its own (no context kept between messages),
    /// so an idle socket holds no compression state, and a broadcast is
    /// compressed once per shard.
    #[arg(long, env = "SHARDCAST_PERMESSAGE_DEFLATE", default_value_t = false, action = ArgAction::Set)]
    pub permessage_deflate: bool,
    /// With permessage-deflate, frames with fewer bytes than this go
    /// uncompressed (a count reply, a heartbeat): compressing them saves
    /// nothing.
    #[arg(long, env = "SHARDCAST_DEFLATE_MIN_BYTES", default_value_t = 128)]
    pub deflate_min_bytes: usize,
    /// Open connections per shard; more get `503`.
    #[arg(long, env = "SHARDCAST_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Largest HTTP request head; more gets `431`.
    #[arg(long, env = "SHARDCAST_MAX_HEADER_BYTES", default_value_t = 16 << 10)]
    pub max_header_bytes: usize,
    /// A request head or upgrade must be complete within this.
    #[serde(with = "dur")]
    #[arg(long, env = "SHARDCAST_HANDSHAKE_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub handshake_timeout: Duration,
    /// How the socket plane does its I/O (logged at start, shown in
    /// `/status` and as the `io` label of `app_info`).
    #[arg(long, env = "SHARDCAST_IO", value_enum, default_value = "auto")]
    pub io: Io,
    /// The shard's one receive buffer: the most one read takes from one
    /// socket (messages stream through it, whatever their size).
    #[arg(long, env = "SHARDCAST_READ_BUFFER_BYTES", default_value_t = 64 << 10)]
    pub read_buffer_bytes: usize,
    /// Messages per second per socket (token bucket); 0 turns the limit off.
    #[arg(long, env = "SHARDCAST_RATE_LIMIT", default_value_t = 1000)]
    pub rate_limit: u32,
    /// Bucket size: messages a socket may send in one burst.
    #[arg(long, env = "SHARDCAST_RATE_BURST", default_value_t = 2000)]
    pub rate_burst: u32,
    /// Rejected messages in a row before the socket is closed with 1008.
    #[arg(long, env = "SHARDCAST_RATE_STRIKES", default_value_t = 20)]
    pub rate_strikes: u32,
    /// Frames queued for one socket (heartbeats, broadcasts) before it is
    /// treated as a slow reader and closed with 1008.
    #[arg(long, env = "SHARDCAST_OUTBOUND_QUEUE", default_value_t = 64)]
    pub outbound_queue: usize,
    /// Origins a browser may open sockets from (`scheme://host[:port]`,
    /// compared without case). Empty: any. A request with no `Origin` header
    /// (not a browser) is always allowed: the check protects browsers from
    /// cross-site socket hijacking, and any other client can send any Origin.
    #[arg(long, env = "SHARDCAST_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// HS256 key for upgrade tokens; None: upgrades need no token. Give it
    /// by environment or TOML file, not on the command line (ps shows that).
    #[arg(long, env = "SHARDCAST_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,
    /// For protocol conformance runs only: every upgrade, on any path, is an
    /// echo socket (no session, no count). Never in production.
    #[arg(long, hide = true, default_value_t = false, action = ArgAction::Set)]
    pub conformance_echo: bool,
    /// Upper bound of the random `retry_after_ms` sent on drain.
    #[serde(with = "dur")]
    #[arg(long, env = "SHARDCAST_DRAIN_RETRY_AFTER", value_parser = parse_duration, default_value = "1s")]
    pub drain_retry_after: Duration,
    /// Sessions with counts not yet in Redis, per shard, before new sessions
    /// are refused (`503`) until Redis is back.
    #[arg(
        long,
        env = "SHARDCAST_MAX_UNFLUSHED_SESSIONS",
        default_value_t = 100_000
    )]
    pub max_unflushed_sessions: usize,
    /// Log format: `json` or `pretty`.
    #[arg(long, env = "SHARDCAST_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Log filter, as `RUST_LOG` (e.g. `info`, `shardcast=debug`).
    #[arg(long, env = "SHARDCAST_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl Default for Config {
    /// The defaults the flags declare, with the environment left out.
    fn default() -> Self {
        let cmd = Config::command().mut_args(|a| a.env(None));
        let m = cmd
            .try_get_matches_from(["shardcast"])
            .expect("the declared defaults parse");
        Config::from_arg_matches(&m).expect("the declared defaults parse")
    }
}

/// Why the configuration was refused. Each prints as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// What clap refused, or what it was asked for instead of a run
    /// (`--help`, `--version`): its kind tells the two apart.
    #[error("{0}")]
    Cli(clap::Error),
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {msg}")]
    Toml { path: PathBuf, msg: String },
    #[error("invalid {field}: {msg}")]
    Invalid { field: &'static str, msg: String },
}

/// Where the admin listener binds, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminListen(pub Option<SocketAddr>);

impl std::str::FromStr for AdminListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" | "none" => Ok(AdminListen(None)),
            a => a
                .parse()
                .map(|a| AdminListen(Some(a)))
                .map_err(|_| format!("{a:?} is not host:port or off")),
        }
    }
}

impl std::fmt::Display for AdminListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("off"),
        }
    }
}

impl Serialize for AdminListen {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AdminListen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write durations like 30s, 10ms, 1h)"))
}

impl Config {
    /// Builds the configuration from the process's arguments and
    /// environment, over the TOML file they name, over the defaults.
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Config::command()
            .try_get_matches_from(args)
            .map_err(ConfigError::Cli)?;
        let mut c = Config::from_arg_matches(&matches).map_err(ConfigError::Cli)?;
        // Given on the command line or in the environment, as opposed to
        // defaulted: those win over the file.
        let given = |id: &str| {
            matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        let mut url_given = given("redis_url");
        if let Some(path) = c.config.clone() {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let toml_err = |msg: String| ConfigError::Toml {
                path: path.clone(),
                msg,
            };
            // Unknown keys and bad values are refused by the whole struct.
            Self::from_toml(&text).map_err(toml_err)?;
            let file: toml::Table = text
                .parse()
                .map_err(|e: toml::de::Error| toml_err(e.to_string()))?;
            url_given |= file.contains_key("redis_url");
            let mut merged = toml::Table::try_from(&c).expect("a config serializes");
            for (key, value) in file {
                if !given(&key) {
                    merged.insert(key, value);
                }
            }
            c = merged
                .try_into()
                .map_err(|e: toml::de::Error| toml_err(e.message().to_string()))?;
            c.config = Some(path);
        }
        // With sentinels too, which Redis is meant is not for us to guess.
        let either = |field| {
            Err(ConfigError::Invalid {
                field,
                msg: "give one of redis_url, redis_sentinels and redis_cluster".into(),
            })
        };
        if url_given && !c.redis_sentinels.is_empty() {
            return either("redis_sentinels");
        }
        if (url_given || !c.redis_sentinels.is_empty()) && !c.redis_cluster.is_empty() {
            return either("redis_cluster");
        }
        c.validate()?;
        Ok(c)
    }

    /// Where the shards find Redis. Valid once `validate` passed.
    pub fn redis_target(&self) -> Result<RedisTarget, String> {
        let some = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        let password = some(&self.redis_password);
        let username = some(&self.redis_username);
        if username.is_some() && password.is_none() && !self.redis_url.contains('@') {
            return Err("redis_username needs redis_password".into());
        }
        // `host:port` lists: the sentinels' and the cluster seeds', which
        // all take `like`'s user, password and TLS.
        let nodes = |list: &[String], what: &str, like: RedisAddr| {
            list.iter()
                .map(|s| {
                    RedisAddr::parse(&format!("redis://{s}"))
                        .map_err(|e| format!("{what} {s:?}: {e}"))
                        .and_then(|a| {
                            if s.contains('@') || s.contains('/') {
                                Err(format!("{what} {s:?} must be host:port"))
                            } else {
                                Ok(like.at(a.host, a.port))
                            }
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let like = |username: Option<String>, password: Option<String>, tls: bool| RedisAddr {
            username,
            password,
            tls,
            ..RedisAddr::default()
        };
        if !self.redis_cluster.is_empty() {
            return Ok(RedisTarget::Cluster {
                seeds: nodes(
                    &self.redis_cluster,
                    "cluster node",
                    like(username, password, self.redis_tls),
                )?,
            });
        }
        if self.redis_sentinels.is_empty() {
            let mut addr = RedisAddr::parse(&self.redis_url)?;
            if password.is_some() {
                if addr.password.is_some() {
                    return Err("give the password in redis_url or redis_password, not both".into());
                }
                addr.password = password;
            }
            if username.is_some() {
                if addr.username.is_some() {
                    return Err("give the user in redis_url or redis_username, not both".into());
                }
                addr.username = username;
            }
            return Ok(RedisTarget::Single(addr));
        }
        let sentinel_password = some(&self.redis_sentinel_password);
        let sentinel_username = some(&self.redis_sentinel_username);
        if sentinel_username.is_some() && sentinel_password.is_none() {
            return Err("redis_sentinel_username needs redis_sentinel_password".into());
        }
        let sentinels = nodes(
            &self.redis_sentinels,
            "sentinel",
            like(
                sentinel_username,
                sentinel_password,
                self.redis_sentinel_tls,
            ),
        )?;
        Ok(RedisTarget::Sentinel {
            sentinels,
            master: self.redis_master_name.clone(),
            username,
            password,
            db: self.redis_db,
            tls: self.redis_tls,
        })
    }

    /// Whether any Redis connection is to use TLS, so the process needs
    /// its TLS client.
    pub fn redis_wants_tls(&self) -> bool {
        self.redis_tls
            || self.redis_sentinel_tls
            || (self.redis_sentinels.is_empty()
                && self.redis_cluster.is_empty()
                && self.redis_url.starts_with("rediss://"))
    }

    /// Parses a TOML document; missing keys keep their defaults.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.message().to_string())
    }

    /// What an operator should know about how open this configuration
    /// leaves the service, one line each, for the start-up log.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let public = !self.listen.ip().is_loopback();
        if self.auth_secret.is_none() && public {
            out.push(format!(
                "no auth_secret on {}: any client may open sockets and join any room",
                self.listen
            ));
        }
        if let (Some(admin), true) = (self.admin_listen.0, self.api_key.is_empty()) {
            if !admin.ip().is_loopback() {
                out.push(format!(
                    "admin listener {admin} is not on loopback and no api_key is set: it serves probes and metrics only, not the server API"
                ));
            }
        }
        out
    }

    /// Refuses settings the service cannot run with: the first of
    /// `rules::RULES` that refuses, named by its setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for rule in rules::RULES {
            (rule.check)(self).map_err(|msg| ConfigError::Invalid {
                field: rule.field,
                msg,
            })?;
        }
        Ok(())
    }
}

/// Durations in TOML as strings like "30s" or "10ms".
mod dur {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

pub use crate::addr::{RedisAddr, RedisTarget};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_users_and_tls_go_where_they_belong() {
        let target = |flags: &[&str]| {
            Config::from_args(args(flags))
                .unwrap()
                .redis_target()
                .unwrap()
        };
        let RedisTarget::Single(a) = target(&[
            "--redis-url",
            "rediss://127.0.0.1:6380",
            "--redis-username",
            "app",
            "--redis-password",
            "pw",
        ]) else {
            panic!("expected one server");
        };
        assert_eq!((a.username.as_deref(), a.tls), (Some("app"), true));
        let RedisTarget::Sentinel {
            sentinels,
            username,
            tls,
            ..
        } = target(&[
            "--redis-sentinels",
            "127.0.0.1:26379",
            "--redis-master-name",
            "m",
            "--redis-username",
            "app",
            "--redis-password",
            "pw",
            "--redis-tls",
            "true",
            "--redis-sentinel-username",
            "watcher",
            "--redis-sentinel-password",
            "spw",
        ])
        else {
            panic!("expected sentinels");
        };
        assert_eq!((username.as_deref(), tls), (Some("app"), true));
        let s = &sentinels[0];
        assert_eq!(
            (s.username.as_deref(), s.password.as_deref(), s.tls),
            (Some("watcher"), Some("spw"), false)
        );
        let RedisTarget::Cluster { seeds } = target(&[
            "--redis-cluster",
            "127.0.0.1:7000",
            "--redis-username",
            "app",
            "--redis-password",
            "pw",
            "--redis-tls",
            "true",
        ]) else {
            panic!("expected a cluster");
        };
        assert_eq!(
            (seeds[0].username.as_deref(), seeds[0].tls),
            (Some("app"), true)
        );
    }

    #[test]
    fn tls_settings_that_cannot_hold_are_refused() {
        let dir = std::env::temp_dir().join(format!("shardcast-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "no certificate here\n").unwrap();
        let not_pem = not_pem.to_str().unwrap();
        for (a, needle) in [
            (
                vec!["--redis-url", "redis://h:1", "--redis-tls", "true"],
                "invalid redis_tls: conflicts with a redis:// URL",
            ),
            (
                vec!["--redis-url", "redis://h:1", "--redis-tls-ca-file", not_pem],
                "invalid redis_tls_ca_file: is for TLS",
            ),
            (
                vec![
                    "--redis-url",
                    "rediss://h:1",
                    "--redis-tls-ca-file",
                    "/nonexistent/ca.pem",
                ],
                "cannot read /nonexistent/ca.pem",
            ),
            (
                vec![
                    "--redis-url",
                    "rediss://h:1",
                    "--redis-tls-ca-file",
                    not_pem,
                ],
                "holds no PEM certificate",
            ),
            (vec!["--redis-sentinel-tls", "true"], "redis_sentinel_tls"),
            (
                vec!["--redis-sentinel-username", "u"],
                "redis_sentinel_username",
            ),
            (
                vec!["--redis-username", "app"],
                "redis_username needs redis_password",
            ),
            (
                vec!["--redis-url", "redis://a:b@h", "--redis-username", "c"],
                "not both",
            ),
        ] {
            let err = Config::from_args(args(&a)).unwrap_err().to_string();
            assert!(err.contains(needle), "{a:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        std::fs::remove_dir_all(dir).ok();
    }

    fn args(extra: &[&str]) -> Vec<String> {
        std::iter::once("shardcast")
            .chain(extra.iter().copied())
            .map(String::from)
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_match_the_contract() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.session_ttl, Duration::from_secs(3600));
        assert_eq!(c.flush_interval, Duration::from_millis(10));
        assert_eq!(c.max_message_bytes, 65536);
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert_eq!(c.backlog, 4096);
    }

    #[test]
    fn flags_parse_durations_and_enums() {
        let c = Config::from_args(args(&[
            "--heartbeat-interval",
            "250ms",
            "--durability",
            "sync",
            "--pubsub",
            "sharded",
            "--shards",
            "3",
            "--log-format",
            "pretty",
            "--listen",
            "127.0.0.1:0",
        ]))
        .unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(c.durability, Durability::Sync);
        assert_eq!(c.pubsub, PubsubMode::Sharded);
        assert_eq!(c.shards, 3);
        assert_eq!(c.log_format, LogFormat::Pretty);
    }

    #[test]
    fn toml_fills_what_flags_leave_out() {
        let c = Config::from_toml("color = \"green\"\nsession_ttl = \"2h\"\n").unwrap();
        assert_eq!(c.color, "green");
        assert_eq!(c.session_ttl, Duration::from_secs(7200));
        assert_eq!(c.flush_interval, Duration::from_millis(10));
    }

    /// Parses `flags` after `--config FILE`, FILE holding `toml`; `tag`
    /// keeps parallel tests' files apart.
    fn with_file(tag: &str, toml: &str, flags: &[&str]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("shardcast-cfg-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, toml).unwrap();
        let mut all = vec!["--config", file.to_str().unwrap()];
        all.extend_from_slice(flags);
        let c = Config::from_args(args(&all));
        std::fs::remove_dir_all(dir).ok();
        c
    }

    #[test]
    fn flags_win_over_the_file() {
        let c = with_file(
            "win",
            "color = \"green\"\nshards = 4\n",
            &["--color", "blue"],
        )
        .unwrap();
        assert_eq!(c.color, "blue");
        assert_eq!(c.shards, 4);
    }

    #[test]
    fn bad_values_give_one_clear_line() {
        for (a, needle) in [
            (vec!["--heartbeat-interval", "soon"], "heartbeat-interval"),
            (vec!["--redis-url", "http://x"], "redis_url"),
            (vec!["--max-message-bytes", "3"], "max_message_bytes"),
            (vec!["--flush-interval", "0s"], "flush_interval"),
            (vec!["--color", "bl ue"], "color"),
        ] {
            let err = Config::from_args(args(&a)).unwrap_err().to_string();
            assert!(err.contains(needle), "{a:?}: {err}");
        }
        let err = Config::from_toml("bogus = 1").unwrap_err();
        assert!(err.contains("bogus"), "{err}");
        // A duration near Duration::MAX overflowed `shutdown_grace * 10`
        // in validate (a panic), and a drain's deadline after it.
        for field in ["shutdown_grace", "session_ttl", "drain_retry_after"] {
            let c = Config::from_toml(&format!("{field} = \"500000000000years\"")).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field) && err.contains("10 years"), "{err}");
        }
        for (a, needle) in [
            (
                vec![
                    "--redis-url",
                    "redis://127.0.0.1:6379",
                    "--redis-sentinels",
                    "127.0.0.1:26379",
                    "--redis-master-name",
                    "m",
                ],
                "give one of redis_url, redis_sentinels and redis_cluster",
            ),
            (
                vec!["--redis-url", "redis://h:1", "--redis-cluster", "h:2"],
                "invalid redis_cluster: give one of",
            ),
            (
                vec!["--redis-cluster", "h:2", "--redis-db", "3"],
                "only database 0",
            ),
            (vec!["--redis-cluster", "h:x"], "cluster node \"h:x\""),
            (
                vec!["--redis-sentinels", "127.0.0.1:26379"],
                "redis_master_name",
            ),
            (
                vec!["--redis-sentinels", "h:x", "--redis-master-name", "m"],
                "redis_sentinels",
            ),
            (vec!["--redis-min-replicas", "99"], "redis_min_replicas"),
        ] {
            let err = Config::from_args(args(&a)).unwrap_err().to_string();
            assert!(err.contains(needle), "{a:?}: {err}");
        }
    }

    #[test]
    fn sentinels_name_the_target() {
        let c = Config::from_args(args(&[
            "--redis-sentinels",
            "127.0.0.1:26379,[::1]:26380",
            "--redis-master-name",
            "main",
        ]))
        .unwrap();
        let RedisTarget::Sentinel {
            sentinels,
            master,
            password,
            db,
            ..
        } = c.redis_target().unwrap()
        else {
            panic!("expected sentinels");
        };
        assert_eq!(master, "main");
        assert_eq!(sentinels.len(), 2);
        assert_eq!(sentinels[1].port, 26380);
        assert_eq!(
            (password, db, sentinels[0].password.clone()),
            (None, 0, None)
        );
        let c = Config::default();
        assert!(matches!(c.redis_target(), Ok(RedisTarget::Single(_))));
    }

    #[test]
    fn passwords_and_the_database_go_where_they_belong() {
        let c = Config::from_args(args(&[
            "--redis-sentinels",
            "127.0.0.1:26379",
            "--redis-master-name",
            "main",
            "--redis-password",
            "data-pw",
            "--redis-db",
            "3",
            "--redis-sentinel-password",
            "sentinel-pw",
        ]))
        .unwrap();
        let RedisTarget::Sentinel {
            sentinels,
            password,
            db,
            ..
        } = c.redis_target().unwrap()
        else {
            panic!("expected sentinels");
        };
        assert_eq!(password.as_deref(), Some("data-pw"));
        assert_eq!(db, 3);
        assert_eq!(sentinels[0].password.as_deref(), Some("sentinel-pw"));
        assert_eq!(sentinels[0].db, 0);
        // Logs may show an address, never its password.
        assert!(!format!("{:?}", sentinels[0]).contains("sentinel-pw"));

        let c = Config::from_args(args(&["--redis-password", "pw"])).unwrap();
        let Ok(RedisTarget::Single(a)) = c.redis_target() else {
            panic!("expected one server");
        };
        assert_eq!(a.password.as_deref(), Some("pw"));

        let refused = |flags: &[&str], field: &str| {
            let err = Config::from_args(args(flags)).unwrap_err().to_string();
            assert!(err.contains(field), "{flags:?}: {err}");
        };
        refused(
            &["--redis-url", "redis://:a@h:1", "--redis-password", "b"],
            "not both",
        );
        refused(&["--redis-db", "2"], "URL's path");
        refused(
            &["--redis-sentinel-password", "x"],
            "redis_sentinel_password",
        );
    }

    #[test]
    fn one_definition_makes_flags_env_file_and_defaults_agree() {
        // clap's own consistency checks over the one struct.
        Config::command().debug_assert();
        // Every setting survives the file's round trip unchanged, and every
        // one but `config` is a TOML key.
        let d = Config::default();
        let table = toml::Table::try_from(&d).unwrap();
        let back: Config = table.clone().try_into().unwrap();
        assert_eq!(format!("{back:?}"), format!("{d:?}"));
        let flags = Config::command()
            .get_arguments()
            .filter(|a| a.get_long().is_some())
            .count();
        // auth_secret, the two passwords, the two ACL users and
        // redis_tls_ca_file default to none, so the table lacks them.
        assert_eq!(table.len() + 6, flags - 1);
        assert!(Config::from_toml("config = \"x.toml\"").is_err());
    }

    #[test]
    fn api_keys_and_the_admin_listener() {
        let c = Config::default();
        assert_eq!(c.admin_listen.0, Some("127.0.0.1:9180".parse().unwrap()));
        assert!(c.api_key.is_empty());
        let c = Config::from_args(args(&[
            "--admin-listen",
            "off",
            "--api-key",
            "first-key-0123456789,second-key-0123456789",
        ]))
        .unwrap();
        assert_eq!(c.admin_listen, AdminListen(None));
        assert_eq!(c.api_key.len(), 2);
        let c = with_file(
            "keys",
            "api_key = [\"file-key-0123456789\"]\nadmin_listen = \"off\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            (c.api_key, c.admin_listen),
            (vec!["file-key-0123456789".to_string()], AdminListen(None))
        );
        for bad in ["short", "has space 0123456789", &"x".repeat(300)] {
            let err = Config::from_args(args(&["--api-key", bad])).unwrap_err();
            assert!(err.to_string().contains("api_key"), "{bad}: {err}");
        }
        let err = Config::from_args(args(&["--admin-listen", "nowhere"])).unwrap_err();
        assert!(err.to_string().contains("admin-listen"), "{err}");
    }

    #[test]
    fn open_doors_are_said_at_start() {
        let c = Config::from_args(args(&["--listen", "0.0.0.0:8080"])).unwrap();
        let w = c.warnings().join("\n");
        assert!(w.contains("no auth_secret"), "{w}");
        let c = Config::from_args(args(&[
            "--listen",
            "127.0.0.1:8080",
            "--admin-listen",
            "0.0.0.0:9180",
        ]))
        .unwrap();
        let w = c.warnings().join("\n");
        assert!(
            !w.contains("auth_secret") && w.contains("not on loopback"),
            "{w}"
        );
        let c = Config::from_args(args(&[
            "--listen",
            "0.0.0.0:8080",
            "--auth-secret",
            "0123456789abcdef",
            "--api-key",
            "the-key-0123456789",
            "--admin-listen",
            "0.0.0.0:9180",
        ]))
        .unwrap();
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    }

    #[test]
    fn a_file_url_and_sentinel_flags_conflict() {
        let err = with_file(
            "both",
            "redis_url = \"redis://10.0.0.5:6379\"\n",
            &[
                "--redis-sentinels",
                "127.0.0.1:26379",
                "--redis-master-name",
                "m",
            ],
        )
        .unwrap_err();
        assert!(err.to_string().contains("give one of"), "{err}");
    }

    #[test]
    fn cluster_seeds_share_the_password() {
        let c = Config::from_args(args(&[
            "--redis-cluster",
            "10.0.0.1:7000,10.0.0.2:7001",
            "--redis-password",
            "pw",
        ]))
        .unwrap();
        let Ok(RedisTarget::Cluster { seeds }) = c.redis_target() else {
            panic!("expected a cluster");
        };
        assert_eq!(seeds.len(), 2);
        assert_eq!(seeds[1].port, 7001);
        assert!(seeds.iter().all(|s| s.password.as_deref() == Some("pw")));
    }
}
