//! Decisions on a running server: device policy rules, the admin's blocklist (through the
//! CLI, on the live state dir), decision hooks that refuse, hang, crash, flood or exit 2, and
//! per-device final profiles rendered from hook and built-in variables.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::server::{otad_bin, set_key, TestServer};
use common::state::RecordKind;
use otad::simulate::Device;

/// A device trusted by `server` reporting `serial` and any other `overrides`.
fn device(server: &TestServer, serial: &str, overrides: &[(&str, &str)]) -> Device {
    let mut options = server.device_options();
    options.serial = Some(serial.to_string());
    let mut device = Device::new(&options).unwrap();
    for (key, value) in overrides {
        device.overrides.insert(key.to_string(), value.to_string());
    }
    device
}

fn device_record(server: &TestServer, udid: &str) -> Option<serde_json::Value> {
    server.device_record(udid)
}

fn cert_count(server: &TestServer) -> usize {
    server.count(RecordKind::Cert)
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn otad(args: &[&str]) -> std::process::Output {
    Command::new(otad_bin()).args(args).output().unwrap()
}

#[test]
fn deny_and_allow_rules_decide_in_phase_2_and_a_refusal_changes_nothing() {
    let server = TestServer::start(|config| {
        let config = set_key(&config, "policy", "default", "\"deny\"");
        config
            + "\n[[policy.rule]]\naction = \"deny\"\nPRODUCT = \"iPhone15,*\"\n\
               SERIAL = \"OLD*\"\nreason = \"too old for this fleet\"\n\
               \n[[policy.rule]]\naction = \"allow\"\nPRODUCT = \"iPhone*\"\n"
    });

    // Rule 1 needs both fields: PRODUCT matches, SERIAL too.
    let refused = device(&server, "OLD0001", &[]);
    let phase1 = refused.phase1(&server.url).unwrap();
    let before = cert_count(&server);
    let err = refused.phase2(&phase1).expect_err("rule 1 denies");
    assert!(err.contains("403"), "{err}");
    assert!(
        err.contains("refused by policy rule 1: too old for this fleet"),
        "{err}"
    );
    assert!(
        device_record(&server, &refused.udid).is_none(),
        "no device record"
    );
    assert_eq!(cert_count(&server), before, "no certificate");
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("too old for this fleet"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(
        line.contains("WARN") && line.contains("remote=127.0.0.1:"),
        "{line}"
    );

    // Only PRODUCT of rule 1 matches: rule 2 allows, the device enrolls through phase 3.
    let summary = {
        let mut allowed = device(&server, "NEW0001", &[]);
        let phase1 = allowed.phase1(&server.url).unwrap();
        let scep = allowed.phase2(&phase1).unwrap();
        allowed.enroll_scep(&scep).unwrap();
        allowed.phase3(&phase1).unwrap();
        device_record(&server, &allowed.udid).unwrap()
    };
    assert_eq!(summary["phase"], "enrolled");

    // No rule matches an iPad: policy.default = "deny".
    let ipad = device(&server, "NEW0002", &[("PRODUCT", "iPad13,1")]);
    let phase1 = ipad.phase1(&server.url).unwrap();
    let err = ipad.phase2(&phase1).expect_err("the default denies");
    assert!(
        err.contains("403") && err.contains("policy.default"),
        "{err}"
    );
}

#[test]
fn a_blocked_serial_is_refused_in_every_step_until_unblocked() {
    let server = TestServer::start(|config| config);
    let config = server.state_file("otad.toml");
    let config = config.to_str().unwrap();

    // Enrolled up to its certificate, then blocked: phase 3 is refused, nothing moves.
    let mut first = device(&server, "C02BLOCK1", &[]);
    let phase1 = first.phase1(&server.url).unwrap();
    let scep = first.phase2(&phase1).unwrap();
    first.enroll_scep(&scep).unwrap();
    let output = otad(&[
        "device",
        "block",
        "--config",
        config,
        "c02block1",
        "--reason",
        "lost",
    ]);
    assert!(output.status.success(), "{:?}", output);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "C02BLOCK1: blocked\n"
    );

    let before = server.snapshot();
    let err = first
        .phase3(&phase1)
        .expect_err("a blocked device gets no final profile");
    assert!(err.contains("403"), "{err}");
    assert!(
        err.contains("serial C02BLOCK1: blocked by admin (lost)"),
        "{err}"
    );
    assert_eq!(
        server.snapshot(),
        before,
        "a refused phase 3 writes nothing"
    );
    assert_eq!(
        device_record(&server, &first.udid).unwrap()["phase"],
        "certified"
    );

    // Another device with the serial is refused in phase 2: no record, no SCEP challenge.
    let second = device(&server, "C02BLOCK1", &[]);
    let phase1 = second.phase1(&server.url).unwrap();
    let certs = cert_count(&server);
    let err = second.phase2(&phase1).expect_err("blocked in phase 2");
    assert!(
        err.contains("403") && err.contains("blocked by admin"),
        "{err}"
    );
    assert!(device_record(&server, &second.udid).is_none());

    // A device blocked between phase 2 and SCEP gets a CertRep FAILURE, no certificate.
    let mut third = device(&server, "C02BLOCK3", &[]);
    let phase1 = third.phase1(&server.url).unwrap();
    let scep = third.phase2(&phase1).unwrap();
    assert!(otad(&["device", "block", "--config", config, "C02BLOCK3"])
        .status
        .success());
    let err = third.enroll_scep(&scep).expect_err("blocked at SCEP");
    assert!(err.contains("CertRep FAILURE"), "{err}");
    assert_eq!(cert_count(&server), certs, "no certificate issued");
    assert_eq!(
        device_record(&server, &third.udid).unwrap()["phase"],
        "identified"
    );

    let listed = otad(&["device", "blocked", "--config", config, "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let serials: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials, ["C02BLOCK1", "C02BLOCK3"]);

    // Unblocked, the first device finishes with a fresh phase 1 (the old challenge stays
    // valid too, as phase 3 only needs its certificate).
    let output = otad(&["device", "unblock", "--config", config, "C02BLOCK1"]);
    assert!(output.status.success(), "{:?}", output);
    let phase1 = first.phase1(&server.url).unwrap();
    first.phase3(&phase1).unwrap();
    assert_eq!(
        device_record(&server, &first.udid).unwrap()["phase"],
        "enrolled"
    );
    let again = otad(&["device", "unblock", "--config", config, "C02BLOCK1"]);
    assert_eq!(again.status.code(), Some(1));
    let bad = otad(&["device", "block", "--config", config, "../../x"]);
    assert_eq!(bad.status.code(), Some(2));
}

/// One phase 2 hook for every misbehaviour, chosen by the serial in its input; it keeps its
/// last input for inspection.
fn misbehaving_hook(dir: &Path) -> PathBuf {
    let keep = dir.join("last-input.json");
    script(
        dir,
        "phase2-hook",
        &format!(
            "input=$(cat)\nprintf '%s' \"$input\" > {}\n\
             case \"$input\" in\n\
             *REFUSE*) echo 'not in the inventory'; echo 'second line'; exit 1;;\n\
             *SILENT*) exit 1;;\n\
             *HANG*) sleep 30;;\n\
             *CRASH*) kill -SEGV $$;;\n\
             *FLOOD*) yes flood;;\n\
             *EXIT2*) exit 2;;\n\
             *BADJSON*) echo 'allowed'; exit 0;;\n\
             *UNDECLARED*) echo '{{\"ROOM\": \"1\"}}'; exit 0;;\n\
             *SLOW*) sleep 3;;\n\
             esac\n\
             echo '{{\"SITE\": \"HQ\"}}'",
            keep.display()
        ),
    )
}

#[test]
fn a_hook_refuses_and_every_failure_refuses_too() {
    let hooks = tempfile::tempdir().unwrap();
    let hook = misbehaving_hook(hooks.path());
    let server = TestServer::start(|config| {
        let config = set_key(&config, "hooks", "phase2", &format!("{:?}", hook));
        let config = set_key(&config, "hooks", "timeout", "\"1s\"");
        let config = set_key(&config, "hooks", "max_output", "4096");
        set_key(&config, "hooks", "variables", "[\"SITE\"]")
    });

    // Allowed: the input is the documented JSON object.
    let allowed = device(&server, "ALLOW01", &[]);
    let phase1 = allowed.phase1(&server.url).unwrap();
    allowed.phase2(&phase1).unwrap();
    let input: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hooks.path().join("last-input.json")).unwrap())
            .unwrap();
    assert_eq!(input["phase"], 2);
    assert_eq!(input["udid"], allowed.udid.as_str());
    assert_eq!(input["attributes"]["SERIAL"], "ALLOW01");
    assert_eq!(input["attributes"]["PRODUCT"], otad::simulate::PRODUCT);
    assert!(input["attributes"].get("CHALLENGE").is_none(), "{input}");
    assert_eq!(input["user"], serde_json::Value::Null);
    assert_eq!(input["token_note"], serde_json::Value::Null);
    assert!(
        input["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{input}"
    );
    let record = device_record(&server, &allowed.udid).unwrap();
    assert_eq!(record["hook_variables"]["SITE"], "HQ");
    // The hook's variables are on the device record, in the state log: otad's user alone.
    let mode = std::fs::metadata(server.state_file("state.log"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let cases = [
        (
            "REFUSE01",
            "refused by hooks.phase2: not in the inventory",
            None,
        ),
        ("SILENT01", "refused by hooks.phase2: no reason given", None),
        (
            "HANG01",
            "the decision hook failed",
            Some("no answer within 1000 ms"),
        ),
        (
            "CRASH01",
            "the decision hook failed",
            Some("killed by signal 11"),
        ),
        (
            "FLOOD01",
            "the decision hook failed",
            Some("wrote more than 4096 bytes"),
        ),
        ("EXIT201", "the decision hook failed", Some("exited 2")),
        (
            "BADJSON01",
            "the decision hook failed",
            Some("neither empty nor JSON"),
        ),
        (
            "UNDECLARED01",
            "the decision hook failed",
            Some("not declared"),
        ),
    ];
    for (serial, reason, logged) in cases {
        let refused = device(&server, serial, &[]);
        let phase1 = refused.phase1(&server.url).unwrap();
        let started = Instant::now();
        let err = refused.phase2(&phase1).expect_err(serial);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{serial}: too slow"
        );
        assert!(err.contains("403"), "{serial}: {err}");
        assert!(err.contains(reason), "{serial}: {err}");
        assert!(!err.contains("second line"), "{serial}: {err}");
        assert!(device_record(&server, &refused.udid).is_none(), "{serial}");
        if let Some(logged) = logged {
            let log = server.log();
            let line = log
                .lines()
                .find(|l| l.contains(&refused.udid) && l.contains("ERROR"))
                .unwrap_or_else(|| panic!("{serial}: no error line:\n{log}"));
            assert!(line.contains(logged), "{serial}: {line}");
            assert!(line.contains("hooks.on_error = deny"), "{serial}: {line}");
        }
    }
}

#[test]
fn on_error_allow_lets_a_failing_hook_through() {
    let hooks = tempfile::tempdir().unwrap();
    let hook = misbehaving_hook(hooks.path());
    let server = TestServer::start(|config| {
        let config = set_key(&config, "hooks", "phase2", &format!("{:?}", hook));
        let config = set_key(&config, "hooks", "on_error", "\"allow\"");
        set_key(&config, "hooks", "variables", "[\"SITE\"]")
    });
    let mut failing = device(&server, "EXIT202", &[]);
    let phase1 = failing.phase1(&server.url).unwrap();
    let scep = failing.phase2(&phase1).unwrap();
    failing.enroll_scep(&scep).unwrap();
    failing.phase3(&phase1).unwrap();
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains(&failing.udid)
            && l.contains("exited 2")
            && l.contains("letting the device on")),
        "{log}"
    );
    // A slow hook holds up its own device only: the state lock is not held while it runs.
    let slow = device(&server, "SLOW01", &[]);
    let slow_phase1 = slow.phase1(&server.url).unwrap();
    let waiting = std::thread::spawn(move || {
        let started = Instant::now();
        let result = slow.phase2(&slow_phase1);
        (result, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut fast = device(&server, "FAST01", &[]);
    let phase1 = fast.phase1(&server.url).unwrap();
    let scep = fast.phase2(&phase1).unwrap();
    fast.enroll_scep(&scep).unwrap();
    fast.phase3(&phase1).unwrap();
    let fast_took = started.elapsed();
    let (slow_result, slow_took) = waiting.join().unwrap();
    slow_result.unwrap();
    assert!(slow_took >= Duration::from_secs(3), "{slow_took:?}");
    assert!(
        fast_took < Duration::from_millis(2500),
        "another device waited for the slow hook: {fast_took:?}"
    );

    // A refusal is still a refusal: on_error is about failures only.
    let refused = device(&server, "REFUSE02", &[]);
    let phase1 = refused.phase1(&server.url).unwrap();
    let err = refused.phase2(&phase1).expect_err("exit 1 refuses");
    assert!(err.contains("not in the inventory"), "{err}");
}

const TEMPLATE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict>
<key>PayloadType</key><string>Configuration</string>
<key>PayloadIdentifier</key><string>com.example.wifi</string>
<key>PayloadUUID</key><string>6F2C3A4E-7A1B-4C4D-9E8F-0A1B2C3D4E5F</string>
<key>PayloadVersion</key><integer>1</integer>
<key>PayloadDisplayName</key><string>Wi-Fi for ${DEVICE_NAME}</string>
<key>PayloadContent</key><array><dict>
<key>PayloadType</key><string>com.apple.wifi.managed</string>
<key>PayloadIdentifier</key><string>com.example.wifi.${SERIAL}</string>
<key>PayloadUUID</key><string>0A1B2C3D-4E5F-4A1B-8C2D-3E4F5A6B7C8D</string>
<key>PayloadVersion</key><integer>1</integer>
<key>SSID_STR</key><string>${SITE}-guest</string>
<key>Password</key><string>${WIFI_PSK}</string>
<key>Comment</key><string>${DEVICE_NAME}|${IMEI}|${USER}|$${SITE}|pa$$word</string>
</dict></array>
</dict></plist>"#;

#[test]
fn hook_variables_and_built_ins_make_a_per_device_profile() {
    let hooks = tempfile::tempdir().unwrap();
    let phase2 = misbehaving_hook(hooks.path());
    let phase3 = script(
        hooks.path(),
        "phase3-hook",
        "input=$(cat)\ncase \"$input\" in\n*NOPSK*) exit 0;;\nesac\n\
         echo '{\"WIFI_PSK\": \"s3cret&<x>\"}'",
    );
    let template = hooks.path().join("wifi.mobileconfig");
    std::fs::write(&template, TEMPLATE).unwrap();
    let server = TestServer::start(|config| {
        let config = set_key(&config, "hooks", "phase2", &format!("{:?}", phase2));
        let config = set_key(&config, "hooks", "phase3", &format!("{:?}", phase3));
        let config = set_key(&config, "hooks", "variables", "[\"SITE\", \"WIFI_PSK\"]");
        set_key(&config, "profile", "template", &format!("{:?}", template))
    });

    let hostile = "</string><key>x</key><string> & <b> \u{1}";
    let mut device = device(&server, "VARS01", &[("DEVICE_NAME", hostile)]);
    let phase1 = device.phase1(&server.url).unwrap();
    let scep = device.phase2(&phase1).unwrap();
    device.enroll_scep(&scep).unwrap();
    let profile = device.phase3(&phase1).unwrap();

    let safe = "</string><key>x</key><string> & <b> \u{FFFD}";
    assert_eq!(
        profile.profile["PayloadDisplayName"].as_string(),
        Some(format!("Wi-Fi for {safe}").as_str())
    );
    assert_eq!(profile.payloads.len(), 1);
    let wifi = profile.payloads[0].as_dictionary().unwrap();
    assert_eq!(wifi.len(), 7, "no key was injected: {wifi:?}");
    assert_eq!(
        wifi["PayloadIdentifier"].as_string(),
        Some("com.example.wifi.VARS01")
    );
    assert_eq!(wifi["SSID_STR"].as_string(), Some("HQ-guest"));
    assert_eq!(wifi["Password"].as_string(), Some("s3cret&<x>"));
    assert_eq!(
        wifi["Comment"].as_string(),
        Some(format!("{safe}|||${{SITE}}|pa$$word").as_str())
    );

    // Phase 2's variables are kept on the record; phase 3's secret never reaches the disk.
    let record = device_record(&server, &device.udid).unwrap();
    assert_eq!(record["phase"], "enrolled");
    assert_eq!(record["hook_variables"]["SITE"], "HQ");
    assert!(record["hook_variables"].get("WIFI_PSK").is_none());
    for (path, bytes) in server.snapshot() {
        assert!(
            !String::from_utf8_lossy(&bytes).contains("s3cret"),
            "{} holds the phase 3 secret",
            path.display()
        );
    }

    // A declared variable no hook supplied: phase 3 is refused, the device stays certified.
    let mut missing = otad::simulate::Device::new(&{
        let mut options = server.device_options();
        options.serial = Some("NOPSK01".into());
        options
    })
    .unwrap();
    let phase1 = missing.phase1(&server.url).unwrap();
    let scep = missing.phase2(&phase1).unwrap();
    missing.enroll_scep(&scep).unwrap();
    let err = missing.phase3(&phase1).expect_err("no WIFI_PSK");
    assert!(err.contains("403") && err.contains("${WIFI_PSK}"), "{err}");
    assert_eq!(
        device_record(&server, &missing.udid).unwrap()["phase"],
        "certified"
    );
    assert!(
        server
            .log()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("no hook supplied")),
        "{}",
        server.log()
    );
}

#[test]
fn serve_refuses_an_unknown_template_variable_and_a_bad_rule_at_start_up() {
    let server = TestServer::start(|config| config);
    let config_path = server.state_file("otad.toml");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let template = server.dir.path().join("wifi.mobileconfig");
    std::fs::write(&template, TEMPLATE).unwrap();

    // SITE is declared, WIFI_PSK is not.
    let config = set_key(&original, "profile", "template", &format!("{:?}", template));
    let config = set_key(&config, "hooks", "variables", "[\"SITE\"]");
    let broken = server.state_file("broken.toml");
    std::fs::write(&broken, &config).unwrap();
    let output = otad(&["serve", "--config", broken.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("PayloadContent[0].Password: ${WIFI_PSK} is neither built in"),
        "{stderr}"
    );

    let config = original.clone() + "\n[[policy.rule]]\naction = \"deny\"\n";
    std::fs::write(&broken, &config).unwrap();
    let output = otad(&["serve", "--config", broken.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("policy.rule 1: matches nothing in particular"),
        "{stderr}"
    );

    let config = set_key(&original, "hooks", "phase2", "\"/nonexistent/hook\"");
    std::fs::write(&broken, &config).unwrap();
    let output = otad(&["serve", "--config", broken.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("hooks.phase2: /nonexistent/hook"),
        "{stderr}"
    );
}

#[test]
fn phase_3_decides_on_what_phase_2_attested_and_delivers_once_per_certificate() {
    let server = TestServer::start(|config| config);
    let config = server.state_file("otad.toml");
    let config = config.to_str().unwrap();

    // Blocked between SCEP and phase 3, a device cannot slip past by naming another serial
    // in its phase 3 body (signed only by the key it made itself).
    let mut device = device(&server, "C02ATTEST1", &[]);
    let phase1 = device.phase1(&server.url).unwrap();
    let scep = device.phase2(&phase1).unwrap();
    device.enroll_scep(&scep).unwrap();
    let output = otad(&["device", "block", "--config", config, "C02ATTEST1"]);
    assert!(output.status.success(), "{output:?}");
    device
        .overrides
        .insert("SERIAL".into(), "C02OTHER99".into());
    let err = device
        .phase3(&phase1)
        .expect_err("another serial in phase 3");
    assert!(
        err.contains("is not the C02ATTEST1 phase 2 reported"),
        "{err}"
    );

    // Its own serial: the block applies.
    device.overrides.remove("SERIAL");
    let err = device.phase3(&phase1).expect_err("blocked");
    assert!(err.contains("blocked by admin"), "{err}");
    let record = device_record(&server, &device.udid).unwrap();
    assert_eq!(record["attributes"]["SERIAL"], "C02ATTEST1");

    // Unblocked: delivered once; a replay of phase 3 with the same certificate is refused.
    let output = otad(&["device", "unblock", "--config", config, "C02ATTEST1"]);
    assert!(output.status.success(), "{output:?}");
    device.phase3(&phase1).unwrap();
    let challenges = server.count(RecordKind::Challenge);
    let err = device.phase3(&phase1).expect_err("a replayed phase 3");
    assert!(err.contains("already delivered for certificate"), "{err}");
    let after = server.count(RecordKind::Challenge);
    assert_eq!(after, challenges, "a replay mints no SCEP challenge");
}

#[test]
fn a_serial_in_another_spelling_is_refused_rather_than_slipping_past_the_blocklist() {
    let server = TestServer::start(|config| config);
    let config = server.state_file("otad.toml");
    let output = otad(&[
        "device",
        "block",
        "--config",
        config.to_str().unwrap(),
        "BLK1",
    ]);
    assert!(output.status.success(), "{output:?}");

    for spelling in ["BLK1 ", " BLK1", "BLK1\u{0}", "ＢＬＫ1", "blk1"] {
        let device = device(&server, spelling, &[]);
        let phase1 = device.phase1(&server.url).unwrap();
        let err = device.phase2(&phase1).expect_err(spelling);
        assert!(
            err.contains("is not a serial number") || err.contains("blocked by admin"),
            "{spelling:?}: {err}"
        );
    }
    assert_eq!(cert_count(&server), 0);
}

#[test]
fn with_one_worker_two_slow_phase_2_requests_are_handled_one_at_a_time() {
    // A hook that takes its time and writes down when it starts and ends: with
    // http.workers = 1, the second device's phase 2 waits for the first one's to finish.
    let hooks = tempfile::tempdir().unwrap();
    let trace = hooks.path().join("trace");
    let hook = script(
        hooks.path(),
        "slow-hook",
        &format!(
            "cat >/dev/null\necho start >> {trace}\nsleep 0.5\necho end >> {trace}",
            trace = trace.display()
        ),
    );
    let server = TestServer::start(|config| {
        let config = set_key(&config, "http", "workers", "1");
        set_key(&config, "hooks", "phase2", &format!("{:?}", hook))
    });
    let devices = [
        device(&server, "SLOWA01", &[]),
        device(&server, "SLOWB01", &[]),
    ];
    let phase1s: Vec<_> = devices
        .iter()
        .map(|device| device.phase1(&server.url).unwrap())
        .collect();
    std::thread::scope(|scope| {
        let enrolling: Vec<_> = devices
            .iter()
            .zip(&phase1s)
            .map(|(device, phase1)| scope.spawn(move || device.phase2(phase1)))
            .collect();
        for enrolled in enrolling {
            enrolled
                .join()
                .unwrap()
                .expect("both devices get through phase 2");
        }
    });
    assert_eq!(
        std::fs::read_to_string(&trace).unwrap(),
        "start\nend\nstart\nend\n",
        "one phase 2 at a time"
    );
}
