//! A small `log` backend: one line per record on stderr, for journald or a terminal.
//!
//! Level from `log.level`, overridden by `RUST_LOG` (a bare level such as `debug`). Messages
//! never carry challenges, keys or tokens: the callers promise that, and tests grep for it.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

/// Longest message written; the rest is cut with a mark.
const MAX_MESSAGE_CHARS: usize = 2000;

/// A message as one line of at most `max` characters: control characters (newlines, escape
/// sequences) that a client may have smuggled in through a UDID, a certificate subject or a
/// request target are written escaped, so no one can forge a log line.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 8);
    for (n, c) in text.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

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
        let message = one_line(&record.args().to_string(), MAX_MESSAGE_CHARS);
        let line = format!("{stamp} {:<5} {message}\n", record.level());
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
    fn messages_stay_on_one_line() {
        assert_eq!(
            one_line("udid=A\nERROR forged\u{1b}[31m", 100),
            "udid=A\\nERROR forged\\u{1b}[31m"
        );
        assert_eq!(one_line("abcdef", 3), "abc…");
    }

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
