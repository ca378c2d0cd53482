//! Object identifiers that the CMS layer and the SCEP messages built on it use, by their
//! names in the RFCs that define them.

use const_oid::ObjectIdentifier;

/// `id-data` (RFC 5652 §4): arbitrary octets.
pub const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");

/// `id-signedData` (RFC 5652 §5): the content type of a SignedData.
pub const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");

/// `id-envelopedData` (RFC 5652 §6): the content type of an EnvelopedData.
pub const ID_ENVELOPED_DATA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.3");

/// `id-contentType` (RFC 5652 §11.1): the signed attribute naming eContentType.
pub const CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");

/// `id-messageDigest` (RFC 5652 §11.2): the signed attribute holding the content's digest.
pub const MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");

/// `id-signingTime` (RFC 5652 §11.3): the signed attribute holding when the signer signed.
pub const SIGNING_TIME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.5");

/// `rsaEncryption` (RFC 8017 Appendix C, RFC 3370 §3.2): RSA keys, PKCS#1 v1.5 signatures and
/// key transport.
pub const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// `sha1WithRSAEncryption` (RFC 8017 Appendix C).
pub const SHA1_WITH_RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5");

/// `sha256WithRSAEncryption` (RFC 8017 Appendix C).
pub const SHA256_WITH_RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");

/// `sha512WithRSAEncryption` (RFC 8017 Appendix C).
pub const SHA512_WITH_RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");

/// `id-sha1` (RFC 3370 §2.1).
pub const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");

/// `id-sha256` (RFC 5754 §2.2).
pub const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");

/// `id-sha512` (RFC 5754 §2.4).
pub const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

/// `desCBC` (OIW): single DES in CBC mode, for legacy SCEP clients only.
pub const DES_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.7");

/// `des-ede3-cbc` (RFC 3370 §5.1): three-key triple DES in CBC mode.
pub const DES_EDE3_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.3.7");

/// `id-aes128-CBC` (RFC 3565 §4.1).
pub const AES128_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.2");

/// `id-aes192-CBC` (RFC 3565 §4.1).
pub const AES192_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.22");

/// `id-aes256-CBC` (RFC 3565 §4.1).
pub const AES256_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42");

/// `id-ce-subjectKeyIdentifier` (RFC 5280 §4.2.1.2): how a certificate names its key.
pub const SUBJECT_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");

/// SCEP `messageType` (RFC 8894 §3.2.1.2): a PrintableString with the decimal message type.
pub const MESSAGE_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.113733.1.9.2");

/// SCEP `pkiStatus` (RFC 8894 §3.2.1.3): a PrintableString with the decimal status.
pub const PKI_STATUS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.113733.1.9.3");

/// SCEP `failInfo` (RFC 8894 §3.2.1.4): a PrintableString with the decimal failure reason.
pub const FAIL_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.113733.1.9.4");

/// SCEP `senderNonce` (RFC 8894 §3.2.1.5): an OCTET STRING of 16 random octets.
pub const SENDER_NONCE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.113733.1.9.5");

/// SCEP `recipientNonce` (RFC 8894 §3.2.1.5): the senderNonce of the message answered.
pub const RECIPIENT_NONCE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.113733.1.9.6");

/// SCEP `transactionID` (RFC 8894 §3.2.1.1): a PrintableString naming the transaction.
pub const TRANSACTION_ID: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.113733.1.9.7");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_rfcs() {
        // The DER content octets of a few identifiers, as printed in RFC 5652 / RFC 3565.
        assert_eq!(
            ID_SIGNED_DATA.as_bytes(),
            [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 7, 2]
        );
        assert_eq!(SHA1.as_bytes(), [0x2b, 0x0e, 0x03, 0x02, 0x1a]);
        assert_eq!(
            AES256_CBC.as_bytes(),
            [0x60, 0x86, 0x48, 1, 0x65, 3, 4, 1, 0x2a]
        );
        assert_eq!(TRANSACTION_ID.to_string(), "2.16.840.1.113733.1.9.7");
    }
}
