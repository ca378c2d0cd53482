//! A few lines of DER surgery for tests that rebuild real requests the ways other devices
//! (or attackers) would send them. Every tag the fixtures use is one octet.

#![allow(dead_code)]

use std::error::Error;

use otad::cms::oid;

/// One DER element of the fixture (all its tags are one octet).
#[derive(Clone, Copy)]
pub struct Tlv<'a> {
    /// The tag octet.
    pub tag: u8,
    /// The contents.
    pub content: &'a [u8],
    /// Tag, length and contents.
    pub raw: &'a [u8],
}

/// Splits the DER element at the start of `input` from the rest.
pub fn split(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), Box<dyn Error>> {
    let tag = *input.first().ok_or("no tag")?;
    let first = *input.get(1).ok_or("no length")?;
    let (length, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let count = usize::from(first & 0x7f);
        let octets = input.get(2..2 + count).ok_or("short length")?;
        let length = octets
            .iter()
            .fold(0usize, |value, octet| (value << 8) | usize::from(*octet));
        (length, 2 + count)
    };
    let raw = input.get(..header + length).ok_or("short content")?;
    let content = raw.get(header..).ok_or("short content")?;
    let rest = input.get(header + length..).ok_or("short content")?;
    Ok((Tlv { tag, content, raw }, rest))
}

/// The DER elements filling `content`.
pub fn children(content: &[u8]) -> Result<Vec<Tlv<'_>>, Box<dyn Error>> {
    let mut out = Vec::new();
    let mut rest = content;
    while !rest.is_empty() {
        let (child, after) = split(rest)?;
        out.push(child);
        rest = after;
    }
    Ok(out)
}

/// DER of `tag` around `content`.
pub fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let length = content.len();
    if length < 0x80 {
        out.push(length as u8);
    } else {
        let octets: Vec<u8> = length
            .to_be_bytes()
            .into_iter()
            .skip_while(|o| *o == 0)
            .collect();
        out.push(0x80 | octets.len() as u8);
        out.extend_from_slice(&octets);
    }
    out.extend_from_slice(content);
    out
}

/// The raw fields of the SignedData inside the ContentInfo `der`.
pub fn signed_data_fields(der: &[u8]) -> Result<Vec<Vec<u8>>, Box<dyn Error>> {
    let (content_info, _) = split(der)?;
    let fields = children(content_info.content)?;
    let explicit = fields.get(1).ok_or("no [0]")?;
    let (signed_data, _) = split(explicit.content)?;
    if content_info.tag != 0x30 || explicit.tag != 0xa0 || signed_data.tag != 0x30 {
        return Err("not a ContentInfo(SignedData)".into());
    }
    Ok(children(signed_data.content)?
        .iter()
        .map(|field| field.raw.to_vec())
        .collect())
}

/// A ContentInfo(SignedData) with these SignedData fields.
pub fn with_signed_data_fields(fields: &[Vec<u8>]) -> Vec<u8> {
    let signed_data = encode(0x30, &fields.concat());
    let content_type = encode(0x06, oid::ID_SIGNED_DATA.as_bytes());
    encode(0x30, &[content_type, encode(0xa0, &signed_data)].concat())
}
