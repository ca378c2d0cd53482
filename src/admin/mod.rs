//! Admin commands that work on a running server's state: `otad cert …`, `otad device …`,
//! `otad request …`, `otad token …` and `otad user …`. They take the state lock for every
//! write, so they are safe while
//! `otad serve` runs.

pub mod block;
pub mod cert;
pub mod device;
pub mod request;
pub mod token;
pub mod user;

use std::ffi::OsString;

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
