// A few DOM helpers; the dashboard is plain TypeScript with no framework.

type Child = Node | string | number | null | undefined | false | Child[];
type Attrs = Record<string, unknown>;

/** `h("a", {href: "#/jobs", class: "x", onclick: f}, "text", child)` */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs?: Attrs | null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") {
      el.addEventListener(k.slice(2), v as EventListener);
    } else if (k === "class") {
      el.className = String(v);
    } else if (k === "style" && typeof v === "object") {
      Object.assign(el.style, v);
    } else if (k in el && typeof v !== "string") {
      (el as any)[k] = v;
    } else {
      el.setAttribute(k, v === true ? "" : String(v));
    }
  }
  append(el, children);
  return el;
}

export function append(el: Node, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
}

export function clear(el: Element): void {
  while (el.firstChild) el.removeChild(el.firstChild);
}

export function replace(el: Element, ...children: Child[]): void {
  clear(el);
  append(el, children);
}

export function fmtTime(s: string | null | undefined): string {
  if (!s) return "–";
  const d = new Date(s);
  return d.toLocaleString(undefined, {
    year: "numeric",
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    timeZoneName: "short",
  });
}

export function fmtAgo(s: string | null | undefined, now = Date.now()): string {
  if (!s) return "–";
  const dt = (new Date(s).getTime() - now) / 1000;
  const a = Math.abs(dt);
  const w =
    a < 60 ? `${Math.round(a)} s` : a < 3600 ? `${Math.round(a / 60)} min` : a < 86400 ? `${(a / 3600).toFixed(1)} h` : `${(a / 86400).toFixed(1)} d`;
  return dt < 0 ? `${w} ago` : `in ${w}`;
}

export function fmtDuration(sec: number | null): string {
  if (sec === null || !isFinite(sec)) return "–";
  if (sec < 1) return `${(sec * 1000).toFixed(0)} ms`;
  if (sec < 60) return `${sec.toFixed(1)} s`;
  const m = Math.floor(sec / 60);
  if (m < 60) return `${m} min ${Math.round(sec - 60 * m)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function fmtPct(x: number | null | undefined, digits = 2): string {
  return x === null || x === undefined || !isFinite(x) ? "–" : `${(100 * x).toFixed(digits)} %`;
}

export function fmtNum(x: number | null | undefined, digits = 3): string {
  return x === null || x === undefined || !isFinite(x) ? "–" : x.toFixed(digits);
}

export function fmtBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

export function shortId(id: string): string {
  return id.slice(0, 8);
}

/** Re-run `f` after `ms` of quiet. */
export function debounce<A extends unknown[]>(f: (...a: A) => void, ms: number): (...a: A) => void {
  let t: number | undefined;
  return (...a: A) => {
    clearTimeout(t);
    t = window.setTimeout(() => f(...a), ms);
  };
}

export function statusBadge(s: string): HTMLElement {
  return h("span", { class: `badge st-${s}`, "data-status": s }, s);
}

export function errorBox(e: unknown): HTMLElement {
  const err = e as { message?: string; errorType?: string; field?: string; status?: number };
  return h(
    "div",
    { class: "error-box", role: "alert" },
    h("strong", null, err.status ? `${err.status} ${err.errorType ?? "error"}` : "error"),
    err.field ? h("span", { class: "field" }, ` field `, h("code", null, err.field)) : null,
    h("div", { class: "msg" }, err.message ?? String(e)),
  );
}
