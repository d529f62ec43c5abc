//! The object store for checkpoint bytes: a directory, content-addressed by sha256
//! (`<dir>/sha256/<first two hex digits>/<sha256>`). Writes go to a temporary file that is
//! renamed into place, so a blob is either whole or absent; reads verify the checksum, so a
//! corrupted blob is reported, never served.

use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct ObjectStore {
    dir: PathBuf,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl ObjectStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_of(&self, sha256: &str) -> PathBuf {
        let prefix = sha256.get(..2).unwrap_or("xx");
        self.dir.join("sha256").join(prefix).join(sha256)
    }

    /// Store `bytes`, which must hash to `sha256`; a blob already present is kept.
    pub fn put(&self, sha256: &str, bytes: &[u8]) -> Result<PathBuf> {
        let found = sha256_hex(bytes);
        if found != sha256 {
            return Err(Error::BlobCorrupt {
                path: "(upload)".into(),
                expected: sha256.into(),
                found,
            });
        }
        let path = self.path_of(sha256);
        if path.exists() && self.get(sha256).is_ok() {
            return Ok(path);
        }
        let parent = path.parent().expect("blob paths have a parent");
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent.display(), e))?;
        let tmp = parent.join(format!(".{sha256}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(|e| Error::io(tmp.display(), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(path.display(), e))?;
        Ok(path)
    }

    /// The bytes of `sha256`, verified.
    pub fn get(&self, sha256: &str) -> Result<Vec<u8>> {
        let path = self.path_of(sha256);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::BlobMissing {
                    sha256: sha256.into(),
                    path: path.display().to_string(),
                })
            }
            Err(e) => return Err(Error::io(path.display(), e)),
        };
        let found = sha256_hex(&bytes);
        if found != sha256 {
            return Err(Error::BlobCorrupt {
                path: path.display().to_string(),
                expected: sha256.into(),
                found,
            });
        }
        Ok(bytes)
    }

    /// `ok`, `missing` or `corrupt` (reads and hashes the blob).
    pub fn check(&self, sha256: &str) -> &'static str {
        match self.get(sha256) {
            Ok(_) => "ok",
            Err(Error::BlobMissing { .. }) => "missing",
            Err(_) => "corrupt",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_and_detect_corruption_and_loss() {
        let dir = tempfile_dir();
        let store = ObjectStore::new(&dir);
        let bytes = b"hello checkpoint".to_vec();
        let sha = sha256_hex(&bytes);
        // `printf 'hello checkpoint' | sha256sum`
        assert_eq!(
            sha,
            "25d53189612c26a57f2a5f0ab872b83a2a24a74853cf15789aca0b494b2835fa"
        );
        store.put(&sha, &bytes).unwrap();
        assert_eq!(store.get(&sha).unwrap(), bytes);
        assert_eq!(store.check(&sha), "ok");
        // Wrong checksum on upload is refused.
        assert!(matches!(
            store.put(&"0".repeat(64), &bytes),
            Err(Error::BlobCorrupt { .. })
        ));
        // Flip a byte: reported as corrupt, never returned.
        std::fs::write(store.path_of(&sha), b"hello checkpoinT").unwrap();
        assert!(matches!(store.get(&sha), Err(Error::BlobCorrupt { .. })));
        assert_eq!(store.check(&sha), "corrupt");
        std::fs::remove_file(store.path_of(&sha)).unwrap();
        assert!(matches!(store.get(&sha), Err(Error::BlobMissing { .. })));
        std::fs::remove_dir_all(&dir).ok();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("attune-blobs-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
