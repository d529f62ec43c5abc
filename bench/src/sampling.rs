//! `attune-bench sampling`: tokens/s of N samples of one prompt, Attune's lock-step batched
//! decoding against llama.cpp (llama-cpp-python, `scripts/bench_llama_cpp.py`) on the same GGUF
//! file, prompt, sampling settings and thread count, in the same run.

use anyhow::{bail, Context as _, Result};
use attune_engine::jobs::CancelToken;
use attune_engine::llm::{self, sampler, LoadOptions, WeightMode};
use candle_core::Device;
use clap::Args;
use serde::Serialize;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(Args)]
pub struct SamplingArgs {
    /// Threads for both sides.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// The GGUF file [default: <data dir>/llm/SmolLM2-135M-Instruct.Q4_1.gguf].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Samples per prompt to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub ns: Vec<usize>,
    /// New tokens per sample (EOS stops a sample earlier; both sides count what they made).
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Attune's weight modes to measure: f32, native, q8_0.
    #[arg(long, value_delimiter = ',', default_value = "f32,native")]
    pub weights: Vec<String>,
    /// Python with llama-cpp-python (scripts/llama-cpp-env.sh prints one); empty: Attune only.
    #[arg(long, env = "ATTUNE_LLAMA_PYTHON", default_value = "")]
    pub python: String,
    /// Where results.json goes.
    #[arg(long, default_value = "runs/bench-sampling")]
    pub out: PathBuf,
}

#[derive(Serialize)]
struct Row {
    engine: String,
    n: usize,
    tokens: usize,
    seconds: f64,
    tokens_per_s: f64,
}

const PROMPT: &str =
    "Write a long story about a lighthouse keeper who finds a message in a bottle.";

pub fn run(a: SamplingArgs) -> Result<()> {
    let data = attune_engine::data::default_data_dir();
    let model = a
        .model
        .clone()
        .unwrap_or_else(|| data.join("llm/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if !model.exists() {
        bail!("{} not found: run scripts/fetch-llm.sh", model.display());
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("machine load before the run (1/5/15 min): {}", load.trim());
    let mut rows = vec![];
    let mut prompt_text = String::new();
    for w in &a.weights {
        let mode = WeightMode::parse(w)?;
        let t0 = Instant::now();
        let mut m = llm::load(
            &LoadOptions {
                path: &model,
                tokenizer: None,
                weights: mode,
                chat_template: "auto",
                backend: "own",
                max_seq_len: 1024,
            },
            &Device::Cpu,
        )?;
        println!("attune ({w}): loaded in {:.1}s", t0.elapsed().as_secs_f64());
        prompt_text = m.template.render(None, PROMPT);
        let ids = m.tokenizer.encode(&prompt_text)?;
        let p = sampler::Params {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 0,
            max_new_tokens: a.max_tokens,
            stop: vec![],
        };
        // Warm-up.
        let mut st = sampler::Stats::default();
        let short = sampler::Params {
            max_new_tokens: 4,
            ..p.clone()
        };
        sampler::sample(
            m.model.as_mut(),
            &m.tokenizer,
            &ids,
            &[0],
            1,
            &short,
            &CancelToken::new(),
            &mut st,
        )?;
        for &n in &a.ns {
            let seeds: Vec<u64> = (0..n as u64).collect();
            let mut st = sampler::Stats::default();
            let t = Instant::now();
            sampler::sample(
                m.model.as_mut(),
                &m.tokenizer,
                &ids,
                &seeds,
                n,
                &p,
                &CancelToken::new(),
                &mut st,
            )?;
            let dt = t.elapsed().as_secs_f64();
            let r = Row {
                engine: format!("attune-{w}"),
                n,
                tokens: st.generated_tokens,
                seconds: dt,
                tokens_per_s: st.generated_tokens as f64 / dt,
            };
            println!(
                "attune ({w}) N={n}: {} tokens in {:.2}s = {:.1} tok/s (prefill {:.2}s of {} prompt tokens)",
                r.tokens, r.seconds, r.tokens_per_s, st.prefill_s, ids.len()
            );
            rows.push(r);
        }
    }
    let mut system_info = String::new();
    if !a.python.is_empty() {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_llama_cpp.py");
        let mut child = Command::new(&a.python)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", a.python))?;
        let req = serde_json::json!({
            "model": model, "prompt": prompt_text, "ns": a.ns, "max_tokens": a.max_tokens,
            "temperature": 0.8, "top_p": 0.95, "threads": a.threads, "seed": 0
        });
        writeln!(child.stdin.take().context("stdin")?, "{req}")?;
        for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
            let v: serde_json::Value = serde_json::from_str(&line?)?;
            if let Some(s) = v["system_info"].as_str() {
                system_info = s.to_string();
                println!("llama.cpp {}: {s}", v["version"]);
                continue;
            }
            let r = Row {
                engine: "llama.cpp".into(),
                n: v["n"].as_u64().unwrap_or(0) as usize,
                tokens: v["tokens"].as_u64().unwrap_or(0) as usize,
                seconds: v["seconds"].as_f64().unwrap_or(0.0),
                tokens_per_s: v["tokens_per_s"].as_f64().unwrap_or(0.0),
            };
            println!(
                "llama.cpp N={}: {} tokens in {:.2}s = {:.1} tok/s",
                r.n, r.tokens, r.seconds, r.tokens_per_s
            );
            rows.push(r);
        }
        if !child.wait()?.success() {
            bail!("{} {} failed", a.python, script.display());
        }
    }
    println!("\n| engine | N | tokens | seconds | tokens/s | ratio to llama.cpp at the same N |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        let base = rows
            .iter()
            .find(|b| b.engine == "llama.cpp" && b.n == r.n)
            .map(|b| format!("{:.2}", r.tokens_per_s / b.tokens_per_s))
            .unwrap_or_else(|| "–".into());
        println!(
            "| {} | {} | {} | {:.2} | {:.1} | {base} |",
            r.engine, r.n, r.tokens, r.seconds, r.tokens_per_s
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("machine load after the run (1/5/15 min): {}", load.trim());
    std::fs::create_dir_all(&a.out)?;
    std::fs::write(
        a.out.join("results.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "model": model, "threads": a.threads, "max_tokens": a.max_tokens,
            "llama_cpp_system_info": system_info, "load_after": load.trim(), "rows": rows
        }))?,
    )?;
    Ok(())
}
