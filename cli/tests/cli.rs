//! The `attune` binary as a user runs it.

use std::path::Path;
use std::process::Command;

fn attune() -> Command {
    Command::new(env!("CARGO_BIN_EXE_attune"))
}

fn write(p: &Path, s: &str) {
    std::fs::write(p, s).unwrap();
}

#[test]
fn run_help_documents_the_spec_fields() {
    let out = attune().args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "kind = \"adapt\"",
        "corrupted_dir",
        "norm_test",
        "--data-dir",
        "severity",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn every_example_spec_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) == Some("toml") {
            let text = std::fs::read_to_string(&p).unwrap();
            let v: toml::Value = toml::from_str(&text).unwrap();
            attune_engine::jobs::JobSpec::from_value(serde_json::to_value(v).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 5, "only {n} examples");
}

#[test]
fn train_then_adapt_in_embedded_mode_writes_results() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    attune_engine::data::synthetic::write(&data, attune_engine::data::Dataset::Mnist, 600, 200, 0)
        .unwrap();
    let train = tmp.path().join("train.toml");
    write(
        &train,
        "kind = \"train\"\ndataset = \"mnist\"\nepochs = 1\nval_size = 100\narchitecture = { arch = \"cnn\", channels = [8, 8] }\n",
    );
    let out = attune()
        .args(["run", train.to_str().unwrap(), "--quiet", "--out"])
        .arg(tmp.path().join("t"))
        .env("ATTUNE_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("clean test: error"), "{stdout}");
    assert!(tmp.path().join("t/model.safetensors").exists());

    let adapt = tmp.path().join("adapt.json");
    let spec = serde_json::json!({
        "kind": "adapt", "model": tmp.path().join("t/model.safetensors"),
        "corruptions": ["fog", "impulse_noise"], "n_examples": 50, "batch_size": 25,
        "methods": ["source", "norm_test", "tent"]
    });
    write(&adapt, &spec.to_string());
    let run = |dir: &str| {
        let out = attune()
            .args(["run", adapt.to_str().unwrap(), "--quiet", "--out"])
            .arg(tmp.path().join(dir))
            .env("ATTUNE_DATA_DIR", &data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = run("a1");
    for needle in [
        "fog",
        "impulse_noise",
        "source",
        "norm_test",
        "tent",
        "mean error %",
    ] {
        assert!(table.contains(needle), "table lacks {needle}:\n{table}");
    }
    run("a2");
    let r1 = std::fs::read(tmp.path().join("a1/result.json")).unwrap();
    let r2 = std::fs::read(tmp.path().join("a2/result.json")).unwrap();
    assert_eq!(
        r1, r2,
        "same spec and seed must give a byte-identical result.json"
    );
    assert!(
        tmp.path().join("a1/samples.json").exists() && tmp.path().join("a1/timing.json").exists()
    );
    let svg = std::fs::read_to_string(tmp.path().join("a1/error.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 3, "one line per method");
    assert!(svg.contains(">fog<") && svg.contains(">impulse_noise<"));
}

#[test]
fn errors_exit_non_zero_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("bad.toml");
    write(&spec, "kind = \"adapt\"\nmodel = \"m.safetensors\"\nmethods = [\"tent\"]\ncorruptions = [\"rain\"]\n");
    let out = attune()
        .args(["run", spec.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("bad.toml: invalid job spec")
            && err.contains("rain")
            && err.contains("gaussian_noise"),
        "{err}"
    );

    write(&spec, "kind = \"train\"\ndataset = \"mnist\"\n");
    let out = attune()
        .args(["run", spec.to_str().unwrap(), "--quiet", "--out"])
        .arg(tmp.path().join("o"))
        .env("ATTUNE_DATA_DIR", tmp.path().join("nothing-here"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("run `scripts/fetch-data.sh`"), "{err}");
}

#[test]
fn sample_job_in_embedded_mode_writes_result_and_curve() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("llm")).unwrap();
    attune_engine::llm::tiny::write_gguf(
        &data.join("llm/tiny.gguf"),
        4,
        candle_core::quantized::GgmlDType::F32,
    )
    .unwrap();
    // One answer problem and one code problem judged in the sandbox.
    write(
        &data.join("p.jsonl"),
        "{\"id\": \"a\", \"prompt\": \"2+2?\", \"answer\": 4}\n{\"id\": \"c\", \"prompt\": \"def f():\\n\", \"tests\": \"assert f() == 1\"}\n",
    );
    let spec = tmp.path().join("s.toml");
    write(
        &spec,
        "kind = \"sample\"\nn = 3\nprompt_style = \"completion\"\n[model]\npath = \"llm/tiny.gguf\"\n[problems]\nsource = \"jsonl\"\npath = \"p.jsonl\"\n[sampling]\nmax_new_tokens = 5\n",
    );
    let out = attune()
        .args(["run", spec.to_str().unwrap(), "--quiet", "--out"])
        .arg(tmp.path().join("s"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("pass@3 %") && table.contains("majority_vote"),
        "{table}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("s/result.json")).unwrap())
            .unwrap();
    assert_eq!(r["kind"], "sample");
    assert_eq!(r["per_problem"].as_array().unwrap().len(), 2);
    let code = &r["per_problem"][1]["samples"];
    assert_eq!(code.as_array().unwrap().len(), 3);
    assert!(code[0]["verdict"].is_string(), "{code}");
    let svg = std::fs::read_to_string(tmp.path().join("s/pass_at_k.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
}
