//! The command lines of `otad simulate --devices` and `otad fsck` against a running server.

mod common;

use common::cli::otad;
use common::server::TestServer;
use common::state::RecordKind;

#[test]
fn simulate_a_fleet_then_fsck_finds_what_a_crash_leaves() {
    let server = TestServer::start(|config| config);
    let device_ca = server.device_ca_dir.to_string_lossy().into_owned();
    let config = server.config_path().to_string_lossy().into_owned();

    let (code, out, err) = otad(&[
        "simulate",
        "--url",
        &server.url,
        "--device-ca",
        &device_ca,
        "--devices",
        "3",
        "--concurrency",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["ok"], 3);
    assert_eq!(summary["failed"], 0);
    for step in ["phase1", "phase2", "scep", "phase3"] {
        assert_eq!(summary["latency"][step]["count"], 3, "{step}");
    }

    // Flags of a fleet without --devices, and a bad count, are usage errors.
    let (code, _, err) = otad(&[
        "simulate",
        "--url",
        &server.url,
        "--device-ca",
        &device_ca,
        "--retry",
    ]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = otad(&[
        "simulate",
        "--url",
        &server.url,
        "--device-ca",
        &device_ca,
        "--devices",
        "0",
    ]);
    assert_eq!(code, 2, "{err}");

    // A clean state; then what an interrupted write leaves, found and repaired.
    let (code, out, err) = otad(&["fsck", "--config", &config]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "fsck: 0 problem(s), 0 note(s)\n");
    std::fs::create_dir_all(server.state_file("blocked")).unwrap();
    let temp = server.state_file("blocked/.ABC.json.tmp.0.1");
    std::fs::write(&temp, b"{").unwrap();
    let (code, out, _) = otad(&["fsck", "--config", &config]);
    assert_eq!(code, 1);
    assert_eq!(
        out.lines().next().unwrap(),
        "problem: blocked/.ABC.json.tmp.0.1: temp file of ABC.json left by an interrupted \
         write (--repair removes it)"
    );
    assert!(temp.exists(), "fsck without --repair changes nothing");
    let (code, out, err) = otad(&["fsck", "--config", &config, "--repair"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("repaired: blocked/.ABC.json.tmp.0.1: removed\n"),
        "{out}"
    );
    assert!(!temp.exists());

    // A device record that does not parse is a problem --repair leaves to the admin.
    let before = common::state::keys(&server.state, RecordKind::Device);
    let udid = before.first().unwrap().clone();
    common::state::put_raw(&server.state, RecordKind::Device, &udid, b"{\"udid\": 1}");
    let (code, out, _) = otad(&["fsck", "--config", &config, "--repair", "--json"]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["clean"], false);
    assert_eq!(
        common::state::keys(&server.state, RecordKind::Device),
        before,
        "a device record is never removed"
    );
    let findings = report["findings"].as_array().unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f["file"] == format!("device {udid}").as_str()
                && f["severity"] == "problem"
                && f["problem"].as_str().unwrap().starts_with("does not parse")),
        "{out}"
    );
}

#[test]
fn an_untrusted_test_device_ca_is_named_by_its_absolute_path() {
    let server = TestServer::start(|config| {
        common::server::set_key(&config, "ota", "extra_device_ca", "[]")
    });
    let here = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(common::server::otad_bin())
        .args(["simulate", "--url", &server.url, "--device-ca", "./devca"])
        .current_dir(here.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    let absolute = here.path().join("devca/device-ca.pem");
    assert!(
        err.contains(&format!(
            "created the test device CA {}; the server trusts it",
            absolute.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "(list {} in the server's ota.extra_device_ca and restart it)",
            absolute.display()
        )),
        "{err}"
    );
}
