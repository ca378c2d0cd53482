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

/// The largest RSA key aws-lc-rs signs with.
pub const MAX_RSA_BITS: usize = 8192;

/// What `otad init --ca-key` takes, said whenever a key is refused for its kind.
pub const SUPPORTED_KEYS: &str = "otad's CA needs an RSA key of 2048 to 8192 bits, in PKCS#1 \
     (BEGIN RSA PRIVATE KEY) or PKCS#8 (BEGIN PRIVATE KEY) PEM, either of them optionally \
     encrypted";

/// Reads a text file (a certificate, key or password), within [`MAX_IMPORT_FILE_BYTES`]. A
/// symlink is refused with the real path to give instead.
pub fn read_text_file(path: &Path) -> Result<String, String> {
    refuse_symlink(path)?;
    let file =
        crate::store::fsutil::open_regular(path).map_err(|err| format!("cannot read: {err}"))?;
    let mut text = String::new();
    std::io::Read::take(file, MAX_IMPORT_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::InvalidData => "binary, not PEM text (DER? convert it: openssl \
                 x509 -inform DER for a certificate, openssl pkey -inform DER for a key)"
                .to_string(),
            _ => format!("cannot read as text: {err}"),
        })?;
    if text.len() as u64 > MAX_IMPORT_FILE_BYTES {
        return Err(format!("larger than {MAX_IMPORT_FILE_BYTES} bytes"));
    }
    Ok(text)
}

/// The files of a CA to import are opened without following a symlink (`O_NOFOLLOW`), so that
/// what is imported is the file named on the command line, not whatever a link, which can be
/// re-pointed at any time, leads to when it is read. Said plainly, with the path to use.
fn refuse_symlink(path: &Path) -> Result<(), String> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink());
    if !is_link {
        return Ok(());
    }
    let instead = match std::fs::canonicalize(path) {
        Ok(real) => format!("give the file itself: {}", real.display()),
        Err(err) => format!("and where it leads cannot be read ({err})"),
    };
    Err(format!(
        "a symbolic link, refused: otad init reads only the file it is named, never where a \
         link leads (a link can be re-pointed to another file); {instead}"
    ))
}

/// A private key file: PKCS#1 or PKCS#8 as `RsaPrivateKey::from_pem` reads them, an encrypted
/// PKCS#8 (RFC 5958 section 3, PBES2 of RFC 8018), or a PKCS#1 key in OpenSSL's legacy
/// encrypted PEM (what micromdm/scep's depot holds).
pub fn read_key_file(path: &Path, password: &KeyPassword) -> Result<RsaPrivateKey, String> {
    let text = Zeroizing::new(read_text_file(path)?);
    let Some(encrypted) = EncryptedKey::find(&text)? else {
        return RsaPrivateKey::from_pem(&text).map_err(|err| match describe_pem(&text) {
            Some(found) => format!("{found}: {SUPPORTED_KEYS}"),
            None => err.to_string(),
        });
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
                // A key that decrypts into a well-formed PrivateKeyInfo had the right
                // password; what it holds is then said, not a wrong password.
                RsaPrivateKey::from_pkcs8_der(decrypted.as_bytes()).map_err(
                    |_| match describe_pkcs8(decrypted.as_bytes()) {
                        Some(found) => KeyDecryptError::Unsupported(format!(
                            "decrypted, it holds {found}: {SUPPORTED_KEYS}"
                        )),
                        None => KeyDecryptError::WrongPassword,
                    },
                )
            }
            EncryptedKey::LegacyPem {
                cipher,
                iv,
                ciphertext,
            } => {
                let key = legacy_pem_key(password, iv, cipher.key_len());
                let plain = cbc_decrypt(*cipher, &key, iv, ciphertext)
                    .ok_or(KeyDecryptError::WrongPassword)?;
                let plain = Zeroizing::new(plain);
                RsaPrivateKey::from_pkcs1_der(&plain).map_err(|_| match rsa_modulus_bits(&plain) {
                    Some(bits) => KeyDecryptError::Unsupported(format!(
                        "decrypted, it holds {}: {SUPPORTED_KEYS}",
                        describe_rsa(bits, "PKCS#1")
                    )),
                    None => KeyDecryptError::WrongPassword,
                })
            }
        }
    }
}

/// What a PEM key file that `RsaPrivateKey::from_pem` refused holds, in words ("an EC key
/// (P-256) in SEC1 PEM"); `None` when there is nothing better to say than its error.
fn describe_pem(text: &str) -> Option<String> {
    // Labels are read from the BEGIN lines: a block with headers (an encrypted SEC1 key)
    // still names itself.
    let labels: Vec<&str> = text
        .lines()
        .filter_map(|line| {
            line.trim()
                .strip_prefix("-----BEGIN ")?
                .strip_suffix("-----")
        })
        .collect();
    let der_of = |label: &str| {
        cert::pem_blocks(text)
            .ok()?
            .into_iter()
            .find(|block| block.label == label)
            .map(|block| Zeroizing::new(block.der))
    };
    if labels.contains(&"PRIVATE KEY") {
        return describe_pkcs8(&der_of("PRIVATE KEY")?);
    }
    if labels.contains(&PKCS1_LABEL) {
        return rsa_modulus_bits(&der_of(PKCS1_LABEL)?).map(|bits| describe_rsa(bits, "PKCS#1"));
    }
    if labels.contains(&"EC PRIVATE KEY") {
        let curve = der_of("EC PRIVATE KEY")
            .and_then(|der| sec1_curve(&der))
            .map(|oid| format!(" ({})", curve_name(&oid)))
            .unwrap_or_default();
        return Some(format!(
            "an EC key{curve} in SEC1 PEM (BEGIN EC PRIVATE KEY)"
        ));
    }
    let other = |label: &str| match label {
        "OPENSSH PRIVATE KEY" => "an OpenSSH key (BEGIN OPENSSH PRIVATE KEY)".to_string(),
        "DSA PRIVATE KEY" => "a DSA key (BEGIN DSA PRIVATE KEY)".to_string(),
        "CERTIFICATE" => "a certificate, not a key (BEGIN CERTIFICATE)".to_string(),
        other => format!("a PEM block labelled {other:?}"),
    };
    match labels.as_slice() {
        [] => Some("no PEM block (-----BEGIN ...-----) in it".to_string()),
        [first, ..] => Some(format!("no private key otad reads, only {}", other(first))),
    }
}

/// What a PKCS#8 PrivateKeyInfo holds when it is not an RSA key otad can use; `None` if it
/// does not parse.
fn describe_pkcs8(der: &[u8]) -> Option<String> {
    use der::asn1::ObjectIdentifier;

    let info = pkcs8::PrivateKeyInfo::try_from(der).ok()?;
    let oid = info.algorithm.oid;
    let found = match oid.to_string().as_str() {
        "1.2.840.113549.1.1.1" => match rsa_modulus_bits(info.private_key) {
            Some(bits) => describe_rsa(bits, "PKCS#8"),
            None => "an RSA key whose RSAPrivateKey is malformed".to_string(),
        },
        "1.2.840.10045.2.1" => {
            let curve = info
                .algorithm
                .parameters
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                .map(|oid| format!(" ({})", curve_name(&oid)))
                .unwrap_or_default();
            format!("an EC key{curve} in PKCS#8")
        }
        "1.2.840.113549.1.1.10" => {
            "an RSASSA-PSS key (RSA held to PSS signatures) in PKCS#8".to_string()
        }
        "1.3.101.112" => "an Ed25519 key in PKCS#8".to_string(),
        "1.3.101.113" => "an Ed448 key in PKCS#8".to_string(),
        "1.3.101.110" => "an X25519 key in PKCS#8".to_string(),
        "1.3.101.111" => "an X448 key in PKCS#8".to_string(),
        "1.2.840.10040.4.1" => "a DSA key in PKCS#8".to_string(),
        other => format!("a PKCS#8 key of algorithm {other}"),
    };
    Some(found)
}

/// The kind of public key a SubjectPublicKeyInfo holds, in words: "an EC key (P-256)", "an
/// Ed25519 key", "an RSA key of 1024 bits"; for an admin told why a certificate is refused.
pub fn describe_public_key(spki_der: &[u8]) -> String {
    use der::asn1::ObjectIdentifier;
    use der::Decode as _;

    let Ok(spki) = spki::SubjectPublicKeyInfoRef::from_der(spki_der) else {
        return "a public key that does not parse".to_string();
    };
    match spki.algorithm.oid.to_string().as_str() {
        "1.2.840.113549.1.1.1" => match cert::RsaPublicKey::from_spki_der(spki_der) {
            Ok(key) => format!("an RSA key of {} bits", key.bits),
            Err(_) => "an RSA key that does not parse".to_string(),
        },
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                .map(|oid| format!(" ({})", curve_name(&oid)))
                .unwrap_or_default();
            format!("an EC key{curve}")
        }
        "1.2.840.113549.1.1.10" => "an RSASSA-PSS key (RSA held to PSS signatures)".to_string(),
        "1.3.101.112" => "an Ed25519 key".to_string(),
        "1.3.101.113" => "an Ed448 key".to_string(),
        "1.2.840.10040.4.1" => "a DSA key".to_string(),
        other => format!("a key of algorithm {other}"),
    }
}

/// What is wrong with an RSA key of `bits` in `form` that aws-lc-rs refused: "an RSA key of
/// 1024 bits in PKCS#8, too small".
fn describe_rsa(bits: usize, form: &str) -> String {
    match bits {
        0..2048 => format!("an RSA key of {bits} bits in {form}, too small"),
        2048..=MAX_RSA_BITS => format!(
            "an RSA key of {bits} bits in {form} that aws-lc-rs refused as malformed or unsafe \
             (its public exponent, or parts that do not fit together)"
        ),
        _ => format!("an RSA key of {bits} bits in {form}, too large"),
    }
}

/// The modulus size of a PKCS#1 RSAPrivateKey (RFC 8017 A.1.2: version, then modulus).
fn rsa_modulus_bits(pkcs1: &[u8]) -> Option<usize> {
    use der::{Decode, Reader, Tagged};

    let outer = der::asn1::AnyRef::from_der(pkcs1).ok()?;
    if outer.tag() != der::Tag::Sequence {
        return None;
    }
    let mut fields = der::SliceReader::new(outer.value()).ok()?;
    let _version: der::asn1::UintRef<'_> = fields.decode().ok()?;
    let modulus: der::asn1::UintRef<'_> = fields.decode().ok()?;
    let bytes = modulus.as_bytes();
    let first = bytes.iter().position(|b| *b != 0)?;
    let significant = bytes.get(first..)?;
    let top = significant.first()?;
    Some(significant.len() * 8 - top.leading_zeros() as usize)
}

/// The named curve of a SEC1 ECPrivateKey (RFC 5915: version, privateKey, [0] parameters).
fn sec1_curve(der: &[u8]) -> Option<der::asn1::ObjectIdentifier> {
    use der::{Decode, Reader};

    let outer = der::asn1::AnyRef::from_der(der).ok()?;
    let mut fields = der::SliceReader::new(outer.value()).ok()?;
    let _version: der::asn1::UintRef<'_> = fields.decode().ok()?;
    let _private: der::asn1::OctetStringRef<'_> = fields.decode().ok()?;
    let parameters: der::asn1::ContextSpecific<der::asn1::ObjectIdentifier> =
        fields.decode().ok()?;
    (parameters.tag_number == der::TagNumber::N0).then_some(parameters.value)
}

/// P-256 and the like for the curves keys are made on; the OID for any other.
fn curve_name(oid: &der::asn1::ObjectIdentifier) -> String {
    match oid.to_string().as_str() {
        "1.2.840.10045.3.1.7" => "P-256".to_string(),
        "1.3.132.0.34" => "P-384".to_string(),
        "1.3.132.0.35" => "P-521".to_string(),
        "1.3.132.0.10" => "secp256k1".to_string(),
        other => format!("curve {other}"),
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

    #[test]
    fn a_public_key_is_described_by_its_kind() {
        let rsa = RsaPrivateKey::generate(2048).unwrap();
        assert_eq!(
            describe_public_key(&rsa.public_key_spki_der()),
            "an RSA key of 2048 bits"
        );
        for (algorithm, said) in [
            (&rcgen::PKCS_ECDSA_P384_SHA384, "an EC key (P-384)"),
            (&rcgen::PKCS_ED25519, "an Ed25519 key"),
        ] {
            let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
            let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
            assert_eq!(describe_public_key(&spki), said);
        }
        assert_eq!(
            describe_public_key(b"junk"),
            "a public key that does not parse"
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn key_file(dir: &Path, name: &str, label: &str, der: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, cert::encode_pem(label, der)).unwrap();
        path
    }

    #[test]
    fn a_key_otad_cannot_use_is_named_with_what_it_takes() {
        use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, ECDSA_P384_SHA384_ASN1_SIGNING};

        let dir = tempfile::tempdir().unwrap();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &rng).unwrap();
        let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let certificate = cert::pem_to_der(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/scep/ca.pem"),
            )
            .unwrap(),
        )
        .unwrap();
        let cases = [
            (
                key_file(dir.path(), "ec.p8", "PRIVATE KEY", ec.as_ref()),
                "an EC key (P-384) in PKCS#8: ",
            ),
            (
                key_file(dir.path(), "ed.p8", "PRIVATE KEY", ed.as_ref()),
                "an Ed25519 key in PKCS#8: ",
            ),
            (
                key_file(dir.path(), "ca.pem", "CERTIFICATE", &certificate),
                "no private key otad reads, only a certificate, not a key (BEGIN CERTIFICATE): ",
            ),
            (
                key_file(dir.path(), "junk.key", "JUNK", b"x"),
                "no private key otad reads, only a PEM block labelled \"JUNK\": ",
            ),
            (
                {
                    let path = dir.path().join("empty.key");
                    std::fs::write(&path, "nothing here\n").unwrap();
                    path
                },
                "no PEM block (-----BEGIN ...-----) in it: ",
            ),
        ];
        let der = dir.path().join("key.der");
        std::fs::write(&der, [0x30, 0x82, 0xff, 0xfe]).unwrap();
        let err = read_key_file(&der, &KeyPassword::NotGiven).err().unwrap();
        assert!(err.starts_with("binary, not PEM text (DER?"), "{err}");
        for (path, found) in cases {
            let err = read_key_file(&path, &KeyPassword::NotGiven).err().unwrap();
            assert!(err.starts_with(found), "{}: {err}", path.display());
            assert!(err.ends_with(SUPPORTED_KEYS), "{}: {err}", path.display());
        }
    }

    #[test]
    fn rsa_modulus_bits_and_sec1_curves_are_read() {
        let key = RsaPrivateKey::generate(2048).unwrap();
        let info = pkcs8::PrivateKeyInfo::try_from(key.to_pkcs8_der()).unwrap();
        assert_eq!(rsa_modulus_bits(info.private_key), Some(2048));
        assert_eq!(rsa_modulus_bits(b"\x30\x03\x02\x01\x00"), None);
        assert_eq!(rsa_modulus_bits(b"junk"), None);
        assert_eq!(
            describe_rsa(1024, "PKCS#1"),
            "an RSA key of 1024 bits in PKCS#1, too small"
        );
        assert!(describe_rsa(16384, "PKCS#8").ends_with("too large"));

        // RFC 5915 ECPrivateKey: version 1, a 1-byte key, [0] prime256v1.
        let sec1 = [
            0x30, 0x12, 0x02, 0x01, 0x01, 0x04, 0x01, 0x07, 0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86,
            0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
        ];
        let curve = sec1_curve(&sec1).unwrap();
        assert_eq!(curve_name(&curve), "P-256");
        let pem = cert::encode_pem("EC PRIVATE KEY", &sec1);
        assert_eq!(
            describe_pem(&pem).unwrap(),
            "an EC key (P-256) in SEC1 PEM (BEGIN EC PRIVATE KEY)"
        );
    }

    #[test]
    fn a_symlinked_key_is_refused_with_the_path_to_give() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.key");
        std::fs::write(&real, "x").unwrap();
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = read_text_file(&link).unwrap_err();
        let real = std::fs::canonicalize(&real).unwrap();
        assert!(err.starts_with("a symbolic link, refused: "), "{err}");
        assert!(
            err.ends_with(&format!("give the file itself: {}", real.display())),
            "{err}"
        );
        let dangling = dir.path().join("dangling.key");
        std::os::unix::fs::symlink(dir.path().join("gone"), &dangling).unwrap();
        let err = read_text_file(&dangling).unwrap_err();
        assert!(err.contains("where it leads cannot be read"), "{err}");
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
