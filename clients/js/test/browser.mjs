// The scenario in headless Chromium: a page of the server's origin loads
// the built library the server serves (/shardcast.js) and runs the same
// scenario; publishing and the harness's steps are relayed to Node.
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";
import { env, harness, log, publish, report } from "./harness.mjs";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const source = readFileSync(new URL("./scenario.mjs", import.meta.url), "utf8");
const origin = new URL(env.url.replace(/^ws/, "http")).origin;

await report(async () => {
  const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
  try {
    const page = await browser.newPage();
    page.on("pageerror", (e) => log(`page error: ${e}`));
    await page.exposeFunction("relayPublish", publish);
    await page.exposeFunction("relayHarness", harness);
    await page.exposeFunction("relayLog", (l) => log(`(browser) ${l}`));
    const res = await page.goto(origin + "/");
    if (res.status() !== 200) throw new Error(`GET / answered ${res.status()}`);
    return await page.evaluate(
      async ({ source, url }) => {
        const lib = await import("/shardcast.js");
        const blob = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
        const { scenario } = await import(blob);
        const result = await scenario({
          Client: lib.Client,
          url,
          publish: (b) => window.relayPublish(b),
          harness: (s) => window.relayHarness(s),
          log: (l) => window.relayLog(l),
        });
        return { ...result, userAgent: navigator.userAgent };
      },
      { source, url: env.url },
    );
  } finally {
    await browser.close();
  }
});
