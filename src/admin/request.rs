//! `otad request`: being written (issue 3).

use super::{Args, Exit};

/// Runs `otad request` with its arguments.
pub fn run(_args: Args) -> Exit {
    // TODO: being written now (issue 3).
    Exit::Usage("otad request: not available yet".into())
}
