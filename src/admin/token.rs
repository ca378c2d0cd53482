//! `otad token`: enrollment tokens — make one (its secret and enroll link are shown once),
//! list them, show one with its uses, revoke one. Safe while `otad serve` runs: every write
//! takes the state lock.

use std::path::PathBuf;

use lexopt::prelude::*;
use serde_json::json;

use super::{Args, Exit};
use crate::config::{parse_duration, Config};
use crate::gate::tokens::{self, NewToken, TokenRecord, TokenScope};
use crate::logger::one_line;
use crate::store::{now, rfc3339, Store};

/// How long a token lives unless `--expires` says otherwise.
pub const DEFAULT_LIFETIME: &str = "7d";

/// The longest `--expires` accepted.
pub const MAX_LIFETIME_SECS: u64 = 366 * 86_400;

const HELP: &str = "\
usage: otad token new (--config FILE | --state DIR) [--uses N] [--expires DUR]
                      [--serial S | --udid U] [--note TEXT]
       otad token list (--config FILE | --state DIR) [--json]
       otad token show (--config FILE | --state DIR) ID
       otad token revoke (--config FILE | --state DIR) ID

An enrollment token is a secret in the enroll link (<server.url>/ota/enroll?token=...). With
ota.require_token = true, phase 1 needs one; a use is spent when the device answers in
phase 2, so opening the link twice costs nothing. Only the token's SHA-256 is stored: the
secret is shown once, by `new`. ID is the token's public id (12 hex digits).

Every subcommand takes --config FILE (the state's otad.toml) or --state DIR (the state dir
otad init made, holding otad.toml). `otad token <subcommand> --help` explains each.
";

const NEW_HELP: &str = "\
usage: otad token new (--config FILE | --state DIR) [--uses N] [--expires DUR]
                      [--serial S | --udid U] [--note TEXT]

Makes a token and prints it with its enroll link (server.url from the config). The secret
is shown only now.

  --config FILE    the otad.toml of the state
  --state DIR      the state dir (its otad.toml)
  --uses N         how many devices may enroll with it (default 1)
  --expires DUR    how long it is valid, with a unit: 90m, 12h, 7d (default 7d, at most
                   366d)
  --serial S       only the device whose signed SERIAL is S may use it
  --udid U         only the device whose signed UDID is U may use it
  --note TEXT      a note for admins (who it is for); recorded on the device
";

const LIST_HELP: &str = "\
usage: otad token list (--config FILE | --state DIR) [--json]

Lists every token, oldest first: id, status (active, used-up, expired, revoked), uses
spent of allowed, expiry, scope, note.

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
  --json          one JSON array of objects, with each token's uses
";

const SHOW_HELP: &str = "\
usage: otad token show (--config FILE | --state DIR) ID

Shows one token and every use of it (when, which device, from where).

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
  ID              the token's id, as `otad token list` shows it
";

const REVOKE_HELP: &str = "\
usage: otad token revoke (--config FILE | --state DIR) ID

Revokes a token: phase 1 refuses it from now on, and so does phase 2 for enrollments that
started with it and have not reached phase 2 yet.

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
  ID              the token's id, as `otad token list` shows it
";

/// Runs `otad token` with its arguments.
pub fn run(args: Args) -> Exit {
    super::run_subcommand("token", HELP, SUBCOMMANDS, args)
}

const SUBCOMMANDS: &[(&str, super::Subcommand)] = &[
    ("new", new),
    ("list", list),
    ("show", |parser| show_or_revoke(parser, false)),
    ("revoke", |parser| show_or_revoke(parser, true)),
];

#[cfg(test)]
fn dispatch(args: Args) -> Result<String, Exit> {
    super::dispatch("token", HELP, SUBCOMMANDS, args)
}

use super::usage;

fn failed(err: impl std::fmt::Display) -> Exit {
    Exit::Failed(err.to_string())
}

/// Where the state is: `--state DIR` (its otad.toml) or `--config FILE`.
#[derive(Debug, Default)]
pub(crate) struct StateArg {
    /// `--state DIR`.
    pub(crate) state: Option<PathBuf>,
    /// `--config FILE`.
    pub(crate) config: Option<PathBuf>,
}

impl StateArg {
    /// The config (for server.url) and the open store.
    pub(crate) fn open(&self, help: &str) -> Result<(Config, Store), Exit> {
        let config_path = match (&self.state, &self.config) {
            (Some(dir), None) => dir.join("otad.toml"),
            (None, Some(file)) => file.clone(),
            (Some(_), Some(_)) => {
                return Err(Exit::Usage(format!(
                    "give --state or --config, not both\n\n{help}"
                )))
            }
            (None, None) => {
                return Err(Exit::Usage(format!("{}\n\n{help}", super::STATE_REQUIRED)))
            }
        };
        let (config, derived) = Config::load(&config_path).map_err(failed)?;
        let store = Store::open(&derived.state_dir).map_err(failed)?;
        Ok((config, store))
    }
}

fn new(mut parser: lexopt::Parser) -> Result<String, Exit> {
    let mut state = StateArg::default();
    let (mut uses, mut expires, mut note) = (1u32, DEFAULT_LIFETIME.to_string(), String::new());
    let mut scope = None;
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Long("state") => state.state = Some(PathBuf::from(parser.value().map_err(usage)?)),
            Long("config") => state.config = Some(PathBuf::from(parser.value().map_err(usage)?)),
            Long("uses") => {
                let text = parser.value().map_err(usage)?.string().map_err(usage)?;
                uses = text.parse().map_err(|_| {
                    Exit::Usage(format!("--uses {text:?}: give a number\n\n{NEW_HELP}"))
                })?;
            }
            Long("expires") => expires = parser.value().map_err(usage)?.string().map_err(usage)?,
            Long("note") => note = parser.value().map_err(usage)?.string().map_err(usage)?,
            Long("serial") | Long("udid") if scope.is_some() => {
                return Err(Exit::Usage(format!(
                    "--serial and --udid: give one at most\n\n{NEW_HELP}"
                )))
            }
            Long("serial") => {
                let value = parser.value().map_err(usage)?.string().map_err(usage)?;
                scope = Some(TokenScope::Serial(value.trim().to_ascii_uppercase()));
            }
            Long("udid") => {
                let value = parser.value().map_err(usage)?.string().map_err(usage)?;
                scope = Some(TokenScope::Udid(value.trim().to_string()));
            }
            Long("help") | Short('h') => return Ok(NEW_HELP.to_string()),
            other => return Err(usage(other.unexpected())),
        }
    }
    // A bare number would be seconds, as in the config; here "7" is far likelier meant as
    // days, so a unit is required.
    let has_unit = expires.trim().ends_with(|c: char| c.is_ascii_alphabetic());
    let lifetime = parse_duration(&expires)
        .ok()
        .filter(|d| has_unit && d.as_secs() > 0 && d.as_secs() <= MAX_LIFETIME_SECS)
        .ok_or_else(|| {
            Exit::Usage(format!(
                "--expires {expires:?}: give a duration like 90m, 12h or 7d, at most 366d\n\n\
                 {NEW_HELP}"
            ))
        })?;
    let request = NewToken {
        uses,
        lifetime: i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX),
        scope,
        note,
    };
    // A flag value otad cannot take is a wrong command line (exit 2), found before the
    // state is opened.
    tokens::check_new(&request).map_err(|why| Exit::Usage(format!("{why}\n\n{NEW_HELP}")))?;
    let (config, store) = state.open(NEW_HELP)?;
    let (secret, record) = tokens::create(&store, &request, now()).map_err(failed)?;
    let mut text = format!(
        "token: {secret}\nid: {}\nurl: {}/ota/enroll?token={secret}\nuses: {}\nexpires: {}\n",
        record.id,
        config.server.url,
        record.uses,
        rfc3339(record.expires)
    );
    if let Some(scope) = &record.scope {
        text.push_str(&format!("scope: {scope}\n"));
    }
    if !record.note.is_empty() {
        text.push_str(&format!("note: {}\n", record.note));
    }
    eprintln!("otad token: the token is shown only now; otad keeps only its hash");
    if !config.ota.challenge.is_empty() {
        eprintln!(
            "otad token: warning: {}",
            crate::gate::STATIC_CHALLENGE_TOKEN
        );
    }
    Ok(text)
}

fn record_json(record: &TokenRecord, at: i64) -> serde_json::Value {
    json!({
        "id": record.id,
        "status": record.status(at).as_str(),
        "uses": record.uses,
        "used": record.used,
        "uses_left": record.uses_left(),
        "created": rfc3339(record.created),
        "expires": rfc3339(record.expires),
        "scope": record.scope.as_ref().map(ToString::to_string),
        "note": record.note,
        "revoked": record.revoked.map(rfc3339),
        "history": record.history.iter().map(|u| json!({
            "at": rfc3339(u.at),
            "udid": u.udid,
            "serial": u.serial,
            "remote": u.remote,
        })).collect::<Vec<_>>(),
    })
}

fn list(mut parser: lexopt::Parser) -> Result<String, Exit> {
    let mut state = StateArg::default();
    let mut as_json = false;
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Long("state") => state.state = Some(PathBuf::from(parser.value().map_err(usage)?)),
            Long("config") => state.config = Some(PathBuf::from(parser.value().map_err(usage)?)),
            Long("json") => as_json = true,
            Long("help") | Short('h') => return Ok(LIST_HELP.to_string()),
            other => return Err(usage(other.unexpected())),
        }
    }
    let (_, store) = state.open(LIST_HELP)?;
    let records = tokens::list(&store).map_err(failed)?;
    let at = now();
    if as_json {
        let rows: Vec<serde_json::Value> = records.iter().map(|r| record_json(r, at)).collect();
        let mut text = serde_json::to_string_pretty(&rows).map_err(failed)?;
        text.push('\n');
        return Ok(text);
    }
    let mut text = format!(
        "{:<12}  {:<8}  {:>13}  {:<20}  {:<30}  NOTE\n",
        "ID", "STATUS", "USED/USES", "EXPIRES", "SCOPE"
    );
    for record in &records {
        let scope = record
            .scope
            .as_ref()
            .map_or_else(|| "-".to_string(), ToString::to_string);
        text.push_str(&format!(
            "{:<12}  {:<8}  {:>13}  {:<20}  {:<30}  {}\n",
            record.id,
            record.status(at).as_str(),
            format!("{}/{}", record.used, record.uses),
            rfc3339(record.expires),
            scope,
            one_line(&record.note, 80)
        ));
    }
    Ok(text)
}

fn show_or_revoke(mut parser: lexopt::Parser, revoke: bool) -> Result<String, Exit> {
    let help = if revoke { REVOKE_HELP } else { SHOW_HELP };
    let mut state = StateArg::default();
    let mut id = None;
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Long("state") => state.state = Some(PathBuf::from(parser.value().map_err(usage)?)),
            Long("config") => state.config = Some(PathBuf::from(parser.value().map_err(usage)?)),
            Value(value) if id.is_none() => id = Some(value.string().map_err(usage)?),
            Long("help") | Short('h') => return Ok(help.to_string()),
            other => return Err(usage(other.unexpected())),
        }
    }
    let id = id.ok_or_else(|| Exit::Usage(format!("ID is required\n\n{help}")))?;
    tokens::check_id(&id).map_err(|why| Exit::Usage(format!("{why}\n\n{help}")))?;
    let (_, store) = state.open(help)?;
    let at = now();
    if revoke {
        let record = tokens::revoke(&store, &id, at).map_err(failed)?;
        return Ok(format!(
            "revoked enrollment token {} at {}\n",
            record.id,
            rfc3339(record.revoked.unwrap_or(at))
        ));
    }
    let record = tokens::show(&store, &id).map_err(failed)?;
    Ok(describe(&record, at))
}

/// `otad token show`'s text.
fn describe(record: &TokenRecord, at: i64) -> String {
    let mut text = format!(
        "id: {}\nstatus: {}\nuses: {} of {} spent\ncreated: {}\nexpires: {}\n",
        record.id,
        record.status(at).as_str(),
        record.used,
        record.uses,
        rfc3339(record.created),
        rfc3339(record.expires)
    );
    if let Some(scope) = &record.scope {
        text.push_str(&format!("scope: {scope}\n"));
    }
    if !record.note.is_empty() {
        text.push_str(&format!("note: {}\n", one_line(&record.note, 200)));
    }
    if let Some(revoked) = record.revoked {
        text.push_str(&format!("revoked: {}\n", rfc3339(revoked)));
    }
    let live = record
        .live_challenges
        .iter()
        .filter(|c| c.expires > at)
        .count();
    text.push_str(&format!("waiting for phase 2: {live}\n"));
    for used in &record.history {
        text.push_str(&format!(
            "used: {} udid={} serial={} remote={}\n",
            rfc3339(used.at),
            used.udid,
            used.serial
                .as_deref()
                .map_or("-".into(), |s| one_line(s, 64)),
            used.remote
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn state() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        Store::create(&state).unwrap();
        let text = crate::config::template("https://otad.example.com", "Test");
        std::fs::write(state.join("otad.toml"), text).unwrap();
        (dir, state)
    }

    fn args(state: &Path, rest: &[&str]) -> Args {
        let mut args: Args = rest.iter().map(Into::into).collect();
        args.insert(1, "--state".into());
        args.insert(2, state.as_os_str().to_owned());
        args
    }

    #[test]
    fn new_list_show_revoke() {
        let (_dir, state) = state();
        let out = dispatch(args(
            &state,
            &["new", "--uses", "2", "--note", "Ada", "--serial", "f2lx"],
        ))
        .unwrap();
        let secret = out.lines().next().unwrap().strip_prefix("token: ").unwrap();
        assert!(
            out.contains(&format!(
                "url: https://otad.example.com/ota/enroll?token={secret}\n"
            )),
            "{out}"
        );
        assert!(out.contains("scope: serial F2LX\n"), "{out}");
        let id = out
            .lines()
            .nth(1)
            .unwrap()
            .strip_prefix("id: ")
            .unwrap()
            .to_string();

        let listed = dispatch(args(&state, &["list"])).unwrap();
        assert!(listed.contains(&id) && listed.contains("active") && listed.contains("0/2"));
        let json: serde_json::Value =
            serde_json::from_str(&dispatch(args(&state, &["list", "--json"])).unwrap()).unwrap();
        assert_eq!(json[0]["id"], id.as_str());
        assert_eq!(json[0]["uses_left"], 2);
        assert_eq!(json[0]["note"], "Ada");

        let shown = dispatch(args(&state, &["show", &id])).unwrap();
        assert!(shown.contains("uses: 0 of 2 spent"), "{shown}");
        let revoked = dispatch(args(&state, &["revoke", &id])).unwrap();
        assert!(revoked.starts_with(&format!("revoked enrollment token {id}")));
        let shown = dispatch(args(&state, &["show", &id])).unwrap();
        assert!(shown.contains("status: revoked"), "{shown}");
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        let (_dir, state) = state();
        for bad in [
            &["new", "--uses", "many"][..],
            &["new", "--expires", "2y"],
            &["new", "--expires", "400d"],
            &["new", "--serial", "A", "--udid", "B"],
            &["new", "--uses", "0"],
            &["new", "--uses", "100001"],
            &["new", "--udid", "not a udid"],
            &["new", "--serial", "C02-XK"],
            &["new", "--note", "two\nlines"],
            &["show"],
            &["show", "zz"],
            &["revoke", "0123456789abX"],
            &["frobnicate"],
        ] {
            assert!(
                matches!(dispatch(args(&state, bad)), Err(Exit::Usage(_))),
                "{bad:?}"
            );
        }
        let Err(Exit::Usage(zero)) = dispatch(args(&state, &["new", "--uses", "0"])) else {
            panic!("--uses 0 is a usage error");
        };
        assert!(
            zero.starts_with("--uses 0: must be 1 to 100000\n"),
            "{zero}"
        );
        assert!(matches!(
            dispatch(args(&state, &["show", "0123456789ab"])),
            Err(Exit::Failed(_))
        ));
    }
}
