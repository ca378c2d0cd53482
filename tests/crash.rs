//! Crash harness: a fleet of simulated devices (with `retry`) enrolls through every phase
//! with enrollment tokens, while the CLI revokes certificates and makes tokens, and the
//! server is killed with SIGKILL at random points and restarted, several times. Afterwards
//! the state must hold together: every file parses, no serial is shared, no token is spent
//! beyond its uses, every device that finished phase 3 is in the inventory with its
//! certificate, and `otad fsck` is clean (after a `--repair` of leftover temp files only).
//!
//! `crash_small` (60 devices, 3 kills) runs in `make test`; `crash_1000_devices` (1,000
//! devices, 6 kills) runs with `cargo test --test crash -- --ignored crash`.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::cli::{json, new_token, otad};
use common::server::TestServer;
use otad::simulate::fleet::{self, Enrolled, FleetOptions};

/// The shape of one run.
struct Plan {
    /// Fleets running at once, each with its own token.
    fleets: usize,
    /// Devices per fleet.
    devices: usize,
    /// Devices at once per fleet.
    concurrency: usize,
    /// SIGKILLs of the server.
    kills: usize,
    /// Certificates revoked from the CLI during the run.
    revocations: usize,
}

/// A random duration in `low..high`.
fn random_between(low: Duration, high: Duration) -> Duration {
    let mut bytes = [0u8; 2];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    let spread = high.saturating_sub(low);
    low + spread.mul_f64(f64::from(u16::from_le_bytes(bytes)) / f64::from(u16::MAX))
}

/// One token from `otad token list --json`; panics if it is not there.
fn token_json(server: &TestServer, id: &str) -> serde_json::Value {
    let all = json(server, &["token", "list"]);
    all.as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("token {id} is lost"))
}

fn crash_run(plan: &Plan) {
    let mut server = TestServer::start(|config| config);
    let state = server.state.to_string_lossy().into_owned();
    let config = server.config_path().to_string_lossy().into_owned();

    // Each fleet has a token with room for every retry its devices may need.
    let uses = u32::try_from(plan.devices * 4).unwrap();
    let tokens: Vec<(String, String)> =
        (0..plan.fleets).map(|_| new_token(&server, uses)).collect();

    let enrolled: Mutex<Vec<Enrolled>> = Mutex::new(Vec::new());
    let revoked: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let extra_tokens: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let running = AtomicBool::new(true);
    let started = Instant::now();

    let summaries = std::thread::scope(|scope| {
        let fleets: Vec<_> = tokens
            .iter()
            .map(|(secret, _)| {
                let mut device = server.device_options();
                device.token = Some(secret.clone());
                let options = FleetOptions {
                    device,
                    devices: plan.devices,
                    concurrency: plan.concurrency,
                    retry: true,
                };
                let enrolled = &enrolled;
                scope.spawn(move || {
                    fleet::run(&options, &|done| {
                        enrolled.lock().unwrap().push(done.clone())
                    })
                    .expect("fleet runs")
                })
            })
            .collect();

        // The CLI writes while the server runs (and while it is down): revocations of
        // certificates devices finished with, and new tokens.
        let admin = scope.spawn(|| {
            while running.load(Ordering::Relaxed) {
                std::thread::sleep(random_between(
                    Duration::from_millis(300),
                    Duration::from_millis(900),
                ));
                let target = {
                    let done = enrolled.lock().unwrap();
                    let revoked = revoked.lock().unwrap();
                    (revoked.len() < plan.revocations)
                        .then(|| {
                            done.get(revoked.len() * 3)
                                .map(|e| e.certificate_serial.clone())
                        })
                        .flatten()
                };
                if let Some(serial) = target {
                    let (code, _, err) = otad(&[
                        "cert",
                        "revoke",
                        "--config",
                        &config,
                        &serial,
                        "--reason",
                        "superseded",
                    ]);
                    assert_eq!(code, 0, "cert revoke {serial}: {err}");
                    revoked.lock().unwrap().push(serial);
                }
                let (code, out, err) = otad(&["token", "new", "--state", &state, "--uses", "2"]);
                assert_eq!(code, 0, "token new: {err}");
                if let Some(id) = out.lines().find_map(|l| l.strip_prefix("id: ")) {
                    extra_tokens.lock().unwrap().push(id.to_string());
                }
            }
        });

        // The killer: SIGKILL at random points spread over the run (after a random share
        // of the devices finished, then a random pause), then start again on the same state.
        let total = plan.fleets * plan.devices;
        let slice = total / (plan.kills + 1);
        let mut kills = 0;
        while kills < plan.kills && !fleets.iter().all(|f| f.is_finished()) {
            let offset = random_between(Duration::ZERO, Duration::from_millis(1000));
            let threshold = slice * (kills + 1) + slice / 2 * offset.as_millis() as usize / 1000;
            if enrolled.lock().unwrap().len() < threshold {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            std::thread::sleep(random_between(Duration::ZERO, Duration::from_millis(150)));
            server.restart();
            kills += 1;
        }
        let summaries: Vec<_> = fleets.into_iter().map(|f| f.join().unwrap()).collect();
        running.store(false, Ordering::Relaxed);
        admin.join().unwrap();
        assert_eq!(kills, plan.kills, "the fleet finished before every kill");
        summaries
    });
    eprintln!(
        "crash run: {} fleets of {} devices, {} kills, {:.1} s",
        plan.fleets,
        plan.devices,
        plan.kills,
        started.elapsed().as_secs_f64()
    );
    for summary in &summaries {
        eprintln!("{}", summary.to_json());
    }

    // Every device went through: a crash cost retries, never an enrollment.
    let enrolled = enrolled.into_inner().unwrap();
    let failures: Vec<&String> = summaries.iter().flat_map(|s| &s.failures).collect();
    assert_eq!(
        enrolled.len(),
        plan.fleets * plan.devices,
        "failures: {failures:?}\n{}",
        server.log()
    );
    assert!(
        summaries.iter().map(|s| s.retries).sum::<usize>() > 0,
        "the kills cost no retry: they hit nothing"
    );

    // Every certificate and device record parses (fsck below reads everything else), and
    // no two certificates share a serial.
    let certs = json(&server, &["cert", "list"]);
    let certs = certs.as_array().unwrap();
    let serials: BTreeSet<&str> = certs
        .iter()
        .map(|c| c["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials.len(), certs.len(), "a serial is shared");
    let udids: BTreeSet<&str> = enrolled.iter().map(|e| e.udid.as_str()).collect();
    assert_eq!(udids.len(), enrolled.len(), "UDIDs are distinct");

    // Tokens: none spent beyond its uses; every enrollment spent one, and every
    // certificate issued through OTA answered a one-time challenge from a spent use.
    let mut spent = 0;
    for (_, id) in &tokens {
        let token = token_json(&server, id);
        let (used, allowed) = (
            token["used"].as_u64().unwrap(),
            token["uses"].as_u64().unwrap(),
        );
        assert!(used <= allowed, "token {id}: {used} of {allowed}");
        spent += used;
    }
    assert!(
        spent >= enrolled.len() as u64,
        "{spent} uses for {} devices",
        enrolled.len()
    );
    assert!(
        certs.len() as u64 <= spent,
        "{} certificates for {spent} phase 2 answers",
        certs.len()
    );
    for id in extra_tokens.into_inner().unwrap() {
        let token = token_json(&server, &id);
        assert_eq!(token["uses"], 2, "token {id}");
    }

    // Every device that finished phase 3 is in the inventory, enrolled, with its certificate.
    for device in &enrolled {
        let record = json(&server, &["device", "show", &device.udid]);
        assert_eq!(record["phase"], "enrolled", "{}", device.udid);
        let certificates: Vec<&str> = record["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert!(
            certificates.contains(&device.certificate_serial.as_str()),
            "{}: {} not in {certificates:?}",
            device.udid,
            device.certificate_serial
        );
    }

    // Every revocation is in the CRL index.
    let crl: serde_json::Value =
        serde_json::from_slice(&std::fs::read(server.state_file("crl.json")).unwrap()).unwrap();
    for serial in revoked.into_inner().unwrap() {
        assert!(
            crl["revoked"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["serial"] == serial.as_str()),
            "revocation of {serial} lost"
        );
    }

    // fsck: clean, or clean after a repair of leftover temp files alone.
    let (code, out, err) = otad(&["fsck", "--config", &config, "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    eprintln!("fsck: {out}");
    if code != 0 {
        let findings = report["findings"].as_array().cloned().unwrap_or_default();
        for finding in findings.iter().filter(|f| f["severity"] == "problem") {
            assert!(
                finding["problem"].as_str().unwrap().contains("temp file"),
                "fsck found more than temp files: {finding}\n{err}"
            );
        }
        let (code, out, err) = otad(&["fsck", "--config", &config, "--repair"]);
        assert_eq!(code, 0, "fsck --repair: {out}{err}");
    }
    let (code, out, err) = otad(&["fsck", "--config", &config]);
    assert_eq!(code, 0, "fsck after the run: {out}{err}");
}

#[test]
fn crash_small() {
    crash_run(&Plan {
        fleets: 2,
        devices: 30,
        concurrency: 3,
        kills: 3,
        revocations: 3,
    });
}

#[test]
#[ignore = "1,000 devices and 6 kills take minutes: cargo test --test crash -- --ignored crash"]
fn crash_1000_devices() {
    crash_run(&Plan {
        fleets: 4,
        devices: 250,
        concurrency: 4,
        kills: 6,
        revocations: 10,
    });
}
