// A JSON spec editor with validation: JSON syntax, the API's schema (instant), and the API's
// own parser (POST /v1/jobs/validate, debounced). Used by Submit and by Schedules.

import { ApiError, post, type Spec } from "./api";
import { debounce, h, replace } from "./dom";
import { checkSpec, fields, openapi } from "./schema";

export interface Validated {
  spec: Spec;
  kind: string;
  queue: string;
}

export interface Editor {
  el: HTMLElement;
  reference: HTMLElement;
  setSpec(s: Spec): void;
  text(): string;
  /** The parsed JSON, or null when it is not JSON. */
  value(): unknown;
  onChange(f: () => void): void;
}

function jsonError(text: string, e: Error): string {
  const m = /position (\d+)/.exec(e.message);
  if (!m) return e.message;
  const pos = +m[1];
  const before = text.slice(0, pos);
  const line = before.split("\n").length;
  const col = pos - before.lastIndexOf("\n");
  return `${e.message} (line ${line}, column ${col})`;
}

export function specEditor(id: string, validatePath = "/v1/jobs/validate"): Editor {
  const ta = h("textarea", { id, class: "editor", spellcheck: false, rows: 24, "aria-label": "job spec (JSON)" });
  const status = h("div", { class: "validation", id: `${id}-validation`, "aria-live": "polite" });
  const reference = h("div", { class: "reference", id: `${id}-reference` });
  const listeners: (() => void)[] = [];
  let seq = 0;
  let refKind = "";

  async function renderReference(kind: string) {
    if (kind === refKind) return;
    refKind = kind;
    try {
      const d = await openapi();
      const fs = fields(d, kind);
      if (!fs) {
        replace(reference);
        return;
      }
      replace(
        reference,
        h("h3", null, "Fields of the ", h("code", null, kind), " kind", h("span", { class: "sub" }, " (from the API's OpenAPI schema)")),
        h("table", { class: "fields" }, h("tbody", null, fs.map((f) => h("tr", null, h("td", { class: "mono" }, f.name, f.required ? h("span", { class: "req", title: "required" }, "*") : null), h("td", { class: "small" }, f.type), h("td", { class: "small" }, f.description))))),
      );
    } catch (e) {
      replace(reference, h("p", { class: "sub" }, `schema unavailable: ${(e as Error).message}`));
    }
  }

  const validate = debounce(async () => {
    const my = ++seq;
    const text = ta.value;
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch (e) {
      replace(status, h("div", { class: "bad" }, "not valid JSON: ", jsonError(text, e as Error)));
      return;
    }
    const items: HTMLElement[] = [];
    try {
      const d = await openapi();
      const issues = checkSpec(d, v);
      if (issues.length) items.push(h("div", { class: "bad schema-issues" }, h("strong", null, "schema: "), h("ul", null, issues.map((i) => h("li", null, i.field ? h("code", null, i.field) : null, " ", i.message)))));
      if (v && typeof v === "object" && "kind" in (v as object)) void renderReference(String((v as Spec).kind));
    } catch {
      /* the API check below still runs */
    }
    replace(status, ...items, h("div", { class: "sub" }, "checking with the API…"));
    try {
      const r = await post<Validated>(validatePath, v);
      if (my !== seq) return;
      replace(status, ...items, h("div", { class: "ok", id: `${id}-ok` }, `✓ the API accepts this ${r.kind} job (queue ${r.queue})`));
    } catch (e) {
      if (my !== seq) return;
      const err = e as ApiError;
      replace(status, ...items, h("div", { class: "bad api-issue" }, h("strong", null, `API ${err.status || ""} ${err.errorType ?? ""}: `), err.field ? [h("code", null, err.field), " "] : null, err.message));
    }
  }, 350);

  ta.addEventListener("input", () => {
    validate();
    listeners.forEach((f) => f());
  });
  // Tab inserts two spaces instead of leaving the editor.
  ta.addEventListener("keydown", (e) => {
    if (e.key === "Tab" && !e.shiftKey) {
      e.preventDefault();
      ta.setRangeText("  ", ta.selectionStart, ta.selectionEnd, "end");
      ta.dispatchEvent(new Event("input"));
    }
  });

  return {
    el: h("div", { class: "editor-wrap" }, ta, status),
    reference,
    setSpec(s: Spec) {
      // `kind` and the common fields first, then the kind's own fields as they come.
      const first = ["kind", "name", "tags", "seed", "device"].filter((k) => k in s);
      const ordered = Object.fromEntries([...first, ...Object.keys(s).filter((k) => !first.includes(k))].map((k) => [k, s[k]]));
      ta.value = JSON.stringify(ordered, null, 2);
      ta.dispatchEvent(new Event("input"));
    },
    text: () => ta.value,
    value() {
      try {
        return JSON.parse(ta.value);
      } catch {
        return null;
      }
    },
    onChange: (f) => listeners.push(f),
  };
}
