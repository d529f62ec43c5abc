// The jobs table: filters (status, kind, tag), search, paging, live status updates.

import { get, type Facets, type Job, type JobList } from "../api";
import { debounce, errorBox, fmtAgo, fmtDuration, fmtTime, h, replace, shortId, statusBadge } from "../dom";
import { dataModel, durationSec, headlineCell, methodsCell } from "../summary";
import type { Cleanup } from "../main";

const PAGE = 25;

export function jobsPage(root: HTMLElement, params: URLSearchParams): Cleanup {
  const filters = {
    status: params.get("status") ?? "",
    kind: params.get("kind") ?? "",
    tag: params.get("tag") ?? "",
    q: params.get("q") ?? "",
  };
  // Cursors of the pages before the current one (the first page has none).
  const cursors: (string | null)[] = [null];
  let page = 0;
  let next: string | null = null;
  const selected = new Set<string>();
  let stopped = false;

  const sel = (name: keyof typeof filters, label: string) =>
    h("select", { id: `filter-${name}`, "aria-label": label, onchange: (e: Event) => setFilter(name, (e.target as HTMLSelectElement).value) });
  const status = sel("status", "status");
  const kind = sel("kind", "kind");
  const tag = sel("tag", "tag");
  const search = h("input", {
    id: "search",
    type: "search",
    placeholder: "search name, id, tag, spec…",
    value: filters.q,
    oninput: debounce((e: Event) => setFilter("q", (e.target as HTMLInputElement).value.trim()), 300),
  });
  const compareBtn = h("button", { id: "compare-selected", disabled: true, onclick: () => (location.hash = `#/compare?ids=${[...selected].join(",")}`) }, "Compare selected");
  const tableWrap = h("div", { class: "table-wrap" });
  const pager = h("div", { class: "pager" });
  const live = h("span", { class: "live", title: "The table refreshes every 2 s" }, "live");

  replace(
    root,
    h("div", { class: "title-row" }, h("h1", null, "Jobs"), live, h("span", { class: "spacer" }), h("a", { class: "button primary", href: "#/submit" }, "Submit a job")),
    h("div", { class: "filters" }, status, kind, tag, search, compareBtn),
    tableWrap,
    pager,
  );

  function setFilter(name: keyof typeof filters, v: string) {
    filters[name] = v;
    const q = new URLSearchParams(Object.entries(filters).filter(([, x]) => x));
    history.replaceState(null, "", `#/jobs${q.toString() ? `?${q}` : ""}`);
    cursors.length = 1;
    page = 0;
    void load();
  }

  function fillSelect(el: HTMLSelectElement, label: string, items: { value: string; count: number }[], current: string) {
    const known = items.some((i) => i.value === current);
    replace(
      el,
      h("option", { value: "" }, `any ${label}`),
      items.map((i) => h("option", { value: i.value, selected: i.value === current }, `${i.value} (${i.count})`)),
      current && !known ? h("option", { value: current, selected: true }, `${current} (0)`) : null,
    );
  }

  async function loadFacets() {
    const f = await get<Facets>("/v1/jobs/facets");
    const statuses = ["queued", "running", "succeeded", "failed", "cancelled"].map((s) => ({ value: s, count: f.statuses.find((x) => x.value === s)?.count ?? 0 }));
    fillSelect(status, "status", statuses, filters.status);
    fillSelect(kind, "kind", f.kinds, filters.kind);
    fillSelect(tag, "tag", f.tags, filters.tag);
  }

  function row(j: Job): HTMLElement {
    const cb = h("input", {
      type: "checkbox",
      "aria-label": `select ${j.id}`,
      checked: selected.has(j.id),
      onchange: (e: Event) => {
        if ((e.target as HTMLInputElement).checked) selected.add(j.id);
        else selected.delete(j.id);
        compareBtn.disabled = selected.size < 2;
        compareBtn.textContent = `Compare selected${selected.size ? ` (${selected.size})` : ""}`;
      },
    });
    const pct = j.status === "running" && j.progress && j.progress.total ? Math.floor((100 * j.progress.done) / j.progress.total) : null;
    return h(
      "tr",
      { "data-job": j.id, "data-status": j.status },
      h("td", null, cb),
      h("td", null, h("a", { href: `#/jobs/${j.id}` }, j.name ?? shortId(j.id)), j.name ? h("div", { class: "sub mono" }, shortId(j.id)) : null, j.tags.length ? h("div", { class: "tags" }, j.tags.map((t) => h("span", { class: "tag" }, t))) : null),
      h("td", null, statusBadge(j.status), pct !== null ? h("div", { class: "sub" }, `${pct} %`) : null),
      h("td", null, j.kind),
      h("td", null, methodsCell(j)),
      h("td", { class: "mono small" }, dataModel(j.spec)),
      h("td", { class: "num" }, headlineCell(j)),
      h("td", { title: fmtTime(j.created_at) }, fmtAgo(j.created_at)),
      h("td", { class: "num" }, fmtDuration(durationSec(j))),
    );
  }

  let inflight = false;
  async function load() {
    if (inflight) return;
    inflight = true;
    try {
      const q = new URLSearchParams({ limit: String(PAGE) });
      for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
      const c = cursors[page];
      if (c) q.set("cursor", c);
      const [list] = await Promise.all([get<JobList>(`/v1/jobs?${q}`), loadFacets()]);
      next = list.next_cursor;
      replace(
        tableWrap,
        list.jobs.length
          ? h(
              "table",
              { class: "jobs", id: "jobs-table" },
              h("thead", null, h("tr", null, ["", "job", "status", "kind", "method(s)", "dataset / model", "headline", "created", "duration"].map((c) => h("th", { class: c === "headline" || c === "duration" ? "num" : "" }, c)))),
              h("tbody", null, list.jobs.map(row)),
            )
          : h("p", { class: "empty" }, Object.values(filters).some(Boolean) ? "No job matches these filters." : "No jobs yet. ", h("a", { href: "#/submit" }, "Submit one")),
      );
      replace(
        pager,
        h("button", { disabled: page === 0, onclick: () => { page--; void load(); } }, "← newer"),
        h("span", null, `page ${page + 1}`),
        h("button", { disabled: !next, id: "older", onclick: () => { cursors[page + 1] = next; page++; void load(); } }, "older →"),
      );
      live.classList.remove("stale");
    } catch (e) {
      live.classList.add("stale");
      replace(tableWrap, errorBox(e));
    } finally {
      inflight = false;
    }
  }

  void load();
  const timer = setInterval(() => {
    if (!stopped && document.visibilityState === "visible") void load();
  }, 2000);
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}
