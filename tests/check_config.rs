//! `otad check-config`: every kind of config mistake is refused with the key (and the line)
//! named, and a good config prints its effective settings with secrets masked.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::server::{otad_bin, set_key};

/// A fresh state made by `otad init`; returns its folder and config path.
fn state() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let output = Command::new(otad_bin())
        .args(["init", "--state"])
        .arg(&state)
        .args(["--url", "https://otad.example.com"])
        .output()
        .unwrap();
    assert!(output.status.success());
    (dir, state.join("otad.toml"))
}

fn check(config: &Path) -> (i32, String, String) {
    let output = Command::new(otad_bin())
        .arg("check-config")
        .arg(config)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn edited(config: &Path, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(config, edit(text)).unwrap();
}

#[test]
fn a_good_config_prints_every_key_with_the_secrets_masked() {
    let (_dir, config) = state();
    edited(&config, |text| {
        let text = set_key(&text, "ota", "challenge", "\"static-phase1-secret\"");
        let text = set_key(&text, "scep", "challenge", "\"static-scep-secret\"");
        set_key(
            &text,
            "events",
            "webhook",
            "\"https://hook:pa55@hooks.example.com/otad?key=s3cr3tkey\"",
        )
    });
    let (code, stdout, stderr) = check(&config);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.ends_with(": ok\n"), "{stderr}");
    for section in [
        "[server]", "[http]", "[tls]", "[ota]", "[scep]", "[events]", "[auth]",
    ] {
        assert!(stdout.contains(section), "{section} in {stdout}");
    }
    assert!(stdout.contains("url = \"https://otad.example.com\""));
    assert!(
        stdout.contains("request_timeout = \"30s\""),
        "defaults are filled in"
    );
    for secret in [
        "static-phase1-secret",
        "static-scep-secret",
        "pa55",
        "s3cr3tkey",
    ] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
    }
    assert!(stdout.contains("challenge = \"(set, not shown)\""));
    assert!(
        stdout.contains("https://(credentials not shown)@hooks.example.com/otad?(query not shown)")
    );
    let reparsed: toml::Table = toml::from_str(&stdout).unwrap();
    assert!(reparsed.contains_key("policy"));
}

#[test]
fn every_kind_of_mistake_names_what_to_fix_and_fails() {
    type Edit = Box<dyn Fn(String) -> String>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "unknown key",
            Box::new(|t| t.replace("[http]\n", "[http]\nlistem = \"x\"\n")),
            "unknown field `listem`",
        ),
        (
            "wrong type",
            Box::new(|t| set_key(&t, "http", "workers", "\"four\"")),
            "workers",
        ),
        (
            "bad value",
            Box::new(|t| set_key(&t, "scep", "approval", "\"sometimes\"")),
            "scep.approval",
        ),
        (
            "cert without key",
            Box::new(|t| set_key(&t, "tls", "cert", "\"/nonexistent/tls.pem\"")),
            "tls.key",
        ),
        (
            "missing TLS files",
            Box::new(|t| {
                let t = set_key(&t, "tls", "cert", "\"/nonexistent/tls.pem\"");
                set_key(&t, "tls", "key", "\"/nonexistent/tls.key\"")
            }),
            "tls.cert /nonexistent/tls.pem: cannot read",
        ),
        (
            "missing template",
            Box::new(|t| {
                set_key(
                    &t,
                    "profile",
                    "template",
                    "\"/nonexistent/final.mobileconfig\"",
                )
            }),
            "/nonexistent/final.mobileconfig",
        ),
    ];
    for (what, edit, expected) in cases {
        let (_dir, config) = state();
        edited(&config, edit);
        let (code, stdout, stderr) = check(&config);
        assert_eq!(code, 1, "{what}: {stderr}");
        assert!(stdout.is_empty(), "{what}: nothing printed on failure");
        assert!(stderr.contains(expected), "{what}: {stderr}");
    }

    let (_dir, config) = state();
    edited(&config, |t| {
        t.replace("[http]\n", "[http]\nlistem = \"x\"\n")
    });
    let (_, _, stderr) = check(&config);
    assert!(stderr.contains("(line "), "the line is named: {stderr}");

    let (_dir, config) = state();
    let key = config.parent().unwrap().join("ca/ca.key");
    std::fs::write(&key, "garbage").unwrap();
    let (code, _, stderr) = check(&config);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("ca.key"),
        "an unreadable key names its file: {stderr}"
    );
}

#[test]
fn what_serve_warns_about_at_start_up_check_config_prints_as_warnings_and_still_passes() {
    let (_dir, config) = state();
    let ca = config.parent().unwrap().join("ca/ca.pem");
    edited(&config, |text| {
        let text = set_key(&text, "ota", "challenge", "\"static-phase1-secret\"");
        let text = set_key(&text, "scep", "ra", "false");
        set_key(&text, "ota", "extra_device_ca", &format!("[{ca:?}]"))
    });
    let (code, stdout, stderr) = check(&config);
    assert_eq!(code, 0, "warnings do not fail the check: {stderr}");
    assert!(stdout.contains("[server]"), "the settings are printed too");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("otad: warning: "))
        .collect();
    let starts = [
        "ota.extra_device_ca: trusting ",
        "mdm.server_url: not set",
        "mdm.topic: not set",
        "scep.ra = false: ",
        "ota.challenge: one static challenge for every device, so a captured phase 2 answer \
         can be replayed",
    ];
    assert_eq!(warnings.len(), starts.len(), "{stderr}");
    for (warning, start) in warnings.iter().zip(starts) {
        assert!(warning.starts_with(start), "{warning:?} is not {start:?}");
    }
    assert!(
        !stderr.contains("static-phase1-secret"),
        "the challenge itself is never printed"
    );
    assert!(stderr.ends_with(": ok\n"), "{stderr}");

    // A finished config: no warning at all.
    let (_dir, config) = state();
    edited(&config, |text| {
        let text = set_key(
            &text,
            "mdm",
            "server_url",
            "\"https://mdm.example.com/mdm\"",
        );
        set_key(&text, "mdm", "topic", "\"com.apple.mgmt.External.0123\"")
    });
    let (code, _, stderr) = check(&config);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn a_per_client_bound_that_cannot_bite_on_an_open_phase_1_is_warned_about() {
    let finished = |text: String| {
        let text = set_key(
            &text,
            "mdm",
            "server_url",
            "\"https://mdm.example.com/mdm\"",
        );
        set_key(&text, "mdm", "topic", "\"com.apple.mgmt.External.0123\"")
    };
    let warned = |edit: &dyn Fn(String) -> String| {
        let (_dir, config) = state();
        edited(&config, |text| edit(finished(text)));
        let (code, _, stderr) = check(&config);
        assert_eq!(code, 0, "{stderr}");
        stderr
            .lines()
            .filter_map(|line| line.strip_prefix("otad: warning: "))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let expected = "ota.max_live_challenges_per_client = 0: one client may hold all \
                    ota.max_live_challenges = 100000 live challenges";

    let no_bound = |text: String| set_key(&text, "ota", "max_live_challenges_per_client", "0");
    let warnings = warned(&no_bound);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with(expected), "{warnings:?}");

    // Not below the cap is no bound either; the default is.
    let at_cap = |text: String| set_key(&text, "ota", "max_live_challenges", "1000");
    let warnings = warned(&at_cap);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("ota.max_live_challenges_per_client = 1000: "),
        "{warnings:?}"
    );
    assert!(warned(&|text| text).is_empty());

    // Phase 1 behind tokens is bounded per token; plain /mdm/enroll is open to anyone.
    let tokens = |text: String| set_key(&no_bound(text), "ota", "require_token", "true");
    assert!(warned(&tokens).is_empty());
    let plain = |text: String| set_key(&tokens(text), "mdm", "plain_enroll", "true");
    assert_eq!(warned(&plain).len(), 1);
}

#[test]
fn check_config_given_a_state_dir_names_the_config_file_to_give_instead() {
    let (_dir, config) = state();
    let state_dir = config.parent().unwrap();
    let output = Command::new(otad_bin())
        .args(["check-config", "--state"])
        .arg(state_dir)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "otad: check-config takes the config FILE (the state's otad.toml: {}), not --state DIR",
        config.display()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
}

/// `otad serve --config FILE` on a config it refuses at start-up: its exit code and stderr.
fn serve_refuses(config: &Path) -> (i32, String) {
    let output = Command::new(otad_bin())
        .args(["serve", "--config"])
        .arg(config)
        .args(["--listen", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn what_serve_refuses_at_start_up_check_config_refuses_with_the_same_words() {
    let (_dir, config) = state();
    let folder = config.parent().unwrap().to_path_buf();
    let short = folder.join("short.key");
    std::fs::write(&short, "short\n").unwrap();
    let good = folder.join("hook.key");
    std::fs::write(&good, "0123456789abcdef0123\n").unwrap();
    let template = folder.join("final.mobileconfig");
    std::fs::write(&template, "not a plist").unwrap();
    let hook = folder.join("hook.sh");
    std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();

    type Edit = Box<dyn Fn(String) -> String>;
    let webhook = |secret: String| -> Edit {
        Box::new(move |t| {
            let t = set_key(&t, "events", "webhook", "\"http://127.0.0.1:9/\"");
            set_key(&t, "events", "webhook_secret_file", &secret)
        })
    };
    let cases: Vec<(&str, Edit, String)> = vec![
        (
            "a webhook secret file that does not exist",
            webhook("\"/nonexistent\"".into()),
            "events.webhook_secret_file: /nonexistent: cannot read: No such file".into(),
        ),
        (
            "a webhook secret that is too short",
            webhook(format!("{short:?}")),
            "at least 16 characters".into(),
        ),
        (
            "a webhook URL the client cannot reach",
            Box::new(|t| {
                set_key(
                    &t,
                    "events",
                    "webhook",
                    "\"http://u:s3cr3t@127.0.0.1:99999/\"",
                )
            }),
            "events.webhook http://(credentials not shown)@127.0.0.1:99999/: url: bad port".into(),
        ),
        (
            "an https webhook with an unreadable CA file",
            Box::new(|t| {
                let t = set_key(&t, "events", "webhook", "\"https://127.0.0.1:9/\"");
                set_key(&t, "events", "webhook_ca", "\"/nonexistent/ca.pem\"")
            }),
            "events.webhook_ca /nonexistent/ca.pem: cannot read".into(),
        ),
        (
            "a TLS pair that does not exist",
            Box::new(|t| {
                let t = set_key(&t, "server", "url", "\"https://otad.example.com\"");
                let t = set_key(&t, "tls", "cert", "\"/nonexistent/tls.pem\"");
                set_key(&t, "tls", "key", "\"/nonexistent/tls.key\"")
            }),
            "tls.cert /nonexistent/tls.pem: cannot read".into(),
        ),
        (
            "a template that is not a plist",
            Box::new(move |t| set_key(&t, "profile", "template", &format!("{template:?}"))),
            "profile.template: ".into(),
        ),
        (
            "a hook that is not executable",
            Box::new(move |t| set_key(&t, "hooks", "phase2", &format!("{hook:?}"))),
            "hooks.phase2: ".into(),
        ),
        (
            "an integer past its bound",
            Box::new(|t| set_key(&t, "events", "max_size", "18446744073709551615")),
            "events.max_size: 18446744073709551615: use 4096 to 68719476736 bytes".into(),
        ),
    ];
    for (what, edit, expected) in cases {
        let original = std::fs::read_to_string(&config).unwrap();
        edited(&config, &edit);
        let (code, stdout, stderr) = check(&config);
        assert_eq!(code, 1, "{what}: {stderr}");
        assert!(stdout.is_empty(), "{what}: {stdout}");
        assert!(stderr.contains(&expected), "{what}: {stderr}");
        assert!(!stderr.contains("s3cr3t"), "{what}: {stderr}");
        let (served, serve_stderr) = serve_refuses(&config);
        assert_eq!(served, 1, "{what}: serve: {serve_stderr}");
        let said = stderr.lines().last().unwrap();
        assert!(
            serve_stderr.lines().any(|line| line == said),
            "{what}: check-config said {said:?}, serve said {serve_stderr}"
        );
        std::fs::write(&config, original).unwrap();
    }

    // The same webhook with a good secret passes both ways; the largest max_size prints.
    edited(&config, |t| {
        let t = set_key(&t, "events", "webhook", "\"http://127.0.0.1:9/\"");
        let t = set_key(&t, "events", "webhook_secret_file", &format!("{good:?}"));
        set_key(&t, "events", "max_size", "68719476736")
    });
    let (code, stdout, stderr) = check(&config);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("max_size = 68719476736"), "{stdout}");
}

#[test]
fn hooks_a_broken_users_file_and_credentials_over_http_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;

    let (dir, config) = state();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let hook = shared.join("phase2.sh");
    std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o775)).unwrap();
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tidy = private.join("phase3.sh");
    std::fs::write(&tidy, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&tidy, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(config.parent().unwrap().join("users.json"), "{not json").unwrap();
    edited(&config, |t| {
        let t = set_key(&t, "hooks", "phase2", &format!("{hook:?}"));
        let t = set_key(&t, "hooks", "phase3", &format!("{tidy:?}"));
        set_key(
            &t,
            "events",
            "webhook",
            "\"http://hook:s3cr3t@127.0.0.1:9/x\"",
        )
    });
    let (code, _, stderr) = check(&config);
    assert_eq!(code, 0, "warnings do not fail the check: {stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("otad: warning: "))
        .filter(|line| !line.starts_with("mdm."))
        .collect();
    let expected = [
        format!(
            "hooks.phase2: {} is writable by its group (mode 0775)",
            hook.display()
        ),
        format!(
            "hooks.phase2: its folder {} is writable by group and others (mode 0777)",
            shared.display()
        ),
        format!(
            "{}: corrupt state file: ",
            config.parent().unwrap().join("users.json").display()
        ),
        "events.webhook http://(credentials not shown)@127.0.0.1:9/x: credentials over plain \
         http://"
            .to_string(),
    ];
    assert_eq!(warnings.len(), expected.len(), "{stderr}");
    for (warning, start) in warnings.iter().zip(&expected) {
        assert!(
            warning.starts_with(start.as_str()),
            "{warning:?} is not {start:?}"
        );
    }
    assert!(!stderr.contains("s3cr3t"), "{stderr}");
}

#[test]
fn a_tls_key_or_webhook_secret_readable_by_others_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;

    let (_dir, config) = state();
    let folder = config.parent().unwrap().to_path_buf();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["otad.example.com".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (folder.join("tls.pem"), folder.join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let secret = folder.join("hook.key");
    std::fs::write(&secret, "0123456789abcdef0123\n").unwrap();
    edited(&config, |t| {
        let t = set_key(&t, "mdm", "server_url", "\"https://mdm.example.com/mdm\"");
        let t = set_key(&t, "mdm", "topic", "\"com.apple.mgmt.External.0123\"");
        let t = set_key(&t, "tls", "cert", &format!("{cert_path:?}"));
        let t = set_key(&t, "tls", "key", &format!("{key_path:?}"));
        let t = set_key(&t, "events", "webhook", "\"http://127.0.0.1:9/\"");
        set_key(&t, "events", "webhook_secret_file", &format!("{secret:?}"))
    });
    let warnings = |key_mode, secret_mode| {
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(key_mode)).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(secret_mode)).unwrap();
        let (code, _, stderr) = check(&config);
        assert_eq!(code, 0, "warnings do not fail the check: {stderr}");
        stderr
            .lines()
            .filter_map(|line| line.strip_prefix("otad: warning: "))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };

    let said = warnings(0o640, 0o644);
    let starts = [
        format!(
            "tls.key {}: readable by its group (mode 0640): anyone who can read it can act as \
             this server",
            key_path.display()
        ),
        format!(
            "events.webhook_secret_file {}: readable by its group and others (mode 0644): \
             anyone who can read it can sign events",
            secret.display()
        ),
    ];
    assert_eq!(said.len(), starts.len(), "{said:?}");
    for (warning, start) in said.iter().zip(&starts) {
        assert!(
            warning.starts_with(start.as_str()),
            "{warning:?} is not {start:?}"
        );
        assert!(warning.ends_with("chmod 600 it (owned by the user otad runs as)"));
    }

    assert_eq!(warnings(0o600, 0o400), Vec::<String>::new());
}

#[test]
fn the_help_names_every_key_check_config_warns_about() {
    let output = Command::new(otad_bin())
        .args(["check-config", "--help"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout).replace('\n', " ");
    // Each key a warning of `config_warnings` names.
    for key in [
        "ota.challenge",
        "ota.extra_device_ca",
        "MDM keys",
        "scep.ra = false",
        "ota.max_live_challenges_per_client",
        "auth.command",
        "hook",
        "tls.key",
        "events.webhook_secret_file",
        "users file",
        "webhook credentials",
    ] {
        assert!(help.contains(key), "{key} in {help}");
    }
}
