//! How many refusal (and anonymous download) events a flood may add to the log.
//!
//! Every refused enrollment request is worth a line in `events.jsonl`, but anyone can send
//! refused requests, and without a bound a flood of them would rotate the log until the
//! webhook's undelivered files are dropped, real enrollments with them. So each window of
//! [`WINDOW`] lets at most [`PER_CLIENT`] refusals of one client address (IPv4 address,
//! IPv6 /64, as the login limiter counts) and [`PER_WINDOW`] of all clients together into
//! the log one by one; the rest are counted, and the first event recorded after the window
//! ends is preceded by one `refusals-suppressed` event with the count. The warn line of
//! each refusal still goes to the server's log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::gate::ratelimit;

/// The window refusals are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Refusals of one client address recorded one by one per window.
pub const PER_CLIENT: u32 = 20;

/// Refusals (or anonymous downloads) of all clients together recorded one by one per
/// window.
pub const PER_WINDOW: u32 = 600;

/// Anonymous downloads (phase 1 with nobody logged in and no token, the plain enrollment
/// profile) of one client address recorded one by one per window: more than refusals, as
/// a site enrolling many devices behind one address makes them in earnest.
pub const DOWNLOADS_PER_CLIENT: u32 = 60;

/// Client addresses counted at once; past that, a new address counts against
/// [`PER_WINDOW`] only.
pub const MAX_TRACKED: usize = 4096;

/// What a window suppressed, for its `refusals-suppressed` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed {
    /// Refusals not recorded one by one.
    pub refusals: u64,
    /// Client addresses that went past [`PER_CLIENT`] (those past [`MAX_TRACKED`] not
    /// counted).
    pub clients: u64,
    /// The window's length in seconds (so far, at shutdown).
    pub window_seconds: u64,
    /// The limits it was counted against: per client address, and in all.
    pub per_client: u32,
    /// See `per_client`.
    pub per_window: u32,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    recorded: u32,
    per_client: HashMap<IpAddr, u32>,
    suppressed: u64,
    clients_over: u64,
}

impl Window {
    fn new(started: Instant) -> Window {
        Window {
            started,
            recorded: 0,
            per_client: HashMap::new(),
            suppressed: 0,
            clients_over: 0,
        }
    }
}

/// The refusal counts of the current window.
#[derive(Debug)]
pub struct RefusalThrottle {
    window: Mutex<Window>,
    per_client: u32,
    per_window: u32,
    length: Duration,
}

impl Default for RefusalThrottle {
    fn default() -> Self {
        RefusalThrottle::new(PER_CLIENT, PER_WINDOW, WINDOW)
    }
}

impl RefusalThrottle {
    /// A throttle with its own limits (tests use small ones).
    pub fn new(per_client: u32, per_window: u32, length: Duration) -> RefusalThrottle {
        RefusalThrottle {
            window: Mutex::new(Window::new(Instant::now())),
            per_client,
            per_window,
            length,
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a refusal from `client` (None: an address that does not parse, counted
    /// against the window only) goes into the log one by one at `now`.
    pub fn admit(&self, client: Option<IpAddr>, now: Instant) -> bool {
        let mut window = self.window();
        if now.saturating_duration_since(window.started) >= self.length && window.suppressed == 0 {
            *window = Window::new(now);
        }

        let room = window.per_client.len() < MAX_TRACKED;
        let seen = client.map(ratelimit::counted_as).and_then(|client| {
            if room || window.per_client.contains_key(&client) {
                Some(window.per_client.entry(client).or_insert(0))
            } else {
                None
            }
        });
        let client_over = match seen {
            Some(count) if *count >= self.per_client => {
                // Counted once more only on the first refusal past the limit.
                let first = *count == self.per_client;
                *count = count.saturating_add(1);
                Some(first)
            }
            Some(count) => {
                *count += 1;
                None
            }
            None => None,
        };

        match client_over {
            Some(first) => {
                window.suppressed += 1;
                window.clients_over += u64::from(first);
                false
            }
            None if window.recorded >= self.per_window => {
                window.suppressed += 1;
                false
            }
            None => {
                window.recorded += 1;
                true
            }
        }
    }

    /// What an ended window suppressed, once (the window then starts afresh at `now`);
    /// `None` while the window runs or when it suppressed nothing.
    pub fn take_suppressed(&self, now: Instant) -> Option<Suppressed> {
        self.take(now, false)
    }

    /// What the window suppressed so far, ended or not (at shutdown), once.
    pub fn take_suppressed_now(&self, now: Instant) -> Option<Suppressed> {
        self.take(now, true)
    }

    fn take(&self, now: Instant, running_too: bool) -> Option<Suppressed> {
        let mut window = self.window();
        let elapsed = now.saturating_duration_since(window.started);
        if window.suppressed == 0 || (elapsed < self.length && !running_too) {
            return None;
        }
        let suppressed = Suppressed {
            refusals: window.suppressed,
            clients: window.clients_over,
            window_seconds: elapsed.as_secs().clamp(1, self.length.as_secs().max(1)),
            per_client: self.per_client,
            per_window: self.per_window,
        };
        *window = Window::new(now);
        Some(suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn one_client_is_cut_off_at_its_limit_and_the_rest_summed_up() {
        let throttle = RefusalThrottle::new(3, 100, Duration::from_secs(60));
        let start = Instant::now();
        let admitted: Vec<bool> = (0..5)
            .map(|_| throttle.admit(ip("192.0.2.7"), start))
            .collect();
        assert_eq!(admitted, [true, true, true, false, false]);

        // Another client still gets its own share, and the same /64 counts as one.
        assert!(throttle.admit(ip("192.0.2.8"), start));
        assert!(throttle.admit(ip("2001:db8::1"), start));
        assert!(throttle.admit(ip("2001:db8::2"), start));
        assert!(throttle.admit(ip("2001:db8::3"), start));
        assert!(!throttle.admit(ip("2001:db8::ffff"), start));
        assert!(throttle.admit(ip("2001:db8:0:1::1"), start));

        // Nothing to report while the window runs; once, after it ends.
        assert_eq!(
            throttle.take_suppressed(start + Duration::from_secs(59)),
            None
        );
        let later = start + Duration::from_secs(60);
        assert_eq!(
            throttle.take_suppressed(later),
            Some(Suppressed {
                refusals: 3,
                clients: 2,
                window_seconds: 60,
                per_client: 3,
                per_window: 100,
            })
        );
        assert_eq!(throttle.take_suppressed(later), None);

        // The new window starts afresh.
        assert!(throttle.admit(ip("192.0.2.7"), later));
    }

    #[test]
    fn all_clients_together_are_cut_off_at_the_window_limit() {
        let throttle = RefusalThrottle::new(10, 4, Duration::from_secs(60));
        let start = Instant::now();
        let admitted: Vec<bool> = (0..6)
            .map(|n| throttle.admit(ip(&format!("198.51.100.{n}")), start))
            .collect();
        assert_eq!(admitted, [true, true, true, true, false, false]);
        assert!(!throttle.admit(None, start));
        let summary = throttle
            .take_suppressed(start + Duration::from_secs(61))
            .unwrap();
        assert_eq!((summary.refusals, summary.clients), (3, 0));
    }

    #[test]
    fn a_window_that_suppressed_nothing_rolls_over_quietly() {
        let throttle = RefusalThrottle::new(2, 100, Duration::from_secs(60));
        let start = Instant::now();
        assert!(throttle.admit(ip("192.0.2.7"), start));
        assert!(throttle.admit(ip("192.0.2.7"), start));
        let later = start + Duration::from_secs(61);
        assert!(throttle.admit(ip("192.0.2.7"), later));
        assert_eq!(throttle.take_suppressed(later), None);
    }

    #[test]
    fn at_shutdown_a_running_window_gives_its_count_too() {
        let throttle = RefusalThrottle::new(1, 100, Duration::from_secs(60));
        let start = Instant::now();
        assert!(throttle.admit(ip("192.0.2.7"), start));
        assert!(!throttle.admit(ip("192.0.2.7"), start));
        assert_eq!(
            throttle.take_suppressed(start + Duration::from_secs(5)),
            None
        );
        let summary = throttle
            .take_suppressed_now(start + Duration::from_secs(5))
            .unwrap();
        assert_eq!((summary.refusals, summary.window_seconds), (1, 5));
        assert_eq!(throttle.take_suppressed_now(start), None);
    }

    #[test]
    fn tracked_addresses_are_bounded() {
        let throttle = RefusalThrottle::new(1, u32::MAX, Duration::from_secs(60));
        let start = Instant::now();
        for n in 0..(MAX_TRACKED as u32 + 10) {
            let address = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            assert!(throttle.admit(Some(address), start));
        }
        assert_eq!(throttle.window().per_client.len(), MAX_TRACKED);
    }
}
