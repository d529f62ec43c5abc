// End-to-end test of the dashboard in a real headless Chromium (Debian's `chromium`, driven by
// playwright-core) against a running api + worker. scripts/e2e.sh starts those, trains the
// tiny source model and sets the environment:
//   ATTUNE_E2E_URL    the api (which serves the built dashboard at /)
//   ATTUNE_E2E_KEY    an API key
//   ATTUNE_E2E_MODEL  the source checkpoint (.safetensors) the adapt jobs read
//   ATTUNE_E2E_SHOTS  folder for the screenshots of every page
//   CHROMIUM          the browser binary (default /usr/bin/chromium)

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { sampleJob, expected as sampleExpected } from "./sample-fixture.mjs";

const url = need("ATTUNE_E2E_URL").replace(/\/$/, "");
const key = need("ATTUNE_E2E_KEY");
const model = need("ATTUNE_E2E_MODEL");
const shots = process.env.ATTUNE_E2E_SHOTS ?? "target/e2e-screenshots";
mkdirSync(shots, { recursive: true });

function need(k) {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set (scripts/e2e.sh sets it)`);
  return v;
}

const t0 = Date.now();
const log = (...a) => console.log(`[e2e ${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);
let failures = 0;
function check(ok, what) {
  if (ok) log(`ok   ${what}`);
  else {
    failures++;
    log(`FAIL ${what}`);
  }
  return ok;
}

const adaptSpec = (name, methods, extra = {}) => ({
  kind: "adapt",
  name,
  tags: ["e2e"],
  model,
  corruptions: ["gaussian_noise", "contrast", "fog"],
  severity: 3,
  n_examples: 200,
  batch_size: 20,
  forgetting_examples: 0,
  seed: 1,
  methods,
  ...extra,
});

async function api(method, path, body) {
  const r = await fetch(url + path, {
    method,
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** Pixels of `canvas` within 40 (sum of channel distances) of each colour. */
async function colourPixels(page, selector, colours) {
  return page.evaluate(
    ([sel, cs]) => {
      const c = document.querySelector(sel);
      if (!c) return null;
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      const rgb = cs.map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)));
      const n = cs.map(() => 0);
      for (let i = 0; i < d.length; i += 4) {
        if (d[i + 3] < 128) continue;
        rgb.forEach((q, k) => {
          if (Math.abs(d[i] - q[0]) + Math.abs(d[i + 1] - q[1]) + Math.abs(d[i + 2] - q[2]) < 40) n[k]++;
        });
      }
      return n;
    },
    [selector, colours],
  );
}

const shot = async (page, name) => {
  await page.waitForTimeout(300);
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
  log(`screenshot ${name}.png`);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
const context = await browser.newContext({ viewport: { width: 1360, height: 900 }, acceptDownloads: true });
const page = await context.newPage();
page.setDefaultTimeout(20_000);
const external = [];
const pageErrors = [];
page.on("request", (r) => {
  const u = r.url();
  if (!u.startsWith(url) && !u.startsWith("data:") && !u.startsWith("blob:")) external.push(u);
});
page.on("pageerror", (e) => pageErrors.push(String(e)));
page.on("console", (m) => {
  if (m.type() === "error" && !/401|422|400|Failed to load resource/.test(m.text())) pageErrors.push(m.text());
});

const colours = ["#1f77b4", "#d62728", "#2ca02c"];
try {
  // 1. The key: a wrong one gets a clear message, the right one is kept.
  await page.goto(`${url}/`);
  await page.waitForSelector("#key-dialog #api-key");
  await page.fill("#api-key", "not-a-key");
  await page.click("#key-dialog button[type=submit]");
  await page.waitForSelector("#key-dialog .key-msg.bad");
  const msg = await page.textContent("#key-dialog .key-msg");
  check(/refused this key \(401 unauthorized\)/.test(msg) && /create-key/.test(msg), `a wrong key shows a clear message: "${msg.slice(0, 80)}…"`);
  await shot(page, "01-key-wrong");
  await page.fill("#api-key", key);
  await page.click("#key-dialog button[type=submit]");
  await page.waitForSelector("#key-dialog", { state: "detached" });
  check((await page.evaluate(() => localStorage.getItem("attune.apiKey"))) === key, "the key is kept in localStorage");

  // A train job through the service, for its page (it takes seconds).
  const train = await api("POST", "/v1/jobs", {
    kind: "train", name: "e2e tiny train", tags: ["e2e"], dataset: "fashion_mnist", epochs: 2, batch_size: 50,
    val_size: 100, max_train_samples: 300, hflip: false, architecture: { arch: "cnn", channels: [4, 8, 8] }, seed: 7,
  });

  // 2. Submit: start from an example, then a bad spec shows the API's error, then a good one runs.
  await page.goto(`${url}/#/submit?example=fmnist-c-tent`);
  await page.waitForFunction(() => document.querySelector("#spec-editor")?.value.includes('"kind": "adapt"'));
  await page.waitForSelector("#spec-editor-reference table");
  await shot(page, "02-submit-example");
  const bad = adaptSpec("bad", ["source"], { severity: 9 });
  await page.fill("#spec-editor", JSON.stringify(bad, null, 2));
  await page.waitForSelector("#spec-editor-validation .api-issue");
  check(/severity/.test(await page.textContent("#spec-editor-validation")), "live validation names the bad field (severity)");
  await page.click("#submit");
  await page.waitForSelector("#submit-result .error-box");
  const err = await page.textContent("#submit-result .error-box");
  check(/422/.test(err) && /invalid_spec/.test(err) && /severity/.test(err), `the API's error for a bad spec is shown: "${err.replace(/\s+/g, " ").slice(0, 100)}"`);
  await page.fill("#spec-editor", JSON.stringify({ ...bad, severity: 3, methd: 1 }, null, 2));
  await page.waitForSelector("#spec-editor-validation .schema-issues");
  check(/methd/.test(await page.textContent("#spec-editor-validation .schema-issues")), "the schema check flags an unknown field at once");
  await shot(page, "03-submit-bad-spec");

  const specA = adaptSpec("e2e adapt A", ["source", "norm_test", { method: "tent", steps: 1, optimizer: { name: "adam", lr: 1e-3 } }], { save_checkpoints: true });
  await page.fill("#spec-editor", JSON.stringify(specA, null, 2));
  await page.waitForSelector("#spec-editor-ok");
  await page.click("#submit");
  await page.waitForURL(/#\/jobs\/[0-9a-f-]{36}$/);
  const idA = page.url().split("/").pop();
  await page.waitForSelector(".job-head .badge[data-status]");
  const firstSeen = await page.getAttribute(".job-head .badge[data-status]", "data-status");
  log(`submitted job A ${idA} from the form; its page first showed it ${firstSeen}`);
  const jobB = await api("POST", "/v1/jobs", adaptSpec("e2e adapt B", ["source", "norm_test", { method: "tent", steps: 1, optimizer: { name: "sgd", lr: 2.5e-4, momentum: 0.9 } }], { severity: 5 }));

  // 3. The job page follows the run live until it succeeds, then draws the plots.
  await page.waitForSelector('.job-head .badge[data-status="succeeded"]', { timeout: 120_000 });
  check(true, "job A reached succeeded on its page (live, over server-sent events)");
  await page.waitForSelector("#error-chart canvas");
  await page.waitForSelector("#domain-bars canvas");
  await page.waitForTimeout(600);
  const linePx = await colourPixels(page, "#error-chart canvas", colours);
  check(linePx && linePx.every((n) => n > 100), `the error plot is drawn: pixels of each method's colour ${JSON.stringify(linePx)}`);
  const legend = await page.$$eval("#error-chart .u-legend .u-series .u-label", (ls) => ls.map((l) => l.textContent));
  check(["source", "norm_test", "tent"].every((m) => legend.includes(m)), `one line per method: ${legend.join(", ")}`);
  const barPx = await colourPixels(page, "#domain-bars canvas", colours);
  check(barPx && barPx.every((n) => n > 100), `the per-domain bars are drawn: ${JSON.stringify(barPx)}`);
  const rows = await page.$$eval("#domain-table tbody tr", (r) => r.map((x) => x.cells[0].textContent));
  check(rows.join(",") === "gaussian_noise,contrast,fog", `the per-domain table has the three domains: ${rows}`);
  const ckRows = await page.$$("#checkpoint-table tbody tr");
  check(ckRows.length >= 1, `checkpoints are listed with download buttons (${ckRows.length})`);
  if (ckRows.length) {
    const [dl] = await Promise.all([page.waitForEvent("download"), page.click("#checkpoint-table button.download")]);
    check(/\.safetensors$/.test(dl.suggestedFilename()), `a checkpoint downloads: ${dl.suggestedFilename()}`);
  }
  const logText = await page.textContent("#log");
  check(logText.length > 20, "the log is shown");
  await shot(page, "04-job-adapt");

  // 4. The jobs table: filters, search, live updates.
  await page.goto(`${url}/#/jobs`);
  await page.waitForSelector("#jobs-table");
  await page.waitForFunction((id) => document.querySelector(`tr[data-job="${id}"][data-status="succeeded"]`), jobB.id, { timeout: 120_000 });
  check(true, "job B turned succeeded in the table without a reload (live updates)");
  await page.waitForFunction((id) => document.querySelector(`tr[data-job="${id}"][data-status="succeeded"]`), train.id, { timeout: 60_000 });
  const head = await page.textContent(`tr[data-job="${idA}"]`);
  check(/mean error/.test(head) && /tent|norm_test|source/.test(head), `the table shows the headline metric: ${head.replace(/\s+/g, " ").slice(0, 160)}`);
  await shot(page, "05-jobs");
  await page.selectOption("#filter-kind", "train");
  await page.waitForFunction(() => [...document.querySelectorAll("#jobs-table tbody tr")].length === 1);
  check(true, "the kind filter leaves the one train job");
  await page.selectOption("#filter-kind", "");
  await page.fill("#search", "adapt B");
  await page.waitForFunction((id) => {
    const rs = [...document.querySelectorAll("#jobs-table tbody tr")];
    return rs.length === 1 && rs[0].getAttribute("data-job") === id;
  }, jobB.id);
  check(true, "search finds job B by name");
  await page.fill("#search", "");

  // 5. The train job's page.
  await page.goto(`${url}/#/jobs/${train.id}`);
  await page.waitForSelector("#train-chart canvas");
  await page.waitForSelector("#epoch-table");
  await page.waitForTimeout(500);
  const trainPx = await colourPixels(page, "#train-chart canvas", colours.slice(0, 2));
  check(trainPx && trainPx.every((n) => n > 20), `the training curves are drawn: ${JSON.stringify(trainPx)}`);
  await shot(page, "06-job-train");

  // 6. Compare A and B: spec differences and overlaid metrics.
  await page.goto(`${url}/#/compare?ids=${idA},${jobB.id}`);
  await page.waitForSelector("#spec-diff");
  const diff = await page.$$eval("#spec-diff tbody tr.differs td:first-child", (tds) => tds.map((t) => t.textContent));
  check(diff.includes("severity") && diff.includes("name") && diff.some((d) => d.startsWith("methods[2].optimizer")), `the spec diff shows what differs: ${diff.join(", ")}`);
  await page.waitForSelector("#compare-chart canvas");
  await page.waitForSelector("#compare-bars canvas");
  await page.waitForTimeout(600);
  const cmpLegend = await page.$$eval("#compare-chart .u-legend .u-series .u-label", (ls) => ls.map((l) => l.textContent));
  check(cmpLegend.includes("A: tent") && cmpLegend.includes("B: tent"), `both jobs' methods are overlaid: ${cmpLegend.join(", ")}`);
  const cmpPx = await colourPixels(page, "#compare-chart canvas", ["#1f77b4", "#ff7f0e"]);
  check(cmpPx && cmpPx.every((n) => n > 100), `the overlaid plot is drawn (A: source, B: source): ${JSON.stringify(cmpPx)}`);
  const summary = await page.$$("#compare-summary tbody tr");
  check(summary.length === 6, `the summary table has a row per job and method (${summary.length})`);
  await shot(page, "07-compare");

  // 7. Schedules: create (cron + template), see the next fire time, pause.
  await page.goto(`${url}/#/schedules`);
  await page.waitForSelector("#cron-preview .tick");
  await page.fill("#schedule-name", "e2e nightly evaluation");
  await page.fill("#schedule-cron", "0 3 * * *");
  const tmpl = { kind: "evaluate", name: "nightly eval", checkpoints: [model], corruptions: ["fog"], severities: [1], n_examples: 50, batch_size: 50 };
  await page.fill("#template-editor", JSON.stringify(tmpl, null, 2));
  await page.waitForSelector("#template-editor-ok");
  await page.click("#create-schedule");
  const srow = "#schedule-table tbody tr";
  await page.waitForSelector(`${srow}[data-paused="false"]`);
  const srowText = await page.textContent(srow);
  check(/0 3 \* \* \*/.test(srowText) && /in \d/.test(srowText), `the schedule is listed with its next fire time: ${srowText.replace(/\s+/g, " ").slice(0, 140)}`);
  await page.click(`${srow} button.pause`);
  await page.waitForSelector(`${srow}[data-paused="true"]`);
  const scheds = await api("GET", "/v1/schedules");
  check(scheds.length === 1 && scheds[0].paused === true, "pausing is stored by the API");
  await page.fill("#schedule-cron", "0 3 * *");
  await page.waitForSelector("#cron-preview .bad");
  check(/5 \(min hour day month weekday\)/.test(await page.textContent("#cron-preview")), "a bad cron expression is explained");
  await page.fill("#schedule-cron", "*/5 * * * *");
  await page.waitForSelector("#cron-preview .tick");
  await shot(page, "08-schedules");

  // 8. The view of `sample` jobs, fed the documented result format (docs/sample.md of the
  // `sample` branch) through request interception: that job kind is not on this branch yet.
  const sid = "5a5a5a5a-0000-4000-8000-000000000001";
  const sj = sampleJob(sid);
  await page.route(`${url}/v1/jobs/${sid}`, (r) => r.fulfill({ json: sj }));
  await page.route(`${url}/v1/jobs/${sid}/checkpoints`, (r) => r.fulfill({ json: [] }));
  await page.route(`${url}/v1/jobs/${sid}/runs`, (r) => r.fulfill({ json: [] }));
  await page.route(`${url}/v1/jobs/${sid}/events`, (r) =>
    r.fulfill({ contentType: "text/event-stream", body: `event: status\ndata: ${JSON.stringify({ ...sj, result: undefined })}\n\nevent: end\ndata: {"status":"succeeded"}\n\n` }),
  );
  await page.goto(`${url}/#/jobs/${sid}`);
  await page.waitForSelector("#passk-chart canvas");
  await page.waitForSelector("#sample-table");
  await page.waitForTimeout(500);
  const pkPx = await colourPixels(page, "#passk-chart canvas", ["#1f77b4"]);
  check(pkPx && pkPx[0] > 100, `the pass@k curve is drawn: ${JSON.stringify(pkPx)}`);
  const sel = await page.$$eval("#selection-table tbody tr", (rs) => rs.map((r) => r.textContent));
  check(sel.some((t) => t.includes(`pass@1`) && t.includes(`${(100 * sampleExpected.passAt1).toFixed(1)} %`)), `selection table with pass@1 ${(100 * sampleExpected.passAt1).toFixed(1)} %`);
  const verdictsShown = await page.$$eval("#sample-table tbody tr td:nth-child(2)", (tds) => tds.map((t) => t.textContent));
  check(verdictsShown.join(",") === "passed,failed,passed,timeout", `the sample browser shows the verdicts: ${verdictsShown}`);
  await page.selectOption("#sample-filter", "correct");
  const nCorrect = await page.$$eval("#sample-table tbody tr", (rs) => rs.length);
  check(nCorrect === 2, `filtering to correct samples leaves 2 (${nCorrect})`);
  await page.selectOption("#sample-filter", "all");
  await page.click("#sample-table tbody tr:nth-child(4) details summary");
  await shot(page, "09-job-sample-fixture");
  await page.unrouteAll();

  // 9. A stored key that the API no longer accepts brings the key dialog back with a message.
  await page.evaluate(() => localStorage.setItem("attune.apiKey", "revoked-key"));
  await page.goto(`${url}/#/jobs`);
  await page.reload();
  await page.waitForSelector("#key-dialog .reason");
  check(/refused the stored key/.test(await page.textContent("#key-dialog .reason")), "a refused stored key asks again, saying why");
  await shot(page, "10-key-refused");

  check(external.length === 0, `no request left the api (${external.length}${external.length ? `: ${external.slice(0, 3).join(", ")}` : ""})`);
  check(pageErrors.length === 0, `no script errors in the page${pageErrors.length ? `: ${pageErrors.slice(0, 3).join(" | ")}` : ""}`);
} catch (e) {
  failures++;
  log(`FAIL ${e.stack ?? e}`);
  await page.screenshot({ path: join(shots, "failure.png"), fullPage: true }).catch(() => {});
} finally {
  await browser.close();
}
log(failures ? `${failures} check(s) failed` : "all checks passed");
process.exit(failures ? 1 : 0);
