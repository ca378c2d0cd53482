//! The device's phase 2 and phase 3 body content: an XML property list of attributes.
//!
//! The signed content is a flat dictionary (`UDID`, `SERIAL`, `PRODUCT`, `VERSION`, `IMEI`,
//! `CHALLENGE`, …). Size and nesting depth are checked before the plist parser sees it, and
//! key count and value lengths after, so a hostile body cannot make it recurse without limit.
//! See Apple's "Over-the-Air Profile Delivery and Configuration", phase 2.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Cursor;

/// Largest attribute plist accepted, in bytes.
pub const MAX_PLIST_BYTES: usize = 32 * 1024;
/// Most attributes in one body.
pub const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute name.
pub const MAX_KEY_LEN: usize = 64;
/// Longest attribute value.
pub const MAX_VALUE_LEN: usize = 1024;
/// Deepest nesting of arrays and dictionaries accepted (the top dictionary counts as 1).
pub const MAX_DEPTH: usize = 4;
/// Most XML tags in one attribute plist.
pub const MAX_TAGS: usize = 1024;

/// Why the attribute plist was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttributesError {
    /// The content is larger than [`MAX_PLIST_BYTES`].
    TooLarge(usize),
    /// Not an XML property list.
    NotXml,
    /// The plist does not parse.
    Malformed(String),
    /// The top level is not a dictionary.
    NotADictionary,
    /// More than [`MAX_ATTRIBUTES`], nesting beyond [`MAX_DEPTH`], or a key or value too long.
    OverLimit(&'static str),
    /// The UDID attribute is absent.
    MissingUdid,
}

impl fmt::Display for AttributesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttributesError::TooLarge(n) => {
                write!(
                    f,
                    "device attributes: {n} bytes, over the {MAX_PLIST_BYTES} allowed"
                )
            }
            AttributesError::NotXml => f.write_str("device attributes: not an XML property list"),
            AttributesError::Malformed(why) => {
                write!(f, "device attributes: malformed plist: {why}")
            }
            AttributesError::NotADictionary => {
                f.write_str("device attributes: the plist is not a dictionary")
            }
            AttributesError::OverLimit(what) => write!(f, "device attributes: {what}"),
            AttributesError::MissingUdid => f.write_str("device attributes: no UDID"),
        }
    }
}

impl std::error::Error for AttributesError {}

/// What a device said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAttributes {
    /// Every scalar attribute, as text (booleans as `true`/`false`), CHALLENGE included.
    pub values: BTreeMap<String, String>,
}

impl DeviceAttributes {
    /// One attribute, if sent and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The UDID (present: [`parse`] refuses a body without one).
    pub fn udid(&self) -> &str {
        self.get("UDID").unwrap_or_default()
    }

    /// The challenge the device echoes from phase 1.
    pub fn challenge(&self) -> Option<&str> {
        self.get("CHALLENGE")
    }

    /// The attributes worth recording: everything but the challenge.
    pub fn recordable(&self) -> BTreeMap<String, String> {
        let mut values = self.values.clone();
        values.remove("CHALLENGE");
        values
    }
}

/// Parses the signed content of a phase 2 or 3 body.
pub fn parse(content: &[u8]) -> Result<DeviceAttributes, AttributesError> {
    if content.len() > MAX_PLIST_BYTES {
        return Err(AttributesError::TooLarge(content.len()));
    }
    let start = content
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(content.len());
    let head = content.get(start..).unwrap_or_default();
    if !(head.starts_with(b"<?xml")
        || head.starts_with(b"<plist")
        || head.starts_with(b"<!DOCTYPE"))
    {
        return Err(AttributesError::NotXml);
    }

    crate::plistshape::check(head, MAX_DEPTH, MAX_TAGS).map_err(|err| match err {
        crate::plistshape::ShapeError::TooDeep(_) => {
            AttributesError::OverLimit("nesting is too deep")
        }
        crate::plistshape::ShapeError::TooManyTags(_) => {
            AttributesError::OverLimit("too many elements")
        }
    })?;
    let value = plist::Value::from_reader_xml(Cursor::new(content))
        .map_err(|err| AttributesError::Malformed(err.to_string()))?;
    let plist::Value::Dictionary(dict) = value else {
        return Err(AttributesError::NotADictionary);
    };
    if dict.len() > MAX_ATTRIBUTES {
        return Err(AttributesError::OverLimit("too many attributes"));
    }

    let mut values = BTreeMap::new();
    for (key, value) in dict {
        if key.len() > MAX_KEY_LEN {
            return Err(AttributesError::OverLimit("an attribute name is too long"));
        }
        let text = match value {
            plist::Value::String(s) => s,
            plist::Value::Boolean(b) => b.to_string(),
            plist::Value::Integer(i) => i.to_string(),
            // Collections, data and dates carry nothing otad records.
            _ => continue,
        };
        if text.len() > MAX_VALUE_LEN {
            return Err(AttributesError::OverLimit("an attribute value is too long"));
        }
        values.insert(key, text);
    }

    let attributes = DeviceAttributes { values };
    if attributes.get("UDID").is_none() {
        return Err(AttributesError::MissingUdid);
    }
    Ok(attributes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plist(body: &str) -> Vec<u8> {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <plist version=\"1.0\"><dict>{body}</dict></plist>"
        )
        .into_bytes()
    }

    #[test]
    fn reads_scalars_and_skips_collections() {
        let body = plist(
            "<key>UDID</key><string>ABC-123</string><key>NotOnConsole</key><false/>\
             <key>CHALLENGE</key><string>c</string>\
             <key>List</key><array><string>x</string></array>",
        );
        let attributes = parse(&body).unwrap();
        assert_eq!(attributes.udid(), "ABC-123");
        assert_eq!(attributes.get("NotOnConsole"), Some("false"));
        assert_eq!(attributes.challenge(), Some("c"));
        assert!(!attributes.values.contains_key("List"));
        assert!(!attributes.recordable().contains_key("CHALLENGE"));
    }

    #[test]
    fn refuses_what_it_must() {
        assert_eq!(
            parse(&plist("<key>SERIAL</key><string>X</string>")),
            Err(AttributesError::MissingUdid)
        );
        assert_eq!(parse(b"bplist00..."), Err(AttributesError::NotXml));
        assert!(matches!(
            parse(&plist("<key>UDID</key>")),
            Err(AttributesError::Malformed(_))
        ));
        let deep = format!(
            "<key>UDID</key><string>A</string><key>D</key>{}{}",
            "<array>".repeat(10),
            "</array>".repeat(10)
        );
        assert_eq!(
            parse(&plist(&deep)),
            Err(AttributesError::OverLimit("nesting is too deep"))
        );
        let long = format!(
            "<key>UDID</key><string>{}</string>",
            "A".repeat(MAX_VALUE_LEN + 1)
        );
        assert_eq!(
            parse(&plist(&long)),
            Err(AttributesError::OverLimit("an attribute value is too long"))
        );
        let many: String = (0..=MAX_ATTRIBUTES)
            .map(|i| format!("<key>K{i}</key><string>v</string>"))
            .collect();
        assert_eq!(
            parse(&plist(&many)),
            Err(AttributesError::OverLimit("too many attributes"))
        );
        assert!(matches!(
            parse(&vec![b' '; MAX_PLIST_BYTES + 1]),
            Err(AttributesError::TooLarge(_))
        ));
        let array = b"<?xml version=\"1.0\"?><plist version=\"1.0\"><array/></plist>";
        assert_eq!(parse(array), Err(AttributesError::NotADictionary));
    }

    #[test]
    fn every_limit_holds_to_the_unit() {
        let udid = "<key>UDID</key><string>A</string>";
        let refused = |what| Err(AttributesError::OverLimit(what));

        // Size: whitespace between the elements pads the body to exactly `len` bytes.
        let sized = |len: usize| {
            let bare = plist(udid).len();
            plist(&format!("{udid}{}", " ".repeat(len - bare)))
        };
        assert_eq!(sized(MAX_PLIST_BYTES).len(), MAX_PLIST_BYTES);
        assert_eq!(parse(&sized(MAX_PLIST_BYTES)).unwrap().udid(), "A");
        assert_eq!(
            parse(&sized(MAX_PLIST_BYTES + 1)),
            Err(AttributesError::TooLarge(MAX_PLIST_BYTES + 1))
        );

        // Depth: the top dictionary and `n - 1` arrays inside it.
        let deep = |n: usize| {
            plist(&format!(
                "{udid}<key>D</key>{}{}",
                "<array>".repeat(n - 1),
                "</array>".repeat(n - 1)
            ))
        };
        assert!(parse(&deep(MAX_DEPTH)).is_ok());
        assert_eq!(parse(&deep(MAX_DEPTH + 1)), refused("nesting is too deep"));

        // Count: the UDID and `n - 1` more.
        let many = |n: usize| {
            let more: String = (1..n)
                .map(|i| format!("<key>K{i}</key><string>v</string>"))
                .collect();
            plist(&format!("{udid}{more}"))
        };
        assert_eq!(
            parse(&many(MAX_ATTRIBUTES)).unwrap().values.len(),
            MAX_ATTRIBUTES
        );
        assert_eq!(
            parse(&many(MAX_ATTRIBUTES + 1)),
            refused("too many attributes")
        );

        // Name and value lengths, in bytes.
        let named = |n: usize| plist(&format!("{udid}<key>{}</key><true/>", "K".repeat(n)));
        assert!(parse(&named(MAX_KEY_LEN)).is_ok());
        assert_eq!(
            parse(&named(MAX_KEY_LEN + 1)),
            refused("an attribute name is too long")
        );
        let valued = |n: usize| {
            plist(&format!(
                "<key>UDID</key><string>{}</string>",
                "\u{e9}".repeat(n / 2) + &"A".repeat(n % 2)
            ))
        };
        assert_eq!(
            parse(&valued(MAX_VALUE_LEN)).unwrap().udid().len(),
            MAX_VALUE_LEN
        );
        assert_eq!(
            parse(&valued(MAX_VALUE_LEN + 1)),
            refused("an attribute value is too long")
        );

        // Tags, every `<` counted (the XML declaration too): `<true/>`s in an array make up
        // the number.
        let tagged = |n: usize| {
            let with = |trues: usize| {
                plist(&format!(
                    "{udid}<key>L</key><array>{}</array>",
                    "<true/>".repeat(trues)
                ))
            };
            let fixed = with(0).iter().filter(|&&b| b == b'<').count();
            with(n - fixed)
        };
        let tags = |body: &[u8]| body.iter().filter(|&&b| b == b'<').count();
        assert_eq!(tags(&tagged(MAX_TAGS)), MAX_TAGS);
        assert!(parse(&tagged(MAX_TAGS)).is_ok());
        assert_eq!(parse(&tagged(MAX_TAGS + 1)), refused("too many elements"));
    }
}
