//! Enrollment tokens: secrets an admin hands out (`otad token new`) that let a device start
//! an enrollment, a number of times, until a date, optionally for one device only.
//!
//! Each token is a file `tokens/<sha256 of the secret>.json` under the state dir; the secret
//! itself is shown once and never stored. Admins name a token by its public id, the first
//! [`ID_LEN`] hex digits of that hash.
//!
//! A use is spent in phase 2, when a device answers the challenge a token's phase 1 handed
//! out, so opening the link twice costs nothing. Phase 1 keeps a list of the challenges it
//! handed out for the token that are still live, and refuses more than
//! [`live_challenge_cap`] of them at once, so a 1-use token cannot mint challenges without
//! end. Every change happens under [`Store::transaction`]: two devices racing for the last
//! use are serialised, and the second finds none left.

use std::fmt;
use std::path::PathBuf;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::store::fsutil::read_optional;
use crate::store::{Store, StoreError};

/// The folder of token files, under the state dir.
pub const TOKENS_DIR: &str = "tokens";

/// Hex digits of the hash that make a token's public id.
pub const ID_LEN: usize = 12;

/// Most tokens kept (expired and used ones included, until removed by hand).
pub const MAX_TOKENS: usize = 10_000;

/// Most uses one token may allow.
pub const MAX_USES: u32 = 100_000;

/// Uses kept in a token's history; older ones are dropped first.
pub const MAX_TOKEN_HISTORY: usize = 200;

/// The longest note, in characters.
pub const MAX_NOTE_CHARS: usize = 200;

/// Live challenges a token may hold beyond its uses left (a page opened twice, a retry).
pub const LIVE_CHALLENGE_SLACK: usize = 3;

/// Most live challenges any token may hold at once.
pub const MAX_LIVE_CHALLENGES: usize = 64;

/// The longest token value accepted from a request.
pub const MAX_SECRET_LEN: usize = 128;

/// The largest token file read.
const MAX_TOKEN_FILE_BYTES: usize = 256 * 1024;

/// Which one device a token is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// The device whose signed SERIAL is this.
    Serial(String),
    /// The device whose signed UDID is this.
    Udid(String),
}

impl fmt::Display for TokenScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenScope::Serial(serial) => write!(f, "serial {serial}"),
            TokenScope::Udid(udid) => write!(f, "UDID {udid}"),
        }
    }
}

/// One use of a token: the device whose phase 2 spent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUse {
    /// When (unix seconds).
    pub at: i64,
    /// The device's UDID.
    pub udid: String,
    /// Its SERIAL, where it sent one.
    pub serial: Option<String>,
    /// The remote address of phase 2.
    pub remote: String,
}

/// A challenge phase 1 handed out under the token and no device has answered yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveChallenge {
    /// SHA-256 of the challenge, hex (as its record is keyed; not the value).
    pub challenge: String,
    /// When it expires (unix seconds).
    pub expires: i64,
}

/// A token as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The public id: the first [`ID_LEN`] hex digits of the secret's SHA-256.
    pub id: String,
    /// Uses allowed in all.
    pub uses: u32,
    /// Uses spent.
    pub used: u32,
    /// Made at (unix seconds).
    pub created: i64,
    /// Not valid from then on (unix seconds).
    pub expires: i64,
    /// The one device it is for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<TokenScope>,
    /// The admin's note.
    #[serde(default)]
    pub note: String,
    /// Revoked at (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<i64>,
    /// The latest uses, oldest first.
    #[serde(default)]
    pub history: Vec<TokenUse>,
    /// Challenges handed out and not yet answered.
    #[serde(default)]
    pub live_challenges: Vec<LiveChallenge>,
}

/// Where a token stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    /// It can be used.
    Active,
    /// Every use is spent.
    UsedUp,
    /// Its time is over.
    Expired,
    /// An admin revoked it.
    Revoked,
}

impl TokenStatus {
    /// The word `otad token list` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::Active => "active",
            TokenStatus::UsedUp => "used-up",
            TokenStatus::Expired => "expired",
            TokenStatus::Revoked => "revoked",
        }
    }
}

impl TokenRecord {
    /// Uses not yet spent.
    pub fn uses_left(&self) -> u32 {
        self.uses.saturating_sub(self.used)
    }

    /// Where it stands at `now`.
    pub fn status(&self, now: i64) -> TokenStatus {
        if self.revoked.is_some() {
            TokenStatus::Revoked
        } else if self.expires <= now {
            TokenStatus::Expired
        } else if self.uses_left() == 0 {
            TokenStatus::UsedUp
        } else {
            TokenStatus::Active
        }
    }

    /// `Err(reason)` unless the token can be used at `now`; the reason is for the client.
    pub fn check_usable(&self, now: i64) -> Result<(), String> {
        let id = &self.id;
        match self.status(now) {
            TokenStatus::Active => Ok(()),
            TokenStatus::Revoked => Err(format!("enrollment token {id}: revoked")),
            TokenStatus::Expired => Err(format!("enrollment token {id}: expired")),
            TokenStatus::UsedUp => Err(format!("enrollment token {id}: no uses left")),
        }
    }

    /// `Err(reason)` unless the token's scope allows the device that signed `udid` and
    /// `serial`.
    pub fn check_scope(&self, udid: &str, serial: Option<&str>) -> Result<(), String> {
        let id = &self.id;
        match &self.scope {
            None => Ok(()),
            Some(TokenScope::Udid(bound)) if bound.eq_ignore_ascii_case(udid) => Ok(()),
            Some(TokenScope::Serial(bound))
                if serial.is_some_and(|s| bound.eq_ignore_ascii_case(s.trim())) =>
            {
                Ok(())
            }
            Some(scope) => Err(format!(
                "enrollment token {id}: for {scope} only, not this device"
            )),
        }
    }

    /// The note, or `None` when empty.
    pub fn note(&self) -> Option<String> {
        (!self.note.is_empty()).then(|| self.note.clone())
    }
}

/// Why a token operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum TokenError {
    /// The state dir failed.
    Store(StoreError),
    /// No token has this secret or id.
    NotFound(String),
    /// The token cannot be used (revoked, expired, used up, wrong device), or the request
    /// is invalid; the text is the one-line reason.
    Refused(String),
    /// The token holds as many live challenges as it may: try again in `retry_after`
    /// seconds, when the soonest of them expires (429).
    Busy {
        /// The reason, one line.
        why: String,
        /// Seconds the client should wait (Retry-After).
        retry_after: u64,
    },
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Store(err) => write!(f, "{err}"),
            TokenError::NotFound(what) | TokenError::Refused(what) => f.write_str(what),
            TokenError::Busy { why, .. } => f.write_str(why),
        }
    }
}

impl std::error::Error for TokenError {}

impl From<StoreError> for TokenError {
    fn from(err: StoreError) -> Self {
        TokenError::Store(err)
    }
}

/// SHA-256 of `value`, lowercase hex.
pub fn sha256_hex(value: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh secret: 32 random bytes, base64url (safe in a URL as it is).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// True for something that could be a token as a request carries it.
pub fn plausible_secret(secret: &str) -> bool {
    !secret.is_empty()
        && secret.len() <= MAX_SECRET_LEN
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// How many live challenges a token with `uses_left` uses may hold.
pub fn live_challenge_cap(uses_left: u32) -> usize {
    usize::try_from(uses_left)
        .unwrap_or(usize::MAX)
        .saturating_add(LIVE_CHALLENGE_SLACK)
        .min(MAX_LIVE_CHALLENGES)
}

fn tokens_dir(store: &Store) -> PathBuf {
    store.path(TOKENS_DIR)
}

fn io_error(path: PathBuf) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { path, source }
}

fn ensure_dir(store: &Store) -> Result<PathBuf, StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = tokens_dir(store);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => Err(io_error(dir)(err)),
        _ => Ok(dir),
    }
}

fn read_record(path: &std::path::Path) -> Result<Option<TokenRecord>, StoreError> {
    let Some(bytes) = read_optional(path).map_err(io_error(path.to_path_buf()))? else {
        return Ok(None);
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() > MAX_TOKEN_FILE_BYTES {
        return Err(corrupt(format!("over {MAX_TOKEN_FILE_BYTES} bytes")));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|err| corrupt(err.to_string()))
}

fn to_json(record: &TokenRecord) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

fn write_record(store: &Store, hash: &str, record: &TokenRecord) -> Result<(), StoreError> {
    store.write_file(
        &format!("{TOKENS_DIR}/{hash}.json"),
        &to_json(record),
        0o600,
    )
}

/// The hashes of every token file, sorted.
fn hashes(store: &Store) -> Result<Vec<String>, StoreError> {
    let dir = tokens_dir(store);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io_error(dir)(err)),
    };
    let mut hashes: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let hash = name.strip_suffix(".json")?.to_string();
            (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hash)
        })
        .collect();
    hashes.sort();
    Ok(hashes)
}

/// What `otad token new` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// Uses allowed (1 to [`MAX_USES`]).
    pub uses: u32,
    /// Seconds from now until it expires.
    pub lifetime: i64,
    /// The one device it is for.
    pub scope: Option<TokenScope>,
    /// The admin's note.
    pub note: String,
}

/// What is wrong with a request for a token, named by the `otad token new` flag to change;
/// nothing is read or written. [`create`] checks the same.
pub fn check_new(new: &NewToken) -> Result<(), String> {
    if !(1..=MAX_USES).contains(&new.uses) {
        return Err(format!("--uses {}: must be 1 to {MAX_USES}", new.uses));
    }
    if new.note.chars().count() > MAX_NOTE_CHARS || new.note.chars().any(char::is_control) {
        return Err(format!(
            "--note: at most {MAX_NOTE_CHARS} printable characters"
        ));
    }
    match &new.scope {
        Some(TokenScope::Udid(udid)) if !crate::store::valid_udid(udid) => Err(format!(
            "--udid {:?}: not a valid UDID",
            crate::logger::one_line(udid, 80)
        )),
        Some(TokenScope::Serial(serial))
            if serial.is_empty()
                || serial.len() > 64
                || !serial.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            Err(format!(
                "--serial {:?}: a serial number is 1 to 64 letters and digits",
                crate::logger::one_line(serial, 80)
            ))
        }
        _ => Ok(()),
    }
}

/// A token id as the files are named (lowercase), or why `id` cannot be one.
pub fn check_id(id: &str) -> Result<String, String> {
    let id = id.trim().to_ascii_lowercase();
    if id.len() != ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{:?}: a token id is {ID_LEN} hex digits, as `otad token list` shows",
            crate::logger::one_line(&id, 40)
        ));
    }
    Ok(id)
}

/// Makes a token; returns its secret (shown once) and its record.
pub fn create(
    store: &Store,
    new: &NewToken,
    now: i64,
) -> Result<(String, TokenRecord), TokenError> {
    check_new(new).map_err(TokenError::Refused)?;

    store.transaction(|| {
        let dir = ensure_dir(store)?;
        let existing = hashes(store)?;
        if existing.len() >= MAX_TOKENS {
            return Err(TokenError::Refused(format!(
                "{MAX_TOKENS} tokens are stored already; remove old files from {}",
                dir.display()
            )));
        }
        // A fresh secret whose id no other token has (a 48-bit clash is unlikely, not
        // impossible).
        let (secret, hash) = loop {
            let secret = new_secret();
            let hash = sha256_hex(&secret);
            if !existing
                .iter()
                .any(|h| h.get(..ID_LEN) == hash.get(..ID_LEN))
            {
                break (secret, hash);
            }
        };
        let record = TokenRecord {
            id: hash.get(..ID_LEN).unwrap_or_default().to_string(),
            uses: new.uses,
            used: 0,
            created: now,
            expires: now.saturating_add(new.lifetime),
            scope: new.scope.clone(),
            note: new.note.clone(),
            revoked: None,
            history: Vec::new(),
            live_challenges: Vec::new(),
        };
        let path = dir.join(format!("{hash}.json"));
        store.create_state_file(&path, &to_json(&record), 0o600)?;
        Ok((secret, record))
    })
}

/// Every token, oldest first.
pub fn list(store: &Store) -> Result<Vec<TokenRecord>, StoreError> {
    let dir = tokens_dir(store);
    let mut records = Vec::new();
    for hash in hashes(store)? {
        if let Some(record) = read_record(&dir.join(format!("{hash}.json")))? {
            records.push(record);
        }
    }
    records.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    Ok(records)
}

/// The hash of the token whose id is `id` (exactly [`ID_LEN`] hex digits).
fn hash_of_id(store: &Store, id: &str) -> Result<String, TokenError> {
    let id = check_id(id).map_err(TokenError::Refused)?;
    hashes(store)?
        .into_iter()
        .find(|hash| hash.starts_with(&id))
        .ok_or_else(|| TokenError::NotFound(format!("enrollment token {id}: no such token")))
}

/// The token with this id.
pub fn show(store: &Store, id: &str) -> Result<TokenRecord, TokenError> {
    let hash = hash_of_id(store, id)?;
    read_record(&tokens_dir(store).join(format!("{hash}.json")))?
        .ok_or_else(|| TokenError::NotFound(format!("enrollment token {id}: no such token")))
}

/// Revokes the token with this id; revoking twice keeps the first time.
pub fn revoke(store: &Store, id: &str, now: i64) -> Result<TokenRecord, TokenError> {
    store.transaction(|| {
        let hash = hash_of_id(store, id)?;
        let path = tokens_dir(store).join(format!("{hash}.json"));
        let mut record = read_record(&path)?
            .ok_or_else(|| TokenError::NotFound(format!("enrollment token {id}: no such token")))?;
        if record.revoked.is_none() {
            record.revoked = Some(now);
            record.live_challenges.clear();
            write_record(store, &hash, &record)?;
        }
        Ok(record)
    })
}

/// Phase 1: the token a request presents, if it is usable now (no lock; nothing changes).
pub fn lookup(store: &Store, secret: &str, now: i64) -> Result<TokenRecord, TokenError> {
    let unknown = || TokenError::NotFound("enrollment token: unknown".to_string());
    if !plausible_secret(secret) {
        return Err(unknown());
    }
    let hash = sha256_hex(secret);
    let record =
        read_record(&tokens_dir(store).join(format!("{hash}.json")))?.ok_or_else(unknown)?;
    record.check_usable(now).map_err(TokenError::Refused)?;
    Ok(record)
}

/// Phase 1, under the lock: records that `challenge` was handed out for the token `id`,
/// expiring at `expires`, unless the token stopped being usable or holds its cap of live
/// challenges.
pub fn reserve_challenge(
    store: &Store,
    id: &str,
    challenge: &str,
    expires: i64,
    now: i64,
) -> Result<(), TokenError> {
    store.transaction(|| {
        let hash = hash_of_id(store, id)?;
        let path = tokens_dir(store).join(format!("{hash}.json"));
        let mut record = read_record(&path)?
            .ok_or_else(|| TokenError::NotFound(format!("enrollment token {id}: no such token")))?;
        record.check_usable(now).map_err(TokenError::Refused)?;
        record.live_challenges.retain(|live| live.expires > now);
        let cap = live_challenge_cap(record.uses_left());
        if record.live_challenges.len() >= cap {
            let soonest = record.live_challenges.iter().map(|live| live.expires).min();
            return Err(no_room(id, cap, soonest, now));
        }
        record.live_challenges.push(LiveChallenge {
            challenge: sha256_hex(challenge),
            expires,
        });
        write_record(store, &hash, &record)?;
        Ok(())
    })
}

/// What [`reserve_challenge`] would refuse (the token not usable, or holding its cap of live
/// challenges), read without the lock and without writing: for `HEAD /ota/enroll`.
pub fn check_room(store: &Store, id: &str, now: i64) -> Result<(), TokenError> {
    let record = show(store, id)?;
    record.check_usable(now).map_err(TokenError::Refused)?;
    let live = || {
        record
            .live_challenges
            .iter()
            .filter(|live| live.expires > now)
    };
    let cap = live_challenge_cap(record.uses_left());
    if live().count() >= cap {
        let soonest = live().map(|live| live.expires).min();
        return Err(no_room(id, cap, soonest, now));
    }
    Ok(())
}

/// The refusal at a token's cap: each download holds its place until its challenge is
/// answered or expires, after `ota.challenge_ttl`.
fn no_room(id: &str, cap: usize, soonest: Option<i64>, now: i64) -> TokenError {
    TokenError::Busy {
        why: format!(
            "enrollment token {id}: {cap} enrollments started with it are still waiting for \
             their device (each until it is used or ota.challenge_ttl has passed); finish \
             one, try again later, or ask for a new link (otad token new)"
        ),
        retry_after: crate::store::challenges::retry_after(soonest, now),
    }
}

/// Phase 2, before policy and hooks run and without the lock: whether the token `id` would
/// still let this device spend a use (not revoked, expired or used up; the device in its
/// scope). Nothing is written; [`spend`] checks again under the lock.
pub fn precheck(store: &Store, id: &str, device: Spender<'_>, now: i64) -> Result<(), TokenError> {
    let record = show(store, id)?;
    record
        .check_usable(now)
        .and_then(|()| record.check_scope(device.udid, device.serial))
        .map_err(TokenError::Refused)
}

/// Phase 2 refused the device before spending (policy, hook, precheck): the challenge it
/// answered leaves the token's live list, so it no longer holds a place under the cap.
pub fn release_challenge(
    store: &Store,
    id: &str,
    challenge: &str,
    now: i64,
) -> Result<(), TokenError> {
    store.transaction(|| {
        let hash = hash_of_id(store, id)?;
        let path = tokens_dir(store).join(format!("{hash}.json"));
        let Some(mut record) = read_record(&path)? else {
            return Ok(());
        };
        let answered = sha256_hex(challenge);
        let before = record.live_challenges.len();
        record
            .live_challenges
            .retain(|live| live.challenge != answered && live.expires > now);
        if record.live_challenges.len() != before {
            write_record(store, &hash, &record)?;
        }
        Ok(())
    })
}

/// The device that spends a token's use in phase 2, as it signed itself.
#[derive(Debug, Clone, Copy)]
pub struct Spender<'a> {
    /// Its UDID.
    pub udid: &'a str,
    /// Its SERIAL, if it sent one.
    pub serial: Option<&'a str>,
    /// The remote address of the request.
    pub remote: &'a str,
}

/// Phase 2, under the lock: spends one use of the token `id` for the device that answered
/// `challenge`. The token is checked again (revoked or expired since phase 1, used up by
/// another device, another device than its scope): refused, nothing spent. The answered
/// challenge leaves the live list either way.
pub fn spend(
    store: &Store,
    id: &str,
    challenge: &str,
    device: Spender<'_>,
    now: i64,
) -> Result<TokenRecord, TokenError> {
    store.transaction(|| {
        let hash = hash_of_id(store, id)?;
        let path = tokens_dir(store).join(format!("{hash}.json"));
        let mut record = read_record(&path)?
            .ok_or_else(|| TokenError::NotFound(format!("enrollment token {id}: no such token")))?;
        let answered = sha256_hex(challenge);
        let live_before = record.live_challenges.len();
        record
            .live_challenges
            .retain(|live| live.challenge != answered && live.expires > now);
        let checked = record
            .check_usable(now)
            .and_then(|()| record.check_scope(device.udid, device.serial));
        if let Err(reason) = checked {
            if record.live_challenges.len() != live_before {
                write_record(store, &hash, &record)?;
            }
            return Err(TokenError::Refused(reason));
        }

        record.used = record.used.saturating_add(1);
        record.history.push(TokenUse {
            at: now,
            udid: device.udid.to_string(),
            serial: device.serial.map(str::to_string),
            remote: device.remote.to_string(),
        });
        let excess = record.history.len().saturating_sub(MAX_TOKEN_HISTORY);
        record.history.drain(..excess);
        write_record(store, &hash, &record)?;
        Ok(record)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn store() -> (tempfile::TempDir, Store) {
        Store::temporary()
    }

    fn token(uses: u32) -> NewToken {
        NewToken {
            uses,
            lifetime: 3600,
            scope: None,
            note: "for Ada's iPad".into(),
        }
    }

    fn device<'a>(udid: &'a str, serial: Option<&'a str>) -> Spender<'a> {
        Spender {
            udid,
            serial,
            remote: "127.0.0.1:1",
        }
    }

    #[test]
    fn the_secret_is_not_stored_and_the_id_is_public() {
        let (_dir, store) = store();
        let (secret, record) = create(&store, &token(1), 100).unwrap();
        assert!(plausible_secret(&secret));
        assert_eq!(record.id.len(), ID_LEN);
        assert_eq!(record.id, sha256_hex(&secret)[..ID_LEN]);
        assert_eq!(record.expires, 3700);

        let names: Vec<String> = std::fs::read_dir(store.path(TOKENS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [format!("{}.json", sha256_hex(&secret))]);
        let text = std::fs::read_to_string(store.path(TOKENS_DIR).join(&names[0])).unwrap();
        assert!(!text.contains(&secret));

        assert_eq!(lookup(&store, &secret, 200).unwrap().id, record.id);
        assert_eq!(show(&store, &record.id).unwrap().note, "for Ada's iPad");
        assert!(matches!(
            lookup(&store, "not-the-secret", 200),
            Err(TokenError::NotFound(_))
        ));
        assert!(matches!(
            lookup(&store, "../../etc/passwd", 200),
            Err(TokenError::NotFound(_))
        ));
        assert!(matches!(show(&store, "zz"), Err(TokenError::Refused(_))));
        assert!(matches!(
            show(&store, "000000000000"),
            Err(TokenError::NotFound(_))
        ));
    }

    #[test]
    fn uses_are_spent_in_phase_2_and_run_out() {
        let (_dir, store) = store();
        let (secret, record) = create(&store, &token(2), 100).unwrap();
        let id = record.id;
        for (n, challenge) in ["c1", "c2"].iter().enumerate() {
            reserve_challenge(&store, &id, challenge, 1000, 101).unwrap();
            let spent = spend(&store, &id, challenge, device("UDID-1", None), 102).unwrap();
            assert_eq!(spent.used, n as u32 + 1);
            assert!(spent.live_challenges.is_empty());
        }
        let used_up = show(&store, &id).unwrap();
        assert_eq!(used_up.status(103), TokenStatus::UsedUp);
        assert_eq!(used_up.history.len(), 2);
        assert_eq!(used_up.history[1].udid, "UDID-1");
        let err = lookup(&store, &secret, 103).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("enrollment token {id}: no uses left")
        );
        assert!(reserve_challenge(&store, &id, "c3", 1000, 103).is_err());
        assert!(spend(&store, &id, "c3", device("UDID-1", None), 103).is_err());
        assert_eq!(show(&store, &id).unwrap().used, 2, "nothing more spent");
    }

    #[test]
    fn expiry_and_revocation_apply_in_both_phases() {
        let (_dir, store) = store();
        let (secret, record) = create(&store, &token(5), 100).unwrap();
        let id = record.id;
        reserve_challenge(&store, &id, "c1", 10_000, 200).unwrap();
        let err = spend(&store, &id, "c1", device("U", None), 3700).unwrap_err();
        assert!(err.to_string().ends_with("expired"), "{err}");
        assert!(matches!(
            lookup(&store, &secret, 3700),
            Err(TokenError::Refused(_))
        ));

        reserve_challenge(&store, &id, "c2", 10_000, 300).unwrap();
        let revoked = revoke(&store, &id, 400).unwrap();
        assert_eq!(revoked.revoked, Some(400));
        assert_eq!(revoke(&store, &id, 500).unwrap().revoked, Some(400));
        let err = spend(&store, &id, "c2", device("U", None), 401).unwrap_err();
        assert!(err.to_string().ends_with("revoked"), "{err}");
        assert_eq!(show(&store, &id).unwrap().used, 0);
        assert_eq!(show(&store, &id).unwrap().status(401), TokenStatus::Revoked);
    }

    #[test]
    fn a_scoped_token_refuses_other_devices() {
        let (_dir, store) = store();
        let mut new = token(3);
        new.scope = Some(TokenScope::Serial("F2LXK0AAHG7F".into()));
        let (_, record) = create(&store, &new, 100).unwrap();
        let err = spend(&store, &record.id, "c", device("U", Some("OTHER123")), 101).unwrap_err();
        assert!(
            err.to_string().contains("for serial F2LXK0AAHG7F only"),
            "{err}"
        );
        assert!(spend(&store, &record.id, "c", device("U", None), 101).is_err());
        spend(
            &store,
            &record.id,
            "c",
            device("U", Some("f2lxk0aahg7f")),
            101,
        )
        .unwrap();

        new.scope = Some(TokenScope::Udid("00008030-001A35E12345802E".into()));
        let (_, record) = create(&store, &new, 100).unwrap();
        assert!(spend(&store, &record.id, "c", device("00008030-0000", None), 101).is_err());
        spend(
            &store,
            &record.id,
            "c",
            device("00008030-001A35E12345802E", None),
            101,
        )
        .unwrap();

        new.scope = Some(TokenScope::Udid("../x".into()));
        assert!(matches!(
            create(&store, &new, 1),
            Err(TokenError::Refused(_))
        ));
        new.scope = Some(TokenScope::Serial("A B".into()));
        assert!(matches!(
            create(&store, &new, 1),
            Err(TokenError::Refused(_))
        ));
    }

    #[test]
    fn live_challenges_are_capped() {
        let (_dir, store) = store();
        let (_, record) = create(&store, &token(1), 100).unwrap();
        let cap = live_challenge_cap(1);
        assert_eq!(cap, 1 + LIVE_CHALLENGE_SLACK);
        for n in 0..cap {
            // What HEAD asks, read-only, agrees with what the reservation then does.
            check_room(&store, &record.id, 101).unwrap();
            // The second expires first: 30 s after the refusals below.
            let expires = if n == 1 { 131 } else { 500 };
            reserve_challenge(&store, &record.id, &format!("c{n}"), expires, 101).unwrap();
        }
        let err = reserve_challenge(&store, &record.id, "more", 500, 101).unwrap_err();
        let TokenError::Busy { why, retry_after } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(
            why,
            &format!(
                "enrollment token {}: 4 enrollments started with it are still waiting for their \
                 device (each until it is used or ota.challenge_ttl has passed); finish one, \
                 try again later, or ask for a new link (otad token new)",
                record.id
            )
        );
        assert_eq!(*retry_after, 30);
        let head = check_room(&store, &record.id, 101).unwrap_err();
        assert_eq!(format!("{head:?}"), format!("{err:?}"));
        // Expired ones free their place.
        check_room(&store, &record.id, 500).unwrap();
        reserve_challenge(&store, &record.id, "later", 900, 500).unwrap();
        assert!(matches!(
            check_room(&store, "000000000000", 500),
            Err(TokenError::NotFound(_))
        ));
        assert_eq!(live_challenge_cap(1_000_000), MAX_LIVE_CHALLENGES);
    }

    #[test]
    fn racing_devices_for_the_last_use_have_one_winner() {
        let (_dir, store) = store();
        let (_, record) = create(&store, &token(1), 100).unwrap();
        let root = Arc::new(store.root().to_path_buf());
        let handles: Vec<_> = (0..8)
            .map(|n| {
                let root = root.clone();
                let id = record.id.clone();
                std::thread::spawn(move || {
                    // Each its own Store, as separate processes would: only the file lock
                    // stands between them.
                    let store = Store::open(&root).unwrap();
                    let udid = format!("UDID-{n}");
                    spend(&store, &id, &format!("c{n}"), device(&udid, None), 101).is_ok()
                })
            })
            .collect();
        let winners = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|won| *won)
            .count();
        assert_eq!(winners, 1);
        let after = show(&store, &record.id).unwrap();
        assert_eq!(after.used, 1);
        assert_eq!(after.history.len(), 1);
    }

    #[test]
    fn bad_requests_for_new_tokens() {
        let (_dir, store) = store();
        for bad in [0, MAX_USES + 1] {
            assert!(create(&store, &token(bad), 1).is_err());
        }
        let mut new = token(1);
        new.note = "a\nb".into();
        assert!(create(&store, &new, 1).is_err());
        assert!(list(&store).unwrap().is_empty());
    }

    #[test]
    fn a_token_serves_exactly_its_uses() {
        let (_dir, store) = store();
        let (secret, record) = create(&store, &token(3), 100).unwrap();
        for n in 0..3 {
            let udid = format!("UDID-{n}");
            precheck(&store, &record.id, device(&udid, None), 101).unwrap();
            spend(
                &store,
                &record.id,
                &format!("c{n}"),
                device(&udid, None),
                101,
            )
            .unwrap();
        }
        assert_eq!(show(&store, &record.id).unwrap().used, 3);
        let fourth = spend(&store, &record.id, "c3", device("UDID-3", None), 101);
        assert!(matches!(fourth, Err(TokenError::Refused(_))), "{fourth:?}");
        assert!(precheck(&store, &record.id, device("UDID-3", None), 101).is_err());
        assert!(matches!(
            lookup(&store, &secret, 101),
            Err(TokenError::Refused(_))
        ));
        assert_eq!(show(&store, &record.id).unwrap().used, 3, "nothing spent");

        // The largest count a token may be made with, and its history kept to the last ones.
        let (_, most) = create(&store, &token(MAX_USES), 100).unwrap();
        for n in 0..=MAX_TOKEN_HISTORY {
            spend(&store, &most.id, "c", device(&format!("U{n}"), None), 101).unwrap();
        }
        let after = show(&store, &most.id).unwrap();
        assert_eq!(after.used as usize, MAX_TOKEN_HISTORY + 1);
        assert_eq!(after.history.len(), MAX_TOKEN_HISTORY);
        assert_eq!(after.history.first().map(|u| u.udid.as_str()), Some("U1"));
    }
}
