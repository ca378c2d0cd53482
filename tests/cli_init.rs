//! `otad init`: what it creates, with which modes, and what it refuses to touch.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::server::otad_bin;

fn init(state: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(otad_bin())
        .args(["init", "--state"])
        .arg(state)
        .args(["--url", "https://otad.example.com"])
        .args(extra)
        .output()
        .unwrap()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_creates_a_complete_state_with_private_keys_and_folders() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let output = init(&state, &["--organization", "ACME \"Devices\""]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    for key in ["ca/ca.key", "ca/ra.key", "ca/signer.key"] {
        assert_eq!(mode(&state.join(key)), 0o600, "{key}");
        let pem = std::fs::read_to_string(state.join(key)).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    }
    assert_eq!(
        mode(&state.join("state.log")) & 0o777,
        0o600,
        "the state log is private"
    );
    assert_eq!(mode(&state.join("ca")) & 0o777, 0o700, "ca/ is private");
    assert_eq!(
        mode(&state.join("otad.toml")) & 0o007,
        0,
        "the config is not world-readable"
    );

    // The written config loads, names the organization as given, and the CA is a CA.
    let (config, _) = otad::config::Config::load(&state.join("otad.toml")).unwrap();
    assert_eq!(config.server.organization, "ACME \"Devices\"");
    assert_eq!(config.server.url, "https://otad.example.com");
    assert_eq!(
        config.mdm.server_url,
        "https://otad.example.com/mdm/connect"
    );
    let ctx = otad::context::Context::load(&state.join("otad.toml")).unwrap();
    let summary = otad::pki::cert::summarize(ctx.ca.certificate()).unwrap();
    assert_eq!(
        summary.subject,
        "CN=ACME \"Devices\" Enrollment CA, O=ACME \"Devices\""
    );
    assert!(ctx.ca.issued(&ctx.ra.certificate));
    assert!(ctx.ca.issued(&ctx.signer.certificate));
    assert_ne!(ctx.ra.certificate, ctx.signer.certificate);
}

#[test]
fn init_refuses_an_existing_or_non_empty_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    assert!(init(&state, &[]).status.success());
    let key_before = std::fs::read(state.join("ca/ca.key")).unwrap();

    let again = init(&state, &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(
        std::fs::read(state.join("ca/ca.key")).unwrap(),
        key_before,
        "the CA key is untouched"
    );

    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("notes.txt"), "mine").unwrap();
    let refused = init(&busy, &[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not empty"));

    let usage = Command::new(otad_bin())
        .args(["init", "--url", "https://x.example"])
        .output()
        .unwrap();
    assert_eq!(
        usage.status.code(),
        Some(2),
        "a missing --state is a usage error"
    );
}
