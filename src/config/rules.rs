//! What `Config::validate` refuses, as a table: each rule names the setting
//! a refusal points at, the other settings it reads, and its check. A new
//! setting's check is one more entry in `RULES`.

use std::fmt::Display;
use std::time::Duration;

use super::{Config, RedisAddr, MAX_DURATION};

/// One check of the configuration.
pub(crate) struct Rule {
    /// The setting a refusal names: the one to change.
    pub field: &'static str,
    /// The other settings the check reads (a pair rule's partner); empty
    /// when it reads `field` alone.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "for readers; the tests hold it to real settings")
    )]
    pub reads: &'static [&'static str],
    /// Why `field` is refused, as printed after `invalid {field}: `.
    pub check: fn(&Config) -> Result<(), String>,
}

impl Rule {
    const fn of(field: &'static str, check: fn(&Config) -> Result<(), String>) -> Rule {
        Rule {
            field,
            reads: &[],
            check,
        }
    }

    const fn with(
        field: &'static str,
        reads: &'static [&'static str],
        check: fn(&Config) -> Result<(), String>,
    ) -> Rule {
        Rule {
            field,
            reads,
            check,
        }
    }
}

/// Every rule, in the order `validate` tries them. Only the first refusal
/// is reported, so the order decides which of several an operator sees.
pub(crate) static RULES: &[Rule] = &[
    Rule::of("redis_url", redis_url),
    // The three ways to reach Redis: each refuses what belongs to another,
    // then what `redis_target` would refuse is said against its own field.
    Rule::with("redis_db", &["redis_cluster", "redis_sentinels"], |c| {
        match (redis(c), c.redis_db) {
            (_, 0) | (Redis::Sentinels, _) => Ok(()),
            (Redis::Cluster, _) => Err("a Redis Cluster has only database 0".into()),
            (Redis::Single, _) => Err("is for redis_sentinels; with redis_url the database is the URL's path (redis://host:port/db)".into()),
        }
    }),
    Rule::with("redis_sentinel_password", SENTINELS, |c| {
        sentinel_only(c, c.redis_sentinel_password.is_some())
    }),
    Rule::with("redis_sentinel_username", SENTINELS, |c| {
        sentinel_only(c, c.redis_sentinel_username.is_some())
    }),
    Rule::with("redis_sentinel_tls", SENTINELS, |c| {
        sentinel_only(c, c.redis_sentinel_tls)
    }),
    Rule::with("redis_tls", &["redis_url"], |c| {
        if redis(c) == Redis::Single && c.redis_tls && c.redis_url.starts_with("redis://") {
            return Err("conflicts with a redis:// URL: write rediss:// for TLS".into());
        }
        Ok(())
    }),
    Rule::with("redis_master_name", SENTINELS, |c| {
        if redis(c) == Redis::Sentinels && c.redis_master_name.is_empty() {
            return Err("is needed with redis_sentinels".into());
        }
        Ok(())
    }),
    Rule::with("redis_cluster", TARGET, |c| target(c, Redis::Cluster)),
    Rule::with("redis_password", TARGET, |c| target(c, Redis::Single)),
    Rule::with("redis_sentinels", TARGET, |c| target(c, Redis::Sentinels)),
    Rule::with(
        "redis_tls_ca_file",
        &["redis_url", "redis_tls", "redis_sentinel_tls"],
        redis_tls_ca_file,
    ),
    Rule::of("redis_min_replicas", |c| at_most(c.redis_min_replicas, 16)),
    Rule::of("color", |c| {
        let ok = |ch: char| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_';
        if c.color.is_empty() || !c.color.chars().all(ok) {
            return Err(format!("{:?} must be letters, digits, - or _", c.color));
        }
        Ok(())
    }),
    Rule::of("heartbeat_interval", |c| {
        duration(c.heartbeat_interval, Zero::Refused, Duration::ZERO)
    }),
    Rule::of("session_ttl", |c| {
        duration(c.session_ttl, Zero::Refused, SECOND)
    }),
    Rule::of("sync_timeout", |c| {
        duration(c.sync_timeout, Zero::Refused, Duration::from_millis(10))
    }),
    Rule::of("flush_interval", |c| {
        duration(c.flush_interval, Zero::Refused, Duration::ZERO)
    }),
    Rule::of("shutdown_grace", |c| {
        duration(c.shutdown_grace, Zero::Refused, Duration::ZERO)
    }),
    Rule::of("handshake_timeout", |c| {
        duration(c.handshake_timeout, Zero::Refused, Duration::ZERO)
    }),
    Rule::of("admin_request_timeout", |c| {
        duration(c.admin_request_timeout, Zero::Refused, Duration::ZERO)
    }),
    Rule::of("idle_timeout", |c| {
        duration(c.idle_timeout, Zero::Off, SECOND)
    }),
    Rule::of("history_probe_interval", |c| {
        duration(
            c.history_probe_interval,
            Zero::Off,
            Duration::from_millis(100),
        )
    }),
    Rule::of("history_ttl", |c| {
        duration(c.history_ttl, Zero::Off, Duration::ZERO)
    }),
    Rule::of("drain_retry_after", |c| {
        duration(c.drain_retry_after, Zero::Off, Duration::ZERO)
    }),
    Rule::of("deflate_min_bytes", |c| {
        at_most(c.deflate_min_bytes, 64 << 20)
    }),
    Rule::of("max_message_bytes", |c| {
        between(c.max_message_bytes, 125, 64 << 20)
    }),
    Rule::of("max_connections", |c| at_least(c.max_connections, 1)),
    Rule::of("allowed_origins", |c| {
        let not_origin = |o: &&String| {
            !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/')
        };
        match c.allowed_origins.iter().find(not_origin) {
            Some(o) => Err(format!("`{o}` is not an origin like https://example.com")),
            None => Ok(()),
        }
    }),
    Rule::of("auth_secret", |c| {
        if c.auth_secret.as_ref().is_some_and(|k| k.len() < 16) {
            return Err("must be at least 16 bytes".into());
        }
        Ok(())
    }),
    Rule::of("api_key", |c| {
        let bad = |k: &String| {
            k.len() < 16 || k.len() > 256 || !k.bytes().all(|b| b.is_ascii_graphic() && b != b',')
        };
        if c.api_key.iter().any(bad) {
            return Err(
                "each key must be 16 to 256 printable characters, without spaces or commas".into(),
            );
        }
        Ok(())
    }),
    Rule::of("admin_max_connections", |c| {
        between(c.admin_max_connections, 1, 16_384)
    }),
    Rule::of("max_header_bytes", |c| {
        between(c.max_header_bytes, 1024, 1 << 20)
    }),
    Rule::of("read_buffer_bytes", |c| {
        between(c.read_buffer_bytes, 256, 1 << 20)
    }),
    Rule::with("rate_burst", &["rate_limit"], |c| {
        if c.rate_limit > 0 && c.rate_burst == 0 {
            return Err("must be at least 1 when rate_limit is on".into());
        }
        Ok(())
    }),
    Rule::of("max_rooms", |c| at_least(c.max_rooms, 1)),
    Rule::of("presence_ttl", |c| {
        if c.presence && c.presence_ttl < c.heartbeat_interval * 2 {
            return Err(format!(
                "must be at least twice heartbeat_interval ({})",
                humantime::format_duration(c.heartbeat_interval * 2)
            ));
        }
        Ok(())
    }),
    Rule::of("presence_events", |c| {
        for p in &c.presence_events {
            let name = p.strip_suffix('*').unwrap_or(p);
            if !name.is_empty() && crate::pubsub::check_room(name).is_err() {
                return Err(format!("{p:?} is not a room name or a prefix ending in *"));
            }
        }
        Ok(())
    }),
    Rule::of("max_rooms_per_socket", |c| {
        at_least(c.max_rooms_per_socket, 1)?;
        at_most(c.max_rooms_per_socket, 4096)
    }),
    Rule::of("history_size", |c| {
        at_most(c.history_size, 100_000).map_err(|m| m + " (0 turns history off)")
    }),
    Rule::with("history_ttl", &["history_size"], |c| {
        if c.history_size > 0 && c.history_ttl < SECOND {
            return Err("must be at least 1s while history is on".into());
        }
        Ok(())
    }),
    Rule::of("outbound_queue", |c| at_least(c.outbound_queue, 1)),
    Rule::with("drain_retry_after", &["shutdown_grace"], |c| {
        // Checked, not multiplied: this rule must not panic on a grace
        // that its own rule is about to refuse.
        let ceiling = c.shutdown_grace.checked_mul(10).unwrap_or(Duration::MAX);
        if c.drain_retry_after >= ceiling {
            return Err("is implausibly long next to shutdown_grace".into());
        }
        Ok(())
    }),
    Rule::of("log_level", |c| {
        tracing_subscriber::EnvFilter::try_new(&c.log_level)
            .map(drop)
            .map_err(|e| e.to_string())
    }),
];

const SECOND: Duration = Duration::from_secs(1);

/// What a Sentinel-only setting's rule reads besides itself.
const SENTINELS: &[&str] = &["redis_sentinels", "redis_cluster"];

/// What `redis_target` reads, so what its three rules read (each its own
/// field too: the list is shared).
const TARGET: &[&str] = &[
    "redis_url",
    "redis_cluster",
    "redis_sentinels",
    "redis_master_name",
    "redis_username",
    "redis_password",
    "redis_sentinel_username",
    "redis_sentinel_password",
    "redis_db",
    "redis_tls",
    "redis_sentinel_tls",
];

/// How the shards reach Redis, in `redis_target`'s order of precedence.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Redis {
    Cluster,
    Single,
    Sentinels,
}

fn redis(c: &Config) -> Redis {
    if !c.redis_cluster.is_empty() {
        Redis::Cluster
    } else if c.redis_sentinels.is_empty() {
        Redis::Single
    } else {
        Redis::Sentinels
    }
}

fn redis_url(c: &Config) -> Result<(), String> {
    if !c.redis_url.starts_with("redis://") && !c.redis_url.starts_with("rediss://") {
        return Err(format!(
            "{:?} must start with redis:// or rediss://",
            c.redis_url
        ));
    }
    RedisAddr::parse(&c.redis_url).map(drop)
}

fn sentinel_only(c: &Config, given: bool) -> Result<(), String> {
    if given && redis(c) != Redis::Sentinels {
        return Err("is for redis_sentinels".into());
    }
    Ok(())
}

/// What `redis_target` refuses (a node address, a password given twice),
/// when Redis is reached the way `way`.
fn target(c: &Config, way: Redis) -> Result<(), String> {
    if redis(c) == way {
        c.redis_target()?;
    }
    Ok(())
}

fn redis_tls_ca_file(c: &Config) -> Result<(), String> {
    let Some(path) = &c.redis_tls_ca_file else {
        return Ok(());
    };
    if !c.redis_wants_tls() {
        return Err("is for TLS: a rediss:// URL, redis_tls or redis_sentinel_tls".into());
    }
    crate::tls::ca_roots(path)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Whether a duration of 0 turns its feature off or is refused.
#[derive(Clone, Copy)]
enum Zero {
    Off,
    Refused,
}

/// A duration up to `MAX_DURATION`, at least `min` unless 0 is allowed.
fn duration(d: Duration, zero: Zero, min: Duration) -> Result<(), String> {
    if d > MAX_DURATION {
        return Err("must be at most 10 years".into());
    }
    let min_text = humantime::format_duration(min);
    match zero {
        Zero::Off if d.is_zero() => Ok(()),
        Zero::Off if d < min => Err(format!("must be 0 (off) or at least {min_text}")),
        Zero::Refused if d.is_zero() => Err("must be greater than 0".into()),
        Zero::Refused if d < min => Err(format!("must be at least {min_text}")),
        _ => Ok(()),
    }
}

fn at_least<T: PartialOrd + Display>(v: T, min: T) -> Result<(), String> {
    if v < min {
        return Err(format!("must be at least {min}"));
    }
    Ok(())
}

fn at_most<T: PartialOrd + Display>(v: T, max: T) -> Result<(), String> {
    if v > max {
        return Err(format!("must be at most {max}"));
    }
    Ok(())
}

fn between<T: PartialOrd + Display>(v: T, min: T, max: T) -> Result<(), String> {
    if v < min || v > max {
        return Err(format!("must be between {min} and {max}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The first refusal among the rules that name `field`, for `c`.
    fn refusal(field: &str, c: &Config) -> Option<String> {
        let mut named = RULES.iter().filter(|r| r.field == field).peekable();
        assert!(named.peek().is_some(), "no rule names {field}");
        named.find_map(|r| (r.check)(c).err())
    }

    fn config(edit: impl FnOnce(&mut Config)) -> Config {
        let mut c = Config::default();
        edit(&mut c);
        c
    }

    #[test]
    fn every_rule_names_real_settings() {
        let cmd = Config::command();
        let settings: Vec<&str> = cmd.get_arguments().map(|a| a.get_id().as_str()).collect();
        for rule in RULES {
            for f in std::iter::once(&rule.field).chain(rule.reads) {
                assert!(
                    settings.contains(f),
                    "{}'s rule: {f} is no setting",
                    rule.field
                );
            }
        }
    }

    #[test]
    fn the_defaults_pass_every_rule() {
        let c = Config::default();
        for rule in RULES {
            assert_eq!((rule.check)(&c), Ok(()), "{}", rule.field);
        }
    }

    #[test]
    fn a_range_rule() {
        for ok in [125, 64 << 20] {
            assert_eq!(
                refusal("max_message_bytes", &config(|c| c.max_message_bytes = ok)),
                None
            );
        }
        for bad in [124, (64 << 20) + 1] {
            assert_eq!(
                refusal("max_message_bytes", &config(|c| c.max_message_bytes = bad)).as_deref(),
                Some("must be between 125 and 67108864")
            );
        }
    }

    #[test]
    fn duration_rules() {
        let idle = |d| refusal("idle_timeout", &config(|c| c.idle_timeout = d));
        assert_eq!(idle(Duration::ZERO), None, "0 turns it off");
        assert_eq!(idle(SECOND), None);
        assert_eq!(
            idle(Duration::from_millis(500)).as_deref(),
            Some("must be 0 (off) or at least 1s")
        );
        assert_eq!(
            idle(MAX_DURATION + SECOND).as_deref(),
            Some("must be at most 10 years")
        );
        let beat = |d| refusal("heartbeat_interval", &config(|c| c.heartbeat_interval = d));
        assert_eq!(beat(Duration::from_millis(1)), None);
        assert_eq!(
            beat(Duration::ZERO).as_deref(),
            Some("must be greater than 0")
        );
    }

    #[test]
    fn pair_rules_read_their_partner() {
        let burst = |limit, burst| {
            refusal(
                "rate_burst",
                &config(|c| (c.rate_limit, c.rate_burst) = (limit, burst)),
            )
        };
        assert_eq!(burst(0, 0), None, "no limit, no bucket");
        assert_eq!(burst(10, 1), None);
        assert_eq!(
            burst(10, 0).as_deref(),
            Some("must be at least 1 when rate_limit is on")
        );
        let drain = |retry: u64, grace| {
            refusal(
                "drain_retry_after",
                &config(|c| {
                    c.drain_retry_after = Duration::from_secs(retry);
                    c.shutdown_grace = grace;
                }),
            )
        };
        assert_eq!(drain(1, Duration::from_secs(10)), None);
        assert!(drain(100, Duration::from_secs(10)).is_some());
        // Another rule refuses this grace; this one must not panic on it.
        assert_eq!(drain(1, Duration::MAX), None);
    }

    #[test]
    fn redis_rules_follow_the_way_redis_is_reached() {
        let single = config(|c| c.redis_db = 3);
        let sentinels = config(|c| {
            c.redis_db = 3;
            c.redis_sentinels = vec!["127.0.0.1:26379".into()];
            c.redis_master_name = "m".into();
        });
        let cluster = config(|c| {
            c.redis_db = 3;
            c.redis_cluster = vec!["127.0.0.1:7000".into()];
        });
        assert!(refusal("redis_db", &single).unwrap().contains("URL's path"));
        assert_eq!(refusal("redis_db", &sentinels), None);
        assert!(refusal("redis_db", &cluster)
            .unwrap()
            .contains("only database 0"));
        let tls = |mut c: Config| {
            c.redis_sentinel_tls = true;
            refusal("redis_sentinel_tls", &c)
        };
        assert_eq!(tls(sentinels.clone()).as_deref(), None);
        assert_eq!(tls(cluster).as_deref(), Some("is for redis_sentinels"));
        let nameless = config(|c| c.redis_sentinels = vec!["127.0.0.1:26379".into()]);
        assert!(refusal("redis_master_name", &nameless).is_some());
        assert_eq!(refusal("redis_sentinels", &sentinels), None);
    }

    #[test]
    fn validate_reports_the_first_refusal_under_its_field() {
        let c = config(|c| {
            c.rate_burst = 0;
            c.max_rooms = 0;
        });
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid rate_burst: must be at least 1 when rate_limit is on"
        );
    }
}
