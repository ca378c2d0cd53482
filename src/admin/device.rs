//! `otad device`: the inventory of enrolled devices, read from their records in the state log.
//!
//! `list` reads every record (an admin command, never the request path); a record that does
//! not parse is named on stderr and skipped. `show` finds one device by UDID or by serial
//! number (the serial index the state log keeps), one record read. Both only read, and the
//! log is only appended to, so they are safe while `otad serve` runs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lexopt::prelude::*;
use serde_json::json;

use super::{Args, Exit};
use crate::config::Config;
use crate::store::{self, DevicePhase, DeviceRecord, Store};

/// The most certificate records `show` reads for one device, newest first.
pub const MAX_STATUSES_READ: usize = 256;

const HELP: &str = "\
usage: otad device <subcommand> (--config FILE | --state DIR) ...

subcommands:
  list      every device: UDID, serial, product, version, user, phase, current
            certificate, first and last seen
  show      one device, by UDID or serial number, with its certificates and history
  block     refuse a device by serial number from now on
  unblock   lift a block
  blocked   list the blocked serial numbers

Every subcommand takes --config FILE (the state's otad.toml) or --state DIR (the state dir
otad init made, holding otad.toml). `otad device <subcommand> --help` explains each. Safe
while otad serve runs.
";

const LIST_HELP: &str = "\
usage: otad device list (--config FILE | --state DIR) [--json]

Lists every device the server has seen, oldest first: UDID, serial number, product, OS
version, the user phase 1 admitted, the phase reached (identified, certified, enrolled),
the current certificate's serial and when it was first and last seen. --json prints one
JSON array of objects with those fields. A record that cannot be read is named on stderr
and skipped.

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
  --json          one JSON array instead of the table
";

const SHOW_HELP: &str = "\
usage: otad device show (--config FILE | --state DIR) [--json] UDID|SERIAL

Shows one device, found by UDID or by serial number (any case): what `list` shows, every
attribute it reported, who phase 1 admitted (user, token), its certificates (oldest first)
with the status of each (valid until, expired, superseded, or revoked with its date and
reason), and its history. --json prints the device record as stored (times in unix
seconds).

  --config FILE   the otad.toml of the state
  --state DIR     the state dir (its otad.toml)
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
    let config = super::config_required(config, help)?;
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
    Ok(list_text(&devices))
}

/// The table `list` prints: a header row, then one row a device. The text columns are as
/// wide as their longest value (a 40-digit serial of an imported CA, a long product name).
fn list_text(devices: &[DeviceRecord]) -> String {
    const HEADERS: [&str; 6] = [
        "UDID",
        "SERIAL",
        "PRODUCT",
        "VERSION",
        "USER",
        "CERTIFICATE",
    ];
    let rows: Vec<[String; 6]> = devices
        .iter()
        .map(|device| {
            [
                device.udid.clone(),
                clean(attribute(device, "SERIAL")),
                clean(attribute(device, "PRODUCT")),
                clean(attribute(device, "VERSION")),
                clean(device.admission.user.as_deref().unwrap_or("-")),
                device
                    .certificates
                    .last()
                    .map_or("-", String::as_str)
                    .to_string(),
            ]
        })
        .collect();
    let [udid, serial, product, version, user, certificate]: [usize; 6] =
        std::array::from_fn(|column| {
            let values = rows.iter().filter_map(|row| row.get(column));
            let header = HEADERS.get(column).copied().unwrap_or_default();
            super::column_width(header, values.map(String::as_str))
        });

    let mut text = format!(
        "{:<udid$}  {:<serial$}  {:<product$}  {:<version$}  {:<user$}  {:<10}  \
         {:<certificate$}  {:<20}  LAST SEEN\n",
        "UDID", "SERIAL", "PRODUCT", "VERSION", "USER", "PHASE", "CERTIFICATE", "FIRST SEEN"
    );
    for (device, row) in devices.iter().zip(&rows) {
        let [c_udid, c_serial, c_product, c_version, c_user, c_certificate] = row;
        text.push_str(&format!(
            "{c_udid:<udid$}  {c_serial:<serial$}  {c_product:<product$}  \
             {c_version:<version$}  {c_user:<user$}  {:<10}  {c_certificate:<certificate$}  \
             {:<20}  {}\n",
            phase_name(device.phase),
            store::rfc3339(device.first_seen),
            store::rfc3339(device.last_seen),
        ));
    }
    text
}

/// Where each of the device's certificates stands, by serial, from its certificate record.
/// Only the newest [`MAX_STATUSES_READ`] are read (a device re-enrolled many times keeps
/// every serial); the older ones are absent.
fn certificate_statuses(store: &Store, device: &DeviceRecord) -> BTreeMap<String, String> {
    let newest: Vec<&String> = device
        .certificates
        .iter()
        .rev()
        .take(MAX_STATUSES_READ)
        .collect();
    let records: Vec<store::CertRecord> = newest
        .iter()
        .filter_map(|serial| store.cert(serial).ok().flatten())
        .collect();
    let statuses = super::cert::statuses(&records, store::now());

    let mut texts: BTreeMap<String, String> = newest
        .into_iter()
        .map(|serial| {
            let missing = "no readable certificate record (run otad fsck)".to_string();
            (serial.clone(), missing)
        })
        .collect();
    for (record, status) in records.iter().zip(statuses) {
        texts.insert(
            record.serial.clone(),
            super::cert::status_text(record, status),
        );
    }
    texts
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
    if !store::valid_udid(&key) && store::normalize_device_serial(&key).is_none() {
        return Err(Exit::Usage(format!(
            "{:?}: neither a UDID nor a serial number\n\n{SHOW_HELP}",
            clean(&key)
        )));
    }
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
    let statuses = certificate_statuses(&store, &device);
    let status_of = |serial: &str| {
        statuses.get(serial).cloned().unwrap_or_else(|| {
            format!("not read: older than the newest {MAX_STATUSES_READ} certificates")
        })
    };
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
            Some(serde_json::Value::String(s)) if field == "certificate" => {
                format!("{} ({})", clean(s), status_of(s))
            }
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
        text.push_str(&format!("  {}  {}\n", clean(serial), status_of(serial)));
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
        assert!(matches!(
            dispatch(args(&["list"])),
            Err(Exit::Usage(m)) if m.starts_with("--config FILE or --state DIR is required")
        ));
        for list in [&["--help"][..], &["list", "--help"], &["show", "--help"]] {
            let help = dispatch(args(list)).unwrap();
            assert!(
                help.contains("--config FILE") && help.contains("--state DIR"),
                "{help}"
            );
        }
        assert!(matches!(
            dispatch(args(&["show", "--config", "x"])),
            Err(Exit::Usage(m)) if m.contains("UDID or SERIAL")
        ));
        assert!(matches!(dispatch(args(&["list", "--help"])), Ok(text) if text.contains("--json")));
    }

    fn device(udid: &str, serial: &str, certificates: &[&str]) -> DeviceRecord {
        DeviceRecord {
            udid: udid.into(),
            attributes: BTreeMap::from([("SERIAL".into(), serial.into())]),
            phase: store::DevicePhase::Certified,
            first_seen: 1,
            last_seen: 1,
            certificates: certificates.iter().map(|s| s.to_string()).collect(),
            history: Vec::new(),
            admission: Default::default(),
            hook_variables: Default::default(),
        }
    }

    fn cert_record(serial: &str, udid: &str, issued_at: i64) -> store::CertRecord {
        store::CertRecord {
            serial: serial.into(),
            udid: Some(udid.into()),
            subject: format!("CN={udid}"),
            issued_at,
            not_after: store::now() + 86_400,
            revoked: None,
            revocation_reason: None,
            authorised_by: "ota".into(),
            superseded_by: None,
            pem: String::new(),
        }
    }

    #[test]
    fn show_gives_each_certificates_status_and_says_when_the_current_one_is_revoked() {
        let (_dir, config) = crate::commands::test_state();
        let ctx = crate::context::Context::load(&config).unwrap();
        let udid = "00008030-001A35E12345802E";
        let (old, current) = ("0a01", "0b02");
        ctx.store
            .create_cert(&cert_record(old, udid, store::now() - 60))
            .unwrap();
        ctx.store
            .create_cert(&cert_record(current, udid, store::now()))
            .unwrap();
        ctx.store
            .save_device(&device(udid, "C02SHOW01", &[old, "0c03", current]))
            .unwrap();
        let config = config.to_str().unwrap();
        let show = || {
            dispatch(vec![
                "show".into(),
                "--config".into(),
                config.into(),
                udid.into(),
            ])
        };

        let before = show().unwrap();
        let until = store::rfc3339(store::now() + 86_400);
        let line = before
            .lines()
            .find(|l| l.starts_with("certificate:"))
            .unwrap();
        assert!(
            line.starts_with("certificate: 0b02 (valid until "),
            "{before}"
        );
        assert!(
            before.contains("  0a01  superseded by a newer certificate of the same device\n"),
            "{before}"
        );
        assert!(
            before.contains("  0c03  no readable certificate record (run otad fsck)\n"),
            "{before}"
        );
        assert!(
            before.contains(&format!("  0b02  valid until {}", &until[..10])),
            "{before}"
        );

        let revoked = crate::pki::crl::revoke(
            &ctx.store,
            &ctx.ca,
            ctx.derived.crl_validity,
            current,
            crate::pki::crl::RevocationReason::KeyCompromise,
            store::now(),
        )
        .unwrap();
        let at = store::rfc3339(revoked.record.revoked.unwrap());
        let after = show().unwrap();
        assert!(
            after.contains(&format!(
                "certificate: 0b02 (revoked {at}, reason keyCompromise)\n"
            )),
            "{after}"
        );
        assert!(
            after.contains(&format!("  0b02  revoked {at}, reason keyCompromise\n")),
            "{after}"
        );
    }

    #[test]
    fn list_has_a_header_row_and_columns_as_wide_as_their_longest_value() {
        let long_serial = "7a3f0c1d2e3f405162738495a6b7c8d9e0f1a2b3";
        let devices = [
            device("00008030-001A35E12345802E", "C02AAA", &["0a"]),
            device(
                "0123456789abcdef0123456789abcdef01234567",
                "C02BBB",
                &[long_serial],
            ),
        ];
        let text = list_text(&devices);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with(&format!("UDID{}  SERIAL", " ".repeat(36))));
        for column in ["SERIAL", "PHASE", "CERTIFICATE", "FIRST SEEN", "LAST SEEN"] {
            let at = lines[0].find(column).unwrap();
            for line in &lines[1..] {
                assert!(line.get(..at).unwrap().ends_with("  "), "{column}: {text}");
                assert_ne!(line.get(at..at + 1), Some(" "), "{column}: {text}");
            }
        }
        assert!(
            lines[2].contains(&format!("certified   {long_serial}  ")),
            "{text}"
        );
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
