//! Fuzzes the TOML config (`shardcast::Config::from_toml`) and what comes
//! after a file parses: `validate`, and the Redis settings, which each
//! shard reads on start believing that a validated config has them right.
//!
//! Properties (a violation panics, which libFuzzer reports as a crash):
//! - nothing panics, whatever the text;
//! - a config that validates has Redis settings that parse
//!   (`redis_target`), as `shard::run` expects of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut cfg) = Config::from_toml(text) else {
        return;
    };
    // Validation reads a CA file a config names; a named device (such as
    // /dev/zero) would hang the fuzzer, not find a bug.
    cfg.redis_tls_ca_file = None;
    if let Err(e) = cfg.validate() {
        assert!(!e.to_string().is_empty());
        return;
    }
    if let Err(e) = cfg.redis_target() {
        panic!("a validated config has Redis settings that do not parse: {e}");
    }
});
