//! Private key files as admins bring them: PKCS#1 and PKCS#8 PEM, PKCS#8 encrypted with
//! PBES2 (RFC 5958 §3, RFC 8018), and OpenSSL's legacy encrypted PEM (`Proc-Type:
//! 4,ENCRYPTED`), which micromdm/scep's `scepserver ca -init` writes for its depot. Used by
//! `otad init --ca-key`; passwords never come from the command line.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::cert;
use super::keys::RsaPrivateKey;
use crate::cms::ContentCipher;

/// Where the password of an encrypted CA key comes from; never from the command line, where
/// other users see it in the process list.
pub enum KeyPassword {
    /// The first line of this file.
    File(PathBuf),
    /// A no-echo prompt on the terminal, asked only if the key is encrypted.
    Prompt,
    /// None: an encrypted key is refused with a hint.
    NotGiven,
}

/// The largest certificate, key or password file `otad init` reads.
pub const MAX_IMPORT_FILE_BYTES: u64 = 1024 * 1024;

/// The most PBKDF2 iterations an encrypted key may ask for (OpenSSL writes 2,048; some
/// tools 600,000); more would keep init busy for minutes.
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;

/// The most memory scrypt may ask for to decrypt a key (128 · r · (N + p) bytes).
pub const MAX_SCRYPT_MEMORY_BYTES: u64 = 256 * 1024 * 1024;

/// Reads a text file (a certificate, key or password), within [`MAX_IMPORT_FILE_BYTES`].
pub fn read_text_file(path: &Path) -> Result<String, String> {
    let file =
        crate::store::fsutil::open_regular(path).map_err(|err| format!("cannot read: {err}"))?;
    let mut text = String::new();
    std::io::Read::take(file, MAX_IMPORT_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|err| format!("cannot read as text: {err}"))?;
    if text.len() as u64 > MAX_IMPORT_FILE_BYTES {
        return Err(format!("larger than {MAX_IMPORT_FILE_BYTES} bytes"));
    }
    Ok(text)
}

/// A private key file: PKCS#1 or PKCS#8 as `RsaPrivateKey::from_pem` reads them, an encrypted
/// PKCS#8 (RFC 5958 section 3, PBES2 of RFC 8018), or a PKCS#1 key in OpenSSL's legacy
/// encrypted PEM (what micromdm/scep's depot holds).
pub fn read_key_file(path: &Path, password: &KeyPassword) -> Result<RsaPrivateKey, String> {
    let text = Zeroizing::new(read_text_file(path)?);
    let Some(encrypted) = EncryptedKey::find(&text)? else {
        return RsaPrivateKey::from_pem(&text).map_err(|err| err.to_string());
    };

    // `scepserver ca -init` encrypts its key with an empty password unless given
    // -key-password; a depot then imports without one.
    if !matches!(password, KeyPassword::File(_)) {
        match encrypted.decrypt(b"") {
            Ok(key) => return Ok(key),
            Err(KeyDecryptError::WrongPassword) => {}
            Err(KeyDecryptError::Unsupported(why)) => return Err(why),
        }
    }
    let password = key_password(password)?;
    encrypted
        .decrypt(password.as_bytes())
        .map_err(|err| match err {
            KeyDecryptError::WrongPassword => "cannot decrypt the key: wrong password".to_string(),
            KeyDecryptError::Unsupported(why) => why,
        })
}

/// PEM label of an EncryptedPrivateKeyInfo (RFC 7468 section 11).
const ENCRYPTED_PKCS8_LABEL: &str = "ENCRYPTED PRIVATE KEY";

/// PEM label of a PKCS#1 RSAPrivateKey, the one OpenSSL's legacy encryption wraps.
const PKCS1_LABEL: &str = "RSA PRIVATE KEY";

/// The re-encryption hint for key formats otad does not read.
const REENCRYPT_HINT: &str = "re-encrypt it with: openssl pkcs8 -topk8 -v2 aes-256-cbc";

/// An encrypted CA key, checked and ready to try a password on.
enum EncryptedKey {
    /// An EncryptedPrivateKeyInfo's DER.
    Pkcs8(Zeroizing<Vec<u8>>),
    /// A legacy encrypted PEM body: its cipher, IV and ciphertext.
    LegacyPem {
        cipher: ContentCipher,
        iv: Vec<u8>,
        ciphertext: Vec<u8>,
    },
}

impl std::fmt::Debug for EncryptedKey {
    /// The kind alone: the ciphertext tells a reader nothing useful.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncryptedKey::Pkcs8(_) => f.write_str("EncryptedKey::Pkcs8"),
            EncryptedKey::LegacyPem { cipher, .. } => {
                write!(f, "EncryptedKey::LegacyPem({cipher})")
            }
        }
    }
}

/// Why a password did not open a key.
enum KeyDecryptError {
    /// The password is wrong (or, once in 256 tries, right padding around no key).
    WrongPassword,
    /// The key uses something otad does not read; the message says what.
    Unsupported(String),
}

impl EncryptedKey {
    /// The encrypted key in `text`, if it holds one; `None` for a plain key.
    fn find(text: &str) -> Result<Option<EncryptedKey>, String> {
        if let Some(legacy) = legacy_pem(text)? {
            return Ok(Some(legacy));
        }
        let block = cert::pem_blocks(text)
            .map_err(|err| err.to_string())?
            .into_iter()
            .find(|block| block.label == ENCRYPTED_PKCS8_LABEL);
        let Some(block) = block else {
            return Ok(None);
        };
        let der = Zeroizing::new(block.der);
        // The decoder knows the schemes it can decrypt; anything else fails here.
        let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice()).map_err(|err| {
            format!(
                "encrypted key: malformed or a scheme otad does not read ({err}); {REENCRYPT_HINT}"
            )
        })?;
        check_key_derivation(&info.encryption_algorithm)?;
        Ok(Some(EncryptedKey::Pkcs8(der)))
    }

    /// The key, if `password` opens it.
    fn decrypt(&self, password: &[u8]) -> Result<RsaPrivateKey, KeyDecryptError> {
        match self {
            EncryptedKey::Pkcs8(der) => {
                let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
                    .map_err(|err| KeyDecryptError::Unsupported(err.to_string()))?;
                let decrypted = info.decrypt(password).map_err(|err| match err {
                    pkcs8::Error::EncryptedPrivateKey(
                        pkcs8::pkcs5::Error::UnsupportedAlgorithm { oid }
                        | pkcs8::pkcs5::Error::AlgorithmParametersInvalid { oid },
                    ) => KeyDecryptError::Unsupported(format!(
                        "encrypted with {oid}, which otad does not read (PBES2 with PBKDF2 or \
                         scrypt, and AES-CBC or DES-EDE3-CBC, it does); {REENCRYPT_HINT}"
                    )),
                    _ => KeyDecryptError::WrongPassword,
                })?;
                RsaPrivateKey::from_pkcs8_der(decrypted.as_bytes())
                    .map_err(|_| KeyDecryptError::WrongPassword)
            }
            EncryptedKey::LegacyPem {
                cipher,
                iv,
                ciphertext,
            } => {
                let key = legacy_pem_key(password, iv, cipher.key_len());
                let plain = cbc_decrypt(*cipher, &key, iv, ciphertext)
                    .ok_or(KeyDecryptError::WrongPassword)?;
                RsaPrivateKey::from_pkcs1_der(&plain).map_err(|_| KeyDecryptError::WrongPassword)
            }
        }
    }
}

/// Refuses key derivations that would run for minutes or take gigabytes.
fn check_key_derivation(scheme: &pkcs8::pkcs5::EncryptionScheme<'_>) -> Result<(), String> {
    use pkcs8::pkcs5::pbes2::Kdf;

    let pkcs8::pkcs5::EncryptionScheme::Pbes2(parameters) = scheme else {
        return Err(format!(
            "encrypted with PBES1, which otad does not read; {REENCRYPT_HINT}"
        ));
    };
    match &parameters.kdf {
        Kdf::Pbkdf2(pbkdf2) if pbkdf2.iteration_count > MAX_PBKDF2_ITERATIONS => Err(format!(
            "encrypted key: {} PBKDF2 iterations is over the limit of {MAX_PBKDF2_ITERATIONS}",
            pbkdf2.iteration_count
        )),
        Kdf::Scrypt(scrypt) => {
            // scrypt holds 128·r·N bytes for its table and 128·r·p for its blocks.
            let block = 128u64.saturating_mul(u64::from(scrypt.block_size));
            let memory = block
                .saturating_mul(scrypt.cost_parameter)
                .saturating_add(block.saturating_mul(u64::from(scrypt.parallelization)));
            if memory > MAX_SCRYPT_MEMORY_BYTES || scrypt.parallelization > 16 {
                return Err(format!(
                    "encrypted key: scrypt parameters ask for {memory} bytes or p = {}, over \
                     the limits of {MAX_SCRYPT_MEMORY_BYTES} bytes and p = 16",
                    scrypt.parallelization
                ));
            }
            Ok(())
        }
        // Other derivations fail in decrypt with their OID named.
        _ => Ok(()),
    }
}

/// A PKCS#1 key in OpenSSL's legacy encrypted PEM (RFC 1421 headers `Proc-Type: 4,ENCRYPTED`
/// and `DEK-Info: CIPHER,IV-HEX`, as OpenSSL and Go's x509.EncryptPEMBlock write them), or
/// `None` if `text` holds no such block.
fn legacy_pem(text: &str) -> Result<Option<EncryptedKey>, String> {
    let begin = format!("-----BEGIN {PKCS1_LABEL}-----");
    let end = format!("-----END {PKCS1_LABEL}-----");
    let mut lines = text
        .lines()
        .map(str::trim)
        .skip_while(|line| *line != begin)
        .skip(1);
    let mut headers = Vec::new();
    let mut body = String::new();
    let mut ended = false;
    for line in lines.by_ref() {
        if line == end {
            ended = true;
            break;
        }
        match line.split_once(':') {
            Some((name, value)) if body.is_empty() => headers.push((name, value.trim())),
            _ => body.push_str(line),
        }
    }
    let encrypted = headers
        .iter()
        .any(|(name, value)| *name == "Proc-Type" && *value == "4,ENCRYPTED");
    if !encrypted {
        return Ok(None);
    }
    if !ended {
        return Err(format!("pem: no END line for {PKCS1_LABEL}"));
    }

    let dek_info = headers
        .iter()
        .find(|(name, _)| *name == "DEK-Info")
        .map(|(_, value)| *value)
        .ok_or("legacy encrypted PEM: no DEK-Info header")?;
    let (name, iv_hex) = dek_info
        .split_once(',')
        .ok_or("legacy encrypted PEM: DEK-Info is not CIPHER,IV")?;
    let cipher = match name {
        "DES-CBC" => ContentCipher::DesCbc,
        "DES-EDE3-CBC" => ContentCipher::Des3Cbc,
        "AES-128-CBC" => ContentCipher::Aes128Cbc,
        "AES-192-CBC" => ContentCipher::Aes192Cbc,
        "AES-256-CBC" => ContentCipher::Aes256Cbc,
        other => {
            return Err(format!(
                "legacy encrypted PEM with {other:?}, which otad does not read; {REENCRYPT_HINT}"
            ))
        }
    };
    let iv = hex_decode(iv_hex)
        .filter(|iv| iv.len() == cipher.iv_len())
        .ok_or("legacy encrypted PEM: DEK-Info IV is not hex of the cipher's block size")?;
    let ciphertext = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &body)
        .map_err(|err| format!("legacy encrypted PEM: body is not base64 ({err})"))?;
    Ok(Some(EncryptedKey::LegacyPem {
        cipher,
        iv,
        ciphertext,
    }))
}

/// OpenSSL's legacy PEM key derivation, EVP_BytesToKey with MD5 and one round: the salt is
/// the IV's first 8 octets, D1 = MD5(password ‖ salt), Dn = MD5(Dn-1 ‖ password ‖ salt),
/// the key the first `len` octets of D1 ‖ D2 ‖ ….
fn legacy_pem_key(password: &[u8], iv: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let salt = iv.get(..8).unwrap_or(iv);
    let mut key = Zeroizing::new(Vec::with_capacity(len + 16));
    let mut previous: Vec<u8> = Vec::new();
    while key.len() < len {
        let input = Zeroizing::new([previous.as_slice(), password, salt].concat());
        previous = md5(&input).to_vec();
        key.extend_from_slice(&previous);
    }
    key.truncate(len);
    key
}

/// CBC decryption with PKCS#7 padding through aws-lc-rs; `None` on any failure, a bad
/// padding above all (a wrong password).
fn cbc_decrypt(cipher: ContentCipher, key: &[u8], iv: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
    use aws_lc_rs::cipher::{DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
    use aws_lc_rs::iv::FixedLength;

    let key = UnboundCipherKey::new(cipher.aws_lc(), key).ok()?;
    let key = PaddedBlockDecryptingKey::cbc_pkcs7(key).ok()?;
    let context = match iv.len() {
        8 => DecryptionContext::Iv64(FixedLength::from(<[u8; 8]>::try_from(iv).ok()?)),
        16 => DecryptionContext::Iv128(FixedLength::from(<[u8; 16]>::try_from(iv).ok()?)),
        _ => return None,
    };
    let mut buffer = Zeroizing::new(ciphertext.to_vec());
    let plain = key.decrypt(&mut buffer, context).ok()?;
    Some(plain.to_vec())
}

fn hex_decode(hex: &str) -> Option<Vec<u8>> {
    let digits = hex.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
        })
        .collect()
}

/// MD5, for OpenSSL's legacy PEM key derivation alone: aws-lc-rs offers no MD5, and
/// nothing here relies on its collision resistance, which is broken.
fn md5(message: &[u8]) -> [u8; 16] {
    use md5::Digest as _;
    md5::Md5::digest(message).into()
}

/// The password of an encrypted key, from where [`KeyPassword`] says.
fn key_password(source: &KeyPassword) -> Result<Zeroizing<String>, String> {
    match source {
        KeyPassword::File(path) => {
            let text = Zeroizing::new(
                read_text_file(path)
                    .map_err(|why| format!("--ca-key-password-file {}: {why}", path.display()))?,
            );
            // The first line, as `openssl -passin file:` reads it.
            let line = text.lines().next().unwrap_or_default();
            Ok(Zeroizing::new(line.to_string()))
        }
        KeyPassword::Prompt => rpassword::prompt_password("CA key password: ")
            .map(Zeroizing::new)
            .map_err(|err| format!("encrypted; cannot read the password from the terminal: {err}")),
        KeyPassword::NotGiven => Err(
            "encrypted; give its password with --ca-key-password-file FILE (or run otad init in \
             a terminal to be asked)"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn legacy_pem_key_derivation_is_evp_bytes_to_key() {
        // `openssl enc -des-ede3-cbc -P -md md5 -pass pass:secret -S 0102030405060708`
        // prints this key: D1 = MD5(password ‖ salt), then MD5(D1 ‖ password ‖ salt).
        let iv = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let key = legacy_pem_key(b"secret", &iv, 24);
        assert_eq!(
            hex(&key),
            "c9e5a1bd216dbe1317e230cef48f38ee7f0e17ad64022144"
        );
        let first = md5(&[&b"secret"[..], &iv].concat());
        assert_eq!(&key[..16], &first[..]);
        assert_eq!(legacy_pem_key(b"", &[9u8; 16], 32).len(), 32);
    }

    #[test]
    fn legacy_pem_headers_are_read_and_refused_where_unknown() {
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                   DEK-Info: AES-128-CBC,000102030405060708090A0B0C0D0E0F\n\nAAAA\n\
                   -----END RSA PRIVATE KEY-----\n";
        let Some(EncryptedKey::LegacyPem { cipher, iv, .. }) = legacy_pem(pem).unwrap() else {
            panic!("a legacy encrypted key");
        };
        assert_eq!(cipher, ContentCipher::Aes128Cbc);
        assert_eq!(iv, (0u8..16).collect::<Vec<_>>());

        let plain = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert!(legacy_pem(plain).unwrap().is_none());
        let unknown = pem.replace("AES-128-CBC", "BF-CBC");
        assert!(legacy_pem(&unknown).unwrap_err().contains("\"BF-CBC\""));
        let short_iv = pem.replace("0E0F", "");
        assert!(legacy_pem(&short_iv).unwrap_err().contains("IV"));
        let no_end = pem.replace("-----END RSA PRIVATE KEY-----", "");
        assert!(legacy_pem(&no_end).unwrap_err().contains("END"));
    }
}
