//! The state directory: CA and keys, challenges, devices and issued certificates, as files.
//!
//! Layout under the state dir:
//!
//! ```text
//! otad.toml                     configuration
//! ca/ca.pem ca.key              the SCEP CA (keys mode 0600)
//! ca/ra.pem ra.key              the RA: decrypts SCEP requests, signs CertReps
//! ca/signer.pem signer.key      signs profiles
//! challenges/<sha256>.json      one live challenge, named by the hash of its value
//! devices/<UDID>.json           one device, after strict validation of the UDID
//! certs/<serial hex>.json       one issued certificate, created once, never overwritten
//! blocked/<SERIAL>.json         one serial the admin blocked (`otad device block`)
//! .lock                         flock shared by the server and the CLI
//! ```
//!
//! No device string reaches a path unvalidated, and challenge values never reach the disk in
//! clear. Reads need no lock because every write is an atomic replace; read-modify-write
//! sequences run inside [`Store::transaction`].

pub mod blocked;
pub mod challenges;
pub mod crl;
pub mod fsutil;
mod pending;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde::{Deserialize, Serialize};

use challenges::ChallengeIndex;
pub use challenges::{ChallengeLimits, NoRoom};
use fsutil::{create_atomic, read_optional, remove_durably, write_atomic, FileLock};
pub use pending::{
    new_pending_id, transaction_index_name, valid_pending_id, Decision, PendingRequest,
    EXPIRED_REASON, MAX_PENDING_RECORDS, PENDING_RETENTION_SECONDS, PENDING_TTL_SECONDS,
    TRANSACTION_INDEX_DIR,
};

/// The folders of a state dir, with their modes: keys, challenges and device records (which
/// hold serial numbers, IMEIs and user names) are for otad's user alone.
const FOLDERS: &[(&str, u32)] = &[
    ("ca", 0o700),
    ("challenges", 0o700),
    ("devices", 0o700),
    ("certs", 0o750),
];

/// The state dir's own mode.
const ROOT_MODE: u32 = 0o750;

fn create_dir(path: &Path, mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Err(err) if err.kind() != io::ErrorKind::AlreadyExists => Err(io_err(path)(err)),
        _ => Ok(()),
    }
}

/// History entries kept per device; older ones are dropped first.
pub const MAX_DEVICE_HISTORY: usize = 50;

/// The longest UDID accepted (Apple's are 25, 36 or 40 characters).
pub const MAX_UDID_LEN: usize = 64;

/// A failure of the state directory.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// A file could not be read or written.
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A state file exists but does not parse.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate with this serial is already recorded.
    SerialTaken(String),
    /// A name from outside (UDID, serial) is not safe to use in a path.
    InvalidName(&'static str),
    /// The state dir has no such layout; `otad init` makes one.
    NotInitialized(PathBuf),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StoreError::Corrupt { path, reason } => {
                write!(f, "{}: corrupt state file: {reason}", path.display())
            }
            StoreError::SerialTaken(serial) => write!(f, "certificate {serial}: already recorded"),
            StoreError::InvalidName(what) => write!(f, "{what}: not a valid name"),
            StoreError::NotInitialized(path) => write!(
                f,
                "{}: not an otad state dir (run `otad init --state {}` first)",
                path.display(),
                path.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a challenge was handed out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChallengePurpose {
    /// Handed out in phase 1; answered in phase 2.
    Phase2,
    /// A one-time SCEP challenge handed out in phase 2 or 3, bound to a device.
    Scep,
}

/// A live challenge. Its value is not stored: the file is named by its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeRecord {
    /// What the challenge is for.
    pub purpose: ChallengePurpose,
    /// When it was made (unix seconds).
    pub created: i64,
    /// When it stops being valid (unix seconds).
    pub expires: i64,
    /// The device it is bound to, for SCEP challenges.
    pub udid: Option<String>,
    /// The certificate subject bound to it, as (attribute, value) pairs, for SCEP challenges.
    pub subject: Vec<(String, String)>,
    /// Who phase 1 admitted when it handed the challenge out: the person and the enrollment
    /// token, where either was presented. Carried to phase 2 and onto the device.
    #[serde(default, skip_serializing_if = "Admission::is_empty")]
    pub admission: Admission,
    /// The client a download's challenge is counted under for
    /// `ota.max_live_challenges_per_client` (an IPv4 address, or an IPv6 /64 as its first
    /// address), so that the counts are rebuilt at start-up; none for phase 2's SCEP ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<IpAddr>,
}

/// Who and what phase 1 let in: the authenticated person and the enrollment token, each where
/// one was presented. It travels with the phase 1 challenge into phase 2, then stays on the
/// device record for phase 3, policy, hooks and the inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The user name phase 1 authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The id of the enrollment token phase 1 accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// That token's note, as the admin wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_note: Option<String>,
}

impl Admission {
    /// True when phase 1 admitted nobody in particular.
    pub fn is_empty(&self) -> bool {
        self.user.is_none() && self.token.is_none() && self.token_note.is_none()
    }
}

/// How far a device has come through enrollment. The transitions live in `ota::machine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DevicePhase {
    /// Phase 2 done: attributes recorded, a SCEP challenge handed out.
    Identified,
    /// The SCEP CA issued the device its identity certificate.
    Certified,
    /// Phase 3 done: the final profile was delivered.
    Enrolled,
}

/// One event in a device's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// What happened ("phase2", "certificate", "phase3").
    pub event: String,
    /// When (unix seconds).
    pub at: i64,
    /// The remote address, where there was one.
    pub remote: String,
    /// A certificate serial, where the event concerns one.
    pub serial: Option<String>,
    /// What the device said about itself in this phase (CHALLENGE excluded).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

impl HistoryEntry {
    /// An event without attributes.
    pub fn new(event: &str, at: i64, remote: &str, serial: Option<&str>) -> HistoryEntry {
        HistoryEntry {
            event: event.into(),
            at,
            remote: remote.into(),
            serial: serial.map(str::to_string),
            attributes: BTreeMap::new(),
        }
    }
}

/// A device, by UDID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The UDID (validated by [`valid_udid`]).
    pub udid: String,
    /// Every attribute the device sent in its latest phase 2 or 3 (CHALLENGE excluded).
    pub attributes: BTreeMap<String, String>,
    /// How far it has come.
    pub phase: DevicePhase,
    /// First seen (unix seconds).
    pub first_seen: i64,
    /// Last seen (unix seconds).
    pub last_seen: i64,
    /// Serials of the certificates issued to it, oldest first.
    pub certificates: Vec<String>,
    /// The latest events, oldest first, at most [`MAX_DEVICE_HISTORY`].
    pub history: Vec<HistoryEntry>,
    /// Who phase 1 admitted for the device's latest phase 2.
    #[serde(default, skip_serializing_if = "Admission::is_empty")]
    pub admission: Admission,
    /// The template variables `hooks.phase2` returned in the device's latest phase 2, kept
    /// for its phase 3 (the file is 0600; secrets belong in `hooks.phase3`'s output, which is
    /// never stored).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hook_variables: BTreeMap<String, String>,
}

impl DeviceRecord {
    /// Appends an event, dropping the oldest beyond [`MAX_DEVICE_HISTORY`].
    pub fn record(&mut self, entry: HistoryEntry) {
        self.last_seen = self.last_seen.max(entry.at);
        self.history.push(entry);
        let excess = self.history.len().saturating_sub(MAX_DEVICE_HISTORY);
        self.history.drain(..excess);
    }
}

/// A certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// Serial, lowercase hex.
    pub serial: String,
    /// The device it was issued to, when issued through OTA.
    pub udid: Option<String>,
    /// The subject, as the certificate states it.
    pub subject: String,
    /// Issued at (unix seconds).
    pub issued_at: i64,
    /// Not valid after (unix seconds).
    pub not_after: i64,
    /// Revoked at (unix seconds), if revoked.
    pub revoked: Option<i64>,
    /// Why it was revoked: an RFC 5280 §5.3.1 reason name such as "keyCompromise".
    #[serde(default)]
    pub revocation_reason: Option<String>,
    /// Which kind of challenge authorised it ("ota" or "static").
    pub authorised_by: String,
    /// The serial of the certificate a RenewalReq replaced this one with, if renewed.
    #[serde(default)]
    pub superseded_by: Option<String>,
    /// The certificate, PEM.
    pub pem: String,
}

/// True for a UDID safe to use as a file name: 1 to 64 of `A-Z a-z 0-9 -`, not starting
/// with `-`.
pub fn valid_udid(udid: &str) -> bool {
    !udid.is_empty()
        && udid.len() <= MAX_UDID_LEN
        && !udid.starts_with('-')
        && udid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The serial-number index: `devices/by-serial/<SERIAL>` holds the UDID of the device that
/// last reported that serial number.
pub const SERIAL_INDEX: &str = "devices/by-serial";

/// The longest device serial number accepted (Apple's have 10 to 12 characters).
pub const MAX_DEVICE_SERIAL_LEN: usize = 32;

/// A device serial number as the index names it: 1 to 32 of `A-Z 0-9`, uppercased; `None`
/// for anything else, which then never reaches a path.
pub fn normalize_device_serial(serial: &str) -> Option<String> {
    let ok = !serial.is_empty()
        && serial.len() <= MAX_DEVICE_SERIAL_LEN
        && serial.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then(|| serial.to_ascii_uppercase())
}

/// The indexable serial number a device record reports, if any.
/// Whether the serial index entry at `entry` exists and names `udid`.
fn index_names(entry: &Path, udid: &str) -> bool {
    read_optional(entry)
        .ok()
        .flatten()
        .is_some_and(|named| String::from_utf8_lossy(&named).trim() == udid)
}

fn device_serial(device: &DeviceRecord) -> Option<String> {
    device
        .attributes
        .get("SERIAL")
        .and_then(|s| normalize_device_serial(s))
}

fn valid_serial(serial: &str) -> bool {
    !serial.is_empty()
        && serial.len() <= 64
        && serial
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn challenge_file_name(value: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.json")
}

/// The current time in unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A unix time as RFC 3339, for people (the number itself if out of range).
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// An open state directory.
pub struct Store {
    root: PathBuf,
    in_process: Mutex<()>,
    /// Live challenges as this process counts them, by expiry: built from the folder on
    /// first use, then kept up by puts and takes (see [`challenges`]).
    challenge_index: OnceLock<Mutex<ChallengeIndex>>,
    /// The latest failed re-sign of the CRL (see [`crl::ResignFailure`]).
    crl_resign_failure: Mutex<Option<crl::ResignFailure>>,
}

/// Room taken for one challenge under the caps ([`Store::reserve_challenge`]): stored by
/// [`ChallengeSlot::put`], given back when dropped unstored.
pub struct ChallengeSlot<'a> {
    store: &'a Store,
    record: ChallengeRecord,
    stored: bool,
}

impl ChallengeSlot<'_> {
    /// The record the room was taken for.
    pub fn record(&self) -> &ChallengeRecord {
        &self.record
    }

    /// Writes the challenge's file; if that fails, the room is given back.
    pub fn put(mut self, value: &str) -> Result<(), StoreError> {
        self.store.write_challenge(value, &self.record)?;
        self.stored = true;
        Ok(())
    }
}

impl Drop for ChallengeSlot<'_> {
    fn drop(&mut self) {
        if !self.stored {
            self.store
                .challenge_index()
                .remove(self.record.expires, self.record.client);
        }
    }
}

impl Store {
    /// Creates the folders of a new state dir (the folder itself may exist, empty).
    pub fn create(root: &Path) -> Result<Store, StoreError> {
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        create_dir(root, ROOT_MODE)?;
        for (folder, mode) in FOLDERS {
            create_dir(&root.join(folder), *mode)?;
        }
        fsutil::sync_dir(root).map_err(io_err(root))?;
        Store::open(root)
    }

    /// Opens an existing state dir.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for (folder, _) in FOLDERS {
            if !root.join(folder).is_dir() {
                return Err(StoreError::NotInitialized(root.to_path_buf()));
            }
        }
        Ok(Store {
            root: root.to_path_buf(),
            in_process: Mutex::new(()),
            challenge_index: OnceLock::new(),
            crl_resign_failure: Mutex::new(None),
        })
    }

    /// A new, empty state dir in a temp folder, for tests (the folder goes with the handle).
    #[cfg(test)]
    pub(crate) fn temporary() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::create(&dir.path().join("state")).expect("state dir");
        (dir, store)
    }

    /// The state dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path under the state dir, for files the CLI writes (`ca/ca.pem` and the like).
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// Runs `work` holding the state lock: one writer at a time across this process's threads
    /// and the CLI.
    pub fn transaction<T, E>(&self, work: impl FnOnce() -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let _thread = self
            .in_process
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let lock_path = self.root.join(".lock");
        let _process = FileLock::acquire(&lock_path).map_err(io_err(&lock_path))?;
        work()
    }

    /// Writes a file under the state dir atomically.
    pub fn write_file(&self, relative: &str, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
        let path = self.root.join(relative);
        write_atomic(&path, bytes, mode).map_err(io_err(&path))
    }

    /// Removes a file under the state dir (a missing one is not an error).
    pub fn remove_file(&self, relative: &str) -> Result<(), StoreError> {
        let path = self.root.join(relative);
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(err)),
            _ => Ok(()),
        }
    }

    /// Reads a file under the state dir.
    pub fn read_file(&self, relative: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.root.join(relative);
        fsutil::read_bounded(&path, fsutil::MAX_STATE_FILE_BYTES).map_err(io_err(&path))
    }

    fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, StoreError> {
        let Some(bytes) = read_optional(path).map_err(io_err(path))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| StoreError::Corrupt {
                path: path.to_path_buf(),
                reason: err.to_string(),
            })
    }

    fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Stores a new challenge under the hash of its value, under no cap: phase 2's SCEP
    /// challenge, which replaces the phase 1 challenge the device just spent.
    pub fn put_challenge(&self, value: &str, record: &ChallengeRecord) -> Result<(), StoreError> {
        self.write_challenge(value, record)?;
        self.challenge_index().add(record.expires, record.client);
        Ok(())
    }

    fn write_challenge(&self, value: &str, record: &ChallengeRecord) -> Result<(), StoreError> {
        let path = self
            .root
            .join("challenges")
            .join(challenge_file_name(value));
        create_atomic(&path, &Self::to_json(record), 0o600).map_err(io_err(&path))
    }

    /// Takes room for `record` under `limits` if there is, in one step with the check, so
    /// that threads racing at a cap cannot pass it: [`ChallengeSlot::put`] then stores the
    /// challenge, and a slot dropped unstored gives its room back. The per-client bound
    /// counts `record.client`. Expired challenges never count, swept or not.
    pub fn reserve_challenge(
        &self,
        record: ChallengeRecord,
        limits: ChallengeLimits,
        now: i64,
    ) -> Result<ChallengeSlot<'_>, NoRoom> {
        self.challenge_index()
            .reserve(record.expires, record.client, limits, now)?;
        Ok(ChallengeSlot {
            store: self,
            record,
            stored: false,
        })
    }

    /// Whether [`Store::reserve_challenge`] would find room for a challenge counted under
    /// `client`, without taking it.
    pub fn check_challenge_room(
        &self,
        client: Option<IpAddr>,
        limits: ChallengeLimits,
        now: i64,
    ) -> Result<(), NoRoom> {
        self.challenge_index().check(client, limits, now)
    }

    /// The index of live challenges, built from the folder on first use: every record that
    /// reads and has not expired counts (an unreadable file is fsck's to report).
    fn challenge_index(&self) -> MutexGuard<'_, ChallengeIndex> {
        self.challenge_index
            .get_or_init(|| Mutex::new(self.read_challenge_index(now())))
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_challenge_index(&self, now: i64) -> ChallengeIndex {
        let mut index = ChallengeIndex::default();
        index.prune(now);
        let dir = self.root.join("challenges");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return index;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            if let Ok(Some(record)) = self.read_json::<ChallengeRecord>(&path) {
                index.add(record.expires, record.client);
            }
        }
        index
    }

    /// Live challenges now: expired ones do not count, swept or not.
    pub fn live_challenges(&self) -> usize {
        self.live_challenges_at(now())
    }

    /// Live challenges at `now`.
    pub fn live_challenges_at(&self, now: i64) -> usize {
        self.challenge_index().live(now)
    }

    /// Expired challenges whose files the sweeper has not removed yet, as far as this
    /// process saw them expire: the sweeper runs early when they are many.
    pub fn expired_challenges_unswept(&self) -> usize {
        self.challenge_index().expired_unswept()
    }

    /// Takes a challenge handed out for `purpose`: whoever removes its file owns it, so two
    /// requests racing with the same value cannot both succeed. Returns `None` for an
    /// unknown or already used one, and for one handed out for another purpose, which stays
    /// where it is: a refused request changes nothing. Expiry is the caller's to judge.
    pub fn take_challenge(
        &self,
        value: &str,
        purpose: ChallengePurpose,
    ) -> Result<Option<ChallengeRecord>, StoreError> {
        // Built before the file goes, so that a first build cannot miss what is taken here.
        drop(self.challenge_index());
        let path = self
            .root
            .join("challenges")
            .join(challenge_file_name(value));
        let Some(record) = self.read_json::<ChallengeRecord>(&path)? else {
            return Ok(None);
        };
        if record.purpose != purpose {
            return Ok(None);
        }
        if remove_durably(&path).map_err(io_err(&path))? {
            self.challenge_index().remove(record.expires, record.client);
            Ok(Some(record))
        } else {
            Ok(None)
        }
    }

    /// Removes expired challenges; returns how many. Unparsable files are left for an admin.
    /// The counts are not touched: what expired stopped counting when it expired.
    pub fn sweep_challenges(&self, now: i64) -> Result<usize, StoreError> {
        let dir = self.root.join("challenges");
        // Files are removed here: only in the state's own folder, never through a symlink.
        if !fsutil::is_real_dir(&dir) {
            return Err(io_err(&dir)(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a folder of the state dir (a symlink?)",
            )));
        }
        // Built on first use elsewhere: a CLI sweep has no counts to keep up.
        if let Some(index) = self.challenge_index.get() {
            index
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .swept();
        }
        let mut removed = 0;
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            if let Ok(Some(record)) = self.read_json::<ChallengeRecord>(&path) {
                if record.expires <= now && remove_durably(&path).map_err(io_err(&path))? {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Counts live challenge files.
    pub fn count_challenges(&self) -> Result<usize, StoreError> {
        let dir = self.root.join("challenges");
        let entries = std::fs::read_dir(&dir).map_err(io_err(&dir))?;
        Ok(entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count())
    }

    fn device_path(&self, udid: &str) -> Result<PathBuf, StoreError> {
        if !valid_udid(udid) {
            return Err(StoreError::InvalidName("UDID"));
        }
        Ok(self.root.join("devices").join(format!("{udid}.json")))
    }

    /// The device with this UDID, if known.
    pub fn device(&self, udid: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let path = self.device_path(udid)?;
        self.read_json(&path)
    }

    /// Writes a device record and its serial-number index entry (inside a
    /// [`Store::transaction`], which makes the pair atomic for every other reader and writer).
    ///
    /// The index entry is written first and names the UDID; [`Store::device_by_serial`]
    /// checks the record it leads to, so a crash between the two writes leaves an entry that
    /// reads as "not found" or the old record, never another device.
    pub fn save_device(&self, device: &DeviceRecord) -> Result<(), StoreError> {
        let path = self.device_path(&device.udid)?;
        let serial = device_serial(device);
        let previous = self
            .device(&device.udid)
            .ok()
            .flatten()
            .and_then(|old| device_serial(&old));
        if let Some(serial) = &serial {
            let dir = self.root.join(SERIAL_INDEX);
            if !dir.is_dir() {
                create_dir(&dir, 0o700)?;
                fsutil::sync_dir(&self.root.join("devices")).map_err(io_err(&dir))?;
            }
            // Written only when it does not name this device yet: a record saved at every
            // step would otherwise rewrite the same entry durably each time.
            let entry = dir.join(serial);
            if !index_names(&entry, &device.udid) {
                write_atomic(&entry, format!("{}\n", device.udid).as_bytes(), 0o600)
                    .map_err(io_err(&entry))?;
            }
        }
        write_atomic(&path, &Self::to_json(device), 0o600).map_err(io_err(&path))?;

        // A device that now reports another serial number leaves its old entry only if the
        // entry still names it (another device may have taken that serial since).
        if let Some(old) = previous.filter(|old| Some(old) != serial.as_ref()) {
            let entry = self.root.join(SERIAL_INDEX).join(&old);
            if index_names(&entry, &device.udid) {
                remove_durably(&entry).map_err(io_err(&entry))?;
            }
        }
        Ok(())
    }

    /// The device whose latest phase reported this serial number (any case), if known: one
    /// index entry and one record read, no folder scan.
    pub fn device_by_serial(&self, serial: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let serial = normalize_device_serial(serial).ok_or(StoreError::InvalidName("serial"))?;
        let entry = self.root.join(SERIAL_INDEX).join(&serial);
        let Some(udid) = read_optional(&entry).map_err(io_err(&entry))? else {
            return Ok(None);
        };
        let udid = String::from_utf8_lossy(&udid).trim().to_string();
        if !valid_udid(&udid) {
            return Err(StoreError::Corrupt {
                path: entry,
                reason: "not a UDID".into(),
            });
        }
        Ok(self
            .device(&udid)?
            .filter(|device| device_serial(device).as_deref() == Some(serial.as_str())))
    }

    /// Every device, sorted by UDID (an admin command; never on the request path).
    pub fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.list("devices")
    }

    /// Every certificate record, sorted by serial (an admin command).
    pub fn certs(&self) -> Result<Vec<CertRecord>, StoreError> {
        self.list("certs")
    }

    /// Every device that reads, sorted by UDID, and the files that do not (an admin command:
    /// one corrupt record must not hide the others).
    pub fn devices_skipping(&self) -> Result<(Vec<DeviceRecord>, Vec<StoreError>), StoreError> {
        self.list_skipping("devices")
    }

    /// Every certificate record that reads, sorted by serial, and the files that do not.
    pub fn certs_skipping(&self) -> Result<(Vec<CertRecord>, Vec<StoreError>), StoreError> {
        self.list_skipping("certs")
    }

    fn list<T: for<'de> Deserialize<'de>>(&self, folder: &str) -> Result<Vec<T>, StoreError> {
        let (records, mut skipped) = self.list_skipping(folder)?;
        match skipped.pop() {
            Some(err) => Err(err),
            None => Ok(records),
        }
    }

    fn list_skipping<T: for<'de> Deserialize<'de>>(
        &self,
        folder: &str,
    ) -> Result<(Vec<T>, Vec<StoreError>), StoreError> {
        let dir = self.root.join(folder);
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        let mut records = Vec::with_capacity(paths.len());
        let mut skipped = Vec::new();
        for path in paths {
            match self.read_json(&path) {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(err) => skipped.push(err),
            }
        }
        Ok((records, skipped))
    }

    fn cert_path(&self, serial: &str) -> Result<PathBuf, StoreError> {
        if !valid_serial(serial) {
            return Err(StoreError::InvalidName("certificate serial"));
        }
        Ok(self.root.join("certs").join(format!("{serial}.json")))
    }

    /// The certificate with this serial (lowercase hex), if we issued it.
    pub fn cert(&self, serial: &str) -> Result<Option<CertRecord>, StoreError> {
        let path = self.cert_path(serial)?;
        self.read_json(&path)
    }

    /// Records a newly issued certificate. A serial is recorded once: a second record with
    /// the same serial fails with [`StoreError::SerialTaken`] and changes nothing.
    pub fn create_cert(&self, cert: &CertRecord) -> Result<(), StoreError> {
        let path = self.cert_path(&cert.serial)?;
        match create_atomic(&path, &Self::to_json(cert), 0o644) {
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                Err(StoreError::SerialTaken(cert.serial.clone()))
            }
            other => other.map_err(io_err(&path)),
        }
    }

    /// Rewrites an existing certificate record (revocation).
    pub fn update_cert(&self, cert: &CertRecord) -> Result<(), StoreError> {
        let path = self.cert_path(&cert.serial)?;
        write_atomic(&path, &Self::to_json(cert), 0o644).map_err(io_err(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        Store::temporary()
    }

    fn challenge(purpose: ChallengePurpose) -> ChallengeRecord {
        ChallengeRecord {
            purpose,
            created: 1,
            expires: 100,
            udid: None,
            subject: Vec::new(),
            admission: Admission::default(),
            client: None,
        }
    }

    #[test]
    fn open_refuses_an_uninitialised_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::NotInitialized(_))
        ));
    }

    #[test]
    fn challenge_is_taken_once_and_not_stored_in_clear() {
        let (_dir, store) = store();
        store
            .put_challenge("s3cret-value", &challenge(ChallengePurpose::Phase2))
            .unwrap();
        let names: Vec<String> = std::fs::read_dir(store.path("challenges"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1);
        assert!(!names[0].contains("s3cret"));
        let body = std::fs::read_to_string(store.path("challenges").join(&names[0])).unwrap();
        assert!(!body.contains("s3cret"));

        let taken = store
            .take_challenge("s3cret-value", ChallengePurpose::Phase2)
            .unwrap()
            .unwrap();
        assert_eq!(taken.purpose, ChallengePurpose::Phase2);
        assert_eq!(
            store
                .take_challenge("s3cret-value", ChallengePurpose::Phase2)
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .take_challenge("other", ChallengePurpose::Phase2)
                .unwrap(),
            None
        );
    }

    #[test]
    fn racing_takers_have_one_winner() {
        let (_dir, store) = store();
        store
            .put_challenge("raced", &challenge(ChallengePurpose::Scep))
            .unwrap();
        let store = std::sync::Arc::new(store);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    store
                        .take_challenge("raced", ChallengePurpose::Scep)
                        .unwrap()
                        .is_some()
                })
            })
            .collect();
        let winners = handles
            .into_iter()
            .filter(|_| true)
            .map(|h| h.join().unwrap())
            .filter(|w| *w)
            .count();
        assert_eq!(winners, 1);
    }

    const CAP: ChallengeLimits = ChallengeLimits {
        max_live: 4,
        max_per_client: 3,
    };

    /// A phase 1 challenge made at `created`, living `ttl` seconds, counted under `client`.
    fn download(created: i64, ttl: i64, client: &str) -> ChallengeRecord {
        ChallengeRecord {
            created,
            expires: created + ttl,
            client: Some(client.parse().unwrap()),
            ..challenge(ChallengePurpose::Phase2)
        }
    }

    fn files(store: &Store) -> usize {
        store.count_challenges().unwrap()
    }

    #[test]
    fn expired_challenges_free_the_cap_before_any_sweep() {
        let (_dir, store) = store();
        let t = super::now();
        for n in 0..4 {
            let client = format!("192.0.2.{n}");
            let slot = store
                .reserve_challenge(download(t, 60, &client), CAP, t)
                .unwrap();
            slot.put(&format!("value-{n}")).unwrap();
        }
        let refused = store
            .reserve_challenge(download(t + 30, 60, "192.0.2.9"), CAP, t + 30)
            .err();
        assert_eq!(
            refused,
            Some(NoRoom::Full {
                live: 4,
                retry_after: 30
            })
        );
        assert_eq!(store.live_challenges_at(t + 59), 4);

        // At the TTL every one has expired: the cap is free, though no file has gone.
        assert_eq!(store.live_challenges_at(t + 60), 0, "what /metrics shows");
        assert_eq!(files(&store), 4);
        assert_eq!(store.expired_challenges_unswept(), 4);
        store
            .reserve_challenge(download(t + 60, 60, "192.0.2.9"), CAP, t + 60)
            .unwrap()
            .put("after the ttl")
            .unwrap();
        assert_eq!(store.live_challenges_at(t + 60), 1);

        // The sweep removes the files and leaves the count as it is.
        assert_eq!(store.sweep_challenges(t + 60).unwrap(), 4);
        assert_eq!(store.expired_challenges_unswept(), 0);
        assert_eq!(store.live_challenges_at(t + 60), 1);
        assert_eq!(files(&store), 1);
    }

    #[test]
    fn a_client_at_its_bound_is_refused_and_taking_or_dropping_gives_room_back() {
        let (_dir, store) = store();
        let t = super::now();
        let nat = "198.51.100.7";
        for n in 0..3 {
            store
                .reserve_challenge(download(t + n, 60, nat), CAP, t + n)
                .unwrap()
                .put(&format!("nat-{n}"))
                .unwrap();
        }
        let refused = store
            .reserve_challenge(download(t + 10, 60, nat), CAP, t + 10)
            .err();
        assert_eq!(
            refused,
            Some(NoRoom::Client {
                live: 3,
                retry_after: 50
            })
        );
        assert_eq!(
            store.check_challenge_room(Some(nat.parse().unwrap()), CAP, t + 10),
            Err(NoRoom::Client {
                live: 3,
                retry_after: 50
            })
        );
        assert_eq!(files(&store), 3, "a refusal writes nothing");

        // Another address still fits, and its reserved slot holds its place.
        let other = store
            .reserve_challenge(download(t + 10, 60, "198.51.100.8"), CAP, t + 10)
            .unwrap();
        assert_eq!(
            store.check_challenge_room(Some("198.51.100.9".parse().unwrap()), CAP, t + 10),
            Err(NoRoom::Full {
                live: 4,
                retry_after: 50
            })
        );

        // A taken challenge gives its client the room back.
        assert!(store
            .take_challenge("nat-0", ChallengePurpose::Phase2)
            .unwrap()
            .is_some());
        assert_eq!(
            store.check_challenge_room(Some(nat.parse().unwrap()), CAP, t + 10),
            Ok(())
        );

        // A slot dropped unstored (a token refused, a failed write) gives its place back.
        drop(other);
        assert_eq!(store.live_challenges_at(t + 10), 2);
        store
            .reserve_challenge(download(t + 10, 60, nat), CAP, t + 10)
            .unwrap()
            .put("nat-again")
            .unwrap();
        assert_eq!(files(&store), 3);
    }

    #[test]
    fn a_restart_rebuilds_the_counts_from_the_records() {
        let (dir, store) = store();
        let now = super::now();
        for (value, ttl, client) in [
            ("a", 600, "192.0.2.1"),
            ("b", 600, "192.0.2.1"),
            ("c", 600, "2001:db8:1:2::"),
            ("gone", -5, "192.0.2.1"),
        ] {
            store
                .put_challenge(value, &download(now, ttl, client))
                .unwrap();
        }
        let mut scep = challenge(ChallengePurpose::Scep);
        scep.expires = now + 600;
        store.put_challenge("scep", &scep).unwrap();
        std::fs::write(store.path("challenges/corrupt.json"), "{").unwrap();
        drop(store);

        let reopened = Store::open(&dir.path().join("state")).unwrap();
        assert_eq!(
            reopened.live_challenges(),
            4,
            "expired and unreadable ones count nothing"
        );
        let limits = ChallengeLimits {
            max_live: 100,
            max_per_client: 2,
        };
        assert!(matches!(
            reopened.check_challenge_room(Some("192.0.2.1".parse().unwrap()), limits, now),
            Err(NoRoom::Client { live: 2, .. })
        ));
        assert_eq!(
            reopened.check_challenge_room(Some("2001:db8:1:2::".parse().unwrap()), limits, now),
            Ok(())
        );
        // Taking one after the restart gives its client the room back.
        reopened
            .take_challenge("a", ChallengePurpose::Phase2)
            .unwrap()
            .unwrap();
        assert_eq!(
            reopened.check_challenge_room(Some("192.0.2.1".parse().unwrap()), limits, now),
            Ok(())
        );
        assert_eq!(reopened.live_challenges(), 3);
    }

    /// Eight threads try 60 downloads each under `limits`, from one client address or from
    /// one each; returns how many were stored, and the store.
    fn race(limits: ChallengeLimits, one_client: bool) -> (tempfile::TempDir, Store, usize) {
        let (dir, store) = store();
        let store = std::sync::Arc::new(store);
        let now = super::now();
        let handles: Vec<_> = (0..8)
            .map(|thread| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let client = match one_client {
                        true => "203.0.113.1".to_string(),
                        false => format!("203.0.113.{}", 10 + thread),
                    };
                    let mut stored = 0;
                    for n in 0..60 {
                        let record = download(now, 600, &client);
                        if let Ok(slot) = store.reserve_challenge(record, limits, now) {
                            slot.put(&format!("race-{thread}-{n}")).unwrap();
                            stored += 1;
                        }
                        assert!(store.live_challenges_at(now) <= limits.max_live);
                    }
                    stored
                })
            })
            .collect();
        let stored = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let store = std::sync::Arc::into_inner(store).unwrap();
        (dir, store, stored)
    }

    #[test]
    fn threads_racing_at_the_cap_never_pass_it() {
        let limits = ChallengeLimits {
            max_live: 200,
            max_per_client: 0,
        };
        let (_dir, store, stored) = race(limits, false);
        assert_eq!(stored, 200, "480 tried, the cap taken exactly");
        assert_eq!(store.live_challenges(), 200);
        assert_eq!(files(&store), 200);

        let limits = ChallengeLimits {
            max_live: 1000,
            max_per_client: 150,
        };
        let (_dir, store, stored) = race(limits, true);
        assert_eq!(stored, 150, "480 tried from one address");
        assert_eq!(files(&store), 150);
        let held = store
            .challenge_index()
            .live_for("203.0.113.1".parse().unwrap(), super::now());
        assert_eq!(held, 150);
    }

    #[test]
    fn sweep_removes_only_expired() {
        let (_dir, store) = store();
        let mut live = challenge(ChallengePurpose::Phase2);
        live.expires = 1000;
        store
            .put_challenge("old", &challenge(ChallengePurpose::Phase2))
            .unwrap();
        store.put_challenge("live", &live).unwrap();
        assert_eq!(store.sweep_challenges(500).unwrap(), 1);
        assert_eq!(store.count_challenges().unwrap(), 1);
        assert_eq!(
            store
                .take_challenge("live", ChallengePurpose::Scep)
                .unwrap(),
            None,
            "wrong purpose"
        );
        assert!(store
            .take_challenge("live", ChallengePurpose::Phase2)
            .unwrap()
            .is_some());
    }

    #[test]
    fn udids_are_validated_before_reaching_a_path() {
        let (_dir, store) = store();
        for bad in [
            "",
            "../etc/passwd",
            "a/b",
            "-rf",
            "x.json",
            &"A".repeat(65),
            "ÄÖ",
        ] {
            assert!(
                matches!(store.device(bad), Err(StoreError::InvalidName(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            store
                .device("78897E40-F532-5DE0-A7DC-56BAC5CEEB9C")
                .unwrap(),
            None
        );
    }

    #[test]
    fn device_round_trip_and_history_is_bounded() {
        let (_dir, store) = store();
        let mut device = DeviceRecord {
            udid: "00008030-001A35E12345802E".into(),
            attributes: BTreeMap::from([("SERIAL".into(), "ZDL2M9PTJ3".into())]),
            phase: DevicePhase::Identified,
            first_seen: 10,
            last_seen: 10,
            certificates: Vec::new(),
            history: Vec::new(),
            admission: Admission::default(),
            hook_variables: BTreeMap::new(),
        };
        for at in 0..(MAX_DEVICE_HISTORY as i64 + 5) {
            device.record(HistoryEntry::new("phase2", 100 + at, "r", None));
        }
        assert_eq!(device.history.len(), MAX_DEVICE_HISTORY);
        assert_eq!(device.history[0].at, 105);
        store.save_device(&device).unwrap();
        assert_eq!(store.device(&device.udid).unwrap().unwrap(), device);
        assert_eq!(store.devices().unwrap().len(), 1);
    }

    fn device(udid: &str, serial: &str) -> DeviceRecord {
        DeviceRecord {
            udid: udid.into(),
            attributes: BTreeMap::from([("SERIAL".into(), serial.into())]),
            phase: DevicePhase::Identified,
            first_seen: 1,
            last_seen: 1,
            certificates: Vec::new(),
            history: Vec::new(),
            admission: Admission::default(),
            hook_variables: BTreeMap::new(),
        }
    }

    #[test]
    fn devices_are_found_by_serial_through_the_index() {
        let (_dir, store) = store();
        store
            .save_device(&device("UDID-A", "F2LXK0AAHG7F"))
            .unwrap();
        store
            .save_device(&device("UDID-B", "C02ZZ1234567"))
            .unwrap();
        let found = store.device_by_serial("f2lxk0aahg7f").unwrap().unwrap();
        assert_eq!(found.udid, "UDID-A");
        assert_eq!(
            store
                .device_by_serial("C02ZZ1234567")
                .unwrap()
                .unwrap()
                .udid,
            "UDID-B"
        );
        assert_eq!(store.device_by_serial("NOPE").unwrap(), None);
        for bad in ["", "../x", "a/b", "A.B", &"A".repeat(33), "É1"] {
            assert!(
                matches!(store.device_by_serial(bad), Err(StoreError::InvalidName(_))),
                "{bad:?}"
            );
        }

        // A new serial moves the entry; a serial taken over by another device names it.
        store.save_device(&device("UDID-A", "NEWSERIAL1")).unwrap();
        assert_eq!(store.device_by_serial("F2LXK0AAHG7F").unwrap(), None);
        assert!(!store.path(SERIAL_INDEX).join("F2LXK0AAHG7F").exists());
        assert_eq!(
            store.device_by_serial("NEWSERIAL1").unwrap().unwrap().udid,
            "UDID-A"
        );
        store
            .save_device(&device("UDID-C", "C02ZZ1234567"))
            .unwrap();
        assert_eq!(
            store
                .device_by_serial("C02ZZ1234567")
                .unwrap()
                .unwrap()
                .udid,
            "UDID-C"
        );
        store.save_device(&device("UDID-B", "OTHER12345")).unwrap();
        assert_eq!(
            store
                .device_by_serial("C02ZZ1234567")
                .unwrap()
                .unwrap()
                .udid,
            "UDID-C",
            "B's move does not remove C's entry"
        );

        // A stale entry (crash between the two writes) never leads to another device.
        std::fs::write(store.path(SERIAL_INDEX).join("STALE1"), "UDID-A\n").unwrap();
        assert_eq!(store.device_by_serial("STALE1").unwrap(), None);
        // The index folder is no record: listing devices ignores it.
        assert_eq!(store.devices().unwrap().len(), 3);
    }

    #[test]
    fn an_index_entry_is_rewritten_only_when_it_names_another_device() {
        use std::os::unix::fs::MetadataExt;
        let (_dir, store) = store();
        let entry = store.path(SERIAL_INDEX).join("F2LXK0AAHG7F");
        let inode = || std::fs::metadata(&entry).unwrap().ino();

        store
            .save_device(&device("UDID-A", "F2LXK0AAHG7F"))
            .unwrap();
        let first = inode();
        let mut later = device("UDID-A", "F2LXK0AAHG7F");
        later.phase = DevicePhase::Enrolled;
        store.save_device(&later).unwrap();
        assert_eq!(
            inode(),
            first,
            "an entry naming the device is left as it is"
        );
        assert_eq!(
            store.device(&later.udid).unwrap().unwrap().phase,
            DevicePhase::Enrolled
        );

        // Another device took the serial; the first one reporting it again takes it back.
        std::fs::write(&entry, "UDID-B\n").unwrap();
        store.save_device(&later).unwrap();
        assert_ne!(inode(), first);
        assert_eq!(std::fs::read_to_string(&entry).unwrap(), "UDID-A\n");
        assert_eq!(
            store
                .device_by_serial("F2LXK0AAHG7F")
                .unwrap()
                .unwrap()
                .udid,
            "UDID-A"
        );
    }

    #[test]
    fn a_corrupt_record_is_skipped_and_named() {
        let (_dir, store) = store();
        store.save_device(&device("UDID-A", "S1")).unwrap();
        std::fs::write(store.path("devices/UDID-B.json"), "{ not json").unwrap();
        store.save_device(&device("UDID-C", "S3")).unwrap();
        let (devices, skipped) = store.devices_skipping().unwrap();
        let udids: Vec<&str> = devices.iter().map(|d| d.udid.as_str()).collect();
        assert_eq!(udids, ["UDID-A", "UDID-C"]);
        assert_eq!(skipped.len(), 1);
        assert!(
            skipped[0].to_string().contains("UDID-B.json"),
            "{}",
            skipped[0]
        );
        assert!(store.devices().is_err(), "the strict listing still says so");
    }

    #[test]
    fn a_serial_is_recorded_once() {
        let (_dir, store) = store();
        let cert = CertRecord {
            serial: "0a1b".into(),
            udid: None,
            subject: "CN=x".into(),
            issued_at: 1,
            not_after: 2,
            revoked: None,
            revocation_reason: None,
            authorised_by: "static".into(),
            superseded_by: None,
            pem: String::new(),
        };
        store.create_cert(&cert).unwrap();
        let mut other = cert.clone();
        other.subject = "CN=y".into();
        assert!(matches!(
            store.create_cert(&other),
            Err(StoreError::SerialTaken(_))
        ));
        assert_eq!(store.cert("0a1b").unwrap().unwrap().subject, "CN=x");
        assert!(matches!(
            store.cert("0A1B"),
            Err(StoreError::InvalidName(_))
        ));
        assert!(matches!(
            store.cert("../x"),
            Err(StoreError::InvalidName(_))
        ));
    }
}
