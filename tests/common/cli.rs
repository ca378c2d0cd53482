//! Running the `otad` binary's admin commands on a test server's live state.

#![allow(dead_code)]

use std::process::{Command, Stdio};

use super::server::{otad_bin, TestServer};

/// Runs `otad ARGS`; returns (exit code, stdout, stderr).
pub fn otad(args: &[&str]) -> (i32, String, String) {
    otad_with_stdin(args, "")
}

/// Runs `otad ARGS` with `stdin` as its standard input (a password, say); returns (exit
/// code, stdout, stderr).
pub fn otad_with_stdin(args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(otad_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run otad");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("write stdin");
    }
    let output = child.wait_with_output().expect("wait for otad");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `otad token new --uses USES` on the server's state; returns (secret, id).
pub fn new_token(server: &TestServer, uses: u32) -> (String, String) {
    let state = server.state.to_string_lossy().into_owned();
    let uses = uses.to_string();
    let (code, out, err) = otad(&["token", "new", "--state", &state, "--uses", &uses]);
    assert_eq!(code, 0, "token new: {err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_string()
    };
    (field("token"), field("id"))
}

/// `otad ... --json` on the server's config, parsed; panics unless it exits 0.
pub fn json(server: &TestServer, args: &[&str]) -> serde_json::Value {
    let config = server.config_path().to_string_lossy().into_owned();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", &config, "--json"]);
    let (code, out, err) = otad(&all);
    assert_eq!(code, 0, "otad {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("otad {args:?}: {e}: {out}"))
}
