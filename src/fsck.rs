//! `otad fsck`: checks a state dir's files against each other and reports what is wrong,
//! changing nothing unless asked to repair.
//!
//! Checked: every state file parses (devices, certificates, challenges, tokens, pending
//! requests, blocked serials, `users.json`, `crl.json`, the events cursor and generation);
//! no two certificate records share a serial and none has the CA's; each device's
//! certificates exist and name it; the serial index and the transaction index point at
//! records that exist and agree; leftover temp files of interrupted atomic writes (named as
//! [`fsutil::parse_temp_name`] reads them); expired challenges; token uses; file modes.
//!
//! Each finding is a *problem* (exit 1) or a *note* (harmless, such as an expired challenge
//! or an index entry a crash left pointing at nothing, which readers already ignore).
//! `--repair` does only safe things, under the state lock: it removes temp files of writers
//! that are gone and expired challenges, and rebuilds the two indexes from the records. It
//! never removes a certificate or device record. The read-only checks take no lock, since
//! every state file is replaced atomically, so they are safe while `otad serve` runs; a
//! write in flight can then show as a note, never as a problem.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use lexopt::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::admin::{Args, Exit};
use crate::config::Config;
use crate::events;
use crate::gate::{tokens, users};
use crate::pki::cert;
use crate::store::{
    self, blocked::BlockRecord, fsutil, CertRecord, ChallengeRecord, DeviceRecord, PendingRequest,
    Store, StoreError,
};

/// The largest state file read; a bigger one is reported, not read.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// The deepest folder searched for temp files, below the state dir.
pub const MAX_DEPTH: usize = 4;
/// Most findings kept; beyond it they are only counted.
pub const MAX_FINDINGS: usize = 10_000;
/// Most files read in one folder (every kind of record is capped well below it).
pub const MAX_FILES_PER_FOLDER: usize = 1_000_000;

const HELP: &str = "\
usage: otad fsck (--config FILE | --state DIR) [--repair] [--json]

Checks the state dir and reports each problem on a line: the file, what is wrong, and what
--repair would do or what to do by hand. Changes nothing without --repair. Exit 0 if no
problem was found (notes do not count), 1 if one was. Safe while otad serve runs.

Checks:
  - temp files left by interrupted writes (one whose writer still runs is a note)
  - ca/: the CA certificate reads; ca.key, ra.key and signer.key are mode 0600
  - certs/: each record parses, is named by its serial, and its PEM holds a certificate
    with that serial; no two records share a serial; none has the CA's own serial
  - a revoked certificate the CRL (crl.json) does not list; crl.der missing once a CRL
    was signed; crl.json parses
  - devices/: each record parses, is mode 0600 and is named by its UDID; each of its
    certificates is in certs/ and names it; a certificate issued to a device but not on
    its record (a note)
  - devices/by-serial: a device's serial missing; an entry pointing at no device that
    reports the serial (a note)
  - challenges/: each parses; expired ones (a note)
  - tokens/: each parses, is mode 0600 and is named by its id; no more uses spent than
    allowed
  - pending/: each request parses and is named by its id; pending/by-transaction: a
    request that cannot be polled; an entry pointing at no request (a note)
  - blocked/: each parses and is named by its serial
  - users.json: mode 0600, and it loads
  - events.cursor and events.gen (the webhook's place in the events log) read

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
  --repair        under the state lock: remove leftover temp files and expired challenges,
                  rebuild devices/by-serial and pending/by-transaction from the records;
                  never removes a certificate or device record. Then checks again.
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
    /// Rebuild `devices/by-serial` from the device records.
    RebuildSerialIndex,
    /// Rebuild `pending/by-transaction` from the requests.
    RebuildTransactionIndex,
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
        Err(err) => return Exit::Failed(err.to_string()),
    };

    let (report, repaired) = if repair {
        match repair_state(&store) {
            Ok(outcome) => outcome,
            Err(err) => return Exit::Failed(format!("fsck --repair: {err}")),
        }
    } else {
        (check(store.root()), Vec::new())
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
/// done.
pub fn repair_state(store: &Store) -> Result<(Report, Vec<String>), StoreError> {
    store.transaction(|| {
        let before = check(store.root());
        let mut done = Vec::new();
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
                Some(Repair::RebuildSerialIndex) => {
                    wanted.insert("serial");
                }
                Some(Repair::RebuildTransactionIndex) => {
                    wanted.insert("transaction");
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
        if wanted.contains("serial") {
            let changed = rebuild_serial_index(store.root())?;
            done.push(format!(
                "{}: {changed} entr(ies) fixed",
                store::SERIAL_INDEX
            ));
        }
        if wanted.contains("transaction") {
            let changed = rebuild_transaction_index(store.root())?;
            done.push(format!(
                "{}: {changed} entr(ies) fixed",
                store::TRANSACTION_INDEX_DIR
            ));
        }
        Ok((check(store.root()), done))
    })
}

/// Checks the state dir at `root`, reading only.
pub fn check(root: &Path) -> Report {
    let mut report = Report::default();
    let state = State { root };

    state.temp_files(root, 0, &mut report);
    let ca_serial = state.ca(&mut report);
    let certs = state.certs(ca_serial.as_deref(), &mut report);
    let devices = state.devices(&certs, &mut report);
    state.orphan_certs(&certs, &devices, &mut report);
    state.serial_index(&devices, &mut report);
    state.challenges(&mut report);
    state.tokens(&mut report);
    state.pending(&mut report);
    state.blocked(&mut report);
    state.users(&mut report);
    state.crl(&certs, &mut report);
    state.events(&mut report);
    report
}

struct State<'a> {
    root: &'a Path,
}

/// A file read within [`MAX_FILE_BYTES`], or why not.
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    fsutil::read_bounded(path, MAX_FILE_BYTES).map_err(|err| err.to_string())
}

fn parse<T: DeserializeOwned>(path: &Path) -> Result<T, String> {
    let bytes = read_bounded(path)?;
    serde_json::from_slice(&bytes).map_err(|err| format!("does not parse: {err}"))
}

/// True if a process with this pid runs now (a temp file's writer may still be writing).
fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
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
        let Ok(entries) = std::fs::read_dir(self.root.join(folder)) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .take(MAX_FILES_PER_FOLDER)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        paths
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
        for entry in entries.filter_map(Result::ok).take(MAX_FILES_PER_FOLDER) {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
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
            if pid != std::process::id() && process_alive(pid) {
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

    /// Key modes and the CA's own serial.
    fn ca(&self, report: &mut Report) -> Option<String> {
        for key in ["ca/ca.key", "ca/ra.key", "ca/signer.key"] {
            self.private_mode(report, &self.root.join(key));
        }
        let path = self.root.join("ca/ca.pem");
        let serial = read_bounded(&path)
            .ok()
            .and_then(|pem| cert::pem_to_der(&String::from_utf8_lossy(&pem)).ok())
            .and_then(|der| cert::serial_hex(&der).ok());
        if serial.is_none() {
            self.unreadable(report, &path, "the CA certificate cannot be read");
        }
        serial
    }

    fn certs(&self, ca_serial: Option<&str>, report: &mut Report) -> BTreeMap<String, CertRecord> {
        let mut certs = BTreeMap::new();
        for path in self.json_files("certs") {
            let record: CertRecord = match parse(&path) {
                Ok(record) => record,
                Err(why) => {
                    self.unreadable(report, &path, &why);
                    continue;
                }
            };
            let file = self.relative(&path);
            if Self::stem(&path) != record.serial {
                report.add(
                    Severity::Problem,
                    &file,
                    format!(
                        "records serial {}, not the one it is named by",
                        record.serial
                    ),
                    "rename it to <serial>.json after checking which certificate it holds",
                );
            }
            let pem_serial = cert::pem_to_der(&record.pem)
                .ok()
                .and_then(|der| cert::serial_hex(&der).ok());
            if pem_serial.as_deref() != Some(record.serial.as_str()) {
                report.add(
                    Severity::Problem,
                    &file,
                    "its PEM does not hold a certificate with the recorded serial".into(),
                    "restore it from a backup",
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
            if certs.contains_key(&record.serial) {
                report.add(
                    Severity::Problem,
                    &file,
                    format!("serial {} is recorded twice", record.serial),
                    "revoke both certificates and re-enroll their devices",
                );
                continue;
            }
            certs.insert(record.serial.clone(), record);
        }
        certs
    }

    fn devices(
        &self,
        certs: &BTreeMap<String, CertRecord>,
        report: &mut Report,
    ) -> BTreeMap<String, DeviceRecord> {
        let mut devices = BTreeMap::new();
        for path in self.json_files("devices") {
            self.private_mode(report, &path);
            let device: DeviceRecord = match parse(&path) {
                Ok(device) => device,
                Err(why) => {
                    self.unreadable(report, &path, &why);
                    continue;
                }
            };
            let file = self.relative(&path);
            if !store::valid_udid(&device.udid) || Self::stem(&path) != device.udid {
                report.add(
                    Severity::Problem,
                    &file,
                    format!("records UDID {:?}, not the one it is named by", device.udid),
                    "restore it from a backup",
                );
                continue;
            }
            for serial in &device.certificates {
                // A certificate recorded after certs/ was read (the server runs) is read now.
                let late = certs
                    .get(serial)
                    .is_none()
                    .then(|| parse::<CertRecord>(&self.root.join(format!("certs/{serial}.json"))))
                    .and_then(Result::ok);
                match certs.get(serial).or(late.as_ref()) {
                    None => report.add(
                        Severity::Problem,
                        &file,
                        format!("certificate {serial} is not in certs/"),
                        "restore certs/ from a backup, or re-enroll the device",
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
        devices
    }

    /// Certificates issued to a device that never recorded them: an enrollment that stopped
    /// between issuance and the device update (the device enrolled again or gave up).
    fn orphan_certs(
        &self,
        certs: &BTreeMap<String, CertRecord>,
        devices: &BTreeMap<String, DeviceRecord>,
        report: &mut Report,
    ) {
        for cert in certs.values() {
            let Some(udid) = cert.udid.as_deref() else {
                continue;
            };
            let recorded = devices
                .get(udid)
                .is_some_and(|d| d.certificates.contains(&cert.serial));
            if !recorded && cert.superseded_by.is_none() {
                report.add(
                    Severity::Note,
                    &format!("certs/{}.json", cert.serial),
                    format!("issued to {udid} but not on its device record"),
                    "an enrollment stopped after issuance; revoke it if the device is unknown",
                );
            }
        }
    }

    fn serial_index(&self, devices: &BTreeMap<String, DeviceRecord>, report: &mut Report) {
        let dir = self.root.join(store::SERIAL_INDEX);
        let mut indexed: BTreeMap<String, String> = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.filter_map(Result::ok).take(MAX_FILES_PER_FOLDER) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if fsutil::parse_temp_name(&name).is_some() {
                    continue;
                }
                let file = format!("{}/{name}", store::SERIAL_INDEX);
                let udid = read_bounded(&entry.path())
                    .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                    .unwrap_or_default();
                let reports_it = devices.get(&udid).is_some_and(|d| {
                    d.attributes
                        .get("SERIAL")
                        .and_then(|s| store::normalize_device_serial(s))
                        .as_deref()
                        == Some(name.as_str())
                });
                if reports_it {
                    indexed.insert(name, udid);
                } else {
                    report.push(Finding {
                        severity: Severity::Note,
                        file,
                        problem: "points at no device reporting this serial (a write was \
                                  interrupted; lookups ignore it)"
                            .into(),
                        action: "--repair rebuilds the index".into(),
                        repair: Some(Repair::RebuildSerialIndex),
                    });
                }
            }
        }
        for device in devices.values() {
            let Some(serial) = device
                .attributes
                .get("SERIAL")
                .and_then(|s| store::normalize_device_serial(s))
            else {
                continue;
            };
            if !indexed.contains_key(&serial) {
                report.push(Finding {
                    severity: Severity::Problem,
                    file: format!("{}/{serial}", store::SERIAL_INDEX),
                    problem: format!("missing: device {} reports this serial", device.udid),
                    action: "--repair rebuilds the index".into(),
                    repair: Some(Repair::RebuildSerialIndex),
                });
            }
        }
    }

    fn challenges(&self, report: &mut Report) {
        let now = store::now();
        let mut expired = 0usize;
        for path in self.json_files("challenges") {
            match parse::<ChallengeRecord>(&path) {
                Ok(record) if record.expires <= now => expired += 1,
                Ok(_) => {}
                Err(why) => self.unreadable(report, &path, &why),
            }
        }
        if expired > 0 {
            report.push(Finding {
                severity: Severity::Note,
                file: "challenges/".into(),
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

    fn crl(&self, certs: &BTreeMap<String, CertRecord>, report: &mut Report) {
        let path = self.root.join(store::crl::CRL_INDEX_FILE);
        if !path.exists() {
            return;
        }
        let index: store::crl::CrlIndex = match parse(&path) {
            Ok(index) => index,
            Err(why) => {
                self.unreadable(report, &path, &why);
                return;
            }
        };
        if index.number > 0 && !self.root.join(store::crl::CRL_FILE).exists() {
            report.add(
                Severity::Problem,
                store::crl::CRL_FILE,
                format!(
                    "missing, while {} says CRL {} was signed",
                    path.display(),
                    index.number
                ),
                "revoke any certificate again, or restart otad serve, to sign a new CRL",
            );
        }
        for cert in certs.values() {
            if cert.revoked.is_some() && !index.lists(&cert.serial) {
                report.add(
                    Severity::Problem,
                    &format!("certs/{}.json", cert.serial),
                    "revoked, but the CRL does not list it".into(),
                    &format!("run otad cert revoke {} again to list it", cert.serial),
                );
            }
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

/// Rebuilds `devices/by-serial` from the device records: each serial names the device that
/// last reported it; entries leading nowhere go. Returns how many entries changed.
fn rebuild_serial_index(root: &Path) -> Result<usize, StoreError> {
    let state = State { root };
    let mut newest: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for path in state.json_files("devices") {
        let Ok(device) = parse::<DeviceRecord>(&path) else {
            continue;
        };
        let Some(serial) = device
            .attributes
            .get("SERIAL")
            .and_then(|s| store::normalize_device_serial(s))
        else {
            continue;
        };
        if !store::valid_udid(&device.udid) || State::stem(&path) != device.udid {
            continue;
        }
        let slot = newest
            .entry(serial)
            .or_insert((device.last_seen, device.udid.clone()));
        if device.last_seen > slot.0 {
            *slot = (device.last_seen, device.udid);
        }
    }
    let entries: BTreeMap<String, String> = newest
        .into_iter()
        .map(|(serial, (_, udid))| (serial, udid))
        .collect();
    rebuild_index(root, store::SERIAL_INDEX, &entries, |serial, current| {
        // An entry naming another device that reports the serial too is left as it is.
        current.is_some_and(|udid| {
            parse::<DeviceRecord>(&root.join("devices").join(format!("{udid}.json")))
                .ok()
                .and_then(|d| d.attributes.get("SERIAL").cloned())
                .and_then(|s| store::normalize_device_serial(&s))
                .as_deref()
                == Some(serial)
        })
    })
}

/// Rebuilds `pending/by-transaction` from the requests: each transaction names its newest
/// request. Returns how many entries changed.
fn rebuild_transaction_index(root: &Path) -> Result<usize, StoreError> {
    let state = State { root };
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
    rebuild_index(root, store::TRANSACTION_INDEX_DIR, &entries, |_, _| false)
}

/// Makes `folder` hold `entries` (name → content line): writes the missing and wrong ones,
/// unless `keep(name, current)` says the current content is fine too, and removes the rest.
fn rebuild_index(
    root: &Path,
    folder: &str,
    entries: &BTreeMap<String, String>,
    keep: impl Fn(&str, Option<&str>) -> bool,
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
        if current.as_deref() == Some(content.as_str()) || keep(name, current.as_deref()) {
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
        let report = check(store.root());
        let found = problems(&report);
        assert!(
            found
                .iter()
                .any(|p| p == "devices/UDID-1.json: certificate 0a is not in certs/"),
            "{found:?}"
        );
    }

    #[test]
    fn a_repair_never_goes_through_a_symlinked_folder() {
        let (_dir, store) = state();
        store.save_device(&device("UDID-3", "C02SYM", &[])).unwrap();
        let victim = tempfile::tempdir().unwrap();
        std::fs::write(victim.path().join("important.txt"), b"precious").unwrap();
        let index = store.path("devices/by-serial");
        std::fs::remove_dir_all(&index).unwrap();
        std::os::unix::fs::symlink(victim.path(), &index).unwrap();

        let err = repair_state(&store).unwrap_err();
        assert!(err.to_string().contains("a symlink?"), "{err}");
        assert_eq!(
            std::fs::read(victim.path().join("important.txt")).unwrap(),
            b"precious"
        );
        assert_eq!(std::fs::read_dir(victim.path()).unwrap().count(), 1);
    }

    #[test]
    fn temp_files_and_a_missing_serial_entry_are_repaired_records_are_kept() {
        let (_dir, store) = state();
        store.save_device(&device("UDID-2", "C02XYZ", &[])).unwrap();
        std::fs::remove_file(store.path("devices/by-serial/C02XYZ")).unwrap();
        // A temp file whose writer is gone (pid 0 never names a process in /proc).
        let temp = store.path("devices/.UDID-2.json.tmp.0.7");
        std::fs::write(&temp, b"{").unwrap();
        std::fs::write(store.path("devices/by-serial/NOBODY"), b"UDID-9\n").unwrap();

        let report = check(store.root());
        let found = problems(&report);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found
            .iter()
            .any(|p| p.starts_with("devices/.UDID-2.json.tmp.0.7")));
        assert!(found
            .iter()
            .any(|p| p.starts_with("devices/by-serial/C02XYZ: missing")));
        assert_eq!(report.notes(), 1, "the dangling entry is a note");
        assert!(temp.exists(), "a check alone changes nothing");

        let (after, repaired) = repair_state(&store).unwrap();
        assert_eq!(after.problems(), 0, "{:?}", problems(&after));
        assert_eq!(after.notes(), 0);
        assert_eq!(repaired.len(), 2, "{repaired:?}");
        assert!(!temp.exists());
        assert!(!store.path("devices/by-serial/NOBODY").exists());
        assert_eq!(
            store.device_by_serial("C02XYZ").unwrap().unwrap().udid,
            "UDID-2"
        );
        assert!(store.path("devices/UDID-2.json").exists());
    }

    #[test]
    fn a_request_missing_from_the_transaction_index_is_found_and_reindexed() {
        let (_dir, store) = state();
        let request = PendingRequest {
            id: "0123456789abcdef0123456789abcdef".into(),
            transaction_id: "TX-1".into(),
            csr: String::new(),
            subject: Vec::new(),
            udid: None,
            authorised_by: "static".into(),
            requester: String::new(),
            remote: "127.0.0.1".into(),
            created: 1,
            decision: store::Decision::Pending,
        };
        store.create_pending(&request).unwrap();
        assert_eq!(check(store.root()).problems(), 0);

        let entry = store
            .path(store::TRANSACTION_INDEX_DIR)
            .join(store::transaction_index_name("TX-1"));
        std::fs::remove_file(&entry).unwrap();
        let found = problems(&check(store.root()));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].ends_with(&format!("missing: request {} cannot be polled", request.id)));

        let (after, _) = repair_state(&store).unwrap();
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
        std::fs::write(store.path("challenges/00.json"), b"not json").unwrap();
        store.save_device(&device("UDID-3", "C02QQQ", &[])).unwrap();
        std::fs::set_permissions(
            store.path("devices/UDID-3.json"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();

        let found = problems(&check(store.root()));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found
            .iter()
            .any(|p| p.ends_with("2 uses spent of 1 allowed")));
        assert!(found
            .iter()
            .any(|p| p.starts_with("challenges/00.json: does not parse")));
        assert!(found
            .iter()
            .any(|p| p.starts_with("devices/UDID-3.json: mode 0644")));
    }

    #[test]
    fn help_lists_every_kind_of_check_fsck_makes() {
        // One phrase for each check in `check` (and in `State::ca`, `certs`, `devices`).
        for phrase in [
            "temp files",
            "ca.key, ra.key and signer.key are mode 0600",
            "no two records share a serial",
            "the CA's own serial",
            "A revoked certificate the CRL (crl.json) does not list",
            "crl.der missing",
            "devices/: each record parses, is mode 0600",
            "not on\n    its record",
            "devices/by-serial",
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
}
