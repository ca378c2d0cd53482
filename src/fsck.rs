//! `otad fsck`: checks a state dir's records and files against each other and reports what
//! is wrong, changing nothing unless asked to repair.
//!
//! Checked: the state log reads to its end (a write cut short by a crash is a note: readers
//! ignore it and the next write cuts it off); every record and state file parses (devices,
//! certificates, challenges, tokens, pending requests, blocked serials, `users.json`,
//! `crl.json`, the events cursor and generation); no two certificate records share a serial
//! and none has the CA's; each device's certificates exist and name it; the transaction index
//! points at requests that exist; the certificate records, the CRL index and the CRL agree
//! about what is revoked; leftover temp files of interrupted atomic writes (named as
//! [`fsutil::parse_temp_name`] reads them) and of interrupted rewrites of the state log;
//! expired challenges; token uses; file modes.
//!
//! Each finding is a *problem* (exit 1) or a *note* (harmless, such as an expired challenge
//! or an index entry a crash left pointing at nothing, which readers already ignore).
//! `--repair` does only safe things, under the state lock: it cuts off a torn end of the state
//! log, removes temp files of writers that are gone and expired challenges, rebuilds the
//! transaction index from the requests, and reconciles the CRL with the certificate records
//! both ways ([`crl::reconcile`], which signs with the CA key). It never removes a certificate
//! or device record. The read-only checks take no lock, since the state log is only appended
//! to and every other state file is replaced atomically, so they are safe while `otad serve`
//! runs; a write in flight can then show as a note, never as a problem.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use lexopt::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::admin::{Args, Exit};
use crate::config::Config;
use crate::events;
use crate::gate::{tokens, users};
use crate::pki::ca::CertificateAuthority;
use crate::pki::{cert, crl};
use crate::store::journal::{self, Kind, Tail};
use crate::store::{
    self, blocked::BlockRecord, fsutil, CertRecord, DeviceRecord, PendingRequest, Store, StoreError,
};

/// The largest state file read; a bigger one is reported, not read.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// The deepest folder searched for temp files, below the state dir.
pub const MAX_DEPTH: usize = 4;
/// Most findings kept; beyond it they are only counted.
pub const MAX_FINDINGS: usize = 10_000;
/// Most files read in one folder (every kind of record is capped well below it).
pub const MAX_FILES_PER_FOLDER: usize = 1_000_000;
/// A temp file older than this is left over whatever runs under its pid: an atomic write
/// takes well under a second, so no writer is still at it.
pub const MAX_TEMP_AGE_SECONDS: u64 = 600;
/// How much later than a temp file's mtime its pid's process may have started and still be
/// taken for its writer: /proc/stat's boot time is in whole seconds, and a clock step moves
/// it.
pub const PROCESS_START_SLACK_SECONDS: u64 = 5;
/// The most serials named in one finding.
const MAX_SERIALS_NAMED: usize = 5;

const HELP: &str = "\
usage: otad fsck (--config FILE | --state DIR) [--repair] [--json]

Checks the state dir and reports each problem on a line: the file, what is wrong, and what
--repair would do or what to do by hand. Changes nothing without --repair. Exit 0 if no
problem was found (notes do not count), 1 if one was. Safe while otad serve runs.

Checks:
  - state.log: it is mode 0600 and reads to its end (bytes after the last whole record, a
    write cut short by a crash, are a note: otad's next write cuts them off); bytes that
    fail their check though a later write knew them on disk, damaged after they were
    written (read past; their records are lost); pre-journal/, the folders of an older
    state dir that were imported (a note)
  - temp files left by interrupted writes (one whose writer may still be writing is a
    note: its pid runs, that process started before the file was written, and the file is
    under 10 minutes old), and of an interrupted rewrite of state.log
  - ca/: the CA certificate reads; ca.key, ra.key and signer.key are mode 0600
  - certificates: each record parses, is keyed by its serial, and its PEM holds a
    certificate with that serial; no two records share a serial;
    none has the CA's own serial
  - revocations (an interrupted otad cert revoke): a revoked certificate the CRL index
    (crl.json) does not list; a certificate crl.json lists whose record is not marked
    revoked; crl.der missing once a CRL was signed, not verifying under the CA, or not
    listing every certificate crl.json lists, or listing a serial twice; crl.json parses
  - crl.json's entries: each reads (a serial of hex, at most 20 octets; a known reason);
    no serial listed twice; serials spelled as otad writes them (a note)
  - devices: each record parses and is keyed by its UDID; each of its certificates is
    recorded and names it; a certificate issued to a device but not on its record (a
    note); a certificate naming a device record that does not parse is left alone and
    noted on that record
  - challenges: each parses; expired ones (a note)
  - tokens/: each parses, is mode 0600 and is named by its id; no more uses spent than
    allowed
  - pending/: each request parses and is named by its id; pending/by-transaction: a
    request that cannot be polled; an entry pointing at no request (a note)
  - blocked/: each parses and is named by its serial
  - users.json: mode 0600, and it loads
  - events.cursor and events.gen (the webhook's place in the events log) read

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
  --repair        under the state lock: rewrite state.log without damaged bytes (keeping
                  it as it was in state.log.damaged-<time>); cut off a torn end of it;
                  remove leftover
                  temp files and expired challenges, rebuild pending/by-transaction from
                  the requests;
                  reconcile revocations both ways: a record marked revoked is added to
                  crl.json, a record crl.json lists is marked revoked (its time and reason),
                  and the CRL is re-signed with the CA key; rewrite crl.json with each
                  serial in otad's spelling and listed once (its revocation dated first).
                  Never removes a certificate or device record. Then checks again.
  --json          one JSON object: clean, problems, notes, findings, repaired
";

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Something is wrong (exit 1).
    Problem,
    /// Worth knowing, harmless.
    Note,
}

/// What `--repair` does about a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// Remove this temp file.
    RemoveTemp(PathBuf),
    /// Remove the expired challenges.
    SweepChallenges,
    /// Cut off what follows the state log's last whole record.
    CutTornTail,
    /// Rewrite the state log without the damaged bytes it reads past, keeping a copy of it
    /// as it was.
    RewriteDamaged,
    /// Rebuild `pending/by-transaction` from the requests.
    RebuildTransactionIndex,
    /// Bring the certificate records, `crl.json` and `crl.der` into agreement
    /// ([`crl::reconcile`]).
    ReconcileCrl,
    /// Rewrite `crl.json` with each serial canonical and listed once
    /// ([`Store::rewrite_crl_index`]).
    RewriteCrlIndex,
}

/// What `--repair` needs to sign a CRL: the CA and how long a CRL is valid.
pub struct CrlSigner<'a> {
    /// The CA, with its key.
    pub ca: &'a CertificateAuthority,
    /// `scep.crl_validity`.
    pub validity: Duration,
}

/// One thing fsck found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Problem or note.
    pub severity: Severity,
    /// The file, relative to the state dir.
    pub file: String,
    /// What is wrong.
    pub problem: String,
    /// What `--repair` does, or what the admin should do.
    pub action: String,
    /// The repair, if `--repair` can make one.
    pub repair: Option<Repair>,
}

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    /// Findings, at most [`MAX_FINDINGS`].
    pub findings: Vec<Finding>,
    /// Findings beyond [`MAX_FINDINGS`], counted only.
    pub dropped: usize,
}

impl Report {
    fn add(&mut self, severity: Severity, file: &str, problem: String, action: &str) {
        self.push(Finding {
            severity,
            file: file.to_string(),
            problem,
            action: action.to_string(),
            repair: None,
        });
    }

    fn push(&mut self, finding: Finding) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(finding);
        } else {
            self.dropped += 1;
        }
    }

    /// Problems found (notes not counted).
    pub fn problems(&self) -> usize {
        let counted = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Problem)
            .count();
        counted + self.dropped
    }

    /// Notes found.
    pub fn notes(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Note)
            .count()
    }
}

/// Runs `otad fsck ...` with the arguments after `fsck`.
pub fn run(args: Args) -> Exit {
    let mut parser = lexopt::Parser::from_args(args);
    let (mut config, mut repair, mut as_json) = (None, false, false);
    loop {
        let arg = match parser.next() {
            Ok(Some(arg)) => arg,
            Ok(None) => break,
            Err(err) => return Exit::Usage(err.to_string()),
        };
        match arg {
            Long("config") => match parser.value() {
                Ok(value) => config = Some(PathBuf::from(value)),
                Err(err) => return Exit::Usage(err.to_string()),
            },
            Long("repair") => repair = true,
            Long("json") => as_json = true,
            Long("help") | Short('h') => {
                crate::admin::emit(HELP);
                return Exit::Ok;
            }
            other => return Exit::Usage(other.unexpected().to_string()),
        }
    }
    let Some(config) = config else {
        return Exit::Usage(format!("{}\n\n{HELP}", crate::admin::STATE_REQUIRED));
    };
    let (_, derived) = match Config::load(&config) {
        Ok(loaded) => loaded,
        Err(err) => return Exit::Failed(err.to_string()),
    };
    let store = match Store::open(&derived.state_dir) {
        Ok(store) => store,
        Err(err) if as_json => {
            // Still one JSON object, as --json promises: the one problem there is.
            let mut report = Report::default();
            report.add(
                Severity::Problem,
                journal::LOG_FILE,
                err.to_string(),
                "restore the state dir from a backup",
            );
            crate::admin::emit(&render(&report, &[], true));
            return Exit::Failed(err.to_string());
        }
        Err(err) => return Exit::Failed(err.to_string()),
    };

    let (report, repaired) = if repair {
        // Only signing a CRL needs the key; without it every other repair still runs.
        let ca = match load_ca(&store) {
            Ok(ca) => Some(ca),
            Err(why) => {
                eprintln!("otad: fsck --repair: {why}; the CRL cannot be re-signed");
                None
            }
        };
        let signer = ca.as_ref().map(|ca| CrlSigner {
            ca,
            validity: derived.crl_validity,
        });
        match repair_state(&store, signer.as_ref()) {
            Ok(outcome) => outcome,
            Err(err) => return Exit::Failed(format!("fsck --repair: {err}")),
        }
    } else {
        (check(&store), Vec::new())
    };
    crate::admin::emit(&render(&report, &repaired, as_json));
    if report.problems() == 0 {
        Exit::Ok
    } else {
        Exit::Failed(format!(
            "{}: {} problem(s) found",
            store.root().display(),
            report.problems()
        ))
    }
}

/// The CA as the server loads it.
fn load_ca(store: &Store) -> Result<CertificateAuthority, String> {
    use crate::context::{files, Identity};
    let identity = Identity::load(store, files::CA_CERT, files::CA_KEY)?;
    CertificateAuthority::load(&identity.certificate, identity.key)
        .map_err(|err| format!("{}: {err}", store.path(files::CA_CERT).display()))
}

/// The report as text lines or one JSON object.
pub fn render(report: &Report, repaired: &[String], as_json: bool) -> String {
    if as_json {
        let findings: Vec<serde_json::Value> = report
            .findings
            .iter()
            .map(|f| {
                json!({
                    "severity": match f.severity {
                        Severity::Problem => "problem",
                        Severity::Note => "note",
                    },
                    "file": f.file,
                    "problem": f.problem,
                    "action": f.action,
                })
            })
            .collect();
        let value = json!({
            "clean": report.problems() == 0,
            "problems": report.problems(),
            "notes": report.notes(),
            "findings": findings,
            "not_shown": report.dropped,
            "repaired": repaired,
        });
        return format!("{value}\n");
    }
    let mut out = String::new();
    for line in repaired {
        out.push_str(&format!("repaired: {line}\n"));
    }
    for f in &report.findings {
        let label = match f.severity {
            Severity::Problem => "problem",
            Severity::Note => "note",
        };
        // File names come from the state dir, where anyone who could write there may have
        // put a newline or an escape sequence.
        out.push_str(&format!(
            "{label}: {}: {} ({})\n",
            crate::logger::one_line(&f.file, 300),
            crate::logger::one_line(&f.problem, 300),
            f.action
        ));
    }
    if report.dropped > 0 {
        out.push_str(&format!(
            "problem: {} more finding(s) not shown\n",
            report.dropped
        ));
    }
    out.push_str(&format!(
        "fsck: {} problem(s), {} note(s)\n",
        report.problems(),
        report.notes()
    ));
    out
}

/// Repairs under the state lock, then checks again; returns the new report and what was
/// done. Without `signer` the CRL is not reconciled (a line says so).
pub fn repair_state(
    store: &Store,
    signer: Option<&CrlSigner<'_>>,
) -> Result<(Report, Vec<String>), StoreError> {
    // Damaged bytes first: the rewrite is a compaction, with nothing else under way. A copy
    // of the log as it was is kept beside it.
    let damaged = store.journal().damaged().unwrap_or_default();
    let mut rewritten = Vec::new();
    if !damaged.is_empty() {
        let log = store.journal().path().to_path_buf();
        let copy = log.with_file_name(format!("{}.damaged-{}", journal::LOG_FILE, store::now()));
        std::fs::copy(&log, &copy)
            .and_then(|_| std::fs::File::open(&copy)?.sync_all())
            .and_then(|()| fsutil::sync_dir(store.root()))
            .map_err(|source| StoreError::Io {
                path: copy.clone(),
                source,
            })?;
        let (before, after) = store.compact()?;
        let name = copy.file_name().unwrap_or_default().to_string_lossy();
        rewritten.push(format!(
            "{}: rewritten without {} damaged part(s) ({before} -> {after} bytes); as it was: \
             {name}",
            journal::LOG_FILE,
            damaged.len()
        ));
    }

    // Starting the transaction cuts off a torn end of the state log: what was there is read
    // first, to say so.
    let torn = store.journal().tail().ok();
    store.transaction(|| {
        let before = check(store);
        let mut done = std::mem::take(&mut rewritten);
        if let Some(Tail::Torn { at }) = torn {
            done.push(format!(
                "{}: the record at offset {at} that was not whole cut off",
                journal::LOG_FILE
            ));
        }
        let mut wanted: BTreeSet<&'static str> = BTreeSet::new();
        for finding in &before.findings {
            match &finding.repair {
                Some(Repair::RemoveTemp(path)) => {
                    let removed =
                        fsutil::remove_durably(path).map_err(|source| StoreError::Io {
                            path: path.clone(),
                            source,
                        })?;
                    if removed {
                        done.push(format!("{}: removed", finding.file));
                    }
                }
                Some(Repair::SweepChallenges) => {
                    wanted.insert("challenges");
                }
                // Done as the transaction started (above).
                Some(Repair::CutTornTail) => {}
                // Done after the transaction (a rewrite of the whole log).
                Some(Repair::RewriteDamaged) => {}
                Some(Repair::RebuildTransactionIndex) => {
                    wanted.insert("transaction");
                }
                Some(Repair::ReconcileCrl) => {
                    wanted.insert("crl");
                }
                Some(Repair::RewriteCrlIndex) => {
                    wanted.insert("crl.json");
                }
                None => {}
            }
        }
        if wanted.contains("challenges") {
            let removed = store.sweep_challenges(store::now())?;
            done.push(format!(
                "challenges: {removed} expired challenge(s) removed"
            ));
        }
        if wanted.contains("transaction") {
            let changed = rebuild_transaction_index(store)?;
            done.push(format!(
                "{}: {changed} entr(ies) fixed",
                store::TRANSACTION_INDEX_DIR
            ));
        }
        // Before the CRL is reconciled, which then signs from (and may rewrite) a clean index.
        if wanted.contains("crl.json") {
            done.push(match store.rewrite_crl_index() {
                Ok(true) => format!(
                    "{}: rewritten with each serial canonical and listed once",
                    store::crl::CRL_INDEX_FILE
                ),
                Ok(false) => format!("{}: already canonical", store::crl::CRL_INDEX_FILE),
                Err(err) => format!("{}: not rewritten: {err}", store::crl::CRL_INDEX_FILE),
            });
        }
        // Last, and not fatal: a CA that cannot sign leaves the other repairs done.
        if wanted.contains("crl") {
            done.push(match signer {
                Some(signer) => {
                    match crl::reconcile(store, signer.ca, signer.validity, store::now()) {
                        Ok(reconciled) => describe_reconciled(&reconciled),
                        Err(err) => format!("crl: not reconciled: {err}"),
                    }
                }
                None => "crl: not reconciled: the CA key could not be loaded".to_string(),
            });
        }
        Ok((check(store), done))
    })
}

/// One line for what [`crl::reconcile`] did.
fn describe_reconciled(done: &crl::Reconciled) -> String {
    let serials = |list: &[String]| {
        let mut named = list
            .iter()
            .take(MAX_SERIALS_NAMED)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if list.len() > MAX_SERIALS_NAMED {
            named.push_str(", ...");
        }
        named
    };
    let mut parts = Vec::new();
    if !done.marked.is_empty() {
        parts.push(format!(
            "{} record(s) marked revoked as crl.json lists them ({})",
            done.marked.len(),
            serials(&done.marked)
        ));
    }
    if !done.listed.is_empty() {
        parts.push(format!(
            "{} revoked certificate(s) added to crl.json ({})",
            done.listed.len(),
            serials(&done.listed)
        ));
    }
    match done.signed {
        Some(number) => parts.push(format!("CRL number {number} signed")),
        None => parts.push("CRL already current".into()),
    }
    format!("crl: {}", parts.join("; "))
}

/// Checks the state dir of `store`, reading only.
pub fn check(store: &Store) -> Report {
    let mut report = Report::default();
    let root = store.root();
    let state = State { root, store };

    state.state_log(&mut report);
    state.temp_files(root, 0, &mut report);
    let ca = state.ca(&mut report);
    let ca_serial = ca.as_ref().map(|(serial, _)| serial.as_str());
    let certs = state.certs(ca_serial, &mut report);
    let (devices, unreadable) = state.devices(&certs, &mut report);
    state.orphan_certs(&certs, &devices, &unreadable, &mut report);
    state.challenges(&mut report);
    state.tokens(&mut report);
    state.pending(&mut report);
    state.blocked(&mut report);
    state.users(&mut report);
    state.crl(
        &certs,
        ca.as_ref().map(|(_, der)| der.as_slice()),
        &mut report,
    );
    state.events(&mut report);
    report
}

struct State<'a> {
    root: &'a Path,
    store: &'a Store,
}

/// How a finding names a record of the state log.
fn record_name(kind: Kind, key: &str) -> String {
    format!("{} {key}", kind.name())
}

/// A file read within [`MAX_FILE_BYTES`], or why not.
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    fsutil::read_bounded(path, MAX_FILE_BYTES).map_err(|err| err.to_string())
}

fn parse<T: DeserializeOwned>(path: &Path) -> Result<T, String> {
    let bytes = read_bounded(path)?;
    serde_json::from_slice(&bytes).map_err(|err| format!("does not parse: {err}"))
}

/// `crl.json` read entry by entry, as otad reads it ([`store::crl::read_index`]).
fn read_crl_index(path: &Path) -> Result<store::crl::IndexRead, String> {
    let bytes = read_bounded(path)?;
    store::crl::read_index(&bytes).map_err(|err| format!("does not parse: {err}"))
}

/// Reports what reading `crl.json` entry by entry found: entries that cannot be read or name
/// an unknown reason (problems: no CRL can be signed until they are mended by hand), serials
/// listed twice (a problem) and serials spelled otherwise (a note). Whether a CRL can be
/// signed from it.
fn crl_entries(read: &store::crl::IndexRead, report: &mut Report) -> bool {
    let file = store::crl::CRL_INDEX_FILE;
    let by_hand = "correct the entry (serial: hex of at most 20 octets; revoked_at: unix seconds; \
                   reason: a reason name) or remove it, by hand; until then no new CRL is \
                   signed (otad serve keeps serving the last one) and otad cert revoke refuses";
    for entry in &read.unreadable {
        report.add(Severity::Problem, file, entry.to_string(), by_hand);
    }
    let mut signable = read.unreadable.is_empty();
    for entry in &read.index.revoked {
        if crl::RevocationReason::from_name(&entry.reason).is_none() {
            signable = false;
            report.add(
                Severity::Problem,
                file,
                format!(
                    "serial {}: reason {:?} is not one of {}",
                    entry.serial,
                    entry.reason.chars().take(64).collect::<String>(),
                    crl::reason_names()
                ),
                "correct the reason by hand; until then no new CRL is signed (otad serve \
                 keeps serving the last one)",
            );
        }
    }

    let rewrite = |severity, problem: String, action: &str| Finding {
        severity,
        file: file.to_string(),
        problem,
        action: action.to_string(),
        repair: Some(Repair::RewriteCrlIndex),
    };
    if !read.duplicates.is_empty() {
        let mut named: Vec<String> = read
            .duplicates
            .iter()
            .take(MAX_SERIALS_NAMED)
            .map(|duplicate| {
                format!(
                    "{} in entries {} and {}",
                    duplicate.serial,
                    duplicate.kept_position.min(duplicate.dropped_position),
                    duplicate.kept_position.max(duplicate.dropped_position)
                )
            })
            .collect();
        if read.duplicates.len() > MAX_SERIALS_NAMED {
            named.push("...".into());
        }
        report.push(rewrite(
            Severity::Problem,
            format!(
                "lists {} serial(s) twice ({}); otad signs the revocation dated first",
                read.duplicates.len(),
                named.join(", ")
            ),
            "--repair keeps the revocation dated first and rewrites crl.json",
        ));
    }
    if !read.respelled.is_empty() {
        let mut named: Vec<String> = read
            .respelled
            .iter()
            .take(MAX_SERIALS_NAMED)
            .map(|entry| {
                format!(
                    "entry {}: {:?} is {}",
                    entry.position, entry.given, entry.serial
                )
            })
            .collect();
        if read.respelled.len() > MAX_SERIALS_NAMED {
            named.push("...".into());
        }
        report.push(rewrite(
            Severity::Note,
            format!(
                "{} serial(s) not in otad's spelling, read as lowercase hex without leading \
                 zeros ({})",
                read.respelled.len(),
                named.join(", ")
            ),
            "--repair rewrites crl.json in otad's spelling",
        ));
    }
    signable
}

/// Whether the process that wrote a temp file (`pid`, last written at `written`) may still
/// be writing it: a process runs under that pid, it started before the file was written (a
/// pid reused after a reboot names a newer one), and the file is younger than
/// [`MAX_TEMP_AGE_SECONDS`]. A pid whose start time cannot be read counts as its writer.
fn writer_may_run(pid: u32, written: SystemTime, now: SystemTime) -> bool {
    if pid == std::process::id() || !Path::new("/proc").join(pid.to_string()).exists() {
        return false;
    }
    let age = now.duration_since(written).unwrap_or(Duration::ZERO);
    if age > Duration::from_secs(MAX_TEMP_AGE_SECONDS) {
        return false;
    }
    match process_started(pid) {
        Some(started) => started <= written + Duration::from_secs(PROCESS_START_SLACK_SECONDS),
        None => true,
    }
}

/// When the process `pid` started, by the wall clock: /proc/stat's `btime` plus field 22 of
/// /proc/PID/stat (clock ticks after boot). `None` if either cannot be read.
fn process_started(pid: u32) -> Option<SystemTime> {
    const MAX_STAT_BYTES: u64 = 64 * 1024;
    let stat = fsutil::read_bounded(&Path::new("/proc").join(format!("{pid}/stat")), 4096).ok()?;
    let stat = String::from_utf8_lossy(&stat);
    // The name (field 2) is in parentheses and may hold spaces and parentheses itself;
    // field 3 is the first after the last ')'.
    let (_, fields) = stat.rsplit_once(')')?;
    let ticks: u64 = fields.split_whitespace().nth(22 - 3)?.parse().ok()?;

    let system = fsutil::read_bounded(Path::new("/proc/stat"), MAX_STAT_BYTES).ok()?;
    let boot: u64 = String::from_utf8_lossy(&system)
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;

    // SAFETY: sysconf(3) reads a system constant; it touches no memory of ours.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).ok().filter(|n| *n > 0)?;
    let after_boot = Duration::from_millis(ticks.saturating_mul(1000) / per_second);
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(boot))?
        .checked_add(after_boot)
}

impl State<'_> {
    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// The `*.json` files of a folder (temp files excluded), sorted; none if it is absent.
    fn json_files(&self, folder: &str) -> Vec<PathBuf> {
        fsutil::json_files(&self.root.join(folder), MAX_FILES_PER_FOLDER).unwrap_or_default()
    }

    fn stem(path: &Path) -> String {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn unreadable(&self, report: &mut Report, path: &Path, why: &str) {
        report.add(
            Severity::Problem,
            &self.relative(path),
            why.to_string(),
            "restore it from a backup, or move it aside if the record is not needed",
        );
    }

    fn private_mode(&self, report: &mut Report, path: &Path) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            report.add(
                Severity::Problem,
                &self.relative(path),
                format!("mode {mode:04o}, readable by others than otad's user"),
                &format!("chmod 600 {}", path.display()),
            );
        }
    }

    fn temp_files(&self, dir: &Path, depth: usize, report: &mut Report) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.filter_map(Result::ok).take(MAX_FILES_PER_FOLDER) {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            // The imported folders of an older state dir are noted once, not searched.
            if is_dir && depth == 0 && entry.file_name() == store::LEGACY_IMPORTED {
                continue;
            }
            if is_dir {
                if depth < MAX_DEPTH {
                    self.temp_files(&path, depth + 1, report);
                }
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((target, pid)) = fsutil::parse_temp_name(&name) else {
                continue;
            };
            // A file whose time cannot be read counts as written now: left alone if its pid
            // runs.
            let written = entry
                .metadata()
                .and_then(|meta| meta.modified())
                .unwrap_or(now);
            if writer_may_run(pid, written, now) {
                report.add(
                    Severity::Note,
                    &self.relative(&path),
                    format!("temp file of {target} being written by running process {pid}"),
                    "left alone",
                );
            } else {
                report.push(Finding {
                    severity: Severity::Problem,
                    file: self.relative(&path),
                    problem: format!("temp file of {target} left by an interrupted write"),
                    action: "--repair removes it".into(),
                    repair: Some(Repair::RemoveTemp(path)),
                });
            }
        }
    }

    /// Key modes, and the CA certificate's serial and DER.
    fn ca(&self, report: &mut Report) -> Option<(String, Vec<u8>)> {
        for key in ["ca/ca.key", "ca/ra.key", "ca/signer.key"] {
            self.private_mode(report, &self.root.join(key));
        }
        let path = self.root.join("ca/ca.pem");
        let ca = read_bounded(&path)
            .ok()
            .and_then(|pem| cert::pem_to_der(&String::from_utf8_lossy(&pem)).ok())
            .and_then(|der| Some((cert::serial_hex(&der).ok()?, der)));
        if ca.is_none() {
            self.unreadable(report, &path, "the CA certificate cannot be read");
        }
        ca
    }

    /// The state log: its mode, how it ends, and the folders an import left.
    fn state_log(&self, report: &mut Report) {
        let journal = self.store.journal();
        self.private_mode(report, journal.path());
        match journal.tail() {
            Ok(Tail::Clean) => {}
            Ok(Tail::Torn { at }) => report.push(Finding {
                severity: Severity::Note,
                file: journal::LOG_FILE.into(),
                problem: format!(
                    "the record at offset {at} is not whole (a write cut short by a crash, or \
                     one under way); readers ignore it"
                ),
                action: "--repair cuts it off, as otad's next write does".into(),
                repair: Some(Repair::CutTornTail),
            }),
            Err(err) => report.add(
                Severity::Problem,
                journal::LOG_FILE,
                err.to_string(),
                "restore the state dir from a backup",
            ),
        }
        for (from, to) in journal.damaged().unwrap_or_default() {
            report.push(Finding {
                severity: Severity::Problem,
                file: journal::LOG_FILE.into(),
                problem: format!(
                    "bytes {from} to {to} do not pass their check, though a later write knew \
                     them on disk: damaged after they were written (a failing disk, or an \
                     edit); the records they held are lost, those after them are read"
                ),
                action: "restore state.log from a backup if those records matter; --repair \
                         rewrites it without them, keeping it as it was in \
                         state.log.damaged-<time>"
                    .into(),
                repair: Some(Repair::RewriteDamaged),
            });
        }
        if fsutil::is_real_dir(&self.root.join(store::LEGACY_IMPORTED)) {
            report.add(
                Severity::Note,
                store::LEGACY_IMPORTED,
                "the record folders of an older state dir, imported into state.log".into(),
                "remove it once otad runs as it should",
            );
        }
    }

    /// The records of `kind`, with the bytes of each.
    fn records(&self, kind: Kind, report: &mut Report) -> Vec<(String, Vec<u8>)> {
        match self.store.journal().all(kind, false) {
            Ok(records) => records,
            Err(err) => {
                report.add(
                    Severity::Problem,
                    journal::LOG_FILE,
                    err.to_string(),
                    "restore the state dir from a backup",
                );
                Vec::new()
            }
        }
    }

    fn unreadable_record(&self, report: &mut Report, kind: Kind, key: &str, why: &str) {
        report.add(
            Severity::Problem,
            &record_name(kind, key),
            format!("does not parse: {why}"),
            "restore the state dir from a backup",
        );
    }

    fn certs(&self, ca_serial: Option<&str>, report: &mut Report) -> BTreeMap<String, CertRecord> {
        let mut certs = BTreeMap::new();
        for (key, bytes) in self.records(Kind::Cert, report) {
            let record: CertRecord = match serde_json::from_slice(&bytes) {
                Ok(record) => record,
                Err(why) => {
                    self.unreadable_record(report, Kind::Cert, &key, &why.to_string());
                    continue;
                }
            };
            let file = record_name(Kind::Cert, &key);
            if key != record.serial {
                report.add(
                    Severity::Problem,
                    &file,
                    format!(
                        "records serial {}, not the one it is keyed by",
                        record.serial
                    ),
                    "restore the state dir from a backup",
                );
                continue;
            }
            let pem_serial = cert::pem_to_der(&record.pem)
                .ok()
                .and_then(|der| cert::serial_hex(&der).ok());
            if pem_serial.as_deref() != Some(record.serial.as_str()) {
                report.add(
                    Severity::Problem,
                    &file,
                    "its PEM does not hold a certificate with the recorded serial".into(),
                    "restore the state dir from a backup",
                );
            }
            if ca_serial == Some(record.serial.as_str()) {
                report.add(
                    Severity::Problem,
                    &file,
                    "has the CA certificate's own serial".into(),
                    "revoke it (otad cert revoke) and re-enroll its device",
                );
            }
            certs.insert(record.serial.clone(), record);
        }
        certs
    }

    /// The device records that read, by UDID, and the UDIDs whose record does not.
    fn devices(
        &self,
        certs: &BTreeMap<String, CertRecord>,
        report: &mut Report,
    ) -> (BTreeMap<String, DeviceRecord>, BTreeSet<String>) {
        let mut devices = BTreeMap::new();
        let mut unreadable = BTreeSet::new();
        for (key, bytes) in self.records(Kind::Device, report) {
            let device: DeviceRecord = match serde_json::from_slice(&bytes) {
                Ok(device) => device,
                Err(why) => {
                    self.unreadable_record(report, Kind::Device, &key, &why.to_string());
                    unreadable.insert(key);
                    continue;
                }
            };
            let file = record_name(Kind::Device, &key);
            if !store::valid_udid(&device.udid) || key != device.udid {
                report.add(
                    Severity::Problem,
                    &file,
                    format!("records UDID {:?}, not the one it is keyed by", device.udid),
                    "restore the state dir from a backup",
                );
                continue;
            }
            for serial in &device.certificates {
                // A certificate recorded after the certificates were read (the server runs)
                // is read now.
                let late = certs
                    .get(serial)
                    .is_none()
                    .then(|| self.store.cert(serial).ok().flatten())
                    .flatten();
                match certs.get(serial).or(late.as_ref()) {
                    None => report.add(
                        Severity::Problem,
                        &file,
                        format!("certificate {serial} is not recorded"),
                        "restore the state dir from a backup, or re-enroll the device",
                    ),
                    Some(cert) if cert.udid.as_deref() != Some(device.udid.as_str()) => report.add(
                        Severity::Problem,
                        &file,
                        format!(
                            "certificate {serial} names UDID {}, not this device",
                            cert.udid.as_deref().unwrap_or("(none)")
                        ),
                        "revoke the certificate (otad cert revoke) and re-enroll",
                    ),
                    Some(_) => {}
                }
            }
            devices.insert(device.udid.clone(), device);
        }
        (devices, unreadable)
    }

    /// A note on an unreadable device record about a record that names it.
    fn names_unreadable(&self, report: &mut Report, udid: &str, what: String) {
        report.add(
            Severity::Note,
            &record_name(Kind::Device, udid),
            format!("{what} names this record, which does not parse"),
            "left alone until the record is restored",
        );
    }

    /// Certificates issued to a device that never recorded them: an enrollment that stopped
    /// between issuance and the device update (the device enrolled again or gave up).
    fn orphan_certs(
        &self,
        certs: &BTreeMap<String, CertRecord>,
        devices: &BTreeMap<String, DeviceRecord>,
        unreadable: &BTreeSet<String>,
        report: &mut Report,
    ) {
        for cert in certs.values() {
            let Some(udid) = cert.udid.as_deref() else {
                continue;
            };
            // Whether it is on a record that does not parse cannot be told.
            if unreadable.contains(udid) {
                if cert.superseded_by.is_none() {
                    self.names_unreadable(report, udid, format!("certificate {}", cert.serial));
                }
                continue;
            }
            let recorded = devices
                .get(udid)
                .is_some_and(|d| d.certificates.contains(&cert.serial));
            if !recorded && cert.superseded_by.is_none() {
                report.add(
                    Severity::Note,
                    &record_name(Kind::Cert, &cert.serial),
                    format!("issued to {udid} but not on its device record"),
                    "an enrollment stopped after issuance; revoke it if the device is unknown",
                );
            }
        }
    }

    fn challenges(&self, report: &mut Report) {
        let now = store::now();
        let mut expired = 0usize;
        for (key, bytes) in self.records(Kind::Challenge, report) {
            match serde_json::from_slice::<store::ChallengeRecord>(&bytes) {
                Ok(record) if record.expires <= now => expired += 1,
                Ok(_) => {}
                Err(why) => self.unreadable_record(report, Kind::Challenge, &key, &why.to_string()),
            }
        }
        if expired > 0 {
            report.push(Finding {
                severity: Severity::Note,
                file: "challenges".into(),
                problem: format!("{expired} expired challenge(s)"),
                action: "--repair removes them (the server sweeps them too)".into(),
                repair: Some(Repair::SweepChallenges),
            });
        }
    }

    fn tokens(&self, report: &mut Report) {
        for path in self.json_files(tokens::TOKENS_DIR) {
            self.private_mode(report, &path);
            let record: tokens::TokenRecord = match parse(&path) {
                Ok(record) => record,
                Err(why) => {
                    self.unreadable(report, &path, &why);
                    continue;
                }
            };
            let file = self.relative(&path);
            let stem = Self::stem(&path);
            if stem.get(..tokens::ID_LEN) != Some(record.id.as_str()) {
                report.add(
                    Severity::Problem,
                    &file,
                    format!("records id {}, not the one its name gives", record.id),
                    "revoke it and make a new token",
                );
            }
            if record.used > record.uses {
                report.add(
                    Severity::Problem,
                    &file,
                    format!("{} uses spent of {} allowed", record.used, record.uses),
                    "revoke it (otad token revoke) and check the devices it admitted",
                );
            }
        }
    }

    fn pending(&self, report: &mut Report) {
        let mut requests: BTreeMap<String, PendingRequest> = BTreeMap::new();
        for path in self.json_files("pending") {
            match parse::<PendingRequest>(&path) {
                Ok(request) if Self::stem(&path) == request.id => {
                    requests.insert(request.id.clone(), request);
                }
                Ok(request) => report.add(
                    Severity::Problem,
                    &self.relative(&path),
                    format!("records id {}, not the one it is named by", request.id),
                    "deny the request (otad request deny) and remove the file",
                ),
                Err(why) => self.unreadable(report, &path, &why),
            }
        }

        let dir = self.root.join(store::TRANSACTION_INDEX_DIR);
        let mut indexed: BTreeSet<String> = BTreeSet::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.filter_map(Result::ok).take(MAX_FILES_PER_FOLDER) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if fsutil::parse_temp_name(&name).is_some() {
                    continue;
                }
                let id = read_bounded(&entry.path())
                    .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                    .unwrap_or_default();
                let matches = requests
                    .get(&id)
                    .is_some_and(|r| store::transaction_index_name(&r.transaction_id) == name);
                if matches {
                    indexed.insert(name);
                } else {
                    report.push(Finding {
                        severity: Severity::Note,
                        file: format!("{}/{name}", store::TRANSACTION_INDEX_DIR),
                        problem: "points at no request of this transaction (a write was \
                                  interrupted; polls ignore it)"
                            .into(),
                        action: "--repair rebuilds the index".into(),
                        repair: Some(Repair::RebuildTransactionIndex),
                    });
                }
            }
        }
        if !dir.is_dir() {
            // Made on the first poll; requests queued before it existed are indexed then.
            return;
        }
        for request in requests.values() {
            let name = store::transaction_index_name(&request.transaction_id);
            // An entry written after the folder was read (the server runs) counts too.
            let late = || {
                read_bounded(&dir.join(&name)).is_ok_and(|id| {
                    let id = String::from_utf8_lossy(&id).trim().to_string();
                    requests
                        .get(&id)
                        .is_some_and(|r| r.transaction_id == request.transaction_id)
                })
            };
            if !indexed.contains(&name) && !late() {
                report.push(Finding {
                    severity: Severity::Problem,
                    file: format!("{}/{name}", store::TRANSACTION_INDEX_DIR),
                    problem: format!("missing: request {} cannot be polled", request.id),
                    action: "--repair rebuilds the index".into(),
                    repair: Some(Repair::RebuildTransactionIndex),
                });
            }
        }
    }

    fn blocked(&self, report: &mut Report) {
        for path in self.json_files(store::blocked::BLOCKED_DIR) {
            match parse::<BlockRecord>(&path) {
                Ok(record) if Self::stem(&path) == record.serial => {}
                Ok(record) => report.add(
                    Severity::Problem,
                    &self.relative(&path),
                    format!(
                        "records serial {}, not the one it is named by",
                        record.serial
                    ),
                    "unblock and block the serial again (otad device block)",
                ),
                Err(why) => self.unreadable(report, &path, &why),
            }
        }
    }

    fn users(&self, report: &mut Report) {
        let path = self.root.join(users::USERS_FILE);
        if !path.exists() {
            return;
        }
        self.private_mode(report, &path);
        let Ok(store) = Store::open(self.root) else {
            return;
        };
        if let Err(err) = users::load(&store) {
            report.add(
                Severity::Problem,
                users::USERS_FILE,
                err.to_string(),
                "restore it from a backup, or remove it and add the users again",
            );
        }
    }

    /// The certificate records, `crl.json` and `crl.der` agree about what is revoked.
    fn crl(
        &self,
        certs: &BTreeMap<String, CertRecord>,
        ca_certificate: Option<&[u8]>,
        report: &mut Report,
    ) {
        let path = self.root.join(store::crl::CRL_INDEX_FILE);
        // No index yet is an empty one: a revoked record still wants listing.
        let read = if path.exists() {
            match read_crl_index(&path) {
                Ok(read) => read,
                Err(why) => {
                    self.unreadable(report, &path, &why);
                    return;
                }
            }
        } else {
            store::crl::IndexRead::default()
        };
        // An entry otad cannot sign from stops every new CRL; the rest is checked with the
        // entries that read.
        let signable = crl_entries(&read, report);
        let index = read.index;
        let reconcile = |severity, file: &str, problem: String, action: &str| Finding {
            severity,
            file: file.to_string(),
            problem,
            action: action.to_string(),
            repair: Some(Repair::ReconcileCrl),
        };

        // crl.json lists it, its record does not say so: phase 3 and renewal would take it.
        for entry in &index.revoked {
            let file = record_name(Kind::Cert, &entry.serial);
            let Some(cert) = certs.get(&entry.serial) else {
                continue;
            };
            // A revocation in flight writes the index, then the record: look again.
            // TODO: without the lock, a look that falls twice between those two writes (a
            // few milliseconds) still reports it; confirming under the lock would make the
            // read-only check wait for writers.
            let marked_since = || {
                let again = self.store.cert(&entry.serial).ok().flatten();
                again.is_some_and(|record| record.revoked.is_some())
            };
            if cert.revoked.is_none() && !marked_since() {
                report.push(reconcile(
                    Severity::Problem,
                    &file,
                    format!(
                        "crl.json lists it as revoked ({}, {}), but the record is not marked \
                         revoked (an interrupted otad cert revoke), so phase 3 and renewal \
                         still take it",
                        entry.reason,
                        store::rfc3339(entry.revoked_at)
                    ),
                    "--repair marks it revoked as crl.json says",
                ));
            }
        }

        // The record says revoked, crl.json does not list it: relying parties trust it.
        let now = store::now();
        let indexed: BTreeSet<&str> = index.revoked.iter().map(|e| e.serial.as_str()).collect();
        for cert in certs.values() {
            if cert.revoked.is_some()
                && !indexed.contains(cert.serial.as_str())
                && crl::still_listed(Some(cert.not_after), now)
            {
                report.push(reconcile(
                    Severity::Problem,
                    &record_name(Kind::Cert, &cert.serial),
                    "revoked, but crl.json does not list it, so the CRL does not either (an \
                     interrupted otad cert revoke)"
                        .into(),
                    "--repair lists it and re-signs the CRL",
                ));
            }
        }

        let crl_file = store::crl::CRL_FILE;
        let resign = if signable {
            "--repair signs a new one (otad serve does too, on the next GET /crl)"
        } else {
            "once crl.json is corrected (see its findings), --repair signs a new one"
        };
        let der = match fsutil::read_optional(&self.root.join(crl_file)) {
            Ok(Some(der)) => der,
            Ok(None) if index.number > 0 || !index.revoked.is_empty() => {
                report.push(reconcile(
                    Severity::Problem,
                    crl_file,
                    format!(
                        "missing, while crl.json says CRL {} was signed or lists revocations",
                        index.number
                    ),
                    resign,
                ));
                return;
            }
            Ok(None) => return,
            Err(err) => {
                report.push(reconcile(
                    Severity::Problem,
                    crl_file,
                    err.to_string(),
                    resign,
                ));
                return;
            }
        };
        let Some(ca_certificate) = ca_certificate else {
            return; // Reported with ca/ca.pem.
        };
        let summary = match crl::read_with_certificate(&der, ca_certificate) {
            Ok(summary) => summary,
            Err(err) => {
                report.push(reconcile(
                    Severity::Problem,
                    crl_file,
                    err.to_string(),
                    resign,
                ));
                return;
            }
        };
        let missing = crl::missing_from(&summary, &index);
        if !missing.is_empty() {
            // A revocation in flight stores crl.json, then crl.der: look at both again.
            let again = fsutil::read_optional(&self.root.join(crl_file))
                .ok()
                .flatten()
                .and_then(|der| crl::read_with_certificate(&der, ca_certificate).ok())
                .zip(read_crl_index(&path).ok());
            let still: Vec<String> = match &again {
                Some((summary, read)) => crl::missing_from(summary, &read.index)
                    .into_iter()
                    .map(|entry| entry.serial.clone())
                    .collect(),
                None => missing.iter().map(|entry| entry.serial.clone()).collect(),
            };
            if !still.is_empty() {
                let mut named: Vec<&str> = still
                    .iter()
                    .take(MAX_SERIALS_NAMED)
                    .map(String::as_str)
                    .collect();
                if still.len() > MAX_SERIALS_NAMED {
                    named.push("...");
                }
                report.push(reconcile(
                    Severity::Problem,
                    crl_file,
                    format!(
                        "does not list {} certificate(s) crl.json lists as revoked ({})",
                        still.len(),
                        named.join(", ")
                    ),
                    resign,
                ));
            }
        } else if crl::lists_a_serial_twice(&summary) {
            report.push(reconcile(
                Severity::Problem,
                crl_file,
                "lists a serial more than once (signed from a crl.json that listed it twice)"
                    .into(),
                resign,
            ));
        } else if summary.number < index.number {
            report.push(reconcile(
                Severity::Note,
                crl_file,
                format!(
                    "CRL number {} is behind crl.json's {} (a signing was interrupted)",
                    summary.number, index.number
                ),
                resign,
            ));
        }
    }

    fn events(&self, report: &mut Report) {
        if let Err(err) = events::read_cursor(self.root) {
            report.add(
                Severity::Problem,
                events::CURSOR_FILE,
                err.to_string(),
                "delete it: the webhook then starts at the end of the log",
            );
        }
        if let Err(err) = events::read_generation(self.root) {
            report.add(
                Severity::Problem,
                events::GENERATION_FILE,
                err.to_string(),
                "write the highest N of events.jsonl.N plus one into it",
            );
        }
    }
}

/// Rebuilds `pending/by-transaction` from the requests: each transaction names its newest
/// request. Returns how many entries changed.
fn rebuild_transaction_index(store: &Store) -> Result<usize, StoreError> {
    let root = store.root();
    let state = State { root, store };
    let mut newest: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for path in state.json_files("pending") {
        let Ok(request) = parse::<PendingRequest>(&path) else {
            continue;
        };
        if State::stem(&path) != request.id {
            continue;
        }
        let name = store::transaction_index_name(&request.transaction_id);
        let slot = newest
            .entry(name)
            .or_insert((request.created, request.id.clone()));
        if request.created >= slot.0 {
            *slot = (request.created, request.id);
        }
    }
    let entries: BTreeMap<String, String> = newest
        .into_iter()
        .map(|(name, (_, id))| (name, id))
        .collect();
    rebuild_index(root, store::TRANSACTION_INDEX_DIR, &entries)
}

/// Makes `folder` hold `entries` (name → content line): writes the missing and wrong ones
/// and removes the rest.
fn rebuild_index(
    root: &Path,
    folder: &str,
    entries: &BTreeMap<String, String>,
) -> Result<usize, StoreError> {
    let dir = root.join(folder);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    // Files are written and removed here: never through a symlink out of the state dir.
    if std::fs::symlink_metadata(&dir).is_ok_and(|meta| !meta.is_dir()) {
        return Err(io(&dir)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a folder of the state dir (a symlink?); move it away and repair again",
        )));
    }
    if !dir.is_dir() {
        if entries.is_empty() {
            return Ok(0);
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
    }
    let mut changed = 0;
    for (name, content) in entries {
        let path = dir.join(name);
        let current = fsutil::read_bounded(&path, 4096)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).trim().to_string());
        if current.as_deref() == Some(content.as_str()) {
            continue;
        }
        fsutil::write_atomic(&path, format!("{content}\n").as_bytes(), 0o600).map_err(io(&path))?;
        changed += 1;
    }
    let present: Vec<String> = std::fs::read_dir(&dir)
        .map_err(io(&dir))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| fsutil::parse_temp_name(name).is_none())
        .collect();
    for name in present {
        if !entries.contains_key(&name) {
            let path = dir.join(&name);
            if fsutil::remove_durably(&path).map_err(io(&path))? {
                changed += 1;
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("state")).unwrap();
        let ca = crate::pki::ca::CertificateAuthority::create("fsck test CA", "otad", 30).unwrap();
        let pem = cert::der_to_pem(ca.certificate());
        store
            .write_file("ca/ca.pem", pem.as_bytes(), 0o644)
            .unwrap();
        (dir, store)
    }

    /// A state whose CA can sign, for the CRL repairs.
    fn signing_state() -> (tempfile::TempDir, Store, CertificateAuthority) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("state")).unwrap();
        let ca = CertificateAuthority::create("fsck CRL CA", "otad", 30).unwrap();
        let pem = cert::der_to_pem(ca.certificate());
        store
            .write_file("ca/ca.pem", pem.as_bytes(), 0o644)
            .unwrap();
        (dir, store, ca)
    }

    /// Records a real certificate from `ca` (with the CA's own public key, which is quick).
    fn issue_record(store: &Store, ca: &CertificateAuthority, udid: &str) -> CertRecord {
        use crate::pki::ca::{random_serial, IssueRequest, KeyUsageProfile, SubjectAttribute};
        let subject = vec![(SubjectAttribute::CommonName, udid.to_string())];
        let der = ca
            .issue(&IssueRequest {
                subject: &subject,
                public_key_spki_der: ca.spki_der(),
                serial: random_serial(),
                validity_days: 30,
                usage: KeyUsageProfile::DeviceIdentity,
            })
            .unwrap();
        let record = CertRecord {
            serial: cert::serial_hex(&der).unwrap(),
            udid: Some(udid.into()),
            subject: format!("CN={udid}"),
            issued_at: store::now(),
            not_after: store::now() + 30 * 86_400,
            revoked: None,
            revocation_reason: None,
            authorised_by: "ota".into(),
            superseded_by: None,
            pem: cert::der_to_pem(&der),
        };
        store.create_cert(&record).unwrap();
        record
    }

    /// The serials the stored CRL lists, as openssl reads them (uppercase hex).
    fn openssl_crl_serials(store: &Store) -> String {
        let output = std::process::Command::new("openssl")
            .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
            .arg(store.path(store::crl::CRL_FILE))
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn device(udid: &str, serial: &str, certificates: &[&str]) -> DeviceRecord {
        DeviceRecord {
            udid: udid.into(),
            attributes: [("SERIAL".to_string(), serial.to_string())].into(),
            phase: store::DevicePhase::Enrolled,
            first_seen: 1,
            last_seen: 2,
            certificates: certificates.iter().map(|s| s.to_string()).collect(),
            history: Vec::new(),
            admission: Default::default(),
            hook_variables: Default::default(),
        }
    }

    fn problems(report: &Report) -> Vec<String> {
        report
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Problem)
            .map(|f| format!("{}: {}", f.file, f.problem))
            .collect()
    }

    #[test]
    fn a_device_naming_a_missing_certificate_is_a_problem() {
        let (_dir, store) = state();
        store
            .save_device(&device("UDID-1", "C02ABC", &["0a"]))
            .unwrap();
        let report = check(&store);
        let found = problems(&report);
        assert!(
            found
                .iter()
                .any(|p| p == "device UDID-1: certificate 0a is not recorded"),
            "{found:?}"
        );
    }

    #[test]
    fn a_repair_never_goes_through_a_symlinked_folder() {
        let (_dir, store) = state();
        store.create_pending(&pending_request("TX-SYM")).unwrap();
        let victim = tempfile::tempdir().unwrap();
        std::fs::write(victim.path().join("important.txt"), b"precious").unwrap();
        let index = store.path(store::TRANSACTION_INDEX_DIR);
        std::fs::remove_dir_all(&index).unwrap();
        std::os::unix::fs::symlink(victim.path(), &index).unwrap();

        let err = repair_state(&store, None).unwrap_err();
        assert!(err.to_string().contains("a symlink?"), "{err}");
        assert_eq!(
            std::fs::read(victim.path().join("important.txt")).unwrap(),
            b"precious"
        );
        assert_eq!(std::fs::read_dir(victim.path()).unwrap().count(), 1);
    }

    #[test]
    fn temp_files_and_a_torn_log_end_are_repaired_records_are_kept() {
        let (_dir, store) = state();
        store.save_device(&device("UDID-2", "C02XYZ", &[])).unwrap();
        // A temp file whose writer is gone (pid 0 never names a process in /proc).
        std::fs::create_dir_all(store.path("blocked")).unwrap();
        let temp = store.path("blocked/.C02XYZ.json.tmp.0.7");
        std::fs::write(&temp, b"{").unwrap();
        // Half a record at the end of the log, as a crash mid-write leaves it.
        let log = store.journal().path().to_path_buf();
        let whole = store.journal().sizes().unwrap().0;
        let file = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[40, 0, 0, 0, 1, 2, 3], whole).unwrap();

        let report = check(&store);
        assert_eq!(
            problems(&report),
            [
                "blocked/.C02XYZ.json.tmp.0.7: temp file of C02XYZ.json left by an interrupted \
              write"
            ]
        );
        assert_eq!(
            notes(&report),
            [format!(
                "state.log: the record at offset {whole} is not whole (a write cut short by a \
                 crash, or one under way); readers ignore it"
            )]
        );
        assert!(temp.exists(), "a check alone changes nothing");

        let (after, repaired) = repair_state(&store, None).unwrap();
        assert_eq!(after.findings, Vec::new());
        assert_eq!(
            repaired,
            [
                format!("state.log: the record at offset {whole} that was not whole cut off"),
                "blocked/.C02XYZ.json.tmp.0.7: removed".to_string()
            ]
        );
        assert!(!temp.exists());
        assert_eq!(store.journal().sizes().unwrap().0, whole);
        assert_eq!(
            store.device_by_serial("C02XYZ").unwrap().unwrap().udid,
            "UDID-2"
        );
    }

    #[test]
    fn damaged_bytes_are_a_problem_and_repair_rewrites_the_log_keeping_a_copy() {
        let (_dir, store) = state();
        let mut starts = Vec::new();
        for n in 0..3 {
            starts.push(store.journal().sizes().unwrap().0);
            store
                .save_device(&device(&format!("UDID-D{n}"), &format!("C02DMG{n}"), &[]))
                .unwrap();
        }
        let log = store.journal().path().to_path_buf();
        let mut bytes = std::fs::read(&log).unwrap();
        bytes[starts[1] as usize + 40] ^= 0x01;
        std::fs::write(&log, &bytes).unwrap();
        let store = Store::open(store.root()).unwrap();

        let found = problems(&check(&store));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(&format!(
                "state.log: bytes {} to {} do not pass their check",
                starts[1], starts[2]
            )),
            "{found:?}"
        );

        let (after, repaired) = repair_state(&store, None).unwrap();
        assert_eq!(after.findings, Vec::new());
        assert_eq!(repaired.len(), 1, "{repaired:?}");
        assert!(
            repaired[0].contains("rewritten without 1 damaged part(s)"),
            "{repaired:?}"
        );
        let copies: Vec<String> = std::fs::read_dir(store.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("state.log.damaged-"))
            .collect();
        assert_eq!(copies.len(), 1);
        assert_eq!(
            std::fs::read(store.root().join(&copies[0])).unwrap(),
            bytes,
            "the log as it was"
        );
        let udids: Vec<String> = store
            .devices()
            .unwrap()
            .into_iter()
            .map(|d| d.udid)
            .collect();
        assert_eq!(udids, ["UDID-D0", "UDID-D2"]);
    }

    fn pending_request(transaction: &str) -> PendingRequest {
        PendingRequest {
            id: "0123456789abcdef0123456789abcdef".into(),
            transaction_id: transaction.into(),
            csr: String::new(),
            subject: Vec::new(),
            udid: None,
            authorised_by: "static".into(),
            requester: String::new(),
            remote: "127.0.0.1".into(),
            created: 1,
            decision: store::Decision::Pending,
        }
    }

    #[test]
    fn a_request_missing_from_the_transaction_index_is_found_and_reindexed() {
        let (_dir, store) = state();
        let request = pending_request("TX-1");
        store.create_pending(&request).unwrap();
        assert_eq!(check(&store).problems(), 0);

        let entry = store
            .path(store::TRANSACTION_INDEX_DIR)
            .join(store::transaction_index_name("TX-1"));
        std::fs::remove_file(&entry).unwrap();
        let found = problems(&check(&store));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].ends_with(&format!("missing: request {} cannot be polled", request.id)));

        let (after, _) = repair_state(&store, None).unwrap();
        assert_eq!(after.problems(), 0);
        assert_eq!(
            store
                .pending_for_transaction("TX-1", 2)
                .unwrap()
                .map(|r| r.id),
            Some(request.id)
        );
    }

    #[test]
    fn overspent_tokens_corrupt_files_and_loose_modes_are_reported() {
        let (_dir, store) = state();
        let hash = "ab".repeat(32);
        std::fs::create_dir_all(store.path("tokens")).unwrap();
        let token = json!({
            "id": &hash[..12], "uses": 1, "used": 2, "created": 0, "expires": 0,
        });
        let token_file = format!("tokens/{hash}.json");
        store
            .write_file(&token_file, token.to_string().as_bytes(), 0o600)
            .unwrap();
        store.put_raw_record(Kind::Challenge, "00", b"not json");
        store.save_device(&device("UDID-3", "C02QQQ", &[])).unwrap();
        std::fs::set_permissions(
            store.journal().path(),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();

        let found = problems(&check(&store));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found
            .iter()
            .any(|p| p.ends_with("2 uses spent of 1 allowed")));
        assert!(found
            .iter()
            .any(|p| p.starts_with("challenge 00: does not parse")));
        assert!(found.iter().any(|p| p.starts_with("state.log: mode 0644")));
    }

    #[test]
    fn help_lists_every_kind_of_check_fsck_makes() {
        // One phrase for each check in `check` (and in `State::ca`, `certs`, `devices`).
        for phrase in [
            "temp files",
            "ca.key, ra.key and signer.key are mode 0600",
            "no two records share a serial",
            "the CA's own serial",
            "a revoked certificate the CRL index\n    (crl.json) does not list",
            "a certificate crl.json lists whose record is not marked\n    revoked",
            "not verifying under the CA, or not\n    listing every certificate crl.json lists",
            "started before the file was written",
            "noted on that record",
            "crl.der missing",
            "or listing a serial twice",
            "crl.json's entries: each reads",
            "no serial listed twice",
            "devices: each record parses and is keyed by its udid",
            "but not on its record",
            "state.log: it is mode 0600 and reads to its end",
            "damaged after they were\n    written",
            "pre-journal/",
            "expired ones",
            "tokens/: each parses, is mode 0600",
            "no more uses spent than\n    allowed",
            "pending/by-transaction",
            "blocked/",
            "users.json: mode 0600",
            "events.cursor and events.gen",
            "--state DIR",
        ] {
            assert!(
                HELP.to_lowercase().contains(&phrase.to_lowercase()),
                "{phrase:?} not in the help"
            );
        }
    }

    #[test]
    fn a_revoked_record_the_crl_lacks_is_found_and_listed_by_repair() {
        let (_dir, store, ca) = signing_state();
        let device_udid = "UDID-R1";
        let record = issue_record(&store, &ca, device_udid);
        store
            .save_device(&device(device_udid, "C02REV", &[&record.serial]))
            .unwrap();
        crl::current(&store, &ca, Duration::from_secs(86_400), store::now()).unwrap();
        assert_eq!(problems(&check(&store)), Vec::<String>::new());

        // What a revocation killed between record and CRL (otad before this order) left.
        let mut revoked = record.clone();
        revoked.revoked = Some(store::now() - 30);
        revoked.revocation_reason = Some("keyCompromise".into());
        store.update_cert(&revoked).unwrap();

        let found = problems(&check(&store));
        assert_eq!(
            found,
            [format!(
                "certificate {}: revoked, but crl.json does not list it, so the CRL does not \
                 either (an interrupted otad cert revoke)",
                record.serial
            )]
        );

        // Without the key, repair says it could not; with it, the CRL lists the serial.
        let (after, repaired) = repair_state(&store, None).unwrap();
        assert_eq!(after.problems(), 1);
        assert_eq!(
            repaired,
            ["crl: not reconciled: the CA key could not be loaded"]
        );
        let signer = signer(&ca);
        let (after, repaired) = repair_state(&store, Some(&signer)).unwrap();
        assert_eq!(problems(&after), Vec::<String>::new());
        assert_eq!(
            repaired,
            [format!(
                "crl: 1 revoked certificate(s) added to crl.json ({}); CRL number 2 signed",
                record.serial
            )]
        );
        let listed = openssl_crl_serials(&store);
        assert!(
            listed.contains(&format!("Serial Number: {}", record.serial.to_uppercase())),
            "{listed}"
        );
        assert!(listed.contains("Key Compromise"), "{listed}");
    }

    #[test]
    fn a_crl_entry_whose_record_is_not_marked_is_found_and_marked_by_repair() {
        let (_dir, store, ca) = signing_state();
        let record = issue_record(&store, &ca, "UDID-R2");
        store
            .save_device(&device("UDID-R2", "C02RV2", &[&record.serial]))
            .unwrap();
        crl::current(&store, &ca, Duration::from_secs(86_400), store::now()).unwrap();

        // What a revocation killed after its index entry leaves.
        let at = store::now() - 40;
        let mut index = store.crl_index().unwrap();
        index.revoked.push(store::crl::RevocationRecord {
            serial: record.serial.clone(),
            revoked_at: at,
            reason: "superseded".into(),
            not_after: Some(record.not_after),
        });
        store.save_crl_index(&index).unwrap();

        let found = problems(&check(&store));
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(
            found[0],
            format!(
                "certificate {}: crl.json lists it as revoked (superseded, {}), but the record \
                 is not marked revoked (an interrupted otad cert revoke), so phase 3 and \
                 renewal still take it",
                record.serial,
                store::rfc3339(at)
            )
        );
        assert_eq!(
            found[1],
            format!(
                "crl.der: does not list 1 certificate(s) crl.json lists as revoked ({})",
                record.serial
            )
        );

        let signer = signer(&ca);
        let (after, repaired) = repair_state(&store, Some(&signer)).unwrap();
        assert_eq!(problems(&after), Vec::<String>::new());
        assert_eq!(
            repaired,
            [format!(
                "crl: 1 record(s) marked revoked as crl.json lists them ({}); CRL number 2 \
                 signed",
                record.serial
            )]
        );
        let marked = store.cert(&record.serial).unwrap().unwrap();
        assert_eq!(marked.revoked, Some(at));
        assert_eq!(marked.revocation_reason.as_deref(), Some("superseded"));
        let summary = crl::read(&store.crl().unwrap().unwrap(), &ca).unwrap();
        assert_eq!(summary.revoked, vec![(record.serial.clone(), at, Some(4))]);
    }

    #[test]
    fn a_temp_file_is_left_alone_only_while_its_writer_may_still_be_writing() {
        let (_dir, store) = state();
        std::fs::create_dir_all(store.path("blocked")).unwrap();
        let now = SystemTime::now();
        let set_mtime = |path: &Path, at: SystemTime| {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(at)
                .unwrap();
        };
        let severity_of = |name: &str| {
            check(&store)
                .findings
                .iter()
                .find(|f| f.file == format!("blocked/{name}"))
                .map(|f| f.severity)
        };

        // Written just now by a process that started before: its writer may be at it.
        let mut older = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let fresh = format!(".A.json.tmp.{}.1", older.id());
        std::fs::write(store.path(&format!("blocked/{fresh}")), b"{").unwrap();
        assert_eq!(severity_of(&fresh), Some(Severity::Note));

        // The same pid, but the file is older than the process by more than the slack: a
        // pid reused after a reboot.
        let reused = format!(".B.json.tmp.{}.2", older.id());
        let path = store.path(&format!("blocked/{reused}"));
        std::fs::write(&path, b"{").unwrap();
        set_mtime(
            &path,
            now - Duration::from_secs(PROCESS_START_SLACK_SECONDS + 60),
        );
        assert_eq!(severity_of(&reused), Some(Severity::Problem));

        // pid 1 started at boot, before any file; a file older than the bound is left over.
        let stale = ".C.json.tmp.1.3";
        let path = store.path(&format!("blocked/{stale}"));
        std::fs::write(&path, b"{").unwrap();
        assert_eq!(severity_of(stale), Some(Severity::Note));
        set_mtime(&path, now - Duration::from_secs(MAX_TEMP_AGE_SECONDS + 5));
        assert_eq!(severity_of(stale), Some(Severity::Problem));

        let (after, _) = repair_state(&store, None).unwrap();
        assert!(!store.path(&format!("blocked/{reused}")).exists());
        assert!(!store.path(&format!("blocked/{stale}")).exists());
        assert!(store.path(&format!("blocked/{fresh}")).exists());
        assert_eq!(after.problems(), 0, "{:?}", problems(&after));
        let _ = older.kill();
        let _ = older.wait();
    }

    #[test]
    fn an_unreadable_device_record_is_a_problem_and_its_certificate_a_note() {
        let (_dir, store, ca) = signing_state();
        let record = issue_record(&store, &ca, "UDID-T");
        store
            .save_device(&device("UDID-T", "C02TRN", &[&record.serial]))
            .unwrap();
        assert_eq!(check(&store).findings, Vec::new());
        let bytes = serde_json::to_vec(&store.device("UDID-T").unwrap().unwrap()).unwrap();
        store.put_raw_record(Kind::Device, "UDID-T", &bytes[..bytes.len() / 2]);

        let report = check(&store);
        let lines: Vec<String> = report
            .findings
            .iter()
            .map(|f| format!("{:?} {}: {}", f.severity, f.file, f.problem))
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("Problem device UDID-T: does not parse"));
        assert_eq!(
            lines[1],
            format!(
                "Note device UDID-T: certificate {} names this record, which does not parse",
                record.serial
            )
        );
        let (after, repaired) = repair_state(&store, None).unwrap();
        assert_eq!(repaired, Vec::<String>::new());
        assert_eq!(after.problems(), 1, "a record is never removed");
    }

    /// Replaces `crl.json` by hand: these entries (serial, revoked_at, reason) and this number.
    fn write_crl_json(store: &Store, number: u64, entries: &[(&str, i64, &str)]) {
        let revoked: Vec<serde_json::Value> = entries
            .iter()
            .map(|(serial, at, reason)| {
                json!({ "serial": serial, "revoked_at": at, "reason": reason })
            })
            .collect();
        std::fs::write(
            store.path(store::crl::CRL_INDEX_FILE),
            serde_json::to_vec(&json!({ "number": number, "revoked": revoked })).unwrap(),
        )
        .unwrap();
    }

    fn notes(report: &Report) -> Vec<String> {
        report
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Note)
            .map(|f| format!("{}: {}", f.file, f.problem))
            .collect()
    }

    fn signer(ca: &CertificateAuthority) -> CrlSigner<'_> {
        CrlSigner {
            ca,
            validity: Duration::from_secs(86_400),
        }
    }

    #[test]
    fn a_serial_in_another_spelling_is_a_note_and_repair_rewrites_crl_json() {
        let (_dir, store, ca) = signing_state();
        let record = issue_record(&store, &ca, "UDID-S1");
        store
            .save_device(&device("UDID-S1", "C02S1", &[&record.serial]))
            .unwrap();
        let reason = crl::RevocationReason::KeyCompromise;
        let validity = Duration::from_secs(86_400);
        let revoked = crl::revoke(&store, &ca, validity, &record.serial, reason, store::now());
        let at = revoked.unwrap().record.revoked.unwrap();
        assert_eq!(check(&store).findings, Vec::new());

        // Upper case and a leading zero octet, as another tool might write it.
        let respelled = format!("00{}", record.serial.to_uppercase());
        write_crl_json(&store, 1, &[(&respelled, at, "keyCompromise")]);
        let report = check(&store);
        assert_eq!(problems(&report), Vec::<String>::new());
        assert_eq!(
            notes(&report),
            [format!(
                "crl.json: 1 serial(s) not in otad's spelling, read as lowercase hex without \
                 leading zeros (entry 1: {respelled:?} is {})",
                record.serial
            )]
        );

        let (after, repaired) = repair_state(&store, Some(&signer(&ca))).unwrap();
        assert_eq!(after.findings, Vec::new());
        assert_eq!(
            repaired,
            ["crl.json: rewritten with each serial canonical and listed once"]
        );
        let index = store.crl_index_read().unwrap();
        assert!(index.is_canonical());
        assert_eq!(index.index.revoked.len(), 1);
        assert_eq!(
            crl::read(&store.crl().unwrap().unwrap(), &ca)
                .unwrap()
                .number,
            1
        );
    }

    #[test]
    fn a_serial_listed_twice_is_a_problem_and_repair_keeps_its_first_revocation() {
        let (_dir, store, ca) = signing_state();
        let record = issue_record(&store, &ca, "UDID-S2");
        store
            .save_device(&device("UDID-S2", "C02S2", &[&record.serial]))
            .unwrap();
        let now = store::now();
        let mut marked = record.clone();
        marked.revoked = Some(now - 10);
        store.update_cert(&marked).unwrap();
        // An older otad signed both entries.
        let twice = [
            (record.serial.as_str(), now - 10, "keyCompromise"),
            (record.serial.as_str(), now - 20, "superseded"),
        ];
        write_crl_json(&store, 1, &twice);
        let entries: Vec<crl::RevokedEntry> = twice
            .iter()
            .map(|(serial, at, reason)| crl::RevokedEntry {
                serial_hex: serial.to_string(),
                revoked_at: *at,
                reason: crl::RevocationReason::from_name(reason).unwrap(),
            })
            .collect();
        let params = crl::CrlParams {
            number: 1,
            this_update: now - 60,
            next_update: now + 86_400,
            revoked: &entries,
        };
        store
            .write_file(
                store::crl::CRL_FILE,
                &crl::sign(&ca, &params).unwrap(),
                0o644,
            )
            .unwrap();

        assert_eq!(
            problems(&check(&store)),
            [
                format!(
                    "crl.json: lists 1 serial(s) twice ({} in entries 1 and 2); otad signs the \
                     revocation dated first",
                    record.serial
                ),
                "crl.der: lists a serial more than once (signed from a crl.json that listed \
                 it twice)"
                    .to_string(),
            ]
        );

        let (after, repaired) = repair_state(&store, Some(&signer(&ca))).unwrap();
        assert_eq!(after.findings, Vec::new());
        assert_eq!(
            repaired,
            [
                "crl.json: rewritten with each serial canonical and listed once",
                "crl: CRL number 2 signed",
            ]
        );
        let index = store.crl_index().unwrap();
        assert_eq!(index.revoked.len(), 1);
        assert_eq!(index.revoked[0].revoked_at, now - 20);
        assert_eq!(index.revoked[0].reason, "superseded");
        let summary = crl::read(&store.crl().unwrap().unwrap(), &ca).unwrap();
        assert_eq!(
            summary.revoked,
            vec![(record.serial.clone(), now - 20, Some(4))]
        );
    }

    #[test]
    fn an_entry_that_cannot_be_read_is_a_problem_left_to_the_admin() {
        let (_dir, store, ca) = signing_state();
        crl::current(&store, &ca, Duration::from_secs(86_400), store::now()).unwrap();
        let now = store::now();
        write_crl_json(
            &store,
            1,
            &[
                ("0a1b", now, "keyCompromise"),
                ("0a1g", now, "keyCompromise"),
                ("0c", now, "lostIt"),
            ],
        );

        let report = check(&store);
        let found: Vec<(String, String)> = report
            .findings
            .iter()
            .map(|f| (format!("{}: {}", f.file, f.problem), f.action.clone()))
            .collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(
            found[0].0,
            "crl.json: entry 2 (serial \"0a1g\"): not a hex serial number like 0a1b2c"
        );
        assert!(
            found[0].1.contains("or remove it, by hand"),
            "{}",
            found[0].1
        );
        assert!(found[1]
            .0
            .starts_with("crl.json: serial 0c: reason \"lostIt\" is not one of"));
        assert_eq!(
            found[2],
            (
                "crl.der: does not list 2 certificate(s) crl.json lists as revoked (0a1b, 0c)"
                    .to_string(),
                "once crl.json is corrected (see its findings), --repair signs a new one".into()
            )
        );

        let (after, repaired) = repair_state(&store, Some(&signer(&ca))).unwrap();
        assert_eq!(after.problems(), 3);
        assert_eq!(repaired.len(), 1);
        assert!(
            repaired[0].starts_with("crl: not reconciled: ")
                && repaired[0].contains("entry 2 (serial \"0a1g\")"),
            "{repaired:?}"
        );
        assert_eq!(
            crl::read(&store.crl().unwrap().unwrap(), &ca)
                .unwrap()
                .number,
            1
        );
    }
}
