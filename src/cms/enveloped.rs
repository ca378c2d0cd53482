//! EnvelopedData (RFC 5652 §6) with RSA key transport: decrypting what SCEP clients send
//! (the pkcsPKIEnvelope of RFC 8894 §3.2.2) and encrypting what otad sends back.
//!
//! Decryption is built so that every failure looks the same from outside: RSA PKCS#1 v1.5
//! key transport invites Bleichenbacher's attack, so a bad key-transport block is not reported
//! but replaced by a random content key, and the failure surfaces later, as one
//! [`CmsError::Decrypt`], like any other.
//!
//! Encryption goes through aws-lc-rs for recipients of 2048 bits and more; 1024-bit recipients
//! (`scepclient -keySize 1024`, older devices), which aws-lc-rs refuses, are encrypted to by
//! otad's own RSAES-PKCS1-v1_5 (`cms::rsa_public`), a public-key operation that needs no
//! secret of ours.

use aws_lc_rs::cipher::{
    DecryptionContext, PaddedBlockDecryptingKey, PaddedBlockEncryptingKey, UnboundCipherKey,
};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::{
    Pkcs1PrivateDecryptingKey, Pkcs1PublicEncryptingKey, PrivateDecryptingKey, PublicEncryptingKey,
};

use super::ber::{self, Tlv};
use super::rsa_public::RsaPublicKey;
use super::{
    algorithm_identifier, certificate_parts, encode_algorithm_null, encode_content_info, malformed,
    object_identifier, oid, rsa_public_key, single, tag, CertificateId, CertificateParts, CmsError,
    ContentCipher, Reader,
};

/// At most this many RecipientInfos in one EnvelopedData.
pub const MAX_RECIPIENTS: usize = 16;

/// Smallest RSA recipient key otad encrypts to, in bits (the SCEP service refuses requesters
/// below it before issuing anything).
pub const MIN_ENCRYPTION_RSA_BITS: usize = 1024;

/// Smallest RSA key aws-lc-rs encrypts to, in bits; recipients from
/// [`MIN_ENCRYPTION_RSA_BITS`] up to this go through [`rsa_public`].
const AWS_LC_MIN_ENCRYPTION_RSA_BITS: usize = 2048;

/// EnvelopedData and KeyTransRecipientInfo version 0 (RFC 5652 §6.1, §6.2.1).
const VERSION_0: [u8; 3] = [tag::INTEGER, 0x01, 0x00];

/// DER ContentInfo(EnvelopedData): one KeyTransRecipientInfo (version 0, issuerAndSerialNumber
/// of the recipient cert, rsaEncryption PKCS#1 v1.5), a random content key and IV, the given
/// cipher.
///
/// RFC 5652 §6.1, §6.2.1, §6.3; the encrypted content type is id-data. Recipients of 2048 to
/// 8192 bits are encrypted to by aws-lc-rs's Pkcs1PublicEncryptingKey; from
/// [`MIN_ENCRYPTION_RSA_BITS`] (1024) up to 2048 bits, which aws-lc-rs refuses, by otad's own
/// RSAES-PKCS1-v1_5 (RFC 8017 §7.2.1; a public-key operation, module `cms::rsa_public`).
/// Smaller or larger recipients get [`CmsError::UnsupportedKey`].
pub fn encrypt(
    content: &[u8],
    recipient_certificate: &[u8],
    cipher: ContentCipher,
) -> Result<Vec<u8>, CmsError> {
    let parts = certificate_parts(recipient_certificate)?;
    let (rsa_public_key, bits) = rsa_public_key(&parts.subject_public_key_info)?;
    if bits < MIN_ENCRYPTION_RSA_BITS {
        return Err(CmsError::UnsupportedKey(format!(
            "recipient rsa key of {bits} bits (encryption needs {MIN_ENCRYPTION_RSA_BITS})"
        )));
    }

    let mut content_key = vec![0u8; cipher.key_len()];
    aws_lc_rs::rand::fill(&mut content_key)
        .map_err(|_| CmsError::Encrypt("no random content key".into()))?;
    let (encrypted_content, iv) = encrypt_content(content, &content_key, cipher)?;

    let encrypted_key = if bits >= AWS_LC_MIN_ENCRYPTION_RSA_BITS {
        aws_lc_key_transport(parts.subject_public_key_info.raw, &content_key)?
    } else {
        RsaPublicKey::from_der(rsa_public_key)?.encrypt(&content_key)?
    };

    let recipient_info = ber::tlv_of(
        tag::SEQUENCE,
        &[
            &VERSION_0,
            &parts.issuer_and_serial_number(),
            &encode_algorithm_null(&oid::RSA_ENCRYPTION),
            &ber::tlv(tag::OCTET_STRING, &encrypted_key),
        ],
    );
    let algorithm = ber::tlv_of(
        tag::SEQUENCE,
        &[
            &ber::tlv(tag::OID, cipher.oid().as_bytes()),
            &ber::tlv(tag::OCTET_STRING, &iv),
        ],
    );
    let encrypted_content_info = ber::tlv_of(
        tag::SEQUENCE,
        &[
            &ber::tlv(tag::OID, oid::ID_DATA.as_bytes()),
            &algorithm,
            &ber::tlv(tag::CONTEXT_0_PRIMITIVE, &encrypted_content),
        ],
    );
    let enveloped_data = ber::tlv_of(
        tag::SEQUENCE,
        &[
            &VERSION_0,
            &ber::tlv(tag::SET, &recipient_info),
            &encrypted_content_info,
        ],
    );
    Ok(encode_content_info(
        &oid::ID_ENVELOPED_DATA,
        &enveloped_data,
    ))
}

/// The content key encrypted to a recipient of 2048 bits or more by aws-lc-rs (RSAES-PKCS1-v1_5,
/// RFC 8017 §7.2.1); `spki` is the recipient's DER SubjectPublicKeyInfo.
fn aws_lc_key_transport(spki: &[u8], content_key: &[u8]) -> Result<Vec<u8>, CmsError> {
    let public_key = PublicEncryptingKey::from_der(spki)
        .map_err(|err| CmsError::UnsupportedKey(format!("recipient key ({err})")))?;
    let public_key = Pkcs1PublicEncryptingKey::new(public_key)
        .map_err(|_| CmsError::Encrypt("recipient key refused".into()))?;

    let mut encrypted_key = vec![0u8; public_key.ciphertext_size()];
    let encrypted_key_len = public_key
        .encrypt(content_key, &mut encrypted_key)
        .map_err(|_| CmsError::Encrypt("rsa key transport failed".into()))?
        .len();
    encrypted_key.truncate(encrypted_key_len);
    Ok(encrypted_key)
}

/// The content of a decrypted EnvelopedData.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    /// The plaintext.
    pub content: Vec<u8>,
    /// The cipher the sender chose.
    pub cipher: ContentCipher,
}

/// BER accepted; a bare EnvelopedData or a ContentInfo around one. Picks the KeyTrans
/// recipient matching the cert (issuerAndSerialNumber or SKI), else the only KeyTrans one.
/// RSA key transport through aws-lc-rs Pkcs1PrivateDecryptingKey (constant time); if it
/// fails, or the key has the wrong length, continue with a random key of the right length so
/// the failure is indistinguishable from a later one (Bleichenbacher countermeasure): every
/// decryption failure returns the same CmsError::Decrypt.
///
/// RFC 5652 §6.1, §6.2.1; RFC 3218 §2.3.2 for the countermeasure.
pub fn decrypt(
    input: &[u8],
    recipient_certificate: &[u8],
    key: &PrivateDecryptingKey,
) -> Result<Decrypted, CmsError> {
    let der = ber::normalize(input)?;
    let enveloped = parse_enveloped_data(&der)?;
    let parts = certificate_parts(recipient_certificate)?;
    let recipient = choose_recipient(&enveloped.recipients, &parts)?;
    if recipient.key_encryption_algorithm != oid::RSA_ENCRYPTION {
        return Err(CmsError::UnsupportedKeyTransport(
            recipient.key_encryption_algorithm.to_string(),
        ));
    }

    let cipher = ContentCipher::from_oid(&enveloped.cipher_oid)
        .ok_or_else(|| CmsError::UnsupportedCipher(enveloped.cipher_oid.to_string()))?;
    let iv = match enveloped.cipher_parameters {
        Some(parameters) if parameters.is(tag::OCTET_STRING) => parameters.content,
        _ => return Err(malformed("content encryption algorithm", "no IV")),
    };
    if iv.len() != cipher.iv_len() {
        return Err(malformed(
            "content encryption algorithm",
            "IV of the wrong length",
        ));
    }
    let encrypted_content = enveloped.encrypted_content.ok_or(CmsError::NoContent)?;

    let content_key = unwrap_content_key(key, recipient.encrypted_key, cipher.key_len())?;
    let content = decrypt_content(encrypted_content, &content_key, iv, cipher)?;
    Ok(Decrypted { content, cipher })
}

/// Recovers the content key from the key-transport block, or, if that fails in any way, a
/// random key of the same length, chosen without a secret-dependent branch.
fn unwrap_content_key(
    key: &PrivateDecryptingKey,
    encrypted_key: &[u8],
    key_len: usize,
) -> Result<Vec<u8>, CmsError> {
    let mut fallback = vec![0u8; key_len];
    aws_lc_rs::rand::fill(&mut fallback).map_err(|_| CmsError::Decrypt)?;
    let private_key = Pkcs1PrivateDecryptingKey::new(key.clone()).map_err(|_| CmsError::Decrypt)?;

    let mut plaintext = vec![0u8; private_key.min_output_size().max(key_len)];
    let (succeeded, plaintext_len) = match private_key.decrypt(encrypted_key, &mut plaintext) {
        Ok(recovered) => (1u8, recovered.len()),
        Err(_) => (0u8, 0),
    };
    let good = succeeded & equal_lengths(plaintext_len, key_len);
    let mask = 0u8.wrapping_sub(good);

    Ok(fallback
        .iter()
        .zip(plaintext.iter())
        .map(|(random, recovered)| (recovered & mask) | (random & !mask))
        .collect())
}

/// 1 if `a == b`, else 0, computed without branching on the values.
fn equal_lengths(a: usize, b: usize) -> u8 {
    let difference = (a ^ b) as u64;
    // The top bit of `d | -d` is set exactly when d != 0.
    let nonzero = ((difference | difference.wrapping_neg()) >> 63) as u8;
    1 ^ nonzero
}

/// Encrypts `content` under `content_key` with a fresh random IV, returning the ciphertext and
/// the IV.
fn encrypt_content(
    content: &[u8],
    content_key: &[u8],
    cipher: ContentCipher,
) -> Result<(Vec<u8>, Vec<u8>), CmsError> {
    let failed = |_| CmsError::Encrypt(format!("{cipher} encryption failed"));
    let key = UnboundCipherKey::new(cipher.aws_lc(), content_key).map_err(failed)?;
    let key = PaddedBlockEncryptingKey::cbc_pkcs7(key).map_err(failed)?;
    let mut buffer = content.to_vec();
    let context = key.encrypt(&mut buffer).map_err(failed)?;
    let iv: &[u8] = (&context).try_into().map_err(failed)?;
    Ok((buffer, iv.to_vec()))
}

/// Decrypts the encryptedContent; every failure is [`CmsError::Decrypt`].
fn decrypt_content(
    encrypted_content: &[u8],
    content_key: &[u8],
    iv: &[u8],
    cipher: ContentCipher,
) -> Result<Vec<u8>, CmsError> {
    let key = UnboundCipherKey::new(cipher.aws_lc(), content_key).map_err(|_| CmsError::Decrypt)?;
    let key = PaddedBlockDecryptingKey::cbc_pkcs7(key).map_err(|_| CmsError::Decrypt)?;
    let context = match cipher {
        ContentCipher::DesCbc | ContentCipher::Des3Cbc => {
            let iv: [u8; 8] = iv.try_into().map_err(|_| CmsError::Decrypt)?;
            DecryptionContext::Iv64(FixedLength::from(iv))
        }
        ContentCipher::Aes128Cbc | ContentCipher::Aes192Cbc | ContentCipher::Aes256Cbc => {
            let iv: [u8; 16] = iv.try_into().map_err(|_| CmsError::Decrypt)?;
            DecryptionContext::Iv128(FixedLength::from(iv))
        }
    };
    let mut buffer = encrypted_content.to_vec();
    let plaintext = key
        .decrypt(&mut buffer, context)
        .map_err(|_| CmsError::Decrypt)?;
    Ok(plaintext.to_vec())
}

/// One KeyTransRecipientInfo (RFC 5652 §6.2.1), borrowed from its DER.
struct KeyTransRecipient<'a> {
    rid: CertificateId<'a>,
    key_encryption_algorithm: const_oid::ObjectIdentifier,
    encrypted_key: &'a [u8],
}

/// The fields of an EnvelopedData (RFC 5652 §6.1) that this layer uses.
struct EnvelopedDataParts<'a> {
    recipients: Vec<KeyTransRecipient<'a>>,
    cipher_oid: const_oid::ObjectIdentifier,
    cipher_parameters: Option<Tlv<'a>>,
    encrypted_content: Option<&'a [u8]>,
}

/// Parses a bare EnvelopedData or a ContentInfo around one.
fn parse_enveloped_data(der: &[u8]) -> Result<EnvelopedDataParts<'_>, CmsError> {
    const WHAT: &str = "enveloped data";
    let outer = single(der, tag::SEQUENCE, WHAT)?;

    // A ContentInfo starts with its contentType OID, an EnvelopedData with its version.
    let enveloped = if outer.content.first() == Some(&tag::OID) {
        super::content_info(der, oid::ID_ENVELOPED_DATA, CmsError::NotEnvelopedData)?
    } else {
        outer
    };
    if !enveloped.is(tag::SEQUENCE) {
        return Err(malformed(WHAT, "not a SEQUENCE"));
    }

    let mut reader = Reader::new(enveloped.content, WHAT);
    reader.take(tag::INTEGER, "version")?;
    reader.optional(tag::CONTEXT_0, "originatorInfo")?;
    let recipient_infos = reader.take(tag::SET, "recipientInfos")?;
    let encrypted_content_info = reader.take(tag::SEQUENCE, "encryptedContentInfo")?;
    reader.optional(tag::CONTEXT_1, "unprotectedAttrs")?;
    reader.finish()?;

    let recipients = parse_recipients(recipient_infos.content)?;

    const ECI: &str = "encrypted content info";
    let mut reader = Reader::new(encrypted_content_info.content, ECI);
    object_identifier(&reader.take(tag::OID, "contentType")?, ECI)?;
    let (cipher_oid, cipher_parameters) = algorithm_identifier(
        &reader.take(tag::SEQUENCE, "contentEncryptionAlgorithm")?,
        ECI,
    )?;
    let encrypted_content = reader
        .optional(tag::CONTEXT_0_PRIMITIVE, "encryptedContent")?
        .map(|element| element.content);
    reader.finish()?;

    Ok(EnvelopedDataParts {
        recipients,
        cipher_oid,
        cipher_parameters,
        encrypted_content,
    })
}

/// The KeyTransRecipientInfos among the RecipientInfos; other kinds (key agreement, KEK,
/// password) are counted and skipped.
fn parse_recipients(content: &[u8]) -> Result<Vec<KeyTransRecipient<'_>>, CmsError> {
    const WHAT: &str = "key trans recipient info";
    let mut recipients = Vec::new();
    let mut count = 0;
    let mut reader = Reader::new(content, "recipient infos");
    while !reader.is_empty() {
        let recipient_info = reader.any("recipient info")?;
        count += 1;
        if !recipient_info.is(tag::SEQUENCE) || count > MAX_RECIPIENTS {
            continue;
        }

        let mut fields = Reader::new(recipient_info.content, WHAT);
        fields.take(tag::INTEGER, "version")?;
        let rid = CertificateId::parse(&fields.any("rid")?, WHAT)?;
        let (algorithm, _) =
            algorithm_identifier(&fields.take(tag::SEQUENCE, "keyEncryptionAlgorithm")?, WHAT)?;
        let encrypted_key = fields.take(tag::OCTET_STRING, "encryptedKey")?;
        fields.finish()?;

        recipients.push(KeyTransRecipient {
            rid,
            key_encryption_algorithm: algorithm,
            encrypted_key: encrypted_key.content,
        });
    }
    if count > MAX_RECIPIENTS {
        return Err(CmsError::TooManyRecipients(count));
    }
    Ok(recipients)
}

/// The recipient naming `certificate`, else the only one there is.
fn choose_recipient<'r, 'a>(
    recipients: &'r [KeyTransRecipient<'a>],
    certificate: &CertificateParts<'_>,
) -> Result<&'r KeyTransRecipient<'a>, CmsError> {
    if let Some(recipient) = recipients
        .iter()
        .find(|recipient| recipient.rid.matches(certificate))
    {
        return Ok(recipient);
    }
    match recipients {
        [only] => Ok(only),
        _ => Err(CmsError::NoRecipient),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cms::test_support::{have_openssl, openssl, shared, TestResult};

    const CONTENT: &[u8] = b"-----BEGIN CERTIFICATE REQUEST----- not really, but 51+ octets";

    const ALL_CIPHERS: [ContentCipher; 5] = [
        ContentCipher::DesCbc,
        ContentCipher::Des3Cbc,
        ContentCipher::Aes128Cbc,
        ContentCipher::Aes192Cbc,
        ContentCipher::Aes256Cbc,
    ];

    #[test]
    fn round_trip_for_every_cipher() -> TestResult {
        let recipient = shared(0)?;
        for cipher in ALL_CIPHERS {
            let message = encrypt(CONTENT, &recipient.certificate, cipher)?;
            let decrypted = decrypt(&message, &recipient.certificate, &recipient.decrypting)?;
            assert_eq!(decrypted.content, CONTENT, "{cipher}");
            assert_eq!(decrypted.cipher, cipher);
        }
        // Empty content pads to one block and comes back empty.
        let message = encrypt(b"", &recipient.certificate, ContentCipher::Aes128Cbc)?;
        let decrypted = decrypt(&message, &recipient.certificate, &recipient.decrypting)?;
        assert_eq!(decrypted.content, b"");
        Ok(())
    }

    #[test]
    fn encryption_is_randomised() -> TestResult {
        let recipient = shared(0)?;
        let first = encrypt(CONTENT, &recipient.certificate, ContentCipher::Aes256Cbc)?;
        let second = encrypt(CONTENT, &recipient.certificate, ContentCipher::Aes256Cbc)?;
        assert_ne!(first, second);
        Ok(())
    }

    /// Decrypts with a key that cannot be right, `attempts` times. Each attempt must fail
    /// with Decrypt or, as the Bleichenbacher countermeasure allows (the random key gives valid
    /// padding about one time in 256), give content other than the original; most must fail.
    fn assert_decrypt_fails(
        message: &[u8],
        certificate: &[u8],
        key: &PrivateDecryptingKey,
    ) -> TestResult {
        let attempts = 8;
        let mut failures = 0;
        for _ in 0..attempts {
            match decrypt(message, certificate, key) {
                Err(CmsError::Decrypt) => failures += 1,
                Ok(decrypted) => assert_ne!(decrypted.content, CONTENT),
                Err(other) => return Err(format!("expected Decrypt, got {other}").into()),
            }
        }
        assert!(
            failures >= attempts / 2,
            "only {failures} of {attempts} failed"
        );
        Ok(())
    }

    #[test]
    fn wrong_key_gives_decrypt() -> TestResult {
        let recipient = shared(0)?;
        let wrong = shared(1)?;
        for cipher in ALL_CIPHERS {
            let message = encrypt(CONTENT, &recipient.certificate, cipher)?;
            assert_decrypt_fails(&message, &recipient.certificate, &wrong.decrypting)?;
        }
        Ok(())
    }

    #[test]
    fn content_key_of_the_wrong_length_gives_decrypt() -> TestResult {
        let recipient = shared(0)?;
        let mut message = encrypt(CONTENT, &recipient.certificate, ContentCipher::Aes128Cbc)?;
        // Relabel the AES-128 content as AES-256 (the OIDs differ in their last octet only):
        // the transported 16-octet key is now of the wrong length.
        let aes128 = ber::tlv(tag::OID, oid::AES128_CBC.as_bytes());
        let start = message
            .windows(aes128.len())
            .position(|window| window == aes128.as_slice())
            .ok_or("no AES-128 OID")?;
        let last = message.get_mut(start + aes128.len() - 1).ok_or("range")?;
        *last = 0x2a;
        assert_decrypt_fails(&message, &recipient.certificate, &recipient.decrypting)
    }

    #[test]
    fn wrong_length_rsa_block_gives_decrypt() -> TestResult {
        // A 4096-bit key cannot take a 2048-bit block: the same opaque failure.
        let recipient = shared(0)?;
        let message = encrypt(CONTENT, &recipient.certificate, ContentCipher::Aes128Cbc)?;
        let big = PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa4096)?;
        assert_decrypt_fails(&message, &recipient.certificate, &big)
    }

    #[test]
    fn bare_enveloped_data_is_accepted() -> TestResult {
        let recipient = shared(0)?;
        let message = encrypt(CONTENT, &recipient.certificate, ContentCipher::Aes256Cbc)?;
        let inner =
            crate::cms::content_info(&message, oid::ID_ENVELOPED_DATA, CmsError::NotEnvelopedData)?;
        let decrypted = decrypt(inner.raw, &recipient.certificate, &recipient.decrypting)?;
        assert_eq!(decrypted.content, CONTENT);
        Ok(())
    }

    #[test]
    fn foreign_and_truncated_input_is_refused_without_panic() -> TestResult {
        let recipient = shared(0)?;
        let message = encrypt(CONTENT, &recipient.certificate, ContentCipher::Aes128Cbc)?;
        for end in 0..message.len() {
            let cut = message.get(..end).ok_or("range")?;
            assert!(
                decrypt(cut, &recipient.certificate, &recipient.decrypting).is_err(),
                "cut at {end}"
            );
        }
        let signed = crate::cms::signed::certs_only(&[&recipient.certificate])?;
        assert!(matches!(
            decrypt(&signed, &recipient.certificate, &recipient.decrypting),
            Err(CmsError::NotEnvelopedData)
        ));
        assert!(matches!(
            encrypt(CONTENT, b"not a certificate", ContentCipher::Aes128Cbc),
            Err(CmsError::Malformed(_))
        ));
        Ok(())
    }

    #[test]
    fn constant_time_length_comparison() {
        assert_eq!(equal_lengths(16, 16), 1);
        assert_eq!(equal_lengths(16, 32), 0);
        assert_eq!(equal_lengths(0, usize::MAX), 0);
        assert_eq!(equal_lengths(0, 0), 1);
    }

    #[test]
    fn openssl_decrypts_what_encrypt_makes() -> TestResult {
        if !have_openssl()? {
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let recipient = shared(0)?;
        std::fs::write(dir.path().join("cert.pem"), &recipient.certificate_pem)?;
        std::fs::write(dir.path().join("key.pem"), &recipient.key_pem)?;
        for cipher in ALL_CIPHERS {
            let message = encrypt(CONTENT, &recipient.certificate, cipher)?;
            std::fs::write(dir.path().join("enveloped.der"), &message)?;
            openssl(
                dir.path(),
                &[
                    "cms",
                    "-decrypt",
                    // Single DES lives in OpenSSL 3's legacy provider.
                    "-provider",
                    "legacy",
                    "-provider",
                    "default",
                    "-binary",
                    "-inform",
                    "DER",
                    "-in",
                    "enveloped.der",
                    "-recip",
                    "cert.pem",
                    "-inkey",
                    "key.pem",
                    "-out",
                    "content.out",
                ],
            )?;
            assert_eq!(
                std::fs::read(dir.path().join("content.out"))?,
                CONTENT,
                "{cipher}"
            );
        }
        Ok(())
    }

    #[test]
    fn decrypt_accepts_openssl_streamed_ber() -> TestResult {
        if !have_openssl()? {
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let recipient = shared(0)?;
        std::fs::write(dir.path().join("cert.pem"), &recipient.certificate_pem)?;
        // Large enough that OpenSSL streams the encryptedContent in several chunks.
        let content = CONTENT.repeat(150);
        std::fs::write(dir.path().join("content.bin"), &content)?;
        let cases: [(&[&str], ContentCipher); 6] = [
            (&["-des"], ContentCipher::DesCbc),
            (&["-des3"], ContentCipher::Des3Cbc),
            (&["-aes128"], ContentCipher::Aes128Cbc),
            (&["-aes192"], ContentCipher::Aes192Cbc),
            (&["-aes256"], ContentCipher::Aes256Cbc),
            (&["-aes256", "-keyid"], ContentCipher::Aes256Cbc),
        ];
        for (extra, cipher) in cases {
            let mut args = vec![
                "cms",
                "-encrypt",
                "-provider",
                "legacy",
                "-provider",
                "default",
                "-stream",
                "-binary",
                "-outform",
                "DER",
                "-in",
                "content.bin",
                "-out",
                "enveloped.ber",
            ];
            args.extend_from_slice(extra);
            args.push("cert.pem");
            openssl(dir.path(), &args)?;
            let message = std::fs::read(dir.path().join("enveloped.ber"))?;
            assert_ne!(
                ber::normalize(&message)?,
                message,
                "openssl streamed BER ({extra:?})"
            );

            let decrypted = decrypt(&message, &recipient.certificate, &recipient.decrypting)?;
            assert_eq!(decrypted.content, content, "{extra:?}");
            assert_eq!(decrypted.cipher, cipher, "{extra:?}");
        }
        Ok(())
    }

    #[test]
    fn recipient_is_chosen_by_certificate() -> TestResult {
        if !have_openssl()? {
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let (first, second, third) = (shared(0)?, shared(1)?, shared(2)?);
        std::fs::write(dir.path().join("first.pem"), &first.certificate_pem)?;
        std::fs::write(dir.path().join("second.pem"), &second.certificate_pem)?;
        std::fs::write(dir.path().join("content.bin"), CONTENT)?;
        openssl(
            dir.path(),
            &[
                "cms",
                "-encrypt",
                "-binary",
                "-outform",
                "DER",
                "-aes128",
                "-in",
                "content.bin",
                "-out",
                "two.der",
                "first.pem",
                "second.pem",
            ],
        )?;
        let message = std::fs::read(dir.path().join("two.der"))?;

        for recipient in [first, second] {
            let decrypted = decrypt(&message, &recipient.certificate, &recipient.decrypting)?;
            assert_eq!(decrypted.content, CONTENT);
        }
        assert!(matches!(
            decrypt(&message, &third.certificate, &third.decrypting),
            Err(CmsError::NoRecipient)
        ));
        Ok(())
    }

    /// A self-signed certificate for a new `bits`-bit RSA key made by openssl in `dir`, as
    /// `name.der` and `name.pem`, the key as `name.key`.
    fn openssl_identity(dir: &std::path::Path, name: &str, bits: usize) -> TestResult {
        let key = format!("{name}.key");
        let pem = format!("{name}.pem");
        let der = format!("{name}.der");
        openssl(dir, &["genrsa", "-out", &key, &bits.to_string()])?;
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &key,
                "-subj",
                "/CN=small",
                "-days",
                "1",
                "-out",
                &pem,
            ],
        )?;
        openssl(dir, &["x509", "-in", &pem, "-outform", "DER", "-out", &der])
    }

    #[test]
    fn openssl_decrypts_what_encrypt_makes_for_keys_below_2048_bits() -> TestResult {
        if !have_openssl()? {
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        // 1024 as scepclient makes them, and widths that are not a multiple of 64 (2047 has
        // the full 256-octet ciphertext of a 2048-bit key).
        for bits in [1024usize, 1100, 1536, 2047] {
            let name = format!("rsa{bits}");
            openssl_identity(dir.path(), &name, bits)?;
            let certificate = std::fs::read(dir.path().join(format!("{name}.der")))?;
            for cipher in ALL_CIPHERS {
                let message = encrypt(CONTENT, &certificate, cipher)?;
                std::fs::write(dir.path().join("enveloped.der"), &message)?;
                openssl(
                    dir.path(),
                    &[
                        "cms",
                        "-decrypt",
                        "-provider",
                        "legacy",
                        "-provider",
                        "default",
                        "-binary",
                        "-inform",
                        "DER",
                        "-in",
                        "enveloped.der",
                        "-recip",
                        &format!("{name}.pem"),
                        "-inkey",
                        &format!("{name}.key"),
                        "-out",
                        "content.out",
                    ],
                )?;
                assert_eq!(
                    std::fs::read(dir.path().join("content.out"))?,
                    CONTENT,
                    "{bits} bits, {cipher}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn rsa_1024_key_transport_block_has_the_pkcs1_shape() -> TestResult {
        if !have_openssl()? {
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        openssl_identity(dir.path(), "small", 1024)?;
        let certificate = std::fs::read(dir.path().join("small.der"))?;
        let message = encrypt(CONTENT, &certificate, ContentCipher::Aes256Cbc)?;

        // Take the encryptedKey out and open it raw with the private key: 0x00 0x02, a
        // non-zero padding string, 0x00, then a 32-octet AES-256 key.
        let enveloped = parse_enveloped_data(&message)?;
        let recipient = enveloped.recipients.first().ok_or("no recipient")?;
        assert_eq!(recipient.encrypted_key.len(), 128);
        std::fs::write(dir.path().join("block.bin"), recipient.encrypted_key)?;
        openssl(
            dir.path(),
            &[
                "pkeyutl",
                "-decrypt",
                "-inkey",
                "small.key",
                "-pkeyopt",
                "rsa_padding_mode:none",
                "-in",
                "block.bin",
                "-out",
                "block.out",
            ],
        )?;
        let block = std::fs::read(dir.path().join("block.out"))?;
        assert_eq!(block.len(), 128);
        assert_eq!(block.get(..2), Some(&[0x00, 0x02][..]));
        let padding = block.get(2..128 - 33).ok_or("range")?;
        assert!(padding.iter().all(|octet| *octet != 0));
        assert_eq!(block.get(128 - 33), Some(&0x00));
        Ok(())
    }

    #[test]
    fn rsa_recipients_below_1024_bits_are_refused() -> TestResult {
        if !have_openssl()? {
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        openssl_identity(dir.path(), "tiny", 512)?;
        let certificate = std::fs::read(dir.path().join("tiny.der"))?;
        assert!(matches!(
            encrypt(CONTENT, &certificate, ContentCipher::Aes128Cbc),
            Err(CmsError::UnsupportedKey(text)) if text.contains("512")
        ));
        Ok(())
    }
}
