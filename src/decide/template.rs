//! Per-device final profiles: `${NAME}` variables in the string values of the configured
//! `profile.template`, filled in at phase 3.
//!
//! Names are `[A-Z][A-Z0-9_]*`: the built-ins ([`BUILT_IN`]) and the hook variables declared
//! in `hooks.variables`. `$${` writes a literal `${`; any other `$` is itself. Variables are
//! allowed in string values only, not in keys (a device-chosen key could shadow another one)
//! nor in data or dates. The template is scanned once at load, so an unknown name or a broken
//! `${` is a start-up error that says where it is; rendering substitutes in one pass (a value
//! holding `${X}` stays as it is) and the plist writer escapes values for XML.

use std::collections::{BTreeMap, BTreeSet};

use plist::{Dictionary, Value};

/// The variables every device has (empty when it did not send the attribute).
pub const BUILT_IN: &[&str] = &[
    "UDID",
    "SERIAL",
    "PRODUCT",
    "VERSION",
    "DEVICE_NAME",
    "IMEI",
    "USER",
    "TOKEN_NOTE",
];

/// Longest variable name.
pub const MAX_NAME_LEN: usize = 64;

/// Deepest nesting of dictionaries and arrays walked in a template.
pub const MAX_DEPTH: usize = 32;

/// True for a variable name: `[A-Z][A-Z0-9_]*`, at most [`MAX_NAME_LEN`] long.
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_NAME_LEN
        && bytes.next().is_some_and(|b| b.is_ascii_uppercase())
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// A piece of a template string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Variable(&'a str),
}

/// Splits a string into text and `${NAME}` pieces.
fn pieces(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        let (before, from_dollar) = rest.split_at(at);
        if let Some(after) = from_dollar.strip_prefix("$${") {
            out.push(Piece::Text(before));
            out.push(Piece::Text("${"));
            rest = after;
        } else if let Some(after) = from_dollar.strip_prefix("${") {
            out.push(Piece::Text(before));
            let Some(end) = after.find('}') else {
                return Err("a ${ is not closed by }; write $${ for a literal ${".into());
            };
            let (name, tail) = after.split_at(end);
            if !valid_name(name) {
                return Err(format!(
                    "${{{}}}: a variable name is A-Z, 0-9 and _, starting with a letter \
                     (write $${{ for a literal ${{)",
                    name.chars().take(MAX_NAME_LEN).collect::<String>()
                ));
            }
            out.push(Piece::Variable(name));
            rest = tail.get(1..).unwrap_or_default();
        } else {
            // A lone `$`: itself.
            out.push(Piece::Text(before));
            out.push(Piece::Text("$"));
            rest = from_dollar.get(1..).unwrap_or_default();
        }
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// Checks a template: every variable is built in or in `declared`, every `${` is closed, no
/// key holds one. Returns the names it uses. Errors say which name and where, as a path like
/// `PayloadContent[0].SSID_STR`.
pub fn scan(template: &Dictionary, declared: &[String]) -> Result<BTreeSet<String>, String> {
    let mut used = BTreeSet::new();
    scan_dict(template, "", 1, declared, &mut used)?;
    Ok(used)
}

fn scan_dict(
    dict: &Dictionary,
    path: &str,
    depth: usize,
    declared: &[String],
    used: &mut BTreeSet<String>,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("{path}: nested deeper than {MAX_DEPTH}"));
    }
    for (key, value) in dict {
        let here = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        if key.contains("${") {
            return Err(format!(
                "{here}: variables are not allowed in keys, only in string values"
            ));
        }
        scan_value(value, &here, depth, declared, used)?;
    }
    Ok(())
}

fn scan_value(
    value: &Value,
    path: &str,
    depth: usize,
    declared: &[String],
    used: &mut BTreeSet<String>,
) -> Result<(), String> {
    match value {
        Value::Dictionary(dict) => scan_dict(dict, path, depth + 1, declared, used),
        Value::Array(items) => {
            if depth + 1 > MAX_DEPTH {
                return Err(format!("{path}: nested deeper than {MAX_DEPTH}"));
            }
            for (index, item) in items.iter().enumerate() {
                scan_value(item, &format!("{path}[{index}]"), depth + 1, declared, used)?;
            }
            Ok(())
        }
        Value::String(text) => {
            for piece in pieces(text).map_err(|why| format!("{path}: {why}"))? {
                let Piece::Variable(name) = piece else {
                    continue;
                };
                if !BUILT_IN.contains(&name) && !declared.iter().any(|d| d == name) {
                    return Err(format!(
                        "{path}: ${{{name}}} is neither built in ({}) nor declared in \
                         hooks.variables",
                        BUILT_IN.join(", ")
                    ));
                }
                used.insert(name.to_string());
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Why a profile could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// A hook variable the template uses has no value (no hook supplied it).
    Missing(String),
    /// The template is not what [`scan`] accepted.
    Broken(String),
}

/// Renders a scanned template: each `${NAME}` becomes `values[NAME]`. Built-ins missing from
/// `values` render empty; any other missing name is [`RenderError::Missing`].
pub fn render(
    template: &Dictionary,
    values: &BTreeMap<String, String>,
) -> Result<Dictionary, RenderError> {
    render_dict(template, values, 1)
}

fn render_dict(
    dict: &Dictionary,
    values: &BTreeMap<String, String>,
    depth: usize,
) -> Result<Dictionary, RenderError> {
    if depth > MAX_DEPTH {
        return Err(RenderError::Broken("nested too deep".into()));
    }
    let mut out = Dictionary::new();
    for (key, value) in dict {
        out.insert(key.clone(), render_value(value, values, depth)?);
    }
    Ok(out)
}

fn render_value(
    value: &Value,
    values: &BTreeMap<String, String>,
    depth: usize,
) -> Result<Value, RenderError> {
    Ok(match value {
        Value::Dictionary(dict) => Value::Dictionary(render_dict(dict, values, depth + 1)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| render_value(item, values, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Value::String(text) => {
            let mut rendered = String::with_capacity(text.len());
            for piece in pieces(text).map_err(RenderError::Broken)? {
                match piece {
                    Piece::Text(part) => rendered.push_str(part),
                    Piece::Variable(name) => match values.get(name) {
                        Some(value) => rendered.push_str(value),
                        None if BUILT_IN.contains(&name) => {}
                        None => return Err(RenderError::Missing(name.to_string())),
                    },
                }
            }
            Value::String(rendered)
        }
        other => other.clone(),
    })
}

/// True for a character XML 1.0 can carry (escaped or not).
pub fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r')
        || matches!(c, '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// A device-supplied value made safe for a plist string: characters XML cannot carry at all
/// (most C0 controls, U+FFFE, U+FFFF) become U+FFFD. `<`, `&` and the like are the plist
/// writer's to escape.
pub fn xml_safe(value: &str) -> String {
    value
        .chars()
        .map(|c| if xml_char(c) { c } else { '\u{FFFD}' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(xml: &str) -> Dictionary {
        let text = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <plist version=\"1.0\"><dict>{xml}</dict></plist>"
        );
        plist::Value::from_reader_xml(std::io::Cursor::new(text.into_bytes()))
            .unwrap()
            .into_dictionary()
            .unwrap()
    }

    fn declared(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn pieces_and_escapes() {
        assert_eq!(
            pieces("a${UDID}b").unwrap(),
            vec![Piece::Text("a"), Piece::Variable("UDID"), Piece::Text("b")]
        );
        let literal: String = pieces("pa$$word $${UDID} $5 $")
            .unwrap()
            .into_iter()
            .map(|p| match p {
                Piece::Text(t) => t.to_string(),
                Piece::Variable(v) => format!("<{v}>"),
            })
            .collect();
        assert_eq!(literal, "pa$$word ${UDID} $5 $");
        assert!(pieces("${UDID").unwrap_err().contains("not closed"));
        assert!(pieces("${udid}").unwrap_err().contains("${udid}"));
        assert!(pieces("${}").is_err());
        assert!(pieces("${A-B}").is_err());
        assert!(valid_name("SITE_2"));
        assert!(!valid_name("2SITE"));
        assert!(!valid_name(&"A".repeat(MAX_NAME_LEN + 1)));
    }

    #[test]
    fn scan_names_what_is_unknown_and_where() {
        let template = dict(
            "<key>PayloadContent</key><array><dict>\
             <key>SSID_STR</key><string>${SITE}-${SERIAL}</string>\
             <key>Other</key><string>${ROOM}</string></dict></array>",
        );
        let err = scan(&template, &declared(&["SITE"])).unwrap_err();
        assert!(err.starts_with("PayloadContent[0].Other: ${ROOM}"), "{err}");
        let used = scan(&template, &declared(&["SITE", "ROOM"])).unwrap();
        assert_eq!(
            used.into_iter().collect::<Vec<_>>(),
            ["ROOM", "SERIAL", "SITE"]
        );

        let in_key = dict("<key>${UDID}</key><string>x</string>");
        assert!(scan(&in_key, &[])
            .unwrap_err()
            .contains("not allowed in keys"));
        let broken = dict("<key>A</key><string>${UDID</string>");
        assert!(scan(&broken, &[])
            .unwrap_err()
            .starts_with("A: a ${ is not closed"));
    }

    #[test]
    fn render_substitutes_once_and_refuses_a_missing_hook_variable() {
        let template = dict(
            "<key>Name</key><string>${DEVICE_NAME} at ${SITE}</string>\
             <key>Imei</key><string>[${IMEI}]</string>\
             <key>Literal</key><string>$${SITE}</string>\
             <key>Count</key><integer>3</integer>\
             <key>List</key><array><string>${UDID}</string></array>",
        );
        let values = BTreeMap::from([
            ("DEVICE_NAME".to_string(), "${SITE}".to_string()),
            ("SITE".to_string(), "HQ".to_string()),
            ("UDID".to_string(), "U-1".to_string()),
        ]);
        let out = render(&template, &values).unwrap();
        assert_eq!(out["Name"].as_string(), Some("${SITE} at HQ"));
        assert_eq!(out["Imei"].as_string(), Some("[]"));
        assert_eq!(out["Literal"].as_string(), Some("${SITE}"));
        assert_eq!(out["Count"].as_signed_integer(), Some(3));
        assert_eq!(out["List"].as_array().unwrap()[0].as_string(), Some("U-1"));

        let mut without_site = values.clone();
        without_site.remove("SITE");
        assert_eq!(
            render(&template, &without_site),
            Err(RenderError::Missing("SITE".into()))
        );
    }

    #[test]
    fn hostile_values_survive_the_plist_writer_intact() {
        let template = dict("<key>Name</key><string>${DEVICE_NAME}</string>");
        let hostile = "</string><key>x</key><string> & < > \" ' ]]> \t\n\r é 😀";
        let with_controls = format!("{hostile}\u{1}\u{8}\u{1b}\u{FFFE}");
        let values = BTreeMap::from([("DEVICE_NAME".to_string(), xml_safe(&with_controls))]);
        let out = render(&template, &values).unwrap();
        let xml = crate::ota::profile::to_xml(&Value::Dictionary(out));
        let text = String::from_utf8(xml.clone()).unwrap();
        assert!(!text.contains("<key>x</key>"), "{text}");
        assert!(!text.contains('\u{1}'), "{text}");

        let back = Value::from_reader_xml(std::io::Cursor::new(xml))
            .unwrap()
            .into_dictionary()
            .unwrap();
        assert_eq!(back.len(), 1, "no key was injected");
        let expected = format!("{hostile}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}");
        assert_eq!(back["Name"].as_string(), Some(expected.as_str()));
    }
}
