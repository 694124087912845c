//! Log output: one JSON object per line on stdout (`ts`, `level`, `target`,
//! `msg`, then the event's own fields, then `shard` and `color`), or pretty
//! text for people.
//!
//! tracing-subscriber's own JSON layout nests fields under `fields` and names
//! the timestamp `timestamp`; the contract names them flat, so the line is
//! written here.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

static COLOR: OnceLock<String> = OnceLock::new();

thread_local! {
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Marks the current thread as shard `id`, so its lines carry `shard`.
pub fn set_shard(id: usize) {
    SHARD.with(|s| s.set(Some(id)));
}

/// Installs the global subscriber. Safe to call more than once (tests): later
/// calls keep the first subscriber.
pub fn init(format: LogFormat, filter: &str, color: &str) {
    let _ = COLOR.set(color.to_string());
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let result = match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .event_format(JsonLines)
            .with_writer(std::io::stdout)
            .try_init(),
        LogFormat::Pretty => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stdout)
            .try_init(),
    };
    let _ = result;
}

static PANICKED: AtomicBool = AtomicBool::new(false);

/// Makes a panic one log line, like any other: `msg` "panic", with the
/// panic's message, its location, the thread, and a backtrace (captured
/// whatever `RUST_BACKTRACE` says: a panic in production is the case it is
/// for). The shard the thread runs is on the line as always. The process
/// then ends non-zero ([`panicked`]), so a supervisor restarts it.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        PANICKED.store(true, Ordering::SeqCst);
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("a panic with a payload that is not text");
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let backtrace = std::backtrace::Backtrace::force_capture();
        tracing::error!(
            panic = message,
            location = %location,
            thread = thread.name().unwrap_or("unnamed"),
            backtrace = %backtrace,
            "panic"
        );
    }));
}

/// Whether any thread panicked since [`install_panic_hook`]: the exit
/// code must say so even when the process otherwise ended in order.
pub fn panicked() -> bool {
    PANICKED.load(Ordering::SeqCst)
}

/// Current time as RFC 3339 UTC with milliseconds and `Z`, the contract's form.
pub fn rfc3339_millis(t: std::time::SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        dt.year(),
        dt.month() as u8,
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.millisecond()
    )
}

struct JsonLines;

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(key(field), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(key(field), Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(key(field), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(key(field), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(key(field), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(key(field), Value::from(value));
    }
}

fn key(field: &Field) -> String {
    match field.name() {
        "message" => "msg".into(),
        other => other.into(),
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut map = Map::new();
        map.insert(
            "ts".into(),
            Value::String(rfc3339_millis(std::time::SystemTime::now())),
        );
        map.insert(
            "level".into(),
            Value::String(meta.level().as_str().to_ascii_lowercase()),
        );
        map.insert("target".into(), Value::String(meta.target().to_string()));
        map.insert("msg".into(), Value::String(String::new()));
        event.record(&mut Fields(&mut map));
        if let Some(id) = SHARD.with(|s| s.get()) {
            map.entry("shard").or_insert(Value::from(id));
        }
        if let Some(c) = COLOR.get() {
            map.entry("color").or_insert(Value::String(c.clone()));
        }
        let line = serde_json::to_string(&map).map_err(|_| fmt::Error)?;
        writeln!(w, "{line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_have_millis_and_z() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339_millis(t), "2023-11-14T22:13:20.123Z");
    }
}
