//! Failed logins counted per remote address, in memory, in a table of fixed size.
//!
//! An address that fails [`MAX_FAILURES`] times within [`WINDOW`] is refused (429 with
//! Retry-After) until that window has passed. A successful login does not clear the count:
//! whoever holds one account could otherwise interleave it with guesses at others. IPv6
//! addresses count per /64, the block one client usually holds. When the table is full,
//! expired entries go first, then the one whose window started earliest, so a flood of
//! addresses costs at most [`MAX_TRACKED`] entries.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed logins allowed per address within one [`WINDOW`].
pub const MAX_FAILURES: u32 = 5;

/// The window failures are counted in, and how long an address is then refused.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Addresses tracked at once.
pub const MAX_TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u32,
}

/// The table of failed logins.
#[derive(Debug)]
pub struct LoginLimiter {
    table: Mutex<HashMap<IpAddr, Entry>>,
    max_failures: u32,
    window: Duration,
    max_tracked: usize,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter::new(MAX_FAILURES, WINDOW, MAX_TRACKED)
    }
}

impl LoginLimiter {
    /// A limiter with its own limits (tests use small ones).
    pub fn new(max_failures: u32, window: Duration, max_tracked: usize) -> LoginLimiter {
        LoginLimiter {
            table: Mutex::new(HashMap::new()),
            max_failures,
            window,
            max_tracked: max_tracked.max(1),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `Err(seconds to wait)` when `address` has used up its failures for now.
    pub fn check(&self, address: IpAddr, now: Instant) -> Result<(), u64> {
        let address = counted_as(address);
        let table = self.table();
        match table.get(&address) {
            Some(entry) if entry.failures >= self.max_failures => {
                let ends = entry.window_start + self.window;
                let left = ends.saturating_duration_since(now);
                if left.is_zero() {
                    Ok(())
                } else {
                    // Rounded up, so a client waiting that long finds the window over.
                    Err(left.as_secs() + u64::from(left.subsec_nanos() > 0))
                }
            }
            _ => Ok(()),
        }
    }

    /// Counts one failed login from `address`.
    pub fn failed(&self, address: IpAddr, now: Instant) {
        let address = counted_as(address);
        let mut table = self.table();
        if !table.contains_key(&address) && table.len() >= self.max_tracked {
            let window = self.window;
            table.retain(|_, entry| now.saturating_duration_since(entry.window_start) < window);
            if table.len() >= self.max_tracked {
                let oldest = table
                    .iter()
                    .min_by_key(|(_, entry)| entry.window_start)
                    .map(|(address, _)| *address);
                if let Some(oldest) = oldest {
                    table.remove(&oldest);
                }
            }
        }
        let entry = table.entry(address).or_insert(Entry {
            window_start: now,
            failures: 0,
        });
        if now.saturating_duration_since(entry.window_start) >= self.window {
            *entry = Entry {
                window_start: now,
                failures: 0,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.table().len()
    }
}

/// The address failures are counted under: IPv4 as it is (an IPv4-mapped IPv6 address as
/// its IPv4 one), IPv6 by its /64. Phase 1's per-client challenge bound counts the same way.
pub fn counted_as(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(n))
    }

    #[test]
    fn five_failures_then_refused_until_the_window_ends() {
        let limiter = LoginLimiter::default();
        let start = Instant::now();
        for n in 0..MAX_FAILURES {
            assert_eq!(limiter.check(ip(1), start), Ok(()), "failure {n}");
            limiter.failed(ip(1), start + Duration::from_secs(u64::from(n)));
        }
        assert_eq!(
            limiter.check(ip(1), start + Duration::from_secs(10)),
            Err(50)
        );
        assert_eq!(
            limiter.check(ip(1), start + Duration::from_millis(59_500)),
            Err(1)
        );
        assert_eq!(
            limiter.check(ip(2), start),
            Ok(()),
            "others are not affected"
        );
        assert_eq!(limiter.check(ip(1), start + WINDOW), Ok(()));

        // After the window a failure starts a new count.
        limiter.failed(ip(1), start + WINDOW);
        assert_eq!(limiter.check(ip(1), start + WINDOW), Ok(()));
    }

    #[test]
    fn an_ipv6_client_counts_as_its_64_and_a_mapped_ipv4_as_itself() {
        let limiter = LoginLimiter::new(2, WINDOW, 10);
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        limiter.failed(a, now);
        limiter.failed(b, now);
        assert_eq!(limiter.check(a, now), Err(60), "one /64, one count");
        assert_eq!(limiter.check(other, now), Ok(()));

        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        limiter.failed(mapped, now);
        limiter.failed("192.0.2.1".parse().unwrap(), now);
        assert!(limiter.check("192.0.2.1".parse().unwrap(), now).is_err());
    }

    #[test]
    fn the_table_never_grows_past_its_size() {
        let limiter = LoginLimiter::new(1, WINDOW, 8);
        let start = Instant::now();
        for n in 0..100 {
            limiter.failed(ip(n), start + Duration::from_millis(u64::from(n)));
            assert!(limiter.tracked() <= 8);
        }
        // The newest addresses are still refused; the oldest were evicted.
        assert!(limiter
            .check(ip(99), start + Duration::from_secs(1))
            .is_err());
        assert_eq!(limiter.check(ip(0), start + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn threads_share_one_table() {
        let limiter = std::sync::Arc::new(LoginLimiter::new(40, WINDOW, 16));
        let now = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let limiter = limiter.clone();
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        limiter.failed(ip(7), now);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert!(limiter.check(ip(7), now).is_err(), "40 failures counted");
    }
}
