//! `sample`: pass@N and best-of-N on a problem set. N samples per problem from a language
//! model (seeded per sample, decoded in lock-step), each judged by a verifier (exact answer, or
//! unit tests in the sandbox); the result holds the pass@k curve for k = 1..N, the accuracy of
//! each selection strategy, and every sample with its verdict.
//!
//! Generation needs the `llm` feature; judging and scoring (this file's other half) do not.

#[cfg(feature = "llm")]
use super::Event;
use super::{Context, JobSpec, Provenance};
use crate::error::{EngineError, Result};
use crate::ttc::problems::{self, Check, Problem};
use crate::ttc::sandbox::{self, Limits, Verdict};
use crate::ttc::select::{self, Candidate, Choices};
use crate::ttc::{answer, passk};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The language model.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A GGUF file or a Hugging Face directory (config.json, *.safetensors, tokenizer.json);
    /// relative paths are under the data directory.
    pub path: String,
    /// A tokenizer.json to use instead of the model's own.
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// GGUF weights in memory: `f32` (dequantized at load; fastest batched decoding on CPU),
    /// `native` (as stored), `q8_0` (re-quantized at load).
    #[serde(default = "default_weights")]
    pub weights: String,
    /// `auto` (from the model's metadata), `chatml`, `llama3`, `gemma` or `none`.
    #[serde(default = "default_auto")]
    pub chat_template: String,
    /// `own` (the lock-step llama-family decoder) or `candle` (candle-transformers' quantized
    /// llama, prefilled token by token).
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Longest sequence (prompt + generated) the KV cache holds.
    #[serde(default = "default_ctx")]
    pub max_seq_len: usize,
}

/// Which problems.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProblemSpec {
    /// `humaneval`, `arithmetic` (generated word problems) or `jsonl` (a file of your own).
    pub source: String,
    /// The JSONL file for `jsonl` (relative paths under the data directory).
    #[serde(default)]
    pub path: Option<String>,
    /// Skip this many problems first.
    #[serde(default)]
    pub offset: usize,
    /// At most this many problems (after `offset`).
    #[serde(default)]
    pub limit: Option<usize>,
    /// `arithmetic`: how many problems (default 50).
    #[serde(default = "default_count")]
    pub count: usize,
    /// `arithmetic`: difficulty range (number of operations), cycled through in order.
    #[serde(default = "one")]
    pub min_difficulty: u32,
    #[serde(default = "five")]
    pub max_difficulty: u32,
}

/// Decoding settings.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingSpec {
    /// Softmax temperature; 0 is greedy (every sample the same).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Nucleus sampling mass in (0, 1]; 1 is off.
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// Keep the k most likely tokens; 0 is off.
    #[serde(default)]
    pub top_k: usize,
    #[serde(default = "default_max_new")]
    pub max_new_tokens: usize,
    /// Stop strings (cut off the text). Default: none for chat prompts; for completion-style
    /// code prompts HumanEval's `\ndef `, `\nclass `, `\nif __name__`, `\nprint(`, `\n#`.
    #[serde(default)]
    pub stop: Option<Vec<String>>,
}

impl Default for SamplingSpec {
    fn default() -> Self {
        Self {
            temperature: default_temperature(),
            top_p: default_top_p(),
            top_k: 0,
            max_new_tokens: default_max_new(),
            stop: None,
        }
    }
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleSpec {
    pub model: ModelSpec,
    pub problems: ProblemSpec,
    /// Samples per problem (N); pass@k is reported for every k ≤ N.
    #[serde(default = "default_n")]
    pub n: usize,
    /// Rows decoded together in lock-step (default: N).
    #[serde(default)]
    pub batch_size: Option<usize>,
    #[serde(default)]
    pub sampling: SamplingSpec,
    /// `chat` (the problem as a user turn in the chat template) or `completion` (the problem
    /// text as it is, for the model to continue; code problems only then make sense raw).
    #[serde(default = "default_style")]
    pub prompt_style: String,
    /// A system turn for chat prompts.
    #[serde(default)]
    pub system: Option<String>,
    /// Verifier sandbox limits for code problems.
    #[serde(default)]
    pub sandbox: Limits,
    /// Keep every sample's text and verdict in the result (default true).
    #[serde(default = "yes")]
    pub keep_samples: bool,
}

fn default_weights() -> String {
    "f32".into()
}
fn default_auto() -> String {
    "auto".into()
}
fn default_backend() -> String {
    "own".into()
}
fn default_ctx() -> usize {
    2048
}
fn default_count() -> usize {
    50
}
fn one() -> u32 {
    1
}
fn five() -> u32 {
    5
}
fn default_temperature() -> f64 {
    0.8
}
fn default_top_p() -> f64 {
    0.95
}
fn default_max_new() -> usize {
    256
}
fn default_n() -> usize {
    16
}
fn default_style() -> String {
    "chat".into()
}
fn yes() -> bool {
    true
}

/// HumanEval's stop strings for completion-style prompts.
pub const CODE_STOPS: [&str; 5] = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"];

impl SampleSpec {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::InvalidSpec(m));
        if self.n == 0 {
            return bad("n must be ≥ 1".into());
        }
        if self.batch_size == Some(0) {
            return bad("batch_size must be ≥ 1".into());
        }
        let s = &self.sampling;
        if !(s.temperature >= 0.0 && s.temperature.is_finite()) {
            return bad(format!(
                "sampling.temperature must be ≥ 0, got {}",
                s.temperature
            ));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return bad(format!("sampling.top_p must be in (0, 1], got {}", s.top_p));
        }
        if s.max_new_tokens == 0 {
            return bad("sampling.max_new_tokens must be ≥ 1".into());
        }
        if !["chat", "completion"].contains(&self.prompt_style.as_str()) {
            return Err(EngineError::unknown(
                "prompt_style",
                &self.prompt_style,
                ["chat", "completion"],
            ));
        }
        let p = &self.problems;
        match p.source.as_str() {
            "humaneval" | "arithmetic" => {}
            "jsonl" if p.path.is_some() => {}
            "jsonl" => return bad("problems.path is required for source `jsonl`".into()),
            other => {
                return Err(EngineError::unknown(
                    "problem source",
                    other,
                    ["humaneval", "arithmetic", "jsonl"],
                ))
            }
        }
        if p.source == "arithmetic"
            && (p.min_difficulty == 0 || p.min_difficulty > p.max_difficulty || p.count == 0)
        {
            return bad("problems: need count ≥ 1 and 1 ≤ min_difficulty ≤ max_difficulty".into());
        }
        if p.limit == Some(0) {
            return bad("problems.limit must be ≥ 1".into());
        }
        let m = &self.model;
        if !["f32", "native", "q8_0"].contains(&m.weights.as_str()) {
            return Err(EngineError::unknown(
                "model.weights",
                &m.weights,
                ["f32", "native", "q8_0"],
            ));
        }
        if !["auto", "chatml", "llama3", "gemma", "none"].contains(&m.chat_template.as_str()) {
            return Err(EngineError::unknown(
                "model.chat_template",
                &m.chat_template,
                ["auto", "chatml", "llama3", "gemma", "none"],
            ));
        }
        if !["own", "candle"].contains(&m.backend.as_str()) {
            return Err(EngineError::unknown(
                "model.backend",
                &m.backend,
                ["own", "candle"],
            ));
        }
        if m.max_seq_len < 16 {
            return bad("model.max_seq_len must be ≥ 16".into());
        }
        self.sandbox.validate()
    }

    /// The stop strings in force for a problem.
    pub fn stops(&self, code: bool) -> Vec<String> {
        match &self.sampling.stop {
            Some(s) => s.clone(),
            None if code && self.prompt_style == "completion" => {
                CODE_STOPS.iter().map(|s| s.to_string()).collect()
            }
            None => vec![],
        }
    }

    /// The text the model is asked, before the chat template.
    pub fn user_text(&self, p: &Problem) -> String {
        match (&p.check, self.prompt_style.as_str()) {
            (Check::Tests { .. }, "chat") => format!(
                "Complete the following Python function. Reply with the complete function in one \
                 ```python code block.\n\n```python\n{}```",
                p.prompt
            ),
            _ => p.prompt.clone(),
        }
    }
}

/// Resolve a path from a spec: absolute as it is, relative under the data directory.
pub fn data_path(data_dir: &Path, p: &str) -> PathBuf {
    let path = PathBuf::from(p);
    if path.is_absolute() {
        path
    } else {
        data_dir.join(path)
    }
}

/// Load the problems a spec names; returns them and the sha256 of the file read (if any).
pub fn load_problems(
    spec: &ProblemSpec,
    data_dir: &Path,
    seed: u64,
) -> Result<(Vec<Problem>, BTreeMap<String, String>)> {
    let mut sha = BTreeMap::new();
    let all = match spec.source.as_str() {
        "humaneval" => {
            let (v, h) = problems::humaneval(data_dir)?;
            sha.insert("human_eval/HumanEval.jsonl".into(), h);
            v
        }
        "arithmetic" => {
            problems::arithmetic(spec.count, spec.min_difficulty, spec.max_difficulty, seed)
        }
        "jsonl" => {
            let p = spec.path.as_deref().unwrap_or_default();
            let (v, h) = problems::jsonl(&data_path(data_dir, p))?;
            sha.insert(p.to_string(), h);
            v
        }
        other => {
            return Err(EngineError::unknown(
                "problem source",
                other,
                ["humaneval", "arithmetic", "jsonl"],
            ))
        }
    };
    let v: Vec<Problem> = all
        .into_iter()
        .skip(spec.offset)
        .take(spec.limit.unwrap_or(usize::MAX))
        .collect();
    if v.is_empty() {
        return Err(EngineError::InvalidSpec(format!(
            "no problems left after offset {} (source `{}`)",
            spec.offset, spec.source
        )));
    }
    Ok((v, sha))
}

/// A generated sample, before judging.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub seed: u64,
    pub text: String,
    pub tokens: usize,
    pub mean_logprob: f64,
    /// `eos`, `stop` or `length`.
    pub finish: String,
}

/// One judged sample, as stored in the result.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub index: usize,
    pub seed: u64,
    pub text: String,
    pub tokens: usize,
    pub mean_logprob: f64,
    pub finish: String,
    /// The extracted answer (answer problems: the number; code problems: the code run).
    pub answer: Option<String>,
    /// Verifier score in [0, 1] (public tests passed; for answer problems, re-computed steps).
    pub score: f64,
    /// Correct by the problem's full check (reference answer or all tests).
    pub correct: bool,
    /// Code problems: the sandbox's verdict on the full tests, with its captured output.
    pub verdict: Option<Verdict>,
    pub output: Option<String>,
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProblemResult {
    pub id: String,
    pub difficulty: Option<u32>,
    /// The reference answer (answer problems).
    pub reference: Option<String>,
    pub n: usize,
    /// Samples that passed the full check.
    pub correct: usize,
    /// pass@k for k = 1..=n.
    pub pass_at_k: Vec<f64>,
    /// Sample index each strategy chose, and whether it is correct.
    #[cfg_attr(feature = "schema", schema(value_type = Object))]
    pub chosen: BTreeMap<String, usize>,
    #[cfg_attr(feature = "schema", schema(value_type = Object))]
    pub chosen_correct: BTreeMap<String, bool>,
    /// Every sample (empty when `keep_samples` is false).
    pub samples: Vec<SampleRecord>,
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PassAtK {
    pub k: usize,
    pub value: f64,
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelectionResult {
    pub strategy: String,
    /// Problems whose chosen sample is correct.
    pub correct: usize,
    pub accuracy: f64,
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DifficultyResult {
    pub difficulty: u32,
    pub problems: usize,
    pub pass_at_k: Vec<PassAtK>,
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub path: String,
    pub format: String,
    pub arch: String,
    pub weights: String,
    pub backend: String,
    pub chat_template: String,
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SampleResult {
    #[cfg_attr(feature = "schema", schema(value_type = Object))]
    pub provenance: Provenance,
    pub model: ModelInfo,
    pub source: String,
    pub n: usize,
    pub problems: usize,
    /// The pass@k curve averaged over problems, k = 1..=N.
    pub pass_at_k: Vec<PassAtK>,
    /// The same per difficulty level (generated sets and JSONL files with `difficulty`).
    pub by_difficulty: Vec<DifficultyResult>,
    /// Accuracy of one chosen answer per problem, per strategy.
    pub selection: Vec<SelectionResult>,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub per_problem: Vec<ProblemResult>,
}

/// Pull the code out of a chat reply: the first ```python (or ```) block, else the whole text.
pub fn extract_code(text: &str) -> String {
    for fence in ["```python", "```py", "```"] {
        if let Some(i) = text.find(fence) {
            let rest = &text[i + fence.len()..];
            let rest = rest.strip_prefix('\n').unwrap_or(rest);
            let end = rest.find("```").unwrap_or(rest.len());
            return rest[..end].to_string();
        }
    }
    text.to_string()
}

/// The program a code sample becomes: the problem's prefix, the code, the tests.
fn program(prefix: &str, code: &str, tests: &str) -> String {
    format!("{prefix}{code}\n\n{tests}\n")
}

/// Judge the samples of one problem and pick with every strategy.
pub fn judge(
    p: &Problem,
    samples: &[Generated],
    style: &str,
    limits: &Limits,
    keep: bool,
) -> Result<ProblemResult> {
    let mut records = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let rec = match &p.check {
            Check::Answer { answer: want } => {
                let got = answer::extract(&s.text);
                SampleRecord {
                    index: i,
                    seed: s.seed,
                    text: s.text.clone(),
                    tokens: s.tokens,
                    mean_logprob: s.mean_logprob,
                    finish: s.finish.clone(),
                    correct: got.as_deref() == Some(want.as_str()),
                    answer: got,
                    score: answer::step_score(&s.text),
                    verdict: None,
                    output: None,
                }
            }
            Check::Tests {
                tests,
                prefix,
                public,
            } => {
                let (code, pre) = if style == "chat" {
                    (extract_code(&s.text), format!("{prefix}\n"))
                } else {
                    (s.text.clone(), prefix.clone())
                };
                let full = sandbox::run_python(&program(&pre, &code, tests), limits)?;
                let score = if public.is_empty() {
                    0.0
                } else {
                    let checks: String = public
                        .iter()
                        .map(|a| {
                            format!(
                                "try:\n    {a}\n    _ok += 1\nexcept BaseException:\n    pass\n"
                            )
                        })
                        .collect();
                    let prog = program(&pre, &code, &format!("_ok = 0\n{checks}print(_ok)"));
                    let o = sandbox::run_python(&prog, limits)?;
                    let ok: usize = o
                        .stdout
                        .trim()
                        .lines()
                        .last()
                        .and_then(|l| l.trim().parse().ok())
                        .unwrap_or(0);
                    ok as f64 / public.len() as f64
                };
                let normalized: String = code.split_whitespace().collect::<Vec<_>>().join(" ");
                SampleRecord {
                    index: i,
                    seed: s.seed,
                    text: s.text.clone(),
                    tokens: s.tokens,
                    mean_logprob: s.mean_logprob,
                    finish: s.finish.clone(),
                    answer: (!normalized.is_empty()).then_some(normalized),
                    score,
                    correct: full.verdict == Verdict::Passed,
                    verdict: Some(full.verdict),
                    output: Some(if full.stderr.is_empty() {
                        full.stdout
                    } else {
                        full.stderr
                    }),
                }
            }
        };
        records.push(rec);
    }
    let n = records.len();
    let correct = records.iter().filter(|r| r.correct).count();
    let cands: Vec<Candidate> = records
        .iter()
        .map(|r| Candidate {
            answer: r.answer.clone(),
            score: r.score,
            mean_logprob: r.mean_logprob,
        })
        .collect();
    let ch: Choices = select::choose(&cands);
    let mut chosen = BTreeMap::new();
    let mut chosen_correct = BTreeMap::new();
    for (name, idx) in select::STRATEGIES.iter().zip(ch.as_array()) {
        chosen.insert(name.to_string(), idx);
        chosen_correct.insert(name.to_string(), records[idx].correct);
    }
    Ok(ProblemResult {
        id: p.id.clone(),
        difficulty: p.difficulty,
        reference: match &p.check {
            Check::Answer { answer } => Some(answer.clone()),
            Check::Tests { .. } => None,
        },
        n,
        correct,
        pass_at_k: (1..=n).map(|k| passk::pass_at_k(n, correct, k)).collect(),
        chosen,
        chosen_correct,
        samples: if keep { records } else { vec![] },
    })
}

fn curve(v: &[(usize, usize)]) -> Vec<PassAtK> {
    passk::curve(v)
        .into_iter()
        .enumerate()
        .map(|(i, value)| PassAtK { k: i + 1, value })
        .collect()
}

/// Aggregate judged problems into the result's curves and selection table.
pub fn summarize(
    per: &[ProblemResult],
) -> (Vec<PassAtK>, Vec<DifficultyResult>, Vec<SelectionResult>) {
    let counts: Vec<(usize, usize)> = per.iter().map(|p| (p.n, p.correct)).collect();
    let mut levels: BTreeMap<u32, Vec<(usize, usize)>> = BTreeMap::new();
    for p in per {
        if let Some(d) = p.difficulty {
            levels.entry(d).or_default().push((p.n, p.correct));
        }
    }
    let by_difficulty = levels
        .into_iter()
        .map(|(d, v)| DifficultyResult {
            difficulty: d,
            problems: v.len(),
            pass_at_k: curve(&v),
        })
        .collect();
    let selection = select::STRATEGIES
        .iter()
        .map(|s| {
            let correct = per.iter().filter(|p| p.chosen_correct[*s]).count();
            SelectionResult {
                strategy: s.to_string(),
                correct,
                accuracy: correct as f64 / per.len().max(1) as f64,
            }
        })
        .collect();
    (curve(&counts), by_difficulty, selection)
}

/// Per-sample seed: a function of the job seed, the problem's position and the sample index.
pub fn sample_seed(seed: u64, problem: usize, sample: usize) -> u64 {
    crate::rng::derive(
        seed,
        &[
            crate::rng::label("sample/row"),
            problem as u64,
            sample as u64,
        ],
    )
}

#[cfg(not(feature = "llm"))]
pub fn run(
    _job: &JobSpec,
    _spec: &SampleSpec,
    _device: &candle_core::Device,
    _ctx: &mut Context,
) -> Result<SampleResult> {
    Err(EngineError::InvalidSpec(
        "this build has no language-model support: build attune-engine with the `llm` feature"
            .into(),
    ))
}

#[cfg(feature = "llm")]
pub fn run(
    job: &JobSpec,
    spec: &SampleSpec,
    device: &candle_core::Device,
    ctx: &mut Context,
) -> Result<SampleResult> {
    use crate::llm::{self, sampler};
    let model_path = data_path(&ctx.data_dir, &spec.model.path);
    if !model_path.exists() {
        return Err(EngineError::MissingData {
            what: "language model".into(),
            path: model_path,
            fetch_cmd: "scripts/fetch-llm.sh".into(),
        });
    }
    let (problems, mut sha) = load_problems(&spec.problems, &ctx.data_dir, job.seed)?;
    let tok_path = spec
        .model
        .tokenizer
        .as_ref()
        .map(|t| data_path(&ctx.data_dir, t));
    let t0 = std::time::Instant::now();
    let mut lm = llm::load(
        &llm::LoadOptions {
            path: &model_path,
            tokenizer: tok_path.as_deref(),
            weights: llm::WeightMode::parse(&spec.model.weights)?,
            chat_template: &spec.model.chat_template,
            backend: &spec.model.backend,
            max_seq_len: spec.model.max_seq_len,
        },
        device,
    )?;
    if model_path.is_file() {
        sha.insert(spec.model.path.clone(), file_sha256(&model_path)?);
    }
    ctx.log(format!(
        "loaded {} ({} {}, weights {}, template {}) in {:.1}s; {} problems × {} samples",
        spec.model.path,
        lm.format,
        lm.arch,
        spec.model.weights,
        lm.template.name(),
        t0.elapsed().as_secs_f64(),
        problems.len(),
        spec.n
    ));
    let batch = spec.batch_size.unwrap_or(spec.n);
    let mut per = Vec::with_capacity(problems.len());
    let mut stats = sampler::Stats::default();
    ctx.observer.event(Event::Phase {
        label: format!("sample {} × {}", problems.len(), spec.n),
        total: problems.len() as u64,
    });
    for (pi, p) in problems.iter().enumerate() {
        ctx.cancel.check()?;
        let code = matches!(p.check, Check::Tests { .. });
        let text = if spec.prompt_style == "chat" {
            lm.template
                .render(spec.system.as_deref(), &spec.user_text(p))
        } else {
            spec.user_text(p)
        };
        let ids = lm.tokenizer.encode(&text)?;
        let params = sampler::Params {
            temperature: spec.sampling.temperature,
            top_p: spec.sampling.top_p,
            top_k: spec.sampling.top_k,
            max_new_tokens: spec.sampling.max_new_tokens,
            stop: spec.stops(code),
        };
        let seeds: Vec<u64> = (0..spec.n)
            .map(|i| sample_seed(job.seed, pi + spec.problems.offset, i))
            .collect();
        let before = stats.generated_tokens;
        let t = std::time::Instant::now();
        let out = sampler::sample(
            lm.model.as_mut(),
            &lm.tokenizer,
            &ids,
            &seeds,
            batch,
            &params,
            &ctx.cancel,
            &mut stats,
        )?;
        let gen_s = t.elapsed().as_secs_f64();
        let generated: Vec<Generated> = out
            .into_iter()
            .zip(&seeds)
            .map(|(s, &seed)| Generated {
                seed,
                tokens: s.tokens.len(),
                mean_logprob: s.mean_logprob(),
                finish: match s.finish {
                    sampler::Finish::Eos => "eos",
                    sampler::Finish::Stop => "stop",
                    sampler::Finish::Length => "length",
                }
                .into(),
                text: s.text,
            })
            .collect();
        let r = judge(
            p,
            &generated,
            &spec.prompt_style,
            &spec.sandbox,
            spec.keep_samples,
        )?;
        let mut values = BTreeMap::new();
        values.insert("correct".to_string(), r.correct as f64);
        values.insert("pass_at_1".to_string(), r.pass_at_k[0]);
        values.insert(format!("pass_at_{}", r.n), r.pass_at_k[r.n - 1]);
        ctx.observer.event(Event::Metric {
            series: "problems".into(),
            step: pi as u64,
            values,
        });
        ctx.log(format!(
            "{}: {}/{} correct; {} prompt tokens, {} generated in {:.1}s ({:.1} tok/s)",
            p.id,
            r.correct,
            r.n,
            ids.len(),
            stats.generated_tokens - before,
            gen_s,
            (stats.generated_tokens - before) as f64 / gen_s.max(1e-9)
        ));
        per.push(r);
        ctx.observer.event(Event::Advance {
            done: pi as u64 + 1,
        });
    }
    let (pass_at_k, by_difficulty, selection) = summarize(&per);
    ctx.observer.event(Event::PhaseEnd {
        summary: format!(
            "pass@1 {:.3}, pass@{} {:.3}",
            pass_at_k[0].value,
            spec.n,
            pass_at_k.last().map(|p| p.value).unwrap_or(0.0)
        ),
    });
    Ok(SampleResult {
        provenance: Provenance::new(job, sha),
        model: ModelInfo {
            path: spec.model.path.clone(),
            format: lm.format.clone(),
            arch: lm.arch.clone(),
            weights: spec.model.weights.clone(),
            backend: spec.model.backend.clone(),
            chat_template: lm.template.name().into(),
        },
        source: spec.problems.source.clone(),
        n: spec.n,
        problems: per.len(),
        pass_at_k,
        by_difficulty,
        selection,
        prompt_tokens: stats.prompt_tokens,
        generated_tokens: stats.generated_tokens,
        per_problem: per,
    })
}

#[cfg(feature = "llm")]
fn file_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| EngineError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
