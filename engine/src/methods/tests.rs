use super::*;
use crate::models::{Architecture, ModelInfo, Normalization};
use crate::nn::BnMode;
use crate::ops::test_util::randn;
use candle_core::Device;

fn tiny_model(seed: u64) -> Model {
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
        train_spec: serde_json::Value::Null,
        test_accuracy: None,
        engine_version: crate::ENGINE_VERSION.into(),
    };
    let m = Model::init(info, seed, &Device::Cpu).unwrap();
    // Give the running statistics non-trivial values, as a trained model has.
    for _ in 0..3 {
        m.forward(&batch(16, seed + 100), BnMode::Train).unwrap();
    }
    m
}

/// Images in [0, 1].
fn batch(n: usize, seed: u64) -> Tensor {
    randn(&[n, 1, 12, 12], seed)
        .affine(0.2, 0.4)
        .unwrap()
        .clamp(0.0, 1.0)
        .unwrap()
}

fn values(m: &Model) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<(String, Vec<f32>)> = m
        .store()
        .tensors()
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn norm_test_equals_source_when_batch_stats_equal_running_stats() {
    let m = tiny_model(1);
    let x = batch(8, 2);
    let with_batch = m.forward(&x, BnMode::Batch).unwrap();
    // Make every layer's running statistics the ones this batch produced.
    for bn in m.bns() {
        let s = bn.last_batch_stats().unwrap();
        bn.set_running_stats(s.mean, s.var);
    }
    let source = build(&MethodSpec::Source, m)
        .unwrap()
        .adapt_and_predict(&x)
        .unwrap()
        .logits;
    let norm = host(&with_batch).unwrap();
    let worst = source
        .iter()
        .zip(&norm)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "max |source − norm_test| = {worst}");
}

#[test]
fn norm_test_differs_from_source_on_ordinary_statistics() {
    let x = batch(8, 2);
    let a = build(&MethodSpec::Source, tiny_model(1))
        .unwrap()
        .adapt_and_predict(&x)
        .unwrap()
        .logits;
    let b = build(&MethodSpec::NormTest, tiny_model(1))
        .unwrap()
        .adapt_and_predict(&x)
        .unwrap()
        .logits;
    assert!(a.iter().zip(&b).any(|(a, b)| (a - b).abs() > 1e-3));
}

#[test]
fn source_predictions_do_not_depend_on_batch_size() {
    let x = batch(6, 3);
    let mut m = build(&MethodSpec::Source, tiny_model(1)).unwrap();
    let all = m.adapt_and_predict(&x).unwrap().logits;
    for i in 0..6 {
        let one = m
            .adapt_and_predict(&x.narrow(0, i, 1).unwrap())
            .unwrap()
            .logits;
        for (a, b) in one.iter().zip(&all[i * 5..(i + 1) * 5]) {
            assert!((a - b).abs() < 1e-5, "sample {i}: {a} vs {b}");
        }
    }
}

fn tent() -> MethodSpec {
    MethodSpec::Tent {
        optimizer: OptimizerSpec::tent_default(),
        steps: 1,
    }
}

#[test]
fn tent_changes_exactly_the_bn_affine_parameters() {
    let mut m = build(&tent(), tiny_model(4)).unwrap();
    let before = values(m.model());
    m.adapt_and_predict(&batch(16, 5)).unwrap();
    let after = values(m.model());
    let adapted = m.adapted_parameters();
    assert_eq!(
        adapted,
        vec![
            "features.0.0.bn.weight",
            "features.0.0.bn.bias",
            "features.1.0.bn.weight",
            "features.1.0.bn.bias"
        ]
    );
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        let changed = b.iter().zip(a).filter(|(x, y)| x != y).count();
        if adapted.contains(name) {
            // Adam's first step moves every element with a non-zero gradient by lr.
            assert!(
                changed == b.len(),
                "{name}: only {changed}/{} elements changed",
                b.len()
            );
            for (x, y) in b.iter().zip(a) {
                assert!(
                    ((x - y).abs() - 1e-3).abs() < 1e-5,
                    "{name}: step {}",
                    (x - y).abs()
                );
            }
        } else {
            assert_eq!(
                changed, 0,
                "{name} must not change (it is not a BN affine parameter)"
            );
        }
    }
    assert_eq!(m.counters().updates, 1);
}

#[test]
fn tent_prediction_comes_from_the_forward_pass_before_the_update() {
    let x = batch(16, 5);
    let expect = host(&tiny_model(4).forward(&x, BnMode::Batch).unwrap()).unwrap();
    let mut m = build(&tent(), tiny_model(4)).unwrap();
    assert_eq!(m.adapt_and_predict(&x).unwrap().logits, expect);
    // The second call sees the updated parameters.
    assert_ne!(m.adapt_and_predict(&x).unwrap().logits, expect);
}

#[test]
fn tent_lowers_the_entropy_of_a_repeated_batch() {
    let x = batch(32, 6);
    let spec = MethodSpec::Tent {
        optimizer: OptimizerSpec::Adam {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        steps: 1,
    };
    let mut m = build(&spec, tiny_model(7)).unwrap();
    let ent = |l: &[f32]| -> f64 {
        l.chunks(5)
            .map(|r| {
                let lp = crate::metrics::log_softmax(r);
                crate::metrics::entropy(&lp.iter().map(|v| v.exp()).collect::<Vec<_>>())
            })
            .sum::<f64>()
    };
    let first = ent(&m.adapt_and_predict(&x).unwrap().logits);
    for _ in 0..20 {
        m.adapt_and_predict(&x).unwrap();
    }
    let last = ent(&m.adapt_and_predict(&x).unwrap().logits);
    assert!(last < first * 0.9, "entropy {first} → {last}");
}

#[test]
fn nan_batch_skips_the_update_and_keeps_weights_finite() {
    let mut m = build(&tent(), tiny_model(4)).unwrap();
    let before = values(m.model());
    let x = (batch(8, 5) * f64::NAN).unwrap();
    let out = m.adapt_and_predict(&x).unwrap();
    assert!(out.skipped_update);
    assert_eq!(values(m.model()), before);
    assert_eq!(
        m.counters(),
        Counters {
            updates: 0,
            skipped_updates: 1
        }
    );
    assert!(!m.model().store().has_non_finite().unwrap());
    // A good batch afterwards still adapts.
    assert!(!m.adapt_and_predict(&batch(8, 6)).unwrap().skipped_update);
}

#[test]
fn reset_restores_everything_so_episodic_equals_fresh() {
    let (x1, x2) = (batch(16, 8), batch(16, 9));
    let mut m = build(&tent(), tiny_model(4)).unwrap();
    let initial = values(m.model());
    m.adapt_and_predict(&x1).unwrap();
    m.adapt_and_predict(&x1).unwrap();
    m.reset().unwrap();
    assert_eq!(values(m.model()), initial);
    assert_eq!(m.counters(), Counters::default());
    // After reset the method behaves exactly like a fresh one, optimizer moments included.
    let a = m.adapt_and_predict(&x2).unwrap().logits;
    let a2 = m.adapt_and_predict(&x2).unwrap().logits;
    let mut fresh = build(&tent(), tiny_model(4)).unwrap();
    assert_eq!(fresh.adapt_and_predict(&x2).unwrap().logits, a);
    assert_eq!(fresh.adapt_and_predict(&x2).unwrap().logits, a2);
}

#[test]
fn batch_statistics_methods_refuse_batch_size_one() {
    for spec in [MethodSpec::NormTest, tent()] {
        let mut m = build(&spec, tiny_model(1)).unwrap();
        let err = m.adapt_and_predict(&batch(1, 1)).err().unwrap().to_string();
        assert!(err.contains("batch"), "{err}");
    }
}

#[test]
fn method_names_parse_from_strings_and_tables() {
    assert_eq!(
        MethodSpec::from_value(serde_json::json!("source")).unwrap(),
        MethodSpec::Source
    );
    assert_eq!(
        MethodSpec::from_value(serde_json::json!("bn")).unwrap(),
        MethodSpec::NormTest
    );
    let t = MethodSpec::from_value(serde_json::json!({"method": "tent", "steps": 2})).unwrap();
    assert_eq!(
        t,
        MethodSpec::Tent {
            optimizer: OptimizerSpec::tent_default(),
            steps: 2
        }
    );
    let e = MethodSpec::from_value(serde_json::json!("tnet"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "unknown method `tnet`; valid names: source, norm_test, tent"
    );
    let e = MethodSpec::from_value(serde_json::json!({"method": "tent", "lr": 0.1}))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown field `lr`") && e.contains("optimizer"),
        "{e}"
    );
}
