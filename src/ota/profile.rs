//! The property lists otad hands to devices: the phase 1 Profile Service payload, the phase 2
//! SCEP profile, and the phase 3 final profile (MDM enrollment or a configured template).
//!
//! Payload keys follow Apple's Configuration Profile Reference and "Over-the-Air Profile
//! Delivery and Configuration". Signing and encryption are the caller's (`ota` with `cms`).

use plist::{Dictionary, Value};

/// Apple's key usage bits in a SCEP payload: 1 signing, 4 encryption.
pub const SCEP_KEY_USAGE: i64 = 5;
/// The key size devices generate for their SCEP identity.
pub const SCEP_KEY_SIZE: i64 = 2048;

/// A random RFC 4122 version 4 UUID, uppercase as Apple writes them.
pub fn new_uuid() -> String {
    let mut bytes = [0u8; 16];
    // A failing system RNG leaves no safe way to continue; aws-lc-rs aborts on its own then.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Who otad says it is in every profile.
#[derive(Debug, Clone)]
pub struct Branding {
    /// PayloadOrganization.
    pub organization: String,
    /// The reverse-DNS prefix of PayloadIdentifier.
    pub identifier: String,
    /// PayloadDisplayName of the enrollment profiles.
    pub display_name: String,
}

fn header(
    payload_type: &str,
    identifier: String,
    display_name: &str,
    brand: &Branding,
) -> Dictionary {
    let mut dict = Dictionary::new();
    dict.insert("PayloadType".into(), Value::String(payload_type.into()));
    dict.insert("PayloadVersion".into(), Value::Integer(1.into()));
    dict.insert("PayloadIdentifier".into(), Value::String(identifier));
    dict.insert("PayloadUUID".into(), Value::String(new_uuid()));
    dict.insert(
        "PayloadDisplayName".into(),
        Value::String(display_name.into()),
    );
    dict.insert(
        "PayloadOrganization".into(),
        Value::String(brand.organization.clone()),
    );
    dict
}

/// Phase 1: the Profile Service payload asking the device to POST its attributes to `url`.
pub fn profile_service(
    brand: &Branding,
    url: &str,
    attributes: &[String],
    challenge: &str,
) -> Value {
    let mut content = Dictionary::new();
    content.insert("URL".into(), Value::String(url.into()));
    content.insert(
        "DeviceAttributes".into(),
        Value::Array(
            attributes
                .iter()
                .map(|a| Value::String(a.clone()))
                .collect(),
        ),
    );
    content.insert("Challenge".into(), Value::String(challenge.into()));

    let mut dict = header(
        "Profile Service",
        format!("{}.profile-service", brand.identifier),
        &brand.display_name,
        brand,
    );
    dict.insert(
        "PayloadDescription".into(),
        Value::String("Enrolls this device.".into()),
    );
    dict.insert("PayloadContent".into(), Value::Dictionary(content));
    Value::Dictionary(dict)
}

/// A certificate subject in the SCEP payload's form: an array of RDNs, each an array of
/// (type, value) pairs: `[[["CN", "UDID"]], [["O", "Org"]]]`.
fn subject_value(subject: &[(String, String)]) -> Value {
    Value::Array(
        subject
            .iter()
            .map(|(kind, value)| {
                Value::Array(vec![Value::Array(vec![
                    Value::String(kind.clone()),
                    Value::String(value.clone()),
                ])])
            })
            .collect(),
    )
}

/// A `com.apple.security.scep` payload, its PayloadIdentifier ending in `suffix`. Returns it
/// with its PayloadUUID, which an MDM payload names as its IdentityCertificateUUID.
pub fn scep_payload(
    brand: &Branding,
    suffix: &str,
    scep_url: &str,
    subject: &[(String, String)],
    challenge: &str,
) -> (Value, String) {
    let mut content = Dictionary::new();
    content.insert("URL".into(), Value::String(scep_url.into()));
    content.insert("Name".into(), Value::String(brand.organization.clone()));
    content.insert("Subject".into(), subject_value(subject));
    content.insert("Challenge".into(), Value::String(challenge.into()));
    content.insert("Keysize".into(), Value::Integer(SCEP_KEY_SIZE.into()));
    content.insert("Key Type".into(), Value::String("RSA".into()));
    content.insert("Key Usage".into(), Value::Integer(SCEP_KEY_USAGE.into()));

    let mut dict = header(
        "com.apple.security.scep",
        format!("{}.{suffix}", brand.identifier),
        "Device identity",
        brand,
    );
    dict.insert("PayloadContent".into(), Value::Dictionary(content));
    let uuid = match dict.get("PayloadUUID") {
        Some(Value::String(uuid)) => uuid.clone(),
        _ => String::new(),
    };
    (Value::Dictionary(dict), uuid)
}

/// What the MDM payload says (the `[mdm]` keys).
#[derive(Debug, Clone)]
pub struct MdmSettings {
    /// ServerURL.
    pub server_url: String,
    /// CheckInURL (empty: ServerURL).
    pub checkin_url: String,
    /// Topic.
    pub topic: String,
    /// SignMessage.
    pub sign_message: bool,
    /// AccessRights.
    pub access_rights: u32,
}

/// A `com.apple.mdm` payload whose identity is the SCEP payload `identity_uuid`.
pub fn mdm_payload(brand: &Branding, mdm: &MdmSettings, identity_uuid: &str) -> Value {
    let checkin = if mdm.checkin_url.is_empty() {
        &mdm.server_url
    } else {
        &mdm.checkin_url
    };
    let mut dict = header(
        "com.apple.mdm",
        format!("{}.mdm", brand.identifier),
        "MDM",
        brand,
    );
    dict.insert("ServerURL".into(), Value::String(mdm.server_url.clone()));
    dict.insert("CheckInURL".into(), Value::String(checkin.clone()));
    dict.insert("Topic".into(), Value::String(mdm.topic.clone()));
    dict.insert(
        "IdentityCertificateUUID".into(),
        Value::String(identity_uuid.into()),
    );
    dict.insert("SignMessage".into(), Value::Boolean(mdm.sign_message));
    dict.insert(
        "AccessRights".into(),
        Value::Integer(u64::from(mdm.access_rights).into()),
    );
    dict.insert("CheckOutWhenRemoved".into(), Value::Boolean(true));
    dict.insert(
        "ServerCapabilities".into(),
        Value::Array(vec![Value::String(
            "com.apple.mdm.per-user-connections".into(),
        )]),
    );
    Value::Dictionary(dict)
}

/// A Configuration profile holding `payloads` in PayloadContent.
pub fn configuration(
    brand: &Branding,
    name: &str,
    suffix: &str,
    payloads: Vec<Value>,
) -> Dictionary {
    let mut dict = header(
        "Configuration",
        format!("{}.{suffix}", brand.identifier),
        name,
        brand,
    );
    dict.insert("PayloadContent".into(), Value::Array(payloads));
    dict
}

/// Replaces a profile's PayloadContent array with EncryptedPayloadContent made by
/// `encrypt` from the array's XML serialisation. Returns `None` when there is no array.
pub fn encrypt_payload_content<E>(
    profile: &mut Dictionary,
    encrypt: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
) -> Option<Result<(), E>> {
    let content = match profile.remove("PayloadContent") {
        Some(content @ Value::Array(_)) => content,
        other => {
            if let Some(other) = other {
                profile.insert("PayloadContent".into(), other);
            }
            return None;
        }
    };
    let plaintext = to_xml(&content);
    Some(encrypt(&plaintext).map(|sealed| {
        profile.insert("EncryptedPayloadContent".into(), Value::Data(sealed));
    }))
}

/// XML serialisation of a plist value.
pub fn to_xml(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail for a value built in memory.
    let _ = value.to_writer_xml(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brand() -> Branding {
        Branding {
            organization: "Example".into(),
            identifier: "com.example.otad".into(),
            display_name: "Enroll".into(),
        }
    }

    #[test]
    fn uuids_are_v4_and_distinct() {
        let a = new_uuid();
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'4');
        assert_ne!(a, new_uuid());
    }

    #[test]
    fn profile_service_has_what_the_device_needs() {
        let attrs = vec!["UDID".to_string(), "SERIAL".to_string()];
        let value = profile_service(&brand(), "https://x/ota/phase23", &attrs, "chal");
        let dict = value.as_dictionary().unwrap();
        assert_eq!(dict["PayloadType"].as_string(), Some("Profile Service"));
        let content = dict["PayloadContent"].as_dictionary().unwrap();
        assert_eq!(content["URL"].as_string(), Some("https://x/ota/phase23"));
        assert_eq!(content["Challenge"].as_string(), Some("chal"));
        assert_eq!(content["DeviceAttributes"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn scep_payload_spells_keys_as_apple_does() {
        let subject = vec![
            ("CN".to_string(), "UDID-1".to_string()),
            ("O".to_string(), "Ex".to_string()),
        ];
        let (value, uuid) = scep_payload(&brand(), "scep", "https://x/scep", &subject, "c");
        let dict = value.as_dictionary().unwrap();
        assert_eq!(dict["PayloadUUID"].as_string(), Some(uuid.as_str()));
        let content = dict["PayloadContent"].as_dictionary().unwrap();
        assert_eq!(content["Key Type"].as_string(), Some("RSA"));
        assert_eq!(content["Key Usage"].as_signed_integer(), Some(5));
        assert_eq!(content["Keysize"].as_signed_integer(), Some(2048));
        let rdns = content["Subject"].as_array().unwrap();
        let first = rdns[0].as_array().unwrap()[0].as_array().unwrap();
        assert_eq!(first[0].as_string(), Some("CN"));
        assert_eq!(first[1].as_string(), Some("UDID-1"));
    }

    #[test]
    fn encrypting_replaces_the_content() {
        let mut profile = configuration(&brand(), "n", "s", vec![Value::String("p".into())]);
        let done = encrypt_payload_content(&mut profile, |plain| {
            assert!(plain.starts_with(b"<?xml"));
            Ok::<_, ()>(b"sealed".to_vec())
        });
        assert_eq!(done, Some(Ok(())));
        assert!(profile.get("PayloadContent").is_none());
        assert_eq!(
            profile["EncryptedPayloadContent"].as_data(),
            Some(&b"sealed"[..])
        );
    }
}
