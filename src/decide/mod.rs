//! Whether a device may go on, and what its final profile says: the blocklist, the device
//! policy, the decision hooks and the final profile's template variables.
//!
//! The OTA phases ask here before they answer: phase 2 before a SCEP challenge is handed
//! out, phase 3 before the final profile is made, DEP enrollment before its profile. The
//! order is always blocklist, then `[[policy.rule]]` / `policy.default`, then the phase's
//! hook. A refusal is [`OtaError::Denied`] with a reason an admin can read; nothing is
//! written before it, so the device's phase does not change. Hooks run without the state
//! lock held.

pub mod glob;
pub mod hooks;
pub mod policy;
pub mod template;

use std::collections::BTreeMap;

use log::{debug, error};

use crate::context::Context;
use crate::ota::attributes::DeviceAttributes;
use crate::ota::OtaError;
use crate::store::Admission;
use hooks::{Answer, HookInput};

/// A device asking to go on, as the decisions see it.
pub struct Asking<'a> {
    /// Where it is asking: "phase 2", "phase 3", "dep enrollment".
    pub step: &'a str,
    /// 2 or 3 (DEP enrollment counts as 2).
    pub phase: u8,
    /// Its UDID, validated.
    pub udid: &'a str,
    /// What it says about itself.
    pub attributes: &'a DeviceAttributes,
    /// Who phase 1 admitted for it.
    pub admission: &'a Admission,
    /// The client's address.
    pub remote: &'a str,
}

/// The blocklist, then the policy rules: `Err(Denied)` when either refuses the device.
pub fn check_policy(ctx: &Context, asking: &Asking<'_>) -> Result<(), OtaError> {
    let (step, udid) = (asking.step, asking.udid);
    if let Some(serial) = asking.attributes.get("SERIAL") {
        // One spelling for the blocklist, the serial index, token scopes and rules alike: a
        // serial padded, with a NUL or in full-width letters would slip past all of them.
        if crate::store::normalize_device_serial(serial).is_none() {
            return Err(OtaError::Denied(format!(
                "{step}: device {udid}: SERIAL {:?} is not a serial number (1 to {} ASCII \
                 letters and digits)",
                crate::logger::one_line(serial, 40),
                crate::store::MAX_DEVICE_SERIAL_LEN
            )));
        }
        if let Some(block) = ctx.store.blocked(serial)? {
            let why = block
                .reason
                .map(|reason| format!(" ({reason})"))
                .unwrap_or_default();
            return Err(OtaError::Denied(format!(
                "{step}: device {udid} serial {}: blocked by admin{why}",
                block.serial
            )));
        }
    }

    let verdict = ctx.derived.policy.decide(|field| match field {
        "USER" => asking.admission.user.as_deref(),
        name => asking.attributes.get(name),
    });
    let by = verdict.rule.map_or_else(
        || "policy.default".to_string(),
        |n| format!("policy rule {n}"),
    );
    match verdict.action {
        policy::Action::Allow => {
            debug!("{step}: device {udid}: allowed by {by}");
            Ok(())
        }
        policy::Action::Deny => Err(OtaError::Denied(format!(
            "{step}: device {udid} refused by {by}: {}",
            verdict.reason
        ))),
    }
}

// TODO: DEP enrollment (`/mdm/enroll`) gets the blocklist and the rules but no hook: its
// body is replayable (no challenge), so a hook there could be run at will by a replayer.

/// The blocklist at the SCEP step, for a challenge bound to the device `udid`: `Err` (the
/// reason for a CertRep FAILURE) when the serial its record holds is blocked, or when that
/// cannot be told (fail closed).
pub fn check_scep(ctx: &Context, udid: &str) -> Result<(), String> {
    let lookup = |err: crate::store::StoreError| format!("device {udid}: blocklist: {err}");
    let device = ctx.store.device(udid).map_err(lookup)?;
    let Some(serial) = device.as_ref().and_then(|d| d.attributes.get("SERIAL")) else {
        return Ok(());
    };
    match ctx.store.blocked(serial).map_err(lookup)? {
        Some(block) => Err(format!(
            "device {udid} serial {}: blocked by admin{}",
            block.serial,
            block
                .reason
                .map(|reason| format!(" ({reason})"))
                .unwrap_or_default()
        )),
        None => Ok(()),
    }
}

/// Asks the phase's hook, if one is configured. Returns the variables it gave (none without
/// a hook, or when a failing hook is let through by `hooks.on_error = "allow"`).
/// `certificate` and `earlier` (phase 2's variables) are for phase 3.
pub fn ask_hook(
    ctx: &Context,
    asking: &Asking<'_>,
    certificate: Option<&str>,
    earlier: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, OtaError> {
    let settings = &ctx.derived.hooks;
    let (key, program) = match asking.phase {
        2 => ("hooks.phase2", settings.phase2.as_deref()),
        _ => ("hooks.phase3", settings.phase3.as_deref()),
    };
    let Some(program) = program else {
        return Ok(BTreeMap::new());
    };
    let (step, udid, remote) = (asking.step, asking.udid, asking.remote);

    let attributes = asking.attributes.recordable();
    let input = HookInput {
        phase: asking.phase,
        udid,
        attributes: &attributes,
        user: asking.admission.user.as_deref(),
        token: asking.admission.token.as_deref(),
        token_note: asking.admission.token_note.as_deref(),
        remote,
        certificate,
        variables: earlier,
    };
    match hooks::ask(program, &input, settings) {
        Ok(Answer::Allow(variables)) => {
            debug!(
                "{step}: device {udid}: allowed by {key} with {} variables",
                variables.len()
            );
            Ok(variables)
        }
        Ok(Answer::Refuse(reason)) => {
            let reason = if reason.is_empty() {
                "no reason given".to_string()
            } else {
                reason
            };
            Err(OtaError::Denied(format!(
                "{step}: device {udid} refused by {key}: {reason}"
            )))
        }
        Err(why) => hook_failed(asking, key, &why, settings.fail_open),
    }
}

/// A hook that gave no answer: refused (fail closed) unless `hooks.on_error = "allow"`.
fn hook_failed(
    asking: &Asking<'_>,
    key: &str,
    why: &str,
    fail_open: bool,
) -> Result<BTreeMap<String, String>, OtaError> {
    let (step, udid, remote) = (asking.step, asking.udid, asking.remote);
    if fail_open {
        error!(
            "{step}: device {udid}: {key} failed: {why}; letting the device on \
             (hooks.on_error = allow) remote={remote}"
        );
        return Ok(BTreeMap::new());
    }
    error!(
        "{step}: device {udid}: {key} failed: {why}; refusing the device \
         (hooks.on_error = deny) remote={remote}"
    );
    Err(OtaError::Denied(format!(
        "{step}: device {udid}: the decision hook failed; see the server log"
    )))
}

/// The values a phase 3 template is rendered with: the built-ins from the device's
/// attributes (made safe for XML) and admission, then the hook variables.
pub fn template_values(
    attributes: &DeviceAttributes,
    admission: &Admission,
    hook_variables: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    for name in template::BUILT_IN {
        let value = match *name {
            "USER" => admission.user.as_deref(),
            "TOKEN_NOTE" => admission.token_note.as_deref(),
            attribute => attributes.get(attribute),
        };
        if let Some(value) = value {
            values.insert(name.to_string(), template::xml_safe(value));
        }
    }
    for (name, value) in hook_variables {
        values.insert(name.clone(), value.clone());
    }
    values
}
