//! `otad cert`: list, show, revoke and import the certificates the CA issued.
//!
//! Each subcommand reads the config for the state dir; `revoke` and `import` also load the
//! CA. Writes happen under the state lock (`Store::transaction`), so all of this is safe
//! while `otad serve` runs. `revoke` re-signs the CRL in the same transaction
//! ([RFC 5280 section 5](https://www.rfc-editor.org/rfc/rfc5280#section-5)), so a server
//! serves the new CRL with its next `GET /crl` or GetCRL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lexopt::prelude::*;
use serde_json::json;

use super::{Args, Exit};
use crate::config::{Config, Derived};
use crate::context::{files, Identity};
use crate::ota::machine::{self, Event};
use crate::pki::ca::CertificateAuthority;
use crate::pki::cert;
use crate::pki::crl::{self, RevocationReason};
use crate::store::{self, CertRecord, DevicePhase, DeviceRecord, HistoryEntry, Store, StoreError};

/// What an imported certificate's record says authorised it.
pub const IMPORTED: &str = "imported";

/// The most certificates one `otad cert import` records.
pub const MAX_IMPORT_CERTIFICATES: usize = 1024;

const HELP: &str = "\
usage: otad cert <subcommand> (--config FILE | --state DIR) ...

subcommands:
  list      every certificate the CA issued, with its status
  show      one certificate's record and PEM
  revoke    revoke a certificate and re-sign the CRL
  import    record certificates an earlier CA (imported with otad init --ca-cert) issued

Every subcommand takes --config FILE (the state's otad.toml) or --state DIR (the state dir
otad init made, holding otad.toml). `otad cert <subcommand> --help` explains each. Safe
while otad serve runs.
";

const LIST_HELP: &str = "\
usage: otad cert list (--config FILE | --state DIR) [--json]

Lists every certificate the CA issued: serial, status (valid, revoked, expired or
superseded: a newer certificate was issued to the same device), issued, not after, UDID
and subject.

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
  --json          one JSON array instead of a table
";

const SHOW_HELP: &str = "\
usage: otad cert show (--config FILE | --state DIR) SERIAL [--json]

Prints one certificate's record and its PEM. SERIAL is hex as `otad cert list` prints it
(case, colons and leading zeros do not matter).

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
  --json          the record as stored (times in unix seconds), PEM included
";

const REVOKE_HELP: &str = "\
usage: otad cert revoke (--config FILE | --state DIR) SERIAL [--reason R]

Revokes a certificate: phase 3 and renewal refuse it from now on, and the CRL (GET /crl,
SCEP GetCRL, state/crl.der) is re-signed with a higher CRL number, listing it.

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
  --reason R      unspecified (default), keyCompromise, affiliationChanged, superseded or
                  cessationOfOperation
";

const IMPORT_HELP: &str = "\
usage: otad cert import (--config FILE | --state DIR) CERT.pem... [--udid U]

Records certificates issued by the CA key this state uses (a CA imported with otad init
--ca-cert), so that they can renew and be revoked. Each must verify under the CA's key and
name it as issuer. A certificate already recorded is skipped.

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
  --udid U        the device the certificate belongs to (one certificate only); phase 3 and
                  renewal then accept it for that device
";

/// Runs `otad cert` with its arguments.
pub fn run(args: Args) -> Exit {
    super::run_subcommand("cert", HELP, SUBCOMMANDS, args)
}

const SUBCOMMANDS: &[(&str, super::Subcommand)] = &[
    ("list", list),
    ("show", show),
    ("revoke", revoke),
    ("import", import),
];

#[cfg(test)]
fn dispatch(args: Args) -> Result<String, Exit> {
    super::dispatch("cert", HELP, SUBCOMMANDS, args)
}

use super::usage;

fn required<T>(value: Option<T>, what: &str, help: &str) -> Result<T, Exit> {
    value.ok_or_else(|| Exit::Usage(format!("{what} is required\n\n{help}")))
}

/// The state behind a config: its derived settings and the open store.
fn open_state(config: &Path) -> Result<(Derived, Store), Exit> {
    let (_, derived) = Config::load(config).map_err(|err| Exit::Failed(err.to_string()))?;
    let store = Store::open(&derived.state_dir).map_err(failed)?;
    Ok((derived, store))
}

/// The CA as the server loads it.
fn load_ca(store: &Store) -> Result<CertificateAuthority, Exit> {
    let identity = Identity::load(store, files::CA_CERT, files::CA_KEY).map_err(Exit::Failed)?;
    CertificateAuthority::load(&identity.certificate, identity.key)
        .map_err(|err| Exit::Failed(format!("{}: {err}", store.path(files::CA_CERT).display())))
}

/// Every certificate record that reads; each one that does not is named on stderr and
/// left out, so one corrupt file does not hide the others.
fn certs_warning_skipped(store: &Store) -> Result<Vec<CertRecord>, Exit> {
    let (records, skipped) = store.certs_skipping().map_err(failed)?;
    for err in skipped {
        eprintln!("otad: warning: skipped {err}");
    }
    Ok(records)
}

fn failed(err: impl std::fmt::Display) -> Exit {
    Exit::Failed(err.to_string())
}

/// A serial as an admin may type it ("0A:1B", "0x0a1b", "A1B") in the form certificate records use:
/// lowercase hex, no leading zero octets, an even number of digits (or "0"). The same
/// reading `crl.json` gets ([`store::crl::canonical_serial`]).
pub fn normalize_serial(input: &str) -> Result<String, String> {
    store::crl::canonical_serial(input).map_err(|err| {
        format!(
            "serial {:?}: {err}",
            input.chars().take(64).collect::<String>()
        )
    })
}

/// Where a certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    /// Usable.
    Valid,
    /// Revoked (whatever else is true of it).
    Revoked,
    /// Past notAfter.
    Expired,
    /// Renewed, or a newer certificate was issued to the same device.
    Superseded,
}

impl CertStatus {
    /// The word `otad cert list` prints.
    pub fn name(self) -> &'static str {
        match self {
            CertStatus::Valid => "valid",
            CertStatus::Revoked => "revoked",
            CertStatus::Expired => "expired",
            CertStatus::Superseded => "superseded",
        }
    }
}

/// The status of each record at `now`, in the order given. A certificate is superseded when a
/// RenewalReq replaced it, or when a later one went to the same UDID (a re-enrollment).
pub fn statuses(records: &[CertRecord], now: i64) -> Vec<CertStatus> {
    let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
    for record in records {
        if let Some(udid) = record.udid.as_deref() {
            let issued = latest.entry(udid).or_insert(record.issued_at);
            *issued = (*issued).max(record.issued_at);
        }
    }
    records
        .iter()
        .map(|record| {
            let newer_for_device = record
                .udid
                .as_deref()
                .and_then(|udid| latest.get(udid))
                .is_some_and(|latest| *latest > record.issued_at);
            if record.revoked.is_some() {
                CertStatus::Revoked
            } else if record.not_after < now {
                CertStatus::Expired
            } else if record.superseded_by.is_some() || newer_for_device {
                CertStatus::Superseded
            } else {
                CertStatus::Valid
            }
        })
        .collect()
}

/// A certificate's status in a few words, from its record: "revoked 2024-05-01T10:00:00Z,
/// reason keyCompromise", "superseded by 0c1d", "expired 2024-05-01T10:00:00Z", "valid
/// until 2025-05-01T10:00:00Z".
pub fn status_text(record: &CertRecord, status: CertStatus) -> String {
    match status {
        CertStatus::Revoked => format!(
            "revoked {}, reason {}",
            record.revoked.map(store::rfc3339).unwrap_or_default(),
            record
                .revocation_reason
                .as_deref()
                .unwrap_or(RevocationReason::Unspecified.name())
        ),
        CertStatus::Superseded => match &record.superseded_by {
            Some(next) => format!("superseded by {next}"),
            None => "superseded by a newer certificate of the same device".to_string(),
        },
        CertStatus::Expired => format!("expired {}", store::rfc3339(record.not_after)),
        CertStatus::Valid => format!("valid until {}", store::rfc3339(record.not_after)),
    }
}

fn list(mut parser: lexopt::Parser) -> Result<String, Exit> {
    let (mut config, mut as_json) = (None, false);
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Long("config") => config = Some(PathBuf::from(parser.value().map_err(usage)?)),
            Long("json") => as_json = true,
            Long("help") | Short('h') => return Ok(LIST_HELP.to_string()),
            other => return Err(usage(other.unexpected())),
        }
    }
    let config = super::config_required(config, LIST_HELP)?;
    let (_, store) = open_state(&config)?;

    let mut records = certs_warning_skipped(&store)?;
    records.sort_by(|a, b| (a.issued_at, &a.serial).cmp(&(b.issued_at, &b.serial)));
    let statuses = statuses(&records, store::now());
    if as_json {
        let rows: Vec<serde_json::Value> = records
            .iter()
            .zip(&statuses)
            .map(|(record, status)| record_json(record, *status))
            .collect();
        let mut text = serde_json::to_string_pretty(&rows).map_err(failed)?;
        text.push('\n');
        return Ok(text);
    }

    Ok(list_text(&records, &statuses))
}

/// The table `list` prints: a header row, then one row a certificate. The serial and UDID
/// columns are as wide as the longest shown (an imported CA's serials may have 40 digits).
fn list_text(records: &[CertRecord], statuses: &[CertStatus]) -> String {
    let udid = |record: &CertRecord| record.udid.as_deref().unwrap_or("-").to_string();
    let serial_width = super::column_width("SERIAL", records.iter().map(|r| r.serial.as_str()));
    let udids: Vec<String> = records.iter().map(udid).collect();
    let udid_width = super::column_width("UDID", udids.iter().map(String::as_str));

    let mut text = format!(
        "{:<serial_width$}  {:<10}  {:<20}  {:<20}  {:<udid_width$}  SUBJECT\n",
        "SERIAL", "STATUS", "ISSUED", "NOT AFTER", "UDID"
    );
    for ((record, status), udid) in records.iter().zip(statuses).zip(&udids) {
        text.push_str(&format!(
            "{:<serial_width$}  {:<10}  {:<20}  {:<20}  {:<udid_width$}  {}\n",
            record.serial,
            status.name(),
            crate::store::rfc3339(record.issued_at),
            crate::store::rfc3339(record.not_after),
            udid,
            record.subject
        ));
    }
    text
}

fn record_json(record: &CertRecord, status: CertStatus) -> serde_json::Value {
    json!({
        "serial": record.serial,
        "status": status.name(),
        "subject": record.subject,
        "udid": record.udid,
        "issued": crate::store::rfc3339(record.issued_at),
        "not_after": crate::store::rfc3339(record.not_after),
        "revoked": record.revoked.map(crate::store::rfc3339),
        "revocation_reason": record.revocation_reason,
        "superseded_by": record.superseded_by,
        "authorised_by": record.authorised_by,
    })
}

/// Checks that `--config FILE` and SERIAL were given; the serial in the form certificate
/// records use.
fn config_and_serial(
    config: Option<PathBuf>,
    serial: Option<String>,
    help: &str,
) -> Result<(PathBuf, String), Exit> {
    let config = super::config_required(config, help)?;
    let serial = required(serial, "SERIAL", help)?;
    let serial = normalize_serial(&serial).map_err(Exit::Usage)?;
    Ok((config, serial))
}

fn show(mut parser: lexopt::Parser) -> Result<String, Exit> {
    let (mut config, mut serial, mut as_json) = (None, None, false);
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Long("config") => config = Some(PathBuf::from(parser.value().map_err(usage)?)),
            Long("json") => as_json = true,
            Long("help") | Short('h') => return Ok(SHOW_HELP.to_string()),
            Value(value) if serial.is_none() => serial = Some(value.string().map_err(usage)?),
            other => return Err(usage(other.unexpected())),
        }
    }
    let (config, serial) = config_and_serial(config, serial, SHOW_HELP)?;
    let (_, store) = open_state(&config)?;

    let records = certs_warning_skipped(&store)?;
    let statuses = statuses(&records, store::now());
    let Some((record, status)) = records
        .iter()
        .zip(statuses)
        .find(|(record, _)| record.serial == serial)
    else {
        return Err(Exit::Failed(format!(
            "certificate {serial}: not recorded in this state dir"
        )));
    };
    if as_json {
        let mut text = serde_json::to_string_pretty(record).map_err(|err| {
            Exit::Failed(format!("certificate {serial}: cannot be printed: {err}"))
        })?;
        text.push('\n');
        return Ok(text);
    }

    let mut text = format!(
        "serial: {}\nstatus: {}\nsubject: {}\nudid: {}\nissued: {}\nnot after: {}\n",
        record.serial,
        status.name(),
        record.subject,
        record.udid.as_deref().unwrap_or("-"),
        crate::store::rfc3339(record.issued_at),
        crate::store::rfc3339(record.not_after)
    );
    if let Some(at) = record.revoked {
        text.push_str(&format!(
            "revoked: {} ({})\n",
            crate::store::rfc3339(at),
            record.revocation_reason.as_deref().unwrap_or("unspecified")
        ));
    }
    if let Some(next) = &record.superseded_by {
        text.push_str(&format!("superseded by: {next}\n"));
    }
    text.push_str(&format!("authorised by: {}\n", record.authorised_by));
    text.push_str(&record.pem);
    if !record.pem.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

fn revoke(mut parser: lexopt::Parser) -> Result<String, Exit> {
    let (mut config, mut serial, mut reason) = (None, None, RevocationReason::Unspecified);
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Long("config") => config = Some(PathBuf::from(parser.value().map_err(usage)?)),
            Long("reason") => {
                let name = parser.value().map_err(usage)?.string().map_err(usage)?;
                reason = RevocationReason::from_name(&name).ok_or_else(|| {
                    Exit::Usage(format!(
                        "--reason {name:?}: not one of {}",
                        crl::reason_names()
                    ))
                })?;
            }
            Long("help") | Short('h') => return Ok(REVOKE_HELP.to_string()),
            Value(value) if serial.is_none() => serial = Some(value.string().map_err(usage)?),
            other => return Err(usage(other.unexpected())),
        }
    }
    let (config, serial) = config_and_serial(config, serial, REVOKE_HELP)?;
    let (derived, store) = open_state(&config)?;
    let ca = load_ca(&store)?;

    let done = crl::revoke(
        &store,
        &ca,
        derived.crl_validity,
        &serial,
        reason,
        store::now(),
    )
    .map_err(failed)?;
    let mut event = crate::events::Event::new("revocation")
        .certificate(&done.record.serial)
        .field("subject", done.record.subject.as_str())
        .reason(
            done.record
                .revocation_reason
                .as_deref()
                .unwrap_or(reason.name()),
        )
        .field("crl_number", done.crl_number);
    if let Some(udid) = &done.record.udid {
        event = event.udid(udid);
    }
    crate::events::record_in(&derived.state_dir, &derived.events, event);
    Ok(format!(
        "revoked {} ({}) for {}; signed CRL number {} ({})\n",
        done.record.serial,
        done.record.subject,
        done.record
            .revocation_reason
            .as_deref()
            .unwrap_or(reason.name()),
        done.crl_number,
        store.path(store::crl::CRL_FILE).display()
    ))
}

fn import(mut parser: lexopt::Parser) -> Result<String, Exit> {
    let (mut config, mut udid, mut paths) = (None, None, Vec::new());
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Long("config") => config = Some(PathBuf::from(parser.value().map_err(usage)?)),
            Long("udid") => udid = Some(parser.value().map_err(usage)?.string().map_err(usage)?),
            Long("help") | Short('h') => return Ok(IMPORT_HELP.to_string()),
            Value(path) => paths.push(PathBuf::from(path)),
            other => return Err(usage(other.unexpected())),
        }
    }
    let config = super::config_required(config, IMPORT_HELP)?;
    if paths.is_empty() {
        return Err(Exit::Usage(format!(
            "CERT.pem is required\n\n{IMPORT_HELP}"
        )));
    }
    if let Some(udid) = &udid {
        if !store::valid_udid(udid) {
            return Err(Exit::Usage(format!(
                "--udid {udid:?}: not a UDID (1 to 64 of A-Z a-z 0-9 -)"
            )));
        }
    }

    let mut certificates = Vec::new();
    for path in &paths {
        let text = crate::pki::keyfile::read_text_file(path)
            .map_err(|why| Exit::Failed(format!("{}: {why}", path.display())))?;
        let ders = cert::pem_to_der_all(&text)
            .map_err(|err| Exit::Failed(format!("{}: {err}", path.display())))?;
        certificates.extend(ders.into_iter().map(|der| (path.clone(), der)));
        if certificates.len() > MAX_IMPORT_CERTIFICATES {
            return Err(Exit::Failed(format!(
                "more than {MAX_IMPORT_CERTIFICATES} certificates; import them in batches"
            )));
        }
    }
    if udid.is_some() && certificates.len() != 1 {
        return Err(Exit::Usage(format!(
            "--udid needs exactly one certificate; {} given",
            certificates.len()
        )));
    }

    let (_, store) = open_state(&config)?;
    let ca = load_ca(&store)?;
    let now = store::now();

    // Every file is checked before anything is recorded: a batch goes in whole or not at all.
    let mut lines = Vec::new();
    let mut records: Vec<(PathBuf, CertRecord, String)> = Vec::new();
    for (path, der) in &certificates {
        let at = |why: String| Exit::Failed(format!("{}: {why}; nothing imported", path.display()));
        match prepare_import(&store, &ca, der, udid.as_deref(), now).map_err(at)? {
            Prepared::Skip(line) => lines.push(line),
            Prepared::Record(record, line) => {
                if records.iter().any(|(_, r, _)| r.serial == record.serial) {
                    return Err(at(format!("{}: given twice", record.serial)));
                }
                records.push((path.clone(), record, line));
            }
        }
    }

    let recorded = store
        .transaction(|| {
            // Under the lock nobody else records: check every serial, then write.
            for (path, record, _) in &records {
                if let Some(existing) = store.cert(&record.serial)? {
                    if existing.pem != record.pem {
                        let clash = ImportError::SerialClash(record.serial.clone());
                        return Err(ImportError::In(path.clone(), Box::new(clash)));
                    }
                }
            }
            let mut done = Vec::new();
            for (path, record, line) in &records {
                let fail = |err: StoreError| {
                    ImportError::In(path.clone(), Box::new(ImportError::Store(err)))
                };
                match store.create_cert(record) {
                    Err(StoreError::SerialTaken(serial)) => {
                        done.push(format!("skipped {serial}: already recorded"));
                        continue;
                    }
                    other => other.map_err(fail)?,
                }
                if let Some(udid) = udid.as_deref() {
                    bind_to_device(&store, udid, &record.serial, now).map_err(fail)?;
                }
                done.push(line.clone());
            }
            Ok(done)
        })
        .map_err(|err| Exit::Failed(err.to_string()))?;
    lines.extend(recorded);
    Ok(lines.iter().map(|line| format!("{line}\n")).collect())
}

/// What importing one certificate comes to, once checked.
enum Prepared {
    /// Nothing to record (the CA certificate itself); the line to print.
    Skip(String),
    /// The record to write, and the line to print once it is written.
    Record(CertRecord, String),
}

/// Checks one certificate for import (our CA key issued it, it is not one of otad's own
/// identities nor the CA's serial) and makes its record; writes nothing.
fn prepare_import(
    store: &Store,
    ca: &CertificateAuthority,
    der: &[u8],
    udid: Option<&str>,
    now: i64,
) -> Result<Prepared, String> {
    let summary = cert::summarize(der).map_err(|err| err.to_string())?;
    let serial = summary.serial_hex.clone();
    if der == ca.certificate() {
        return Ok(Prepared::Skip(format!(
            "skipped {serial}: the CA certificate itself"
        )));
    }
    // The RA and the profile signer are otad's own identities: recorded as device
    // certificates they could renew into client certificates under otad's names.
    for own in [
        crate::context::files::RA_CERT,
        crate::context::files::SIGNER_CERT,
    ] {
        let pem = store.read_file(own).map_err(|err| err.to_string())?;
        if cert::pem_to_der(&String::from_utf8_lossy(&pem))
            .ok()
            .as_deref()
            == Some(der)
        {
            return Err(format!(
                "{serial}: otad's own identity ({own}), not a device's"
            ));
        }
    }
    if cert::serial_hex(ca.certificate()).ok().as_deref() == Some(serial.as_str()) {
        return Err(format!("{serial}: the CA's own serial"));
    }
    check_importable(ca, der)?;

    let record = CertRecord {
        serial: serial.clone(),
        udid: udid.map(str::to_string),
        subject: summary.subject.clone(),
        // When the old CA issued it is not recorded anywhere else; notBefore is the best
        // witness, and orders it correctly against certificates we issue later.
        issued_at: summary.not_before,
        not_after: summary.not_after,
        revoked: None,
        revocation_reason: None,
        authorised_by: IMPORTED.to_string(),
        superseded_by: None,
        pem: cert::der_to_pem(der),
    };
    let status = if summary.not_after < now {
        " (expired)"
    } else {
        ""
    };
    let line = format!(
        "imported {serial} ({}){status}{}",
        summary.subject,
        udid.map(|u| format!(" for {u}")).unwrap_or_default()
    );
    Ok(Prepared::Record(record, line))
}

/// Why recording an imported certificate failed.
#[derive(Debug)]
enum ImportError {
    /// The state dir failed.
    Store(StoreError),
    /// Another certificate with the same serial is recorded.
    SerialClash(String),
    /// One of the above, for the certificate read from this file.
    In(PathBuf, Box<ImportError>),
}

impl From<StoreError> for ImportError {
    fn from(err: StoreError) -> ImportError {
        ImportError::Store(err)
    }
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportError::Store(err) => write!(f, "{err}"),
            ImportError::SerialClash(serial) => write!(
                f,
                "certificate {serial}: another certificate with this serial is recorded"
            ),
            ImportError::In(path, err) => write!(f, "{}: {err}", path.display()),
        }
    }
}

/// An imported certificate must be one our CA key signed, under our name, for an end entity
/// with a positive serial (the CRL could not name any other).
fn check_importable(ca: &CertificateAuthority, der: &[u8]) -> Result<(), String> {
    if !ca.issued(der) {
        return Err("not signed by this state's CA key".into());
    }
    let certificate = cert::parse_certificate(der).map_err(|err| err.to_string())?;
    if certificate.issuer().as_raw() != ca.subject_der() {
        return Err("its issuer name is not this CA's subject".into());
    }
    let is_ca = certificate
        .basic_constraints()
        .map_err(|err| err.to_string())?
        .is_some_and(|bc| bc.value.ca);
    if is_ca {
        return Err("a CA certificate, not a device's".into());
    }
    let serial = certificate.raw_serial();
    let significant = serial.iter().skip_while(|&&octet| octet == 0).count();
    if serial.first().is_some_and(|first| first & 0x80 != 0) || significant > 20 {
        return Err("its serial number is negative or longer than 20 octets".into());
    }
    Ok(())
}

/// Adds an imported serial to the device's record, creating a certified one for a device
/// this server has not seen (it enrolled with the old server).
fn bind_to_device(store: &Store, udid: &str, serial: &str, now: i64) -> Result<(), StoreError> {
    let entry = HistoryEntry::new(IMPORTED, now, "otad cert import", Some(serial));
    let device = match store.device(udid)? {
        Some(mut device) => {
            if let Ok(phase) = machine::next(Some(device.phase), Event::CertificateIssued) {
                device.phase = phase;
            }
            if !device.certificates.iter().any(|s| s == serial) {
                device.certificates.push(serial.to_string());
            }
            device.record(entry);
            device
        }
        None => {
            let mut device = DeviceRecord {
                udid: udid.to_string(),
                attributes: BTreeMap::new(),
                phase: DevicePhase::Certified,
                first_seen: now,
                last_seen: now,
                certificates: vec![serial.to_string()],
                history: Vec::new(),
                admission: Default::default(),
                hook_variables: BTreeMap::new(),
            };
            device.record(entry);
            device
        }
    };
    store.save_device(&device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ca::{random_serial, IssueRequest, KeyUsageProfile, SubjectAttribute};
    use crate::pki::keys::RsaPrivateKey;

    const UDID: &str = "00008030-001A35E12345802E";

    fn record(serial: &str, udid: Option<&str>, issued_at: i64) -> CertRecord {
        CertRecord {
            serial: serial.into(),
            udid: udid.map(str::to_string),
            subject: format!("CN={serial}"),
            issued_at,
            not_after: 2_000,
            revoked: None,
            revocation_reason: None,
            authorised_by: "ota".into(),
            superseded_by: None,
            pem: String::new(),
        }
    }

    /// A state made by `otad init`, its config path, and its CA.
    fn state() -> (tempfile::TempDir, PathBuf, CertificateAuthority) {
        let (dir, config) = crate::commands::test_state();
        let store = Store::open(config.parent().unwrap()).unwrap();
        let ca = load_ca(&store).unwrap();
        (dir, config, ca)
    }

    fn issue(ca: &CertificateAuthority, common_name: &str) -> Vec<u8> {
        let key = RsaPrivateKey::generate(2048).unwrap();
        let subject = vec![(SubjectAttribute::CommonName, common_name.to_string())];
        ca.issue(&IssueRequest {
            subject: &subject,
            public_key_spki_der: &key.public_key_spki_der(),
            serial: random_serial(),
            validity_days: 30,
            usage: KeyUsageProfile::DeviceIdentity,
        })
        .unwrap()
    }

    fn cli(args: &[&str]) -> Result<String, Exit> {
        dispatch(args.iter().map(Into::into).collect())
    }

    fn config_arg(config: &Path) -> &str {
        config.to_str().unwrap()
    }

    #[test]
    fn serials_are_taken_as_admins_type_them() {
        assert_eq!(normalize_serial("0A:1B").unwrap(), "0a1b");
        assert_eq!(normalize_serial("0x0a1b").unwrap(), "0a1b");
        assert_eq!(normalize_serial("A1B").unwrap(), "0a1b");
        assert_eq!(normalize_serial("00000a1b").unwrap(), "0a1b");
        assert_eq!(normalize_serial("000").unwrap(), "0");
        for bad in ["", "xyz", "../etc", "0a 1b", &"a".repeat(43)] {
            assert!(normalize_serial(bad).is_err(), "{bad:?}");
        }
        // 21 octets once leading zeros are gone: more than a CRL may list.
        assert_eq!(
            normalize_serial(&"1".repeat(41)).unwrap_err(),
            format!("serial {:?}: longer than 20 octets", "1".repeat(41))
        );
    }

    #[test]
    fn status_says_revoked_before_expired_before_superseded() {
        let mut revoked = record("01", Some(UDID), 10);
        revoked.revoked = Some(20);
        let older = record("02", Some(UDID), 11);
        let newest = record("03", Some(UDID), 12);
        let mut expired = record("04", None, 5);
        expired.not_after = 50;
        let mut renewed = record("05", None, 13);
        renewed.superseded_by = Some("06".into());
        let alone = record("07", None, 13);
        let names: Vec<&str> = statuses(&[revoked, older, newest, expired, renewed, alone], 100)
            .into_iter()
            .map(CertStatus::name)
            .collect();
        assert_eq!(
            names,
            [
                "revoked",
                "superseded",
                "valid",
                "expired",
                "superseded",
                "valid"
            ]
        );
    }

    #[test]
    fn status_text_says_when_and_why() {
        let mut revoked = record("01", Some(UDID), 10);
        revoked.revoked = Some(86_400);
        revoked.revocation_reason = Some("keyCompromise".into());
        assert_eq!(
            status_text(&revoked, CertStatus::Revoked),
            "revoked 1970-01-02T00:00:00Z, reason keyCompromise"
        );
        revoked.revocation_reason = None;
        assert_eq!(
            status_text(&revoked, CertStatus::Revoked),
            "revoked 1970-01-02T00:00:00Z, reason unspecified"
        );
        let mut renewed = record("02", Some(UDID), 10);
        renewed.superseded_by = Some("03".into());
        assert_eq!(
            status_text(&renewed, CertStatus::Superseded),
            "superseded by 03"
        );
        let valid = record("04", None, 10);
        assert_eq!(
            status_text(&valid, CertStatus::Valid),
            "valid until 1970-01-01T00:33:20Z"
        );
        assert_eq!(
            status_text(&valid, CertStatus::Expired),
            "expired 1970-01-01T00:33:20Z"
        );
    }

    #[test]
    fn list_columns_stay_in_line_with_40_digit_serials() {
        let long = "7a3f0c1d2e3f405162738495a6b7c8d9e0f1a2b3";
        let records = [
            record("0a1b", Some(UDID), 10),
            record(long, None, 11),
            record("0c", Some("0123456789abcdef0123456789abcdef01234567"), 12),
        ];
        let statuses = statuses(&records, 100);
        let text = list_text(&records, &statuses);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with(&format!("SERIAL{}  STATUS", " ".repeat(34))));
        // Every column after the serial starts at the same place on every line.
        for column in ["STATUS", "ISSUED", "NOT AFTER", "UDID", "SUBJECT"] {
            let at = lines[0].find(column).unwrap();
            for line in &lines[1..] {
                let before = line.get(..at).unwrap();
                assert!(before.ends_with("  "), "{column} in {line:?}\n{text}");
                assert_ne!(line.get(at..at + 1), Some(" "), "{column} in {line:?}");
            }
        }
        assert!(lines[2].starts_with(&format!("{long}  valid")), "{text}");
    }

    #[test]
    fn help_and_usage_errors() {
        assert!(cli(&[]).unwrap().contains("subcommands:"));
        for sub in ["list", "show", "revoke", "import"] {
            assert!(cli(&[sub, "--help"])
                .unwrap()
                .starts_with("usage: otad cert"));
        }
        assert!(matches!(cli(&["nope"]), Err(Exit::Usage(_))));
        assert!(matches!(
            cli(&["list"]),
            Err(Exit::Usage(m)) if m.starts_with("--config FILE or --state DIR is required")
        ));
        let mut helps = vec![cli(&["--help"]).unwrap()];
        for sub in ["list", "show", "revoke", "import"] {
            helps.push(cli(&[sub, "--help"]).unwrap());
        }
        for help in helps {
            assert!(
                help.contains("--config FILE") && help.contains("--state DIR"),
                "{help}"
            );
        }
        assert!(matches!(
            cli(&["revoke", "--config", "x.toml"]),
            Err(Exit::Usage(m)) if m.contains("SERIAL")
        ));
        assert!(matches!(
            cli(&["revoke", "--config", "x.toml", "0a", "--reason", "boredom"]),
            Err(Exit::Usage(m)) if m.contains("keyCompromise")
        ));
        assert!(matches!(
            cli(&["import", "--config", "x.toml", "--udid", "../x", "a.pem"]),
            Err(Exit::Usage(m)) if m.contains("not a UDID")
        ));
        assert!(matches!(
            cli(&["list", "--config", "/nonexistent/otad.toml"]),
            Err(Exit::Failed(_))
        ));
    }

    #[test]
    fn import_refuses_otads_own_identities() {
        let (_dir, config, _ca) = state();
        let state_dir = config.parent().unwrap().to_path_buf();
        let config = config_arg(&config);
        for own in ["ca/ra.pem", "ca/signer.pem"] {
            let path = state_dir.join(own);
            let result = cli(&["import", "--config", config, path.to_str().unwrap()]);
            let Err(Exit::Failed(message)) = result else {
                panic!("{own}: {result:?}");
            };
            assert!(message.contains("otad's own identity"), "{own}: {message}");
        }
        let store = crate::store::Store::open(&state_dir).unwrap();
        assert_eq!(store.certs().unwrap().len(), 0);
    }

    #[test]
    fn list_revoke_show_on_a_real_state() {
        let (_dir, config, ca) = state();
        let store = Store::open(config.parent().unwrap()).unwrap();
        let der = issue(&ca, UDID);
        let serial = cert::serial_hex(&der).unwrap();
        let mut issued = record(&serial, Some(UDID), store::now());
        issued.not_after = store::now() + 86_400;
        issued.pem = cert::der_to_pem(&der);
        store.create_cert(&issued).unwrap();
        let config = config_arg(&config);

        let table = cli(&["list", "--config", config]).unwrap();
        let line = table.lines().find(|l| l.starts_with(&serial)).unwrap();
        assert!(line.contains("valid") && line.contains(UDID), "{table}");

        let upper = serial.to_uppercase();
        let done = cli(&[
            "revoke",
            "--config",
            config,
            &upper,
            "--reason",
            "keyCompromise",
        ])
        .unwrap();
        assert!(done.contains(&format!("revoked {serial}")), "{done}");
        assert!(done.contains("CRL number 1"), "{done}");
        let again = cli(&["revoke", "--config", config, &serial]);
        assert!(
            matches!(&again, Err(Exit::Failed(m)) if m.contains("already revoked")),
            "{again:?}"
        );
        let unknown = cli(&["revoke", "--config", config, "0badc0de"]);
        assert!(
            matches!(&unknown, Err(Exit::Failed(m)) if m.contains("not recorded")),
            "{unknown:?}"
        );

        let rows: serde_json::Value =
            serde_json::from_str(&cli(&["list", "--config", config, "--json"]).unwrap()).unwrap();
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["serial"] == serial.as_str())
            .unwrap();
        assert_eq!(row["status"], "revoked");
        assert_eq!(row["revocation_reason"], "keyCompromise");

        let shown = cli(&["show", "--config", config, &serial]).unwrap();
        assert!(shown.contains("status: revoked"), "{shown}");
        assert!(shown.contains("(keyCompromise)"), "{shown}");
        assert!(shown.contains("-----BEGIN CERTIFICATE-----"), "{shown}");
        // As stored: the record the state log holds, times in unix seconds.
        let stored: serde_json::Value =
            serde_json::from_str(&cli(&["show", "--config", config, &serial, "--json"]).unwrap())
                .unwrap();
        let record = store.cert(&serial).unwrap().unwrap();
        assert_eq!(stored, serde_json::to_value(&record).unwrap());
        assert_eq!(stored["revocation_reason"], "keyCompromise");

        let crl_der = store.crl().unwrap().unwrap();
        let summary = crl::read(&crl_der, &ca).unwrap();
        assert_eq!(summary.number, 1);
        assert_eq!(summary.revoked.len(), 1);
        assert_eq!(summary.revoked[0].0, serial);
        assert_eq!(summary.revoked[0].2, Some(1));
    }

    #[test]
    fn import_records_what_our_key_signed_and_nothing_else() {
        let (dir, config, ca) = state();
        let store = Store::open(config.parent().unwrap()).unwrap();
        let der = issue(&ca, "old-device");
        let serial = cert::serial_hex(&der).unwrap();
        let pem_path = dir.path().join("old.pem");
        std::fs::write(&pem_path, cert::der_to_pem(&der)).unwrap();
        let config = config_arg(&config);
        let pem = pem_path.to_str().unwrap();

        let out = cli(&["import", "--config", config, pem, "--udid", UDID]).unwrap();
        assert!(out.contains(&format!("imported {serial}")), "{out}");
        let record = store.cert(&serial).unwrap().unwrap();
        assert_eq!(record.authorised_by, IMPORTED);
        assert_eq!(record.udid.as_deref(), Some(UDID));
        let device = store.device(UDID).unwrap().unwrap();
        assert_eq!(device.phase, DevicePhase::Certified);
        assert_eq!(device.certificates, vec![serial.clone()]);

        let again = cli(&["import", "--config", config, pem]).unwrap();
        assert!(again.contains("already recorded"), "{again}");

        // The CA certificate itself is skipped; a stranger's certificate fails.
        let ca_path = dir.path().join("state/ca/ca.pem");
        let skipped = cli(&["import", "--config", config, ca_path.to_str().unwrap()]).unwrap();
        assert!(skipped.contains("the CA certificate itself"), "{skipped}");
        let stranger = CertificateAuthority::create("Other", "Org", 30).unwrap();
        let foreign_path = dir.path().join("foreign.pem");
        std::fs::write(&foreign_path, cert::der_to_pem(&issue(&stranger, "x"))).unwrap();
        let refused = cli(&["import", "--config", config, foreign_path.to_str().unwrap()]);
        assert!(
            matches!(&refused, Err(Exit::Failed(m)) if m.contains("not signed by this state's CA")),
            "{refused:?}"
        );
        let two = [pem, pem];
        let with_udid = cli(&["import", "--config", config, two[0], two[1], "--udid", UDID]);
        assert!(matches!(with_udid, Err(Exit::Usage(_))));

        // A batch with one bad file records nothing, not even the good files before it.
        let good = issue(&ca, "batch-good");
        let good_path = dir.path().join("good.pem");
        std::fs::write(&good_path, cert::der_to_pem(&good)).unwrap();
        let batch = cli(&[
            "import",
            "--config",
            config,
            good_path.to_str().unwrap(),
            foreign_path.to_str().unwrap(),
        ]);
        assert!(
            matches!(&batch, Err(Exit::Failed(m)) if m.contains("nothing imported")),
            "{batch:?}"
        );
        let good_serial = cert::serial_hex(&good).unwrap();
        assert_eq!(store.cert(&good_serial).unwrap(), None, "all or nothing");
    }
}
