//! The configuration reference (docs/CONFIG.md), rendered from clap's view
//! of `Config` and serde's list of its keys, so that the page says what the
//! code does; `make docs` writes it, and a test fails while it is stale.

use clap::{Arg, ArgAction, Command, CommandFactory};
use serde::de::{self, Deserialize, Visitor};

use super::Config;

/// How to regenerate the page, in its header and in the staleness test's
/// failure.
const REGENERATE: &str = "make docs";

/// What holds for every setting, said once above the tables.
const PREAMBLE: &str = "\
Every setting is a flag, an environment variable and a TOML key. Precedence:
**flags > environment > TOML file** (`--config FILE` or `SHARDCAST_CONFIG`) **> defaults**.
Durations are written like `30s`, `10ms`, `1h`, `1h 30m`. Booleans take a value
(`--pin false`, `SHARDCAST_PIN=false`). Unknown TOML keys are refused. Bad
configuration prints one line on stderr and exits 64.";

/// The whole page, docs/CONFIG.md.
pub fn reference_markdown() -> String {
    render(&Config::command(), serde_keys::<Config>())
}

/// The page for `cmd`, whose settings are TOML keys when `keys` has them.
fn render(cmd: &Command, keys: &[&str]) -> String {
    let mut out = format!(
        "# Configuration reference\n\n<!-- Generated from `Config` (src/config.rs) by `{REGENERATE}`: \
         edit the doc comments there, not this file. -->\n\n{PREAMBLE}\n"
    );
    let shown: Vec<&Arg> = cmd.get_arguments().filter(|a| shown(a)).collect();
    // clap's order: what has no heading first, then each heading as it
    // first appears.
    let mut headings: Vec<Option<&str>> = vec![None];
    for arg in &shown {
        if !headings.contains(&arg.get_help_heading()) {
            headings.push(arg.get_help_heading());
        }
    }
    for heading in headings {
        let args: Vec<&Arg> = shown
            .iter()
            .copied()
            .filter(|a| a.get_help_heading() == heading)
            .collect();
        if args.is_empty() {
            continue;
        }
        out.push_str(&format!("\n## {}\n\n", heading.unwrap_or("Settings")));
        out.push_str("| flag | environment | TOML key | default | meaning |\n");
        out.push_str("|---|---|---|---|---|\n");
        for arg in args {
            out.push_str(&row(arg, keys));
        }
    }
    out
}

/// Whether `--help` shows `arg`: hidden settings stay out of the page too,
/// and so do clap's own `--help` and `--version`.
fn shown(arg: &Arg) -> bool {
    let clap_own = matches!(
        arg.get_action(),
        ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
    );
    !arg.is_hide_set() && !clap_own && arg.get_long().is_some()
}

fn row(arg: &Arg, keys: &[&str]) -> String {
    let id = arg.get_id().as_str();
    let code = |s: &str| format!("`{s}`");
    let flag = code(&format!("--{}", arg.get_long().unwrap_or(id)));
    let env = match arg.get_env() {
        Some(e) if !arg.is_hide_env_set() => code(&e.to_string_lossy()),
        _ => "–".into(),
    };
    let key = if keys.contains(&id) {
        code(id)
    } else {
        "–".into()
    };
    format!(
        "| {flag} | {env} | {key} | {} | {} |\n",
        default(arg),
        cell(&meaning(arg))
    )
}

/// The declared default. A default that clap is told to hide (one worked
/// out at start, which would differ between machines) is left to the
/// meaning, where its rule is said.
fn default(arg: &Arg) -> String {
    if arg.is_hide_default_value_set() {
        return "see meaning".into();
    }
    let values: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    match values.as_slice() {
        [] => "none".into(),
        [one] if one.is_empty() => "empty".into(),
        _ => cell(&format!("`{}`", values.join(","))),
    }
}

/// The help text, then the values a setting takes when it names them, and
/// how to give several when it takes a list.
fn meaning(arg: &Arg) -> String {
    let help = arg.get_long_help().or(arg.get_help());
    let mut out = sentence(help.map(|h| h.to_string()).unwrap_or_default());
    let values = arg.get_possible_values();
    let values: Vec<_> = values.iter().filter(|v| !v.is_hide_set()).collect();
    if values.iter().any(|v| v.get_help().is_some()) {
        // Explained values, one to a line: their help has its own
        // punctuation, which a run-on list would blur.
        for v in values {
            let help = v.get_help().map(|h| h.to_string()).unwrap_or_default();
            out.push_str(&format!("<br>`{}`: {}", v.get_name(), sentence(help)));
        }
    } else if !values.is_empty() {
        let names: Vec<String> = values
            .iter()
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        out.push_str(&format!(" Values: {}.", names.join(", ")));
    }
    if let Some(d) = arg.get_value_delimiter() {
        out.push_str(&format!(
            " Several: `{d}`-separated in the flag and the variable, a list in TOML."
        ));
    }
    out.trim().to_string()
}

/// Help text ends in a full stop: clap drops the one a one-paragraph doc
/// comment ends with, which `--help` wants and a table of prose does not.
fn sentence(mut text: String) -> String {
    if !text.is_empty() && !text.ends_with('.') {
        text.push('.');
    }
    text
}

/// Text made safe for one table cell: paragraphs become line breaks, and a
/// `|` does not end the cell.
fn cell(text: &str) -> String {
    text.split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("<br><br>")
        .replace('|', "\\|")
}

/// The keys serde reads for `T`: the list its derived `Deserialize` hands
/// to `deserialize_struct`, caught by a deserializer that answers nothing
/// else. Skipped fields are not in it, renamed ones are, as renamed.
fn serde_keys<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut keys: &'static [&'static str] = &[];
    // The probe always errs: it has no values to give.
    let _ = T::deserialize(KeyProbe(&mut keys));
    keys
}

struct KeyProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for KeyProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("a key probe holds no values"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("a key probe holds no values"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_config_md_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CONFIG.md");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        let fresh = reference_markdown();
        if committed == fresh {
            return;
        }
        let line = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(fresh.lines().count()));
        panic!(
            "docs/CONFIG.md is stale (first difference at line {}: the file has {:?}, the code makes {:?}); \
             regenerate it with `{REGENERATE}` (cargo run --example config_reference) and commit it",
            line + 1,
            committed.lines().nth(line).unwrap_or("<end>"),
            fresh.lines().nth(line).unwrap_or("<end>"),
        );
    }

    #[test]
    fn every_toml_key_is_a_flag_and_only_config_is_no_key() {
        let keys = serde_keys::<Config>();
        let cmd = Config::command();
        let ids: Vec<&str> = cmd.get_arguments().map(|a| a.get_id().as_str()).collect();
        for key in keys {
            assert!(ids.contains(key), "TOML key {key} has no flag");
        }
        let keyless: Vec<&str> = ids.into_iter().filter(|i| !keys.contains(i)).collect();
        assert_eq!(keyless, ["config"]);
    }

    #[test]
    fn a_row_says_flag_env_key_default_values_and_lists() {
        let page = reference_markdown();
        let row = |flag: &str| {
            page.lines()
                .find(|l| l.starts_with(&format!("| `--{flag}` |")))
                .unwrap_or_else(|| panic!("no row for --{flag}"))
                .to_string()
        };
        assert!(row("config").starts_with("| `--config` | `SHARDCAST_CONFIG` | – | none |"));
        let pubsub = row("pubsub");
        assert!(pubsub.contains("| `pubsub` | `plain` |"), "{pubsub}");
        assert!(pubsub.contains("<br>`sharded`: SPUBLISH"), "{pubsub}");
        assert!(row("pin").contains("Values: `true`, `false`."));
        assert!(row("api-key").contains("`,`-separated"));
        assert!(row("redis-master-name").contains("| empty |"));
        // The rule, not this machine's count.
        assert!(row("shards").contains("| `0` | Number of shards; 0 = one per online CPU"));
        assert!(!page.contains("conformance-echo"), "hidden stays hidden");
    }

    #[test]
    fn headings_group_rows_and_hidden_defaults_are_left_to_the_meaning() {
        let cmd = Command::new("t")
            .arg(Arg::new("a").long("a").help("Plain"))
            .arg(
                Arg::new("b")
                    .long("b")
                    .help_heading("Limits")
                    .default_value("8")
                    .hide_default_value(true)
                    .help("One per CPU | core"),
            );
        let page = render(&cmd, &["b"]);
        let settings = page.find("## Settings").unwrap();
        let limits = page.find("## Limits").unwrap();
        assert!(settings < limits, "{page}");
        assert!(page.contains("| `--a` | – | – | none | Plain. |"), "{page}");
        assert!(
            page.contains("| `--b` | – | `b` | see meaning | One per CPU \\| core. |"),
            "{page}"
        );
    }
}
