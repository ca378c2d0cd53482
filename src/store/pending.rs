//! Certificate requests waiting for an admin (`scep.approval = "manual"`): a PKCSReq that
//! passed every check is kept here until `otad request approve` or `otad request deny`, and
//! CertPoll (RFC 8894 §3.3.3) reads the outcome from here.
//!
//! ```text
//! pending/<id>.json                  one request; the id is the hex of 16 random bytes
//! pending/by-transaction/<sha256>    the id of the newest request of a transactionID
//! ```
//!
//! A poll finds its request through the index (one entry, one record), never by scanning.
//!
//! The folder is made on first use, so state dirs made before it existed still open. A
//! request nobody decides on within [`PENDING_TTL_SECONDS`] reads as denied; finished
//! requests stay [`PENDING_RETENTION_SECONDS`] for late polls and for the admin, then are
//! swept.

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::fsutil::{remove_durably, sync_dir, write_atomic};
use super::{create_dir, io_err, Store, StoreError};

/// How long a request waits for a decision before it reads as denied (7 days).
pub const PENDING_TTL_SECONDS: i64 = 7 * 24 * 3600;

/// How long a decided (or expired) request is kept before it is swept (30 days).
pub const PENDING_RETENTION_SECONDS: i64 = 30 * 24 * 3600;

/// The most request files kept at once; a new request beyond it is refused.
pub const MAX_PENDING_RECORDS: usize = 1000;

/// Random bytes in a request id.
pub const PENDING_ID_BYTES: usize = 16;

/// Why an expired request reads as denied.
pub const EXPIRED_REASON: &str = "expired: no decision within 7 days";

const PENDING_FOLDER: &str = "pending";
/// The folder under `pending/` indexing requests by (the hash of) their transactionID.
const TRANSACTION_INDEX: &str = "by-transaction";
const PENDING_FOLDER_MODE: u32 = 0o700;
const PENDING_FILE_MODE: u32 = 0o600;

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Decision {
    /// Waiting for an admin.
    Pending,
    /// Approved: the certificate was issued.
    Approved {
        /// When (unix seconds).
        decided_at: i64,
        /// The issued certificate's serial, lowercase hex.
        serial: String,
        /// The issued certificate, PEM.
        certificate: String,
    },
    /// Denied by an admin, or expired.
    Denied {
        /// When (unix seconds).
        decided_at: i64,
        /// Why, as the admin gave it.
        reason: String,
    },
}

/// A PKCSReq waiting for approval, with everything needed to issue and answer it later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRequest {
    /// The id an admin names it by: hex of [`PENDING_ID_BYTES`] random bytes.
    pub id: String,
    /// The client's transactionID, by which it polls.
    pub transaction_id: String,
    /// The CSR as received, PEM (CERTIFICATE REQUEST).
    pub csr: String,
    /// The subject the certificate will get, as (attribute, value) pairs.
    pub subject: Vec<(String, String)>,
    /// The device it is bound to, if any.
    pub udid: Option<String>,
    /// What authorised the request ("ota", "static").
    pub authorised_by: String,
    /// The certificate the request was signed with (a throwaway self-signed one), PEM.
    pub requester: String,
    /// The remote address the request came from.
    pub remote: String,
    /// When it was received (unix seconds).
    pub created: i64,
    /// Where it stands.
    #[serde(flatten)]
    pub decision: Decision,
}

impl PendingRequest {
    /// When an undecided request stops waiting.
    pub fn expires(&self) -> i64 {
        self.created.saturating_add(PENDING_TTL_SECONDS)
    }

    /// True while it waits for an admin.
    pub fn is_pending(&self) -> bool {
        self.decision == Decision::Pending
    }

    /// Denies a request still pending at `now` past its expiry, as of its expiry. Returns
    /// whether it changed.
    pub fn expire(&mut self, now: i64) -> bool {
        if !self.is_pending() || now < self.expires() {
            return false;
        }
        self.decision = Decision::Denied {
            decided_at: self.expires(),
            reason: EXPIRED_REASON.into(),
        };
        true
    }

    /// When it was decided, if it was.
    pub fn decided_at(&self) -> Option<i64> {
        match &self.decision {
            Decision::Pending => None,
            Decision::Approved { decided_at, .. } | Decision::Denied { decided_at, .. } => {
                Some(*decided_at)
            }
        }
    }
}

/// A fresh request id, or `None` if the system random generator fails.
pub fn new_pending_id() -> Option<String> {
    let mut bytes = [0u8; PENDING_ID_BYTES];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// True for a request id as [`new_pending_id`] makes them, safe to use as a file name.
pub fn valid_pending_id(id: &str) -> bool {
    id.len() == PENDING_ID_BYTES * 2
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The transaction index folder, under the state dir (for `otad fsck`).
pub const TRANSACTION_INDEX_DIR: &str = "pending/by-transaction";

/// The name of a transactionID's entry in [`TRANSACTION_INDEX_DIR`]: the SHA-256 of the
/// transactionID, hex.
pub fn transaction_index_name(transaction_id: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, transaction_id.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    fn pending_dir(&self) -> PathBuf {
        self.root.join(PENDING_FOLDER)
    }

    fn pending_path(&self, id: &str) -> Result<PathBuf, StoreError> {
        if !valid_pending_id(id) {
            return Err(StoreError::InvalidName("pending request id"));
        }
        Ok(self.pending_dir().join(format!("{id}.json")))
    }

    /// Records a new request; its id must not be taken. The transaction index then names
    /// it, so that the newest request of a transaction is the one found.
    pub fn create_pending(&self, request: &PendingRequest) -> Result<(), StoreError> {
        let path = self.pending_path(&request.id)?;
        let dir = self.pending_dir();
        if !dir.is_dir() {
            create_dir(&dir, PENDING_FOLDER_MODE)?;
            sync_dir(&self.root).map_err(io_err(&self.root))?;
        }
        self.ensure_transaction_index()?;
        self.create_state_file(&path, &Self::to_json(request), PENDING_FILE_MODE)?;
        self.index_transaction(&request.transaction_id, &request.id)
    }

    fn transaction_index(&self) -> PathBuf {
        self.pending_dir().join(TRANSACTION_INDEX)
    }

    /// `pending/by-transaction/<sha256 of the transactionID>`: the id of its newest request.
    /// Client strings never name files; their hash does.
    fn transaction_entry(&self, transaction_id: &str) -> PathBuf {
        self.transaction_index()
            .join(transaction_index_name(transaction_id))
    }

    fn index_transaction(&self, transaction_id: &str, id: &str) -> Result<(), StoreError> {
        let entry = self.transaction_entry(transaction_id);
        write_atomic(&entry, format!("{id}\n").as_bytes(), PENDING_FILE_MODE)
            .map_err(io_err(&entry))
    }

    /// Makes the transaction index on first use, indexing the requests a state dir made
    /// before it existed (once: the only scan, never again on the request path).
    fn ensure_transaction_index(&self) -> Result<(), StoreError> {
        let index = self.transaction_index();
        if index.is_dir() {
            return Ok(());
        }
        create_dir(&index, PENDING_FOLDER_MODE)?;
        let mut newest: std::collections::BTreeMap<String, (i64, String)> = Default::default();
        for path in self.pending_files()? {
            if let Ok(Some(request)) = self.read_json::<PendingRequest>(&path) {
                let slot = newest
                    .entry(request.transaction_id)
                    .or_insert((request.created, request.id.clone()));
                if request.created >= slot.0 {
                    *slot = (request.created, request.id);
                }
            }
        }
        for (transaction_id, (_, id)) in newest {
            self.index_transaction(&transaction_id, &id)?;
        }
        sync_dir(&self.pending_dir()).map_err(io_err(&index))
    }

    /// Rewrites a request after a decision (inside a [`Store::transaction`]).
    pub fn save_pending(&self, request: &PendingRequest) -> Result<(), StoreError> {
        let path = self.pending_path(&request.id)?;
        if !path.is_file() {
            return Err(StoreError::Io {
                path,
                source: io::Error::from(io::ErrorKind::NotFound),
            });
        }
        self.replace_state_file(&path, &Self::to_json(request), PENDING_FILE_MODE)
    }

    /// The request with this id, expiry applied as of `now`.
    pub fn pending_request(
        &self,
        id: &str,
        now: i64,
    ) -> Result<Option<PendingRequest>, StoreError> {
        let path = self.pending_path(id)?;
        let mut request: Option<PendingRequest> = self.read_json(&path)?;
        if let Some(request) = request.as_mut() {
            request.expire(now);
        }
        Ok(request)
    }

    /// Every request, oldest first, expiry applied as of `now`. A file that does not parse
    /// is an error: an admin should see it.
    pub fn pending_requests(&self, now: i64) -> Result<Vec<PendingRequest>, StoreError> {
        let mut requests = Vec::new();
        for path in self.pending_files()? {
            if let Some(mut request) = self.read_json::<PendingRequest>(&path)? {
                request.expire(now);
                requests.push(request);
            }
        }
        requests.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(requests)
    }

    /// The newest request under this transactionID, expiry applied as of `now`. Files that
    /// do not parse are skipped here, so that one bad file cannot stop every client.
    pub fn pending_for_transaction(
        &self,
        transaction_id: &str,
        now: i64,
    ) -> Result<Option<PendingRequest>, StoreError> {
        if !self.transaction_index().is_dir() {
            // No request was ever queued under this index (or none at all).
            if !self.pending_dir().is_dir() {
                return Ok(None);
            }
            self.ensure_transaction_index()?;
        }
        let entry = self.transaction_entry(transaction_id);
        let Some(id) = super::fsutil::read_optional(&entry).map_err(io_err(&entry))? else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(&id).trim().to_string();
        if !valid_pending_id(&id) {
            return Ok(None);
        }
        let Ok(Some(mut request)) = self.read_json::<PendingRequest>(&self.pending_path(&id)?)
        else {
            return Ok(None);
        };
        if request.transaction_id != transaction_id {
            return Ok(None);
        }
        request.expire(now);
        Ok(Some(request))
    }

    /// How many request files there are.
    // TODO: this still lists the folder (names only, at most MAX_PENDING_RECORDS of them) on
    // every queued PKCSReq under manual approval, and sweep_pending / count_undecided read
    // each file once the cap is reached; a counter file kept under the state lock would make
    // the queue check O(1) too.
    pub fn count_pending(&self) -> Result<usize, StoreError> {
        Ok(self.pending_files()?.len())
    }

    /// How many requests still wait for a decision at `now` (what fills the queue; decided
    /// ones are kept only as a record).
    pub fn count_undecided(&self, now: i64) -> Result<usize, StoreError> {
        let mut undecided = 0;
        for path in self.pending_files()? {
            if let Ok(Some(mut request)) = self.read_json::<PendingRequest>(&path) {
                request.expire(now);
                undecided += usize::from(request.decided_at().is_none());
            }
        }
        Ok(undecided)
    }

    /// Removes requests decided (or expired) more than [`PENDING_RETENTION_SECONDS`] before
    /// `now`; returns how many. Files that do not parse are left for an admin.
    pub fn sweep_pending(&self, now: i64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for path in self.pending_files()? {
            let Ok(Some(mut request)) = self.read_json::<PendingRequest>(&path) else {
                continue;
            };
            request.expire(now);
            let stale = request
                .decided_at()
                .is_some_and(|at| now.saturating_sub(at) > PENDING_RETENTION_SECONDS);
            if stale && remove_durably(&path).map_err(io_err(&path))? {
                let entry = self.transaction_entry(&request.transaction_id);
                let names_it = super::fsutil::read_optional(&entry)
                    .ok()
                    .flatten()
                    .is_some_and(|id| String::from_utf8_lossy(&id).trim() == request.id);
                if names_it {
                    remove_durably(&entry).map_err(io_err(&entry))?;
                }
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The request files, sorted by name; none if the folder was never made.
    fn pending_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let dir = self.pending_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(io_err(&dir)(err)),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(valid_pending_id)
                    && p.extension().is_some_and(|e| e == "json")
            })
            .collect();
        paths.sort();
        Ok(paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        Store::temporary()
    }

    fn request(id: &str, transaction_id: &str, created: i64) -> PendingRequest {
        PendingRequest {
            id: id.into(),
            transaction_id: transaction_id.into(),
            csr: "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n".into(),
            subject: vec![("CN".into(), "dev-1".into())],
            udid: None,
            authorised_by: "static".into(),
            requester: String::new(),
            remote: "127.0.0.1:1".into(),
            created,
            decision: Decision::Pending,
        }
    }

    const ID_A: &str = "0123456789abcdef0123456789abcdef";
    const ID_B: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn only_undecided_requests_fill_the_queue() {
        let (_dir, store) = store();
        let mut denied = request(ID_A, "t-a", 100);
        store.create_pending(&denied).unwrap();
        denied.decision = Decision::Denied {
            decided_at: 200,
            reason: "no".into(),
        };
        store.save_pending(&denied).unwrap();
        store.create_pending(&request(ID_B, "t-b", 100)).unwrap();
        assert_eq!(store.count_pending().unwrap(), 2);
        assert_eq!(store.count_undecided(300).unwrap(), 1);
    }

    #[test]
    fn ids_are_random_hex_and_validated_before_reaching_a_path() {
        let id = new_pending_id().unwrap();
        assert_eq!(id.len(), 32);
        assert!(valid_pending_id(&id));
        assert_ne!(new_pending_id().unwrap(), id);
        let (_dir, store) = store();
        for bad in [
            "",
            "../x",
            &ID_A.to_uppercase(),
            &ID_A[1..],
            "0123456789abcdef0123456789abcdeg",
        ] {
            assert!(
                matches!(
                    store.pending_request(bad, 0),
                    Err(StoreError::InvalidName(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn round_trip_with_the_folder_made_on_first_use() {
        let (_dir, store) = store();
        assert!(!store.path("pending").exists());
        assert_eq!(store.pending_requests(10).unwrap(), Vec::new());
        assert_eq!(store.pending_for_transaction("T", 10).unwrap(), None);

        let first = request(ID_A, "T", 10);
        store.create_pending(&first).unwrap();
        assert!(store.create_pending(&first).is_err(), "an id is used once");
        assert_eq!(
            store.pending_request(ID_A, 11).unwrap(),
            Some(first.clone())
        );

        let text =
            std::fs::read_to_string(store.path("pending").join(format!("{ID_A}.json"))).unwrap();
        assert!(text.contains("\"status\": \"pending\""), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path("pending"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn requests_queued_before_the_index_existed_are_indexed_once() {
        let (_dir, store) = store();
        store.create_pending(&request(ID_A, "legacy", 10)).unwrap();
        store.create_pending(&request(ID_B, "other", 20)).unwrap();
        std::fs::remove_dir_all(store.path("pending/by-transaction")).unwrap();
        let found = store
            .pending_for_transaction("legacy", 30)
            .unwrap()
            .unwrap();
        assert_eq!(found.id, ID_A);
        assert_eq!(
            std::fs::read_dir(store.path("pending/by-transaction"))
                .unwrap()
                .count(),
            2
        );
        assert_eq!(store.pending_for_transaction("unknown", 30).unwrap(), None);
    }

    #[test]
    fn the_newest_request_of_a_transaction_is_found() {
        let (_dir, store) = store();
        let mut old = request(ID_A, "T", 10);
        old.decision = Decision::Denied {
            decided_at: 12,
            reason: "no".into(),
        };
        store.create_pending(&old).unwrap();
        store.create_pending(&request(ID_B, "T", 20)).unwrap();
        let found = store.pending_for_transaction("T", 21).unwrap().unwrap();
        assert_eq!(found.id, ID_B);
        assert_eq!(store.pending_for_transaction("U", 21).unwrap(), None);
        let ids: Vec<String> = store
            .pending_requests(21)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, [ID_A, ID_B]);
        assert_eq!(store.count_pending().unwrap(), 2);
    }

    #[test]
    fn an_undecided_request_expires_as_denied() {
        let (_dir, store) = store();
        store.create_pending(&request(ID_A, "T", 1000)).unwrap();
        let before = store
            .pending_request(ID_A, 1000 + PENDING_TTL_SECONDS - 1)
            .unwrap()
            .unwrap();
        assert!(before.is_pending());
        let after = store
            .pending_request(ID_A, 1000 + PENDING_TTL_SECONDS)
            .unwrap()
            .unwrap();
        assert_eq!(
            after.decision,
            Decision::Denied {
                decided_at: 1000 + PENDING_TTL_SECONDS,
                reason: EXPIRED_REASON.into()
            }
        );
    }

    #[test]
    fn decisions_are_saved_and_stale_ones_swept() {
        let (_dir, store) = store();
        let mut approved = request(ID_A, "T", 10);
        assert!(
            store.save_pending(&approved).is_err(),
            "only existing requests"
        );
        store.create_pending(&approved).unwrap();
        approved.decision = Decision::Approved {
            decided_at: 20,
            serial: "0a".into(),
            certificate: "PEM".into(),
        };
        store.save_pending(&approved).unwrap();
        store.create_pending(&request(ID_B, "U", 15)).unwrap();
        assert_eq!(store.pending_request(ID_A, 21).unwrap(), Some(approved));

        assert_eq!(
            store.sweep_pending(20 + PENDING_RETENTION_SECONDS).unwrap(),
            0
        );
        assert_eq!(
            store.sweep_pending(21 + PENDING_RETENTION_SECONDS).unwrap(),
            1
        );
        assert_eq!(store.pending_request(ID_A, 0).unwrap(), None);
        // ID_B was never decided: it expired at 15 + TTL and is kept 30 days after that.
        let expired_at = 15 + PENDING_TTL_SECONDS;
        assert_eq!(
            store
                .sweep_pending(expired_at + PENDING_RETENTION_SECONDS)
                .unwrap(),
            0
        );
        assert_eq!(
            store
                .sweep_pending(expired_at + PENDING_RETENTION_SECONDS + 1)
                .unwrap(),
            1
        );
        assert_eq!(store.count_pending().unwrap(), 0);
    }
}
