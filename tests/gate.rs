//! Phase 1's gate against a running server: enrollment tokens (used up, expired, scoped,
//! raced for), people (users file, auth.command, a trusted proxy's header), failed-login
//! limits, and the admission recorded on the device. The CLI runs on the live state dir.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Barrier};

use base64::Engine;
use common::server::{set_key, TestServer};
use otad::httpclient;
use otad::simulate::Device;

use common::cli::otad_with_stdin as otad;

/// `otad token new` on the server's live state dir; returns (secret, id, url).
fn new_token(server: &TestServer, extra: &[&str]) -> (String, String, String) {
    let state = server.state.to_str().unwrap();
    let mut args = vec!["token", "new", "--state", state];
    args.extend_from_slice(extra);
    let (code, out, err) = otad(&args, "");
    assert_eq!(code, 0, "token new: {err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_string()
    };
    (field("token"), field("id"), field("url"))
}

fn token_json(server: &TestServer, id: &str) -> serde_json::Value {
    let state = server.state.to_str().unwrap();
    let (code, out, err) = otad(&["token", "list", "--state", state, "--json"], "");
    assert_eq!(code, 0, "{err}");
    let all: serde_json::Value = serde_json::from_str(&out).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no token {id} in {out}"))
}

fn device_record(server: &TestServer, udid: &str) -> serde_json::Value {
    server
        .device_record(udid)
        .unwrap_or_else(|| panic!("device {udid}: no record\n{}", server.log()))
}

fn device(server: &TestServer, token: Option<&str>) -> Device {
    let mut options = server.device_options();
    options.token = token.map(str::to_string);
    Device::new(&options).unwrap()
}

fn basic(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

fn enroll_with(server: &TestServer, headers: &[(&str, &str)]) -> httpclient::HttpResponse {
    httpclient::get_with_headers(&format!("{}/ota/enroll", server.url), headers).unwrap()
}

fn body(response: &httpclient::HttpResponse) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

fn script(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{text}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
fn a_token_is_required_spent_in_phase_2_and_used_up() {
    let server = TestServer::start(|c| set_key(&c, "ota", "require_token", "true"));

    // No token, a made-up token: 403 with a reason, nothing handed out.
    let anonymous = httpclient::get(&format!("{}/ota/enroll", server.url)).unwrap();
    assert_eq!(anonymous.status, 403);
    assert!(body(&anonymous).contains("enrollment token is required"));
    let made_up = httpclient::get(&format!("{}/ota/enroll?token=abcdefgh", server.url)).unwrap();
    assert_eq!(made_up.status, 403);
    assert!(body(&made_up).contains("enrollment token: unknown"));

    // The CLI on the live state dir; the URL carries the token.
    let (secret, id, url) = new_token(&server, &["--uses", "1", "--note", "Ada's iPad"]);
    assert_eq!(url, format!("{}/ota/enroll?token={secret}", server.url));
    assert!(
        !server.log().contains(&secret),
        "the log never holds the secret"
    );

    // Opening the link twice spends nothing; phase 2 spends the one use.
    let mut first = device(&server, Some(&secret));
    let phase1 = first.phase1(&server.url).unwrap();
    let again = first.phase1(&server.url).unwrap();
    assert_ne!(phase1.challenge, again.challenge);
    assert_eq!(token_json(&server, &id)["used"], 0);
    let scep = first.phase2(&phase1).unwrap();
    assert_eq!(token_json(&server, &id)["used"], 1);
    first.enroll_scep(&scep).unwrap();
    first.phase3(&phase1).unwrap();

    // The device record says which token (and note) let it in.
    let record = device_record(&server, &first.udid);
    assert_eq!(record["admission"]["token"], id.as_str());
    assert_eq!(record["admission"]["token_note"], "Ada's iPad");
    assert_eq!(record["phase"], "enrolled");
    let history = &token_json(&server, &id)["history"];
    assert_eq!(history[0]["udid"], first.udid.as_str());

    // Used up: phase 1 refuses it, and so does phase 2 for the challenge still held.
    let second = device(&server, Some(&secret));
    let err = second.phase1(&server.url).unwrap_err();
    assert!(err.contains("403") && err.contains("no uses left"), "{err}");
    let err = second.phase2(&again).unwrap_err();
    assert!(err.contains("403") && err.contains("no uses left"), "{err}");
    assert_eq!(token_json(&server, &id)["status"], "used-up");
}

#[test]
fn a_token_is_refused_while_the_phase_1_challenge_is_static() {
    let server = TestServer::start(|c| set_key(&c, "ota", "challenge", "\"static-secret\""));

    // token new still makes the token, and warns on stderr that phase 1 will refuse it.
    let state = server.state.to_str().unwrap();
    let (code, out, err) = otad(&["token", "new", "--state", state], "");
    assert_eq!(code, 0, "token new: {err}");
    assert!(
        err.contains("refused while ota.challenge is static"),
        "{err}"
    );
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap()
        .to_string();

    // Phase 1 with it: 403 and why, so no device enrolls on a token whose uses never count;
    // without it the static challenge is handed out as before.
    let with_token = httpclient::get(&format!("{}/ota/enroll?token={secret}", server.url)).unwrap();
    assert_eq!(with_token.status, 403);
    assert!(
        body(&with_token).contains("set ota.challenge = \"\" to use tokens"),
        "{}",
        body(&with_token)
    );
    let plain = device(&server, None);
    let phase1 = plain.phase1(&server.url).unwrap();
    assert_eq!(phase1.challenge, "static-secret");
    plain.phase2(&phase1).unwrap();
}

#[test]
fn expired_and_revoked_tokens_are_refused_in_both_phases() {
    let server = TestServer::start(|c| c);
    let mut early = device(&server, None);
    let (secret, id, _) = new_token(&server, &["--uses", "5", "--expires", "3s"]);
    early.token = Some(secret);
    let phase1 = early.phase1(&server.url).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3200));
    let err = early.phase2(&phase1).unwrap_err();
    assert!(err.contains("403") && err.contains("expired"), "{err}");
    let err = early.phase1(&server.url).unwrap_err();
    assert!(err.contains("expired"), "{err}");

    // A token given while not required is still checked; revoking works while serving.
    let (secret, id2, _) = new_token(&server, &["--uses", "5"]);
    let late = device(&server, Some(&secret));
    let phase1 = late.phase1(&server.url).unwrap();
    let state = server.state.to_str().unwrap();
    let (code, out, _) = otad(&["token", "revoke", "--state", state, &id2], "");
    assert_eq!(code, 0);
    assert!(out.contains(&id2));
    let err = late.phase2(&phase1).unwrap_err();
    assert!(err.contains("403") && err.contains("revoked"), "{err}");
    assert_eq!(token_json(&server, &id2)["used"], 0);
    assert_eq!(token_json(&server, &id)["used"], 0);
    let (code, _, err) = otad(&["token", "show", "--state", state, "ffffffffffff"], "");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no such token"), "{err}");
}

#[test]
fn a_serial_scoped_token_refuses_another_device() {
    let server = TestServer::start(|c| set_key(&c, "ota", "require_token", "true"));
    let (secret, id, _) = new_token(&server, &["--uses", "3", "--serial", "F2LXK0AAHG7F"]);

    let mut options = server.device_options();
    options.token = Some(secret.clone());
    options.serial = Some("C02ZZ999XXXX".into());
    let other = Device::new(&options).unwrap();
    let phase1 = other.phase1(&server.url).unwrap();
    let err = other.phase2(&phase1).unwrap_err();
    assert!(
        err.contains("403") && err.contains("for serial F2LXK0AAHG7F only"),
        "{err}"
    );
    assert_eq!(token_json(&server, &id)["used"], 0);

    options.serial = Some("F2LXK0AAHG7F".into());
    let right = Device::new(&options).unwrap();
    let phase1 = right.phase1(&server.url).unwrap();
    right.phase2(&phase1).unwrap();
    assert_eq!(token_json(&server, &id)["used"], 1);
}

#[test]
fn two_devices_racing_for_the_last_use_have_one_winner() {
    let server = TestServer::start(|c| set_key(&c, "ota", "require_token", "true"));
    let (secret, id, _) = new_token(&server, &["--uses", "1"]);

    // Both get their challenge (the cap allows a few beyond the uses left)...
    let devices: Vec<(Device, otad::simulate::Phase1)> = (0..2)
        .map(|_| {
            let device = device(&server, Some(&secret));
            let phase1 = device.phase1(&server.url).unwrap();
            (device, phase1)
        })
        .collect();

    // ...then answer at the same moment.
    let barrier = Arc::new(Barrier::new(devices.len()));
    let handles: Vec<_> = devices
        .into_iter()
        .map(|(device, phase1)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                device.phase2(&phase1)
            })
        })
        .collect();
    let results: Vec<Result<_, String>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "{results:?}");
    let loser = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert!(
        loser.contains("403") && loser.contains("no uses left"),
        "{loser}"
    );
    assert_eq!(token_json(&server, &id)["used"], 1);
}

#[test]
fn a_one_use_token_hands_out_a_bounded_number_of_challenges() {
    let server = TestServer::start(|c| c);
    let (secret, _, _) = new_token(&server, &["--uses", "1"]);
    let url = format!("{}/ota/enroll?token={secret}", server.url);
    let statuses: Vec<u16> = (0..6)
        .map(|_| httpclient::get(&url).unwrap().status)
        .collect();
    // One use plus three for reloads and retries; then 429 until the soonest expires
    // (ota.challenge_ttl, an hour: at most a minute is asked for).
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    let refused = httpclient::get(&url).unwrap();
    assert!(body(&refused).contains(
        "still waiting for their device (each until it is used or \
                                     ota.challenge_ttl has passed)"
    ));
    assert_eq!(refused.header("Retry-After"), Some("60"));
    let log = server.log();
    assert!(
        log.lines().any(|line| line.contains("WARN")
            && line.contains("GET /ota/enroll: 429 enrollment token ")
            && line.contains("ask for a new link (otad token new)")),
        "{log}"
    );
}

#[test]
fn require_user_asks_for_basic_and_checks_the_users_file() {
    let server = TestServer::start(|c| set_key(&c, "ota", "require_user", "true"));
    let state = server.state.to_str().unwrap();
    let (code, out, err) = otad(
        &["user", "add", "--state", state, "ada", "--password-stdin"],
        "correct horse battery\n",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "added user ada\n");
    let (_, listed, _) = otad(&["user", "list", "--state", state], "");
    assert!(listed.contains("ada"));
    let users_file = std::fs::read_to_string(server.state_file("users.json")).unwrap();
    assert!(users_file.contains("$argon2id$") && !users_file.contains("correct horse"));

    // Anonymous: 401 with a Basic challenge, so Safari asks.
    let anonymous = enroll_with(&server, &[]);
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        anonymous.header("WWW-Authenticate"),
        Some("Basic realm=\"otad enrollment\", charset=\"UTF-8\"")
    );

    // Wrong password: 401, logged with the name, never the password.
    let wrong = enroll_with(&server, &[("Authorization", &basic("ada", "wrong-guess"))]);
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("WWW-Authenticate").is_some());
    let log = server.log();
    assert!(log.contains("login refused for user \"ada\""), "{log}");
    assert!(!log.contains("wrong-guess") && !log.contains("correct horse"));

    // The right password: the profile, and the user on the device record.
    let mut options = server.device_options();
    options.login = Some(("ada".into(), "correct horse battery".into()));
    let ada = Device::new(&options).unwrap();
    let phase1 = ada.phase1(&server.url).unwrap();
    ada.phase2(&phase1).unwrap();
    assert_eq!(
        device_record(&server, &ada.udid)["admission"]["user"],
        "ada"
    );

    // Removed: refused from now on.
    let (code, _, _) = otad(&["user", "remove", "--state", state, "ada"], "");
    assert_eq!(code, 0);
    let err = ada.phase1(&server.url).map(|_| ()).unwrap_err();
    assert!(err.contains("401"), "{err}");
}

#[test]
fn failed_logins_are_rate_limited_per_address() {
    let server = TestServer::start(|c| set_key(&c, "ota", "require_user", "true"));
    let state = server.state.to_str().unwrap();
    let (code, _, _) = otad(
        &["user", "add", "--state", state, "bob", "--password-stdin"],
        "the-right-one\n",
    );
    assert_eq!(code, 0);
    let wrong = basic("bob", "nope");
    let statuses: Vec<u16> = (0..6)
        .map(|_| enroll_with(&server, &[("Authorization", &wrong)]).status)
        .collect();
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);
    let limited = enroll_with(
        &server,
        &[("Authorization", &basic("bob", "the-right-one"))],
    );
    assert_eq!(limited.status, 429, "even the right password waits");
    let retry: u64 = limited.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
}

#[test]
fn auth_command_accepts_refuses_and_times_out() {
    let dir = tempfile::tempdir().unwrap();
    // Accepts ada/sesame only; hangs for "slow"; crashes for "crash".
    let program = script(
        dir.path(),
        "auth",
        r#"input=$(cat)
case "$input" in
  *'"user":"slow"'*) sleep 30 ;;
  *'"user":"crash"'*) kill -SEGV $$ ;;
  *'"password":"sesame"'*'"user":"ada"'*|*'"user":"ada"'*'"password":"sesame"'*) exit 0 ;;
esac
exit 1"#,
    );
    let server = TestServer::start(|c| {
        let c = set_key(&c, "ota", "require_user", "true");
        let c = set_key(&c, "auth", "command", &format!("{program:?}"));
        set_key(&c, "auth", "timeout", "\"1s\"")
    });
    let ok = enroll_with(&server, &[("Authorization", &basic("ada", "sesame"))]);
    assert_eq!(ok.status, 200, "{}", server.log());
    let refused = enroll_with(&server, &[("Authorization", &basic("ada", "open"))]);
    assert_eq!(refused.status, 401);

    let started = std::time::Instant::now();
    let slow = enroll_with(&server, &[("Authorization", &basic("slow", "x"))]);
    assert_eq!(slow.status, 401, "a hanging command refuses");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let crash = enroll_with(&server, &[("Authorization", &basic("crash", "x"))]);
    assert_eq!(crash.status, 401, "a crashing command refuses");
    let log = server.log();
    assert!(log.contains("no answer within 1000 ms"), "{log}");
    assert!(log.contains("ended by signal"), "{log}");
    assert!(!log.contains("sesame"));
}

#[test]
fn the_proxy_user_header_is_believed_only_from_trusted_peers() {
    let trusted = TestServer::start(|c| {
        let c = set_key(&c, "ota", "require_user", "true");
        let c = set_key(&c, "http", "trusted_proxies", "[\"127.0.0.1/32\"]");
        set_key(&c, "auth", "proxy_user_header", "\"X-Forwarded-User\"")
    });
    let ok = enroll_with(&trusted, &[("X-Forwarded-User", "carol@example.com")]);
    assert_eq!(ok.status, 200, "{}", trusted.log());
    assert!(trusted.log().contains("user=carol@example.com"));

    let untrusted = TestServer::start(|c| {
        let c = set_key(&c, "ota", "require_user", "true");
        let c = set_key(&c, "http", "trusted_proxies", "[\"10.0.0.0/8\", \"::1\"]");
        set_key(&c, "auth", "proxy_user_header", "\"X-Forwarded-User\"")
    });
    let refused = enroll_with(&untrusted, &[("X-Forwarded-User", "carol@example.com")]);
    assert_eq!(refused.status, 401, "ignored, so a login is asked for");
    assert!(refused.header("WWW-Authenticate").is_some());
    assert!(untrusted
        .log()
        .contains("X-Forwarded-User ignored: the peer is not in http.trusted_proxies"));
}

#[test]
fn static_challenge_with_require_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (code, _, err) = otad(
        &[
            "init",
            "--state",
            state.to_str().unwrap(),
            "--url",
            "http://127.0.0.1:9",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let config = state.join("otad.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = set_key(&text, "ota", "challenge", "\"static-challenge\"");
    std::fs::write(&config, set_key(&text, "ota", "require_token", "true")).unwrap();
    let (code, _, err) = otad(&["serve", "--config", config.to_str().unwrap()], "");
    assert_eq!(code, 1);
    assert!(
        err.contains("ota.require_token") && err.contains("one-time"),
        "{err}"
    );
}

#[test]
fn a_refused_device_frees_its_place_on_the_token_and_a_scope_refusal_runs_no_hook() {
    let hooks = tempfile::tempdir().unwrap();
    let calls = hooks.path().join("calls");
    let hook = hooks.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ncat >> {}\necho >> {}\nexit 0\n",
            calls.display(),
            calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hook_value = format!("{:?}", hook.display().to_string());
    let server = TestServer::start(|c| {
        let c = set_key(&c, "ota", "require_token", "true");
        let c = set_key(&c, "hooks", "phase2", &hook_value);
        c + "\n[[policy.rule]]\naction = \"deny\"\nSERIAL = \"EVIL*\"\nreason = \"no\"\n"
    });
    let (secret, id, _) = new_token(&server, &["--uses", "1", "--serial", "EVIL0001"]);

    // Refused by policy, more times than the token's cap of waiting challenges.
    for _ in 0..6 {
        let mut options = server.device_options();
        options.token = Some(secret.clone());
        options.serial = Some("EVIL0001".into());
        let evil = Device::new(&options).unwrap();
        let phase1 = evil.phase1(&server.url).unwrap();
        let err = evil.phase2(&phase1).unwrap_err();
        assert!(err.contains("refused by policy rule 1"), "{err}");
    }
    let token = token_json(&server, &id);
    assert_eq!(token["used"], 0);

    // Out of the token's scope: refused before the hook is asked.
    let mut options = server.device_options();
    options.token = Some(secret.clone());
    options.serial = Some("GOOD0001".into());
    let outsider = Device::new(&options).unwrap();
    let phase1 = outsider
        .phase1(&server.url)
        .expect("the refused ones freed their places");
    let err = outsider.phase2(&phase1).unwrap_err();
    assert!(err.contains("for serial EVIL0001 only"), "{err}");
    assert!(!calls.exists(), "no hook ran for refused devices");
}
