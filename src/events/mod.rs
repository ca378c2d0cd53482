//! The record of enrollment: an append-only log of events, one JSON object a line, in
//! `events.jsonl` under the state dir, which a webhook ([`webhook`]) can follow.
//!
//! ```text
//! events.jsonl        the live log; every line ends in a newline; a request's lines are
//!                     durable in the state log before it is answered (see below)
//! events.jsonl.<N>    rotated logs, N counting up (the live log becomes N = events.gen)
//! events.gen          the live log's generation number
//! events.cursor       how far the webhook has delivered: {"generation", "offset"}
//! .events.lock        flock shared by the server and the CLI while appending or rotating
//! ```
//!
//! A line is `{"at": RFC 3339, "kind": ..., "udid"?, "serial"?, "remote"?, "reason"?, ...}`.
//! Nothing secret goes in: callers never pass challenges, passwords or token secrets, and
//! fields whose name says they hold one are dropped as a second line of defence.
//!
//! An event that cannot be written is logged at error level with the whole line, and the
//! request that caused it goes on: enrollment does not stop because the disk is full, and
//! the event is still in the server's log (journald), never silently lost.
//!
//! The log has its own lock, not the state lock, so an event may be recorded from inside a
//! [`crate::store::Store::transaction`]; the state lock is never taken while this one is held.
//! A line is written under the lock and synced after it is released, so that lines written
//! at about the same time share one `fdatasync` ([`crate::store::group_commit`]).
//!
//! A request's events need no sync of this file at all: [`EventLog::spool`] keeps them in the
//! state log, in the same sync as the state they record; [`EventLog::write_spooled`] appends
//! them here once that is durable; every second the server syncs this file and forgets them
//! there ([`EventLog::flush_spool`]); after a crash, [`EventLog::recover_spool`] writes the
//! lines this file lost. An event is thus durable before the request that made it is
//! answered, and a request pays one sync, shared, for its state and its events.

pub mod throttle;
pub mod webhook;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::fsutil;
use crate::store::group_commit::{GroupCommit, Ticket};
use crate::store::journal::{Change, Kind};
use crate::store::{Store, StoreError};

/// The live log's file name.
pub const LOG_FILE: &str = "events.jsonl";
/// The file holding the live log's generation.
pub const GENERATION_FILE: &str = "events.gen";
/// The webhook's delivery cursor.
pub const CURSOR_FILE: &str = "events.cursor";
/// The lock appenders (server and CLI) share.
pub const LOCK_FILE: &str = ".events.lock";

/// Event files are for otad's user alone: they name devices, serials and users.
const FILE_MODE: u32 = 0o600;

/// Most fields in one event besides `at` and `kind`.
pub const MAX_FIELDS: usize = 32;
/// Longest text value of a field, in characters; longer is cut and marked with `…`.
pub const MAX_VALUE_CHARS: usize = 1024;
/// Longest line read back from the log; a longer one is skipped as corrupt.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// What ends a line whose fields did not all fit in [`MAX_LINE_BYTES`].
const TRUNCATED: &str = ",\"truncated\":true";

/// Rotated files kept beyond `events.keep` while the webhook has not delivered them; past
/// that the oldest is deleted anyway and the loss logged with its count.
pub const MAX_UNDELIVERED_FILES: u64 = 64;

/// Field names that never go into the log, whatever a caller passes.
const SECRET_WORDS: &[&str] = &["challenge", "password", "secret", "private"];

/// One event, built with [`Event::new`] and the field setters, then handed to
/// [`EventLog::record`].
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    kind: String,
    fields: Vec<(String, Value)>,
}

impl Event {
    /// An event of `kind` ("phase2", "certificate", "refusal", "admin", ...).
    pub fn new(kind: &str) -> Event {
        Event {
            kind: kind.to_string(),
            fields: Vec::new(),
        }
    }

    /// Sets a field (a second call with the same name replaces it). Names that suggest a
    /// secret are dropped; text is cut at [`MAX_VALUE_CHARS`]; beyond [`MAX_FIELDS`] fields
    /// new ones are dropped.
    pub fn field(mut self, name: &str, value: impl Into<Value>) -> Event {
        let lower = name.to_ascii_lowercase();
        if name == "at" || name == "kind" || SECRET_WORDS.iter().any(|w| lower.contains(w)) {
            return self;
        }
        let value = bounded(value.into());
        if let Some(slot) = self.fields.iter_mut().find(|(n, _)| n == name) {
            slot.1 = value;
        } else if self.fields.len() < MAX_FIELDS {
            self.fields.push((name.to_string(), value));
        }
        self
    }

    /// Sets `udid`.
    pub fn udid(self, udid: &str) -> Event {
        self.field("udid", udid)
    }

    /// Sets `serial`: the device's serial number.
    pub fn serial(self, serial: &str) -> Event {
        self.field("serial", serial)
    }

    /// Sets `certificate`: a certificate serial, lowercase hex.
    pub fn certificate(self, serial: &str) -> Event {
        self.field("certificate", serial)
    }

    /// Sets `remote`: the client's address.
    pub fn remote(self, remote: &str) -> Event {
        self.field("remote", remote)
    }

    /// Sets `reason`: why something was refused or done.
    pub fn reason(self, reason: &str) -> Event {
        self.field("reason", reason)
    }

    /// The kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The value of a field, if set.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The log line for this event at unix time `at`: `at` and `kind` first, then the fields
    /// in the order they were set, ending in a newline.
    pub fn to_line(&self, at: i64) -> Vec<u8> {
        let mut line = String::from("{\"at\":");
        line.push_str(&Value::from(crate::store::rfc3339(at)).to_string());
        line.push_str(",\"kind\":");
        line.push_str(&Value::from(self.kind.as_str()).to_string());
        // Fields past what a reader takes (MAX_LINE_BYTES, the newline not counted) are left
        // out and the line says so, rather than the whole event being skipped as corrupt.
        for (name, value) in &self.fields {
            let field = format!(",{}:{value}", Value::from(name.as_str()));
            if line.len() + field.len() + TRUNCATED.len() + 1 > MAX_LINE_BYTES {
                line.push_str(TRUNCATED);
                break;
            }
            line.push_str(&field);
        }
        line.push_str("}\n");
        line.into_bytes()
    }
}

/// A value with its text cut to [`MAX_VALUE_CHARS`] (in arrays too, one level deep).
fn bounded(value: Value) -> Value {
    let cut = |text: String| {
        if text.chars().count() <= MAX_VALUE_CHARS {
            text
        } else {
            let mut short: String = text.chars().take(MAX_VALUE_CHARS).collect();
            short.push('…');
            short
        }
    };
    match value {
        Value::String(text) => Value::String(cut(text)),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .take(MAX_FIELDS)
                .map(|item| match item {
                    Value::String(text) => Value::String(cut(text)),
                    Value::Array(_) | Value::Object(_) => Value::Null,
                    other => other,
                })
                .collect(),
        ),
        Value::Object(_) => Value::Null,
        other => other,
    }
}

/// `[events]` keys.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Rotate `events.jsonl` once it would grow past this many bytes.
    pub max_size: u64,
    /// Rotated files kept.
    pub keep: u64,
    /// `http://` or `https://` URL every event is POSTed to; empty: no webhook.
    pub webhook: String,
    /// A PEM file of the CA certificates the webhook's server is checked against, instead of
    /// the system's roots.
    pub webhook_ca: String,
    /// A file whose first line is the key of an HMAC-SHA256 of each body, sent in
    /// `X-Otad-Signature`.
    pub webhook_secret_file: String,
}

/// Default `events.max_size`: 16 MiB.
pub const DEFAULT_MAX_SIZE: u64 = 16 * 1024 * 1024;
/// Smallest `events.max_size`.
pub const MIN_MAX_SIZE: u64 = 4 * 1024;
/// Largest `events.max_size`: 64 GiB, one file a log reader can still page through.
pub const MAX_MAX_SIZE: u64 = 64 * 1024 * 1024 * 1024;
/// Default `events.keep`.
pub const DEFAULT_KEEP: u64 = 5;
/// Largest `events.keep`.
pub const MAX_KEEP: u64 = 1000;

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            max_size: DEFAULT_MAX_SIZE,
            keep: DEFAULT_KEEP,
            webhook: String::new(),
            webhook_ca: String::new(),
            webhook_secret_file: String::new(),
        }
    }
}

/// `[events]` as checked at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSettings {
    /// `events.max_size`.
    pub max_size: u64,
    /// `events.keep`.
    pub keep: u64,
    /// `events.webhook`, if set.
    pub webhook: Option<String>,
    /// `events.webhook_ca`, resolved, if set.
    pub webhook_ca: Option<PathBuf>,
    /// `events.webhook_secret_file`, resolved, if set.
    pub webhook_secret_file: Option<PathBuf>,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            max_size: DEFAULT_MAX_SIZE,
            keep: DEFAULT_KEEP,
            webhook: None,
            webhook_ca: None,
            webhook_secret_file: None,
        }
    }
}

impl EventsConfig {
    /// Checks the keys; `bad(key, why)` makes the error, `resolve` anchors relative paths.
    pub fn validate<E>(
        &self,
        bad: impl Fn(&str, String) -> E,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<EventSettings, E> {
        if !(MIN_MAX_SIZE..=MAX_MAX_SIZE).contains(&self.max_size) {
            return Err(bad(
                "events.max_size",
                format!(
                    "{}: use {MIN_MAX_SIZE} to {MAX_MAX_SIZE} bytes",
                    self.max_size
                ),
            ));
        }
        if self.keep > MAX_KEEP {
            return Err(bad(
                "events.keep",
                format!("{}: keep at most {MAX_KEEP} rotated files", self.keep),
            ));
        }
        let webhook = if self.webhook.is_empty() {
            None
        } else {
            let lower = self.webhook.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                return Err(bad(
                    "events.webhook",
                    format!(
                        "{:?}: use an http:// or https:// URL",
                        crate::httpclient::mask_url(&self.webhook)
                    ),
                ));
            }
            Some(self.webhook.clone())
        };
        let optional = |key: &str, text: &str| -> Result<Option<PathBuf>, E> {
            if text.is_empty() {
                return Ok(None);
            }
            if webhook.is_none() {
                return Err(bad(
                    key,
                    "set events.webhook too, or leave this empty".into(),
                ));
            }
            Ok(Some(resolve(Path::new(text))))
        };
        Ok(EventSettings {
            max_size: self.max_size,
            keep: self.keep,
            webhook_ca: optional("events.webhook_ca", &self.webhook_ca)?,
            webhook_secret_file: optional("events.webhook_secret_file", &self.webhook_secret_file)?,
            webhook,
        })
    }
}

/// Where the webhook stands: the next byte to deliver, in the log of that generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The log file's generation.
    pub generation: u64,
    /// Bytes of it already delivered.
    pub offset: u64,
}

/// Ids of event logs, for [`BUFFERED`].
static NEXT_LOG_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Events kept aside, each with its time (unix seconds).
pub type Buffered = Vec<(Event, i64)>;

thread_local! {
    /// The logs whose events this thread keeps aside (see [`EventLog::buffering`]).
    static BUFFERED: std::cell::RefCell<Vec<(u64, Buffered)>> = const {
        std::cell::RefCell::new(Vec::new())
    };
}

/// Ends a buffering on this thread however its work ends, and gives its events.
struct Buffering(u64);

impl Buffering {
    fn take(&self) -> Buffered {
        BUFFERED.with(|buffered| {
            let mut buffered = buffered.borrow_mut();
            match buffered.iter().rposition(|(id, _)| *id == self.0) {
                Some(at) => buffered.remove(at).1,
                None => Vec::new(),
            }
        })
    }
}

impl Drop for Buffering {
    fn drop(&mut self) {
        let _ = self.take();
    }
}

/// The event log of one state dir. Cheap to share; appends are serialised across threads
/// and processes.
pub struct EventLog {
    id: u64,
    dir: PathBuf,
    max_size: u64,
    keep: u64,
    /// Whether a webhook follows the log (rotation then spares what it has not delivered).
    followed: bool,
    /// One appender at a time in this process, and the append lock (`.events.lock`) it
    /// takes against other processes, kept open.
    in_process: Mutex<fsutil::KeptLock>,
    /// The live log as this process last wrote it (under `in_process`).
    live: Mutex<Option<LiveFile>>,
    /// Appends that share syncs; its epoch counts the live files this process opened.
    sync: GroupCommit,
    /// Keys of the spooled events written to `events.jsonl` and not synced there yet (see
    /// [`EventLog::spool`]).
    spool: Mutex<Vec<String>>,
    /// Bumped after every append, once synced, for the webhook worker to wake up.
    appended: Arc<(Mutex<u64>, Condvar)>,
    /// How many refusals go into the log one by one.
    refusals: throttle::RefusalThrottle,
    /// How many anonymous downloads (phase 1, the plain profile) go into the log one by one.
    downloads: throttle::RefusalThrottle,
}

impl EventLog {
    /// The log under `state_dir`, with `settings` for rotation.
    pub fn open(state_dir: &Path, settings: &EventSettings) -> EventLog {
        EventLog {
            id: NEXT_LOG_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            dir: state_dir.to_path_buf(),
            max_size: settings.max_size,
            keep: settings.keep,
            followed: settings.webhook.is_some(),
            in_process: Mutex::new(fsutil::KeptLock::new(state_dir.join(LOCK_FILE))),
            live: Mutex::new(None),
            sync: GroupCommit::new(0, 0),
            spool: Mutex::new(Vec::new()),
            appended: Arc::new((Mutex::new(0), Condvar::new())),
            refusals: throttle::RefusalThrottle::default(),
            downloads: throttle::RefusalThrottle::new(
                throttle::DOWNLOADS_PER_CLIENT,
                throttle::PER_WINDOW,
                throttle::WINDOW,
            ),
        }
    }

    /// The state dir the log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records `event` now. A failure is logged at error with the whole line and otherwise
    /// ignored: see the module documentation for why.
    pub fn record(&self, event: Event) {
        self.record_suppressed();
        self.write_or_log(event);
    }

    /// Records a refusal of a request from `remote` (the guard's "ip:port", or an address),
    /// one by one within the bounds of [`throttle`]; past them it is only counted, for the
    /// `refusals-suppressed` event that follows its window.
    pub fn record_refusal(&self, event: Event, remote: &str) {
        self.record_throttled(event, remote, &self.refusals);
    }

    /// Records an anonymous download (phase 1 or the plain enrollment profile, nobody logged
    /// in and no token) as [`EventLog::record_refusal`] records a refusal: anyone can make
    /// them, so past [`throttle::DOWNLOADS_PER_CLIENT`] a client address and
    /// [`throttle::PER_WINDOW`] in all a minute they are counted into one
    /// `downloads-suppressed` event.
    pub fn record_anonymous_download(&self, event: Event, remote: &str) {
        self.record_throttled(event, remote, &self.downloads);
    }

    fn record_throttled(&self, event: Event, remote: &str, throttle: &throttle::RefusalThrottle) {
        let client = crate::gate::peer_ip(remote).or_else(|| remote.parse().ok());
        self.record_suppressed();
        if throttle.admit(client, std::time::Instant::now()) {
            self.write_or_log(event);
        }
    }

    /// The `...-suppressed` events of windows that have ended, if they suppressed any.
    fn record_suppressed(&self) {
        let now = std::time::Instant::now();
        self.write_suppressed("refusals", self.refusals.take_suppressed(now));
        self.write_suppressed("downloads", self.downloads.take_suppressed(now));
    }

    /// The `...-suppressed` events of the running windows too (at shutdown, which would
    /// lose their counts), if they suppressed any.
    pub fn record_suppressed_now(&self) {
        let now = std::time::Instant::now();
        self.write_suppressed("refusals", self.refusals.take_suppressed_now(now));
        self.write_suppressed("downloads", self.downloads.take_suppressed_now(now));
    }

    /// `what`: "refusals" or "downloads", the event's kind and count field.
    fn write_suppressed(&self, what: &str, suppressed: Option<throttle::Suppressed>) {
        let Some(suppressed) = suppressed else {
            return;
        };
        self.write_or_log(
            Event::new(&format!("{what}-suppressed"))
                .field(what, suppressed.refusals)
                .field("clients", suppressed.clients)
                .field("window_seconds", suppressed.window_seconds)
                .reason(&format!(
                    "{} {what} in {} s were not logged one by one (more than {} from one \
                     address or {} in all); each is a line in the server's log",
                    suppressed.refusals,
                    suppressed.window_seconds,
                    suppressed.per_client,
                    suppressed.per_window
                )),
        );
    }

    fn write_or_log(&self, event: Event) {
        let at = crate::store::now();
        // Kept aside where this thread buffers (see `buffering`); else written now.
        let unkept = BUFFERED.with(|buffered| {
            let mut buffered = buffered.borrow_mut();
            match buffered.iter_mut().rev().find(|(id, _)| *id == self.id) {
                Some((_, events)) => {
                    events.push((event, at));
                    None
                }
                None => Some(event),
            }
        });
        if let Some(event) = unkept {
            self.write_all(vec![(event, at)]);
        }
    }

    /// Runs `work` with the events this thread records kept aside instead of written, and
    /// returns them with what `work` returned: a request's events are then written together
    /// by [`EventLog::write_all`], once what they record is durable.
    pub fn buffering<T>(&self, work: impl FnOnce() -> T) -> (T, Buffered) {
        BUFFERED.with(|buffered| buffered.borrow_mut().push((self.id, Vec::new())));
        let buffering = Buffering(self.id);
        let out = work();
        (out, buffering.take())
    }

    /// Writes `events` (each with its time) in one append, synced before it returns; a
    /// failure is logged at error with every line, as [`EventLog::record`] says.
    pub fn write_all(&self, events: Buffered) {
        if events.is_empty() {
            return;
        }
        let lines: Vec<Vec<u8>> = events.iter().map(|(e, at)| e.to_line(*at)).collect();
        self.write_lines_or_log(&lines);
    }

    /// Appends `lines` and syncs them; a failure is logged at error with every line.
    fn write_lines_or_log(&self, lines: &[Vec<u8>]) {
        if let Err(err) = self.append_lines(lines) {
            self.log_unwritten(&err, lines, "");
        }
    }

    /// Logs at error each of `lines` a write failed to add (`kept` says where else it is).
    fn log_unwritten(&self, err: &io::Error, lines: &[Vec<u8>], kept: &str) {
        for line in lines {
            log::error!(
                "events: cannot write to {}: {err}; the event{kept} was: {}",
                self.dir.join(LOG_FILE).display(),
                String::from_utf8_lossy(line).trim_end()
            );
        }
    }

    /// Appends `event` at unix time `at`, synced before it returns, rotating first if the
    /// line would take the live log past `events.max_size`.
    pub fn append(&self, event: &Event, at: i64) -> io::Result<()> {
        self.append_lines(&[event.to_line(at)])
    }

    /// Appends whole lines in one write, synced before it returns, rotating first if they
    /// would take the live log past `events.max_size`.
    fn append_lines(&self, lines: &[Vec<u8>]) -> io::Result<()> {
        let ticket = self.write_lines(lines)?;
        self.wait_synced(ticket)?;
        self.appended_now();
        Ok(())
    }

    /// Wakes the webhook worker: lines were appended.
    fn appended_now(&self) {
        let (count, wake) = &*self.appended;
        let mut count = count
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *count = count.wrapping_add(1);
        wake.notify_all();
    }

    /// Writes whole lines in one write under the append lock, rotating first if they would
    /// take the live log past `events.max_size`; returns what a sync past them waits for.
    fn write_lines(&self, lines: &[Vec<u8>]) -> io::Result<Ticket> {
        let size: usize = lines.iter().map(Vec::len).sum();
        let ticket = {
            let mut lock = self
                .in_process
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let _process = lock.acquire()?;
            let mut live = self.live_file()?;
            if live.len > 0 && live.len.saturating_add(size as u64) > self.max_size {
                // What this process wrote to the old file is durable before it moves.
                live.file.sync_data()?;
                self.rotate()?;
                live = self.live_file()?;
            }

            // A crash mid-write can leave a torn last line; end it so this one stands alone.
            let mut bytes = Vec::with_capacity(size + 1);
            if !live.ends_in_newline {
                bytes.push(b'\n');
            }
            for line in lines {
                bytes.extend_from_slice(line);
            }
            (&*live.file).write_all(&bytes)?;
            live.len += bytes.len() as u64;
            live.ends_in_newline = true;
            let ticket = Ticket {
                epoch: live.epoch,
                end: live.len,
            };
            *self
                .live
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(live);
            ticket
        };
        Ok(ticket)
    }

    /// Keeps a request's `events` in the state log, in a transaction of their own inside
    /// the request's deferral (see [`crate::store::Store::deferring`]), so that they are
    /// durable with the state they record and share its sync; [`EventLog::write_spooled`]
    /// then writes them to `events.jsonl` without a sync of their own, and
    /// [`EventLog::flush_spool`] forgets them once `events.jsonl` is synced past them. If the
    /// state log cannot take them, they are written as [`EventLog::record`] writes.
    pub fn spool(&self, store: &Store, events: Buffered) -> Spooled {
        if events.is_empty() {
            return Spooled::default();
        }
        let lines: Vec<Vec<u8>> = events.iter().map(|(e, at)| e.to_line(*at)).collect();
        let keys: Vec<String> = lines.iter().map(|_| spool_key()).collect();
        let staged = store.transaction(|| {
            for (key, line) in keys.iter().zip(&lines) {
                store.journal().stage(Change {
                    kind: Kind::Event,
                    key: key.clone(),
                    tag: String::new(),
                    value: Some(line.clone()),
                })?;
            }
            Ok::<_, StoreError>(())
        });
        match staged {
            Ok(()) => Spooled { lines, keys },
            Err(err) => {
                log::warn!("events: not kept in the state log ({err}); written directly");
                self.write_lines_or_log(&lines);
                Spooled::default()
            }
        }
    }

    /// Appends spooled lines to `events.jsonl` without a sync of their own: their records in
    /// the state log are durable already. A failure is logged with every line; the records
    /// stay, and the next start writes them ([`EventLog::recover_spool`]).
    pub fn write_spooled(&self, spooled: Spooled) {
        if spooled.lines.is_empty() {
            return;
        }
        match self.write_lines(&spooled.lines) {
            Ok(_) => {
                self.spool
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .extend(spooled.keys);
                self.appended_now();
            }
            Err(err) => self.log_unwritten(
                &err,
                &spooled.lines,
                ", kept in the state log until the next start,",
            ),
        }
    }

    /// Appends spooled lines to `events.jsonl` and syncs them there, for a request whose state
    /// could not be made durable (their records in the state log may not be either). The
    /// next start does not write them again: they are in the log by then.
    pub fn write_spooled_durably(&self, spooled: Spooled) {
        self.write_lines_or_log(&spooled.lines);
    }

    /// Syncs `events.jsonl` past every spooled line written so far, then removes their
    /// records from the state log; returns how many. Called every second by the server's
    /// sweeper and when it stops.
    pub fn flush_spool(&self, store: &Store) -> Result<usize, String> {
        let keys = std::mem::take(
            &mut *self
                .spool
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        if keys.is_empty() {
            return Ok(0);
        }
        let forgotten = self
            .sync_appended()
            .map_err(|err| format!("{}: {err}", self.dir.join(LOG_FILE).display()))
            .and_then(|()| forget_spooled(store, &keys).map_err(|err| err.to_string()));
        if let Err(err) = forgotten {
            // Kept for the next try; a start after a crash writes what is missing.
            self.spool
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .extend(keys);
            return Err(err);
        }
        Ok(keys.len())
    }

    /// After a crash: writes to `events.jsonl` the spooled lines it lost (those a sync had
    /// not reached), durably, in the order they were made, then removes every spooled
    /// record; returns how many lines were written. A line counts as there when the same
    /// bytes are among the last lines of the log (as often as they were spooled).
    pub fn recover_spool(&self, store: &Store) -> Result<usize, String> {
        let spooled = store
            .journal()
            .all(Kind::Event, false)
            .map_err(|err| err.to_string())?;
        if spooled.is_empty() {
            return Ok(0);
        }
        let mut present: HashMap<Vec<u8>, usize> = HashMap::new();
        let live = read_generation(&self.dir).map_err(|err| err.to_string())?;
        for path in [
            self.file_of(live.saturating_sub(1), live),
            self.dir.join(LOG_FILE),
        ] {
            for line in tail_lines(&path, RECOVERY_TAIL_BYTES) {
                *present.entry(line).or_default() += 1;
            }
        }
        let mut missing = Vec::new();
        for (_, line) in &spooled {
            match present.get_mut(line) {
                Some(count) if *count > 0 => *count -= 1,
                _ => missing.push(line.clone()),
            }
        }
        if !missing.is_empty() {
            self.append_lines(&missing)
                .map_err(|err| format!("{}: {err}", self.dir.join(LOG_FILE).display()))?;
        }
        let keys: Vec<String> = spooled.into_iter().map(|(key, _)| key).collect();
        forget_spooled(store, &keys).map_err(|err| err.to_string())?;
        Ok(missing.len())
    }

    /// Returns once the live log is synced past `ticket`, sharing the sync with the other
    /// appends waiting then.
    fn wait_synced(&self, ticket: Ticket) -> io::Result<()> {
        self.sync.wait(ticket, || {
            let live = self
                .live
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            live.as_ref()
                .map(|live| (Arc::clone(&live.file), live.epoch, live.len))
        })
    }

    /// Makes everything this process appended durable (before the webhook reads it).
    fn sync_appended(&self) -> io::Result<()> {
        let ticket = self
            .live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map(|live| Ticket {
                epoch: live.epoch,
                end: live.len,
            });
        ticket.map_or(Ok(()), |ticket| self.wait_synced(ticket))
    }

    /// The live log, open for appending, as it is now on disk: the file this process holds
    /// if it is still the one at `events.jsonl` (another process may have rotated it), its
    /// length and whether it ends a line. Called holding the append lock.
    fn live_file(&self) -> io::Result<LiveFile> {
        // A copy: the one in place stays there for syncs under way.
        let held = self
            .live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let path = self.dir.join(LOG_FILE);
        let on_disk = match std::fs::symlink_metadata(&path) {
            Ok(meta) => Some((meta.dev(), meta.ino())),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(err),
        };
        let mut live = match held {
            Some(held) if Some(held.id) == on_disk => held,
            held => {
                // What this process wrote to a file that moved is made durable first, so
                // that the new epoch settles every ticket of the old one.
                if let Some(held) = &held {
                    held.file.sync_data()?;
                }
                let file = self.open_live()?;
                let meta = file.metadata()?;
                let epoch = held.map_or(1, |held| held.epoch + 1);
                self.sync.replaced(epoch, meta.len());
                LiveFile {
                    file: Arc::new(file),
                    id: (meta.dev(), meta.ino()),
                    epoch,
                    len: u64::MAX,
                    ends_in_newline: true,
                }
            }
        };
        // Another process may have appended since: then the last byte is read again.
        let len = live.file.metadata()?.len();
        if len != live.len {
            let mut last = [0u8; 1];
            live.ends_in_newline =
                len == 0 || (live.file.read_at(&mut last, len - 1)? == 1 && last[0] == b'\n');
            live.len = len;
        }
        Ok(live)
    }

    fn open_live(&self) -> io::Result<File> {
        let path = self.dir.join(LOG_FILE);
        let existed = path.exists();
        let file = OpenOptions::new()
            .append(true)
            .read(true)
            .create(true)
            .mode(FILE_MODE)
            .open(&path)?;
        if !existed {
            fsutil::sync_dir(&self.dir)?;
        }
        Ok(file)
    }

    /// The live log's generation (1 before the first rotation).
    pub fn generation(&self) -> io::Result<u64> {
        read_generation(&self.dir)
    }

    /// Moves the live log to `events.jsonl.<generation>` and prunes old files. Holds the
    /// append lock (the caller's).
    fn rotate(&self) -> io::Result<()> {
        let generation = read_generation(&self.dir)?;

        // The new number is durable before the rename: a crash in between leaves the old log
        // under the new number, which the webhook then sends again (at least once), rather
        // than two logs under one number.
        let next = generation.saturating_add(1);
        fsutil::write_atomic(
            &self.dir.join(GENERATION_FILE),
            format!("{next}\n").as_bytes(),
            FILE_MODE,
        )?;
        std::fs::rename(
            self.dir.join(LOG_FILE),
            self.dir.join(rotated_name(generation)),
        )?;
        fsutil::sync_dir(&self.dir)?;

        // One file falls out of `keep` per rotation; the webhook's, if it still needs it,
        // stays until delivered (the worker removes it then) or until the backlog cap.
        let delivered = if self.followed {
            read_cursor(&self.dir)?.map_or(0, |c| c.generation)
        } else {
            u64::MAX
        };
        if let Some(old) = next.checked_sub(self.keep.saturating_add(1)) {
            if old >= 1 && old < delivered {
                remove_rotated(&self.dir, old)?;
            } else if old >= 1 && self.dir.join(rotated_name(old)).exists() {
                log::warn!(
                    "events: keeping {} beyond events.keep: the webhook has not delivered it",
                    rotated_name(old)
                );
            }
        }
        if let Some(oldest) = next.checked_sub(self.keep.saturating_add(1 + MAX_UNDELIVERED_FILES))
        {
            let path = self.dir.join(rotated_name(oldest));
            if oldest >= 1 && path.exists() {
                let lines = count_lines(&path).unwrap_or(0);
                remove_rotated(&self.dir, oldest)?;
                log::error!(
                    "events: dropped {} with {lines} events the webhook never delivered \
                     (more than {MAX_UNDELIVERED_FILES} files behind)",
                    rotated_name(oldest)
                );
            }
        }
        Ok(())
    }

    /// Waits until an event is appended in this process or `timeout` passes.
    pub fn wait_for_append(&self, seen: &mut u64, timeout: std::time::Duration) {
        let (count, wake) = &*self.appended;
        let guard = count
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (guard, _) = wake
            .wait_timeout_while(guard, timeout, |count| *count == *seen)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *seen = *guard;
    }

    /// What this process has appended so far (for [`EventLog::wait_for_append`]).
    pub fn appended(&self) -> u64 {
        *self
            .appended
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Where the log of `generation` is: the live one or a rotated one.
    pub fn file_of(&self, generation: u64, live: u64) -> PathBuf {
        if generation >= live {
            self.dir.join(LOG_FILE)
        } else {
            self.dir.join(rotated_name(generation))
        }
    }

    /// Opens the log of `generation` positioned at `offset`, under the append lock so that
    /// no rotation happens between finding the live generation and opening its file.
    /// `None` if that rotated file is gone. Returns the live generation too.
    pub fn open_at(&self, cursor: Cursor) -> io::Result<(Option<File>, u64)> {
        // Nothing is delivered that a crash could still take back: what this process
        // appended is synced first (other processes sync theirs before they return).
        self.sync_appended()?;
        let mut lock = self
            .in_process
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _process = lock.acquire()?;
        let live = read_generation(&self.dir)?;
        let path = self.file_of(cursor.generation, live);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok((None, live)),
            Err(err) => return Err(err),
        };
        file.seek(SeekFrom::Start(cursor.offset))?;
        Ok((Some(file), live))
    }

    /// The end of the log now: where a webhook starts that has no cursor yet.
    pub fn end(&self) -> io::Result<Cursor> {
        let mut lock = self
            .in_process
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _process = lock.acquire()?;
        let generation = read_generation(&self.dir)?;
        let offset = match std::fs::metadata(self.dir.join(LOG_FILE)) {
            Ok(meta) => meta.len(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => 0,
            Err(err) => return Err(err),
        };
        Ok(Cursor { generation, offset })
    }

    /// Removes the rotated log of `generation` if it is beyond `events.keep` now that the
    /// webhook has delivered it.
    pub fn delivered_file(&self, generation: u64, live: u64) -> io::Result<()> {
        if generation.saturating_add(self.keep) < live {
            remove_rotated(&self.dir, generation)?;
        }
        Ok(())
    }
}

/// A request's events as [`EventLog::spool`] kept them: their lines and their keys in the
/// state log.
#[derive(Debug, Default)]
pub struct Spooled {
    lines: Vec<Vec<u8>>,
    keys: Vec<String>,
}

/// How much of the end of `events.jsonl` (and of the file rotated before it) recovery
/// searches for spooled lines: far more than a second of events.
const RECOVERY_TAIL_BYTES: u64 = 8 * 1024 * 1024;

/// A key for a spooled event: this process's start time, then a count, so that keys sort
/// by when they were made, across restarts.
fn spool_key() -> String {
    static STARTED: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let started = STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{started:032x}{n:016x}")
}

/// Removes the spooled records under `keys` from the state log.
fn forget_spooled(store: &Store, keys: &[String]) -> Result<(), StoreError> {
    store.transaction(|| {
        for key in keys {
            store.journal().stage(Change {
                kind: Kind::Event,
                key: key.clone(),
                tag: String::new(),
                value: None,
            })?;
        }
        Ok(())
    })
}

/// The whole lines (each with its newline) in the last `tail` bytes of `path`; none if it
/// cannot be read.
fn tail_lines(path: &Path, tail: u64) -> Vec<Vec<u8>> {
    let Ok(file) = fsutil::open_regular(path) else {
        return Vec::new();
    };
    let len = file.metadata().map_or(0, |meta| meta.len());
    let start = len.saturating_sub(tail);
    let mut bytes = vec![0u8; (len - start) as usize];
    if file.read_exact_at(&mut bytes, start).is_err() {
        return Vec::new();
    }
    // The first line may be cut by the tail's start: it is skipped unless the tail is all.
    let skip_first = start > 0;
    bytes
        .split_inclusive(|b| *b == b'\n')
        .skip(usize::from(skip_first))
        .filter(|line| line.ends_with(b"\n"))
        .map(<[u8]>::to_vec)
        .collect()
}

/// The live log as this process holds it open.
#[derive(Clone)]
struct LiveFile {
    file: Arc<File>,
    /// (device, inode): another file at `events.jsonl` means a rotation.
    id: (u64, u64),
    /// This process's count of live files, for [`GroupCommit`].
    epoch: u64,
    /// Its length after this process's last write or look.
    len: u64,
    /// Whether its last byte ends a line.
    ends_in_newline: bool,
}

/// `events.jsonl.<generation>`.
pub fn rotated_name(generation: u64) -> String {
    format!("{LOG_FILE}.{generation}")
}

fn remove_rotated(dir: &Path, generation: u64) -> io::Result<()> {
    fsutil::remove_durably(&dir.join(rotated_name(generation))).map(|_| ())
}

fn count_lines(path: &Path) -> io::Result<usize> {
    let mut count = 0;
    let mut buffer = [0u8; 64 * 1024];
    let mut file = File::open(path)?;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(count);
        }
        count += buffer
            .get(..n)
            .unwrap_or_default()
            .iter()
            .filter(|b| **b == b'\n')
            .count();
    }
}

/// The live log's generation from `events.gen` (1 if absent).
pub fn read_generation(dir: &Path) -> io::Result<u64> {
    let path = dir.join(GENERATION_FILE);
    match fsutil::read_optional(&path)? {
        None => Ok(1),
        Some(bytes) => String::from_utf8_lossy(&bytes)
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|g| *g >= 1)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: not a generation number", path.display()),
                )
            }),
    }
}

/// The webhook's cursor, if it has one.
pub fn read_cursor(dir: &Path) -> io::Result<Option<Cursor>> {
    let path = dir.join(CURSOR_FILE);
    match fsutil::read_optional(&path)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|err| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: {err} (delete it to restart delivery at the end of the log)",
                    path.display()
                ),
            )
        }),
    }
}

/// Saves the webhook's cursor atomically.
pub fn write_cursor(dir: &Path, cursor: Cursor) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(&cursor).map_err(io::Error::other)?;
    bytes.push(b'\n');
    fsutil::write_atomic(&dir.join(CURSOR_FILE), &bytes, FILE_MODE)
}

/// Records one event in the state dir of the config at `config`, for the CLI: admin
/// commands call this (or [`admin`]) after changing state. A write that fails is printed to
/// stderr, since the action itself is done; a config that cannot be read is not (there is
/// no events log then, and the command has said why it failed).
pub fn record_for_config(config: &Path, event: Event) {
    // No readable config, no events log to write to: the command's own error says why, so
    // nothing is said here.
    if let Ok((_, derived)) = crate::config::Config::load(config) {
        record_in(&derived.state_dir, &derived.events, event);
    }
}

/// Records one event in `state_dir`, for the CLI (errors to stderr with the line).
pub fn record_in(state_dir: &Path, settings: &EventSettings, event: Event) {
    let log = EventLog::open(state_dir, settings);
    let at = crate::store::now();
    if let Err(err) = log.append(&event, at) {
        eprintln!(
            "otad: events: cannot write to {}: {err}; the event was: {}",
            state_dir.join(LOG_FILE).display(),
            String::from_utf8_lossy(&event.to_line(at)).trim_end()
        );
    }
}

/// An admin action: `command` is the words of the CLI command ("cert revoke"), `outcome`
/// "ok" or "failed", with whatever `fields` name its target. One call for any new command.
pub fn admin(command: &str, outcome: &str) -> Event {
    // Who ran it, as sudo or the login says; where neither does (a cron job, a container),
    // the user id at least.
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .filter(|user| !user.is_empty())
        .unwrap_or_else(|| {
            // SAFETY: getuid(2) cannot fail and touches no memory.
            format!("uid {}", unsafe { libc::getuid() })
        });
    Event::new("admin")
        .field("command", command)
        .field("outcome", outcome)
        .field("user", user)
}

/// Admin commands (their first two words) that change state and so are recorded as `admin`
/// events by [`record_admin_command`]; a new one is one more entry here.
pub const RECORDED_COMMANDS: &[&str] = &[
    "cert revoke",
    "cert import",
    "request approve",
    "request deny",
    "token new",
    "token revoke",
    "user add",
    "user remove",
    "device block",
    "device unblock",
];

/// Records an admin command from its raw arguments (those after the command's name, e.g.
/// `["revoke", "--config", "F", "SERIAL"]` for `otad cert revoke`) if it is one of
/// [`RECORDED_COMMANDS`]: the state dir comes from its `--config`, the arguments are kept
/// with the config path left out and values of flags that name a secret redacted.
/// `failure` is the error message when the command failed.
pub fn record_admin_command(command: &str, args: &[std::ffi::OsString], failure: Option<&str>) {
    let Some((config, event)) = admin_event(command, args, failure) else {
        return;
    };
    record_for_config(&config, event);
}

/// The config path and the event [`record_admin_command`] writes, if it writes one.
pub fn admin_event(
    command: &str,
    args: &[std::ffi::OsString],
    failure: Option<&str>,
) -> Option<(PathBuf, Event)> {
    let texts: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let words = format!("{command} {}", texts.first()?);
    if !RECORDED_COMMANDS.contains(&words.as_str()) {
        return None;
    }
    let mut config = None;
    let mut kept = Vec::new();
    let mut items = texts.iter().skip(1);
    while let Some(arg) = items.next() {
        if let Some(value) = arg.strip_prefix("--config=") {
            config = Some(PathBuf::from(value));
        } else if arg == "--config" {
            config = items.next().map(PathBuf::from);
        } else if let Some(value) = arg.strip_prefix("--state=") {
            // `otad init` puts the config in the state dir.
            config = Some(Path::new(value).join("otad.toml"));
        } else if arg == "--state" {
            config = items.next().map(|dir| Path::new(dir).join("otad.toml"));
        } else if arg.starts_with("--")
            && SECRET_WORDS
                .iter()
                .any(|w| arg.to_ascii_lowercase().contains(w))
        {
            kept.push(arg.split('=').next().unwrap_or_default().to_string());
            if !arg.contains('=') {
                items.next();
            }
            kept.push("(redacted)".into());
        } else {
            kept.push(arg.clone());
        }
    }
    let mut event =
        admin(&words, if failure.is_some() { "failed" } else { "ok" }).field("args", kept);
    if let Some(why) = failure {
        event = event.reason(why);
    }
    Some((config?, event))
}

/// Reads complete lines from `reader` starting at byte `offset`: at most `max_lines`, each
/// with the offset just past it. A last line without its newline (an append in progress) is
/// left for later; a line over [`MAX_LINE_BYTES`] comes back as `None`, to be skipped.
pub fn read_lines<R: BufRead>(
    reader: &mut R,
    offset: u64,
    max_lines: usize,
) -> io::Result<Vec<(u64, Option<Vec<u8>>)>> {
    let mut lines = Vec::new();
    let mut at = offset;
    while lines.len() < max_lines {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 || !line.ends_with(b"\n") {
            if line.len() > MAX_LINE_BYTES {
                // An over-long line: skip to its end.
                let mut rest = Vec::new();
                let skipped = reader.read_until(b'\n', &mut rest)?;
                if rest.ends_with(b"\n") {
                    at = at.saturating_add((n + skipped) as u64);
                    lines.push((at, None));
                    continue;
                }
            }
            break;
        }
        at = at.saturating_add(n as u64);
        line.pop();
        lines.push((at, Some(line)));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_size: u64, keep: u64, webhook: bool) -> EventSettings {
        EventSettings {
            max_size,
            keep,
            webhook: webhook.then(|| "http://127.0.0.1:9/".to_string()),
            ..EventSettings::default()
        }
    }

    #[test]
    fn a_flood_of_refusals_is_bounded_in_the_log_and_summed_up_after_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(dir.path(), &settings(1 << 20, 4, false));
        log.refusals = throttle::RefusalThrottle::new(3, 100, std::time::Duration::from_secs(1));
        for n in 0..50 {
            let event = Event::new("refusal").field("n", n).remote("192.0.2.7:4000");
            log.record_refusal(event, "192.0.2.7:4000");
        }
        log.record_refusal(Event::new("refusal").field("n", 99), "198.51.100.1:1");
        let kinds = |log: &EventLog| -> Vec<(String, Value)> {
            std::fs::read_to_string(log.dir().join(LOG_FILE))
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str::<Value>(line).unwrap())
                .map(|v| (v["kind"].as_str().unwrap().to_string(), v))
                .collect()
        };
        let lines = kinds(&log);
        let ns: Vec<_> = lines.iter().map(|(_, v)| v["n"].clone()).collect();
        assert_eq!(ns, [0, 1, 2, 99]);

        // After the window, the next event of any kind is preceded by the sum.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        log.record(Event::new("phase2").udid("UDID-1"));
        let lines = kinds(&log);
        assert_eq!(lines.len(), 6);
        let (kind, summary) = &lines[4];
        assert_eq!(kind, "refusals-suppressed");
        assert_eq!(summary["refusals"], 47);
        assert_eq!(summary["clients"], 1);
        assert_eq!(lines[5].0, "phase2");
    }

    #[test]
    fn a_line_has_at_and_kind_first_and_no_secrets() {
        let event = Event::new("phase2")
            .udid("00008030-001A35E12345802E")
            .serial("F2LXK0AAHG7F")
            .remote("127.0.0.1:5000")
            .field("challenge", "s3cret")
            .field("scep_challenge_value", "s3cret")
            .field("token_secret", "s3cret")
            .field("kind", "forged")
            .field("note", "line\nbreak \"quoted\"");
        let line = String::from_utf8(event.to_line(1_700_000_000)).unwrap();
        assert_eq!(
            line,
            "{\"at\":\"2023-11-14T22:13:20Z\",\"kind\":\"phase2\",\
             \"udid\":\"00008030-001A35E12345802E\",\"serial\":\"F2LXK0AAHG7F\",\
             \"remote\":\"127.0.0.1:5000\",\"note\":\"line\\nbreak \\\"quoted\\\"\"}\n"
        );
        assert!(!line.contains("s3cret"));
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["kind"], "phase2");
    }

    #[test]
    fn values_and_field_counts_are_bounded() {
        let mut event = Event::new("x").field("long", "é".repeat(5000));
        for n in 0..100 {
            event = event.field(&format!("f{n}"), n);
        }
        let Some(Value::String(long)) = event.get("long") else {
            panic!("long missing");
        };
        assert_eq!(long.chars().count(), MAX_VALUE_CHARS + 1);
        assert!(long.ends_with('…'));
        assert_eq!(event.fields.len(), MAX_FIELDS);
        assert_eq!(
            event.clone().field("f0", "again").get("f0"),
            Some(&Value::from("again"))
        );
    }

    #[test]
    fn a_line_never_outgrows_what_a_reader_takes() {
        // 32 fields of 1,024 control characters, each escaped to six bytes: ~200 KB.
        let mut event = Event::new("big");
        for n in 0..MAX_FIELDS {
            event = event.field(&format!("f{n}"), "\u{1}".repeat(MAX_VALUE_CHARS));
        }
        let line = event.to_line(0);
        assert!(line.len() <= MAX_LINE_BYTES + 1, "{}", line.len());
        let parsed: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(parsed["truncated"], Value::Bool(true));
        assert_eq!(parsed["kind"], "big");
        let read = read_lines(&mut &line[..], 0, 1).unwrap();
        assert_eq!(read[0].1.as_deref(), line.strip_suffix(b"\n"));

        // A small event is whole, without the mark.
        let small: Value =
            serde_json::from_slice(&Event::new("s").field("a", 1).to_line(0)).unwrap();
        assert_eq!(small.get("truncated"), None);

        // The reader's edge: MAX_LINE_BYTES before the newline are read, one more skipped.
        for (len, whole) in [(MAX_LINE_BYTES, true), (MAX_LINE_BYTES + 1, false)] {
            let mut text = vec![b'x'; len];
            text.push(b'\n');
            let lines = read_lines(&mut &text[..], 0, 1).unwrap();
            assert_eq!(lines[0].0, len as u64 + 1);
            assert_eq!(lines[0].1.is_some(), whole, "{len}");
        }
    }

    fn lines_of(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// A request's events as `http::answer` handles them: kept aside, spooled into the
    /// state log, written after.
    fn request_events(log: &EventLog, store: &Store, kinds: &[&str]) -> Spooled {
        let ((), events) = log.buffering(|| {
            for kind in kinds {
                log.record(Event::new(kind).udid("UDID-1"));
            }
        });
        log.spool(store, events)
    }

    fn kinds_of(path: &Path) -> Vec<String> {
        lines_of(path)
            .iter()
            .map(|line| line["kind"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn spooled_events_are_written_once_and_forgotten_once_synced() {
        let (dir, store) = Store::temporary();
        let log = EventLog::open(store.root(), &settings(1 << 20, 4, false));
        let spooled = request_events(&log, &store, &["phase2", "certificate"]);
        assert_eq!(store.journal().count(Kind::Event).unwrap(), 2);
        assert!(
            !store.root().join(LOG_FILE).exists(),
            "nothing written before settling"
        );

        log.write_spooled(spooled);
        assert_eq!(
            kinds_of(&store.root().join(LOG_FILE)),
            ["phase2", "certificate"]
        );
        assert_eq!(log.flush_spool(&store).unwrap(), 2);
        assert_eq!(store.journal().count(Kind::Event).unwrap(), 0);
        assert_eq!(log.flush_spool(&store).unwrap(), 0);
        // Nothing to recover: the log has every line once.
        assert_eq!(log.recover_spool(&store).unwrap(), 0);
        assert_eq!(kinds_of(&store.root().join(LOG_FILE)).len(), 2);
        drop(dir);
    }

    #[test]
    fn after_a_crash_the_spooled_lines_the_log_lost_are_written_once() {
        let (_dir, store) = Store::temporary();
        let path = store.root().join(LOG_FILE);
        let log = EventLog::open(store.root(), &settings(1 << 20, 4, false));
        log.record(Event::new("before"));
        // Two requests' events: written, then a crash before events.jsonl was synced,
        // and the power loss took the last two lines (the same line twice among them).
        let first = request_events(&log, &store, &["phase1", "refusal"]);
        let second = request_events(&log, &store, &["refusal", "phase3"]);
        log.write_spooled(first);
        log.write_spooled(second);
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text.split_inclusive('\n').collect();
        assert_eq!(kept.len(), 5);
        std::fs::write(&path, kept[..3].concat()).unwrap();
        drop(log);

        // The next start: a new process's log, the records still in the state log.
        let store = Store::open(store.root()).unwrap();
        let log = EventLog::open(store.root(), &settings(1 << 20, 4, false));
        assert_eq!(log.recover_spool(&store).unwrap(), 2);
        assert_eq!(
            kinds_of(&path),
            ["before", "phase1", "refusal", "refusal", "phase3"]
        );
        assert_eq!(store.journal().count(Kind::Event).unwrap(), 0);
        assert_eq!(log.recover_spool(&store).unwrap(), 0, "nothing twice");
    }

    #[test]
    fn appends_rotate_by_size_and_keep_only_keep_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), &settings(MIN_MAX_SIZE, 2, false));
        let event = Event::new("filler").field("pad", "x".repeat(900));
        let line_len = event.to_line(0).len() as u64;
        let per_file = MIN_MAX_SIZE / line_len;
        let total = per_file * 5 + 1;
        for n in 0..total {
            log.append(&event.clone().field("n", n), 0).unwrap();
        }
        // Five full files rotated (generations 1-5), the live one is generation 6.
        assert_eq!(log.generation().unwrap(), 6);
        assert!(!dir.path().join(rotated_name(3)).exists());
        assert!(dir.path().join(rotated_name(4)).exists());
        assert!(dir.path().join(rotated_name(5)).exists());
        let live = lines_of(&dir.path().join(LOG_FILE));
        assert_eq!(live.len(), 1);
        assert_eq!(live[0]["n"], total - 1);
        let fifth = lines_of(&dir.path().join(rotated_name(5)));
        assert_eq!(fifth.len() as u64, per_file);
        assert_eq!(fifth[0]["n"], per_file * 4);
        for file in [LOG_FILE.to_string(), rotated_name(5)] {
            assert!(std::fs::metadata(dir.path().join(file)).unwrap().len() <= MIN_MAX_SIZE);
        }
    }

    #[test]
    fn rotation_spares_what_the_webhook_has_not_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), &settings(MIN_MAX_SIZE, 1, true));
        write_cursor(
            dir.path(),
            Cursor {
                generation: 1,
                offset: 0,
            },
        )
        .unwrap();
        let event = Event::new("filler").field("pad", "x".repeat(900));
        let per_file = MIN_MAX_SIZE / event.to_line(0).len() as u64;
        for _ in 0..per_file * 4 + 1 {
            log.append(&event, 0).unwrap();
        }
        assert_eq!(log.generation().unwrap(), 5);
        for generation in 1..=4 {
            assert!(
                dir.path().join(rotated_name(generation)).exists(),
                "{generation}"
            );
        }
        // Delivered: the worker removes what is beyond keep.
        for generation in 1..=3 {
            log.delivered_file(generation, 5).unwrap();
            assert!(!dir.path().join(rotated_name(generation)).exists());
        }
        log.delivered_file(4, 5).unwrap();
        assert!(dir.path().join(rotated_name(4)).exists(), "within keep");
    }

    #[test]
    fn a_torn_last_line_is_ended_before_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), &settings(DEFAULT_MAX_SIZE, 5, false));
        log.append(&Event::new("one"), 0).unwrap();
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG_FILE))
            .unwrap();
        file.write_all(b"{\"at\":\"torn").unwrap();
        log.append(&Event::new("two"), 0).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1], "{\"at\":\"torn");
        assert!(lines[2].contains("\"kind\":\"two\""));
    }

    #[test]
    fn concurrent_appenders_never_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(EventLog::open(
            dir.path(),
            &settings(MIN_MAX_SIZE * 4, 100, false),
        ));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                // A separate EventLog per thread stands for another process (its own mutex,
                // the same flock).
                let own = EventLog::open(dir.path(), &settings(MIN_MAX_SIZE * 4, 100, false));
                let shared = Arc::clone(&log);
                std::thread::spawn(move || {
                    for n in 0..50 {
                        let event = Event::new("t")
                            .field("t", t)
                            .field("n", n)
                            .field("pad", "y".repeat(300));
                        if n % 2 == 0 {
                            own.append(&event, 0)
                        } else {
                            shared.append(&event, 0)
                        }
                        .unwrap();
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        let mut total = 0;
        for generation in 1..=log.generation().unwrap() {
            let path = log.file_of(generation, log.generation().unwrap());
            total += lines_of(&path).len();
        }
        assert_eq!(total, 200);
    }

    #[test]
    fn lines_are_read_whole_and_a_partial_tail_waits() {
        let text = b"{\"a\":1}\n{\"b\":2}\n{\"c\":";
        let lines = read_lines(&mut &text[..], 100, 10).unwrap();
        assert_eq!(
            lines,
            vec![
                (108, Some(b"{\"a\":1}".to_vec())),
                (116, Some(b"{\"b\":2}".to_vec()))
            ]
        );
        assert_eq!(read_lines(&mut &text[..], 0, 1).unwrap().len(), 1);
        let mut long = vec![b'x'; MAX_LINE_BYTES + 10];
        long.extend_from_slice(b"\n{}\n");
        let lines = read_lines(&mut &long[..], 0, 10).unwrap();
        assert_eq!(lines[0], ((MAX_LINE_BYTES + 11) as u64, None));
        assert_eq!(lines[1].1.as_deref(), Some(&b"{}"[..]));
    }

    #[test]
    fn admin_commands_are_recorded_without_their_config_or_secrets() {
        let args =
            |list: &[&str]| -> Vec<std::ffi::OsString> { list.iter().map(|a| a.into()).collect() };
        let (config, event) = admin_event(
            "cert",
            &args(&[
                "revoke",
                "--config",
                "/s/otad.toml",
                "0a1b",
                "--reason",
                "keyCompromise",
            ]),
            None,
        )
        .unwrap();
        assert_eq!(config, PathBuf::from("/s/otad.toml"));
        assert_eq!(event.kind(), "admin");
        assert_eq!(event.get("command"), Some(&Value::from("cert revoke")));
        assert_eq!(event.get("outcome"), Some(&Value::from("ok")));
        assert_eq!(
            event.get("args"),
            Some(&serde_json::json!(["0a1b", "--reason", "keyCompromise"]))
        );
        let (_, event) = admin_event(
            "request",
            &args(&["deny", "--config=/s/otad.toml", "--secret-file", "k", "ID"]),
            Some("request ID: unknown"),
        )
        .unwrap();
        assert_eq!(
            event.get("args"),
            Some(&serde_json::json!(["--secret-file", "(redacted)", "ID"]))
        );
        assert_eq!(event.get("outcome"), Some(&Value::from("failed")));
        assert_eq!(
            event.get("reason"),
            Some(&Value::from("request ID: unknown"))
        );
        let (config, event) = admin_event(
            "token",
            &args(&["new", "--state", "/var/lib/otad", "--uses", "1"]),
            None,
        )
        .unwrap();
        assert_eq!(config, PathBuf::from("/var/lib/otad/otad.toml"));
        assert_eq!(event.get("command"), Some(&Value::from("token new")));
        assert_eq!(event.get("args"), Some(&serde_json::json!(["--uses", "1"])));
        let (config, _) =
            admin_event("device", &args(&["block", "--state=/s", "C02X"]), None).unwrap();
        assert_eq!(config, PathBuf::from("/s/otad.toml"));
        assert!(admin_event("token", &args(&["list", "--state", "/s"]), None).is_none());
        assert!(admin_event("cert", &args(&["list", "--config", "c"]), None).is_none());
        assert!(
            admin_event("cert", &args(&["revoke", "0a"]), None).is_none(),
            "no config"
        );
    }

    #[test]
    fn settings_are_validated_with_the_key_named() {
        let bad = |key: &str, why: String| format!("{key}: {why}");
        let resolve = |p: &Path| Path::new("/etc/otad").join(p);
        let ok = EventsConfig::default().validate(bad, resolve).unwrap();
        assert_eq!(ok, EventSettings::default());
        let config = EventsConfig {
            webhook: "ftp://x".into(),
            ..EventsConfig::default()
        };
        assert!(config
            .validate(bad, resolve)
            .unwrap_err()
            .starts_with("events.webhook:"));
        let config = EventsConfig {
            webhook_ca: "ca.pem".into(),
            ..EventsConfig::default()
        };
        assert!(config
            .validate(bad, resolve)
            .unwrap_err()
            .starts_with("events.webhook_ca:"));
        let config = EventsConfig {
            max_size: 10,
            ..EventsConfig::default()
        };
        assert!(config
            .validate(bad, resolve)
            .unwrap_err()
            .starts_with("events.max_size:"));
        let config = EventsConfig {
            webhook: "https://hooks.example/otad".into(),
            webhook_secret_file: "hook.key".into(),
            ..EventsConfig::default()
        };
        let settings = config.validate(bad, resolve).unwrap();
        assert_eq!(
            settings.webhook_secret_file,
            Some(PathBuf::from("/etc/otad/hook.key"))
        );
    }
}
