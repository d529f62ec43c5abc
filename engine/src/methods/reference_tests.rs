//! Every method against PyTorch: `scripts/reference/tta_reference.py` runs each method's loss
//! and one adaptation step (two for EATA) on a fixed tiny model and batch, written as the
//! official code writes them, and saves the inputs, weights and outputs in
//! `engine/tests/fixtures/tta_reference.json`. Logits and updated BN parameters must agree to
//! 1e-4.

use super::*;
use crate::data::ImageSet;
use crate::models::{Architecture, ModelInfo, Normalization};
use candle_core::Device;
use serde_json::Value;
use std::sync::OnceLock;

const TOL: f32 = 1e-4;

fn fixture() -> &'static Value {
    static F: OnceLock<Value> = OnceLock::new();
    F.get_or_init(|| {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tta_reference.json"
        );
        serde_json::from_str(&std::fs::read_to_string(p).expect("fixture")).expect("json")
    })
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn input(key: &str) -> Tensor {
    Tensor::from_vec(floats(&fixture()[key]), (16, 1, 12, 12), &Device::Cpu).unwrap()
}

/// The fixture's model: Attune's `cnn` [4, 8] on 12×12, weights and statistics from PyTorch.
fn model() -> Model {
    let info = ModelInfo {
        architecture: Architecture::Cnn {
            channels: vec![4, 8],
            convs_per_stage: 1,
        },
        input: [1, 12, 12],
        num_classes: 5,
        normalization: Normalization {
            mean: vec![0.3],
            std: vec![0.2],
        },
        dataset: "test".into(),
        data_sha256: Default::default(),
        train_spec: Value::Null,
        test_accuracy: None,
        engine_version: crate::ENGINE_VERSION.into(),
    };
    let m = Model::init(info, 0, &Device::Cpu).unwrap();
    let w = fixture()["weights"].as_object().unwrap();
    let mut set = 0;
    for p in m.store().params() {
        let v = floats(&w[p.name()]);
        let t = Tensor::from_vec(v, p.var().shape(), &Device::Cpu).unwrap();
        p.var().set(&t).unwrap();
        set += 1;
    }
    for b in m.store().buffers() {
        b.set(floats(&w[b.name()]));
        set += 1;
    }
    assert_eq!(set, w.len(), "every fixture tensor maps onto the model");
    m
}

fn clean() -> &'static ImageSet {
    static S: OnceLock<ImageSet> = OnceLock::new();
    S.get_or_init(|| ImageSet {
        images: fixture()["clean_u8"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u8)
            .collect(),
        labels: match fixture()["clean_labels"].as_array() {
            Some(a) => a.iter().map(|v| v.as_u64().unwrap() as u8).collect(),
            None => vec![0; 64],
        },
        height: 12,
        width: 12,
    })
}

fn env() -> MethodEnv<'static> {
    MethodEnv {
        load_source: &|| Ok(model()),
        clean: Some(clean()),
        batch_size: 16,
        seed: 0,
    }
}

fn case(name: &str) -> &'static Value {
    &fixture()["cases"][name]
}

fn spec(name: &str) -> MethodSpec {
    MethodSpec::from_value(case(name)["spec"].clone()).unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (i, d) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0f32), |b, (i, d)| if d > b.1 { (i, d) } else { b });
    assert!(
        d <= TOL * (1.0 + want[i].abs()),
        "{what}: element {i}: {} vs PyTorch {} (|Δ| = {d:e})",
        got[i],
        want[i]
    );
}

fn assert_affine(what: &str, m: &dyn Method, want: &Value) {
    let want = want.as_object().unwrap();
    assert_eq!(m.adapted_parameters().len(), want.len());
    for p in m.model().store().params() {
        if let Some(w) = want.get(p.name()) {
            let got = p
                .var()
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_close(&format!("{what} {}", p.name()), &got, &floats(w));
        }
    }
}

/// The BN affine parameters must actually have moved (a step that changes nothing would pass
/// the comparison only if PyTorch did not move them either).
fn assert_moved(m: &dyn Method) {
    let before = model();
    let moved = m
        .model()
        .store()
        .params()
        .iter()
        .zip(before.store().params())
        .filter(|(a, b)| {
            let a = a
                .var()
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let b = b
                .var()
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            a != b
        })
        .count();
    assert_eq!(moved, 4, "exactly the 4 BN affine tensors change");
}

fn run_one(name: &str) -> Box<dyn Method> {
    let mut m = build(&spec(name), model(), &env()).unwrap();
    let out = m.adapt_and_predict(&input("x")).unwrap();
    assert!(!out.skipped_update);
    assert_close(name, &out.logits, &floats(&case(name)["logits"]));
    m
}

#[test]
fn frozen_methods_match_pytorch() {
    for name in ["source", "norm_test", "norm_alpha"] {
        run_one(name);
    }
}

#[test]
fn tent_matches_pytorch() {
    let m = run_one("tent");
    assert_affine("tent", m.as_ref(), &case("tent")["after"]);
    assert_moved(m.as_ref());
}

#[test]
fn tent_with_crowds_filter_matches_pytorch() {
    let m = run_one("tent_crowds");
    assert_eq!(
        m.counters().samples_used,
        case("tent_crowds")["kept"].as_u64().unwrap()
    );
    assert_affine("tent+crowds", m.as_ref(), &case("tent_crowds")["after"]);
}

#[test]
fn eata_two_steps_match_pytorch() {
    let c = case("eata");
    let mut m = build(&spec("eata"), model(), &env()).unwrap();
    let out = m.adapt_and_predict(&input("x")).unwrap();
    assert_close("eata batch 1", &out.logits, &floats(&c["logits"]));
    assert_eq!(m.counters().samples_used, c["kept"].as_u64().unwrap());
    assert_affine("eata step 1", m.as_ref(), &c["after"]);
    // The second batch meets the redundancy filter (the moving average of probabilities).
    let out = m.adapt_and_predict(&input("x2")).unwrap();
    assert_close("eata batch 2", &out.logits, &floats(&c["logits2"]));
    let kept2 = c["kept2"].as_u64().unwrap();
    assert!(kept2 > 0 && kept2 < 16, "fixture keeps part of batch 2");
    assert_eq!(
        m.counters().samples_used,
        c["kept"].as_u64().unwrap() + kept2
    );
    assert_affine("eata step 2", m.as_ref(), &c["after2"]);
    assert_moved(m.as_ref());
}

#[test]
fn sar_matches_pytorch() {
    let m = run_one("sar");
    assert_eq!(
        m.counters().samples_used,
        case("sar")["kept"].as_u64().unwrap()
    );
    assert_affine("sar", m.as_ref(), &case("sar")["after"]);
    assert_moved(m.as_ref());
}

#[test]
fn deyo_matches_pytorch_with_the_same_patch_permutations() {
    let c = case("deyo");
    let perms: Vec<Vec<usize>> = c["perms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect()
        })
        .collect();
    let mut m = deyo::Deyo::new(model(), &spec("deyo"), None, 0).unwrap();
    m.set_fixed_perms(perms);
    let out = m.adapt_and_predict(&input("x")).unwrap();
    assert_close("deyo", &out.logits, &floats(&c["logits"]));
    assert_eq!(m.counters().samples_used, c["kept"].as_u64().unwrap());
    assert_affine("deyo", &m, &c["after"]);
    assert_moved(&m);
}

#[test]
fn lame_matches_pytorch_for_every_affinity() {
    for kind in ["rbf", "knn", "linear"] {
        let name = format!("lame_{kind}");
        let mut m = build(&spec(&name), model(), &env()).unwrap();
        let logp = m.adapt_and_predict(&input("x")).unwrap().logits;
        let probs: Vec<f32> = logp.iter().map(|v| v.exp()).collect();
        assert_close(&name, &probs, &floats(&case(&name)["probs"]));
    }
}

/// Every named tensor of `want` against the model's parameter of that name.
fn assert_params(what: &str, m: &Model, want: &Value) {
    let want = want.as_object().unwrap();
    let mut seen = 0;
    for p in m.store().params() {
        if let Some(w) = want.get(p.name()) {
            let got = p
                .var()
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_close(&format!("{what} {}", p.name()), &got, &floats(w));
            seen += 1;
        }
    }
    assert_eq!(
        seen,
        want.len(),
        "{what}: every fixture tensor was compared"
    );
}

fn views() -> Vec<Tensor> {
    fixture()["views"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| Tensor::from_vec(floats(v), (16, 1, 12, 12), &Device::Cpu).unwrap())
        .collect()
}

#[test]
fn norm_alpha_core_matches_pytorch() {
    let m = run_one("norm_alpha_core");
    assert_affine(
        "norm_alpha+core",
        m.as_ref(),
        &case("norm_alpha_core")["after"],
    );
    assert_moved(m.as_ref());
}

#[test]
fn cotta_matches_pytorch_with_the_same_views_and_restore_masks() {
    let c = case("cotta");
    let mut m = cotta::Cotta::new(model(), &spec("cotta"), &env()).unwrap();
    let masks: Vec<Vec<bool>> = m
        .model()
        .store()
        .trainable()
        .iter()
        .map(|p| {
            c["masks"][p.name()]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() == 1)
                .collect()
        })
        .collect();
    m.set_fixed(views(), Some(masks));
    let out = m.adapt_and_predict(&input("x")).unwrap();
    assert!(!out.skipped_update);
    assert_close("cotta teacher target", &out.logits, &floats(&c["logits"]));
    assert_params("cotta student", m.model(), &c["after"]);
    assert_params("cotta teacher", m.teacher(), &c["teacher_after"]);
}

#[test]
fn petal_two_steps_match_pytorch() {
    let c = case("petal");
    let mut m = petal::petal(model(), &spec("petal"), &env()).unwrap();
    m.set_fixed(views(), None);
    let out = m.adapt_and_predict(&input("x")).unwrap();
    assert_close("petal batch 1", &out.logits, &floats(&c["logits"]));
    assert!(
        c["restored1"].as_u64().unwrap() > 0,
        "the Fisher restore fired"
    );
    let out = m.adapt_and_predict(&input("x2")).unwrap();
    assert_close("petal batch 2", &out.logits, &floats(&c["logits2"]));
    assert_params("petal student", m.model(), &c["after"]);
    assert_params("petal teacher", m.teacher(), &c["teacher_after"]);
}

#[test]
fn rmt_matches_pytorch() {
    let c = case("rmt");
    let mut m = rmt::Rmt::new(model(), &spec("rmt"), &env()).unwrap();
    for p in m.projector().params() {
        let t = Tensor::from_vec(
            floats(&c["projector"][p.name()]),
            p.var().shape(),
            &Device::Cpu,
        )
        .unwrap();
        p.var().set(&t).unwrap();
    }
    m.set_fixed_view(views()[0].clone());
    let out = m.adapt_and_predict(&input("x")).unwrap();
    assert!(!out.skipped_update);
    assert_close("rmt student + teacher", &out.logits, &floats(&c["logits"]));
    assert_params("rmt student", m.model(), &c["after"]);
    let want = c["projector_after"].as_object().unwrap();
    for p in m.projector().params() {
        let got = p
            .var()
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_close(&format!("rmt {}", p.name()), &got, &floats(&want[p.name()]));
    }
    assert_params("rmt teacher", m.teacher(), &c["teacher_after"]);
}

fn set_components(m: &Model, c: &Value, key: &str) {
    for bn_i in 0..2 {
        let name = format!("features.{bn_i}.0.bn");
        let pair = c[key][&name].as_array().unwrap();
        let bn = m.bns()[bn_i];
        let mut st = bn.unmix().unwrap();
        st.means = floats(&pair[0]);
        st.vars = floats(&pair[1]);
        bn.set_unmix(Some(st));
    }
}

fn assert_components(what: &str, m: &Model, c: &Value) {
    for bn_i in 0..2 {
        let name = format!("features.{bn_i}.0.bn");
        let pair = c["components_after"][&name].as_array().unwrap();
        let st = m.bns()[bn_i].unmix().unwrap();
        assert_close(
            &format!("{what} {name} means"),
            &st.means,
            &floats(&pair[0]),
        );
        assert_close(&format!("{what} {name} vars"), &st.vars, &floats(&pair[1]));
    }
}

#[test]
fn unmix_tns_alone_and_under_tent_match_pytorch() {
    for name in ["unmix_tns", "unmix_tns_tent"] {
        let c = case(name);
        let mut m = build(&spec(name), model(), &env()).unwrap();
        set_components(m.model(), c, "init");
        let out = m.adapt_and_predict(&input("x")).unwrap();
        assert_close(name, &out.logits, &floats(&c["logits"]));
        assert_components(name, m.model(), c);
        if !c["after"].is_null() {
            assert_affine(name, m.as_ref(), &c["after"]);
            assert_moved(m.as_ref());
        }
    }
}

#[test]
fn adanpc_votes_and_memory_match_pytorch() {
    let c = case("adanpc");
    let mut m = build(&spec("adanpc"), model(), &env()).unwrap();
    let to_p = |l: Vec<f32>| l.iter().map(|v| v.exp()).collect::<Vec<_>>();
    let p1 = to_p(m.adapt_and_predict(&input("x")).unwrap().logits);
    assert_close("adanpc batch 1", &p1, &floats(&c["probs"]));
    let kept = c["kept"].as_u64().unwrap();
    assert!(
        kept > 0 && kept < 16,
        "the fixture's beta keeps part of the batch"
    );
    assert_eq!(m.counters().samples_used, kept);
    // The second batch is voted on by a memory that now holds batch 1's confident samples.
    let p2 = to_p(m.adapt_and_predict(&input("x2")).unwrap().logits);
    assert_close("adanpc batch 2", &p2, &floats(&c["probs2"]));
    assert_eq!(
        m.counters().samples_used,
        kept + c["kept2"].as_u64().unwrap()
    );
}

#[test]
fn cafa_matches_pytorch_for_both_covariances() {
    // 64 clean samples of 288 features: the shared covariance goes through the Woodbury
    // identity here, PyTorch inverts the 288 × 288 matrix directly.
    for name in ["cafa", "cafa_diagonal"] {
        let m = run_one(name);
        assert_affine(name, m.as_ref(), &case(name)["after"]);
        assert_moved(m.as_ref());
    }
}
