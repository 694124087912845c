// The driver's side of the test harness (tests/js_client.rs): the steps the
// scenario asks of the servers go out on stdout as `@harness <step>` and are
// done when the harness answers `ok` on stdin; the result goes out as
// `@result <json>`, a failure as `@failed <message>`. The servers' addresses
// come in the environment.
import readline from "node:readline";

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

export const env = {
  url: process.env.SHARDCAST_WS_URL,
  api: process.env.SHARDCAST_API_URL,
  key: process.env.SHARDCAST_API_KEY,
};
for (const [k, v] of Object.entries(env)) {
  if (!v) throw new Error(`the harness did not say ${k}`);
}

export async function harness(step) {
  process.stdout.write(`@harness ${step}\n`);
  const { value, done } = await lines.next();
  if (done || value.trim() !== "ok") throw new Error(`the harness answered ${JSON.stringify(value)} to ${step}`);
}

export async function publish(body) {
  const r = await fetch(env.api + "/api/broadcast", {
    method: "POST",
    headers: { "content-type": "application/json", "x-api-key": env.key },
    body: JSON.stringify(body),
  });
  if (r.status !== 202) throw new Error(`POST /api/broadcast ${JSON.stringify(body)}: ${r.status} ${await r.text()}`);
}

export function log(line) {
  process.stderr.write(`[client test] ${line}\n`);
}

export async function report(run) {
  try {
    const result = await run();
    process.stdout.write(`@result ${JSON.stringify(result)}\n`);
    process.exit(0);
  } catch (e) {
    process.stdout.write(`@failed ${String(e?.stack ?? e).replace(/\n/g, " | ")}\n`);
    process.exit(1);
  }
}
