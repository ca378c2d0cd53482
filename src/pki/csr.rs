//! PKCS#10 certification requests (RFC 2986): reading the ones SCEP clients send, after
//! checking their self-signature, and building them for the device simulator and tests.
//!
//! Requests are read with `der`/`x509-cert` rather than x509-parser, because x509-parser
//! refuses a request whose challengePassword is an IA5String, which SCEP clients do send.
//! The signature is checked over the CertificationRequestInfo bytes exactly as received.

use std::ops::RangeInclusive;

use const_oid::db::rfc4519;
use const_oid::ObjectIdentifier;
use der::asn1::{Any, AnyRef, BitStringRef, Utf8StringRef};
use der::{Decode as _, Encode as _, Header, Reader as _, SliceReader, Tag, Tagged as _};
use spki::AlgorithmIdentifierRef;
use x509_cert::request::CertReqInfo;

use super::cert::{self, RsaPublicKey};
use super::keys::RsaPrivateKey;
use super::PkiError;

/// The largest request we read.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// RSA modulus sizes accepted in a request; scepclient may still send 1024.
pub const CSR_KEY_BITS: RangeInclusive<usize> = 1024..=4096;

/// The most name attributes a request's subject may have.
pub const MAX_CSR_SUBJECT_ATTRIBUTES: usize = 32;

/// The most request attributes (challengePassword, extensionRequest, ...) we look through.
pub const MAX_CSR_ATTRIBUTES: usize = 16;

/// pkcs-9-ub-challengePassword (RFC 2985 appendix A).
pub const MAX_CHALLENGE_CHARS: usize = 255;

/// The longest commonName [`build`] writes (RFC 5280 ub-common-name).
const MAX_COMMON_NAME_CHARS: usize = 64;

/// pkcs-9-at-challengePassword (RFC 2985 section 5.4.1).
const CHALLENGE_PASSWORD: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.7");

/// The same OID as rcgen wants it.
const CHALLENGE_PASSWORD_ARCS: &[u64] = &[1, 2, 840, 113549, 1, 9, 7];

/// pkcs-9-at-emailAddress, still found in old subjects.
const EMAIL_ADDRESS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.1");

/// A PKCS#10 request ([RFC 2986 section 4](https://www.rfc-editor.org/rfc/rfc2986#section-4))
/// after its self-signature was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificationRequest {
    /// The subject in order: (short name like "CN" or a dotted OID, value). A value that is
    /// not a string is written as "#" and the hex of its DER (RFC 4514 section 2.4).
    pub subject: Vec<(String, String)>,
    /// The first commonName of the subject.
    pub common_name: Option<String>,
    /// The SubjectPublicKeyInfo DER.
    pub public_key_spki_der: Vec<u8>,
    /// RSA modulus bits.
    pub key_bits: usize,
    /// The challengePassword in any DirectoryString form (PrintableString, UTF8String,
    /// IA5String, BMPString, T61String).
    pub challenge_password: Option<String>,
}

/// Reads a DER PKCS#10 request: RSA key in [`CSR_KEY_BITS`], self-signature verified
/// (RSA PKCS#1 v1.5 with SHA-1, SHA-256, SHA-384 or SHA-512).
/// Extensions the request asks for are not returned: the CA never copies them.
pub fn parse(der: &[u8]) -> Result<CertificationRequest, PkiError> {
    if der.len() > MAX_CSR_BYTES {
        return Err(PkiError::CsrTooLarge(der.len()));
    }

    let (info_der, algorithm, signature) = split_signed(der).map_err(malformed)?;
    let info = CertReqInfo::from_der(info_der).map_err(malformed)?;

    let public_key_spki_der = info.public_key.to_der().map_err(malformed)?;
    let key_bits = RsaPublicKey::from_spki_der(&public_key_spki_der)?.bits;
    if !CSR_KEY_BITS.contains(&key_bits) {
        return Err(PkiError::CsrKeySizeRefused(key_bits));
    }

    // PKCS#1 v1.5 algorithm identifiers carry NULL parameters or none (RFC 4055 section 5).
    let parameters_null = algorithm
        .parameters
        .is_none_or(|any| any.tag() == Tag::Null && any.value().is_empty());
    if !parameters_null {
        return Err(PkiError::UnsupportedSignatureAlgorithm(format!(
            "{} with parameters",
            algorithm.oid
        )));
    }
    let signature = signature
        .as_bytes()
        .ok_or_else(|| malformed("signature has unused bits"))?;
    cert::verify_rsa_pkcs1(&public_key_spki_der, &algorithm.oid, info_der, signature).map_err(
        |err| match err {
            PkiError::SignatureInvalid => PkiError::CsrSignatureInvalid,
            other => other,
        },
    )?;

    let subject = read_subject(&info)?;
    let common_name = read_common_name(&info);
    let challenge_password = read_challenge(&info)?;
    Ok(CertificationRequest {
        subject,
        common_name,
        public_key_spki_der,
        key_bits,
        challenge_password,
    })
}

/// For the device simulator and tests: a request for CN=`common_name`, signed with
/// sha256WithRSA by `key`, with a challengePassword attribute (UTF8String) if given.
pub fn build(
    key: &RsaPrivateKey,
    common_name: &str,
    challenge: Option<&str>,
) -> Result<Vec<u8>, PkiError> {
    if common_name.is_empty() || common_name.chars().count() > MAX_COMMON_NAME_CHARS {
        return Err(PkiError::SubjectAttributeInvalid("CN"));
    }

    let mut attributes = Vec::new();
    if let Some(challenge) = challenge {
        attributes.push(rcgen::Attribute {
            oid: CHALLENGE_PASSWORD_ARCS,
            values: challenge_values(challenge)?,
        });
    }
    let mut params = rcgen::CertificateParams::default();
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name = name;

    let signer = key.rcgen_key()?;
    let request = params
        .serialize_request_with_attributes(&signer, attributes)
        .map_err(|err| PkiError::CertificateBuildFailed(err.to_string()))?;
    Ok(request.der().as_ref().to_vec())
}

/// The challengePassword attribute's values: `SET { UTF8String }`.
fn challenge_values(challenge: &str) -> Result<Vec<u8>, PkiError> {
    if challenge.is_empty() || challenge.chars().count() > MAX_CHALLENGE_CHARS {
        return Err(PkiError::CsrChallengeMalformed);
    }

    let value = Utf8StringRef::new(challenge)
        .and_then(|string| string.to_der())
        .map_err(|_| PkiError::CsrChallengeMalformed)?;
    let mut set = Header::new(Tag::Set, value.len())
        .and_then(|header| header.to_der())
        .map_err(|_| PkiError::CsrChallengeMalformed)?;
    set.extend_from_slice(&value);
    Ok(set)
}

/// Splits `CertificationRequest ::= SEQUENCE { info, signatureAlgorithm, signature }`,
/// keeping the info's bytes as received (the signature covers them, not a re-encoding).
fn split_signed(der: &[u8]) -> der::Result<(&[u8], AlgorithmIdentifierRef<'_>, BitStringRef<'_>)> {
    let mut reader = SliceReader::new(der)?;

    let parts = reader.sequence(|fields| {
        let info = fields.tlv_bytes()?;
        let algorithm = AlgorithmIdentifierRef::decode(fields)?;
        let signature = BitStringRef::decode(fields)?;
        Ok((info, algorithm, signature))
    })?;
    reader.finish(parts)
}

/// The subject as (short name or OID, value) pairs.
fn read_subject(info: &CertReqInfo) -> Result<Vec<(String, String)>, PkiError> {
    let count: usize = info.subject.0.iter().map(|rdn| rdn.0.len()).sum();
    if count > MAX_CSR_SUBJECT_ATTRIBUTES {
        return Err(malformed(format!(
            "subject has {count} attributes, more than {MAX_CSR_SUBJECT_ATTRIBUTES}"
        )));
    }

    let mut subject = Vec::with_capacity(count);
    for attribute in info.subject.0.iter().flat_map(|rdn| rdn.0.iter()) {
        let value = match directory_string(&attribute.value) {
            Some(value) => value,
            None => rfc4514_hex(&attribute.value)?,
        };
        subject.push((short_name(&attribute.oid), value));
    }
    Ok(subject)
}

/// The first commonName that reads as a string.
fn read_common_name(info: &CertReqInfo) -> Option<String> {
    info.subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|attribute| attribute.oid == rfc4519::CN)
        .and_then(|attribute| directory_string(&attribute.value))
}

/// The challengePassword: at most one attribute with exactly one string value.
fn read_challenge(info: &CertReqInfo) -> Result<Option<String>, PkiError> {
    if info.attributes.len() > MAX_CSR_ATTRIBUTES {
        return Err(malformed(format!(
            "{} attributes, more than {MAX_CSR_ATTRIBUTES}",
            info.attributes.len()
        )));
    }

    let mut challenges = info
        .attributes
        .iter()
        .filter(|attribute| attribute.oid == CHALLENGE_PASSWORD);
    let Some(attribute) = challenges.next() else {
        return Ok(None);
    };
    if challenges.next().is_some() {
        return Err(PkiError::CsrChallengeMalformed);
    }

    // challengePassword is SINGLE VALUE TRUE (RFC 2985 section 5.4.1).
    let mut values = attribute.values.iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(PkiError::CsrChallengeMalformed);
    };
    let challenge = directory_string(value).ok_or(PkiError::CsrChallengeMalformed)?;
    if challenge.chars().count() > MAX_CHALLENGE_CHARS {
        return Err(PkiError::CsrChallengeMalformed);
    }
    Ok(Some(challenge))
}

/// A DirectoryString (RFC 5280 section 4.1.2.4) or IA5String/VisibleString as text.
///
/// PrintableString, IA5String and VisibleString must be UTF-8 (their character sets are
/// subsets); their exact character sets are not enforced, because clients break them.
/// A T61String is read as UTF-8 if it is, else as Latin-1, as OpenSSL-era tools do.
fn directory_string(value: &Any) -> Option<String> {
    let bytes = value.value();
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::VisibleString => {
            String::from_utf8(bytes.to_vec()).ok()
        }
        Tag::TeletexString => Some(match std::str::from_utf8(bytes) {
            Ok(text) => text.to_owned(),
            Err(_) => bytes.iter().map(|byte| char::from(*byte)).collect(),
        }),
        Tag::BmpString => {
            if !bytes.len().is_multiple_of(2) {
                return None;
            }
            let units = bytes
                .chunks_exact(2)
                .map(|pair| Some(u16::from_be_bytes([*pair.first()?, *pair.get(1)?])))
                .collect::<Option<Vec<u16>>>()?;
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        _ => None,
    }
}

/// "#" and the lowercase hex of a value's DER (RFC 4514 section 2.4).
fn rfc4514_hex(value: &Any) -> Result<String, PkiError> {
    let der = AnyRef::from(value).to_der().map_err(malformed)?;
    let hex: String = der.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!("#{hex}"))
}

/// The short name of a name attribute type, or its dotted OID.
fn short_name(oid: &ObjectIdentifier) -> String {
    let known = [
        (rfc4519::CN, "CN"),
        (rfc4519::C, "C"),
        (rfc4519::L, "L"),
        (rfc4519::ST, "ST"),
        (rfc4519::O, "O"),
        (rfc4519::OU, "OU"),
        (rfc4519::SERIAL_NUMBER, "serialNumber"),
        (rfc4519::DC, "DC"),
        (rfc4519::UID, "UID"),
        (EMAIL_ADDRESS, "emailAddress"),
    ];
    known
        .iter()
        .find(|(known_oid, _)| known_oid == oid)
        .map_or_else(|| oid.to_string(), |(_, name)| (*name).to_owned())
}

/// A malformed-request error with the decoder's reason.
fn malformed(reason: impl std::fmt::Display) -> PkiError {
    PkiError::CsrMalformed(reason.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const OPENSSL: &str = "/usr/bin/openssl";

    fn openssl(args: &[&str]) {
        let output = Command::new(OPENSSL).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn build_parse_round_trip() {
        let key = RsaPrivateKey::generate(2048).unwrap();
        let der = build(&key, "device-1", Some("s3cret-challenge")).unwrap();

        let request = parse(&der).unwrap();
        assert_eq!(request.common_name.as_deref(), Some("device-1"));
        assert_eq!(
            request.subject,
            vec![("CN".to_owned(), "device-1".to_owned())]
        );
        assert_eq!(request.public_key_spki_der, key.public_key_spki_der());
        assert_eq!(request.key_bits, 2048);
        assert_eq!(
            request.challenge_password.as_deref(),
            Some("s3cret-challenge")
        );

        let without = parse(&build(&key, "device-2", None).unwrap()).unwrap();
        assert_eq!(without.challenge_password, None);
    }

    #[test]
    fn tampered_request_is_refused() {
        let key = RsaPrivateKey::generate(2048).unwrap();
        let der = build(&key, "device-1", Some("abc")).unwrap();

        // Change one letter of the challenge inside the signed info.
        let position = der.windows(3).position(|window| window == b"abc").unwrap();
        let mut tampered = der.clone();
        if let Some(byte) = tampered.get_mut(position) {
            *byte = b'x';
        }
        assert_eq!(parse(&tampered), Err(PkiError::CsrSignatureInvalid));

        // Flip a bit of the signature.
        let mut tampered = der.clone();
        if let Some(last) = tampered.last_mut() {
            *last ^= 0x01;
        }
        assert_eq!(parse(&tampered), Err(PkiError::CsrSignatureInvalid));

        let mut trailing = der.clone();
        trailing.push(0);
        assert!(matches!(parse(&trailing), Err(PkiError::CsrMalformed(_))));
        assert!(matches!(
            parse(der.get(..der.len() - 10).unwrap()),
            Err(PkiError::CsrMalformed(_))
        ));
        assert_eq!(
            parse(&vec![0u8; MAX_CSR_BYTES + 1]),
            Err(PkiError::CsrTooLarge(MAX_CSR_BYTES + 1))
        );
    }

    #[test]
    fn openssl_request_with_challenge_parses() {
        // The subject comes from the config file: with -subj, OpenSSL 3 drops [attrs].
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("req.cnf");
        std::fs::write(
            &config,
            "[req]\n\
             distinguished_name = dn\n\
             attributes = attrs\n\
             prompt = no\n\
             [dn]\n\
             CN = x\n\
             O = Example Org\n\
             [attrs]\n\
             challengePassword = pass-1234\n",
        )
        .unwrap();
        let key = dir.path().join("key.pem");
        let csr = dir.path().join("req.der");
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-config",
            config.to_str().unwrap(),
            "-addext",
            "keyUsage=digitalSignature",
            "-outform",
            "DER",
            "-out",
            csr.to_str().unwrap(),
        ]);

        let request = parse(&std::fs::read(&csr).unwrap()).unwrap();
        assert_eq!(request.common_name.as_deref(), Some("x"));
        assert_eq!(
            request.subject,
            vec![
                ("CN".to_owned(), "x".to_owned()),
                ("O".to_owned(), "Example Org".to_owned())
            ]
        );
        assert_eq!(request.challenge_password.as_deref(), Some("pass-1234"));
        let key = RsaPrivateKey::from_pem(&std::fs::read_to_string(&key).unwrap()).unwrap();
        assert_eq!(request.public_key_spki_der, key.public_key_spki_der());
    }

    #[test]
    fn openssl_1024_bit_sha1_request_parses() {
        // What an old scepclient sends: RSA-1024, sha1WithRSA.
        let dir = tempfile::tempdir().unwrap();
        let csr = dir.path().join("req.der");
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-sha1",
            "-keyout",
            dir.path().join("key.pem").to_str().unwrap(),
            "-subj",
            "/CN=old",
            "-outform",
            "DER",
            "-out",
            csr.to_str().unwrap(),
        ]);

        let request = parse(&std::fs::read(&csr).unwrap()).unwrap();
        assert_eq!(request.key_bits, 1024);
        assert_eq!(request.common_name.as_deref(), Some("old"));
        assert_eq!(request.challenge_password, None);
    }

    #[test]
    fn small_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let csr = dir.path().join("req.der");
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "rsa:768",
            "-nodes",
            "-keyout",
            dir.path().join("key.pem").to_str().unwrap(),
            "-subj",
            "/CN=tiny",
            "-outform",
            "DER",
            "-out",
            csr.to_str().unwrap(),
        ]);
        assert_eq!(
            parse(&std::fs::read(&csr).unwrap()),
            Err(PkiError::CsrKeySizeRefused(768))
        );
    }

    /// Builds a request with a hand-encoded challengePassword value, signed by `key`.
    fn request_with_raw_challenge(key: &RsaPrivateKey, value_tlv: &[u8]) -> Vec<u8> {
        let mut values = Header::new(Tag::Set, value_tlv.len())
            .unwrap()
            .to_der()
            .unwrap();
        values.extend_from_slice(value_tlv);
        let mut params = rcgen::CertificateParams::default();
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::CommonName, "raw");
        params.distinguished_name = name;
        params
            .serialize_request_with_attributes(
                &key.rcgen_key().unwrap(),
                vec![rcgen::Attribute {
                    oid: CHALLENGE_PASSWORD_ARCS,
                    values,
                }],
            )
            .unwrap()
            .der()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn every_directory_string_form_of_challenge() {
        let key = RsaPrivateKey::generate(2048).unwrap();
        let cases: [(&[u8], &str); 5] = [
            (b"\x13\x03abc", "abc"),                          // PrintableString
            (b"\x0c\x05caf\xc3\xa9".as_slice(), "caf\u{e9}"), // UTF8String
            (b"\x16\x05a_b@c", "a_b@c"),                      // IA5String
            (b"\x1e\x04\x00h\x00i", "hi"),                    // BMPString
            (b"\x14\x04caf\xe9", "caf\u{e9}"),                // T61String, Latin-1
        ];
        for (tlv, expected) in cases {
            let request = parse(&request_with_raw_challenge(&key, tlv)).unwrap();
            assert_eq!(
                request.challenge_password.as_deref(),
                Some(expected),
                "{tlv:02x?}"
            );
        }

        // An INTEGER is no DirectoryString.
        assert_eq!(
            parse(&request_with_raw_challenge(&key, b"\x02\x01\x05")),
            Err(PkiError::CsrChallengeMalformed)
        );
        // Two values in the single-valued attribute.
        assert_eq!(
            parse(&request_with_raw_challenge(&key, b"\x13\x01a\x13\x01b")),
            Err(PkiError::CsrChallengeMalformed)
        );
        // An odd-length BMPString.
        assert_eq!(
            parse(&request_with_raw_challenge(&key, b"\x1e\x03\x00hi")),
            Err(PkiError::CsrChallengeMalformed)
        );
    }

    #[test]
    fn build_refusals() {
        let key = RsaPrivateKey::generate(2048).unwrap();
        assert_eq!(
            build(&key, "", None),
            Err(PkiError::SubjectAttributeInvalid("CN"))
        );
        assert_eq!(
            build(&key, "x", Some(&"c".repeat(MAX_CHALLENGE_CHARS + 1))),
            Err(PkiError::CsrChallengeMalformed)
        );
    }

    #[test]
    fn unknown_name_types_use_dotted_oids() {
        assert_eq!(short_name(&rfc4519::OU), "OU");
        assert_eq!(
            short_name(&ObjectIdentifier::new_unwrap("1.2.3.4")),
            "1.2.3.4"
        );
    }

    /// A DER TLV with a definite length in the fewest octets.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let octets: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|&b| b == 0)
                .collect();
            out.push(0x80 | octets.len() as u8);
            out.extend_from_slice(&octets);
        }
        out.extend_from_slice(content);
        out
    }

    /// A request for an RSA key whose modulus has exactly `bits` bits, with a signature that
    /// no key made: the key size is checked before the signature, so this shows the limit.
    fn request_for_modulus_of(bits: usize) -> Vec<u8> {
        let mut modulus = vec![0xffu8; bits.div_ceil(8)];
        if let Some(first) = modulus.first_mut() {
            *first = 1 << ((bits - 1) % 8);
        }
        if modulus.first().is_some_and(|b| b & 0x80 != 0) {
            modulus.insert(0, 0);
        }
        let rsa_public_key = tlv(0x30, &[tlv(0x02, &modulus), tlv(0x02, &[1, 0, 1])].concat());
        let rsa_encryption = b"\x30\x0d\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01\x05\x00";
        let spki = tlv(
            0x30,
            &[
                &rsa_encryption[..],
                &tlv(0x03, &[&[0u8][..], &rsa_public_key].concat()),
            ]
            .concat(),
        );
        let info = tlv(
            0x30,
            &[&b"\x02\x01\x00\x30\x00"[..], &spki, b"\xa0\x00"].concat(),
        );
        let sha256_with_rsa = b"\x30\x0d\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0b\x05\x00";
        let signature = tlv(0x03, &[0u8; 257]);
        tlv(0x30, &[&info[..], sha256_with_rsa, &signature].concat())
    }

    #[test]
    fn rsa_key_sizes_at_the_edges_of_csr_key_bits() {
        for bits in [
            *CSR_KEY_BITS.start() - 1,
            768,
            *CSR_KEY_BITS.end() + 1,
            8192,
        ] {
            assert_eq!(
                parse(&request_for_modulus_of(bits)),
                Err(PkiError::CsrKeySizeRefused(bits)),
                "{bits} bits"
            );
        }
        // The edges themselves pass the size check and fail only on the made-up signature.
        for bits in [*CSR_KEY_BITS.start(), *CSR_KEY_BITS.end()] {
            let refusal = parse(&request_for_modulus_of(bits)).unwrap_err();
            assert!(
                !matches!(refusal, PkiError::CsrKeySizeRefused(_)),
                "{bits} bits: {refusal:?}"
            );
        }

        // A real RSA-4096 request is read (RSA-1024 is in openssl_1024_bit_sha1_request_parses).
        let key = RsaPrivateKey::generate(4096).unwrap();
        let request = parse(&build(&key, "big", Some("c")).unwrap()).unwrap();
        assert_eq!(request.key_bits, 4096);
    }

    #[test]
    fn a_request_of_exactly_max_csr_bytes_is_read() {
        const PADDING: &[u64] = &[1, 3, 6, 1, 4, 1, 55555, 1];
        let key = RsaPrivateKey::generate(2048).unwrap();
        // A request with an attribute otad ignores, holding `pad` octets.
        let padded = |pad: usize| {
            let value = tlv(0x04, &vec![0x5a; pad]);
            let mut params = rcgen::CertificateParams::default();
            let mut name = rcgen::DistinguishedName::new();
            name.push(rcgen::DnType::CommonName, "padded");
            params.distinguished_name = name;
            params
                .serialize_request_with_attributes(
                    &key.rcgen_key().unwrap(),
                    vec![rcgen::Attribute {
                        oid: PADDING,
                        values: tlv(0x31, &value),
                    }],
                )
                .unwrap()
                .der()
                .as_ref()
                .to_vec()
        };
        let mut pad = MAX_CSR_BYTES / 2;
        let mut der = padded(pad);
        for _ in 0..4 {
            pad = pad + MAX_CSR_BYTES - der.len();
            der = padded(pad);
        }
        assert_eq!(der.len(), MAX_CSR_BYTES);
        assert_eq!(parse(&der).unwrap().common_name.as_deref(), Some("padded"));
        assert_eq!(
            parse(&padded(pad + 1)),
            Err(PkiError::CsrTooLarge(MAX_CSR_BYTES + 1))
        );
    }
}
