//! Writing a file atomically: every output of fmnist is either the old file or the new one,
//! never half-written.
use std::io::Write;
use std::path::Path;

use crate::error::{DataError, Result};

/// Writes `bytes` to `path` through a temporary file in the same folder, synced and then
/// renamed over `path` (tempfile's `persist`). The file gets the permissions of any new file
/// (0666 less the umask), not the temporary file's owner-only 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| DataError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut file = builder.tempfile_in(dir).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.as_file().sync_all().map_err(io)?;
    file.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Readable by others as any new file is, not owner-only as a temporary file.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            let umask = std::fs::File::create(dir.path().join("plain"))
                .and_then(|f| f.metadata())
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, umask, "{mode:o}");
        }
    }

    #[test]
    fn a_missing_folder_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-folder").join("out.json");
        let e = write_atomic(&path, b"x").unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: ", path.display())), "{e}");
    }
}
