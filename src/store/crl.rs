//! The CRL's state in the state dir: the current CRL and the index it is signed from.
//!
//! ```text
//! crl.json   the CRL number last used and every revocation listed, oldest first
//! crl.der    the current CRL, DER, as `GET /crl` and SCEP GetCRL hand it out
//! ```
//!
//! The index is the CRL's own source, so re-signing never reads every certificate record.
//! Signing is the `pki::crl` layer's; this block only reads and writes the two files, each
//! atomically.
//! [`Store::save_crl`] writes the index first: a crash between the two leaves a CRL whose
//! number is behind the index's, or that lacks an entry the index has, which readers take as
//! "sign a new one", never a CRL number used twice. A revocation writes its index entry
//! alone first ([`Store::save_crl_index`]), so from then on the CRL can only catch up.
//!
//! `crl.json` may have been edited by hand or written by another tool, so it is read entry by
//! entry ([`read_index`]): each serial is taken in its canonical spelling
//! ([`canonical_serial`], the one certificate records and the CLI use), so every comparison
//! with a certificate or a CRL sees one form; a serial listed twice counts once, its earliest
//! revocation standing; an entry that cannot be read is set aside and named.
//! [`Store::crl_index`], which writers use, refuses an index with such an entry, so that
//! nothing rewrites `crl.json` without it.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash as _, Hasher as _};
use std::sync::PoisonError;

use serde::{Deserialize, Serialize};

use super::fsutil::read_optional;
use super::{io_err, Store, StoreError};

/// The current CRL, DER, under the state dir.
pub const CRL_FILE: &str = "crl.der";

/// The CRL index, JSON, under the state dir.
pub const CRL_INDEX_FILE: &str = "crl.json";

/// The longest serial a CRL lists, in octets (RFC 5280 section 4.1.2.2 allows 20).
pub const MAX_SERIAL_OCTETS: usize = 20;

/// The most hex digits a serial may be written with, leading zeros included: a serial of
/// [`MAX_SERIAL_OCTETS`] octets and the zero octet DER puts before a high first bit.
pub const MAX_SERIAL_DIGITS: usize = 2 * MAX_SERIAL_OCTETS + 2;

/// The most characters of a serial that cannot be read quoted back in a message.
const MAX_QUOTED_CHARS: usize = 64;

/// Why a serial as written cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialError {
    /// Empty, or a character that is neither a hex digit nor a colon (after a `0x`).
    NotHex,
    /// More than [`MAX_SERIAL_DIGITS`] digits, or more than [`MAX_SERIAL_OCTETS`] octets once
    /// leading zeros are gone.
    TooLong,
}

impl fmt::Display for SerialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SerialError::NotHex => f.write_str("not a hex serial number like 0a1b2c"),
            SerialError::TooLong => write!(f, "longer than {MAX_SERIAL_OCTETS} octets"),
        }
    }
}

impl std::error::Error for SerialError {}

/// A serial as an admin may type it ("0A:1B", "0x0a1b", "A1B", "000a1b") in the form
/// certificate records use and `cert::serial_hex` gives: lowercase hex, no leading zero
/// octets, an even number of digits (or "0").
pub fn canonical_serial(input: &str) -> Result<String, SerialError> {
    let trimmed = input.trim();
    let digits = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed);
    if digits.len() > 3 * MAX_SERIAL_DIGITS {
        return Err(SerialError::TooLong);
    }
    let digits: String = digits
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(SerialError::NotHex);
    }
    let significant = digits.trim_start_matches('0');
    if digits.len() > MAX_SERIAL_DIGITS || significant.len() > 2 * MAX_SERIAL_OCTETS {
        return Err(SerialError::TooLong);
    }
    Ok(match significant.len() {
        0 => "0".to_string(),
        n if n % 2 == 1 => format!("0{significant}"),
        _ => significant.to_string(),
    })
}

/// A serial as written, cut to what a message quotes.
fn quoted(serial: &str) -> String {
    serial.chars().take(MAX_QUOTED_CHARS).collect()
}

/// One revocation the CRL lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    /// The certificate's serial, lowercase hex as certificate records key it (as read, always
    /// canonical).
    pub serial: String,
    /// When it was revoked (unix seconds).
    pub revoked_at: i64,
    /// The RFC 5280 §5.3.1 reason name ("keyCompromise", …).
    pub reason: String,
    /// The certificate's notAfter (unix seconds): once it is long past, the entry leaves the
    /// CRL. Absent in entries recorded before otad kept it; those stay listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
}

/// What the next CRL is signed from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlIndex {
    /// The cRLNumber of the latest CRL signed (0: none yet).
    pub number: u64,
    /// Every revocation, oldest first.
    pub revoked: Vec<RevocationRecord>,
}

impl CrlIndex {
    /// Whether `serial` (in any spelling [`canonical_serial`] reads) is listed.
    pub fn lists(&self, serial: &str) -> bool {
        canonical_serial(serial)
            .is_ok_and(|serial| self.revoked.iter().any(|entry| entry.serial == serial))
    }
}

/// A `crl.json` entry whose serial is not written as otad writes it (letter case, leading
/// zeros, colons, a `0x`); it is read in the canonical spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RespelledEntry {
    /// The entry's place in `revoked`, 1 for the first.
    pub position: usize,
    /// The serial as written (at most 64 characters of it).
    pub given: String,
    /// The serial as read.
    pub serial: String,
}

/// A `crl.json` entry for a serial an earlier entry already lists. The entry revoked first
/// stands (the earlier in the file on a tie); the other is set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateEntry {
    /// The serial (canonical).
    pub serial: String,
    /// The place in `revoked` of the entry set aside, 1 for the first.
    pub dropped_position: usize,
    /// Its revocation time (unix seconds).
    pub dropped_revoked_at: i64,
    /// The place of the entry that stands.
    pub kept_position: usize,
    /// Its revocation time.
    pub kept_revoked_at: i64,
}

/// A `crl.json` entry that cannot be read: not an object with serial, revoked_at and
/// reason, or a serial [`canonical_serial`] refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableEntry {
    /// The entry's place in `revoked`, 1 for the first.
    pub position: usize,
    /// The serial as written (at most 64 characters of it), if the entry has one.
    pub serial: Option<String>,
    /// What is wrong with it.
    pub why: String,
}

impl fmt::Display for UnreadableEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.serial {
            Some(serial) => write!(
                f,
                "entry {} (serial {serial:?}): {}",
                self.position, self.why
            ),
            None => write!(f, "entry {}: {}", self.position, self.why),
        }
    }
}

/// `crl.json` as read entry by entry ([`read_index`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexRead {
    /// The index: every entry that reads, with its canonical serial, each serial once.
    pub index: CrlIndex,
    /// Entries whose serial was written otherwise.
    pub respelled: Vec<RespelledEntry>,
    /// Entries set aside because an earlier-revoked one lists the same serial.
    pub duplicates: Vec<DuplicateEntry>,
    /// Entries that cannot be read, left out of `index`.
    pub unreadable: Vec<UnreadableEntry>,
}

impl IndexRead {
    /// Whether the file is as otad writes it: every serial canonical and listed once, every
    /// entry readable.
    pub fn is_canonical(&self) -> bool {
        self.respelled.is_empty() && self.duplicates.is_empty() && self.unreadable.is_empty()
    }

    /// The index, if every entry reads; else why not, naming the entries and what to do.
    pub fn complete(self) -> Result<CrlIndex, String> {
        let Some(first) = self.unreadable.first() else {
            return Ok(self.index);
        };
        let more = match self.unreadable.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        Err(format!(
            "{first}{more}; correct or remove it by hand (`otad fsck` names every such entry): \
             the next GET /crl or `otad fsck --repair` then signs the CRL"
        ))
    }
}

/// `crl.json` as stored: entries are kept as JSON values, so that one that does not read
/// spoils only itself.
#[derive(Deserialize)]
struct StoredIndex {
    number: u64,
    revoked: Vec<serde_json::Value>,
}

/// Reads `crl.json`'s bytes entry by entry (see the module doc). Fails only when the file as a
/// whole is not an index: not JSON, or without `number` and a `revoked` list.
pub fn read_index(bytes: &[u8]) -> Result<IndexRead, String> {
    let stored: StoredIndex = serde_json::from_slice(bytes).map_err(|err| err.to_string())?;
    let mut read = IndexRead {
        index: CrlIndex {
            number: stored.number,
            revoked: Vec::with_capacity(stored.revoked.len()),
        },
        ..IndexRead::default()
    };
    // Where each serial's standing entry is: in `index.revoked`, and in the file.
    let mut standing: HashMap<String, (usize, usize)> = HashMap::new();

    for (offset, value) in stored.revoked.into_iter().enumerate() {
        let position = offset.saturating_add(1);
        let given_serial = value
            .get("serial")
            .and_then(serde_json::Value::as_str)
            .map(quoted);
        let mut entry: RevocationRecord = match serde_json::from_value(value) {
            Ok(entry) => entry,
            Err(err) => {
                read.unreadable.push(UnreadableEntry {
                    position,
                    serial: given_serial,
                    why: err.to_string(),
                });
                continue;
            }
        };
        let serial = match canonical_serial(&entry.serial) {
            Ok(serial) => serial,
            Err(err) => {
                read.unreadable.push(UnreadableEntry {
                    position,
                    serial: given_serial,
                    why: err.to_string(),
                });
                continue;
            }
        };
        if serial != entry.serial {
            read.respelled.push(RespelledEntry {
                position,
                given: quoted(&entry.serial),
                serial: serial.clone(),
            });
            entry.serial = serial;
        }

        let Some(&(slot, kept_position)) = standing.get(&entry.serial) else {
            standing.insert(entry.serial.clone(), (read.index.revoked.len(), position));
            read.index.revoked.push(entry);
            continue;
        };
        let Some(kept) = read.index.revoked.get_mut(slot) else {
            continue;
        };
        // The earliest revocation stands; on a tie, the entry earlier in the file.
        let duplicate = if entry.revoked_at < kept.revoked_at {
            standing.insert(entry.serial.clone(), (slot, position));
            let kept_revoked_at = entry.revoked_at;
            let dropped = std::mem::replace(kept, entry);
            DuplicateEntry {
                serial: dropped.serial,
                dropped_position: kept_position,
                dropped_revoked_at: dropped.revoked_at,
                kept_position: position,
                kept_revoked_at,
            }
        } else {
            DuplicateEntry {
                serial: entry.serial,
                dropped_position: position,
                dropped_revoked_at: entry.revoked_at,
                kept_position,
                kept_revoked_at: kept.revoked_at,
            }
        };
        read.duplicates.push(duplicate);
    }
    Ok(read)
}

/// A re-sign of the CRL that failed, which the server remembers so that its requests do not
/// try again, each taking the state lock and logging, until the files change or a while has
/// passed (`pki::crl::current` decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResignFailure {
    /// [`Store::crl_stamp`] when it failed.
    pub stamp: u64,
    /// When (unix seconds).
    pub at: i64,
}

impl Store {
    /// The CRL index, for writers: an empty one (number 0) before the first CRL, and an
    /// error naming the entry when one cannot be read (an index saved without it would lose
    /// a revocation).
    pub fn crl_index(&self) -> Result<CrlIndex, StoreError> {
        let path = self.root.join(CRL_INDEX_FILE);
        self.crl_index_read()?
            .complete()
            .map_err(|reason| StoreError::Corrupt { path, reason })
    }

    /// The CRL index as read entry by entry ([`read_index`]), for readers: the entries that
    /// read, and what was respelled, set aside as a duplicate or could not be read.
    pub fn crl_index_read(&self) -> Result<IndexRead, StoreError> {
        let path = self.root.join(CRL_INDEX_FILE);
        let Some(bytes) = read_optional(&path).map_err(io_err(&path))? else {
            return Ok(IndexRead::default());
        };
        read_index(&bytes).map_err(|reason| StoreError::Corrupt { path, reason })
    }

    /// Rewrites `crl.json` as otad writes it, each serial canonical and listed once (inside a
    /// [`Store::transaction`]); whether it had to. An entry that cannot be read is an error
    /// and nothing is written.
    pub fn rewrite_crl_index(&self) -> Result<bool, StoreError> {
        let read = self.crl_index_read()?;
        if read.is_canonical() {
            return Ok(false);
        }
        let path = self.root.join(CRL_INDEX_FILE);
        let index = read
            .complete()
            .map_err(|reason| StoreError::Corrupt { path, reason })?;
        self.save_crl_index(&index)?;
        Ok(true)
    }

    /// The current CRL's DER, if one was signed.
    pub fn crl(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.root.join(CRL_FILE);
        read_optional(&path).map_err(io_err(&path))
    }

    /// Stores the index alone (inside a [`Store::transaction`]): a revocation's first step,
    /// before its certificate record and the CRL signed from the index.
    pub fn save_crl_index(&self, index: &CrlIndex) -> Result<(), StoreError> {
        let path = self.root.join(CRL_INDEX_FILE);
        self.replace_state_file(&path, &Self::to_json(index), 0o644)
    }

    /// Stores a newly signed CRL and the index it was signed from (inside a
    /// [`Store::transaction`]). The index goes first; see the module doc.
    pub fn save_crl(&self, index: &CrlIndex, crl_der: &[u8]) -> Result<(), StoreError> {
        self.save_crl_index(index)?;

        // After the certificate records written since (a revocation's record) too.
        self.replace_state_file(&self.root.join(CRL_FILE), crl_der, 0o644)
    }

    /// A stamp of `crl.json` and `crl.der` as they are now (inode, size and mtime of each):
    /// it changes whenever either is replaced.
    pub fn crl_stamp(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for file in [CRL_INDEX_FILE, CRL_FILE] {
            match std::fs::metadata(self.root.join(file)) {
                Ok(meta) => {
                    (meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec()).hash(&mut hasher)
                }
                Err(err) => err.kind().hash(&mut hasher),
            }
        }
        hasher.finish()
    }

    /// The re-sign of the CRL that failed last in this process, if the latest one did.
    pub fn crl_resign_failure(&self) -> Option<ResignFailure> {
        *self
            .crl_resign_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers how the latest re-sign of the CRL went (`None`: it worked).
    pub fn set_crl_resign_failure(&self, failure: Option<ResignFailure>) {
        *self
            .crl_resign_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = failure;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_crl_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("state")).unwrap();
        assert_eq!(store.crl_index().unwrap(), CrlIndex::default());
        assert_eq!(store.crl().unwrap(), None);

        let index = CrlIndex {
            number: 7,
            revoked: vec![RevocationRecord {
                serial: "0a1b".into(),
                revoked_at: 1_700_000_000,
                reason: "keyCompromise".into(),
                not_after: Some(1_800_000_000),
            }],
        };
        store.save_crl(&index, b"\x30\x00").unwrap();
        assert_eq!(store.crl_index().unwrap(), index);
        assert_eq!(store.crl().unwrap().as_deref(), Some(&b"\x30\x00"[..]));
        assert!(index.lists("0a1b"));
        assert!(!index.lists("0a1c"));
    }

    #[test]
    fn serials_are_read_in_one_spelling() {
        assert_eq!(canonical_serial("0A:1B").unwrap(), "0a1b");
        assert_eq!(canonical_serial("0x0a1b").unwrap(), "0a1b");
        assert_eq!(canonical_serial("A1B").unwrap(), "0a1b");
        assert_eq!(canonical_serial(" 00000a1b ").unwrap(), "0a1b");
        assert_eq!(canonical_serial("000").unwrap(), "0");
        assert_eq!(
            canonical_serial("007AF283648CC5672255B3DA3C3B2D7D01").unwrap(),
            "7af283648cc5672255b3da3c3b2d7d01"
        );
        // 20 octets with the sign octet DER adds: still 20.
        let twenty = format!("00{}", "8f".repeat(20));
        assert_eq!(canonical_serial(&twenty).unwrap(), "8f".repeat(20));
        for bad in ["", "0x", "xyz", "../etc", "0a 1b", "7af2g"] {
            assert_eq!(canonical_serial(bad), Err(SerialError::NotHex), "{bad:?}");
        }
        for long in ["1".repeat(41), "a".repeat(43), ":".repeat(200)] {
            assert_eq!(
                canonical_serial(&long),
                Err(SerialError::TooLong),
                "{long:?}"
            );
        }
    }

    /// `crl.json` with these entries (JSON values) and CRL number 3.
    fn index_json(entries: &[serde_json::Value]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "number": 3, "revoked": entries })).unwrap()
    }

    fn entry(serial: &str, revoked_at: i64) -> serde_json::Value {
        serde_json::json!({
            "serial": serial,
            "revoked_at": revoked_at,
            "reason": "keyCompromise",
        })
    }

    #[test]
    fn entries_are_read_canonical_once_each_and_the_unreadable_set_aside() {
        let bytes = index_json(&[
            entry("007AF283648CC5672255B3DA3C3B2D7D01", 100),
            entry("0a1b", 200),
            entry("zz", 300),
            entry("0A:1B", 150),
            serde_json::json!({ "serial": "0c", "revoked_at": 1 }),
            entry(&"ab".repeat(21), 400),
            entry("7af283648cc5672255b3da3c3b2d7d01", 100),
        ]);
        let read = read_index(&bytes).unwrap();

        assert_eq!(read.index.number, 3);
        let listed: Vec<(&str, i64)> = read
            .index
            .revoked
            .iter()
            .map(|entry| (entry.serial.as_str(), entry.revoked_at))
            .collect();
        // 0a1b's earlier revocation (entry 4) stands, in entry 2's place.
        assert_eq!(
            listed,
            [("7af283648cc5672255b3da3c3b2d7d01", 100), ("0a1b", 150)]
        );
        assert_eq!(
            read.respelled,
            [
                RespelledEntry {
                    position: 1,
                    given: "007AF283648CC5672255B3DA3C3B2D7D01".into(),
                    serial: "7af283648cc5672255b3da3c3b2d7d01".into(),
                },
                RespelledEntry {
                    position: 4,
                    given: "0A:1B".into(),
                    serial: "0a1b".into(),
                },
            ]
        );
        assert_eq!(
            read.duplicates,
            [
                DuplicateEntry {
                    serial: "0a1b".into(),
                    dropped_position: 2,
                    dropped_revoked_at: 200,
                    kept_position: 4,
                    kept_revoked_at: 150,
                },
                DuplicateEntry {
                    serial: "7af283648cc5672255b3da3c3b2d7d01".into(),
                    dropped_position: 7,
                    dropped_revoked_at: 100,
                    kept_position: 1,
                    kept_revoked_at: 100,
                },
            ]
        );
        let unreadable: Vec<String> = read.unreadable.iter().map(ToString::to_string).collect();
        assert_eq!(
            unreadable,
            [
                "entry 3 (serial \"zz\"): not a hex serial number like 0a1b2c".to_string(),
                "entry 5 (serial \"0c\"): missing field `reason`".to_string(),
                format!(
                    "entry 6 (serial {:?}): longer than 20 octets",
                    "ab".repeat(21)
                ),
            ]
        );
        assert!(!read.is_canonical());
        assert!(read.index.lists("7AF2:83648cc5672255b3da3c3b2d7d01"));
        assert!(!read.index.lists("zz"));

        assert!(read_index(b"{not json").is_err());
        assert!(read_index(br#"{"number": 1}"#).is_err());
    }

    #[test]
    fn writers_are_refused_an_index_with_an_unreadable_entry_and_repair_rewrites_the_rest() {
        let (_dir, store) = Store::temporary();
        let path = store.path(CRL_INDEX_FILE);
        std::fs::write(&path, index_json(&[entry("0A1B", 5), entry("0x0g", 6)])).unwrap();

        let err = store.crl_index().unwrap_err().to_string();
        assert!(
            err.contains("entry 2 (serial \"0x0g\"): not a hex serial number")
                && err.contains("correct or remove it by hand"),
            "{err}"
        );
        assert!(store.rewrite_crl_index().is_err());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            index_json(&[entry("0A1B", 5), entry("0x0g", 6)]),
            "nothing written"
        );
        // Readers still get what reads.
        assert!(store.crl_index_read().unwrap().index.lists("0a1b"));

        std::fs::write(&path, index_json(&[entry("0A1B", 5), entry("0a1b", 4)])).unwrap();
        assert!(store.rewrite_crl_index().unwrap());
        let read = store.crl_index_read().unwrap();
        assert!(read.is_canonical(), "{read:?}");
        assert_eq!(
            read.index.revoked,
            [RevocationRecord {
                serial: "0a1b".into(),
                revoked_at: 4,
                reason: "keyCompromise".into(),
                not_after: None,
            }]
        );
        assert!(!store.rewrite_crl_index().unwrap(), "already canonical");
    }

    #[test]
    fn the_stamp_changes_when_either_file_is_replaced() {
        let (_dir, store) = Store::temporary();
        let empty = store.crl_stamp();
        assert_eq!(store.crl_stamp(), empty);
        store.save_crl(&CrlIndex::default(), b"\x30\x00").unwrap();
        let saved = store.crl_stamp();
        assert_ne!(saved, empty);
        store.save_crl_index(&CrlIndex::default()).unwrap();
        assert_ne!(
            store.crl_stamp(),
            saved,
            "a new inode, though the same bytes"
        );
    }

    #[test]
    fn a_corrupt_index_is_an_error_not_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("state")).unwrap();
        std::fs::write(store.path(CRL_INDEX_FILE), b"{not json").unwrap();
        assert!(matches!(store.crl_index(), Err(StoreError::Corrupt { .. })));
    }
}
