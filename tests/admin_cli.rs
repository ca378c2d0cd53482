//! The admin commands' command lines, run as the binary: every help text names both ways to
//! find the state (`--config FILE | --state DIR`), giving neither is a usage error saying
//! so, `serve --state` says which file to give instead, and the paths printed hold no `/./`
//! (the template's `state_dir = "."`).

mod common;

use std::os::unix::fs::PermissionsExt as _;

use common::cli::otad;
use common::server::init_state;

/// Every admin command with its subcommands (`fsck` has none).
const COMMANDS: [(&str, &[&str]); 6] = [
    ("cert", &["list", "show", "revoke", "import"]),
    ("request", &["list", "approve", "deny"]),
    ("token", &["new", "list", "show", "revoke"]),
    ("user", &["add", "remove", "list"]),
    ("device", &["list", "show", "block", "unblock", "blocked"]),
    ("fsck", &[]),
];

#[test]
fn every_admin_help_names_config_file_and_state_dir() {
    let mut checked = 0;
    for (command, subcommands) in COMMANDS {
        let mut lines = vec![vec![command, "--help"]];
        lines.extend(subcommands.iter().map(|sub| vec![command, sub, "--help"]));
        for line in lines {
            let (code, out, err) = otad(&line);
            assert_eq!(code, 0, "{line:?}: {err}");
            assert!(out.starts_with("usage: otad "), "{line:?}: {out}");
            assert!(
                out.contains("--config FILE") && out.contains("--state DIR"),
                "{line:?} does not name both:\n{out}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 25);
}

#[test]
fn an_admin_command_without_config_or_state_says_both_are_possible() {
    let id = "0123456789abcdef0123456789abcdef";
    let lines: [&[&str]; 20] = [
        &["cert", "list"],
        &["cert", "show", "0a"],
        &["cert", "revoke", "0a"],
        &["cert", "import", "old.pem"],
        &["request", "list"],
        &["request", "approve", id],
        &["request", "deny", id],
        &["token", "new"],
        &["token", "list"],
        &["token", "show", "0123456789ab"],
        &["token", "revoke", "0123456789ab"],
        &["user", "add", "ada"],
        &["user", "remove", "ada"],
        &["user", "list"],
        &["device", "list"],
        &["device", "show", "C02XK0AA"],
        &["device", "block", "C02XK0AA"],
        &["device", "unblock", "C02XK0AA"],
        &["device", "blocked"],
        &["fsck"],
    ];
    for line in lines {
        let (code, _, err) = otad(line);
        assert_eq!(code, 2, "{line:?}: {err}");
        assert!(
            err.starts_with("otad: --config FILE or --state DIR is required\n"),
            "{line:?}: {err}"
        );
    }
}

#[test]
fn serve_given_a_state_dir_says_to_give_its_config() {
    let (code, out, err) = otad(&["serve", "--state", "/var/lib/otad"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.starts_with(
            "otad: serve takes --config FILE (the state's otad.toml: /var/lib/otad/otad.toml), \
             not --state DIR\n"
        ),
        "{err}"
    );
    let (code, _, err) = otad(&["serve", "--state"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("otad: serve takes --config FILE (the state's otad.toml), not --state"),
        "{err}"
    );
}

#[test]
fn paths_printed_from_the_state_dir_have_no_dot_component() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = init_state(&state, "http://127.0.0.1:9");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("state_dir = \".\""),
        "the template's state_dir"
    );

    let key = state.join("ca/ca.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = otad(&["fsck", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        err,
        format!("otad: {}: 1 problem(s) found\n", state.display())
    );
    assert!(
        out.contains(&format!("chmod 600 {}", key.display())),
        "{out}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let store = otad::store::Store::open(&state).unwrap();
    let now = otad::store::now();
    store
        .create_cert(&otad::store::CertRecord {
            serial: "0a1b".into(),
            udid: None,
            subject: "CN=static-client".into(),
            issued_at: now,
            not_after: now + 86_400,
            revoked: None,
            revocation_reason: None,
            authorised_by: "static".into(),
            superseded_by: None,
            pem: String::new(),
        })
        .unwrap();
    let state_arg = state.to_str().unwrap();

    let (code, out, err) = otad(&["cert", "revoke", "--state", state_arg, "0a1b"]);
    assert_eq!(code, 0, "{err}");
    let crl = state.join("crl.der");
    assert!(
        out.ends_with(&format!("signed CRL number 1 ({})\n", crl.display())),
        "{out}"
    );
}

#[test]
fn a_bad_flag_value_is_a_usage_error_in_every_admin_command_and_is_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    init_state(&state, "http://127.0.0.1:9");
    let s = state.to_str().unwrap();
    let id = "0123456789abcdef0123456789abcdef";
    let lines: [&[&str]; 18] = [
        &["token", "new", "--state", s, "--uses", "0"],
        &["token", "new", "--state", s, "--uses", "100001"],
        &["token", "new", "--state", s, "--expires", "400d"],
        &["token", "new", "--state", s, "--udid", "no/pe"],
        &["token", "new", "--state", s, "--serial", "C02 XK"],
        &["token", "show", "--state", s, "zz"],
        &["token", "revoke", "--state", s, "zz"],
        &[
            "user",
            "add",
            "--state",
            s,
            "ada:lovelace",
            "--password-stdin",
        ],
        &["user", "remove", "--state", s, "ada lovelace"],
        &["device", "show", "--state", s, "C02/XK"],
        &["device", "block", "--state", s, "C02/XK"],
        &["device", "block", "--state", s, "C02XK0AA", "--reason", " "],
        &["device", "unblock", "--state", s, "C02/XK"],
        &["cert", "show", "--state", s, "zz"],
        &["cert", "revoke", "--state", s, "0a", "--reason", "boredom"],
        &["request", "approve", "--state", s, "nothex"],
        &["request", "deny", "--state", s, id, "--reason", " "],
        &["cert", "import", "--state", s, "x.pem", "--udid", "no/pe"],
    ];
    for line in lines {
        let (code, _, err) = otad(line);
        assert_eq!(code, 2, "{line:?}: {err}");
        assert!(!err.contains("events:"), "{line:?}: {err}");
    }
    let events = std::fs::read_to_string(state.join("events.jsonl")).unwrap_or_default();
    assert!(
        !events.contains("\"failed\""),
        "a usage error is not a failed admin event: {events}"
    );

    // A value that is well-formed but names nothing there is a failure (exit 1).
    let (code, _, err) = otad(&["token", "show", "--state", s, "0123456789ab"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no such token"), "{err}");
}

#[test]
fn no_config_means_no_word_about_the_event_and_a_folder_for_a_config_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent");
    let (code, _, err) = otad(&["token", "new", "--state", missing.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        format!(
            "otad: {}: cannot read the config file: No such file or directory (os error 2)\n",
            missing.join("otad.toml").display()
        )
    );

    let state = dir.path().join("state");
    init_state(&state, "http://127.0.0.1:9");
    let s = state.to_str().unwrap();
    let said = format!(
        "otad: {s}: a folder, not a config file: give {s}/otad.toml; admin commands also take \
         --state {s}\n"
    );
    for line in [
        &["token", "new", "--config", s][..],
        &["cert", "list", "--config", s],
        &["fsck", "--config", s],
        &["check-config", s],
        &["serve", "--config", s],
    ] {
        let (code, _, err) = otad(line);
        assert_eq!(code, 1, "{line:?}: {err}");
        assert_eq!(err, said, "{line:?}");
    }
}
