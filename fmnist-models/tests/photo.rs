//! A person's image into the model's input: bounded decoding with an error per kind of bad
//! file, the fitting of a photo (inverted, cropped, scaled, centred) checked pixel by pixel on
//! hand-made images, and the committed `cnn` run classifying the example photos by their names.
use fmnist_models::photo::{decode_bytes, fit, DecodeError, Invert};
use fmnist_models::{argmax, Classifier};
use image::{DynamicImage, GrayImage, ImageFormat, Luma};

fn png(img: &GrayImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), ImageFormat::Png)
        .unwrap();
    out
}

#[test]
fn each_kind_of_bad_file_has_its_own_error() {
    assert_eq!(decode_bytes(b"").unwrap_err(), DecodeError::Empty);
    assert_eq!(
        decode_bytes(b"hello, not an image").unwrap_err(),
        DecodeError::UnknownFormat
    );
    let wide = png(&GrayImage::new(9000, 1));
    assert_eq!(decode_bytes(&wide).unwrap_err(), DecodeError::TooLarge);
    let whole = png(&GrayImage::from_pixel(40, 40, Luma([7])));
    let cut = decode_bytes(&whole[..whole.len() / 2]).unwrap_err();
    assert!(matches!(cut, DecodeError::Corrupt(_)), "{cut:?}");
    assert!(cut.to_string().starts_with("cannot decode: "), "{cut}");
    let back = decode_bytes(&whole).unwrap().to_luma8();
    assert_eq!(back, GrayImage::from_pixel(40, 40, Luma([7])));
}

#[test]
fn a_dataset_image_is_read_as_it_is() {
    let img = GrayImage::from_fn(28, 28, |x, y| Luma([if x > 20 && y < 5 { 200 } else { 3 }]));
    let (input, inverted) = fit(&DynamicImage::ImageLuma8(img.clone()), Invert::Auto);
    assert!(!inverted);
    assert_eq!(input, img);
}

#[test]
fn a_dark_item_on_white_is_inverted_cropped_fitted_and_centred() {
    // A black 40x20 block on a white 120x60 canvas: inverted, cropped to the block, its
    // longer side scaled to 28 (28x14), placed with its centre of mass at the middle: rows
    // 8..22 (13.5 - 6.5 + 1 rounds to 8), every column.
    let canvas = GrayImage::from_fn(120, 60, |x, y| {
        let inside = (10..50).contains(&x) && (30..50).contains(&y);
        Luma([if inside { 0 } else { 255 }])
    });
    let (input, inverted) = fit(&DynamicImage::ImageLuma8(canvas.clone()), Invert::Auto);
    assert!(inverted);
    let want = GrayImage::from_fn(28, 28, |_, y| {
        Luma([if (8..22).contains(&y) { 255 } else { 0 }])
    });
    assert_eq!(input, want);
    // Told not to invert, the white canvas is the item: it fills the frame's width.
    let (input, inverted) = fit(&DynamicImage::ImageLuma8(canvas), Invert::No);
    assert!(!inverted);
    assert_eq!(input.dimensions(), (28, 28));
    assert_eq!(input.get_pixel(0, 13).0[0], 255);
}

#[test]
fn the_committed_cnn_names_the_example_photos() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let classifier =
        Classifier::load(root.join("results/cnn/seed-42"), &candle::Device::Cpu).unwrap();
    for (file, class) in [("ankle-boot.png", "Ankle boot"), ("bag.png", "Bag")] {
        let bytes = std::fs::read(root.join("docs/examples").join(file)).unwrap();
        let photo = decode_bytes(&bytes).unwrap();
        let (probabilities, inverted) = classifier.classify_photo(&photo, Invert::Auto).unwrap();
        assert!(inverted, "{file}: a photo on a light background");
        assert_eq!(
            classifier.class_names()[argmax(&probabilities)],
            class,
            "{file}"
        );
    }
}
