//! `otad user`: the people in the users file who may log in to phase 1 (HTTP Basic) — add
//! one (the password read without echo, or from stdin), remove one, list them. Safe while
//! `otad serve` runs: every write takes the state lock, and the server reads the file on
//! each login.

use std::io::{BufRead, IsTerminal as _, Read};
use std::path::PathBuf;

use lexopt::prelude::*;
use serde_json::json;
use zeroize::Zeroizing;

use super::token::StateArg;
use super::{Args, Exit};
use crate::gate::users::{self, MAX_PASSWORD_BYTES};
use crate::store::{now, rfc3339};

const HELP: &str = "\
usage: otad user add (--config FILE | --state DIR) NAME [--password-stdin] [--replace]
       otad user remove (--config FILE | --state DIR) NAME
       otad user list (--config FILE | --state DIR) [--json]

The people who may start an enrollment with ota.require_user = true: phase 1 asks for a
name and password (HTTP Basic) and checks them against users.json in the state dir, which
holds an Argon2id hash of each password, never the password.

Every subcommand takes --config FILE (the state's otad.toml) or --state DIR (the state dir
otad init made, holding otad.toml). `otad user <subcommand> --help` explains each.
";

const ADD_HELP: &str = "\
usage: otad user add (--config FILE | --state DIR) NAME [--password-stdin] [--replace]

Adds NAME (1 to 64 of A-Z a-z 0-9 . _ @ + -). The password (at least 8 characters) is asked
twice on the terminal without echo; with --password-stdin, or when stdin is not a
terminal, it is the first line of stdin. Never give a password as an argument.

  --config FILE       the otad.toml of the state
  --state DIR         the state dir (its otad.toml)
  --password-stdin    read the password from stdin
  --replace           set a new password for an existing NAME
";

const REMOVE_HELP: &str = "\
usage: otad user remove (--config FILE | --state DIR) NAME

Removes NAME: their next phase 1 login is refused. Devices they enrolled keep their record.

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
";

const LIST_HELP: &str = "\
usage: otad user list (--config FILE | --state DIR) [--json]

Lists the users: name and when they were added (never a password or hash).

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
  --json          one JSON array of objects
";

/// Runs `otad user` with its arguments.
pub fn run(args: Args) -> Exit {
    super::run_subcommand("user", HELP, SUBCOMMANDS, args)
}

const SUBCOMMANDS: &[(&str, super::Subcommand)] =
    &[("add", add), ("remove", remove), ("list", list)];

use super::usage;

fn failed(err: impl std::fmt::Display) -> Exit {
    Exit::Failed(err.to_string())
}

/// The password: the first line of `input` (without its line ending), at most
/// [`MAX_PASSWORD_BYTES`].
fn password_from(input: impl Read) -> Result<Zeroizing<String>, Exit> {
    let mut line = Zeroizing::new(String::new());
    let limit = u64::try_from(MAX_PASSWORD_BYTES).unwrap_or(u64::MAX) + 2;
    std::io::BufReader::new(input.take(limit))
        .read_line(&mut line)
        .map_err(|err| Exit::Failed(format!("stdin: cannot read the password: {err}")))?;
    let trimmed = line.trim_end_matches(['\n', '\r']);
    if trimmed.len() > MAX_PASSWORD_BYTES {
        return Err(Exit::Failed(format!(
            "stdin: the password is over {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(Zeroizing::new(trimmed.to_string()))
}

fn password_from_terminal(name: &str) -> Result<Zeroizing<String>, Exit> {
    let first = Zeroizing::new(
        rpassword::prompt_password(format!("password for {name}: ")).map_err(failed)?,
    );
    users::check_new_password(&first).map_err(Exit::Failed)?;
    let second =
        Zeroizing::new(rpassword::prompt_password("the same password again: ").map_err(failed)?);
    if *first != *second {
        return Err(Exit::Failed(
            "the two passwords differ; nothing changed".into(),
        ));
    }
    Ok(first)
}

fn add(mut parser: lexopt::Parser) -> Result<String, Exit> {
    let mut state = StateArg::default();
    let (mut name, mut from_stdin, mut replace) = (None, false, false);
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Long("state") => state.state = Some(PathBuf::from(parser.value().map_err(usage)?)),
            Long("config") => state.config = Some(PathBuf::from(parser.value().map_err(usage)?)),
            Long("password-stdin") => from_stdin = true,
            Long("replace") => replace = true,
            Value(value) if name.is_none() => name = Some(value.string().map_err(usage)?),
            Long("help") | Short('h') => return Ok(ADD_HELP.to_string()),
            other => return Err(usage(other.unexpected())),
        }
    }
    let name = name.ok_or_else(|| Exit::Usage(format!("NAME is required\n\n{ADD_HELP}")))?;
    users::check_name(&name).map_err(|why| Exit::Usage(format!("{why}\n\n{ADD_HELP}")))?;
    let (_, store) = state.open(ADD_HELP)?;

    let password = if from_stdin || !std::io::stdin().is_terminal() {
        password_from(std::io::stdin().lock())?
    } else {
        password_from_terminal(&name)?
    };
    users::add(&store, &name, &password, replace, now()).map_err(failed)?;
    Ok(format!(
        "{} user {name}\n",
        if replace {
            "set the password of"
        } else {
            "added"
        }
    ))
}

fn remove(mut parser: lexopt::Parser) -> Result<String, Exit> {
    let mut state = StateArg::default();
    let mut name = None;
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Long("state") => state.state = Some(PathBuf::from(parser.value().map_err(usage)?)),
            Long("config") => state.config = Some(PathBuf::from(parser.value().map_err(usage)?)),
            Value(value) if name.is_none() => name = Some(value.string().map_err(usage)?),
            Long("help") | Short('h') => return Ok(REMOVE_HELP.to_string()),
            other => return Err(usage(other.unexpected())),
        }
    }
    let name = name.ok_or_else(|| Exit::Usage(format!("NAME is required\n\n{REMOVE_HELP}")))?;
    users::check_name(&name).map_err(|why| Exit::Usage(format!("{why}\n\n{REMOVE_HELP}")))?;
    let (_, store) = state.open(REMOVE_HELP)?;
    if users::remove(&store, &name).map_err(failed)? {
        Ok(format!("removed user {name}\n"))
    } else {
        Err(Exit::Failed(format!(
            "user {}: no such user",
            crate::logger::one_line(&name, 80)
        )))
    }
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
    let people = users::load(&store).map_err(failed)?;
    if as_json {
        let rows: Vec<serde_json::Value> = people
            .iter()
            .map(|u| json!({"name": u.name, "created": rfc3339(u.created)}))
            .collect();
        let mut text = serde_json::to_string_pretty(&rows).map_err(failed)?;
        text.push('\n');
        return Ok(text);
    }
    let mut text = format!("{:<64}  ADDED\n", "NAME");
    for user in &people {
        text.push_str(&format!("{:<64}  {}\n", user.name, rfc3339(user.created)));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_the_first_line_of_stdin() {
        assert_eq!(
            password_from(&b"s3cret pass\r\nmore"[..]).unwrap().as_str(),
            "s3cret pass"
        );
        assert_eq!(
            password_from(&b"no newline"[..]).unwrap().as_str(),
            "no newline"
        );
        let long = vec![b'x'; MAX_PASSWORD_BYTES + 5];
        assert!(matches!(password_from(&long[..]), Err(Exit::Failed(_))));
    }
}
