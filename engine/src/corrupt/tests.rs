//! Tests of the public corruption API: names, determinism, batch = one by one, severity ordering
//! on synthetic digit-like images, PSNR.

use super::*;

const W: usize = 28;
const H: usize = 28;

/// 20 synthetic 28×28 test images, MNIST-like: soft (anti-aliased) filled ellipses with a radial
/// gradient, rings, sinusoidal gratings of non-integer period, letter-like strokes ("7", "L", "T",
/// "X") and a blob with a hole; graded intensities, centres shifted by fractional amounts, mostly
/// black backgrounds with a few gray ones.
fn test_images() -> Vec<Vec<u8>> {
    // 1 inside, 0 outside, linear ramp over 1.4 px around the boundary `d = 0` (d < 0 inside)
    let soft = |d: f64| (0.5 - d / 1.4).clamp(0.0, 1.0);
    let mut imgs = Vec::new();
    for k in 0..20usize {
        let kf = k as f64;
        let bg = if k % 7 == 3 { 40.0 + 3.0 * kf } else { 0.0 };
        let (ox, oy) = (11.1 + 1.37 * (kf % 4.0), 15.6 - 1.29 * (kf % 3.0));
        let mut img = vec![0u8; W * H];
        for y in 0..H {
            for x in 0..W {
                let (fx, fy) = (x as f64 - ox, y as f64 - oy);
                let (fg, cover): (f64, f64) = match k % 5 {
                    // filled ellipse with a radial gradient
                    0 => {
                        let (a, b) = (6.0 + (k % 4) as f64 * 0.8, 9.0 - (k % 3) as f64 * 0.9);
                        let r = ((fx / a).powi(2) + (fy / b).powi(2)).sqrt();
                        (255.0 - 120.0 * r.min(1.0), soft((r - 1.0) * a.min(b)))
                    }
                    // ring
                    1 => {
                        let r = (fx * fx + fy * fy).sqrt();
                        let r0 = 7.0 + (k % 4) as f64 * 0.9;
                        let half = 1.8 + (k % 2) as f64 * 0.7;
                        (200.0 + 5.0 * kf.min(11.0), soft((r - r0).abs() - half))
                    }
                    // sinusoidal grating, direction and period vary, inside a soft disc
                    2 => {
                        let period = 3.3 + 0.7 * (k % 5) as f64;
                        let ang = 0.4 + 0.9 * kf;
                        let t = fx * ang.cos() + fy * ang.sin();
                        let g = 0.5 + 0.5 * (std::f64::consts::TAU * t / period).sin();
                        let r = (fx * fx + fy * fy).sqrt();
                        ((90.0 + 8.0 * kf) * g, soft(r - 11.0))
                    }
                    // letter-like strokes: a "7", an "L", a "T", an "X"
                    3 => {
                        let dist_seg = |ax: f64, ay: f64, bx: f64, by: f64| {
                            let (px, py) = (fx + 13.5, fy + 13.5);
                            let (dx, dy) = (bx - ax, by - ay);
                            let t = (((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy))
                                .clamp(0.0, 1.0);
                            ((px - ax - t * dx).powi(2) + (py - ay - t * dy).powi(2)).sqrt()
                        };
                        let d = match k % 4 {
                            0 => dist_seg(6.0, 6.0, 21.0, 6.0).min(dist_seg(21.0, 6.0, 10.0, 22.0)),
                            1 => dist_seg(8.0, 5.0, 8.0, 22.0).min(dist_seg(8.0, 22.0, 20.0, 22.0)),
                            2 => dist_seg(5.0, 6.0, 22.0, 6.0).min(dist_seg(13.5, 6.0, 13.5, 23.0)),
                            _ => dist_seg(6.0, 6.0, 21.0, 21.0).min(dist_seg(21.0, 6.0, 6.0, 21.0)),
                        };
                        (255.0 - 30.0 * d, soft(d - 2.0))
                    }
                    // soft blob with a darker hole
                    _ => {
                        let r = (fx * fx + fy * fy).sqrt();
                        let blob = 230.0 * (-(r * r) / (2.0 * (4.0 + kf * 0.2).powi(2))).exp();
                        let hole = 1.0 - 0.7 * soft(r - 2.0);
                        (blob * hole, 1.0)
                    }
                };
                let v = cover * fg + (1.0 - cover) * bg;
                img[y * W + x] = v.clamp(0.0, 255.0) as u8;
            }
        }
        imgs.push(img);
    }
    imgs
}

#[test]
fn names_parse_display_serde() {
    assert_eq!(Corruption::ALL.len(), 15);
    let names: Vec<&str> = Corruption::ALL.iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        vec![
            "gaussian_noise",
            "shot_noise",
            "impulse_noise",
            "defocus_blur",
            "glass_blur",
            "motion_blur",
            "zoom_blur",
            "snow",
            "frost",
            "fog",
            "brightness",
            "contrast",
            "elastic_transform",
            "pixelate",
            "jpeg_compression"
        ]
    );
    for c in Corruption::ALL {
        assert_eq!(Corruption::parse(c.name()).expect("known name"), c);
        assert_eq!(c.to_string().parse::<Corruption>().expect("known name"), c);
        let json = serde_json::to_string(&c).expect("serialise");
        assert_eq!(json, format!("\"{}\"", c.name()));
        assert_eq!(
            serde_json::from_str::<Corruption>(&json).expect("deserialise"),
            c
        );
    }
    let err = Corruption::parse("speckle_noise").expect_err("not one of the 15");
    match &err {
        EngineError::UnknownName { kind, name, valid } => {
            assert_eq!(*kind, "corruption");
            assert_eq!(name, "speckle_noise");
            assert_eq!(valid.len(), 15);
        }
        other => panic!("expected UnknownName, got {other:?}"),
    }
    assert!(err.to_string().contains("gaussian_noise"));
}

#[test]
fn invalid_arguments_are_invalid_spec() {
    let img = vec![0u8; W * H];
    for sev in [0u8, 6, 255] {
        let e = corrupt_image(&img, W, H, Corruption::Fog, sev, 0, 0).expect_err("bad severity");
        assert!(matches!(e, EngineError::InvalidSpec(_)), "{e:?}");
    }
    let e = corrupt_image(&img[1..], W, H, Corruption::Fog, 1, 0, 0).expect_err("short");
    assert!(matches!(e, EngineError::InvalidSpec(_)), "{e:?}");
    let e = corrupt_image(&img[..49], 7, 7, Corruption::Fog, 1, 0, 0).expect_err("too small");
    assert!(matches!(e, EngineError::InvalidSpec(_)), "{e:?}");
    let e = corrupt_batch(&img[1..], W, H, Corruption::Snow, 2, 0, 0).expect_err("ragged");
    assert!(matches!(e, EngineError::InvalidSpec(_)), "{e:?}");
}

#[test]
fn deterministic_for_every_corruption_and_severity() {
    let imgs = test_images();
    // four structured images so that "different seed, same bytes" by chance is impossible
    let batch: Vec<u8> = [0usize, 6, 13, 19]
        .iter()
        .flat_map(|&i| imgs[i].clone())
        .collect();
    for c in Corruption::ALL {
        for sev in 1..=5u8 {
            let a = corrupt_batch(&batch, W, H, c, sev, 11, 100).expect("corrupt");
            let b = corrupt_batch(&batch, W, H, c, sev, 11, 100).expect("corrupt");
            assert_eq!(a.len(), batch.len(), "{c} s{sev}: output length");
            assert_eq!(a, b, "{c} s{sev}: same seed must give the same bytes");
            let other = corrupt_batch(&batch, W, H, c, sev, 12, 100).expect("corrupt");
            if c.is_random() {
                assert_ne!(
                    a, other,
                    "{c} s{sev}: a different seed must change the bytes"
                );
            } else {
                assert_eq!(
                    a, other,
                    "{c} s{sev}: deterministic corruption ignores the seed"
                );
            }
            // batch == one by one with index = first_index + i
            for (i, img) in batch.chunks(W * H).enumerate() {
                let one = corrupt_image(img, W, H, c, sev, 11, 100 + i as u64).expect("corrupt");
                assert_eq!(
                    &a[i * W * H..(i + 1) * W * H],
                    &one[..],
                    "{c} s{sev}: batch image {i} differs from corrupt_image"
                );
            }
        }
    }
}

#[test]
fn different_index_changes_random_corruptions() {
    let img = &test_images()[3];
    for c in Corruption::ALL.into_iter().filter(|c| c.is_random()) {
        let a = corrupt_image(img, W, H, c, 3, 5, 0).expect("corrupt");
        let b = corrupt_image(img, W, H, c, 3, 5, 1).expect("corrupt");
        assert_ne!(a, b, "{c}: index 0 and 1 gave the same bytes");
    }
}

/// Mean over the test images of the PSNR (capped at 100 dB so that an unchanged image does not
/// make the mean infinite) for each severity.
fn mean_psnr_by_severity(c: Corruption, imgs: &[Vec<u8>]) -> [f64; 5] {
    let mut out = [0.0; 5];
    for (s, slot) in out.iter_mut().enumerate() {
        let mut sum = 0.0;
        for (i, img) in imgs.iter().enumerate() {
            let o = corrupt_image(img, W, H, c, s as u8 + 1, 2024, i as u64).expect("corrupt");
            sum += psnr(img, &o).min(100.0);
        }
        *slot = sum / imgs.len() as f64;
    }
    out
}

/// The pairs `(a, b)` of 0-based severities for which the test asserts `PSNR(a) > PSNR(b)`.
/// Normally every consecutive pair (strictly decreasing PSNR). The exceptions were measured first
/// (the table printed by the test) and each follows from the published parameters:
fn expected_order(c: Corruption) -> Vec<(usize, usize)> {
    match c {
        // σ alternates 0.05/0.25/0.4 then 0.25/0.4 and the iteration count jumps from 1 to 2 at
        // s4. The final blur *raises* PSNR (it smooths the jitter's pixel copies more than it
        // blurs the image), so s3 > s2 ≈ s1 and s5 > s4 in PSNR. What is ordered: every
        // one-iteration severity is less distorted than every two-iteration one.
        Corruption::GlassBlur => (0..3).flat_map(|a| (3..5).map(move |b| (a, b))).collect(),
        // s3 → s4 only lowers the image weight 0.9 → 0.85 at the same frost weight 0.4; the
        // dimming cancels part of the added frost, so PSNR goes up. Everything else is ordered.
        Corruption::Frost => vec![(0, 1), (1, 2), (1, 3), (2, 4), (3, 4)],
        // (R, S) = (6, 2) at s3 and (8, 2) at s4 are the same kernel up to a tail of weight
        // < 1e-8 (reference §1.3), so s3 and s4 have the same distribution.
        Corruption::MotionBlur => vec![(0, 1), (1, 2), (1, 3), (2, 4), (3, 4)],
        // 28 → 26 (s1) and 28 → 25 (s2) each disturb only 2 or 3 rows/columns, and which ones
        // depends on the grid: 26 merges rows 6–7 and 20–21, the edges of a centred digit, 25
        // merges 4–5, 13–14, 22–23. So s1 and s2 are not ordered on centred content.
        Corruption::Pixelate => vec![(0, 2), (1, 2), (2, 3), (3, 4)],
        // The affine jitter shrinks with severity while the displacement field grows, so the
        // PSNR of the whole transform rises with severity; see
        // digital::tests::elastic_components_grow_as_the_table_says for each component.
        Corruption::ElasticTransform => vec![],
        _ => vec![(0, 1), (1, 2), (2, 3), (3, 4)],
    }
}

#[test]
fn severity_increases_distortion() {
    let imgs = test_images();
    assert!(imgs.iter().all(|im| im.iter().any(|&v| v > 0)));
    let mut failures = Vec::new();
    for c in Corruption::ALL {
        let p = mean_psnr_by_severity(c, &imgs);
        eprintln!(
            "{:>18}: {}",
            c.name(),
            p.iter()
                .map(|v| format!("{v:7.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        // every severity visibly changes the images
        if let Some(s) = p.iter().position(|&v| v >= 45.0) {
            failures.push(format!(
                "{c}: s{} barely changes the images ({:.2} dB)",
                s + 1,
                p[s]
            ));
        }
        for (a, b) in expected_order(c) {
            if p[b] >= p[a] {
                failures.push(format!(
                    "{c}: s{} {:.3} dB should be above s{} {:.3} dB",
                    a + 1,
                    p[a],
                    b + 1,
                    p[b]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "severity ordering: {failures:#?}");
}

#[test]
fn psnr_values() {
    let a = vec![10u8, 20, 30, 40];
    assert_eq!(psnr(&a, &a), f64::INFINITY);
    // one pixel off by 10 in 4: MSE = 100/4 = 25, PSNR = 10·log10(65025/25) = 34.1514 dB
    let b = vec![10u8, 20, 30, 50];
    let expected = 10.0 * (65025.0f64 / 25.0).log10();
    assert!((psnr(&a, &b) - expected).abs() < 1e-12);
    assert!((psnr(&a, &b) - 34.151_403_521_958_73).abs() < 1e-9);
    // all pixels off by 255: PSNR 0
    assert_eq!(psnr(&[0, 0], &[255, 255]), 0.0);
}

#[test]
fn unit_round_trip_is_exact() {
    // v / 255 · 255 truncates back to v for every byte, so untouched pixels stay untouched.
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(primitives::from_unit_trunc(&primitives::to_unit(&all)), all);
}

#[test]
fn glass_blur_severity_1_only_moves_pixels_from_up_left() {
    // σ = 0.05 has scipy radius 0, so s1 is the pure copy step: every output pixel in [2, 27]²
    // equals the input at itself, up, left or up-left; rows/columns 0 and 1 are untouched.
    let img: Vec<u8> = (0..W * H).map(|i| (i % 251) as u8).collect();
    let out = corrupt_image(&img, W, H, Corruption::GlassBlur, 1, 9, 0).expect("corrupt");
    for y in 0..H {
        for x in 0..W {
            let v = out[y * W + x];
            if y < 2 || x < 2 {
                assert_eq!(v, img[y * W + x]);
            } else {
                let cands = [
                    img[y * W + x],
                    img[(y - 1) * W + x],
                    img[y * W + x - 1],
                    img[(y - 1) * W + x - 1],
                ];
                assert!(cands.contains(&v), "({x},{y}) = {v} not in {cands:?}");
            }
        }
    }
    assert_ne!(out, img);
}

#[test]
fn non_square_images_work() {
    let (w, h) = (20, 12);
    let img: Vec<u8> = (0..w * h).map(|i| ((i * 7) % 256) as u8).collect();
    for c in Corruption::ALL {
        for sev in [1u8, 5] {
            let o = corrupt_image(&img, w, h, c, sev, 1, 2).expect("corrupt");
            assert_eq!(o.len(), img.len(), "{c}");
        }
    }
}

/// Timing of 10 000 28×28 images per corruption and severity.
/// Run with `cargo test --release -p attune-engine --lib corrupt::tests::bench_10k -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_10k() {
    let imgs = test_images();
    let batch: Vec<u8> = (0..10_000)
        .flat_map(|i| imgs[i % imgs.len()].clone())
        .collect();
    eprintln!("threads: {}", rayon::current_num_threads());
    for c in Corruption::ALL {
        let mut line = format!("{:>18}:", c.name());
        for sev in 1..=5u8 {
            let t = std::time::Instant::now();
            let out = corrupt_batch(&batch, W, H, c, sev, 1, 0).expect("corrupt");
            let dt = t.elapsed().as_secs_f64();
            assert_eq!(out.len(), batch.len());
            line.push_str(&format!(" s{sev} {dt:6.3}s"));
        }
        eprintln!("{line}");
    }
}
