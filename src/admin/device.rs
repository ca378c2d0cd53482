//! `otad device`: the inventory of enrolled devices, read from `devices/<UDID>.json`.
//!
//! `list` reads every record (an admin command, never the request path); a record that does
//! not parse is named on stderr and skipped. `show` finds one device by UDID (its file) or by
//! serial number (the `devices/by-serial/` index), each one file read. Both only read, and
//! every record is replaced atomically, so they are safe while `otad serve` runs.

use std::path::PathBuf;

use lexopt::prelude::*;
use serde_json::json;

use super::{Args, Exit};
use crate::config::Config;
use crate::store::{self, DevicePhase, DeviceRecord, Store};

const HELP: &str = "\
usage: otad device <subcommand> --config FILE ...

subcommands:
  list      every device: UDID, serial, product, version, user, phase, current
            certificate, first and last seen
  show      one device, by UDID or serial number, with its certificates and history
  block     refuse a device by serial number from now on
  unblock   lift a block
  blocked   list the blocked serial numbers

`otad device <subcommand> --help` explains each. Safe while otad serve runs.
";

const LIST_HELP: &str = "\
usage: otad device list --config FILE [--json]

Lists every device the server has seen, oldest first: UDID, serial number, product, OS
version, the user phase 1 admitted, the phase reached (identified, certified, enrolled),
the current certificate's serial and when it was first and last seen. --json prints one
JSON array of objects with those fields. A record that cannot be read is named on stderr
and skipped.

  --config FILE   the server's otad.toml (or --state DIR for DIR/otad.toml)
  --json          one JSON array instead of the table
";

const SHOW_HELP: &str = "\
usage: otad device show --config FILE [--json] UDID|SERIAL

Shows one device, found by UDID or by serial number (any case): what `list` shows, every
attribute it reported, who phase 1 admitted (user, token), its certificates (oldest first)
and its history. --json prints the device record as stored (times in unix seconds).

  --config FILE   the server's otad.toml (or --state DIR for DIR/otad.toml)
  --json          the stored record instead of the text
  UDID|SERIAL     the device: its UDID (any case) or its serial number (any case)
";

/// Runs `otad device ...` with the arguments after `device`.
pub fn run(args: Args) -> Exit {
    super::run_subcommand("device", HELP, SUBCOMMANDS, args)
}

const SUBCOMMANDS: &[(&str, super::Subcommand)] = &[
    ("list", list),
    ("show", show),
    ("block", super::block::block),
    ("unblock", super::block::unblock),
    ("blocked", super::block::blocked),
];

#[cfg(test)]
pub(super) fn dispatch(args: Args) -> Result<String, Exit> {
    super::dispatch("device", HELP, SUBCOMMANDS, args)
}

use super::usage;

fn open_state(config: Option<PathBuf>, help: &str) -> Result<Store, Exit> {
    let config = config.ok_or_else(|| Exit::Usage(format!("--config is required\n\n{help}")))?;
    let (_, derived) = Config::load(&config).map_err(|err| Exit::Failed(err.to_string()))?;
    Store::open(&derived.state_dir).map_err(|err| Exit::Failed(err.to_string()))
}

fn phase_name(phase: DevicePhase) -> &'static str {
    match phase {
        DevicePhase::Identified => "identified",
        DevicePhase::Certified => "certified",
        DevicePhase::Enrolled => "enrolled",
    }
}

fn attribute<'a>(device: &'a DeviceRecord, name: &str) -> &'a str {
    device.attributes.get(name).map_or("-", String::as_str)
}

/// What `list --json` prints for one device.
pub fn summary_json(device: &DeviceRecord) -> serde_json::Value {
    json!({
        "udid": device.udid,
        "serial": device.attributes.get("SERIAL"),
        "product": device.attributes.get("PRODUCT"),
        "version": device.attributes.get("VERSION"),
        "user": device.admission.user,
        "token": device.admission.token,
        "token_note": device.admission.token_note,
        "phase": phase_name(device.phase),
        "certificate": device.certificates.last(),
        "first_seen": store::rfc3339(device.first_seen),
        "last_seen": store::rfc3339(device.last_seen),
    })
}

/// Printable: control characters from a device's attributes never reach the terminal.
fn clean(text: &str) -> String {
    crate::logger::one_line(text, 200)
}

fn list(mut parser: lexopt::Parser) -> Result<String, Exit> {
    let (mut config, mut as_json) = (None, false);
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Long("config") => config = Some(PathBuf::from(parser.value().map_err(usage)?)),
            Long("json") => as_json = true,
            Long("help") | Short('h') => return Ok(LIST_HELP.to_string()),
            other => return Err(usage(other.unexpected())),
        }
    }
    let store = open_state(config, LIST_HELP)?;
    let (mut devices, skipped) = store
        .devices_skipping()
        .map_err(|err| Exit::Failed(err.to_string()))?;
    for err in skipped {
        eprintln!("otad: warning: skipped {err}");
    }
    devices.sort_by(|a, b| (a.first_seen, &a.udid).cmp(&(b.first_seen, &b.udid)));

    if as_json {
        let rows: Vec<serde_json::Value> = devices.iter().map(summary_json).collect();
        let mut text =
            serde_json::to_string_pretty(&rows).map_err(|err| Exit::Failed(err.to_string()))?;
        text.push('\n');
        return Ok(text);
    }
    let mut text = format!(
        "{:<40}  {:<14}  {:<14}  {:<8}  {:<16}  {:<10}  {:<32}  {:<20}  LAST SEEN\n",
        "UDID", "SERIAL", "PRODUCT", "VERSION", "USER", "PHASE", "CERTIFICATE", "FIRST SEEN"
    );
    for device in &devices {
        text.push_str(&format!(
            "{:<40}  {:<14}  {:<14}  {:<8}  {:<16}  {:<10}  {:<32}  {:<20}  {}\n",
            device.udid,
            clean(attribute(device, "SERIAL")),
            clean(attribute(device, "PRODUCT")),
            clean(attribute(device, "VERSION")),
            clean(device.admission.user.as_deref().unwrap_or("-")),
            phase_name(device.phase),
            device.certificates.last().map_or("-", String::as_str),
            store::rfc3339(device.first_seen),
            store::rfc3339(device.last_seen),
        ));
    }
    Ok(text)
}

/// The device named by `key`: a UDID (its record), else a serial number (the index).
pub fn find(store: &Store, key: &str) -> Result<Option<DeviceRecord>, String> {
    if store::valid_udid(key) {
        // Devices report UDIDs in upper case; an admin may paste one in lower case.
        for udid in [key.to_string(), key.to_ascii_uppercase()] {
            if let Some(device) = store.device(&udid).map_err(|err| err.to_string())? {
                return Ok(Some(device));
            }
        }
        if store::normalize_device_serial(key).is_none() {
            return Ok(None);
        }
    }
    if store::normalize_device_serial(key).is_none() {
        return Err(format!(
            "{:?}: neither a UDID nor a serial number",
            clean(key)
        ));
    }
    if let Some(device) = store.device_by_serial(key).map_err(|err| err.to_string())? {
        return Ok(Some(device));
    }
    // Records saved before the serial index existed have no entry: look through them (an
    // admin command, so a scan is fine here; the request path never does this).
    let wanted = store::normalize_device_serial(key);
    let (devices, _) = store.devices_skipping().map_err(|err| err.to_string())?;
    Ok(devices.into_iter().rev().find(|device| {
        device
            .attributes
            .get("SERIAL")
            .and_then(|s| store::normalize_device_serial(s))
            == wanted
    }))
}

fn show(mut parser: lexopt::Parser) -> Result<String, Exit> {
    let (mut config, mut key, mut as_json) = (None, None, false);
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Long("config") => config = Some(PathBuf::from(parser.value().map_err(usage)?)),
            Long("json") => as_json = true,
            Long("help") | Short('h') => return Ok(SHOW_HELP.to_string()),
            Value(value) if key.is_none() => key = Some(value.string().map_err(usage)?),
            other => return Err(usage(other.unexpected())),
        }
    }
    let key =
        key.ok_or_else(|| Exit::Usage(format!("UDID or SERIAL is required\n\n{SHOW_HELP}")))?;
    let store = open_state(config, SHOW_HELP)?;
    let device = find(&store, &key)
        .map_err(Exit::Failed)?
        .ok_or_else(|| Exit::Failed(format!("device {}: not known to this server", clean(&key))))?;

    if as_json {
        let mut text =
            serde_json::to_string_pretty(&device).map_err(|err| Exit::Failed(err.to_string()))?;
        text.push('\n');
        return Ok(text);
    }
    let mut text = String::new();
    let summary = summary_json(&device);
    for field in [
        "udid",
        "serial",
        "product",
        "version",
        "user",
        "token",
        "token_note",
        "phase",
        "certificate",
        "first_seen",
        "last_seen",
    ] {
        let value = match summary.get(field) {
            Some(serde_json::Value::String(s)) => clean(s),
            _ => "-".to_string(),
        };
        text.push_str(&format!("{}: {value}\n", field.replace('_', " ")));
    }
    text.push_str("attributes:\n");
    for (name, value) in &device.attributes {
        text.push_str(&format!("  {}: {}\n", clean(name), clean(value)));
    }
    if !device.hook_variables.is_empty() {
        text.push_str("hook variables (from hooks.phase2):\n");
        for (name, value) in &device.hook_variables {
            text.push_str(&format!("  {}: {}\n", clean(name), clean(value)));
        }
    }
    text.push_str("certificates:\n");
    for serial in &device.certificates {
        text.push_str(&format!("  {serial}\n"));
    }
    text.push_str("history:\n");
    for entry in &device.history {
        text.push_str(&format!(
            "  {}  {:<12}  {}  {}\n",
            store::rfc3339(entry.at),
            clean(&entry.event),
            entry.serial.as_deref().unwrap_or("-"),
            clean(&entry.remote)
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_and_help() {
        let args = |list: &[&str]| -> Args { list.iter().map(|a| a.into()).collect() };
        assert!(matches!(dispatch(args(&[])), Ok(text) if text.contains("usage: otad device")));
        assert!(matches!(dispatch(args(&["nope"])), Err(Exit::Usage(_))));
        assert!(matches!(dispatch(args(&["list"])), Err(Exit::Usage(m)) if m.contains("--config")));
        assert!(matches!(
            dispatch(args(&["show", "--config", "x"])),
            Err(Exit::Usage(m)) if m.contains("UDID or SERIAL")
        ));
        assert!(matches!(dispatch(args(&["list", "--help"])), Ok(text) if text.contains("--json")));
    }

    #[test]
    fn a_device_is_found_by_udid_in_either_case_or_by_serial_and_an_unknown_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let udid = "00008030-001A35E12345802E";
        let device = DeviceRecord {
            udid: udid.into(),
            attributes: std::collections::BTreeMap::from([("SERIAL".into(), "ZDL2M9PTJ3".into())]),
            phase: store::DevicePhase::Identified,
            first_seen: 1,
            last_seen: 1,
            certificates: Vec::new(),
            history: Vec::new(),
            admission: Default::default(),
            hook_variables: Default::default(),
        };
        store.save_device(&device).unwrap();

        for key in [udid, &udid.to_ascii_lowercase(), "ZDL2M9PTJ3", "zdl2m9ptj3"] {
            let found = find(&store, key).unwrap();
            assert_eq!(found.map(|d| d.udid), Some(udid.to_string()), "{key}");
        }
        let unknown = "3d428564-520b-45ff-90e8-4eb2c3c3c74d";
        assert_eq!(find(&store, unknown).unwrap(), None);
        assert!(find(&store, "../etc")
            .unwrap_err()
            .contains("neither a UDID"));
    }
}
