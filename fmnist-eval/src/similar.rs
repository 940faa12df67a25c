//! `similar`'s picture: the query image beside its nearest training images (found by
//! [`fmnist_models::similar`]), each with its class and cosine distance.
use std::path::Path;

use fmnist_data::ImageSet;
use fmnist_models::similar::Neighbour;

use crate::plots::Tile;

/// Writes a strip to `path`: the 28x28 input, then each neighbour with its class and distance.
pub fn write_strip(
    path: &Path,
    input: &[u8],
    neighbours: &[Neighbour],
    train: &ImageSet,
) -> anyhow::Result<()> {
    let scale = |px: &[u8]| px.iter().map(|&p| p as f32 / 255.0).collect::<Vec<f32>>();
    let query = scale(input);
    let images: Vec<Vec<f32>> = neighbours
        .iter()
        .map(|n| scale(train.get(n.index).map_or(&[][..], |(px, _)| px)))
        .collect();
    let mut tiles = vec![Tile {
        pixels: &query,
        rows: 28,
        cols: 28,
        caption: "your image".into(),
        alert: false,
        heat: None,
    }];
    for (n, px) in neighbours.iter().zip(&images) {
        tiles.push(Tile {
            pixels: px,
            rows: 28,
            cols: 28,
            caption: format!("{} ({:.3})", n.label, n.distance),
            alert: false,
            heat: None,
        });
    }
    crate::plots::image_grid(
        path,
        "nearest training images (cosine distance in the model's embedding)",
        &tiles,
        tiles.len(),
        120,
        1,
    )
}
