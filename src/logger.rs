//! A small `log` backend: one line per record on stderr, for journald or a terminal, as
//! plain text or as a JSON object (`log.format`).
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

/// How each line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-12-04T12:00:00Z INFO  message`, control characters escaped.
    Plain,
    /// `{"at":"2026-12-04T12:00:00Z","level":"INFO","message":"..."}`, for log shippers.
    Json,
}

struct StderrLogger {
    level: LevelFilter,
    format: LogFormat,
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
        let line = format_line(
            self.format,
            &stamp,
            record.level(),
            &record.args().to_string(),
        );
        // One write call per line keeps lines from different threads whole.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// One record as one line, newline included.
fn format_line(format: LogFormat, stamp: &str, level: log::Level, message: &str) -> String {
    match format {
        LogFormat::Plain => {
            let message = one_line(message, MAX_MESSAGE_CHARS);
            format!("{stamp} {level:<5} {message}\n")
        }
        LogFormat::Json => {
            // JSON escapes control characters itself, so a line cannot be forged either.
            let message: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
            let object = serde_json::json!({
                "at": stamp,
                "level": level.as_str(),
                "message": message,
            });
            format!("{object}\n")
        }
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
pub fn init(configured: LevelFilter, format: LogFormat) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|value| parse_rust_log(&value))
        .unwrap_or(configured);
    if log::set_boxed_logger(Box::new(StderrLogger { level, format })).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_one_object_each_and_keep_the_message_whole() {
        let line = format_line(
            LogFormat::Json,
            "2026-12-04T12:00:00Z",
            log::Level::Warn,
            "phase 2: refused\nFAKE LINE remote=1.2.3.4",
        );
        assert!(line.ends_with("}\n"));
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        let object: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(object["at"], "2026-12-04T12:00:00Z");
        assert_eq!(object["level"], "WARN");
        assert_eq!(
            object["message"],
            "phase 2: refused\nFAKE LINE remote=1.2.3.4"
        );

        let plain = format_line(LogFormat::Plain, "T", log::Level::Info, "a\nb");
        assert_eq!(plain, "T INFO  a\\nb\n");
    }

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
