// Unit tests of the client's own logic, with a fake socket: answers matched
// to requests in order, a session's rooms joined again, backoff bounds, a
// dead connection taken for dead, a token refreshed before it expires. The
// real server is in scenario.mjs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Client, backoffDelay, tokenExpiry } from "../dist/shardcast.js";

/** A socket the test drives: it records what the client sends. */
class FakeSocket {
  static last = null;
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.binaryType = "blob";
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeSocket.last = this;
  }
  send(data) {
    this.sent.push(typeof data === "string" ? data : JSON.parse(new TextDecoder().decode(data)));
  }
  close(code = 1000, reason = "") {
    this.readyState = 3;
    this.closed = { code, reason };
  }
  // The server's side.
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  frame(obj) {
    this.onmessage?.({ data: JSON.stringify(obj) });
  }
  drop(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

const tick = () => new Promise((r) => setTimeout(r, 0));

async function connected(opts = {}) {
  const c = new Client({ url: "ws://x/ws/chat/", WebSocket: FakeSocket, ...opts });
  c.connect();
  await tick();
  const ws = FakeSocket.last;
  ws.open();
  ws.frame({ session_id: "9b2f4c1e-7a3d-4e8b-9f10-2c5d6e7f8a90", count: 5, resumed: false, position: "1.P0" });
  return { c, ws };
}

test("answers are matched to requests in the order asked", async () => {
  const { c, ws } = await connected();
  const one = c.send("a");
  const room = c.join("lobby");
  const two = c.send("b");
  assert.deepEqual(ws.sent, ["a", { join: "lobby" }, "b"]);
  ws.frame({ count: 6 });
  ws.frame({ ts: "2026-01-01T00:00:00.000Z" });
  ws.frame({ broadcast: "x" });
  ws.frame({ joined: "lobby", position: "1.L1" });
  ws.frame({ error: "rate_limited" });
  assert.deepEqual(await one, { count: 6, confirmed: true });
  await room;
  await assert.rejects(two, { code: "rate_limited" });
  assert.equal(c.count, 6);
  c.close();
});

test("a refused join leaves the client out of the room", async () => {
  const { c, ws } = await connected();
  const j = c.join("ops");
  ws.frame({ error: "forbidden", room: "ops", reason: "the token's rooms claim does not name this room" });
  await assert.rejects(j, { code: "forbidden" });
  assert.deepEqual(c.joinedRooms, []);
  c.close();
});

test("a reconnect resumes with every position, and the rooms are joined again", async () => {
  const { c, ws } = await connected({ backoffMinMs: 1, backoffMaxMs: 2 });
  const got = [];
  const j = c.join("lobby", { onMessage: (b) => got.push(b) });
  ws.frame({ joined: "lobby", position: "1.L1" });
  await j;
  ws.frame({ broadcast: "hi", room: "lobby", position: "1.L2", offset: "1-0" });
  ws.frame({ broadcast: "all", position: "1.P1", offset: "2-0" });
  ws.drop();
  await new Promise((r) => setTimeout(r, 20));
  const again = FakeSocket.last;
  assert.notEqual(again, ws);
  const q = new URL(again.url).searchParams;
  assert.equal(q.get("session_id"), "9b2f4c1e-7a3d-4e8b-9f10-2c5d6e7f8a90");
  assert.deepEqual(q.getAll("position"), ["1.P1", "1.L2"]);
  again.open();
  again.frame({ session_id: "9b2f4c1e-7a3d-4e8b-9f10-2c5d6e7f8a90", count: 5, resumed: true, position: "1.P1" });
  // The server joined the session's rooms again: one the client left since
  // is left; the one it is in is joined (idempotently) from its position.
  again.frame({ joined: "lobby", position: "1.L2", restored: true });
  again.frame({ joined: "old", position: "1.O", restored: true });
  assert.deepEqual(again.sent, [{ join: "lobby", position: "1.L2" }, { leave: "old" }]);
  assert.deepEqual(got.map((b) => b.text), ["hi"]);
  c.close();
});

test("a drain's retry_after_ms is waited, not the backoff", async () => {
  const { c, ws } = await connected({ backoffMinMs: 60_000, backoffMaxMs: 60_000 });
  ws.frame({ bye: true, reason: "shutdown", retry_after_ms: 5, total: 5 });
  ws.drop(1001, "server shutting down");
  assert.equal(c.state, "waiting");
  await new Promise((r) => setTimeout(r, 30));
  assert.notEqual(FakeSocket.last, ws, "reconnected after retry_after_ms");
  c.close();
});

test("a connection silent past deadAfterMs is taken for dead", async () => {
  const { c, ws } = await connected({ deadAfterMs: 30, backoffMinMs: 1, backoffMaxMs: 2 });
  const pending = c.send("lost").catch((e) => e);
  await new Promise((r) => setTimeout(r, 60));
  assert.deepEqual(ws.closed, { code: 4000, reason: "no heartbeat" });
  assert.equal((await pending).code, "disconnected");
  assert.notEqual(FakeSocket.last, ws, "a new connection");
  c.close();
});

test("the token is refreshed before it expires", async () => {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const token = (exp) => `${b64({ alg: "HS256" })}.${b64({ sub: "ana", exp })}.sig`;
  const soon = Math.floor(Date.now() / 1000) + 2;
  assert.equal(tokenExpiry(token(soon)), soon * 1000);
  assert.equal(tokenExpiry("not a token"), undefined);
  let asked = 0;
  const fresh = token(soon + 3600);
  const { c, ws } = await connected({
    token: token(soon),
    refreshToken: () => {
      asked += 1;
      return fresh;
    },
    // Due 20 ms from now.
    refreshBeforeMs: soon * 1000 - Date.now() - 20,
  });
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(asked, 1);
  assert.deepEqual(ws.sent, [{ refresh: fresh }]);
  ws.frame({ refreshed: true, exp: soon + 3600 });
  c.close();
});

test("backoff is jittered within its bounds and grows to its cap", () => {
  for (let attempt = 0; attempt < 30; attempt++) {
    for (const r of [0, 0.5, 0.999]) {
      const d = backoffDelay(attempt, 500, 30_000, () => r);
      assert.ok(d >= 250 && d <= 30_000, `${attempt} ${r}: ${d}`);
    }
  }
  assert.ok(backoffDelay(10, 500, 30_000, () => 0.999) > 29_000);
  assert.ok(backoffDelay(0, 500, 30_000, () => 0.999) <= 500);
});
