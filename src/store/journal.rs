//! The state log: challenges, devices and certificates as one append-only file, `state.log`,
//! with where each key's latest record lies kept in memory.
//!
//! A record file per challenge, device and certificate, each written durably (temp file,
//! fsync, rename, folder fsync), cost this project's 2-core VM about 190 µs of CPU per write
//! and an enrollment made 22 of them; an append to one file costs about 2 µs, and one
//! `fdatasync` then makes every append before it durable. So every change goes into this log,
//! and requests that commit at the same time share one `fdatasync` (group commit, see
//! [`Journal::wait_durable`]): no request is answered before its changes are on disk, and
//! under load many answers wait on the same sync.
//!
//! ```text
//! state.log := MAGIC frame*
//! frame     := length:u32le check:[u8; 8] payload          check = SHA-256(payload)[..8]
//! payload   := synced:u64le change*
//! change    := kind:u8 flags:u8 key_len:u16le key tag_len:u16le tag value_len:u32le value
//! ```
//!
//! A frame holds the changes of one transaction: all of them count or none. `synced` is how
//! far the writer knew the log to be durable when it wrote the frame. `flags` bit 0
//! marks a removal (no value). The `tag` of a device record is the serial number it reports
//! (normalised), from which the serial index is kept in memory; other kinds leave it empty.
//!
//! The file is longer than its frames: a writer fills the next [`PREALLOCATE_BYTES`] with
//! zeros before it writes frames into them, so that a sync writes the frame's blocks only,
//! not the file's size and block map as well (half the CPU of a sync of a growing file on
//! this project's VM). Twelve zero bytes where a frame would start end the log.
//!
//! The log is read from the start when it is opened; afterwards each use first reads what
//! other processes (the admin commands) appended since. A frame whose bytes are not all there,
//! or whose check fails, ends the log as read: it is a write that a crash cut short, or one
//! still being written by another process. Unless a whole frame follows whose writer knew the
//! bad one to be durable (its `synced` is past it): then the bad bytes were damaged on disk
//! after they were written, not cut short, and the log is read on after them (what they held
//! is lost, and fsck says so) rather than ended there. A writer, which holds the state lock
//! so that no one else is writing, cuts such a tail off before it appends, and its first
//! write after opening the log cuts off whatever follows the last frame: a frame that a crash
//! left behind a lost one was never acknowledged, and must not be read again once new frames
//! fill the gap before it. When the log holds more than twice what is live,
//! [`Journal::compact`] rewrites it with only the latest record of each key (a new file
//! renamed over the old one); readers in other processes notice the new file and read it
//! afresh.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::group_commit::GroupCommit;
pub use super::group_commit::Ticket;
use super::{fsutil, StoreError};

/// The log's file name under the state dir.
pub const LOG_FILE: &str = "state.log";

/// The first bytes of every state log: the format and its version.
pub const MAGIC: &[u8; 16] = b"otad state log 2";

/// A frame's length and check, before its payload.
const FRAME_HEAD: usize = 12;

/// Most bytes in one frame's payload: a transaction is a few records of a few KiB.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Longest key (a UDID, a certificate serial, a challenge's hash) and tag.
pub const MAX_KEY_BYTES: usize = 255;

/// Largest record value (the JSON of one record).
pub const MAX_VALUE_BYTES: usize = fsutil::MAX_STATE_FILE_BYTES as usize;

/// The size a compaction's frames are cut at.
const COMPACT_FRAME_BYTES: usize = 1024 * 1024;

/// How far ahead of its last frame a writer fills the log with zeros.
pub const PREALLOCATE_BYTES: u64 = 1024 * 1024;

/// A log smaller than this is never compacted: rewriting it would save little.
pub const COMPACT_MIN_BYTES: u64 = 8 * 1024 * 1024;

/// The log's mode: device records hold serial numbers, IMEIs and user names.
const LOG_MODE: u32 = 0o600;

/// What a record is. Each kind has its own keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A live challenge, keyed by the SHA-256 of its value (hex).
    Challenge,
    /// A device, keyed by its UDID.
    Device,
    /// An issued certificate, keyed by its serial (lowercase hex).
    Cert,
    /// A line of the events log a request wrote, kept here (durable with the request's
    /// state) until `events.jsonl`, written without a sync of its own, is synced past it
    /// (see `crate::events`), keyed so that keys sort by when they were made.
    Event,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Challenge, Kind::Device, Kind::Cert, Kind::Event];

    fn code(self) -> u8 {
        match self {
            Kind::Challenge => 1,
            Kind::Device => 2,
            Kind::Cert => 3,
            Kind::Event => 4,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.code() == code)
    }

    fn slot(self) -> usize {
        match self {
            Kind::Challenge => 0,
            Kind::Device => 1,
            Kind::Cert => 2,
            Kind::Event => 3,
        }
    }

    /// The kind's name, as fsck and errors say it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Challenge => "challenge",
            Kind::Device => "device",
            Kind::Cert => "certificate",
            Kind::Event => "event",
        }
    }
}

/// One change: a record written (`value`) or removed (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What the record is.
    pub kind: Kind,
    /// Its key within the kind.
    pub key: String,
    /// The device's serial number for [`Kind::Device`], else empty.
    pub tag: String,
    /// The record's bytes, `None` for a removal.
    pub value: Option<Vec<u8>>,
}

/// Where a record's value lies in the log.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The offset of the value.
    at: u64,
    /// Its length.
    len: u32,
    /// The end of the frame it came in: durable once a sync covers that.
    frame_end: u64,
}

/// How the log ended when last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// At a frame boundary, followed by zeros or nothing.
    Clean,
    /// A frame that is not whole after the last one: a write cut short, or one under way.
    Torn {
        /// Where the last whole frame ends.
        at: u64,
    },
}

/// The log as this process last read it.
struct View {
    file: Arc<File>,
    /// The file's (device, inode): another one at the path is a compacted log.
    id: (u64, u64),
    /// The end of the last whole frame read.
    end: u64,
    tail: Tail,
    /// The file's length as this process last knew it (zeros after `end` up to it, once this
    /// process has written).
    allocated: u64,
    /// Whether this process has cut off what followed the last frame when it opened the log
    /// (done before its first write).
    tidied: bool,
    records: [HashMap<String, Entry>; 4],
    /// Device serial number → the UDID of the device that last reported it.
    by_serial: HashMap<String, String>,
    /// UDID → the serial number its latest record reports.
    serial_of: HashMap<String, String>,
    /// Bytes of the latest records (values, keys and their framing).
    live: u64,
    /// Changes of the transaction under way, not in the file yet.
    staged: Vec<Change>,
    /// Bumped whenever the file is replaced: offsets of another epoch mean nothing here.
    epoch: u64,
    /// Bytes that fail their check although a later frame's writer knew them durable:
    /// damaged on disk, skipped (from, to).
    damaged: Vec<(u64, u64)>,
}

/// Ids of open logs, for [`DEFERRED`].
static NEXT_JOURNAL_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    /// The logs whose syncs this thread defers (see [`Journal::deferring`]), each with the
    /// greatest ticket it deferred.
    static DEFERRED: std::cell::RefCell<Vec<(u64, Option<Ticket>)>> = const {
        std::cell::RefCell::new(Vec::new())
    };
}

/// Ends a deferral on this thread however its work ends, and gives its ticket.
struct Deferral(u64);

impl Deferral {
    fn take(&self) -> Option<Ticket> {
        DEFERRED.with(|deferred| {
            let mut deferred = deferred.borrow_mut();
            let at = deferred.iter().rposition(|(id, _)| *id == self.0)?;
            deferred.remove(at).1
        })
    }
}

impl Drop for Deferral {
    fn drop(&mut self) {
        let _ = self.take();
    }
}

/// An open state log.
pub struct Journal {
    id: u64,
    root: PathBuf,
    path: PathBuf,
    view: Mutex<View>,
    /// Commits that share syncs (see [`GroupCommit`]).
    sync: GroupCommit,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn check_of(payload: &[u8]) -> [u8; 8] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, payload);
    let mut check = [0u8; 8];
    check.copy_from_slice(digest.as_ref().get(..8).unwrap_or(&[0; 8]));
    check
}

/// Appends `change` to a payload being built.
fn encode_change(payload: &mut Vec<u8>, change: &Change) {
    payload.push(change.kind.code());
    payload.push(u8::from(change.value.is_none()));
    for text in [&change.key, &change.tag] {
        payload.extend_from_slice(&(text.len() as u16).to_le_bytes());
        payload.extend_from_slice(text.as_bytes());
    }
    let value = change.value.as_deref().unwrap_or_default();
    payload.extend_from_slice(&(value.len() as u32).to_le_bytes());
    payload.extend_from_slice(value);
}

/// A frame for `changes`, written when the log was known durable up to `synced`, and where
/// each value lies within it.
fn encode_frame(changes: &[Change], synced: u64) -> (Vec<u8>, Vec<usize>) {
    let mut payload = synced.to_le_bytes().to_vec();
    let mut values = Vec::with_capacity(changes.len());
    for change in changes {
        encode_change(&mut payload, change);
        let len = change.value.as_ref().map_or(0, Vec::len);
        values.push(FRAME_HEAD + payload.len() - len);
    }
    let mut frame = Vec::with_capacity(FRAME_HEAD + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&check_of(&payload));
    frame.extend_from_slice(&payload);
    (frame, values)
}

/// The bytes of a payload's synced offset.
const SYNCED_BYTES: usize = 8;

/// How far the writer of a payload knew the log to be durable.
fn synced_of(payload: &[u8]) -> u64 {
    payload
        .get(..SYNCED_BYTES)
        .and_then(|bytes| bytes.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// What lies at an offset of the log.
enum At {
    /// Zeros where a frame would start: the space filled ahead of the next write.
    Zeros,
    /// A whole frame that passes its check, and where it ends.
    Frame { payload: Vec<u8>, end: u64 },
    /// Anything else: a frame cut short, or damaged.
    Bad,
}

/// What lies at `at` in `file`, whose length was `len` (a file another process is cutting
/// or filling may be shorter by now: what is not there is a bad frame).
fn frame_at(file: &File, at: u64, len: u64) -> io::Result<At> {
    let eof_is_bad = |result: io::Result<()>| match result {
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        other => other.map(|()| true),
    };
    let want = (len.saturating_sub(at)).min(FRAME_HEAD as u64) as usize;
    let mut head = [0u8; FRAME_HEAD];
    let Some(head_read) = head.get_mut(..want) else {
        return Ok(At::Bad);
    };
    if !eof_is_bad(file.read_exact_at(head_read, at))? {
        return Ok(At::Bad);
    }
    if head.iter().all(|b| *b == 0) {
        return Ok(At::Zeros);
    }
    let size = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let end = at + (FRAME_HEAD + size) as u64;
    if want < FRAME_HEAD || !(SYNCED_BYTES..=MAX_FRAME_BYTES).contains(&size) || end > len {
        return Ok(At::Bad);
    }
    let mut payload = vec![0u8; size];
    if !eof_is_bad(file.read_exact_at(&mut payload, at + FRAME_HEAD as u64))? {
        return Ok(At::Bad);
    }
    if check_of(&payload) != head[4..] {
        return Ok(At::Bad);
    }
    Ok(At::Frame { payload, end })
}

/// The first whole frame after the bad bytes at `bad`, and where it starts: first where the
/// bad frame's own length says the next one starts, then at every offset whose bytes could
/// start a frame. Only read when a frame is bad, so a scan of what follows is affordable.
fn next_frame_after(file: &File, bad: u64, len: u64) -> io::Result<Option<(u64, Vec<u8>)>> {
    let mut head = [0u8; 4];
    if file.read_exact_at(&mut head, bad).is_ok() {
        let next = bad + FRAME_HEAD as u64 + u64::from(u32::from_le_bytes(head));
        if next < len {
            if let At::Frame { payload, .. } = frame_at(file, next, len)? {
                return Ok(Some((next, payload)));
            }
        }
    }
    const CHUNK: usize = 1024 * 1024;
    // A frame's length, check, synced offset, then a change's kind and flags.
    const PLAUSIBLE: usize = FRAME_HEAD + SYNCED_BYTES + 2;
    let mut buffer = vec![0u8; CHUNK + PLAUSIBLE];
    let mut start = bad + 1;
    while start < len {
        let n = (len - start).min(buffer.len() as u64) as usize;
        let window = buffer.get_mut(..n).unwrap_or_default();
        match file.read_exact_at(window, start) {
            // Cut meanwhile by the process that writes: nothing further to find.
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            other => other?,
        }
        let last = n.saturating_sub(PLAUSIBLE);
        for i in 0..=last.min(CHUNK - 1) {
            let Some(bytes) = window.get(i..i + PLAUSIBLE) else {
                break;
            };
            let size = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            let kind = bytes[FRAME_HEAD + SYNCED_BYTES];
            let flags = bytes[FRAME_HEAD + SYNCED_BYTES + 1];
            let plausible = (SYNCED_BYTES + 2..=MAX_FRAME_BYTES).contains(&size)
                && Kind::from_code(kind).is_some()
                && flags <= 1;
            if !plausible {
                continue;
            }
            let at = start + i as u64;
            if let At::Frame { payload, .. } = frame_at(file, at, len)? {
                return Ok(Some((at, payload)));
            }
        }
        start += CHUNK as u64;
    }
    Ok(None)
}

/// Whether a frame of the run of whole frames that starts at `from` was written when its
/// writer knew the log durable past `at`: then the bytes at `at` were on disk once. Frames
/// of the same commit as a cut-short one know no more than it (they went to disk with it).
fn written_after_durable(file: &File, from: u64, at: u64, len: u64) -> io::Result<bool> {
    let mut next = from;
    while next < len {
        match frame_at(file, next, len)? {
            At::Frame { payload, end } => {
                if synced_of(&payload) > at {
                    return Ok(true);
                }
                next = end;
            }
            At::Zeros | At::Bad => break,
        }
    }
    Ok(false)
}

/// One change read back from a payload: its value as (offset in the payload, length).
struct Decoded<'a> {
    kind: Kind,
    key: &'a str,
    tag: &'a str,
    value: Option<(usize, usize)>,
}

/// The changes of one payload, or why it does not read.
fn decode_payload(payload: &[u8]) -> Result<Vec<Decoded<'_>>, String> {
    let mut changes = Vec::new();
    // After the synced offset (see [`synced_of`]).
    let mut at = SYNCED_BYTES;
    if payload.len() < SYNCED_BYTES {
        return Err("a payload shorter than its synced offset".into());
    }
    let take = |at: &mut usize, n: usize| -> Result<&[u8], String> {
        let end = at.checked_add(n).ok_or("length overflow")?;
        let bytes = payload.get(*at..end).ok_or("change runs past its frame")?;
        *at = end;
        Ok(bytes)
    };
    while at < payload.len() {
        let head = take(&mut at, 2)?;
        let (code, flags) = (head.first().copied(), head.get(1).copied());
        let kind = code
            .and_then(Kind::from_code)
            .ok_or_else(|| format!("unknown record kind {code:?}"))?;
        let removed = flags == Some(1);
        if !matches!(flags, Some(0 | 1)) {
            return Err(format!("unknown flags {flags:?}"));
        }
        let mut texts = [""; 2];
        for text in &mut texts {
            let len = take(&mut at, 2)?;
            let len = u16::from_le_bytes(len.try_into().map_err(|_| "short length")?);
            let bytes = take(&mut at, usize::from(len))?;
            *text = std::str::from_utf8(bytes).map_err(|_| "a key that is not UTF-8")?;
        }
        let len = take(&mut at, 4)?;
        let len = u32::from_le_bytes(len.try_into().map_err(|_| "short length")?) as usize;
        let start = at;
        take(&mut at, len)?;
        if removed && len != 0 {
            return Err("a removal with a value".into());
        }
        changes.push(Decoded {
            kind,
            key: texts[0],
            tag: texts[1],
            value: (!removed).then_some((start, len)),
        });
    }
    Ok(changes)
}

/// The name of a log being written whole (`n` = 0 at creation, 1 in a compaction), as
/// [`fsutil::parse_temp_name`] reads temp files: fsck finds the ones a crash left.
fn temp_name(n: u32) -> String {
    format!(".{LOG_FILE}.tmp.{}.{n}", std::process::id())
}

fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

impl View {
    fn new(file: File, id: (u64, u64), epoch: u64) -> View {
        View {
            file: Arc::new(file),
            id,
            end: MAGIC.len() as u64,
            tail: Tail::Clean,
            allocated: 0,
            tidied: false,
            records: Default::default(),
            by_serial: HashMap::new(),
            serial_of: HashMap::new(),
            live: 0,
            staged: Vec::new(),
            epoch,
            damaged: Vec::new(),
        }
    }

    /// Records one change that lies in the file: the value (if any) at `at`.
    fn apply(&mut self, kind: Kind, key: &str, tag: &str, value: Option<Entry>) {
        let overhead = (FRAME_HEAD + 10 + key.len() + tag.len()) as u64;
        let map = &mut self.records[kind.slot()];
        if let Some(old) = map.remove(key) {
            self.live = self.live.saturating_sub(u64::from(old.len) + overhead);
        }
        if let Some(entry) = value {
            self.live += u64::from(entry.len) + overhead;
            map.insert(key.to_string(), entry);
        }
        if kind == Kind::Device {
            let old = self.serial_of.remove(key);
            let new = value.is_some().then_some(tag).filter(|t| !t.is_empty());
            if let Some(old) = old.filter(|old| Some(old.as_str()) != new) {
                if self.by_serial.get(&old).is_some_and(|udid| udid == key) {
                    self.by_serial.remove(&old);
                }
            }
            if let Some(serial) = new {
                self.by_serial.insert(serial.to_string(), key.to_string());
                self.serial_of.insert(key.to_string(), serial.to_string());
            }
        }
    }

    /// Reads the frames after `self.end` up to `len` and applies them; stops at zeros, or
    /// at the first frame that is not whole or fails its check (see [`Tail`]), unless bytes
    /// damaged after they were written lie there (see the module documentation): those are
    /// noted and skipped.
    fn read_frames(&mut self, path: &Path, len: u64) -> Result<(), StoreError> {
        let file = Arc::clone(&self.file);
        let mut at = self.end;
        self.tail = Tail::Clean;
        while at < len {
            let (payload, frame_end) = match frame_at(&file, at, len).map_err(io_err(path))? {
                At::Zeros => break,
                At::Frame { payload, end } => (payload, end),
                At::Bad => match next_frame_after(&file, at, len).map_err(io_err(path))? {
                    // Read again first: another process may have been writing it (a reader
                    // takes no lock), and be done by now.
                    Some(_) if matches!(frame_at(&file, at, len), Ok(At::Frame { .. })) => {
                        continue;
                    }
                    Some((next, _))
                        if written_after_durable(&file, next, at, len).map_err(io_err(path))? =>
                    {
                        log::error!(
                            "{}: bytes {at} to {next} do not pass their check, though a later \
                             write knew them on disk: damaged; what they held is lost, the \
                             rest is read (run otad fsck)",
                            path.display()
                        );
                        self.damaged.push((at, next));
                        at = next;
                        continue;
                    }
                    _ => {
                        self.tail = Tail::Torn { at };
                        break;
                    }
                },
            };
            let changes = decode_payload(&payload).map_err(|why| {
                corrupt(
                    path,
                    format!("the frame at offset {at} passes its check but {why}"),
                )
            })?;
            let body = at + FRAME_HEAD as u64;
            for change in changes {
                let entry = change.value.map(|(start, len)| Entry {
                    at: body + start as u64,
                    len: len as u32,
                    frame_end,
                });
                self.apply(change.kind, change.key, change.tag, entry);
            }
            at = frame_end;
        }
        self.end = at;
        Ok(())
    }

    /// Whether a frame starts at `self.end` (its first bytes are not zeros), that is, whether
    /// someone appended since this view was read.
    fn more_after_end(&self, len: u64) -> Result<bool, io::Error> {
        if len <= self.end {
            return Ok(false);
        }
        let mut head = [0u8; FRAME_HEAD];
        let n = self.file.read_at(&mut head, self.end)?;
        Ok(head
            .get(..n)
            .is_some_and(|read| read.iter().any(|b| *b != 0)))
    }

    fn value(&self, path: &Path, entry: Entry) -> Result<Vec<u8>, StoreError> {
        let mut bytes = vec![0u8; entry.len as usize];
        self.file
            .read_exact_at(&mut bytes, entry.at)
            .map_err(io_err(path))?;
        Ok(bytes)
    }
}

impl Journal {
    /// The log under `root`, read from the start. `NotFound` (as [`StoreError::Io`]) if
    /// there is none.
    pub fn open(root: &Path) -> Result<Journal, StoreError> {
        let path = root.join(LOG_FILE);
        let view = Self::load(&path, 0)?;
        Ok(Journal {
            id: NEXT_JOURNAL_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            root: root.to_path_buf(),
            path,
            // What was read may still be only in the page cache (written by a process that
            // was killed before its sync): the first read that needs it durable syncs once.
            sync: GroupCommit::new(view.epoch, MAGIC.len() as u64),
            view: Mutex::new(view),
        })
    }

    /// Creates the log under `root` holding `changes` (none for a new state dir), durably and
    /// all at once: written under a temporary name, synced and renamed into place. Fails
    /// with `AlreadyExists` if there is one.
    pub fn create(root: &Path, changes: &[Change]) -> Result<(), StoreError> {
        let path = root.join(LOG_FILE);
        if path.exists() {
            return Err(io_err(&path)(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a state log is already there",
            )));
        }
        let temp = root.join(temp_name(0));
        let _ = std::fs::remove_file(&temp);
        let written = Self::write_log(&temp, changes.iter().cloned().map(Ok))
            .and_then(|()| std::fs::hard_link(&temp, &path).map_err(io_err(&path)));
        let _ = std::fs::remove_file(&temp);
        written?;
        fsutil::sync_dir(root).map_err(io_err(root))
    }

    /// Writes a whole log of `changes` to `path` (a new file) and syncs it.
    fn write_log(
        path: &Path,
        changes: impl Iterator<Item = Result<Change, StoreError>>,
    ) -> Result<(), StoreError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(LOG_MODE)
            .open(path)
            .map_err(io_err(path))?;
        let mut out = io::BufWriter::with_capacity(COMPACT_FRAME_BYTES, &mut file);
        out.write_all(MAGIC).map_err(io_err(path))?;
        let mut batch = Vec::new();
        let mut size = 0;
        for change in changes {
            let change = change?;
            size += change.key.len() + change.value.as_ref().map_or(0, Vec::len);
            batch.push(change);
            if size >= COMPACT_FRAME_BYTES {
                out.write_all(&encode_frame(&batch, 0).0)
                    .map_err(io_err(path))?;
                batch.clear();
                size = 0;
            }
        }
        if !batch.is_empty() {
            out.write_all(&encode_frame(&batch, 0).0)
                .map_err(io_err(path))?;
        }
        out.flush().map_err(io_err(path))?;
        drop(out);
        file.sync_all().map_err(io_err(path))
    }

    fn load(path: &Path, epoch: u64) -> Result<View, StoreError> {
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
        {
            Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
                return Err(corrupt(
                    path,
                    "a symbolic link, not the state log itself: put the file in its place",
                ))
            }
            opened => opened.map_err(io_err(path))?,
        };
        let meta = file.metadata().map_err(io_err(path))?;
        if !meta.is_file() {
            return Err(corrupt(path, "not a regular file"));
        }
        let mut magic = [0u8; MAGIC.len()];
        match file.read_exact_at(&mut magic, 0) {
            Ok(()) if &magic == MAGIC => {}
            Ok(()) => return Err(corrupt(path, "not an otad state log (wrong first bytes)")),
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(corrupt(path, "shorter than its header"))
            }
            Err(err) => return Err(io_err(path)(err)),
        }
        let mut view = View::new(file, file_id(&meta), epoch);
        view.read_frames(path, meta.len())?;
        Ok(view)
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Brings the view up to the file: a new file (compacted by another process) is read
    /// afresh, frames appended by others are applied. With `writing` (the state lock held,
    /// so nobody else writes), a torn tail is cut off and the cut made durable.
    fn refresh(&self, view: &mut View, writing: bool) -> Result<(), StoreError> {
        // The file this view reads, as it is now: one that lost its name was replaced (a
        // compaction in another process, a restored backup), and the one at the path is read.
        let mut meta = view.file.metadata().map_err(io_err(&self.path))?;
        if meta.nlink() == 0 {
            meta = std::fs::symlink_metadata(&self.path).map_err(io_err(&self.path))?;
        }
        if file_id(&meta) != view.id {
            let staged = std::mem::take(&mut view.staged);
            let fresh = Self::load(&self.path, view.epoch + 1)?;
            *view = fresh;
            view.staged = staged;
            self.sync.replaced(view.epoch, view.end);
        }
        let len = meta.len();
        if view.more_after_end(len).map_err(io_err(&self.path))? {
            view.read_frames(&self.path, len)?;
        }
        // Another process may have cut the zeros this one filled in.
        view.allocated = len;
        if writing {
            if let Tail::Torn { at } = view.tail {
                log::warn!(
                    "{}: the record at offset {at} is not whole (a write cut short by a \
                     crash); cut off",
                    self.path.display()
                );
            }
            // Whatever follows the last frame goes before this process writes after it: a
            // torn frame, or frames a crash left behind a lost one (never acknowledged).
            if !view.tidied || view.tail != Tail::Clean {
                view.file.set_len(view.end).map_err(io_err(&self.path))?;
                view.file.sync_all().map_err(io_err(&self.path))?;
                view.allocated = view.end;
                view.tail = Tail::Clean;
                view.tidied = true;
            }
        }
        Ok(())
    }

    /// Starts a transaction: the caller holds the state lock (in-process and file), so the
    /// log read now stays current until [`Journal::commit`].
    pub fn begin(&self) -> Result<(), StoreError> {
        let mut view = lock(&self.view);
        view.staged.clear();
        self.refresh(&mut view, true)
    }

    /// Adds a change to the transaction under way (see [`Journal::begin`]).
    pub fn stage(&self, change: Change) -> Result<(), StoreError> {
        if change.key.len() > MAX_KEY_BYTES || change.tag.len() > MAX_KEY_BYTES {
            return Err(StoreError::InvalidName("record key"));
        }
        if change
            .value
            .as_ref()
            .is_some_and(|v| v.len() > MAX_VALUE_BYTES)
        {
            return Err(corrupt(
                &self.path,
                format!(
                    "a {} record over {MAX_VALUE_BYTES} bytes",
                    change.kind.name()
                ),
            ));
        }
        lock(&self.view).staged.push(change);
        Ok(())
    }

    /// Writes the transaction's changes as one frame (none if it staged nothing); returns what
    /// to wait for before answering. The caller still holds the state lock.
    pub fn commit(&self) -> Result<Option<Ticket>, StoreError> {
        let mut view = lock(&self.view);
        let staged = std::mem::take(&mut view.staged);
        if staged.is_empty() {
            return Ok(None);
        }
        if self.sync.has_failed() {
            return Err(self.failure());
        }
        let (frame, values) = encode_frame(&staged, self.sync.synced(view.epoch));
        if frame.len() - FRAME_HEAD > MAX_FRAME_BYTES {
            return Err(corrupt(&self.path, "a transaction over the largest frame"));
        }
        let start = view.end;
        let frame_end = start + frame.len() as u64;
        let written = Self::preallocate(&mut view, frame_end)
            .and_then(|()| view.file.write_all_at(&frame, start));
        if let Err(err) = written {
            // Nobody else writes while the lock is held: what this wrote is cut off again.
            let _ = view.file.set_len(start);
            view.allocated = start;
            return Err(io_err(&self.path)(err));
        }
        for (change, offset) in staged.iter().zip(values) {
            let entry = change.value.as_ref().map(|value| Entry {
                at: start + offset as u64,
                len: value.len() as u32,
                frame_end,
            });
            view.apply(change.kind, &change.key, &change.tag, entry);
        }
        view.end = frame_end;
        Ok(Some(Ticket {
            epoch: view.epoch,
            end: frame_end,
        }))
    }

    /// Fills the log with zeros up to [`PREALLOCATE_BYTES`] past `needed` when it is shorter
    /// than `needed`.
    fn preallocate(view: &mut View, needed: u64) -> io::Result<()> {
        if needed <= view.allocated {
            return Ok(());
        }
        let target = needed + PREALLOCATE_BYTES;
        let zeros = vec![0u8; 64 * 1024];
        let mut at = view.allocated;
        while at < target {
            let n = (target - at).min(zeros.len() as u64) as usize;
            view.file
                .write_all_at(zeros.get(..n).unwrap_or_default(), at)?;
            at += n as u64;
        }
        view.allocated = target;
        Ok(())
    }

    /// Drops the changes of a transaction that will not commit.
    pub fn abandon(&self) {
        lock(&self.view).staged.clear();
    }

    fn failure(&self) -> StoreError {
        io_err(&self.path)(io::Error::other(
            "an earlier write failed to reach the disk; check the disk and restart otad",
        ))
    }

    /// Whether a sync failed since the log was opened (see [`GroupCommit`]): no write is
    /// taken any more.
    pub fn has_failed(&self) -> bool {
        self.sync.has_failed()
    }

    /// Runs `work` with this thread's waits for durability put off: returns what `work`
    /// returned and the one [`Ticket`] that covers every commit it made, for
    /// [`Journal::settle`] before the request is answered. What a request wrote in several
    /// transactions is then made durable together, and its thread need not hold a worker's
    /// place while it waits.
    pub fn deferring<T>(&self, work: impl FnOnce() -> T) -> (T, Option<Ticket>) {
        DEFERRED.with(|deferred| deferred.borrow_mut().push((self.id, None)));
        let deferral = Deferral(self.id);
        let out = work();
        (out, deferral.take())
    }

    /// Returns once what [`Journal::deferring`] put off is durable.
    pub fn settle(&self, ticket: Option<Ticket>) -> Result<(), StoreError> {
        ticket.map_or(Ok(()), |ticket| self.wait_now(ticket))
    }

    /// Makes every change this thread made so far durable before it goes on: the ones staged
    /// in the transaction under way (`in_txn`, committed now as a frame of their own) and the
    /// ones [`Journal::deferring`] put off. Called before a write to another file of the state
    /// dir, so that writes reach the disk in the order they were made, as they did when every
    /// record was a file of its own.
    pub fn barrier(&self, in_txn: bool) -> Result<(), StoreError> {
        let committed = if in_txn { self.commit()? } else { None };
        let deferred = DEFERRED.with(|deferred| {
            let mut deferred = deferred.borrow_mut();
            let slot = deferred.iter_mut().rev().find(|(id, _)| *id == self.id)?;
            slot.1.take()
        });
        match committed.max(deferred) {
            Some(ticket) => self.wait_now(ticket),
            None => Ok(()),
        }
    }

    /// Returns once the log is durable past `ticket`, sharing the sync with every commit
    /// waiting at the same time; inside [`Journal::deferring`], at its end. A failed sync
    /// fails this and every later commit.
    pub fn wait_durable(&self, ticket: Ticket) -> Result<(), StoreError> {
        let deferred = DEFERRED.with(|deferred| {
            let mut deferred = deferred.borrow_mut();
            let slot = deferred.iter_mut().rev().find(|(id, _)| *id == self.id)?;
            slot.1 = slot.1.max(Some(ticket));
            Some(())
        });
        if deferred.is_some() {
            return Ok(());
        }
        self.wait_now(ticket)
    }

    fn wait_now(&self, ticket: Ticket) -> Result<(), StoreError> {
        let failed_before = self.sync.has_failed();
        self.sync
            .wait(ticket, || {
                let view = lock(&self.view);
                Some((Arc::clone(&view.file), view.epoch, view.end))
            })
            .map_err(|err| {
                if !failed_before {
                    log::error!(
                        "{}: sync failed: {err}; otad takes no more writes until it is \
                         restarted (check the disk first)",
                        self.path.display()
                    );
                }
                self.failure()
            })
    }

    /// The record of `kind` under `key`: the transaction's own change first when `in_txn`,
    /// else what is committed, once it is durable.
    pub fn get(&self, kind: Kind, key: &str, in_txn: bool) -> Result<Option<Vec<u8>>, StoreError> {
        let mut view = lock(&self.view);
        if in_txn {
            if let Some(change) = view
                .staged
                .iter()
                .rev()
                .find(|c| c.kind == kind && c.key == key)
            {
                return Ok(change.value.clone());
            }
        } else {
            self.refresh(&mut view, false)?;
        }
        let Some(entry) = view.records[kind.slot()].get(key).copied() else {
            return Ok(None);
        };
        let bytes = view.value(&self.path, entry)?;
        let ticket = Ticket {
            epoch: view.epoch,
            end: entry.frame_end,
        };
        drop(view);
        // Another thread's commit may still be syncing: nothing is read that a crash could
        // take back. Within a transaction the commit waits for it anyway.
        if !in_txn {
            self.wait_durable(ticket)?;
        }
        Ok(Some(bytes))
    }

    /// Whether there is a record of `kind` under `key`, within the transaction under way
    /// (the caller's): its own changes first, then what is committed.
    pub fn contains_in_txn(&self, kind: Kind, key: &str) -> bool {
        let view = lock(&self.view);
        match view
            .staged
            .iter()
            .rev()
            .find(|c| c.kind == kind && c.key == key)
        {
            Some(change) => change.value.is_some(),
            None => view.records[kind.slot()].contains_key(key),
        }
    }

    /// Every record of `kind`, sorted by key (the transaction's own changes included when
    /// `in_txn`).
    pub fn all(&self, kind: Kind, in_txn: bool) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut view = lock(&self.view);
        if !in_txn {
            self.refresh(&mut view, false)?;
        }
        let mut keys: Vec<&String> = view.records[kind.slot()].keys().collect();
        keys.sort();
        let mut records = Vec::with_capacity(keys.len());
        let mut last_frame = 0;
        for key in keys {
            let entry = view.records[kind.slot()][key];
            last_frame = last_frame.max(entry.frame_end);
            records.push((key.clone(), view.value(&self.path, entry)?));
        }
        if in_txn {
            for change in view.staged.iter().filter(|c| c.kind == kind) {
                let found = records.binary_search_by(|(key, _)| key.cmp(&change.key));
                match (found, &change.value) {
                    (Ok(at), Some(value)) => records[at].1 = value.clone(),
                    (Ok(at), None) => {
                        records.remove(at);
                    }
                    (Err(at), Some(value)) => {
                        records.insert(at, (change.key.clone(), value.clone()))
                    }
                    (Err(_), None) => {}
                }
            }
        }
        let ticket = Ticket {
            epoch: view.epoch,
            end: last_frame,
        };
        drop(view);
        if !in_txn {
            self.wait_durable(ticket)?;
        }
        Ok(records)
    }

    /// How many records of `kind` there are (committed ones).
    pub fn count(&self, kind: Kind) -> Result<usize, StoreError> {
        let mut view = lock(&self.view);
        self.refresh(&mut view, false)?;
        Ok(view.records[kind.slot()].len())
    }

    /// The UDID of the device whose latest record reported serial number `serial` (as
    /// [`Change::tag`] gives it), if any.
    pub fn udid_by_serial(&self, serial: &str, in_txn: bool) -> Result<Option<String>, StoreError> {
        let mut view = lock(&self.view);
        if in_txn {
            let staged = view
                .staged
                .iter()
                .rev()
                .find(|c| c.kind == Kind::Device && c.tag == serial && c.value.is_some());
            if let Some(change) = staged {
                return Ok(Some(change.key.clone()));
            }
        } else {
            self.refresh(&mut view, false)?;
        }
        Ok(view.by_serial.get(serial).cloned())
    }

    /// The log's size and the bytes its latest records take.
    pub fn sizes(&self) -> Result<(u64, u64), StoreError> {
        let mut view = lock(&self.view);
        self.refresh(&mut view, false)?;
        Ok((view.end, view.live))
    }

    /// The damaged bytes read past (from, to): see the module documentation.
    pub fn damaged(&self) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut view = lock(&self.view);
        self.refresh(&mut view, false)?;
        Ok(view.damaged.clone())
    }

    /// How the log ended when last read.
    pub fn tail(&self) -> Result<Tail, StoreError> {
        let mut view = lock(&self.view);
        self.refresh(&mut view, false)?;
        Ok(view.tail)
    }

    /// Whether [`Journal::compact`] would save much: the log is past
    /// [`COMPACT_MIN_BYTES`] and more than half of it is records since replaced or removed.
    pub fn wants_compaction(&self) -> Result<bool, StoreError> {
        let (len, live) = self.sizes()?;
        Ok(len >= COMPACT_MIN_BYTES && len > live.saturating_mul(2))
    }

    /// Rewrites the log with only the latest record of each key, under a new name synced and
    /// then renamed over the old one. The caller holds the state lock and has no transaction
    /// under way. Returns the sizes before and after.
    pub fn compact(&self) -> Result<(u64, u64), StoreError> {
        let mut view = lock(&self.view);
        self.refresh(&mut view, true)?;
        let before = view.end;
        let temp = self.root.join(temp_name(1));
        let _ = std::fs::remove_file(&temp);

        let mut keyed: Vec<(Kind, &String, Entry)> = Vec::new();
        for kind in Kind::ALL {
            for (key, entry) in &view.records[kind.slot()] {
                keyed.push((kind, key, *entry));
            }
        }
        keyed.sort_by_key(|(_, _, entry)| entry.at);
        let changes = keyed.into_iter().map(|(kind, key, entry)| {
            let tag = match kind {
                Kind::Device => view
                    .serial_of
                    .get(key.as_str())
                    .cloned()
                    .unwrap_or_default(),
                _ => String::new(),
            };
            Ok(Change {
                kind,
                key: key.clone(),
                tag,
                value: Some(view.value(&self.path, entry)?),
            })
        });
        let written = Self::write_log(&temp, changes).and_then(|()| {
            std::fs::rename(&temp, &self.path).map_err(io_err(&self.path))?;
            fsutil::sync_dir(&self.root).map_err(io_err(&self.root))
        });
        if let Err(err) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(err);
        }

        let fresh = Self::load(&self.path, view.epoch + 1)?;
        *view = fresh;
        let after = view.end;
        self.sync.replaced(view.epoch, view.end);
        Ok((before, after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(kind: Kind, key: &str, value: &str) -> Change {
        Change {
            kind,
            key: key.into(),
            tag: String::new(),
            value: Some(value.as_bytes().to_vec()),
        }
    }

    fn device(udid: &str, serial: &str, value: &str) -> Change {
        Change {
            tag: serial.into(),
            ..put(Kind::Device, udid, value)
        }
    }

    fn removal(kind: Kind, key: &str) -> Change {
        Change {
            kind,
            key: key.into(),
            tag: String::new(),
            value: None,
        }
    }

    fn journal() -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().unwrap();
        Journal::create(dir.path(), &[]).unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        (dir, journal)
    }

    /// One transaction of `changes`, committed and made durable.
    fn write(journal: &Journal, changes: Vec<Change>) {
        journal.begin().unwrap();
        for change in changes {
            journal.stage(change).unwrap();
        }
        let ticket = journal.commit().unwrap().unwrap();
        journal.wait_durable(ticket).unwrap();
    }

    fn text(journal: &Journal, kind: Kind, key: &str) -> Option<String> {
        journal
            .get(kind, key, false)
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn records_are_read_back_after_a_reopen_and_the_latest_wins() {
        let (dir, journal) = journal();
        write(
            &journal,
            vec![
                put(Kind::Cert, "0a", "one"),
                put(Kind::Challenge, "h1", "c"),
            ],
        );
        write(
            &journal,
            vec![put(Kind::Cert, "0a", "two"), removal(Kind::Challenge, "h1")],
        );
        write(&journal, vec![put(Kind::Cert, "0b", "three")]);
        assert_eq!(text(&journal, Kind::Cert, "0a").as_deref(), Some("two"));
        assert_eq!(text(&journal, Kind::Challenge, "h1"), None);
        assert_eq!(
            text(&journal, Kind::Device, "0a"),
            None,
            "kinds have their own keys"
        );

        let reopened = Journal::open(dir.path()).unwrap();
        assert_eq!(text(&reopened, Kind::Cert, "0a").as_deref(), Some("two"));
        assert_eq!(text(&reopened, Kind::Cert, "0b").as_deref(), Some("three"));
        assert_eq!(text(&reopened, Kind::Challenge, "h1"), None);
        let all: Vec<String> = reopened
            .all(Kind::Cert, false)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(all, ["0a", "0b"]);
        assert_eq!(reopened.count(Kind::Challenge).unwrap(), 0);
    }

    #[test]
    fn a_transaction_sees_its_own_changes_and_others_see_them_only_once_committed() {
        let (_dir, journal) = journal();
        write(&journal, vec![put(Kind::Device, "U1", "old")]);
        journal.begin().unwrap();
        journal.stage(put(Kind::Device, "U1", "new")).unwrap();
        journal.stage(removal(Kind::Device, "U1")).unwrap();
        journal.stage(put(Kind::Device, "U2", "two")).unwrap();
        assert_eq!(journal.get(Kind::Device, "U1", true).unwrap(), None);
        assert_eq!(
            journal.get(Kind::Device, "U2", true).unwrap().unwrap(),
            b"two"
        );
        let seen: Vec<String> = journal
            .all(Kind::Device, true)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(seen, ["U2"]);
        // Outside the transaction (another thread): what is committed.
        assert_eq!(text(&journal, Kind::Device, "U1").as_deref(), Some("old"));
        assert_eq!(text(&journal, Kind::Device, "U2"), None);
        let ticket = journal.commit().unwrap().unwrap();
        journal.wait_durable(ticket).unwrap();
        assert_eq!(text(&journal, Kind::Device, "U1"), None);
        assert_eq!(text(&journal, Kind::Device, "U2").as_deref(), Some("two"));

        // An abandoned transaction leaves nothing.
        journal.begin().unwrap();
        journal.stage(put(Kind::Device, "U3", "x")).unwrap();
        journal.abandon();
        assert_eq!(journal.commit().unwrap(), None);
        assert_eq!(text(&journal, Kind::Device, "U3"), None);
    }

    #[test]
    fn the_serial_index_follows_the_latest_record_of_each_device() {
        let (dir, journal) = journal();
        write(
            &journal,
            vec![device("A", "S1", "a1"), device("B", "S2", "b1")],
        );
        assert_eq!(
            journal.udid_by_serial("S1", false).unwrap().as_deref(),
            Some("A")
        );
        // A reports a new serial: S1 leaves the index, S3 names A.
        write(&journal, vec![device("A", "S3", "a2")]);
        assert_eq!(journal.udid_by_serial("S1", false).unwrap(), None);
        assert_eq!(
            journal.udid_by_serial("S3", false).unwrap().as_deref(),
            Some("A")
        );
        // C takes S2 over; B moving away later does not take it from C.
        write(&journal, vec![device("C", "S2", "c1")]);
        write(&journal, vec![device("B", "S4", "b2")]);
        assert_eq!(
            journal.udid_by_serial("S2", false).unwrap().as_deref(),
            Some("C")
        );
        // A device that reports no serial leaves none behind.
        write(&journal, vec![device("A", "", "a3")]);
        assert_eq!(journal.udid_by_serial("S3", false).unwrap(), None);

        // Rebuilt the same from the log.
        let reopened = Journal::open(dir.path()).unwrap();
        for (serial, udid) in [
            ("S2", Some("C")),
            ("S4", Some("B")),
            ("S1", None),
            ("S3", None),
        ] {
            assert_eq!(
                reopened.udid_by_serial(serial, false).unwrap().as_deref(),
                udid
            );
        }
    }

    #[test]
    fn a_torn_tail_is_ignored_by_readers_and_cut_off_by_the_next_writer() {
        let (dir, journal) = journal();
        write(&journal, vec![put(Kind::Cert, "01", "kept")]);
        let path = dir.path().join(LOG_FILE);
        let whole = journal.sizes().unwrap().0;
        assert!(
            std::fs::metadata(&path).unwrap().len() >= whole + PREALLOCATE_BYTES,
            "zeros ahead of the next frame"
        );

        // Half of a frame, as a crash mid-write leaves it.
        let (frame, _) = encode_frame(&[put(Kind::Cert, "02", "lost")], 0);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&frame[..frame.len() / 2], whole).unwrap();
        drop(file);

        let reader = Journal::open(dir.path()).unwrap();
        assert_eq!(text(&reader, Kind::Cert, "01").as_deref(), Some("kept"));
        assert_eq!(text(&reader, Kind::Cert, "02"), None);
        assert_eq!(reader.tail().unwrap(), Tail::Torn { at: whole });
        let torn = std::fs::read(&path).unwrap();
        assert_eq!(
            torn.get(whole as usize),
            frame.first(),
            "readers cut nothing"
        );

        write(&reader, vec![put(Kind::Cert, "03", "after")]);
        assert_eq!(reader.tail().unwrap(), Tail::Clean);
        let again = Journal::open(dir.path()).unwrap();
        assert_eq!(text(&again, Kind::Cert, "03").as_deref(), Some("after"));
        assert_eq!(text(&again, Kind::Cert, "02"), None);
        assert_eq!(again.count(Kind::Cert).unwrap(), 2);

        // A whole frame whose bytes changed fails its check and ends the log likewise.
        let end = again.sizes().unwrap().0;
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[end as usize - 1] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let flipped = Journal::open(dir.path()).unwrap();
        assert_eq!(text(&flipped, Kind::Cert, "03"), None);
        assert_eq!(text(&flipped, Kind::Cert, "01").as_deref(), Some("kept"));
    }

    #[test]
    fn a_frame_a_crash_left_behind_a_lost_one_is_never_read_again() {
        let (dir, journal) = journal();
        write(&journal, vec![put(Kind::Cert, "01", "kept")]);
        let path = dir.path().join(LOG_FILE);
        let end = journal.sizes().unwrap().0;

        // Two frames written, the first lost to a crash (zeros), the second on disk.
        let (lost, _) = encode_frame(&[put(Kind::Cert, "02", "lost")], 0);
        let (behind, _) = encode_frame(&[put(Kind::Cert, "03", "never acknowledged")], 0);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&behind, end + lost.len() as u64).unwrap();
        drop(file);

        // The log ends where the lost frame would start; a new frame of the lost one's
        // length lands where it was, and what lay behind it does not come back.
        let reopened = Journal::open(dir.path()).unwrap();
        assert_eq!(reopened.count(Kind::Cert).unwrap(), 1);
        write(&reopened, vec![put(Kind::Cert, "04", "lost")]);
        assert_eq!(reopened.sizes().unwrap().0, end + lost.len() as u64);
        let later = Journal::open(dir.path()).unwrap();
        assert_eq!(text(&later, Kind::Cert, "03"), None);
        assert_eq!(later.count(Kind::Cert).unwrap(), 2);
    }

    #[test]
    fn bytes_damaged_after_they_were_written_are_read_past_not_cut() {
        let (dir, journal) = journal();
        let mut starts = Vec::new();
        for n in 0..5 {
            starts.push(journal.sizes().unwrap().0);
            write(&journal, vec![put(Kind::Cert, &format!("0{n}"), "record")]);
        }
        let path = dir.path().join(LOG_FILE);
        let end = journal.sizes().unwrap().0;

        // One byte of the second frame's payload flipped on disk, long after it was synced.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[starts[1] as usize + FRAME_HEAD + 20] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();

        let reopened = Journal::open(dir.path()).unwrap();
        assert_eq!(reopened.damaged().unwrap(), [(starts[1], starts[2])]);
        assert_eq!(reopened.tail().unwrap(), Tail::Clean);
        assert_eq!(reopened.sizes().unwrap().0, end, "read to the end");
        let keys: Vec<String> = reopened
            .all(Kind::Cert, false)
            .unwrap()
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(
            keys,
            ["00", "02", "03", "04"],
            "only the damaged frame's record is lost"
        );

        // A writer goes on after the last frame and cuts nothing.
        write(&reopened, vec![put(Kind::Cert, "05", "after")]);
        let again = Journal::open(dir.path()).unwrap();
        assert_eq!(again.count(Kind::Cert).unwrap(), 5);

        // Its length field damaged too: found by scanning on.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[starts[3] as usize] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let scanned = Journal::open(dir.path()).unwrap();
        assert_eq!(
            scanned.damaged().unwrap(),
            [(starts[1], starts[2]), (starts[3], starts[4])]
        );
        assert_eq!(scanned.count(Kind::Cert).unwrap(), 4);

        // Compaction leaves the damage behind.
        scanned.compact().unwrap();
        assert_eq!(scanned.damaged().unwrap(), []);
        assert_eq!(
            Journal::open(dir.path())
                .unwrap()
                .count(Kind::Cert)
                .unwrap(),
            4
        );
    }

    #[test]
    fn another_process_appends_are_seen_by_the_next_read() {
        let (dir, server) = journal();
        write(&server, vec![put(Kind::Cert, "01", "first")]);
        assert_eq!(text(&server, Kind::Cert, "01").as_deref(), Some("first"));

        // An admin command: its own handle on the same file.
        let admin = Journal::open(dir.path()).unwrap();
        write(
            &admin,
            vec![
                put(Kind::Cert, "01", "revoked"),
                put(Kind::Cert, "02", "new"),
            ],
        );
        assert_eq!(text(&server, Kind::Cert, "01").as_deref(), Some("revoked"));
        assert_eq!(text(&server, Kind::Cert, "02").as_deref(), Some("new"));

        // The server writes on after it (it reads what the admin wrote before appending).
        write(&server, vec![put(Kind::Cert, "03", "third")]);
        let later = Journal::open(dir.path()).unwrap();
        assert_eq!(later.count(Kind::Cert).unwrap(), 3);
        assert_eq!(text(&later, Kind::Cert, "01").as_deref(), Some("revoked"));
    }

    #[test]
    fn compaction_keeps_the_latest_records_and_other_handles_follow_it() {
        let (dir, journal) = journal();
        for n in 0..50 {
            write(
                &journal,
                vec![
                    device("U1", &format!("S{n}"), &format!("version {n}")),
                    put(Kind::Challenge, &format!("h{n}"), "c"),
                ],
            );
            if n > 0 {
                write(
                    &journal,
                    vec![removal(Kind::Challenge, &format!("h{}", n - 1))],
                );
            }
        }
        let other = Journal::open(dir.path()).unwrap();
        let (before, after) = journal.compact().unwrap();
        assert!(after < before / 10, "{before} -> {after}");
        assert_eq!(
            text(&journal, Kind::Device, "U1").as_deref(),
            Some("version 49")
        );
        assert_eq!(journal.count(Kind::Challenge).unwrap(), 1);
        assert_eq!(
            journal.udid_by_serial("S49", false).unwrap().as_deref(),
            Some("U1")
        );

        // The other handle notices the new file and reads it; its writes land in it.
        assert_eq!(
            text(&other, Kind::Device, "U1").as_deref(),
            Some("version 49")
        );
        write(&other, vec![put(Kind::Cert, "0c", "after compaction")]);
        assert_eq!(
            text(&journal, Kind::Cert, "0c").as_deref(),
            Some("after compaction")
        );
        let reopened = Journal::open(dir.path()).unwrap();
        assert_eq!(
            reopened.udid_by_serial("S49", false).unwrap().as_deref(),
            Some("U1")
        );
        assert_eq!(reopened.count(Kind::Challenge).unwrap(), 1);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, [std::ffi::OsString::from(LOG_FILE)]);
    }

    #[test]
    fn concurrent_committers_share_syncs_and_lose_nothing() {
        let (dir, journal) = journal();
        let journal = Arc::new(journal);
        let gate = Arc::new(Mutex::new(()));
        let handles: Vec<_> = (0..8)
            .map(|thread| {
                let journal = Arc::clone(&journal);
                let gate = Arc::clone(&gate);
                std::thread::spawn(move || {
                    for n in 0..50 {
                        // The Store's state lock, as a transaction holds it.
                        let held = gate.lock().unwrap();
                        journal.begin().unwrap();
                        let key = format!("{thread:02}{n:04}");
                        journal.stage(put(Kind::Cert, &key, &key)).unwrap();
                        let ticket = journal.commit().unwrap().unwrap();
                        drop(held);
                        journal.wait_durable(ticket).unwrap();
                        assert_eq!(
                            text(&journal, Kind::Cert, &key).as_deref(),
                            Some(key.as_str())
                        );
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        let reopened = Journal::open(dir.path()).unwrap();
        assert_eq!(reopened.count(Kind::Cert).unwrap(), 400);
    }

    #[test]
    fn logs_that_are_not_ours_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        std::fs::write(&path, b"not a log at all, longer than the magic").unwrap();
        assert!(matches!(
            Journal::open(dir.path()),
            Err(StoreError::Corrupt { .. })
        ));
        std::fs::write(&path, b"otad").unwrap();
        assert!(matches!(
            Journal::open(dir.path()),
            Err(StoreError::Corrupt { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        assert!(
            Journal::open(dir.path()).is_err(),
            "a symlink is not followed"
        );
        std::fs::remove_file(&path).unwrap();
        Journal::create(dir.path(), &[]).unwrap();
        assert!(Journal::create(dir.path(), &[]).is_err(), "created once");
        let journal = Journal::open(dir.path()).unwrap();
        assert!(journal
            .stage(put(Kind::Cert, &"k".repeat(256), "x"))
            .is_err());
    }

    #[test]
    fn payloads_that_pass_their_check_but_do_not_decode_are_refused() {
        for payload in [
            vec![9u8, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![1u8, 2, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![1u8, 0, 5, 0, b'a'],
            vec![1u8, 1, 1, 0, b'a', 0, 0, 1, 0, 0, 0, b'x'],
        ] {
            assert!(decode_payload(&payload).is_err(), "{payload:?}");
        }
        let (frame, _) = encode_frame(&[device("U", "S", "v"), removal(Kind::Cert, "0a")], 0);
        let decoded = decode_payload(&frame[FRAME_HEAD..]).unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!((decoded[0].key, decoded[0].tag), ("U", "S"));
        assert_eq!(decoded[1].value, None);
    }
}
