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
    algorithm_identifier, certificate_parts, content_info, encode_algorithm, encode_algorithm_null,
    encode_content_info, malformed, object_identifier, oid, rsa_public_key, single, tag,
    CertificateId, CmsError, DigestAlgorithm, Reader, MAX_CERTIFICATES,
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
        first_value(self.signer.signed_attributes.as_deref(), oid)
    }
}

/// DER (TLV) of the first value of the attribute `oid` among `attributes`.
fn first_value<'a>(
    attributes: Option<&'a [SignedAttribute]>,
    oid: &ObjectIdentifier,
) -> Option<&'a [u8]> {
    let attribute = attributes?.iter().find(|attribute| attribute.oid == *oid)?;
    attribute.values.first().map(Vec::as_slice)
}

/// The SignedData in `der` and its one SignerInfo: otad reads no message with several signers.
fn parse_one_signer(der: &[u8]) -> Result<(SignedDataParts<'_>, SignerInfoParts<'_>), CmsError> {
    let signed_data = parse_signed_data(der)?;
    let signer_info = match signed_data.signer_infos.as_slice() {
        [one] => parse_signer_info(one)?,
        others => return Err(CmsError::SignerCount(others.len())),
    };
    Ok((signed_data, signer_info))
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
    let (signed_data, signer_info) = parse_one_signer(&der)?;

    let digest = DigestAlgorithm::from_oid(&signer_info.digest_algorithm)
        .ok_or_else(|| CmsError::UnsupportedDigest(signer_info.digest_algorithm.to_string()))?;
    check_signature_algorithm(&signer_info.signature_algorithm, digest)?;

    // Certificates that do not parse cannot be the signer's; they are still returned.
    let (certificate, parts) = signed_data
        .certificates
        .iter()
        .copied()
        .find_map(|certificate| {
            let parts = certificate_parts(certificate).ok()?;
            signer_info
                .sid
                .matches(&parts)
                .then_some((certificate, parts))
        })
        .ok_or(CmsError::SignerCertificateMissing)?;
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
        certificates: signed_data
            .certificates
            .iter()
            .map(|cert| cert.to_vec())
            .collect(),
        signer: Signer {
            certificate: certificate.to_vec(),
            digest,
            signed_attributes,
        },
    })
}

/// A SignedData read without checking its signature. Nothing in it may be trusted: it exists
/// so that a request whose signature fails can still be answered, e.g. with a SCEP CertRep
/// FAILURE badMessageCheck that echoes its transactionID and senderNonce (RFC 8894 §3.3.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedMessage {
    /// The eContentType.
    pub content_type: ObjectIdentifier,
    /// The eContent (chunks joined), `None` if absent.
    pub content: Option<Vec<u8>>,
    /// DER of each certificate, in the order sent.
    pub certificates: Vec<Vec<u8>>,
    /// DER of the certificate the SignerInfo's sid names, if it is among `certificates`.
    pub signer_certificate: Option<Vec<u8>>,
    /// The digestAlgorithm, if it is one this layer knows.
    pub digest: Option<DigestAlgorithm>,
    /// The signedAttrs, in the order sent, or `None` if there were none.
    pub signed_attributes: Option<Vec<SignedAttribute>>,
}

impl UnverifiedMessage {
    /// DER (TLV) of the first value of a signed attribute, if present.
    pub fn signed_attribute(&self, oid: &ObjectIdentifier) -> Option<&[u8]> {
        first_value(self.signed_attributes.as_deref(), oid)
    }
}

/// Parses a ContentInfo(SignedData) — BER accepted — with exactly one SignerInfo, like
/// [`verify`] but checking neither the signature nor the signed attributes' values.
///
/// RFC 5652 §5. Use [`verify`] for anything that acts on the content.
pub fn read_unverified(input: &[u8]) -> Result<UnverifiedMessage, CmsError> {
    let der = ber::normalize(input)?;
    let (signed_data, signer_info) = parse_one_signer(&der)?;

    let signer_certificate = signed_data
        .certificates
        .iter()
        .copied()
        .find(|certificate| {
            certificate_parts(certificate).is_ok_and(|parts| signer_info.sid.matches(&parts))
        });
    let signed_attributes = match signer_info.signed_attributes {
        Some(element) => Some(parse_attributes(element.content)?),
        None => None,
    };

    Ok(UnverifiedMessage {
        content_type: signed_data.content_type,
        content: signed_data.content.map(<[u8]>::to_vec),
        certificates: signed_data
            .certificates
            .iter()
            .map(|cert| cert.to_vec())
            .collect(),
        signer_certificate: signer_certificate.map(<[u8]>::to_vec),
        digest: DigestAlgorithm::from_oid(&signer_info.digest_algorithm),
        signed_attributes,
    })
}

/// The key and certificate that sign.
#[derive(Debug, Clone, Copy)]
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

impl<'a> SignOptions<'a> {
    /// Options for id-data content with no extra attributes, the common case.
    pub fn data(
        digest: DigestAlgorithm,
        signed_attributes: bool,
        certificates: &'a [&'a [u8]],
    ) -> Self {
        SignOptions {
            content_type: oid::ID_DATA,
            digest,
            signed_attributes,
            extra_attributes: &[],
            certificates,
        }
    }
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
        // TODO: SHA-1 signing: aws-lc-rs 1.19 has no PKCS#1 v1.5 SHA-1 signing encoding, and
        // the crypto policy keeps every private-key operation in aws-lc-rs, so SHA-1 only
        // verifies; callers answer with SHA-256 or SHA-512 (GetCACaps, RFC 8894 §3.5.2).
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
        return Err(CmsError::Sign(
            "signer key does not match the certificate".into(),
        ));
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
    Ok(signed_data
        .certificates
        .iter()
        .map(|cert| cert.to_vec())
        .collect())
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
    reader.take(tag::INTEGER, "version")?;
    reader.take(tag::SET, "digestAlgorithms")?;
    let encapsulated = reader.take(tag::SEQUENCE, "encapContentInfo")?;
    let certificate_set = reader.optional(tag::CONTEXT_0, "certificates")?;
    reader.optional(tag::CONTEXT_1, "crls")?;
    let signer_info_set = reader.take(tag::SET, "signerInfos")?;
    reader.finish()?;

    const ENCAPSULATED: &str = "encapsulated content info";
    let mut reader = Reader::new(encapsulated.content, ENCAPSULATED);
    let content_type = object_identifier(&reader.take(tag::OID, "eContentType")?, ENCAPSULATED)?;
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
        signer_infos.push(reader.take(tag::SEQUENCE, "signer info")?);
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
    reader.take(tag::INTEGER, "version")?;
    let sid = CertificateId::parse(&reader.any("sid")?, WHAT)?;
    let (digest_algorithm, _) =
        algorithm_identifier(&reader.take(tag::SEQUENCE, "digestAlgorithm")?, WHAT)?;
    let signed_attributes = reader.optional(tag::CONTEXT_0, "signedAttrs")?;
    let (signature_algorithm, _) =
        algorithm_identifier(&reader.take(tag::SEQUENCE, "signatureAlgorithm")?, WHAT)?;
    let signature = reader.take(tag::OCTET_STRING, "signature")?;
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
        let attribute = reader.take(tag::SEQUENCE, "attribute")?;
        count += 1;
        if count > MAX_SIGNED_ATTRIBUTES {
            continue;
        }

        let mut fields = Reader::new(attribute.content, WHAT);
        let oid = object_identifier(&fields.take(tag::OID, "attrType")?, WHAT)?;
        let value_set = fields.take(tag::SET, "attrValues")?;
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
    let attribute = matching
        .next()
        .ok_or(CmsError::MissingSignedAttribute(name))?;
    if matching.next().is_some() {
        return Err(malformed(
            "signed attributes",
            &format!("{name} appears twice"),
        ));
    }
    match attribute.values.as_slice() {
        [value] => Ok(value),
        _ => Err(malformed(
            "signed attributes",
            &format!("{name} has not one value"),
        )),
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
        _ => {
            return Err(CmsError::UnsupportedSignatureAlgorithm(
                algorithm.to_string(),
            ))
        }
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
            return Err(CmsError::Sign(format!(
                "attribute {attribute_type} given twice"
            )));
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
        &[
            &ber::tlv(tag::OID, attribute_type.as_bytes()),
            &ber::tlv(tag::SET, value),
        ],
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

/// A degenerate SignedData carrying one CRL and nothing else: the content of a GetCRL
/// CertRep (RFC 8894 §3.3.4 and §3.4).
///
/// RFC 5652 §5.2 as for [`certs_only`], with no certificates and the CRL (a DER
/// CertificateList) in `crls [1]`.
pub fn crls_only(crl_der: &[u8]) -> Result<Vec<u8>, CmsError> {
    single(crl_der, tag::SEQUENCE, "crl")?;

    let encapsulated = ber::tlv(tag::SEQUENCE, &ber::tlv(tag::OID, oid::ID_DATA.as_bytes()));
    let signed_data = ber::tlv_of(
        tag::SEQUENCE,
        &[
            &VERSION_1,
            &[tag::SET, 0x00],
            &encapsulated,
            &ber::tlv(tag::CONTEXT_1, crl_der),
            &[tag::SET, 0x00],
        ],
    );
    Ok(encode_content_info(&oid::ID_SIGNED_DATA, &signed_data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cms::test_support::{have_openssl, identity, openssl, shared, TestResult};

    const CONTENT: &[u8] = b"<plist><dict><key>UDID</key><string>test</string></dict></plist>";

    fn plain_options(digest: DigestAlgorithm, signed_attributes: bool) -> SignOptions<'static> {
        SignOptions::data(digest, signed_attributes, &[])
    }

    fn signer(index: usize) -> Result<SignerIdentity<'static>, Box<dyn std::error::Error>> {
        let identity = shared(index)?;
        Ok(SignerIdentity {
            certificate: &identity.certificate,
            key: &identity.signing,
        })
    }

    /// Flips the last octet of the first occurrence of `needle` in `haystack`.
    fn flip_in(haystack: &mut [u8], needle: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
        let start = haystack
            .windows(needle.len())
            .position(|window| window == needle)
            .ok_or("needle not found")?;
        let last = haystack
            .get_mut(start + needle.len() - 1)
            .ok_or("out of range")?;
        *last ^= 0x01;
        Ok(())
    }

    #[test]
    fn round_trip_with_and_without_signed_attributes() -> TestResult {
        let signer = signer(0)?;
        for digest in [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512] {
            for with_attributes in [false, true] {
                let message = sign(CONTENT, &signer, &plain_options(digest, with_attributes))?;
                let verified = verify(&message)?;
                assert_eq!(verified.content.as_deref(), Some(CONTENT));
                assert_eq!(verified.content_type, oid::ID_DATA);
                assert_eq!(verified.signer.digest, digest);
                assert_eq!(verified.signer.certificate, signer.certificate);
                assert_eq!(verified.certificates, vec![signer.certificate.to_vec()]);
                assert_eq!(verified.signer.signed_attributes.is_some(), with_attributes);
                if with_attributes {
                    let expected = ber::tlv(tag::OCTET_STRING, &digest.digest(CONTENT));
                    assert_eq!(
                        verified.signed_attribute(&oid::MESSAGE_DIGEST),
                        Some(expected.as_slice())
                    );
                    let time = verified
                        .signed_attribute(&oid::SIGNING_TIME)
                        .ok_or("no time")?;
                    assert_eq!(time.first(), Some(&0x17), "signingTime is a UTCTime");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn sha1_signing_is_refused() -> TestResult {
        let result = sign(
            CONTENT,
            &signer(0)?,
            &plain_options(DigestAlgorithm::Sha1, true),
        );
        let sha1 = oid::SHA1.to_string();
        assert!(matches!(result, Err(CmsError::UnsupportedDigest(text)) if text.contains(&sha1)));
        Ok(())
    }

    #[test]
    fn extra_attributes_and_certificates_are_carried() -> TestResult {
        let other = shared(1)?;
        let transaction = ber::tlv(0x13, b"4242");
        let nonce = ber::tlv(tag::OCTET_STRING, &[7u8; 16]);
        let extra = [
            (oid::TRANSACTION_ID, transaction.clone()),
            (oid::SENDER_NONCE, nonce.clone()),
        ];
        let certificates = [other.certificate.as_slice()];
        let options = SignOptions {
            extra_attributes: &extra,
            certificates: &certificates,
            ..plain_options(DigestAlgorithm::Sha256, false)
        };
        let verified = verify(&sign(CONTENT, &signer(0)?, &options)?)?;

        assert_eq!(
            verified.signed_attribute(&oid::TRANSACTION_ID),
            Some(transaction.as_slice())
        );
        assert_eq!(
            verified.signed_attribute(&oid::SENDER_NONCE),
            Some(nonce.as_slice())
        );
        assert_eq!(verified.signed_attribute(&oid::RECIPIENT_NONCE), None);
        let attributes = verified
            .signer
            .signed_attributes
            .as_deref()
            .ok_or("no attributes")?;
        assert_eq!(attributes.len(), 5);
        // The signer's certificate comes first, then the extras in order.
        assert_eq!(
            verified.certificates,
            vec![signer(0)?.certificate.to_vec(), other.certificate.clone()]
        );
        Ok(())
    }

    #[test]
    fn bad_extra_attributes_are_refused() -> TestResult {
        let extra = [(
            oid::CONTENT_TYPE,
            ber::tlv(tag::OID, oid::ID_DATA.as_bytes()),
        )];
        let options = SignOptions {
            extra_attributes: &extra,
            ..plain_options(DigestAlgorithm::Sha256, true)
        };
        assert!(matches!(
            sign(CONTENT, &signer(0)?, &options),
            Err(CmsError::Sign(_))
        ));

        let extra = [(oid::TRANSACTION_ID, vec![0x13, 0x05, b'x'])];
        let options = SignOptions {
            extra_attributes: &extra,
            ..plain_options(DigestAlgorithm::Sha256, true)
        };
        assert!(matches!(
            sign(CONTENT, &signer(0)?, &options),
            Err(CmsError::Sign(_))
        ));
        Ok(())
    }

    #[test]
    fn key_not_matching_the_certificate_is_refused() -> TestResult {
        let mismatched = SignerIdentity {
            certificate: &shared(0)?.certificate,
            key: &shared(1)?.signing,
        };
        let result = sign(
            CONTENT,
            &mismatched,
            &plain_options(DigestAlgorithm::Sha256, true),
        );
        assert!(matches!(result, Err(CmsError::Sign(_))));
        Ok(())
    }

    #[test]
    fn tampered_content_is_detected() -> TestResult {
        let signer = signer(0)?;
        let mut with_attributes = sign(
            CONTENT,
            &signer,
            &plain_options(DigestAlgorithm::Sha256, true),
        )?;
        flip_in(&mut with_attributes, b"UDID")?;
        assert!(matches!(
            verify(&with_attributes),
            Err(CmsError::MessageDigestMismatch)
        ));

        let mut without = sign(
            CONTENT,
            &signer,
            &plain_options(DigestAlgorithm::Sha256, false),
        )?;
        flip_in(&mut without, b"UDID")?;
        assert!(matches!(verify(&without), Err(CmsError::BadSignature)));
        Ok(())
    }

    #[test]
    fn tampered_signature_is_detected() -> TestResult {
        let signer = signer(0)?;
        for with_attributes in [false, true] {
            let mut message = sign(
                CONTENT,
                &signer,
                &plain_options(DigestAlgorithm::Sha256, with_attributes),
            )?;
            // The signature is the last field of the last element.
            let last = message.last_mut().ok_or("empty")?;
            *last ^= 0x80;
            assert!(matches!(verify(&message), Err(CmsError::BadSignature)));
        }
        Ok(())
    }

    #[test]
    fn unverified_reading_survives_a_bad_signature() -> TestResult {
        let transaction = ber::tlv(0x13, b"77");
        let extra = [(oid::TRANSACTION_ID, transaction.clone())];
        let options = SignOptions {
            extra_attributes: &extra,
            ..plain_options(DigestAlgorithm::Sha256, true)
        };
        let signer = signer(0)?;
        let mut message = sign(CONTENT, &signer, &options)?;
        let last = message.last_mut().ok_or("empty")?;
        *last ^= 0x01;
        assert!(matches!(verify(&message), Err(CmsError::BadSignature)));

        let unverified = read_unverified(&message)?;
        assert_eq!(
            unverified.signed_attribute(&oid::TRANSACTION_ID),
            Some(transaction.as_slice())
        );
        assert_eq!(unverified.digest, Some(DigestAlgorithm::Sha256));
        assert_eq!(
            unverified.signer_certificate.as_deref(),
            Some(signer.certificate)
        );
        assert_eq!(unverified.content.as_deref(), Some(CONTENT));
        let certs_only = certs_only(&[signer.certificate])?;
        assert!(matches!(
            read_unverified(&certs_only),
            Err(CmsError::SignerCount(0))
        ));
        Ok(())
    }

    #[test]
    fn swapped_certificate_is_detected() -> TestResult {
        let signer = signer(0)?;
        let message = sign(
            CONTENT,
            &signer,
            &plain_options(DigestAlgorithm::Sha256, true),
        )?;

        // Another certificate in its place: nothing matches the sid.
        let other = &shared(1)?.certificate;
        let swapped = replace(&message, signer.certificate, other)?;
        assert!(matches!(
            verify(&swapped),
            Err(CmsError::SignerCertificateMissing)
        ));

        // A certificate with the same issuer and serial number but another key.
        let impostor = identity("otad cms test 0", 1000)?;
        assert_eq!(impostor.certificate.len(), signer.certificate.len());
        let swapped = replace(&message, signer.certificate, &impostor.certificate)?;
        assert!(matches!(verify(&swapped), Err(CmsError::BadSignature)));
        Ok(())
    }

    /// `message` with the first occurrence of `from` replaced by `to`, of the same length.
    fn replace(
        message: &[u8],
        from: &[u8],
        to: &[u8],
    ) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        if from.len() != to.len() {
            return Err("replacement must keep the length".into());
        }
        let start = message
            .windows(from.len())
            .position(|window| window == from)
            .ok_or("not found")?;
        let mut out = message.to_vec();
        out.get_mut(start..start + from.len())
            .ok_or("range")?
            .copy_from_slice(to);
        Ok(out)
    }

    #[test]
    fn unsorted_signed_attributes_verify_as_sent() -> TestResult {
        let signer = signer(0)?;
        let options = plain_options(DigestAlgorithm::Sha256, true);
        let mut attributes = signed_attributes(CONTENT, &options)?;
        sort_der_set(&mut attributes);
        attributes.reverse();
        let message = build_signed_data(CONTENT, &signer, &options, Some(&attributes))?;
        let verified = verify(&message)?;

        let order: Vec<ObjectIdentifier> = verified
            .signer
            .signed_attributes
            .as_deref()
            .ok_or("no attributes")?
            .iter()
            .map(|attribute| attribute.oid)
            .collect();
        let mut sorted = attributes.clone();
        sort_der_set(&mut sorted);
        assert_ne!(sorted, attributes, "the attributes were really unsorted");
        // Sorted, they are contentType, signingTime, messageDigest (shortest first).
        assert_eq!(
            order,
            [oid::MESSAGE_DIGEST, oid::SIGNING_TIME, oid::CONTENT_TYPE]
        );
        Ok(())
    }

    #[test]
    fn wrong_or_missing_content_type_attribute_is_detected() -> TestResult {
        let signer = signer(0)?;
        let options = plain_options(DigestAlgorithm::Sha256, true);
        let digest = ber::tlv(tag::OCTET_STRING, &DigestAlgorithm::Sha256.digest(CONTENT));
        let wrong_type = vec![
            encode_attribute(
                &oid::CONTENT_TYPE,
                &ber::tlv(tag::OID, oid::ID_ENVELOPED_DATA.as_bytes()),
            ),
            encode_attribute(&oid::MESSAGE_DIGEST, &digest),
        ];
        let message = build_signed_data(CONTENT, &signer, &options, Some(&wrong_type))?;
        assert!(matches!(
            verify(&message),
            Err(CmsError::ContentTypeMismatch)
        ));

        let no_type = vec![encode_attribute(&oid::MESSAGE_DIGEST, &digest)];
        let message = build_signed_data(CONTENT, &signer, &options, Some(&no_type))?;
        assert!(matches!(
            verify(&message),
            Err(CmsError::MissingSignedAttribute("contentType"))
        ));

        let no_digest = vec![encode_attribute(
            &oid::CONTENT_TYPE,
            &ber::tlv(tag::OID, oid::ID_DATA.as_bytes()),
        )];
        let message = build_signed_data(CONTENT, &signer, &options, Some(&no_digest))?;
        assert!(matches!(
            verify(&message),
            Err(CmsError::MissingSignedAttribute("messageDigest"))
        ));
        Ok(())
    }

    #[test]
    fn other_content_types_get_version_3() -> TestResult {
        let custom = ObjectIdentifier::new_unwrap("1.2.3.4");
        let options = SignOptions {
            content_type: custom,
            ..plain_options(DigestAlgorithm::Sha256, true)
        };
        let message = sign(CONTENT, &signer(0)?, &options)?;
        let verified = verify(&message)?;
        assert_eq!(verified.content_type, custom);
        let signed_data = content_info(&message, oid::ID_SIGNED_DATA, CmsError::NotSignedData)?;
        assert_eq!(signed_data.content.get(..3), Some(&VERSION_3[..]));
        Ok(())
    }

    #[test]
    fn truncated_or_foreign_input_is_refused_without_panic() -> TestResult {
        let message = sign(
            CONTENT,
            &signer(0)?,
            &plain_options(DigestAlgorithm::Sha256, true),
        )?;
        for end in 0..message.len() {
            assert!(
                verify(message.get(..end).ok_or("range")?).is_err(),
                "cut at {end}"
            );
        }
        let enveloped = encode_content_info(&oid::ID_ENVELOPED_DATA, &[tag::SEQUENCE, 0]);
        assert!(matches!(verify(&enveloped), Err(CmsError::NotSignedData)));
        assert!(matches!(
            verify(&[0x30, 0x80]),
            Err(CmsError::Ber(ber::BerError::Truncated))
        ));
        Ok(())
    }

    #[test]
    fn certs_only_round_trip() -> TestResult {
        let first = &shared(0)?.certificate;
        let second = &shared(1)?.certificate;
        let message = certs_only(&[second, first])?;
        assert_eq!(
            parse_certs_only(&message)?,
            vec![second.clone(), first.clone()]
        );
        assert!(matches!(verify(&message), Err(CmsError::SignerCount(0))));

        let signed = sign(
            CONTENT,
            &signer(0)?,
            &plain_options(DigestAlgorithm::Sha256, false),
        )?;
        assert!(matches!(
            parse_certs_only(&signed),
            Err(CmsError::SignerCount(1))
        ));
        assert!(matches!(certs_only(&[]), Err(CmsError::NoCertificates)));
        Ok(())
    }

    #[test]
    fn too_many_certificates_are_refused() -> TestResult {
        let certificate = shared(0)?.certificate.as_slice();
        let many = vec![certificate; MAX_CERTIFICATES + 1];
        assert!(matches!(
            certs_only(&many),
            Err(CmsError::TooManyCertificates(17))
        ));

        // Build the over-full message by hand, as a hostile sender would.
        let signed_data = ber::tlv_of(
            tag::SEQUENCE,
            &[
                &VERSION_1,
                &[tag::SET, 0x00],
                &ber::tlv(tag::SEQUENCE, &ber::tlv(tag::OID, oid::ID_DATA.as_bytes())),
                &ber::tlv(tag::CONTEXT_0, &many.concat()),
                &[tag::SET, 0x00],
            ],
        );
        let message = encode_content_info(&oid::ID_SIGNED_DATA, &signed_data);
        assert!(matches!(
            parse_certs_only(&message),
            Err(CmsError::TooManyCertificates(17))
        ));
        assert!(matches!(
            verify(&message),
            Err(CmsError::TooManyCertificates(17))
        ));

        let extras = vec![certificate; MAX_CERTIFICATES];
        let options = SignOptions {
            certificates: &extras,
            ..plain_options(DigestAlgorithm::Sha256, false)
        };
        assert!(matches!(
            sign(CONTENT, &signer(0)?, &options),
            Err(CmsError::TooManyCertificates(17))
        ));

        // Exactly MAX_CERTIFICATES: written, read back and verified, in each form.
        let full = vec![certificate; MAX_CERTIFICATES];
        assert_eq!(
            parse_certs_only(&certs_only(&full)?)?.len(),
            MAX_CERTIFICATES
        );
        let signed_data = ber::tlv_of(
            tag::SEQUENCE,
            &[
                &VERSION_1,
                &[tag::SET, 0x00],
                &ber::tlv(tag::SEQUENCE, &ber::tlv(tag::OID, oid::ID_DATA.as_bytes())),
                &ber::tlv(tag::CONTEXT_0, &full.concat()),
                &[tag::SET, 0x00],
            ],
        );
        let message = encode_content_info(&oid::ID_SIGNED_DATA, &signed_data);
        assert_eq!(parse_certs_only(&message)?.len(), MAX_CERTIFICATES);
        let extras = vec![certificate; MAX_CERTIFICATES - 1];
        let options = SignOptions {
            certificates: &extras,
            ..plain_options(DigestAlgorithm::Sha256, false)
        };
        let signed = sign(CONTENT, &signer(0)?, &options)?;
        assert_eq!(verify(&signed)?.certificates.len(), MAX_CERTIFICATES);
        Ok(())
    }

    #[test]
    fn der_set_order_follows_x690() {
        assert_eq!(der_set_order(&[0x01, 0x02], &[0x01, 0x03]), Ordering::Less);
        assert_eq!(der_set_order(&[0x02], &[0x01, 0xff]), Ordering::Greater);
        // The shorter is padded with zeros; a tie falls back to the length.
        assert_eq!(der_set_order(&[0x01], &[0x01, 0x00]), Ordering::Less);
        assert_eq!(der_set_order(&[0x01], &[0x01, 0x01]), Ordering::Less);
        let mut set = vec![vec![0x31, 0x02], vec![0x30, 0x05], vec![0x30, 0x01, 0x00]];
        sort_der_set(&mut set);
        assert_eq!(
            set,
            vec![vec![0x30, 0x01, 0x00], vec![0x30, 0x05], vec![0x31, 0x02]]
        );
    }

    #[test]
    fn signature_algorithm_must_match_the_digest() {
        assert!(check_signature_algorithm(&oid::RSA_ENCRYPTION, DigestAlgorithm::Sha1).is_ok());
        assert!(check_signature_algorithm(
            &oid::SHA256_WITH_RSA_ENCRYPTION,
            DigestAlgorithm::Sha256
        )
        .is_ok());
        assert!(matches!(
            check_signature_algorithm(&oid::SHA1_WITH_RSA_ENCRYPTION, DigestAlgorithm::Sha256),
            Err(CmsError::UnsupportedSignatureAlgorithm(_))
        ));
        assert!(matches!(
            check_signature_algorithm(&oid::SHA256, DigestAlgorithm::Sha256),
            Err(CmsError::UnsupportedSignatureAlgorithm(_))
        ));
    }

    #[test]
    fn openssl_verifies_what_sign_makes() -> TestResult {
        if !have_openssl()? {
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let signer = signer(0)?;
        for with_attributes in [false, true] {
            let message = sign(
                CONTENT,
                &signer,
                &plain_options(DigestAlgorithm::Sha256, with_attributes),
            )?;
            std::fs::write(dir.path().join("signed.der"), &message)?;
            openssl(
                dir.path(),
                &[
                    "cms",
                    "-verify",
                    "-noverify",
                    "-binary",
                    "-inform",
                    "DER",
                    "-in",
                    "signed.der",
                    "-out",
                    "content.out",
                ],
            )?;
            assert_eq!(std::fs::read(dir.path().join("content.out"))?, CONTENT);
        }
        Ok(())
    }

    #[test]
    fn verify_accepts_openssl_streamed_ber() -> TestResult {
        if !have_openssl()? {
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let identity = shared(0)?;
        std::fs::write(dir.path().join("cert.pem"), &identity.certificate_pem)?;
        std::fs::write(dir.path().join("key.pem"), &identity.key_pem)?;
        // Large enough that OpenSSL streams the eContent in several chunks.
        let content = CONTENT.repeat(150);
        std::fs::write(dir.path().join("content.xml"), &content)?;

        let cases: [(&[&str], DigestAlgorithm, bool); 5] = [
            (&["-md", "sha256"], DigestAlgorithm::Sha256, true),
            (&["-md", "sha1"], DigestAlgorithm::Sha1, true),
            (&["-md", "sha1", "-noattr"], DigestAlgorithm::Sha1, false),
            (&["-md", "sha512", "-keyid"], DigestAlgorithm::Sha512, true),
            (
                &["-md", "sha256", "-noattr", "-keyid"],
                DigestAlgorithm::Sha256,
                false,
            ),
        ];
        for (extra, digest, with_attributes) in cases {
            let mut args = vec![
                "cms",
                "-sign",
                "-stream",
                "-nodetach",
                "-binary",
                "-outform",
                "DER",
                "-signer",
                "cert.pem",
                "-inkey",
                "key.pem",
                "-in",
                "content.xml",
                "-out",
                "signed.ber",
            ];
            args.extend_from_slice(extra);
            openssl(dir.path(), &args)?;
            let message = std::fs::read(dir.path().join("signed.ber"))?;
            assert_ne!(
                ber::normalize(&message)?,
                message,
                "openssl streamed BER ({extra:?})"
            );

            let verified = verify(&message)?;
            assert_eq!(
                verified.content.as_deref(),
                Some(content.as_slice()),
                "{extra:?}"
            );
            assert_eq!(verified.signer.digest, digest, "{extra:?}");
            assert_eq!(
                verified.signer.certificate, identity.certificate,
                "{extra:?}"
            );
            assert_eq!(
                verified.signer.signed_attributes.is_some(),
                with_attributes,
                "{extra:?}"
            );
        }
        Ok(())
    }
}
