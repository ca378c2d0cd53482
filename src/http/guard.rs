//! The front door: otad's own acceptor in front of tiny_http.
//!
//! tiny_http reads request heads without bounds, starts a thread per connection, sets no
//! timeouts, and on dropping a request drains its declared body into one allocation of the
//! declared size (so a single `Content-Length: 100000000000000` aborts the process). The guard
//! therefore owns the public socket: it accepts at most `max_connections` clients, reads each
//! request head and body within size limits and one deadline, answers whatever breaks a limit
//! itself, and hands tiny_http only complete, bounded requests over a private Unix socket,
//! with the client's address in [`REMOTE_HEADER`]. One request per connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use log::{debug, warn};

/// The header carrying the client's address from the guard to the handlers. The guard drops
/// any copy a client sends, so the handlers can believe it.
pub const REMOTE_HEADER: &str = "X-Otad-Remote";

/// Largest request head (request line and headers) accepted, in bytes. SCEP GET requests
/// carry their message in the query, so this is generous.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Most headers in one request.
pub const MAX_HEADERS: usize = 64;

/// Largest response relayed back from tiny_http (otad's own profiles are a few KiB).
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Longest a single read or write on a client socket may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Stack size of the connection threads (they only parse and copy).
const CONNECTION_STACK: usize = 256 * 1024;

/// Headers the guard sets itself or that concern only the client's hop.
const HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "expect",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

/// The guard's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Client connections handled at once; beyond it a client gets 503 at once.
    pub max_connections: usize,
    /// Largest request body.
    pub max_body: usize,
    /// Deadline for receiving one whole request, head and body.
    pub request_timeout: Duration,
}

/// A request the guard refuses itself, before tiny_http sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status.
    pub status: u16,
    /// One-line reason.
    pub reason: String,
}

fn reject(status: u16, reason: impl Into<String>) -> Rejection {
    Rejection {
        status,
        reason: reason.into(),
    }
}

/// A request head within limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The method.
    pub method: String,
    /// The request target, as sent.
    pub target: String,
    /// Headers in order, hop-by-hop ones and [`REMOTE_HEADER`] removed.
    pub headers: Vec<(String, String)>,
    /// The declared body length (0 without Content-Length).
    pub content_length: usize,
    /// Whether the client waits for `100 Continue`.
    pub expects_continue: bool,
}

/// Parses a request head (everything before the blank line) against the limits.
pub fn parse_head(head: &[u8], max_body: usize) -> Result<Head, Rejection> {
    let text = std::str::from_utf8(head).map_err(|_| reject(400, "request head: not ASCII"))?;
    if !text.is_ascii() {
        return Err(reject(400, "request head: not ASCII"));
    }
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err(reject(400, "request line: not `METHOD TARGET HTTP/1.1`")),
    };
    if method.is_empty() || method.len() > 16 || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(reject(400, "request line: bad method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(reject(400, "request line: bad target"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(reject(
            505,
            "request line: only HTTP/1.0 and HTTP/1.1 are spoken here",
        ));
    }

    let mut headers = Vec::new();
    let mut content_length = None;
    let mut expects_continue = false;
    for line in lines {
        if headers.len() >= MAX_HEADERS {
            return Err(reject(
                431,
                format!("request: more than {MAX_HEADERS} headers"),
            ));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| reject(400, "header: no colon"))?;
        let value = value.trim_matches([' ', '\t']);
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(reject(400, "header: bad name"));
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(reject(400, "header: control character in a value"));
        }
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "content-length" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| reject(400, "Content-Length: not a number"))?;
                if content_length.is_some_and(|m| m != n) {
                    return Err(reject(400, "Content-Length: given twice, differently"));
                }
                content_length = Some(n);
            }
            "transfer-encoding" => {
                return Err(reject(
                    411,
                    "Transfer-Encoding is not accepted; send Content-Length",
                ));
            }
            "expect" if value.eq_ignore_ascii_case("100-continue") => expects_continue = true,
            "expect" => return Err(reject(417, "Expect: only 100-continue is understood")),
            _ => {}
        }
        if !HOP_HEADERS.contains(&lower.as_str()) && !lower.eq_ignore_ascii_case(REMOTE_HEADER) {
            headers.push((name.to_string(), value.to_string()));
        }
    }

    let content_length = content_length.unwrap_or(0);
    if content_length > max_body {
        return Err(reject(
            413,
            format!("request body: over the {max_body} bytes allowed"),
        ));
    }
    Ok(Head {
        method: method.into(),
        target: target.into(),
        headers,
        content_length,
        expects_continue,
    })
}

/// What reading a request from a client gave.
enum Received {
    /// A complete request: its head and body.
    Request(Head, Vec<u8>),
    /// The client went away before sending anything: nothing to answer.
    Gone,
}

fn read_request(stream: &mut TcpStream, limits: &Limits) -> Result<Received, Rejection> {
    let deadline = Instant::now() + limits.request_timeout;
    let timed_out = || reject(408, "request: not received in time");
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];

    // The head, up to the blank line.
    let head_end = loop {
        if let Some(at) = find_blank_line(&buffer) {
            break at;
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Err(reject(
                431,
                format!("request head: over {MAX_HEAD_BYTES} bytes"),
            ));
        }
        if !wait_until(stream, deadline) {
            return Err(timed_out());
        }
        match stream.read(&mut chunk) {
            Ok(0) if buffer.is_empty() => return Ok(Received::Gone),
            Ok(0) => return Err(reject(400, "request: connection closed inside the head")),
            Ok(n) => buffer.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(err) if is_timeout(&err) => return Err(timed_out()),
            Err(_) if buffer.is_empty() => return Ok(Received::Gone),
            Err(err) => return Err(reject(400, format!("request: read failed: {err}"))),
        }
    };
    let head = parse_head(buffer.get(..head_end).unwrap_or_default(), limits.max_body)?;

    if head.expects_continue && head.content_length > 0 {
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    // The body: what came with the head, then the rest, never past the declared length.
    let mut body: Vec<u8> = buffer.get(head_end + 4..).unwrap_or_default().to_vec();
    body.truncate(head.content_length);
    while body.len() < head.content_length {
        if !wait_until(stream, deadline) {
            return Err(timed_out());
        }
        let want = (head.content_length - body.len()).min(chunk.len());
        let slot = chunk.get_mut(..want).unwrap_or_default();
        match stream.read(slot) {
            Ok(0) => return Err(reject(400, "request body: shorter than its Content-Length")),
            Ok(n) => body.extend_from_slice(slot.get(..n).unwrap_or_default()),
            Err(err) if is_timeout(&err) => return Err(timed_out()),
            Err(err) => return Err(reject(400, format!("request body: read failed: {err}"))),
        }
    }
    Ok(Received::Request(head, body))
}

/// Makes the next read on `stream` give up at `deadline`; false once it has passed.
fn wait_until(stream: &TcpStream, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return false;
    }
    stream.set_read_timeout(Some(left.min(IO_TIMEOUT))).is_ok()
}

fn find_blank_line(buffer: &[u8]) -> Option<usize> {
    buffer.windows(4).position(|w| w == b"\r\n\r\n")
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// Writes the guard's own refusal and closes.
fn answer(stream: &mut TcpStream, rejection: &Rejection) {
    let body = format!("{}\n", rejection.reason);
    let response = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        rejection.status,
        status_text(rejection.status),
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

/// Hands one bounded request to tiny_http and relays its response.
fn forward(
    socket: &Path,
    remote: &SocketAddr,
    head: &Head,
    body: &[u8],
    client: &mut TcpStream,
) -> io::Result<()> {
    let mut inner = UnixStream::connect(socket)?;
    inner.set_read_timeout(Some(Duration::from_secs(120)))?;
    inner.set_write_timeout(Some(IO_TIMEOUT))?;

    let mut request = format!("{} {} HTTP/1.1\r\n", head.method, head.target);
    for (name, value) in &head.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "{REMOTE_HEADER}: {remote}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    inner.write_all(request.as_bytes())?;
    inner.write_all(body)?;
    inner.flush()?;

    let mut response = Vec::new();
    inner
        .take(MAX_RESPONSE_BYTES as u64)
        .read_to_end(&mut response)?;
    client.write_all(&close_response(&response))?;
    client.flush()
}

/// The response with `Connection: close` in its head (the guard serves one request per
/// connection, and a client that thought otherwise would send its next request into a closed
/// socket) and without tiny_http's Server header.
fn close_response(response: &[u8]) -> Vec<u8> {
    let Some(end) = find_blank_line(response) else {
        return response.to_vec();
    };
    let head = String::from_utf8_lossy(response.get(..end).unwrap_or_default());
    let mut out = String::with_capacity(end + 32);
    for (n, line) in head.split("\r\n").enumerate() {
        let name = line.split(':').next().unwrap_or_default().trim();
        let dropped =
            name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("server");
        if n > 0 && dropped {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(response.get(end + 4..).unwrap_or_default());
    bytes
}

fn serve_connection(mut stream: TcpStream, remote: SocketAddr, socket: &Path, limits: &Limits) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);

    match read_request(&mut stream, limits) {
        Ok(Received::Request(head, body)) => {
            if let Err(err) = forward(socket, &remote, &head, &body, &mut stream) {
                warn!(
                    "{} {}: relaying failed: {err} remote={remote}",
                    head.method, head.target
                );
                answer(
                    &mut stream,
                    &reject(502, "internal error; see the server log"),
                );
            }
        }
        Ok(Received::Gone) => debug!("connection closed before a request remote={remote}"),
        Err(rejection) => {
            warn!(
                "request refused: {} {} remote={remote}",
                rejection.status, rejection.reason
            );
            answer(&mut stream, &rejection);
        }
    }
    linger(&mut stream, LINGER);
}

/// How long a connection thread drains what a client still sends after the answer.
const LINGER: Duration = Duration::from_secs(1);

/// Most bytes drained after an answer.
const MAX_LINGER_BYTES: usize = 256 * 1024;

/// Closes politely: a socket closed with unread input sends a reset, which can destroy the
/// answer before the client reads it (a 413 or 503 written while the client still sends).
/// So the write side is shut first, and what the client still sends is read and dropped for
/// at most `wait` or [`MAX_LINGER_BYTES`].
fn linger(stream: &mut TcpStream, wait: Duration) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(wait));
    let deadline = Instant::now() + wait;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < MAX_LINGER_BYTES && Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Decrements the live-connection count when a connection is done, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long a connection thread with nothing to do waits for the next connection before it
/// ends. Threads are reused rather than started per connection (starting one costs a clone,
/// a stack mapping and its teardown, a few percent of an issuance's CPU time).
const IDLE_THREAD: Duration = Duration::from_secs(30);

/// An accepted client waiting for a connection thread.
struct Job {
    stream: TcpStream,
    remote: SocketAddr,
    slot: Slot,
}

/// What the acceptor and the connection threads share.
#[derive(Default)]
struct Queue {
    /// Clients accepted and not yet taken by a thread.
    waiting: VecDeque<Job>,
    /// Threads waiting for a client.
    idle: usize,
}

/// The connection threads: started on demand, reused, ended after [`IDLE_THREAD`] without
/// work. A thread is started only when every thread is busy, and every busy thread holds a
/// connection within `max_connections`, so there are never more threads than that.
struct Pool {
    queue: Mutex<Queue>,
    ready: Condvar,
    socket: PathBuf,
    limits: Limits,
}

impl Pool {
    /// Hands a client to an idle thread, or starts one when none is idle.
    fn dispatch(self: &Arc<Pool>, job: Job) {
        let remote = job.remote;
        let Ok(mut queue) = self.queue.lock() else {
            warn!("connection dropped: the connection queue is poisoned remote={remote}");
            return;
        };
        queue.waiting.push_back(job);
        if queue.idle >= queue.waiting.len() {
            drop(queue);
            self.ready.notify_one();
            return;
        }
        drop(queue);

        let pool = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("connection".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || pool.work());
        if let Err(err) = spawned {
            // The client stays queued for the next thread that is free or started.
            warn!("cannot start a connection thread: {err} remote={remote}");
        }
    }

    /// A connection thread: serves clients until none comes for [`IDLE_THREAD`].
    fn work(&self) {
        while let Some(job) = self.next() {
            let Job {
                stream,
                remote,
                slot,
            } = job;
            serve_connection(stream, remote, &self.socket, &self.limits);
            drop(slot);
        }
    }

    /// The next waiting client, or `None` when the thread should end.
    fn next(&self) -> Option<Job> {
        let mut queue = self.queue.lock().ok()?;
        loop {
            if let Some(job) = queue.waiting.pop_front() {
                return Some(job);
            }
            queue.idle += 1;
            let (guard, timeout) = self.ready.wait_timeout(queue, IDLE_THREAD).ok()?;
            queue = guard;
            queue.idle -= 1;
            if timeout.timed_out() && queue.waiting.is_empty() {
                return None;
            }
        }
    }
}

/// Accepts clients on `listener` forever and relays their requests to tiny_http at `socket`.
pub fn run(listener: TcpListener, socket: PathBuf, limits: Limits) {
    let live = Arc::new(AtomicUsize::new(0));
    let max_connections = limits.max_connections;
    let pool = Arc::new(Pool {
        queue: Mutex::new(Queue::default()),
        ready: Condvar::new(),
        socket,
        limits,
    });
    loop {
        let (mut stream, remote) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!("accepting a connection: {err}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };

        if live.fetch_add(1, Ordering::AcqRel) >= max_connections {
            live.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            warn!("connection refused: {max_connections} connections open remote={remote}");
            answer(&mut stream, &reject(503, "server busy; try again shortly"));
            // Briefly: this runs on the acceptor, which must get back to accepting.
            linger(&mut stream, Duration::from_millis(50));
            continue;
        }
        let slot = Slot(Arc::clone(&live));
        pool.dispatch(Job {
            stream,
            remote,
            slot,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Head, Rejection> {
        parse_head(text.as_bytes(), 65536)
    }

    #[test]
    fn responses_say_the_connection_closes() {
        let from_tiny_http =
            b"HTTP/1.1 200 OK\r\nServer: tiny-http (Rust)\r\nContent-Length: 2\r\n\
                               Connection: keep-alive\r\n\r\nok";
        let relayed = close_response(from_tiny_http);
        let expected = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
        assert_eq!(relayed, expected);
    }

    #[test]
    fn a_plain_request_head() {
        let parsed = head(
            "POST /ota/phase23 HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\
             Connection: keep-alive\r\nX-Otad-Remote: 6.6.6.6:1",
        )
        .unwrap();
        assert_eq!(parsed.method, "POST");
        assert_eq!(parsed.target, "/ota/phase23");
        assert_eq!(parsed.content_length, 12);
        assert_eq!(
            parsed.headers,
            vec![("Host".to_string(), "x".to_string())],
            "hop headers and a forged remote are dropped"
        );
    }

    #[test]
    fn limits_and_malformed_heads_are_refused_with_the_right_status() {
        let status = |text: &str| head(text).unwrap_err().status;
        assert_eq!(
            status("GET / HTTP/1.1\r\nContent-Length: 100000000000000"),
            413
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999"),
            400
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6"),
            400
        );
        assert_eq!(status("GET / HTTP/1.1\r\nTransfer-Encoding: chunked"), 411);
        assert_eq!(status("GET / HTTP/2.0"), 505);
        assert_eq!(status("GET /\u{7f} HTTP/1.1"), 400);
        assert_eq!(status("GET /ä HTTP/1.1"), 400);
        assert_eq!(status("get / HTTP/1.1"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nBad Name: x"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nX: a\u{1b}b"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nExpect: magic"), 417);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("\r\nH{i}: v")).collect();
        assert_eq!(status(&format!("GET / HTTP/1.1{many}")), 431);
        assert!(
            head("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1")
                .unwrap()
                .expects_continue
        );
    }
}
