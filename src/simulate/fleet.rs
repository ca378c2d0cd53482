//! `otad simulate --devices N`: a fleet of simulated devices, each through phase 1, phase 2,
//! SCEP and phase 3 (final profile decrypted), `concurrency` at a time on threads.
//!
//! Each device has its own UDID, SERIAL and device identity certificate. The device CA is
//! loaded once; each worker thread makes one device identity key and has the device CA issue
//! a fresh certificate on it for every device it runs (the server checks the certificate,
//! not whether two devices share a key), while every SCEP key is new. Per device only the
//! four step latencies (as microseconds) are kept, plus the first few failure reasons, so a
//! run of [`MAX_DEVICES`] stays in bounded memory.
//!
//! With `retry`, a device whose step fails with a connection error or a 5xx starts again
//! from phase 1 after a short backoff, at most [`MAX_ATTEMPTS`] times: what a device does
//! when the server restarts under it, and what the crash harness relies on.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{load_or_create_device_ca, Device, SimulateOptions, DEVICE_KEY_BITS};
use crate::pki::ca::CertificateAuthority;
use crate::pki::cert;
use crate::pki::keys::RsaPrivateKey;

/// Most devices one run simulates.
pub const MAX_DEVICES: usize = 100_000;
/// Most devices enrolling at once (threads).
pub const MAX_CONCURRENCY: usize = 256;
/// Most attempts per device with `retry` (the first included).
pub const MAX_ATTEMPTS: u32 = 10;
/// Failure reasons kept for the summary; the rest are only counted.
pub const MAX_FAILURE_REASONS: usize = 5;
/// The first retry's backoff; each further one doubles, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest backoff between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The steps timed, in order.
pub const STEPS: [&str; 4] = ["phase1", "phase2", "scep", "phase3"];

/// What a fleet run is asked to do.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Server URL, device CA, token and login, shared by every device (`udid` and `serial`
    /// must be `None`: every device makes its own).
    pub device: SimulateOptions,
    /// How many devices, 1 to [`MAX_DEVICES`].
    pub devices: usize,
    /// How many at once, 1 to [`MAX_CONCURRENCY`].
    pub concurrency: usize,
    /// Start a device again from phase 1 after a connection error or a 5xx.
    pub retry: bool,
}

/// One device that went through every phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    /// Its UDID.
    pub udid: String,
    /// Its SERIAL.
    pub serial: String,
    /// Its SCEP certificate's serial, lowercase hex.
    pub certificate_serial: String,
    /// Attempts it took (1 without a retry).
    pub attempts: u32,
}

/// p50 and p99 of one step, over every attempt that finished it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLatency {
    /// How many times the step succeeded.
    pub count: usize,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
}

/// What a fleet run produced; `Display` is the text summary, [`FleetSummary::to_json`] the
/// JSON one.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSummary {
    /// Devices asked for.
    pub devices: usize,
    /// Devices that went through every phase.
    pub ok: usize,
    /// Devices that did not.
    pub failed: usize,
    /// Attempts started again after a retryable failure.
    pub retries: usize,
    /// The first [`MAX_FAILURE_REASONS`] failures, as "UDID: reason".
    pub failures: Vec<String>,
    /// Wall time of the run.
    pub seconds: f64,
    /// Devices enrolled per second of wall time.
    pub devices_per_second: f64,
    /// Latency of each of [`STEPS`], in that order.
    pub steps: [StepLatency; 4],
}

impl FleetSummary {
    /// The summary as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let steps: serde_json::Map<String, serde_json::Value> = STEPS
            .iter()
            .zip(&self.steps)
            .map(|(name, step)| {
                let value = json!({
                    "count": step.count,
                    "p50_ms": round(step.p50_ms),
                    "p99_ms": round(step.p99_ms),
                });
                ((*name).to_string(), value)
            })
            .collect();
        json!({
            "devices": self.devices,
            "ok": self.ok,
            "failed": self.failed,
            "retries": self.retries,
            "failures": self.failures,
            "seconds": round(self.seconds),
            "devices_per_second": round(self.devices_per_second),
            "latency": steps,
        })
    }
}

fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

impl fmt::Display for FleetSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "devices: {}", self.devices)?;
        writeln!(f, "ok: {}", self.ok)?;
        writeln!(f, "failed: {}", self.failed)?;
        writeln!(f, "retries: {}", self.retries)?;
        writeln!(f, "seconds: {:.2}", self.seconds)?;
        writeln!(f, "devices_per_second: {:.2}", self.devices_per_second)?;
        for (name, step) in STEPS.iter().zip(&self.steps) {
            writeln!(
                f,
                "{name}: p50 {:.1} ms, p99 {:.1} ms ({} done)",
                step.p50_ms, step.p99_ms, step.count
            )?;
        }
        for failure in &self.failures {
            writeln!(f, "failure: {failure}")?;
        }
        Ok(())
    }
}

/// Checks a fleet's numbers before anything runs.
pub fn check_options(options: &FleetOptions) -> Result<(), String> {
    if !(1..=MAX_DEVICES).contains(&options.devices) {
        return Err(format!("--devices: must be 1 to {MAX_DEVICES}"));
    }
    if !(1..=MAX_CONCURRENCY).contains(&options.concurrency) {
        return Err(format!("--concurrency: must be 1 to {MAX_CONCURRENCY}"));
    }
    if options.device.udid.is_some() || options.device.serial.is_some() {
        return Err("--udid and --serial name one device; a fleet makes its own".into());
    }
    Ok(())
}

/// What the worker threads share.
struct Shared<'a> {
    options: &'a FleetOptions,
    ca: &'a CertificateAuthority,
    next: AtomicUsize,
    ok: AtomicUsize,
    failed: AtomicUsize,
    retries: AtomicUsize,
    failures: Mutex<Vec<String>>,
    /// Microseconds per step, one entry per successful step.
    latencies: [Mutex<Vec<u32>>; 4],
    on_enrolled: &'a (dyn Fn(&Enrolled) + Sync),
}

/// Runs the fleet; `on_enrolled` is called (from the worker threads) for each device that
/// went through every phase. Fails only if the fleet cannot start (options, device CA).
pub fn run(
    options: &FleetOptions,
    on_enrolled: &(dyn Fn(&Enrolled) + Sync),
) -> Result<FleetSummary, String> {
    check_options(options)?;
    let ca = load_or_create_device_ca(&options.device.device_ca_dir)?;
    let shared = Shared {
        options,
        ca: &ca,
        next: AtomicUsize::new(0),
        ok: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        retries: AtomicUsize::new(0),
        failures: Mutex::new(Vec::new()),
        latencies: Default::default(),
        on_enrolled,
    };

    let started = Instant::now();
    let threads = options.concurrency.min(options.devices);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| worker(&shared));
        }
    });
    let seconds = started.elapsed().as_secs_f64();

    let ok = shared.ok.load(Ordering::Relaxed);
    let steps = shared.latencies.each_ref().map(|list| {
        let mut micros = list.lock().map(|l| l.clone()).unwrap_or_default();
        micros.sort_unstable();
        StepLatency {
            count: micros.len(),
            p50_ms: percentile_ms(&micros, 50),
            p99_ms: percentile_ms(&micros, 99),
        }
    });
    Ok(FleetSummary {
        devices: options.devices,
        ok,
        failed: shared.failed.load(Ordering::Relaxed),
        retries: shared.retries.load(Ordering::Relaxed),
        failures: shared
            .failures
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
        seconds,
        devices_per_second: if seconds > 0.0 {
            ok as f64 / seconds
        } else {
            0.0
        },
        steps,
    })
}

/// The `pct`th percentile of sorted microseconds, in milliseconds (nearest rank).
fn percentile_ms(sorted: &[u32], pct: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted
        .get(rank - 1)
        .map_or(0.0, |micros| f64::from(*micros) / 1000.0)
}

/// One thread: takes the next device number until none are left.
fn worker(shared: &Shared<'_>) {
    // One identity key per thread; each device gets its own certificate on it.
    let identity_key = match RsaPrivateKey::generate(DEVICE_KEY_BITS) {
        Ok(key) => key,
        Err(err) => {
            // Without a key this thread cannot run a device; the others go on.
            note_failure(shared, "-", &format!("device identity: {err}"));
            return;
        }
    };
    while shared.next.fetch_add(1, Ordering::Relaxed) < shared.options.devices {
        match enroll_device(shared, &identity_key) {
            Ok(enrolled) => {
                shared.ok.fetch_add(1, Ordering::Relaxed);
                (shared.on_enrolled)(&enrolled);
            }
            Err((udid, reason)) => note_failure(shared, &udid, &reason),
        }
    }
}

fn note_failure(shared: &Shared<'_>, udid: &str, reason: &str) {
    shared.failed.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut failures) = shared.failures.lock() {
        if failures.len() < MAX_FAILURE_REASONS {
            failures.push(format!("{udid}: {reason}"));
        }
    }
}

/// One device, with retries; the error names its UDID.
fn enroll_device(
    shared: &Shared<'_>,
    identity_key: &RsaPrivateKey,
) -> Result<Enrolled, (String, String)> {
    let key = RsaPrivateKey::from_pkcs8_der(identity_key.to_pkcs8_der())
        .map_err(|err| ("-".to_string(), format!("device identity: {err}")))?;
    let mut device = Device::issued_by(shared.ca, key, &shared.options.device)
        .map_err(|err| ("-".to_string(), err))?;

    let mut attempt = 1;
    loop {
        match enroll_once(shared, &mut device) {
            Ok(certificate_serial) => {
                return Ok(Enrolled {
                    udid: device.udid,
                    serial: device.serial,
                    certificate_serial,
                    attempts: attempt,
                });
            }
            Err(err) if shared.options.retry && attempt < MAX_ATTEMPTS && retryable(&err) => {
                shared.retries.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(backoff(attempt));
                attempt += 1;
                device.scep_identity = None;
            }
            Err(err) => return Err((device.udid, err)),
        }
    }
}

/// Phase 1, phase 2, SCEP, phase 3 once; the certificate's serial on success.
fn enroll_once(shared: &Shared<'_>, device: &mut Device) -> Result<String, String> {
    let url = &shared.options.device.url;

    let started = Instant::now();
    let phase1 = device.phase1(url)?;
    record(shared, 0, started);

    let started = Instant::now();
    let scep = device.phase2(&phase1)?;
    record(shared, 1, started);

    // The key is made before the clock starts: the SCEP latency is the exchange.
    let key =
        RsaPrivateKey::generate(scep.keysize).map_err(|err| format!("scep PKIOperation: {err}"))?;
    let started = Instant::now();
    let certificate = device.enroll_scep_with_key(&scep, key)?;
    record(shared, 2, started);

    let started = Instant::now();
    device.phase3(&phase1)?;
    record(shared, 3, started);

    cert::serial_hex(&certificate).map_err(|err| format!("scep certificate: {err}"))
}

fn record(shared: &Shared<'_>, step: usize, started: Instant) {
    let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
    if let Some(Ok(mut list)) = shared.latencies.get(step).map(Mutex::lock) {
        list.push(micros);
    }
}

/// The pause before attempt `attempt + 1`: doubling from [`FIRST_BACKOFF`], at most
/// [`MAX_BACKOFF`], with up to a quarter of jitter so that a fleet does not come back in step.
pub fn backoff(attempt: u32) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    let base = doubled.min(MAX_BACKOFF);
    let mut byte = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut byte);
    base + base / 4 * u32::from(byte[0]) / 255
}

/// Failures a device would try again after: the server could not be reached or the
/// connection broke (the messages `httpclient` gives), or it answered 5xx.
pub fn retryable(err: &str) -> bool {
    const TRANSPORT: [&str; 5] = [
        "cannot connect",
        "cannot send",
        "cannot read",
        "connection closed before the headers ended",
        "body truncated",
    ];
    // Every answer read is "<step>: HTTP <status>: <reason>"; the first status decides, so
    // that nothing in the server's reason can count.
    if let Some((_, rest)) = err.split_once(": HTTP ") {
        let status: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if status.len() == 3 {
            return status.starts_with('5');
        }
    }
    TRANSPORT.iter().any(|phrase| err.contains(phrase))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_and_5xx_are_retried_refusals_are_not() {
        assert!(retryable(
            "phase 1: GET http://127.0.0.1:1/ota/enroll: 127.0.0.1:1: cannot connect: refused"
        ));
        assert!(retryable("phase 2: HTTP 503: too many connections"));
        assert!(retryable(
            "scep PKIOperation: POST u: response: connection closed before the headers ended"
        ));
        assert!(!retryable("phase 2: HTTP 403: token used up"));
        assert!(!retryable("phase 3: HTTP 400: HTTP 500 in the reason"));
        assert!(!retryable(
            "scep PKIOperation: CertRep FAILURE (badRequest)"
        ));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert!(backoff(1) >= FIRST_BACKOFF && backoff(1) <= FIRST_BACKOFF * 5 / 4);
        assert!(backoff(2) >= FIRST_BACKOFF * 2);
        assert!(backoff(30) >= MAX_BACKOFF && backoff(30) <= MAX_BACKOFF * 5 / 4);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let micros: Vec<u32> = (1..=100).map(|n| n * 1000).collect();
        assert_eq!(percentile_ms(&micros, 50), 50.0);
        assert_eq!(percentile_ms(&micros, 99), 99.0);
        assert_eq!(percentile_ms(&[7000], 99), 7.0);
        assert_eq!(percentile_ms(&[], 50), 0.0);
    }

    #[test]
    fn options_are_bounded() {
        let device = SimulateOptions::new("http://127.0.0.1:1", "/nonexistent");
        let mut options = FleetOptions {
            device,
            devices: 0,
            concurrency: 1,
            retry: false,
        };
        assert!(check_options(&options).is_err());
        options.devices = 10;
        assert!(check_options(&options).is_ok());
        options.concurrency = MAX_CONCURRENCY + 1;
        assert!(check_options(&options).is_err());
        options.concurrency = 4;
        options.device.udid = Some("ABC".into());
        assert!(check_options(&options).is_err());
    }
}
