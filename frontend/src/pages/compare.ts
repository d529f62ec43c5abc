// Compare two or more jobs: spec differences and their metrics overlaid.

import { get, post, type Job, type JobList, type Spec } from "../api";
import { barChart, COLORS, lineChart, type Boundary, type LineSeries } from "../charts";
import { errorBox, fmtAgo, fmtNum, fmtPct, h, replace, shortId, statusBadge } from "../dom";
import { headlineCell, jobLabel, methodNames } from "../summary";
import type { Cleanup } from "../main";

interface MetricPage {
  run_id: string;
  points: { series: string; name: string; step: number; value: number }[];
}

/** `a.b[0].c` → value, for every leaf of a spec. */
export function flatten(v: unknown, prefix = "", out = new Map<string, string>()): Map<string, string> {
  if (Array.isArray(v)) {
    if (!v.length) out.set(prefix, "[]");
    v.forEach((x, i) => flatten(x, `${prefix}[${i}]`, out));
  } else if (v && typeof v === "object") {
    const keys = Object.keys(v as object).sort();
    if (!keys.length) out.set(prefix, "{}");
    for (const k of keys) flatten((v as Record<string, unknown>)[k], prefix ? `${prefix}.${k}` : k, out);
  } else {
    out.set(prefix, JSON.stringify(v));
  }
  return out;
}

export function specDiff(specs: Spec[]): { path: string; values: (string | undefined)[]; same: boolean }[] {
  const flat = specs.map((s) => flatten(s));
  const paths = [...new Set(flat.flatMap((f) => [...f.keys()]))].sort();
  return paths.map((p) => {
    const values = flat.map((f) => f.get(p));
    return { path: p, values, same: values.every((v) => v === values[0]) };
  });
}

const letter = (i: number) => String.fromCharCode(65 + i);

export async function comparePage(root: HTMLElement, params: URLSearchParams): Promise<Cleanup> {
  const ids = (params.get("ids") ?? "").split(",").filter(Boolean);
  const picker = h("section", { class: "picker", id: "picker" });
  const body = h("div");
  replace(root, h("h1", null, "Compare jobs"), picker, body);
  await renderPicker(picker, ids);
  if (ids.length < 2) {
    body.append(h("p", { class: "empty" }, "Pick two or more jobs above (or tick them in the jobs table)."));
    return;
  }
  let jobs: Job[];
  try {
    jobs = await Promise.all(ids.map((id) => get<Job>(`/v1/jobs/${encodeURIComponent(id)}`)));
  } catch (e) {
    body.append(errorBox(e));
    return;
  }
  const showAll = h("input", { type: "checkbox", id: "show-same" });
  const diffEl = h("div", { class: "table-wrap" });
  const renderDiff = () => {
    const rows = specDiff(jobs.map((j) => j.spec)).filter((r) => showAll.checked || !r.same);
    replace(
      diffEl,
      rows.length
        ? h(
            "table",
            { class: "diff", id: "spec-diff" },
            h("thead", null, h("tr", null, h("th", null, "field"), jobs.map((_, i) => h("th", null, letter(i))))),
            h("tbody", null, rows.map((r) => h("tr", { class: r.same ? "same" : "differs" }, h("td", { class: "mono" }, r.path), r.values.map((v) => h("td", { class: "mono small" }, v ?? "—"))))),
          )
        : h("p", { class: "empty" }, "The specs are identical."),
    );
  };
  showAll.addEventListener("change", renderDiff);
  renderDiff();

  body.append(
    h(
      "table",
      { id: "compare-jobs", class: "card" },
      h("thead", null, h("tr", null, ["", "job", "kind", "status", "headline", "created"].map((c) => h("th", null, c)))),
      h("tbody", null, jobs.map((j, i) => h("tr", null, h("td", null, h("strong", null, letter(i))), h("td", null, h("a", { href: `#/jobs/${j.id}` }, jobLabel(j)), " ", h("span", { class: "mono sub" }, shortId(j.id))), h("td", null, j.kind), h("td", null, statusBadge(j.status)), h("td", null, headlineCell(j)), h("td", null, fmtAgo(j.created_at))))),
    ),
    h("section", null, h("h2", null, "Spec differences"), h("label", { class: "check" }, showAll, " show identical fields too"), diffEl),
  );

  const adapt = jobs.map((j, i) => ({ j, i })).filter((x) => x.j.kind === "adapt");
  if (adapt.length) await renderAdapt(body, adapt);
  const train = jobs.map((j, i) => ({ j, i })).filter((x) => x.j.kind === "train");
  if (train.length) await renderTrain(body, train);
  const evals = jobs.map((j, i) => ({ j, i })).filter((x) => x.j.kind === "evaluate" && x.j.result);
  if (evals.length) renderEvaluate(body, evals);
}

async function renderPicker(el: HTMLElement, ids: string[]) {
  const chosen = new Set(ids);
  let list: JobList;
  try {
    list = await get<JobList>("/v1/jobs?limit=50");
  } catch (e) {
    replace(el, errorBox(e));
    return;
  }
  const go = h("button", { class: "primary", id: "compare-go", onclick: () => (location.hash = `#/compare?ids=${[...chosen].join(",")}`) }, "Compare");
  const details = h(
    "details",
    { open: ids.length < 2 },
    h("summary", null, ids.length < 2 ? "Choose jobs" : `Change the selection (${ids.length} jobs)`),
    h(
      "div",
      { class: "pick-list" },
      list.jobs.map((j) =>
        h(
          "label",
          { class: "check" },
          h("input", { type: "checkbox", value: j.id, checked: chosen.has(j.id), onchange: (e: Event) => ((e.target as HTMLInputElement).checked ? chosen.add(j.id) : chosen.delete(j.id)) }),
          ` ${jobLabel(j)} `,
          h("span", { class: "sub mono" }, `${shortId(j.id)} · ${j.kind} · ${j.status} · ${fmtAgo(j.created_at)}`),
        ),
      ),
    ),
    go,
  );
  replace(el, details);
}

async function runMetrics(jobs: Job[], name: string): Promise<Map<string, MetricPage>> {
  const runs = jobs.map((j) => j.current_run).filter((r): r is string => !!r);
  const out = new Map<string, MetricPage>();
  if (!runs.length) return out;
  const r = await post<{ runs: MetricPage[] }>("/v1/metrics/query", { runs, name, limit: 10000 });
  for (const p of r.runs) out.set(p.run_id, p);
  return out;
}

async function renderAdapt(body: HTMLElement, xs: { j: Job; i: number }[]) {
  const metricSel = h("select", { id: "compare-metric" }, ["error", "nll", "brier", "ece"].map((m) => h("option", { value: m }, m)));
  const chart = h("div", { class: "chart", id: "compare-chart" });
  const bars = h("div", { class: "chart", id: "compare-bars" });
  const table = h("div", { class: "table-wrap" });
  body.append(h("section", null, h("h2", null, "Error along the stream, overlaid"), h("div", { class: "plot-controls" }, "metric ", metricSel, h("span", { class: "sub" }, "  (solid: job A; dashed: the others)")), chart));
  const seg = await runMetrics([xs[0].j], "segment");
  const draw = async () => {
    const metric = metricSel.value;
    const pages = await runMetrics(xs.map((x) => x.j), metric);
    const series: LineSeries[] = [];
    let c = 0;
    for (const { j, i } of xs) {
      const page = j.current_run ? pages.get(j.current_run) : undefined;
      for (const m of methodNames(j.spec)) {
        const pts = (page?.points ?? []).filter((p) => p.series === m).sort((a, b) => a.step - b.step);
        series.push({ label: `${letter(i)}: ${m}`, x: pts.map((p) => p.step), y: pts.map((p) => p.value), color: COLORS[c++ % COLORS.length], dash: i === xs[0].i ? undefined : [6, 3] });
      }
    }
    const first = xs[0].j;
    const names = (first.result?.stream?.segments as { name: string }[] | undefined)?.map((s) => s.name);
    const sp = first.current_run ? seg.get(first.current_run) : undefined;
    const m0 = methodNames(first.spec)[0];
    const bs: Boundary[] = [];
    let last = -1;
    for (const p of (sp?.points ?? []).filter((p) => p.series === m0).sort((a, b) => a.step - b.step)) {
      if (p.value !== last) bs.push({ x: p.step, label: names?.[p.value] ?? `segment ${p.value}` });
      last = p.value;
    }
    replace(chart);
    lineChart(chart, series, { xLabel: "batch", yLabel: metric, pct: metric === "error" || metric === "ece", boundaries: bs, height: 360 });
  };
  metricSel.addEventListener("change", () => void draw());
  await draw();

  // Per-domain errors and summary from the results.
  const done = xs.filter((x) => x.j.result);
  if (!done.length) return;
  const cats: string[] = [];
  for (const { j } of done) for (const m of j.result.methods) for (const d of m.domains) if (!cats.includes(d.domain)) cats.push(d.domain);
  const groups = done.flatMap(({ j, i }) =>
    (j.result.methods as any[]).map((m) => ({ label: `${letter(i)}: ${m.name}`, values: cats.map((c) => m.domains.find((d: any) => d.domain === c)?.metrics.error ?? null) })),
  );
  body.append(h("section", null, h("h2", null, "Per domain"), bars), h("section", null, h("h2", null, "Summary"), table));
  barChart(bars, cats, groups, { yLabel: "error %", pct: true });
  replace(
    table,
    h(
      "table",
      { id: "compare-summary" },
      h("thead", null, h("tr", null, ["job: method", "mean error", "mean NLL", "mean ECE", "overall error", "clean error after", "collapse alarms"].map((c) => h("th", null, c)))),
      h(
        "tbody",
        null,
        done.flatMap(({ j, i }) =>
          (j.result.methods as any[]).map((m) =>
            h("tr", null, h("td", null, `${letter(i)}: ${m.name}`), h("td", { class: "num" }, fmtPct(m.mean.error)), h("td", { class: "num" }, fmtNum(m.mean.nll)), h("td", { class: "num" }, fmtPct(m.mean.ece)), h("td", { class: "num" }, fmtPct(m.overall.error)), h("td", { class: "num" }, fmtPct(m.forgetting?.after.error)), h("td", { class: "num" }, m.collapse.length)),
          ),
        ),
      ),
    ),
  );
}

async function renderTrain(body: HTMLElement, xs: { j: Job; i: number }[]) {
  const chart = h("div", { class: "chart", id: "compare-train" });
  body.append(h("section", null, h("h2", null, "Training curves, overlaid"), chart));
  const pages = await runMetrics(xs.map((x) => x.j), "val_error");
  const series = xs.map(({ j, i }) => {
    const pts = (j.current_run ? pages.get(j.current_run)?.points ?? [] : []).sort((a, b) => a.step - b.step);
    return { label: `${letter(i)}: val_error`, x: pts.map((p) => p.step), y: pts.map((p) => p.value) };
  });
  lineChart(chart, series, { xLabel: "epoch", yLabel: "validation error %", pct: true, height: 280 });
}

function renderEvaluate(body: HTMLElement, xs: { j: Job; i: number }[]) {
  const chart = h("div", { class: "chart", id: "compare-eval" });
  body.append(h("section", null, h("h2", null, "Mean error by severity, overlaid"), chart));
  const series = xs.flatMap(({ j, i }) =>
    (j.result.checkpoints as any[]).map((c, k) => ({ label: `${letter(i)}: checkpoint ${k}`, x: c.by_severity.map((b: any) => b.severity), y: c.by_severity.map((b: any) => b.mean.error) })),
  );
  lineChart(chart, series, { xLabel: "severity", yLabel: "mean error %", pct: true, height: 280 });
}
