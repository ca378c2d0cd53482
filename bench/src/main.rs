//! `otad-bench`: the request generator, load driver and crypto bound behind `bench/scep.sh`.
//!
//! `load` fetches a SCEP server's certificates, builds every PKCSReq in advance with otad's own
//! client code (one RSA-2048 requester key, a CSR per request with its own CN and the static
//! challenge, SHA-256, AES-128), then posts them at each concurrency level and prints one JSON
//! line per level: throughput, p50 and p99 latency, failures. Replies are checked after the
//! clock stops (verified, decrypted, one certificate for our key), so the driver spends no
//! CPU on them while the server is being timed. Before each level, [`CAPS_PER_REQUEST`] times
//! as many GetCACaps (no crypto, no state) give the cost of HTTP alone at that concurrency,
//! the floor under every request: with the RSA bound it gives the ceiling a server could
//! reach if it did nothing but HTTP and its private-key operations. `rsa` measures RSA-2048
//! signatures per second with aws-lc-rs on 1..=N threads, the private-key operation a PKCSReq
//! needs three of.
//!
//! Counts are bounded (at most [`MAX_REQUESTS`] requests a level, [`MAX_SIGNATURES`]
//! signatures a thread) and the only network traffic is to the URL given, which `scep.sh`
//! keeps on loopback.

mod phases;

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use otad::cms::{ContentCipher, DigestAlgorithm};
use otad::httpclient;
use otad::pki::keys::RsaPrivateKey;
use otad::pki::{cert, csr};
use otad::scep::message::{self, MessageType, PkiStatus, RequestParams};
use otad::simulate::{read_ca_cert, Authorities};

/// Most requests at one concurrency level.
const MAX_REQUESTS: usize = 10_000;
/// Most concurrent clients.
const MAX_CONCURRENCY: usize = 256;
/// Most signatures one thread makes for the crypto bound.
const MAX_SIGNATURES: usize = 100_000;
/// Most devices `phases --curve` enrolls.
const MAX_CURVE_DEVICES: usize = 100_000;
/// Most threads for the crypto bound.
const MAX_THREADS: usize = 64;
/// Requests sent before the clock starts, to fault in both sides' code and files.
const WARMUP_REQUESTS: usize = 8;
/// GetCACaps sent per PKCSReq of a level to measure HTTP alone: each costs a tenth of a
/// millisecond or less, and the server's CPU is read in 10 ms ticks.
pub(crate) const CAPS_PER_REQUEST: usize = 10;
/// Most GetCACaps per PKCSReq `--caps-per-request` takes.
const MAX_CAPS_PER_REQUEST: usize = 100;
/// Validity of the throwaway certificate that signs the PKCSReqs.
const THROWAWAY_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// What the driver was asked to do.
enum Command {
    Load(LoadOptions),
    Phases(phases::PhasesOptions),
    DeviceCa(std::path::PathBuf),
    Rsa {
        signatures: usize,
        threads: Vec<usize>,
    },
}

/// `load` options.
struct LoadOptions {
    label: String,
    scep_url: String,
    challenge: String,
    requests: usize,
    levels: Vec<usize>,
    /// The server's process, whose CPU time is read around each level (Linux `/proc`).
    server_pid: Option<u32>,
    /// Whether each posting thread keeps its connection for its next request.
    reuse: bool,
    /// GetCACaps sent per PKCSReq before each level (0: none).
    caps_per_request: usize,
}

const USAGE: &str = "usage:
  otad-bench load --label NAME --url SCEP_URL --challenge TEXT --requests N --concurrency 1,8,64
                  [--server-pid PID] [--connections close|reuse] [--caps-per-request N]
  otad-bench phases --url OTAD_URL --device-ca DIR --state DIR --server-pid PID
                    --requests N --concurrency 1,8,64 [--curve 1000,10000 --curve-concurrency 8]
  otad-bench device-ca --dir DIR
  otad-bench rsa --signatures N --threads 1,2
  otad-bench help

load: SCEP PKCSReqs built in advance, posted at each concurrency (one JSON line a level).
  --label NAME            the server's name in the output
  --url SCEP_URL          the server's SCEP URL (http://127.0.0.1:PORT/scep)
  --challenge TEXT        its static challengePassword
  --requests N            PKCSReqs a level (at most 10,000)
  --concurrency LIST      posting threads a level, e.g. 1,8,64 (at most 256)
  --server-pid PID        read the server's CPU time around each level (/proc)
  --connections MODE      reuse (keep-alive, the default in the scripts) or close
  --caps-per-request N    GetCACaps per PKCSReq before each level, the cost of HTTP alone
                          (default 10; 0: none)
phases: a batch of new devices through phase 1, phase 2, SCEP and phase 3 a level.
  --url OTAD_URL          otad's base URL; --device-ca DIR: a device CA otad trusts
                          (ota.extra_device_ca); --state DIR: otad's state (its size)
  --server-pid PID        otad's process (CPU, RSS); --requests N: devices a level
  --concurrency LIST      the levels; --curve LIST: device counts to grow to afterwards,
                          at --curve-concurrency C
device-ca: make (or reuse) the simulated device CA in DIR.
rsa: RSA-2048 signatures per second with aws-lc-rs, N per thread, on each thread count.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(
        args.first().map(String::as_str),
        Some("help" | "--help" | "-h")
    ) || args.iter().any(|arg| arg == "--help")
    {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = parse(&args).and_then(|command| match command {
        Command::Load(options) => load(&options),
        Command::Phases(options) => phases::phases(&options),
        Command::DeviceCa(dir) => otad::simulate::load_or_create_device_ca(&dir).map(|_| ()),
        Command::Rsa {
            signatures,
            threads,
        } => rsa_bound(signatures, &threads),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("otad-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the command line.
fn parse(args: &[String]) -> Result<Command, String> {
    let (command, rest) = args.split_first().ok_or(USAGE)?;
    let mut flags = std::collections::HashMap::new();
    let mut rest = rest.iter();
    while let Some(flag) = rest.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected {flag:?}\n{USAGE}"))?;
        let value = rest
            .next()
            .ok_or_else(|| format!("--{name} needs a value"))?;
        flags.insert(name.to_string(), value.clone());
    }
    let take = |name: &str| -> Result<String, String> {
        flags
            .get(name)
            .cloned()
            .ok_or_else(|| format!("--{name} is missing\n{USAGE}"))
    };

    match command.as_str() {
        "load" => Ok(Command::Load(LoadOptions {
            label: take("label")?,
            scep_url: take("url")?,
            challenge: take("challenge")?,
            requests: count(&take("requests")?, MAX_REQUESTS, "--requests")?,
            levels: list(&take("concurrency")?, MAX_CONCURRENCY, "--concurrency")?,
            server_pid: flags
                .get("server-pid")
                .map(|pid| {
                    pid.parse::<u32>()
                        .map_err(|_| format!("--server-pid: {pid:?} is not a process id"))
                })
                .transpose()?,
            caps_per_request: flags
                .get("caps-per-request")
                .map(|n| match n.parse::<usize>() {
                    Ok(n) if n <= MAX_CAPS_PER_REQUEST => Ok(n),
                    _ => Err(format!(
                        "--caps-per-request: {n:?} is not a number from 0 to \
                         {MAX_CAPS_PER_REQUEST}"
                    )),
                })
                .transpose()?
                .unwrap_or(CAPS_PER_REQUEST),
            reuse: match flags.get("connections").map(String::as_str) {
                None | Some("close") => false,
                Some("reuse") => true,
                Some(other) => {
                    return Err(format!("--connections: {other:?} is not reuse or close"))
                }
            },
        })),
        "phases" => Ok(Command::Phases(phases::PhasesOptions {
            url: take("url")?,
            device_ca_dir: take("device-ca")?.into(),
            state_dir: take("state")?.into(),
            requests: count(&take("requests")?, MAX_REQUESTS, "--requests")?,
            levels: list(&take("concurrency")?, MAX_CONCURRENCY, "--concurrency")?,
            server_pid: take("server-pid")?
                .parse()
                .map_err(|_| "--server-pid: not a process id".to_string())?,
            curve: match flags.get("curve") {
                Some(curve) => list(curve, MAX_CURVE_DEVICES, "--curve")?,
                None => Vec::new(),
            },
            curve_concurrency: match flags.get("curve-concurrency") {
                Some(c) => count(c, MAX_CONCURRENCY, "--curve-concurrency")?,
                None => 8,
            },
        })),
        "device-ca" => Ok(Command::DeviceCa(take("dir")?.into())),
        "rsa" => Ok(Command::Rsa {
            signatures: count(&take("signatures")?, MAX_SIGNATURES, "--signatures")?,
            threads: list(&take("threads")?, MAX_THREADS, "--threads")?,
        }),
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

/// A number in 1..=max.
fn count(text: &str, max: usize, what: &str) -> Result<usize, String> {
    text.parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("{what}: {text:?} is not a number from 1 to {max}"))
}

/// Comma-separated numbers in 1..=max.
fn list(text: &str, max: usize, what: &str) -> Result<Vec<usize>, String> {
    text.split(',').map(|n| count(n, max, what)).collect()
}

/// A prepared request and what its reply must echo.
struct Prepared {
    body: Vec<u8>,
    transaction_id: String,
    sender_nonce: [u8; message::NONCE_LEN],
}

/// The requester: one key, one throwaway certificate for it.
struct Requester {
    key: RsaPrivateKey,
    certificate: Vec<u8>,
}

/// Runs every level against one server and prints a JSON line per level.
fn load(options: &LoadOptions) -> Result<(), String> {
    let authorities = get_ca_cert(&options.scep_url)?;
    let key = RsaPrivateKey::generate(2048).map_err(|err| format!("requester key: {err}"))?;
    let certificate = throwaway_certificate(&key)?;
    let requester = Requester { key, certificate };

    // Every request is built before the first is sent.
    let warmup = prepare(options, &authorities, &requester, "warmup", WARMUP_REQUESTS)?;
    let mut levels = Vec::new();
    for &concurrency in &options.levels {
        let tag = format!("c{concurrency}");
        levels.push(prepare(
            options,
            &authorities,
            &requester,
            &tag,
            options.requests,
        )?);
    }

    let url = format!("{}?operation=PKIOperation", options.scep_url);
    let (warm, _, _) = run(&url, &warmup, 1, options.reuse);
    let warm_failures = check(&options.label, &warm, &warmup, &authorities, &requester);
    if warm_failures > 0 {
        return Err(format!(
            "{}: {warm_failures} of {WARMUP_REQUESTS} warm-up requests failed; is the \
             challenge right?",
            options.label
        ));
    }

    let caps_url = format!("{}?operation=GetCACaps", options.scep_url);
    let caps_target = Target {
        method: "GET",
        url: &caps_url,
        content_type: "",
    };
    for (&concurrency, requests) in options.levels.iter().zip(&levels) {
        if options.caps_per_request > 0 {
            http_floor(options, &caps_target, requests.len(), concurrency)?;
        }

        let server_before = options.server_pid.map(process_cpu).transpose()?;
        let (replies, elapsed, driver_cpu) = run(&url, requests, concurrency, options.reuse);
        let server_cpu = match (options.server_pid, server_before) {
            (Some(pid), Some(before)) => Some(process_cpu(pid)?.saturating_sub(before)),
            _ => None,
        };
        let failures = check(&options.label, &replies, requests, &authorities, &requester);
        let mut latencies: Vec<Duration> = replies.iter().map(|reply| reply.latency).collect();
        latencies.sort();
        let seconds = elapsed.as_secs_f64();
        // A FAILURE answer costs a server less than an issuance, so throughput counts
        // certificates issued; answers of any kind are reported beside it.
        let issued = requests.len() - failures;
        // CPU per issuance, in milliseconds (the server's: null without --server-pid).
        let per_issued = |cpu: Duration| cpu.as_secs_f64() * 1000.0 / issued.max(1) as f64;
        let server_cpu_ms =
            server_cpu.map_or("null".to_string(), |cpu| format!("{:.3}", per_issued(cpu)));
        println!(
            "{{\"server\": \"{}\", \"concurrency\": {concurrency}, \"requests\": {}, \
             \"failures\": {failures}, \"seconds\": {seconds:.3}, \
             \"issued_per_second\": {:.1}, \"answers_per_second\": {:.1}, \
             \"p50_ms\": {:.1}, \"p99_ms\": {:.1}, \
             \"server_cpu_ms_per_issued\": {server_cpu_ms}, \
             \"driver_cpu_ms_per_request\": {:.3}, \"connections\": \"{}\"}}",
            options.label,
            requests.len(),
            issued as f64 / seconds,
            requests.len() as f64 / seconds,
            percentile(&latencies, 50),
            percentile(&latencies, 99),
            driver_cpu.as_secs_f64() * 1000.0 / requests.len().max(1) as f64,
            if options.reuse { "reuse" } else { "close" },
        );
    }
    Ok(())
}

/// Times `--caps-per-request` (default [`CAPS_PER_REQUEST`]) x `requests` GetCACaps at
/// `concurrency` and prints their JSON line (`"stage": "caps"`): what HTTP alone costs the
/// server and the driver.
fn http_floor(
    options: &LoadOptions,
    target: &Target<'_>,
    requests: usize,
    concurrency: usize,
) -> Result<(), String> {
    let bodies: Vec<&[u8]> = vec![&[]; requests * options.caps_per_request];
    let server_before = options.server_pid.map(process_cpu).transpose()?;
    let (replies, elapsed, driver_cpu) = send_all(target, &bodies, concurrency, options.reuse);
    let server_cpu = match (options.server_pid, server_before) {
        (Some(pid), Some(before)) => Some(process_cpu(pid)?.saturating_sub(before)),
        _ => None,
    };

    let failures = replies
        .iter()
        .filter(|reply| {
            !reply
                .result
                .as_ref()
                .is_ok_and(|body| body.windows(5).any(|word| word == b"SHA-2"))
        })
        .count();
    let per_request = |cpu: Duration| cpu.as_secs_f64() * 1000.0 / bodies.len().max(1) as f64;
    let server_cpu_ms =
        server_cpu.map_or("null".to_string(), |cpu| format!("{:.4}", per_request(cpu)));
    println!(
        "{{\"server\": \"{}\", \"stage\": \"caps\", \"concurrency\": {concurrency}, \
         \"requests\": {}, \"failures\": {failures}, \"per_second\": {:.1}, \
         \"server_cpu_ms_per_request\": {server_cpu_ms}, \
         \"driver_cpu_ms_per_request\": {:.4}}}",
        options.label,
        bodies.len(),
        bodies.len() as f64 / elapsed.as_secs_f64(),
        per_request(driver_cpu),
    );
    Ok(())
}

/// User plus system CPU time a process has used so far, its ended threads included
/// (`/proc/PID/stat` fields 14 and 15, in clock ticks: 10 ms on Linux, so a level should run
/// for seconds of CPU time to be read to a few percent).
pub(crate) fn process_cpu(pid: u32) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|err| format!("{path}: {err}"))?;
    // The command name (field 2) is in parentheses and may hold spaces; count after it.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("{path}: unexpected format"))?;
    let mut fields = after_name.split_whitespace().skip(11);
    let mut ticks = |what: &str| -> Result<u64, String> {
        fields
            .next()
            .and_then(|field| field.parse::<u64>().ok())
            .ok_or_else(|| format!("{path}: no {what} time"))
    };
    let total = ticks("user")? + ticks("system")?;
    Ok(Duration::from_millis(total * 1000 / CLOCK_TICKS_PER_SECOND))
}

/// `sysconf(_SC_CLK_TCK)`, the unit of `/proc/PID/stat` times: 100 on every Linux platform
/// otad runs on (the kernel's USER_HZ).
const CLOCK_TICKS_PER_SECOND: u64 = 100;

/// CPU time the calling thread has used so far, to the nanosecond
/// (`/proc/thread-self/schedstat`, field 1).
pub(crate) fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = stat.split_whitespace().next()?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// The `p`th percentile (nearest rank) of sorted latencies, in milliseconds.
pub(crate) fn percentile(sorted: &[Duration], p: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted
        .get(rank - 1)
        .map_or(0.0, |latency| latency.as_secs_f64() * 1000.0)
}

/// GetCACert, read the way `otad simulate` reads it.
pub(crate) fn get_ca_cert(scep_url: &str) -> Result<Authorities, String> {
    let url = format!("{scep_url}?operation=GetCACert");
    let response = httpclient::get(&url).map_err(|err| format!("GET {url}: {err}"))?;
    if response.status != 200 {
        return Err(format!("GET {url}: status {}", response.status));
    }
    let media = response
        .content_type
        .as_deref()
        .and_then(|value| value.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_string();
    read_ca_cert(&media, &response.body).map_err(|err| format!("GetCACert: {err}"))
}

/// The self-signed certificate a PKCSReq is signed with (RFC 8894 §2.3).
pub(crate) fn throwaway_certificate(key: &RsaPrivateKey) -> Result<Vec<u8>, String> {
    let now = time::OffsetDateTime::now_utc();
    let mut params = rcgen::CertificateParams::default();
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, "otad-bench requester");
    params.distinguished_name = name;
    params.not_before = now - THROWAWAY_VALIDITY;
    params.not_after = now + THROWAWAY_VALIDITY;
    let signer = key.rcgen_key().map_err(|err| format!("throwaway: {err}"))?;
    params
        .self_signed(&signer)
        .map(|certificate| certificate.der().to_vec())
        .map_err(|err| format!("throwaway certificate: {err}"))
}

/// `count` PKCSReqs, each with its own CN, transactionID and senderNonce.
fn prepare(
    options: &LoadOptions,
    authorities: &Authorities,
    requester: &Requester,
    tag: &str,
    count: usize,
) -> Result<Vec<Prepared>, String> {
    (0..count)
        .map(|n| {
            let common_name = format!("bench-{}-{tag}-{n}", options.label);
            let request = csr::build(&requester.key, &common_name, Some(&options.challenge))
                .map_err(|err| format!("CSR: {err}"))?;
            let transaction_id = format!("BENCH-{}-{tag}-{n}", options.label.to_uppercase());
            let sender_nonce = message::new_nonce();
            let params = RequestParams {
                message_type: MessageType::PkcsReq,
                transaction_id: &transaction_id,
                sender_nonce,
                digest: DigestAlgorithm::Sha256,
                cipher: ContentCipher::Aes128Cbc,
                recipient: authorities.recipient(),
                signer_certificate: &requester.certificate,
                signer_key: requester.key.signing(),
            };
            let body = message::build_request(&request, &params)?;
            Ok(Prepared {
                body,
                transaction_id,
                sender_nonce,
            })
        })
        .collect()
}

/// One reply as received, and how long it took.
pub(crate) struct Reply {
    pub result: Result<Vec<u8>, String>,
    pub latency: Duration,
}

/// Posts every PKCSReq as [`send_all`] does.
fn run(
    url: &str,
    requests: &[Prepared],
    concurrency: usize,
    reuse: bool,
) -> (Vec<Reply>, Duration, Duration) {
    let bodies: Vec<&[u8]> = requests
        .iter()
        .map(|request| request.body.as_slice())
        .collect();
    let target = Target {
        method: "POST",
        url,
        content_type: PKI_MESSAGE,
    };
    send_all(&target, &bodies, concurrency, reuse)
}

/// The media type of a SCEP pkiMessage.
const PKI_MESSAGE: &str = "application/x-pki-message";

/// Where and how [`send_all`] sends its requests.
pub(crate) struct Target<'a> {
    /// "GET" (the bodies are ignored) or "POST".
    pub method: &'a str,
    /// An http:// URL.
    pub url: &'a str,
    /// The Content-Type of a POST.
    pub content_type: &'a str,
}

/// Sends one request per body from `concurrency` threads, each taking the next unsent one;
/// returns the replies in request order, the wall time of the whole level and the CPU time
/// the sending threads used.
pub(crate) fn send_all(
    target: &Target<'_>,
    requests: &[&[u8]],
    concurrency: usize,
    reuse: bool,
) -> (Vec<Reply>, Duration, Duration) {
    let next = AtomicUsize::new(0);
    let cpu = Mutex::new(Duration::ZERO);
    let replies: Mutex<Vec<Option<Reply>>> = Mutex::new(
        std::iter::repeat_with(|| None)
            .take(requests.len())
            .collect(),
    );
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..concurrency {
            scope.spawn(|| {
                let before = thread_cpu();
                let mut connection = None;
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(request) = requests.get(index) else {
                        break;
                    };
                    let sent = Instant::now();
                    let result = if reuse {
                        send_reusing(&mut connection, target, request)
                    } else {
                        send(target, request)
                    };
                    let reply = Reply {
                        result,
                        latency: sent.elapsed(),
                    };
                    if let Ok(mut replies) = replies.lock() {
                        if let Some(slot) = replies.get_mut(index) {
                            *slot = Some(reply);
                        }
                    }
                }
                if let (Some(before), Some(after), Ok(mut cpu)) = (before, thread_cpu(), cpu.lock())
                {
                    *cpu += after.saturating_sub(before);
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let replies = replies
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .map(|reply| {
            reply.unwrap_or(Reply {
                result: Err("no reply recorded".into()),
                latency: Duration::ZERO,
            })
        })
        .collect();
    (replies, elapsed, cpu.into_inner().unwrap_or_default())
}

/// One request on a connection of its own; the body of a 200 answer.
fn send(target: &Target<'_>, body: &[u8]) -> Result<Vec<u8>, String> {
    let response = if target.method == "GET" {
        httpclient::get(target.url)
    } else {
        httpclient::post(target.url, target.content_type, body)
    }
    .map_err(|err| format!("{}: {err}", target.method))?;
    if response.status != 200 {
        return Err(format!("status {}", response.status));
    }
    Ok(response.body)
}

/// Most bytes of a response head the keep-alive client reads.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Largest response body the keep-alive client reads.
const MAX_RESPONSE_BODY: usize = 1024 * 1024;
/// Socket timeout of the keep-alive client.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request over `connection`, opening one when there is none and keeping it
/// when the server does (HTTP/1.1 keep-alive, Content-Length framing only). A kept
/// connection the server has closed meanwhile is replaced once, when nothing of a response
/// had arrived on it.
fn send_reusing(
    connection: &mut Option<std::net::TcpStream>,
    target: &Target<'_>,
    body: &[u8],
) -> Result<Vec<u8>, String> {
    let rest = target
        .url
        .strip_prefix("http://")
        .ok_or("url: not http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut request = if target.method == "GET" {
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n").into_bytes()
    } else {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\n\
             Content-Type: {}\r\nContent-Length: {}\r\n\r\n",
            target.content_type,
            body.len()
        )
        .into_bytes()
    };
    if target.method != "GET" {
        request.extend_from_slice(body);
    }

    let reused = connection.is_some();
    match exchange(connection, authority, &request) {
        Err((_, answered)) if reused && !answered => {
            *connection = None;
            exchange(connection, authority, &request).map_err(|(err, _)| err)
        }
        other => other.map_err(|(err, _)| err),
    }
}

/// One request and its response on `connection` (opened if `None`, closed on any failure or
/// when the server says so). The error says whether any byte of a response had arrived.
fn exchange(
    connection: &mut Option<std::net::TcpStream>,
    authority: &str,
    request: &[u8],
) -> Result<Vec<u8>, (String, bool)> {
    use std::io::{Read, Write};
    let stream = match connection {
        Some(stream) => stream,
        None => {
            let stream = std::net::TcpStream::connect(authority)
                .map_err(|err| (format!("connect: {err}"), false))?;
            let _ = stream.set_nodelay(true);
            let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
            let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
            connection.insert(stream)
        }
    };
    let result = (|| {
        stream
            .write_all(request)
            .map_err(|err| (format!("send: {err}"), false))?;
        let mut buffer = Vec::with_capacity(8192);
        let mut chunk = [0u8; 16 * 1024];
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            if buffer.len() > MAX_RESPONSE_HEAD {
                return Err(("response head too large".to_string(), true));
            }
            match stream.read(&mut chunk) {
                Ok(0) => return Err(("closed before a response".into(), !buffer.is_empty())),
                Ok(n) => buffer.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(err) => return Err((format!("receive: {err}"), !buffer.is_empty())),
            }
        };
        let head = String::from_utf8_lossy(buffer.get(..head_end).unwrap_or_default());
        let status = head.split(' ').nth(1).unwrap_or_default().to_string();
        let mut length = None;
        let mut chunked = false;
        let mut closes = false;
        for line in head.split("\r\n").skip(1) {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let name = name.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.trim().eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                closes |= value.to_ascii_lowercase().contains("close");
            }
        }
        let mut rest = buffer.get(head_end + 4..).unwrap_or_default().to_vec();
        let mut fill = |rest: &mut Vec<u8>, want: usize| -> Result<(), (String, bool)> {
            while rest.len() < want {
                match stream.read(&mut chunk) {
                    Ok(0) => return Err(("response body truncated".to_string(), true)),
                    Ok(n) => rest.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                    Err(err) => return Err((format!("receive: {err}"), true)),
                }
            }
            Ok(())
        };
        let body = if chunked {
            // size CRLF data CRLF ... 0 CRLF CRLF (Go's net/http sends no trailers).
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(at) = rest.windows(2).position(|w| w == b"\r\n") {
                        break at;
                    }
                    if rest.len() > 64 {
                        return Err(("bad chunk size line".to_string(), true));
                    }
                    let want = rest.len() + 1;
                    fill(&mut rest, want)?;
                };
                let size_text = String::from_utf8_lossy(rest.get(..line_end).unwrap_or_default())
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                let size = usize::from_str_radix(&size_text, 16)
                    .map_err(|_| ("bad chunk size".to_string(), true))?;
                if body.len() + size > MAX_RESPONSE_BODY {
                    return Err(("response body too large".to_string(), true));
                }
                fill(&mut rest, line_end + 2 + size + 2)?;
                body.extend_from_slice(
                    rest.get(line_end + 2..line_end + 2 + size)
                        .unwrap_or_default(),
                );
                rest.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break body;
                }
            }
        } else {
            let length = length
                .filter(|n| *n <= MAX_RESPONSE_BODY)
                .ok_or(("response without a usable Content-Length".to_string(), true))?;
            fill(&mut rest, length)?;
            rest
        };
        if !chunked && length.is_some_and(|n| body.len() > n) {
            return Err(("more bytes than the response".to_string(), true));
        }
        Ok((status, body, closes))
    })();
    match result {
        Ok((status, body, closes)) => {
            if closes {
                *connection = None;
            }
            if status == "200" {
                Ok(body)
            } else {
                Err((format!("status {status}"), true))
            }
        }
        Err(err) => {
            *connection = None;
            Err(err)
        }
    }
}

/// Failures among the replies: transport errors, and CertReps that are not a verified
/// SUCCESS for this transaction holding a certificate for our key. The first is told on
/// stderr, with the server's `label`.
fn check(
    label: &str,
    replies: &[Reply],
    requests: &[Prepared],
    authorities: &Authorities,
    requester: &Requester,
) -> usize {
    let signers = authorities.signers();
    let ours = requester.key.public_key_spki_der();
    let mut failures = 0;
    let mut first_failure = None;
    for (reply, request) in replies.iter().zip(requests) {
        let verdict = reply.result.clone().and_then(|body| {
            let parsed = message::parse_reply(
                &body,
                &signers,
                &requester.certificate,
                requester.key.decrypting(),
            )?;
            if parsed.status != PkiStatus::Success {
                let fail_info = parsed
                    .fail_info
                    .map_or_else(|| "no failInfo".to_string(), |info| format!("{info:?}"));
                return Err(format!("CertRep {:?}, failInfo {fail_info}", parsed.status));
            }
            if parsed.transaction_id != request.transaction_id
                || parsed.recipient_nonce != request.sender_nonce
            {
                return Err("CertRep for another transaction".into());
            }
            let issued = parsed
                .certificates
                .iter()
                .any(|c| cert::spki_der(c).is_ok_and(|spki| spki == ours));
            if issued {
                Ok(())
            } else {
                Err("no certificate for our key".into())
            }
        });
        if let Err(err) = verdict {
            failures += 1;
            first_failure.get_or_insert(err);
        }
    }
    if let Some(err) = first_failure {
        eprintln!("otad-bench: {label}: first failure: {err}");
    }
    failures
}

/// RSA-2048 PKCS#1 v1.5 SHA-256 signatures per second on each thread count; one JSON line
/// each.
fn rsa_bound(signatures: usize, threads: &[usize]) -> Result<(), String> {
    let key = RsaPrivateKey::generate(2048).map_err(|err| format!("rsa key: {err}"))?;
    let pair = RsaKeyPair::from_pkcs8(key.to_pkcs8_der()).map_err(|err| err.to_string())?;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let message = [0x5au8; 64];

    for &count in threads {
        let started = Instant::now();
        let failed = AtomicUsize::new(0);
        let cpu = Mutex::new(Duration::ZERO);
        std::thread::scope(|scope| {
            for _ in 0..count {
                scope.spawn(|| {
                    let before = thread_cpu();
                    let mut signature = vec![0u8; pair.public_modulus_len()];
                    for _ in 0..signatures {
                        if pair
                            .sign(&RSA_PKCS1_SHA256, &rng, &message, &mut signature)
                            .is_err()
                        {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if let (Some(before), Some(after), Ok(mut cpu)) =
                        (before, thread_cpu(), cpu.lock())
                    {
                        *cpu += after.saturating_sub(before);
                    }
                });
            }
        });
        let seconds = started.elapsed().as_secs_f64();
        let total = count * signatures;
        let cpu = cpu.into_inner().unwrap_or_default();
        println!(
            "{{\"threads\": {count}, \"signatures\": {total}, \"failures\": {}, \
             \"seconds\": {seconds:.3}, \"per_second\": {:.1}, \
             \"cpu_us_per_signature\": {:.1}}}",
            failed.load(Ordering::Relaxed),
            total as f64 / seconds,
            cpu.as_secs_f64() * 1e6 / total.max(1) as f64
        );
    }

    // The public-key operation beside them (a signature verified, a key encrypted to):
    // what each stage must do besides its private-key operations, on one thread.
    let mut signature = vec![0u8; pair.public_modulus_len()];
    pair.sign(&RSA_PKCS1_SHA256, &rng, &message, &mut signature)
        .map_err(|err| format!("rsa: {err}"))?;
    let public = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        aws_lc_rs::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec(),
    );
    let before = thread_cpu();
    let mut failed = 0;
    for _ in 0..signatures {
        if public.verify(&message, &signature).is_err() {
            failed += 1;
        }
    }
    let cpu = thread_cpu()
        .zip(before)
        .map_or(Duration::ZERO, |(after, before)| {
            after.saturating_sub(before)
        });
    println!(
        "{{\"verify\": 2048, \"verifications\": {signatures}, \"failures\": {failed}, \
         \"cpu_us_per_verification\": {:.1}}}",
        cpu.as_secs_f64() * 1e6 / signatures.max(1) as f64
    );
    Ok(())
}
