//! What otad shows about itself on a running server: `/metrics` (read back by the Prometheus
//! project's own text parser where it is installed), `/healthz`, and which client address the
//! logs name behind a trusted and an untrusted proxy.

mod common;

use std::process::Command;

use common::server::{set_key, TestServer};
use otad::httpclient;

fn metrics(server: &TestServer) -> String {
    let response = httpclient::get(&format!("{}/metrics", server.url)).unwrap();
    assert_eq!(response.status, 200);
    String::from_utf8(response.body).unwrap()
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

/// Parses the exposition with prometheus_client's parser; `None` where it is not installed.
fn parsed_by_prometheus(text: &str) -> Option<String> {
    let script = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families as parse\n\
        for family in parse(sys.stdin.read()):\n\
        \x20   for s in family.samples:\n\
        \x20       print(s.name, sorted(s.labels.items()), s.value)\n";
    let probe = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output()
        .ok()?;
    if !probe.status.success() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but python3's prometheus_client is missing (pip install prometheus-client)"
        );
        eprintln!("SKIP: python3 prometheus_client not installed; the exposition is unchecked");
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "prometheus_client refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).unwrap())
}

#[test]
fn metrics_count_an_enrollment_and_parse_as_prometheus_text() {
    let server = TestServer::start(|config| config);
    let before = metrics(&server);
    assert_eq!(
        sample(&before, "otad_phase_total{phase=\"1\",outcome=\"ok\"}"),
        None
    );

    otad::simulate::run(&server.device_options()).unwrap();
    let refused = httpclient::post(&format!("{}/ota/phase23", server.url), "x", b"junk").unwrap();
    assert_eq!(refused.status, 400);
    // Refused by the guard before any route: counted too.
    let mut raw = std::net::TcpStream::connect(server.url.trim_start_matches("http://")).unwrap();
    use std::io::{Read as _, Write as _};
    raw.write_all(b"POST /scep HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let text = metrics(&server);
    for (series, value) in [
        ("otad_phase_total{phase=\"1\",outcome=\"ok\"}", 1.0),
        ("otad_phase_total{phase=\"2\",outcome=\"ok\"}", 1.0),
        ("otad_phase_total{phase=\"3\",outcome=\"ok\"}", 1.0),
        (
            "otad_phase_total{phase=\"unclassified\",outcome=\"malformed\"}",
            1.0,
        ),
        ("otad_certificates_issued_total{via=\"ota\"}", 1.0),
        (
            "otad_requests_total{route=\"/ota/phase23\",status=\"200\"}",
            2.0,
        ),
        (
            "otad_requests_total{route=\"/ota/phase23\",status=\"400\"}",
            1.0,
        ),
        ("otad_requests_total{route=\"/scep\",status=\"200\"}", 0.0),
        ("otad_requests_total{route=\"guard\",status=\"413\"}", 1.0),
    ] {
        let got = sample(&text, series);
        if value == 0.0 {
            assert!(got.is_some_and(|n| n >= 1.0), "{series} in\n{text}");
        } else {
            assert_eq!(got, Some(value), "{series} in\n{text}");
        }
    }
    // The phase 3 MDM profile holds a fresh SCEP challenge for the MDM identity.
    assert!(sample(&text, "otad_challenges_live").is_some_and(|n| n >= 1.0));
    let count = sample(&text, "otad_request_duration_seconds_count").unwrap();
    let infinite = sample(&text, "otad_request_duration_seconds_bucket{le=\"+Inf\"}").unwrap();
    assert_eq!(count, infinite);
    assert!(text.contains(&format!(
        "otad_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));

    if let Some(samples) = parsed_by_prometheus(&text) {
        assert!(
            samples
                .lines()
                .any(|l| l.starts_with("otad_phase_total [('outcome', 'ok'), ('phase', '2')] 1")),
            "{samples}"
        );
        assert!(samples.contains("otad_request_duration_seconds_bucket"));
    }
}

#[test]
fn healthz_says_ok_when_the_state_takes_writes() {
    let server = TestServer::start(|config| config);
    let response = httpclient::get(&format!("{}/healthz", server.url)).unwrap();
    assert_eq!((response.status, &response.body[..]), (200, &b"ok\n"[..]));
    let leftovers: Vec<_> = std::fs::read_dir(&server.state)
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(".healthz"))
        .collect();
    assert!(leftovers.is_empty(), "the probe file is removed");
    assert!(
        server.state_file("crl.der").exists(),
        "the CRL is signed at start-up, before anyone asks for it"
    );
}

#[test]
fn the_client_behind_a_trusted_proxy_is_named_and_an_untrusted_one_is_not_believed() {
    let server = TestServer::start(|config| {
        set_key(&config, "http", "trusted_proxies", "[\"127.0.0.1/32\"]")
    });
    let headers = [("X-Forwarded-For", "198.51.100.7, 203.0.113.9")];
    let url = format!("{}/no-such-page", server.url);
    let response = httpclient::get_with_headers(&url, &headers).unwrap();
    assert_eq!(response.status, 404);
    let log = server.log();
    assert!(log.contains("remote=203.0.113.9"), "{log}");
    assert!(!log.contains("remote=198.51.100.7"), "{log}");

    let untrusting = TestServer::start(|config| config);
    let url = format!("{}/no-such-page", untrusting.url);
    httpclient::get_with_headers(&url, &headers).unwrap();
    let log = untrusting.log();
    assert!(log.contains("remote=127.0.0.1:"), "{log}");
    assert!(!log.contains("203.0.113.9"), "{log}");
}
