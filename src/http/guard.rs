//! The front door: otad's own HTTP/1.1 server, from the listening socket to the handlers.
//!
//! The guard owns the public socket: it accepts at most `max_connections` clients, reads each
//! request head and body within size limits and one deadline, answers whatever breaks a limit
//! itself, and hands each complete, bounded request to the [`Handler`] on the connection's own
//! thread, then writes the handler's [`Response`]. At most `workers` requests are inside the
//! handler at once ([`Permits`]); a request that cannot get a permit before its deadline is
//! answered 503, and a handler that panics is answered 500 without taking the server down.
//!
//! A client may send several requests over one connection (HTTP/1.1 keep-alive, as SCEP
//! clients do for GetCACaps, GetCACert and PKIOperation): every request gets the same limits
//! and its own deadline, a connection carries at most [`MAX_REQUESTS_PER_CONNECTION`], waits
//! at most [`KEEP_ALIVE_IDLE`] for the next one, and at most half of `max_connections` may
//! wait like that at once; the others are closed after their answer.
//!
//! With `[tls]` set, the guard speaks TLS (rustls, [`crate::tls`]) on every client
//! connection, handshake included in the request's deadline. A [`Shutdown`] stops the
//! acceptor and lets the connections in flight finish.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use log::{debug, error, warn};

/// Largest request head (request line and headers) accepted, in bytes. SCEP GET requests
/// carry their message in the query, so this is generous.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Most headers in one request, as the client sends it.
pub const MAX_HEADERS: usize = 64;

/// Largest body accepted on a route that takes none (everything but [`BODY_ROUTES`]): room
/// for a stray form or a probe's few bytes, not for an upload.
pub const MAX_BODY_ELSEWHERE: usize = 1024;

/// The requests that carry a body, as (method, path): phases 2 and 3, DEP machine info and a
/// SCEP PKIOperation POST (under each path SCEP clients use). They get `http.max_body`.
pub const BODY_ROUTES: &[(&str, &str)] = &[
    ("POST", "/ota/phase23"),
    ("POST", "/mdm/enroll"),
    ("POST", "/scep"),
    ("POST", "/scep/pkiclient.exe"),
    ("POST", "/cgi-bin/pkiclient.exe"),
];

/// The largest body `method` on `target` may carry: `max_body` on [`BODY_ROUTES`] (the path
/// compared as the router does, without the query), [`MAX_BODY_ELSEWHERE`] anywhere else.
pub fn body_limit(method: &str, target: &str, max_body: usize) -> usize {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if BODY_ROUTES.contains(&(method, path)) {
        max_body
    } else {
        MAX_BODY_ELSEWHERE.min(max_body)
    }
}

/// Most empty lines (CRLF) skipped before a request line; one more is a malformed request.
pub const MAX_EMPTY_LINES_BEFORE_REQUEST: usize = 4;

/// Longest request method accepted (the longest registered one is far shorter).
const MAX_METHOD_LEN: usize = 16;

/// Longest a single read or write on a client socket may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Most requests one client connection carries; the answer to the last says it closes.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 100;

/// Longest a kept-alive connection waits for its next request to begin.
pub const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(5);

/// Stack size of the connection threads. They run the handlers (the crypto, the plist and
/// BER parsers, the hooks), so they get the stack Rust gives any thread by default; only the
/// pages touched take memory.
// TODO: each connection thread reserves this much address space even while it only waits
// for a slow or idle client (4,096 connections: 8 GiB of address space, not of memory). With
// vm.overcommit_memory = 2 that could refuse threads before `max_connections`; measuring the
// handlers' deepest stack (debug builds included) would allow a smaller figure.
const CONNECTION_STACK: usize = 2 * 1024 * 1024;

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

/// A client connection, plain or TLS: bytes both ways, and the socket beneath for timeouts.
trait Conn: Read + Write {
    /// The TCP socket the connection runs on.
    fn socket(&self) -> &TcpStream;

    /// Makes every read from now on fail once `deadline` has passed (`None`: no deadline
    /// beyond the socket's own timeout).
    fn set_deadline(&mut self, deadline: Option<Instant>);

    /// Says goodbye at the protocol level before the socket closes (TLS close_notify).
    fn close_notify(&mut self) {}
}

/// A TCP socket whose reads end at a deadline, however many a caller makes: rustls reads
/// the socket in a loop until a whole record (or handshake message) is in, so a deadline
/// checked only between the guard's own reads would let a client dripping a byte at a time
/// hold the connection forever.
struct TimedSocket {
    socket: TcpStream,
    deadline: Option<Instant>,
}

impl Read for TimedSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "request deadline"));
            }
            self.socket.set_read_timeout(Some(left.min(IO_TIMEOUT)))?;
        }
        self.socket.read(buf)
    }
}

impl Write for TimedSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.socket.flush()
    }
}

impl Conn for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }

    // Plain reads are the guard's own, each given the time left (see `wait_until`).
    fn set_deadline(&mut self, _deadline: Option<Instant>) {}
}

impl Conn for rustls::StreamOwned<rustls::ServerConnection, TimedSocket> {
    fn socket(&self) -> &TcpStream {
        &self.sock.socket
    }

    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.sock.deadline = deadline;
    }

    fn close_notify(&mut self) {
        // Whatever is left to say goes out without waiting for anything from the client.
        self.sock.deadline = None;
        self.conn.send_close_notify();
        let _ = self.flush();
    }
}

/// Tells the acceptor to stop: no new connection is taken, the ones open finish their
/// request (for at most [`DRAIN`]), kept-alive ones are closed after their next answer.
#[derive(Debug, Default)]
pub struct Shutdown {
    stopping: AtomicBool,
}

impl Shutdown {
    /// Asks the acceptor to stop; it notices within [`ACCEPT_POLL`].
    pub fn begin(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Whether a stop was asked.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// How often the acceptor looks up from waiting for a client to see if it should stop.
const ACCEPT_POLL: Duration = Duration::from_millis(250);

/// Longest wait, on a stop, for the connections still open to finish.
pub const DRAIN: Duration = Duration::from_secs(20);

/// The guard's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Client connections handled at once; beyond it a client gets 503 at once.
    pub max_connections: usize,
    /// Largest request body on [`BODY_ROUTES`] (`http.max_body`); elsewhere it is
    /// [`MAX_BODY_ELSEWHERE`].
    pub max_body: usize,
    /// Deadline for receiving one whole request, head and body; a request waiting for a
    /// permit to be handled waits at most until the same deadline.
    pub request_timeout: Duration,
    /// Requests handled at once (`http.workers`): requests beyond it wait for a permit.
    pub workers: usize,
}

/// A request the guard refuses itself, before any handler sees it.
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
    /// Headers in order, hop-by-hop ones removed.
    pub headers: Vec<(String, String)>,
    /// The declared body length (0 without Content-Length).
    pub content_length: usize,
    /// Whether the client waits for `100 Continue`.
    pub expects_continue: bool,
    /// Whether the client would send another request on this connection (HTTP/1.1 without
    /// `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`).
    pub keep_alive: bool,
}

/// Splits and checks a request line (without its CRLF) into method, target and version.
/// A line of only a method and a target is HTTP/0.9, which has no headers and no status line
/// in its answer: it is refused as soon as the line ends, not left waiting for a blank line
/// that never comes.
fn parse_request_line(line: &str) -> Result<(&str, &str, &str), Rejection> {
    let mut parts = line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        (Some(_), Some(t), None, None) if t.starts_with('/') => {
            return Err(reject(
                400,
                "request line: no HTTP version (HTTP/0.9 is not spoken here; send HTTP/1.1)",
            ))
        }
        _ => return Err(reject(400, "request line: not `METHOD TARGET HTTP/1.1`")),
    };
    if method.is_empty()
        || method.len() > MAX_METHOD_LEN
        || !method.bytes().all(|b| b.is_ascii_uppercase())
    {
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
    Ok((method, target, version))
}

/// What has been checked of a request head while it arrives, so that a head that can never
/// be served is refused at once instead of holding its connection until the deadline: a line
/// ended by a bare LF (otad reads only CRLF-ended heads, and a client that sends LF alone
/// never sends the CRLF CRLF the guard waits for), a bare CR (RFC 9112 section 2.2), and a
/// bad request line (HTTP/0.9).
#[derive(Debug, Default)]
struct HeadScan {
    /// Bytes of the head looked at so far.
    scanned: usize,
    /// Whether the request line has ended (and was checked).
    request_line_ended: bool,
}

impl HeadScan {
    /// Looks at the bytes of `head` (all received so far, up to the blank line at most) that
    /// were not looked at before.
    fn advance(&mut self, head: &[u8]) -> Result<(), Rejection> {
        for (at, byte) in head.iter().enumerate().skip(self.scanned) {
            // A CR as the last byte received is judged when the byte after it comes.
            let cr = at.checked_sub(1).filter(|&cr| head.get(cr) == Some(&b'\r'));
            match (*byte, cr) {
                (b'\n', None) => {
                    return Err(reject(
                        400,
                        "request head: a line ends in a bare LF; end every line with CRLF",
                    ))
                }
                (b'\n', Some(cr)) if !self.request_line_ended => {
                    self.request_line_ended = true;
                    let line = std::str::from_utf8(head.get(..cr).unwrap_or_default())
                        .ok()
                        .filter(|line| line.is_ascii())
                        .ok_or_else(|| reject(400, "request head: not ASCII"))?;
                    parse_request_line(line)?;
                }
                (b'\n', Some(_)) | (_, None) => {}
                (_, Some(_)) => {
                    return Err(reject(
                        400,
                        "request head: a bare CR; end every line with CRLF",
                    ))
                }
            }
        }
        self.scanned = self.scanned.max(head.len());
        Ok(())
    }
}

/// Parses a request head (everything before the blank line) against the limits; a declared
/// body over [`body_limit`] for its route is refused here, before any of it is read.
pub fn parse_head(head: &[u8], max_body: usize) -> Result<Head, Rejection> {
    let text = std::str::from_utf8(head).map_err(|_| reject(400, "request head: not ASCII"))?;
    if !text.is_ascii() {
        return Err(reject(400, "request head: not ASCII"));
    }
    let mut lines = text.split("\r\n");
    let (method, target, version) = parse_request_line(lines.next().unwrap_or_default())?;

    let mut headers = Vec::new();
    let mut content_length = None;
    let mut expects_continue = false;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    // Every header line counts, the hop-by-hop ones the guard drops included.
    for (count, line) in lines.enumerate() {
        if count >= MAX_HEADERS {
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
                // Digits only (RFC 9110 section 8.6): Rust's parser would also take "+3",
                // which a proxy in front may read otherwise.
                let n: usize = Some(value)
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| reject(400, "Content-Length: not a number"))?;
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
            "connection" => {
                for option in value.split(',').map(str::trim) {
                    connection_close |= option.eq_ignore_ascii_case("close");
                    connection_keep_alive |= option.eq_ignore_ascii_case("keep-alive");
                }
            }
            _ => {}
        }
        if !HOP_HEADERS.contains(&lower.as_str()) {
            headers.push((name.to_string(), value.to_string()));
        }
    }

    let content_length = content_length.unwrap_or(0);
    let limit = body_limit(method, target, max_body);
    if content_length > limit {
        return Err(reject(
            413,
            format!("request body: {content_length} bytes, over the {limit} this endpoint takes"),
        ));
    }
    Ok(Head {
        method: method.into(),
        target: target.into(),
        headers,
        content_length,
        expects_continue,
        keep_alive: !connection_close && (version == "HTTP/1.1" || connection_keep_alive),
    })
}

/// What reading a request from a client gave.
enum Received {
    /// A complete request: its head, its body, and its deadline (which also bounds its wait
    /// for a permit).
    Request(Head, Vec<u8>, Instant),
    /// The client went away before sending anything: nothing to answer.
    Gone,
}

/// Reads one request. `buffer` holds what was read past the previous request on this
/// connection and, on return, what was read past this one. With `idle`, the request must
/// begin within that time (else the connection is done, quietly); its own deadline starts
/// with its first byte.
fn read_request(
    stream: &mut impl Conn,
    limits: &Limits,
    buffer: &mut Vec<u8>,
    idle: Option<Duration>,
) -> Result<Received, Rejection> {
    let mut chunk = [0u8; 4096];
    if let Some(idle) = idle.filter(|_| buffer.is_empty()) {
        stream.set_deadline(Some(Instant::now() + idle));
        if stream.socket().set_read_timeout(Some(idle)).is_err() {
            return Ok(Received::Gone);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Ok(Received::Gone),
            Ok(n) => buffer.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
    let deadline = Instant::now() + limits.request_timeout;
    // For TLS this bounds the handshake too: it happens inside the first read.
    stream.set_deadline(Some(deadline));
    let timed_out = || reject(408, "request: not received in time");

    // The head, up to the blank line, each byte looked at once (a head trickled a byte at
    // a time is not searched from its start on every read).
    let mut scan = HeadScan::default();
    let mut empty_lines = 0;
    let head_end = loop {
        // RFC 9112 section 2.2: empty lines before the request line (a client's stray CRLF
        // after its last body, say) are skipped, a few of them.
        while empty_lines < MAX_EMPTY_LINES_BEFORE_REQUEST && buffer.starts_with(b"\r\n") {
            buffer.drain(..2);
            empty_lines += 1;
            scan = HeadScan::default();
        }
        if let Some(at) = find_blank_line_from(buffer, scan.scanned.saturating_sub(3)) {
            // One read may bring more than the limit at once: the head is measured, not
            // the reads.
            if at > MAX_HEAD_BYTES {
                return Err(reject(
                    431,
                    format!("request head: over {MAX_HEAD_BYTES} bytes"),
                ));
            }
            // What follows the blank line is the body, which may hold any byte.
            scan.advance(buffer.get(..at + 4).unwrap_or_default())?;
            break at;
        }
        // Without the blank line in it, the head is at least all but its last 3 bytes.
        if buffer.len() > MAX_HEAD_BYTES + 3 {
            return Err(reject(
                431,
                format!("request head: over {MAX_HEAD_BYTES} bytes"),
            ));
        }
        scan.advance(buffer)?;
        if !wait_until(stream.socket(), deadline) {
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
    // Bytes beyond it are the start of the client's next request.
    let mut body = buffer.split_off((head_end + 4).min(buffer.len()));
    *buffer = body.split_off(head.content_length.min(body.len()));
    while body.len() < head.content_length {
        if !wait_until(stream.socket(), deadline) {
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
    Ok(Received::Request(head, body, deadline))
}

/// Makes the next read on `stream` give up at `deadline`; false once it has passed.
fn wait_until(stream: &TcpStream, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return false;
    }
    stream.set_read_timeout(Some(left.min(IO_TIMEOUT))).is_ok()
}

/// Where the first CRLF CRLF at or after `from` in `buffer` starts.
fn find_blank_line_from(buffer: &[u8], from: usize) -> Option<usize> {
    buffer
        .get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + from)
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// What the client is told when its request could not be handled at all (a handler that
/// panicked): the detail is in the server log only.
pub const INTERNAL_ERROR: &str = "internal error; see the server log";

/// A request as the guard hands it to the [`Handler`]: complete, within every limit.
#[derive(Debug)]
pub struct Request {
    /// The head, hop-by-hop headers removed. A handler may take the headers out.
    pub head: Head,
    /// The whole body (its length is the declared Content-Length). A handler may take it.
    pub body: Vec<u8>,
    /// The TCP peer ("ip:port"): the proxy itself, where there is one.
    pub peer: String,
    /// The client, for logs, events and rate limits: the peer, or behind a trusted proxy the
    /// address its X-Forwarded-For names (see [`super::client_address`]).
    pub remote: String,
}

impl Request {
    /// The request path, without the query (which may hold an enrollment token, and so stays
    /// out of the log).
    pub fn path(&self) -> &str {
        let target = self.head.target.as_str();
        target.split_once('?').map_or(target, |(path, _)| path)
    }
}

/// What a handler answers; the guard adds Content-Length, Date and Connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Content-Type.
    pub content_type: &'static str,
    /// More headers (Allow, WWW-Authenticate, Retry-After, Content-Disposition). A header
    /// whose value holds a control character is not sent.
    pub headers: Vec<(&'static str, String)>,
    /// The body; an answer to HEAD sends only its length.
    pub body: Vec<u8>,
    /// For an answer to HEAD: no Content-Length, because what GET answers there is made afresh
    /// for each request (a profile signed around a new challenge), as RFC 9110 section 9.3.2
    /// allows for a field known only while making the content.
    pub length_unknown: bool,
}

impl Response {
    /// A `text/plain` answer of one line.
    pub fn text(status: u16, line: &str) -> Response {
        let mut body = Vec::with_capacity(line.len() + 1);
        body.extend_from_slice(line.as_bytes());
        body.push(b'\n');
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body,
            length_unknown: false,
        }
    }
}

/// Work a handler leaves for after its permit is given back (see [`Handled::then`]).
pub type Then = Box<dyn FnOnce(&mut Response) + Send>;

/// What a handler answers: a response, and what is left to do once the handler's permit is
/// given back.
pub struct Handled {
    /// The response, as far as the handler's own work goes.
    pub response: Response,
    /// Work that waits rather than computes (making what the request wrote durable, before
    /// it is answered): done after the permit is given back, so that a request waiting for
    /// the disk does not keep another from the CPU, and before the response is sent. It may
    /// change the response (a 500 when the state could not be saved).
    pub then: Option<Then>,
}

impl From<Response> for Handled {
    fn from(response: Response) -> Handled {
        Handled {
            response,
            then: None,
        }
    }
}

/// What answers the requests: called on the connection's thread, holding a permit.
pub type Handler = dyn Fn(&mut Request) -> Handled + Send + Sync;

/// A counting semaphore: at most the number it was made with are held at once. Taken by
/// [`Permits::acquire`], given back when the [`Permit`] is dropped (on every path, unwinding
/// included). Those that wait are served first come, first served: a permit given back goes
/// straight to the longest waiting, so that a stream of new requests cannot keep a waiting
/// one out until its deadline.
#[derive(Debug)]
pub struct Permits {
    state: Mutex<PermitState>,
}

#[derive(Debug)]
struct PermitState {
    /// Permits nobody holds.
    free: usize,
    /// The threads waiting, longest first (only while `free` is 0).
    queue: VecDeque<Arc<Turn>>,
}

/// One waiting thread's place in the queue: it is woken alone when given its permit (no
/// thundering herd, and no system call at all while nobody waits).
#[derive(Debug, Default)]
struct Turn {
    /// Set, under the lock, when a permit was handed to this thread.
    granted: AtomicBool,
    /// Signalled when `granted` is set; used with the [`Permits`] lock only.
    woken: Condvar,
}

impl Permits {
    /// `count` permits (at least one).
    pub fn new(count: usize) -> Permits {
        Permits {
            state: Mutex::new(PermitState {
                free: count.max(1),
                queue: VecDeque::new(),
            }),
        }
    }

    /// Takes a permit, waiting for one until `deadline`; `None` if none came by then.
    pub fn acquire(&self, deadline: Instant) -> Option<Permit<'_>> {
        // Nothing that can panic runs under this lock; a poisoned one still holds true counts.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.free > 0 {
            state.free -= 1;
            return Some(Permit(self));
        }
        let turn = Arc::new(Turn::default());
        state.queue.push_back(Arc::clone(&turn));
        loop {
            if turn.granted.load(Ordering::Relaxed) {
                return Some(Permit(self));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                state.queue.retain(|waiting| !Arc::ptr_eq(waiting, &turn));
                return None;
            }
            state = turn
                .woken
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Permits free right now.
    pub fn available(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .free
    }
}

/// One of [`Permits`], held while a request is handled.
#[derive(Debug)]
pub struct Permit<'a>(&'a Permits);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.queue.pop_front() {
            // Handed over as it is: `free` stays as it was.
            Some(turn) => {
                turn.granted.store(true, Ordering::Relaxed);
                drop(state);
                turn.woken.notify_one();
            }
            None => state.free += 1,
        }
    }
}

/// Why a request got no answer from the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unhandled {
    /// No permit came free before the request's deadline.
    Busy,
    /// The handler panicked (logged).
    Panicked,
}

impl Unhandled {
    /// What the client is told; the connection closes after it.
    fn rejection(self, workers: usize) -> Rejection {
        match self {
            Unhandled::Busy => reject(
                503,
                format!(
                    "server busy: {workers} requests are being handled, the most it takes at \
                     once; try again shortly"
                ),
            ),
            Unhandled::Panicked => reject(500, INTERNAL_ERROR),
        }
    }
}

/// Hands `request` to `handler` holding one of `permits`, waiting for it until `deadline`;
/// then, the permit given back, does what the handler left to do ([`Handled::then`]). A panic
/// in either is caught and logged (method, path without its query, client); the permit is
/// given back either way.
fn run_handler<F: Fn(&mut Request) -> Handled + ?Sized>(
    handler: &F,
    permits: &Permits,
    deadline: Instant,
    request: &mut Request,
) -> Result<Response, Unhandled> {
    let Some(permit) = permits.acquire(deadline) else {
        return Err(Unhandled::Busy);
    };
    let handled = catch_unwind(AssertUnwindSafe(|| handler(request)));
    drop(permit);
    let answered = handled.and_then(|handled| {
        let mut response = handled.response;
        match handled.then {
            Some(then) => catch_unwind(AssertUnwindSafe(|| then(&mut response))).map(|()| response),
            None => Ok(response),
        }
    });
    answered.map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("no message");
        error!(
            "{} {}: the handler panicked: {}; answered 500 remote={}",
            request.head.method,
            request.path(),
            crate::logger::one_line(what, 300),
            request.remote
        );
        Unhandled::Panicked
    })
}

/// Largest body sent in the same write as the head; a larger one (a big CRL) is written
/// after it rather than copied.
const ONE_WRITE_BODY: usize = 64 * 1024;

/// The current time as an HTTP date (RFC 9110 section 5.6.7), e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(now: time::OffsetDateTime) -> String {
    let now = now.to_offset(time::UtcOffset::UTC);
    let day = match now.weekday() {
        time::Weekday::Monday => "Mon",
        time::Weekday::Tuesday => "Tue",
        time::Weekday::Wednesday => "Wed",
        time::Weekday::Thursday => "Thu",
        time::Weekday::Friday => "Fri",
        time::Weekday::Saturday => "Sat",
        time::Weekday::Sunday => "Sun",
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS
        .get(usize::from(u8::from(now.month())).saturating_sub(1))
        .copied()
        .unwrap_or("Jan");
    format!(
        "{day}, {:02} {month} {:04} {:02}:{:02}:{:02} GMT",
        now.day(),
        now.year(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// Whether `value` may go out as a header value: no control character but tab.
fn header_value_ok(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// The response as the client gets it: HTTP/1.1 status line, Content-Type, Content-Length
/// (of the body GET gets, for HEAD too, except where HEAD has no length to give), Date, the
/// handler's headers, and `Connection: keep-alive` or `close`; then the body, but for HEAD.
/// The head and a body up to [`ONE_WRITE_BODY`] are one buffer, written at once.
fn response_bytes(response: &Response, is_head: bool, keep_alive: bool) -> (Vec<u8>, &[u8]) {
    let body: &[u8] = if is_head { &[] } else { &response.body };
    let inline = body.len() <= ONE_WRITE_BODY;
    let mut out = Vec::with_capacity(256 + if inline { body.len() } else { 0 });
    let status = response.status;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {}\r\n",
        status_text(status),
        response.content_type
    );
    if !(is_head && response.length_unknown) {
        let _ = write!(out, "Content-Length: {}\r\n", response.body.len());
    }
    let _ = write!(
        out,
        "Date: {}\r\n",
        http_date(time::OffsetDateTime::now_utc())
    );
    for (name, value) in &response.headers {
        if header_value_ok(value) {
            let _ = write!(out, "{name}: {value}\r\n");
        } else {
            debug!("response header {name}: a control character in its value; not sent");
        }
    }
    out.extend_from_slice(if keep_alive {
        b"Connection: keep-alive\r\n\r\n"
    } else {
        b"Connection: close\r\n\r\n"
    });
    if inline {
        out.extend_from_slice(body);
        (out, &[])
    } else {
        (out, body)
    }
}

/// Writes `response` (see [`response_bytes`]): one write for the head and a small body.
fn write_response(
    stream: &mut impl Write,
    response: &Response,
    is_head: bool,
    keep_alive: bool,
) -> io::Result<()> {
    let (head, rest) = response_bytes(response, is_head, keep_alive);
    stream.write_all(&head)?;
    if !rest.is_empty() {
        stream.write_all(rest)?;
    }
    stream.flush()
}

/// Writes the guard's own refusal and closes.
fn answer(stream: &mut impl Write, rejection: &Rejection) {
    answer_request(stream, rejection, false);
}

/// [`answer`] to a request that may be a HEAD, whose answer has the headers and no body
/// (RFC 9110 section 9.3.2).
fn answer_request(stream: &mut impl Write, rejection: &Rejection, is_head: bool) {
    let response = Response::text(rejection.status, &rejection.reason);
    let _ = write_response(stream, &response, is_head, false);
}

/// Serves one client connection, in TLS when the pool has a certificate.
fn serve_connection(stream: TcpStream, remote: SocketAddr, pool: &Pool) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);

    match &pool.tls {
        None => {
            let mut stream = stream;
            serve_requests(&mut stream, remote, pool);
        }
        Some(tls) => match rustls::ServerConnection::new(tls.config()) {
            Ok(connection) => {
                // The handshake runs inside the first read, under that request's deadline.
                let socket = TimedSocket {
                    socket: stream,
                    deadline: None,
                };
                let mut stream = rustls::StreamOwned::new(connection, socket);
                serve_requests(&mut stream, remote, pool);
            }
            Err(err) => warn!("TLS: cannot start a connection: {err} remote={remote}"),
        },
    }
}

/// A connection's requests one after another, while both sides keep it.
fn serve_requests(stream: &mut impl Conn, remote: SocketAddr, pool: &Pool) {
    let mut buffer = Vec::with_capacity(4096);
    let mut served = 0;
    let mut waiting: Option<Waiting<'_>> = None;
    loop {
        let idle = waiting.is_some().then_some(KEEP_ALIVE_IDLE);
        let received = read_request(stream, &pool.limits, &mut buffer, idle);
        // Whatever came, this connection no longer waits.
        drop(waiting.take());
        match received {
            Ok(Received::Request(head, body, deadline)) => {
                served += 1;
                // Kept open only while few connections wait so (see [`Waiting`]).
                let keep = head.keep_alive
                    && served < MAX_REQUESTS_PER_CONNECTION
                    && !pool.shutdown.is_stopping();
                let wait = keep.then(|| Waiting::enter(pool)).flatten();
                let is_head = head.method == "HEAD";
                let mut request = pool.request(head, body, remote);
                let started = Instant::now();
                match run_handler(&*pool.handler, &pool.permits, deadline, &mut request) {
                    Ok(response) => {
                        let kept = wait.is_some();
                        if let Err(err) = write_response(stream, &response, is_head, kept) {
                            warn!(
                                "{} {}: cannot send the response: {err} remote={}",
                                request.head.method,
                                request.path(),
                                request.remote
                            );
                            break;
                        }
                        if !kept {
                            break;
                        }
                        waiting = wait;
                    }
                    Err(unhandled) => {
                        let rejection = unhandled.rejection(pool.limits.workers);
                        match unhandled {
                            Unhandled::Busy => {
                                warn!(
                                    "request refused: {} {} remote={remote}",
                                    rejection.status, rejection.reason
                                );
                                pool.metrics.guard_refusal(rejection.status);
                            }
                            Unhandled::Panicked => pool.metrics.request(
                                crate::metrics::route_label(request.path()),
                                rejection.status,
                                started.elapsed(),
                            ),
                        }
                        answer_request(stream, &rejection, is_head);
                        break;
                    }
                }
            }
            Ok(Received::Gone) if served == 0 => {
                debug!("connection closed before a request remote={remote}");
                break;
            }
            Ok(Received::Gone) => break,
            Err(rejection) => {
                warn!(
                    "request refused: {} {} remote={remote}",
                    rejection.status, rejection.reason
                );
                pool.metrics.guard_refusal(rejection.status);
                // What was read of the refused request is still in the buffer.
                answer_request(stream, &rejection, buffer.starts_with(b"HEAD "));
                break;
            }
        }
    }
    linger(stream, LINGER);
}

/// A kept-alive connection waiting for its client's next request. At most half of
/// `max_connections` wait at once, so idle clients cannot keep new ones out.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(pool: &'a Pool) -> Option<Waiting<'a>> {
        let most = pool.limits.max_connections / 2;
        if pool.waiting.fetch_add(1, Ordering::AcqRel) >= most {
            pool.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Waiting(&pool.waiting))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long a connection thread drains what a client still sends after the answer.
const LINGER: Duration = Duration::from_secs(1);

/// Most bytes drained after an answer.
const MAX_LINGER_BYTES: usize = 256 * 1024;

/// Closes politely: a socket closed with unread input sends a reset, which can destroy the
/// answer before the client reads it (a 413 or 503 written while the client still sends).
/// So the write side is shut first, and what the client still sends is read and dropped for
/// at most `wait` or [`MAX_LINGER_BYTES`].
fn linger(stream: &mut impl Conn, wait: Duration) {
    stream.close_notify();
    let mut socket = stream.socket();
    let _ = socket.shutdown(std::net::Shutdown::Write);
    let _ = socket.set_read_timeout(Some(wait));
    let deadline = Instant::now() + wait;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < MAX_LINGER_BYTES && Instant::now() < deadline {
        match socket.read(&mut sink) {
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
    limits: Limits,
    /// What answers the requests.
    handler: Arc<Handler>,
    /// At most `limits.workers` requests inside the handler at once.
    permits: Permits,
    /// Reverse proxies whose X-Forwarded-For names the client.
    trusted_proxies: Vec<crate::gate::cidr::Cidr>,
    /// Kept-alive connections waiting for their next request.
    waiting: AtomicUsize,
    /// The TLS configuration, when otad speaks TLS itself.
    tls: Option<Arc<crate::tls::Tls>>,
    /// Set when the server is stopping.
    shutdown: Arc<Shutdown>,
    /// Where the guard's own refusals are counted.
    metrics: Arc<crate::metrics::Metrics>,
}

impl Pool {
    /// A request read from the client at `peer`, ready for the handler: the client's address
    /// is the peer's, or behind a trusted proxy the one its X-Forwarded-For names.
    fn request(&self, head: Head, body: Vec<u8>, peer: SocketAddr) -> Request {
        let peer = peer.to_string();
        let forwarded_for: Vec<&str> = head
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("X-Forwarded-For"))
            .map(|(_, value)| value.as_str())
            .collect();
        let remote = super::client_address(&peer, &forwarded_for, &self.trusted_proxies);
        Request {
            head,
            body,
            peer,
            remote,
        }
    }

    /// Hands a client to an idle thread, or starts one when none is idle.
    fn dispatch(self: &Arc<Pool>, job: Job) {
        let remote = job.remote;
        // The queue is only counted and pushed under its lock, nothing there can panic; a
        // poisoned lock still holds consistent counts.
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
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
            serve_connection(stream, remote, self);
            drop(slot);
        }
    }

    /// The next waiting client, or `None` when the thread should end.
    fn next(&self) -> Option<Job> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(job) = queue.waiting.pop_front() {
                return Some(job);
            }
            queue.idle += 1;
            let (guard, timeout) = self
                .ready
                .wait_timeout(queue, IDLE_THREAD)
                .unwrap_or_else(PoisonError::into_inner);
            queue = guard;
            queue.idle -= 1;
            if timeout.timed_out() && queue.waiting.is_empty() {
                return None;
            }
        }
    }
}

/// What the acceptor serves with, besides its listening socket.
pub struct Service {
    /// The limits on connections and requests.
    pub limits: Limits,
    /// What answers the requests.
    pub handler: Arc<Handler>,
    /// Reverse proxies (`http.trusted_proxies`) whose X-Forwarded-For names the client.
    pub trusted_proxies: Vec<crate::gate::cidr::Cidr>,
    /// The TLS configuration, when otad speaks TLS itself.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Says when to stop.
    pub shutdown: Arc<Shutdown>,
    /// Where the guard's own refusals are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Accepts clients on `listener` and answers their requests with `service.handler`, in TLS
/// with `service.tls`, until `service.shutdown` says stop; then waits up to [`DRAIN`] for
/// the connections still open and returns.
pub fn run(listener: TcpListener, service: Service) {
    let Service {
        limits,
        handler,
        trusted_proxies,
        tls,
        shutdown,
        metrics,
    } = service;
    let live = Arc::new(AtomicUsize::new(0));
    let max_connections = limits.max_connections;
    let pool = Arc::new(Pool {
        queue: Mutex::new(Queue::default()),
        ready: Condvar::new(),
        permits: Permits::new(limits.workers),
        limits,
        handler,
        trusted_proxies,
        waiting: AtomicUsize::new(0),
        tls,
        shutdown: Arc::clone(&shutdown),
        metrics,
    });
    loop {
        if shutdown.is_stopping() {
            break;
        }
        if !client_waiting(&listener, ACCEPT_POLL) {
            continue;
        }
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
            pool.metrics.guard_refusal(503);
            // A TLS client could not read a plain answer, and a handshake here would hold
            // up the acceptor: it is just closed.
            if pool.tls.is_none() {
                answer(&mut stream, &reject(503, "server busy; try again shortly"));
            }
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

    let open = live.load(Ordering::Acquire);
    log::info!("stopping: no new connections; {open} still open");
    let deadline = Instant::now() + DRAIN;
    while live.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = live.load(Ordering::Acquire);
    if left > 0 {
        warn!("stopping: {left} connections did not finish within {DRAIN:?}; cut off");
    }
}

/// Waits up to `wait` for a client on `listener`; true when one can be accepted (or the
/// wait failed and accept should say why).
fn client_waiting(listener: &TcpListener, wait: Duration) -> bool {
    let mut poll = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: poll(2) on one valid pollfd that lives across the call.
    let ready = unsafe { libc::poll(&mut poll, 1, millis) };
    ready != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Head, Rejection> {
        parse_head(text.as_bytes(), 65536)
    }

    /// `response` as written, the Date line taken out (it changes every second).
    fn written(response: &Response, is_head: bool, keep_alive: bool) -> String {
        let (head, rest) = response_bytes(response, is_head, keep_alive);
        let mut all = head;
        all.extend_from_slice(rest);
        let text = String::from_utf8(all).unwrap();
        let date = text
            .lines()
            .find(|line| line.starts_with("Date: "))
            .expect("a Date header");
        assert!(date.ends_with(" GMT"), "{date}");
        text.replace(&format!("{date}\r\n"), "")
    }

    fn ok_response(body: &[u8]) -> Response {
        Response {
            status: 200,
            content_type: "text/plain",
            headers: Vec::new(),
            body: body.to_vec(),
            length_unknown: false,
        }
    }

    #[test]
    fn responses_say_what_becomes_of_the_connection() {
        let ok = ok_response(b"ok");
        assert_eq!(
            written(&ok, false, false),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
             Connection: close\r\n\r\nok"
        );
        assert_eq!(
            written(&ok, false, true),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
             Connection: keep-alive\r\n\r\nok"
        );
        // A refusal from the handler carries its headers; the connection may stay.
        let mut refused = Response::text(405, "method not allowed here (use GET, HEAD)");
        refused.headers.push(("Allow", "GET, HEAD".into()));
        assert_eq!(
            written(&refused, false, true),
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 40\r\nAllow: GET, HEAD\r\nConnection: keep-alive\r\n\r\n\
             method not allowed here (use GET, HEAD)\n"
        );
        // A header value that could split the head is not sent.
        let mut forged = ok_response(b"");
        forged
            .headers
            .push(("Retry-After", "1\r\nSet-Cookie: x".into()));
        forged.headers.push(("Allow", "GET,\tHEAD".into()));
        let text = written(&forged, false, false);
        assert!(
            !text.contains("Set-Cookie") && !text.contains("Retry-After"),
            "{text}"
        );
        assert!(text.contains("Allow: GET,\tHEAD\r\n"), "{text}");
    }

    #[test]
    fn a_head_answer_gives_the_length_or_none_and_never_a_body() {
        // HEAD where GET's body is known: its length, no body.
        let ca = ok_response(b"certificate");
        assert_eq!(
            written(&ca, true, true),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\
             Connection: keep-alive\r\n\r\n"
        );
        // HEAD where GET makes its body afresh: no Content-Length at all, kept alive.
        let profile = Response {
            status: 200,
            content_type: "application/x-apple-aspen-config",
            headers: vec![(
                "Content-Disposition",
                "attachment; filename=\"enroll.mobileconfig\"".into(),
            )],
            body: Vec::new(),
            length_unknown: true,
        };
        assert_eq!(
            written(&profile, true, true),
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-apple-aspen-config\r\n\
             Content-Disposition: attachment; filename=\"enroll.mobileconfig\"\r\n\
             Connection: keep-alive\r\n\r\n"
        );
        // Anything but HEAD is framed by its length whatever the handler said.
        assert!(written(&profile, false, false).contains("Content-Length: 0\r\n"));
    }

    /// A writer that counts the writes made to it.
    #[derive(Default)]
    struct CountingWriter {
        writes: usize,
        bytes: Vec<u8>,
    }

    impl Write for CountingWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_head_and_a_small_body_go_out_in_one_write() {
        for (len, writes) in [
            (0, 1),
            (5000, 1),
            (ONE_WRITE_BODY, 1),
            (ONE_WRITE_BODY + 1, 2),
        ] {
            let response = ok_response(&vec![b'x'; len]);
            let mut out = CountingWriter::default();
            write_response(&mut out, &response, false, true).unwrap();
            assert_eq!(out.writes, writes, "a body of {len} bytes");
            assert!(out.bytes.ends_with(&response.body));
            let mut out = CountingWriter::default();
            write_response(&mut out, &response, true, true).unwrap();
            assert_eq!(out.writes, 1, "HEAD with a body of {len} bytes");
            assert!(out.bytes.ends_with(b"\r\n\r\n"));
        }
    }

    #[test]
    fn http_dates_are_imf_fixdate() {
        let at = |unix| http_date(time::OffsetDateTime::from_unix_timestamp(unix).unwrap());
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(1_709_251_199), "Thu, 29 Feb 2024 23:59:59 GMT");
        assert_eq!(at(1_735_689_600), "Wed, 01 Jan 2025 00:00:00 GMT");
    }

    #[test]
    fn permits_bound_the_holders_and_come_back_on_drop() {
        let permits = Permits::new(2);
        let far = Instant::now() + Duration::from_secs(60);
        let first = permits.acquire(far).unwrap();
        let second = permits.acquire(far).unwrap();
        assert_eq!(permits.available(), 0);
        // None free: the wait ends at the deadline, with nothing.
        assert!(permits
            .acquire(Instant::now() + Duration::from_millis(20))
            .is_none());
        assert!(permits.acquire(Instant::now()).is_none());
        assert!(
            permits.state.lock().unwrap().queue.is_empty(),
            "no place kept"
        );
        drop(first);
        assert_eq!(permits.available(), 1);
        let third = permits.acquire(Instant::now()).unwrap();
        drop((second, third));
        assert_eq!(permits.available(), 2);
        // Zero is one: a server always handles something.
        assert_eq!(Permits::new(0).available(), 1);
    }

    #[test]
    fn a_permit_given_back_goes_to_a_waiter_not_to_a_newcomer() {
        let permits = Permits::new(1);
        let held = permits.acquire(Instant::now()).unwrap();
        std::thread::scope(|scope| {
            let (tell, told) = std::sync::mpsc::channel();
            let shared = &permits;
            let waiter = scope.spawn(move || {
                let permit = shared.acquire(Instant::now() + Duration::from_secs(60));
                let got = permit.is_some();
                // Held until the newcomer below has asked.
                let _ = told.recv();
                got
            });
            while permits.state.lock().unwrap().queue.is_empty() {
                std::thread::yield_now();
            }
            drop(held);
            assert!(
                permits.acquire(Instant::now()).is_none(),
                "the permit went to the thread that was waiting"
            );
            tell.send(()).unwrap();
            assert!(waiter.join().unwrap(), "the waiter got the permit");
        });
        let state = permits.state.lock().unwrap();
        assert_eq!((state.free, state.queue.len()), (1, 0));
    }

    /// A request as the guard hands it on, from a loopback client.
    fn request(method: &str, target: &str) -> Request {
        Request {
            head: Head {
                method: method.into(),
                target: target.into(),
                headers: Vec::new(),
                content_length: 0,
                expects_continue: false,
                keep_alive: true,
            },
            body: Vec::new(),
            peer: "127.0.0.1:5000".into(),
            remote: "127.0.0.1:5000".into(),
        }
    }

    #[test]
    fn what_a_handler_leaves_runs_with_its_permit_given_back_and_may_change_the_answer() {
        let permits = Arc::new(Permits::new(1));
        let deadline = Instant::now() + Duration::from_secs(60);
        let seen = Arc::new(AtomicUsize::new(usize::MAX));
        let handler = {
            let (permits, seen) = (Arc::clone(&permits), Arc::clone(&seen));
            move |_: &mut Request| {
                let (permits, seen) = (Arc::clone(&permits), Arc::clone(&seen));
                Handled {
                    response: ok_response(b"computed"),
                    then: Some(Box::new(move |response: &mut Response| {
                        seen.store(permits.available(), Ordering::SeqCst);
                        *response = Response::text(500, INTERNAL_ERROR);
                    })),
                }
            }
        };
        let mut asked = request("POST", "/ota/phase23");
        let answered = run_handler(&handler, &permits, deadline, &mut asked).unwrap();
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "the permit was free while it waited"
        );
        assert_eq!(answered.status, 500);

        // A panic there is a 500 too, and the permit stays given back.
        let panics = |_: &mut Request| Handled {
            response: ok_response(b"computed"),
            then: Some(Box::new(|_: &mut Response| panic!("a bug while waiting"))),
        };
        assert_eq!(
            run_handler(&panics, &permits, deadline, &mut asked),
            Err(Unhandled::Panicked)
        );
        assert_eq!(permits.available(), 1);
    }

    #[test]
    fn a_panicking_handler_gets_500_and_gives_its_permit_back() {
        let permits = Permits::new(1);
        let deadline = Instant::now() + Duration::from_secs(60);
        let panics = |_: &mut Request| -> Handled { panic!("a bug in a handler") };
        let mut asked = request("GET", "/ota/enroll?token=secret");
        assert_eq!(
            run_handler(&panics, &permits, deadline, &mut asked),
            Err(Unhandled::Panicked)
        );
        assert_eq!(permits.available(), 1, "the permit came back");
        let rejection = Unhandled::Panicked.rejection(1);
        assert_eq!(
            (rejection.status, rejection.reason.as_str()),
            (500, INTERNAL_ERROR)
        );
        assert_eq!(asked.path(), "/ota/enroll", "logged without its query");

        // The next request is handled as if nothing happened.
        let answers = |_: &mut Request| Handled::from(ok_response(b"ok"));
        let mut next = request("GET", "/healthz");
        let answered = run_handler(&answers, &permits, deadline, &mut next).unwrap();
        assert_eq!(answered.status, 200);
        assert_eq!(permits.available(), 1);
    }

    #[test]
    fn a_request_that_gets_no_permit_by_its_deadline_is_busy() {
        let permits = Permits::new(1);
        let held = permits.acquire(Instant::now()).unwrap();
        let answers = |_: &mut Request| Handled::from(ok_response(b"ok"));
        let soon = Instant::now() + Duration::from_millis(20);
        let got = run_handler(&answers, &permits, soon, &mut request("GET", "/"));
        assert_eq!(got, Err(Unhandled::Busy));
        let rejection = Unhandled::Busy.rejection(4);
        assert_eq!(rejection.status, 503);
        assert!(
            rejection.reason.contains("4 requests"),
            "{}",
            rejection.reason
        );
        drop(held);
        assert_eq!(permits.available(), 1);
    }

    #[test]
    fn at_most_workers_requests_are_in_the_handler_at_once() {
        for workers in [1, 3] {
            let permits = Permits::new(workers);
            let inside = AtomicUsize::new(0);
            let most = AtomicUsize::new(0);
            let slow = |_: &mut Request| {
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(30));
                inside.fetch_sub(1, Ordering::SeqCst);
                Handled::from(ok_response(b"ok"))
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            std::thread::scope(|scope| {
                let callers: Vec<_> = (0..6)
                    .map(|_| {
                        scope.spawn(|| {
                            let mut asked = request("POST", "/ota/phase23");
                            run_handler(&slow, &permits, deadline, &mut asked).map(|r| r.status)
                        })
                    })
                    .collect();
                for caller in callers {
                    assert_eq!(caller.join().unwrap(), Ok(200), "every request is answered");
                }
            });
            let most = most.load(Ordering::SeqCst);
            assert!(
                most >= 1 && most <= workers,
                "{most} at once with {workers} workers"
            );
            assert_eq!(permits.available(), workers);
        }
    }

    /// A guard serving on loopback with a handler of the test's own; stopped when dropped.
    struct Running {
        address: SocketAddr,
        shutdown: Arc<Shutdown>,
        acceptor: Option<std::thread::JoinHandle<()>>,
    }

    impl Running {
        fn start(workers: usize, handler: Arc<Handler>) -> Running {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let shutdown = Arc::new(Shutdown::default());
            let service = Service {
                limits: Limits {
                    workers,
                    ..limits(Duration::from_secs(10))
                },
                handler,
                trusted_proxies: Vec::new(),
                tls: None,
                shutdown: Arc::clone(&shutdown),
                metrics: Arc::new(crate::metrics::Metrics::default()),
            };
            let acceptor = std::thread::spawn(move || run(listener, service));
            Running {
                address,
                shutdown,
                acceptor: Some(acceptor),
            }
        }

        fn connect(&self) -> TcpStream {
            let stream = TcpStream::connect(self.address).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            stream
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.shutdown.begin();
            if let Some(acceptor) = self.acceptor.take() {
                acceptor.join().unwrap();
            }
        }
    }

    /// Sends `method target` and reads the answer: status line, headers (names lowercased),
    /// and the body its Content-Length gives (none for HEAD).
    fn ask(stream: &mut TcpStream, method: &str, target: &str) -> (String, String, Vec<u8>) {
        let request = format!("{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).unwrap(), 1, "cut off: {head:?}");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        let (status, headers) = head.split_once("\r\n").unwrap();
        let length = headers
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .map(|n| n.parse().unwrap());
        let mut body = vec![0u8; if method == "HEAD" { 0 } else { length.unwrap() }];
        stream.read_exact(&mut body).unwrap();
        (status.to_string(), headers.to_string(), body)
    }

    /// Whether the server closed `stream` (after what it already sent).
    fn closed(stream: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).is_ok() && rest.is_empty()
    }

    /// A handler with a route for each case: 404, a panic, a HEAD without length, a slow one
    /// that counts how many are inside it at once.
    fn test_handler(inside: Arc<AtomicUsize>, most: Arc<AtomicUsize>) -> Arc<Handler> {
        Arc::new(move |request: &mut Request| {
            Handled::from(match request.path() {
                "/missing" => Response::text(404, "/missing: no such endpoint"),
                "/panic" => panic!("a bug in a handler"),
                "/profile" => Response {
                    status: 200,
                    content_type: "application/x-apple-aspen-config",
                    headers: Vec::new(),
                    body: Vec::new(),
                    length_unknown: request.head.method == "HEAD",
                },
                "/slow" => {
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(300));
                    inside.fetch_sub(1, Ordering::SeqCst);
                    ok_response(b"slow")
                }
                _ => ok_response(b"ok"),
            })
        })
    }

    #[test]
    fn a_handler_refusal_keeps_the_connection_and_a_panic_closes_it() {
        let counters = (Arc::default(), Arc::default());
        let running = Running::start(1, test_handler(counters.0, counters.1));
        let mut stream = running.connect();
        let (status, headers, body) = ask(&mut stream, "GET", "/missing");
        assert_eq!(status, "http/1.1 404 not found");
        assert!(headers.contains("connection: keep-alive"), "{headers}");
        assert_eq!(body, b"/missing: no such endpoint\n");
        let (status, headers, body) = ask(&mut stream, "GET", "/healthz");
        assert_eq!(status, "http/1.1 200 ok", "served again after the 404");
        assert!(headers.contains("connection: keep-alive"), "{headers}");
        assert_eq!(body, b"ok");

        // HEAD with no length to give: no Content-Length, no body, and the connection goes on.
        let (status, headers, _) = ask(&mut stream, "HEAD", "/profile");
        assert_eq!(status, "http/1.1 200 ok");
        assert!(!headers.contains("content-length"), "{headers}");
        assert!(headers.contains("connection: keep-alive"), "{headers}");
        let (status, _, body) = ask(&mut stream, "GET", "/healthz");
        assert_eq!(
            (status.as_str(), &body[..]),
            ("http/1.1 200 ok", &b"ok"[..])
        );

        // A panic: 500 with one line, the connection closed; the one permit is free again.
        let (status, headers, body) = ask(&mut stream, "GET", "/panic?token=secret");
        assert_eq!(status, "http/1.1 500 internal server error");
        assert!(headers.contains("connection: close"), "{headers}");
        assert_eq!(body, format!("{INTERNAL_ERROR}\n").as_bytes());
        assert!(closed(&mut stream));
        let mut again = running.connect();
        let (status, _, _) = ask(&mut again, "GET", "/healthz");
        assert_eq!(status, "http/1.1 200 ok", "the only permit was given back");
    }

    #[test]
    fn with_one_worker_two_slow_requests_are_handled_one_at_a_time() {
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let running = Running::start(1, test_handler(Arc::clone(&inside), Arc::clone(&most)));
        let answers: Vec<(String, Vec<u8>)> = std::thread::scope(|scope| {
            let clients: Vec<_> = (0..2)
                .map(|_| {
                    let mut stream = running.connect();
                    scope.spawn(move || {
                        let (status, _, body) = ask(&mut stream, "POST", "/slow");
                        (status, body)
                    })
                })
                .collect();
            clients.into_iter().map(|c| c.join().unwrap()).collect()
        });
        for (status, body) in answers {
            assert_eq!(
                (status.as_str(), &body[..]),
                ("http/1.1 200 ok", &b"slow"[..])
            );
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            1,
            "one request in the handler at a time"
        );
    }

    /// Scans `parts` one after another, as reads bring them; the first refusal's status.
    fn scan(parts: &[&str]) -> Result<(), (u16, String)> {
        let mut scan = HeadScan::default();
        let mut received = Vec::new();
        for part in parts {
            received.extend_from_slice(part.as_bytes());
            scan.advance(&received).map_err(|r| (r.status, r.reason))?;
        }
        Ok(())
    }

    #[test]
    fn a_bare_lf_or_cr_anywhere_in_the_head_is_refused_as_soon_as_it_arrives() {
        let bare_lf = |parts: &[&str]| {
            let (status, reason) = scan(parts).unwrap_err();
            assert_eq!(status, 400, "{parts:?}");
            assert!(reason.contains("bare LF"), "{parts:?}: {reason}");
        };
        bare_lf(&["GET /healthz HTTP/1.1\nHost: x\n\n"]);
        bare_lf(&["\n"]);
        bare_lf(&["GET /healthz HTTP/1.1\n"]);
        bare_lf(&["GET / HTTP/1.1\r\nHost: x\nX: y\r\n"]);
        bare_lf(&["GET / HTTP/1.1\r\nHost: x\r\n", "\n"]);
        // A CR must be followed by its LF, which may come in the next read.
        for parts in [
            &["GET / HTTP/1.1\r\nHost: x\r\n\r", "\r\n"][..],
            &["GET / HTTP/1.1\rHost: x"],
            &["GET / HTTP/1.1\r", "X"],
        ] {
            let (status, reason) = scan(parts).unwrap_err();
            assert_eq!(status, 400, "{parts:?}");
            assert!(reason.contains("bare CR"), "{parts:?}: {reason}");
        }
        assert_eq!(scan(&["GET / HTTP/1.1\r"]), Ok(()));
        // A CRLF split between two reads is one line end.
        assert_eq!(
            scan(&["GET / HTTP/1.1\r", "\nHost: x\r", "\n\r", "\n"]),
            Ok(())
        );
        // A head still arriving with nothing wrong yet waits for more.
        assert_eq!(scan(&["GET /healthz HTTP/1.1\r\nHost: x\r\n"]), Ok(()));
        assert_eq!(scan(&["GET /healthz"]), Ok(()));
        assert_eq!(scan(&[""]), Ok(()));
    }

    #[test]
    fn a_request_line_is_checked_as_soon_as_it_ends() {
        let (status, reason) = scan(&["GET /healthz\r\n"]).unwrap_err();
        assert_eq!(status, 400);
        assert!(reason.contains("HTTP/0.9"), "{reason}");
        assert_eq!(scan(&["GET /healthz", "\r", "\n"]).unwrap_err().0, 400);
        assert_eq!(scan(&["GET / HTTP/2.0\r\n"]).unwrap_err().0, 505);
        assert_eq!(scan(&["get / HTTP/1.1\r\n"]).unwrap_err().0, 400);
        assert_eq!(scan(&["GET /\u{e4} HTTP/1.1\r\n"]).unwrap_err().0, 400);
        assert_eq!(scan(&["GET\r\n"]).unwrap_err().0, 400);
        // Only the first line is a request line: headers with spaces are not one.
        assert_eq!(
            scan(&["GET / HTTP/1.0\r\n", "User-Agent: a b c\r\n\r\n"]),
            Ok(())
        );
        // The whole head says the same (a 0.9 line followed by a blank line).
        let whole = head("GET /healthz").unwrap_err();
        assert_eq!(whole.status, 400);
        assert!(whole.reason.contains("HTTP/0.9"), "{}", whole.reason);
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
        assert!(parsed.keep_alive);
        // Hop headers are dropped. X-Otad-Remote named the client between the guard and the
        // handlers once; nothing reads it now, so a client's copy is an ordinary header.
        let pair = |name: &str, value: &str| (name.to_string(), value.to_string());
        assert_eq!(
            parsed.headers,
            vec![pair("Host", "x"), pair("X-Otad-Remote", "6.6.6.6:1")]
        );
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_names_it() {
        let pool = |trusted: &[&str]| Pool {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            limits: limits(Duration::from_secs(1)),
            handler: Arc::new(|_: &mut Request| Handled::from(ok_response(b""))),
            permits: Permits::new(1),
            trusted_proxies: trusted
                .iter()
                .map(|cidr| crate::gate::cidr::Cidr::parse(cidr).unwrap())
                .collect(),
            waiting: AtomicUsize::new(0),
            tls: None,
            shutdown: Arc::new(Shutdown::default()),
            metrics: Arc::new(crate::metrics::Metrics::default()),
        };
        let forwarded = head(
            "GET /ota/enroll HTTP/1.1\r\nX-Forwarded-For: 203.0.113.9\r\n\
             X-Otad-Remote: 6.6.6.6:1",
        )
        .unwrap();
        let peer: SocketAddr = "10.1.2.3:40000".parse().unwrap();
        let direct = pool(&[]).request(forwarded.clone(), Vec::new(), peer);
        assert_eq!(
            (direct.peer.as_str(), direct.remote.as_str()),
            ("10.1.2.3:40000", "10.1.2.3:40000")
        );
        let proxied = pool(&["10.0.0.0/8"]).request(forwarded, Vec::new(), peer);
        assert_eq!(
            (proxied.peer.as_str(), proxied.remote.as_str()),
            ("10.1.2.3:40000", "203.0.113.9")
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
        // Digits only: a proxy in front might read "+3" or "3 " otherwise than otad.
        for odd in ["+3", "-0", "0x3", "3 3", ""] {
            let text = format!("POST /scep HTTP/1.1\r\nContent-Length: {odd}");
            assert_eq!(status(&text), 400, "{odd:?}");
        }
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

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        let keeps = |text: &str| head(text).unwrap().keep_alive;
        assert!(keeps("GET / HTTP/1.1"));
        assert!(!keeps("GET / HTTP/1.1\r\nConnection: close"));
        assert!(!keeps("GET / HTTP/1.1\r\nConnection: TE, Close"));
        assert!(!keeps("GET / HTTP/1.0"));
        assert!(keeps("GET / HTTP/1.0\r\nConnection: Keep-Alive"));
    }

    #[test]
    fn each_route_gets_its_body_limit_exactly() {
        const MAX: usize = 65536;
        let declared = |method: &str, target: &str, n: usize| {
            parse_head(
                format!("{method} {target} HTTP/1.1\r\nContent-Length: {n}").as_bytes(),
                MAX,
            )
            .map(|head| head.content_length)
            .map_err(|rejection| rejection.status)
        };
        let with_body = [
            "/ota/phase23",
            "/mdm/enroll",
            "/scep",
            "/scep?operation=PKIOperation",
            "/scep/pkiclient.exe?operation=PKIOperation",
            "/cgi-bin/pkiclient.exe",
        ];
        for target in with_body {
            assert_eq!(declared("POST", target, MAX), Ok(MAX), "{target}");
            assert_eq!(declared("POST", target, MAX + 1), Err(413), "{target}");
        }
        let without_body = [
            ("GET", "/healthz"),
            ("GET", "/ota/enroll?token=x"),
            ("GET", "/scep?operation=GetCACert"),
            ("GET", "/mdm/enroll"),
            ("POST", "/healthz"),
            ("POST", "/ota/enroll"),
            ("PUT", "/ota/phase23"),
            ("POST", "/ota/phase23/"),
            ("POST", "/nowhere"),
        ];
        for (method, target) in without_body {
            assert_eq!(
                declared(method, target, MAX_BODY_ELSEWHERE),
                Ok(MAX_BODY_ELSEWHERE),
                "{method} {target}"
            );
            assert_eq!(
                declared(method, target, MAX_BODY_ELSEWHERE + 1),
                Err(413),
                "{method} {target}"
            );
        }
        assert_eq!(body_limit("POST", "/ota/phase23", 2048), 2048);
        assert_eq!(body_limit("GET", "/", 1024), MAX_BODY_ELSEWHERE);
    }

    #[test]
    fn head_size_and_header_count_at_their_edges() {
        let status = |text: &str| head(text).map(|_| 200).unwrap_or_else(|r| r.status);
        let headers = |n: usize| -> String {
            let lines: String = (0..n).map(|i| format!("\r\nH{i}: v")).collect();
            format!("GET / HTTP/1.1{lines}")
        };
        assert_eq!(status(&headers(MAX_HEADERS)), 200);
        assert_eq!(status(&headers(MAX_HEADERS + 1)), 431);
        // Hop-by-hop headers count too: the limit is on what the client sends.
        let hop: String = (0..MAX_HEADERS)
            .map(|_| "\r\nConnection: keep-alive")
            .collect();
        assert_eq!(status(&format!("GET / HTTP/1.1{hop}\r\nX: y")), 431);
    }

    /// A connected loopback pair: (the guard's side, the client's side).
    fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    fn limits(request_timeout: Duration) -> Limits {
        Limits {
            max_connections: 4,
            max_body: 65536,
            request_timeout,
            workers: 2,
        }
    }

    fn read_one(stream: &mut TcpStream, limits: &Limits) -> Result<(Head, Vec<u8>), u16> {
        let mut buffer = Vec::new();
        match read_request(stream, limits, &mut buffer, None) {
            Ok(Received::Request(head, body, _)) => Ok((head, body)),
            Ok(Received::Gone) => Err(0),
            Err(rejection) => Err(rejection.status),
        }
    }

    #[test]
    fn the_head_may_fill_max_head_bytes_and_no_more() {
        // The head is the request line and headers, the blank line not counted.
        let head_of = |len: usize| {
            let start = "GET / HTTP/1.1\r\nX: ";
            format!("{start}{}", "a".repeat(len - start.len()))
        };
        for (len, expected) in [(MAX_HEAD_BYTES, Ok(())), (MAX_HEAD_BYTES + 1, Err(431))] {
            let (mut server, mut client) = socket_pair();
            let request = format!("{}\r\n\r\n", head_of(len));
            let writer = std::thread::spawn(move || {
                let _ = client.write_all(request.as_bytes());
                client
            });
            let got = read_one(&mut server, &limits(Duration::from_secs(5)));
            assert_eq!(got.map(|_| ()), expected, "a head of {len} bytes");
            drop(writer.join());
        }
    }

    #[test]
    fn bare_lf_and_http_0_9_heads_are_answered_at_once_not_at_the_deadline() {
        let timeout = Duration::from_secs(5);
        let tester_found: [&[u8]; 3] = [
            b"GET /healthz HTTP/1.1\nHost: x\n\n",
            b"GET /healthz\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\n",
        ];
        for request in tester_found {
            // The client sends its bytes and waits, its side open.
            let (mut server, mut client) = socket_pair();
            client.write_all(request).unwrap();
            let started = Instant::now();
            let got = read_one(&mut server, &limits(timeout)).map(|_| ());
            let waited = started.elapsed();
            assert_eq!(got, Err(400), "{:?}", String::from_utf8_lossy(request));
            assert!(waited < Duration::from_secs(1), "{waited:?}");
            drop(client);
        }

        // A body may hold LF alone, and a request pipelined after it is left for the next read.
        let (mut server, mut client) = socket_pair();
        client
            .write_all(b"POST /ota/phase23 HTTP/1.1\r\nContent-Length: 3\r\n\r\na\nbGET /\n")
            .unwrap();
        let mut buffer = Vec::new();
        match read_request(&mut server, &limits(timeout), &mut buffer, None) {
            Ok(Received::Request(head, body, _)) => {
                assert_eq!((head.content_length, body), (3, b"a\nb".to_vec()));
            }
            Ok(Received::Gone) => panic!("gone"),
            Err(rejection) => panic!("{rejection:?}"),
        }
        assert_eq!(buffer, b"GET /\n");
        let next = read_request(&mut server, &limits(timeout), &mut buffer, None);
        assert_eq!(
            next.err().map(|r| r.status),
            Some(400),
            "its bare LF is its own"
        );
    }

    #[test]
    fn a_request_slower_than_request_timeout_gets_408() {
        let timeout = Duration::from_millis(300);

        // Whole within the deadline: read.
        let (mut server, mut client) = socket_pair();
        client
            .write_all(b"POST /ota/phase23 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
            .unwrap();
        let (head, body) = read_one(&mut server, &limits(timeout)).unwrap();
        assert_eq!((head.content_length, body), (3, b"abc".to_vec()));

        // The head arrives, the body never does: 408 at the deadline, not at IO_TIMEOUT.
        let (mut server, mut client) = socket_pair();
        client
            .write_all(b"POST /ota/phase23 HTTP/1.1\r\nContent-Length: 3\r\n\r\nab")
            .unwrap();
        let started = Instant::now();
        assert_eq!(
            read_one(&mut server, &limits(timeout)).map(|_| ()),
            Err(408)
        );
        let waited = started.elapsed();
        assert!(waited >= timeout && waited < timeout * 5, "{waited:?}");

        // A head trickled a byte at a time past the deadline: 408 too.
        let (mut server, client) = socket_pair();
        let trickle = std::thread::spawn(move || {
            let mut client = client;
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n".iter() {
                if client.write_all(&[*byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        assert_eq!(
            read_one(&mut server, &limits(timeout)).map(|_| ()),
            Err(408)
        );
        drop(server);
        drop(trickle.join());
    }
}
