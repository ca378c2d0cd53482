//! The webhook: a background thread that POSTs every event of the log, in order, to
//! `events.webhook`, from the log itself as its on-disk queue.
//!
//! Delivery is at least once. The worker keeps a cursor (`events.cursor`: generation and
//! byte offset) over `events.jsonl` and its rotated files, and advances it atomically after
//! each 2xx answer; anything else, or no answer within the timeouts, is retried with a
//! doubling backoff capped at [`MAX_BACKOFF`]. A crash between a 2xx and the cursor's write
//! sends that one event again after the restart, so each POST carries `X-Otad-Event-Id`
//! (generation and offset), the same on every retry, for the receiver to drop duplicates.
//!
//! Enrollment never waits for the webhook: the request path only appends to the log and
//! wakes this thread. With `events.webhook_secret_file`, each body is signed with
//! HMAC-SHA256 (aws-lc-rs) under that key, sent as `X-Otad-Signature: sha256=<hex>`.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use log::{error, info, warn};

use super::{read_cursor, read_lines, write_cursor, Cursor, EventLog, EventSettings};
use crate::httpclient::{self, RequestOptions};

/// Connect timeout of one POST.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of each read and write of one POST.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most time one delivery may take, response included (a receiver trickling its answer).
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(30);
/// First wait after a failed POST; it doubles per failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between two tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the worker looks at the log when nothing woke it (events the CLI wrote).
pub const IDLE_POLL: Duration = Duration::from_secs(1);
/// Lines read from the log at a time.
const BATCH_LINES: usize = 64;
/// Longest HMAC key file read.
const MAX_SECRET_BYTES: u64 = 4096;
/// Shortest HMAC key accepted.
const MIN_SECRET_BYTES: usize = 16;

/// Header carrying the HMAC of the body.
pub const SIGNATURE_HEADER: &str = "X-Otad-Signature";
/// Header carrying the event's stable id, `<generation>-<offset>`.
pub const EVENT_ID_HEADER: &str = "X-Otad-Event-Id";

/// Everything one delivery needs, made once at start-up.
pub struct Webhook {
    /// The URL posted to, without the user and password (those went into `options`).
    url: String,
    /// The configured URL as logs show it ([`httpclient::mask_url`]).
    shown: String,
    options: RequestOptions,
    key: Option<aws_lc_rs::hmac::Key>,
}

impl Webhook {
    /// Prepares the webhook of `settings` (none if `events.webhook` is empty): checks the
    /// URL, reads the HMAC key and, for https, the roots, so that a mistake stops the server
    /// at start-up (and fails `otad check-config`). A user and password in the URL
    /// (`https://user:pass@host/`) are sent as HTTP Basic authentication.
    pub fn prepare(settings: &EventSettings) -> Result<Option<Webhook>, String> {
        let Some(url) = &settings.webhook else {
            return Ok(None);
        };
        let shown = httpclient::mask_url(url);
        let (url, credentials) =
            split_credentials(url).map_err(|why| format!("events.webhook {shown}: {why}"))?;
        let https = url.to_ascii_lowercase().starts_with("https://");
        httpclient::check_url(&url, https)
            .map_err(|err| format!("events.webhook {shown}: {err}"))?;
        let key = match &settings.webhook_secret_file {
            None => None,
            Some(path) => Some(read_key(path)?),
        };
        let tls = if https {
            Some(Arc::new(crate::httpclient::tls_config(
                "events.webhook_ca",
                settings.webhook_ca.as_deref(),
            )?))
        } else {
            None
        };
        let headers = credentials
            .map(|basic| vec![("Authorization".to_string(), basic)])
            .unwrap_or_default();
        Ok(Some(Webhook {
            url,
            shown,
            options: RequestOptions {
                connect_timeout: CONNECT_TIMEOUT,
                io_timeout: IO_TIMEOUT,
                total_timeout: TOTAL_TIMEOUT,
                headers,
                tls,
                user_agent: concat!("otad/", env!("CARGO_PKG_VERSION")),
            },
            key,
        }))
    }

    /// The URL as log lines show it ([`httpclient::mask_url`]).
    pub fn shown_url(&self) -> &str {
        &self.shown
    }

    /// POSTs one event line; `Ok` only for a 2xx answer.
    pub fn deliver(&self, id: &str, body: &[u8]) -> Result<(), String> {
        let mut options = self.options.clone();
        options
            .headers
            .push((EVENT_ID_HEADER.to_string(), id.to_string()));
        if let Some(key) = &self.key {
            options
                .headers
                .push((SIGNATURE_HEADER.to_string(), signature(key, body)));
        }
        let response = httpclient::post_with(&self.url, "application/json", body, &options)
            .map_err(|err| err.to_string())?;
        if (200..300).contains(&response.status) {
            Ok(())
        } else {
            Err(format!("answered {}", response.status))
        }
    }
}

/// Longest user or password taken from the webhook URL, after percent-decoding.
const MAX_CREDENTIAL_BYTES: usize = 1024;

/// The URL without a `user:password@` before its host, and that user and password as an
/// HTTP Basic `Authorization` value (RFC 7617), percent-decoded first (RFC 3986 section
/// 3.2.1); the URL as it is when it names no user.
fn split_credentials(url: &str) -> Result<(String, Option<String>), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok((url.to_string(), None));
    };
    // The authority ends where httpclient ends it: at the first `/`, `?` or `#`.
    let (authority, path) = httpclient::host_part_and_rest(rest);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return Ok((url.to_string(), None));
    };
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let user = percent_decode(user).ok_or("the user is not valid percent-encoding")?;
    let password = percent_decode(password).ok_or("the password is not valid percent-encoding")?;
    if user.is_empty() || user.contains(':') {
        return Err("the user is empty or holds a `:` (HTTP Basic cannot send that)".into());
    }
    let basic = format!("{user}:{password}");
    if basic.len() > MAX_CREDENTIAL_BYTES || basic.chars().any(char::is_control) {
        return Err(format!(
            "the user and password must be printable and {MAX_CREDENTIAL_BYTES} bytes at most"
        ));
    }
    let encoded =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, basic.as_bytes());
    Ok((
        format!("{scheme}://{host}{path}"),
        Some(format!("Basic {encoded}")),
    ))
}

/// `%XX` escapes decoded; `None` for a broken escape or a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut input = text.bytes();
    while let Some(byte) = input.next() {
        if byte != b'%' {
            bytes.push(byte);
            continue;
        }
        let high = char::from(input.next()?).to_digit(16)?;
        let low = char::from(input.next()?).to_digit(16)?;
        bytes.push(u8::try_from(high * 16 + low).ok()?);
    }
    String::from_utf8(bytes).ok()
}

/// `sha256=<hex of HMAC-SHA256(key, body)>`.
pub fn signature(key: &aws_lc_rs::hmac::Key, body: &[u8]) -> String {
    let tag = aws_lc_rs::hmac::sign(key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn read_key(path: &Path) -> Result<aws_lc_rs::hmac::Key, String> {
    use std::io::Read;
    let shown = path.display();
    let file = crate::store::fsutil::open_regular(path)
        .map_err(|err| format!("events.webhook_secret_file: {shown}: cannot read: {err}"))?;
    let mut text = String::new();
    file.take(MAX_SECRET_BYTES)
        .read_to_string(&mut text)
        .map_err(|err| format!("events.webhook_secret_file: {shown}: cannot read: {err}"))?;
    let secret = text.lines().next().unwrap_or_default().trim();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "events.webhook_secret_file: {shown}: the first line must hold a key of at least \
             {MIN_SECRET_BYTES} characters"
        ));
    }
    Ok(aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        secret.as_bytes(),
    ))
}

/// Starts the worker thread that follows `log` into `webhook`.
pub fn start(log: Arc<EventLog>, webhook: Webhook) -> Result<(), String> {
    std::thread::Builder::new()
        .name("webhook".into())
        .spawn(move || run(&log, &webhook))
        .map(|_| ())
        .map_err(|err| format!("cannot start the webhook thread: {err}"))
}

/// Where delivery resumes: the saved cursor, or the end of the log for a webhook that never
/// ran (turning one on does not replay the past), saved at once.
pub fn starting_cursor(log: &EventLog) -> std::io::Result<Cursor> {
    if let Some(cursor) = read_cursor(log.dir())? {
        return Ok(cursor);
    }
    let end = log.end()?;
    write_cursor(log.dir(), end)?;
    Ok(end)
}

fn run(log: &EventLog, webhook: &Webhook) {
    let mut cursor = loop {
        match starting_cursor(log) {
            Ok(cursor) => break cursor,
            Err(err) => {
                error!("events.webhook: {err}; retrying in {MAX_BACKOFF:?}");
                std::thread::sleep(MAX_BACKOFF);
            }
        }
    };
    info!(
        "events.webhook: delivering to {} from generation {} offset {}",
        webhook.shown_url(),
        cursor.generation,
        cursor.offset
    );
    let mut seen = log.appended();
    loop {
        match step(
            log,
            cursor,
            &mut |id, body| deliver_until_accepted(webhook, id, body),
            &mut |c| write_cursor(log.dir(), c),
        ) {
            Ok(Step::Moved(next)) => cursor = next,
            Ok(Step::Idle) => log.wait_for_append(&mut seen, IDLE_POLL),
            Err(err) => {
                error!("events.webhook: {err}; retrying in {MAX_BACKOFF:?}");
                std::thread::sleep(MAX_BACKOFF);
            }
        }
    }
}

/// Posts until a 2xx, waiting longer after each failure.
fn deliver_until_accepted(webhook: &Webhook, id: &str, body: &[u8]) {
    let mut backoff = FIRST_BACKOFF;
    let mut failures = 0u32;
    while let Err(err) = webhook.deliver(id, body) {
        failures = failures.saturating_add(1);
        // A dead webhook logs once per try, and tries come at most every MAX_BACKOFF.
        warn!("events.webhook: event {id}: {err} (try {failures}); next try in {backoff:?}");
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// What one pass over the log did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The cursor moved here (events delivered, or the next file begun).
    Moved(Cursor),
    /// Nothing new to send.
    Idle,
}

/// One pass: reads up to a batch of lines from the cursor, hands each to `deliver` (which
/// returns once it was accepted) and saves the cursor after each with `save`; at the end of a
/// rotated file, moves to the next generation.
pub fn step(
    log: &EventLog,
    cursor: Cursor,
    deliver: &mut dyn FnMut(&str, &[u8]),
    save: &mut dyn FnMut(Cursor) -> std::io::Result<()>,
) -> std::io::Result<Step> {
    let (file, live) = log.open_at(cursor)?;
    let Some(file) = file else {
        // A rotated file deleted before delivery (the backlog cap): rotation logged the loss.
        let next = Cursor {
            generation: cursor.generation.saturating_add(1),
            offset: 0,
        };
        save(next)?;
        return Ok(Step::Moved(next));
    };
    let lines = read_lines(&mut BufReader::new(file), cursor.offset, BATCH_LINES)?;
    if lines.is_empty() {
        if cursor.generation >= live {
            return Ok(Step::Idle);
        }
        let next = Cursor {
            generation: cursor.generation.saturating_add(1),
            offset: 0,
        };
        save(next)?;
        log.delivered_file(cursor.generation, live)?;
        return Ok(Step::Moved(next));
    }

    let mut at = cursor;
    for (end, line) in lines {
        let id = format!("{}-{}", at.generation, at.offset);
        match line {
            Some(line) if serde_json::from_slice::<serde_json::Value>(&line).is_ok() => {
                deliver(&id, &line);
            }
            _ => error!("events.webhook: event {id}: not a JSON line; skipped"),
        }
        at.offset = end;
        save(at)?;
    }
    Ok(Step::Moved(at))
}

#[cfg(test)]
mod tests {
    use super::super::{Event, EventSettings, MIN_MAX_SIZE};
    use super::*;

    fn log_in(dir: &Path, max_size: u64) -> EventLog {
        let settings = EventSettings {
            max_size,
            keep: 5,
            webhook: Some("http://127.0.0.1:9/".into()),
            ..EventSettings::default()
        };
        EventLog::open(dir, &settings)
    }

    /// Runs steps until idle, collecting what was delivered.
    fn drain(log: &EventLog, mut cursor: Cursor, delivered: &mut Vec<(String, String)>) -> Cursor {
        loop {
            let step = step(
                log,
                cursor,
                &mut |id, body| {
                    delivered.push((id.to_string(), String::from_utf8_lossy(body).into_owned()))
                },
                &mut |c| write_cursor(log.dir(), c),
            )
            .unwrap();
            match step {
                Step::Moved(next) => cursor = next,
                Step::Idle => return cursor,
            }
        }
    }

    #[test]
    fn the_cursor_follows_the_log_across_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(dir.path(), MIN_MAX_SIZE);
        let start = starting_cursor(&log).unwrap();
        assert_eq!(
            start,
            Cursor {
                generation: 1,
                offset: 0
            }
        );
        for n in 0..40 {
            log.append(
                &Event::new("e").field("n", n).field("pad", "z".repeat(400)),
                0,
            )
            .unwrap();
        }
        assert!(log.generation().unwrap() >= 4, "several rotations");
        let mut delivered = Vec::new();
        let end = drain(&log, start, &mut delivered);
        let numbers: Vec<u64> = delivered
            .iter()
            .map(|(_, body)| {
                serde_json::from_str::<serde_json::Value>(body).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(numbers, (0..40).collect::<Vec<_>>());
        assert_eq!(read_cursor(dir.path()).unwrap(), Some(end));
        assert_eq!(end.generation, log.generation().unwrap());
        let ids: std::collections::BTreeSet<&String> = delivered.iter().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), 40, "ids are unique");

        // Nothing new: idle; one more event: exactly that one.
        delivered.clear();
        drain(&log, end, &mut delivered);
        assert!(delivered.is_empty());
        log.append(&Event::new("late"), 0).unwrap();
        drain(&log, end, &mut delivered);
        assert_eq!(delivered.len(), 1);
        assert!(delivered[0].1.contains("\"late\""));
    }

    #[test]
    fn a_crash_before_the_cursor_moves_sends_the_event_again() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(dir.path(), MIN_MAX_SIZE * 16);
        let start = starting_cursor(&log).unwrap();
        for kind in ["one", "two", "three"] {
            log.append(&Event::new(kind), 0).unwrap();
        }
        // The receiver accepts "one" and "two", but the process dies before saving the
        // cursor after "two".
        let mut accepted = Vec::new();
        let mut saves = 0;
        let crashed = step(
            &log,
            start,
            &mut |id, body| {
                accepted.push((id.to_string(), String::from_utf8_lossy(body).into_owned()))
            },
            &mut |c| {
                saves += 1;
                if saves == 2 {
                    return Err(std::io::Error::other("killed"));
                }
                write_cursor(log.dir(), c)
            },
        );
        assert!(crashed.is_err());
        assert_eq!(accepted.len(), 2);

        // After the restart: "two" again (same id), then "three".
        let resumed = starting_cursor(&log).unwrap();
        let mut again = Vec::new();
        drain(&log, resumed, &mut again);
        let kinds: Vec<String> = again
            .iter()
            .map(|(_, b)| {
                serde_json::from_str::<serde_json::Value>(b).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(kinds, ["two", "three"]);
        assert_eq!(
            again[0].0, accepted[1].0,
            "a redelivery carries the same id"
        );
    }

    #[test]
    fn a_webhook_that_never_ran_starts_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(dir.path(), MIN_MAX_SIZE * 16);
        log.append(&Event::new("before"), 0).unwrap();
        let start = starting_cursor(&log).unwrap();
        log.append(&Event::new("after"), 0).unwrap();
        let mut delivered = Vec::new();
        drain(&log, start, &mut delivered);
        assert_eq!(delivered.len(), 1);
        assert!(delivered[0].1.contains("\"after\""));
    }

    /// A one-connection TLS server on loopback (rustls, a self-signed certificate for
    /// 127.0.0.1) that answers 204 and hands back the request it read.
    fn tls_server() -> (
        u16,
        std::path::PathBuf,
        tempfile::TempDir,
        std::thread::JoinHandle<String>,
    ) {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        use std::io::{Read, Write};

        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("hook-ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(cert.der().to_vec())], key)
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let connection = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            let mut tls = rustls::StreamOwned::new(connection, stream);
            let mut seen = Vec::new();
            let mut buffer = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).contains("\"kind\":\"tls\"}") {
                let n = tls.read(&mut buffer).unwrap();
                assert!(n > 0, "closed early");
                seen.extend_from_slice(&buffer[..n]);
            }
            tls.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .unwrap();
            tls.conn.send_close_notify();
            let _ = tls.flush();
            String::from_utf8_lossy(&seen).into_owned()
        });
        (port, ca, dir, handle)
    }

    #[test]
    fn an_https_webhook_is_reached_through_rustls_with_the_configured_ca() {
        let (port, ca, _dir, server) = tls_server();
        let settings = EventSettings {
            webhook: Some(format!("https://127.0.0.1:{port}/hook")),
            webhook_ca: Some(ca),
            ..EventSettings::default()
        };
        let webhook = Webhook::prepare(&settings).unwrap().unwrap();
        webhook.deliver("1-0", b"{\"kind\":\"tls\"}").unwrap();
        let request = server.join().unwrap();
        assert!(request.starts_with("POST /hook HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("X-Otad-Event-Id: 1-0\r\n"), "{request}");
    }

    #[test]
    fn an_https_webhook_with_an_unknown_ca_is_refused() {
        let (port, _ca, _dir, _server) = tls_server();
        let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let wrong_ca = dir.path().join("other.pem");
        std::fs::write(&wrong_ca, other.cert.pem()).unwrap();
        let settings = EventSettings {
            webhook: Some(format!("https://127.0.0.1:{port}/hook")),
            webhook_ca: Some(wrong_ca),
            ..EventSettings::default()
        };
        let webhook = Webhook::prepare(&settings).unwrap().unwrap();
        let err = webhook.deliver("1-0", b"{}").unwrap_err();
        assert!(
            err.contains("certificate") || err.contains("Unknown"),
            "{err}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let settings = EventSettings {
            webhook_ca: Some(empty),
            ..settings
        };
        let err = Webhook::prepare(&settings).err().unwrap();
        assert!(err.contains("events.webhook"), "{err}");
    }

    #[test]
    fn a_short_secret_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("hook.key");
        std::fs::write(&key, "short\n").unwrap();
        let settings = EventSettings {
            webhook: Some("http://127.0.0.1:9/".into()),
            webhook_secret_file: Some(key),
            ..EventSettings::default()
        };
        let err = Webhook::prepare(&settings).err().unwrap();
        assert!(err.starts_with("events.webhook_secret_file:"), "{err}");
    }

    #[test]
    fn a_user_and_password_in_the_url_go_as_basic_authentication_never_in_the_url() {
        use std::io::{Read, Write};

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut buffer = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).contains("{\"kind\":\"auth\"}") {
                let n = stream.read(&mut buffer).unwrap();
                assert!(n > 0, "closed early");
                seen.extend_from_slice(&buffer[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .unwrap();
            String::from_utf8_lossy(&seen).into_owned()
        });
        let settings = EventSettings {
            webhook: Some(format!(
                "http://hook%40example:pa%3Ass@127.0.0.1:{port}/x?k=v"
            )),
            ..EventSettings::default()
        };
        let webhook = Webhook::prepare(&settings).unwrap().unwrap();
        assert_eq!(
            webhook.shown_url(),
            format!("http://(credentials not shown)@127.0.0.1:{port}/x?(query not shown)")
        );
        webhook.deliver("1-0", b"{\"kind\":\"auth\"}").unwrap();
        let request = server.join().unwrap();
        assert!(request.starts_with("POST /x?k=v HTTP/1.1\r\n"), "{request}");
        // base64("hook@example:pa:ss")
        assert!(
            request.contains("\r\nAuthorization: Basic aG9va0BleGFtcGxlOnBhOnNz\r\n"),
            "{request}"
        );
        assert!(!request.contains("pa%3Ass"), "{request}");

        for (url, why) in [
            ("http://u:s3cr3t%zz@127.0.0.1:9/", "percent-encoding"),
            ("http://:s3cr3t@127.0.0.1:9/", "the user is empty"),
            ("http://u:s3cr3t@127.0.0.1:99999/", "bad port"),
            ("http://u:s3cr3t@/x", "no host"),
        ] {
            let settings = EventSettings {
                webhook: Some(url.into()),
                ..EventSettings::default()
            };
            let err = Webhook::prepare(&settings).err().unwrap();
            assert!(
                err.starts_with("events.webhook http://(credentials not shown)@"),
                "{err}"
            );
            assert!(err.contains(why), "{url}: {err}");
            assert!(!err.contains("s3cr3t"), "{url}: {err}");
        }
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            signature(&key, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
