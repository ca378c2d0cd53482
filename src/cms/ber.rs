//! BER → DER normaliser for the CMS messages that devices and SCEP clients send.
//!
//! The `der` and `cms` crates, and the strict parsers in this layer, accept DER only, while
//! Apple devices and streaming encoders (OpenSSL `cms -stream`, Bouncy Castle) send BER:
//! indefinite lengths, non-minimal lengths, and strings cut into chunks. [`normalize`] turns
//! one BER element into DER without touching anything that is already DER, so certificates
//! embedded in a message keep the exact bytes their signatures cover. It is hand-written,
//! iterates over siblings, and recurses only into nested elements, bounded by
//! [`BerLimits::max_depth`].
//!
//! The module also holds the small DER reading and writing helpers the rest of the CMS layer
//! uses, so that every parser in it shares one definition of a TLV.

use std::fmt;

/// Bounds on what [`normalize_with`] accepts; each one guards against hostile input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BerLimits {
    /// Deepest nesting of constructed elements (the outermost element is depth 1).
    pub max_depth: usize,
    /// Most elements (TLVs, not counting end-of-contents markers) in the whole input.
    pub max_elements: usize,
    /// Longest input, in octets.
    pub max_input: usize,
}

/// The limits [`normalize`] uses: generous for SCEP and OTA messages (a few KiB each).
pub const DEFAULT_LIMITS: BerLimits = BerLimits {
    max_depth: 32,
    max_elements: 20_000,
    max_input: 256 * 1024,
};

/// Depth that no caller-chosen limit may exceed, so that the recursion stays within the stack.
const HARD_MAX_DEPTH: usize = 128;

/// Most octets after the `0x8n` length octet: lengths up to 4 GiB - 1.
const MAX_LENGTH_OCTETS: usize = 4;

/// Most subsequent octets of a high tag number: tag numbers below 2^28.
const MAX_TAG_OCTETS: usize = 4;

/// Identifier octet of a universal primitive OCTET STRING.
const OCTET_STRING: u8 = 0x04;
/// Identifier octet of a universal constructed OCTET STRING (BER only).
const OCTET_STRING_CONSTRUCTED: u8 = 0x24;
/// Identifier octet of a universal primitive BIT STRING.
const BIT_STRING: u8 = 0x03;
/// Identifier octet of a universal constructed BIT STRING (BER only).
const BIT_STRING_CONSTRUCTED: u8 = 0x23;
/// Identifier octet of an OBJECT IDENTIFIER.
const OBJECT_IDENTIFIER: u8 = 0x06;
/// Identifier octet of a SEQUENCE.
const SEQUENCE: u8 = 0x30;
/// Identifier octet of a constructed context-specific `[0]`.
const CONTEXT_0_CONSTRUCTED: u8 = 0xa0;
/// Identifier octet of a primitive context-specific `[0]`.
const CONTEXT_0_PRIMITIVE: u8 = 0x80;

/// Why BER input could not be normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BerError {
    /// Constructed elements are nested deeper than [`BerLimits::max_depth`].
    TooDeep,
    /// The input holds more elements than [`BerLimits::max_elements`].
    TooManyElements,
    /// The input is longer than [`BerLimits::max_input`].
    TooLarge,
    /// The input ends inside an element.
    Truncated,
    /// A length is malformed: indefinite on a primitive, reserved, too long, or not filled.
    BadLength,
    /// An identifier is malformed, or an end-of-contents marker is where an element belongs.
    BadTag,
    /// Octets follow the single top-level element.
    TrailingData,
    /// A chunk of a constructed string is not of the string's own type.
    BadChunk,
    /// A BIT STRING chunk has a bad unused-bits count.
    BadBitString,
}

impl fmt::Display for BerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::TooDeep => "ber: elements nested too deeply",
            Self::TooManyElements => "ber: too many elements",
            Self::TooLarge => "ber: input too large",
            Self::Truncated => "ber: input ends inside an element",
            Self::BadLength => "ber: malformed length",
            Self::BadTag => "ber: malformed identifier",
            Self::TrailingData => "ber: data after the top-level element",
            Self::BadChunk => "ber: constructed string holds a chunk of another type",
            Self::BadBitString => "ber: bit string chunk has a bad unused-bits count",
        };
        f.write_str(text)
    }
}

impl std::error::Error for BerError {}

/// Normalises one BER element to DER under [`DEFAULT_LIMITS`]; see [`normalize_with`].
pub fn normalize(input: &[u8]) -> Result<Vec<u8>, BerError> {
    normalize_with(input, &DEFAULT_LIMITS)
}

/// Normalises exactly one BER element (X.690 §8) to DER (X.690 §10) under `limits`.
///
/// Indefinite and non-minimal lengths become minimal definite ones; constructed OCTET STRINGs
/// and BIT STRINGs become primitive ones (chunks concatenated, nested chunks too); the
/// EncryptedContentInfo `[0]` of RFC 5652 §6.1 becomes primitive (see the comment on that rule
/// below). SET OF elements are not re-sorted: the order received is kept. Input that is already
/// DER comes out byte-identical.
pub fn normalize_with(input: &[u8], limits: &BerLimits) -> Result<Vec<u8>, BerError> {
    if input.len() > limits.max_input {
        return Err(BerError::TooLarge);
    }

    let mut normalizer = Normalizer {
        max_depth: limits.max_depth.min(HARD_MAX_DEPTH),
        max_elements: limits.max_elements,
        elements: 0,
    };
    let (element, used) = normalizer.element(input, 1)?;

    if used != input.len() {
        return Err(BerError::TrailingData);
    }
    Ok(element.der)
}

/// The identifier and length octets of one element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The first identifier octet: class, constructed bit, and the low tag number.
    pub(crate) first: u8,
    /// How many identifier octets there are (more than one for high tag numbers).
    pub(crate) tag_len: usize,
    /// The content length, or `None` for the indefinite form.
    pub(crate) length: Option<usize>,
    /// Identifier plus length octets.
    pub(crate) header_len: usize,
}

impl Header {
    /// Whether the constructed bit is set.
    pub(crate) fn constructed(&self) -> bool {
        self.first & 0x20 != 0
    }
}

/// Parses the identifier and length octets at the start of `input` (X.690 §8.1.2, §8.1.3).
pub(crate) fn header(input: &[u8]) -> Result<Header, BerError> {
    let first = *input.first().ok_or(BerError::Truncated)?;
    let mut pos = 1;

    if first & 0x1f == 0x1f {
        // High tag number: base-128 digits, most significant first, bit 8 set on all but the
        // last. X.690 §8.1.2.4.2 forbids a leading zero digit, and §8.1.2.2 says numbers below
        // 31 use the one-octet form.
        let mut number: u32 = 0;
        loop {
            let digit = *input.get(pos).ok_or(BerError::Truncated)?;
            if pos == 1 && digit == 0x80 {
                return Err(BerError::BadTag);
            }
            pos += 1;
            if pos - 1 > MAX_TAG_OCTETS {
                return Err(BerError::BadTag);
            }
            number = (number << 7) | u32::from(digit & 0x7f);
            if digit & 0x80 == 0 {
                break;
            }
        }
        if number < 31 {
            return Err(BerError::BadTag);
        }
    }
    let tag_len = pos;

    let first_length = *input.get(pos).ok_or(BerError::Truncated)?;
    pos += 1;
    let length = match first_length {
        0x00..=0x7f => Some(usize::from(first_length)),
        0x80 => None,
        _ => {
            let count = usize::from(first_length & 0x7f);
            if count > MAX_LENGTH_OCTETS {
                // Also covers 0xff, which X.690 §8.1.3.5 reserves.
                return Err(BerError::BadLength);
            }
            let octets = input.get(pos..pos + count).ok_or(BerError::Truncated)?;
            pos += count;
            Some(
                octets
                    .iter()
                    .fold(0usize, |value, octet| (value << 8) | usize::from(*octet)),
            )
        }
    };

    Ok(Header {
        first,
        tag_len,
        length,
        header_len: pos,
    })
}

/// One element already normalised to DER.
struct Element {
    /// Its complete DER encoding.
    der: Vec<u8>,
    /// Where its content octets start in `der`.
    header_len: usize,
    /// Constructed, and every child is an OCTET STRING (after normalisation).
    only_octet_strings: bool,
}

impl Element {
    /// The first identifier octet.
    fn first(&self) -> Option<u8> {
        self.der.first().copied()
    }

    /// The content octets.
    fn content(&self) -> &[u8] {
        self.der.get(self.header_len..).unwrap_or_default()
    }
}

/// Walks BER input, counting elements against the limits.
struct Normalizer {
    max_depth: usize,
    max_elements: usize,
    elements: usize,
}

impl Normalizer {
    /// Normalises the element at the start of `input` (at nesting `depth`), returning it and
    /// how many input octets it took.
    fn element(&mut self, input: &[u8], depth: usize) -> Result<(Element, usize), BerError> {
        if depth > self.max_depth {
            return Err(BerError::TooDeep);
        }
        self.elements += 1;
        if self.elements > self.max_elements {
            return Err(BerError::TooManyElements);
        }

        let header = header(input)?;
        if header.first == 0x00 {
            // An end-of-contents marker (or universal tag 0) where an element must be.
            return Err(BerError::BadTag);
        }
        let tag = input.get(..header.tag_len).ok_or(BerError::Truncated)?;

        if !header.constructed() {
            let length = header.length.ok_or(BerError::BadLength)?;
            let end = header
                .header_len
                .checked_add(length)
                .ok_or(BerError::BadLength)?;
            let content = input
                .get(header.header_len..end)
                .ok_or(BerError::Truncated)?;
            return Ok((encode_element(tag, content, false), end));
        }

        let (children, used) = match header.length {
            Some(length) => {
                let end = header
                    .header_len
                    .checked_add(length)
                    .ok_or(BerError::BadLength)?;
                let body = input
                    .get(header.header_len..end)
                    .ok_or(BerError::Truncated)?;
                (self.definite_children(body, depth)?, end)
            }
            None => {
                let rest = input.get(header.header_len..).ok_or(BerError::Truncated)?;
                let (children, used) = self.indefinite_children(rest, depth)?;
                (children, header.header_len + used)
            }
        };

        Ok((build_constructed(tag, children)?, used))
    }

    /// Normalises the children filling a definite-length body.
    fn definite_children(&mut self, body: &[u8], depth: usize) -> Result<Vec<Element>, BerError> {
        let mut children = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let (child, used) = self.element(rest, depth + 1)?;
            children.push(child);
            rest = rest.get(used..).ok_or(BerError::Truncated)?;
        }
        Ok(children)
    }

    /// Normalises children up to an end-of-contents marker, returning them and the octets
    /// taken including the marker.
    fn indefinite_children(
        &mut self,
        input: &[u8],
        depth: usize,
    ) -> Result<(Vec<Element>, usize), BerError> {
        let mut children = Vec::new();
        let mut pos = 0;
        loop {
            let rest = input.get(pos..).ok_or(BerError::Truncated)?;
            match rest {
                [] => return Err(BerError::Truncated),
                [0x00] => return Err(BerError::Truncated),
                [0x00, 0x00, ..] => return Ok((children, pos + 2)),
                [0x00, _, ..] => return Err(BerError::BadLength),
                _ => {
                    let (child, used) = self.element(rest, depth + 1)?;
                    children.push(child);
                    pos += used;
                }
            }
        }
    }
}

/// Builds the DER of a constructed element from its normalised children, applying the
/// string-flattening rules.
fn build_constructed(tag: &[u8], children: Vec<Element>) -> Result<Element, BerError> {
    match tag {
        [OCTET_STRING_CONSTRUCTED] => {
            let mut joined = Vec::new();
            for child in &children {
                if child.first() != Some(OCTET_STRING) {
                    return Err(BerError::BadChunk);
                }
                joined.extend_from_slice(child.content());
            }
            Ok(encode_element(&[OCTET_STRING], &joined, false))
        }
        [BIT_STRING_CONSTRUCTED] => {
            Ok(encode_element(&[BIT_STRING], &join_bits(&children)?, false))
        }
        [SEQUENCE] if is_encrypted_content_info(&children) => {
            // RFC 5652 §6.1: EncryptedContentInfo ::= SEQUENCE { contentType OID,
            // contentEncryptionAlgorithm AlgorithmIdentifier, encryptedContent [0] IMPLICIT
            // OCTET STRING OPTIONAL }. Streaming encoders send encryptedContent as a
            // constructed [0] of OCTET STRING chunks, the BER form of an IMPLICIT OCTET
            // STRING; DER needs it primitive. No generic rule can do this: the tag is
            // context-specific, so on its own a constructed [0] holding an OCTET STRING looks
            // just like an EXPLICIT [0] around one, which must stay as it is. Only the shape
            // of this SEQUENCE (OID, AlgorithmIdentifier, [0] of OCTET STRINGs) tells them
            // apart.
            let mut rebuilt = Vec::with_capacity(children.len());
            for child in children {
                if child.first() == Some(CONTEXT_0_CONSTRUCTED) {
                    let joined = join_octet_chunks(child.content())?;
                    rebuilt.push(encode_element(&[CONTEXT_0_PRIMITIVE], &joined, false));
                } else {
                    rebuilt.push(child);
                }
            }
            Ok(encode_children(tag, &rebuilt))
        }
        _ => Ok(encode_children(tag, &children)),
    }
}

/// Whether normalised `children` are those of an EncryptedContentInfo whose encryptedContent
/// came in the constructed form.
fn is_encrypted_content_info(children: &[Element]) -> bool {
    match children {
        [content_type, algorithm, encrypted] => {
            content_type.first() == Some(OBJECT_IDENTIFIER)
                && algorithm.first() == Some(SEQUENCE)
                && encrypted.first() == Some(CONTEXT_0_CONSTRUCTED)
                && encrypted.only_octet_strings
        }
        _ => false,
    }
}

/// Concatenates the contents of the DER OCTET STRINGs that fill `body`.
fn join_octet_chunks(body: &[u8]) -> Result<Vec<u8>, BerError> {
    let mut joined = Vec::with_capacity(body.len());
    let mut rest = body;
    while !rest.is_empty() {
        let (chunk, after) = split_der(rest)?;
        if chunk.tag != [OCTET_STRING] {
            return Err(BerError::BadChunk);
        }
        joined.extend_from_slice(chunk.content);
        rest = after;
    }
    Ok(joined)
}

/// Joins BIT STRING chunks (X.690 §8.6.4): only the last may have unused bits, and the result
/// carries the last chunk's count.
fn join_bits(children: &[Element]) -> Result<Vec<u8>, BerError> {
    let mut bits = Vec::new();
    let mut unused = 0u8;
    let count = children.len();
    for (index, child) in children.iter().enumerate() {
        if child.first() != Some(BIT_STRING) {
            return Err(BerError::BadChunk);
        }
        let (chunk_unused, payload) = child
            .content()
            .split_first()
            .ok_or(BerError::BadBitString)?;
        let last = index + 1 == count;
        if *chunk_unused > 7 || (*chunk_unused != 0 && (!last || payload.is_empty())) {
            return Err(BerError::BadBitString);
        }
        unused = *chunk_unused;
        bits.extend_from_slice(payload);
    }

    let mut content = Vec::with_capacity(bits.len() + 1);
    content.push(unused);
    content.extend_from_slice(&bits);
    Ok(content)
}

/// Encodes `tag` with a minimal definite length around `content`.
fn encode_element(tag: &[u8], content: &[u8], only_octet_strings: bool) -> Element {
    let mut der = Vec::with_capacity(tag.len() + 5 + content.len());
    der.extend_from_slice(tag);
    push_length(&mut der, content.len());
    let header_len = der.len();
    der.extend_from_slice(content);
    Element {
        der,
        header_len,
        only_octet_strings,
    }
}

/// Encodes a constructed element from already-normalised children.
fn encode_children(tag: &[u8], children: &[Element]) -> Element {
    let mut content = Vec::with_capacity(children.iter().map(|child| child.der.len()).sum());
    for child in children {
        content.extend_from_slice(&child.der);
    }
    let only_octet_strings = children
        .iter()
        .all(|child| child.first() == Some(OCTET_STRING));
    encode_element(tag, &content, only_octet_strings)
}

/// Appends the minimal DER length octets for `length` (X.690 §10.1).
pub(crate) fn push_length(out: &mut Vec<u8>, length: usize) {
    if let Ok(short) = u8::try_from(length) {
        if short < 0x80 {
            out.push(short);
            return;
        }
    }
    let octets = length.to_be_bytes();
    let significant: Vec<u8> = octets
        .iter()
        .copied()
        .skip_while(|octet| *octet == 0)
        .collect();
    // At most size_of::<usize>() octets, so the count fits the seven bits it has.
    out.push(0x80 | (significant.len() as u8));
    out.extend_from_slice(&significant);
}

/// Encodes one DER element with a one-octet identifier around `content`.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    encode_element(&[tag], content, false).der
}

/// Encodes one DER element with a one-octet identifier around the concatenated `parts`.
pub(crate) fn tlv_of(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    tlv(tag, &parts.concat())
}

/// One DER element, borrowed from its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tlv<'a> {
    /// The identifier octets.
    pub(crate) tag: &'a [u8],
    /// The content octets.
    pub(crate) content: &'a [u8],
    /// The whole element: identifier, length and content octets.
    pub(crate) raw: &'a [u8],
}

impl Tlv<'_> {
    /// Whether the identifier is the single octet `tag`.
    pub(crate) fn is(&self, tag: u8) -> bool {
        self.tag == [tag]
    }
}

/// Splits the definite-length element at the start of `input` from what follows it.
pub(crate) fn split_der(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), BerError> {
    let header = header(input)?;
    let length = header.length.ok_or(BerError::BadLength)?;
    let end = header
        .header_len
        .checked_add(length)
        .ok_or(BerError::BadLength)?;
    let raw = input.get(..end).ok_or(BerError::Truncated)?;
    let tlv = Tlv {
        tag: raw.get(..header.tag_len).ok_or(BerError::Truncated)?,
        content: raw.get(header.header_len..).ok_or(BerError::Truncated)?,
        raw,
    };
    Ok((tlv, input.get(end..).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(input: &[u8]) -> Vec<u8> {
        match normalize(input) {
            Ok(der) => der,
            Err(err) => panic!("normalize failed: {err}"),
        }
    }

    #[test]
    fn indefinite_lengths_become_definite() {
        // SEQUENCE (indefinite) { INTEGER 5, SEQUENCE (indefinite) { NULL } }
        let ber = [
            0x30, 0x80, 0x02, 0x01, 0x05, 0x30, 0x80, 0x05, 0x00, 0, 0, 0, 0,
        ];
        let der = [0x30, 0x07, 0x02, 0x01, 0x05, 0x30, 0x02, 0x05, 0x00];
        assert_eq!(normalized(&ber), der);
    }

    #[test]
    fn non_minimal_lengths_become_minimal() {
        let ber = [0x04, 0x82, 0x00, 0x02, 0xaa, 0xbb];
        assert_eq!(normalized(&ber), [0x04, 0x02, 0xaa, 0xbb]);
        let ber = [0x30, 0x81, 0x03, 0x02, 0x01, 0x07];
        assert_eq!(normalized(&ber), [0x30, 0x03, 0x02, 0x01, 0x07]);
    }

    #[test]
    fn long_lengths_are_encoded_minimally() {
        let content = vec![0x5a; 300];
        let mut ber = vec![0x24, 0x80, 0x04, 0x81, 200];
        ber.extend_from_slice(&content[..200]);
        ber.extend_from_slice(&[0x04, 100]);
        ber.extend_from_slice(&content[200..]);
        ber.extend_from_slice(&[0, 0]);
        let mut der = vec![0x04, 0x82, 0x01, 0x2c];
        der.extend_from_slice(&content);
        assert_eq!(normalized(&ber), der);
    }

    #[test]
    fn chunked_octet_strings_are_joined() {
        let ber = [0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c', 0, 0];
        assert_eq!(normalized(&ber), [0x04, 0x03, b'a', b'b', b'c']);
        // Definite-length constructed form, and an empty chunk.
        let ber = [0x24, 0x07, 0x04, 0x00, 0x04, 0x03, b'x', b'y', b'z'];
        assert_eq!(normalized(&ber), [0x04, 0x03, b'x', b'y', b'z']);
    }

    #[test]
    fn nested_chunks_are_joined() {
        // [0] EXPLICIT { OCTET STRING (constructed) { "a", (constructed) { "b", "c" } } }
        let ber = [
            0xa0, 0x80, 0x24, 0x80, 0x04, 0x01, b'a', 0x24, 0x80, 0x04, 0x01, b'b', 0x04, 0x01,
            b'c', 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(normalized(&ber), [0xa0, 0x05, 0x04, 0x03, b'a', b'b', b'c']);
    }

    #[test]
    fn chunk_of_another_type_is_refused() {
        let ber = [0x24, 0x80, 0x04, 0x01, b'a', 0x0c, 0x01, b'b', 0, 0];
        assert_eq!(normalize(&ber), Err(BerError::BadChunk));
    }

    #[test]
    fn chunked_bit_strings_are_joined() {
        let ber = [
            0x23, 0x80, 0x03, 0x02, 0x00, 0xf0, 0x03, 0x02, 0x04, 0xa0, 0, 0,
        ];
        assert_eq!(normalized(&ber), [0x03, 0x03, 0x04, 0xf0, 0xa0]);
        // Unused bits in a chunk other than the last are not allowed.
        let ber = [
            0x23, 0x80, 0x03, 0x02, 0x04, 0xf0, 0x03, 0x02, 0x00, 0xa0, 0, 0,
        ];
        assert_eq!(normalize(&ber), Err(BerError::BadBitString));
        let ber = [0x23, 0x80, 0x03, 0x02, 0x08, 0xf0, 0, 0];
        assert_eq!(normalize(&ber), Err(BerError::BadBitString));
        let ber = [0x23, 0x80, 0x03, 0x00, 0, 0];
        assert_eq!(normalize(&ber), Err(BerError::BadBitString));
    }

    #[test]
    fn encrypted_content_info_gets_a_primitive_content() {
        // SEQUENCE { OID 1.2.3, SEQUENCE { OID 1.2.4 }, [0] (constructed) { "ab", "c" } }
        let ber = [
            0x30, 0x80, 0x06, 0x02, 0x2a, 0x03, 0x30, 0x04, 0x06, 0x02, 0x2a, 0x04, 0xa0, 0x80,
            0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c', 0, 0, 0, 0,
        ];
        let der = [
            0x30, 0x0f, 0x06, 0x02, 0x2a, 0x03, 0x30, 0x04, 0x06, 0x02, 0x2a, 0x04, 0x80, 0x03,
            b'a', b'b', b'c',
        ];
        assert_eq!(normalized(&ber), der);
    }

    #[test]
    fn explicit_context_tags_elsewhere_are_kept() {
        // EncapsulatedContentInfo: SEQUENCE { OID, [0] EXPLICIT OCTET STRING } stays as is.
        let der = [
            0x30, 0x09, 0x06, 0x02, 0x2a, 0x03, 0xa0, 0x03, 0x04, 0x01, b'x',
        ];
        assert_eq!(normalized(&der), der);
    }

    #[test]
    fn high_tag_numbers_are_supported() {
        // [APPLICATION 200] constructed, indefinite, holding [PRIVATE 31] primitive.
        let ber = [0x7f, 0x81, 0x48, 0x80, 0xdf, 0x1f, 0x01, 0xee, 0, 0];
        assert_eq!(
            normalized(&ber),
            [0x7f, 0x81, 0x48, 0x04, 0xdf, 0x1f, 0x01, 0xee]
        );
        // A high-form tag for a number below 31, or with a leading zero digit, is malformed.
        assert_eq!(normalize(&[0x1f, 0x05, 0x00]), Err(BerError::BadTag));
        assert_eq!(normalize(&[0x1f, 0x80, 0x20, 0x00]), Err(BerError::BadTag));
        assert_eq!(
            normalize(&[0x1f, 0x81, 0x82, 0x83, 0x84, 0x05, 0x00]),
            Err(BerError::BadTag)
        );
    }

    #[test]
    fn der_input_is_identical() {
        let der = [
            0x30, 0x15, 0x02, 0x01, 0x01, 0x31, 0x06, 0x02, 0x01, 0x09, 0x02, 0x01, 0x03, 0x04,
            0x02, 0xff, 0x00, 0x03, 0x02, 0x04, 0xf0, 0x80, 0x00,
        ];
        assert_eq!(normalized(&der), der);
        // A SET whose members are not in DER order keeps its order.
        let set = [0x31, 0x06, 0x02, 0x01, 0x09, 0x02, 0x01, 0x03];
        assert_eq!(normalized(&set), set);
    }

    #[test]
    fn depth_limit_is_enforced() {
        let mut nested = vec![0x05, 0x00];
        for _ in 0..4 {
            let mut outer = vec![0x30, nested.len() as u8];
            outer.extend_from_slice(&nested);
            nested = outer;
        }
        // Four SEQUENCEs and a NULL: depth 5.
        let limits = BerLimits {
            max_depth: 5,
            ..DEFAULT_LIMITS
        };
        assert!(normalize_with(&nested, &limits).is_ok());
        let limits = BerLimits {
            max_depth: 4,
            ..DEFAULT_LIMITS
        };
        assert_eq!(normalize_with(&nested, &limits), Err(BerError::TooDeep));

        // Deep indefinite nesting under the default limits.
        let mut deep = [0x30, 0x80].repeat(40);
        deep.extend_from_slice(&[0x00, 0x00].repeat(40));
        assert_eq!(normalize(&deep), Err(BerError::TooDeep));
    }

    #[test]
    fn element_limit_is_enforced() {
        let ber = [0x30, 0x80, 0x05, 0x00, 0x05, 0x00, 0x05, 0x00, 0, 0];
        let limits = BerLimits {
            max_elements: 4,
            ..DEFAULT_LIMITS
        };
        assert!(normalize_with(&ber, &limits).is_ok());
        let limits = BerLimits {
            max_elements: 3,
            ..DEFAULT_LIMITS
        };
        assert_eq!(
            normalize_with(&ber, &limits),
            Err(BerError::TooManyElements)
        );
    }

    #[test]
    fn size_limit_is_enforced() {
        let limits = BerLimits {
            max_input: 3,
            ..DEFAULT_LIMITS
        };
        assert_eq!(
            normalize_with(&[0x04, 0x01, 0xaa], &limits),
            Ok(vec![0x04, 0x01, 0xaa])
        );
        assert_eq!(
            normalize_with(&[0x04, 0x02, 0xaa, 0xbb], &limits),
            Err(BerError::TooLarge)
        );
    }

    #[test]
    fn the_default_limits_hold_to_the_element() {
        // Depth: `levels` indefinite SEQUENCEs around a NULL are `levels + 1` deep.
        let nested = |levels: usize| {
            let mut ber = [0x30, 0x80].repeat(levels);
            ber.extend_from_slice(&[0x05, 0x00]);
            ber.extend_from_slice(&[0x00, 0x00].repeat(levels));
            ber
        };
        let depth = DEFAULT_LIMITS.max_depth;
        assert!(normalize(&nested(depth - 1)).is_ok());
        assert_eq!(normalize(&nested(depth)), Err(BerError::TooDeep));

        // Elements: a SEQUENCE holding `n - 1` NULLs is `n` elements.
        let elements = |n: usize| {
            let mut ber = vec![0x30, 0x80];
            ber.extend_from_slice(&[0x05, 0x00].repeat(n - 1));
            ber.extend_from_slice(&[0x00, 0x00]);
            ber
        };
        let most = DEFAULT_LIMITS.max_elements;
        assert!(normalize(&elements(most)).is_ok());
        assert_eq!(
            normalize(&elements(most + 1)),
            Err(BerError::TooManyElements)
        );

        // Size: one OCTET STRING with a 3-octet length, `total` octets in all.
        let octets = |total: usize| {
            let content = total - 5;
            let mut ber = vec![0x04, 0x83];
            ber.extend_from_slice(&u32::try_from(content).unwrap().to_be_bytes()[1..]);
            ber.resize(total, 0xaa);
            ber
        };
        let largest = DEFAULT_LIMITS.max_input;
        assert_eq!(
            normalize(&octets(largest)).map(|der| der.len()),
            Ok(largest)
        );
        assert_eq!(normalize(&octets(largest + 1)), Err(BerError::TooLarge));
    }

    #[test]
    fn truncated_input_is_refused() {
        let ber = [0x30, 0x80, 0x24, 0x80, 0x04, 0x02, b'a', b'b', 0, 0, 0, 0];
        for end in 0..ber.len() {
            assert_eq!(
                normalize(&ber[..end]),
                Err(BerError::Truncated),
                "cut at {end}"
            );
        }
        assert_eq!(normalize(&[0x04, 0x05, 0x01]), Err(BerError::Truncated));
        assert_eq!(normalize(&[0x04, 0x82, 0x01]), Err(BerError::Truncated));
    }

    #[test]
    fn trailing_data_is_refused() {
        assert_eq!(normalize(&[0x05, 0x00, 0x00]), Err(BerError::TrailingData));
        assert_eq!(
            normalize(&[0x30, 0x80, 0x05, 0x00, 0, 0, 0x05]),
            Err(BerError::TrailingData)
        );
    }

    #[test]
    fn malformed_lengths_and_tags_are_refused() {
        // Indefinite length on a primitive element.
        assert_eq!(
            normalize(&[0x04, 0x80, 0x00, 0x00]),
            Err(BerError::BadLength)
        );
        // Reserved length octet and over-long length.
        assert_eq!(normalize(&[0x04, 0xff, 0x00]), Err(BerError::BadLength));
        assert_eq!(
            normalize(&[0x04, 0x85, 0, 0, 0, 0, 1, 0]),
            Err(BerError::BadLength)
        );
        // End-of-contents marker with a non-zero length octet.
        assert_eq!(
            normalize(&[0x30, 0x80, 0x00, 0x01, 0x00]),
            Err(BerError::BadLength)
        );
        // End-of-contents marker at the top, or inside a definite-length element.
        assert_eq!(normalize(&[0x00, 0x00]), Err(BerError::BadTag));
        assert_eq!(normalize(&[0x30, 0x02, 0x00, 0x00]), Err(BerError::BadTag));
        // A child running past the end of its definite-length parent.
        assert_eq!(
            normalize(&[0x30, 0x02, 0x04, 0x02, 0xaa, 0xbb]),
            Err(BerError::Truncated)
        );
    }

    #[test]
    fn split_der_reads_one_element() {
        let input = [0x04, 0x01, 0xaa, 0x05, 0x00];
        let (first, rest) = match split_der(&input) {
            Ok(split) => split,
            Err(err) => panic!("split failed: {err}"),
        };
        assert!(first.is(0x04));
        assert_eq!(first.content, [0xaa]);
        assert_eq!(first.raw, [0x04, 0x01, 0xaa]);
        assert_eq!(rest, [0x05, 0x00]);
        assert_eq!(split_der(&[0x30, 0x80, 0, 0]), Err(BerError::BadLength));
    }

    #[test]
    fn push_length_is_minimal() {
        let mut out = Vec::new();
        push_length(&mut out, 0x7f);
        push_length(&mut out, 0x80);
        push_length(&mut out, 0x1_0000);
        assert_eq!(out, [0x7f, 0x81, 0x80, 0x83, 0x01, 0x00, 0x00]);
    }
}
