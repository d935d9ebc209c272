// The dashboard's browser scenario, driven by tests/e2e/test_dashboard_e2e.py: Debian's
// chromium, headless, through playwright-core. Steps that need the suite's side (submitting
// blockers, appending an event) are asked of the Python test over stdin/stdout, one line each.
// Prints `RESULT <json>` at the end.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const env = process.env;
const loginUrl = env.DASHBOARD_LOGIN_URL;
const shots = env.SCREENSHOT_DIR;
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const ask = async (message) => {
  console.log(message);
  const { value } = await lines.next();
  return value.trim().split(" ");
};
const results = {};
const profile = mkdtempSync(join(tmpdir(), "agentgate-chromium-"));

// The flags a closed network and a root CI need (docs/dashboard.md, "Browser tests").
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
  ],
});
try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  page.setDefaultTimeout(Number(env.STEP_TIMEOUT_MS || 60000));
  const consoleErrors = [];
  page.on("pageerror", (err) => consoleErrors.push(String(err)));

  // Log in once: the code is spent and the address bar ends on a clean URL.
  await page.goto(loginUrl);
  results.afterLogin = page.url();
  await page.waitForSelector("[data-testid=work-orders]");

  // A URL with a spent code logs nobody in.
  const again = await (await browser.request.get(loginUrl, { maxRedirects: 0 })).status();
  results.reusedCodeStatus = again;

  // Submit from the form.
  await page.goto(new URL("#/submit", page.url()).href);
  await page.fill("input[name=source]", env.PROJECT);
  await page.fill("textarea[name=prompt]", "Fix add() so the tests pass");
  await page.fill("input[name=agent]", "scripted");
  await page.fill("textarea[name=options]", JSON.stringify({ script: env.SCRIPT }));
  await page.fill("input[name=iterations]", "3");
  await page.click("form button[type=submit]");
  await page.waitForURL(/#\/wo\/wo-/);
  const woId = page.url().split("#/wo/")[1];
  results.workOrderId = woId;

  // Events arrive live: some before the run ends, the rest while the page is open.
  await page.waitForSelector("[data-testid=stream-state][data-state=live]");
  await page.waitForFunction(() => Number(document.querySelector("[data-testid=event-count]")?.textContent) > 0);
  results.eventsWhenFirstSeen = Number(await page.textContent("[data-testid=event-count]"));
  await page.waitForSelector("[data-testid=iteration-1][data-passed=false]", { timeout: 120000 });
  await page.waitForSelector("[data-testid=iteration-2][data-passed=true]", { timeout: 120000 });
  await page.waitForSelector("[data-testid=stream-state][data-state=ended]", { timeout: 60000 });
  results.eventsAtEnd = Number(await page.textContent("[data-testid=event-count]"));
  results.arrivalSpreadMs = await page.evaluate(() => {
    const a = window.agentgateEvents.arrivals;
    return a[a.length - 1].at - a[0].at;
  });
  results.lastEventType = await page.evaluate(() => {
    const list = window.agentgateEvents.list;
    return list.at(list.length - 1).type;
  });
  results.status = await page.textContent("[data-testid=wo-status]");
  results.traceId = await page.textContent("[data-testid=trace-id]");
  results.report1 = await page.textContent("[data-testid=report-1]");
  await page.click("[data-testid=diff-2]");
  results.diff2 = await page.textContent("[data-testid=diff-text-2]");
  await page.screenshot({ path: join(shots, "work-order.png"), fullPage: true });

  await page.goto(new URL("#/", page.url()).href);
  await page.waitForSelector(`[data-testid=work-orders] tr[data-id="${woId}"]`);
  results.listRow = await page.textContent(`[data-testid=work-orders] tr[data-id="${woId}"]`);
  await page.screenshot({ path: join(shots, "work-orders.png") });
  await page.goto(new URL("#/submit", page.url()).href);
  await page.screenshot({ path: join(shots, "submit.png") });

  // A waiting work order: its page follows the stream; an event appended now must arrive fast.
  const [, waiter] = await ask("NEED_WAITER");
  await page.goto(new URL(`#/wo/${waiter}`, page.url()).href);
  await page.waitForSelector("[data-testid=stream-state][data-state=live]");
  await page.waitForFunction(() => Number(document.querySelector("[data-testid=event-count]")?.textContent) > 0);
  const [, seq, sentAtMs] = await ask("READY_FOR_EVENT");
  await page.waitForFunction((s) => window.agentgateEvents.arrivals.some((a) => a.seq === s), Number(seq));
  const arrivedAt = await page.evaluate(
    (s) => performance.timeOrigin + window.agentgateEvents.arrivals.find((a) => a.seq === s).at,
    Number(seq),
  );
  results.streamLatencyMs = arrivedAt - Number(sentAtMs);
  // Its place in the queue, from WatchPosition (the other server stream).
  await page.waitForFunction(() => document.querySelector("[data-testid=position]")?.textContent?.startsWith("Queue position"));
  results.waiterPosition = await page.textContent("[data-testid=position]");

  // The gateway restarts while an event is appended: the page reconnects and resumes after
  // the last seq it had, missing nothing and repeating nothing.
  const [, seqDuringRestart] = await ask("RESTART_GATEWAY");
  await page.waitForFunction(
    (s) => window.agentgateEvents.arrivals.some((a) => a.seq === s),
    Number(seqDuringRestart),
    { timeout: 30000 },
  );
  results.seqsAfterReconnect = await page.evaluate(() => window.agentgateEvents.arrivals.map((a) => a.seq));

  // The queue page: positions, then cancel the waiting work order from it.
  await page.goto(new URL("#/queue", page.url()).href);
  await page.waitForSelector(`[data-testid=queue] tr[data-id="${waiter}"]`);
  results.queueRow = await page.textContent(`[data-testid=queue] tr[data-id="${waiter}"]`);
  results.queueStats = await page.textContent("[data-testid=queue-stats]");
  await page.screenshot({ path: join(shots, "queue.png") });
  await page.click(`[data-testid=cancel-${waiter}]`);
  await page.waitForSelector(`[data-testid=queue] tr[data-id="${waiter}"]`, { state: "detached", timeout: 20000 });

  // A run with many events: replayed into the virtualised list, only a window drawn.
  const [, big, total] = await ask("NEED_BIG");
  const started = Date.now();
  await page.goto(new URL(`#/wo/${big}`, page.url()).href);
  await page.waitForFunction(
    (n) => Number(document.querySelector("[data-testid=event-count]")?.textContent) >= n,
    Number(total),
    { timeout: 120000 },
  );
  results.bigReplayMs = Date.now() - started;
  results.bigRenderedRows = await page.evaluate(() => window.agentgateEvents.list.renderedRows());
  const scrollStart = Date.now();
  await page.evaluate(() => {
    const el = document.querySelector("[data-testid=events]");
    el.scrollTop = el.scrollHeight / 2;
  });
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("[data-testid=events] .vrow")];
    return rows.some((r) => Number(r.dataset.seq) > 1000 && Number(r.dataset.seq) < 49000);
  });
  results.bigScrollMs = Date.now() - scrollStart;
  results.pageErrors = consoleErrors;
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(`RESULT ${JSON.stringify(results)}`);
process.exit(0);
