//! Cryptographic Message Syntax (RFC 5652) as Apple devices and SCEP clients speak it.
//!
//! Devices and SCEP clients send BER, which [`ber`] normalises to DER before anything else
//! looks at it. [`signed`] verifies and makes SignedData (RFC 5652 §5), [`enveloped`] decrypts
//! and makes EnvelopedData (RFC 5652 §6), and [`oid`] names the identifiers involved. Every
//! private-key operation goes through aws-lc-rs. The parsers here walk the DER themselves and
//! keep borrowed slices of it, so that certificates and signed attributes are checked and
//! returned in exactly the bytes that were signed.

use std::fmt;

use const_oid::ObjectIdentifier;

pub mod ber;
pub mod enveloped;
pub mod oid;
pub(crate) mod rsa_public;
pub mod signed;

pub use enveloped::{decrypt, encrypt, Decrypted};
pub use signed::{
    certs_only, parse_certs_only, read_unverified, sign, verify, SignOptions, SignedAttribute,
    SignedMessage, Signer, SignerIdentity, UnverifiedMessage,
};

use ber::Tlv;

/// At most this many certificates in one SignedData.
pub const MAX_CERTIFICATES: usize = 16;

/// DER identifier octets this layer reads and writes.
pub(crate) mod tag {
    /// BOOLEAN.
    pub(crate) const BOOLEAN: u8 = 0x01;
    /// INTEGER.
    pub(crate) const INTEGER: u8 = 0x02;
    /// BIT STRING.
    pub(crate) const BIT_STRING: u8 = 0x03;
    /// OCTET STRING.
    pub(crate) const OCTET_STRING: u8 = 0x04;
    /// NULL.
    pub(crate) const NULL: u8 = 0x05;
    /// OBJECT IDENTIFIER.
    pub(crate) const OID: u8 = 0x06;
    /// SEQUENCE and SEQUENCE OF.
    pub(crate) const SEQUENCE: u8 = 0x30;
    /// SET and SET OF.
    pub(crate) const SET: u8 = 0x31;
    /// Constructed `[0]`.
    pub(crate) const CONTEXT_0: u8 = 0xa0;
    /// Constructed `[1]`.
    pub(crate) const CONTEXT_1: u8 = 0xa1;
    /// Constructed `[3]`.
    pub(crate) const CONTEXT_3: u8 = 0xa3;
    /// Primitive `[0]`.
    pub(crate) const CONTEXT_0_PRIMITIVE: u8 = 0x80;
}

/// Digest algorithms otad accepts and produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    /// SHA-1 (RFC 3370 §2.1): what Apple devices use; verification only.
    Sha1,
    /// SHA-256 (RFC 5754 §2.2).
    Sha256,
    /// SHA-512 (RFC 5754 §2.4).
    Sha512,
}

impl DigestAlgorithm {
    /// The hash algorithm's own identifier (`id-sha1`, `id-sha256`, `id-sha512`).
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            Self::Sha1 => oid::SHA1,
            Self::Sha256 => oid::SHA256,
            Self::Sha512 => oid::SHA512,
        }
    }

    /// The algorithm a digestAlgorithm identifier names: the hash OIDs, and also the
    /// `sha*WithRSAEncryption` OIDs that some clients put there instead.
    pub fn from_oid(oid: &ObjectIdentifier) -> Option<Self> {
        match *oid {
            oid::SHA1 | oid::SHA1_WITH_RSA_ENCRYPTION => Some(Self::Sha1),
            oid::SHA256 | oid::SHA256_WITH_RSA_ENCRYPTION => Some(Self::Sha256),
            oid::SHA512 | oid::SHA512_WITH_RSA_ENCRYPTION => Some(Self::Sha512),
            _ => None,
        }
    }

    /// The digest of `data`, computed by aws-lc-rs.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        aws_lc_rs::digest::digest(self.aws_lc(), data)
            .as_ref()
            .to_vec()
    }

    /// The aws-lc-rs digest algorithm.
    fn aws_lc(self) -> &'static aws_lc_rs::digest::Algorithm {
        match self {
            Self::Sha1 => &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => &aws_lc_rs::digest::SHA256,
            Self::Sha512 => &aws_lc_rs::digest::SHA512,
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sha1 => "sha-1",
            Self::Sha256 => "sha-256",
            Self::Sha512 => "sha-512",
        })
    }
}

/// Content-encryption ciphers (CBC, PKCS#7 padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentCipher {
    /// Single DES in CBC mode (RFC 3370 §5.1 names it only to retire it). 56-bit keys: read
    /// and answered only because micromdm/scep's `scepclient` 2.1 still sends it; never
    /// chosen by otad on its own.
    DesCbc,
    /// Three-key triple DES in CBC mode (RFC 3370 §5.1); legacy SCEP clients.
    Des3Cbc,
    /// AES-128 in CBC mode (RFC 3565 §2.3).
    Aes128Cbc,
    /// AES-192 in CBC mode (RFC 3565 §2.3).
    Aes192Cbc,
    /// AES-256 in CBC mode (RFC 3565 §2.3).
    Aes256Cbc,
}

impl ContentCipher {
    /// The contentEncryptionAlgorithm identifier.
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            Self::DesCbc => oid::DES_CBC,
            Self::Des3Cbc => oid::DES_EDE3_CBC,
            Self::Aes128Cbc => oid::AES128_CBC,
            Self::Aes192Cbc => oid::AES192_CBC,
            Self::Aes256Cbc => oid::AES256_CBC,
        }
    }

    /// The cipher a contentEncryptionAlgorithm identifier names.
    pub fn from_oid(oid: &ObjectIdentifier) -> Option<Self> {
        match *oid {
            oid::DES_CBC => Some(Self::DesCbc),
            oid::DES_EDE3_CBC => Some(Self::Des3Cbc),
            oid::AES128_CBC => Some(Self::Aes128Cbc),
            oid::AES192_CBC => Some(Self::Aes192Cbc),
            oid::AES256_CBC => Some(Self::Aes256Cbc),
            _ => None,
        }
    }

    /// Length of the content-encryption key, in octets.
    pub fn key_len(self) -> usize {
        match self {
            Self::DesCbc => 8,
            Self::Des3Cbc => 24,
            Self::Aes128Cbc => 16,
            Self::Aes192Cbc => 24,
            Self::Aes256Cbc => 32,
        }
    }

    /// Length of the IV (one block), in octets.
    pub fn iv_len(self) -> usize {
        match self {
            Self::DesCbc | Self::Des3Cbc => 8,
            Self::Aes128Cbc | Self::Aes192Cbc | Self::Aes256Cbc => 16,
        }
    }

    /// The aws-lc-rs cipher.
    #[allow(deprecated)] // triple DES is deprecated in aws-lc-rs; SCEP clients still send it
    pub(crate) fn aws_lc(self) -> &'static aws_lc_rs::cipher::Algorithm {
        match self {
            Self::DesCbc => &aws_lc_rs::cipher::DES_FOR_LEGACY_USE_ONLY,
            Self::Des3Cbc => &aws_lc_rs::cipher::DES_EDE3_FOR_LEGACY_USE_ONLY,
            Self::Aes128Cbc => &aws_lc_rs::cipher::AES_128,
            Self::Aes192Cbc => &aws_lc_rs::cipher::AES_192,
            Self::Aes256Cbc => &aws_lc_rs::cipher::AES_256,
        }
    }
}

impl fmt::Display for ContentCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::DesCbc => "des-cbc",
            Self::Des3Cbc => "des-ede3-cbc",
            Self::Aes128Cbc => "aes-128-cbc",
            Self::Aes192Cbc => "aes-192-cbc",
            Self::Aes256Cbc => "aes-256-cbc",
        })
    }
}

/// Why a CMS message could not be read, verified, decrypted or made.
#[non_exhaustive]
#[derive(Debug)]
pub enum CmsError {
    /// The input is not well-formed BER.
    Ber(ber::BerError),
    /// The DER does not have the structure RFC 5652 gives it; the text says where.
    Malformed(String),
    /// The ContentInfo holds something other than a SignedData.
    NotSignedData,
    /// The ContentInfo holds something other than an EnvelopedData.
    NotEnvelopedData,
    /// The SignedData has this many SignerInfos where one (or, certs-only, none) is needed.
    SignerCount(usize),
    /// No certificate in the SignedData matches the SignerInfo's sid.
    SignerCertificateMissing,
    /// More than [`MAX_CERTIFICATES`] certificates.
    TooManyCertificates(usize),
    /// More signed attributes than [`signed::MAX_SIGNED_ATTRIBUTES`].
    TooManyAttributes(usize),
    /// More recipients than [`enveloped::MAX_RECIPIENTS`].
    TooManyRecipients(usize),
    /// A digest algorithm (by OID) this layer does not accept or cannot produce.
    UnsupportedDigest(String),
    /// A signature algorithm (by OID) this layer does not accept.
    UnsupportedSignatureAlgorithm(String),
    /// A content-encryption algorithm (by OID) this layer does not accept.
    UnsupportedCipher(String),
    /// A key this layer cannot use (not RSA, or of an unsupported size).
    UnsupportedKey(String),
    /// A key-transport algorithm (by OID) other than rsaEncryption.
    UnsupportedKeyTransport(String),
    /// The signature does not verify under the signer certificate's key.
    BadSignature,
    /// The messageDigest signed attribute is not the digest of the content.
    MessageDigestMismatch,
    /// The contentType signed attribute is not the eContentType.
    ContentTypeMismatch,
    /// A signed attribute RFC 5652 §5.3 requires (named) is absent.
    MissingSignedAttribute(&'static str),
    /// There is no content (detached signature, or no encryptedContent).
    NoContent,
    /// No certificates where some are needed.
    NoCertificates,
    /// No KeyTransRecipientInfo for the given certificate.
    NoRecipient,
    /// Decryption failed. Deliberately one opaque variant for every cause.
    Decrypt,
    /// Encryption failed; the text says why.
    Encrypt(String),
    /// Signing failed; the text says why.
    Sign(String),
}

impl fmt::Display for CmsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Both texts already start with their subject.
            Self::Ber(err) => write!(f, "{err}"),
            Self::Malformed(what) => f.write_str(what),
            Self::NotSignedData => f.write_str("content info: does not hold a signed data"),
            Self::NotEnvelopedData => f.write_str("content info: does not hold an enveloped data"),
            Self::SignerCount(count) => write!(f, "signed data: has {count} signer infos"),
            Self::SignerCertificateMissing => {
                f.write_str("signer certificate: not found in SignedData")
            }
            Self::TooManyCertificates(count) => write!(
                f,
                "signed data: {count} certificates, more than the {MAX_CERTIFICATES} allowed"
            ),
            Self::TooManyAttributes(count) => write!(
                f,
                "signed attributes: {count}, more than the {} allowed",
                signed::MAX_SIGNED_ATTRIBUTES
            ),
            Self::TooManyRecipients(count) => write!(
                f,
                "enveloped data: {count} recipient infos, more than the {} allowed",
                enveloped::MAX_RECIPIENTS
            ),
            Self::UnsupportedDigest(oid) => write!(f, "digest algorithm: {oid} is not supported"),
            Self::UnsupportedSignatureAlgorithm(oid) => {
                write!(f, "signature algorithm: {oid} is not supported")
            }
            Self::UnsupportedCipher(oid) => {
                write!(f, "content encryption algorithm: {oid} is not supported")
            }
            Self::UnsupportedKey(what) => write!(f, "key: {what} is not supported"),
            Self::UnsupportedKeyTransport(oid) => {
                write!(f, "key transport algorithm: {oid} is not supported")
            }
            Self::BadSignature => f.write_str("signature: does not verify"),
            Self::MessageDigestMismatch => {
                f.write_str("message digest attribute: does not match the content")
            }
            Self::ContentTypeMismatch => {
                f.write_str("content type attribute: does not match the eContentType")
            }
            Self::MissingSignedAttribute(name) => write!(f, "signed attributes: no {name}"),
            Self::NoContent => f.write_str("content: absent"),
            Self::NoCertificates => f.write_str("certificates: none given"),
            Self::NoRecipient => f.write_str("recipient info: none for this certificate"),
            Self::Decrypt => f.write_str("enveloped data: decryption failed"),
            Self::Encrypt(why) => write!(f, "enveloped data: encryption failed: {why}"),
            Self::Sign(why) => write!(f, "signed data: signing failed: {why}"),
        }
    }
}

impl std::error::Error for CmsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Ber(err) => Some(err),
            _ => None,
        }
    }
}

impl From<ber::BerError> for CmsError {
    fn from(err: ber::BerError) -> Self {
        Self::Ber(err)
    }
}

/// Reads the DER elements inside one constructed element, in order, turning every surprise
/// into a [`CmsError::Malformed`] that names the structure being read.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `content`, the content octets of a `what` (for error messages).
    pub(crate) fn new(content: &'a [u8], what: &'static str) -> Self {
        Self {
            rest: content,
            what,
        }
    }

    /// Whether all elements have been read.
    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next element, whatever it is.
    pub(crate) fn any(&mut self, field: &str) -> Result<Tlv<'a>, CmsError> {
        let (element, rest) = ber::split_der(self.rest)
            .map_err(|err| CmsError::Malformed(format!("{}: {field}: {err}", self.what)))?;
        self.rest = rest;
        Ok(element)
    }

    /// The next element, which must have the one-octet identifier `tag`.
    pub(crate) fn take(&mut self, tag: u8, field: &str) -> Result<Tlv<'a>, CmsError> {
        if self.rest.is_empty() {
            return Err(malformed(self.what, &format!("{field} is missing")));
        }
        let element = self.any(field)?;
        if !element.is(tag) {
            return Err(malformed(self.what, &format!("{field} has the wrong type")));
        }
        Ok(element)
    }

    /// The next element if it has the one-octet identifier `tag`.
    pub(crate) fn optional(&mut self, tag: u8, field: &str) -> Result<Option<Tlv<'a>>, CmsError> {
        if self.rest.first() == Some(&tag) {
            self.any(field).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Checks that nothing follows the elements read.
    pub(crate) fn finish(self) -> Result<(), CmsError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(malformed(self.what, "unexpected fields at the end"))
        }
    }
}

/// A [`CmsError::Malformed`] saying what is wrong where.
pub(crate) fn malformed(what: &str, problem: &str) -> CmsError {
    CmsError::Malformed(format!("{what}: {problem}"))
}

/// Parses `input` as exactly one DER element with the identifier `tag`.
pub(crate) fn single<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<Tlv<'a>, CmsError> {
    let mut reader = Reader::new(input, what);
    let element = reader.take(tag, "outer element")?;
    reader.finish()?;
    Ok(element)
}

/// The value of a DER OBJECT IDENTIFIER element.
pub(crate) fn object_identifier(
    element: &Tlv<'_>,
    what: &'static str,
) -> Result<ObjectIdentifier, CmsError> {
    if !element.is(tag::OID) {
        return Err(malformed(what, "expected an object identifier"));
    }
    ObjectIdentifier::from_bytes(element.content)
        .map_err(|err| malformed(what, &format!("bad object identifier: {err}")))
}

/// An AlgorithmIdentifier (RFC 5280 §4.1.1.2): the algorithm and its parameters, if any.
pub(crate) fn algorithm_identifier<'a>(
    element: &Tlv<'a>,
    what: &'static str,
) -> Result<(ObjectIdentifier, Option<Tlv<'a>>), CmsError> {
    if !element.is(tag::SEQUENCE) {
        return Err(malformed(what, "algorithm identifier is not a SEQUENCE"));
    }
    let mut reader = Reader::new(element.content, what);
    let algorithm = object_identifier(&reader.any("algorithm")?, what)?;
    let parameters = if reader.is_empty() {
        None
    } else {
        Some(reader.any("parameters")?)
    };
    reader.finish()?;
    Ok((algorithm, parameters))
}

/// DER of an AlgorithmIdentifier with absent parameters (RFC 5754 §2 for the SHA-2 hashes).
pub(crate) fn encode_algorithm(algorithm: &ObjectIdentifier) -> Vec<u8> {
    ber::tlv(tag::SEQUENCE, &ber::tlv(tag::OID, algorithm.as_bytes()))
}

/// DER of an AlgorithmIdentifier with NULL parameters (RFC 3370 §3.2 for rsaEncryption).
pub(crate) fn encode_algorithm_null(algorithm: &ObjectIdentifier) -> Vec<u8> {
    ber::tlv_of(
        tag::SEQUENCE,
        &[
            &ber::tlv(tag::OID, algorithm.as_bytes()),
            &[tag::NULL, 0x00],
        ],
    )
}

/// The `content` of a ContentInfo (RFC 5652 §3) whose contentType is `expected`, or `wrong`.
pub(crate) fn content_info<'a>(
    der: &'a [u8],
    expected: ObjectIdentifier,
    wrong: CmsError,
) -> Result<Tlv<'a>, CmsError> {
    let outer = single(der, tag::SEQUENCE, "content info")?;
    let mut reader = Reader::new(outer.content, "content info");
    let content_type = object_identifier(&reader.take(tag::OID, "contentType")?, "content info")?;
    if content_type != expected {
        return Err(wrong);
    }
    let explicit = reader.take(tag::CONTEXT_0, "content")?;
    reader.finish()?;

    let mut inner = Reader::new(explicit.content, "content info");
    let content = inner.any("content")?;
    inner.finish()?;
    Ok(content)
}

/// DER of a ContentInfo (RFC 5652 §3) of `content_type` around the DER `content`.
pub(crate) fn encode_content_info(content_type: &ObjectIdentifier, content: &[u8]) -> Vec<u8> {
    ber::tlv_of(
        tag::SEQUENCE,
        &[
            &ber::tlv(tag::OID, content_type.as_bytes()),
            &ber::tlv(tag::CONTEXT_0, content),
        ],
    )
}

/// The parts of an X.509 certificate (RFC 5280 §4.1) that CMS needs, borrowed from its DER.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CertificateParts<'a> {
    /// The issuer Name, as a whole DER element.
    pub(crate) issuer: Tlv<'a>,
    /// The serialNumber INTEGER, as a whole DER element.
    pub(crate) serial_number: Tlv<'a>,
    /// The SubjectPublicKeyInfo, as a whole DER element.
    pub(crate) subject_public_key_info: Tlv<'a>,
    /// The keyIdentifier octets of the subjectKeyIdentifier extension, if present.
    pub(crate) subject_key_identifier: Option<&'a [u8]>,
}

impl CertificateParts<'_> {
    /// Whether an IssuerAndSerialNumber (RFC 5652 §10.2.4), given as the content octets of its
    /// SEQUENCE, names this certificate.
    pub(crate) fn matches_issuer_and_serial(&self, content: &[u8]) -> bool {
        let expected = [self.issuer.raw, self.serial_number.raw].concat();
        content == expected.as_slice()
    }

    /// Whether a SubjectKeyIdentifier names this certificate.
    pub(crate) fn matches_key_identifier(&self, key_identifier: &[u8]) -> bool {
        self.subject_key_identifier == Some(key_identifier)
    }

    /// DER of this certificate's IssuerAndSerialNumber (RFC 5652 §10.2.4).
    pub(crate) fn issuer_and_serial_number(&self) -> Vec<u8> {
        ber::tlv_of(tag::SEQUENCE, &[self.issuer.raw, self.serial_number.raw])
    }
}

/// How a SignerInfo's sid (RFC 5652 §5.3) or a KeyTransRecipientInfo's rid (§6.2.1) names a
/// certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertificateId<'a> {
    /// The content octets of an IssuerAndSerialNumber SEQUENCE.
    IssuerAndSerialNumber(&'a [u8]),
    /// The octets of a `[0] IMPLICIT SubjectKeyIdentifier`.
    SubjectKeyIdentifier(&'a [u8]),
}

impl<'a> CertificateId<'a> {
    /// Reads the identifier from its DER element.
    pub(crate) fn parse(element: &Tlv<'a>, what: &'static str) -> Result<Self, CmsError> {
        if element.is(tag::SEQUENCE) {
            let mut reader = Reader::new(element.content, what);
            reader.take(tag::SEQUENCE, "issuer")?;
            reader.take(tag::INTEGER, "serialNumber")?;
            reader.finish()?;
            Ok(Self::IssuerAndSerialNumber(element.content))
        } else if element.is(tag::CONTEXT_0_PRIMITIVE) {
            Ok(Self::SubjectKeyIdentifier(element.content))
        } else {
            Err(malformed(what, "certificate identifier is neither form"))
        }
    }

    /// Whether this identifier names the certificate with `parts`.
    pub(crate) fn matches(&self, parts: &CertificateParts<'_>) -> bool {
        match self {
            Self::IssuerAndSerialNumber(content) => parts.matches_issuer_and_serial(content),
            Self::SubjectKeyIdentifier(key_identifier) => {
                parts.matches_key_identifier(key_identifier)
            }
        }
    }
}

/// Finds the parts of the DER certificate `der` that CMS needs.
pub(crate) fn certificate_parts(der: &[u8]) -> Result<CertificateParts<'_>, CmsError> {
    const WHAT: &str = "certificate";
    let certificate = single(der, tag::SEQUENCE, WHAT)?;
    let mut outer = Reader::new(certificate.content, WHAT);
    let tbs = outer.take(tag::SEQUENCE, "tbsCertificate")?;
    outer.take(tag::SEQUENCE, "signatureAlgorithm")?;
    outer.take(tag::BIT_STRING, "signatureValue")?;
    outer.finish()?;

    let mut fields = Reader::new(tbs.content, WHAT);
    fields.optional(tag::CONTEXT_0, "version")?;
    let serial_number = fields.take(tag::INTEGER, "serialNumber")?;
    fields.take(tag::SEQUENCE, "signature")?;
    let issuer = fields.take(tag::SEQUENCE, "issuer")?;
    fields.take(tag::SEQUENCE, "validity")?;
    fields.take(tag::SEQUENCE, "subject")?;
    let subject_public_key_info = fields.take(tag::SEQUENCE, "subjectPublicKeyInfo")?;

    // issuerUniqueID [1] and subjectUniqueID [2] may come before the extensions [3].
    let mut subject_key_identifier = None;
    while !fields.is_empty() {
        let field = fields.any("optional field")?;
        if field.is(tag::CONTEXT_3) {
            subject_key_identifier = find_subject_key_identifier(field.content)?;
        }
    }

    Ok(CertificateParts {
        issuer,
        serial_number,
        subject_public_key_info,
        subject_key_identifier,
    })
}

/// The keyIdentifier in the extensions (the content of `[3]`), if there is one.
fn find_subject_key_identifier(explicit: &[u8]) -> Result<Option<&[u8]>, CmsError> {
    const WHAT: &str = "certificate extensions";
    let extensions = single(explicit, tag::SEQUENCE, WHAT)?;
    let mut reader = Reader::new(extensions.content, WHAT);
    while !reader.is_empty() {
        let extension = reader.take(tag::SEQUENCE, "extension")?;
        let mut fields = Reader::new(extension.content, WHAT);
        let id = object_identifier(&fields.take(tag::OID, "extnID")?, WHAT)?;
        fields.optional(tag::BOOLEAN, "critical")?;
        let value = fields.take(tag::OCTET_STRING, "extnValue")?;
        fields.finish()?;
        if id == oid::SUBJECT_KEY_IDENTIFIER {
            let key_identifier = single(value.content, tag::OCTET_STRING, WHAT)?;
            return Ok(Some(key_identifier.content));
        }
    }
    Ok(None)
}

/// Smallest RSA modulus accepted, in bits (Apple device certificates are RSA-1024).
pub(crate) const MIN_RSA_BITS: usize = 1024;
/// Largest RSA modulus accepted, in bits.
pub(crate) const MAX_RSA_BITS: usize = 8192;

/// The RSAPublicKey (RFC 8017 §A.1.1) DER inside a SubjectPublicKeyInfo, and its modulus size
/// in bits; refuses keys that are not rsaEncryption or whose size is outside
/// [`MIN_RSA_BITS`]..=[`MAX_RSA_BITS`].
pub(crate) fn rsa_public_key<'a>(spki: &Tlv<'a>) -> Result<(&'a [u8], usize), CmsError> {
    const WHAT: &str = "subject public key info";
    let mut reader = Reader::new(spki.content, WHAT);
    let (algorithm, _) = algorithm_identifier(&reader.take(tag::SEQUENCE, "algorithm")?, WHAT)?;
    let key = reader.take(tag::BIT_STRING, "subjectPublicKey")?;
    reader.finish()?;
    if algorithm != oid::RSA_ENCRYPTION {
        return Err(CmsError::UnsupportedKey(format!(
            "public key algorithm {algorithm}"
        )));
    }

    let rsa_public_key = match key.content.split_first() {
        Some((0, rest)) => rest,
        _ => return Err(malformed(WHAT, "subjectPublicKey has unused bits")),
    };
    let sequence = single(rsa_public_key, tag::SEQUENCE, "rsa public key")?;
    let mut fields = Reader::new(sequence.content, "rsa public key");
    let modulus = fields.take(tag::INTEGER, "modulus")?;
    fields.take(tag::INTEGER, "publicExponent")?;
    fields.finish()?;

    let bits = integer_bits(modulus.content);
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(CmsError::UnsupportedKey(format!("rsa key of {bits} bits")));
    }
    Ok((rsa_public_key, bits))
}

/// Bit length of a non-negative DER INTEGER's content octets.
fn integer_bits(content: &[u8]) -> usize {
    let significant: Vec<u8> = content
        .iter()
        .copied()
        .skip_while(|octet| *octet == 0)
        .collect();
    match significant.first() {
        Some(first) => significant.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_oids_round_trip_and_accept_signature_oids() {
        for digest in [
            DigestAlgorithm::Sha1,
            DigestAlgorithm::Sha256,
            DigestAlgorithm::Sha512,
        ] {
            assert_eq!(DigestAlgorithm::from_oid(&digest.oid()), Some(digest));
        }
        assert_eq!(
            DigestAlgorithm::from_oid(&oid::SHA256_WITH_RSA_ENCRYPTION),
            Some(DigestAlgorithm::Sha256)
        );
        assert_eq!(DigestAlgorithm::from_oid(&oid::RSA_ENCRYPTION), None);
    }

    #[test]
    fn digests_are_the_known_values() {
        // FIPS 180-2 test vector "abc".
        let sha1 = DigestAlgorithm::Sha1.digest(b"abc");
        assert_eq!(
            sha1,
            [
                0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a, 0xba, 0x3e, 0x25, 0x71, 0x78, 0x50,
                0xc2, 0x6c, 0x9c, 0xd0, 0xd8, 0x9d
            ]
        );
        assert_eq!(DigestAlgorithm::Sha256.digest(b"abc").len(), 32);
        assert_eq!(
            DigestAlgorithm::Sha256.digest(b"abc").get(..4),
            Some(&[0xba, 0x78, 0x16, 0xbf][..])
        );
        assert_eq!(DigestAlgorithm::Sha512.digest(b"abc").len(), 64);
    }

    #[test]
    fn cipher_oids_round_trip() {
        for cipher in [
            ContentCipher::DesCbc,
            ContentCipher::Des3Cbc,
            ContentCipher::Aes128Cbc,
            ContentCipher::Aes192Cbc,
            ContentCipher::Aes256Cbc,
        ] {
            assert_eq!(ContentCipher::from_oid(&cipher.oid()), Some(cipher));
            let key = vec![0x11; cipher.key_len()];
            assert!(aws_lc_rs::cipher::UnboundCipherKey::new(cipher.aws_lc(), &key).is_ok());
            assert_eq!(cipher.aws_lc().block_len(), cipher.iv_len());
        }
        assert_eq!(ContentCipher::from_oid(&oid::SHA1), None);
    }

    #[test]
    fn integer_bits_counts_significant_bits() {
        assert_eq!(integer_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(integer_bits(&[0x01, 0xff]), 9);
        assert_eq!(integer_bits(&[0x00]), 0);
    }

    #[test]
    fn reader_reports_missing_and_wrong_fields() {
        let mut reader = Reader::new(&[0x02, 0x01, 0x01], "test");
        assert!(matches!(
            reader.take(tag::SEQUENCE, "field"),
            Err(CmsError::Malformed(text)) if text == "test: field has the wrong type"
        ));
        let mut reader = Reader::new(&[], "test");
        assert!(matches!(
            reader.take(tag::SEQUENCE, "field"),
            Err(CmsError::Malformed(text)) if text == "test: field is missing"
        ));
        let reader = Reader::new(&[0x05, 0x00], "test");
        assert!(reader.finish().is_err());
    }
}

/// Key pairs, certificates and the OpenSSL command line, for the unit tests of this layer.
#[cfg(test)]
pub(crate) mod test_support {
    use std::error::Error;
    use std::path::Path;
    use std::process::Command;
    use std::sync::OnceLock;

    use aws_lc_rs::rsa::PrivateDecryptingKey;
    use aws_lc_rs::signature::RsaKeyPair;

    /// What a test returns.
    pub(crate) type TestResult = Result<(), Box<dyn Error>>;

    /// Where the OpenSSL command line is expected.
    pub(crate) const OPENSSL: &str = "/usr/bin/openssl";

    /// A self-signed RSA-2048 certificate and its key in every form the tests need.
    pub(crate) struct Identity {
        pub(crate) certificate: Vec<u8>,
        pub(crate) certificate_pem: String,
        pub(crate) key_pem: String,
        pub(crate) signing: RsaKeyPair,
        pub(crate) decrypting: PrivateDecryptingKey,
    }

    /// A new identity with subject CN `common_name` and serial number `serial`, whose
    /// certificate carries a subjectKeyIdentifier.
    pub(crate) fn identity(common_name: &str, serial: u64) -> Result<Identity, Box<dyn Error>> {
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        // ExplicitNoCa makes rcgen write extensions, the subjectKeyIdentifier among them.
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        let certificate = params.self_signed(&key)?;

        let pkcs8 = key.serialize_der();
        Ok(Identity {
            certificate: certificate.der().to_vec(),
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
            signing: RsaKeyPair::from_pkcs8(&pkcs8)?,
            decrypting: PrivateDecryptingKey::from_pkcs8(&pkcs8)?,
        })
    }

    /// Identities made once and shared by the tests (RSA key generation is slow).
    pub(crate) fn shared(index: usize) -> Result<&'static Identity, Box<dyn Error>> {
        static IDENTITIES: OnceLock<Result<Vec<Identity>, String>> = OnceLock::new();
        let identities = IDENTITIES.get_or_init(|| {
            (0..3u64)
                .map(|n| identity(&format!("otad cms test {n}"), 1000 + n))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| err.to_string())
        });
        match identities {
            Ok(list) => list
                .get(index)
                .ok_or_else(|| "no such test identity".into()),
            Err(err) => Err(err.clone().into()),
        }
    }

    /// Whether the OpenSSL command line is there; outside CI its absence skips a test.
    pub(crate) fn have_openssl() -> Result<bool, Box<dyn Error>> {
        if Path::new(OPENSSL).exists() {
            return Ok(true);
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            return Err(format!("{OPENSSL} is missing under CI=true").into());
        }
        eprintln!("SKIP: {OPENSSL} is absent");
        Ok(false)
    }

    /// Runs `openssl` with `args` in `dir`, failing with its stderr if it fails.
    pub(crate) fn openssl(dir: &Path, args: &[&str]) -> Result<(), Box<dyn Error>> {
        let output = Command::new(OPENSSL).current_dir(dir).args(args).output()?;
        if !output.status.success() {
            return Err(format!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        Ok(())
    }
}
