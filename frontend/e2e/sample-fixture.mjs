// A `sample` job as the api returns it, in the result format of docs/sample.md (the `sample`
// branch). The e2e run serves it to the page through request interception to check the sample
// view (pass@k curve, problems, sample browser with verdicts) until the sample job kind is on
// main; the numbers are consistent: 3 problems, N = 4, with 2, 0 and 1 correct samples, so
// pass@k = 1 − C(4−c, k)/C(4, k) per problem, averaged: 0.25, 0.4444, 0.5833, 0.6667.

const passAt = (n, c) => Array.from({ length: n }, (_, i) => {
  const k = i + 1;
  if (n - c < k) return 1;
  let p = 1;
  for (let j = n - c + 1; j <= n; j++) p *= 1 - k / j;
  return 1 - p;
});

const verdicts = [["passed", "failed", "passed", "timeout"], ["failed", "error", "failed", "failed"], ["failed", "failed", "passed", "failed"]];
const perProblem = verdicts.map((vs, p) => {
  const correct = vs.filter((v) => v === "passed").length;
  return {
    id: `HumanEval/${p}`,
    difficulty: null,
    reference: null,
    n: 4,
    correct,
    pass_at_k: passAt(4, correct),
    chosen: { majority_vote: 0, best_of_n: vs.indexOf("passed") >= 0 ? vs.indexOf("passed") : 1, weighted_best_of_n: 2, max_mean_logprob: 3 },
    chosen_correct: { majority_vote: vs[0] === "passed", best_of_n: correct > 0, weighted_best_of_n: vs[2] === "passed", max_mean_logprob: vs[3] === "passed" },
    samples: vs.map((v, i) => ({
      index: i,
      seed: 1000 * p + i,
      text: `def f${p}(x):\n    return x + ${i}\n`,
      tokens: 20 + i,
      mean_logprob: -0.5 - 0.1 * i,
      finish: i === 3 ? "length" : "stop",
      answer: `def f${p}(x): return x + ${i}`,
      score: v === "passed" ? 1 : 0.5,
      correct: v === "passed",
      verdict: v,
      output: v === "passed" ? "" : v === "timeout" ? "killed after 10 s" : "Traceback (most recent call last):\n  AssertionError",
    })),
  };
});
const mean = (k) => perProblem.reduce((s, p) => s + p.pass_at_k[k - 1], 0) / perProblem.length;

export function sampleJob(id) {
  const spec = {
    kind: "sample", name: "humaneval pass@4 (fixture)", tags: ["fixture"], seed: 0, device: "cpu", n: 4, batch_size: 4,
    prompt_style: "completion", keep_samples: true,
    model: { path: "llm/SmolLM2-135M-Instruct.Q4_1.gguf", weights: "f32" },
    problems: { source: "humaneval", offset: 0, limit: 3 },
    sampling: { temperature: 0.8, top_p: 0.95, top_k: 0, max_new_tokens: 256 },
  };
  const t = "2026-12-04T03:00:00Z";
  return {
    id, kind: "sample", status: "succeeded", queue: "cpu", name: spec.name, tags: spec.tags, spec, attempts: 1, max_attempts: 3,
    cancel_requested: false, error: null, progress: { phase: "sample 3 × 4", done: 3, total: 3, phases_done: 1 }, waiting: null,
    headline: { metric: "pass@1", value: mean(1), series: null },
    current_run: "00000000-0000-4000-8000-00000000f1f0", schedule_id: null, created_at: t, started_at: t, finished_at: "2026-12-04T03:00:42Z",
    result: {
      kind: "sample",
      provenance: { engine_version: "0.1.0", spec, seed: 0, device: "cpu", data_sha256: {} },
      model: { path: spec.model.path, format: "gguf", arch: "llama", weights: "f32", backend: "own", chat_template: "chatml" },
      source: "humaneval", n: 4, problems: 3,
      pass_at_k: [1, 2, 3, 4].map((k) => ({ k, value: mean(k) })),
      by_difficulty: [],
      selection: ["majority_vote", "best_of_n", "weighted_best_of_n", "max_mean_logprob"].map((s) => {
        const c = perProblem.filter((p) => p.chosen_correct[s]).length;
        return { strategy: s, correct: c, accuracy: c / 3 };
      }),
      prompt_tokens: 300, generated_tokens: 270,
      per_problem: perProblem,
    },
  };
}

export const expected = { passAt1: mean(1), passAt4: mean(4) };
