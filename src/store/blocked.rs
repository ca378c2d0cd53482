//! The admin's blocklist of device serial numbers: `blocked/<SERIAL>.json`, one file each.
//!
//! A serial is uppercased and must be 1 to [`MAX_SERIAL_LEN`] ASCII letters and digits before
//! it names a file, so a lookup is one `open` and no device string reaches a path otherwise.
//! The folder is made by the first `otad device block`; a state dir without it blocks nobody.
//! Writes are atomic and, from the CLI, taken under the state lock.

use serde::{Deserialize, Serialize};

use super::fsutil::read_optional;
use super::{create_dir, io_err, Store, StoreError};

/// The folder under the state dir.
pub const BLOCKED_DIR: &str = "blocked";

/// Longest serial number accepted (Apple's are 8 to 14 characters).
pub const MAX_SERIAL_LEN: usize = super::MAX_DEVICE_SERIAL_LEN;

/// Longest reason kept.
pub const MAX_BLOCK_REASON_LEN: usize = 200;

/// One blocked serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    /// The serial, uppercase.
    pub serial: String,
    /// Why, as the admin wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was blocked (unix seconds).
    pub at: i64,
}

/// A serial in the one spelling the blocklist uses (ASCII uppercase), if it can be one.
pub fn normalize_serial(serial: &str) -> Option<String> {
    super::normalize_device_serial(serial)
}

impl Store {
    fn blocked_path(&self, serial: &str) -> Result<std::path::PathBuf, StoreError> {
        let serial = normalize_serial(serial).ok_or(StoreError::InvalidName("serial number"))?;
        Ok(self.root.join(BLOCKED_DIR).join(format!("{serial}.json")))
    }

    /// The block on this serial, if any. A serial that cannot be blocked (not letters and
    /// digits) is not blocked.
    pub fn blocked(&self, serial: &str) -> Result<Option<BlockRecord>, StoreError> {
        let Ok(path) = self.blocked_path(serial) else {
            return Ok(None);
        };
        let Some(bytes) = read_optional(&path).map_err(io_err(&path))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| StoreError::Corrupt {
                path: path.clone(),
                reason: err.to_string(),
            })
    }

    /// Blocks a serial (replacing an earlier block's reason). Call inside a transaction.
    pub fn block(&self, record: &BlockRecord) -> Result<(), StoreError> {
        let path = self.blocked_path(&record.serial)?;
        create_dir(&self.root.join(BLOCKED_DIR), 0o700)?;
        self.replace_state_file(&path, &Self::to_json(record), 0o600)
    }

    /// Lifts a block; returns whether there was one. Call inside a transaction.
    pub fn unblock(&self, serial: &str) -> Result<bool, StoreError> {
        let path = self.blocked_path(serial)?;
        self.remove_state_file(&path)
    }

    /// Every blocked serial, sorted (an admin command).
    pub fn blocked_all(&self) -> Result<(Vec<BlockRecord>, Vec<StoreError>), StoreError> {
        if !self.root.join(BLOCKED_DIR).is_dir() {
            return Ok((Vec::new(), Vec::new()));
        }
        self.list_skipping(BLOCKED_DIR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_look_up_unblock() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("state")).unwrap();
        assert_eq!(store.blocked("F2LXK0AAHG7F").unwrap(), None);
        assert_eq!(store.blocked_all().unwrap().0, Vec::new());

        let record = BlockRecord {
            serial: "F2LXK0AAHG7F".into(),
            reason: Some("lost".into()),
            at: 7,
        };
        store.block(&record).unwrap();
        assert_eq!(store.blocked("f2lxk0aahg7f").unwrap(), Some(record.clone()));
        assert_eq!(store.blocked_all().unwrap().0, vec![record.clone()]);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(store.path("blocked/F2LXK0AAHG7F.json"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);

        // A corrupt file is skipped by the list (and named), not the end of it.
        std::fs::write(store.path("blocked/BROKEN1.json"), "{").unwrap();
        let (listed, skipped) = store.blocked_all().unwrap();
        assert_eq!(listed, vec![record.clone()]);
        assert_eq!(skipped.len(), 1);
        assert!(
            skipped[0].to_string().contains("BROKEN1.json"),
            "{}",
            skipped[0]
        );
        std::fs::remove_file(store.path("blocked/BROKEN1.json")).unwrap();

        assert!(store.unblock("F2LXK0AAHG7F").unwrap());
        assert!(!store.unblock("F2LXK0AAHG7F").unwrap());
        assert_eq!(store.blocked("F2LXK0AAHG7F").unwrap(), None);
    }

    #[test]
    fn serials_are_validated_before_reaching_a_path() {
        for bad in ["", "../x", "A/B", "A.json", "A B", "ÄB", &"A".repeat(33)] {
            assert_eq!(normalize_serial(bad), None, "{bad:?}");
        }
        assert_eq!(normalize_serial("c02xk0aa").as_deref(), Some("C02XK0AA"));
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("state")).unwrap();
        assert_eq!(store.blocked("../../etc/passwd").unwrap(), None);
        let record = BlockRecord {
            serial: "../x".into(),
            reason: None,
            at: 1,
        };
        assert!(matches!(
            store.block(&record),
            Err(StoreError::InvalidName(_))
        ));
    }
}
