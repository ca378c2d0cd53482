//! The record of enrollment against a running server: the events log, the webhook fed from
//! it (a mock receiver on loopback, then a dead one across a restart), and the inventory
//! commands.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::server::{otad_bin, set_key, TestServer};
use common::state::{self, RecordKind};
use otad::httpclient;
use serde_json::Value;

/// The events log as JSON values, in order.
fn events(server: &TestServer) -> Vec<Value> {
    std::fs::read_to_string(server.state_file("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line is JSON"))
        .collect()
}

fn enroll(server: &TestServer, udid: &str, serial: &str) -> otad::simulate::Summary {
    let mut options = server.device_options();
    options.udid = Some(udid.into());
    options.serial = Some(serial.into());
    otad::simulate::run(&options)
        .unwrap_or_else(|err| panic!("enrollment of {udid} failed: {err}\n{}", server.log()))
}

/// One request the mock webhook received.
#[derive(Debug, Clone)]
struct Received {
    headers: BTreeMap<String, String>,
    body: String,
}

/// A webhook receiver on loopback answering 200 to every POST, recording what it got.
struct MockWebhook {
    received: Arc<Mutex<Vec<Received>>>,
}

impl MockWebhook {
    fn serve(listener: TcpListener) -> MockWebhook {
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if let Some(request) = read_request(&stream) {
                    sink.lock().unwrap().push(request);
                    let mut writer = &stream;
                    let _ = writer.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
            }
        });
        MockWebhook { received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `count` requests arrived (or 30 s passed) and returns them.
    fn wait_for(&self, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && self.received().len() < count {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.received()
    }
}

fn read_request(stream: &TcpStream) -> Option<Received> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream);
    let mut headers = BTreeMap::new();
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    assert!(request_line.starts_with("POST /hook "), "{request_line}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.insert(name.to_ascii_lowercase(), value.trim().to_string());
    }
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        headers,
        body: String::from_utf8(body).ok()?,
    })
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_full_enrollment_is_recorded_in_order() {
    let server = TestServer::start(|config| config);
    let udid = "00008030-001A35E12345802E";
    let summary = enroll(&server, udid, "F2LXK0AAHG7F");

    let events = events(&server);
    assert_eq!(
        kinds(&events),
        ["admin", "phase1", "phase2", "certificate", "phase3"],
        "{events:#?}"
    );
    assert_eq!(events[0]["command"], "init");
    for event in &events {
        assert!(
            time::OffsetDateTime::parse(
                event["at"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339
            )
            .is_ok(),
            "{event}"
        );
    }
    for event in &events[2..] {
        assert_eq!(event["udid"], udid, "{event}");
        assert!(
            event["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{event}"
        );
    }
    assert_eq!(events[2]["serial"], "F2LXK0AAHG7F");
    assert_eq!(
        events[3]["certificate"],
        summary.certificate_serial.as_str()
    );
    assert_eq!(events[3]["authorised_by"], "ota");
    assert_eq!(
        events[4]["certificate"],
        summary.certificate_serial.as_str()
    );

    // No challenge ever reaches the log: neither the key nor a value.
    let text = std::fs::read_to_string(server.state_file("events.jsonl")).unwrap();
    assert!(!text.to_ascii_lowercase().contains("challenge"), "{text}");
}

#[test]
fn refusals_are_recorded_with_their_reason() {
    let server = TestServer::start(|config| config);
    let refused = httpclient::post(
        &format!("{}/ota/phase23", server.url),
        "application/pkcs7-signature",
        b"not a signed body",
    )
    .unwrap();
    assert_eq!(refused.status, 400);
    let wrong_method = httpclient::get(&format!("{}/ota/phase23", server.url)).unwrap();
    assert_eq!(wrong_method.status, 405);
    // Not an enrollment endpoint: not recorded.
    assert_eq!(
        httpclient::get(&format!("{}/nope", server.url))
            .unwrap()
            .status,
        404
    );

    let events = events(&server);
    let refusals: Vec<&Value> = events.iter().filter(|e| e["kind"] == "refusal").collect();
    assert_eq!(refusals.len(), 2, "{events:#?}");
    assert_eq!(refusals[0]["status"], 400);
    assert_eq!(refusals[0]["path"], "/ota/phase23");
    assert_eq!(refusals[0]["method"], "POST");
    assert!(refusals[0]["remote"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let reason = refusals[0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("body:"), "{reason}");
    assert_eq!(refusals[1]["status"], 405);
}

#[test]
fn a_flood_of_refusals_from_one_client_writes_a_bounded_number_of_lines() {
    let server = TestServer::start(|config| config);
    for _ in 0..60 {
        let refused = httpclient::get(&format!("{}/ota/phase23", server.url)).unwrap();
        assert_eq!(refused.status, 405);
    }

    // The client's share of the minute, one by one; the rest counted for the summary that
    // follows the minute (the unit tests of events::throttle cover it).
    let logged = events(&server);
    let refusals = logged.iter().filter(|e| e["kind"] == "refusal").count();
    assert_eq!(refusals, otad::events::throttle::PER_CLIENT as usize);
    assert!(
        server.log().matches("WARN").count() >= 60,
        "each is still a warn line"
    );

    // A clean stop writes the running minute's count rather than lose it.
    let mut server = server;
    assert_eq!(server.stop(), Some(0), "{}", server.log());
    let after = events(&server);
    let last = after.last().unwrap();
    assert_eq!(last["kind"], "refusals-suppressed", "{after:#?}");
    assert_eq!(last["refusals"], 60 - otad::events::throttle::PER_CLIENT);
    assert_eq!(last["clients"], 1);
}

#[test]
fn anonymous_downloads_are_bounded_in_the_log_too() {
    let mut server = TestServer::start(|config| config);
    for _ in 0..80 {
        let got = httpclient::get(&format!("{}/ota/enroll", server.url)).unwrap();
        assert_eq!(got.status, 200);
    }

    let logged = events(&server);
    let downloads = logged.iter().filter(|e| e["kind"] == "phase1").count();
    assert_eq!(
        downloads,
        otad::events::throttle::DOWNLOADS_PER_CLIENT as usize
    );
    assert_eq!(server.stop(), Some(0), "{}", server.log());
    let after = events(&server);
    let last = after.last().unwrap();
    assert_eq!(last["kind"], "downloads-suppressed", "{after:#?}");
    assert_eq!(
        last["downloads"],
        80 - otad::events::throttle::DOWNLOADS_PER_CLIENT
    );
}

fn hook_config(config: String, port: u16) -> String {
    set_key(
        &config,
        "events",
        "webhook",
        &format!("\"http://127.0.0.1:{port}/hook\""),
    )
}

#[test]
fn a_webhook_receives_every_event_signed() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mock = MockWebhook::serve(listener);
    let secret = "a-webhook-key-of-some-length";
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("hook.key");
    std::fs::write(&key_file, format!("{secret}\n")).unwrap();
    let server = TestServer::start(|config| {
        let config = hook_config(config, port);
        set_key(
            &config,
            "events",
            "webhook_secret_file",
            &format!("{key_file:?}"),
        )
    });
    enroll(&server, "UDID-HOOK-1", "HOOKSERIAL1");
    enroll(&server, "UDID-HOOK-2", "HOOKSERIAL2");

    // The webhook starts at the end of the log as it stood (after `init`'s event).
    let logged = events(&server);
    let expected: Vec<String> = std::fs::read_to_string(server.state_file("events.jsonl"))
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect();
    assert_eq!(expected.len(), logged.len() - 1);
    assert_eq!(expected.len(), 8, "two enrollments of four events");
    let received = mock.wait_for(expected.len());
    let bodies: Vec<&str> = received.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(bodies, expected, "in order, each once");

    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    for request in &received {
        assert_eq!(request.headers["content-type"], "application/json");
        let tag = aws_lc_rs::hmac::sign(&key, request.body.as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(request.headers["x-otad-signature"], format!("sha256={hex}"));
        assert!(request.headers.contains_key("x-otad-event-id"));
    }
}

#[test]
fn a_dead_webhook_delays_nothing_and_gets_everything_after_a_restart() {
    // A listener that accepts connections (the kernel does) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut server = TestServer::start(|config| hook_config(config, port));

    let devices = [
        ("UDID-DEAD-1", "DEADSERIAL1"),
        ("UDID-DEAD-2", "DEADSERIAL2"),
        ("UDID-DEAD-3", "DEADSERIAL3"),
    ];
    for (udid, serial) in devices {
        let summary = enroll(&server, udid, serial);
        assert_eq!(summary.udid, udid);
    }
    // Nothing listening at all, for the next enrollment.
    drop(silent);
    enroll(&server, "UDID-DEAD-4", "DEADSERIAL4");
    let expected: Vec<String> = std::fs::read_to_string(server.state_file("events.jsonl"))
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect();
    assert_eq!(expected.len(), 16);

    // The webhook comes back on its port; the server is killed and started again.
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).unwrap();
    let mock = MockWebhook::serve(listener);
    server.restart();
    let received = mock.wait_for(expected.len());
    let bodies: Vec<&str> = received.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(bodies, expected, "every event, in order");

    // Exactly once here: no 2xx ever reached the first server, so nothing was redelivered
    // (the guarantee is at least once; a repeat would carry the same X-Otad-Event-Id).
    std::thread::sleep(Duration::from_millis(1500));
    let ids: std::collections::BTreeSet<String> = mock
        .received()
        .iter()
        .map(|r| r.headers["x-otad-event-id"].clone())
        .collect();
    assert_eq!(ids.len(), expected.len());
    assert_eq!(mock.received().len(), expected.len());
}

fn otad(args: &[&str]) -> std::process::Output {
    Command::new(otad_bin())
        .args(args)
        .output()
        .expect("run otad")
}

#[test]
fn the_inventory_lists_and_shows_devices_and_skips_a_corrupt_record() {
    let server = TestServer::start(|config| config);
    let first = enroll(&server, "UDID-INV-1", "INVSERIAL1");
    enroll(&server, "UDID-INV-2", "INVSERIAL2");
    let config = server.config_path();
    let config = config.to_str().unwrap();

    let listed = otad(&["device", "list", "--config", config, "--json"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["udid"], "UDID-INV-1");
    assert_eq!(rows[0]["serial"], "INVSERIAL1");
    assert_eq!(rows[0]["phase"], "enrolled");
    assert_eq!(rows[0]["certificate"], first.certificate_serial.as_str());
    assert!(rows[0]["product"].is_string());
    assert!(rows[0]["first_seen"].as_str().unwrap().ends_with('Z'));

    let table = otad(&["device", "list", "--config", config]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.starts_with("UDID"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");

    for key in ["UDID-INV-1", "INVSERIAL1", "invserial1"] {
        let shown = otad(&["device", "show", "--config", config, key]);
        assert!(
            shown.status.success(),
            "{key}: {}",
            String::from_utf8_lossy(&shown.stderr)
        );
        let text = String::from_utf8(shown.stdout).unwrap();
        assert!(text.contains("udid: UDID-INV-1\n"), "{text}");
        let current = format!("certificate: {} (valid until ", first.certificate_serial);
        assert!(text.contains(&current), "{text}");
        assert!(text.contains("phase3"), "history: {text}");
    }
    let unknown = otad(&["device", "show", "--config", config, "NOSUCHDEVICE"]);
    assert_eq!(unknown.status.code(), Some(1));
    // Neither a UDID nor a serial: a wrong command line.
    let bad = otad(&["device", "show", "--config", config, "../etc"]);
    assert_eq!(bad.status.code(), Some(2));

    // One corrupt device record and one corrupt certificate record: the rest still lists.
    state::put_raw(&server.state, RecordKind::Device, "UDID-BROKEN", b"{ torn");
    state::put_raw(&server.state, RecordKind::Cert, "0abc", b"[]");
    let listed = otad(&["device", "list", "--config", config, "--json"]);
    assert!(listed.status.success());
    let rows: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(rows.len(), 2);
    let warning = String::from_utf8(listed.stderr).unwrap();
    assert!(
        warning.contains("device UDID-BROKEN: its record"),
        "{warning}"
    );
    let certs = otad(&["cert", "list", "--config", config, "--json"]);
    assert!(
        certs.status.success(),
        "{}",
        String::from_utf8_lossy(&certs.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&certs.stdout).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(String::from_utf8(certs.stderr)
        .unwrap()
        .contains("certificate 0abc: its record"));
}

#[test]
fn admin_commands_are_recorded() {
    let server = TestServer::start(|config| config);
    let summary = enroll(&server, "UDID-ADMIN-1", "ADMINSERIAL1");
    let config = server.config_path();
    let config = config.to_str().unwrap();
    let revoked = otad(&[
        "cert",
        "revoke",
        "--config",
        config,
        &summary.certificate_serial,
        "--reason",
        "keyCompromise",
    ]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let failed = otad(&["request", "deny", "--config", config, &"0".repeat(32)]);
    assert_eq!(failed.status.code(), Some(1));
    // Read-only commands are not recorded.
    assert!(otad(&["cert", "list", "--config", config]).status.success());

    let events = events(&server);
    let tail: Vec<&Value> = events.iter().rev().take(3).collect();
    assert_eq!(tail[2]["kind"], "revocation");
    assert_eq!(tail[2]["certificate"], summary.certificate_serial.as_str());
    assert_eq!(tail[2]["reason"], "keyCompromise");
    assert_eq!(tail[2]["udid"], "UDID-ADMIN-1");
    assert_eq!(tail[1]["kind"], "admin");
    assert_eq!(tail[1]["command"], "cert revoke");
    assert_eq!(tail[1]["outcome"], "ok");
    assert_eq!(
        tail[1]["args"],
        serde_json::json!([summary.certificate_serial, "--reason", "keyCompromise"])
    );
    assert_eq!(tail[0]["command"], "request deny");
    assert_eq!(tail[0]["outcome"], "failed");
    assert!(tail[0]["reason"].is_string());
}

#[test]
fn a_scep_failure_is_recorded_with_its_reason_and_no_challenge() {
    let server = TestServer::start(|config| config);
    let mut device = otad::simulate::Device::new(&server.device_options()).unwrap();
    let phase1 = device.phase1(&server.url).unwrap();
    let mut scep = device.phase2(&phase1).unwrap();
    let wrong = "wrong-challenge-value-0123456789";
    scep.challenge = wrong.to_string();
    let refused = device.enroll_scep(&scep);
    assert!(refused.is_err(), "a wrong challenge is refused");

    let events = events(&server);
    let failure = events
        .iter()
        .find(|e| e["kind"] == "refusal" && e["protocol"] == "scep")
        .unwrap_or_else(|| panic!("no SCEP refusal in {events:#?}"));
    assert_eq!(failure["fail_info"], "BadRequest");
    assert!(failure["transaction_id"].is_string());
    assert!(failure["reason"].as_str().unwrap().len() > 5, "{failure}");
    assert!(failure["remote"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let text = std::fs::read_to_string(server.state_file("events.jsonl")).unwrap();
    assert!(!text.contains(wrong), "the challenge sent is not logged");
    assert!(!text.contains(&phase1.challenge), "nor phase 1's");
}
