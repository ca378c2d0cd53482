//! `otad cert`: being written (issue 3).

use super::{Args, Exit};

/// Runs `otad cert` with its arguments.
pub fn run(_args: Args) -> Exit {
    // TODO: being written now (issue 3).
    Exit::Usage("otad cert: not available yet".into())
}
