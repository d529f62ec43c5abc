// The dashboard shell: header, hash router, and the API key dialog.

import "./style.css";
import { ApiError, clearKey, get, getKey, setKey, setUnauthorizedHandler } from "./api";
import { h, replace } from "./dom";
import { jobsPage } from "./pages/jobs";
import { jobPage } from "./pages/job";
import { comparePage } from "./pages/compare";
import { submitPage } from "./pages/submit";
import { schedulesPage } from "./pages/schedules";

export type Cleanup = (() => void) | void;
export type Page = (root: HTMLElement, params: URLSearchParams, path: string[]) => Cleanup | Promise<Cleanup>;

const routes: Record<string, Page> = {
  jobs: (root, p, path) => (path[1] ? jobPage(root, p, path) : jobsPage(root, p)),
  compare: comparePage,
  submit: submitPage,
  schedules: schedulesPage,
};

const app = document.getElementById("app")!;
const top = document.getElementById("top")!;
let cleanup: Cleanup;
let renderSeq = 0;

function parseHash(): { path: string[]; params: URLSearchParams } {
  const raw = location.hash.replace(/^#\/?/, "");
  const [p, q] = raw.split("?", 2);
  return { path: p.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(q ?? "") };
}

export function navigate(hash: string): void {
  if (location.hash === hash) void render();
  else location.hash = hash;
}

async function render(): Promise<void> {
  const seq = ++renderSeq;
  if (typeof cleanup === "function") cleanup();
  cleanup = undefined;
  const { path, params } = parseHash();
  if (!path.length) {
    location.replace("#/jobs");
    return;
  }
  renderHeader(path[0]);
  if (!getKey()) {
    replace(app);
    keyDialog(null);
    return;
  }
  const page = routes[path[0]];
  const root = h("div", { class: `page page-${path[0]}` });
  replace(app, root);
  if (!page) {
    replace(root, h("h1", null, "Not found"), h("p", null, `No page at #/${path.join("/")}. `, h("a", { href: "#/jobs" }, "Jobs")));
    return;
  }
  try {
    const c = await page(root, params, path);
    if (seq === renderSeq) cleanup = c;
    else if (typeof c === "function") c();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return; // the key dialog is up
    root.append(h("div", { class: "error-box", role: "alert" }, `Could not load this page: ${(e as Error).message}`));
  }
}

let health: HTMLElement | null = null;
async function pollHealth(): Promise<void> {
  if (!health) return;
  try {
    const r = await fetch("/readyz");
    const b = await r.json();
    health.className = `health ${b.status === "ok" ? "ok" : "bad"}`;
    health.title = `postgres: ${b.postgres}\nredis: ${b.redis}`;
    health.textContent = b.status === "ok" ? "api ready" : "api degraded";
  } catch {
    health.className = "health bad";
    health.textContent = "api unreachable";
  }
}

function renderHeader(active: string): void {
  const link = (to: string, label: string) => h("a", { href: `#/${to}`, class: active === to ? "active" : "" }, label);
  const key = getKey();
  health = h("span", { class: "health" }, "…");
  replace(
    top,
    h(
      "nav",
      null,
      h("a", { href: "#/jobs", class: "brand" }, "Attune"),
      link("jobs", "Jobs"),
      link("submit", "Submit"),
      link("compare", "Compare"),
      link("schedules", "Schedules"),
      h("span", { class: "spacer" }),
      health,
      key
        ? h(
            "span",
            { class: "key" },
            `key …${key.slice(-4)} `,
            h("button", { class: "link", onclick: () => keyDialog(null) }, "change"),
            h("button", { class: "link", onclick: () => { clearKey(); void render(); } }, "forget"),
          )
        : null,
    ),
  );
  void pollHealth();
}
setInterval(pollHealth, 10_000);

let dialogOpen = false;
function keyDialog(reason: string | null): void {
  if (dialogOpen) {
    if (reason) document.querySelector("#key-dialog .reason")!.textContent = reason;
    return;
  }
  dialogOpen = true;
  const input = h("input", { type: "password", id: "api-key", placeholder: "paste the token", autocomplete: "off", spellcheck: false, size: 48 });
  const msg = h("div", { class: "key-msg", role: "alert" });
  const close = () => {
    dialogOpen = false;
    overlay.remove();
  };
  const save = async (ev: Event) => {
    ev.preventDefault();
    const k = input.value.trim();
    if (!k) {
      msg.textContent = "Enter a key first.";
      return;
    }
    msg.textContent = "checking…";
    try {
      await get("/v1/jobs?limit=1", { key: k, quiet401: true });
    } catch (e) {
      const err = e as ApiError;
      msg.className = "key-msg bad";
      msg.textContent =
        err.status === 401
          ? "The API refused this key (401 unauthorized): it is not a key this API knows. Keys are made with `attune admin create-key --name NAME`, which prints the token once; paste all of it."
          : `Could not check the key: ${err.message}`;
      return;
    }
    setKey(k);
    close();
    void render();
  };
  const overlay = h(
    "div",
    { class: "overlay", id: "key-dialog" },
    h(
      "form",
      { class: "dialog", onsubmit: save },
      h("h2", null, "API key"),
      h("p", { class: "reason" }, reason ?? "The dashboard talks to the API with your key. It is kept in this browser (localStorage) until you choose “forget”."),
      h("p", { class: "hint" }, "Make one on the server: ", h("code", null, "target/release/attune admin create-key --name me")),
      input,
      h("div", { class: "row" }, h("button", { type: "submit", class: "primary" }, "Save key"), getKey() && !reason ? h("button", { type: "button", onclick: close }, "Cancel") : null),
      msg,
    ),
  );
  document.body.append(overlay);
  input.focus();
}

setUnauthorizedHandler((e) => {
  keyDialog(`The API refused the stored key (401 unauthorized): ${e.message}. Enter a valid key.`);
});

window.addEventListener("hashchange", () => void render());
void render();
