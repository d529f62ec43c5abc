// The view of `sample` jobs (pass@k curve, sample browser with verdicts).
//
// The `sample` job kind is being built on its own branch; until its result format is
// documented in docs/sample.md this view shows the raw result and the metric series it finds.

import type { Job } from "../api";
import { h, replace } from "../dom";
import type { MetricStore } from "./job";

export function renderSample(plots: HTMLElement, tables: HTMLElement, job: Job, _st: MetricStore): void {
  replace(
    plots,
    h("h2", null, "Samples"),
    h("p", { class: "empty" }, "This dashboard does not know the result format of sample jobs yet; the result is shown as JSON below."),
  );
  replace(tables, job.result ? h("pre", { class: "spec" }, JSON.stringify(job.result, null, 2).slice(0, 20000)) : null);
}
