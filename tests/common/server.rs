//! A real `otad serve` on a loopback port, for end-to-end tests.
//!
//! Each server gets its own state dir (made by `otad init`) and a test device CA listed in
//! `ota.extra_device_ca`, so `otad::simulate` devices are trusted. The process is killed
//! when the handle drops.

#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `otad` binary under test.
pub fn otad_bin() -> &'static str {
    env!("CARGO_BIN_EXE_otad")
}

/// A running server and its files.
pub struct TestServer {
    /// Holds the temp dir alive.
    pub dir: tempfile::TempDir,
    /// The state dir.
    pub state: PathBuf,
    /// Where the trusted test device CA lives.
    pub device_ca_dir: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
    log_path: PathBuf,
}

/// Sets `key = value` in `[section]` of a config text; `value` is a TOML literal.
pub fn set_key(config: &str, section: &str, key: &str, value: &str) -> String {
    let mut out = Vec::new();
    let mut in_section = false;
    let mut done = false;
    for line in config.lines() {
        if line.starts_with('[') {
            in_section = line == format!("[{section}]");
        }
        if in_section && !done && line.starts_with(&format!("{key} =")) {
            out.push(format!("{key} = {value}"));
            done = true;
        } else {
            out.push(line.to_string());
        }
    }
    assert!(done, "config has no {section}.{key}");
    out.join("\n") + "\n"
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// `otad init --state STATE --url URL`; returns the config it wrote (STATE/otad.toml).
pub fn init_state(state: &Path, url: &str) -> PathBuf {
    let init = Command::new(otad_bin())
        .args(["init", "--state"])
        .arg(state)
        .args(["--url", url, "--organization", "Test Org"])
        .output()
        .expect("run otad init");
    assert!(
        init.status.success(),
        "otad init: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    state.join("otad.toml")
}

impl TestServer {
    /// Starts a server; `configure` may change the config text before it starts.
    pub fn start(configure: impl FnOnce(String) -> String) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state");
        let device_ca_dir = dir.path().join("device-ca");
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");

        let config_path = init_state(&state, &url);
        otad::simulate::load_or_create_device_ca(&device_ca_dir).expect("device CA");
        let mut config = std::fs::read_to_string(&config_path).expect("read config");
        let device_ca = device_ca_dir.join("device-ca.pem");
        config = set_key(&config, "http", "listen", &format!("\"127.0.0.1:{port}\""));
        config = set_key(
            &config,
            "ota",
            "extra_device_ca",
            &format!("[{:?}]", device_ca),
        );
        config = configure(config);
        std::fs::write(&config_path, config).expect("write config");

        let log_path = dir.path().join("serve.log");
        let child = spawn_serve(&config_path, &log_path);
        let server = TestServer {
            dir,
            state,
            device_ca_dir,
            url,
            child,
            log_path,
        };
        server.wait_ready();
        server
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.state.join("otad.toml")
    }

    /// Kills the server (SIGKILL: no clean shutdown) and starts it again on the same state,
    /// config and port; its log goes on in the same file.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_serve(&self.config_path(), &self.log_path);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if otad::httpclient::get(&format!("{}/healthz", self.url))
                .is_ok_and(|r| r.status == 200)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("otad serve did not come up; log:\n{}", self.log());
    }

    /// Stops the server cleanly (SIGTERM; SIGKILL after 10 s) and returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        stop(&mut self.child, Duration::from_secs(10))
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log_path) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Options for a simulated device trusted by this server.
    pub fn device_options(&self) -> otad::simulate::SimulateOptions {
        otad::simulate::SimulateOptions::new(self.url.clone(), self.device_ca_dir.clone())
    }

    /// A file under the state dir.
    pub fn state_file(&self, relative: &str) -> PathBuf {
        self.state.join(relative)
    }

    /// A record of the state log, as JSON (see [`super::state`]).
    pub fn record(&self, kind: super::state::RecordKind, key: &str) -> Option<serde_json::Value> {
        super::state::record(&self.state, kind, key)
    }

    /// A device record, as JSON.
    pub fn device_record(&self, udid: &str) -> Option<serde_json::Value> {
        self.record(super::state::RecordKind::Device, udid)
    }

    /// A certificate record, as JSON.
    pub fn cert_record(&self, serial: &str) -> Option<serde_json::Value> {
        self.record(super::state::RecordKind::Cert, serial)
    }

    /// How many records of `kind` the state log holds.
    pub fn count(&self, kind: super::state::RecordKind) -> usize {
        super::state::count(&self.state, kind)
    }

    /// Every file under the state dir with its contents, for "nothing changed" checks.
    pub fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files = Vec::new();
        collect(&self.state, &mut files);
        // The events log records refusals too (and keeps them in the state log for a moment,
        // see `events::EventLog::spool`); "nothing changed" means the enrollment state: the
        // other files, and the records of the state log rather than its bytes.
        files.retain(|(path, _)| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            !name.is_some_and(|n| {
                n.ends_with(".lock") || n.starts_with("events.") || n == "state.log"
            })
        });
        use super::state::RecordKind;
        for kind in [RecordKind::Challenge, RecordKind::Device, RecordKind::Cert] {
            let journal = otad::store::journal::Journal::open(&self.state).expect("state log");
            for (key, bytes) in journal.all(kind, false).expect("records") {
                files.push((
                    PathBuf::from(format!("state.log/{}/{key}", kind.name())),
                    bytes,
                ));
            }
        }
        files.sort();
        files
    }
}

fn spawn_serve(config_path: &Path, log_path: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("log file");
    Command::new(otad_bin())
        .args(["serve", "--config"])
        .arg(config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn otad serve")
}

fn collect(dir: &Path, files: &mut Vec<(PathBuf, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else if let Ok(bytes) = std::fs::read(&path) {
            files.push((path, bytes));
        }
    }
}

impl Drop for TestServer {
    /// SIGTERM, as systemd stops it, and SIGKILL if it is still there after a few seconds.
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(5));
    }
}

/// Stops an `otad serve` child: SIGTERM, then SIGKILL after `wait`. Returns its exit code
/// when it exited on its own.
pub fn stop(child: &mut Child, wait: Duration) -> Option<i32> {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
