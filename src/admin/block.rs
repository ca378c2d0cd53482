//! `otad device block|unblock|blocked`: the admin's blocklist of device serial numbers.
//!
//! A blocked device is refused in phase 2, phase 3, DEP enrollment and at the SCEP step,
//! before any policy rule is looked at. Blocking does not revoke a certificate the device
//! already holds (`otad cert revoke` does). Writes take the state lock, so this is safe while
//! `otad serve` runs; the server sees a change with the next request.

use lexopt::prelude::*;
use serde_json::json;

#[cfg(test)]
use super::Args;
use super::Exit;
use crate::config::Config;
use crate::store::blocked::{normalize_serial, BlockRecord, MAX_BLOCK_REASON_LEN, MAX_SERIAL_LEN};
use crate::store::{self, Store};

const BLOCK_HELP: &str = "\
usage: otad device block (--config FILE | --state DIR) SERIAL [--reason R]

Refuses the device with this serial number in phase 2, phase 3, DEP enrollment and SCEP
from its next request on (403 \"blocked by admin\"), before any policy rule. A certificate
it already holds stays valid: revoke it with otad cert revoke. Blocking a blocked serial
replaces the reason.

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
  --reason R      why, shown in the refusal and the log (at most 200 characters)
";

const UNBLOCK_HELP: &str = "\
usage: otad device unblock (--config FILE | --state DIR) SERIAL

Lifts the block on a serial number. Exit 1 if it was not blocked.

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
";

const BLOCKED_HELP: &str = "\
usage: otad device blocked (--config FILE | --state DIR) [--json]

Lists the blocked serial numbers: serial, blocked at, reason.

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
  --json          one JSON array instead of a table
";

/// Runs `otad device` with its arguments.
#[cfg(test)]
fn dispatch(args: Args) -> Result<String, Exit> {
    super::device::dispatch(args)
}

use super::usage;

fn failed(err: impl std::fmt::Display) -> Exit {
    Exit::Failed(err.to_string())
}

/// What every subcommand takes: `--config FILE`, an optional SERIAL, `--reason`, `--json`.
struct Options {
    config: Option<std::path::PathBuf>,
    serial: Option<String>,
    reason: Option<String>,
    json: bool,
}

/// Reads the options a subcommand `takes`; `None` when `--help` was asked for.
fn parse(mut parser: lexopt::Parser, help: &str, takes: &[&str]) -> Result<Option<Options>, Exit> {
    let mut options = Options {
        config: None,
        serial: None,
        reason: None,
        json: false,
    };
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Long("config") => {
                options.config = Some(parser.value().map_err(usage)?.into());
            }
            Long("reason") if takes.contains(&"reason") => {
                options.reason = Some(parser.value().map_err(usage)?.string().map_err(usage)?);
            }
            Long("json") if takes.contains(&"json") => options.json = true,
            Long("help") | Short('h') => return Ok(None),
            Value(serial) if takes.contains(&"serial") && options.serial.is_none() => {
                options.serial = Some(serial.string().map_err(usage)?);
            }
            other => return Err(Exit::Usage(format!("{}\n\n{help}", other.unexpected()))),
        }
    }
    if options.config.is_none() {
        return Err(Exit::Usage(format!("{}\n\n{help}", super::STATE_REQUIRED)));
    }
    if takes.contains(&"serial") && options.serial.is_none() {
        return Err(Exit::Usage(format!("SERIAL is required\n\n{help}")));
    }
    Ok(Some(options))
}

fn open_store(options: &Options) -> Result<Store, Exit> {
    let config = options
        .config
        .as_deref()
        .unwrap_or(std::path::Path::new(""));
    let (_, derived) = Config::load(config).map_err(failed)?;
    Store::open(&derived.state_dir).map_err(failed)
}

/// The serial as given, checked: letters and digits only, uppercased.
fn serial(options: &Options) -> Result<String, Exit> {
    let given = options.serial.as_deref().unwrap_or_default();
    normalize_serial(given).ok_or_else(|| {
        let shown = crate::logger::one_line(given, 40);
        Exit::Usage(format!(
            "serial {shown:?}: use 1 to {MAX_SERIAL_LEN} letters and digits, as the device \
             reports it"
        ))
    })
}

pub(super) fn block(parser: lexopt::Parser) -> Result<String, Exit> {
    let Some(options) = parse(parser, BLOCK_HELP, &["serial", "reason"])? else {
        return Ok(BLOCK_HELP.to_string());
    };
    let serial = serial(&options)?;
    let reason = options.reason.clone();
    if let Some(reason) = &reason {
        if reason.trim().is_empty()
            || reason.chars().count() > MAX_BLOCK_REASON_LEN
            || reason.chars().any(char::is_control)
        {
            return Err(Exit::Usage(format!(
                "--reason: 1 to {MAX_BLOCK_REASON_LEN} printable characters"
            )));
        }
    }
    let store = open_store(&options)?;

    let record = BlockRecord {
        serial: serial.clone(),
        reason,
        at: store::now(),
    };
    let earlier = store
        .transaction(|| {
            let earlier = store.blocked(&serial)?;
            store.block(&record)?;
            Ok::<_, store::StoreError>(earlier)
        })
        .map_err(failed)?;
    Ok(match earlier {
        Some(_) => format!("{serial}: already blocked; reason replaced\n"),
        None => format!("{serial}: blocked\n"),
    })
}

pub(super) fn unblock(parser: lexopt::Parser) -> Result<String, Exit> {
    let Some(options) = parse(parser, UNBLOCK_HELP, &["serial"])? else {
        return Ok(UNBLOCK_HELP.to_string());
    };
    let serial = serial(&options)?;
    let store = open_store(&options)?;
    let removed = store
        .transaction(|| store.unblock(&serial))
        .map_err(failed)?;
    if removed {
        Ok(format!("{serial}: unblocked\n"))
    } else {
        Err(Exit::Failed(format!("{serial}: not blocked")))
    }
}

pub(super) fn blocked(parser: lexopt::Parser) -> Result<String, Exit> {
    let Some(options) = parse(parser, BLOCKED_HELP, &["json"])? else {
        return Ok(BLOCKED_HELP.to_string());
    };
    let store = open_store(&options)?;
    let (records, unreadable) = store.blocked_all().map_err(failed)?;
    for err in unreadable {
        // The list goes on; the lookup on the request path fails closed on such a file.
        eprintln!("otad: skipped: {err}");
    }
    if options.json {
        let list: Vec<_> = records
            .iter()
            .map(|r| json!({"serial": r.serial, "at": store::rfc3339(r.at), "reason": r.reason}))
            .collect();
        return Ok(format!("{}\n", serde_json::Value::Array(list)));
    }
    let mut out = format!("{:<32}  {:<25}  REASON\n", "SERIAL", "BLOCKED");
    for record in &records {
        let reason = record.reason.as_deref().unwrap_or("-");
        out.push_str(&format!(
            "{:<32}  {:<25}  {}\n",
            record.serial,
            store::rfc3339(record.at),
            crate::logger::one_line(reason, MAX_BLOCK_REASON_LEN)
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn args(list: &[&str]) -> Args {
        list.iter().map(OsString::from).collect()
    }

    fn state() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        Store::create(&state).unwrap();
        let config = dir.path().join("otad.toml");
        std::fs::write(&config, format!("[server]\nstate_dir = {:?}\n", state)).unwrap();
        let config = config.display().to_string();
        (dir, config)
    }

    #[test]
    fn block_list_unblock() {
        let (_dir, config) = state();
        let run_ok = |list: &[&str]| match dispatch(args(list)) {
            Ok(out) => out,
            Err(exit) => panic!("{list:?}: {exit:?}"),
        };
        assert_eq!(
            run_ok(&["block", "--config", &config, "c02xk0aa", "--reason", "lost"]),
            "C02XK0AA: blocked\n"
        );
        assert_eq!(
            run_ok(&["block", "--config", &config, "C02XK0AA"]),
            "C02XK0AA: already blocked; reason replaced\n"
        );
        let table = run_ok(&["blocked", "--config", &config]);
        assert_eq!(table.lines().count(), 2, "{table}");
        assert!(
            table.lines().nth(1).unwrap().starts_with("C02XK0AA "),
            "{table}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&run_ok(&["blocked", "--config", &config, "--json"])).unwrap();
        assert_eq!(json[0]["serial"], "C02XK0AA");
        assert_eq!(json[0]["reason"], serde_json::Value::Null);

        assert_eq!(
            run_ok(&["unblock", "--config", &config, "C02XK0AA"]),
            "C02XK0AA: unblocked\n"
        );
        assert_eq!(
            dispatch(args(&["unblock", "--config", &config, "C02XK0AA"])),
            Err(Exit::Failed("C02XK0AA: not blocked".into()))
        );
    }

    #[test]
    fn usage_errors() {
        let (_dir, config) = state();
        for list in [
            &["block", "--config", &config][..],
            &["block", "C02XK0AA"],
            &["block", "--config", &config, "../x"],
            &["block", "--config", &config, "A", "B"],
            &["block", "--config", &config, "A", "--reason", ""],
            &["unblock", "--config", &config, "A", "--reason", "x"],
            &["blocked", "--config", &config, "A"],
            &["nope"],
        ] {
            assert!(
                matches!(dispatch(args(list)), Err(Exit::Usage(_))),
                "{list:?}"
            );
        }
        assert!(dispatch(args(&[])).unwrap().contains("usage: otad device"));
        let help = dispatch(args(&["block", "--help"])).unwrap();
        assert!(help.starts_with("usage: otad device block"), "{help}");
        for sub in ["block", "unblock", "blocked"] {
            let help = dispatch(args(&[sub, "--help"])).unwrap();
            assert!(
                help.contains("--config FILE") && help.contains("--state DIR"),
                "{help}"
            );
        }
        let Err(Exit::Usage(missing)) = dispatch(args(&["blocked"])) else {
            panic!("blocked without a state is a usage error");
        };
        assert!(missing.starts_with("--config FILE or --state DIR is required"));
    }
}
