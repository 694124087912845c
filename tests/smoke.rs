mod common;
use common::*;

#[test]
fn counts_and_goodbye() {
    let redis = Redis::start();
    let server = Server::builder(&redis).shards(2).start();
    let (mut c, welcome) = server.connect("");
    assert_eq!(welcome["count"], 0);
    assert_eq!(welcome["resumed"], false);
    for i in 1..=5 {
        assert_eq!(c.count("hi"), i);
    }
    c.send_close(1000);
    let (before, code) = c.until_close();
    assert_eq!(code, Some(1000));
    assert_eq!(before.last().unwrap().json()["bye"], true);
    assert_eq!(before.last().unwrap().json()["total"], 5);
    let id = welcome["session_id"].as_str().unwrap();
    assert_eq!(redis.session_count(id), Some(5));
}
