//! Live challenges as the server counts them: how many expire in each second, in all and per
//! client, so that a challenge stops counting the second it expires, without a look at the
//! disk.
//!
//! `ota.max_live_challenges` and `ota.max_live_challenges_per_client` are checked here, and
//! room for a new challenge is taken in the same step under one lock
//! ([`ChallengeIndex::reserve`]), so threads racing at a cap cannot pass it. The index is
//! built once from the challenge files (each record gives its expiry and, for a download, the
//! client it was counted under), then kept up as challenges are put and taken. Files of
//! expired challenges count for nothing; the sweeper removes them later.
//!
//! Whatever expires leaves the count in [`prune`], which remembers the latest time it was
//! given: a challenge expired by then is neither added nor removed again, so each unit is
//! removed once, whichever clock its caller read.
//!
//! [`prune`]: ChallengeIndex::prune

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// The longest Retry-After a refusal at a cap gives, in seconds: devices answering their
/// challenges free room long before the soonest one expires.
pub const MAX_RETRY_AFTER: u64 = 60;

/// The caps a new challenge must fit under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChallengeLimits {
    /// Most live challenges in all (`ota.max_live_challenges`).
    pub max_live: usize,
    /// Most live challenges counted under one client (`ota.max_live_challenges_per_client`);
    /// 0: no bound.
    pub max_per_client: usize,
}

/// Why a new challenge does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    /// `live` challenges are live, the most allowed in all.
    Full {
        /// Live challenges now.
        live: usize,
        /// Seconds until the soonest one expires, at most [`MAX_RETRY_AFTER`].
        retry_after: u64,
    },
    /// This client holds `live` challenges, the most one client may.
    Client {
        /// The client's live challenges now.
        live: usize,
        /// Seconds until the client's soonest one expires, at most [`MAX_RETRY_AFTER`].
        retry_after: u64,
    },
}

/// One client's live challenges, by expiry second.
#[derive(Debug, Default)]
struct ClientCount {
    live: usize,
    expiring: BTreeMap<i64, usize>,
}

/// Live challenges by expiry, in all and per client.
#[derive(Debug, Default)]
pub struct ChallengeIndex {
    /// How many expire in each second, per client (`None`: counted under no client), the
    /// soonest first: what [`ChallengeIndex::prune`] drops from the front.
    expiring: BTreeMap<(i64, Option<IpAddr>), usize>,
    /// The sum of `expiring`.
    live: usize,
    /// The same units again, per client, for the per-client cap and its Retry-After. A
    /// client is here only while it holds a live challenge, so the map is never larger
    /// than the count.
    clients: HashMap<IpAddr, ClientCount>,
    /// Units dropped by expiry since the sweeper last ran: files left on disk for it.
    expired_unswept: usize,
    /// The latest time pruned at: what expires by then has left the count.
    pruned_at: i64,
}

impl ChallengeIndex {
    /// Drops every challenge that has expired by `now` from the counts.
    pub fn prune(&mut self, now: i64) {
        self.pruned_at = self.pruned_at.max(now);
        while let Some(entry) = self.expiring.first_entry() {
            let (expires, client) = *entry.key();
            if expires > self.pruned_at {
                break;
            }
            let units = entry.remove();
            self.live = self.live.saturating_sub(units);
            self.expired_unswept = self.expired_unswept.saturating_add(units);
            if let Some(client) = client {
                self.client_remove(client, expires, units);
            }
        }
    }

    /// Counts one challenge that expires at `expires`, under `client` (nothing if it had
    /// expired when last pruned).
    pub fn add(&mut self, expires: i64, client: Option<IpAddr>) {
        if expires <= self.pruned_at {
            return;
        }
        *self.expiring.entry((expires, client)).or_insert(0) += 1;
        self.live += 1;
        if let Some(client) = client {
            let count = self.clients.entry(client).or_default();
            count.live += 1;
            *count.expiring.entry(expires).or_insert(0) += 1;
        }
    }

    /// Stops counting one challenge (taken, or its reservation given back). One that had
    /// expired when last pruned left the count then.
    pub fn remove(&mut self, expires: i64, client: Option<IpAddr>) {
        if expires <= self.pruned_at {
            return;
        }
        // Missing only for a challenge that was never counted: nothing to remove.
        let Some(units) = self.expiring.get_mut(&(expires, client)) else {
            return;
        };
        *units = units.saturating_sub(1);
        if *units == 0 {
            self.expiring.remove(&(expires, client));
        }
        self.live = self.live.saturating_sub(1);
        if let Some(client) = client {
            self.client_remove(client, expires, 1);
        }
    }

    fn client_remove(&mut self, client: IpAddr, expires: i64, units: usize) {
        let Some(count) = self.clients.get_mut(&client) else {
            return;
        };
        count.live = count.live.saturating_sub(units);
        if let Some(left) = count.expiring.get_mut(&expires) {
            *left = left.saturating_sub(units);
            if *left == 0 {
                count.expiring.remove(&expires);
            }
        }
        if count.live == 0 {
            self.clients.remove(&client);
        }
    }

    /// Live challenges at `now`.
    pub fn live(&mut self, now: i64) -> usize {
        self.prune(now);
        self.live
    }

    /// Live challenges counted under `client` at `now`.
    pub fn live_for(&mut self, client: IpAddr, now: i64) -> usize {
        self.prune(now);
        self.clients.get(&client).map_or(0, |count| count.live)
    }

    /// Whether one more challenge under `client` fits under `limits` at `now`; changes no
    /// count (expired ones are dropped, which they would be anyway).
    pub fn check(
        &mut self,
        client: Option<IpAddr>,
        limits: ChallengeLimits,
        now: i64,
    ) -> Result<(), NoRoom> {
        self.prune(now);
        if self.live >= limits.max_live {
            let soonest = self.expiring.keys().next().map(|(expires, _)| *expires);
            return Err(NoRoom::Full {
                live: self.live,
                retry_after: retry_after(soonest, now),
            });
        }
        let held = client
            .filter(|_| limits.max_per_client > 0)
            .and_then(|client| self.clients.get(&client));
        if let Some(count) = held.filter(|count| count.live >= limits.max_per_client) {
            return Err(NoRoom::Client {
                live: count.live,
                retry_after: retry_after(count.expiring.keys().next().copied(), now),
            });
        }
        Ok(())
    }

    /// Checks for room as [`ChallengeIndex::check`] does and, if there is, counts the new
    /// challenge at once: the check and the reservation are one step.
    pub fn reserve(
        &mut self,
        expires: i64,
        client: Option<IpAddr>,
        limits: ChallengeLimits,
        now: i64,
    ) -> Result<(), NoRoom> {
        self.check(client, limits, now)?;
        self.add(expires, client);
        Ok(())
    }

    /// Expired challenges whose files may still be on disk, since [`Self::swept`].
    pub fn expired_unswept(&self) -> usize {
        self.expired_unswept
    }

    /// The sweeper removed the files of what had expired.
    pub fn swept(&mut self) {
        self.expired_unswept = 0;
    }
}

/// Seconds from `now` until `soonest` expires, 1 to [`MAX_RETRY_AFTER`]: the Retry-After of
/// a refusal at a cap.
pub fn retry_after(soonest: Option<i64>, now: i64) -> u64 {
    soonest
        .map_or(MAX_RETRY_AFTER, |expires| {
            u64::try_from(expires.saturating_sub(now)).unwrap_or(1)
        })
        .clamp(1, MAX_RETRY_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    const LIMITS: ChallengeLimits = ChallengeLimits {
        max_live: 3,
        max_per_client: 2,
    };

    #[test]
    fn expired_challenges_stop_counting_the_second_they_expire() {
        let mut index = ChallengeIndex::default();
        index.prune(100);
        index.add(110, ip("192.0.2.1"));
        index.add(110, None);
        index.add(120, ip("192.0.2.1"));
        assert_eq!(index.live(109), 3);
        assert_eq!(index.live_for("192.0.2.1".parse().unwrap(), 109), 2);
        assert_eq!(index.live(110), 1, "expires = now is no longer live");
        assert_eq!(index.live_for("192.0.2.1".parse().unwrap(), 110), 1);
        assert_eq!(index.expired_unswept(), 2);
        assert_eq!(index.live(120), 0);
        assert!(
            index.clients.is_empty(),
            "no client is kept without a challenge"
        );
        assert!(index.expiring.is_empty());
        assert_eq!(index.expired_unswept(), 3);
        index.swept();
        assert_eq!(index.expired_unswept(), 0);

        // An expired record is not counted in the first place, nor removed twice.
        index.add(120, ip("192.0.2.1"));
        assert_eq!(
            index.live(100),
            0,
            "120 was pruned; the clock going back changes nothing"
        );
        index.add(121, ip("192.0.2.1"));
        index.remove(120, ip("192.0.2.1"));
        assert_eq!(index.live(120), 1);
    }

    #[test]
    fn the_cap_is_reached_then_frees_when_the_soonest_expires() {
        let mut index = ChallengeIndex::default();
        for (n, client) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"].iter().enumerate() {
            let expires = 130 + i64::try_from(n).unwrap();
            assert_eq!(index.reserve(expires, ip(client), LIMITS, 100), Ok(()));
        }
        assert_eq!(
            index.reserve(200, ip("192.0.2.4"), LIMITS, 100),
            Err(NoRoom::Full {
                live: 3,
                retry_after: 30
            })
        );
        assert_eq!(
            index.reserve(200, ip("192.0.2.4"), LIMITS, 60),
            Err(NoRoom::Full {
                live: 3,
                retry_after: MAX_RETRY_AFTER
            }),
            "at most a minute"
        );
        assert_eq!(index.live(129), 3, "a refusal counts nothing");
        assert_eq!(index.reserve(200, ip("192.0.2.4"), LIMITS, 130), Ok(()));
        assert_eq!(index.live(130), 3);
    }

    #[test]
    fn one_client_is_bounded_and_others_are_not_held_back() {
        let mut index = ChallengeIndex::default();
        let nat = ip("198.51.100.7");
        assert_eq!(index.reserve(150, nat, LIMITS, 100), Ok(()));
        assert_eq!(index.reserve(160, nat, LIMITS, 100), Ok(()));
        assert_eq!(
            index.reserve(170, nat, LIMITS, 100),
            Err(NoRoom::Client {
                live: 2,
                retry_after: 50
            })
        );
        assert_eq!(
            index.check(nat, LIMITS, 100),
            index.reserve(170, nat, LIMITS, 100)
        );
        assert_eq!(index.reserve(170, ip("198.51.100.8"), LIMITS, 100), Ok(()));

        // Taking one gives the client its room back; no bound, no refusal.
        index.remove(150, nat);
        assert_eq!(index.live_for(nat.unwrap(), 120), 1);
        assert_eq!(index.reserve(170, nat, LIMITS, 120), Ok(()));
        let unbounded = ChallengeLimits {
            max_live: 10,
            max_per_client: 0,
        };
        assert_eq!(index.reserve(170, nat, unbounded, 120), Ok(()));
        assert_eq!(index.live_for(nat.unwrap(), 120), 3);

        // Challenges counted under no client never meet the per-client bound.
        for _ in 0..5 {
            assert_eq!(index.reserve(170, None, unbounded, 120), Ok(()));
        }
        assert_eq!(index.live(120), 9);
    }

    #[test]
    fn removing_what_expired_or_was_never_counted_changes_nothing() {
        let mut index = ChallengeIndex::default();
        index.prune(100);
        index.add(150, ip("192.0.2.1"));
        index.add(150, ip("192.0.2.1"));
        index.add(160, ip("192.0.2.1"));
        index.remove(150, ip("192.0.2.9"));
        index.remove(151, ip("192.0.2.1"));
        assert_eq!(index.live(100), 3, "never counted: nothing removed");
        index.remove(150, ip("192.0.2.1"));
        index.remove(150, ip("192.0.2.1"));
        index.remove(150, ip("192.0.2.1"));
        assert_eq!(index.live(100), 1);

        // Expired and pruned: its removal cannot take another challenge's unit.
        assert_eq!(index.live(160), 0);
        index.remove(160, ip("192.0.2.1"));
        assert_eq!(index.live(160), 0);
        assert!(index.clients.is_empty());
    }
}
