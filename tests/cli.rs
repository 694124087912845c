//! The binary's answers before it starts anything: `--help` and `--version`
//! on stdout with exit 0, a flag clap refuses on stderr in one line with exit
//! 64. Neither Redis nor root: the process exits before it would need them.

use std::process::{Command, Output};

fn shardcast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_and_version_are_answers_on_stdout() {
    for flag in ["--help", "-h"] {
        let out = shardcast(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let stdout = text(&out.stdout);
        assert!(
            stdout.starts_with("Sharded thread-per-core") && stdout.contains("--redis-url"),
            "{flag}: {stdout}"
        );
        assert!(out.stderr.is_empty(), "{flag}: {}", text(&out.stderr));
    }
    // Help wins over a flag that would be refused, as clap reads it.
    let out = shardcast(&["--help", "--bogus"]);
    assert_eq!(out.status.code(), Some(0));
    for flag in ["--version", "-V"] {
        let out = shardcast(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let want = format!("shardcast {}\n", env!("CARGO_PKG_VERSION"));
        assert_eq!(text(&out.stdout), want, "{flag}");
    }
}

#[test]
fn a_refused_flag_is_one_line_and_exit_64() {
    for (args, want) in [
        (
            &["--bogus"][..],
            "shardcast: unexpected argument '--bogus' found\n",
        ),
        (
            &["--shards", "x"][..],
            "shardcast: invalid value 'x' for '--shards <SHARDS>': invalid digit found in string\n",
        ),
    ] {
        let out = shardcast(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert_eq!(text(&out.stderr), want, "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
