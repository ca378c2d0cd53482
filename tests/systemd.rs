//! otad under a service manager: a listening socket passed by socket activation
//! (`systemd-socket-activate`, LISTEN_FDS) and readiness reported on NOTIFY_SOCKET.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::server::{free_port, init_state, otad_bin, set_key, stop};

#[test]
fn a_passed_socket_is_served_and_readiness_and_stopping_are_reported() {
    if Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true needs systemd-socket-activate (package systemd)"
        );
        eprintln!("SKIP: no systemd-socket-activate");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    // http.listen names another port: the passed socket must win.
    let config = init_state(&state, &url);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, set_key(&text, "http", "listen", "\"127.0.0.1:1\"")).unwrap();

    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let log = dir.path().join("serve.log");
    let mut child = Command::new("systemd-socket-activate")
        .args(["-l", &format!("127.0.0.1:{port}")])
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg(otad_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    // Socket activation starts the service on the first connection.
    let deadline = Instant::now() + Duration::from_secs(20);
    let response = loop {
        match otad::httpclient::get(&format!("{url}/healthz")) {
            Ok(response) => break response,
            Err(err) => {
                assert!(Instant::now() < deadline, "{err}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert_eq!(response.status, 200);
    let mut buffer = [0u8; 256];
    let n = notify.recv(&mut buffer).unwrap();
    assert_eq!(buffer.get(..n), Some(&b"READY=1"[..]));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("(passed by systemd)"), "{logged}");

    // systemd-socket-activate execs otad: the pid is otad's own.
    let code = stop(&mut child, Duration::from_secs(30));
    assert_eq!(code, Some(0));
    let n = notify.recv(&mut buffer).unwrap();
    assert_eq!(buffer.get(..n), Some(&b"STOPPING=1"[..]));
}
