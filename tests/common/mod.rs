//! Helpers shared by the integration tests: where the real-device fixtures live.
//!
//! The fixtures in `../shared/fixtures` are public data that this project did not make, so they
//! are read from there and never copied in. `OTAD_FIXTURES` points elsewhere. Where they are
//! absent a test says so and skips, except under `CI=true`, where a missing fixture fails.

#![allow(dead_code)]

use std::path::PathBuf;

/// The fixtures folder: `$OTAD_FIXTURES`, or `../shared/fixtures` beside the project.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("OTAD_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"),
    }
}

/// Reads one fixture, or returns `None` (after saying so) when it is absent outside CI.
pub fn fixture(relative: &str) -> Option<Vec<u8>> {
    let path = fixtures_dir().join(relative);
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(err) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("fixture {} is missing under CI=true: {err}", path.display());
            }
            eprintln!("SKIP: fixture {} is absent ({err})", path.display());
            None
        }
    }
}

pub mod cli;
pub mod der;
pub mod impostor;
pub mod scep;
pub mod server;
pub mod state;
pub mod tools;
