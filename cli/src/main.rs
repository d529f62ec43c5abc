//! `attune`: run Attune jobs in-process (embedded mode, no servers).

mod output;
mod plot;
mod remote;

use anyhow::{Context as _, Result};
use attune_engine::jobs::{self, CancelToken, Context, Event, JobSpec, LogLevel, Observer};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

const SPEC_REFERENCE: &str = include_str!("../../docs/spec.md");

#[derive(Parser)]
#[command(
    name = "attune",
    version,
    about = "Test-time adaptation and test-time compute as jobs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    remote: remote::Remote,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job spec in this process, with no servers, and write its results to a folder.
    #[command(after_long_help = SPEC_REFERENCE)]
    Run(RunArgs),
    /// Submit a job spec to the Attune API; prints the job id.
    Submit(remote::SubmitArgs),
    /// Show a job's status, progress, error and checkpoints.
    Status {
        /// Job id.
        id: String,
    },
    /// Print a job's log; with --follow, stream it live until the job finishes.
    Logs {
        /// Job id.
        id: String,
        /// Stream live (server-sent events) until the job finishes.
        #[arg(long, short)]
        follow: bool,
    },
    /// List your jobs, newest first.
    Jobs(remote::JobsArgs),
    /// Administration that talks to Postgres directly.
    #[command(subcommand)]
    Admin(remote::Admin),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Job spec file: TOML (.toml) or JSON (.json). See the field reference below (--help).
    spec: PathBuf,
    /// Output folder [default: runs/<name>, else runs/<spec file name>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Data directory filled by scripts/fetch-data.sh.
    #[arg(long, env = "ATTUNE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Override the spec's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// No progress bars or log lines; print only the final table.
    #[arg(long, short)]
    quiet: bool,
}

/// Parse a spec file: JSON if it ends in .json, TOML otherwise.
pub fn read_spec(path: &Path) -> Result<JobSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read spec {}", path.display()))?;
    let value: serde_json::Value = if path.extension().and_then(|e| e.to_str()) == Some("json") {
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?
    } else {
        let t: toml::Value =
            toml::from_str(&text).with_context(|| format!("{}: not valid TOML", path.display()))?;
        serde_json::to_value(t)?
    };
    JobSpec::from_value(value).with_context(|| format!("{}: invalid job spec", path.display()))
}

/// Progress bars per phase on a terminal; plain lines otherwise.
struct Terminal {
    bar: Option<ProgressBar>,
    quiet: bool,
    start: Instant,
}

impl Terminal {
    fn line(&self, s: &str) {
        if self.quiet {
            return;
        }
        // A hidden bar (stderr is not a terminal) swallows println: print those lines directly.
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(s),
            _ => eprintln!("{s}"),
        }
    }
}

impl Observer for Terminal {
    fn event(&mut self, e: Event) {
        match e {
            Event::Phase { label, total } => {
                if self.quiet {
                    return;
                }
                let b = ProgressBar::new(total);
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>28} [{bar:30}] {pos}/{len} {elapsed}<{eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                b.set_prefix(label);
                self.bar = Some(b);
            }
            Event::Advance { done } => {
                if let Some(b) = &self.bar {
                    b.set_position(done);
                }
            }
            Event::PhaseEnd { summary } => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                self.line(&format!(
                    "[{:>6.1}s] {summary}",
                    self.start.elapsed().as_secs_f64()
                ));
            }
            Event::Metric { .. } => {}
            Event::Log { level, message } => {
                let tag = match level {
                    LogLevel::Info => "",
                    LogLevel::Warn => "warning: ",
                };
                self.line(&format!(
                    "[{:>6.1}s] {tag}{message}",
                    self.start.elapsed().as_secs_f64()
                ));
            }
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    let mut spec = read_spec(&args.spec)?;
    if let Some(s) = args.seed {
        spec.seed = s;
    }
    let out = match args.out {
        Some(o) => o,
        None => {
            let stem = spec
                .name
                .clone()
                .or_else(|| {
                    args.spec
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                })
                .unwrap_or_else(|| spec.kind_name().to_string());
            PathBuf::from("runs").join(stem)
        }
    };
    let data_dir = args
        .data_dir
        .unwrap_or_else(attune_engine::data::default_data_dir);
    let start = Instant::now();
    let mut term = Terminal {
        bar: None,
        quiet: args.quiet,
        start,
    };
    let cancel = CancelToken::new();
    let mut ctx = Context {
        data_dir,
        out_dir: out.clone(),
        observer: &mut term,
        cancel,
    };
    let result = jobs::run(&spec, &mut ctx)?;
    let secs = start.elapsed().as_secs_f64();
    std::fs::create_dir_all(&out)?;
    let result_path = out.join("result.json");
    std::fs::write(&result_path, serde_json::to_string_pretty(&result)? + "\n")
        .with_context(|| format!("cannot write {}", result_path.display()))?;
    let timing = serde_json::json!({ "wall_seconds": secs, "threads": rayon_threads() });
    std::fs::write(
        out.join("timing.json"),
        serde_json::to_string_pretty(&timing)? + "\n",
    )?;
    if let jobs::JobResult::Adapt(a) = &result {
        std::fs::write(out.join("error.svg"), plot::error_svg(a))?;
    }
    if let jobs::JobResult::Sample(r) = &result {
        std::fs::write(out.join("pass_at_k.svg"), plot::pass_at_k_svg(r))?;
    }
    println!("{}", output::table(&result));
    println!(
        "wall time {:.1} s; results in {}",
        secs,
        result_path.display()
    );
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn main() {
    attune_engine::tune_runtime();
    let cli = Cli::parse();
    let remote = cli.remote;
    let r = match cli.command {
        Command::Run(a) => run(a),
        other => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(async {
                    match other {
                        Command::Submit(a) => remote::submit(&remote, a).await,
                        Command::Status { id } => remote::status(&remote, &id).await,
                        Command::Logs { id, follow } => remote::logs(&remote, &id, follow).await,
                        Command::Jobs(a) => remote::jobs(&remote, a).await,
                        Command::Admin(a) => remote::admin(a).await,
                        Command::Run(_) => unreachable!("handled above"),
                    }
                })
            }),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_documents_every_spec_field() {
        // Every field name the engine accepts appears in the reference text shown by --help.
        let fields = [
            "kind",
            "name",
            "tags",
            "seed",
            "device", // common
            "dataset",
            "architecture",
            "channels",
            "convs_per_stage",
            "depth",
            "width",
            "epochs",
            "batch_size",
            "optimizer",
            "lr",
            "momentum",
            "nesterov",
            "weight_decay",
            "beta1",
            "beta2",
            "eps",
            "warmup_epochs",
            "label_smoothing",
            "val_size",
            "crop_pad",
            "hflip",
            "max_train_samples",
            "output", // train
            "model",
            "corruptions",
            "severity",
            "setting",
            "methods",
            "steps",
            "n_examples",
            "corrupted_dir",
            "save_checkpoints",
            "dirichlet_delta",
            "episodic",
            "reset_every",
            "forgetting_examples",
            "collapse_margin",
            "collapse_window",
            "alpha",
            "crowds",
            "e_margin",
            "d_margin",
            "fisher_alpha",
            "fisher_size",
            "margin",
            "rho",
            "reset_constant",
            "margin_e0",
            "plpd_threshold",
            "patch_len",
            "reweight_ent",
            "reweight_plpd",
            "base",
            "affinity",
            "max_steps",
            "bound_lambda",
            "core",
            "mt",
            "rst",
            "ap",
            "n_augmentations",
            "hflip",
            "lambda_ce_trg",
            "lambda_cont",
            "temperature",
            "projection_dim",
            "source_samples",
            "spw",
            "perc",
            "num_components",
            "batch_size_max",
            "beta",
            "memory_size",
            "covariance",
            "shrinkage", // adapt
            "checkpoints",
            "severities",
            "clean", // evaluate
        ];
        for f in fields {
            assert!(
                SPEC_REFERENCE.contains(f),
                "docs/spec.md does not mention `{f}`"
            );
        }
        for c in attune_engine::corrupt::Corruption::ALL {
            assert!(SPEC_REFERENCE.contains(c.name()), "{c}");
        }
        for m in attune_engine::methods::METHOD_NAMES {
            assert!(SPEC_REFERENCE.contains(m), "{m}");
        }
    }
}
