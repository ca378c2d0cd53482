//! A revocation cut short: `otad cert revoke` killed part-way, and the half-done states it can
//! leave built by hand. The CRL served must list every certificate whose record or index entry
//! says revoked; `otad fsck` reports what is half done, and `--repair` and the server's start-up
//! repair mend it in both directions.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::server::{otad_bin, TestServer};
use common::state::RecordKind;
use common::tools::have;
use otad::httpclient;
use otad::pki::cert;
use otad::simulate::Device;

/// Certificates revoked under SIGKILL in the kill test.
const KILLED_REVOCATIONS: usize = 20;

fn otad(args: &[&str]) -> Output {
    Command::new(otad_bin())
        .args(args)
        .output()
        .expect("run otad")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// One enrolled device's certificate serial.
fn enroll(server: &TestServer) -> String {
    let mut device = Device::new(&server.device_options()).unwrap();
    let phase1 = device.phase1(&server.url).unwrap();
    let scep = device.phase2(&phase1).unwrap();
    let certificate = device.enroll_scep(&scep).unwrap();
    cert::serial_hex(&certificate).unwrap()
}

/// The serials (uppercase hex) of the CRL `GET /crl` serves, as openssl reads it after
/// verifying it under the CA.
fn served_serials(server: &TestServer) -> Vec<String> {
    let response = httpclient::get(&format!("{}/crl", server.url)).unwrap();
    assert_eq!(response.status, 200);
    let dir = tempfile::tempdir().unwrap();
    let crl = dir.path().join("crl.der");
    std::fs::write(&crl, &response.body).unwrap();
    let output = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(&crl)
        .arg("-CAfile")
        .arg(server.state_file("ca/ca.pem"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("verify OK"), "{}", text(&output));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Serial Number: "))
        .map(str::to_string)
        .collect()
}

fn record(server: &TestServer, serial: &str) -> serde_json::Value {
    server.cert_record(serial).unwrap()
}

/// Marks a record revoked by hand: what a revocation killed between record and CRL left
/// before the index came first.
fn mark_record_only(server: &TestServer, serial: &str, at: i64) {
    let mut value = record(server, serial);
    value["revoked"] = at.into();
    value["revocation_reason"] = "keyCompromise".into();
    common::state::put(&server.state, RecordKind::Cert, serial, &value);
}

/// Adds an index entry by hand: what a revocation killed after its index entry leaves.
fn list_in_index_only(server: &TestServer, serial: &str, at: i64) {
    let path = server.state_file("crl.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let not_after = record(server, serial)["not_after"].clone();
    index["revoked"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "serial": serial, "revoked_at": at, "reason": "superseded", "not_after": not_after,
        }));
    std::fs::write(path, serde_json::to_vec_pretty(&index).unwrap()).unwrap();
}

fn fsck(config: &Path, repair: bool) -> Output {
    let config = config.to_str().unwrap();
    let mut args = vec!["fsck", "--config", config];
    if repair {
        args.push("--repair");
    }
    otad(&args)
}

#[test]
fn half_done_revocations_are_reported_by_fsck_and_mended_by_repair_and_start_up() {
    if !have("openssl", "version") {
        return;
    }
    let mut server = TestServer::start(|config| config);
    let config = server.config_path();
    let serials: Vec<String> = (0..4).map(|_| enroll(&server)).collect();
    let upper = |serial: &String| serial.to_uppercase();
    assert_eq!(served_serials(&server), Vec::<String>::new());
    let at = otad::store::now() - 60;

    // 1. Record marked, index and CRL not: fsck says so; --repair lists it and re-signs.
    mark_record_only(&server, &serials[0], at);
    let found = fsck(&config, false);
    assert_eq!(found.status.code(), Some(1), "{}", text(&found));
    assert!(
        text(&found).contains(&format!(
            "problem: certificate {}: revoked, but crl.json does not list it",
            serials[0]
        )),
        "{}",
        text(&found)
    );
    assert_eq!(
        served_serials(&server),
        Vec::<String>::new(),
        "the bug itself"
    );
    let repaired = fsck(&config, true);
    assert!(repaired.status.success(), "{}", text(&repaired));
    assert!(
        text(&repaired).contains(&format!(
            "repaired: crl: 1 revoked certificate(s) added to crl.json ({}); CRL number",
            serials[0]
        )),
        "{}",
        text(&repaired)
    );
    assert_eq!(served_serials(&server), [upper(&serials[0])]);

    // 2. Index entry alone: fsck reports the record and crl.der; the running server's next
    // GET /crl lists it and marks the record.
    list_in_index_only(&server, &serials[1], at);
    let found = fsck(&config, false);
    assert_eq!(found.status.code(), Some(1), "{}", text(&found));
    assert!(
        text(&found).contains(&format!(
            "problem: certificate {}: crl.json lists it as revoked (superseded",
            serials[1]
        )),
        "{}",
        text(&found)
    );
    assert!(
        text(&found).contains("problem: crl.der: does not list 1 certificate(s) crl.json lists"),
        "{}",
        text(&found)
    );
    assert_eq!(
        served_serials(&server),
        [upper(&serials[0]), upper(&serials[1])]
    );
    assert_eq!(record(&server, &serials[1])["revoked"], at);
    assert_eq!(
        record(&server, &serials[1])["revocation_reason"],
        "superseded"
    );
    let clean = fsck(&config, false);
    assert!(clean.status.success(), "{}", text(&clean));

    // 3. Both directions at once, mended by the start-up repair of a killed server.
    mark_record_only(&server, &serials[2], at);
    list_in_index_only(&server, &serials[3], at);
    server.restart();
    let log = server.log();
    assert!(
        log.contains(&format!(
            "start-up repair: crl: 1 record(s) marked revoked as crl.json lists them ({}); 1 \
             revoked certificate(s) added to crl.json ({}); CRL number",
            serials[3], serials[2]
        )),
        "{log}"
    );
    let served = served_serials(&server);
    for serial in &serials {
        assert!(
            served.contains(&upper(serial)),
            "{serial} not in {served:?}"
        );
    }
    assert_eq!(record(&server, &serials[3])["revoked"], at);
    let clean = fsck(&config, false);
    assert!(clean.status.success(), "{}", text(&clean));
}

#[test]
fn a_killed_cert_revoke_never_leaves_a_revoked_certificate_off_the_served_crl() {
    if !have("openssl", "version") {
        return;
    }
    let server = TestServer::start(|config| config);
    let config = server.config_path();
    let config = config.to_str().unwrap();
    let serials: Vec<String> = (0..=KILLED_REVOCATIONS).map(|_| enroll(&server)).collect();

    // One revocation run to the end gives the time the kills are spread over.
    let started = Instant::now();
    let whole = otad(&["cert", "revoke", "--config", config, &serials[0]]);
    assert!(whole.status.success(), "{}", text(&whole));
    let takes = started.elapsed();

    // The writes come at the end of a run, after loading the config and the CA key: each
    // kill is aimed between the latest that came too early and the earliest that came too
    // late, so most land among the writes.
    let (mut early, mut late) = (takes.mul_f64(0.3), takes.mul_f64(1.2));
    let (mut untouched, mut half_done, mut finished) = (0, 0, 0);
    for (i, serial) in serials.iter().enumerate().skip(1) {
        let delay = (early + late) / 2;
        let mut child = Command::new(otad_bin())
            .args(["cert", "revoke", "--config", config, serial])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();

        let record_says = !record(&server, serial)["revoked"].is_null();
        let index = std::fs::read(server.state_file("crl.json")).unwrap();
        let index_says = String::from_utf8_lossy(&index).contains(&format!("\"{serial}\""));
        let stored = std::fs::read(server.state_file("crl.der")).unwrap();
        let stored_lists = cert_serial_in_der(&stored, serial);
        match (record_says || index_says, stored_lists || status.success()) {
            (false, _) => {
                untouched += 1;
                early = delay;
            }
            (true, true) => {
                finished += 1;
                late = delay;
            }
            (true, false) => half_done += 1,
        }
        // Clock and scheduling jitter: widen again once the two meet.
        if late.saturating_sub(early) < std::time::Duration::from_micros(200) {
            early = early.saturating_sub(takes / 10);
            late += takes / 10;
        }
        // Whatever the kill left, once anything says revoked the served CRL lists it.
        if record_says || index_says {
            let served = served_serials(&server);
            assert!(
                served.contains(&serial.to_uppercase()),
                "kill {i} after {delay:?}: record {record_says}, index {index_says}, served \
                 {served:?}"
            );
            assert!(!record(&server, serial)["revoked"].is_null());
        }
    }
    eprintln!(
        "{KILLED_REVOCATIONS} kills aimed within a {takes:?} run: {untouched} before any write, \
         {half_done} between the index and the CRL, {finished} after the CRL"
    );
    assert_eq!(untouched + half_done + finished, KILLED_REVOCATIONS);

    // Killed writes may leave temp files; --repair removes them and the state is clean.
    let repaired = otad(&["fsck", "--config", config, "--repair"]);
    assert!(repaired.status.success(), "{}", text(&repaired));
}

/// Whether a DER CRL holds this serial's INTEGER content octets (a quick look, no parse).
fn cert_serial_in_der(der: &[u8], serial_hex: &str) -> bool {
    let octets: Vec<u8> = (0..serial_hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(serial_hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    !octets.is_empty() && der.windows(octets.len()).any(|window| window == octets)
}
