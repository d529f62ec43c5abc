//! The verifier sandbox against hostile programs: each must end with the right verdict, within
//! its limits, leaving nothing running and nothing written outside its directory.

use attune_engine::ttc::sandbox::{run_python, Limits, Verdict};
use std::net::TcpListener;
use std::time::Instant;

fn limits() -> Limits {
    Limits {
        timeout_s: 2.0,
        cpu_s: 5,
        memory_mb: 256,
        max_procs: 16,
        ..Limits::default()
    }
}

fn both_modes() -> [Limits; 2] {
    let mut hook = limits();
    hook.namespaces = false;
    [limits(), hook]
}

#[test]
fn verdicts_and_captured_output() {
    let o = run_python("print('hello', 6 * 7)", &limits()).unwrap();
    assert_eq!(o.verdict, Verdict::Passed, "{o:?}");
    assert_eq!(o.stdout.trim(), "hello 42");
    let o = run_python(
        "def f(x):\n    return x + 1\nassert f(1) == 3, 'f(1) is 2'",
        &limits(),
    )
    .unwrap();
    assert_eq!(o.verdict, Verdict::Failed);
    assert!(
        o.stderr.contains("AssertionError: f(1) is 2"),
        "{}",
        o.stderr
    );
    let o = run_python("def f(:\n", &limits()).unwrap();
    assert_eq!(o.verdict, Verdict::Error);
    assert!(o.stderr.contains("SyntaxError"), "{}", o.stderr);
    let o = run_python("raise KeyError('k')", &limits()).unwrap();
    assert_eq!(o.verdict, Verdict::Error);
    assert!(o.stderr.contains("KeyError"));
}

#[test]
fn infinite_loop_is_killed_at_the_timeout() {
    let t = Instant::now();
    let o = run_python("while True:\n    pass\n", &limits()).unwrap();
    let dt = t.elapsed().as_secs_f64();
    assert_eq!(o.verdict, Verdict::Timeout, "{o:?}");
    assert!((2.0..4.0).contains(&dt), "took {dt:.2}s for a 2 s timeout");
    // A sleeping program uses no CPU: only the wall clock stops it.
    let o = run_python("import time\ntime.sleep(60)", &limits()).unwrap();
    assert_eq!(o.verdict, Verdict::Timeout);
    assert!(o.wall_s < 4.0);
}

#[test]
fn cpu_limit_stops_a_spinning_program_before_the_wall_clock() {
    let mut l = limits();
    l.timeout_s = 30.0;
    l.cpu_s = 1;
    let o = run_python("while True:\n    pass\n", &l).unwrap();
    assert_eq!(o.verdict, Verdict::Timeout, "{o:?}");
    assert!(o.wall_s < 10.0, "{}", o.wall_s);
}

fn group_is_gone(stdout: &str) {
    // The program prints its process group id first.
    let pgid: i32 = stdout.lines().next().unwrap().trim().parse().unwrap();
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(-pgid, 0) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert_eq!(
        (r, errno),
        (-1, Some(libc::ESRCH)),
        "processes of group {pgid} survived the run"
    );
}

#[test]
fn fork_bomb_is_stopped_and_its_group_killed() {
    let t = Instant::now();
    let prog = "import os, sys\nprint(os.getpgid(0), flush=True)\nwhile True:\n    os.fork()\n";
    let o = run_python(prog, &limits()).unwrap();
    assert!(t.elapsed().as_secs_f64() < 5.0);
    assert_ne!(o.verdict, Verdict::Passed, "{o:?}");
    group_is_gone(&o.stdout);
    // Children that outlive a program that returned are killed with its group.
    let prog = "import os, time\nprint(os.getpgid(0), flush=True)\nif os.fork() == 0:\n    time.sleep(60)\n";
    let o = run_python(prog, &limits()).unwrap();
    assert_eq!(o.verdict, Verdict::Passed, "{o:?}");
    std::thread::sleep(std::time::Duration::from_millis(50));
    group_is_gone(&o.stdout);
}

#[test]
fn memory_hog_hits_the_address_space_limit() {
    for l in both_modes() {
        let o = run_python("x = bytearray(2 << 30)\nprint(len(x))", &l).unwrap();
        assert_eq!(o.verdict, Verdict::Error, "{o:?}");
        assert!(o.stderr.contains("MemoryError"), "{}", o.stderr);
    }
}

#[test]
fn no_network() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let prog = format!(
        "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'x')\nprint('connected')"
    );
    for l in both_modes() {
        let o = run_python(&prog, &l).unwrap();
        assert_eq!(o.verdict, Verdict::Error, "{o:?}");
        assert!(!o.stdout.contains("connected"));
        assert!(
            listener.accept().is_err(),
            "the sandbox reached a socket on the host"
        );
    }
    // The hook refuses sockets even where namespaces are missing.
    let mut hook = limits();
    hook.namespaces = false;
    let o = run_python("import socket\nsocket.socket()", &hook).unwrap();
    assert!(o.stderr.contains("sandbox: socket"), "{}", o.stderr);
    // With namespaces, even a raw socket below Python's hook has no route out.
    let o = run_python("print(open('/proc/net/dev').read())", &limits()).unwrap();
    if o.isolation == "namespaces" {
        assert!(!o.stdout.contains("eth0"), "{}", o.stdout);
    }
}

#[test]
fn no_writes_outside_its_directory() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("escaped.txt");
    let t = target.display().to_string();
    let progs = [
        format!("open({t:?}, 'w').write('x')"),
        format!("import os\nfd = os.open({t:?}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')"),
        format!("import shutil\nopen('a.txt', 'w').write('x')\nshutil.copy('a.txt', {t:?})"),
        format!("import os\nos.rename('prog.py', {t:?})"),
        "open('/tmp/attune-sandbox-escape.txt', 'w').write('x')".to_string(),
    ];
    for l in both_modes() {
        for p in &progs {
            let o = run_python(p, &l).unwrap();
            assert_eq!(o.verdict, Verdict::Error, "{p}: {o:?}");
            assert!(!target.exists(), "{p} wrote outside ({})", o.isolation);
            assert!(!std::path::Path::new("/tmp/attune-sandbox-escape.txt").exists());
        }
        // Inside its own directory it may write.
        let o = run_python(
            "open('ok.txt', 'w').write('x')\nprint(open('ok.txt').read())",
            &l,
        )
        .unwrap();
        assert_eq!(o.verdict, Verdict::Passed, "{o:?}");
        assert_eq!(o.stdout.trim(), "x");
    }
}
