//! `otad-bench phases`: the whole OTA enrollment, one stage at a time, against a running otad
//! that trusts a simulated device CA (`ota.extra_device_ca`).
//!
//! At each concurrency level a batch of new devices goes through four stages, each timed on
//! its own with every request built before the clock starts, after ten times as many
//! GetCACaps (the cost of HTTP alone, the floor under every stage): phase 1 (GET the Profile
//! Service payload), phase 2 (the attributes signed by the device identity without signed
//! attributes, as a Mac signs them, but with SHA-256: aws-lc-rs makes no SHA-1 signatures),
//! SCEP PKCSReq (with the challenge phase 2 handed out) and phase 3 (signed by the issued
//! certificate). Each stage's answers are checked after its clock stops, and feed the next
//! stage. One JSON line per stage, then one line of memory and state figures.
//!
//! `--curve 1000,10000` then keeps enrolling batches at one concurrency until the server
//! holds that many devices, printing the stage lines of every batch with the device count
//! it started at, so that cost can be read as the inventory grows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use otad::cms::{ContentCipher, DigestAlgorithm};
use otad::pki::ca::CertificateAuthority;
use otad::pki::cert;
use otad::pki::csr;
use otad::pki::keys::RsaPrivateKey;
use otad::scep::message::{self, MessageType, PkiStatus, RequestParams};
use otad::simulate::{self, Device, Phase1, ScepIdentity, ScepPayload, SimulateOptions};

use crate::{percentile, process_cpu, send_all, Reply, Target};

/// Devices put through every stage before the first measured batch.
const WARMUP_DEVICES: usize = 8;
/// The media type of a phase 2 or 3 body.
const SIGNED_BODY: &str = "application/pkcs7-signature";
/// The media type of a SCEP pkiMessage.
const PKI_MESSAGE: &str = "application/x-pki-message";

/// `phases` options.
pub struct PhasesOptions {
    /// otad's base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    /// The simulated device CA's folder (as `otad simulate --device-ca`).
    pub device_ca_dir: PathBuf,
    /// Devices a batch.
    pub requests: usize,
    /// Concurrency levels, one batch each.
    pub levels: Vec<usize>,
    /// otad's process: CPU time around each stage, RSS at the start and the peak at the end.
    pub server_pid: u32,
    /// otad's state folder, whose size is reported at the end.
    pub state_dir: PathBuf,
    /// Device counts to grow the inventory to after the levels.
    pub curve: Vec<usize>,
    /// The concurrency of the curve's batches.
    pub curve_concurrency: usize,
}

/// What every device of a run shares: keys are made once (key generation is not what is
/// measured), each device still gets its own identity certificate, UDID and serial.
struct Fleet {
    device_ca: CertificateAuthority,
    device_key: Vec<u8>,
    scep_key: Vec<u8>,
    scep_throwaway: Vec<u8>,
    simulate: SimulateOptions,
    url: String,
    server_pid: u32,
}

/// One stage's figures, printed as a JSON line.
struct StageFigures {
    stage: &'static str,
    concurrency: usize,
    devices_before: usize,
    requests: usize,
    failures: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    server_cpu: Duration,
    driver_cpu: Duration,
}

/// Runs the levels, then the curve, printing as it goes.
pub fn phases(options: &PhasesOptions) -> Result<(), String> {
    let idle_rss_kib = status_kib(options.server_pid, "VmRSS")?;
    let device_ca = simulate::load_or_create_device_ca(&options.device_ca_dir)?;
    let device_key = RsaPrivateKey::generate(simulate::DEVICE_KEY_BITS)
        .map_err(|err| format!("device key: {err}"))?;
    let scep_key = RsaPrivateKey::generate(2048).map_err(|err| format!("scep key: {err}"))?;
    let scep_throwaway = crate::throwaway_certificate(&scep_key)?;
    let fleet = Fleet {
        device_ca,
        device_key: device_key.to_pkcs8_der().to_vec(),
        scep_key: scep_key.to_pkcs8_der().to_vec(),
        scep_throwaway,
        simulate: SimulateOptions::new(options.url.clone(), options.device_ca_dir.clone()),
        url: options.url.clone(),
        server_pid: options.server_pid,
    };

    let mut enrolled = 0;
    let warm = batch(&fleet, WARMUP_DEVICES, 1, enrolled)?;
    if let Some(stage) = warm.iter().find(|stage| stage.failures > 0) {
        return Err(format!(
            "warm-up: {} of {WARMUP_DEVICES} {} requests failed; does otad trust the device \
             CA (ota.extra_device_ca)?",
            stage.failures, stage.stage
        ));
    }
    enrolled += WARMUP_DEVICES;

    for &concurrency in &options.levels {
        for stage in batch(&fleet, options.requests, concurrency, enrolled)? {
            print_stage(&stage, "level");
        }
        enrolled += options.requests;
    }
    let peak_after_levels_kib = status_kib(options.server_pid, "VmHWM")?;

    for &target in &options.curve {
        while enrolled < target {
            let size = options.requests.min(target - enrolled);
            for stage in batch(&fleet, size, options.curve_concurrency, enrolled)? {
                print_stage(&stage, "curve");
            }
            enrolled += size;
        }
    }

    let state_bytes = tree_size(&options.state_dir)?;
    println!(
        "{{\"memory\": true, \"idle_rss_kib\": {idle_rss_kib}, \
         \"peak_rss_kib_after_levels\": {peak_after_levels_kib}, \
         \"peak_rss_kib\": {}, \"rss_kib_at_end\": {}, \"devices\": {enrolled}, \
         \"state_bytes\": {state_bytes}, \"state_bytes_per_1000_devices\": {}}}",
        status_kib(options.server_pid, "VmHWM")?,
        status_kib(options.server_pid, "VmRSS")?,
        state_bytes * 1000 / enrolled.max(1) as u64,
    );
    Ok(())
}

fn print_stage(stage: &StageFigures, kind: &str) {
    let mut sorted = stage.latencies.clone();
    sorted.sort();
    let seconds = stage.elapsed.as_secs_f64();
    let served = stage.requests - stage.failures;
    println!(
        "{{\"stage\": \"{}\", \"kind\": \"{kind}\", \"concurrency\": {}, \
         \"devices_before\": {}, \"requests\": {}, \"failures\": {}, \"seconds\": {seconds:.3}, \
         \"per_second\": {:.1}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}, \
         \"server_cpu_ms_per_request\": {:.4}, \"driver_cpu_ms_per_request\": {:.4}}}",
        stage.stage,
        stage.concurrency,
        stage.devices_before,
        stage.requests,
        stage.failures,
        served as f64 / seconds,
        percentile(&sorted, 50),
        percentile(&sorted, 99),
        stage.server_cpu.as_secs_f64() * 1000.0 / served.max(1) as f64,
        stage.driver_cpu.as_secs_f64() * 1000.0 / stage.requests.max(1) as f64,
    );
}

/// `count` new devices through the four stages at `concurrency`.
fn batch(
    fleet: &Fleet,
    count: usize,
    concurrency: usize,
    devices_before: usize,
) -> Result<Vec<StageFigures>, String> {
    let mut devices = (0..count)
        .map(|_| new_device(fleet))
        .collect::<Result<Vec<_>, _>>()?;
    let mut stages = Vec::new();
    let empty: Vec<&[u8]> = vec![&[]; count];

    // The floor every request pays (the guard, the socket, the connection thread): ten
    // times as many GetCACaps, which need no crypto and no state (ten times, for the CPU
    // figure: each costs less than a tenth of a millisecond, read in 10 ms ticks).
    let caps_url = format!(
        "{}/scep?operation=GetCACaps",
        fleet.url.trim_end_matches('/')
    );
    let target = Target {
        method: "GET",
        url: &caps_url,
        content_type: "",
    };
    let caps_bodies: Vec<&[u8]> = vec![&[]; count * crate::CAPS_PER_REQUEST];
    let (replies, figures) = timed(
        fleet,
        "caps",
        &target,
        &caps_bodies,
        concurrency,
        devices_before,
    );
    let caps: Vec<Option<()>> = replies
        .iter()
        .map(|reply| {
            answer(reply, |body| match body.starts_with(b"POSTPKIOperation") {
                true => Ok(()),
                false => Err("GetCACaps: not otad's capabilities".into()),
            })
        })
        .collect();
    stages.push(figures.with_failures(&caps));

    // Phase 1: every device downloads its own Profile Service payload.
    let enroll_url = format!("{}/ota/enroll", fleet.url.trim_end_matches('/'));
    let target = Target {
        method: "GET",
        url: &enroll_url,
        content_type: "",
    };
    let (replies, figures) = timed(
        fleet,
        "phase1",
        &target,
        &empty,
        concurrency,
        devices_before,
    );
    let phase1: Vec<Option<Phase1>> = replies
        .iter()
        .map(|reply| answer(reply, read_phase1))
        .collect();
    stages.push(figures.with_failures(&phase1));

    // Phase 2: the attributes with that challenge, signed by the device identity.
    let mut bodies = Vec::new();
    for (device, phase1) in devices.iter().zip(&phase1) {
        let challenge = phase1.as_ref().map_or("", |p| p.challenge.as_str());
        bodies.push(device.phase2_body(challenge)?);
    }
    let phase23_url = phase1
        .iter()
        .flatten()
        .next()
        .map(|p| p.url.clone())
        .ok_or("phase 1: no device got a Profile Service payload")?;
    let (replies, figures) = timed_posts(
        fleet,
        "phase2",
        &phase23_url,
        SIGNED_BODY,
        &bodies,
        concurrency,
        devices_before,
    );
    let phase2: Vec<Option<ScepPayload>> = replies
        .iter()
        .map(|reply| answer(reply, read_phase2))
        .collect();
    stages.push(figures.with_failures(&phase2));

    // SCEP: a PKCSReq with the challenge phase 2 bound to the device.
    let scep_key = key(&fleet.scep_key)?;
    let authorities = crate::get_ca_cert(&format!("{}/scep", fleet.url.trim_end_matches('/')))?;
    let mut requests = Vec::new();
    for (device, scep) in devices.iter().zip(&phase2) {
        let challenge = scep.as_ref().map_or("", |s| s.challenge.as_str());
        let request = csr::build(&scep_key, &device.udid, Some(challenge))
            .map_err(|err| format!("CSR: {err}"))?;
        let sender_nonce = message::new_nonce();
        let params = RequestParams {
            message_type: MessageType::PkcsReq,
            transaction_id: &device.udid,
            sender_nonce,
            digest: DigestAlgorithm::Sha256,
            cipher: ContentCipher::Aes128Cbc,
            recipient: authorities.recipient(),
            signer_certificate: &fleet.scep_throwaway,
            signer_key: scep_key.signing(),
        };
        requests.push((message::build_request(&request, &params)?, sender_nonce));
    }
    let bodies: Vec<Vec<u8>> = requests.iter().map(|(body, _)| body.clone()).collect();
    let scep_url = format!(
        "{}/scep?operation=PKIOperation",
        fleet.url.trim_end_matches('/')
    );
    let (replies, figures) = timed_posts(
        fleet,
        "scep",
        &scep_url,
        PKI_MESSAGE,
        &bodies,
        concurrency,
        devices_before,
    );
    let signers = authorities.signers();
    let ours = scep_key.public_key_spki_der();
    let mut issued = Vec::new();
    for ((reply, (_, nonce)), device) in replies.iter().zip(&requests).zip(&devices) {
        issued.push(answer(reply, |body| {
            let parsed =
                message::parse_reply(body, &signers, &fleet.scep_throwaway, scep_key.decrypting())?;
            if parsed.status != PkiStatus::Success
                || parsed.transaction_id != device.udid
                || parsed.recipient_nonce != nonce
            {
                return Err(format!(
                    "CertRep {:?} {:?}",
                    parsed.status, parsed.fail_info
                ));
            }
            parsed
                .certificates
                .into_iter()
                .find(|c| cert::spki_der(c).is_ok_and(|spki| spki == ours))
                .ok_or_else(|| "CertRep: no certificate for our key".to_string())
        }));
    }
    stages.push(figures.with_failures(&issued));

    // Phase 3: the attributes again, signed by the issued certificate.
    let mut bodies = Vec::new();
    for ((device, certificate), phase1) in devices.iter_mut().zip(&issued).zip(&phase1) {
        if let Some(certificate) = certificate {
            device.scep_identity = Some(ScepIdentity {
                certificate: certificate.clone(),
                key: key(&fleet.scep_key)?,
                ca_certificate: authorities.ca.clone(),
            });
        }
        let challenge = phase1.as_ref().map_or("", |p| p.challenge.as_str());
        // A device without a certificate sends an empty body: its failure is counted.
        bodies.push(device.phase3_body(challenge).unwrap_or_default());
    }
    let (replies, figures) = timed_posts(
        fleet,
        "phase3",
        &phase23_url,
        SIGNED_BODY,
        &bodies,
        concurrency,
        devices_before,
    );
    let finals: Vec<Option<()>> = replies
        .iter()
        .zip(&devices)
        .map(|(reply, device)| {
            answer(reply, |body| {
                let identity = device.scep_identity.as_ref().ok_or("no SCEP identity")?;
                let (_, profile) = simulate::open_signed_profile("phase 3", body, None)?;
                simulate::read_final_profile(profile, identity).map(|_| ())
            })
        })
        .collect();
    stages.push(figures.with_failures(&finals));
    Ok(stages)
}

/// A new device with its own identity certificate for the shared device key.
fn new_device(fleet: &Fleet) -> Result<Device, String> {
    Device::issued_by(&fleet.device_ca, key(&fleet.device_key)?, &fleet.simulate)
}

fn key(pkcs8: &[u8]) -> Result<RsaPrivateKey, String> {
    RsaPrivateKey::from_pkcs8_der(pkcs8).map_err(|err| format!("key: {err}"))
}

fn read_phase1(body: &[u8]) -> Result<Phase1, String> {
    let (signer, profile) = simulate::open_signed_profile("phase 1", body, None)?;
    simulate::read_profile_service(&profile, signer)
}

fn read_phase2(body: &[u8]) -> Result<ScepPayload, String> {
    let (_, profile) = simulate::open_signed_profile("phase 2", body, None)?;
    simulate::read_scep_profile(&profile)
}

/// What a reply gave, or `None` (the first failure of a run is printed once).
fn answer<T>(reply: &Reply, read: impl FnOnce(&[u8]) -> Result<T, String>) -> Option<T> {
    let result = reply.result.as_deref().map_err(Clone::clone).and_then(read);
    match result {
        Ok(value) => Some(value),
        Err(err) => {
            static SHOWN: std::sync::Once = std::sync::Once::new();
            SHOWN.call_once(|| eprintln!("otad-bench: first failure: {err}"));
            None
        }
    }
}

impl StageFigures {
    fn with_failures<T>(mut self, answers: &[Option<T>]) -> Self {
        self.failures = answers.iter().filter(|answer| answer.is_none()).count();
        self
    }
}

fn timed_posts(
    fleet: &Fleet,
    stage: &'static str,
    url: &str,
    content_type: &str,
    bodies: &[Vec<u8>],
    concurrency: usize,
    devices_before: usize,
) -> (Vec<Reply>, StageFigures) {
    let target = Target {
        method: "POST",
        url,
        content_type,
    };
    let bodies: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    timed(fleet, stage, &target, &bodies, concurrency, devices_before)
}

/// Sends one stage's requests (keep-alive), with the server's CPU time read around it.
fn timed(
    fleet: &Fleet,
    stage: &'static str,
    target: &Target<'_>,
    bodies: &[&[u8]],
    concurrency: usize,
    devices_before: usize,
) -> (Vec<Reply>, StageFigures) {
    let before = process_cpu(fleet.server_pid).unwrap_or_default();
    let (replies, elapsed, driver_cpu) = send_all(target, bodies, concurrency, true);
    let server_cpu = process_cpu(fleet.server_pid)
        .unwrap_or_default()
        .saturating_sub(before);
    let figures = StageFigures {
        stage,
        concurrency,
        devices_before,
        requests: bodies.len(),
        failures: 0,
        elapsed,
        latencies: replies.iter().map(|reply| reply.latency).collect(),
        server_cpu,
        driver_cpu,
    };
    (replies, figures)
}

/// A `/proc/PID/status` figure in KiB (VmRSS: resident now; VmHWM: the peak).
fn status_kib(pid: u32, field: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|err| format!("{path}: {err}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("{path}: no {field}"))
}

/// Bytes of disk the files under `dir` take (allocated blocks, as `du` counts).
fn tree_size(dir: &Path) -> Result<u64, String> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let entries =
            std::fs::read_dir(&folder).map_err(|err| format!("{}: {err}", folder.display()))?;
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(total)
}
