//! Real Redis processes for tests and bench runs: a server (plain, with
//! AOF, with a password, with an ACL user, over TLS, a replica), a Redis
//! Cluster made with `redis-cli --cluster create`, and Sentinels, each on
//! free ports and gone when dropped; `redis-cli` to look inside them; and a
//! throwaway CA for the TLS ones.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{free_port, temp_dir, wait_for, TempDir};

/// Runs redis-cli against 127.0.0.1:`port` and returns its raw output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    redis_cli_as(port, None, args)
}

/// redis-cli with `AUTH password` first, when there is one.
pub fn redis_cli_as(port: u16, password: Option<&str>, args: &[&str]) -> String {
    redis_cli_with(port, None, password, None, args)
}

/// redis-cli as ACL `user` (or `default`) with `password`, over TLS when
/// `ca` is the CA file that signed the server's certificate.
fn redis_cli_with(
    port: u16,
    user: Option<&str>,
    password: Option<&str>,
    ca: Option<&Path>,
    args: &[&str],
) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(ca) = ca {
        cmd.arg("--tls").arg("--cacert").arg(ca);
    }
    if let Some(user) = user {
        cmd.args(["--user", user]);
    }
    if let Some(pw) = password {
        cmd.args(["--no-auth-warning", "--pass", pw]);
    }
    let out = cmd
        .args(args)
        .output()
        .expect("redis-cli must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CA made for one test, and a certificate it signed for the server at
/// IP 127.0.0.1, as PEM files in a directory removed when dropped.
pub struct TestCa {
    _dir: TempDir,
    files: TlsFiles,
}

/// The PEM files a TLS `redis-server` is started with.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = TempDir::new("ca");
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "shardcast test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        // An IP address, as a Sentinel or a cluster names a server.
        let mut server = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "shardcast test redis");
        let server_key = KeyPair::generate().unwrap();
        let server_pem = server.signed_by(&server_key, &issuer).unwrap().pem();
        let files = TlsFiles {
            ca: dir.0.join("ca.pem"),
            cert: dir.0.join("redis.pem"),
            key: dir.0.join("redis.key"),
        };
        std::fs::write(&files.ca, ca_pem).unwrap();
        std::fs::write(&files.cert, server_pem).unwrap();
        std::fs::write(&files.key, server_key.serialize_pem()).unwrap();
        TestCa { _dir: dir, files }
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A `redis-server` owned by one test (or one bench run), killed and its
/// directory removed when dropped.
pub struct Redis {
    pub port: u16,
    /// The binary, `redis-server` on the PATH unless told otherwise.
    bin: PathBuf,
    /// A CPU to pin it to (`taskset`), so a run can keep it off the CPUs
    /// it measures.
    cpu: Option<usize>,
    dir: PathBuf,
    aof: bool,
    /// The master's port, for a replica.
    replica_of: Option<u16>,
    /// `requirepass` (and, for a replica, `masterauth`); with `user`, that
    /// ACL user's password.
    pub password: Option<String>,
    /// An ACL user with every right, the `default` user then off.
    pub user: Option<String>,
    /// Its certificate: TLS only, on `port`.
    tls: Option<TlsFiles>,
    /// A cluster node's bus port (0: pick one at start).
    cluster_bus: Option<u16>,
    child: Option<Child>,
}

impl Redis {
    /// Everything at its default, nothing started, in a fresh directory.
    fn unstarted(tag: &str) -> Redis {
        Redis {
            port: 0,
            bin: PathBuf::from("redis-server"),
            cpu: None,
            dir: temp_dir(tag),
            aof: false,
            replica_of: None,
            password: None,
            user: None,
            tls: None,
            cluster_bus: None,
            child: None,
        }
    }

    /// Started on a free port; panics if it will not start.
    fn started(mut self) -> Redis {
        self.spawn_on_free_port().unwrap_or_else(|e| panic!("{e}"));
        self
    }

    pub fn start() -> Redis {
        Self::unstarted("redis").started()
    }

    /// With AOF on and `appendfsync always`, as production runs it.
    pub fn start_aof() -> Redis {
        let mut r = Self::unstarted("redis");
        r.aof = true;
        r.started()
    }

    /// One that asks clients for `password`.
    pub fn start_with_password(password: &str) -> Redis {
        let mut r = Self::unstarted("redis");
        r.password = Some(password.into());
        r.started()
    }

    /// One whose only user is the ACL user `user`, with `password`.
    pub fn start_acl(user: &str, password: &str) -> Redis {
        let mut r = Self::unstarted("redis");
        r.user = Some(user.into());
        r.password = Some(password.into());
        r.started()
    }

    /// The same, over TLS only, with a certificate `ca` signed.
    pub fn start_tls_acl(ca: &TestCa, user: &str, password: &str) -> Redis {
        let mut r = Self::unstarted("redis");
        r.tls = Some(ca.files().clone());
        r.user = Some(user.into());
        r.password = Some(password.into());
        r.started()
    }

    /// A replica of `master`, started and in sync with it.
    pub fn start_replica_of(master: &Redis) -> Redis {
        let mut r = Self::unstarted("replica");
        r.replica_of = Some(master.port);
        r.password = master.password.clone();
        let r = r.started();
        wait_for("the replica to sync", Duration::from_secs(20), || {
            r.cli(&["INFO", "replication"])
                .contains("master_link_status:up")
                .then_some(())
        });
        r
    }

    /// A Redis Cluster node with no slots yet (see [`RedisCluster`]). A
    /// node killed and spawned again rejoins from its `nodes.conf`.
    pub fn start_cluster_node() -> Redis {
        let mut r = Self::unstarted("cluster");
        r.cluster_bus = Some(0);
        r.started()
    }

    /// One on a free port, started from `bin` and pinned to `cpu`: for a
    /// bench run, which reports an error instead of panicking.
    pub fn start_pinned(bin: PathBuf, cpu: usize) -> Result<Redis, String> {
        let mut r = Self::unstarted("bench-redis");
        r.bin = bin;
        r.cpu = Some(cpu);
        r.spawn_on_free_port()?;
        Ok(r)
    }

    /// A Redis that is not running yet (its port is reserved by number only).
    pub fn not_started() -> Redis {
        let mut r = Self::unstarted("redis");
        r.port = free_port();
        r
    }

    /// One field of `INFO section` (`run_id` of `server`, say); panics
    /// when the section has no such field.
    pub fn info(&self, section: &str, field: &str) -> String {
        let text = self.cli(&["INFO", section]);
        let prefix = format!("{field}:");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("INFO {section} has no {field}: {text}"))
            .trim()
            .to_string()
    }

    /// Whether it was started and not killed.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The first word `ROLE` answers: master, slave or sentinel.
    pub fn role(&self) -> String {
        self.cli(&["ROLE"]).lines().next().unwrap_or("").to_string()
    }

    /// Its URL, with no user or password: `rediss://` for TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Starts it on its port, and waits for PING; panics if it will not.
    pub fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    /// Starts it on its port, and waits for PING.
    pub fn try_spawn(&mut self) -> Result<(), String> {
        let mut cmd = match self.cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        match &self.tls {
            None => {
                cmd.arg("--port").arg(self.port.to_string());
            }
            Some(tls) => {
                // Clients need no certificate of their own, as with a
                // managed Redis.
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&tls.cert)
                    .arg("--tls-key-file")
                    .arg(&tls.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca)
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--protected-mode",
            "no",
        ]);
        cmd.arg("--dir").arg(&self.dir);
        if self.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if let Some(m) = self.replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &m.to_string()]);
        }
        match (&self.user, &self.password) {
            (Some(user), Some(pw)) => {
                // A file: a `--user` flag's rule would be read as one name.
                // Left out of it, `default` would be on with no password.
                let acl = self.dir.join("users.acl");
                let rules = format!("user {user} on >{pw} ~* &* +@all\nuser default off\n");
                std::fs::write(&acl, rules).map_err(|e| format!("writing {acl:?}: {e}"))?;
                cmd.arg("--aclfile").arg(&acl);
            }
            (None, Some(pw)) => {
                cmd.args(["--requirepass", pw, "--masterauth", pw]);
            }
            _ => {}
        }
        if let Some(bus) = self.cluster_bus {
            // A short node timeout, so a failover takes seconds.
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                "--cluster-port",
                &bus.to_string(),
            ]);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let hint = format!(
            "starting {} (apt-get install -y redis-server)",
            self.bin.display()
        );
        self.child = Some(cmd.spawn().map_err(|e| format!("{hint}: {e}"))?);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.cli(&["PING"]).trim() == "PONG" {
                return Ok(());
            }
            // taskset itself starts even when the binary is missing.
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "{hint}: exited with {status} on port {}",
                    self.port
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("{hint}: no PONG on port {} in 10 s", self.port));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts on a fresh port, trying another if the one picked was taken
    /// meanwhile (a free port is only free until someone binds it).
    fn spawn_on_free_port(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..3 {
            self.port = free_port();
            if self.cluster_bus.is_some() {
                self.cluster_bus = Some(free_port());
            }
            match self.try_spawn() {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            self.kill9();
        }
        Err(format!(
            "redis-server would not start on three free ports: {last}"
        ))
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs redis-cli (as its user, over TLS if it is TLS) and returns its
    /// raw output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli_with(
            self.port,
            self.user.as_deref(),
            self.password.as_deref(),
            self.tls.as_ref().map(|t| t.ca.as_path()),
            args,
        )
    }

    /// The offsets a stream holds, oldest first.
    pub fn stream_offsets(&self, key: &str) -> Vec<(u64, u64)> {
        self.cli(&["XRANGE", key, "-", "+"])
            .lines()
            .filter_map(|l| {
                let (ms, seq) = l.trim().split_once('-')?;
                Some((ms.parse().ok()?, seq.parse().ok()?))
            })
            .collect()
    }

    /// The stored count of a session: the sum of its writer fields, or None.
    pub fn session_count(&self, id: &str) -> Option<u64> {
        self.session_count_in(0, id)
    }

    /// The same, in database `db`.
    pub fn session_count_in(&self, db: u32, id: &str) -> Option<u64> {
        let db = db.to_string();
        let key = format!("shardcast:{{{id}}}:s");
        let out = self.cli(&["-n", &db, "HVALS", &key]);
        let vals: Vec<u64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        (!vals.is_empty()).then(|| vals.iter().sum())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of real nodes: masters with a replica each, made with
/// `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    /// Three masters and three replicas, every slot served and every
    /// replica in sync.
    pub fn start() -> RedisCluster {
        let nodes: Vec<Redis> = (0..6).map(|_| Redis::start_cluster_node()).collect();
        let mut cmd = Command::new("redis-cli");
        cmd.args(["--cluster", "create"]);
        cmd.args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        cmd.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = cmd.output().expect("redis-cli must be installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { nodes };
        c.wait_ok();
        c
    }

    /// Waits until every live node says the cluster is ok and every
    /// master has a replica in sync.
    pub fn wait_ok(&self) {
        wait_for("the cluster to be ok", Duration::from_secs(60), || {
            self.live()
                .all(|n| {
                    let info = n.cli(&["CLUSTER", "INFO"]);
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                })
                .then_some(())
        });
        wait_for("every replica in sync", Duration::from_secs(60), || {
            self.masters()
                .iter()
                .all(|m| {
                    m.cli(&["INFO", "replication"])
                        .contains("connected_slaves:1")
                })
                .then_some(())
        });
    }

    fn live(&self) -> impl Iterator<Item = &Redis> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    /// `host:port` of every node, for `--redis-cluster`.
    pub fn seeds(&self) -> String {
        let all: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        all.join(",")
    }

    pub fn masters(&self) -> Vec<&Redis> {
        self.live().filter(|n| n.role() == "master").collect()
    }

    /// redis-cli in cluster mode (it follows redirects) on a live node.
    pub fn cli(&self, args: &[&str]) -> String {
        let n = self.live().next().expect("a live node");
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        n.cli(&all)
    }

    pub fn slot_of(&self, key: &str) -> u16 {
        self.cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap()
    }

    /// The live master that serves `slot`, as `CLUSTER NODES` says:
    /// `<id> <ip:port@bus> <flags> <master> ... <slot ranges>`.
    pub fn owner(&self, slot: u16) -> &Redis {
        let serves = |range: &str| match range.split_once('-') {
            Some((a, b)) => {
                a.parse().is_ok_and(|a: u16| a <= slot) && b.parse().is_ok_and(|b: u16| slot <= b)
            }
            None => range.parse() == Ok(slot),
        };
        let port = wait_for("a master for the slot", Duration::from_secs(30), || {
            self.cli(&["CLUSTER", "NODES"]).lines().find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let flags = f.get(2)?;
                if !flags.contains("master") || flags.contains("fail") {
                    return None;
                }
                let port: u16 = f[1].split(['@', ':']).nth(1)?.parse().ok()?;
                f.iter().skip(8).any(|r| serves(r)).then_some(port)
            })
        });
        self.nodes.iter().find(|n| n.port == port).unwrap()
    }

    pub fn node_id(node: &Redis) -> String {
        node.cli(&["CLUSTER", "MYID"]).trim().to_string()
    }

    /// A session's stored count, found wherever its slot lives.
    pub fn session_count(&self, id: &str) -> Option<u64> {
        let key = format!("shardcast:{{{id}}}:s");
        let out = self.cli(&["HVALS", &key]);
        let vals: Vec<u64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        (!vals.is_empty()).then(|| vals.iter().sum())
    }
}

/// A `redis-server --sentinel` watching one master, named `master`.
pub struct Sentinel {
    pub port: u16,
    /// Its own ACL user (None: `default`) and password, which other
    /// sentinels use too.
    user: Option<String>,
    password: Option<String>,
    /// The CA of its certificate, when it speaks TLS.
    ca: Option<PathBuf>,
    dir: PathBuf,
    child: Child,
}

impl Sentinel {
    /// Starts a sentinel with a quorum of `quorum` and a 2 s down-after, so
    /// a killed master is failed over within a few seconds (with 1 s, a
    /// loaded machine now and then had a new master taken for down and
    /// failed over again).
    pub fn start(master: &Redis, name: &str, quorum: u32) -> Sentinel {
        Self::start_with_password(master, name, quorum, None)
    }

    /// The same, asking its clients (and the other sentinels) for
    /// `password`; it authenticates to the master with the master's own.
    pub fn start_with_password(
        master: &Redis,
        name: &str,
        quorum: u32,
        password: Option<&str>,
    ) -> Sentinel {
        Self::start_as(master, name, quorum, None, password)
    }

    /// The same, its clients logging in as ACL `user` (`default` off) when
    /// there is one; it logs in to the master as the master's own user. A
    /// TLS master's sentinel speaks only TLS too, with the master's
    /// certificate, to its clients and to the master.
    pub fn start_as(
        master: &Redis,
        name: &str,
        quorum: u32,
        user: Option<&str>,
        password: Option<&str>,
    ) -> Sentinel {
        let port = free_port();
        let dir = temp_dir("sentinel");
        let conf = dir.join("sentinel.conf");
        let listen = match &master.tls {
            None => format!("port {port}"),
            Some(tls) => format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                 tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes",
                tls.cert.display(),
                tls.key.display(),
                tls.ca.display()
            ),
        };
        let mut text = format!(
            "{listen}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
             sentinel monitor {name} 127.0.0.1 {} {quorum}\n\
             sentinel down-after-milliseconds {name} 2000\n\
             sentinel failover-timeout {name} 5000\n\
             sentinel parallel-syncs {name} 1\n",
            dir.display(),
            master.port
        );
        if let Some(user) = &master.user {
            text.push_str(&format!("sentinel auth-user {name} {user}\n"));
        }
        if let Some(pw) = &master.password {
            text.push_str(&format!("sentinel auth-pass {name} {pw}\n"));
        }
        match (user, password) {
            (Some(user), Some(pw)) => text.push_str(&format!(
                "user {user} on >{pw} ~* &* +@all\nuser default off\n\
                 sentinel sentinel-user {user}\nsentinel sentinel-pass {pw}\n"
            )),
            (None, Some(pw)) => {
                text.push_str(&format!("requirepass {pw}\nsentinel sentinel-pass {pw}\n"))
            }
            _ => {}
        }
        std::fs::write(&conf, text).unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        let s = Sentinel {
            port,
            user: user.map(String::from),
            password: password.map(String::from),
            ca: master.tls.as_ref().map(|t| t.ca.clone()),
            dir,
            child,
        };
        wait_for("the sentinel to answer", Duration::from_secs(10), || {
            (s.cli(&["PING"]).trim() == "PONG").then_some(())
        });
        s
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli_with(
            self.port,
            self.user.as_deref(),
            self.password.as_deref(),
            self.ca.as_deref(),
            args,
        )
    }

    /// The port of the master this sentinel names now.
    pub fn master_port(&self, name: &str) -> Option<u16> {
        let out = self.cli(&["SENTINEL", "get-master-addr-by-name", name]);
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// How many failovers of `name` this sentinel has seen: the master's
    /// config epoch, which each failover raises by one.
    pub fn failovers(&self, name: &str) -> u64 {
        let out = self.cli(&["SENTINEL", "MASTER", name]);
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        lines
            .windows(2)
            .find(|w| w[0] == "config-epoch")
            .and_then(|w| w[1].parse().ok())
            .unwrap_or(0)
    }

    /// Waits until this sentinel knows the master's replicas and `others`
    /// other sentinels: before that, a failover cannot reach its quorum.
    pub fn wait_settled(&self, name: &str, replicas: usize, others: usize) {
        let count = |what: &str| {
            self.cli(&["SENTINEL", what, name])
                .lines()
                .filter(|l| l.trim() == "name")
                .count()
        };
        wait_for("the sentinels to settle", Duration::from_secs(30), || {
            (count("replicas") >= replicas && count("sentinels") >= others).then_some(())
        });
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
