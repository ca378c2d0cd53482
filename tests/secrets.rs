//! No secret is ever written where an admin's logs or backups go: a whole enrollment with an
//! enrollment token and a login, plus a wrong password and a forged token, then every byte of
//! the server's log (at debug level), the events log and the state dir is searched for the
//! token's secret, the passwords and both challenges.

mod common;

use std::path::Path;

use common::server::{set_key, TestServer};
use otad::httpclient;
use otad::simulate::Device;

fn otad(args: &[&str], stdin: &str) -> String {
    let (code, stdout, stderr) = common::cli::otad_with_stdin(args, stdin);
    assert_eq!(code, 0, "{args:?}: {stderr}");
    stdout
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
}

#[test]
fn tokens_passwords_and_challenges_never_reach_the_logs_or_the_state() {
    let server = TestServer::start(|config| {
        let config = set_key(&config, "ota", "require_token", "true");
        let config = set_key(&config, "ota", "require_user", "true");
        set_key(&config, "log", "level", "\"debug\"")
    });
    let state = server.state.to_str().unwrap();
    let password = "correct horse battery staple";
    otad(
        &["user", "add", "--state", state, "ada", "--password-stdin"],
        &format!("{password}\n"),
    );
    let created = otad(&["token", "new", "--state", state, "--note", "lab"], "");
    let secret = created
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap()
        .to_string();

    // A wrong password and a forged token, refused, must not be logged either.
    let wrong = "wrong horse battery staple";
    let mut options = server.device_options();
    options.token = Some(secret.clone());
    options.login = Some(("ada".into(), wrong.into()));
    assert!(Device::new(&options).unwrap().phase1(&server.url).is_err());
    let forged = "forged-token-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    use base64::Engine;
    let login = base64::engine::general_purpose::STANDARD.encode(format!("ada:{password}"));
    let response = httpclient::get_with_headers(
        &format!("{}/ota/enroll?token={forged}", server.url),
        &[("Authorization", &format!("Basic {login}"))],
    )
    .unwrap();
    assert_eq!(response.status, 403);

    // The whole enrollment.
    options.login = Some(("ada".into(), password.into()));
    let mut device = Device::new(&options).unwrap();
    let phase1 = device.phase1(&server.url).unwrap();
    let scep = device.phase2(&phase1).unwrap();
    device.enroll_scep(&scep).unwrap();
    device.phase3(&phase1).unwrap();

    let secrets = [
        ("token secret", secret.as_str()),
        ("password", password),
        ("wrong password", wrong),
        ("forged token", forged),
        ("phase 1 challenge", phase1.challenge.as_str()),
        ("SCEP challenge", scep.challenge.as_str()),
    ];
    let mut everything = vec![("server log".to_string(), server.log().into_bytes())];
    files(&server.state, &mut everything);
    assert!(
        everything
            .iter()
            .any(|(name, _)| name.ends_with("events.jsonl")),
        "the events log is searched too"
    );
    for (what, value) in secrets {
        assert!(value.len() >= 16, "{what} is long enough to be found");
        for (name, bytes) in &everything {
            let found = bytes.windows(value.len()).any(|w| w == value.as_bytes());
            assert!(!found, "{what} found in {name}");
        }
    }
    // The search finds what is meant to be there: the device and the login are recorded.
    let udid = device.udid.clone();
    for expected in [udid.as_str(), "ada"] {
        let found = everything.iter().any(|(_, bytes)| {
            bytes
                .windows(expected.len())
                .any(|w| w == expected.as_bytes())
        });
        assert!(found, "{expected} is recorded somewhere");
    }
}

#[test]
fn a_webhook_password_is_sent_as_basic_authentication_and_never_logged() {
    use std::io::{Read, Write};

    // A receiver on loopback that answers one POST with 204 and hands back what it read.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let receiver = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(err) => panic!("no delivery within 20 s: {err}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("\"kind\":\"admin\"") {
            let n = stream.read(&mut buffer).unwrap();
            assert!(n > 0, "closed early");
            seen.extend_from_slice(&buffer[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            .unwrap();
        String::from_utf8_lossy(&seen).into_owned()
    });
    let url = format!("\"http://user:pass@127.0.0.1:{port}/x?key=k3y\"");
    let server = TestServer::start(|config| {
        let config = set_key(&config, "events", "webhook", &url);
        set_key(&config, "log", "level", "\"debug\"")
    });
    // An admin command records an event; the webhook delivers it.
    let state = server.state.to_str().unwrap();
    otad(&["token", "new", "--state", state], "");
    let request = receiver.join().unwrap();
    assert!(
        request.starts_with("POST /x?key=k3y HTTP/1.1\r\n"),
        "{request}"
    );
    // base64("user:pass")
    assert!(
        request.contains("\r\nAuthorization: Basic dXNlcjpwYXNz\r\n"),
        "{request}"
    );

    let log = server.log();
    let shown = format!(
        "events.webhook: delivering to http://(credentials not shown)@127.0.0.1:{port}/x?(query \
         not shown)"
    );
    assert!(log.contains(&shown), "{log}");
    assert!(!log.contains("pass"), "{log}");
    assert!(!log.contains("k3y"), "{log}");
}
