//! Admin commands that work on a running server's state: `otad cert …`, `otad device …`,
//! `otad request …`, `otad token …` and `otad user …`. They take the state lock for every
//! write, so they are safe while `otad serve` runs. Each finds the state by `--config FILE`
//! or `--state DIR` (`main` turns the second into `--config DIR/otad.toml`).

pub mod block;
pub mod cert;
pub mod device;
pub mod request;
pub mod token;
pub mod user;

use std::ffi::OsString;
use std::path::PathBuf;

/// What every admin command says when it is given neither `--config` nor `--state`.
pub const STATE_REQUIRED: &str = "--config FILE or --state DIR is required";

/// How an admin command ended; `main` turns it into an exit code.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Done (exit 0).
    Ok,
    /// The command ran and failed; the message says why (exit 1).
    Failed(String),
    /// The command line was wrong; the message says how to call it (exit 2).
    Usage(String),
}

/// The arguments after the command's name, for `lexopt::Parser::from_args`.
pub type Args = Vec<OsString>;

/// Writes command output to stdout. A closed pipe (`otad cert list | head -1`) ends the
/// output quietly instead of panicking as `print!` would.
pub fn emit(output: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush());
}

/// One subcommand: it gets the parser after its name and returns what it prints.
pub type Subcommand = fn(lexopt::Parser) -> Result<String, Exit>;

/// Runs the subcommand `args` names from `table`; `otad <command>` alone or `--help` prints
/// `help`. What the subcommand returns is printed (exit 0), or its `Exit` is returned.
pub fn run_subcommand(command: &str, help: &str, table: &[(&str, Subcommand)], args: Args) -> Exit {
    match dispatch(command, help, table, args) {
        Ok(output) => {
            emit(&output);
            Exit::Ok
        }
        Err(exit) => exit,
    }
}

/// What [`run_subcommand`] prints, or how it ends; for tests.
pub fn dispatch(
    command: &str,
    help: &str,
    table: &[(&str, Subcommand)],
    args: Args,
) -> Result<String, Exit> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let name = match parser.next().map_err(usage)? {
        Some(Value(name)) => name.string().map_err(usage)?,
        Some(Long("help")) | Some(Short('h')) | None => return Ok(help.to_string()),
        Some(other) => return Err(usage(other.unexpected())),
    };
    match table.iter().find(|(known, _)| *known == name) {
        Some((_, subcommand)) => subcommand(parser),
        None => {
            let known: Vec<&str> = table.iter().map(|(known, _)| *known).collect();
            Err(Exit::Usage(format!(
                "otad {command}: unknown subcommand {name:?}; use {}\n\n{help}",
                known.join(", ")
            )))
        }
    }
}

/// A command line lexopt could not read: exit 2 with its message.
pub fn usage(err: lexopt::Error) -> Exit {
    Exit::Usage(err.to_string())
}

/// The `--config FILE` an admin command was given (`--state DIR` arrives as one), or the
/// usage error naming both ways to give it.
pub fn config_required(config: Option<PathBuf>, help: &str) -> Result<PathBuf, Exit> {
    config.ok_or_else(|| Exit::Usage(format!("{STATE_REQUIRED}\n\n{help}")))
}

/// The width of a text column: its longest value (in characters) or its header, so that a
/// long value (a 40-digit serial of an imported CA) does not push the columns after it out
/// of line.
pub fn column_width<'a>(header: &str, values: impl IntoIterator<Item = &'a str>) -> usize {
    values
        .into_iter()
        .map(|value| value.chars().count())
        .fold(header.chars().count(), usize::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_is_as_wide_as_its_longest_value_or_header() {
        assert_eq!(column_width("SERIAL", ["0a", "1b2c"]), 6);
        let long = "1234567890123456789012345678901234567890";
        assert_eq!(column_width("SERIAL", ["0a", long]), 40);
        assert_eq!(column_width("UDID", Vec::<&str>::new()), 4);
        assert_eq!(column_width("X", ["é-é"]), 3, "characters, not bytes");
    }

    #[test]
    fn a_missing_state_names_both_ways_to_give_it() {
        let Err(Exit::Usage(message)) = config_required(None, "usage: otad x") else {
            panic!("not a usage error");
        };
        assert!(message.starts_with("--config FILE or --state DIR is required\n"));
        assert!(message.ends_with("usage: otad x"));
        assert_eq!(
            config_required(Some("a.toml".into()), "").unwrap(),
            PathBuf::from("a.toml")
        );
    }
}
