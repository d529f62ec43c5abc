// Submit a job: start from an example spec (or an existing job's), edit with validation,
// submit; the API's error is shown as it answered.

import { get, post, type Example, type Job } from "../api";
import { errorBox, h, replace } from "../dom";
import { specEditor } from "../editor";
import type { Cleanup } from "../main";

export async function submitPage(root: HTMLElement, params: URLSearchParams): Promise<Cleanup> {
  const ed = specEditor("spec-editor");
  const result = h("div", { id: "submit-result" });
  const exSel = h("select", { id: "example", "aria-label": "example" });
  const exDesc = h("p", { class: "sub example-desc" });
  const maxAttempts = h("input", { id: "max-attempts", type: "number", min: 1, max: 20, value: 3, size: 3 });
  const idem = h("input", { id: "idempotency-key", type: "text", placeholder: "optional", size: 24 });
  const submit = h("button", { id: "submit", class: "primary", type: "button" }, "Submit");

  replace(
    root,
    h("h1", null, "Submit a job"),
    h("div", { class: "filters" }, h("label", null, "Start from ", exSel), exDesc),
    h(
      "div",
      { class: "submit-grid" },
      h(
        "div",
        null,
        ed.el,
        h("div", { class: "row" }, h("label", null, "max attempts ", maxAttempts), h("label", null, "Idempotency-Key ", idem), submit),
        result,
      ),
      ed.reference,
    ),
  );

  let examples: Example[] = [];
  try {
    examples = await get<Example[]>("/v1/examples");
  } catch (e) {
    result.append(errorBox(e));
  }
  let from: Job | null = null;
  const fromId = params.get("from");
  if (fromId) {
    try {
      from = await get<Job>(`/v1/jobs/${encodeURIComponent(fromId)}`);
    } catch (e) {
      result.append(errorBox(e));
    }
  }
  replace(
    exSel,
    from ? h("option", { value: "job" }, `job ${from.name ?? from.id.slice(0, 8)} (its spec)`) : null,
    examples.map((x) => h("option", { value: x.name }, `${x.name} (${x.spec.kind})`)),
  );
  const pick = () => {
    if (exSel.value === "job" && from) {
      exDesc.textContent = `The spec of job ${from.id}, defaults filled in.`;
      ed.setSpec(from.spec);
      return;
    }
    const x = examples.find((e) => e.name === exSel.value);
    if (x) {
      exDesc.textContent = `${x.file}${x.description ? ` — ${x.description}` : ""}`;
      ed.setSpec(x.spec);
    }
  };
  exSel.addEventListener("change", pick);
  ed.onChange(() => replace(result));
  const want = params.get("example");
  if (want && examples.some((e) => e.name === want)) exSel.value = want;
  pick();

  submit.addEventListener("click", async () => {
    replace(result);
    const v = ed.value();
    if (v === null) {
      replace(result, errorBox(new Error("The spec is not valid JSON; fix it first.")));
      return;
    }
    submit.disabled = true;
    try {
      const headers: Record<string, string> = {};
      if (idem.value.trim()) headers["Idempotency-Key"] = idem.value.trim();
      const j = await post<Job>(`/v1/jobs?max_attempts=${encodeURIComponent(maxAttempts.value || "3")}`, v, { headers });
      location.hash = `#/jobs/${j.id}`;
    } catch (e) {
      replace(result, h("p", null, "The API did not accept this job:"), errorBox(e));
    } finally {
      submit.disabled = false;
    }
  });
}
