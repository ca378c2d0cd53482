//! Durable file primitives: atomic replace, create-once, and the state lock.
//!
//! Every state file is written to a temporary file in the same folder, fsync'd, renamed over
//! (or hard-linked to, when it must not exist yet) its final name, and the folder fsync'd, so
//! a crash leaves either the old file or the new one, never a torn one. A file that must not
//! exist yet is written, where the file system allows, as an unnamed `O_TMPFILE` and linked
//! into place: the same guarantees without creating and removing a temporary name.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// This process's id, read once (`std::process::id` is a system call each time).
fn process_id() -> u32 {
    static ID: OnceLock<u32> = OnceLock::new();
    *ID.get_or_init(std::process::id)
}

fn temp_path(target: &Path) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.tmp.{}.{n}", process_id()))
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
    let dir = target.parent().unwrap_or(Path::new("."));
    match create_unnamed(dir, target, bytes, mode) {
        Ok(()) => return sync_dir(dir),
        Err(Unnamed::Failed(err)) => return Err(err),
        Err(Unnamed::Unsupported) => {}
    }

    let temp = write_temp(target, bytes, mode)?;
    let linked = fs::hard_link(&temp, target);
    let _ = fs::remove_file(&temp);
    linked?;
    sync_dir(dir)
}

/// Why [`create_unnamed`] did not create the file.
enum Unnamed {
    /// No `O_TMPFILE` here (file system or kernel) or no `/proc` to link it through: use a
    /// named temporary file instead.
    Unsupported,
    /// A real failure, `AlreadyExists` included.
    Failed(io::Error),
}

/// Writes `bytes` to an unnamed file in `dir` (`O_TMPFILE`), fsyncs it and links it to
/// `target` (`linkat`, which fails if `target` exists). The folder is the caller's to fsync.
fn create_unnamed(dir: &Path, target: &Path, bytes: &[u8], mode: u32) -> Result<(), Unnamed> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::AsRawFd;

    let unsupported = |err: &io::Error| {
        matches!(
            err.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL | libc::ENOENT)
        )
    };
    let mut file = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(mode)
        .open(dir)
    {
        Ok(file) => file,
        Err(err) if unsupported(&err) => return Err(Unnamed::Unsupported),
        Err(err) => return Err(Unnamed::Failed(err)),
    };
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(Unnamed::Failed)?;

    // Linking an unnamed file by descriptor needs CAP_DAC_READ_SEARCH; through its
    // /proc/self/fd name it needs nothing.
    let from = format!("/proc/self/fd/{}\0", file.as_raw_fd());
    let mut to = target.as_os_str().as_bytes().to_vec();
    if to.contains(&0) {
        return Err(Unnamed::Failed(io::Error::from(
            io::ErrorKind::InvalidInput,
        )));
    }
    to.push(0);
    // SAFETY: both paths are NUL-terminated and outlive the call; linkat reads nothing else.
    let linked = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr().cast(),
            libc::AT_FDCWD,
            to.as_ptr().cast(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if linked == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    // No /proc: the unnamed file is dropped with its descriptor.
    if err.raw_os_error() == Some(libc::ENOENT) && !Path::new("/proc/self/fd").exists() {
        return Err(Unnamed::Unsupported);
    }
    Err(Unnamed::Failed(err))
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

/// Largest state file read (a CRL of many entries is the largest otad writes).
pub const MAX_STATE_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Opens a file to read only if it is a regular file, not a symlink: a FIFO would block
/// the reader for good and a device (`/dev/zero`) never ends, and a symlink could lead a
/// state file out of the state dir.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Reads a regular file of at most `max` bytes (see [`open_regular`]).
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path)?
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("over {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// The `*.json` files of `dir` (at most `most` entries looked at), names starting with a dot
/// (temp files) left out, sorted.
pub fn json_files(dir: &Path, most: usize) -> io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .take(most)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    Ok(paths)
}

/// Whether `path` is a folder itself, not a symlink to one.
pub fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir())
}

/// Reads a state file, `None` if it does not exist (regular files only, bounded).
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match read_bounded(path, MAX_STATE_FILE_BYTES) {
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

/// A lock file kept open between uses, for a process that takes the lock often (the server):
/// locking then costs one `flock` each way instead of an open and a close as well. The
/// threads of the process must take turns under a mutex of their own first, since `flock`
/// does not exclude holders of the same open file from each other. The file is opened again
/// when it was removed or replaced since (its inode has no name left).
#[derive(Debug)]
pub struct KeptLock {
    path: PathBuf,
    file: Option<File>,
}

/// The lock of a [`KeptLock`], released when dropped.
#[derive(Debug)]
pub struct KeptLockGuard<'a>(&'a File);

impl KeptLock {
    /// The lock on `path`, opened at its first use.
    pub fn new(path: PathBuf) -> KeptLock {
        KeptLock { path, file: None }
    }

    /// Blocks until the lock is held.
    pub fn acquire(&mut self) -> io::Result<KeptLockGuard<'_>> {
        use std::os::unix::fs::MetadataExt;
        let stale = match &self.file {
            Some(file) => file.metadata()?.nlink() == 0,
            None => true,
        };
        if stale {
            self.file = None;
        }
        let file = match &mut self.file {
            Some(file) => file,
            none => none.insert(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(&self.path)?,
            ),
        };
        file.lock()?;
        Ok(KeptLockGuard(file))
    }
}

impl Drop for KeptLockGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn only_regular_files_are_read_and_within_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("record.json");
        fs::write(&file, b"0123456789").unwrap();
        assert_eq!(read_bounded(&file, 10).unwrap(), b"0123456789");
        assert_eq!(
            read_bounded(&file, 9).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );

        // A FIFO would block a reader for good; it is refused at once.
        let fifo = dir.path().join("fifo.json");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        assert_eq!(
            read_bounded(&fifo, 10).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        // A device never ends; a symlink might lead out of the state dir.
        assert!(read_bounded(Path::new("/dev/zero"), 10).is_err());
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(read_bounded(&link, 10).is_err());
        assert!(!is_real_dir(&link));
        assert!(is_real_dir(dir.path()));
    }

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
    fn create_atomic_sets_the_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("0a.json");
        create_atomic(&target, b"record", 0o640).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"record");
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode & !0o640,
            0,
            "no bit beyond the mode asked for: {mode:o}"
        );
        assert_eq!(fs::metadata(&target).unwrap().nlink(), 1);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let missing = dir.path().join("no-such-folder").join("x.json");
        assert_eq!(
            create_atomic(&missing, b"x", 0o644).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
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
    fn a_kept_lock_excludes_another_holder_and_follows_a_replaced_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let mut kept = KeptLock::new(path.clone());
        let held = kept.acquire().unwrap();

        // Another open of the file (another process, as flock sees it) waits for it.
        let (tx, rx) = std::sync::mpsc::channel();
        let other = {
            let path = path.clone();
            std::thread::spawn(move || {
                let lock = FileLock::acquire(&path).unwrap();
                tx.send(()).unwrap();
                drop(lock);
            })
        };
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        other.join().unwrap();

        // The lock file removed and made anew: the kept lock takes the new one.
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"").unwrap();
        let _held = kept.acquire().unwrap();
        let again = OpenOptions::new().read(true).open(&path).unwrap();
        assert_eq!(
            again
                .try_lock()
                .map_err(|err| matches!(err, fs::TryLockError::WouldBlock)),
            Err(true),
            "the new file is the one locked"
        );
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
