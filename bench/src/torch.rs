//! The PyTorch side: `scripts/bench_torch.py` as a child process, one JSON request per line on
//! its stdin, one JSON answer per line on its stdout (its logs go to our stderr).

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

pub struct Torch {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

pub const SCRIPT: &str = "scripts/bench_torch.py";

impl Torch {
    /// `omp_wait`: OMP_WAIT_POLICY for the child (None: inherit ours).
    pub fn start(
        python: &Path,
        threads: usize,
        device: &str,
        omp_wait: Option<&str>,
    ) -> Result<Self> {
        if !Path::new(SCRIPT).exists() {
            bail!("{SCRIPT} not found: run attune-bench from the repository root");
        }
        let mut cmd = Command::new(python);
        if let Some(p) = omp_wait {
            cmd.env("OMP_WAIT_POLICY", p);
        }
        let mut child = cmd
            .arg(SCRIPT)
            .args(["--threads", &threads.to_string(), "--device", device])
            // One thread pool of the requested size and nothing else.
            .env("OMP_NUM_THREADS", threads.to_string())
            .env("MKL_NUM_THREADS", threads.to_string())
            // glibc's allocator tuned as Attune tunes its own (`attune_engine::tune_runtime`):
            // without it, PyTorch's batch-200 activations are fresh mmap'd pages every step
            // until the allocator's dynamic threshold has grown, and its figures depend on what
            // ran before in the process (CNN TENT step alone: 3370 images/s; after `source`: 4640).
            .envs(attune_engine::malloc_tuning_env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {} {SCRIPT}", python.display()))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    /// Send one request and wait for its answer; an `error` answer becomes an error.
    pub fn call(&mut self, req: Value) -> Result<Value> {
        writeln!(self.stdin, "{req}").context("the PyTorch process is gone")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the PyTorch process exited (see its messages above) while answering {req}");
        }
        let ans: Value = serde_json::from_str(&line)
            .with_context(|| format!("PyTorch answered something that is not JSON: {line}"))?;
        if let Some(e) = ans.get("error") {
            bail!("PyTorch failed on {}: {e}", req["cmd"]);
        }
        Ok(ans)
    }

    pub fn quit(mut self) -> Result<()> {
        let _ = writeln!(self.stdin, "{}", serde_json::json!({"cmd": "quit"}));
        drop(self.stdin);
        self.child.wait()?;
        Ok(())
    }
}
