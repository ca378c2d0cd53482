//! The HTTP limits at their edges, against a running server: a body of exactly the limit
//! reaches the handler and one byte more is refused by the guard from its Content-Length
//! alone (the body is never sent); a head of exactly MAX_HEAD_BYTES and MAX_HEADERS headers
//! is served and one more gets 431. Each refusal closes the connection.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::server::{set_key, TestServer};
use otad::http::guard::{BODY_ROUTES, MAX_BODY_ELSEWHERE, MAX_HEADERS, MAX_HEAD_BYTES};

/// `http.max_body` as `otad init` writes it.
const MAX_BODY: usize = 64 * 1024;

/// How long a client here waits for an answer: far below `http.request_timeout` (30 s), so
/// an answer in time cannot be a 408 for a body the guard waited for.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// What came back on one connection.
struct Answer {
    /// The status code.
    status: u16,
    /// The response body, as text.
    body: String,
    /// Whether the server closed the connection after the answer.
    closed: bool,
}

/// Sends `head` (a request head without its blank line) declaring `declared` body bytes and
/// then `body`, reads one answer, and looks whether the server then closes.
fn exchange(server: &TestServer, head: &str, declared: usize, body: &[u8]) -> Answer {
    let address = server.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    let request = format!("{head}\r\nContent-Length: {declared}\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    // A refused upload may be cut off by the server's close: that is the point.
    let _ = stream.write_all(body);

    let started = Instant::now();
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, length) = loop {
        match stream.read(&mut chunk) {
            Ok(0) => panic!("{head}: closed without an answer"),
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(err) => panic!("{head}: no answer after {:?}: {err}", started.elapsed()),
        }
        if let Some(at) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&response[..at]).to_string();
            let length = text
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().unwrap())
                })
                .unwrap();
            break (at + 4, length);
        }
    };
    while response.len() < head_end + length {
        match stream.read(&mut chunk) {
            Ok(n) if n > 0 => response.extend_from_slice(&chunk[..n]),
            other => panic!("{head}: short body: {other:?}"),
        }
    }
    let status_line = String::from_utf8_lossy(&response[..head_end]).to_string();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap();
    let body = String::from_utf8_lossy(&response[head_end..head_end + length]).to_string();
    // A refusal shuts the connection at once; a kept one stays open past this wait.
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let closed = matches!(stream.read(&mut chunk), Ok(0));
    Answer {
        status,
        body,
        closed,
    }
}

fn dep_enabled() -> TestServer {
    TestServer::start(|config| set_key(&config, "mdm", "dep_enroll", "true"))
}

#[test]
fn a_body_route_takes_exactly_max_body_and_refuses_one_byte_more_unsent() {
    let server = dep_enabled();
    let full = vec![b'x'; MAX_BODY];
    // What each handler says of MAX_BODY bytes that are not a message (the guard passed them).
    for (method, path) in BODY_ROUTES {
        let target = if path.contains("scep") || path.contains("pkiclient") {
            format!("{path}?operation=PKIOperation")
        } else {
            path.to_string()
        };
        let head = format!("{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close");

        let at_limit = exchange(&server, &head, MAX_BODY, &full);
        assert_eq!(at_limit.status, 400, "{target}: {}", at_limit.body);
        assert!(
            !at_limit.body.contains("request body"),
            "{target}: the handler, not a size limit, refused it: {}",
            at_limit.body
        );

        let over = exchange(&server, &head, MAX_BODY + 1, b"");
        assert_eq!(over.status, 413, "{target}: {}", over.body);
        assert!(
            over.body.contains(&format!("over the {MAX_BODY}")),
            "{}",
            over.body
        );
        assert!(over.closed, "{target}: a refusal closes the connection");
    }
    assert!(server.log().contains("request refused: 413"));
}

#[test]
fn other_routes_take_a_small_body_and_refuse_one_byte_more_unsent() {
    let server = dep_enabled();
    let small = vec![b'x'; MAX_BODY_ELSEWHERE];
    let routes = [
        ("GET /healthz", 200),
        ("GET /ca", 200),
        ("GET /scep?operation=GetCACaps", 200),
        ("POST /healthz", 405),
        ("GET /nowhere", 404),
    ];
    for (line, served) in routes {
        // Kept alive, so that the refusal's closing is the guard's doing.
        let head = format!("{line} HTTP/1.1\r\nHost: x");
        let at_limit = exchange(&server, &head, MAX_BODY_ELSEWHERE, &small);
        assert_eq!(at_limit.status, served, "{line}: {}", at_limit.body);
        assert!(
            !at_limit.closed,
            "{line}: an accepted request keeps the connection"
        );

        let over = exchange(&server, &head, MAX_BODY_ELSEWHERE + 1, b"");
        assert_eq!(over.status, 413, "{line}: {}", over.body);
        assert!(
            over.body
                .contains(&format!("over the {MAX_BODY_ELSEWHERE}")),
            "{}",
            over.body
        );
        assert!(over.closed, "{line}: a refusal closes the connection");
    }

    // Far over: a GET declaring what a phase 2 body may be.
    let over = exchange(&server, "GET /ota/enroll HTTP/1.1", MAX_BODY, b"");
    assert_eq!(over.status, 413);
}

#[test]
fn the_head_and_its_header_count_are_served_to_the_byte_and_refused_past_it() {
    let server = TestServer::start(|config| config);

    // "GET /healthz HTTP/1.1\r\nContent-Length: 0" plus one padding header, to `len` bytes.
    let padded = |len: usize| {
        let fixed = "GET /healthz HTTP/1.1\r\nContent-Length: 0".len();
        let name = "\r\nX-Pad: ";
        format!(
            "GET /healthz HTTP/1.1{name}{}",
            "a".repeat(len - fixed - name.len())
        )
    };
    let at_limit = exchange(&server, &padded(MAX_HEAD_BYTES), 0, b"");
    assert_eq!(at_limit.status, 200, "{}", at_limit.body);
    let over = exchange(&server, &padded(MAX_HEAD_BYTES + 1), 0, b"");
    assert_eq!(over.status, 431, "{}", over.body);
    assert!(over.closed);

    // Content-Length is one of the headers.
    let headers = |n: usize| {
        let extra: String = (1..n).map(|i| format!("\r\nX-H{i}: v")).collect();
        format!("GET /healthz HTTP/1.1{extra}")
    };
    let at_limit = exchange(&server, &headers(MAX_HEADERS), 0, b"");
    assert_eq!(at_limit.status, 200, "{}", at_limit.body);
    let over = exchange(&server, &headers(MAX_HEADERS + 1), 0, b"");
    assert_eq!(over.status, 431, "{}", over.body);
    assert!(over.closed);
}
