//! A small `log` backend: one line per record on stderr, for journald or a terminal.
//!
//! Level from `log.level`, overridden by `RUST_LOG` (a bare level such as `debug`). Messages
//! never carry challenges, keys or tokens: the callers promise that, and tests grep for it.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger {
    level: LevelFilter,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = time::OffsetDateTime::now_utc();
        let stamp = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| "-".into());
        let line = format!("{stamp} {:<5} {}\n", record.level(), record.args());
        // One write call per line keeps lines from different threads whole.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Reads `RUST_LOG` as a bare level (`debug`) or env_logger's `otad=debug` form; other
/// targets' directives are ignored, since otad logs under its own name only.
fn parse_rust_log(value: &str) -> Option<LevelFilter> {
    value
        .split(',')
        .find_map(|directive| match directive.trim().split_once('=') {
            None => directive.trim().parse().ok(),
            Some((target, level)) if target.trim() == "otad" => level.trim().parse().ok(),
            Some(_) => None,
        })
}

/// Installs the logger. `configured` is `log.level`; `RUST_LOG`, when a valid level, wins.
pub fn init(configured: LevelFilter) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|value| parse_rust_log(&value))
        .unwrap_or(configured);
    if log::set_boxed_logger(Box::new(StderrLogger { level })).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_forms() {
        assert_eq!(parse_rust_log("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_rust_log("otad=trace"), Some(LevelFilter::Trace));
        assert_eq!(
            parse_rust_log("hyper=warn,otad=info"),
            Some(LevelFilter::Info)
        );
        assert_eq!(parse_rust_log("hyper=warn"), None);
        assert_eq!(parse_rust_log("loud"), None);
    }
}
