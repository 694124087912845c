//! Monitoring end to end: the Prometheus rules and their unit tests pass
//! promtool, the Alertmanager config passes amtool, and a real Prometheus
//! scraping a real server finds data for every rule and dashboard expression.
//! Also: every shard answers a scrape of the same shape, and the totals are
//! the sums of the per-shard series.
mod common;
use common::*;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring")
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_and_unit_tests_pass() {
    let dir = monitoring_dir();
    run_ok(
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(dir.join("rules.yml")),
    );
    let tested = run_ok(
        Command::new("promtool")
            .args(["test", "rules", "rules.test.yml"])
            .current_dir(&dir),
    );
    assert!(tested.contains("SUCCESS"), "{tested}");
    run_ok(
        Command::new("promtool")
            .args(["check", "config", "prometheus.yml"])
            .current_dir(&dir),
    );
}

#[test]
fn amtool_accepts_the_alertmanager_config() {
    run_ok(
        Command::new("amtool")
            .arg("check-config")
            .arg(monitoring_dir().join("alertmanager.yml")),
    );
}

/// Every alert of rules.yml: (name, expression).
fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring_dir().join("rules.yml")).unwrap();
    let mut out = Vec::new();
    let mut name = None;
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("- alert:") {
            name = Some(n.trim().to_string());
        } else if let Some(e) = line.strip_prefix("expr:") {
            let e = e.trim().trim_matches(|c| c == '\'' || c == '"').to_string();
            assert!(
                !e.is_empty() && e != "|" && e != ">",
                "rule exprs are one line each"
            );
            out.push((name.take().expect("expr after its alert name"), e));
        }
    }
    assert!(out.len() >= 10, "rules.yml has {} alerts", out.len());
    out
}

/// The expression an alert compares: everything before its final
/// `<op> <number>`. It must return data while the service runs.
fn left_side(expr: &str) -> String {
    for op in [" >= ", " <= ", " == ", " != ", " > ", " < "] {
        if let Some(i) = expr.rfind(op) {
            let rhs = expr[i + op.len()..].trim();
            if rhs.parse::<f64>().is_ok() {
                return expr[..i].trim().to_string();
            }
        }
    }
    panic!("`{expr}` does not end in a comparison with a number")
}

/// Every panel expression of the dashboard.
fn panel_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring_dir().join("grafana/shardcast.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<(String, String)>) {
        if let Some(panels) = v["panels"].as_array() {
            for p in panels {
                for t in p["targets"].as_array().into_iter().flatten() {
                    if let Some(e) = t["expr"].as_str() {
                        out.push((
                            p["title"].as_str().unwrap_or("?").to_string(),
                            e.to_string(),
                        ));
                    }
                }
                walk(p, out);
            }
        }
    }
    walk(&dash, &mut out);
    assert!(
        out.len() >= 12,
        "the dashboard has {} expressions",
        out.len()
    );
    out
}

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// A Prometheus scraping `target` every second, with the project's rules.
    fn start(target: SocketAddr) -> Prometheus {
        let tmp = TempDir::new("prometheus");
        let dir = tmp.0.clone();
        let rules = monitoring_dir().join("rules.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{}']\n\
             scrape_configs:\n  - job_name: shardcast\n    static_configs:\n      \
             - targets: ['{target}']\n        labels: {{color: blue}}\n",
            rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus on PATH (apt-get install -y prometheus)");
        let p = Prometheus {
            child,
            addr,
            _dir: tmp,
        };
        wait_for("prometheus ready", Duration::from_secs(30), || {
            std::net::TcpStream::connect(addr).ok()?;
            (get10(addr, "/-/ready").0 == 200).then_some(())
        });
        p
    }

    /// Runs an instant query; returns its result vector.
    fn query(&self, expr: &str) -> Vec<Value> {
        let q: String = expr
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = get10(self.addr, &format!("/api/v1/query?query={q}"));
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert_eq!(status, 200, "query `{expr}`: {body}");
        assert_eq!(v["status"], "success", "query `{expr}`: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

/// A 2-shard server with an admin listener, and the admin address.
fn with_admin(b: ServerBuilder) -> (Server, SocketAddr) {
    let server = b.shards(2).arg("--admin-listen", "127.0.0.1:0").start();
    let admin = admin_addr(&server);
    (server, admin)
}

fn admin_addr(server: &Server) -> SocketAddr {
    wait_for("the admin listening line", Duration::from_secs(10), || {
        server.log_lines().iter().find_map(|l| {
            (l["msg"] == "admin listening").then(|| l["admin"].as_str().unwrap().parse().unwrap())
        })
    })
}

/// Some of everything: messages, a resume, an error with its close code.
fn traffic(server: &Server) -> Vec<Client> {
    let mut keep = sockets_on_every_shard(server, 2);
    for c in &mut keep {
        for _ in 0..5 {
            c.count("hi");
        }
    }
    let (mut bad, _) = server.connect("");
    bad.send_raw(&Client::frame(0x82, b"binary"));
    let (_, code) = bad.until_close();
    assert_eq!(code, Some(1003));
    keep
}

#[test]
fn prometheus_finds_data_for_every_rule_and_panel() {
    let redis = Redis::start();
    let (server, admin) = with_admin(Server::builder(&redis));
    let _clients = traffic(&server);
    let prom = Prometheus::start(admin);
    // Rates need two samples in their window; wait for a few scrapes.
    wait_for("three scrapes", Duration::from_secs(30), || {
        let r = prom.query("count_over_time(up{job=\"shardcast\"}[1m]) >= 3");
        (!r.is_empty()).then_some(())
    });
    let mut empty = Vec::new();
    for (name, expr) in alert_exprs() {
        if prom.query(&left_side(&expr)).is_empty() {
            empty.push(format!("alert {name}: {}", left_side(&expr)));
        }
    }
    for (title, expr) in panel_exprs() {
        if prom.query(&expr).is_empty() {
            empty.push(format!("panel {title}: {expr}"));
        }
    }
    assert!(empty.is_empty(), "no data for:\n{}", empty.join("\n"));
    // Prometheus loaded the rule file and evaluates every rule without error.
    let (_, body) = get10(prom.addr, "/api/v1/rules");
    let rules: Value = serde_json::from_str(&body).unwrap();
    let mut seen = BTreeSet::new();
    for g in rules["data"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            assert_ne!(r["health"], "err", "{r}");
            seen.insert(r["name"].as_str().unwrap().to_string());
        }
    }
    let want: BTreeSet<String> = alert_exprs().into_iter().map(|(n, _)| n).collect();
    assert_eq!(seen, want);
}

/// Series name with its labels, without the value.
fn shape(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
        .collect()
}

fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{series} missing"))
        .parse()
        .unwrap()
}

fn sum_of(scrape: &str, prefix: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}

#[test]
fn every_shard_scrapes_the_same_shape_and_totals_are_sums() {
    let redis = Redis::start();
    let (server, admin) = with_admin(Server::builder(&redis));
    let _clients = traffic(&server);
    let (_, reference) = http(admin, "GET", "/metrics", "");
    let want = shape(&reference);
    assert!(want.contains("ws_shard_connections_active{shard=\"1\"}"));
    // Scrapes over new connections land on either shard's listener.
    for _ in 0..16 {
        let (status, body) = server.get("/metrics");
        assert_eq!(status, 200);
        assert_eq!(shape(&body), want);
    }
    let (_, m) = http(admin, "GET", "/metrics", "");
    assert_eq!(
        value(&m, "ws_connections_active"),
        sum_of(&m, "ws_shard_connections_active{")
    );
    assert_eq!(
        value(&m, "ws_messages_total"),
        sum_of(&m, "ws_shard_messages_total{")
    );
    assert!(value(&m, "ws_messages_total") >= 10.0);
    for shard in 0..2 {
        assert!(value(&m, &format!("ws_shard_messages_total{{shard=\"{shard}\"}}")) >= 5.0);
    }
    assert_eq!(value(&m, "ws_connections_limit"), 20_000.0);
    assert!(value(&m, "redis_command_duration_seconds_count") > 0.0);
    assert!(value(&m, "process_open_fds") > 0.0);

    // Every family, HELP and TYPE line is the one the rules and dashboards
    // were written against, no more and no fewer.
    let listed = std::fs::read_to_string(monitoring_dir().join("metrics.txt")).unwrap();
    let listed: BTreeSet<&str> = listed
        .lines()
        .filter(|l| l.starts_with("# HELP ") || l.starts_with("# TYPE "))
        .collect();
    let scraped: BTreeSet<&str> = m.lines().filter(|l| l.starts_with("# ")).collect();
    assert_eq!(
        scraped.difference(&listed).collect::<Vec<_>>(),
        Vec::<&&str>::new(),
        "families or HELP lines missing from deploy/monitoring/metrics.txt"
    );
    assert_eq!(
        listed.difference(&scraped).collect::<Vec<_>>(),
        Vec::<&&str>::new(),
        "families or HELP lines /metrics no longer has"
    );
}

#[test]
fn the_admin_listener_outlives_the_drain() {
    let redis = Redis::start();
    let (server, admin) = with_admin(Server::builder(&redis).arg("--shutdown-grace", "10s"));
    // The admin port answers the probe routes like the service port does.
    assert_eq!(http(admin, "HEAD", "/healthz", ""), (200, String::new()));
    assert_eq!(http(admin, "POST", "/metrics", "").0, 405);
    // The server API is there too, behind the server's key.
    assert_eq!(http(admin, "GET", "/status", "").0, 200);
    assert_eq!(http_with(admin, "GET", "/status", "", "").0, 401);
    // A socket that does not answer our Close keeps the drain going.
    let (mut c, _) = server.connect("");
    assert_eq!(c.count("x"), 1);
    server.signal("TERM");
    wait_for(
        "readyz 503 draining on the admin port",
        Duration::from_secs(10),
        || {
            let (status, body) = http(admin, "GET", "/readyz", "");
            (status == 503 && body.contains("draining")).then_some(())
        },
    );
    let (_, m) = http(admin, "GET", "/metrics", "");
    assert_eq!(value(&m, "app_draining"), 1.0);
    assert!(value(&m, "app_drain_seconds") > 0.0);
    drop(c);
}
