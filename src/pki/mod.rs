//! Keys, certificates and trust: our CA, Apple's pinned anchors, chain checks.
//!
//! Every private-key operation (RSA signing, RSA decryption, key generation) happens in
//! aws-lc-rs; certificates are built with rcgen and read with x509-parser; PKCS#10 requests
//! are read with `der`/`x509-cert`. Nothing here knows about SCEP or OTA: those layers
//! call in with DER bytes and get values or a [`PkiError`] back.

pub mod apple;
pub mod ca;
pub mod cert;
pub mod crl;
pub mod csr;
pub mod keyfile;
pub mod keys;

use std::fmt;

/// Everything that can go wrong in the PKI layer; each variant names one condition.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PkiError {
    /// An RSA key size other than the ones we generate or accept was asked for.
    UnsupportedKeySize(usize),
    /// aws-lc-rs could not generate a key.
    KeyGenerationFailed,
    /// aws-lc-rs refused a private key (malformed, wrong type, too small or too large).
    PrivateKeyRejected(String),
    /// A private key's DER is larger than [`keys::MAX_PRIVATE_KEY_DER_BYTES`].
    PrivateKeyTooLarge(usize),
    /// A private key could not be exported in PKCS#8 or its public key could not be encoded.
    PrivateKeyEncoding,
    /// PEM text is larger than [`cert::MAX_PEM_BYTES`].
    PemTooLarge(usize),
    /// PEM text has more blocks than [`cert::MAX_PEM_BLOCKS`].
    PemTooManyBlocks,
    /// PEM text has no block with the wanted label.
    PemBlockMissing(&'static str),
    /// A PEM block is malformed (no END line, headers, bad base64).
    PemMalformed(&'static str),
    /// A certificate is larger than [`cert::MAX_CERTIFICATE_BYTES`].
    CertificateTooLarge(usize),
    /// A certificate is not a DER X.509 certificate.
    CertificateMalformed(String),
    /// A certificate is not valid yet at the time it was checked.
    CertificateNotYetValid {
        /// The certificate's notBefore (unix seconds).
        not_before: i64,
        /// The time checked (unix seconds).
        at: i64,
    },
    /// A certificate has expired at the time it was checked.
    CertificateExpired {
        /// The certificate's notAfter (unix seconds).
        not_after: i64,
        /// The time checked (unix seconds).
        at: i64,
    },
    /// A signature does not verify under the key it was checked with.
    SignatureInvalid,
    /// A certificate's signature does not verify under the anchor's pinned key.
    SignatureNotByAnchor,
    /// A certificate's signature verifies, but its issuer name is not the anchor's subject.
    IssuerNameMismatch,
    /// A signature algorithm we do not verify or produce (dotted OID).
    UnsupportedSignatureAlgorithm(String),
    /// A public key that is not RSA, or an RSA key that cannot be read (dotted OID or why).
    UnsupportedPublicKey(String),
    /// The private key given for a CA does not belong to the CA certificate.
    CaKeyMismatch,
    /// The certificate given as a CA is not one (no basicConstraints cA=TRUE).
    NotACaCertificate,
    /// rcgen refused to build a certificate or a request.
    CertificateBuildFailed(String),
    /// A validity of zero days or more than [`ca::MAX_VALIDITY_DAYS`].
    ValidityOutOfRange(u32),
    /// A subject attribute value that is empty, too long or not allowed for its type.
    SubjectAttributeInvalid(&'static str),
    /// The same subject attribute type was given twice.
    SubjectAttributeRepeated(&'static str),
    /// A subject with no attributes or more than [`ca::MAX_SUBJECT_ATTRIBUTES`].
    SubjectSizeInvalid(usize),
    /// A PKCS#10 request is larger than [`csr::MAX_CSR_BYTES`].
    CsrTooLarge(usize),
    /// A PKCS#10 request is not DER or not shaped as RFC 2986 says.
    CsrMalformed(String),
    /// A PKCS#10 request's self-signature does not verify under its own key.
    CsrSignatureInvalid,
    /// A PKCS#10 request's RSA key size is outside [`csr::CSR_KEY_BITS`].
    CsrKeySizeRefused(usize),
    /// A PKCS#10 request's challengePassword is not a single readable DirectoryString.
    CsrChallengeMalformed,
}

impl fmt::Display for PkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedKeySize(bits) => {
                write!(f, "rsa key: {bits} bits is not a supported size")
            }
            Self::KeyGenerationFailed => write!(f, "rsa key: generation failed"),
            Self::PrivateKeyRejected(why) => write!(f, "private key: rejected ({why})"),
            Self::PrivateKeyTooLarge(len) => write!(
                f,
                "private key: {len} bytes is over the limit of {}",
                keys::MAX_PRIVATE_KEY_DER_BYTES
            ),
            Self::PrivateKeyEncoding => write!(f, "private key: could not be encoded"),
            Self::PemTooLarge(len) => write!(
                f,
                "pem: {len} bytes is over the limit of {}",
                cert::MAX_PEM_BYTES
            ),
            Self::PemTooManyBlocks => write!(f, "pem: more than {} blocks", cert::MAX_PEM_BLOCKS),
            Self::PemBlockMissing(label) => write!(f, "pem: no {label} block"),
            Self::PemMalformed(why) => write!(f, "pem: malformed ({why})"),
            Self::CertificateTooLarge(len) => write!(
                f,
                "certificate: {len} bytes is over the limit of {}",
                cert::MAX_CERTIFICATE_BYTES
            ),
            Self::CertificateMalformed(why) => write!(f, "certificate: malformed ({why})"),
            Self::CertificateNotYetValid { not_before, at } => write!(
                f,
                "certificate: not valid before {}, checked at {}",
                crate::store::rfc3339(*not_before),
                crate::store::rfc3339(*at)
            ),
            Self::CertificateExpired { not_after, at } => write!(
                f,
                "certificate: expired at {}, checked at {}",
                crate::store::rfc3339(*not_after),
                crate::store::rfc3339(*at)
            ),
            Self::SignatureInvalid => write!(f, "signature: does not verify under the key"),
            Self::SignatureNotByAnchor => {
                write!(
                    f,
                    "certificate: signature does not verify under the pinned key"
                )
            }
            Self::IssuerNameMismatch => {
                write!(f, "certificate: issuer name is not the anchor's subject")
            }
            Self::UnsupportedSignatureAlgorithm(oid) => {
                write!(f, "signature algorithm: {oid} is not supported")
            }
            Self::UnsupportedPublicKey(why) => write!(f, "public key: not supported ({why})"),
            Self::CaKeyMismatch => {
                write!(f, "ca key: does not match the ca certificate's public key")
            }
            Self::NotACaCertificate => {
                write!(f, "ca certificate: basicConstraints does not say cA")
            }
            Self::CertificateBuildFailed(why) => write!(f, "certificate: build failed ({why})"),
            Self::ValidityOutOfRange(days) => write!(
                f,
                "validity: {days} days is outside 1..={}",
                ca::MAX_VALIDITY_DAYS
            ),
            Self::SubjectAttributeInvalid(name) => {
                write!(f, "subject attribute {name}: value not allowed")
            }
            Self::SubjectAttributeRepeated(name) => {
                write!(f, "subject attribute {name}: given more than once")
            }
            Self::SubjectSizeInvalid(count) => write!(
                f,
                "subject: {count} attributes is outside 1..={}",
                ca::MAX_SUBJECT_ATTRIBUTES
            ),
            Self::CsrTooLarge(len) => write!(
                f,
                "certification request: {len} bytes is over the limit of {}",
                csr::MAX_CSR_BYTES
            ),
            Self::CsrMalformed(why) => write!(f, "certification request: malformed ({why})"),
            Self::CsrSignatureInvalid => {
                write!(f, "certification request: self-signature does not verify")
            }
            Self::CsrKeySizeRefused(bits) => write!(
                f,
                "certification request: rsa key of {bits} bits is outside {}..={}",
                csr::CSR_KEY_BITS.start(),
                csr::CSR_KEY_BITS.end()
            ),
            Self::CsrChallengeMalformed => write!(
                f,
                "certification request: challengePassword is not one readable string"
            ),
        }
    }
}

impl std::error::Error for PkiError {}
