// What a job's spec and result say, in the few words a table cell has room for.

import type { Job, Spec } from "./api";
import { fmtPct, fmtNum } from "./dom";

export function methodLabel(m: unknown): string {
  if (typeof m === "string") return m;
  if (m && typeof m === "object") {
    const o = m as Record<string, unknown>;
    const name = String(o.method ?? "?");
    return o.crowds ? `${name}+crowds` : name;
  }
  return String(m);
}

/** Display names as the engine makes them: a method given twice becomes `tent-2`. */
export function methodNames(spec: Spec): string[] {
  const ms = Array.isArray(spec.methods) ? spec.methods : [];
  const seen = new Map<string, number>();
  return ms.map((m) => {
    const l = methodLabel(m);
    const k = (seen.get(l) ?? 0) + 1;
    seen.set(l, k);
    return k === 1 ? l : `${l}-${k}`;
  });
}

function baseName(p: unknown): string {
  const s = String(p ?? "");
  const parts = s.split("/");
  return parts.length > 2 ? `…/${parts.slice(-2).join("/")}` : s;
}

/** Dataset and model (or checkpoints) of a job. */
export function dataModel(spec: Spec): string {
  const parts: string[] = [];
  if (spec.dataset) parts.push(String(spec.dataset));
  if (typeof spec.model === "string") parts.push(baseName(spec.model));
  else if (spec.model && typeof spec.model === "object") parts.push(baseName((spec.model as Record<string, unknown>).path));
  if (Array.isArray(spec.checkpoints)) {
    const c = spec.checkpoints as unknown[];
    parts.push(c.length === 1 ? baseName(c[0]) : `${c.length} checkpoints`);
  }
  if (spec.architecture && typeof spec.architecture === "object") {
    const a = spec.architecture as Record<string, unknown>;
    parts.push(String(a.arch ?? "") + (a.depth ? `-${a.depth}` : ""));
  }
  if (spec.problems && typeof spec.problems === "object") parts.push(String((spec.problems as Record<string, unknown>).source ?? "problems"));
  return parts.join(" · ") || "–";
}

export function methodsCell(j: Job): string {
  if (j.kind === "adapt") return methodNames(j.spec).join(", ");
  if (j.kind === "train") {
    const o = j.spec.optimizer as Record<string, unknown> | undefined;
    return o?.name ? `train (${o.name})` : "train";
  }
  if (j.kind === "evaluate") return "no adaptation";
  if (j.kind === "sample") {
    const t = (j.spec.sampling as Record<string, unknown> | undefined)?.temperature;
    return `pass@N, N = ${j.spec.n ?? "?"}${t !== undefined ? `, T = ${t}` : ""}`;
  }
  if (j.spec.method) return methodLabel(j.spec.method);
  return "–";
}

export function headlineCell(j: Job): string {
  const hl = j.headline;
  if (!hl) return "–";
  const v = /error|ece|rate|pass/.test(hl.metric) ? fmtPct(hl.value) : fmtNum(hl.value);
  return `${hl.metric} ${v}${hl.series ? ` (${hl.series})` : ""}`;
}

export function durationSec(j: Job, now = Date.now()): number | null {
  if (!j.started_at) return null;
  const end = j.finished_at ? new Date(j.finished_at).getTime() : now;
  return (end - new Date(j.started_at).getTime()) / 1000;
}

export function jobLabel(j: Job): string {
  return j.name ?? `${j.kind} ${j.id.slice(0, 8)}`;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
