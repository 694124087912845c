//! The worker processes of a run: this binary started once per plan, with
//! the plan as JSON on its command line; their stdout lines read as events,
//! their stderr lines passed on as log lines, commands written to every
//! stdin. Dropping the pool kills whatever still runs.

use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::sys::now_ns;

/// What a worker said, tagged with its index.
pub enum Msg<E> {
    Line(usize, E),
    /// A line that is no event: stderr, or stdout that did not parse.
    Log(usize, String),
    /// Its stdout closed: the process has ended or is ending.
    Exit(usize),
}

pub struct Pool<E> {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    pub rx: mpsc::Receiver<Msg<E>>,
}

impl<E: DeserializeOwned + Send + 'static> Pool<E> {
    /// Starts `<this binary> <subcommand> <plan as JSON>` for every plan.
    /// On an error, the workers already started are killed.
    pub fn spawn<P: Serialize>(subcommand: &str, plans: &[P]) -> io::Result<Pool<E>> {
        let exe = std::env::current_exe()?;
        let (tx, rx) = mpsc::channel();
        let mut pool = Pool {
            children: Vec::new(),
            stdins: Vec::new(),
            rx,
        };
        for (w, plan) in plans.iter().enumerate() {
            let json = serde_json::to_string(plan).expect("plans serialize");
            let mut child = Command::new(&exe)
                .arg(subcommand)
                .arg(json)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            pool.stdins.push(child.stdin.take());
            let out = child.stdout.take().expect("piped");
            let err = child.stderr.take().expect("piped");
            pool.children.push(child);
            let t = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let msg = match serde_json::from_str::<E>(&line) {
                        Ok(ev) => Msg::Line(w, ev),
                        Err(_) => Msg::Log(w, line),
                    };
                    if t.send(msg).is_err() {
                        return;
                    }
                }
                let _ = t.send(Msg::Exit(w));
            });
            let t = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if t.send(Msg::Log(w, line)).is_err() {
                        return;
                    }
                }
            });
        }
        Ok(pool)
    }
}

impl<E> Pool<E> {
    pub fn len(&self) -> usize {
        self.children.len()
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.children.iter().map(Child::id)
    }

    /// Writes `line` to every worker; `Err(w)` names the first that could not
    /// take it (it has ended).
    pub fn say(&mut self, line: &str) -> Result<(), usize> {
        let mut first_lost = None;
        for (w, s) in self.stdins.iter_mut().enumerate() {
            let ok = s
                .as_mut()
                .is_some_and(|s| writeln!(s, "{line}").and_then(|()| s.flush()).is_ok());
            if !ok {
                first_lost.get_or_insert(w);
            }
        }
        first_lost.map_or(Ok(()), Err)
    }

    /// Waits for every worker to exit by itself.
    pub fn wait(&mut self) {
        for c in &mut self.children {
            let _ = c.wait();
        }
    }

    /// Closes every stdin (the workers' cue to exit) and gives them `grace`.
    pub fn shutdown(&mut self, grace: Duration) {
        for s in &mut self.stdins {
            s.take();
        }
        let end = now_ns() + grace.as_nanos() as u64;
        for c in &mut self.children {
            while now_ns() < end && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl<E> Drop for Pool<E> {
    fn drop(&mut self) {
        for c in &mut self.children {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// A worker's side: one event as one JSON line on stdout, flushed, since the
/// pool reads line by line. A failed write means the coordinator is gone;
/// the worker then ends at its next stdin read.
pub fn emit<E: Serialize>(ev: &E) {
    let mut out = io::stdout().lock();
    if serde_json::to_writer(&mut out, ev).is_ok() {
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}
