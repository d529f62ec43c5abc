//! Jobs end to end on a small synthetic dataset written in the real IDX layout: train a model,
//! adapt it, evaluate it; determinism; errors for bad input; cancellation.

use attune_engine::data::{synthetic, Dataset};
use attune_engine::jobs::{self, CancelToken, Context, Event, JobResult, JobSpec, Observer, Quiet};
use attune_engine::EngineError;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Data dir and a trained checkpoint, made once for all tests of this file.
struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    model: PathBuf,
    test_error: f64,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        synthetic::write(&data, Dataset::FashionMnist, 1200, 400, 1).unwrap();
        let spec = JobSpec::from_value(json!({
            "kind": "train", "dataset": "fashion_mnist", "epochs": 3, "val_size": 200, "hflip": false,
            "architecture": {"arch": "cnn", "channels": [8, 16, 16]}, "seed": 3
        }))
        .unwrap();
        let out = dir.path().join("train");
        let JobResult::Train(r) = run(&spec, &data, &out).unwrap() else {
            panic!("train job returned another kind")
        };
        Fixture {
            model: out.join("model.safetensors"),
            test_error: r.test.error,
            data,
            _dir: dir,
        }
    })
}

fn run(spec: &JobSpec, data: &Path, out: &Path) -> Result<JobResult, EngineError> {
    let mut ctx = Context {
        data_dir: data.to_path_buf(),
        out_dir: out.to_path_buf(),
        observer: &mut Quiet,
        cancel: CancelToken::new(),
    };
    jobs::run(spec, &mut ctx)
}

fn adapt_spec(seed: u64) -> serde_json::Value {
    json!({
        "kind": "adapt", "model": fixture().model, "corruptions": ["gaussian_noise", "contrast"],
        "severity": 5, "n_examples": 120, "batch_size": 40, "seed": seed,
        "methods": ["source", "norm_test", {"method": "tent"}]
    })
}

#[test]
fn train_learns_the_synthetic_task_and_saves_a_checkpoint() {
    let f = fixture();
    assert!(f.test_error < 0.2, "clean test error {}", f.test_error);
    assert!(f.model.exists() && f.model.with_extension("json").exists());
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.model.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(info["dataset"], "fashion_mnist");
    assert_eq!(info["architecture"]["arch"], "cnn");
    assert_eq!(info["data_sha256"].as_object().unwrap().len(), 4);
    assert_eq!(info["train_spec"]["seed"], 3);
}

#[test]
fn adapt_compares_methods_on_one_stream_and_records_provenance() {
    let f = fixture();
    let out = tempfile::tempdir().unwrap();
    let JobResult::Adapt(r) = run(
        &JobSpec::from_value(adapt_spec(0)).unwrap(),
        &f.data,
        out.path(),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(
        r.methods
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["source", "norm_test", "tent"]
    );
    assert_eq!(r.stream.domains.len(), 2);
    assert_eq!(r.stream.domains[0].n, 120);
    for m in &r.methods {
        // 2 domains × 3 batches of 40.
        assert_eq!(m.batches.len(), 6);
        assert_eq!(m.overall.n, 240);
        assert_eq!(m.domains.len(), 2);
        let mean = (m.domains[0].metrics.error + m.domains[1].metrics.error) / 2.0;
        assert!((m.mean.error - mean).abs() < 1e-12);
    }
    // Only TENT adapts weights, and only BN affine ones; its final model is saved.
    assert!(r.methods[0].adapts.is_empty() && r.methods[1].adapts.is_empty());
    assert!(r.methods[2]
        .adapts
        .iter()
        .all(|n| n.ends_with(".bn.weight") || n.ends_with(".bn.bias")));
    assert_eq!(r.methods[2].counters.updates, 6);
    assert!(out.path().join("adapted-tent.safetensors").exists());
    assert!(r.methods[0].checkpoint.is_none());
    // Provenance: spec with defaults, data hashes, model hash, sample lists.
    assert_eq!(r.provenance.spec["setting"], "continual");
    assert_eq!(r.provenance.data_sha256.len(), 2);
    assert_eq!(r.model.sha256.len(), 64);
    let samples: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("samples.json")).unwrap())
            .unwrap();
    assert_eq!(samples["00-gaussian_noise"].as_array().unwrap().len(), 120);
    // Contrast at severity 5 hurts the source model; test-time normalization recovers some.
    let src = r.methods[0].domains[1].metrics.error;
    let bn = r.methods[1].domains[1].metrics.error;
    assert!(
        src > f.test_error,
        "contrast error {src} should exceed clean error {}",
        f.test_error
    );
    assert!(bn < src, "norm_test {bn} vs source {src} on contrast-5");
}

#[test]
fn every_setting_runs_every_method_on_one_stream() {
    let f = fixture();
    let methods = json!([
        "source", "norm_test", "norm_alpha", "tent", {"method": "eata", "fisher_size": 100},
        "sar", "deyo", "crowds", "lame", {"method": "norm_alpha", "core": true},
        {"method": "cotta", "n_augmentations": 2}, {"method": "petal", "n_augmentations": 2},
        {"method": "rmt", "source_samples": 100}, "unmix_tns",
        {"method": "unmix_tns", "base": {"method": "eata", "fisher_size": 100}},
        {"method": "adanpc", "source_samples": 100, "memory_size": 150},
        {"method": "cafa", "source_samples": 100}
    ]);
    for (setting, extra) in [
        ("mixed_domains", json!({})),
        ("correlated", json!({})),
        ("mixed_domains_correlated", json!({"dirichlet_delta": 0.1})),
        (
            "gradual",
            json!({"corruptions": ["fog", "contrast"], "n_examples": 20}),
        ),
        ("continual", json!({"episodic": true})),
        ("reset_each_shift", json!({"reset_every": 2})),
    ] {
        let mut v = adapt_spec(1);
        v["setting"] = json!(setting);
        v["methods"] = methods.clone();
        v["save_checkpoints"] = json!(false);
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        let out = tempfile::tempdir().unwrap();
        let JobResult::Adapt(r) = run(
            &JobSpec::from_value(v.clone()).unwrap(),
            &f.data,
            out.path(),
        )
        .unwrap_or_else(|e| panic!("{setting}: {e}")) else {
            panic!()
        };
        let n_dom = if setting == "gradual" { 5 + 9 } else { 2 };
        assert_eq!(r.stream.domains.len(), n_dom, "{setting}");
        let per_domain = r.stream.domains[0].n;
        let total = per_domain * n_dom;
        let mixed = setting.starts_with("mixed");
        assert_eq!(
            r.stream.segments.len(),
            if mixed { 1 } else { n_dom },
            "{setting}"
        );
        assert_eq!(
            r.stream.order_file.is_some(),
            mixed || setting.contains("correlated")
        );
        for m in &r.methods {
            assert_eq!(m.overall.n, total, "{setting} {}", m.name);
            assert_eq!(m.domains.len(), n_dom);
            // Per-domain metrics are per sample, in mixed streams too.
            assert!(
                m.domains.iter().all(|d| d.metrics.n == per_domain),
                "{setting} {}",
                m.name
            );
            let fg = m.forgetting.expect("forgetting on by default");
            assert_eq!(
                fg.before.n, per_domain,
                "forgetting uses n_examples clean images"
            );
            // adanpc (memory) and unmix_tns (statistics components) adapt no parameter but
            // carry state, so they may forget.
            if m.adapts.is_empty() && !["adanpc", "unmix_tns"].contains(&m.name.as_str()) {
                assert_eq!(
                    fg.before, fg.after,
                    "{setting} {}: frozen methods forget nothing",
                    m.name
                );
            }
        }
        // Every method saw the same batches: the source method's batch sizes are everyone's.
        let sizes: Vec<usize> = r.methods[0].batches.iter().map(|b| b.n).collect();
        assert!(r
            .methods
            .iter()
            .all(|m| m.batches.iter().map(|b| b.n).collect::<Vec<_>>() == sizes));
        let tent = r.methods.iter().find(|m| m.name == "tent").unwrap();
        let batches = sizes.len() as u64;
        match setting {
            "continual" => assert_eq!(
                tent.resets,
                batches - 1,
                "episodic resets before every batch but the first"
            ),
            // 2 domains × 3 batches: reset after batch 2 of each domain, and at the shift.
            "reset_each_shift" => assert_eq!(tent.resets, 3),
            _ => assert_eq!(tent.resets, 0),
        }
        let eata = r.methods.iter().find(|m| m.name == "eata").unwrap();
        assert!(r
            .stream
            .clean_samples
            .as_ref()
            .is_some_and(|c| c.n == 100 && c.split == "train"));
        assert!(eata.counters.updates + eata.counters.empty_batches > 0);
        if let Some(f) = &r.stream.order_file {
            let order: Vec<Vec<(usize, usize)>> =
                serde_json::from_str(&std::fs::read_to_string(out.path().join(f)).unwrap())
                    .unwrap();
            assert_eq!(order.iter().map(|s| s.len()).sum::<usize>(), total);
        }
    }
}

#[test]
fn collapse_alarm_fires_when_a_method_falls_far_behind_the_source() {
    let f = fixture();
    let mut v = adapt_spec(2);
    // TENT with a huge learning rate on a label-sorted stream collapses; a zero margin and a
    // one-batch window make the alarm fire as soon as it is worse than the source model.
    v["setting"] = json!("correlated");
    v["methods"] = json!(["source", {"method": "tent", "optimizer": {"name": "sgd", "lr": 5.0}}]);
    v["collapse_margin"] = json!(0.0);
    v["collapse_window"] = json!(1);
    let out = tempfile::tempdir().unwrap();
    let JobResult::Adapt(r) = run(&JobSpec::from_value(v).unwrap(), &f.data, out.path()).unwrap()
    else {
        panic!()
    };
    assert!(
        r.methods[0].collapse.is_empty(),
        "the source model never trails itself"
    );
    let tent = &r.methods[1];
    assert!(
        !tent.collapse.is_empty(),
        "tent at lr 5 on a sorted stream: {:?}",
        tent.mean
    );
    let a = tent.collapse[0];
    assert!(a.error > a.source_error && a.batches >= 1);
}

#[test]
fn same_spec_and_seed_give_byte_identical_results() {
    let f = fixture();
    let render = |seed: u64| {
        let out = tempfile::tempdir().unwrap();
        let r = run(
            &JobSpec::from_value(adapt_spec(seed)).unwrap(),
            &f.data,
            out.path(),
        )
        .unwrap();
        serde_json::to_string_pretty(&r).unwrap()
    };
    let a = render(5);
    assert_eq!(a, render(5));
    assert_ne!(a, render(6));
}

#[test]
fn evaluate_covers_clean_and_every_corruption_severity() {
    let f = fixture();
    let out = tempfile::tempdir().unwrap();
    let spec = JobSpec::from_value(json!({
        "kind": "evaluate", "checkpoints": [f.model], "corruptions": ["fog", "pixelate"],
        "severities": [1, 5], "n_examples": 100
    }))
    .unwrap();
    let JobResult::Evaluate(r) = run(&spec, &f.data, out.path()).unwrap() else {
        panic!()
    };
    let rows = &r.checkpoints[0].rows;
    assert_eq!(rows.len(), 1 + 2 * 2);
    assert_eq!((rows[0].domain.as_str(), rows[0].severity), ("clean", 0));
    assert_eq!((rows[4].domain.as_str(), rows[4].severity), ("pixelate", 5));
    assert_eq!(r.checkpoints[0].by_severity.len(), 2);
    // The clean row scores 100 of the same test images the train job scored (all 400).
    assert!(
        (rows[0].metrics.error - f.test_error).abs() < 0.1,
        "{} vs {}",
        rows[0].metrics.error,
        f.test_error
    );
}

#[test]
fn bad_specs_name_the_problem_and_the_valid_choices() {
    let f = fixture();
    let err = |v: serde_json::Value| JobSpec::from_value(v).unwrap_err().to_string();
    let e = err(json!({"kind": "adapt", "model": "m", "methods": ["source"], "severty": 5}));
    assert!(
        e.contains("unknown field `severty`") && e.contains("severity") && e.contains("seed"),
        "{e}"
    );
    let e =
        err(json!({"kind": "adapt", "model": "m", "methods": ["source"], "corruptions": ["rain"]}));
    assert!(
        e.contains("rain") && e.contains("gaussian_noise") && e.contains("jpeg_compression"),
        "{e}"
    );
    let e = err(json!({"kind": "adapt", "model": "m", "methods": ["sarr"]}));
    assert!(
        e.contains("unknown method `sarr`; valid names: source, norm_test, norm_alpha, tent, eata"),
        "{e}"
    );
    let e = err(json!({"kind": "adapt", "model": "m", "methods": ["source"], "severity": 7}));
    assert!(e.contains("severity must be 1 to 5, got 7"), "{e}");
    let e = err(json!({"kind": "fit"}));
    assert!(
        e.contains("unknown variant `fit`") && e.contains("train"),
        "{e}"
    );
    let e = err(json!({"kind": "train", "dataset": "cifar10"}));
    assert!(e.contains("cifar10") && e.contains("fashion_mnist"), "{e}");
    let e = err(json!({"kind": "train", "dataset": "mnist", "device": "tpu"}));
    assert!(e.contains("device must be `cpu` or `cuda:N`"), "{e}");
    // A type error inside a kind names its field (serde's tagged enums alone do not).
    let e = err(json!({"kind": "train", "dataset": "mnist", "epochs": "many"}));
    assert!(
        e.starts_with("invalid spec: field `epochs`: invalid type"),
        "{e}"
    );
    let e = err(
        json!({"kind": "train", "dataset": "mnist", "architecture": {"arch": "cnn", "channels": [8, "x"]}}),
    );
    assert!(e.contains("field `architecture"), "{e}");
    // A device this build or machine lacks is still a valid name (an api validates specs
    // for gpu workers); running it reports the device.
    assert!(
        JobSpec::from_value(json!({"kind": "train", "dataset": "mnist", "device": "cuda:0"}))
            .is_ok()
    );

    // Missing data: the message names the command that fetches it.
    let empty = tempfile::tempdir().unwrap();
    let spec = JobSpec::from_value(adapt_spec(0)).unwrap();
    let e = run(&spec, empty.path(), empty.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("scripts/fetch-data.sh"), "{e}");

    // A corrupt checkpoint: the error names the file.
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("m.safetensors");
    std::fs::copy(&f.model, &bad).unwrap();
    std::fs::copy(f.model.with_extension("json"), d.path().join("m.json")).unwrap();
    std::fs::write(&bad, b"not a checkpoint").unwrap();
    let mut v = adapt_spec(0);
    v["model"] = json!(bad);
    let e = run(&JobSpec::from_value(v).unwrap(), &f.data, d.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("m.safetensors"), "{e}");

    // A truncated IDX file: the error names the file and what was expected.
    let data2 = tempfile::tempdir().unwrap();
    synthetic::write(data2.path(), Dataset::FashionMnist, 10, 10, 0).unwrap();
    let p = data2.path().join("fashion_mnist/t10k-images-idx3-ubyte");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let e = run(&spec, data2.path(), data2.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t10k-images-idx3-ubyte") && e.contains("truncated"),
        "{e}"
    );
}

struct CancelAfter(CancelToken, usize);
impl Observer for CancelAfter {
    fn event(&mut self, e: Event) {
        if let Event::Metric { .. } = e {
            self.1 -= 1;
            if self.1 == 0 {
                self.0.cancel();
            }
        }
    }
}

#[test]
fn cancellation_stops_between_batches() {
    let f = fixture();
    let token = CancelToken::new();
    let mut obs = CancelAfter(token.clone(), 2);
    let mut ctx = Context {
        data_dir: f.data.clone(),
        out_dir: tempfile::tempdir().unwrap().path().to_path_buf(),
        observer: &mut obs,
        cancel: token,
    };
    let e = jobs::run(&JobSpec::from_value(adapt_spec(0)).unwrap(), &mut ctx).unwrap_err();
    assert!(matches!(e, EngineError::Cancelled), "{e}");
}
