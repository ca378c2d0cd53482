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

/// The attributes otad reads, decides on or records by name, which must be plist strings
/// when sent (an integer UDID or SERIAL would otherwise become one by accident): the ones
/// phase 1 asks for by default, and the challenge.
fn string_attribute(key: &str) -> Option<&'static str> {
    crate::config::DEFAULT_DEVICE_ATTRIBUTES
        .iter()
        .chain(&["CHALLENGE"])
        .find(|name| **name == key)
        .copied()
}

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
    /// An attribute is given twice (which one would count is the parser's choice).
    Duplicate(String),
    /// An attribute otad reads by name (UDID, SERIAL, CHALLENGE, ...) is not a string.
    NotAString(&'static str),
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
            AttributesError::Duplicate(key) => {
                write!(f, "device attributes: {key:?} is given twice")
            }
            AttributesError::NotAString(key) => {
                write!(f, "device attributes: {key} is not a string")
            }
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

    // Apple writes neither; the plist reader drops what they hold without a word (a CDATA
    // key reads as "", an entity declared inside the DOCTYPE expands to nothing).
    for (construct, what) in [
        (&b"<![CDATA["[..], "a CDATA section"),
        (&b"<!ENTITY"[..], "an entity declaration"),
    ] {
        if head.windows(construct.len()).any(|w| w == construct) {
            return Err(AttributesError::Malformed(format!(
                "{what} is not accepted"
            )));
        }
    }
    crate::plistshape::check(head, MAX_DEPTH, MAX_TAGS).map_err(|err| match err {
        crate::plistshape::ShapeError::TooDeep(_) => {
            AttributesError::OverLimit("nesting is too deep")
        }
        crate::plistshape::ShapeError::TooManyTags(_) => {
            AttributesError::OverLimit("too many elements")
        }
    })?;
    let entries = top_entries(content)?;
    let mut seen = std::collections::HashSet::new();
    if let Some((key, _)) = entries.iter().find(|(key, _)| !seen.insert(key.as_str())) {
        return Err(AttributesError::Duplicate(crate::logger::one_line(
            key,
            MAX_KEY_LEN,
        )));
    }
    if entries.len() > MAX_ATTRIBUTES {
        return Err(AttributesError::OverLimit("too many attributes"));
    }

    let mut values = BTreeMap::new();
    for (key, value) in entries {
        if key.len() > MAX_KEY_LEN {
            return Err(AttributesError::OverLimit("an attribute name is too long"));
        }
        if let Some(name) = string_attribute(&key) {
            if !matches!(value, plist::Value::String(_)) {
                return Err(AttributesError::NotAString(name));
            }
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

/// The top dictionary's entries in the order sent, a key given twice kept twice (the plist
/// crate's `Value` would keep the last silently). One parse; only a plist that does not read
/// as a dictionary is parsed again, to say why. The caller has bounded size and nesting.
fn top_entries(content: &[u8]) -> Result<Vec<(String, plist::Value)>, AttributesError> {
    match plist::from_reader_xml::<_, Entries>(Cursor::new(content)) {
        Ok(entries) => Ok(entries.0),
        Err(err) => Err(match plist::Value::from_reader_xml(Cursor::new(content)) {
            Err(why) => AttributesError::Malformed(why.to_string()),
            Ok(plist::Value::Dictionary(_)) => AttributesError::Malformed(err.to_string()),
            Ok(_) => AttributesError::NotADictionary,
        }),
    }
}

/// What [`top_entries`] reads.
struct Entries(Vec<(String, plist::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Entries;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a dictionary")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, plist::Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }

        deserializer.deserialize_map(Visitor)
    }
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
    fn a_key_given_twice_is_refused_wherever_it_is() {
        for body in [
            "<key>UDID</key><string>A</string><key>UDID</key><string>B</string>",
            "<key>SERIAL</key><string>S1</string><key>UDID</key><string>A</string>\
             <key>SERIAL</key><string>S2</string>",
            "<key>UDID</key><string>A</string><key>CHALLENGE</key><string>c</string>\
             <key>X</key><array><string>CHALLENGE</string></array>\
             <key>CHALLENGE</key><string>d</string>",
        ] {
            let key = parse(&plist(body)).expect_err(body);
            assert!(
                matches!(key, AttributesError::Duplicate(_)),
                "{body}: {key:?}"
            );
        }
        assert_eq!(
            parse(&plist(
                "<key>UDID</key><string>A</string><key>SERIAL</key><string>S1</string>\
                 <key>SERIAL</key><string>S2</string>"
            )),
            Err(AttributesError::Duplicate("SERIAL".into()))
        );

        // The same name inside a nested dictionary, or as a value, is no duplicate.
        let nested = plist(
            "<key>UDID</key><string>A</string><key>D</key><dict><key>UDID</key>\
             <string>B</string></dict><key>N</key><string>UDID</string>",
        );
        assert_eq!(parse(&nested).unwrap().udid(), "A");
    }

    #[test]
    fn cdata_and_entity_declarations_are_refused_not_dropped() {
        let cdata = plist("<key><![CDATA[UDID]]></key><string>B</string>");
        let entity = "<?xml version=\"1.0\"?><!DOCTYPE plist [<!ENTITY u \"UDID\">]>\
                      <plist version=\"1.0\"><dict><key>&u;</key><string>B</string></dict>\
                      </plist>";
        for body in [cdata, entity.as_bytes().to_vec()] {
            let err = parse(&body).unwrap_err();
            assert!(
                matches!(&err, AttributesError::Malformed(why) if why.ends_with("not accepted")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn the_attributes_otad_reads_must_be_strings() {
        for (key, value) in [
            ("UDID", "<integer>123456789</integer>"),
            ("UDID", "<data>AAAA</data>"),
            ("SERIAL", "<integer>-1</integer>"),
            ("CHALLENGE", "<integer>5</integer>"),
            ("PRODUCT", "<true/>"),
            ("IMEI", "<array/>"),
        ] {
            let udid = if key == "UDID" {
                String::new()
            } else {
                "<key>UDID</key><string>A</string>".to_string()
            };
            let body = plist(&format!("{udid}<key>{key}</key>{value}"));
            assert_eq!(
                parse(&body),
                Err(AttributesError::NotAString(string_attribute(key).unwrap())),
                "{key} {value}"
            );
        }
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
