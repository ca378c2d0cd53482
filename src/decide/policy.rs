//! The device policy: `[[policy.rule]]` entries matched in order against what a device says
//! about itself and who phase 1 admitted, the first match deciding, then `policy.default`.
//!
//! A rule is an action, an optional reason and one or more fields, each an exact value or a
//! glob ([`super::glob`]); every field of a rule must match. A field the device did not send
//! is matched as the empty string, so `SERIAL = "*"` matches any device and `IMEI = ""` one
//! that sent no IMEI. Rules are compiled once at config load; an unknown field, a rule with
//! no field or a bad action is an error naming the rule by its number.

use super::glob::{self, MAX_PATTERN_LEN};

/// Most rules in one config.
pub const MAX_RULES: usize = 1000;

/// Longest reason a rule may give (it goes back to the device and into the log).
pub const MAX_REASON_LEN: usize = 200;

/// The fields a rule may match: device attributes as the device names them, and `USER`, the
/// user phase 1 authenticated.
pub const FIELDS: &[&str] = &[
    "SERIAL",
    "UDID",
    "PRODUCT",
    "VERSION",
    "IMEI",
    "MEID",
    "DEVICE_NAME",
    "USER",
];

/// What a rule does to a device it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let the device go on.
    Allow,
    /// Refuse it.
    Deny,
}

/// One compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Its 1-based position in the config, for logs and reasons.
    pub number: usize,
    /// Allow or deny.
    pub action: Action,
    /// The admin's reason, if given.
    pub reason: Option<String>,
    /// (field, pattern) pairs, all of which must match.
    pub matches: Vec<(&'static str, String)>,
}

/// The compiled `[policy]`: rules in order and the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The rules, first match wins.
    pub rules: Vec<Rule>,
    /// What happens to a device no rule matches.
    pub default: Action,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            rules: Vec::new(),
            default: Action::Allow,
        }
    }
}

/// What the policy decided, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Allow or deny.
    pub action: Action,
    /// The rule that decided (its number), or `None` for the default.
    pub rule: Option<usize>,
    /// A reason an admin can read: the rule's own, or which rule or default decided.
    pub reason: String,
}

impl Policy {
    /// Compiles `[policy]`: `default` ("allow" or "deny") and the `[[policy.rule]]` tables.
    /// Errors name the key or the rule number; the caller adds the file and line.
    pub fn compile(default: &str, rules: &[toml::Table]) -> Result<Policy, PolicyError> {
        let default = parse_action(default).ok_or_else(|| PolicyError {
            rule: None,
            why: format!("policy.default: {default:?}: use \"allow\" or \"deny\""),
        })?;
        if rules.len() > MAX_RULES {
            return Err(PolicyError {
                rule: None,
                why: format!("policy.rule: {} rules, at most {MAX_RULES}", rules.len()),
            });
        }
        let rules = rules
            .iter()
            .enumerate()
            .map(|(index, table)| compile_rule(index + 1, table))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy { rules, default })
    }

    /// Decides for a device; `field` gives a field's value, `None` when it was not sent.
    pub fn decide<'a>(&self, field: impl Fn(&str) -> Option<&'a str>) -> Verdict {
        for rule in &self.rules {
            let all_match = rule
                .matches
                .iter()
                .all(|(name, pattern)| glob::matches(pattern, field(name).unwrap_or("")));
            if all_match {
                let reason = rule.reason.clone().unwrap_or_else(|| {
                    let verb = match rule.action {
                        Action::Allow => "allowed",
                        Action::Deny => "denied",
                    };
                    format!("{verb} by policy rule {}", rule.number)
                });
                return Verdict {
                    action: rule.action,
                    rule: Some(rule.number),
                    reason,
                };
            }
        }
        let reason = match self.default {
            Action::Allow => "allowed by policy.default",
            Action::Deny => "denied by policy.default (no rule allows this device)",
        };
        Verdict {
            action: self.default,
            rule: None,
            reason: reason.to_string(),
        }
    }
}

/// A `[policy]` that does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The 1-based rule number, when one rule is at fault.
    pub rule: Option<usize>,
    /// What is wrong and what to do.
    pub why: String,
}

fn parse_action(text: &str) -> Option<Action> {
    match text {
        "allow" => Some(Action::Allow),
        "deny" => Some(Action::Deny),
        _ => None,
    }
}

fn compile_rule(number: usize, table: &toml::Table) -> Result<Rule, PolicyError> {
    let error = |why: String| PolicyError {
        rule: Some(number),
        why: format!("policy.rule {number}: {why}"),
    };
    let text = |key: &str, value: &toml::Value| {
        value
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| error(format!("{key} must be a string")))
    };

    let mut action = None;
    let mut reason = None;
    let mut matches = Vec::new();
    for (key, value) in table {
        match key.as_str() {
            "action" => {
                let name = text(key, value)?;
                action =
                    Some(parse_action(&name).ok_or_else(|| {
                        error(format!("action {name:?}: use \"allow\" or \"deny\""))
                    })?);
            }
            "reason" => {
                let why = text(key, value)?;
                if why.trim().is_empty()
                    || why.chars().count() > MAX_REASON_LEN
                    || why.chars().any(char::is_control)
                {
                    return Err(error(format!(
                        "reason must be 1 to {MAX_REASON_LEN} printable characters"
                    )));
                }
                reason = Some(why);
            }
            other => {
                let Some(field) = FIELDS.iter().find(|f| **f == other) else {
                    return Err(error(format!(
                        "unknown field {other:?}; a rule has action, reason and any of {}",
                        FIELDS.join(", ")
                    )));
                };
                let pattern = text(key, value)?;
                if pattern.chars().count() > MAX_PATTERN_LEN {
                    return Err(error(format!(
                        "{field}: a pattern is at most {MAX_PATTERN_LEN} characters"
                    )));
                }
                matches.push((*field, pattern));
            }
        }
    }

    let Some(action) = action else {
        return Err(error(
            "no action; add action = \"allow\" or action = \"deny\"".into(),
        ));
    };
    if matches.is_empty() {
        return Err(error(format!(
            "matches nothing in particular; give at least one of {} (or set policy.default)",
            FIELDS.join(", ")
        )));
    }
    Ok(Rule {
        number,
        action,
        reason,
        matches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<toml::Table> {
        #[derive(serde::Deserialize)]
        struct Wrapper {
            rule: Vec<toml::Table>,
        }
        toml::from_str::<Wrapper>(text).unwrap().rule
    }

    fn device<'a>(fields: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn first_match_wins_and_all_fields_must_match() {
        let policy = Policy::compile(
            "deny",
            &rules(
                r#"
[[rule]]
action = "deny"
PRODUCT = "iPhone8,*"
reason = "too old"
[[rule]]
action = "allow"
PRODUCT = "iPhone*"
VERSION = "17.*"
[[rule]]
action = "allow"
USER = "alice"
"#,
            ),
        )
        .unwrap();
        assert_eq!(policy.rules.len(), 3);

        let old = policy.decide(device(&[("PRODUCT", "iPhone8,1"), ("VERSION", "17.0")]));
        assert_eq!(old.action, Action::Deny);
        assert_eq!(old.rule, Some(1));
        assert_eq!(old.reason, "too old");

        let new = policy.decide(device(&[("PRODUCT", "iPhone15,2"), ("VERSION", "17.4")]));
        assert_eq!((new.action, new.rule), (Action::Allow, Some(2)));
        assert_eq!(new.reason, "allowed by policy rule 2");

        // PRODUCT matches rule 2 but VERSION does not; nothing else matches: the default.
        let older_os = policy.decide(device(&[("PRODUCT", "iPhone15,2"), ("VERSION", "16.7")]));
        assert_eq!((older_os.action, older_os.rule), (Action::Deny, None));
        assert!(older_os.reason.contains("policy.default"));

        let alice = policy.decide(device(&[("PRODUCT", "iPad13,1"), ("USER", "alice")]));
        assert_eq!((alice.action, alice.rule), (Action::Allow, Some(3)));
    }

    #[test]
    fn a_missing_field_matches_as_empty() {
        let policy = Policy::compile(
            "allow",
            &rules("[[rule]]\naction = \"deny\"\nSERIAL = \"\"\nreason = \"no serial\"\n"),
        )
        .unwrap();
        assert_eq!(policy.decide(device(&[])).action, Action::Deny);
        assert_eq!(
            policy.decide(device(&[("SERIAL", "X")])).action,
            Action::Allow
        );
    }

    #[test]
    fn bad_rules_are_named_by_number() {
        let cases = [
            (
                "[[rule]]\naction = \"deny\"\nSERIAL = \"A\"\n\
                 [[rule]]\naction = \"deny\"\nSERIALS = \"B\"\n",
                2,
                "unknown field \"SERIALS\"",
            ),
            (
                "[[rule]]\naction = \"deny\"\n",
                1,
                "matches nothing in particular",
            ),
            ("[[rule]]\nSERIAL = \"A\"\n", 1, "no action"),
            (
                "[[rule]]\naction = \"block\"\nSERIAL = \"A\"\n",
                1,
                "action \"block\"",
            ),
            (
                "[[rule]]\naction = \"deny\"\nSERIAL = 5\n",
                1,
                "SERIAL must be a string",
            ),
            (
                "[[rule]]\naction = \"deny\"\nSERIAL = \"A\"\nreason = \"\"\n",
                1,
                "reason",
            ),
        ];
        for (text, number, needle) in cases {
            let err = Policy::compile("allow", &rules(text)).unwrap_err();
            assert_eq!(err.rule, Some(number), "{text}: {err:?}");
            assert!(
                err.why.contains(&format!("policy.rule {number}: ")),
                "{err:?}"
            );
            assert!(err.why.contains(needle), "{text}: {err:?}");
        }
        let long = format!(
            "[[rule]]\naction = \"deny\"\nSERIAL = \"{}\"\n",
            "*".repeat(257)
        );
        assert!(Policy::compile("allow", &rules(&long)).is_err());
        let err = Policy::compile("maybe", &[]).unwrap_err();
        assert_eq!(err.rule, None);
        assert!(err.why.contains("policy.default"), "{err:?}");
    }
}
