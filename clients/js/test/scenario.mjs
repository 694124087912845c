// The client's end-to-end scenario against real shardcast servers, one copy
// run in Node (test/node.mjs) and in Chromium (test/browser.mjs). What it
// needs from its driver:
//   Client     the library's class
//   url        the servers' WebSocket endpoint (every server of the test
//              listens on that one port, one after another)
//   publish    (body) => Promise: POST /api/broadcast through a server on
//              another port, which stays up throughout
//   harness    (step) => Promise: asks the test to act on the servers:
//              "drain" (start the next server on the port, SIGTERM the
//              current one), "stop" (SIGTERM it and wait for its exit),
//              "start" (start a server on the port)
//   log        (line) => void
// It connects, counts, joins two rooms, gets their broadcasts and the
// global ones, rides a drain to another server and a restart of the only
// one, recovers what was published while it was away each time, leaves a
// room, and checks every channel got each broadcast once, in order.

const LIMIT = 20_000;

function until(what, ok, limit = LIMIT) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      const v = ok();
      if (v) return resolve(v);
      if (Date.now() - started > limit) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 20);
    };
    tick();
  });
}

function same(got, want, what) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  if (g !== w) throw new Error(`${what}: got ${g}, want ${w}`);
}

export async function scenario({ Client, url, publish, harness, log }) {
  const got = { global: [], a: [], b: [] };
  const recovered = [];
  const welcomes = [];
  const byes = [];
  const c = new Client({ url, backoffMinMs: 100, backoffMaxMs: 1000, heartbeatIntervalMs: 1000 });
  c.on("welcome", (w) => welcomes.push(w));
  c.on("bye", (b) => byes.push(b));
  c.on("broadcast", (b) => {
    got.global.push(b.text);
    if (b.recovered) recovered.push(b.text);
  });
  const room = (name) => ({
    onMessage: (b) => {
      got[name].push(b.text);
      if (b.recovered) recovered.push(b.text);
    },
  });
  const arrived = (list, text) => () => got[list].includes(text);

  log("1: connect, count, join two rooms");
  c.connect();
  await until("the welcome", () => welcomes.length === 1);
  same(welcomes[0].resumed, false, "a fresh session");
  same((await c.send("one")).count, 1, "the first count");
  same((await c.send("two")).count, 2, "the second count");
  await c.join("a", room("a"));
  await c.join("b", room("b"));
  same(c.joinedRooms, ["a", "b"], "rooms");
  await publish({ message: "g1" });
  await publish({ message: "a1", room: "a" });
  await publish({ message: "b1", room: "b" });
  await publish({ message: "c1", room: "c" });
  await publish({ message: "g2" });
  await until("g1, a1, b1, g2", () => got.global.includes("g2") && got.a.includes("a1") && got.b.includes("b1"));

  log("2: the server drains; the client waits as told, resumes on the next one, recovers");
  await harness("drain");
  await until("the shutdown goodbye", () => byes.some((b) => b.reason === "shutdown"));
  same(typeof byes[0].retryAfterMs, "number", "a drain says when to come back");
  await publish({ message: "a2", room: "a" });
  await publish({ message: "g3" });
  await until("the second welcome", () => welcomes.length === 2);
  same([welcomes[1].resumed, welcomes[1].count], [true, 2], "the session resumed on the next server");
  await until("a2 and g3", () => arrived("a", "a2")() && arrived("global", "g3")());
  same((await c.send("three")).count, 3, "the count goes on");

  log("3: the only server stops; the client backs off until one is back, recovers");
  await harness("stop");
  await until("the client to notice", () => c.state === "waiting" || c.state === "connecting");
  await publish({ message: "a3", room: "a" });
  await publish({ message: "b3", room: "b" });
  await publish({ message: "g4" });
  await harness("start");
  await until("the third welcome", () => welcomes.length === 3);
  same([welcomes[2].resumed, welcomes[2].count, welcomes[2].recovered], [true, 3, true], "resumed after the restart");
  await until("a3, b3, g4", () => arrived("a", "a3")() && arrived("b", "b3")() && arrived("global", "g4")());
  for (const m of ["a3", "b3", "g4"]) {
    if (!recovered.includes(m)) throw new Error(`${m} was published while away but not marked recovered`);
  }

  log("4: leave a room: its broadcasts stop");
  await c.leave("b");
  await publish({ message: "b4", room: "b" });
  await publish({ message: "a4", room: "a" });
  await publish({ message: "g5" });
  await until("a4 and g5", () => arrived("a", "a4")() && arrived("global", "g5")());
  same((await c.send("four")).count, 4, "the last count");
  c.close();

  same(got.global, ["g1", "g2", "g3", "g4", "g5"], "global broadcasts, each once, in order");
  same(got.a, ["a1", "a2", "a3", "a4"], "room a, each once, in order");
  same(got.b, ["b1", "b3"], "room b, each once, in order, none after the leave");
  return { welcomes: welcomes.length, recovered, sessionId: c.sessionId };
}
