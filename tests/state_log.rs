//! The state log under a running server: compaction by the server while the records stay as
//! they were, a torn end cut off at start, and an admin command's writes seen at once.

mod common;

use std::process::Command;

use common::server::{otad_bin, TestServer};
use common::state::{self, RecordKind};
use otad::store::journal::{Change, Journal, Kind, COMPACT_MIN_BYTES};

fn log_size(server: &TestServer) -> u64 {
    std::fs::metadata(server.state_file("state.log"))
        .unwrap()
        .len()
}

/// One enrollment through every phase; its UDID.
fn enroll(server: &TestServer, udid: &str) {
    let output = Command::new(otad_bin())
        .args(["simulate", "--url", &server.url, "--device-ca"])
        .arg(&server.device_ca_dir)
        .args(["--udid", udid])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
}

#[test]
fn the_server_compacts_a_log_of_mostly_replaced_records_and_keeps_every_record() {
    let mut server = TestServer::start(|config| config);
    enroll(&server, "00008030-00000000000000C1");
    let device = server.device_record("00008030-00000000000000C1").unwrap();
    let serial = device["certificates"][0].as_str().unwrap().to_string();
    let cert = server.cert_record(&serial).unwrap();
    // Phase 3's MDM profile carries a SCEP challenge of its own, still live.
    let challenges = server.count(RecordKind::Challenge);

    // Records replaced again and again: one key rewritten with a large value, then removed.
    let garbage = vec![b'x'; 1024 * 1024];
    for _ in 0..(COMPACT_MIN_BYTES / (1024 * 1024) + 2) {
        state::put_raw(
            &server.state,
            RecordKind::Challenge,
            &"ab".repeat(32),
            &garbage,
        );
    }
    {
        let _lock = otad::store::fsutil::FileLock::acquire(&server.state_file(".lock")).unwrap();
        let journal = Journal::open(&server.state).unwrap();
        journal.begin().unwrap();
        journal
            .stage(Change {
                kind: Kind::Challenge,
                key: "ab".repeat(32),
                tag: String::new(),
                value: None,
            })
            .unwrap();
        let ticket = journal.commit().unwrap().unwrap();
        journal.wait_durable(ticket).unwrap();
    }
    let before = log_size(&server);
    assert!(before > COMPACT_MIN_BYTES, "{before}");

    // The sweeper looks at start and then every second.
    server.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while log_size(&server) >= before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let after = log_size(&server);
    assert!(after < 1024 * 1024, "{before} -> {after}\n{}", server.log());
    assert!(
        server.log().contains("state log compacted"),
        "{}",
        server.log()
    );
    assert_eq!(
        server.device_record("00008030-00000000000000C1").unwrap(),
        device
    );
    assert_eq!(server.cert_record(&serial).unwrap(), cert);
    assert_eq!(server.count(RecordKind::Challenge), challenges);

    // The server goes on writing to the new file, and an admin command sees it.
    enroll(&server, "00008030-00000000000000C2");
    let listed = Command::new(otad_bin())
        .args(["device", "show", "--config"])
        .arg(server.config_path())
        .arg("00008030-00000000000000C2")
        .output()
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("enrolled"));
}

#[test]
fn a_torn_end_left_by_a_crash_is_cut_off_at_start_and_nothing_else_is_lost() {
    let mut server = TestServer::start(|config| config);
    enroll(&server, "00008030-00000000000000D1");
    // Half a record, as a kill in the middle of an append leaves it (with the server
    // stopped: nothing writes beside a crash).
    server.stop();
    let whole = state::tear(&server.state, &[200, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9, 1, 2]);
    let (code, out) = fsck(&server);
    assert_eq!(code, Some(0), "a torn end is a note: {out}");
    assert!(
        out.contains(&format!(
            "note: state.log: the record at offset {whole} is not whole"
        )),
        "{out}"
    );

    server.restart();
    assert!(
        server.log().contains(&format!(
            "start-up repair: state.log: the record at offset {whole} that was not whole cut off"
        )),
        "{}",
        server.log()
    );
    // Frames written since start where the torn one was, and none lost before it.
    assert!(log_size(&server) >= whole);
    assert_eq!(
        server.device_record("00008030-00000000000000D1").unwrap()["phase"],
        "enrolled"
    );
    enroll(&server, "00008030-00000000000000D2");
    assert_eq!(fsck(&server).0, Some(0));
}

fn fsck(server: &TestServer) -> (Option<i32>, String) {
    let output = Command::new(otad_bin())
        .args(["fsck", "--config"])
        .arg(server.config_path())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn events_a_crash_kept_only_in_the_state_log_are_written_at_the_next_start_once() {
    let mut server = TestServer::start(|config| config);
    enroll(&server, "00008030-00000000000000E1");
    let path = server.state_file("events.jsonl");
    let before = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = before.split_inclusive('\n').collect();
    assert!(lines.len() >= 3, "{before}");
    let (kept, lost) = lines.split_at(lines.len() - 2);

    // What a power loss leaves: events.jsonl without its last two lines, which the state
    // log still holds (a request's events are durable there before it is answered).
    server.stop();
    std::fs::write(&path, kept.concat()).unwrap();
    for (n, line) in lost.iter().enumerate() {
        let key = format!("{:032x}{n:016x}", 1u8);
        state::put_raw(&server.state, RecordKind::Event, &key, line.as_bytes());
    }
    // And one the log did keep: not written twice.
    state::put_raw(
        &server.state,
        RecordKind::Event,
        &format!("{:032x}{:016x}", 0u8, 9u8),
        kept[kept.len() - 1].as_bytes(),
    );

    server.restart();
    assert!(
        server
            .log()
            .contains("start-up repair: events: 2 event(s) kept in the state log written"),
        "{}",
        server.log()
    );
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(after.starts_with(&before), "every line, in order:\n{after}");
    assert_eq!(server.count(RecordKind::Event), 0);
}

#[test]
fn a_damaged_record_is_set_aside_at_start_and_the_rest_kept() {
    let mut server = TestServer::start(|config| config);
    enroll(&server, "00008030-00000000000000F1");
    enroll(&server, "00008030-00000000000000F2");
    server.stop();

    // A byte of the first frame (phase 1's challenge of the first device) flipped on disk,
    // long after later writes knew it synced.
    let path = server.state_file("state.log");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[16 + 12 + 30] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let (code, out) = fsck(&server);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("problem: state.log: bytes 16 to "), "{out}");

    server.restart();
    assert!(
        server
            .log()
            .contains("start-up repair: state.log: rewritten without 1 damaged part(s)"),
        "{}",
        server.log()
    );
    for udid in ["00008030-00000000000000F1", "00008030-00000000000000F2"] {
        assert_eq!(server.device_record(udid).unwrap()["phase"], "enrolled");
    }
    let kept = std::fs::read_dir(&server.state)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.log.damaged-")
        })
        .count();
    assert_eq!(kept, 1, "the damaged log is kept as it was");
    assert_eq!(fsck(&server).0, Some(0));
}
