//! The host tuning kit (`tuning/`): `check` judges each knob of the sysctl
//! conf by its rule against a fake `/proc/sys` tree (LOW, a too narrow range,
//! missing, ok; table and `--json`) and parses the real one; `apply` lists
//! exactly the failing knobs in a dry run without writing, then fixes them
//! without lowering anything, installs the files, and is idempotent; and the
//! recommendation files agree with each other and with the server's defaults.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

fn tuning(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tuning")
        .join(file)
}

/// The sysctl conf's knobs in order: (key, recommended value, rule).
fn conf_knobs() -> Vec<(String, String, String)> {
    let text = fs::read_to_string(tuning("sysctl.d/60-shardcast.conf")).unwrap();
    let mut rule = None;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(r) = line.strip_prefix("# check:") {
            rule = Some(r.trim().to_string());
        } else if !line.is_empty() && !line.starts_with('#') {
            let (key, value) = line.split_once('=').expect("key = value");
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            let rule = rule
                .take()
                .unwrap_or_else(|| panic!("{line}: no check rule"));
            out.push((key.trim().to_string(), value, rule));
        }
    }
    assert!(out.len() >= 15, "only {} knobs in the conf", out.len());
    out
}

/// A temporary directory standing in for `/`, removed on drop.
struct FakeRoot(PathBuf);

impl FakeRoot {
    /// Every knob at its recommended value (tab-separated, as the kernel
    /// prints multi-field values), and limits that meet the limits file.
    fn good(name: &str) -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "shardcast-tuning-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        let root = FakeRoot(dir);
        for (key, value, _) in conf_knobs() {
            root.set(&key, &value.replace(' ', "\t"));
        }
        let limits = root.0.join("proc/self/limits");
        fs::create_dir_all(limits.parent().unwrap()).unwrap();
        fs::write(
            &limits,
            "Limit                     Soft Limit           Hard Limit           Units     \n\
             Max open files            1048576              1048576              files     \n\
             Max locked memory         unlimited            unlimited            bytes     \n",
        )
        .unwrap();
        root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.0.join("proc/sys").join(key.replace('.', "/"))
    }

    fn set(&self, key: &str, value: &str) {
        let p = self.path(key);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, format!("{value}\n")).unwrap();
    }

    fn get(&self, key: &str) -> String {
        let v = fs::read_to_string(self.path(key)).unwrap();
        v.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    fn remove(&self, key: &str) {
        fs::remove_file(self.path(key)).unwrap();
    }

    /// Every file under the root with its contents.
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
            for entry in fs::read_dir(dir).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.insert(p.clone(), fs::read_to_string(&p).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.0, &mut out);
        out
    }
}

impl Drop for FakeRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(script: &str, args: &[&str]) -> Run {
    let out = Command::new(tuning(script))
        .args(args)
        .env_remove("ROOT")
        .output()
        .unwrap_or_else(|e| panic!("running tuning/{script}: {e}"));
    Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// `check`'s table as knob -> (current, recommended, status); also checks
/// the header and that the columns line up.
fn table(stdout: &str) -> BTreeMap<String, (String, String, String)> {
    let mut lines = stdout.lines();
    let header = lines.next().expect("a header");
    let cols: Vec<&str> = header.split(" | ").map(str::trim).collect();
    assert_eq!(cols, ["knob", "current", "recommended", "ok"], "{stdout}");
    let bars: Vec<usize> = header.match_indices(" | ").map(|(i, _)| i).collect();
    let mut rows = BTreeMap::new();
    for line in lines {
        let here: Vec<usize> = line.match_indices(" | ").map(|(i, _)| i).collect();
        assert_eq!(here, bars, "columns not aligned:\n{stdout}");
        let f: Vec<&str> = line.split(" | ").map(str::trim).collect();
        assert_eq!(f.len(), 4, "{line}");
        rows.insert(
            f[0].to_string(),
            (f[1].to_string(), f[2].to_string(), f[3].to_string()),
        );
    }
    rows
}

fn root_arg(root: &FakeRoot) -> &str {
    root.0.to_str().unwrap()
}

#[test]
fn check_flags_low_narrow_and_missing_knobs() {
    let root = FakeRoot::good("check");
    root.set("net.core.somaxconn", "128");
    root.set("net.ipv4.ip_local_port_range", "32768\t60999");
    root.remove("net.netfilter.nf_conntrack_max");
    // Above a minimum and below a maximum: both fine.
    root.set("net.ipv4.tcp_max_orphans", "524288");
    root.set("net.ipv4.tcp_fin_timeout", "5");

    let r = run("check", &["--root", root_arg(&root)]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let rows = table(&r.stdout);
    let knobs = conf_knobs();
    assert_eq!(rows.len(), knobs.len() + 4, "{}", r.stdout);
    for (key, rec, _) in &knobs {
        let (cur, shown_rec, status) = &rows[key];
        assert_eq!(shown_rec, rec, "{key}");
        let want = match key.as_str() {
            "net.core.somaxconn" | "net.ipv4.ip_local_port_range" => "LOW",
            "net.netfilter.nf_conntrack_max" => "missing",
            _ => "ok",
        };
        assert_eq!(status, want, "{key}:\n{}", r.stdout);
        if want == "missing" {
            assert_eq!(cur, "-");
        }
    }
    assert_eq!(rows["net.core.somaxconn"].0, "128");
    assert_eq!(rows["net.ipv4.ip_local_port_range"].0, "32768 60999");
    for limit in ["nofile.soft", "nofile.hard", "memlock.soft", "memlock.hard"] {
        assert_eq!(rows[&format!("limit.{limit}")].2, "ok", "{}", r.stdout);
    }

    let j = run("check", &["--root", root_arg(&root), "--json"]);
    assert_eq!(j.code, 1, "{}", j.stderr);
    let arr: Vec<Value> = serde_json::from_str(&j.stdout)
        .unwrap_or_else(|e| panic!("--json is not JSON ({e}):\n{}", j.stdout));
    assert_eq!(arr.len(), rows.len());
    for row in &arr {
        let knob = row["knob"].as_str().unwrap();
        let (cur, rec, status) = &rows[knob];
        assert_eq!(row["recommended"].as_str(), Some(rec.as_str()), "{row}");
        assert_eq!(row["status"].as_str(), Some(status.as_str()), "{row}");
        assert!(row["rule"].is_string(), "{row}");
        assert_eq!(
            row["ok"].as_bool(),
            Some(status == "ok" || status == "missing"),
            "{row}"
        );
        if status == "missing" {
            assert!(row["current"].is_null(), "{row}");
        } else {
            assert_eq!(row["current"].as_str(), Some(cur.as_str()), "{row}");
        }
    }
    let somaxconn = arr.iter().find(|r| r["knob"] == "net.core.somaxconn");
    let somaxconn = somaxconn.unwrap();
    assert_eq!(somaxconn["current"], "128");
    assert_eq!(somaxconn["rule"], "min");
    assert_eq!(somaxconn["ok"], false);
    let range = arr
        .iter()
        .find(|r| r["knob"] == "net.ipv4.ip_local_port_range");
    assert_eq!(range.unwrap()["rule"], "range");

    // The same through the environment instead of --root.
    let out = Command::new(tuning("check"))
        .env("ROOT", &root.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), r.stdout);
}

#[test]
fn check_passes_when_every_knob_is_good() {
    let root = FakeRoot::good("good");
    let r = run("check", &["--root", root_arg(&root)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(table(&r.stdout).values().all(|(_, _, s)| s == "ok"));
    let j = run("check", &["--json", "--root", root_arg(&root)]);
    assert_eq!(j.code, 0);
    let arr: Vec<Value> = serde_json::from_str(&j.stdout).unwrap();
    assert!(arr.iter().all(|r| r["ok"] == true), "{}", j.stdout);
}

#[test]
fn check_reads_this_machines_proc_sys() {
    let r = run("check", &[]);
    assert!(
        r.code == 0 || r.code == 1,
        "exit {}: {}{}",
        r.code,
        r.stdout,
        r.stderr
    );
    let rows = table(&r.stdout);
    for (key, _, _) in conf_knobs() {
        let (cur, _, status) = rows
            .get(&key)
            .unwrap_or_else(|| panic!("no row for {key}:\n{}", r.stdout));
        assert!(
            ["ok", "LOW", "HIGH", "missing"].contains(&status.as_str()),
            "{key}: {status}"
        );
        if status != "missing" {
            let real = fs::read_to_string(Path::new("/proc/sys").join(key.replace('.', "/")))
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            assert_eq!(cur, &real, "{key}");
        }
    }
    assert!(rows.contains_key("limit.nofile.soft"), "{}", r.stdout);
    assert!(rows.contains_key("limit.nofile.hard"), "{}", r.stdout);
}

#[test]
fn check_refuses_bad_usage() {
    assert_eq!(run("check", &["--bogus"]).code, 2);
    assert_eq!(run("check", &["--root"]).code, 2);
    assert_eq!(run("check", &["--root", "/nonexistent/shardcast"]).code, 2);
    assert_eq!(run("apply", &["--bogus"]).code, 2);
}

#[test]
fn apply_fixes_only_failing_knobs_and_is_idempotent() {
    let root = FakeRoot::good("apply");
    root.set("net.core.somaxconn", "128");
    root.set("net.ipv4.ip_local_port_range", "32768\t60999");
    root.set("net.ipv4.tcp_fin_timeout", "60");
    // Only the default is above its maximum; the larger max must stay.
    root.set("net.ipv4.tcp_rmem", "4096\t131072\t33554432");
    // Above their minimums: must not be lowered, now or in the installed file.
    root.set("net.ipv4.tcp_max_orphans", "524288");
    root.set("fs.file-max", "9223372036854775807");
    root.remove("net.netfilter.nf_conntrack_max");
    let arg = root_arg(&root).to_string();
    let changes = [
        "net.core.somaxconn: 128 -> 65535",
        "net.ipv4.ip_local_port_range: 32768 60999 -> 10240 65535",
        "net.ipv4.tcp_fin_timeout: 60 -> 15",
        "net.ipv4.tcp_rmem: 4096 131072 33554432 -> 4096 16384 33554432",
    ];
    let change_lines = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.contains(" -> "))
            .map(str::to_string)
            .collect()
    };

    let before = root.snapshot();
    let dry = run("apply", &["--dry-run", "--root", &arg]);
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    assert_eq!(change_lines(&dry.stdout), changes, "{}", dry.stdout);
    assert_eq!(
        dry.stdout.matches("would install: ").count(),
        3,
        "{}",
        dry.stdout
    );
    assert_eq!(root.snapshot(), before, "--dry-run wrote something");

    let real = run("apply", &["--root", &arg]);
    assert_eq!(real.code, 0, "{}{}", real.stdout, real.stderr);
    assert_eq!(change_lines(&real.stdout), changes, "{}", real.stdout);
    assert_eq!(real.stdout.matches("install: ").count(), 3);
    assert_eq!(root.get("net.core.somaxconn"), "65535");
    assert_eq!(root.get("net.ipv4.ip_local_port_range"), "10240 65535");
    assert_eq!(root.get("net.ipv4.tcp_fin_timeout"), "15");
    assert_eq!(root.get("net.ipv4.tcp_rmem"), "4096 16384 33554432");
    assert_eq!(root.get("net.ipv4.tcp_max_orphans"), "524288");
    assert_eq!(root.get("fs.file-max"), "9223372036854775807");
    assert!(!root.path("net.netfilter.nf_conntrack_max").exists());

    let etc = |p: &str| fs::read_to_string(root.0.join(p)).unwrap();
    assert_eq!(
        etc("etc/security/limits.d/shardcast.conf"),
        fs::read_to_string(tuning("limits.d/shardcast.conf")).unwrap()
    );
    assert_eq!(
        etc("etc/systemd/system/shardcast.service.d/limits.conf"),
        fs::read_to_string(tuning("systemd/shardcast.service.d/limits.conf")).unwrap()
    );
    let sysctl = etc("etc/sysctl.d/60-shardcast.conf");
    for line in [
        "net.core.somaxconn = 65535",
        "net.ipv4.tcp_rmem = 4096 16384 33554432",
        "net.ipv4.tcp_max_orphans = 524288",
        "fs.file-max = 9223372036854775807",
        "net.netfilter.nf_conntrack_max = 1048576",
    ] {
        assert!(
            sysctl.lines().any(|l| l == line),
            "installed sysctl.d lacks {line:?}:\n{sysctl}"
        );
    }

    let check = run("check", &["--root", &arg]);
    assert_eq!(check.code, 0, "{}", check.stdout);

    let after = root.snapshot();
    let again = run("apply", &["--root", &arg]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
    assert!(change_lines(&again.stdout).is_empty(), "{}", again.stdout);
    assert!(!again.stdout.contains("install: "), "{}", again.stdout);
    assert_eq!(root.snapshot(), after, "a second apply changed files");
}

#[test]
fn apply_refuses_to_touch_the_host_without_root() {
    let script = tuning("apply");
    let uid = Command::new("id").arg("-u").output().unwrap();
    let out = if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        // Drop to nobody to see the refusal (setpriv is util-linux's, on
        // every Debian machine; without it the test fails, never skips).
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&script)
            .env_remove("ROOT")
            .output()
            .expect("setpriv (util-linux) to drop root")
    } else {
        Command::new(&script).env_remove("ROOT").output().unwrap()
    };
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("must run as root"), "{stderr}");
}

#[test]
fn recommendations_agree_with_each_other_and_the_server() {
    let knobs: BTreeMap<String, String> = conf_knobs()
        .into_iter()
        .map(|(k, v, rule)| {
            for r in rule.split(',') {
                assert!(["min", "max", "eq", "range"].contains(&r), "{k}: {rule}");
            }
            (k, v)
        })
        .collect();
    let num = |k: &str| -> u64 { knobs[k].parse().unwrap() };

    let limits = fs::read_to_string(tuning("limits.d/shardcast.conf")).unwrap();
    let limit = |kind: &str, item: &str| -> u64 {
        limits
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() == 4 && f[0] == "shardcast" && f[1] == kind && f[2] == item)
            .unwrap_or_else(|| panic!("no shardcast {kind} {item} line"))[3]
            .parse()
            .unwrap()
    };
    let dropin = fs::read_to_string(tuning("systemd/shardcast.service.d/limits.conf")).unwrap();
    assert!(dropin.lines().any(|l| l == "[Service]"));
    let setting = |name: &str| -> String {
        dropin
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in the drop-in"))
            .to_string()
    };
    let kib = |v: &str| -> u64 {
        let (n, unit) = v.split_at(v.len() - 1);
        match unit {
            "K" => n.parse().unwrap(),
            "M" => n.parse::<u64>().unwrap() << 10,
            "G" => n.parse::<u64>().unwrap() << 20,
            _ => v.parse::<u64>().unwrap() >> 10,
        }
    };

    let nofile = limit("hard", "nofile");
    assert_eq!(limit("soft", "nofile"), nofile);
    assert_eq!(setting("LimitNOFILE").parse::<u64>().unwrap(), nofile);
    assert!(num("fs.nr_open") >= nofile, "nofile above fs.nr_open");
    assert!(num("fs.file-max") >= nofile);
    assert_eq!(limit("soft", "memlock"), limit("hard", "memlock"));
    assert_eq!(kib(&setting("LimitMEMLOCK")), limit("hard", "memlock"));

    let cfg = shardcast::Config::default();
    assert!(num("net.core.somaxconn") >= u64::from(cfg.backlog));
    assert!(
        nofile as usize >= cfg.max_connections * 64,
        "64 shards at the default"
    );
    let stop = humantime::parse_duration(&setting("TimeoutStopSec"))
        .or_else(|_| {
            setting("TimeoutStopSec")
                .parse::<u64>()
                .map(std::time::Duration::from_secs)
        })
        .unwrap();
    assert!(
        stop > cfg.shutdown_grace,
        "TimeoutStopSec {stop:?} within the grace"
    );
}
