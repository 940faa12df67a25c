//! Where the data comes from: discovery in the design's order, checksums, and the download.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};
use crate::idx;

/// The four files of an IDX classification dataset, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdxFile {
    TrainImages,
    TrainLabels,
    TestImages,
    TestLabels,
}

impl IdxFile {
    pub const ALL: [IdxFile; 4] = [
        IdxFile::TrainImages,
        IdxFile::TrainLabels,
        IdxFile::TestImages,
        IdxFile::TestLabels,
    ];

    /// The canonical file name, without `.gz`.
    pub fn stem(self) -> &'static str {
        match self {
            IdxFile::TrainImages => "train-images-idx3-ubyte",
            IdxFile::TrainLabels => "train-labels-idx1-ubyte",
            IdxFile::TestImages => "t10k-images-idx3-ubyte",
            IdxFile::TestLabels => "t10k-labels-idx1-ubyte",
        }
    }

    /// SHA-256 of the decompressed Fashion-MNIST file (the same for every mirror and package).
    pub fn fashion_mnist_sha256(self) -> &'static str {
        match self {
            IdxFile::TrainImages => {
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
            }
            IdxFile::TrainLabels => {
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
            }
            IdxFile::TestImages => {
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
            }
            IdxFile::TestLabels => {
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
            }
        }
    }
}

/// Whether files are checked against the Fashion-MNIST checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Verify {
    /// SHA-256 of the decompressed bytes must match Fashion-MNIST's.
    #[default]
    Sha256,
    /// No check: for MNIST, KMNIST or any other dataset in the same IDX layout.
    None,
}

/// How the data directory was found (the design's discovery order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `--data-dir` on the command line.
    Flag,
    /// The `FMNIST_DATA_DIR` environment variable.
    Env,
    /// `data/fashion-mnist/` under the workspace root.
    Workspace,
    /// `/usr/share/datasets/fashion-mnist/` from the Debian package `dataset-fashion-mnist`.
    System,
    /// Downloaded just now into the workspace folder.
    Downloaded,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Flag => "--data-dir",
            Origin::Env => "FMNIST_DATA_DIR",
            Origin::Workspace => "workspace data/fashion-mnist",
            Origin::System => "Debian package dataset-fashion-mnist",
            Origin::Downloaded => "downloaded",
        })
    }
}

/// A directory holding the four IDX files, and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSource {
    pub dir: PathBuf,
    pub origin: Origin,
}

/// The system-wide folder of the Debian package.
pub const SYSTEM_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// The official mirror (the Zalando Research S3 website).
pub const OFFICIAL_MIRROR: &str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/";
/// Environment variable naming the data directory.
pub const DATA_DIR_ENV: &str = "FMNIST_DATA_DIR";
/// Environment variable overriding the download mirror (base URL ending in `/`).
pub const MIRROR_ENV: &str = "FMNIST_MIRROR";

/// The rules of discovery: every place to look, in order, and where to download.
#[derive(Debug, Clone)]
pub struct Locator {
    pub flag_dir: Option<PathBuf>,
    pub env_dir: Option<PathBuf>,
    pub workspace_dir: PathBuf,
    pub system_dir: PathBuf,
    pub mirror: String,
    pub checksums: Checksums,
    pub download: bool,
}

/// The workspace root: the parent of this crate's folder when it still exists
/// (running from a checkout), else the current directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    match manifest.parent() {
        Some(root) if root.join("Cargo.toml").is_file() => root.to_path_buf(),
        _ => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    }
}

impl Locator {
    /// The standard rules, reading `FMNIST_DATA_DIR` and `FMNIST_MIRROR` from the environment.
    pub fn from_env(flag_dir: Option<PathBuf>) -> Self {
        Locator {
            flag_dir,
            env_dir: std::env::var_os(DATA_DIR_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            workspace_dir: workspace_root().join("data").join("fashion-mnist"),
            system_dir: PathBuf::from(SYSTEM_DIR),
            mirror: std::env::var(MIRROR_ENV).unwrap_or_else(|_| OFFICIAL_MIRROR.to_string()),
            checksums: Checksums::fashion_mnist(),
            download: true,
        }
    }

    /// Finds the data: the first complete directory in the design's order, else a download.
    ///
    /// A directory given explicitly (flag or environment) must hold the files: it is
    /// never skipped silently, and nothing is downloaded in its place.
    pub fn locate(&self) -> Result<DataSource> {
        if let Some(dir) = &self.flag_dir {
            return explicit(dir, Origin::Flag);
        }
        if let Some(dir) = &self.env_dir {
            return explicit(dir, Origin::Env);
        }
        for (dir, origin) in [
            (&self.workspace_dir, Origin::Workspace),
            (&self.system_dir, Origin::System),
        ] {
            if has_all_files(dir) {
                return Ok(DataSource {
                    dir: dir.clone(),
                    origin,
                });
            }
        }
        let tried = vec![self.workspace_dir.clone(), self.system_dir.clone()];
        if !self.download {
            return Err(DataError::NotFound {
                tried,
                download_dir: self.workspace_dir.clone(),
                reason: "downloading is switched off".into(),
            });
        }
        download_all(&self.mirror, &self.workspace_dir, &self.checksums).map_err(|e| {
            DataError::NotFound {
                tried,
                download_dir: self.workspace_dir.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok(DataSource {
            dir: self.workspace_dir.clone(),
            origin: Origin::Downloaded,
        })
    }
}

fn explicit(dir: &Path, origin: Origin) -> Result<DataSource> {
    for file in IdxFile::ALL {
        if idx::find_file(dir, file.stem()).is_none() {
            return Err(DataError::Missing {
                path: dir.join(file.stem()),
            });
        }
    }
    Ok(DataSource {
        dir: dir.to_path_buf(),
        origin,
    })
}

fn has_all_files(dir: &Path) -> bool {
    IdxFile::ALL
        .iter()
        .all(|f| idx::find_file(dir, f.stem()).is_some())
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The expected SHA-256 of each of the four decompressed files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksums {
    sha256: [String; 4],
}

impl Checksums {
    /// Fashion-MNIST's checksums (those of the official release).
    pub fn fashion_mnist() -> Self {
        Checksums {
            sha256: IdxFile::ALL.map(|f| f.fashion_mnist_sha256().to_string()),
        }
    }

    /// Checksums of another set of files, in the order of [`IdxFile::ALL`].
    pub fn new(sha256: [String; 4]) -> Self {
        Checksums { sha256 }
    }

    /// The expected hex digest of `file`.
    pub fn of(&self, file: IdxFile) -> &str {
        &self.sha256[file as usize]
    }
}

/// Checks decompressed `bytes` against the `expected` hex SHA-256.
pub fn verify_checksum(expected: &str, bytes: &[u8], path: &Path) -> Result<()> {
    let found = sha256_hex(bytes);
    if found != expected {
        return Err(DataError::Checksum {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            found,
        });
    }
    Ok(())
}

/// Downloads the four `.gz` files from `mirror` into `dir`, verifying each before it is kept.
///
/// Each file is written to `NAME.gz.part` and renamed only once complete and verified, so an
/// interrupted download never looks like data; a rerun starts that file again.
/// Files already present (and complete) are kept.
pub fn download_all(mirror: &str, dir: &Path, checksums: &Checksums) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for file in IdxFile::ALL {
        if idx::find_file(dir, file.stem()).is_some() {
            continue;
        }
        download_one(mirror, file, dir, checksums.of(file))?;
    }
    Ok(())
}

fn download_one(mirror: &str, file: IdxFile, dir: &Path, sha256: &str) -> Result<()> {
    let name = format!("{}.gz", file.stem());
    let url = format!("{}/{}", mirror.trim_end_matches('/'), name);
    let fail = |reason: String| DataError::Download {
        url: url.clone(),
        reason,
    };
    let part = dir.join(format!("{name}.part"));
    let target = dir.join(&name);
    let agent = ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(15)))
        .timeout_recv_body(Some(std::time::Duration::from_secs(120)))
        .build()
        .new_agent();
    let mut response = agent.get(&url).call().map_err(|e| fail(e.to_string()))?;
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(name.clone());
    let mut body = Vec::new();
    let mut reader = response.body_mut().as_reader();
    let mut out = std::fs::File::create(&part).map_err(|source| DataError::Io {
        path: part.clone(),
        source,
    })?;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut chunk).map_err(|e| {
            fail(format!(
                "connection lost after {} bytes: {e} (the partial file {} is discarded on the next run)",
                body.len(),
                part.display()
            ))
        })?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
        out.write_all(&chunk[..n]).map_err(|source| DataError::Io {
            path: part.clone(),
            source,
        })?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    if let Some(n) = total {
        if body.len() as u64 != n {
            return Err(fail(format!(
                "connection closed after {} of {n} bytes",
                body.len()
            )));
        }
    }
    out.sync_all().map_err(|source| DataError::Io {
        path: part.clone(),
        source,
    })?;
    drop(out);
    let check = || -> Result<()> {
        let mut decoded = Vec::new();
        flate2::read::MultiGzDecoder::new(body.as_slice())
            .read_to_end(&mut decoded)
            .map_err(|source| DataError::Gzip {
                path: part.clone(),
                source,
            })?;
        verify_checksum(sha256, &decoded, &target)
    };
    if let Err(e) = check() {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, &target).map_err(|source| DataError::Io {
        path: target.clone(),
        source,
    })
}
