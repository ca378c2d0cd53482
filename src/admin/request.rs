//! `otad request`: the SCEP requests that wait for an admin under `scep.approval = "manual"`
//! — list them, approve one (its certificate is issued now), deny one. The client learns the
//! outcome on its next poll (CertPoll, or the same PKCSReq sent again).
//!
//! Decisions are taken under the state lock, so two admins (or an admin and a poll) cannot
//! both decide one request.

use std::fmt;
use std::path::{Path, PathBuf};

use lexopt::prelude::*;

use super::{Args, Exit};
use crate::context::Context;
use crate::issuance;
use crate::pki::{cert, csr, PkiError};
use crate::store::{self, now, CertRecord, Decision, PendingRequest, StoreError};

/// The longest `--reason` accepted, in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// What a denial says when the admin gives no reason.
pub const DEFAULT_REASON: &str = "denied by an admin";

/// What an approved certificate's record says authorised it.
pub const APPROVED_BY: &str = "approved";

/// The remote a device's history names for an approval.
const APPROVAL_REMOTE: &str = "otad request approve";

const HELP: &str = "\
usage: otad request list (--config FILE | --state DIR) [--json]
       otad request approve (--config FILE | --state DIR) ID
       otad request deny (--config FILE | --state DIR) ID [--reason R]

With scep.approval = \"manual\", a SCEP enrollment request (PKCSReq) that passes every check,
its challenge included, waits here for an admin, and the client polls until it is decided.
A request nobody decides within 7 days is denied.

  list      every request kept: id, status, subject, device, times
  approve   issue the certificate now; the client gets it on its next poll
  deny      refuse the request; the client gets FAILURE on its next poll

Every subcommand takes --config FILE (the state's otad.toml) or --state DIR (the state dir
otad init made, holding otad.toml). `otad request <subcommand> --help` explains each.
";

const LIST_HELP: &str = "\
usage: otad request list (--config FILE | --state DIR) [--json]

Lists every request kept, oldest first, under a header row: id, status (pending, approved,
denied), when it came, the device it is bound to, what authorised it, the subject it will
get, and the outcome: expires=TIME for a pending one, serial=SERIAL for an approved one,
reason=\"...\" for a denied one. Decided requests are kept 30 days.

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
  --json          one JSON array of objects instead of the table
";

const APPROVE_HELP: &str = "\
usage: otad request approve (--config FILE | --state DIR) ID

Issues the certificate for pending request ID now and records it; the client receives it on
its next poll. Safe while otad serve runs.

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
  ID              the request's id, as `otad request list` shows it
";

const DENY_HELP: &str = "\
usage: otad request deny (--config FILE | --state DIR) ID [--reason R]

Denies pending request ID; the client gets a CertRep FAILURE (badRequest) on its next poll.

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
  ID              the request's id, as `otad request list` shows it
  --reason R      why, for the record and the server log (at most 200 characters)
";

/// One `otad request` command line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A help text to print.
    Help(&'static str),
    /// `list`.
    List {
        /// The config file.
        config: PathBuf,
        /// JSON instead of text.
        json: bool,
    },
    /// `approve`.
    Approve {
        /// The config file.
        config: PathBuf,
        /// The request id.
        id: String,
    },
    /// `deny`.
    Deny {
        /// The config file.
        config: PathBuf,
        /// The request id.
        id: String,
        /// Why.
        reason: String,
    },
}

/// Why a decision could not be taken.
#[derive(Debug)]
#[non_exhaustive]
pub enum RequestError {
    /// The config or the state could not be loaded.
    Load(String),
    /// The state dir failed.
    Store(StoreError),
    /// No request has this id.
    NotFound(String),
    /// The request was already approved (with this serial).
    AlreadyApproved {
        /// The request id.
        id: String,
        /// The serial issued.
        serial: String,
    },
    /// The request was already denied or expired (for this reason).
    AlreadyDenied {
        /// The request id.
        id: String,
        /// Why it was denied.
        reason: String,
    },
    /// The stored request cannot be issued as it is.
    Unusable {
        /// The request id.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Issuing failed.
    Issuing {
        /// The request id.
        id: String,
        /// Why.
        source: PkiError,
    },
    /// The certificate was issued but the device record could not be updated.
    DeviceNotUpdated {
        /// The request id.
        id: String,
        /// The certificate serial.
        serial: String,
        /// Why.
        reason: String,
    },
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Load(why) => f.write_str(why),
            RequestError::Store(err) => write!(f, "{err}"),
            RequestError::NotFound(id) => write!(f, "request {id}: not found"),
            RequestError::AlreadyApproved { id, serial } => {
                write!(f, "request {id}: already approved (certificate {serial})")
            }
            RequestError::AlreadyDenied { id, reason } => {
                write!(
                    f,
                    "request {id}: already denied ({})",
                    crate::logger::one_line(reason, usize::MAX)
                )
            }
            RequestError::Unusable { id, reason } => write!(f, "request {id}: {reason}"),
            RequestError::Issuing { id, source } => write!(f, "request {id}: issuing: {source}"),
            RequestError::DeviceNotUpdated { id, serial, reason } => write!(
                f,
                "request {id}: certificate {serial} issued, but the device record was not \
                 updated: {reason}"
            ),
        }
    }
}

impl std::error::Error for RequestError {}

impl From<StoreError> for RequestError {
    fn from(err: StoreError) -> Self {
        RequestError::Store(err)
    }
}

/// Runs `otad request` with its arguments.
pub fn run(args: Args) -> Exit {
    let command = match parse(args) {
        Ok(command) => command,
        Err(message) => return Exit::Usage(message),
    };
    match execute(&command) {
        Ok(output) => {
            super::emit(&output);
            Exit::Ok
        }
        Err(err) => Exit::Failed(err.to_string()),
    }
}

/// Parses the arguments after `otad request`.
pub fn parse(args: Args) -> Result<Command, String> {
    let mut parser = lexopt::Parser::from_args(args);
    let subcommand = match parser.next().map_err(|err| err.to_string())? {
        Some(Value(value)) => value.string().map_err(|err| err.to_string())?,
        Some(Long("help")) | Some(Short('h')) => return Ok(Command::Help(HELP)),
        None => return Err(format!("request: a subcommand is needed\n\n{HELP}")),
        Some(other) => return Err(other.unexpected().to_string()),
    };
    let help = match subcommand.as_str() {
        "list" => LIST_HELP,
        "approve" => APPROVE_HELP,
        "deny" => DENY_HELP,
        "help" => return Ok(Command::Help(HELP)),
        other => {
            return Err(format!(
                "request: unknown subcommand {:?}; see otad request --help",
                crate::logger::one_line(other, usize::MAX)
            ))
        }
    };

    let (mut config, mut id, mut json, mut reason) = (None, None, false, None);
    while let Some(arg) = parser.next().map_err(|err| err.to_string())? {
        match arg {
            Long("config") => {
                config = Some(PathBuf::from(parser.value().map_err(|e| e.to_string())?))
            }
            Long("json") if subcommand == "list" => json = true,
            Long("reason") if subcommand == "deny" => {
                let value = parser.value().map_err(|e| e.to_string())?;
                reason = Some(value.string().map_err(|e| e.to_string())?);
            }
            Long("help") | Short('h') => return Ok(Command::Help(help)),
            Value(value) if subcommand != "list" && id.is_none() => {
                id = Some(value.string().map_err(|e| e.to_string())?);
            }
            other => return Err(other.unexpected().to_string()),
        }
    }

    let config = config.ok_or_else(|| format!("{}\n\n{help}", super::STATE_REQUIRED))?;
    if subcommand == "list" {
        return Ok(Command::List { config, json });
    }
    let id = id.ok_or_else(|| format!("ID is required\n\n{help}"))?;
    if !store::valid_pending_id(&id) {
        return Err(format!(
            "{:?}: not a request id (32 lowercase hex digits, as `otad request list` shows)",
            crate::logger::one_line(&id, usize::MAX)
        ));
    }
    if subcommand == "approve" {
        return Ok(Command::Approve { config, id });
    }
    let reason = reason.unwrap_or_else(|| DEFAULT_REASON.to_string());
    if reason.trim().is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(format!(
            "--reason: 1 to {MAX_REASON_CHARS} characters, not only spaces"
        ));
    }
    Ok(Command::Deny { config, id, reason })
}

/// Carries out a parsed command; returns what to print.
pub fn execute(command: &Command) -> Result<String, RequestError> {
    match command {
        Command::Help(text) => Ok((*text).to_string()),
        Command::List { config, json } => {
            let ctx = load(config)?;
            let requests = ctx.store.pending_requests(now())?;
            Ok(if *json {
                list_json(&requests)
            } else {
                list_text(&requests)
            })
        }
        Command::Approve { config, id } => {
            let ctx = load(config)?;
            let (request, record) = approve(&ctx, id, now())?;
            Ok(format!(
                "request {id}: approved; issued certificate {} to {}{}\n",
                record.serial,
                crate::logger::one_line(&record.subject, usize::MAX),
                request
                    .udid
                    .as_deref()
                    .map(|udid| format!(" (device {udid})"))
                    .unwrap_or_default()
            ))
        }
        Command::Deny { config, id, reason } => {
            let ctx = load(config)?;
            deny(&ctx, id, reason, now())?;
            Ok(format!("request {id}: denied\n"))
        }
    }
}

fn load(config: &Path) -> Result<Context, RequestError> {
    Context::load(config).map_err(RequestError::Load)
}

/// Approves request `id` at `at`: issues its certificate and records the result on the
/// request, under the state lock; then gives the device its new serial.
pub fn approve(
    ctx: &Context,
    id: &str,
    at: i64,
) -> Result<(PendingRequest, CertRecord), RequestError> {
    let (request, record) = ctx.store.transaction(|| {
        let mut request = undecided(ctx, id, at)?;
        if let Some(udid) = &request.udid {
            // A device blocked after its request was queued is not approved behind the
            // admin's back: unblock it first, or deny the request.
            crate::decide::check_scep(ctx, udid).map_err(|reason| RequestError::Unusable {
                id: id.to_string(),
                reason: format!("{reason}; unblock it first or deny the request"),
            })?;
        }
        let record = issue(ctx, &request, at)?;
        request.decision = Decision::Approved {
            decided_at: at,
            serial: record.serial.clone(),
            certificate: record.pem.clone(),
        };
        ctx.store.save_pending(&request)?;
        Ok::<_, RequestError>((request, record))
    })?;

    // The device update takes the state lock itself, so it follows the transaction, as it
    // follows issuance on the PKCSReq path.
    if let Some(udid) = &request.udid {
        crate::ota::certificate_issued(ctx, udid, &record.serial, APPROVAL_REMOTE, at).map_err(
            |err| RequestError::DeviceNotUpdated {
                id: id.to_string(),
                serial: record.serial.clone(),
                reason: err.to_string(),
            },
        )?;
    }
    log::info!(
        "request {id}: approved; issued certificate {}",
        record.serial
    );
    Ok((request, record))
}

/// Denies request `id` at `at` with `reason`, under the state lock.
pub fn deny(ctx: &Context, id: &str, reason: &str, at: i64) -> Result<(), RequestError> {
    ctx.store.transaction(|| {
        let mut request = undecided(ctx, id, at)?;
        request.decision = Decision::Denied {
            decided_at: at,
            reason: reason.to_string(),
        };
        ctx.store.save_pending(&request)?;
        Ok(())
    })
}

/// The request `id` if it still waits (inside the state lock). One that expired is saved as
/// denied, so the file says what every reader sees.
fn undecided(ctx: &Context, id: &str, at: i64) -> Result<PendingRequest, RequestError> {
    let request = ctx
        .store
        .pending_request(id, at)?
        .ok_or_else(|| RequestError::NotFound(id.to_string()))?;
    match &request.decision {
        Decision::Pending => Ok(request),
        Decision::Approved { serial, .. } => Err(RequestError::AlreadyApproved {
            id: id.to_string(),
            serial: serial.clone(),
        }),
        Decision::Denied { reason, .. } => {
            let reason = reason.clone();
            if reason == store::EXPIRED_REASON {
                ctx.store.save_pending(&request)?;
            }
            Err(RequestError::AlreadyDenied {
                id: id.to_string(),
                reason,
            })
        }
    }
}

/// Issues and records the certificate a request asked for.
fn issue(ctx: &Context, request: &PendingRequest, at: i64) -> Result<CertRecord, RequestError> {
    let unusable = |reason: String| RequestError::Unusable {
        id: request.id.clone(),
        reason,
    };
    let csr_der = cert::pem_blocks(&request.csr)
        .map_err(|err| unusable(format!("stored CSR: {err}")))?
        .into_iter()
        .find(|block| block.label == "CERTIFICATE REQUEST")
        .map(|block| block.der)
        .ok_or_else(|| unusable("stored CSR: no CERTIFICATE REQUEST block".into()))?;
    let csr = csr::parse(&csr_der).map_err(|err| unusable(format!("stored CSR: {err}")))?;

    let grant = issuance::Grant {
        subject: &request.subject,
        udid: request.udid.as_deref(),
        authorised_by: APPROVED_BY,
        remote: APPROVAL_REMOTE,
    };
    let (_, record) =
        issuance::issue(ctx, &csr.public_key_spki_der, &grant, at).map_err(|err| match err {
            issuance::IssueError::Store(err) => RequestError::from(err),
            other => unusable(other.to_string()),
        })?;
    Ok(record)
}

fn subject_text(subject: &[(String, String)]) -> String {
    subject
        .iter()
        .map(|(kind, value)| format!("{kind}={value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn status_name(decision: &Decision) -> &'static str {
    match decision {
        Decision::Pending => "pending",
        Decision::Approved { .. } => "approved",
        Decision::Denied { .. } => "denied",
    }
}

/// The table `list` prints: a header row, then one row a request (id, status, created,
/// device, what authorised it, subject, outcome), the text columns as wide as their longest
/// value and what a client sent escaped.
fn list_text(requests: &[PendingRequest]) -> String {
    if requests.is_empty() {
        return "no requests\n".into();
    }
    let one_line = |text: &str| crate::logger::one_line(text, usize::MAX);
    let rows: Vec<[String; 3]> = requests
        .iter()
        .map(|request| {
            [
                request.udid.as_deref().map_or("-".to_string(), one_line),
                one_line(&request.authorised_by),
                one_line(&subject_text(&request.subject)),
            ]
        })
        .collect();
    let width = |header: &str, column: usize| {
        let values = rows.iter().filter_map(|row| row.get(column));
        super::column_width(header, values.map(String::as_str))
    };
    let id = super::column_width("ID", requests.iter().map(|r| r.id.as_str()));
    let (udid, by, subject) = (width("UDID", 0), width("BY", 1), width("SUBJECT", 2));

    let mut out = format!(
        "{:<id$}  {:<8}  {:<20}  {:<udid$}  {:<by$}  {:<subject$}  OUTCOME\n",
        "ID", "STATUS", "CREATED", "UDID", "BY", "SUBJECT"
    );
    for (request, [c_udid, c_by, c_subject]) in requests.iter().zip(&rows) {
        let outcome = match &request.decision {
            Decision::Pending => format!("expires={}", crate::store::rfc3339(request.expires())),
            Decision::Approved { serial, .. } => format!("serial={serial}"),
            Decision::Denied { reason, .. } => format!("reason={:?}", one_line(reason)),
        };
        out.push_str(&format!(
            "{:<id$}  {:<8}  {:<20}  {c_udid:<udid$}  {c_by:<by$}  {c_subject:<subject$}  \
             {outcome}\n",
            request.id,
            status_name(&request.decision),
            crate::store::rfc3339(request.created),
        ));
    }
    out
}

/// One JSON array; each object names the request and its state.
fn list_json(requests: &[PendingRequest]) -> String {
    let objects: Vec<serde_json::Value> = requests
        .iter()
        .map(|request| {
            let (decided_at, serial, reason) = match &request.decision {
                Decision::Pending => (None, None, None),
                Decision::Approved {
                    decided_at, serial, ..
                } => (
                    Some(crate::store::rfc3339(*decided_at)),
                    Some(serial.clone()),
                    None,
                ),
                Decision::Denied { decided_at, reason } => (
                    Some(crate::store::rfc3339(*decided_at)),
                    None,
                    Some(reason.clone()),
                ),
            };
            serde_json::json!({
                "id": request.id,
                "status": status_name(&request.decision),
                "transaction_id": request.transaction_id,
                "subject": subject_text(&request.subject),
                "udid": request.udid,
                "authorised_by": request.authorised_by,
                "remote": request.remote,
                "created": crate::store::rfc3339(request.created),
                "expires": request.is_pending().then(|| crate::store::rfc3339(request.expires())),
                "decided_at": decided_at,
                "serial": serial,
                "reason": reason,
            })
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&objects).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::ffi::OsString;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn args(list: &[&str]) -> Args {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn command_lines_parse_or_say_why_not() {
        assert_eq!(
            parse(args(&["list", "--config", "a.toml", "--json"])).unwrap(),
            Command::List {
                config: "a.toml".into(),
                json: true
            }
        );
        assert_eq!(
            parse(args(&["approve", ID, "--config", "a.toml"])).unwrap(),
            Command::Approve {
                config: "a.toml".into(),
                id: ID.into()
            }
        );
        assert_eq!(
            parse(args(&["deny", "--config", "a.toml", ID])).unwrap(),
            Command::Deny {
                config: "a.toml".into(),
                id: ID.into(),
                reason: DEFAULT_REASON.into()
            }
        );
        assert_eq!(
            parse(args(&[
                "deny",
                "--config",
                "c",
                ID,
                "--reason",
                "unknown device"
            ]))
            .unwrap(),
            Command::Deny {
                config: "c".into(),
                id: ID.into(),
                reason: "unknown device".into()
            }
        );
        assert_eq!(parse(args(&["--help"])).unwrap(), Command::Help(HELP));
        assert_eq!(
            parse(args(&["deny", "--help"])).unwrap(),
            Command::Help(DENY_HELP)
        );

        let err = parse(args(&[])).unwrap_err();
        assert!(err.starts_with("request: a subcommand is needed"), "{err}");
        let err = parse(args(&["revoke"])).unwrap_err();
        assert!(err.contains("unknown subcommand \"revoke\""), "{err}");
        let err = parse(args(&["approve", ID])).unwrap_err();
        assert!(
            err.starts_with("--config FILE or --state DIR is required"),
            "{err}"
        );
        for help in [HELP, LIST_HELP, APPROVE_HELP, DENY_HELP] {
            assert!(
                help.contains("--config FILE") && help.contains("--state DIR"),
                "{help}"
            );
        }
        let err = parse(args(&["approve", "--config", "c"])).unwrap_err();
        assert!(err.starts_with("ID is required"), "{err}");
        let err = parse(args(&["approve", "--config", "c", "../etc"])).unwrap_err();
        assert!(err.contains("not a request id"), "{err}");
        assert!(parse(args(&["approve", "--config", "c", ID, ID])).is_err());
        assert!(parse(args(&["list", "--config", "c", "--reason", "x"])).is_err());
        assert!(parse(args(&["approve", "--config", "c", ID, "--json"])).is_err());
        let long = "x".repeat(MAX_REASON_CHARS + 1);
        assert!(parse(args(&["deny", "--config", "c", ID, "--reason", &long])).is_err());
        assert!(parse(args(&["deny", "--config", "c", ID, "--reason", " "])).is_err());
    }

    fn request(decision: Decision) -> PendingRequest {
        PendingRequest {
            id: ID.into(),
            transaction_id: "T".into(),
            csr: String::new(),
            subject: vec![
                ("CN".into(), "dev\u{1b}[31m".into()),
                ("O".into(), "Org".into()),
            ],
            udid: Some("UDID-1".into()),
            authorised_by: "ota".into(),
            requester: String::new(),
            remote: "127.0.0.1:9".into(),
            created: 0,
            decision,
        }
    }

    #[test]
    fn lists_escape_what_clients_sent_and_show_the_state() {
        assert_eq!(list_text(&[]), "no requests\n");
        let text = list_text(&[request(Decision::Pending)]);
        assert_eq!(
            text,
            format!(
                "ID{}  STATUS    CREATED               UDID    BY   SUBJECT{}  OUTCOME\n\
                 {ID}  pending   1970-01-01T00:00:00Z  UDID-1  ota  CN=dev\\u{{1b}}[31m, O=Org  \
                 expires=1970-01-08T00:00:00Z\n",
                " ".repeat(30),
                " ".repeat(16),
            )
        );
        let denied = request(Decision::Denied {
            decided_at: 60,
            reason: "no".into(),
        });
        let mut approved = request(Decision::Approved {
            decided_at: 60,
            serial: "0a1b".into(),
            certificate: String::new(),
        });
        approved.udid = None;
        approved.authorised_by = "static".into();
        approved.subject = vec![("CN".into(), "a-much-longer-subject-than-the-other".into())];
        let both = list_text(&[denied.clone(), approved]);
        let lines: Vec<&str> = both.lines().collect();
        assert_eq!(lines.len(), 3, "{both}");
        assert!(lines[1].contains("denied    1970"), "{both}");
        assert!(lines[1].ends_with("  reason=\"no\""), "{both}");
        assert!(
            lines[2].contains("  -       static  CN=a-much-longer"),
            "{both}"
        );
        assert!(lines[2].ends_with("  serial=0a1b"), "{both}");
        for column in ["STATUS", "CREATED", "UDID", "BY", "SUBJECT", "OUTCOME"] {
            let at = lines[0].find(column).unwrap();
            for line in &lines[1..] {
                assert!(line.get(..at).unwrap().ends_with("  "), "{column}: {both}");
                assert_ne!(line.get(at..at + 1), Some(" "), "{column}: {both}");
            }
        }
        let json: serde_json::Value = serde_json::from_str(&list_json(&[denied])).unwrap();
        assert_eq!(json[0]["status"], "denied");
        assert_eq!(json[0]["reason"], "no");
        assert_eq!(json[0]["decided_at"], "1970-01-01T00:01:00Z");
        assert_eq!(json[0]["expires"], serde_json::Value::Null);
        assert_eq!(json[0]["subject"], "CN=dev\u{1b}[31m, O=Org");
    }

    #[test]
    fn errors_name_the_request_first() {
        let err = RequestError::AlreadyApproved {
            id: ID.into(),
            serial: "0a".into(),
        };
        assert_eq!(
            err.to_string(),
            format!("request {ID}: already approved (certificate 0a)")
        );
        assert_eq!(
            RequestError::NotFound(ID.into()).to_string(),
            format!("request {ID}: not found")
        );
    }

    /// A real state dir (made by `otad init`) with one pending request in it.
    fn state_with_a_request() -> (tempfile::TempDir, Context, PendingRequest) {
        let (dir, config) = crate::commands::test_state();
        let ctx = Context::load(&config).unwrap();
        let key = crate::pki::keys::RsaPrivateKey::generate(2048).unwrap();
        let csr_der = csr::build(&key, "static-client", Some("x")).unwrap();
        let mut pending = request(Decision::Pending);
        pending.csr = cert::encode_pem("CERTIFICATE REQUEST", &csr_der);
        pending.subject = vec![("CN".into(), "static-client".into())];
        pending.udid = None;
        pending.created = now();
        ctx.store.create_pending(&pending).unwrap();
        (dir, ctx, pending)
    }

    #[test]
    fn a_request_of_a_device_blocked_since_it_was_queued_is_not_approved() {
        let (_dir, ctx, mut pending) = state_with_a_request();
        let udid = "0000FE00-ABCDEF0123456789";
        pending.udid = Some(udid.into());
        ctx.store.save_pending(&pending).unwrap();
        let device = crate::store::DeviceRecord {
            udid: udid.into(),
            attributes: BTreeMap::from([("SERIAL".into(), "C02BLOCK9".into())]),
            phase: crate::store::DevicePhase::Identified,
            first_seen: 1,
            last_seen: 1,
            certificates: Vec::new(),
            history: Vec::new(),
            admission: Default::default(),
            hook_variables: Default::default(),
        };
        ctx.store.save_device(&device).unwrap();
        let block = crate::store::blocked::BlockRecord {
            serial: "C02BLOCK9".into(),
            reason: None,
            at: 1,
        };
        ctx.store.block(&block).unwrap();

        let err = approve(&ctx, ID, now()).unwrap_err();
        assert!(
            err.to_string()
                .contains("serial C02BLOCK9: blocked by admin; unblock it first"),
            "{err}"
        );
        assert!(ctx.store.certs().unwrap().is_empty(), "nothing issued");

        assert!(ctx.store.unblock("C02BLOCK9").unwrap());
        let (_, record) = approve(&ctx, ID, now()).unwrap();
        assert!(ctx.store.cert(&record.serial).unwrap().is_some());
    }

    #[test]
    fn approval_issues_once_and_records_the_certificate() {
        let (_dir, ctx, pending) = state_with_a_request();
        let at = now();
        let (approved, record) = approve(&ctx, ID, at).unwrap();
        assert_eq!(record.subject, "CN=static-client");
        assert_eq!(record.authorised_by, APPROVED_BY);
        assert_eq!(ctx.store.cert(&record.serial).unwrap().unwrap(), record);
        let stored = ctx.store.pending_request(ID, at).unwrap().unwrap();
        assert_eq!(stored, approved);
        let Decision::Approved {
            serial,
            certificate,
            ..
        } = &stored.decision
        else {
            panic!("not approved: {stored:?}");
        };
        assert_eq!(serial, &record.serial);
        let issued = cert::pem_to_der(certificate).unwrap();
        assert!(ctx.ca.issued(&issued));
        let csr_key = csr::parse(&cert::pem_blocks(&pending.csr).unwrap()[0].der)
            .unwrap()
            .public_key_spki_der;
        assert_eq!(cert::spki_der(&issued).unwrap(), csr_key);

        assert!(matches!(
            approve(&ctx, ID, at),
            Err(RequestError::AlreadyApproved { .. })
        ));
        assert!(matches!(
            deny(&ctx, ID, "late", at),
            Err(RequestError::AlreadyApproved { .. })
        ));
        assert_eq!(ctx.store.certs().unwrap().len(), 1, "issued once");
    }

    #[test]
    fn denial_and_expiry_are_final() {
        let (_dir, ctx, pending) = state_with_a_request();
        deny(&ctx, ID, "unknown client", now()).unwrap();
        assert!(matches!(
            approve(&ctx, ID, now()),
            Err(RequestError::AlreadyDenied { ref reason, .. }) if reason == "unknown client"
        ));
        assert!(ctx.store.certs().unwrap().is_empty());

        let mut old = pending;
        old.id = "fedcba9876543210fedcba9876543210".into();
        old.created = now() - store::PENDING_TTL_SECONDS - 1;
        ctx.store.create_pending(&old).unwrap();
        let err = approve(&ctx, &old.id, now()).unwrap_err();
        assert!(matches!(err, RequestError::AlreadyDenied { .. }), "{err}");
        let text =
            std::fs::read_to_string(ctx.store.path(&format!("pending/{}.json", old.id))).unwrap();
        assert!(
            text.contains("\"status\": \"denied\""),
            "saved as denied: {text}"
        );
        assert!(matches!(
            approve(&ctx, "00000000000000000000000000000000", now()),
            Err(RequestError::NotFound(_))
        ));
    }
}
