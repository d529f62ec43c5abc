//! `attune-bench`: images/s of Attune's adaptation hot path side by side with PyTorch.
//!
//! `attune-bench run` exports the source models to safetensors, builds one corrupted stream,
//! starts `scripts/bench_torch.py` as a child (JSON lines on stdin/stdout) on the same weights,
//! stream and thread count, and for every (model, method, batch size) measures PyTorch and then
//! Attune back to back, so that both see the same machine load. It prints images/s of both, the
//! ratio, and the achieved GFLOP/s against the matrix-multiply rate measured in the same run, then
//! checks parity: after the same adapted batches, the logits of both must agree within 1e-3.
//!
//! `attune-bench memory` streams many images through one method and reports the resident set
//! size along the way (it must stay flat).
//!
//! See docs/speed.md for the figures and how to read them.

mod flops;
mod sampling;
mod torch;

use anyhow::{bail, Context as _, Result};
use attune_engine::corrupt::Corruption;
use attune_engine::data::{self, Dataset, ImageSet, Split};
use attune_engine::jobs::{self, stream, CancelToken, Quiet};
use attune_engine::methods::{self, Method, MethodEnv, MethodSpec};
use attune_engine::models::{Architecture, Model};
use attune_engine::nn::BnMode;
use attune_engine::optim::OptimizerSpec;
use candle_core::{Device, Tensor};
use clap::{Args, Parser, Subcommand};
use rand::seq::SliceRandom;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "attune-bench",
    about = "Attune vs PyTorch: images/s of source / norm_test / TENT / EATA / CoTTA, with parity checks; batched sampling vs llama.cpp"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The side-by-side benchmark (see docs/speed.md).
    Run(RunArgs),
    /// Peak resident memory over a long stream.
    Memory(MemoryArgs),
    /// Tokens/s of batched sampling (N = 1, 4, 16) against llama.cpp on the same GGUF file.
    Sampling(sampling::SamplingArgs),
    /// Microseconds per image of each 3×3 convolution kernel (im2col + GEMM, direct, Winograd)
    /// on the models' stride-1 shapes, one thread, and the one the convolutions pick here.
    Kernels(KernelArgs),
}

#[derive(Args, Clone)]
struct KernelArgs {
    /// Images per timed run.
    #[arg(long, default_value_t = 2000)]
    images: usize,
    /// Timed runs per kernel and shape (the median is reported), after one warm-up run.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

#[derive(Args, Clone)]
struct Common {
    /// Threads for both sides (rayon in Attune, torch.set_num_threads in PyTorch).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// `cpu` or `cuda:N` (CUDA needs a build with `--features cuda` and PyTorch with CUDA).
    #[arg(long, env = "ATTUNE_BENCH_DEVICE", default_value = "cpu")]
    device: String,
    /// Folder for exported weights, the stream, logits and results.
    #[arg(long, default_value = "runs/bench")]
    out: PathBuf,
    /// Data directory filled by scripts/fetch-data.sh.
    #[arg(long, env = "ATTUNE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Source CNN checkpoint [default: runs/fmnist-train/model if it exists, else a quick
    /// one-epoch model trained once into <out>/source-cnn].
    #[arg(long)]
    cnn: Option<PathBuf>,
    /// Source ResNet-20 checkpoint [default: runs/resnet20-fmnist-train/model if it exists,
    /// else a quick model trained once into <out>/source-resnet20].
    #[arg(long)]
    resnet: Option<PathBuf>,
    /// Stream seed (corruption noise, sample order, clean samples).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Models to run: cnn, resnet20.
    #[arg(long, value_delimiter = ',', default_value = "cnn,resnet20")]
    models: Vec<String>,
    /// Methods to run: source, norm_test, tent, eata, cotta (CoTTA's parity check runs with its
    /// random parts off, `ap` = 0 and `rst` = 0, and with SGD instead of Adam: docs/speed.md).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "source,norm_test,tent,eata,cotta"
    )]
    methods: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "1,64,200")]
    batches: Vec<usize>,
    /// Timed repeats per measurement (the median is reported), after one warm-up repeat.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Images per repeat (rounded to whole batches, at least one batch; at most 50 batches).
    #[arg(long, default_value_t = 400)]
    images_per_repeat: usize,
    /// Batch size of the parity check.
    #[arg(long, default_value_t = 200)]
    parity_batch: usize,
    /// Adapted batches before the logits are compared.
    #[arg(long, default_value_t = 20)]
    parity_batches: usize,
    /// Python with torch [default: what scripts/torch-env.sh prints].
    #[arg(long, env = "ATTUNE_TORCH_PYTHON")]
    python: Option<PathBuf>,
    /// Measure Attune only (no PyTorch, no parity).
    #[arg(long)]
    no_torch: bool,
    /// OMP_WAIT_POLICY for PyTorch's OpenMP threads: PASSIVE (sleep when idle, as rayon's
    /// threads do), ACTIVE (spin), or `inherit` (leave the environment as it is: OpenMP's own
    /// default spins for a while, then sleeps). Spinning threads lose their time slices when
    /// other processes compete for the cores, so on a loaded machine PyTorch's figures then drop.
    #[arg(long, default_value = "PASSIVE")]
    torch_omp_wait: String,
    /// Side of the square matrices of the matmul-rate measurement.
    #[arg(long, default_value_t = 1024)]
    matmul_n: usize,
}

#[derive(Args)]
struct MemoryArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value = "cnn")]
    model: String,
    #[arg(long, default_value = "tent")]
    method: String,
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// Images streamed in all (the stream is cycled).
    #[arg(long, default_value_t = 100_000)]
    images: usize,
    /// Report every this many images.
    #[arg(long, default_value_t = 10_000)]
    every: usize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Run(a) => a.common.threads,
        Command::Memory(a) => a.common.threads,
        Command::Sampling(a) => a.threads,
        Command::Kernels(_) => 1,
    };
    attune_engine::tune_runtime();
    // candle sizes its own CPU thread use from RAYON_NUM_THREADS; the gemm calls of the engine's
    // kernels use the global rayon pool.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("cannot size the rayon thread pool")?;
    match cli.command {
        Command::Run(a) => run(a),
        Command::Memory(a) => memory(a),
        Command::Sampling(a) => sampling::run(a),
        Command::Kernels(a) => kernels(a),
    }
}

/// `attune-bench kernels`: the forward pass of one image through each 3×3 kernel, one thread.
fn kernels(a: KernelArgs) -> Result<()> {
    use attune_engine::ops::{conv3x3_kernel, conv3x3_kernel_times, ConvKernel};
    println!(
        "3×3 convolution, stride 1, forward, µs per image, one thread, median of {} runs of {} images ({})",
        a.repeats,
        a.images,
        date()
    );
    println!(
        "{:<10} {:>9} {:>7} {:>13} {:>9} {:>9}  picked at batch 1 / 200",
        "model", "channels", "plane", "im2col+GEMM", "direct", "Winograd"
    );
    let shapes = [
        ("resnet20", 16, 16, 28),
        ("resnet20", 32, 32, 14),
        ("resnet20", 64, 64, 7),
        ("cnn", 32, 64, 14),
        ("cnn", 64, 128, 7),
    ];
    for (model, c, o, hw) in shapes {
        let times = conv3x3_kernel_times(c, o, hw, a.images, a.repeats);
        let t = |k: ConvKernel| {
            times
                .iter()
                .find(|(kk, _)| *kk == k)
                .map_or("n/a".to_string(), |(_, v)| format!("{v:.1}"))
        };
        let (channels, plane) = (format!("{c}→{o}"), format!("{hw}×{hw}"));
        let picked = [1, 200].map(|b| conv3x3_kernel(c, o, hw, b).name());
        println!(
            "{model:<10} {channels:>9} {plane:>7} {:>13} {:>9} {:>9}  {} / {}",
            t(ConvKernel::Im2col),
            t(ConvKernel::Direct),
            t(ConvKernel::Winograd),
            picked[0],
            picked[1]
        );
    }
    println!(
        "(the input gradient of c → o is the same kernel on o → c, with the weights transposed)"
    );
    Ok(())
}

/// What both sides get: exported weights, the stream and the clean samples, on disk.
struct Prepared {
    device: Device,
    stream: ImageSet,
    clean: ImageSet,
    models: Vec<BenchModel>,
}

struct BenchModel {
    name: String,
    /// The exported checkpoint (stem; `.safetensors` + `.json`).
    path: PathBuf,
    info: attune_engine::models::ModelInfo,
    flops: flops::Flops,
}

impl BenchModel {
    fn load(&self, device: &Device) -> Result<Model> {
        Ok(Model::load(&self.path, device)?)
    }
}

fn arch_of(name: &str) -> Result<Architecture> {
    Ok(match name {
        "cnn" => Architecture::default(),
        "resnet20" => Architecture::Resnet {
            depth: 20,
            width: 16,
        },
        other => bail!("unknown model `{other}`; valid: cnn, resnet20"),
    })
}

/// The checkpoint to benchmark: given, the project's trained one, or a quick one trained once.
fn source_checkpoint(c: &Common, name: &str) -> Result<PathBuf> {
    let (given, default) = match name {
        "cnn" => (&c.cnn, "runs/fmnist-train/model"),
        _ => (&c.resnet, "runs/resnet20-fmnist-train/model"),
    };
    if let Some(p) = given {
        return Ok(p.clone());
    }
    if Path::new(default).with_extension("safetensors").exists() {
        return Ok(default.into());
    }
    let dir = c.out.join(format!("source-{name}"));
    let path = dir.join("model");
    if path.with_extension("safetensors").exists() {
        return Ok(path);
    }
    // Speed does not depend on how well the model is trained, but EATA's filters do: a model
    // that is confident on part of the stream keeps the measured step realistic.
    let samples = if name == "cnn" { 12_000 } else { 6_000 };
    eprintln!(
        "[bench] no {name} checkpoint at {default}: training a quick source model (1 epoch, {samples} images) into {}",
        dir.display()
    );
    let spec = jobs::JobSpec::from_value(serde_json::json!({
        "kind": "train",
        "dataset": "fashion_mnist",
        "seed": c.seed,
        "device": c.device,
        "epochs": 1,
        "batch_size": 128,
        "max_train_samples": samples,
        "val_size": 1000,
        "warmup_epochs": 0.2,
        "architecture": serde_json::to_value(arch_of(name)?)?,
    }))?;
    let mut quiet = Quiet;
    let mut ctx = jobs::Context {
        data_dir: data_dir(c),
        out_dir: dir,
        observer: &mut quiet,
        cancel: CancelToken::new(),
    };
    jobs::run(&spec, &mut ctx)?;
    Ok(path)
}

fn data_dir(c: &Common) -> PathBuf {
    c.data_dir.clone().unwrap_or_else(data::default_data_dir)
}

/// Fashion-MNIST test images under Gaussian noise, severity 5 (the first domain of the
/// continual benchmark), and `clean_n` clean training images (EATA's Fisher information).
fn prepare(
    c: &Common,
    model_names: &[String],
    n_stream: usize,
    clean_n: usize,
) -> Result<Prepared> {
    let device = jobs::parse_device(&c.device)?;
    std::fs::create_dir_all(&c.out)
        .with_context(|| format!("cannot create {}", c.out.display()))?;
    let test = stream::TestSet::load(&data_dir(c), Dataset::FashionMnist)?;
    let mut hashes = Default::default();
    let dom = test.domain(
        Some(Corruption::GaussianNoise),
        5,
        c.seed,
        Some(n_stream.min(test.set.len())),
        &stream::Source::Generate,
        &mut hashes,
    )?;
    let (train, _) = data::load(&data_dir(c), Dataset::FashionMnist, Split::Train)?;
    let mut idx: Vec<usize> = (0..train.len()).collect();
    idx.shuffle(&mut attune_engine::rng::rng(c.seed, "bench/clean"));
    idx.truncate(clean_n);
    let clean = train.select(&idx);
    std::fs::write(c.out.join("stream.u8"), &dom.images.images)?;
    std::fs::write(c.out.join("clean.u8"), &clean.images)?;
    let mut models = vec![];
    for name in model_names {
        let src = source_checkpoint(c, name)?;
        let m = Model::load(&src, &device)
            .with_context(|| format!("loading the {name} checkpoint {}", src.display()))?;
        let want = arch_of(name)?;
        if m.info().architecture != want {
            bail!(
                "{}: architecture {:?}, expected {want:?} for `{name}`",
                src.display(),
                m.info().architecture
            );
        }
        let path = c.out.join(name);
        m.save(&path)?;
        let [ch, side, _] = m.info().input;
        models.push(BenchModel {
            name: name.clone(),
            flops: flops::Flops::of(&want, ch, side, m.info().num_classes),
            info: m.info().clone(),
            path,
        });
    }
    Ok(Prepared {
        device,
        stream: dom.images,
        clean,
        models,
    })
}

const BENCHED: [&str; 5] = ["source", "norm_test", "tent", "eata", "cotta"];

fn method_spec(name: &str) -> Result<MethodSpec> {
    if !BENCHED.contains(&name) {
        bail!(
            "method `{name}` is not benchmarked; valid: {}",
            BENCHED.join(", ")
        );
    }
    Ok(MethodSpec::from_value(serde_json::Value::String(
        name.into(),
    ))?)
}

/// The spec of the parity check: the timed spec, except for CoTTA:
/// - its random parts are off (`ap` = 0: the teacher's own logits are the target, no augmented
///   views; `rst` = 0: no stochastic restore), because both sides cannot draw the same random
///   views and masks; the engine's reference tests check those parts against PyTorch with given
///   views and masks (engine/src/methods/reference_tests.rs);
/// - SGD (lr 1e-3, momentum 0.9) instead of Adam: CoTTA trains every weight, and Adam's first
///   steps move each weight by ≈ lr·sign(g) however small g is, so weights whose gradient is at
///   rounding level take opposite ±1e-3 steps on the two sides and the logits drift apart by
///   ~1e-3 within three batches (docs/speed.md); with SGD they agree to 1e-5.
fn parity_spec(spec: &MethodSpec) -> MethodSpec {
    match spec {
        MethodSpec::Cotta {
            mt,
            n_augmentations,
            hflip,
            ..
        } => MethodSpec::Cotta {
            optimizer: OptimizerSpec::Sgd {
                lr: 1e-3,
                momentum: 0.9,
                nesterov: false,
                weight_decay: 0.0,
            },
            mt: *mt,
            rst: 0.0,
            ap: 0.0,
            n_augmentations: *n_augmentations,
            hflip: *hflip,
        },
        other => other.clone(),
    }
}

/// CoTTA's teacher passes per batch on this stream: `n_augmentations` when the frozen anchor
/// (the source model on batch statistics) is unsure (mean max-probability below `ap`), else 1.
/// Both sides take the same decision from the same anchor, so this is computed once, here, and
/// enters the FLOP count.
fn cotta_views(p: &Prepared, m: &BenchModel, spec: &MethodSpec, batch: usize) -> Result<f64> {
    let MethodSpec::Cotta {
        ap,
        n_augmentations,
        ..
    } = spec
    else {
        bail!("cotta_views needs a CoTTA spec, got {spec:?}");
    };
    let (ap, n) = (*ap, *n_augmentations as f64);
    let anchor = m.load(&p.device)?;
    let xs = batches(&p.stream, batch, &p.device)?;
    let mut views = 0.0;
    for x in &xs {
        let probs = attune_engine::losses::softmax(&anchor.forward(x, BnMode::Batch)?)?;
        let conf = probs.max(1)?.mean_all()?.to_scalar::<f32>()? as f64;
        views += if conf < ap { n } else { 1.0 };
    }
    Ok(views / xs.len().max(1) as f64)
}

/// Consecutive batches of the stream (the tail that does not fill a batch is dropped), as
/// device tensors. Both sides cycle through exactly these.
fn batches(set: &ImageSet, batch: usize, device: &Device) -> Result<Vec<Tensor>> {
    let px = set.pixels();
    (0..set.len() / batch)
        .map(|i| {
            Ok(jobs::images_to_tensor(
                &set.images[i * batch * px..(i + 1) * batch * px],
                set.height,
                set.width,
                device,
            )?)
        })
        .collect()
}

fn build_method(
    p: &Prepared,
    m: &BenchModel,
    spec: &MethodSpec,
    batch: usize,
) -> Result<Box<dyn Method>> {
    let load = || Model::load(&m.path, &p.device);
    let env = MethodEnv {
        load_source: &load,
        clean: Some(&p.clean),
        batch_size: batch,
        seed: 0,
    };
    Ok(methods::build(spec, m.load(&p.device)?, &env)?)
}

fn sync(device: &Device) -> Result<()> {
    Ok(device.synchronize()?)
}

/// images/s of every timed repeat, and the fraction of timed batches that took an optimizer
/// step (EATA's filters can leave a batch with nothing to learn from: no backward pass).
fn bench_attune(
    p: &Prepared,
    m: &BenchModel,
    spec: &MethodSpec,
    batch: usize,
    per_repeat: usize,
    repeats: usize,
) -> Result<(Vec<f64>, f64)> {
    let xs = batches(&p.stream, batch, &p.device)?;
    let mut method = build_method(p, m, spec, batch)?;
    let mut i = 0;
    for _ in 0..per_repeat {
        method.adapt_and_predict(&xs[i % xs.len()])?;
        i += 1;
    }
    let before = method.counters().updates;
    let mut rates = vec![];
    for _ in 0..repeats {
        sync(&p.device)?;
        let t = Instant::now();
        for _ in 0..per_repeat {
            method.adapt_and_predict(&xs[i % xs.len()])?;
            i += 1;
        }
        sync(&p.device)?;
        rates.push((per_repeat * batch) as f64 / t.elapsed().as_secs_f64());
    }
    let updates = (method.counters().updates - before) as f64;
    Ok((rates, updates / (repeats * per_repeat).max(1) as f64))
}

/// Logits of the first `n` adapted batches, then of batch 0 predicted again.
fn parity_attune(
    p: &Prepared,
    m: &BenchModel,
    spec: &MethodSpec,
    batch: usize,
    n: usize,
) -> Result<Vec<f32>> {
    let xs = batches(&p.stream, batch, &p.device)?;
    if xs.len() < n {
        bail!(
            "the stream holds {} batches of {batch}, parity needs {n}",
            xs.len()
        );
    }
    let mut method = build_method(p, m, spec, batch)?;
    let mut out = vec![];
    for x in &xs[..n] {
        out.extend(method.adapt_and_predict(x)?.logits);
    }
    out.extend(method.predict(&xs[0])?);
    Ok(out)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// GFLOP/s of an n×n×n f32 matmul through candle (the gemm crate on CPU, cuBLAS on CUDA).
fn matmul_rate(device: &Device, n: usize, repeats: usize) -> Result<Vec<f64>> {
    let a = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?.to_device(device)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?.to_device(device)?;
    a.matmul(&b)?;
    let mut rates = vec![];
    for _ in 0..repeats {
        sync(device)?;
        let t = Instant::now();
        let c = a.matmul(&b)?;
        sync(device)?;
        let dt = t.elapsed().as_secs_f64();
        drop(c);
        rates.push(2.0 * (n as f64).powi(3) / dt / 1e9);
    }
    Ok(rates)
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[derive(Serialize)]
struct Row {
    model: String,
    method: String,
    batch: usize,
    /// None: not applicable (batch statistics need ≥ 2 samples).
    attune_ips: Option<f64>,
    torch_ips: Option<f64>,
    attune_all: Vec<f64>,
    torch_all: Vec<f64>,
    /// Model FLOPs per image of this method (forward; + input gradients for a step).
    flops_per_image: f64,
    /// Fraction of Attune's timed batches that took an optimizer step (1 for TENT, 0 for the
    /// frozen-weight methods; EATA skips batches whose filters keep no sample).
    attune_step_fraction: f64,
    /// CoTTA: mean teacher passes per batch (augmented views when the anchor is unsure).
    teacher_views: Option<f64>,
    load_before: String,
}

#[derive(Serialize)]
struct ParityRow {
    model: String,
    method: String,
    batch: usize,
    batches: usize,
    max_abs_diff: f64,
    max_abs_logit: f64,
    ok: bool,
}

#[derive(Serialize)]
struct Report {
    date: String,
    threads: usize,
    device: String,
    torch: serde_json::Value,
    torch_omp_wait: String,
    matmul_n: usize,
    attune_matmul_gflops: f64,
    torch_matmul_gflops: Option<f64>,
    load_start: String,
    load_end: String,
    rows: Vec<Row>,
    parity: Vec<ParityRow>,
}

fn python(args: &RunArgs) -> Result<PathBuf> {
    if let Some(p) = &args.python {
        return Ok(p.clone());
    }
    let out = std::process::Command::new("scripts/torch-env.sh")
        .output()
        .context("cannot run scripts/torch-env.sh (run attune-bench from the repository root, or pass --python)")?;
    if !out.status.success() {
        bail!(
            "scripts/torch-env.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

const PARITY_TOL: f64 = 1e-3;

fn run(a: RunArgs) -> Result<()> {
    let c = &a.common;
    for m in &a.models {
        arch_of(m)?;
    }
    if a.batches.contains(&0) || a.repeats == 0 || a.images_per_repeat == 0 {
        bail!("--batches, --repeats and --images-per-repeat must be at least 1");
    }
    if a.parity_batch < 2 || a.parity_batches == 0 {
        bail!("--parity-batch must be at least 2 and --parity-batches at least 1");
    }
    if !["PASSIVE", "ACTIVE", "inherit"].contains(&a.torch_omp_wait.as_str()) {
        bail!(
            "--torch-omp-wait `{}`: valid: PASSIVE, ACTIVE, inherit",
            a.torch_omp_wait
        );
    }
    let specs: Vec<(String, MethodSpec)> = a
        .methods
        .iter()
        .map(|m| Ok((m.clone(), method_spec(m)?)))
        .collect::<Result<_>>()?;
    let fisher = specs
        .iter()
        .map(|(_, s)| s.clean_samples())
        .max()
        .unwrap_or(0);
    let n_stream = (a.parity_batch * a.parity_batches).max(4000);
    let p = prepare(c, &a.models, n_stream, fisher.max(1))?;
    let (started, load_start) = (date(), load_avg());
    eprintln!("[bench] load average before: {load_start}");

    let mut torch = if a.no_torch {
        None
    } else {
        Some(torch::Torch::start(
            &python(&a)?,
            c.threads,
            &c.device,
            (a.torch_omp_wait != "inherit").then_some(a.torch_omp_wait.as_str()),
        )?)
    };
    let hello = match &mut torch {
        Some(t) => t.call(serde_json::json!({"cmd": "hello"}))?,
        None => serde_json::Value::Null,
    };
    let attune_mm = median(&matmul_rate(&p.device, a.matmul_n, 5)?);
    let torch_mm = match &mut torch {
        Some(t) => Some(
            t.call(serde_json::json!({"cmd": "matmul", "n": a.matmul_n, "repeats": 5}))?["gflops"]
                .as_f64()
                .unwrap_or(f64::NAN),
        ),
        None => None,
    };
    let peak = attune_mm.max(torch_mm.unwrap_or(0.0));
    println!("PyTorch OMP_WAIT_POLICY: {}", a.torch_omp_wait);
    println!(
        "matmul {n}×{n}×{n} f32, {} threads: Attune (gemm) {attune_mm:.1} GFLOP/s, PyTorch {} GFLOP/s; % below are of {peak:.1}",
        c.threads,
        torch_mm.map_or("-".into(), |v| format!("{v:.1}")),
        n = a.matmul_n
    );
    for m in &p.models {
        if let Some(t) = &mut torch {
            let info = &m.info;
            t.call(serde_json::json!({
                "cmd": "load",
                "name": m.name,
                "arch": info.architecture,
                "classes": info.num_classes,
                "normalization": info.normalization,
                "weights": m.path.with_extension("safetensors"),
                "stream": {"path": c.out.join("stream.u8"), "n": p.stream.len(), "h": p.stream.height, "w": p.stream.width},
                "clean": {"path": c.out.join("clean.u8"), "n": p.clean.len(), "h": p.clean.height, "w": p.clean.width},
            }))?;
        }
    }

    println!(
        "\n{:<9} {:<10} {:>5} {:>11} {:>11} {:>7} {:>15} {:>15} {:>11}  load",
        "model",
        "method",
        "batch",
        "attune/s",
        "torch/s",
        "ratio",
        "attune GFLOP/s",
        "torch GFLOP/s",
        "steps"
    );
    let mut rows = vec![];
    for m in &p.models {
        for (name, spec) in &specs {
            let step = name != "source" && name != "norm_test";
            for &batch in &a.batches {
                let load_before = load_avg();
                let per = (a.images_per_repeat / batch).clamp(1, 50);
                let applicable = batch >= 2 || name == "source";
                let views = if matches!(spec, MethodSpec::Cotta { .. }) && applicable {
                    Some(cotta_views(&p, m, spec, batch)?)
                } else {
                    None
                };
                let fl = match views {
                    Some(v) => m.flops.cotta(v),
                    None if step => m.flops.step,
                    None => m.flops.forward,
                };
                let (mut at, mut tt, mut steps) = (vec![], vec![], 0.0);
                if applicable {
                    if let Some(t) = &mut torch {
                        let ans = t.call(serde_json::json!({
                            "cmd": "bench", "model": m.name, "method": name, "batch": batch,
                            "batches_per_repeat": per, "repeats": a.repeats, "warmup": 1,
                            "spec": spec,
                        }))?;
                        tt = serde_json::from_value(ans["ips"].clone())?;
                    }
                    (at, steps) = bench_attune(&p, m, spec, batch, per, a.repeats)?;
                }
                let row = Row {
                    model: m.name.clone(),
                    method: name.clone(),
                    batch,
                    attune_ips: applicable.then(|| median(&at)),
                    torch_ips: (applicable && torch.is_some()).then(|| median(&tt)),
                    attune_all: at,
                    torch_all: tt,
                    flops_per_image: fl,
                    attune_step_fraction: steps,
                    teacher_views: views,
                    load_before,
                };
                println!("{}", fmt_row(&row, peak));
                rows.push(row);
            }
        }
    }

    let mut parity = vec![];
    if let Some(t) = &mut torch {
        println!(
            "\nparity: logits of {} adapted batches of {} and a re-prediction of batch 0 (tolerance {PARITY_TOL})",
            a.parity_batches, a.parity_batch
        );
        for m in &p.models {
            for (name, spec) in &specs {
                let spec = &parity_spec(spec);
                let file = c.out.join(format!("torch-logits-{}-{name}.f32", m.name));
                t.call(serde_json::json!({
                    "cmd": "parity", "model": m.name, "method": name, "batch": a.parity_batch,
                    "batches": a.parity_batches, "out": file, "spec": spec,
                }))?;
                let theirs: Vec<f32> = std::fs::read(&file)?
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let ours = parity_attune(&p, m, spec, a.parity_batch, a.parity_batches)?;
                if ours.len() != theirs.len() {
                    bail!(
                        "parity {}/{name}: {} logits vs PyTorch's {}",
                        m.name,
                        ours.len(),
                        theirs.len()
                    );
                }
                let diff = ours
                    .iter()
                    .zip(&theirs)
                    .map(|(a, b)| (a - b).abs() as f64)
                    .fold(0.0, f64::max);
                let big = theirs.iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
                let row = ParityRow {
                    model: m.name.clone(),
                    method: name.clone(),
                    batch: a.parity_batch,
                    batches: a.parity_batches,
                    max_abs_diff: diff,
                    max_abs_logit: big,
                    ok: diff <= PARITY_TOL,
                };
                println!(
                    "  {:<9} {:<10} max |Δlogit| = {:.2e} (largest |logit| {:.1}) {}",
                    row.model,
                    row.method,
                    diff,
                    big,
                    if row.ok { "ok" } else { "FAIL" }
                );
                parity.push(row);
            }
        }
    }
    if let Some(t) = torch.take() {
        t.quit()?;
    }
    let report = Report {
        date: started,
        threads: c.threads,
        device: c.device.clone(),
        torch: hello,
        torch_omp_wait: a.torch_omp_wait.clone(),
        matmul_n: a.matmul_n,
        attune_matmul_gflops: attune_mm,
        torch_matmul_gflops: torch_mm,
        load_start,
        load_end: load_avg(),
        rows,
        parity,
    };
    let path = c.out.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    let md = c.out.join("results.md");
    std::fs::write(&md, markdown(&report, peak))?;
    println!(
        "\nload average after: {}; wrote {} and {}",
        report.load_end,
        path.display(),
        md.display()
    );
    if report.parity.iter().any(|r| !r.ok) {
        bail!("parity failed: the speed figures of the failing rows do not count");
    }
    Ok(())
}

fn gflops(ips: Option<f64>, flops: f64) -> Option<f64> {
    ips.map(|v| v * flops / 1e9)
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

fn fmt_row(r: &Row, peak: f64) -> String {
    let ratio = match (r.attune_ips, r.torch_ips) {
        (Some(a), Some(t)) => Some(a / t),
        _ => None,
    };
    let g = |ips| {
        gflops(ips, r.flops_per_image).map_or("n/a".into(), |g| {
            format!("{g:.1} ({:.0}%)", 100.0 * g / peak)
        })
    };
    format!(
        "{:<9} {:<10} {:>5} {:>11} {:>11} {:>7} {:>15} {:>15} {:>11}  {}",
        r.model,
        r.method,
        r.batch,
        fmt_opt(r.attune_ips, 0),
        fmt_opt(r.torch_ips, 0),
        ratio.map_or("n/a".into(), |v| format!("{v:.2}×")),
        g(r.attune_ips),
        g(r.torch_ips),
        steps_label(r),
        r.load_before
    )
}

/// Share of batches with an optimizer step, for the adapting methods.
fn steps_label(r: &Row) -> String {
    match (r.method.as_str(), r.attune_ips) {
        ("source" | "norm_test", _) | (_, None) => "-".into(),
        _ => match r.teacher_views {
            Some(v) => format!("{:.0}% ({v:.0}v)", 100.0 * r.attune_step_fraction),
            None => format!("{:.0}%", 100.0 * r.attune_step_fraction),
        },
    }
}

fn markdown(r: &Report, peak: f64) -> String {
    let mut s = format!(
        "Date {}, {} threads, device {}, PyTorch {} (OMP_WAIT_POLICY {}). Matmul {n}³ f32: Attune {:.1} GFLOP/s, PyTorch {}; % of {peak:.1}. Load average {} → {}.\n\n",
        r.date,
        r.threads,
        r.device,
        r.torch.get("torch").and_then(|v| v.as_str()).unwrap_or("-"),
        r.torch_omp_wait,
        r.attune_matmul_gflops,
        r.torch_matmul_gflops.map_or("-".into(), |v| format!("{v:.1} GFLOP/s")),
        r.load_start,
        r.load_end,
        n = r.matmul_n
    );
    s += "| model | method | batch | Attune img/s | PyTorch img/s | ratio | Attune GFLOP/s | PyTorch GFLOP/s | steps | load |\n";
    s += "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n";
    for row in &r.rows {
        let ratio = match (row.attune_ips, row.torch_ips) {
            (Some(a), Some(t)) => format!("{:.2}×", a / t),
            _ => "n/a".into(),
        };
        let g = |ips| {
            gflops(ips, row.flops_per_image).map_or("n/a".into(), |g| {
                format!("{g:.1} ({:.0}%)", 100.0 * g / peak)
            })
        };
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.model,
            row.method,
            row.batch,
            fmt_opt(row.attune_ips, 0),
            fmt_opt(row.torch_ips, 0),
            ratio,
            g(row.attune_ips),
            g(row.torch_ips),
            steps_label(row),
            row.load_before
        );
    }
    if !r.parity.is_empty() {
        s += "\n| parity | method | batches | max abs logit diff | largest abs logit | within 1e-3 |\n| --- | --- | --- | ---: | ---: | --- |\n";
        for p in &r.parity {
            s += &format!(
                "| {} | {} | {} × {} | {:.2e} | {:.1} | {} |\n",
                p.model,
                p.method,
                p.batches,
                p.batch,
                p.max_abs_diff,
                p.max_abs_logit,
                if p.ok { "yes" } else { "NO" }
            );
        }
    }
    s
}

fn date() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// (VmRSS, VmHWM) of this process in MiB.
fn rss_mib() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn memory(a: MemoryArgs) -> Result<()> {
    let c = &a.common;
    let spec = method_spec(&a.method)?;
    arch_of(&a.model)?;
    if a.batch == 0 || a.every == 0 || a.images == 0 {
        bail!("--batch, --every and --images must be at least 1");
    }
    let p = prepare(
        c,
        std::slice::from_ref(&a.model),
        4000,
        spec.clean_samples().max(1),
    )?;
    let m = &p.models[0];
    let xs = batches(&p.stream, a.batch, &p.device)?;
    let mut method = build_method(&p, m, &spec, a.batch)?;
    let (rss0, _) = rss_mib();
    println!(
        "{} / {} at batch {}: {} images (the {}-image stream cycled); load {}",
        m.name,
        a.method,
        a.batch,
        a.images,
        xs.len() * a.batch,
        load_avg()
    );
    println!(
        "{:>8} {:>10} {:>10} {:>8}",
        "images", "RSS MiB", "peak MiB", "img/s"
    );
    println!("{:>8} {:>10.1} {:>10.1}", 0, rss0, rss_mib().1);
    let (mut done, mut next, mut i) = (0usize, a.every, 0usize);
    let mut marks = vec![];
    let t = Instant::now();
    let mut last = (Instant::now(), 0usize);
    while done < a.images {
        method.adapt_and_predict(&xs[i % xs.len()])?;
        i += 1;
        done += a.batch;
        if done >= next || done >= a.images {
            let (rss, hwm) = rss_mib();
            let ips = (done - last.1) as f64 / last.0.elapsed().as_secs_f64();
            last = (Instant::now(), done);
            println!("{done:>8} {rss:>10.1} {hwm:>10.1} {ips:>8.0}");
            marks.push(
                serde_json::json!({"images": done, "rss_mib": rss, "peak_mib": hwm, "ips": ips}),
            );
            next += a.every;
        }
    }
    let (first_at, first) = marks
        .first()
        .map(|m| {
            (
                m["images"].as_u64().unwrap_or(0),
                m["peak_mib"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .unwrap_or((0, f64::NAN));
    let lastp = marks
        .last()
        .and_then(|m| m["peak_mib"].as_f64())
        .unwrap_or(f64::NAN);
    println!(
        "peak RSS after {first_at} images: {first:.1} MiB; after {done}: {lastp:.1} MiB (growth {:.1} MiB) in {:.0} s",
        lastp - first,
        t.elapsed().as_secs_f64()
    );
    let path = c.out.join(format!("memory-{}-{}.json", m.name, a.method));
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&serde_json::json!({
            "date": date(), "model": m.name, "method": a.method, "batch": a.batch,
            "threads": c.threads, "marks": marks, "load_end": load_avg(),
        }))? + "\n",
    )?;
    println!("wrote {}", path.display());
    Ok(())
}
