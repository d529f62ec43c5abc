// Schedules: list (with the next fire time), create (cron + job template), pause / resume,
// delete.

import { del, get, post, type Example, type Schedule } from "../api";
import { debounce, errorBox, fmtAgo, fmtTime, h, replace, shortId } from "../dom";
import { specEditor } from "../editor";
import type { Cleanup } from "../main";

interface CronPreview {
  cron: string;
  next: string[];
}

export async function schedulesPage(root: HTMLElement): Promise<Cleanup> {
  const list = h("div", { class: "table-wrap", id: "schedules" });
  const msg = h("div", { id: "schedule-msg" });
  const name = h("input", { id: "schedule-name", type: "text", placeholder: "nightly evaluation", size: 28 });
  const cron = h("input", { id: "schedule-cron", type: "text", value: "0 3 * * *", size: 20, spellcheck: false });
  const cronInfo = h("div", { class: "sub", id: "cron-preview" });
  const exSel = h("select", { id: "schedule-example", "aria-label": "template example" });
  const ed = specEditor("template-editor");
  const create = h("button", { class: "primary", id: "create-schedule", type: "button" }, "Create schedule");

  replace(
    root,
    h("h1", null, "Schedules"),
    list,
    msg,
    h(
      "section",
      { class: "create" },
      h("h2", null, "New schedule"),
      h(
        "div",
        { class: "row" },
        h("label", null, "name ", name),
        h("label", null, "cron (UTC) ", cron),
        h("label", null, "template from ", exSel),
      ),
      h("p", { class: "sub" }, "Five fields: minute hour day-of-month month day-of-week (or six, with seconds first). Every tick submits the template as a new job."),
      cronInfo,
      h("div", { class: "submit-grid" }, h("div", null, ed.el, h("div", { class: "row" }, create)), ed.reference),
    ),
  );

  const preview = debounce(async () => {
    try {
      const p = await get<CronPreview>(`/v1/schedules/preview?cron=${encodeURIComponent(cron.value)}`);
      replace(cronInfo, "next ticks: ", p.next.map((t, i) => h("span", { class: "tick" }, `${i ? ", " : ""}${fmtTime(t)} (${fmtAgo(t)})`)));
    } catch (e) {
      replace(cronInfo, h("span", { class: "bad" }, (e as Error).message));
    }
  }, 300);
  cron.addEventListener("input", preview);
  preview();

  let examples: Example[] = [];
  try {
    examples = await get<Example[]>("/v1/examples");
  } catch (e) {
    msg.append(errorBox(e));
  }
  replace(exSel, examples.map((x) => h("option", { value: x.name, selected: x.spec.kind === "evaluate" }, `${x.name} (${x.spec.kind})`)));
  const pick = () => {
    const x = examples.find((e) => e.name === exSel.value);
    if (x) ed.setSpec(x.spec);
  };
  exSel.addEventListener("change", pick);
  pick();

  async function load() {
    let ss: Schedule[];
    try {
      ss = await get<Schedule[]>("/v1/schedules");
    } catch (e) {
      replace(list, errorBox(e));
      return;
    }
    const action = async (f: () => Promise<unknown>) => {
      replace(msg);
      try {
        await f();
      } catch (e) {
        replace(msg, errorBox(e));
      }
      await load();
    };
    replace(
      list,
      ss.length
        ? h(
            "table",
            { id: "schedule-table" },
            h("thead", null, h("tr", null, ["name", "cron (UTC)", "template", "state", "next fire", "created", ""].map((c) => h("th", null, c)))),
            h(
              "tbody",
              null,
              ss.map((s) =>
                h(
                  "tr",
                  { "data-schedule": s.id, "data-paused": String(s.paused) },
                  h("td", null, s.name ?? shortId(s.id), h("div", { class: "sub mono" }, shortId(s.id))),
                  h("td", { class: "mono" }, s.cron),
                  h("td", null, `${s.template.kind}`, s.template.name ? ` · ${s.template.name}` : ""),
                  h("td", null, h("span", { class: `badge ${s.paused ? "st-cancelled" : "st-running"}`, "data-state": s.paused ? "paused" : "active" }, s.paused ? "paused" : "active")),
                  h("td", { title: fmtTime(s.next_fire_at) }, s.paused ? h("span", { class: "sub" }, `(paused) ${fmtTime(s.next_fire_at)}`) : `${fmtTime(s.next_fire_at)} (${fmtAgo(s.next_fire_at)})`),
                  h("td", null, fmtAgo(s.created_at)),
                  h(
                    "td",
                    { class: "actions" },
                    s.paused
                      ? h("button", { class: "resume", onclick: () => action(() => post(`/v1/schedules/${s.id}/resume`)) }, "Resume")
                      : h("button", { class: "pause", onclick: () => action(() => post(`/v1/schedules/${s.id}/pause`)) }, "Pause"),
                    h("button", { class: "danger delete", onclick: () => confirm(`Delete schedule ${s.name ?? s.id}? The jobs it made stay.`) && action(() => del(`/v1/schedules/${s.id}`)) }, "Delete"),
                  ),
                ),
              ),
            ),
          )
        : h("p", { class: "empty" }, "No schedules yet."),
    );
  }

  create.addEventListener("click", async () => {
    replace(msg);
    const template = ed.value();
    if (template === null) {
      replace(msg, errorBox(new Error("The template is not valid JSON.")));
      return;
    }
    try {
      await post<Schedule>("/v1/schedules", { name: name.value.trim() || null, cron: cron.value.trim(), template });
      replace(msg, h("div", { class: "ok" }, "Schedule created."));
      await load();
    } catch (e) {
      replace(msg, h("p", null, "The API did not accept this schedule:"), errorBox(e));
    }
  });

  await load();
  const t = setInterval(() => document.visibilityState === "visible" && void load(), 15_000);
  return () => clearInterval(t);
}
