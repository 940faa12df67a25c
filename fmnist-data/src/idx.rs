//! The IDX file format (magic 2051 for images, 2049 for labels), gzipped or raw.
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 2051;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
pub const LABELS_MAGIC: u32 = 2049;

/// Images of one IDX file: `count` images of `rows x cols` bytes, row-major, one buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

/// Reads a file whole, decompressing it when it starts with the gzip magic bytes.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|source| io_error(path, source))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|source| DataError::Gzip {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn io_error(path: &Path, source: std::io::Error) -> DataError {
    if source.kind() == std::io::ErrorKind::NotFound {
        DataError::Missing {
            path: path.to_path_buf(),
        }
    } else {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn header(bytes: &[u8], path: &Path, magic: u32, what: &'static str, dims: usize) -> Result<()> {
    let header_len = 4 + 4 * dims;
    if bytes.len() < header_len {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header_len,
            found: bytes.len(),
        });
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found,
            expected: magic,
            what,
        });
    }
    Ok(())
}

fn exact_len(bytes: &[u8], path: &Path, expected: usize) -> Result<()> {
    if bytes.len() < expected {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            found: bytes.len(),
        });
    }
    Ok(())
}

/// Parses the bytes of an images file (already decompressed). `path` is only used in errors.
pub fn parse_images(bytes: &[u8], path: &Path) -> Result<IdxImages> {
    header(
        bytes,
        path,
        IMAGES_MAGIC,
        "IDX images: ubyte, 3 dimensions",
        3,
    )?;
    let count = be_u32(bytes, 4) as usize;
    let rows = be_u32(bytes, 8) as usize;
    let cols = be_u32(bytes, 12) as usize;
    let len = count
        .checked_mul(rows)
        .and_then(|n| n.checked_mul(cols))
        .and_then(|n| n.checked_add(16))
        .ok_or_else(|| DataError::Truncated {
            path: path.to_path_buf(),
            expected: usize::MAX,
            found: bytes.len(),
        })?;
    exact_len(bytes, path, len)?;
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: bytes[16..len].to_vec(),
    })
}

/// Parses the bytes of a labels file (already decompressed). `path` is only used in errors.
pub fn parse_labels(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    header(
        bytes,
        path,
        LABELS_MAGIC,
        "IDX labels: ubyte, 1 dimension",
        1,
    )?;
    let count = be_u32(bytes, 4) as usize;
    exact_len(bytes, path, 8 + count)?;
    Ok(bytes[8..8 + count].to_vec())
}

/// Encodes images as an IDX file (used to write test fixtures and to export subsets).
pub fn encode_images(count: usize, rows: usize, cols: usize, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + pixels.len());
    for v in [IMAGES_MAGIC, count as u32, rows as u32, cols as u32] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

/// Encodes labels as an IDX file.
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

/// The path of `stem` in `dir`, raw or with `.gz`, whichever exists (raw first).
pub fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [dir.join(stem), dir.join(format!("{stem}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_round_trip() {
        let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        let bytes = encode_images(2, 3, 4, &pixels);
        let parsed = parse_images(&bytes, Path::new("x")).unwrap();
        assert_eq!((parsed.count, parsed.rows, parsed.cols), (2, 3, 4));
        assert_eq!(parsed.pixels, pixels);
    }

    #[test]
    fn labels_round_trip() {
        let bytes = encode_labels(&[3, 1, 4]);
        assert_eq!(parse_labels(&bytes, Path::new("x")).unwrap(), vec![3, 1, 4]);
    }

    #[test]
    fn short_header_is_truncated_not_a_panic() {
        let err = parse_images(&[0, 0, 8], Path::new("f")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "f: truncated: the header promises 16 bytes, the file has 3"
        );
    }

    #[test]
    fn labels_file_read_as_images_is_bad_magic() {
        let err = parse_images(&encode_labels(&[0; 20]), Path::new("f")).unwrap_err();
        assert!(err
            .to_string()
            .contains("wrong magic number 0x00000801, expected 0x00000803"));
    }
}
