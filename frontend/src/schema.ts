// The job-spec schema from the API's own OpenAPI document (/openapi.json): the fields of each
// kind for reference, and a first, instant check of a spec against it (field names, required
// fields, kinds, scalar types and enums). The API's validation (POST /v1/jobs/validate, the
// same parser that submit uses) has the last word; this check is deliberately lenient where the
// engine accepts shorthands that the schema does not describe (a method given as a string).

type S = Record<string, any>;
let doc: Promise<S> | null = null;

export function openapi(): Promise<S> {
  if (!doc) {
    doc = fetch("/openapi.json").then((r) => {
      if (!r.ok) throw new Error(`/openapi.json: ${r.status}`);
      return r.json();
    });
    doc.catch(() => (doc = null));
  }
  return doc;
}

function resolve(d: S, s: S | undefined): S {
  let x = s ?? {};
  for (let i = 0; i < 10 && x.$ref; i++) {
    const name = String(x.$ref).split("/").pop()!;
    x = { ...d.components.schemas[name], description: x.description ?? d.components.schemas[name]?.description };
  }
  return x;
}

export interface Field {
  name: string;
  type: string;
  required: boolean;
  description: string;
  schema: S;
}

export function kinds(d: S): string[] {
  return (d.components.schemas.JobKind.oneOf as S[]).map((alt) => alt.allOf[1].properties.kind.enum[0]);
}

function typeName(d: S, s: S): string {
  const x = resolve(d, s);
  if (x.enum) return x.enum.length > 6 ? `one of ${x.enum.length} names` : x.enum.join(" | ");
  if (x.oneOf) return x.oneOf.map((a: S) => typeName(d, a)).filter((t: string, i: number, all: string[]) => all.indexOf(t) === i).join(" | ");
  if (Array.isArray(x.type)) return x.type.join(" | ");
  if (x.type === "array") return `array of ${typeName(d, x.items ?? {})}`;
  if (s.$ref) return String(s.$ref).split("/").pop()!;
  return x.type ?? "object";
}

/** The common fields and the kind's own fields. */
export function fields(d: S, kind: string): Field[] | null {
  const alt = (d.components.schemas.JobKind.oneOf as S[]).find((a) => a.allOf[1].properties.kind.enum[0] === kind);
  if (!alt) return null;
  const own = resolve(d, alt.allOf[0]);
  const common = d.components.schemas.JobSpec.allOf[0];
  const req = new Set<string>([...(own.required ?? []), "kind"]);
  const out: Field[] = [{ name: "kind", type: kind, required: true, description: alt.description ?? "", schema: { type: "string", enum: [kind] } }];
  for (const [k, v] of Object.entries({ ...common.properties, ...own.properties } as Record<string, S>)) {
    const r = resolve(d, v);
    out.push({ name: k, type: typeName(d, v), required: req.has(k), description: (v.description ?? r.description ?? "").trim(), schema: v });
  }
  return out;
}

export interface Issue {
  field: string;
  message: string;
}

function jsType(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  if (typeof v === "number") return Number.isInteger(v) ? "integer" : "number";
  return typeof v;
}

function fits(t: string, v: unknown): boolean {
  const j = jsType(v);
  return t === j || (t === "number" && j === "integer");
}

/** Lenient check of one value; pushes what is certainly wrong. */
function check(d: S, s: S, v: unknown, path: string, out: Issue[]): void {
  const x = resolve(d, s);
  const alts = x.oneOf ?? x.anyOf;
  if (alts) {
    // Only judge unions of scalars; object alternatives are left to the API.
    const rs = (alts as S[]).map((a) => resolve(d, a));
    if (rs.some((a) => a.type === "object" || a.properties || a.oneOf || a.allOf)) return;
    const ok = rs.some((a) => {
      const tmp: Issue[] = [];
      check(d, a, v, path, tmp);
      return !tmp.length;
    });
    if (!ok) out.push({ field: path, message: `expected ${typeName(d, s)}, got ${JSON.stringify(v)}` });
    return;
  }
  if (x.type) {
    const ts: string[] = Array.isArray(x.type) ? x.type : [x.type];
    if (!ts.some((t) => fits(t, v))) {
      out.push({ field: path, message: `expected ${ts.join(" or ")}, got ${jsType(v)}` });
      return;
    }
  }
  if (x.enum && !x.enum.includes(v)) {
    out.push({ field: path, message: `${JSON.stringify(v)} is not one of ${x.enum.join(", ")}` });
    return;
  }
  if (typeof v === "number" && typeof x.minimum === "number" && v < x.minimum) out.push({ field: path, message: `must be ≥ ${x.minimum}` });
  if (Array.isArray(v) && x.items) v.forEach((item, i) => check(d, x.items, item, `${path}[${i}]`, out));
}

export function checkSpec(d: S, spec: unknown): Issue[] {
  if (jsType(spec) !== "object") return [{ field: "", message: "a job spec is a JSON object with a `kind` field" }];
  const o = spec as Record<string, unknown>;
  const ks = kinds(d);
  if (!("kind" in o)) return [{ field: "kind", message: `missing field \`kind\` (one of: ${ks.join(", ")})` }];
  const fs = fields(d, String(o.kind));
  if (!fs) return [{ field: "kind", message: `unknown kind ${JSON.stringify(o.kind)} (one of: ${ks.join(", ")})` }];
  const out: Issue[] = [];
  const byName = new Map(fs.map((f) => [f.name, f]));
  for (const [k, v] of Object.entries(o)) {
    const f = byName.get(k);
    if (!f) out.push({ field: k, message: `unknown field for a ${o.kind} job (fields: ${fs.map((f) => f.name).join(", ")})` });
    else if (k !== "kind") check(d, f.schema, v, k, out);
  }
  for (const f of fs) if (f.required && !(f.name in o)) out.push({ field: f.name, message: "missing required field" });
  return out;
}
