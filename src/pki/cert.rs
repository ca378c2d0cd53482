//! Reading certificates: PEM framing, summaries for admins and logs, validity, and the one
//! signature check the whole crate uses (RSA PKCS#1 v1.5 through aws-lc-rs).
//!
//! Certificates are parsed with x509-parser. The signature check is our own rather than
//! x509-parser's `verify_signature`, because that one demands 2048-bit keys for
//! sha256WithRSA and Apple iPhone Device CA (RSA-1024) signs newer devices with SHA-256.

use aws_lc_rs::signature::{self, RsaParameters, UnparsedPublicKey};
use base64::Engine as _;
use const_oid::db::rfc5912;
use const_oid::ObjectIdentifier;
use der::asn1::UintRef;
use der::{Decode as _, Tagged as _};
use x509_parser::asn1_rs::{Any, Tag};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

use super::PkiError;

/// The largest certificate we parse; Apple's and ours are under 2 KiB.
pub const MAX_CERTIFICATE_BYTES: usize = 64 * 1024;

/// The largest PEM text we read (a chain of a few certificates or one key).
pub const MAX_PEM_BYTES: usize = 1024 * 1024;

/// The most PEM blocks we read from one text.
pub const MAX_PEM_BLOCKS: usize = 64;

/// The PEM label of an X.509 certificate (RFC 7468 section 5.1).
const CERTIFICATE_LABEL: &str = "CERTIFICATE";

/// Base64 characters per PEM line (RFC 7468 section 2).
const PEM_LINE_WIDTH: usize = 64;

/// sha1WithRSASignature from OIW, which some old certificates still carry.
const OIW_SHA1_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.29");

/// What an admin or a log needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// The subject name, RFC 4514 style ("CN=..., O=...").
    pub subject: String,
    /// The issuer name, RFC 4514 style.
    pub issuer: String,
    /// The serial number as [`serial_hex`] writes it.
    pub serial_hex: String,
    /// notBefore in unix seconds.
    pub not_before: i64,
    /// notAfter in unix seconds.
    pub not_after: i64,
    /// The first commonName of the subject, if it is a readable string.
    pub common_name: Option<String>,
}

/// Summarises a DER certificate
/// ([RFC 5280 section 4.1](https://www.rfc-editor.org/rfc/rfc5280#section-4.1)).
pub fn summarize(cert_der: &[u8]) -> Result<CertSummary, PkiError> {
    let cert = parse_certificate(cert_der)?;

    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial_hex: hex_without_leading_zeros(cert.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        common_name,
    })
}

/// Leaf validity at `at` (unix seconds): `notBefore <= at <= notAfter`
/// ([RFC 5280 section 4.1.2.5](https://www.rfc-editor.org/rfc/rfc5280#section-4.1.2.5)).
pub fn check_validity(cert_der: &[u8], at: i64) -> Result<(), PkiError> {
    let cert = parse_certificate(cert_der)?;

    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    if at < not_before {
        return Err(PkiError::CertificateNotYetValid { not_before, at });
    }
    if at > not_after {
        return Err(PkiError::CertificateExpired { not_after, at });
    }
    Ok(())
}

/// The certificate's SubjectPublicKeyInfo DER, as it appears in the certificate.
pub fn spki_der(cert_der: &[u8]) -> Result<Vec<u8>, PkiError> {
    let cert = parse_certificate(cert_der)?;
    Ok(cert.public_key().raw.to_vec())
}

/// True if `cert_der`'s signature verifies under the key in `issuer_spki_der`.
///
/// RSA PKCS#1 v1.5 with SHA-1, SHA-256, SHA-384 or SHA-512, from 1024-bit keys up, because
/// Apple's Device CA is RSA-1024. The outer signatureAlgorithm must equal the one inside
/// tbsCertificate
/// ([RFC 5280 section 4.1.1.2](https://www.rfc-editor.org/rfc/rfc5280#section-4.1.1.2)).
pub fn is_signed_by(cert_der: &[u8], issuer_spki_der: &[u8]) -> bool {
    let Ok(cert) = parse_certificate(cert_der) else {
        return false;
    };

    if cert.signature_algorithm != cert.tbs_certificate.signature {
        return false;
    }

    verify_x509_signature(
        issuer_spki_der,
        &cert.signature_algorithm.algorithm,
        cert.signature_algorithm.parameters.as_ref(),
        cert.tbs_certificate.as_ref(),
        &cert.signature_value,
    )
    .is_ok()
}

/// The DER of the first CERTIFICATE block in `pem` (RFC 7468 section 5.1); other blocks
/// (a key, say) are skipped.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    pem_blocks(pem)?
        .into_iter()
        .find(|block| block.label == CERTIFICATE_LABEL)
        .map(|block| block.der)
        .ok_or(PkiError::PemBlockMissing(CERTIFICATE_LABEL))
}

/// The DER of every CERTIFICATE block in `pem`, in order; at least one.
pub fn pem_to_der_all(pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let all: Vec<Vec<u8>> = pem_blocks(pem)?
        .into_iter()
        .filter(|block| block.label == CERTIFICATE_LABEL)
        .map(|block| block.der)
        .collect();
    if all.is_empty() {
        return Err(PkiError::PemBlockMissing(CERTIFICATE_LABEL));
    }
    Ok(all)
}

/// A certificate's DER as one PEM CERTIFICATE block with 64-column lines.
pub fn der_to_pem(der: &[u8]) -> String {
    encode_pem(CERTIFICATE_LABEL, der)
}

/// The serial number in lowercase hex, without the leading 00 that DER adds to keep a
/// positive number positive ("0" for a zero serial).
pub fn serial_hex(cert_der: &[u8]) -> Result<String, PkiError> {
    let cert = parse_certificate(cert_der)?;
    Ok(hex_without_leading_zeros(cert.raw_serial()))
}

/// Parses one DER certificate, refusing oversize input and trailing bytes.
pub(crate) fn parse_certificate(cert_der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    if cert_der.len() > MAX_CERTIFICATE_BYTES {
        return Err(PkiError::CertificateTooLarge(cert_der.len()));
    }

    let (rest, cert) = X509Certificate::from_der(cert_der)
        .map_err(|err| PkiError::CertificateMalformed(err.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::CertificateMalformed(format!(
            "{} bytes after the certificate",
            rest.len()
        )));
    }
    Ok(cert)
}

/// Verifies a signature whose algorithm x509-parser read, under a SubjectPublicKeyInfo.
pub(crate) fn verify_x509_signature(
    signer_spki_der: &[u8],
    algorithm: &x509_parser::asn1_rs::Oid<'_>,
    parameters: Option<&Any<'_>>,
    message: &[u8],
    signature: &x509_parser::asn1_rs::BitString<'_>,
) -> Result<(), PkiError> {
    let algorithm = ObjectIdentifier::from_bytes(algorithm.as_bytes())
        .map_err(|_| PkiError::UnsupportedSignatureAlgorithm(algorithm.to_id_string()))?;

    // PKCS#1 v1.5 algorithm identifiers carry NULL parameters or none (RFC 4055 section 5).
    let parameters_null =
        parameters.is_none_or(|any| any.header.tag() == Tag::Null && any.data.is_empty());
    if !parameters_null {
        return Err(PkiError::UnsupportedSignatureAlgorithm(format!(
            "{algorithm} with parameters"
        )));
    }
    if signature.unused_bits != 0 {
        return Err(PkiError::SignatureInvalid);
    }

    verify_rsa_pkcs1(signer_spki_der, &algorithm, message, &signature.data)
}

/// Verifies an RSA PKCS#1 v1.5 signature over `message` by the key in `signer_spki_der`.
pub(crate) fn verify_rsa_pkcs1(
    signer_spki_der: &[u8],
    algorithm: &ObjectIdentifier,
    message: &[u8],
    signature: &[u8],
) -> Result<(), PkiError> {
    let parameters = rsa_parameters(algorithm)?;

    let public_key = RsaPublicKey::from_spki_der(signer_spki_der)?;

    UnparsedPublicKey::new(parameters, public_key.rsa_public_key_der)
        .verify(message, signature)
        .map_err(|_| PkiError::SignatureInvalid)
}

/// The aws-lc-rs verification parameters for a signature algorithm OID.
fn rsa_parameters(algorithm: &ObjectIdentifier) -> Result<&'static RsaParameters, PkiError> {
    // The 1024-bit floors are deliberate: Apple's Device CA and scepclient use RSA-1024.
    if *algorithm == rfc5912::SHA_1_WITH_RSA_ENCRYPTION || *algorithm == OIW_SHA1_WITH_RSA {
        Ok(&signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY)
    } else if *algorithm == rfc5912::SHA_256_WITH_RSA_ENCRYPTION {
        Ok(&signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY)
    } else if *algorithm == rfc5912::SHA_384_WITH_RSA_ENCRYPTION {
        Ok(&signature::RSA_PKCS1_2048_8192_SHA384)
    } else if *algorithm == rfc5912::SHA_512_WITH_RSA_ENCRYPTION {
        Ok(&signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY)
    } else {
        Err(PkiError::UnsupportedSignatureAlgorithm(
            algorithm.to_string(),
        ))
    }
}

/// An RSA public key found in a SubjectPublicKeyInfo (RFC 3279 section 2.3.1).
pub(crate) struct RsaPublicKey<'a> {
    /// The RSAPublicKey DER inside the SPKI's BIT STRING.
    pub(crate) rsa_public_key_der: &'a [u8],
    /// The modulus size in bits.
    pub(crate) bits: usize,
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (RFC 8017 A.1.1).
#[derive(der::Sequence)]
struct RsaPublicKeyFields<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

impl<'a> RsaPublicKey<'a> {
    /// Reads an rsaEncryption SubjectPublicKeyInfo; anything else is refused.
    pub(crate) fn from_spki_der(spki_der: &'a [u8]) -> Result<Self, PkiError> {
        let spki = spki::SubjectPublicKeyInfoRef::from_der(spki_der)
            .map_err(|err| PkiError::UnsupportedPublicKey(err.to_string()))?;

        if spki.algorithm.oid != rfc5912::RSA_ENCRYPTION {
            return Err(PkiError::UnsupportedPublicKey(
                spki.algorithm.oid.to_string(),
            ));
        }
        let parameters_null = spki
            .algorithm
            .parameters
            .is_none_or(|any| any.tag() == der::Tag::Null && any.value().is_empty());
        if !parameters_null {
            return Err(PkiError::UnsupportedPublicKey(
                "rsaEncryption with parameters".to_owned(),
            ));
        }

        let rsa_public_key_der = spki.subject_public_key.as_bytes().ok_or_else(|| {
            PkiError::UnsupportedPublicKey("bit string with unused bits".to_owned())
        })?;
        let fields = RsaPublicKeyFields::from_der(rsa_public_key_der)
            .map_err(|err| PkiError::UnsupportedPublicKey(format!("rsa public key: {err}")))?;
        if fields.public_exponent.is_empty() {
            return Err(PkiError::UnsupportedPublicKey("zero exponent".to_owned()));
        }
        Ok(Self {
            rsa_public_key_der,
            bits: bit_length(fields.modulus.as_bytes()),
        })
    }
}

/// The bit length of a big-endian unsigned integer without leading zero bytes.
fn bit_length(minimal_be: &[u8]) -> usize {
    match minimal_be.first() {
        None => 0,
        Some(first) => {
            let first_bits = 8 - first.leading_zeros() as usize;
            (minimal_be.len() - 1) * 8 + first_bits
        }
    }
}

/// Lowercase hex of an INTEGER's content bytes, without leading zero bytes.
fn hex_without_leading_zeros(bytes: &[u8]) -> String {
    let significant: Vec<u8> = bytes
        .iter()
        .copied()
        .skip_while(|byte| *byte == 0)
        .collect();
    if significant.is_empty() {
        return "0".to_owned();
    }
    significant
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// One PEM block: its label and the DER its base64 carries.
pub(crate) struct PemBlock {
    /// The label between "BEGIN " and the closing dashes.
    pub(crate) label: String,
    /// The decoded body.
    pub(crate) der: Vec<u8>,
}

/// Splits PEM text into blocks (RFC 7468 section 2). Text between blocks is ignored, as
/// RFC 7468 allows; a block with headers (the legacy encrypted-key form) is refused.
pub(crate) fn pem_blocks(pem: &str) -> Result<Vec<PemBlock>, PkiError> {
    if pem.len() > MAX_PEM_BYTES {
        return Err(PkiError::PemTooLarge(pem.len()));
    }

    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in pem.lines().map(str::trim) {
        match open.take() {
            None => {
                if let Some(label) = line
                    .strip_prefix("-----BEGIN ")
                    .and_then(|rest| rest.strip_suffix("-----"))
                {
                    if blocks.len() == MAX_PEM_BLOCKS {
                        return Err(PkiError::PemTooManyBlocks);
                    }
                    open = Some((label.to_owned(), String::new()));
                }
            }
            Some((label, mut body)) => {
                if let Some(end) = line
                    .strip_prefix("-----END ")
                    .and_then(|rest| rest.strip_suffix("-----"))
                {
                    if end != label {
                        return Err(PkiError::PemMalformed("END label differs from BEGIN"));
                    }
                    let der = base64::engine::general_purpose::STANDARD
                        .decode(body.as_bytes())
                        .map_err(|_| PkiError::PemMalformed("body is not base64"))?;
                    blocks.push(PemBlock { label, der });
                } else if line.contains(':') {
                    return Err(PkiError::PemMalformed("headers (encrypted pem?)"));
                } else {
                    body.extend(line.chars().filter(|c| !c.is_ascii_whitespace()));
                    open = Some((label, body));
                }
            }
        }
    }

    if open.is_some() {
        return Err(PkiError::PemMalformed("no END line"));
    }
    Ok(blocks)
}

/// Writes one PEM block with 64-column lines and a final newline.
pub(crate) fn encode_pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);

    let mut pem = format!("-----BEGIN {label}-----\n");
    // Base64 output is ASCII, so splitting its bytes never cuts a character.
    for chunk in body.as_bytes().chunks(PEM_LINE_WIDTH) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::apple;

    #[test]
    fn summary_of_apple_root() {
        let der = pem_to_der(apple::APPLE_ROOT_CA_PEM).unwrap();
        let summary = summarize(&der).unwrap();
        assert_eq!(summary.common_name.as_deref(), Some("Apple Root CA"));
        assert_eq!(summary.subject, summary.issuer);
        assert!(
            summary.subject.contains("O=Apple Inc."),
            "{}",
            summary.subject
        );
        assert_eq!(summary.serial_hex, "02");
        // 2006-04-25T21:40:36Z .. 2035-02-09T21:40:36Z
        assert_eq!(summary.not_before, 1_146_001_236);
        assert_eq!(summary.not_after, 2_054_670_036);
    }

    #[test]
    fn validity_bounds() {
        let der = pem_to_der(apple::APPLE_IPHONE_DEVICE_CA_PEM).unwrap();
        let summary = summarize(&der).unwrap();
        assert!(check_validity(&der, summary.not_before).is_ok());
        assert!(check_validity(&der, summary.not_after).is_ok());
        assert_eq!(
            check_validity(&der, summary.not_after + 1),
            Err(PkiError::CertificateExpired {
                not_after: summary.not_after,
                at: summary.not_after + 1
            })
        );
        assert_eq!(
            check_validity(&der, summary.not_before - 1),
            Err(PkiError::CertificateNotYetValid {
                not_before: summary.not_before,
                at: summary.not_before - 1
            })
        );
    }

    #[test]
    fn pem_round_trip_and_chain() {
        let root = pem_to_der(apple::APPLE_ROOT_CA_PEM).unwrap();
        let pem = der_to_pem(&root);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(pem.lines().all(|line| line.len() <= PEM_LINE_WIDTH));
        assert_eq!(pem_to_der(&pem).unwrap(), root);

        let chain = format!(
            "junk before\n{}{}",
            apple::APPLE_IPHONE_CA_PEM,
            apple::APPLE_ROOT_CA_PEM
        );
        let all = pem_to_der_all(&chain).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all.get(1), Some(&root));
    }

    #[test]
    fn pem_refusals() {
        assert_eq!(
            pem_to_der("no pem here"),
            Err(PkiError::PemBlockMissing("CERTIFICATE"))
        );
        assert_eq!(
            pem_to_der("-----BEGIN CERTIFICATE-----\nAAAA\n"),
            Err(PkiError::PemMalformed("no END line"))
        );
        assert_eq!(
            pem_to_der("-----BEGIN CERTIFICATE-----\nA!AA\n-----END CERTIFICATE-----\n"),
            Err(PkiError::PemMalformed("body is not base64"))
        );
        assert_eq!(
            pem_to_der("-----BEGIN CERTIFICATE-----\nAAAA\n-----END KEY-----\n"),
            Err(PkiError::PemMalformed("END label differs from BEGIN"))
        );
        let many = "-----BEGIN X-----\nAAAA\n-----END X-----\n".repeat(MAX_PEM_BLOCKS + 1);
        assert_eq!(pem_to_der(&many), Err(PkiError::PemTooManyBlocks));
    }

    #[test]
    fn malformed_certificates_are_errors() {
        let root = pem_to_der(apple::APPLE_ROOT_CA_PEM).unwrap();
        assert!(matches!(
            summarize(b"\x30\x03\x02\x01\x01"),
            Err(PkiError::CertificateMalformed(_))
        ));
        let mut trailing = root.clone();
        trailing.push(0);
        assert!(matches!(
            summarize(&trailing),
            Err(PkiError::CertificateMalformed(_))
        ));
        let truncated = root.get(..root.len() / 2).unwrap();
        assert!(summarize(truncated).is_err());
        assert!(!is_signed_by(truncated, &spki_der(&root).unwrap()));
    }

    #[test]
    fn signature_checks() {
        let root = pem_to_der(apple::APPLE_ROOT_CA_PEM).unwrap();
        let iphone = pem_to_der(apple::APPLE_IPHONE_CA_PEM).unwrap();
        let root_spki = spki_der(&root).unwrap();
        assert!(is_signed_by(&root, &root_spki));
        assert!(is_signed_by(&iphone, &root_spki));
        assert!(!is_signed_by(&root, &spki_der(&iphone).unwrap()));

        // Flip one bit of the signature (the last byte of the certificate).
        let mut tampered = iphone.clone();
        if let Some(last) = tampered.last_mut() {
            *last ^= 1;
        }
        assert!(!is_signed_by(&tampered, &root_spki));
        assert!(!is_signed_by(&iphone, b"not an spki"));
    }

    #[test]
    fn serial_hex_strips_leading_zero() {
        assert_eq!(hex_without_leading_zeros(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(hex_without_leading_zeros(&[0x00]), "0");
        assert_eq!(hex_without_leading_zeros(&[0x7f]), "7f");
        assert_eq!(bit_length(&[0x01, 0x00]), 9);
        assert_eq!(bit_length(&[0x80, 0, 0]), 24);
    }
}
