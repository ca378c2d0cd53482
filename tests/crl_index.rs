//! `crl.json` as an admin's editor or another tool may leave it, against a real `otad serve`
//! on loopback: serials with leading zeros or in upper case, a serial listed twice, an entry
//! that cannot be read. Each must leave `GET /crl` answering 200 without re-signing on every
//! request, and `otad fsck` saying what is wrong and `--repair` mending what it can.

mod common;

use common::cli::otad;
use common::server::TestServer;
use otad::pki::crl::{self, CrlSummary};

/// The serial of certificate `7af2…` as the tester's tool wrote it, with a zero octet before.
const ZERO_PADDED: &str = "007af283648cc5672255b3da3c3b2d7d01";
const CANONICAL: &str = "7af283648cc5672255b3da3c3b2d7d01";

/// `GET /crl`: its status and body.
fn get_crl(server: &TestServer) -> (u16, Vec<u8>) {
    let response = otad::httpclient::get(&format!("{}/crl", server.url)).expect("GET /crl");
    (response.status, response.body)
}

/// `GET /crl`, which must answer 200, read and verified under the server's CA.
fn served(server: &TestServer) -> (Vec<u8>, CrlSummary) {
    let (status, der) = get_crl(server);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&der));
    let ca = otad::httpclient::get(&format!("{}/ca", server.url)).expect("GET /ca");
    let summary = crl::read_with_certificate(&der, &ca.body).expect("a CRL of this CA");
    (der, summary)
}

/// Replaces `crl.json` (atomically, as an editor saving a copy would) with these entries
/// (serial, revoked_at, reason), keeping its number.
fn edit_crl_json(server: &TestServer, entries: &[(&str, i64, &str)]) {
    let path = server.state_file("crl.json");
    let current: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("crl.json")).expect("crl.json");
    let revoked: Vec<serde_json::Value> = entries
        .iter()
        .map(|(serial, at, reason)| {
            serde_json::json!({ "serial": serial, "revoked_at": at, "reason": reason })
        })
        .collect();
    let edited = serde_json::json!({ "number": current["number"], "revoked": revoked });
    let draft = server.dir.path().join("crl.json.edited");
    std::fs::write(&draft, serde_json::to_vec_pretty(&edited).unwrap()).unwrap();
    std::fs::rename(&draft, &path).unwrap();
}

/// `otad fsck` (with `--repair` if asked) on the server's config: exit code and stdout.
fn fsck(server: &TestServer, repair: bool) -> (i32, String) {
    let config = server.config_path().to_string_lossy().into_owned();
    let mut args = vec!["fsck", "--config", &config];
    if repair {
        args.push("--repair");
    }
    let (code, out, err) = otad(&args);
    (code, format!("{out}{err}"))
}

fn serials(summary: &CrlSummary) -> Vec<(&str, i64)> {
    summary
        .revoked
        .iter()
        .map(|(serial, at, _)| (serial.as_str(), *at))
        .collect()
}

#[test]
fn three_hundred_gets_with_a_zero_padded_serial_bump_the_crl_number_at_most_once() {
    let server = TestServer::start(|config| config);
    let (_, before) = served(&server);
    let now = otad::store::now();
    // The first GET signs a CRL that lists it (and stores crl.json in otad's spelling); the
    // tool writes its own spelling back, as the tester's did.
    let entry = [(ZERO_PADDED, now - 30, "keyCompromise")];
    edit_crl_json(&server, &entry);
    assert_eq!(get_crl(&server).0, 200);
    edit_crl_json(&server, &entry);

    for _ in 0..300 {
        let (status, _) = get_crl(&server);
        assert_eq!(status, 200);
    }
    let (_, after) = served(&server);
    assert!(
        after.number <= before.number + 1,
        "CRL number {} -> {} over 300 GETs",
        before.number,
        after.number
    );
    assert_eq!(serials(&after), [(CANONICAL, now - 30)]);

    // fsck finds nothing wrong (it said "crl.der does not list 007a…" forever); --repair
    // rewrites the spelling.
    let (code, out) = fsck(&server, false);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{ZERO_PADDED:?} is {CANONICAL}")),
        "{out}"
    );
    let (code, out) = fsck(&server, true);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("repaired: crl.json: rewritten"), "{out}");
    let rewritten = std::fs::read_to_string(server.state_file("crl.json")).unwrap();
    assert!(
        rewritten.contains(&format!("\"{CANONICAL}\"")) && !rewritten.contains(ZERO_PADDED),
        "{rewritten}"
    );
    assert_eq!(served(&server).1.number, after.number);
}

#[test]
fn an_upper_case_serial_is_served_not_answered_500_and_fsck_repair_exits_0() {
    let server = TestServer::start(|config| config);
    let (_, before) = served(&server);
    let now = otad::store::now();
    edit_crl_json(&server, &[("338EB89A97BDFD3E", now - 5, "superseded")]);

    // The stored CRL lacks it: the next GET signs one that lists it (it answered 500).
    let (_, after) = served(&server);
    assert_eq!(after.number, before.number + 1);
    assert_eq!(serials(&after), [("338eb89a97bdfd3e", now - 5)]);
    assert_eq!(served(&server).1, after);

    let (code, out) = fsck(&server, true);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("not reconciled"), "{out}");
    assert!(
        !server.log().contains("not lowercase hex"),
        "{}",
        server.log()
    );
}

#[test]
fn a_serial_listed_twice_is_signed_once_with_its_first_revocation_and_fsck_reports_it() {
    let server = TestServer::start(|config| config);
    let (_, before) = served(&server);
    let now = otad::store::now();
    edit_crl_json(
        &server,
        &[
            ("0a1b", now - 10, "keyCompromise"),
            ("0A:1B", now - 20, "superseded"),
        ],
    );

    let (code, out) = fsck(&server, false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("problem: crl.json: lists 1 serial(s) twice (0a1b in entries 1 and 2)"),
        "{out}"
    );

    // The server signs it once, and stores crl.json with it once.
    let (_, after) = served(&server);
    assert_eq!(after.number, before.number + 1);
    assert_eq!(after.revoked, [("0a1b".to_string(), now - 20, Some(4))]);
    let once = serde_json::json!([
        { "serial": "0a1b", "revoked_at": now - 20, "reason": "superseded" }
    ]);
    let index = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(server.state_file("crl.json")).unwrap()).unwrap()
    };
    assert_eq!(index()["revoked"], once);
    assert_eq!(fsck(&server, false).0, 0);

    // Written twice again, with the stored CRL current: --repair rewrites it.
    edit_crl_json(
        &server,
        &[
            ("0a1b", now - 10, "keyCompromise"),
            ("0a1b", now - 20, "superseded"),
        ],
    );
    let (code, out) = fsck(&server, true);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("repaired: crl.json: rewritten"), "{out}");
    assert_eq!(index()["revoked"], once);
    assert_eq!(served(&server).1, after);
}

#[test]
fn an_entry_that_cannot_be_read_keeps_the_last_crl_served_with_one_error_logged() {
    let server = TestServer::start(|config| config);
    let (good, before) = served(&server);
    let now = otad::store::now();
    // A revocation the stored CRL lacks, next to an entry whose serial is not hex.
    let entries = [
        ("0a1b", now, "keyCompromise"),
        ("0a1g", now, "keyCompromise"),
    ];
    edit_crl_json(&server, &entries);

    for _ in 0..50 {
        let (status, der) = get_crl(&server);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&der));
        assert_eq!(der, good, "the last good CRL");
    }
    let log = server.log();
    let errors = log
        .lines()
        .filter(|line| line.contains("so the CRL is not re-signed"))
        .count();
    assert_eq!(errors, 1, "{log}");
    assert!(
        log.contains("entry 2 (serial") && log.contains("0a1g"),
        "{log}"
    );

    let (code, out) = fsck(&server, true);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("problem: crl.json: entry 2 (serial \"0a1g\"): not a hex serial number"),
        "{out}"
    );
    assert!(out.contains("or remove it, by hand"), "{out}");

    // Mended by hand: the next GET signs, without waiting out the retry interval.
    edit_crl_json(&server, &entries[..1]);
    let (_, after) = served(&server);
    assert_eq!(after.number, before.number + 1);
    assert_eq!(serials(&after), [("0a1b", now)]);
}
