//! Hostile clients against a running server: absurd declared lengths, header floods, stalled
//! uploads, protocol oddities (bare-LF heads, HTTP/0.9 request lines, HEAD). Each gets its
//! status from the guard, and a normal enrollment still goes through meanwhile.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::server::{set_key, TestServer};
use common::state::RecordKind;
use otad::http::guard::{KEEP_ALIVE_IDLE, MAX_REQUESTS_PER_CONNECTION};

/// Sends raw bytes and returns the response's status line (empty if the server closed).
fn raw(server: &TestServer, request: &[u8]) -> String {
    let address = server.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn alive(server: &TestServer) -> bool {
    otad::httpclient::get(&format!("{}/healthz", server.url)).is_ok_and(|r| r.status == 200)
}

#[test]
fn absurd_requests_get_their_status_and_the_server_lives_on() {
    let server = TestServer::start(|config| config);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000000\r\n\r\n".to_vec(),
            "413",
        ),
        (
            b"POST /ota/phase23 HTTP/1.1\r\nContent-Length: 65537\r\nExpect: 100-continue\r\n\r\n"
                .to_vec(),
            "413",
        ),
        (
            b"POST /ota/phase23 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            "411",
        ),
        (b"GET / HTTP/2.0\r\n\r\n".to_vec(), "505"),
        (b"GET /\x1b[31m HTTP/1.1\r\n\r\n".to_vec(), "400"),
        (
            format!("GET / HTTP/1.1\r\n{}\r\n", "X-Flood: v\r\n".repeat(200)).into_bytes(),
            "431",
        ),
        (
            format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(40 * 1024)).into_bytes(),
            "431",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nX-Otad-Remote: 6.6.6.6:1\r\nConnection: close\r\n\r\n"
                .to_vec(),
            "200",
        ),
    ];
    for (request, status) in cases {
        let line = raw(&server, &request);
        assert!(
            line.contains(status),
            "{:?} -> {line:?}",
            String::from_utf8_lossy(&request[..40.min(request.len())])
        );
        assert!(
            alive(&server),
            "the server died after {:?}",
            String::from_utf8_lossy(&request[..40.min(request.len())])
        );
    }
    let log = server.log();
    assert!(
        !log.contains("remote=6.6.6.6"),
        "a client cannot name its own address"
    );
}

#[test]
fn stalled_uploads_time_out_without_blocking_an_enrollment() {
    let server = TestServer::start(|config| set_key(&config, "http", "request_timeout", "\"2s\""));
    let address = server.url.trim_start_matches("http://").to_string();

    // More stalled uploads than there are workers: each declares a body and sends none.
    let stalled: Vec<TcpStream> = (0..16)
        .map(|_| {
            let mut stream = TcpStream::connect(&address).unwrap();
            stream
                .write_all(b"POST /ota/phase23 HTTP/1.1\r\nContent-Length: 2000\r\n\r\n")
                .unwrap();
            stream
        })
        .collect();

    let started = Instant::now();
    let summary = otad::simulate::run(&server.device_options()).unwrap();
    assert_eq!(
        summary.payload_types,
        vec!["com.apple.security.scep", "com.apple.mdm"]
    );
    eprintln!(
        "enrollment beside 16 stalled uploads took {:?}",
        started.elapsed()
    );

    for mut stream in stalled {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        assert!(
            String::from_utf8_lossy(&response).starts_with("HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&response)
        );
    }
}

#[test]
fn connections_beyond_the_cap_are_told_to_come_back() {
    let server = TestServer::start(|config| set_key(&config, "http", "max_connections", "2"));
    let address = server.url.trim_start_matches("http://").to_string();
    // Four idle connections: whatever the readiness probe's connection still holds for a
    // moment, at least two of them take the two places.
    let _held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(&address).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let line = raw(&server, b"GET /healthz HTTP/1.1\r\n\r\n");
    assert!(line.contains("503"), "{line}");
}

/// Reads one response (head and Content-Length body) from a kept-alive connection: its status
/// line and Connection header; `None` once the server closed.
fn response(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => bytes.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&bytes).to_string();
    let header = |name: &str| {
        head.lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default()
    };
    let mut body = vec![0u8; header("content-length").parse().unwrap()];
    stream.read_exact(&mut body).unwrap();
    let status = head.lines().next().unwrap_or_default().to_string();
    Some((status, header("connection")))
}

fn connect(server: &TestServer) -> TcpStream {
    let stream = TcpStream::connect(server.url.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(KEEP_ALIVE_IDLE + Duration::from_secs(5)))
        .unwrap();
    stream
}

#[test]
fn a_connection_carries_several_requests_each_within_the_limits() {
    let server = TestServer::start(|config| config);
    let mut stream = connect(&server);

    // Two requests in one write (pipelined), then a third: each answered, the connection kept.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    for _ in 0..2 {
        let (status, connection) = response(&mut stream).unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(connection, "keep-alive");
    }
    stream
        .write_all(b"POST /ota/phase23 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
        .unwrap();
    let (status, connection) = response(&mut stream).unwrap();
    assert!(status.starts_with("HTTP/1.1 4"), "{status}");
    assert_eq!(
        connection, "keep-alive",
        "a handler's 4xx keeps the connection"
    );

    // A request over a limit is refused on a kept connection as on a new one, and closes it.
    stream
        .write_all(b"POST /ota/phase23 HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n")
        .unwrap();
    let (status, connection) = response(&mut stream).unwrap();
    assert!(status.contains("413"), "{status}");
    assert_eq!(connection, "close");
    assert!(response(&mut stream).is_none(), "closed after a refusal");

    // `Connection: close` and HTTP/1.0 are honoured.
    let mut stream = connect(&server);
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(response(&mut stream).unwrap().1, "close");
    assert!(response(&mut stream).is_none());
    let mut stream = connect(&server);
    stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(response(&mut stream).unwrap().1, "close");
}

#[test]
fn kept_connections_end_after_their_request_count_and_idle_time() {
    let server = TestServer::start(|config| config);
    let mut stream = connect(&server);
    for n in 1..=MAX_REQUESTS_PER_CONNECTION {
        stream.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
        let (status, connection) = response(&mut stream).unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK");
        let expected = if n < MAX_REQUESTS_PER_CONNECTION {
            "keep-alive"
        } else {
            "close"
        };
        assert_eq!(connection, expected, "request {n}");
    }
    assert!(response(&mut stream).is_none());

    // An idle kept connection is closed after KEEP_ALIVE_IDLE, silently.
    let mut stream = connect(&server);
    stream.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(response(&mut stream).unwrap().1, "keep-alive");
    let started = Instant::now();
    assert!(response(&mut stream).is_none());
    let waited = started.elapsed();
    assert!(
        waited >= KEEP_ALIVE_IDLE - Duration::from_millis(100)
            && waited < KEEP_ALIVE_IDLE + Duration::from_secs(3),
        "closed after {waited:?}"
    );
}

#[test]
fn at_most_half_the_connections_are_kept_waiting() {
    let server = TestServer::start(|config| set_key(&config, "http", "max_connections", "6"));
    let mut kept: Vec<(TcpStream, String)> = (0..4)
        .map(|_| {
            let mut stream = connect(&server);
            stream.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
            let (_, connection) = response(&mut stream).unwrap();
            (stream, connection)
        })
        .collect();
    let connections: Vec<&str> = kept.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(
        connections,
        ["keep-alive", "keep-alive", "keep-alive", "close"]
    );
    kept.pop();
    assert!(alive(&server), "a new client still gets in");
    let (stream, _) = kept.first_mut().unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(
        response(stream).unwrap().1,
        "keep-alive",
        "a kept connection is served again"
    );
}

/// Raises this process's open-file limit to its hard limit; returns the new soft limit.
fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

#[test]
fn a_thousand_idle_and_trickling_connections_do_not_keep_a_device_out() {
    let available = raise_open_files();
    if available < 1200 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: open-file hard limit {available} is too low for 1,000 connections"
        );
        eprintln!("SKIP: open-file limit {available} < 1,200");
        return;
    }
    let server = TestServer::start(|config| set_key(&config, "http", "request_timeout", "\"20s\""));
    let address = server.url.trim_start_matches("http://").to_string();

    // 950 connect and say nothing; 50 send a request head a byte at a time.
    let mut idle: Vec<TcpStream> = (0..950)
        .map(|_| TcpStream::connect(&address).unwrap())
        .collect();
    let mut trickling: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(&address).unwrap())
        .collect();
    let head = b"POST /ota/phase23 HTTP/1.1\r\nHost: x\r\n";
    for byte in head.iter().take(3) {
        for stream in &mut trickling {
            stream.write_all(&[*byte]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    let started = Instant::now();
    let summary = otad::simulate::run(&server.device_options()).unwrap();
    assert_eq!(
        summary.payload_types,
        vec!["com.apple.security.scep", "com.apple.mdm"]
    );
    eprintln!(
        "an enrollment beside 1,000 idle and trickling connections took {:?}",
        started.elapsed()
    );

    // Every one of them was taken, none was refused with 503: they are still open.
    for stream in idle.iter_mut().chain(trickling.iter_mut()).step_by(97) {
        stream.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let read = stream.read(&mut byte);
        assert!(
            matches!(&read, Err(err) if err.kind() == std::io::ErrorKind::WouldBlock),
            "a held connection was answered or closed: {read:?}"
        );
    }
    assert!(
        !server.log().contains("connection refused"),
        "{}",
        server.log()
    );
}

#[test]
fn a_flood_of_phase_1_downloads_is_capped_and_the_cap_frees_as_devices_answer() {
    let server = TestServer::start(|config| set_key(&config, "ota", "max_live_challenges", "3"));
    let enroll = format!("{}/ota/enroll", server.url);
    let mut device = otad::simulate::Device::new(&server.device_options()).unwrap();
    let first = device.phase1(&server.url).unwrap();
    for _ in 0..2 {
        assert_eq!(otad::httpclient::get(&enroll).unwrap().status, 200);
    }
    let refused = otad::httpclient::get(&enroll).unwrap();
    assert_eq!(refused.status, 503);
    assert!(String::from_utf8_lossy(&refused.body).contains("try again later"));
    assert!(refused
        .headers
        .iter()
        .any(|(name, value)| name.eq_ignore_ascii_case("retry-after") && value == "60"));
    assert_eq!(
        server.count(RecordKind::Challenge),
        3,
        "a refused download leaves nothing"
    );

    // Answering phase 1's challenge frees its place, but phase 2 hands out a SCEP one;
    // enrolling for the certificate uses that up, and a download fits again.
    let scep = device.phase2(&first).unwrap();
    assert_eq!(otad::httpclient::get(&enroll).unwrap().status, 503);
    device.enroll_scep(&scep).unwrap();
    assert_eq!(otad::httpclient::get(&enroll).unwrap().status, 200);
}

#[test]
fn bare_lf_heads_and_http_0_9_request_lines_are_refused_at_once() {
    let server = TestServer::start(|config| config);
    let address = server.url.trim_start_matches("http://").to_string();
    // The tester's reproductions, sent as `printf … | nc` sends them: the client's side stays
    // open, so only the server's answer ends the exchange.
    let cases: [(&[u8], &str); 3] = [
        (b"GET /healthz HTTP/1.1\nHost: x\n\n", "bare LF"),
        (b"GET /healthz\r\n", "HTTP/0.9"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\n", "bare LF"),
    ];
    for (request, reason) in cases {
        let mut stream = TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let started = Instant::now();
        stream.write_all(request).unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let waited = started.elapsed();
        let response = String::from_utf8_lossy(&response).to_string();
        let shown = String::from_utf8_lossy(request).to_string();
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{shown:?} -> {response:?}"
        );
        assert!(response.contains(reason), "{shown:?} -> {response:?}");
        assert!(response.contains("Connection: close\r\n"), "{response:?}");
        // IO_TIMEOUT is 10 s and http.request_timeout 30 s: an answer this early is the
        // guard's own, and the connection closed right after it.
        assert!(waited < Duration::from_secs(3), "{shown:?}: {waited:?}");
        assert!(alive(&server));
    }
    let log = server.log();
    for reason in [
        "request refused: 400 request head: a line ends in a bare LF",
        "request refused: 400 request line: no HTTP version",
    ] {
        assert!(
            log.lines()
                .any(|line| line.contains(reason) && line.contains("remote=127.0.0.1:")),
            "no warn line {reason:?} with the remote address:\n{log}"
        );
    }
}

#[test]
fn empty_lines_before_a_request_are_skipped_and_refusals_of_head_carry_no_body() {
    let server = TestServer::start(|config| config);
    let address = server.url.trim_start_matches("http://").to_string();
    let exchange = |request: &[u8]| {
        let mut stream = TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8_lossy(&response).to_string()
    };

    // RFC 9112 section 2.2: a stray CRLF before the request line, or after a body on a
    // kept-alive connection, is skipped.
    let answered = exchange(b"\r\nGET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(answered.starts_with("HTTP/1.1 200 "), "{answered:?}");
    let answered = exchange(
        b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n\r\n\
          GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    let statuses: Vec<&str> = answered
        .lines()
        .filter(|line| line.starts_with("HTTP/1.1 "))
        .collect();
    assert_eq!(statuses.len(), 2, "{answered:?}");
    assert!(statuses[0].starts_with("HTTP/1.1 405 "), "{answered:?}");
    assert!(statuses[1].starts_with("HTTP/1.1 200 "), "{answered:?}");
    // A few of them, not without end.
    let many = format!(
        "{}GET /healthz HTTP/1.1\r\n\r\n",
        "\r\n".repeat(otad::http::guard::MAX_EMPTY_LINES_BEFORE_REQUEST + 1)
    );
    assert!(exchange(many.as_bytes()).starts_with("HTTP/1.1 400 "));

    // The guard's own refusal of a HEAD: the head of the answer and nothing after it.
    let refused = exchange(b"HEAD /healthz HTTP/1.1\r\nContent-Length: 5000\r\n\r\n");
    assert!(refused.starts_with("HTTP/1.1 413 "), "{refused:?}");
    assert!(
        refused.ends_with("\r\n\r\n"),
        "no body after the head: {refused:?}"
    );
    let refused = exchange(b"GET /healthz HTTP/1.1\r\nContent-Length: 5000\r\n\r\n");
    assert!(
        refused.starts_with("HTTP/1.1 413 ") && !refused.ends_with("\r\n\r\n"),
        "a GET's refusal keeps its reason: {refused:?}"
    );
    assert!(alive(&server));
}

/// Reads one response head from a kept-alive connection: its status line and headers.
fn read_head(stream: &mut TcpStream) -> (String, Vec<(String, String)>) {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => bytes.push(byte[0]),
            other => panic!("response head cut off: {other:?} after {bytes:?}"),
        }
    }
    let head = String::from_utf8(bytes).unwrap();
    let mut lines = head.trim_end().split("\r\n");
    let status = lines.next().unwrap().to_string();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.to_ascii_lowercase(), value.trim().to_string())
        })
        .collect();
    (status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Sends `method target` on a kept-alive connection and reads the answer: status line,
/// headers and (for all but HEAD) the body its Content-Length gives.
fn ask(
    stream: &mut TcpStream,
    method: &str,
    target: &str,
) -> (String, Vec<(String, String)>, Vec<u8>) {
    let request = format!("{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let (status, headers) = read_head(stream);
    let mut body = Vec::new();
    if method != "HEAD" {
        body.resize(
            header(&headers, "content-length").unwrap().parse().unwrap(),
            0,
        );
        stream.read_exact(&mut body).unwrap();
    }
    assert_eq!(
        header(&headers, "connection"),
        Some("keep-alive"),
        "{method} {target}: {status}"
    );
    (status, headers, body)
}

#[test]
fn head_is_answered_as_get_without_a_body_on_every_get_route() {
    let server = TestServer::start(|config| set_key(&config, "mdm", "plain_enroll", "true"));

    // HEAD then GET on one connection: had HEAD sent a body, the GET's answer would not parse.
    let mut stream = connect(&server);
    let read_only = [
        "/ca",
        "/crl",
        "/healthz",
        "/scep?operation=GetCACaps",
        "/scep?operation=GetCACert",
        "/scep/pkiclient.exe?operation=GetCACert",
        "/scep?operation=GetNextCACert",
    ];
    for target in read_only {
        let (head_status, head_headers, _) = ask(&mut stream, "HEAD", target);
        let (get_status, get_headers, body) = ask(&mut stream, "GET", target);
        assert_eq!(head_status, get_status, "{target}");
        for name in ["content-type", "content-length"] {
            assert_eq!(
                header(&head_headers, name),
                header(&get_headers, name),
                "HEAD {target}: {name}"
            );
        }
        assert_eq!(
            header(&head_headers, "content-length"),
            Some(body.len().to_string().as_str()),
            "HEAD {target} gives the GET body's length"
        );
    }
    // The metrics change between two looks; their kind does not.
    let (status, headers, _) = ask(&mut stream, "HEAD", "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(header(&headers, "content-length").is_some_and(|n| n != "0"));

    // The enrollment profiles: the same status and type, no length, no challenge left behind.
    let before = server.snapshot();
    for (target, file) in [
        ("/ota/enroll", "enroll.mobileconfig"),
        ("/mdm/enroll", "enrollment.mobileconfig"),
    ] {
        let (status, headers, _) = ask(&mut stream, "HEAD", target);
        assert_eq!(status, "HTTP/1.1 200 OK", "{target}");
        assert_eq!(
            header(&headers, "content-type"),
            Some("application/x-apple-aspen-config"),
            "{target}"
        );
        assert_eq!(
            header(&headers, "content-disposition"),
            Some(format!("attachment; filename=\"{file}\"").as_str())
        );
        assert_eq!(header(&headers, "content-length"), None, "{target}");
        assert_eq!(header(&headers, "x-otad-length-unknown"), None, "{target}");
    }
    assert!(server.snapshot() == before, "a HEAD changed the state dir");
    let (_, _, metrics) = ask(&mut stream, "GET", "/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        !metrics.contains("otad_phase_total{phase=\"1\""),
        "a HEAD counted as phase 1:\n{metrics}"
    );
    // What HEAD spared: a GET leaves a challenge.
    let (status, _, body) = ask(&mut stream, "GET", "/ota/enroll");
    assert_eq!(
        (status.as_str(), body.is_empty()),
        ("HTTP/1.1 200 OK", false)
    );
    assert!(
        server.snapshot() != before,
        "GET /ota/enroll stored its challenge"
    );

    // Refused where GET is: 404 with plain enrollment off, and `Allow` names HEAD beside GET.
    let (status, _, _) = ask(&mut stream, "HEAD", "/nowhere");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    for (method, target, allow) in [
        ("POST", "/ca", "GET, HEAD"),
        ("DELETE", "/metrics", "GET, HEAD"),
        ("PUT", "/scep?operation=GetCACaps", "GET, HEAD, POST"),
        ("HEAD", "/ota/phase23", "POST"),
    ] {
        let (status, headers, _) = ask(&mut stream, method, target);
        assert_eq!(
            status, "HTTP/1.1 405 Method Not Allowed",
            "{method} {target}"
        );
        assert_eq!(header(&headers, "allow"), Some(allow), "{method} {target}");
    }
    let server = TestServer::start(|config| config);
    let mut stream = connect(&server);
    let (status, _, _) = ask(&mut stream, "HEAD", "/mdm/enroll");
    assert_eq!(status, "HTTP/1.1 404 Not Found", "plain enrollment is off");
}

#[test]
fn head_of_a_pki_operation_by_get_issues_nothing() {
    use base64::Engine;
    use otad::scep::message;

    let server = TestServer::start(|config| {
        set_key(&config, "scep", "challenge", "\"head-static-challenge\"")
    });
    let ca_cert =
        otad::httpclient::get(&format!("{}/scep?operation=GetCACert", server.url)).unwrap();
    let certs = otad::cms::signed::parse_certs_only(&ca_cert.body).unwrap();
    let ra = &certs[0];

    // A PKCSReq that GET would answer with a certificate.
    let (requester, request, _) = common::scep::pkcs_req(
        ra,
        "head-client",
        "head-static-challenge",
        "head-transaction",
    );
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&request);
    let target = format!("/scep?operation=PKIOperation&message={encoded}");

    let before = server.snapshot();
    let mut stream = connect(&server);
    let (status, headers, _) = ask(&mut stream, "HEAD", &target);
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(header(&headers, "allow"), Some("GET, POST"));
    assert!(
        server.snapshot() == before,
        "HEAD of a PKIOperation changed the state dir"
    );

    // The same message by GET is issued: HEAD left it nothing to trip over.
    let (status, headers, body) = ask(&mut stream, "GET", &target);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/x-pki-message")
    );
    let reply = message::parse_reply(
        &body,
        &[ra.as_slice()],
        &requester.certificate,
        requester.key.decrypting(),
    )
    .unwrap();
    assert_eq!(reply.status, message::PkiStatus::Success);
    assert!(
        server.snapshot() != before,
        "GET issued and recorded a certificate"
    );
}

/// `otad_challenges_live` as /metrics gives it.
fn challenges_live(server: &TestServer) -> Option<u64> {
    let metrics = otad::httpclient::get(&format!("{}/metrics", server.url)).unwrap();
    String::from_utf8_lossy(&metrics.body)
        .lines()
        .find_map(|line| line.strip_prefix("otad_challenges_live "))
        .and_then(|n| n.trim().parse().ok())
}

fn challenge_files(server: &TestServer) -> usize {
    server.count(RecordKind::Challenge)
}

#[test]
fn expired_challenges_free_the_cap_at_once_and_their_files_go_soon_after() {
    let server = TestServer::start(|config| {
        let config = set_key(&config, "ota", "challenge_ttl", "\"2s\"");
        set_key(&config, "ota", "max_live_challenges", "5")
    });
    let enroll = format!("{}/ota/enroll", server.url);
    for _ in 0..5 {
        assert_eq!(otad::httpclient::get(&enroll).unwrap().status, 200);
    }
    let refused = otad::httpclient::get(&enroll).unwrap();
    assert_eq!(refused.status, 503);
    let retry: u64 = refused.header("Retry-After").unwrap().parse().unwrap();
    assert!(
        (1..=2).contains(&retry),
        "the soonest expires within the TTL: {retry}"
    );
    assert_eq!(challenges_live(&server), Some(5));

    // Past the TTL, long before the ten-minute sweep: none counts, a download fits again.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(challenges_live(&server), Some(0));
    assert_eq!(otad::httpclient::get(&enroll).unwrap().status, 200);
    assert_eq!(challenges_live(&server), Some(1));

    // A cap's worth of expired files wakes the sweeper within a second or so.
    let deadline = Instant::now() + Duration::from_secs(10);
    while challenge_files(&server) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(challenge_files(&server), 1, "{}", server.log());
    assert!(server.log().contains("removed 5 expired challenges"));
}

#[test]
fn one_client_behind_a_trusted_proxy_cannot_take_every_place_even_after_a_restart() {
    let mut server = TestServer::start(|config| {
        let config = set_key(&config, "http", "trusted_proxies", "[\"127.0.0.1/32\"]");
        set_key(&config, "ota", "max_live_challenges_per_client", "2")
    });
    let enroll = format!("{}/ota/enroll", server.url);
    let from = |client: &str| {
        otad::httpclient::get_with_headers(&enroll, &[("X-Forwarded-For", client)]).unwrap()
    };
    for _ in 0..2 {
        assert_eq!(from("198.51.100.7").status, 200);
    }
    let refused = from("198.51.100.7");
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("Retry-After"), Some("60"));
    assert_eq!(
        String::from_utf8_lossy(&refused.body),
        "2 enrollments from 198.51.100.7 are waiting for their device, the most one address \
         may start (ota.max_live_challenges_per_client); try again later\n"
    );
    let log = server.log();
    assert!(
        log.lines().any(|line| line.contains("WARN")
            && line.contains("GET /ota/enroll: 429")
            && line.contains("(ota.max_live_challenges_per_client)")
            && line.contains("remote=198.51.100.7")),
        "{log}"
    );

    // Others behind the same proxy, and the proxy's own address, are not held back.
    assert_eq!(from("198.51.100.8").status, 200);
    assert_eq!(otad::httpclient::get(&enroll).unwrap().status, 200);
    assert_eq!(challenge_files(&server), 4, "a refusal leaves nothing");

    // The counts are rebuilt from the records: a restart gives no room back.
    server.restart();
    assert_eq!(from("198.51.100.7").status, 429);
    assert_eq!(from("198.51.100.8").status, 200);
    assert_eq!(challenges_live(&server), Some(5));
}
