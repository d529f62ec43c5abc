// One job: spec, live progress (server-sent events), plots and tables of its metrics,
// checkpoints with downloads, cancel / retry, runs, log.

import { ApiError, download, events, get, post, type Checkpoint, type Job, type LogLine, type MetricPoint, type Progress, type Run } from "../api";
import { barChart, lineChart, smooth, type Boundary, type LineSeries } from "../charts";
import { errorBox, fmtAgo, fmtBytes, fmtDuration, fmtNum, fmtPct, fmtTime, h, replace, shortId, statusBadge } from "../dom";
import { dataModel, durationSec, headlineCell, jobLabel, methodNames, TERMINAL } from "../summary";
import { renderSample } from "./sample";
import type { Cleanup } from "../main";

/** Metric values of one run: series → name → step → value. */
export type MetricStore = Map<string, Map<string, Map<number, number>>>;

export function addPoint(store: MetricStore, p: MetricPoint): void {
  let s = store.get(p.series);
  if (!s) store.set(p.series, (s = new Map()));
  let n = s.get(p.name);
  if (!n) s.set(p.name, (n = new Map()));
  n.set(p.step, p.value);
}

export function seriesOf(store: MetricStore, series: string, name: string): { x: number[]; y: number[] } {
  const m = store.get(series)?.get(name);
  if (!m) return { x: [], y: [] };
  const x = [...m.keys()].sort((a, b) => a - b);
  return { x, y: x.map((k) => m.get(k)!) };
}

/** Segment names of an adapt job: from the result when there is one, else from the spec. */
export function segmentNames(job: Job): string[] | null {
  const segs = job.result?.stream?.segments as { name: string }[] | undefined;
  if (segs) return segs.map((s) => s.name);
  const setting = String(job.spec.setting ?? "continual");
  if ((setting === "continual" || setting === "reset_each_shift") && Array.isArray(job.spec.corruptions)) return job.spec.corruptions.map(String);
  return null;
}

/** Where the `segment` metric changes value: the domain boundaries along the stream. */
export function boundaries(store: MetricStore, series: string, names: string[] | null): Boundary[] {
  const seg = seriesOf(store, series, "segment");
  const out: Boundary[] = [];
  let last = -1;
  seg.x.forEach((step, i) => {
    const s = seg.y[i];
    if (s !== last) {
      out.push({ x: step, label: names?.[s] ?? `segment ${s}` });
      last = s;
    }
  });
  return out;
}

export function streamSeries(store: MetricStore, names: string[], metric: string, window: number): LineSeries[] {
  return names.map((n) => {
    const s = seriesOf(store, n, metric);
    const seg = seriesOf(store, n, "segment");
    const sameSteps = seg.x.length === s.x.length;
    return { label: n, x: s.x, y: window > 1 ? smooth(s.y, window, sameSteps ? seg.y : undefined) : s.y };
  });
}

export async function jobPage(root: HTMLElement, _params: URLSearchParams, path: string[]): Promise<Cleanup> {
  const id = path[1];
  let job: Job;
  try {
    job = await get<Job>(`/v1/jobs/${encodeURIComponent(id)}`);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) throw e;
    replace(root, h("h1", null, "Job"), errorBox(e));
    return;
  }
  const abort = new AbortController();
  const runs = new Map<string, MetricStore>();
  let lastRun: string | null = null;
  const logLines = new Map<number, LogLine>();

  const head = h("div", { class: "job-head" });
  const meta = h("div", { class: "meta" });
  const progress = h("div", { class: "progress-wrap", id: "progress" });
  const plots = h("section", { class: "plots", id: "plots" });
  const tables = h("section", { class: "results", id: "results" });
  const ckpts = h("section", { id: "checkpoints" });
  const runsEl = h("section", { id: "runs" });
  const specEl = h("pre", { class: "spec", id: "spec" });
  const logEl = h("pre", { class: "log", id: "log" });
  const actionMsg = h("div", { class: "action-msg" });

  replace(
    root,
    head,
    actionMsg,
    meta,
    progress,
    plots,
    tables,
    h("div", { class: "two-col" }, h("section", null, h("h2", null, "Spec"), specEl), h("section", null, h("h2", null, "Log"), logEl)),
    ckpts,
    runsEl,
  );

  function store(): MetricStore {
    const r = job.current_run ?? lastRun;
    return (r && runs.get(r)) || new Map();
  }

  function renderHead() {
    const canCancel = job.status === "queued" || job.status === "running";
    const canRetry = job.status === "failed" || job.status === "cancelled";
    replace(
      head,
      h("h1", null, jobLabel(job), " ", statusBadge(job.status), job.cancel_requested && !TERMINAL.has(job.status) ? h("span", { class: "badge" }, "cancel requested") : null),
      h(
        "div",
        { class: "actions" },
        canCancel ? h("button", { id: "cancel", class: "danger", onclick: () => act("cancel") }, "Cancel") : null,
        canRetry ? h("button", { id: "retry", onclick: () => act("retry") }, "Retry") : null,
        h("a", { class: "button", href: `#/submit?from=${job.id}` }, "Edit as new job"),
        h("a", { class: "button", href: `#/compare?ids=${job.id}` }, "Compare with…"),
      ),
    );
    const kv = (k: string, v: unknown) => [h("dt", null, k), h("dd", null, v as Node | string)];
    replace(
      meta,
      h(
        "dl",
        null,
        kv("id", h("span", { class: "mono" }, job.id)),
        kv("kind", job.kind),
        kv("dataset / model", h("span", { class: "mono small" }, dataModel(job.spec))),
        job.kind === "adapt" ? kv("methods", methodNames(job.spec).join(", ")) : null,
        kv("queue", job.queue),
        kv("attempts", `${job.attempts} of ${job.max_attempts}`),
        kv("created", `${fmtTime(job.created_at)} (${fmtAgo(job.created_at)})`),
        kv("started", fmtTime(job.started_at)),
        kv("finished", fmtTime(job.finished_at)),
        kv("duration", fmtDuration(durationSec(job))),
        job.headline ? kv("headline", headlineCell(job)) : null,
        job.tags.length ? kv("tags", job.tags.join(", ")) : null,
        job.schedule_id ? kv("schedule", h("a", { href: "#/schedules" }, shortId(job.schedule_id))) : null,
        job.waiting ? kv("waiting", job.waiting) : null,
      ),
      job.error ? h("div", { class: "error-box", id: "job-error" }, h("strong", null, job.status === "failed" ? "failed: " : "last attempt failed: "), job.error) : null,
    );
  }

  function renderProgress(p: Progress | null) {
    if (!p || (TERMINAL.has(job.status) && job.status === "succeeded")) {
      replace(progress);
      return;
    }
    const pct = p.total ? Math.min(100, (100 * p.done) / p.total) : 0;
    replace(
      progress,
      h("div", { class: "progress-label" }, `${p.phase ?? "working"} — ${p.done} / ${p.total}`, p.phases_done ? ` · ${p.phases_done} phase(s) done` : ""),
      h("div", { class: "progress" }, h("div", { class: "bar", style: { width: `${pct}%` } })),
    );
  }

  // --- plots -----------------------------------------------------------------------------------
  let metric = "error";
  let window = 1;
  let plotTimer: number | undefined;
  let plotted = "";
  const schedulePlot = () => {
    if (plotTimer) return;
    plotTimer = setTimeout(() => {
      plotTimer = undefined;
      renderPlots();
    }, 400);
  };

  function controls(): HTMLElement {
    const mSel = h(
      "select",
      { id: "metric", onchange: (e: Event) => { metric = (e.target as HTMLSelectElement).value; plotted = ""; renderPlots(); } },
      ["error", "nll", "brier", "ece"].map((m) => h("option", { value: m, selected: m === metric }, m)),
    );
    const wSel = h(
      "select",
      { id: "smoothing", onchange: (e: Event) => { window = +(e.target as HTMLSelectElement).value; plotted = ""; renderPlots(); } },
      [1, 5, 25].map((w) => h("option", { value: w, selected: w === window }, w === 1 ? "per batch" : `${w}-batch moving average`)),
    );
    return h("div", { class: "plot-controls" }, "metric ", mSel, " ", wSel);
  }

  function renderPlots() {
    const st = store();
    const key = `${job.status}|${metric}|${window}|${[...st.values()].reduce((n, s) => n + [...s.values()].reduce((k, m) => k + m.size, 0), 0)}|${!!job.result}`;
    if (key === plotted) return;
    plotted = key;
    if (job.kind === "adapt") {
      const names = [...st.keys()].length ? methodNames(job.spec).filter((n) => st.has(n)) : [];
      const chartEl = h("div", { class: "chart", id: "error-chart" });
      replace(plots, h("h2", null, "Error along the stream"), controls(), chartEl);
      if (!names.length) {
        chartEl.append(h("p", { class: "empty" }, job.status === "queued" ? "Waiting for the first batch…" : "No batches recorded."));
        return;
      }
      const series = streamSeries(st, names, metric, window);
      lineChart(chartEl, series, {
        xLabel: "batch",
        yLabel: metric === "nll" || metric === "brier" ? metric : `${metric} %`,
        pct: metric === "error" || metric === "ece",
        boundaries: boundaries(st, names[0], segmentNames(job)),
      });
    } else if (job.kind === "evaluate") {
      renderEvaluatePlots(st);
    } else if (job.kind === "train") {
      const chartEl = h("div", { class: "chart", id: "train-chart" });
      const lossEl = h("div", { class: "chart", id: "loss-chart" });
      replace(plots, h("h2", null, "Training curves"), h("div", { class: "two-col" }, chartEl, lossEl));
      const e = ["train_error", "val_error"].map((n) => ({ label: n, ...seriesOf(st, "train", n) }));
      const l = ["train_loss", "val_nll"].map((n) => ({ label: n, ...seriesOf(st, "train", n) }));
      if (!e[0].x.length) {
        chartEl.append(h("p", { class: "empty" }, "No epoch finished yet."));
        return;
      }
      lineChart(chartEl, e, { xLabel: "epoch", yLabel: "error %", pct: true, height: 260 });
      lineChart(lossEl, l, { xLabel: "epoch", yLabel: "loss", height: 260 });
    } else if (job.kind === "sample") {
      renderSample(plots, tables, job, st);
    } else {
      replace(plots);
    }
  }

  function renderEvaluatePlots(st: MetricStore) {
    const chartEl = h("div", { class: "chart", id: "error-chart" });
    replace(plots, h("h2", null, "Error per domain, in evaluation order"), controls(), chartEl);
    const series = [...st.keys()].filter((s) => s.startsWith("checkpoint-")).sort();
    if (!series.length) {
      chartEl.append(h("p", { class: "empty" }, "No domain evaluated yet."));
      return;
    }
    const ckNames: string[] = (job.spec.checkpoints as string[] | undefined) ?? [];
    const domains = job.result?.domains as { name: string; severity: number }[] | undefined;
    const lines = series.map((s) => {
      const i = +s.split("-")[1];
      return { label: ckNames[i] ? `${s}: ${ckNames[i].split("/").pop()}` : s, ...seriesOf(st, s, metric) };
    });
    // A boundary wherever the corruption changes (severities of one corruption are adjacent).
    const bs: Boundary[] = [];
    if (domains) {
      domains.forEach((d, k) => {
        if (k === 0 || domains[k - 1].name !== d.name) bs.push({ x: k, label: d.name });
      });
    }
    lineChart(chartEl, lines, { xLabel: "domain (evaluation order)", yLabel: `${metric}`, pct: metric === "error" || metric === "ece", boundaries: bs });
  }

  // --- result tables -----------------------------------------------------------------------------
  let tablesFor = "";
  function renderTables() {
    if (!job.result || tablesFor === job.id + job.finished_at) {
      if (!job.result && job.kind !== "sample") replace(tables);
      return;
    }
    tablesFor = job.id + job.finished_at;
    const r = job.result;
    if (r.kind === "adapt") renderAdaptTables(r);
    else if (r.kind === "evaluate") renderEvaluateTables(r);
    else if (r.kind === "train") renderTrainTables(r);
  }

  function renderAdaptTables(r: any) {
    const ms = r.methods as any[];
    const domains: string[] = ms[0]?.domains.map((d: any) => (d.severity ? `${d.domain}` : d.domain)) ?? [];
    const bars = h("div", { class: "chart", id: "domain-bars" });
    const t = h(
      "table",
      { class: "domains", id: "domain-table" },
      h("thead", null, h("tr", null, h("th", null, "domain"), h("th", null, "severity"), ms.map((m) => h("th", { class: "num" }, `${m.name} error`)))),
      h(
        "tbody",
        null,
        domains.map((d, i) =>
          h(
            "tr",
            null,
            h("td", null, d),
            h("td", { class: "num" }, ms[0].domains[i].severity),
            ms.map((m) => {
              const v = m.domains[i].metrics.error;
              const best = Math.min(...ms.map((x) => x.domains[i].metrics.error));
              return h("td", { class: `num${v === best && ms.length > 1 ? " best" : ""}` }, fmtPct(v));
            }),
          ),
        ),
      ),
      h(
        "tfoot",
        null,
        [
          ["mean error", (m: any) => fmtPct(m.mean.error)],
          ["mean NLL", (m: any) => fmtNum(m.mean.nll)],
          ["mean Brier", (m: any) => fmtNum(m.mean.brier)],
          ["mean ECE", (m: any) => fmtPct(m.mean.ece)],
          ["overall error", (m: any) => fmtPct(m.overall.error)],
          ["clean error before", (m: any) => fmtPct(m.forgetting?.before.error)],
          ["clean error after", (m: any) => fmtPct(m.forgetting?.after.error)],
          ["resets", (m: any) => String(m.resets)],
          ["collapse alarms", (m: any) => (m.collapse.length ? `${m.collapse.length} (first at batch ${m.collapse[0].step})` : "none")],
          ["adapts", (m: any) => (m.adapts.length ? `${m.adapts.length} tensors` : "nothing")],
        ].map(([label, f]) => h("tr", null, h("th", { colspan: 2 }, label as string), ms.map((m) => h("td", { class: "num" }, (f as (m: any) => string)(m))))),
      ),
    );
    replace(tables, h("h2", null, "Per domain"), bars, t);
    barChart(
      bars,
      domains,
      ms.map((m) => ({ label: m.name, values: m.domains.map((d: any) => d.metrics.error) })),
      { yLabel: "error %", pct: true },
    );
  }

  function renderEvaluateTables(r: any) {
    const cks = r.checkpoints as any[];
    const names = cks.map((c, i) => `${i}: ${String(c.checkpoint.path).split("/").pop()}`);
    const rows = cks[0]?.rows ?? [];
    const corrupt = [...new Set(rows.map((x: any) => x.domain))] as string[];
    const bars = h("div", { class: "chart", id: "domain-bars" });
    const sev = h("div", { class: "chart", id: "severity-chart" });
    const meanOf = (c: any, d: string) => {
      const rs = c.rows.filter((x: any) => x.domain === d);
      return rs.reduce((s: number, x: any) => s + x.metrics.error, 0) / rs.length;
    };
    replace(
      tables,
      h("h2", null, "Per domain (mean over severities)"),
      bars,
      h("h2", null, "Mean error by severity"),
      sev,
      h(
        "table",
        { class: "domains", id: "domain-table" },
        h("thead", null, h("tr", null, h("th", null, "domain"), h("th", null, "severity"), names.map((n) => h("th", { class: "num" }, n)))),
        h("tbody", null, rows.map((row: any, i: number) => h("tr", null, h("td", null, row.domain), h("td", { class: "num" }, row.severity), cks.map((c) => h("td", { class: "num" }, fmtPct(c.rows[i].metrics.error)))))),
      ),
    );
    barChart(bars, corrupt, cks.map((c, i) => ({ label: names[i], values: corrupt.map((d) => meanOf(c, d)) })), { yLabel: "error %", pct: true });
    const sevs = cks.map((c, i) => ({ label: names[i], x: c.by_severity.map((b: any) => b.severity), y: c.by_severity.map((b: any) => b.mean.error) }));
    if (sevs[0]?.x.length) lineChart(sev, sevs, { xLabel: "severity", yLabel: "mean error %", pct: true, height: 240 });
  }

  function renderTrainTables(r: any) {
    replace(
      tables,
      h("h2", null, "Epochs"),
      h(
        "table",
        { class: "domains", id: "epoch-table" },
        h("thead", null, h("tr", null, ["epoch", "lr", "train loss", "train error", "val error", "val NLL", "val ECE"].map((c) => h("th", { class: "num" }, c)))),
        h("tbody", null, r.epochs.map((e: any) => h("tr", null, [String(e.epoch), e.lr.toExponential(2), fmtNum(e.train_loss), fmtPct(e.train_error), fmtPct(e.val.error), fmtNum(e.val.nll), fmtPct(e.val.ece)].map((c) => h("td", { class: "num" }, c))))),
        h("tfoot", null, h("tr", null, h("th", { colspan: 4 }, `clean test (${r.model?.arch ?? "model"})`), h("td", { class: "num" }, fmtPct(r.test.error)), h("td", { class: "num" }, fmtNum(r.test.nll)), h("td", { class: "num" }, fmtPct(r.test.ece)))),
      ),
    );
  }

  // --- checkpoints, runs, log --------------------------------------------------------------------
  async function renderCheckpoints() {
    let cs: Checkpoint[] = [];
    try {
      cs = await get<Checkpoint[]>(`/v1/jobs/${job.id}/checkpoints`);
    } catch (e) {
      replace(ckpts, h("h2", null, "Checkpoints"), errorBox(e));
      return;
    }
    replace(
      ckpts,
      h("h2", null, "Checkpoints"),
      cs.length
        ? h(
            "table",
            { id: "checkpoint-table" },
            h("thead", null, h("tr", null, ["name", "size", "sha256", "created", "used by", ""].map((c) => h("th", null, c)))),
            h(
              "tbody",
              null,
              cs.map((c) => {
                const msg = h("span", { class: "sub" });
                return h(
                  "tr",
                  null,
                  h("td", { class: "mono" }, c.name),
                  h("td", { class: "num" }, fmtBytes(c.size_bytes)),
                  h("td", { class: "mono small", title: c.sha256 }, c.sha256.slice(0, 16) + "…"),
                  h("td", null, fmtTime(c.created_at)),
                  h("td", null, c.used_by.length ? c.used_by.map((u) => h("a", { href: `#/jobs/${u}`, class: "mono" }, shortId(u) + " ")) : "–"),
                  h(
                    "td",
                    null,
                    h(
                      "button",
                      {
                        class: "download",
                        "data-href": c.download,
                        onclick: async () => {
                          msg.textContent = " downloading…";
                          try {
                            await download(c.download, c.name.split("/").pop() ?? "checkpoint.safetensors");
                            msg.textContent = " done (checksum verified by the api)";
                          } catch (e) {
                            msg.textContent = ` ${(e as Error).message}`;
                          }
                        },
                      },
                      "Download",
                    ),
                    msg,
                  ),
                );
              }),
            ),
          )
        : h("p", { class: "empty" }, TERMINAL.has(job.status) ? "This job wrote no checkpoint." : "Checkpoints appear when the job has finished."),
    );
  }

  async function renderRuns() {
    let rs: Run[] = [];
    try {
      rs = await get<Run[]>(`/v1/jobs/${job.id}/runs`);
    } catch {
      return;
    }
    replace(
      runsEl,
      h("h2", null, "Attempts"),
      rs.length
        ? h(
            "table",
            { id: "runs-table" },
            h("thead", null, h("tr", null, ["attempt", "status", "worker", "started", "finished", "metrics", "error"].map((c) => h("th", null, c)))),
            h(
              "tbody",
              null,
              rs.map((r) => h("tr", null, h("td", { class: "num" }, r.attempt), h("td", null, statusBadge(r.status)), h("td", { class: "mono small" }, r.worker_id), h("td", null, fmtTime(r.started_at)), h("td", null, fmtTime(r.finished_at)), h("td", { class: "num" }, r.metric_count), h("td", { class: "small" }, r.error ?? ""))),
            ),
          )
        : h("p", { class: "empty" }, "No attempt yet."),
    );
  }

  function appendLog(l: LogLine) {
    if (logLines.has(l.id)) return;
    logLines.set(l.id, l);
    const atBottom = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 8;
    logEl.append(h("div", { class: `log-${l.level}` }, h("span", { class: "at" }, new Date(l.at).toLocaleTimeString()), ` [${l.attempt}] `, l.message));
    if (atBottom) logEl.scrollTop = logEl.scrollHeight;
  }

  async function refresh() {
    job = await get<Job>(`/v1/jobs/${job.id}`);
    renderHead();
    renderProgress(job.progress);
    renderPlots();
    renderTables();
    void renderCheckpoints();
    void renderRuns();
  }

  async function act(what: "cancel" | "retry") {
    replace(actionMsg);
    try {
      await post<Job>(`/v1/jobs/${job.id}/${what}`);
      await refresh();
      if (what === "retry") follow();
    } catch (e) {
      replace(actionMsg, errorBox(e));
    }
  }

  function follow() {
    void events(
      `/v1/jobs/${job.id}/events`,
      (name, data: any) => {
        if (name === "status") {
          const wasTerminal = TERMINAL.has(job.status);
          Object.assign(job, data, { result: job.result, headline: data.headline ?? job.headline });
          if (data.current_run) lastRun = data.current_run;
          renderHead();
          if (TERMINAL.has(job.status) && !wasTerminal) void refresh();
          void renderRuns();
        } else if (name === "progress") {
          job.progress = data;
          renderProgress(data);
        } else if (name === "log") {
          appendLog(data);
        } else if (name === "metrics") {
          for (const p of data as MetricPoint[]) {
            const r = p.run_id ?? "run";
            lastRun = r;
            let s = runs.get(r);
            if (!s) runs.set(r, (s = new Map()));
            addPoint(s, p);
          }
          schedulePlot();
        } else if (name === "end") {
          void refresh();
        }
      },
      abort.signal,
    ).catch((e) => replace(actionMsg, errorBox(e)));
  }

  specEl.textContent = JSON.stringify(job.spec, null, 2);
  renderHead();
  renderProgress(job.progress);
  renderPlots();
  renderTables();
  void renderCheckpoints();
  void renderRuns();
  follow();
  return () => {
    abort.abort();
    clearTimeout(plotTimer);
  };
}
