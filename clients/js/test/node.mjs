// The scenario in Node, with the built library and Node's own WebSocket
// (run with --experimental-websocket on Node 20 and 21).
import { Client } from "../dist/shardcast.js";
import { scenario } from "./scenario.mjs";
import { env, harness, log, publish, report } from "./harness.mjs";

if (typeof globalThis.WebSocket !== "function") {
  throw new Error("no global WebSocket: run with node --experimental-websocket (Node 20-21) or Node 22+");
}
await report(() => scenario({ Client, url: env.url, publish, harness, log }));
