//! SignedData (RFC 5652 §5): verifying what devices and SCEP clients sign, and signing what
//! otad sends back, including the certificates-only form SCEP uses for GetCACert.
//!
//! Verification checks the signature under the key of a certificate carried in the message;
//! whether that certificate is trusted is for the caller (the `pki` layer) to decide.

use std::cmp::Ordering;
use std::time::SystemTime;

use aws_lc_rs::signature::{self, KeyPair, RsaEncoding, RsaKeyPair, UnparsedPublicKey};
use const_oid::ObjectIdentifier;
use der::Encode;

use super::ber::{self, Tlv};
use super::{
    algorithm_identifier, certificate_parts, content_info, encode_algorithm,
    encode_algorithm_null, encode_content_info, malformed, object_identifier, oid,
    rsa_public_key, single, tag, CertificateId, CmsError, DigestAlgorithm, Reader,
    MAX_CERTIFICATES,
};

/// At most this many signed attributes in one SignerInfo.
pub const MAX_SIGNED_ATTRIBUTES: usize = 32;

/// At most this many values in one signed attribute.
pub const MAX_ATTRIBUTE_VALUES: usize = 8;

/// SignedData version 1 (RFC 5652 §5.1): eContentType id-data, issuerAndSerialNumber sids.
const VERSION_1: [u8; 3] = [tag::INTEGER, 0x01, 0x01];
/// SignedData version 3 (RFC 5652 §5.1): any other eContentType.
const VERSION_3: [u8; 3] = [tag::INTEGER, 0x01, 0x03];

/// One verified SignedData (RFC 5652 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedMessage {
    /// The eContentType.
    pub content_type: ObjectIdentifier,
    /// The eContent (chunks joined), `None` if absent.
    pub content: Option<Vec<u8>>,
    /// DER of each certificate, in the order sent.
    pub certificates: Vec<Vec<u8>>,
    /// Who signed, and how.
    pub signer: Signer,
}

/// The SignerInfo (RFC 5652 §5.3) whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// DER of the certificate that made the signature.
    pub certificate: Vec<u8>,
    /// The digestAlgorithm.
    pub digest: DigestAlgorithm,
    /// The signedAttrs, in the order sent, or `None` if there were none.
    pub signed_attributes: Option<Vec<SignedAttribute>>,
}

/// One signed Attribute (RFC 5652 §5.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedAttribute {
    /// The attrType.
    pub oid: ObjectIdentifier,
    /// DER (TLV) of each of the attrValues.
    pub values: Vec<Vec<u8>>,
}

impl SignedMessage {
    /// DER (TLV) of the first value of a signed attribute, if present.
    pub fn signed_attribute(&self, oid: &ObjectIdentifier) -> Option<&[u8]> {
        let attributes = self.signer.signed_attributes.as_ref()?;
        let attribute = attributes.iter().find(|attribute| attribute.oid == *oid)?;
        attribute.values.first().map(Vec::as_slice)
    }
}

/// Parses a ContentInfo(SignedData) — BER accepted — with exactly one SignerInfo, finds the
/// signer's certificate among `certificates` (sid = issuerAndSerialNumber or
/// subjectKeyIdentifier), and verifies the RSA PKCS#1 v1.5 signature with the cert's key:
/// over eContent when there are no signed attributes; otherwise over the DER SET of the
/// signed attributes, after checking messageDigest == digest(eContent) and the contentType
/// attribute == eContentType. Says nothing about whether the certificate is trusted.
///
/// RFC 5652 §5.3, §5.4, §5.6. The signed attributes are hashed in the bytes received (retagged
/// as a SET), so a sender's unsorted SET still verifies.
pub fn verify(input: &[u8]) -> Result<SignedMessage, CmsError> {
    let der = ber::normalize(input)?;
    let signed_data = parse_signed_data(&der)?;
    let signer_info = match signed_data.signer_infos.as_slice() {
        [one] => parse_signer_info(one)?,
        others => return Err(CmsError::SignerCount(others.len())),
    };

    let digest = DigestAlgorithm::from_oid(&signer_info.digest_algorithm)
        .ok_or_else(|| CmsError::UnsupportedDigest(signer_info.digest_algorithm.to_string()))?;
    check_signature_algorithm(&signer_info.signature_algorithm, digest)?;

    // Certificates that do not parse cannot be the signer's; they are still returned.
    let certificate = signed_data
        .certificates
        .iter()
        .copied()
        .find(|certificate| {
            certificate_parts(certificate).is_ok_and(|parts| signer_info.sid.matches(&parts))
        })
        .ok_or(CmsError::SignerCertificateMissing)?;
    let parts = certificate_parts(certificate)?;
    let (public_key, _) = rsa_public_key(&parts.subject_public_key_info)?;

    let content = signed_data.content.ok_or(CmsError::NoContent)?;
    let signed_attributes = match signer_info.signed_attributes {
        None => {
            verify_rsa(digest, public_key, content, signer_info.signature)?;
            None
        }
        Some(element) => {
            let attributes = parse_attributes(element.content)?;
            check_content_type(&attributes, &signed_data.content_type)?;
            check_message_digest(&attributes, digest, content)?;

            // RFC 5652 §5.4: the signature covers the DER of the SET OF, i.e. the [0] IMPLICIT
            // element with its identifier octet replaced by that of a SET.
            let mut set = element.raw.to_vec();
            if let Some(identifier) = set.first_mut() {
                *identifier = tag::SET;
            }
            verify_rsa(digest, public_key, &set, signer_info.signature)?;
            Some(attributes)
        }
    };

    Ok(SignedMessage {
        content_type: signed_data.content_type,
        content: Some(content.to_vec()),
        certificates: signed_data.certificates.iter().map(|cert| cert.to_vec()).collect(),
        signer: Signer {
            certificate: certificate.to_vec(),
            digest,
            signed_attributes,
        },
    })
}

/// The key and certificate that sign.
pub struct SignerIdentity<'a> {
    /// DER of the signer's certificate; its key must be `key`'s public half.
    pub certificate: &'a [u8],
    /// The signer's private key.
    pub key: &'a RsaKeyPair,
}

/// How [`sign`] builds its SignedData.
#[derive(Debug, Clone, Copy)]
pub struct SignOptions<'a> {
    /// The eContentType, usually id-data.
    pub content_type: ObjectIdentifier,
    /// The digest algorithm ([`DigestAlgorithm::Sha1`] cannot sign: see [`sign`]).
    pub digest: DigestAlgorithm,
    /// Whether to add signed attributes: contentType, signingTime, messageDigest.
    pub signed_attributes: bool,
    /// More signed attributes: (type, DER of one value); implies `signed_attributes`.
    pub extra_attributes: &'a [(ObjectIdentifier, Vec<u8>)],
    /// DER of extra certificates to include after the signer's own.
    pub certificates: &'a [&'a [u8]],
}

/// DER ContentInfo(SignedData), signer identified by issuerAndSerialNumber, digestAlgorithm a
/// hash OID, signatureAlgorithm rsaEncryption, the signer's cert included first.
///
/// RFC 5652 §5.1–§5.4; the signed attributes are sorted as DER requires for a SET OF. SHA-1
/// is refused with [`CmsError::UnsupportedDigest`]: aws-lc-rs signs PKCS#1 v1.5 with SHA-256,
/// SHA-384 and SHA-512 only.
pub fn sign(
    content: &[u8],
    signer: &SignerIdentity<'_>,
    options: &SignOptions<'_>,
) -> Result<Vec<u8>, CmsError> {
    let attributes = if options.signed_attributes || !options.extra_attributes.is_empty() {
        let mut attributes = signed_attributes(content, options)?;
        sort_der_set(&mut attributes);
        Some(attributes)
    } else {
        None
    };

    build_signed_data(content, signer, options, attributes.as_deref())
}

/// Builds the SignedData around `content` with `attributes` (each one DER Attribute, in the
/// order given) as the signed attributes, or none.
fn build_signed_data(
    content: &[u8],
    signer: &SignerIdentity<'_>,
    options: &SignOptions<'_>,
    attributes: Option<&[Vec<u8>]>,
) -> Result<Vec<u8>, CmsError> {
    let encoding: &'static dyn RsaEncoding = match options.digest {
        DigestAlgorithm::Sha1 => {
            return Err(CmsError::UnsupportedDigest(format!(
                "{} (aws-lc-rs makes no sha-1 rsa signatures)",
                oid::SHA1
            )))
        }
        DigestAlgorithm::Sha256 => &signature::RSA_PKCS1_SHA256,
        DigestAlgorithm::Sha512 => &signature::RSA_PKCS1_SHA512,
    };

    let parts = certificate_parts(signer.certificate)?;
    let (certificate_key, _) = rsa_public_key(&parts.subject_public_key_info)?;
    if signer.key.public_key().as_ref() != certificate_key {
        return Err(CmsError::Sign("signer key does not match the certificate".into()));
    }
    let count = 1 + options.certificates.len();
    if count > MAX_CERTIFICATES {
        return Err(CmsError::TooManyCertificates(count));
    }
    for certificate in options.certificates {
        certificate_parts(certificate)?;
    }

    let signed_attrs_set = attributes.map(|attributes| ber::tlv(tag::SET, &attributes.concat()));
    let message = signed_attrs_set.as_deref().unwrap_or(content);
    let mut signature_value = vec![0u8; signer.key.public_modulus_len()];
    let rng = aws_lc_rs::rand::SystemRandom::new();
    signer
        .key
        .sign(encoding, &rng, message, &mut signature_value)
        .map_err(|_| CmsError::Sign("rsa signing failed".into()))?;

    let mut signer_info_fields = vec![
        VERSION_1.to_vec(),
        parts.issuer_and_serial_number(),
        encode_algorithm(&options.digest.oid()),
    ];
    if let Some(set) = &signed_attrs_set {
        // signedAttrs is [0] IMPLICIT: the SET's content under a context identifier.
        let mut implicit = set.clone();
        if let Some(identifier) = implicit.first_mut() {
            *identifier = tag::CONTEXT_0;
        }
        signer_info_fields.push(implicit);
    }
    signer_info_fields.push(encode_algorithm_null(&oid::RSA_ENCRYPTION));
    signer_info_fields.push(ber::tlv(tag::OCTET_STRING, &signature_value));
    let signer_info = ber::tlv(tag::SEQUENCE, &signer_info_fields.concat());

    let mut certificates = vec![signer.certificate];
    certificates.extend_from_slice(options.certificates);
    let version = if options.content_type == oid::ID_DATA {
        VERSION_1
    } else {
        VERSION_3
    };
    let encapsulated = ber::tlv_of(
        tag::SEQUENCE,
        &[
            &ber::tlv(tag::OID, options.content_type.as_bytes()),
            &ber::tlv(tag::CONTEXT_0, &ber::tlv(tag::OCTET_STRING, content)),
        ],
    );
    let signed_data = ber::tlv_of(
        tag::SEQUENCE,
        &[
            &version,
            &ber::tlv(tag::SET, &encode_algorithm(&options.digest.oid())),
            &encapsulated,
            &ber::tlv(tag::CONTEXT_0, &certificates.concat()),
            &ber::tlv(tag::SET, &signer_info),
        ],
    );
    Ok(encode_content_info(&oid::ID_SIGNED_DATA, &signed_data))
}

/// A degenerate, certificates-only SignedData (RFC 8894 §3.4, GetCACert with an RA).
///
/// RFC 5652 §5.2: no signers, no digest algorithms, no eContent, the certificates in the
/// order given.
pub fn certs_only(certificates: &[&[u8]]) -> Result<Vec<u8>, CmsError> {
    if certificates.is_empty() {
        return Err(CmsError::NoCertificates);
    }
    if certificates.len() > MAX_CERTIFICATES {
        return Err(CmsError::TooManyCertificates(certificates.len()));
    }
    for certificate in certificates {
        certificate_parts(certificate)?;
    }

    let encapsulated = ber::tlv(tag::SEQUENCE, &ber::tlv(tag::OID, oid::ID_DATA.as_bytes()));
    let signed_data = ber::tlv_of(
        tag::SEQUENCE,
        &[
            &VERSION_1,
            &[tag::SET, 0x00],
            &encapsulated,
            &ber::tlv(tag::CONTEXT_0, &certificates.concat()),
            &[tag::SET, 0x00],
        ],
    );
    Ok(encode_content_info(&oid::ID_SIGNED_DATA, &signed_data))
}

/// Certificates from a certificates-only SignedData (BER accepted).
///
/// RFC 8894 §3.4: a SignedData with no SignerInfos; one that has signers is refused with
/// [`CmsError::SignerCount`] (use [`verify`] for those).
pub fn parse_certs_only(input: &[u8]) -> Result<Vec<Vec<u8>>, CmsError> {
    let der = ber::normalize(input)?;
    let signed_data = parse_signed_data(&der)?;
    if !signed_data.signer_infos.is_empty() {
        return Err(CmsError::SignerCount(signed_data.signer_infos.len()));
    }
    if signed_data.certificates.is_empty() {
        return Err(CmsError::NoCertificates);
    }
    Ok(signed_data.certificates.iter().map(|cert| cert.to_vec()).collect())
}

/// The fields of a SignedData (RFC 5652 §5.1) that this layer uses, borrowed from its DER.
struct SignedDataParts<'a> {
    content_type: ObjectIdentifier,
    content: Option<&'a [u8]>,
    certificates: Vec<&'a [u8]>,
    signer_infos: Vec<Tlv<'a>>,
}

/// Parses the DER of a ContentInfo(SignedData).
fn parse_signed_data(der: &[u8]) -> Result<SignedDataParts<'_>, CmsError> {
    const WHAT: &str = "signed data";
    let signed_data = content_info(der, oid::ID_SIGNED_DATA, CmsError::NotSignedData)?;
    if !signed_data.is(tag::SEQUENCE) {
        return Err(malformed(WHAT, "not a SEQUENCE"));
    }

    let mut reader = Reader::new(signed_data.content, WHAT);
    reader.expect(tag::INTEGER, "version")?;
    reader.expect(tag::SET, "digestAlgorithms")?;
    let encapsulated = reader.expect(tag::SEQUENCE, "encapContentInfo")?;
    let certificate_set = reader.optional(tag::CONTEXT_0, "certificates")?;
    reader.optional(tag::CONTEXT_1, "crls")?;
    let signer_info_set = reader.expect(tag::SET, "signerInfos")?;
    reader.finish()?;

    const ENCAPSULATED: &str = "encapsulated content info";
    let mut reader = Reader::new(encapsulated.content, ENCAPSULATED);
    let content_type = object_identifier(&reader.expect(tag::OID, "eContentType")?, ENCAPSULATED)?;
    let content = match reader.optional(tag::CONTEXT_0, "eContent")? {
        Some(explicit) => Some(single(explicit.content, tag::OCTET_STRING, ENCAPSULATED)?.content),
        None => None,
    };
    reader.finish()?;

    let mut certificates = Vec::new();
    let mut count = 0;
    if let Some(set) = certificate_set {
        let mut reader = Reader::new(set.content, "certificates");
        while !reader.is_empty() {
            let choice = reader.any("certificate")?;
            count += 1;
            // Only the plain Certificate choice (RFC 5652 §10.2.2); attribute certificates
            // and other formats are counted but not kept.
            if choice.is(tag::SEQUENCE) {
                certificates.push(choice.raw);
            }
        }
    }
    if count > MAX_CERTIFICATES {
        return Err(CmsError::TooManyCertificates(count));
    }

    let mut signer_infos = Vec::new();
    let mut reader = Reader::new(signer_info_set.content, "signer infos");
    while !reader.is_empty() {
        signer_infos.push(reader.expect(tag::SEQUENCE, "signer info")?);
    }

    Ok(SignedDataParts {
        content_type,
        content,
        certificates,
        signer_infos,
    })
}

/// The fields of a SignerInfo (RFC 5652 §5.3), borrowed from its DER.
struct SignerInfoParts<'a> {
    sid: CertificateId<'a>,
    digest_algorithm: ObjectIdentifier,
    signed_attributes: Option<Tlv<'a>>,
    signature_algorithm: ObjectIdentifier,
    signature: &'a [u8],
}

/// Parses one SignerInfo.
fn parse_signer_info<'a>(signer_info: &Tlv<'a>) -> Result<SignerInfoParts<'a>, CmsError> {
    const WHAT: &str = "signer info";
    let mut reader = Reader::new(signer_info.content, WHAT);
    reader.expect(tag::INTEGER, "version")?;
    let sid = CertificateId::parse(&reader.any("sid")?, WHAT)?;
    let (digest_algorithm, _) =
        algorithm_identifier(&reader.expect(tag::SEQUENCE, "digestAlgorithm")?, WHAT)?;
    let signed_attributes = reader.optional(tag::CONTEXT_0, "signedAttrs")?;
    let (signature_algorithm, _) =
        algorithm_identifier(&reader.expect(tag::SEQUENCE, "signatureAlgorithm")?, WHAT)?;
    let signature = reader.expect(tag::OCTET_STRING, "signature")?;
    reader.optional(tag::CONTEXT_1, "unsignedAttrs")?;
    reader.finish()?;

    Ok(SignerInfoParts {
        sid,
        digest_algorithm,
        signed_attributes,
        signature_algorithm,
        signature: signature.content,
    })
}

/// Parses the content of signedAttrs into attributes, in the order sent.
fn parse_attributes(content: &[u8]) -> Result<Vec<SignedAttribute>, CmsError> {
    const WHAT: &str = "signed attributes";
    let mut attributes = Vec::new();
    let mut count = 0;
    let mut reader = Reader::new(content, WHAT);
    while !reader.is_empty() {
        let attribute = reader.expect(tag::SEQUENCE, "attribute")?;
        count += 1;
        if count > MAX_SIGNED_ATTRIBUTES {
            continue;
        }

        let mut fields = Reader::new(attribute.content, WHAT);
        let oid = object_identifier(&fields.expect(tag::OID, "attrType")?, WHAT)?;
        let value_set = fields.expect(tag::SET, "attrValues")?;
        fields.finish()?;

        let mut values = Vec::new();
        let mut value_reader = Reader::new(value_set.content, WHAT);
        while !value_reader.is_empty() {
            if values.len() == MAX_ATTRIBUTE_VALUES {
                return Err(malformed(WHAT, &format!("{oid} has too many values")));
            }
            values.push(value_reader.any("attribute value")?.raw.to_vec());
        }
        attributes.push(SignedAttribute { oid, values });
    }
    if count > MAX_SIGNED_ATTRIBUTES {
        return Err(CmsError::TooManyAttributes(count));
    }
    Ok(attributes)
}

/// The single value of the attribute `oid`, which RFC 5652 §5.3 says appears once with one
/// value; `name` is its name for errors.
fn only_value<'a>(
    attributes: &'a [SignedAttribute],
    oid: &ObjectIdentifier,
    name: &'static str,
) -> Result<&'a [u8], CmsError> {
    let mut matching = attributes.iter().filter(|attribute| attribute.oid == *oid);
    let attribute = matching.next().ok_or(CmsError::MissingSignedAttribute(name))?;
    if matching.next().is_some() {
        return Err(malformed("signed attributes", &format!("{name} appears twice")));
    }
    match attribute.values.as_slice() {
        [value] => Ok(value),
        _ => Err(malformed("signed attributes", &format!("{name} has not one value"))),
    }
}

/// Checks the contentType attribute (RFC 5652 §11.1) against the eContentType.
fn check_content_type(
    attributes: &[SignedAttribute],
    content_type: &ObjectIdentifier,
) -> Result<(), CmsError> {
    let value = only_value(attributes, &oid::CONTENT_TYPE, "contentType")?;
    let element = single(value, tag::OID, "content type attribute")?;
    if object_identifier(&element, "content type attribute")? != *content_type {
        return Err(CmsError::ContentTypeMismatch);
    }
    Ok(())
}

/// Checks the messageDigest attribute (RFC 5652 §11.2) against the digest of the content.
fn check_message_digest(
    attributes: &[SignedAttribute],
    digest: DigestAlgorithm,
    content: &[u8],
) -> Result<(), CmsError> {
    let value = only_value(attributes, &oid::MESSAGE_DIGEST, "messageDigest")?;
    let element = single(value, tag::OCTET_STRING, "message digest attribute")?;
    if element.content != digest.digest(content).as_slice() {
        return Err(CmsError::MessageDigestMismatch);
    }
    Ok(())
}

/// Accepts rsaEncryption, or the sha*WithRSAEncryption that matches `digest`.
fn check_signature_algorithm(
    algorithm: &ObjectIdentifier,
    digest: DigestAlgorithm,
) -> Result<(), CmsError> {
    let implied = match *algorithm {
        oid::RSA_ENCRYPTION => return Ok(()),
        oid::SHA1_WITH_RSA_ENCRYPTION => DigestAlgorithm::Sha1,
        oid::SHA256_WITH_RSA_ENCRYPTION => DigestAlgorithm::Sha256,
        oid::SHA512_WITH_RSA_ENCRYPTION => DigestAlgorithm::Sha512,
        _ => return Err(CmsError::UnsupportedSignatureAlgorithm(algorithm.to_string())),
    };
    if implied != digest {
        return Err(CmsError::UnsupportedSignatureAlgorithm(format!(
            "{algorithm} with digest {digest}"
        )));
    }
    Ok(())
}

/// Verifies an RSA PKCS#1 v1.5 signature over `message` with the RSAPublicKey DER `key`.
fn verify_rsa(
    digest: DigestAlgorithm,
    key: &[u8],
    message: &[u8],
    signature_value: &[u8],
) -> Result<(), CmsError> {
    let algorithm: &'static signature::RsaParameters = match digest {
        DigestAlgorithm::Sha1 => &signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
        DigestAlgorithm::Sha256 => &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
        DigestAlgorithm::Sha512 => &signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
    };
    UnparsedPublicKey::new(algorithm, key)
        .verify(message, signature_value)
        .map_err(|_| CmsError::BadSignature)
}

/// The DER Attributes [`sign`] adds: contentType, signingTime, messageDigest, then the extras.
fn signed_attributes(content: &[u8], options: &SignOptions<'_>) -> Result<Vec<Vec<u8>>, CmsError> {
    let mut attributes = vec![
        encode_attribute(
            &oid::CONTENT_TYPE,
            &ber::tlv(tag::OID, options.content_type.as_bytes()),
        ),
        encode_attribute(&oid::SIGNING_TIME, &signing_time()?),
        encode_attribute(
            &oid::MESSAGE_DIGEST,
            &ber::tlv(tag::OCTET_STRING, &options.digest.digest(content)),
        ),
    ];

    let mut seen = vec![oid::CONTENT_TYPE, oid::SIGNING_TIME, oid::MESSAGE_DIGEST];
    for (attribute_type, value) in options.extra_attributes {
        if seen.contains(attribute_type) {
            return Err(CmsError::Sign(format!("attribute {attribute_type} given twice")));
        }
        match ber::split_der(value) {
            Ok((_, [])) => {}
            _ => {
                return Err(CmsError::Sign(format!(
                    "attribute {attribute_type}: value is not one DER element"
                )))
            }
        }
        seen.push(*attribute_type);
        attributes.push(encode_attribute(attribute_type, value));
    }

    let count = attributes.len();
    if count > MAX_SIGNED_ATTRIBUTES {
        return Err(CmsError::TooManyAttributes(count));
    }
    Ok(attributes)
}

/// DER of an Attribute with one value.
fn encode_attribute(attribute_type: &ObjectIdentifier, value: &[u8]) -> Vec<u8> {
    ber::tlv_of(
        tag::SEQUENCE,
        &[&ber::tlv(tag::OID, attribute_type.as_bytes()), &ber::tlv(tag::SET, value)],
    )
}

/// DER of the current time as RFC 5652 §11.3 wants it: UTCTime for 1950 through 2049,
/// GeneralizedTime otherwise.
fn signing_time() -> Result<Vec<u8>, CmsError> {
    let now = der::DateTime::from_system_time(SystemTime::now())
        .map_err(|err| CmsError::Sign(format!("signing time: {err}")))?;
    let encoded = match der::asn1::UtcTime::from_date_time(now) {
        Ok(utc_time) => utc_time.to_der(),
        Err(_) => der::asn1::GeneralizedTime::from_date_time(now).to_der(),
    };
    encoded.map_err(|err| CmsError::Sign(format!("signing time: {err}")))
}

/// Sorts DER encodings into the order X.690 §11.6 gives a SET OF: as octet strings, the
/// shorter padded at its end with zero octets.
fn sort_der_set(elements: &mut [Vec<u8>]) {
    elements.sort_by(|a, b| der_set_order(a, b));
}

/// The X.690 §11.6 order of two encodings.
fn der_set_order(a: &[u8], b: &[u8]) -> Ordering {
    let length = a.len().max(b.len());
    (0..length)
        .map(|index| {
            let left = a.get(index).copied().unwrap_or(0);
            let right = b.get(index).copied().unwrap_or(0);
            left.cmp(&right)
        })
        .find(|order| order.is_ne())
        .unwrap_or_else(|| a.len().cmp(&b.len()))
}
