//! The fast tier's in-memory Redis against a real `redis-server`: the same
//! requests, the commands and script the service sends, get the same
//! answers from both. What the fast tier proves holds only while this does.

mod common;

use common::mem::mem_redis;
use common::Redis;
use redis::Value;
use shardcast::store::FLUSH_SCRIPT;

/// A request as the service would send it.
fn req(args: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c
}

/// The answer, with what may honestly differ between two servers made
/// comparable: an error is its code (first word), a TTL is rounded to
/// seconds.
fn ask(con: &mut redis::Connection, args: &[&str]) -> String {
    match req(args).query::<Value>(con) {
        Ok(Value::Int(ms)) if args[0] == "PTTL" && ms > 0 => format!("ttl ~{}s", (ms + 500) / 1000),
        Ok(v) => format!("{v:?}"),
        Err(e) => format!("error {}", e.code().unwrap_or("?")),
    }
}

#[test]
fn the_in_memory_redis_answers_as_redis_server_does() {
    let real = Redis::start();
    let fake = mem_redis();
    let mut cons: Vec<redis::Connection> = [real.url(), fake.url()]
        .iter()
        .map(|u| {
            redis::Client::open(u.as_str())
                .unwrap()
                .get_connection()
                .unwrap()
        })
        .collect();
    let sha = redis::Script::new(FLUSH_SCRIPT).get_hash().to_owned();
    let (s1, t1) = ("shardcast:{a}:s", "shardcast:{a}:del");
    let (s2, t2) = ("shardcast:{b}:s", "shardcast:{b}:del");
    let steps: Vec<Vec<&str>> = vec![
        vec!["PING"],
        vec!["ROLE"],
        vec!["SCRIPT", "LOAD", FLUSH_SCRIPT],
        // Two sessions written by writer w1 at 5 and 7; then b's tombstone,
        // after which its writes answer -1; a lower count never lowers a's.
        vec![
            "EVALSHA", &sha, "4", s1, t1, s2, t2, "w1", "60000", "5", "7",
        ],
        vec!["HGETALL", s1],
        vec!["PTTL", s1],
        vec!["SET", t2, "1", "PX", "60000"],
        vec!["DEL", s2],
        vec![
            "EVALSHA", &sha, "4", s1, t1, s2, t2, "w1", "60000", "3", "9",
        ],
        vec!["HGET", s1, "w1"],
        vec!["EVALSHA", &sha, "2", s1, t1, "w2", "60000", "4"],
        vec!["HGETALL", s1],
        vec!["HGETALL", s2],
        vec!["EXISTS", t2, s2, s1],
        vec!["PTTL", t2],
        vec!["PTTL", "nothing"],
        vec!["GET", "nothing"],
        vec!["GET", s1],
        vec!["SET", "plain", "v"],
        vec!["PTTL", "plain"],
        vec!["GET", "plain"],
        vec!["PEXPIRE", "plain", "30000"],
        vec!["PTTL", "plain"],
        vec!["PEXPIRE", "nothing", "30000"],
        vec!["WAIT", "0", "0"],
        vec!["PUBLISH", "shardcast:events", "{}"],
        vec!["EVALSHA", "0123456789012345678901234567890123456789", "0"],
        vec!["NOSUCHCOMMAND"],
    ];
    for step in &steps {
        let [real_answer, fake_answer] = [0, 1].map(|i| ask(&mut cons[i], step));
        let shown: Vec<_> = step.iter().map(|a| &a[..a.len().min(24)]).collect();
        assert_eq!(real_answer, fake_answer, "{shown:?}");
    }
}

#[test]
fn pub_sub_delivers_as_redis_server_does() {
    let real = Redis::start();
    let fake = mem_redis();
    for url in [real.url(), fake.url()] {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut sub_con = client.get_connection().unwrap();
        let mut pub_con = client.get_connection().unwrap();
        let mut sub = sub_con.as_pubsub();
        sub.subscribe(&["one", "two"]).unwrap();
        let n: i64 = req(&["PUBLISH", "two", "hello"])
            .query(&mut pub_con)
            .unwrap();
        assert_eq!(n, 1, "{url}: one subscriber");
        let msg = sub.get_message().unwrap();
        assert_eq!(msg.get_channel_name(), "two", "{url}");
        assert_eq!(msg.get_payload::<String>().unwrap(), "hello", "{url}");
        sub.unsubscribe("two").unwrap();
        let n: i64 = req(&["PUBLISH", "two", "again"])
            .query(&mut pub_con)
            .unwrap();
        assert_eq!(n, 0, "{url}: none left on two");
    }
}
