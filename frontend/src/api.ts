// The API client: every call carries the key kept in localStorage; errors carry the API's
// `{error, error_type, field}` body. Live events are read with fetch (EventSource cannot send
// an Authorization header) and parsed as server-sent events.

const KEY = "attune.apiKey";

export function getKey(): string | null {
  return localStorage.getItem(KEY);
}
export function setKey(k: string): void {
  localStorage.setItem(KEY, k);
}
export function clearKey(): void {
  localStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(
    public status: number,
    public errorType: string,
    message: string,
    public field?: string,
  ) {
    super(message);
  }
}

/** Called on every 401 so the app can ask for a key again. */
let onUnauthorized: (e: ApiError) => void = () => {};
export function setUnauthorizedHandler(f: (e: ApiError) => void): void {
  onUnauthorized = f;
}

function headers(extra?: Record<string, string>, key?: string): Headers {
  const h = new Headers(extra);
  const k = key ?? getKey();
  if (k) h.set("Authorization", `Bearer ${k}`);
  return h;
}

async function errorOf(r: Response): Promise<ApiError> {
  const text = await r.text();
  try {
    const b = JSON.parse(text);
    if (b && typeof b.error === "string") {
      return new ApiError(r.status, b.error_type ?? "error", b.error, b.field ?? undefined);
    }
  } catch {
    /* not JSON */
  }
  return new ApiError(r.status, "http", `${r.status} ${r.statusText}${text ? `: ${text.slice(0, 300)}` : ""}`);
}

export interface CallOpts {
  headers?: Record<string, string>;
  /** Use this key instead of the stored one (checking a key before storing it). */
  key?: string;
  /** Do not call the 401 handler. */
  quiet401?: boolean;
  signal?: AbortSignal;
}

export async function call<T>(method: string, path: string, body?: unknown, o: CallOpts = {}): Promise<T> {
  const h = headers(o.headers, o.key);
  if (body !== undefined) h.set("Content-Type", "application/json");
  let r: Response;
  try {
    r = await fetch(path, {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: o.signal,
    });
  } catch (e) {
    if ((e as Error).name === "AbortError") throw e;
    throw new ApiError(0, "network", `cannot reach the API: ${(e as Error).message}`);
  }
  if (!r.ok) {
    const e = await errorOf(r);
    if (r.status === 401 && !o.quiet401) onUnauthorized(e);
    throw e;
  }
  if (r.status === 204) return undefined as T;
  return (await r.json()) as T;
}

export const get = <T>(path: string, o?: CallOpts) => call<T>("GET", path, undefined, o);
export const post = <T>(path: string, body?: unknown, o?: CallOpts) => call<T>("POST", path, body ?? {}, o);
export const del = (path: string) => call<void>("DELETE", path);

/** Fetch bytes with the key and hand them to the browser as a file. */
export async function download(path: string, filename: string): Promise<void> {
  const r = await fetch(path, { headers: headers() });
  if (!r.ok) throw await errorOf(r);
  const blob = await r.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/**
 * Follow a server-sent-event stream until it ends (the server closes it after `end`) or
 * `signal` aborts. A dropped connection is reopened after a second; the caller's handlers
 * must tolerate seeing the same snapshot again.
 */
export async function events(
  path: string,
  on: (event: string, data: unknown) => void,
  signal: AbortSignal,
): Promise<void> {
  let ended = false;
  while (!signal.aborted && !ended) {
    try {
      const r = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
      if (!r.ok || !r.body) {
        const e = await errorOf(r);
        if (r.status === 401) onUnauthorized(e);
        throw e;
      }
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i: number;
        while ((i = buf.search(/\r?\n\r?\n/)) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(buf[i] === "\r" ? i + 4 : i + 2);
          let name = "message";
          const data: string[] = [];
          for (const line of block.split(/\r?\n/)) {
            if (line.startsWith(":")) continue;
            const c = line.indexOf(":");
            const field = c < 0 ? line : line.slice(0, c);
            const val = c < 0 ? "" : line.slice(c + 1).replace(/^ /, "");
            if (field === "event") name = val;
            else if (field === "data") data.push(val);
          }
          if (!data.length) continue;
          let parsed: unknown = data.join("\n");
          try {
            parsed = JSON.parse(parsed as string);
          } catch {
            /* keep the text */
          }
          if (name === "end") ended = true;
          on(name, parsed);
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof ApiError && e.status >= 400 && e.status < 500) throw e;
    }
    if (!ended && !signal.aborted) await new Promise((r) => setTimeout(r, 1000));
  }
}

// ---- API types (what the api returns; see openapi/openapi.json) ----

export type Spec = Record<string, unknown>;

export interface Headline {
  metric: string;
  value: number;
  series?: string | null;
}

export interface Job {
  id: string;
  kind: string;
  status: string;
  queue: string;
  name: string | null;
  tags: string[];
  spec: Spec;
  attempts: number;
  max_attempts: number;
  cancel_requested: boolean;
  error: string | null;
  progress: Progress | null;
  waiting: string | null;
  result?: any;
  headline?: Headline | null;
  current_run: string | null;
  schedule_id: string | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
}

export interface Progress {
  phase: string | null;
  done: number;
  total: number;
  phases_done: number;
}

export interface JobList {
  jobs: Job[];
  next_cursor: string | null;
}

export interface Facet {
  value: string;
  count: number;
}
export interface Facets {
  statuses: Facet[];
  kinds: Facet[];
  tags: Facet[];
}

export interface Run {
  id: string;
  job_id: string;
  attempt: number;
  worker_id: string;
  status: string;
  error: string | null;
  started_at: string;
  heartbeat_at: string;
  finished_at: string | null;
  metric_count: number;
}

export interface MetricPoint {
  run_id?: string;
  series: string;
  name: string;
  step: number;
  value: number;
}

export interface LogLine {
  id: number;
  attempt: number;
  at: string;
  level: string;
  message: string;
}

export interface Checkpoint {
  id: string;
  job_id: string;
  run_id: string;
  name: string;
  sha256: string;
  size_bytes: number;
  info: any;
  created_at: string;
  download: string;
  used_by: string[];
}

export interface Schedule {
  id: string;
  name: string | null;
  cron: string;
  template: Spec;
  max_attempts: number;
  paused: boolean;
  next_fire_at: string;
  created_at: string;
  fires: { fire_at: string; job_id: string }[];
}

export interface Example {
  name: string;
  file: string;
  description: string;
  spec: Spec;
}
