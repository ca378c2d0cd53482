//! Decision hooks: `hooks.phase2` and `hooks.phase3`, programs an admin writes that allow or
//! refuse a device and may hand the final profile template variables.
//!
//! The program gets one JSON object on stdin ([`HookInput`]) and runs through [`crate::hook`]
//! (no shell, clean environment, `hooks.timeout`, `hooks.max_output`). Exit 0 allows; its
//! stdout is empty or a JSON object of string variables, each declared in `hooks.variables`.
//! Exit 1 refuses, the first stdout line being the reason. Anything else (another exit code,
//! a signal, a timeout, a flood, output that is not as described) is a hook error, which
//! refuses unless `hooks.on_error = "allow"`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::template::{valid_name, xml_char};
use crate::hook::{self, Finished, Limits};

/// Most variables one hook may return.
pub const MAX_VARIABLES: usize = 64;

/// Longest variable value a hook may return, in bytes.
pub const MAX_VALUE_LEN: usize = 4096;

/// Longest refusal reason kept from a hook's first stdout line, in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// The compiled `[hooks]` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hooks {
    /// `hooks.phase2`, resolved.
    pub phase2: Option<PathBuf>,
    /// `hooks.phase3`, resolved.
    pub phase3: Option<PathBuf>,
    /// `hooks.timeout`.
    pub timeout: Duration,
    /// `hooks.max_output`.
    pub max_output: usize,
    /// `hooks.on_error == "allow"`: a failing hook lets the device go on.
    pub fail_open: bool,
    /// `hooks.variables`: the names hooks may return.
    pub variables: Vec<String>,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            phase2: None,
            phase3: None,
            timeout: Duration::from_secs(5),
            max_output: 64 * 1024,
            fail_open: false,
            variables: Vec::new(),
        }
    }
}

/// What a hook reads on stdin, one JSON object.
#[derive(Debug, Clone, Serialize)]
pub struct HookInput<'a> {
    /// 2 or 3.
    pub phase: u8,
    /// The device's UDID.
    pub udid: &'a str,
    /// What the device sent (CHALLENGE left out).
    pub attributes: &'a BTreeMap<String, String>,
    /// The user phase 1 authenticated, or null.
    pub user: Option<&'a str>,
    /// The enrollment token's id, or null.
    pub token: Option<&'a str>,
    /// That token's note, or null.
    pub token_note: Option<&'a str>,
    /// The client's address.
    pub remote: &'a str,
    /// Phase 3: the serial of the certificate that signed the request; null in phase 2.
    pub certificate: Option<&'a str>,
    /// Phase 3: the variables the phase 2 hook returned; empty in phase 2.
    pub variables: &'a BTreeMap<String, String>,
}

/// What a hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Exit 0: go on, with these variables.
    Allow(BTreeMap<String, String>),
    /// Exit 1: refuse, for this reason (the first line of stdout, may be empty).
    Refuse(String),
}

/// Runs a hook on `input` and reads its answer; `Err` is a hook error, already worded for
/// the log.
pub fn ask(
    program: &std::path::Path,
    input: &HookInput<'_>,
    hooks: &Hooks,
) -> Result<Answer, String> {
    let json = serde_json::to_vec(input).map_err(|err| format!("input: {err}"))?;
    let limits = Limits {
        timeout: hooks.timeout,
        max_output: hooks.max_output,
    };
    let finished = hook::run(program, &json, &limits).map_err(|err| err.to_string())?;
    read_answer(&finished, &hooks.variables).map_err(|why| {
        let stderr = crate::logger::one_line(finished.stderr.trim(), 300);
        if stderr.is_empty() {
            format!("{}: {why}", program.display())
        } else {
            format!("{}: {why} (stderr: {stderr})", program.display())
        }
    })
}

/// Reads a finished hook's answer: its exit and stdout.
pub fn read_answer(finished: &Finished, declared: &[String]) -> Result<Answer, String> {
    match (finished.code, finished.signal) {
        (Some(0), _) => parse_variables(&finished.stdout, declared).map(Answer::Allow),
        (Some(1), _) => {
            let line = finished.first_line();
            let reason: String = line
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_REASON_CHARS)
                .collect();
            Ok(Answer::Refuse(reason))
        }
        (Some(code), _) => Err(format!(
            "exited {code}; a hook exits 0 to allow or 1 to refuse"
        )),
        (None, Some(signal)) => Err(format!("killed by signal {signal}")),
        (None, None) => Err("ended without an exit code".into()),
    }
}

/// Parses an allowing hook's stdout: nothing, or a JSON object of declared names to strings.
pub fn parse_variables(
    stdout: &[u8],
    declared: &[String],
) -> Result<BTreeMap<String, String>, String> {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(BTreeMap::new());
    }
    let value: serde_json::Value = serde_json::from_slice(stdout)
        .map_err(|err| format!("stdout is neither empty nor JSON: {err}"))?;
    let serde_json::Value::Object(object) = value else {
        return Err("stdout is JSON but not an object of variables".into());
    };
    if object.len() > MAX_VARIABLES {
        return Err(format!(
            "{} variables, at most {MAX_VARIABLES}",
            object.len()
        ));
    }
    let mut variables = BTreeMap::new();
    for (name, value) in object {
        let shown: String = name.chars().take(64).filter(|c| !c.is_control()).collect();
        if !valid_name(&name) {
            return Err(format!("variable {shown:?}: a name is [A-Z][A-Z0-9_]*"));
        }
        if !declared.contains(&name) {
            return Err(format!("variable {shown}: not declared in hooks.variables"));
        }
        let serde_json::Value::String(text) = value else {
            return Err(format!("variable {shown}: the value must be a string"));
        };
        if text.len() > MAX_VALUE_LEN {
            return Err(format!(
                "variable {shown}: longer than {MAX_VALUE_LEN} bytes"
            ));
        }
        if !text.chars().all(xml_char) {
            return Err(format!(
                "variable {shown}: holds a control character a profile cannot carry"
            ));
        }
        variables.insert(name, text);
    }
    Ok(variables)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(code: Option<i32>, signal: Option<i32>, stdout: &str) -> Finished {
        Finished {
            code,
            signal,
            stdout: stdout.as_bytes().to_vec(),
            stderr: String::new(),
        }
    }

    fn declared() -> Vec<String> {
        vec!["SITE".into(), "WIFI_PSK".into()]
    }

    #[test]
    fn exit_codes() {
        assert_eq!(
            read_answer(&finished(Some(0), None, ""), &declared()),
            Ok(Answer::Allow(BTreeMap::new()))
        );
        assert_eq!(
            read_answer(&finished(Some(0), None, " \n"), &declared()),
            Ok(Answer::Allow(BTreeMap::new()))
        );
        assert_eq!(
            read_answer(&finished(Some(1), None, "lost device\nmore\n"), &declared()),
            Ok(Answer::Refuse("lost device".into()))
        );
        assert_eq!(
            read_answer(&finished(Some(1), None, "a\u{1b}[31mred"), &declared()),
            Ok(Answer::Refuse("a[31mred".into()))
        );
        let err = read_answer(&finished(Some(2), None, ""), &declared()).unwrap_err();
        assert!(err.contains("exited 2"), "{err}");
        let err = read_answer(&finished(None, Some(11), ""), &declared()).unwrap_err();
        assert!(err.contains("signal 11"), "{err}");
    }

    #[test]
    fn variables_are_declared_strings_within_bounds() {
        let ok =
            parse_variables(br#"{"SITE": "HQ & <Lab>", "WIFI_PSK": "x"}"#, &declared()).unwrap();
        assert_eq!(ok["SITE"], "HQ & <Lab>");
        assert_eq!(ok.len(), 2);

        let long = format!("{{\"SITE\": \"{}\"}}", "a".repeat(MAX_VALUE_LEN + 1));
        let many: Vec<String> = (0..=MAX_VARIABLES)
            .map(|i| format!("\"V{i}\": \"x\""))
            .collect();
        let many = format!("{{{}}}", many.join(","));
        let cases: [(&[u8], &str); 9] = [
            (b"allowed", "neither empty nor JSON"),
            (b"[1]", "not an object"),
            (br#"{"site": "x"}"#, "a name is"),
            (br#"{"ROOM": "x"}"#, "not declared"),
            (br#"{"SITE": 5}"#, "must be a string"),
            (br#"{"SITE": "a\u0001b"}"#, "control character"),
            (long.as_bytes(), "longer than"),
            (many.as_bytes(), "at most"),
            (br#"{"SITE": "x"} trailing"#, "neither empty nor JSON"),
        ];
        for (stdout, needle) in cases {
            let err = parse_variables(stdout, &declared()).unwrap_err();
            assert!(
                err.contains(needle),
                "{}: {err}",
                String::from_utf8_lossy(stdout)
            );
        }
    }
}
