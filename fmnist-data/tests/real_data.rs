//! The canonical Fashion-MNIST (installed by `.ci/run` from the Debian package): counts,
//! checksums and classes. Fails, not skips, when `CI` is set and the data is missing.
mod fixtures;

use fmnist_data::FASHION_MNIST_CLASSES;

#[test]
fn real_fashion_mnist_has_the_published_counts_and_checksums() {
    let Some(data) = fixtures::installed_fashion_mnist() else {
        return;
    };
    assert!(data.verified, "the four SHA-256 sums were checked");
    assert_eq!((data.train.len(), data.test.len()), (60_000, 10_000));
    assert_eq!((data.train.rows, data.train.cols), (28, 28));
    assert_eq!(data.train.class_counts(10), vec![6_000; 10]);
    assert_eq!(data.test.class_counts(10), vec![1_000; 10]);
    assert_eq!(data.class_names, FASHION_MNIST_CLASSES);
    let split = fmnist_data::stratified_split(&data.train.labels, 10, 0.2, 42).unwrap();
    assert_eq!((split.train.len(), split.val.len()), (48_000, 12_000));
}
