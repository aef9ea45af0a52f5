//! A component file's identity, to tell whether it changed since it was loaded.

use anyhow::{Context as _, Result};
use std::path::Path;
use std::time::SystemTime;

/// A component file's identity when it was loaded: a file replaced or rewritten since
/// differs in one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    /// The stamp of the file at `path` now.
    pub(crate) fn of(path: &Path) -> Result<FileStamp> {
        use std::os::unix::fs::MetadataExt as _;
        let metadata = std::fs::metadata(path)
            .with_context(|| format!("reading component {}", path.display()))?;
        Ok(FileStamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            inode: metadata.ino(),
        })
    }
}
