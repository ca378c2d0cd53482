//! Counters for `GET /metrics`, written in the Prometheus text exposition format (version
//! 0.0.4): requests by route and status, phase outcomes by reason, certificates issued,
//! challenges live, a request latency histogram, and build information.
//!
//! Every label value comes from a fixed set chosen by otad (route names, status codes,
//! outcome kinds), never from a request, so the number of series is bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds.
const LATENCY_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The routes requests are counted under; anything else is "other", and what the guard
/// refuses before a request reaches a route (503 at the connection cap, 408, 413, 431) is
/// "guard".
pub const ROUTES: [&str; 10] = [
    "/ota/enroll",
    "/ota/phase23",
    "/scep",
    "/ca",
    "/crl",
    "/mdm/enroll",
    "/healthz",
    "/metrics",
    "other",
    "guard",
];

/// The route label for a request path.
pub fn route_label(path: &str) -> &'static str {
    if matches!(path, "/scep/pkiclient.exe" | "/cgi-bin/pkiclient.exe") {
        return "/scep";
    }
    ROUTES
        .iter()
        .find(|route| **route == path)
        .copied()
        .unwrap_or("other")
}

/// The outcome label of a phase answered with HTTP `status`, where only the status is known.
pub fn outcome_of_status(status: u16) -> &'static str {
    match status {
        200..=299 => "ok",
        401 => "unauthorized",
        403 => "refused",
        429 => "rate_limited",
        400..=499 => "malformed",
        _ => "internal",
    }
}

/// All of otad's counters; one per process, shared by the connection threads.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    phases: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    issued: Mutex<BTreeMap<&'static str, u64>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

/// What is read from elsewhere when the metrics are written.
pub struct Gauges {
    /// Challenges handed out and not yet used or expired.
    pub challenges_live: usize,
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, route: &'static str, status: u16, took: Duration) {
        bump(&self.requests, (route, status));

        let seconds = took.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Counts a request the guard refused itself, with the status it answered.
    pub fn guard_refusal(&self, status: u16) {
        bump(&self.requests, ("guard", status));
    }

    /// Counts the outcome of a phase: `phase` is "1", "2", "3" or "dep"; `outcome` is "ok" or
    /// the kind of refusal ("challenge", "untrusted", "refused", "malformed", "internal").
    pub fn phase(&self, phase: &'static str, outcome: &'static str) {
        bump(&self.phases, (phase, outcome));
    }

    /// Counts a certificate issued: `via` is "ota", "static", "renewal" or "approved".
    pub fn issued(&self, via: &'static str) {
        bump(&self.issued, via);
    }

    /// The exposition text.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();

        out.push_str("# HELP otad_build_info The running otad's version.\n");
        out.push_str("# TYPE otad_build_info gauge\n");
        let _ = writeln!(
            out,
            "otad_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );

        out.push_str("# HELP otad_requests_total HTTP requests answered, by route and status.\n");
        out.push_str("# TYPE otad_requests_total counter\n");
        for ((route, status), n) in snapshot(&self.requests) {
            let _ = writeln!(
                out,
                "otad_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }

        out.push_str("# HELP otad_phase_total OTA phases answered, by phase and outcome.\n");
        out.push_str("# TYPE otad_phase_total counter\n");
        for ((phase, outcome), n) in snapshot(&self.phases) {
            let _ = writeln!(
                out,
                "otad_phase_total{{phase=\"{phase}\",outcome=\"{outcome}\"}} {n}"
            );
        }

        out.push_str("# HELP otad_certificates_issued_total Certificates the CA issued.\n");
        out.push_str("# TYPE otad_certificates_issued_total counter\n");
        for (via, n) in snapshot(&self.issued) {
            let _ = writeln!(out, "otad_certificates_issued_total{{via=\"{via}\"}} {n}");
        }

        out.push_str(
            "# HELP otad_challenges_live Challenges handed out, neither used nor expired.\n",
        );
        out.push_str("# TYPE otad_challenges_live gauge\n");
        let _ = writeln!(out, "otad_challenges_live {}", gauges.challenges_live);

        out.push_str("# HELP otad_request_duration_seconds Time to answer a request.\n");
        out.push_str("# TYPE otad_request_duration_seconds histogram\n");
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            let _ = writeln!(
                out,
                "otad_request_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let sum = self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "otad_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(out, "otad_request_duration_seconds_sum {sum}");
        let _ = writeln!(out, "otad_request_duration_seconds_count {count}");
        out
    }
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    let mut map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    *map.entry(key).or_insert(0) += 1;
}

fn snapshot<K: Ord + Clone>(map: &Mutex<BTreeMap<K, u64>>) -> Vec<(K, u64)> {
    let map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    map.iter().map(|(k, n)| (k.clone(), *n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_series_and_buckets_are_cumulative() {
        let metrics = Metrics::default();
        metrics.request("/scep", 200, Duration::from_millis(3));
        metrics.request("/scep", 200, Duration::from_millis(30));
        metrics.request(route_label("/etc/passwd"), 404, Duration::from_secs(5));
        metrics.phase("2", "ok");
        metrics.phase("2", "challenge");
        metrics.phase("2", "ok");
        metrics.issued("ota");

        let text = metrics.render(&Gauges { challenges_live: 7 });
        for line in [
            "otad_requests_total{route=\"/scep\",status=\"200\"} 2",
            "otad_requests_total{route=\"other\",status=\"404\"} 1",
            "otad_phase_total{phase=\"2\",outcome=\"ok\"} 2",
            "otad_phase_total{phase=\"2\",outcome=\"challenge\"} 1",
            "otad_certificates_issued_total{via=\"ota\"} 1",
            "otad_challenges_live 7",
            "otad_request_duration_seconds_bucket{le=\"0.0025\"} 0",
            "otad_request_duration_seconds_bucket{le=\"0.005\"} 1",
            "otad_request_duration_seconds_bucket{le=\"0.05\"} 2",
            "otad_request_duration_seconds_bucket{le=\"2.5\"} 2",
            "otad_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "otad_request_duration_seconds_sum 5.033",
            "otad_request_duration_seconds_count 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn every_sample_line_follows_the_exposition_grammar() {
        let metrics = Metrics::default();
        metrics.request("/ota/enroll", 403, Duration::from_millis(1));
        let text = metrics.render(&Gauges { challenges_live: 0 });
        for line in text.lines() {
            if line.starts_with('#') {
                let mut words = line.split(' ');
                assert_eq!(words.next(), Some("#"));
                assert!(matches!(words.next(), Some("HELP" | "TYPE")), "{line}");
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "value of {line}");
            let name = series.split('{').next().unwrap();
            assert!(name.starts_with("otad_"), "{line}");
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
        }
    }
}
