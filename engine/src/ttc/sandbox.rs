//! The verifier sandbox: untrusted Python in a separate, limited process.
//!
//! Each run gets its own temporary directory (its working directory, removed afterwards) and
//! its own session and process group, which is killed as a whole when the program ends or its
//! wall-clock time is up. Limits are set with setrlimit before `exec`: CPU seconds, address
//! space, number of processes, file size, open files, no core dumps.
//!
//! Isolation, where the kernel allows it (Linux, root or unprivileged user namespaces):
//! - a new network namespace: no interface but a down loopback, so no socket reaches anything;
//! - a new mount namespace with every mount made read-only and only the run's directory
//!   writable again;
//! - as root, the program runs under a uid of its own (one unused, high uid per run), so the
//!   process limit counts its processes only and it can signal nothing else.
//!
//! Always, also where namespaces are unavailable: a Python audit hook installed before the
//! program runs refuses socket creation, `ctypes`, and writes, renames and removals outside the
//! run's directory. Audit hooks cannot be removed from Python code.

use crate::error::{EngineError, Result};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock seconds before the process group is killed (verdict `timeout`).
    pub timeout_s: f64,
    /// CPU seconds (RLIMIT_CPU).
    pub cpu_s: u64,
    /// Address space in MiB (RLIMIT_AS).
    pub memory_mb: u64,
    /// Processes the program may have at once (RLIMIT_NPROC; enforced when not run as root).
    pub max_procs: u64,
    /// Largest file the program may write, in MiB (RLIMIT_FSIZE).
    pub max_file_mb: u64,
    /// Captured output kept per stream, in bytes.
    pub max_output_bytes: usize,
    /// Network and mount namespaces where available (`false`: the audit hook only).
    pub namespaces: bool,
    /// The Python interpreter.
    pub python: String,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout_s: 10.0,
            cpu_s: 10,
            memory_mb: 512,
            max_procs: 32,
            max_file_mb: 16,
            max_output_bytes: 4096,
            namespaces: true,
            python: "python3".into(),
        }
    }
}

impl Limits {
    pub fn validate(&self) -> Result<()> {
        if !(self.timeout_s > 0.0 && self.timeout_s.is_finite()) {
            return Err(EngineError::InvalidSpec(
                "sandbox.timeout_s must be > 0".into(),
            ));
        }
        if self.cpu_s == 0 || self.memory_mb < 64 || self.max_procs == 0 {
            return Err(EngineError::InvalidSpec(
                "sandbox limits: cpu_s ≥ 1, memory_mb ≥ 64, max_procs ≥ 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Exited with status 0.
    Passed,
    /// An assertion failed.
    Failed,
    /// Killed at the wall-clock or CPU limit.
    Timeout,
    /// Any other exception, a syntax error, a blocked operation, a resource limit.
    Error,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub verdict: Verdict,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
    /// The signal that ended the program, if any.
    pub signal: Option<i32>,
    pub wall_s: f64,
    /// `namespaces` or `audit_hook`: what kept the program from the network and the filesystem.
    pub isolation: String,
}

/// Runs before the program: audit hook, then the program as `__main__`; exit status 1 for an
/// AssertionError, 2 for any other exception.
const RUNNER: &str = r#"
import sys, os
_root = os.path.realpath(os.getcwd())
def _inside(p):
    try:
        p = os.fsdecode(p)
    except Exception:
        return False
    return os.path.realpath(os.path.join(_root, p)).startswith(_root + os.sep)
_WRITE = ("w", "a", "x", "+")
def _hook(event, args):
    if event.startswith("socket.") or event == "ctypes.dlopen" or event.startswith("ctypes."):
        raise PermissionError("sandbox: " + event + " is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in _WRITE)) or (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))
        if writing and isinstance(path, (str, bytes, os.PathLike)) and not _inside(path):
            raise PermissionError("sandbox: writing outside the sandbox directory is not allowed")
    elif event in ("os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.symlink", "os.link", "os.utime", "shutil.rmtree"):
        if args and isinstance(args[0], (str, bytes, os.PathLike)) and not _inside(args[0]):
            raise PermissionError("sandbox: " + event + " outside the sandbox directory is not allowed")
    elif event == "os.rename":
        if not (_inside(args[0]) and _inside(args[1])):
            raise PermissionError("sandbox: os.rename outside the sandbox directory is not allowed")
sys.addaudithook(_hook)
_src = open("prog.py", encoding="utf-8").read()
try:
    exec(compile(_src, "prog.py", "exec"), {"__name__": "__main__"})
except SystemExit as e:
    raise
except AssertionError:
    import traceback; traceback.print_exc(); sys.stderr.flush(); os._exit(1)
except BaseException:
    import traceback; traceback.print_exc(); sys.stderr.flush(); os._exit(2)
sys.stdout.flush(); sys.stderr.flush()
"#;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh private directory for one run, removed on drop.
struct RunDir(PathBuf);

impl RunDir {
    fn new() -> Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("attune-sandbox-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir(&p).map_err(|e| EngineError::io(&p, e))?;
        Ok(Self(p))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read_capped(path: &Path, max: usize) -> String {
    let mut buf = vec![];
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(max as u64 + 1).read_to_end(&mut buf);
    }
    let cut = buf.len() > max;
    buf.truncate(max);
    let mut s = String::from_utf8_lossy(&buf).into_owned();
    if cut {
        s.push_str("\n[output truncated]");
    }
    s
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::CString;

    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;

    fn mount_setattr(path: &CString, flags: libc::c_uint, set: u64, clr: u64) -> bool {
        let attr = MountAttr {
            attr_set: set,
            attr_clr: clr,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: a raw syscall with a valid C string and a properly sized attribute struct.
        unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                path.as_ptr(),
                flags,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            ) == 0
        }
    }

    /// New network and mount namespaces; the whole tree read-only but `dir`. Runs in the
    /// child between fork and exec. Returns false (changing nothing visible) when not allowed.
    pub fn isolate(dir: &CString, root: bool) -> bool {
        // SAFETY: plain syscalls on the child's own namespaces with valid C strings.
        unsafe {
            let flags = if root {
                libc::CLONE_NEWNET | libc::CLONE_NEWNS
            } else {
                libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWNS
            };
            if libc::unshare(flags) != 0 {
                return false;
            }
            let slash = CString::new("/").expect("no NUL");
            let none = std::ptr::null::<libc::c_char>();
            if libc::mount(
                none,
                slash.as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return false;
            }
            if libc::mount(
                dir.as_ptr(),
                dir.as_ptr(),
                none,
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return false;
            }
            if !mount_setattr(&slash, AT_RECURSIVE, MOUNT_ATTR_RDONLY, 0) {
                return false;
            }
            // The working directory was entered before the bind mount: enter the writable one.
            mount_setattr(dir, 0, 0, MOUNT_ATTR_RDONLY) && libc::chdir(dir.as_ptr()) == 0
        }
    }
}

/// A uid (and gid) for one run: unused high ids, distinct across concurrent runs of a process
/// and, with the pid mixed in, across processes.
fn run_uid() -> u32 {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let h = crate::rng::derive(std::process::id() as u64, &[n]);
    200_000 + (h % 800_000) as u32
}

/// Whether this process is root (the sandbox then drops to a uid of its own).
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Run `program` (Python source) in the sandbox and judge it.
pub fn run_python(program: &str, limits: &Limits) -> Result<Outcome> {
    use std::os::unix::process::CommandExt;
    let dir = RunDir::new()?;
    let prog = dir.0.join("prog.py");
    std::fs::write(&prog, program).map_err(|e| EngineError::io(&prog, e))?;
    std::fs::write(dir.0.join("runner.py"), RUNNER).map_err(|e| EngineError::io(&dir.0, e))?;
    let out_path = dir.0.join("stdout.txt");
    let err_path = dir.0.join("stderr.txt");
    let stdout = std::fs::File::create(&out_path).map_err(|e| EngineError::io(&out_path, e))?;
    let stderr = std::fs::File::create(&err_path).map_err(|e| EngineError::io(&err_path, e))?;
    let root = is_root();
    let uid = run_uid();
    if root {
        for p in [&dir.0, &prog, &out_path, &err_path] {
            std::os::unix::fs::chown(p, Some(uid), Some(uid)).map_err(|e| EngineError::io(p, e))?;
        }
    }
    let cdir = std::ffi::CString::new(dir.0.as_os_str().as_encoded_bytes())
        .map_err(|_| EngineError::Sandbox("temporary directory path has a NUL byte".into()))?;
    // A pipe on which the child reports whether isolation took hold (one byte, before exec).
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 with a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(EngineError::Sandbox("pipe2 failed".into()));
    }
    let (rfd, wfd) = (fds[0], fds[1]);
    let l = limits.clone();
    let mut cmd = Command::new(&limits.python);
    cmd.args(["-I", "-B", "-S", "runner.py"])
        .current_dir(&dir.0)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &dir.0)
        .env("TMPDIR", &dir.0)
        .env("PYTHONHASHSEED", "0")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (setsid, unshare, mount, setrlimit, setuid, write).
    unsafe {
        cmd.pre_exec(move || {
            libc::close(rfd);
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            #[cfg(target_os = "linux")]
            let isolated = l.namespaces && linux::isolate(&cdir, root);
            #[cfg(not(target_os = "linux"))]
            let isolated = false;
            let lim = |res, v: u64| {
                let r = libc::rlimit {
                    rlim_cur: v as libc::rlim_t,
                    rlim_max: v as libc::rlim_t,
                };
                libc::setrlimit(res, &r)
            };
            // The hard CPU limit a second above the soft one: SIGXCPU first, then SIGKILL.
            let cpu = libc::rlimit {
                rlim_cur: l.cpu_s as libc::rlim_t,
                rlim_max: (l.cpu_s + 1) as libc::rlim_t,
            };
            libc::setrlimit(libc::RLIMIT_CPU, &cpu);
            lim(libc::RLIMIT_AS, l.memory_mb << 20);
            lim(libc::RLIMIT_FSIZE, l.max_file_mb << 20);
            lim(libc::RLIMIT_NOFILE, 64);
            lim(libc::RLIMIT_CORE, 0);
            lim(libc::RLIMIT_NPROC, l.max_procs);
            if root {
                let g = [uid as libc::gid_t];
                if libc::setgroups(1, g.as_ptr()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let b = [isolated as u8];
            libc::write(wfd, b.as_ptr() as *const libc::c_void, 1);
            libc::close(wfd);
            Ok(())
        });
    }
    let start = Instant::now();
    let spawned = cmd.spawn();
    // SAFETY: closing our copy of the write end; the read end is ours.
    unsafe { libc::close(wfd) };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            unsafe { libc::close(rfd) };
            return Err(EngineError::Sandbox(format!(
                "cannot start `{}`: {e}",
                limits.python
            )));
        }
    };
    let mut flag = [0u8; 1];
    // SAFETY: reading one byte into a valid buffer from our pipe end, then closing it.
    let got = unsafe { libc::read(rfd, flag.as_mut_ptr() as *mut libc::c_void, 1) };
    unsafe { libc::close(rfd) };
    let isolation = if got == 1 && flag[0] == 1 {
        "namespaces"
    } else {
        "audit_hook"
    };
    let pgid = child.id() as i32;
    let timeout = Duration::from_secs_f64(limits.timeout_s);
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(e) => {
                return Err(EngineError::Sandbox(format!(
                    "waiting for the program: {e}"
                )))
            }
        }
        if start.elapsed() >= timeout {
            timed_out = true;
            // SAFETY: signalling the process group the child leads.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
            break child
                .wait()
                .map_err(|e| EngineError::Sandbox(format!("waiting for the program: {e}")))?;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Whatever it left behind in its group goes too; wait (a bounded time) until the group is
    // gone, re-sending the signal to processes forked in between.
    let reap = Instant::now();
    // SAFETY: signalling (and probing with signal 0) the process group the child led.
    while unsafe { libc::killpg(pgid, libc::SIGKILL) } == 0
        && reap.elapsed() < Duration::from_secs(2)
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    let wall_s = start.elapsed().as_secs_f64();
    use std::os::unix::process::ExitStatusExt;
    let signal = status.signal();
    let exit_code = status.code();
    let verdict = if timed_out
        || signal == Some(libc::SIGXCPU)
        || (signal == Some(libc::SIGKILL) && wall_s >= limits.cpu_s as f64)
    {
        Verdict::Timeout
    } else {
        match exit_code {
            Some(0) => Verdict::Passed,
            Some(1) => Verdict::Failed,
            _ => Verdict::Error,
        }
    };
    Ok(Outcome {
        verdict,
        stdout: read_capped(&out_path, limits.max_output_bytes),
        stderr: read_capped(&err_path, limits.max_output_bytes),
        exit_code,
        signal,
        wall_s,
        isolation: isolation.into(),
    })
}
