//! Reading broken IDX files: each problem gives an error naming the file and what is wrong.
mod fixtures;

use std::path::Path;

use fmnist_data::idx::{encode_images, encode_labels};
use fmnist_data::{DataSource, FashionMnist, LoadOptions, Origin, Verify};

fn unverified() -> LoadOptions {
    LoadOptions {
        verify: Verify::None,
        ..LoadOptions::default()
    }
}

fn load(dir: &Path, options: &LoadOptions) -> fmnist_data::Result<FashionMnist> {
    FashionMnist::load(
        DataSource {
            dir: dir.to_path_buf(),
            origin: Origin::Flag,
        },
        options,
    )
}

fn load_err(dir: &Path, options: &LoadOptions) -> String {
    load(dir, options).unwrap_err().to_string()
}

#[test]
fn gzipped_and_raw_files_read_the_same() {
    let (gz, raw) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fixtures::write(gz.path(), true);
    fixtures::write(raw.path(), false);
    let a = load(gz.path(), &unverified()).unwrap();
    let b = load(raw.path(), &unverified()).unwrap();
    assert_eq!(a.train, b.train);
    assert_eq!(a.test, b.test);
    assert_eq!(
        (a.train.len(), a.test.len()),
        (fixtures::TRAIN, fixtures::TEST)
    );
    assert_eq!(a.train.get(13).unwrap().1, 3);
    assert_eq!(a.train.class_counts(10), vec![6; 10]);
}

#[test]
fn matching_checksums_verify() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::write(dir.path(), true);
    let options = LoadOptions {
        checksums: fixtures::checksums(),
        ..LoadOptions::default()
    };
    assert!(load(dir.path(), &options).unwrap().verified);
}

#[test]
fn checksum_mismatch_names_the_file_and_both_digests() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::write(dir.path(), true);
    let msg = load_err(dir.path(), &LoadOptions::default());
    assert!(
        msg.contains("train-images-idx3-ubyte.gz: SHA-256 mismatch"),
        "{msg}"
    );
    assert!(
        msg.contains("expected c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888")
    );
    assert!(msg.contains("--verify none"));
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::write(dir.path(), false);
    std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte")).unwrap();
    let msg = load_err(dir.path(), &unverified());
    assert_eq!(
        msg,
        format!(
            "{}: file not found (looked for it with and without .gz)",
            dir.path().join("t10k-labels-idx1-ubyte").display()
        )
    );
}

#[test]
fn wrong_magic() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::write(dir.path(), false);
    // A labels file where the images should be.
    std::fs::write(
        dir.path().join("train-images-idx3-ubyte"),
        encode_labels(&[1; 60]),
    )
    .unwrap();
    let msg = load_err(dir.path(), &unverified());
    assert!(msg.ends_with("train-images-idx3-ubyte: wrong magic number 0x00000801, expected 0x00000803 (IDX images: ubyte, 3 dimensions)"), "{msg}");
}

#[test]
fn truncated_images() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::write(dir.path(), false);
    let path = dir.path().join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let msg = load_err(dir.path(), &unverified());
    assert!(msg.ends_with("train-images-idx3-ubyte: truncated: the header promises 47056 bytes, the file has 46956"), "{msg}");
}

#[test]
fn truncated_labels() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::write(dir.path(), false);
    let path = dir.path().join("t10k-labels-idx1-ubyte");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..20]).unwrap();
    let msg = load_err(dir.path(), &unverified());
    assert!(
        msg.ends_with(
            "t10k-labels-idx1-ubyte: truncated: the header promises 28 bytes, the file has 20"
        ),
        "{msg}"
    );
}

#[test]
fn image_and_label_counts_differ() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::write(dir.path(), false);
    std::fs::write(
        dir.path().join("t10k-labels-idx1-ubyte"),
        encode_labels(&[0; 19]),
    )
    .unwrap();
    let msg = load_err(dir.path(), &unverified());
    assert!(
        msg.contains("t10k-images-idx3-ubyte holds 20 images but"),
        "{msg}"
    );
    assert!(
        msg.ends_with("t10k-labels-idx1-ubyte holds 19 labels"),
        "{msg}"
    );
}

#[test]
fn label_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::write(dir.path(), false);
    let mut labels = vec![0u8; 60];
    labels[17] = 10;
    std::fs::write(
        dir.path().join("train-labels-idx1-ubyte"),
        encode_labels(&labels),
    )
    .unwrap();
    let msg = load_err(dir.path(), &unverified());
    assert!(
        msg.ends_with(
            "train-labels-idx1-ubyte: label 10 at index 17 is out of range (expected 0..10)"
        ),
        "{msg}"
    );
}

#[test]
fn wrong_dimensions_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::write(dir.path(), false);
    for (stem, n) in [
        ("train-images-idx3-ubyte", 60),
        ("t10k-images-idx3-ubyte", 20),
    ] {
        std::fs::write(
            dir.path().join(stem),
            encode_images(n, 32, 32, &vec![0; n * 1024]),
        )
        .unwrap();
    }
    let msg = load_err(dir.path(), &unverified());
    assert!(
        msg.contains("train-images-idx3-ubyte: images are 32x32, expected 28x28"),
        "{msg}"
    );
    let options = LoadOptions {
        allow_any_shape: true,
        ..unverified()
    };
    let data = load(dir.path(), &options).unwrap();
    assert_eq!((data.train.rows, data.train.cols), (32, 32));
}

#[test]
fn corrupt_gzip() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::write(dir.path(), true);
    let path = dir.path().join("train-labels-idx1-ubyte.gz");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, bytes).unwrap();
    let msg = load_err(dir.path(), &unverified());
    assert!(
        msg.contains("train-labels-idx1-ubyte.gz: corrupt gzip stream"),
        "{msg}"
    );
}
