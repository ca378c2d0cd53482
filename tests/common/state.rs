//! Reading and writing the records of a state dir's log from tests, as an admin command does:
//! its own handle on `state.log`, writes under the state lock.

#![allow(dead_code)]

use std::path::Path;

use otad::store::fsutil::FileLock;
use otad::store::journal::{Change, Journal, Kind};

pub use otad::store::journal::Kind as RecordKind;

/// The record of `kind` under `key`, as JSON, if there is one.
pub fn record(state: &Path, kind: Kind, key: &str) -> Option<serde_json::Value> {
    let journal = Journal::open(state).expect("state log");
    let bytes = journal.get(kind, key, false).expect("record")?;
    Some(serde_json::from_slice(&bytes).expect("a record that parses"))
}

/// Where the log's last whole record ends (the file itself may run on in zeros).
pub fn log_end(state: &Path) -> u64 {
    Journal::open(state)
        .expect("state log")
        .sizes()
        .expect("sizes")
        .0
}

/// Writes `bytes` into the log at its end without a frame around them: what a crash in the
/// middle of an append leaves.
pub fn tear(state: &Path, bytes: &[u8]) -> u64 {
    use std::os::unix::fs::FileExt;
    let end = log_end(state);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(state.join("state.log"))
        .expect("state log");
    file.write_all_at(bytes, end).expect("write");
    end
}

/// How many records of `kind` there are.
pub fn count(state: &Path, kind: Kind) -> usize {
    Journal::open(state)
        .expect("state log")
        .count(kind)
        .expect("count")
}

/// The keys of every record of `kind`, sorted.
pub fn keys(state: &Path, kind: Kind) -> Vec<String> {
    Journal::open(state)
        .expect("state log")
        .all(kind, false)
        .expect("records")
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

/// Writes `bytes` as the record of `kind` under `key`, parsed or not (a hand edit, or a record
/// a crash or a bug left), under the state lock so that a running server is not disturbed.
pub fn put_raw(state: &Path, kind: Kind, key: &str, bytes: &[u8]) {
    put_tagged(state, kind, key, String::new(), bytes);
}

fn put_tagged(state: &Path, kind: Kind, key: &str, tag: String, bytes: &[u8]) {
    let _lock = FileLock::acquire(&state.join(".lock")).expect("state lock");
    let journal = Journal::open(state).expect("state log");
    journal.begin().expect("begin");
    journal
        .stage(Change {
            kind,
            key: key.to_string(),
            tag,
            value: Some(bytes.to_vec()),
        })
        .expect("stage");
    let ticket = journal.commit().expect("commit").expect("a change");
    journal.wait_durable(ticket).expect("durable");
}

/// Rewrites the record of `kind` under `key` as JSON (a hand edit).
/// A device record keeps the serial it reports in the index.
pub fn put(state: &Path, kind: Kind, key: &str, value: &serde_json::Value) {
    let tag = match kind {
        Kind::Device => value["attributes"]["SERIAL"]
            .as_str()
            .and_then(otad::store::normalize_device_serial)
            .unwrap_or_default(),
        _ => String::new(),
    };
    put_tagged(
        state,
        kind,
        key,
        tag,
        &serde_json::to_vec(value).expect("JSON"),
    );
}
