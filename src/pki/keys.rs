//! RSA private keys held by aws-lc-rs: generation, PEM and PKCS#8 import and export, and the
//! handles for signing (CertReps, profiles, certificates) and decrypting (SCEP requests).
//!
//! One key is parsed twice into aws-lc-rs, once as a signing key pair and once as a
//! decrypting key, because aws-lc-rs keeps those as separate types.

use std::fmt;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair};
use zeroize::Zeroizing;

use super::cert;
use super::PkiError;

/// The largest private key DER we read (an RSA-8192 PKCS#8 is under 5 KiB).
pub const MAX_PRIVATE_KEY_DER_BYTES: usize = 16 * 1024;

/// PEM label of a PKCS#8 PrivateKeyInfo (RFC 7468 section 10).
const PKCS8_LABEL: &str = "PRIVATE KEY";

/// PEM label of a PKCS#1 RSAPrivateKey (the "traditional" OpenSSL form).
const PKCS1_LABEL: &str = "RSA PRIVATE KEY";

/// An RSA private key held by aws-lc-rs (sign and decrypt), with its PKCS#8 form.
pub struct RsaPrivateKey {
    /// PKCS#8 v1 PrivateKeyInfo DER as aws-lc-rs wrote it, cleared on drop.
    pkcs8: Zeroizing<Vec<u8>>,
    /// The key as a signer.
    signing: RsaKeyPair,
    /// The same key as a decrypter.
    decrypting: PrivateDecryptingKey,
    /// SubjectPublicKeyInfo DER of the public half.
    spki: Vec<u8>,
    /// Modulus size in bits.
    bits: usize,
}

impl RsaPrivateKey {
    /// A new key of 2048, 3072 or 4096 bits.
    pub fn generate(bits: usize) -> Result<Self, PkiError> {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            other => return Err(PkiError::UnsupportedKeySize(other)),
        };

        let pair = RsaKeyPair::generate(size).map_err(|_| PkiError::KeyGenerationFailed)?;
        Self::from_key_pair(pair)
    }

    /// A key from PEM: the first "PRIVATE KEY" (PKCS#8) or "RSA PRIVATE KEY" (PKCS#1) block.
    /// Encrypted PEM is refused.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let block = cert::pem_blocks(pem)?
            .into_iter()
            .find(|block| block.label == PKCS8_LABEL || block.label == PKCS1_LABEL)
            .ok_or(PkiError::PemBlockMissing(PKCS8_LABEL))?;

        if block.label == PKCS1_LABEL {
            Self::from_pkcs1_der(&block.der)
        } else {
            Self::from_pkcs8_der(&block.der)
        }
    }

    /// A key from PKCS#8 v1 PrivateKeyInfo DER
    /// ([RFC 5208 section 5](https://www.rfc-editor.org/rfc/rfc5208#section-5)).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, PkiError> {
        check_size(der)?;

        let pair = RsaKeyPair::from_pkcs8(der)
            .map_err(|err| PkiError::PrivateKeyRejected(err.to_string()))?;
        Self::from_key_pair(pair)
    }

    /// A key from PKCS#1 RSAPrivateKey DER
    /// ([RFC 8017 appendix A.1.2](https://www.rfc-editor.org/rfc/rfc8017#appendix-A.1.2)).
    pub fn from_pkcs1_der(der: &[u8]) -> Result<Self, PkiError> {
        check_size(der)?;

        let pair = RsaKeyPair::from_der(der)
            .map_err(|err| PkiError::PrivateKeyRejected(err.to_string()))?;
        Self::from_key_pair(pair)
    }

    /// Builds every handle from one aws-lc-rs key pair, going through PKCS#8 so the decrypting
    /// key is the same key.
    fn from_key_pair(signing: RsaKeyPair) -> Result<Self, PkiError> {
        let pkcs8 = Zeroizing::new(
            signing
                .as_der()
                .map_err(|_| PkiError::PrivateKeyEncoding)?
                .as_ref()
                .to_vec(),
        );

        let decrypting = PrivateDecryptingKey::from_pkcs8(&pkcs8)
            .map_err(|err| PkiError::PrivateKeyRejected(err.to_string()))?;
        let spki = signing
            .public_key()
            .as_der()
            .map_err(|_| PkiError::PrivateKeyEncoding)?
            .as_ref()
            .to_vec();
        let bits = decrypting.key_size_bits();
        Ok(Self {
            pkcs8,
            signing,
            decrypting,
            spki,
            bits,
        })
    }

    /// The key as PKCS#8 PEM ("PRIVATE KEY").
    pub fn to_pkcs8_pem(&self) -> String {
        cert::encode_pem(PKCS8_LABEL, &self.pkcs8)
    }

    /// The key as PKCS#8 v1 DER.
    pub fn to_pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// The aws-lc-rs signing key pair (RSA PKCS#1 v1.5 or PSS signatures).
    pub fn signing(&self) -> &RsaKeyPair {
        &self.signing
    }

    /// The aws-lc-rs decrypting key (wrap it in `Pkcs1PrivateDecryptingKey` or
    /// `OaepPrivateDecryptingKey`).
    pub fn decrypting(&self) -> &PrivateDecryptingKey {
        &self.decrypting
    }

    /// SubjectPublicKeyInfo DER of the public key
    /// ([RFC 5280 section 4.1.2.7](https://www.rfc-editor.org/rfc/rfc5280#section-4.1.2.7)).
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        self.spki.clone()
    }

    /// The key as an rcgen signer with sha256WithRSAEncryption; rcgen signs through aws-lc-rs.
    pub fn rcgen_key(&self) -> Result<rcgen::KeyPair, PkiError> {
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &self.pkcs8.as_slice().into(),
            &rcgen::PKCS_RSA_SHA256,
        )
        .map_err(|err| PkiError::PrivateKeyRejected(err.to_string()))
    }
}

impl fmt::Debug for RsaPrivateKey {
    /// Only the size: never key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaPrivateKey")
            .field("bits", &self.bits)
            .finish_non_exhaustive()
    }
}

/// Refuses key DER over [`MAX_PRIVATE_KEY_DER_BYTES`].
fn check_size(der: &[u8]) -> Result<(), PkiError> {
    if der.len() > MAX_PRIVATE_KEY_DER_BYTES {
        return Err(PkiError::PrivateKeyTooLarge(der.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::{Pkcs1PrivateDecryptingKey, Pkcs1PublicEncryptingKey};
    use aws_lc_rs::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256};
    use std::process::Command;

    const OPENSSL: &str = "/usr/bin/openssl";

    fn openssl(args: &[&str]) {
        let status = Command::new(OPENSSL).args(args).status().unwrap();
        assert!(status.success(), "openssl {args:?} failed");
    }

    /// Signs with the key and checks the signature under its SPKI; decrypts what its public
    /// key encrypted.
    fn assert_usable(key: &RsaPrivateKey) {
        let mut signature = vec![0u8; key.signing().public_modulus_len()];
        key.signing()
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                b"otad",
                &mut signature,
            )
            .unwrap();
        let spki = key.public_key_spki_der();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &spki)
            .verify(b"otad", &signature)
            .unwrap();

        let public = Pkcs1PublicEncryptingKey::new(key.decrypting().public_key()).unwrap();
        let mut ciphertext = vec![0u8; public.ciphertext_size()];
        let ciphertext = public.encrypt(b"secret", &mut ciphertext).unwrap().to_vec();
        let private = Pkcs1PrivateDecryptingKey::new(key.decrypting().clone()).unwrap();
        let mut plaintext = vec![0u8; private.min_output_size()];
        assert_eq!(
            private.decrypt(&ciphertext, &mut plaintext).unwrap(),
            b"secret"
        );
    }

    #[test]
    fn generate_and_pkcs8_round_trip() {
        let key = RsaPrivateKey::generate(2048).unwrap();
        assert_eq!(key.bits(), 2048);
        assert_usable(&key);

        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let again = RsaPrivateKey::from_pem(&pem).unwrap();
        assert_eq!(again.public_key_spki_der(), key.public_key_spki_der());
        assert_eq!(again.to_pkcs8_der(), key.to_pkcs8_der());

        let from_der = RsaPrivateKey::from_pkcs8_der(key.to_pkcs8_der()).unwrap();
        assert_eq!(from_der.public_key_spki_der(), key.public_key_spki_der());
        assert!(key.rcgen_key().is_ok());
    }

    #[test]
    fn generate_3072() {
        let key = RsaPrivateKey::generate(3072).unwrap();
        assert_eq!(key.bits(), 3072);
    }

    #[test]
    fn unsupported_sizes() {
        assert_eq!(
            RsaPrivateKey::generate(1024).err(),
            Some(PkiError::UnsupportedKeySize(1024))
        );
        assert_eq!(
            RsaPrivateKey::generate(2047).err(),
            Some(PkiError::UnsupportedKeySize(2047))
        );
    }

    #[test]
    fn debug_hides_key_material() {
        let key = RsaPrivateKey::generate(2048).unwrap();
        assert_eq!(format!("{key:?}"), "RsaPrivateKey { bits: 2048, .. }");
    }

    #[test]
    fn openssl_pkcs1_and_pkcs8_keys_load() {
        let dir = tempfile::tempdir().unwrap();
        let pkcs1 = dir.path().join("pkcs1.pem");
        let pkcs8 = dir.path().join("pkcs8.pem");
        let spki = dir.path().join("spki.der");
        let pkcs1_path = pkcs1.to_str().unwrap();
        openssl(&["genrsa", "-traditional", "-out", pkcs1_path, "2048"]);
        openssl(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            pkcs1_path,
            "-out",
            pkcs8.to_str().unwrap(),
        ]);
        openssl(&[
            "rsa",
            "-in",
            pkcs1_path,
            "-pubout",
            "-outform",
            "DER",
            "-out",
            spki.to_str().unwrap(),
        ]);

        let pkcs1_pem = std::fs::read_to_string(&pkcs1).unwrap();
        assert!(pkcs1_pem.contains("BEGIN RSA PRIVATE KEY"));
        let from_pkcs1 = RsaPrivateKey::from_pem(&pkcs1_pem).unwrap();
        let from_pkcs8 =
            RsaPrivateKey::from_pem(&std::fs::read_to_string(&pkcs8).unwrap()).unwrap();
        let expected_spki = std::fs::read(&spki).unwrap();
        assert_eq!(from_pkcs1.public_key_spki_der(), expected_spki);
        assert_eq!(from_pkcs8.public_key_spki_der(), expected_spki);
        assert_eq!(from_pkcs1.to_pkcs8_der(), from_pkcs8.to_pkcs8_der());
        assert_usable(&from_pkcs1);

        // Our PKCS#8 PEM is readable by OpenSSL and is the same key.
        let ours = dir.path().join("ours.pem");
        let ours_spki = dir.path().join("ours.der");
        std::fs::write(&ours, from_pkcs1.to_pkcs8_pem()).unwrap();
        openssl(&[
            "pkey",
            "-in",
            ours.to_str().unwrap(),
            "-pubout",
            "-outform",
            "DER",
            "-out",
            ours_spki.to_str().unwrap(),
        ]);
        assert_eq!(std::fs::read(&ours_spki).unwrap(), expected_spki);
    }

    #[test]
    fn refusals() {
        assert_eq!(
            RsaPrivateKey::from_pem(
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            )
            .err(),
            Some(PkiError::PemBlockMissing("PRIVATE KEY"))
        );
        let encrypted = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                         DEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert!(matches!(
            RsaPrivateKey::from_pem(encrypted),
            Err(PkiError::PemMalformed(_))
        ));
        assert!(matches!(
            RsaPrivateKey::from_pkcs8_der(b"\x30\x00"),
            Err(PkiError::PrivateKeyRejected(_))
        ));
        assert_eq!(
            RsaPrivateKey::from_pkcs8_der(&vec![0u8; MAX_PRIVATE_KEY_DER_BYTES + 1]).err(),
            Some(PkiError::PrivateKeyTooLarge(MAX_PRIVATE_KEY_DER_BYTES + 1))
        );
    }
}
