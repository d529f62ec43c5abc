// The view of `sample` jobs (pass@N / best-of-N; result format: docs/sample.md of the
// `sample` branch): the pass@k curve (k = 1..N, overall and by difficulty), the selection
// strategies against it, one row per problem, and a browser of the samples with verdicts.
// While the job runs, the running mean of pass@1 and pass@N over the problems done so far.

import type { Job } from "../api";
import { COLORS, lineChart } from "../charts";
import { fmtNum, fmtPct, h, replace } from "../dom";
import { seriesOf, type MetricStore } from "./job";

interface Sample {
  index: number;
  seed: number;
  text: string;
  tokens: number;
  mean_logprob: number;
  finish: string;
  answer: string | null;
  score: number | null;
  correct: boolean;
  verdict: string | null;
  output?: string | null;
}

interface Problem {
  id: string;
  difficulty: number | null;
  reference: string | null;
  n: number;
  correct: number;
  pass_at_k: number[];
  chosen: Record<string, number>;
  chosen_correct: Record<string, boolean>;
  samples?: Sample[];
}

const cumulativeMean = (y: number[]) => {
  let s = 0;
  return y.map((v, i) => (s += v) / (i + 1));
};

export function renderSample(plots: HTMLElement, tables: HTMLElement, job: Job, st: MetricStore): void {
  const r = job.result;
  if (!r || r.kind !== "sample") {
    // Live: problems done so far.
    const chart = h("div", { class: "chart", id: "sample-live" });
    replace(plots, h("h2", null, "pass@k so far (running mean over the problems done)"), chart);
    const names = [...(st.get("problems")?.keys() ?? [])].filter((n) => n.startsWith("pass_at_")).sort((a, b) => +a.slice(8) - +b.slice(8));
    if (!names.length) {
      chart.append(h("p", { class: "empty" }, job.status === "queued" ? "Waiting for the first problem…" : "No problem finished yet."));
      return;
    }
    lineChart(
      chart,
      names.map((n) => {
        const s = seriesOf(st, "problems", n);
        return { label: n.replace("pass_at_", "pass@"), x: s.x, y: cumulativeMean(s.y) };
      }),
      { xLabel: "problem", yLabel: "pass@k", pct: true, height: 260 },
    );
    replace(tables);
    return;
  }

  // The pass@k curve, overall and by difficulty.
  const curve = h("div", { class: "chart", id: "passk-chart" });
  const byDiff = (r.by_difficulty ?? []) as { difficulty: number; problems: number; pass_at_k: { k: number; value: number }[] }[];
  const pk = r.pass_at_k as { k: number; value: number }[];
  replace(
    plots,
    h("h2", null, `pass@k, k = 1…${r.n} (${r.problems} problems, ${r.source})`),
    h("p", { class: "sub" }, `Unbiased estimator, averaged over problems. Model ${r.model?.path ?? "?"} (${r.model?.arch ?? ""}, ${r.model?.weights ?? ""}); ${r.generated_tokens ?? "?"} tokens generated.`),
    curve,
  );
  lineChart(
    curve,
    [
      { label: "all problems", x: pk.map((p) => p.k), y: pk.map((p) => p.value) },
      ...byDiff.map((d, i) => ({ label: `difficulty ${d.difficulty} (${d.problems})`, x: d.pass_at_k.map((p) => p.k), y: d.pass_at_k.map((p) => p.value), color: COLORS[(i + 1) % COLORS.length], dash: [5, 3] })),
    ],
    { xLabel: "k (samples)", yLabel: "pass@k", pct: true, height: 300 },
  );

  // Selection strategies against pass@1 and pass@N.
  const sel = (r.selection ?? []) as { strategy: string; correct: number; accuracy: number }[];
  const probs = (r.per_problem ?? []) as Problem[];
  const strategies = sel.map((s) => s.strategy);
  const browser = h("div", { id: "sample-browser" });
  replace(
    tables,
    h("h2", null, "Picking one answer out of N"),
    h(
      "table",
      { id: "selection-table" },
      h("thead", null, h("tr", null, ["strategy", "correct", "accuracy"].map((c) => h("th", { class: c === "strategy" ? "" : "num" }, c)))),
      h(
        "tbody",
        null,
        sel.map((s) => h("tr", null, h("td", null, s.strategy), h("td", { class: "num" }, `${s.correct} / ${r.problems}`), h("td", { class: "num" }, fmtPct(s.accuracy, 1)))),
        h("tr", { class: "ref" }, h("td", { class: "sub" }, "pass@1 (one sample)"), h("td"), h("td", { class: "num sub" }, fmtPct(pk[0]?.value, 1))),
        h("tr", { class: "ref" }, h("td", { class: "sub" }, `pass@${r.n} (an oracle picking)`), h("td"), h("td", { class: "num sub" }, fmtPct(pk[pk.length - 1]?.value, 1))),
      ),
    ),
    h("h2", null, "Problems"),
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { id: "problem-table" },
        h("thead", null, h("tr", null, h("th", null, "problem"), h("th", { class: "num" }, "difficulty"), h("th", { class: "num" }, "correct"), h("th", { class: "num" }, "pass@1"), h("th", { class: "num" }, `pass@${r.n}`), strategies.map((s) => h("th", { class: "num" }, s)))),
        h(
          "tbody",
          null,
          probs.map((p, i) =>
            h(
              "tr",
              null,
              h("td", null, h("a", { href: "#", onclick: (e: Event) => { e.preventDefault(); showProblem(i); } }, p.id)),
              h("td", { class: "num" }, p.difficulty ?? "–"),
              h("td", { class: "num" }, `${p.correct} / ${p.n}`),
              h("td", { class: "num" }, fmtPct(p.pass_at_k[0], 1)),
              h("td", { class: "num" }, fmtPct(p.pass_at_k[p.pass_at_k.length - 1], 1)),
              strategies.map((s) => h("td", { class: `num ${p.chosen_correct?.[s] ? "verdict-pass" : "verdict-fail"}` }, p.chosen_correct?.[s] ? "✓" : "✗")),
            ),
          ),
        ),
      ),
    ),
    h("h2", null, "Samples"),
    browser,
  );

  const probSel = h("select", { id: "sample-problem", onchange: () => draw() }, probs.map((p, i) => h("option", { value: i }, `${p.id} (${p.correct}/${p.n} correct)`)));
  const which = h("select", { id: "sample-filter", onchange: () => draw() }, [["all", "all samples"], ["correct", "correct only"], ["wrong", "wrong only"]].map(([v, l]) => h("option", { value: v }, l)));
  const list = h("div", { class: "samples" });
  replace(browser, h("div", { class: "filters" }, "problem ", probSel, " ", which), list);

  function showProblem(i: number) {
    probSel.value = String(i);
    draw();
    browser.scrollIntoView({ behavior: "smooth" });
  }

  function draw() {
    const p = probs[+probSel.value];
    if (!p) {
      replace(list, h("p", { class: "empty" }, "No problems."));
      return;
    }
    if (!p.samples) {
      replace(list, h("p", { class: "empty" }, "This job kept no sample texts (keep_samples = false)."));
      return;
    }
    const chosenBy = (idx: number) => Object.entries(p.chosen ?? {}).filter(([, v]) => v === idx).map(([k]) => k);
    const ss = p.samples.filter((s) => which.value === "all" || (which.value === "correct") === s.correct);
    replace(
      list,
      p.reference !== null && p.reference !== undefined ? h("p", null, "reference answer: ", h("code", null, String(p.reference))) : null,
      ss.length
        ? h(
            "table",
            { id: "sample-table" },
            h("thead", null, h("tr", null, ["#", "verdict", "answer", "score", "mean log-prob", "tokens", "finish", "picked by", "text"].map((c) => h("th", null, c)))),
            h(
              "tbody",
              null,
              ss.map((s) =>
                h(
                  "tr",
                  { "data-correct": String(s.correct) },
                  h("td", { class: "num" }, s.index),
                  h("td", null, h("span", { class: s.correct ? "verdict-pass" : "verdict-fail" }, s.verdict ?? (s.correct ? "correct" : "wrong"))),
                  h("td", { class: "mono small" }, (s.answer ?? "–").slice(0, 60)),
                  h("td", { class: "num" }, s.score === null ? "–" : fmtNum(s.score, 2)),
                  h("td", { class: "num" }, fmtNum(s.mean_logprob, 3)),
                  h("td", { class: "num" }, s.tokens),
                  h("td", null, s.finish),
                  h("td", { class: "small" }, chosenBy(s.index).join(", ")),
                  h("td", null, h("details", null, h("summary", null, (s.text ?? "").split("\n")[0].slice(0, 60) || "(empty)"), h("pre", { class: "spec" }, s.text), s.output ? h("pre", { class: "log" }, s.output) : null)),
                ),
              ),
            ),
          )
        : h("p", { class: "empty" }, "No sample matches."),
    );
  }
  draw();
}
