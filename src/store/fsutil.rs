//! Durable file primitives: atomic replace, create-once, and the state lock.
//!
//! Every state file is written to a temporary file in the same folder, fsync'd, renamed over
//! (or hard-linked to, when it must not exist yet) its final name, and the folder fsync'd, so
//! a crash leaves either the old file or the new one, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_path(target: &Path) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.tmp.{}.{n}", std::process::id()))
}

/// Reads a temp file name as [`write_atomic`] and [`create_atomic`] make them
/// (`.<target name>.tmp.<pid>.<counter>`): the target's name and the writer's pid, or `None`
/// for any other name. A crash between writing the temp file and renaming (or linking and
/// removing) it leaves one behind; `otad fsck` finds them with this.
pub fn parse_temp_name(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix('.')?;
    let (head, counter) = rest.rsplit_once('.')?;
    let (head, pid) = head.rsplit_once('.')?;
    let target = head.strip_suffix(".tmp")?;
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if target.is_empty() || !digits(counter) || !digits(pid) {
        return None;
    }
    Some((target, pid.parse().ok()?))
}

fn write_temp(target: &Path, bytes: &[u8], mode: u32) -> io::Result<PathBuf> {
    let temp = temp_path(target);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(err) = written {
        let _ = fs::remove_file(&temp);
        return Err(err);
    }
    Ok(temp)
}

/// Fsyncs a folder so that a rename or unlink in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `target` with `bytes` atomically (temp file, fsync, rename, fsync folder).
pub fn write_atomic(target: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let temp = write_temp(target, bytes, mode)?;
    if let Err(err) = fs::rename(&temp, target) {
        let _ = fs::remove_file(&temp);
        return Err(err);
    }
    sync_dir(target.parent().unwrap_or(Path::new(".")))
}

/// Creates `target` with `bytes` atomically, failing with `AlreadyExists` if it exists:
/// the file is complete the moment its name appears, and no name is ever written twice.
pub fn create_atomic(target: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let temp = write_temp(target, bytes, mode)?;
    let linked = fs::hard_link(&temp, target);
    let _ = fs::remove_file(&temp);
    linked?;
    sync_dir(target.parent().unwrap_or(Path::new(".")))
}

/// Removes `target` if it is there, durably. Returns whether this call removed it, which
/// makes removal a one-winner operation between threads and processes.
pub fn remove_durably(target: &Path) -> io::Result<bool> {
    match fs::remove_file(target) {
        Ok(()) => {
            sync_dir(target.parent().unwrap_or(Path::new(".")))?;
            Ok(true)
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// Reads a file, `None` if it does not exist.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// An exclusive advisory lock (flock) on a lock file, shared by the server and the CLI.
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Blocks until the lock on `path` is held.
    pub fn acquire(path: &Path) -> io::Result<FileLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        file.lock()?;
        Ok(FileLock { file })
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("key.pem");
        write_atomic(&target, b"one", 0o600).unwrap();
        write_atomic(&target, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let leftovers = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
    }

    #[test]
    fn create_atomic_refuses_an_existing_name() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("serial.json");
        create_atomic(&target, b"first", 0o644).unwrap();
        let err = create_atomic(&target, b"second", 0o644).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&target).unwrap(), b"first");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn temp_names_are_recognised() {
        let temp = temp_path(Path::new("/state/devices/ABC.json"));
        let name = temp.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            parse_temp_name(name),
            Some(("ABC.json", std::process::id()))
        );
        assert_eq!(parse_temp_name("ABC.json"), None);
        assert_eq!(parse_temp_name(".ABC.json.tmp.x.1"), None);
        assert_eq!(parse_temp_name(".tmp.1.2"), None);
    }

    #[test]
    fn removal_has_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("challenge");
        fs::write(&target, b"x").unwrap();
        assert!(remove_durably(&target).unwrap());
        assert!(!remove_durably(&target).unwrap());
    }
}
