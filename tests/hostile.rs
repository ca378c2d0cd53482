//! Hostile clients against a running server: absurd declared lengths, header floods, stalled
//! uploads, protocol oddities. Each gets its status from the guard, and a normal enrollment
//! still goes through meanwhile.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::server::{set_key, TestServer};

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
            b"GET /healthz HTTP/1.1\r\nX-Otad-Remote: 6.6.6.6:1\r\n\r\n".to_vec(),
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
