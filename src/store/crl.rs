//! The CRL's state in the state dir: the current CRL and the index it is signed from.
//!
//! ```text
//! crl.json   the CRL number last used and every revocation listed, oldest first
//! crl.der    the current CRL, DER, as `GET /crl` and SCEP GetCRL hand it out
//! ```
//!
//! The index is the CRL's own source, so re-signing never scans `certs/`. Signing is the
//! `pki::crl` layer's; this block only reads and writes the two files, each atomically.
//! [`Store::save_crl`] writes the index first: a crash between the two leaves a CRL whose
//! number is behind the index's, or that lacks an entry the index has, which readers take as
//! "sign a new one", never a CRL number used twice. A revocation writes its index entry
//! alone first ([`Store::save_crl_index`]), so from then on the CRL can only catch up.

use serde::{Deserialize, Serialize};

use super::fsutil::{read_optional, write_atomic};
use super::{io_err, Store, StoreError};

/// The current CRL, DER, under the state dir.
pub const CRL_FILE: &str = "crl.der";

/// The CRL index, JSON, under the state dir.
pub const CRL_INDEX_FILE: &str = "crl.json";

/// One revocation the CRL lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    /// The certificate's serial, lowercase hex as in `certs/`.
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
    /// Whether `serial` is listed.
    pub fn lists(&self, serial: &str) -> bool {
        self.revoked.iter().any(|entry| entry.serial == serial)
    }
}

impl Store {
    /// The CRL index; an empty one (number 0) before the first CRL.
    pub fn crl_index(&self) -> Result<CrlIndex, StoreError> {
        let path = self.root.join(CRL_INDEX_FILE);
        Ok(self.read_json(&path)?.unwrap_or_default())
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
        write_atomic(&path, &Self::to_json(index), 0o644).map_err(io_err(&path))
    }

    /// Stores a newly signed CRL and the index it was signed from (inside a
    /// [`Store::transaction`]). The index goes first; see the module doc.
    pub fn save_crl(&self, index: &CrlIndex, crl_der: &[u8]) -> Result<(), StoreError> {
        self.save_crl_index(index)?;

        let crl_path = self.root.join(CRL_FILE);
        write_atomic(&crl_path, crl_der, 0o644).map_err(io_err(&crl_path))
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
    fn a_corrupt_index_is_an_error_not_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("state")).unwrap();
        std::fs::write(store.path(CRL_INDEX_FILE), b"{not json").unwrap();
        assert!(matches!(store.crl_index(), Err(StoreError::Corrupt { .. })));
    }
}
