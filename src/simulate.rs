//! `otad simulate`: a simulated Apple device that walks a whole over-the-air enrollment
//! against a running otad, the way an iPhone or a Mac does it.
//!
//! The steps follow Apple's "Over-the-Air Profile Delivery and Configuration" and SCEP
//! ([RFC 8894](https://www.rfc-editor.org/rfc/rfc8894)):
//!
//! 1. the device CA (ours, standing in for Apple iPhone Device CA) is created on first use and
//!    loaded afterwards; otad trusts it only if `ota.extra_device_ca` lists it;
//! 2. a device identity is issued by it, as Apple's factory does;
//! 3. phase 1 fetches the signed Profile Service payload and its challenge;
//! 4. phase 2 posts the device attributes signed with the device identity and receives a
//!    profile with one SCEP payload;
//! 5. SCEP enrolls a new key for that payload;
//! 6. phase 3 posts the attributes again, signed with the SCEP identity, and decrypts the
//!    final profile's EncryptedPayloadContent.
//!
//! Every piece is public so integration tests can run phases one by one, replay them or mix
//! identities. Every failure is an `Err(String)` that names the phase, the HTTP status and the
//! server's one-line reason. The server's answers are untrusted input: profiles are verified,
//! pinned to the certificate that signed phase 1, and parsed with bounds on size and nesting.

use std::fmt;
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use plist::{Dictionary, Value};

use crate::cms::{self, oid, signed, ContentCipher, DigestAlgorithm};
use crate::httpclient::{self, HttpResponse};
use crate::ota::profile::new_uuid;
use crate::pki::ca::{
    random_serial, CertificateAuthority, IssueRequest, KeyUsageProfile, SubjectAttribute,
};
use crate::pki::keys::RsaPrivateKey;
use crate::pki::{cert, csr};
use crate::scep::message::{self, FailInfo, MessageType, PkiStatus, RequestParams};
use crate::store::fsutil;

pub mod fleet;

/// The device CA certificate's file in the `--device-ca` folder.
pub const DEVICE_CA_CERT_FILE: &str = "device-ca.pem";
/// The device CA key's file in the `--device-ca` folder (mode 0600).
pub const DEVICE_CA_KEY_FILE: &str = "device-ca.key";
/// The lock taken while the device CA is created or loaded, so parallel runs share one CA.
pub const DEVICE_CA_LOCK_FILE: &str = "device-ca.lock";
/// The device CA's common name.
pub const DEVICE_CA_NAME: &str = "otad simulated device CA";
/// The device CA's organization.
pub const DEVICE_CA_ORGANIZATION: &str = "otad test";
/// The device CA's validity.
pub const DEVICE_CA_VALIDITY_DAYS: u32 = 3650;
/// Size of the device identity key and of the device CA's.
pub const DEVICE_KEY_BITS: usize = 2048;
/// Validity of a simulated device identity certificate.
pub const DEVICE_CERT_VALIDITY_DAYS: u32 = 365;

/// PRODUCT the simulated device reports (an iPhone 14 Pro).
pub const PRODUCT: &str = "iPhone15,2";
/// VERSION the simulated device reports (iOS 17.0 build).
pub const VERSION: &str = "21A329";
/// DEVICE_NAME the simulated device reports.
pub const DEVICE_NAME: &str = "otad simulated iPhone";
/// The digest a phase 2 body is signed with.
///
/// TODO: Macs sign phase 2 with SHA-1, and the simulator should too; aws-lc-rs 1.19 has no
/// PKCS#1 v1.5 SHA-1 signing and every private-key operation must stay in aws-lc-rs, so
/// `cms::signed::sign` refuses SHA-1 and phase 2 uses SHA-256 until that changes. The server's
/// SHA-1 verification is covered by the real macOS fixture instead.
pub const PHASE2_DIGEST: DigestAlgorithm = DigestAlgorithm::Sha256;
/// Length of a generated SERIAL.
pub const SERIAL_LEN: usize = 10;

/// Content-Type of a signed configuration profile.
pub const PROFILE_CONTENT_TYPE: &str = "application/x-apple-aspen-config";
/// Content-Type of a phase 2 or 3 body.
pub const SIGNED_BODY_CONTENT_TYPE: &str = "application/pkcs7-signature";
/// Content-Type of a SCEP pkiMessage (RFC 8894 §4.3).
pub const PKI_MESSAGE_CONTENT_TYPE: &str = "application/x-pki-message";
/// Content-Type of a GetCACert answer holding one CA certificate (RFC 8894 §4.2.1.1).
pub const CA_CERT_CONTENT_TYPE: &str = "application/x-x509-ca-cert";
/// Content-Type of a GetCACert answer holding the CA and RA (RFC 8894 §4.2.1.2).
pub const CA_RA_CERT_CONTENT_TYPE: &str = "application/x-x509-ca-ra-cert";

/// Largest property list read from the server.
pub const MAX_PLIST_BYTES: usize = 1024 * 1024;
/// Deepest nesting of arrays and dictionaries read from the server.
pub const MAX_PLIST_DEPTH: usize = 16;
/// Most XML tags in a property list read from the server.
pub const MAX_PLIST_TAGS: usize = 20_000;
/// Most GetCACaps keywords read.
pub const MAX_CA_CAPS: usize = 64;
/// Longest server reason quoted in an error, in characters.
pub const MAX_REASON_CHARS: usize = 200;
/// SCEP key sizes the simulated device can generate.
pub const SCEP_KEY_SIZES: [usize; 3] = [2048, 3072, 4096];
/// Validity of the throwaway self-signed certificate that signs the SCEP request.
const THROWAWAY_VALIDITY: time::Duration = time::Duration::days(1);
/// Backdating of the throwaway certificate, for clock skew between us and the server.
const THROWAWAY_BACKDATE: time::Duration = time::Duration::minutes(5);

/// What `otad simulate` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulateOptions {
    /// The server's base URL (`http://127.0.0.1:8080`); phase 1 is `<url>/ota/enroll`.
    pub url: String,
    /// The folder holding (or about to hold) the device CA.
    pub device_ca_dir: PathBuf,
    /// UDID to report; a random uppercase UUID if `None`.
    pub udid: Option<String>,
    /// SERIAL to report; 10 random uppercase letters and digits if `None`.
    pub serial: Option<String>,
    /// Sign the phase 2 body with signed attributes (as the iOS simulator does) instead of
    /// without (as Macs do).
    pub signed_attributes: bool,
    /// Send only the device certificate in phase 2, not the device CA.
    pub leaf_only: bool,
    /// An enrollment token for phase 1 (`?token=`).
    pub token: Option<String>,
    /// A user name and password for phase 1 (HTTP Basic).
    pub login: Option<(String, String)>,
}

impl SimulateOptions {
    /// A device of otad at `url` with the device CA in `device_ca_dir`, everything else as a
    /// Mac does it: random UDID and serial, no signed attributes, the whole chain, no token
    /// and no login.
    pub fn new(url: impl Into<String>, device_ca_dir: impl Into<PathBuf>) -> SimulateOptions {
        SimulateOptions {
            url: url.into(),
            device_ca_dir: device_ca_dir.into(),
            udid: None,
            serial: None,
            signed_attributes: false,
            leaf_only: false,
            token: None,
            login: None,
        }
    }
}

/// The certificate and key a device got from SCEP, which sign its phase 3 body.
#[derive(Debug)]
pub struct ScepIdentity {
    /// The issued certificate, DER.
    pub certificate: Vec<u8>,
    /// Its key.
    pub key: RsaPrivateKey,
    /// The SCEP CA's certificate, DER.
    pub ca_certificate: Vec<u8>,
}

/// A simulated device: its attributes, its factory identity and, after SCEP, its enrolled one.
#[derive(Debug)]
pub struct Device {
    /// UDID it reports.
    pub udid: String,
    /// SERIAL it reports.
    pub serial: String,
    /// Phase 2 signing with signed attributes.
    pub signed_attributes: bool,
    /// Phase 2 sends the device certificate only.
    pub leaf_only: bool,
    /// The digest phase 2 signs with ([`PHASE2_DIGEST`] unless changed).
    pub phase2_digest: DigestAlgorithm,
    /// The device CA's certificate, DER.
    pub device_ca_certificate: Vec<u8>,
    /// The device identity certificate (CN = a random UUID, as Apple's), DER.
    pub device_certificate: Vec<u8>,
    /// The device identity key.
    pub device_key: RsaPrivateKey,
    /// The SCEP identity, once [`Device::enroll_scep`] succeeded.
    pub scep_identity: Option<ScepIdentity>,
    /// Attributes sent instead of (or besides) the defaults, such as PRODUCT or DEVICE_NAME.
    pub overrides: std::collections::BTreeMap<String, String>,
    /// The enrollment token phase 1 presents.
    pub token: Option<String>,
    /// The user name and password phase 1 presents (HTTP Basic).
    pub login: Option<(String, String)>,
}

/// What phase 1's Profile Service payload asks of the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase1 {
    /// Where phases 2 and 3 are posted.
    pub url: String,
    /// The challenge to echo as CHALLENGE.
    pub challenge: String,
    /// The DeviceAttributes asked for.
    pub attributes: Vec<String>,
    /// The certificate that signed the profile; phases 2 and 3 must be signed by it too.
    pub signer_certificate: Vec<u8>,
}

/// The `com.apple.security.scep` payload of the phase 2 profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScepPayload {
    /// The SCEP URL.
    pub url: String,
    /// The challengePassword to put in the CSR.
    pub challenge: String,
    /// The subject, as (type, value) pairs in order (`("CN", UDID)`, `("O", …)`).
    pub subject: Vec<(String, String)>,
    /// The RSA key size to generate.
    pub keysize: usize,
}

impl ScepPayload {
    /// The subject's CN, if it has one.
    pub fn common_name(&self) -> Option<&str> {
        self.subject
            .iter()
            .find(|(kind, _)| kind == "CN")
            .map(|(_, value)| value.as_str())
    }
}

/// The phase 3 profile, decrypted.
#[derive(Debug, Clone, PartialEq)]
pub struct FinalProfile {
    /// The outer profile (with EncryptedPayloadContent).
    pub profile: Dictionary,
    /// The decrypted payloads.
    pub payloads: Vec<Value>,
    /// Each payload's PayloadType, in order.
    pub payload_types: Vec<String>,
    /// The cipher the server encrypted with.
    pub cipher: ContentCipher,
}

/// What a whole enrollment produced; `Display` prints one `key: value` line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The UDID reported.
    pub udid: String,
    /// The SERIAL reported.
    pub serial: String,
    /// The SCEP certificate's serial, lowercase hex.
    pub certificate_serial: String,
    /// The final profile's payload types.
    pub payload_types: Vec<String>,
    /// The cipher of the final profile's EncryptedPayloadContent.
    pub cipher: ContentCipher,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "udid: {}", self.udid)?;
        writeln!(f, "serial: {}", self.serial)?;
        writeln!(f, "certificate_serial: {}", self.certificate_serial)?;
        writeln!(f, "payload_types: {}", self.payload_types.join(", "))?;
        writeln!(f, "cipher: {}", cipher_name(self.cipher))
    }
}

/// The usual name of a content cipher.
pub fn cipher_name(cipher: ContentCipher) -> &'static str {
    match cipher {
        ContentCipher::DesCbc => "des-cbc",
        ContentCipher::Des3Cbc => "des-ede3-cbc",
        ContentCipher::Aes128Cbc => "aes-128-cbc",
        ContentCipher::Aes192Cbc => "aes-192-cbc",
        ContentCipher::Aes256Cbc => "aes-256-cbc",
    }
}

/// Runs a whole enrollment: device, phase 1, phase 2, SCEP, phase 3.
pub fn run(options: &SimulateOptions) -> Result<Summary, String> {
    let ca_path = options.device_ca_dir.join(DEVICE_CA_CERT_FILE);
    let ca_is_new = !ca_path.exists();
    // Named absolute in what the admin is told to copy into the server's config, where a
    // relative path would be taken relative to the config file's folder, not to here.
    let ca_shown: PathBuf = std::path::absolute(&ca_path)
        .unwrap_or_else(|_| ca_path.clone())
        .components()
        .collect();
    let mut device = Device::new(options)?;
    if ca_is_new {
        eprintln!(
            "otad simulate: created the test device CA {}; the server trusts it only once \
             ota.extra_device_ca lists it and the server was restarted",
            ca_shown.display()
        );
    }

    let phase1 = device.phase1(&options.url)?;
    let scep = device.phase2(&phase1).map_err(|err| {
        if err.contains("not issued by Apple Device CA") {
            format!(
                "{err}\n(list {} in the server's ota.extra_device_ca and restart it)",
                ca_shown.display()
            )
        } else {
            err
        }
    })?;
    let certificate = device.enroll_scep(&scep)?;
    let profile = device.phase3(&phase1)?;

    let certificate_serial =
        cert::serial_hex(&certificate).map_err(|err| format!("scep certificate: {err}"))?;
    Ok(Summary {
        udid: device.udid,
        serial: device.serial,
        certificate_serial,
        payload_types: profile.payload_types,
        cipher: profile.cipher,
    })
}

impl Device {
    /// Loads or creates the device CA, then makes a device identity it issues
    /// (steps 1 and 2).
    pub fn new(options: &SimulateOptions) -> Result<Device, String> {
        let ca = load_or_create_device_ca(&options.device_ca_dir)?;

        let device_key = RsaPrivateKey::generate(DEVICE_KEY_BITS)
            .map_err(|err| format!("device identity: {err}"))?;
        Device::issued_by(&ca, device_key, options)
    }

    /// A device whose identity certificate `ca` issues now for `device_key`: what
    /// [`Device::new`] does after loading the CA and making a key, for a fleet that loads the
    /// CA once.
    pub fn issued_by(
        ca: &CertificateAuthority,
        device_key: RsaPrivateKey,
        options: &SimulateOptions,
    ) -> Result<Device, String> {
        let subject = [(SubjectAttribute::CommonName, new_uuid())];
        let spki = device_key.public_key_spki_der();
        let request = IssueRequest {
            subject: &subject,
            public_key_spki_der: &spki,
            serial: random_serial(),
            validity_days: DEVICE_CERT_VALIDITY_DAYS,
            usage: KeyUsageProfile::DeviceIdentity,
        };
        let device_certificate = ca
            .issue(&request)
            .map_err(|err| format!("device identity: {err}"))?;

        Ok(Device {
            udid: options.udid.clone().unwrap_or_else(new_uuid),
            serial: options.serial.clone().unwrap_or_else(new_serial_number),
            signed_attributes: options.signed_attributes,
            leaf_only: options.leaf_only,
            phase2_digest: PHASE2_DIGEST,
            device_ca_certificate: ca.certificate().to_vec(),
            device_certificate,
            device_key,
            scep_identity: None,
            overrides: std::collections::BTreeMap::new(),
            token: options.token.clone(),
            login: options.login.clone(),
        })
    }

    /// Phase 1: GET `<url>/ota/enroll`, verify the profile and read its Profile Service
    /// payload.
    pub fn phase1(&self, url: &str) -> Result<Phase1, String> {
        const PHASE: &str = "phase 1";
        let mut enroll_url = format!("{}/ota/enroll", url.trim_end_matches('/'));
        if let Some(token) = &self.token {
            // otad's tokens are base64url: nothing in them needs escaping in a query.
            if !crate::gate::tokens::plausible_secret(token) {
                return Err(format!("{PHASE}: the token is not one otad makes"));
            }
            enroll_url.push_str(&format!("?token={token}"));
        }
        let authorization = self.login.as_ref().map(|(user, password)| {
            let pair = zeroize::Zeroizing::new(format!("{user}:{password}"));
            format!(
                "Basic {}",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pair.as_bytes())
            )
        });
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|value| ("Authorization", value.as_str()))
            .collect();
        // The URL may hold the token: errors name the endpoint only.
        let endpoint = enroll_url.split('?').next().unwrap_or_default().to_string();
        let response = httpclient::get_with_headers(&enroll_url, &headers)
            .map_err(|err| format!("{PHASE}: GET {endpoint}: {err}"))?;
        expect_success(PHASE, &response, &[PROFILE_CONTENT_TYPE])?;

        let (signer_certificate, profile) = open_signed_profile(PHASE, &response.body, None)?;
        read_profile_service(&profile, signer_certificate)
    }

    /// The attributes plist a device signs in phases 2 and 3.
    pub fn attributes_plist(&self, challenge: &str) -> Vec<u8> {
        let mut dict = Dictionary::new();
        let attributes = [
            ("UDID", self.udid.as_str()),
            ("SERIAL", self.serial.as_str()),
            ("PRODUCT", PRODUCT),
            ("VERSION", VERSION),
            ("IMEI", ""),
            ("MEID", ""),
            ("DEVICE_NAME", DEVICE_NAME),
            ("CHALLENGE", challenge),
        ];
        for (key, value) in attributes {
            dict.insert(key.to_string(), Value::String(value.to_string()));
        }
        for (key, value) in &self.overrides {
            dict.insert(key.clone(), Value::String(value.clone()));
        }
        to_xml(&Value::Dictionary(dict))
    }

    /// The phase 2 body: the attributes signed as a Mac signs them (no signed attributes
    /// unless asked; [`Device::phase2_digest`], see [`PHASE2_DIGEST`]), with the device
    /// certificate and (unless leaf only) the device CA.
    pub fn phase2_body(&self, challenge: &str) -> Result<Vec<u8>, String> {
        let ca = [self.device_ca_certificate.as_slice()];
        let certificates: &[&[u8]] = if self.leaf_only { &[] } else { &ca };
        let signer = signed::SignerIdentity {
            certificate: &self.device_certificate,
            key: self.device_key.signing(),
        };
        let options =
            signed::SignOptions::data(self.phase2_digest, self.signed_attributes, certificates);
        signed::sign(&self.attributes_plist(challenge), &signer, &options)
            .map_err(|err| format!("phase 2: signing the attributes: {err}"))
    }

    /// Phase 2: POST the signed attributes, verify the answer and read its SCEP payload.
    pub fn phase2(&self, phase1: &Phase1) -> Result<ScepPayload, String> {
        const PHASE: &str = "phase 2";
        let body = self.phase2_body(&phase1.challenge)?;
        let profile = post_signed_body(PHASE, phase1, &body)?;
        read_scep_profile(&profile)
    }

    /// SCEP (RFC 8894): GetCACaps, GetCACert, then a PKCSReq for a new key with the
    /// payload's challenge. Keeps the issued identity for phase 3 and returns its certificate.
    pub fn enroll_scep(&mut self, scep: &ScepPayload) -> Result<Vec<u8>, String> {
        const STEP: &str = "scep PKIOperation";
        if !SCEP_KEY_SIZES.contains(&scep.keysize) {
            return Err(format!(
                "{STEP}: Keysize {} is not one this device makes",
                scep.keysize
            ));
        }

        let key = RsaPrivateKey::generate(scep.keysize).map_err(|err| format!("{STEP}: {err}"))?;
        self.enroll_scep_with_key(scep, key)
    }

    /// SCEP as [`Device::enroll_scep`] does it, with a key made beforehand (of the payload's
    /// Keysize), so that a fleet can time the exchange apart from key generation.
    pub fn enroll_scep_with_key(
        &mut self,
        scep: &ScepPayload,
        key: RsaPrivateKey,
    ) -> Result<Vec<u8>, String> {
        const STEP: &str = "scep PKIOperation";
        if key.bits() != scep.keysize {
            return Err(format!(
                "{STEP}: the key has {} bits, the payload asks for {}",
                key.bits(),
                scep.keysize
            ));
        }

        let caps = get_ca_caps(&scep.url)?;
        let digest = choose_digest(&caps);
        let cipher = choose_cipher(&caps);
        let authorities = get_ca_cert(&scep.url)?;

        let common_name = scep.common_name().unwrap_or(&self.udid).to_string();
        let request = csr::build(&key, &common_name, Some(&scep.challenge))
            .map_err(|err| format!("{STEP}: certification request: {err}"))?;
        let throwaway = self_signed_certificate(&key, &common_name)?;

        let transaction_id = transaction_id(&key);
        let sender_nonce = message::new_nonce();
        let params = RequestParams {
            message_type: MessageType::PkcsReq,
            transaction_id: &transaction_id,
            sender_nonce,
            digest,
            cipher,
            recipient: authorities.recipient(),
            signer_certificate: &throwaway,
            signer_key: key.signing(),
        };
        let pki_message =
            message::build_request(&request, &params).map_err(|err| format!("{STEP}: {err}"))?;

        let url = with_operation(&scep.url, "PKIOperation");
        let response = httpclient::post(&url, PKI_MESSAGE_CONTENT_TYPE, &pki_message)
            .map_err(|err| format!("{STEP}: POST {url}: {err}"))?;
        expect_success(STEP, &response, &[PKI_MESSAGE_CONTENT_TYPE])?;

        let signers = authorities.signers();
        let reply = message::parse_reply(&response.body, &signers, &throwaway, key.decrypting())
            .map_err(|err| format!("{STEP}: {err}"))?;
        match reply.status {
            PkiStatus::Success => {}
            PkiStatus::Failure => {
                let why = reply.fail_info.map_or("no failInfo", fail_info_name);
                return Err(format!("{STEP}: CertRep FAILURE ({why})"));
            }
            PkiStatus::Pending => {
                return Err(format!(
                    "{STEP}: CertRep PENDING (polling is not simulated)"
                ));
            }
        }
        if reply.transaction_id != transaction_id {
            return Err(format!("{STEP}: CertRep transactionID is not ours"));
        }
        if reply.recipient_nonce != sender_nonce {
            return Err(format!(
                "{STEP}: CertRep recipientNonce is not our senderNonce"
            ));
        }

        let ours = key.public_key_spki_der();
        let certificate = reply
            .certificates
            .into_iter()
            .find(|c| cert::spki_der(c).is_ok_and(|spki| spki == ours))
            .ok_or_else(|| format!("{STEP}: CertRep holds no certificate for our key"))?;
        let ca_spki = cert::spki_der(&authorities.ca).map_err(|err| format!("{STEP}: {err}"))?;
        if !cert::is_signed_by(&certificate, &ca_spki) {
            return Err(format!(
                "{STEP}: the issued certificate is not signed by the SCEP CA"
            ));
        }

        self.scep_identity = Some(ScepIdentity {
            certificate: certificate.clone(),
            key,
            ca_certificate: authorities.ca,
        });
        Ok(certificate)
    }

    /// The phase 3 body: the same attributes, signed with the SCEP identity (SHA-256, signed
    /// attributes), its certificate only.
    pub fn phase3_body(&self, challenge: &str) -> Result<Vec<u8>, String> {
        let identity = self
            .scep_identity
            .as_ref()
            .ok_or("phase 3: no SCEP identity yet")?;
        let signer = signed::SignerIdentity {
            certificate: &identity.certificate,
            key: identity.key.signing(),
        };
        let options = signed::SignOptions::data(DigestAlgorithm::Sha256, true, &[]);
        signed::sign(&self.attributes_plist(challenge), &signer, &options)
            .map_err(|err| format!("phase 3: signing the attributes: {err}"))
    }

    /// Phase 3: POST the attributes signed with the SCEP identity; verify the answer and
    /// decrypt its EncryptedPayloadContent.
    pub fn phase3(&self, phase1: &Phase1) -> Result<FinalProfile, String> {
        const PHASE: &str = "phase 3";
        let body = self.phase3_body(&phase1.challenge)?;
        let identity = self
            .scep_identity
            .as_ref()
            .ok_or("phase 3: no SCEP identity yet")?;
        let profile = post_signed_body(PHASE, phase1, &body)?;
        read_final_profile(profile, identity)
    }
}

/// Loads the device CA from `dir`, or creates it there on first use. A lock file in `dir`
/// keeps parallel runs from creating two.
pub fn load_or_create_device_ca(dir: &Path) -> Result<CertificateAuthority, String> {
    let shown = dir.display();
    fs::create_dir_all(dir).map_err(|err| format!("device CA: {shown}: cannot create: {err}"))?;
    let _lock = fsutil::FileLock::acquire(&dir.join(DEVICE_CA_LOCK_FILE))
        .map_err(|err| format!("device CA: {shown}: cannot lock: {err}"))?;

    let cert_path = dir.join(DEVICE_CA_CERT_FILE);
    let key_path = dir.join(DEVICE_CA_KEY_FILE);
    let read = |path: &Path| {
        fsutil::read_optional(path)
            .map_err(|err| format!("device CA: {}: cannot read: {err}", path.display()))
    };
    match (read(&cert_path)?, read(&key_path)?) {
        (Some(cert_pem), Some(key_pem)) => load_device_ca(&cert_path, &cert_pem, &key_pem),
        (None, None) => {
            let ca = CertificateAuthority::create(
                DEVICE_CA_NAME,
                DEVICE_CA_ORGANIZATION,
                DEVICE_CA_VALIDITY_DAYS,
            )
            .map_err(|err| format!("device CA: {err}"))?;
            // The key first: a crash in between leaves a key without a certificate, which the
            // next run refuses instead of pairing a certificate with no key.
            let key_pem = ca.key().to_pkcs8_pem();
            fsutil::write_atomic(&key_path, key_pem.as_bytes(), 0o600)
                .map_err(|err| format!("device CA: {}: cannot write: {err}", key_path.display()))?;
            let cert_pem = cert::der_to_pem(ca.certificate());
            fsutil::write_atomic(&cert_path, cert_pem.as_bytes(), 0o644).map_err(|err| {
                format!("device CA: {}: cannot write: {err}", cert_path.display())
            })?;
            Ok(ca)
        }
        _ => Err(format!(
            "device CA: {shown}: holds only one of {DEVICE_CA_CERT_FILE} and \
             {DEVICE_CA_KEY_FILE}; restore the other or remove it"
        )),
    }
}

/// Reads the device CA's PEM files; the key must belong to the certificate.
fn load_device_ca(
    cert_path: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertificateAuthority, String> {
    let shown = cert_path.display();
    let cert_pem =
        std::str::from_utf8(cert_pem).map_err(|_| format!("device CA: {shown}: not PEM"))?;
    let key_pem = std::str::from_utf8(key_pem)
        .map_err(|_| format!("device CA: {DEVICE_CA_KEY_FILE}: not PEM"))?;
    let certificate =
        cert::pem_to_der(cert_pem).map_err(|err| format!("device CA: {shown}: {err}"))?;
    let key = RsaPrivateKey::from_pem(key_pem)
        .map_err(|err| format!("device CA: {DEVICE_CA_KEY_FILE}: {err}"))?;
    CertificateAuthority::load(&certificate, key)
        .map_err(|err| format!("device CA: {shown}: {err}"))
}

/// A random serial number of [`SERIAL_LEN`] uppercase letters and digits.
pub fn new_serial_number() -> String {
    const ALPHABET: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    // 252 is the largest multiple of 36 below 256: bytes from 252 up are redrawn, so every
    // character is equally likely.
    const LIMIT: u8 = 252;

    let mut serial = String::with_capacity(SERIAL_LEN);
    while serial.len() < SERIAL_LEN {
        let mut bytes = [0u8; 16];
        let _ = aws_lc_rs::rand::fill(&mut bytes);
        for byte in bytes.iter().filter(|b| **b < LIMIT) {
            if serial.len() == SERIAL_LEN {
                break;
            }
            if let Some(c) = ALPHABET.get(usize::from(*byte % 36)) {
                serial.push(char::from(*c));
            }
        }
    }
    serial
}

/// Fails unless the answer is 200 with one of the expected content types; a refusal quotes
/// the server's one-line reason.
fn expect_success(
    phase: &str,
    response: &HttpResponse,
    content_types: &[&str],
) -> Result<(), String> {
    if response.status != 200 {
        return Err(format!(
            "{phase}: HTTP {}: {}",
            response.status,
            reason(&response.body)
        ));
    }
    let media = response.media_type();
    if !media.as_deref().is_some_and(|m| content_types.contains(&m)) {
        return Err(format!(
            "{phase}: HTTP 200 with Content-Type {}, expected {}",
            response.content_type.as_deref().unwrap_or("(none)"),
            content_types.join(" or ")
        ));
    }
    Ok(())
}

/// The first line of an error body, printable and bounded.
fn reason(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or_default();
    let clean: String = line
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON_CHARS)
        .collect();
    if clean.is_empty() {
        "no reason given".to_string()
    } else {
        clean
    }
}

/// POSTs a signed phase 2 or 3 body to the phase 1 URL and opens the signed profile that
/// comes back, requiring the phase 1 signer.
fn post_signed_body(phase: &str, phase1: &Phase1, body: &[u8]) -> Result<Dictionary, String> {
    let response = httpclient::post(&phase1.url, SIGNED_BODY_CONTENT_TYPE, body)
        .map_err(|err| format!("{phase}: POST {}: {err}", phase1.url))?;
    expect_success(phase, &response, &[PROFILE_CONTENT_TYPE])?;
    let (_, profile) =
        open_signed_profile(phase, &response.body, Some(&phase1.signer_certificate))?;
    Ok(profile)
}

/// Verifies a signed profile and parses its plist dictionary. With `pinned`, the signer must
/// be that certificate: a device keeps talking to the server that signed phase 1.
pub fn open_signed_profile(
    phase: &str,
    body: &[u8],
    pinned: Option<&[u8]>,
) -> Result<(Vec<u8>, Dictionary), String> {
    let message =
        signed::verify(body).map_err(|err| format!("{phase}: profile signature: {err}"))?;
    if pinned.is_some_and(|pinned| pinned != message.signer.certificate.as_slice()) {
        return Err(format!(
            "{phase}: profile signer: not the certificate that signed phase 1"
        ));
    }
    if message.content_type != oid::ID_DATA {
        return Err(format!("{phase}: profile: eContentType is not id-data"));
    }
    let content = message
        .content
        .as_deref()
        .ok_or_else(|| format!("{phase}: profile: no content"))?;
    let profile = parse_plist(content)
        .map_err(|err| format!("{phase}: profile: {err}"))?
        .into_dictionary()
        .ok_or_else(|| format!("{phase}: profile: not a plist dictionary"))?;
    Ok((message.signer.certificate, profile))
}

/// Parses an XML property list after checking its size, nesting and tag count, so a hostile
/// server cannot make the plist builder recurse or allocate without bound.
pub fn parse_plist(bytes: &[u8]) -> Result<Value, String> {
    if bytes.len() > MAX_PLIST_BYTES {
        return Err(format!(
            "plist: {} bytes, over the {MAX_PLIST_BYTES} allowed",
            bytes.len()
        ));
    }

    crate::plistshape::check(bytes, MAX_PLIST_DEPTH, MAX_PLIST_TAGS)
        .map_err(|err| err.to_string())?;
    Value::from_reader_xml(Cursor::new(bytes)).map_err(|err| format!("plist: {err}"))
}

/// XML serialisation of a plist value.
fn to_xml(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing a value built in memory to a Vec cannot fail.
    let _ = value.to_writer_xml(&mut out);
    out
}

fn string_field(dict: &Dictionary, key: &str, what: &str) -> Result<String, String> {
    dict.get(key)
        .and_then(Value::as_string)
        .map(str::to_string)
        .ok_or_else(|| format!("{what}: no {key} string"))
}

/// Reads phase 1's Profile Service payload.
pub fn read_profile_service(
    profile: &Dictionary,
    signer_certificate: Vec<u8>,
) -> Result<Phase1, String> {
    const WHAT: &str = "phase 1: profile";
    let payload_type = string_field(profile, "PayloadType", WHAT)?;
    if payload_type != "Profile Service" {
        return Err(format!(
            "{WHAT}: PayloadType is {payload_type:?}, not \"Profile Service\""
        ));
    }
    let content = profile
        .get("PayloadContent")
        .and_then(Value::as_dictionary)
        .ok_or_else(|| format!("{WHAT}: no PayloadContent dictionary"))?;

    let url = string_field(content, "URL", WHAT)?;
    let challenge = string_field(content, "Challenge", WHAT)?;
    let attributes = match content.get("DeviceAttributes") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_string().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("{WHAT}: DeviceAttributes holds a non-string"))?,
        Some(_) => return Err(format!("{WHAT}: DeviceAttributes is not an array")),
    };
    Ok(Phase1 {
        url,
        challenge,
        attributes,
        signer_certificate,
    })
}

/// Reads the phase 2 Configuration profile's one `com.apple.security.scep` payload.
pub fn read_scep_profile(profile: &Dictionary) -> Result<ScepPayload, String> {
    const WHAT: &str = "phase 2: profile";
    let payload_type = string_field(profile, "PayloadType", WHAT)?;
    if payload_type != "Configuration" {
        return Err(format!(
            "{WHAT}: PayloadType is {payload_type:?}, not \"Configuration\""
        ));
    }
    let payloads = profile
        .get("PayloadContent")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{WHAT}: no PayloadContent array"))?;
    let mut sceps = payloads
        .iter()
        .filter_map(Value::as_dictionary)
        .filter(|payload| {
            payload.get("PayloadType").and_then(Value::as_string) == Some("com.apple.security.scep")
        });
    let scep = sceps
        .next()
        .ok_or_else(|| format!("{WHAT}: no com.apple.security.scep payload"))?;
    if sceps.next().is_some() {
        return Err(format!(
            "{WHAT}: more than one com.apple.security.scep payload"
        ));
    }

    const SCEP: &str = "phase 2: SCEP payload";
    let content = scep
        .get("PayloadContent")
        .and_then(Value::as_dictionary)
        .ok_or_else(|| format!("{SCEP}: no PayloadContent dictionary"))?;
    let url = string_field(content, "URL", SCEP)?;
    let challenge = string_field(content, "Challenge", SCEP)?;
    let subject = match content.get("Subject") {
        None => Vec::new(),
        Some(value) => read_subject(value).ok_or_else(|| format!("{SCEP}: malformed Subject"))?,
    };
    let keysize = content
        .get("Keysize")
        .and_then(Value::as_unsigned_integer)
        .and_then(|k| usize::try_from(k).ok())
        .ok_or_else(|| format!("{SCEP}: no Keysize integer"))?;
    Ok(ScepPayload {
        url,
        challenge,
        subject,
        keysize,
    })
}

/// A SCEP payload's Subject: an array of RDNs, each an array of `[type, value]` arrays.
fn read_subject(value: &Value) -> Option<Vec<(String, String)>> {
    let mut subject = Vec::new();
    for rdn in value.as_array()? {
        for pair in rdn.as_array()? {
            match pair.as_array()?.as_slice() {
                [kind, value] => subject.push((
                    kind.as_string()?.to_string(),
                    value.as_string()?.to_string(),
                )),
                _ => return None,
            }
        }
    }
    Some(subject)
}

/// Decrypts the phase 3 profile's EncryptedPayloadContent with the SCEP identity and reads
/// the payloads.
pub fn read_final_profile(
    profile: Dictionary,
    identity: &ScepIdentity,
) -> Result<FinalProfile, String> {
    const WHAT: &str = "phase 3: profile";
    let payload_type = string_field(&profile, "PayloadType", WHAT)?;
    if payload_type != "Configuration" {
        return Err(format!(
            "{WHAT}: PayloadType is {payload_type:?}, not \"Configuration\""
        ));
    }
    if profile.contains_key("PayloadContent") {
        return Err(format!(
            "{WHAT}: has a clear PayloadContent besides the encrypted one"
        ));
    }
    let sealed = profile
        .get("EncryptedPayloadContent")
        .and_then(Value::as_data)
        .ok_or_else(|| format!("{WHAT}: no EncryptedPayloadContent data"))?;

    let opened = cms::enveloped::decrypt(sealed, &identity.certificate, identity.key.decrypting())
        .map_err(|err| format!("{WHAT}: EncryptedPayloadContent: {err}"))?;
    let payloads = match parse_plist(&opened.content) {
        Ok(Value::Array(payloads)) => payloads,
        Ok(_) => {
            return Err(format!(
                "{WHAT}: the decrypted content is not a plist array"
            ))
        }
        Err(err) => return Err(format!("{WHAT}: decrypted content: {err}")),
    };
    let payload_types = payloads
        .iter()
        .map(|payload| {
            payload
                .as_dictionary()
                .and_then(|p| p.get("PayloadType"))
                .and_then(Value::as_string)
                .map(str::to_string)
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| format!("{WHAT}: a decrypted payload has no PayloadType"))?;
    Ok(FinalProfile {
        profile,
        payloads,
        payload_types,
        cipher: opened.cipher,
    })
}

/// `url?operation=op`, or `&operation=op` when the URL already has a query.
fn with_operation(url: &str, operation: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}operation={operation}")
}

/// GetCACaps (RFC 8894 §3.5.1): the keywords, one per line.
fn get_ca_caps(scep_url: &str) -> Result<Vec<String>, String> {
    const STEP: &str = "scep GetCACaps";
    let url = with_operation(scep_url, "GetCACaps");
    let response = httpclient::get(&url).map_err(|err| format!("{STEP}: GET {url}: {err}"))?;
    if response.status != 200 {
        return Err(format!(
            "{STEP}: HTTP {}: {}",
            response.status,
            reason(&response.body)
        ));
    }
    Ok(parse_ca_caps(&response.body))
}

/// The GetCACaps keywords, trimmed, at most [`MAX_CA_CAPS`].
pub fn parse_ca_caps(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .take(MAX_CA_CAPS)
        .map(str::to_string)
        .collect()
}

fn has_cap(caps: &[String], name: &str) -> bool {
    caps.iter().any(|cap| cap.eq_ignore_ascii_case(name))
}

/// SHA-256 if the CA offers it (or "SCEPStandard", which implies it), else SHA-512 if
/// offered, else SHA-256 anyway (RFC 8894 §3.5.2).
pub fn choose_digest(caps: &[String]) -> DigestAlgorithm {
    if has_cap(caps, "SHA-512") && !has_cap(caps, "SHA-256") && !has_cap(caps, "SCEPStandard") {
        DigestAlgorithm::Sha512
    } else {
        // A CA that offers only SHA-1 (or says nothing) still gets SHA-256: this device cannot
        // sign SHA-1 (see PHASE2_DIGEST), and such a CA refusing with badAlg says so clearly.
        DigestAlgorithm::Sha256
    }
}

/// AES-128 when the CA offers "AES" (or "SCEPStandard", which implies it), else triple DES
/// (RFC 8894 §3.5.2).
pub fn choose_cipher(caps: &[String]) -> ContentCipher {
    if has_cap(caps, "AES") || has_cap(caps, "SCEPStandard") {
        ContentCipher::Aes128Cbc
    } else {
        ContentCipher::Des3Cbc
    }
}

/// The SCEP CA and, if it has one, its RA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorities {
    /// The CA certificate (self-signed), DER.
    pub ca: Vec<u8>,
    /// The RA certificate (not a CA), DER, if GetCACert sent one.
    pub ra: Option<Vec<u8>>,
}

impl Authorities {
    /// Who a request is encrypted to: the RA if there is one, else the CA.
    pub fn recipient(&self) -> &[u8] {
        self.ra.as_deref().unwrap_or(&self.ca)
    }

    /// Who may sign a CertRep: the RA and the CA.
    pub fn signers(&self) -> Vec<&[u8]> {
        let mut signers: Vec<&[u8]> = self.ra.iter().map(Vec::as_slice).collect();
        signers.push(&self.ca);
        signers
    }
}

/// GetCACert (RFC 8894 §4.2).
fn get_ca_cert(scep_url: &str) -> Result<Authorities, String> {
    const STEP: &str = "scep GetCACert";
    let url = with_operation(scep_url, "GetCACert");
    let response = httpclient::get(&url).map_err(|err| format!("{STEP}: GET {url}: {err}"))?;
    expect_success(
        STEP,
        &response,
        &[CA_CERT_CONTENT_TYPE, CA_RA_CERT_CONTENT_TYPE],
    )?;
    let media = response.media_type().unwrap_or_default();
    read_ca_cert(&media, &response.body).map_err(|err| format!("{STEP}: {err}"))
}

/// Reads a GetCACert answer: one DER certificate, or a certificates-only SignedData where the
/// CA is the self-signed certificate and the RA the one that is not a CA.
pub fn read_ca_cert(media_type: &str, body: &[u8]) -> Result<Authorities, String> {
    if media_type == CA_CERT_CONTENT_TYPE {
        if !is_self_signed_ca(body) {
            return Err("the certificate is not a self-signed CA".into());
        }
        return Ok(Authorities {
            ca: body.to_vec(),
            ra: None,
        });
    }

    let certificates = cms::parse_certs_only(body).map_err(|err| format!("certificates: {err}"))?;
    let ca = certificates
        .iter()
        .find(|c| is_self_signed_ca(c))
        .cloned()
        .ok_or("no self-signed CA certificate among those sent")?;
    let ra = certificates
        .iter()
        .find(|c| is_ca(c) == Some(false))
        .cloned();
    Ok(Authorities { ca, ra })
}

/// `Some(true)` for a CA certificate (basicConstraints cA), `Some(false)` for any other
/// certificate, `None` if it does not parse.
fn is_ca(certificate: &[u8]) -> Option<bool> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let constraints = parsed.basic_constraints().ok()?;
    Some(constraints.is_some_and(|c| c.value.ca))
}

/// A CA certificate whose signature verifies under its own key.
fn is_self_signed_ca(certificate: &[u8]) -> bool {
    is_ca(certificate) == Some(true)
        && cert::spki_der(certificate).is_ok_and(|spki| cert::is_signed_by(certificate, &spki))
}

/// The transactionID: hex SHA-256 of our public key, as RFC 8894 §3.2.1.1 suggests.
fn transaction_id(key: &RsaPrivateKey) -> String {
    DigestAlgorithm::Sha256
        .digest(&key.public_key_spki_der())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// The throwaway self-signed certificate that signs a PKCSReq (RFC 8894 §2.3).
fn self_signed_certificate(key: &RsaPrivateKey, common_name: &str) -> Result<Vec<u8>, String> {
    const STEP: &str = "scep PKIOperation: self-signed certificate";
    let now = time::OffsetDateTime::now_utc();
    let mut params = rcgen::CertificateParams::default();
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()));
    let out_of_range = || format!("{STEP}: the clock is out of range");
    params.not_before = now
        .checked_sub(THROWAWAY_BACKDATE)
        .ok_or_else(out_of_range)?;
    params.not_after = now
        .checked_add(THROWAWAY_VALIDITY)
        .ok_or_else(out_of_range)?;

    let signer = key.rcgen_key().map_err(|err| format!("{STEP}: {err}"))?;
    let certificate = params
        .self_signed(&signer)
        .map_err(|err| format!("{STEP}: {err}"))?;
    Ok(certificate.der().to_vec())
}

/// failInfo as RFC 8894 §3.2.1.4 names it.
fn fail_info_name(fail_info: FailInfo) -> &'static str {
    match fail_info {
        FailInfo::BadAlg => "badAlg",
        FailInfo::BadMessageCheck => "badMessageCheck",
        FailInfo::BadRequest => "badRequest",
        FailInfo::BadTime => "badTime",
        FailInfo::BadCertId => "badCertID",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ota::profile::{self, Branding};
    use crate::ota::{self as server_ota, SignerKind};
    use crate::pki::apple::TrustAnchor;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;

    fn options(dir: &Path) -> SimulateOptions {
        SimulateOptions::new("http://127.0.0.1:9", dir)
    }

    fn brand() -> Branding {
        Branding {
            organization: "Example".into(),
            identifier: "com.example.otad".into(),
            display_name: "Enroll".into(),
        }
    }

    /// A CA with one issued identity of the given usage, standing in for a server's.
    fn issued_identity(usage: KeyUsageProfile, cn: &str) -> (CertificateAuthority, ScepIdentity) {
        let ca = CertificateAuthority::create("test CA", "test", 30).unwrap();
        let key = RsaPrivateKey::generate(2048).unwrap();
        let spki = key.public_key_spki_der();
        let subject = [(SubjectAttribute::CommonName, cn.to_string())];
        let certificate = ca
            .issue(&IssueRequest {
                subject: &subject,
                public_key_spki_der: &spki,
                serial: random_serial(),
                validity_days: 30,
                usage,
            })
            .unwrap();
        let ca_certificate = ca.certificate().to_vec();
        (
            ca,
            ScepIdentity {
                certificate,
                key,
                ca_certificate,
            },
        )
    }

    /// Signs a profile as otad does (SHA-256, signed attributes, the CA included).
    fn sign_profile(signer: &ScepIdentity, profile: &Value) -> Vec<u8> {
        let identity = signed::SignerIdentity {
            certificate: &signer.certificate,
            key: signer.key.signing(),
        };
        let certificates = [signer.ca_certificate.as_slice()];
        let options = signed::SignOptions::data(DigestAlgorithm::Sha256, true, &certificates);
        signed::sign(&to_xml(profile), &identity, &options).unwrap()
    }

    fn is_uuid(text: &str) -> bool {
        let groups: Vec<&str> = text.split('-').collect();
        groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
            && text
                .chars()
                .all(|c| c == '-' || c.is_ascii_digit() || c.is_ascii_uppercase())
    }

    /// A request as the fake server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        target: String,
        content_type: Option<String>,
        body: Vec<u8>,
    }

    type Handler = Box<dyn FnMut(&Seen) -> (u16, &'static str, Vec<u8>) + Send>;

    /// Serves `connections` requests on `listener` with `handler`, one per connection.
    fn serve(listener: TcpListener, connections: usize, mut handler: Handler) -> JoinHandle<()> {
        std::thread::spawn(move || {
            for _ in 0..connections {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(&stream);
                let mut first = String::new();
                reader.read_line(&mut first).unwrap();
                let target = first.split(' ').nth(1).unwrap_or_default().to_string();
                let (mut length, mut content_type) = (0usize, None);
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    let (name, value) = line.split_once(':').unwrap();
                    match name.to_ascii_lowercase().as_str() {
                        "content-length" => length = value.trim().parse().unwrap(),
                        "content-type" => content_type = Some(value.trim().to_string()),
                        _ => {}
                    }
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).unwrap();

                let (status, reply_type, reply) = handler(&Seen {
                    target,
                    content_type,
                    body,
                });
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {reply_type}\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n",
                    reply.len()
                );
                let mut writer = &stream;
                writer.write_all(head.as_bytes()).unwrap();
                writer.write_all(&reply).unwrap();
            }
        })
    }

    fn listen() -> (TcpListener, String) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        (listener, url)
    }

    #[test]
    fn the_device_ca_is_created_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("device-ca");
        let first = Device::new(&options(&ca_dir)).unwrap();
        let key_mode = fs::metadata(ca_dir.join(DEVICE_CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let pem = fs::read_to_string(ca_dir.join(DEVICE_CA_CERT_FILE)).unwrap();
        assert_eq!(cert::pem_to_der(&pem).unwrap(), first.device_ca_certificate);
        let summary = cert::summarize(&first.device_ca_certificate).unwrap();
        assert_eq!(summary.common_name.as_deref(), Some(DEVICE_CA_NAME));

        let second = Device::new(&options(&ca_dir)).unwrap();
        assert_eq!(second.device_ca_certificate, first.device_ca_certificate);
        assert_ne!(second.device_certificate, first.device_certificate);
        assert_ne!(second.udid, first.udid);

        let anchor = TrustAnchor::from_der("simulated", &first.device_ca_certificate).unwrap();
        anchor.verify_issued(&first.device_certificate).unwrap();
        anchor.verify_issued(&second.device_certificate).unwrap();
        assert_eq!(
            cert::spki_der(&first.device_certificate).unwrap(),
            first.device_key.public_key_spki_der()
        );
        let device_cn = cert::summarize(&first.device_certificate)
            .unwrap()
            .common_name
            .unwrap();
        assert!(is_uuid(&device_cn), "{device_cn}");
    }

    #[test]
    fn udid_and_serial_are_random_unless_given() {
        let dir = tempfile::tempdir().unwrap();
        let device = Device::new(&options(dir.path())).unwrap();
        assert!(is_uuid(&device.udid), "{}", device.udid);
        assert_eq!(device.serial.len(), SERIAL_LEN);
        assert!(device
            .serial
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()));
        assert_ne!(new_serial_number(), new_serial_number());

        let mut given = options(dir.path());
        given.udid = Some("00008110-000A1C2E3F45801E".into());
        given.serial = Some("F2LXK0ABCD".into());
        let device = Device::new(&given).unwrap();
        assert_eq!(device.udid, "00008110-000A1C2E3F45801E");
        assert_eq!(device.serial, "F2LXK0ABCD");
    }

    #[test]
    fn half_a_device_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Device::new(&options(dir.path())).unwrap();
        fs::remove_file(dir.path().join(DEVICE_CA_KEY_FILE)).unwrap();
        let err = Device::new(&options(dir.path())).unwrap_err();
        assert!(
            err.starts_with("device CA: ") && err.contains("only one of"),
            "{err}"
        );
        assert!(
            dir.path().join(DEVICE_CA_CERT_FILE).exists(),
            "nothing is overwritten"
        );

        let other = tempfile::tempdir().unwrap();
        fs::write(other.path().join(DEVICE_CA_CERT_FILE), "junk").unwrap();
        fs::write(other.path().join(DEVICE_CA_KEY_FILE), "junk").unwrap();
        let err = Device::new(&options(other.path())).unwrap_err();
        assert!(err.starts_with("device CA: "), "{err}");
    }

    #[test]
    fn phase2_body_is_signed_like_a_mac() {
        let dir = tempfile::tempdir().unwrap();
        let device = Device::new(&options(dir.path())).unwrap();
        let body = device.phase2_body("the-challenge").unwrap();

        let message = signed::verify(&body).unwrap();
        assert_eq!(message.signer.digest, PHASE2_DIGEST);
        assert!(message.signer.signed_attributes.is_none());
        assert_eq!(message.signer.certificate, device.device_certificate);
        assert_eq!(
            message.certificates,
            vec![
                device.device_certificate.clone(),
                device.device_ca_certificate.clone()
            ]
        );
        let anchor = TrustAnchor::from_der("simulated", &device.device_ca_certificate).unwrap();
        anchor.verify_issued(&message.signer.certificate).unwrap();

        let content = message.content.unwrap();
        let plist = parse_plist(&content).unwrap().into_dictionary().unwrap();
        let field = |key: &str| {
            plist
                .get(key)
                .and_then(Value::as_string)
                .unwrap()
                .to_string()
        };
        assert_eq!(field("UDID"), device.udid);
        assert_eq!(field("SERIAL"), device.serial);
        assert_eq!(field("PRODUCT"), "iPhone15,2");
        assert_eq!(field("VERSION"), "21A329");
        assert_eq!(field("IMEI"), "");
        assert_eq!(field("MEID"), "");
        assert_eq!(field("DEVICE_NAME"), DEVICE_NAME);
        assert_eq!(field("CHALLENGE"), "the-challenge");
        assert_eq!(plist.len(), 8);

        // The server's own classifier takes it as a phase 2 body from this device CA.
        let verified = server_ota::classify(&body, &[anchor], None).unwrap();
        assert_eq!(
            verified.signer,
            SignerKind::Device {
                anchor: "simulated".into()
            }
        );
        assert_eq!(verified.attributes.udid(), device.udid);
        assert_eq!(verified.attributes.challenge(), Some("the-challenge"));
        assert!(server_ota::classify(&body, &[TrustAnchor::apple_device_ca()], None).is_err());
    }

    #[test]
    fn phase2_body_options() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path());
        opts.signed_attributes = true;
        opts.leaf_only = true;
        let device = Device::new(&opts).unwrap();
        let message = signed::verify(&device.phase2_body("c").unwrap()).unwrap();
        assert_eq!(
            message.certificates,
            vec![device.device_certificate.clone()]
        );
        assert_eq!(message.signer.digest, PHASE2_DIGEST);
        let attributes = message.signer.signed_attributes.as_ref().unwrap();
        assert!(attributes.iter().any(|a| a.oid == oid::MESSAGE_DIGEST));
        assert!(attributes.iter().any(|a| a.oid == oid::CONTENT_TYPE));
    }

    #[test]
    fn phase3_body_is_signed_with_the_scep_identity() {
        let dir = tempfile::tempdir().unwrap();
        let mut device = Device::new(&options(dir.path())).unwrap();
        let err = device.phase3_body("c").unwrap_err();
        assert_eq!(err, "phase 3: no SCEP identity yet");

        let (ca, identity) = issued_identity(KeyUsageProfile::DeviceIdentity, &device.udid);
        device.scep_identity = Some(identity);
        let body = device.phase3_body("c3").unwrap();
        let message = signed::verify(&body).unwrap();
        let identity = device.scep_identity.as_ref().unwrap();
        assert_eq!(message.signer.certificate, identity.certificate);
        assert_eq!(message.signer.digest, DigestAlgorithm::Sha256);
        assert!(message.signer.signed_attributes.is_some());
        assert_eq!(message.certificates.len(), 1);

        let verified = server_ota::classify(&body, &[], Some(&ca)).unwrap();
        assert!(matches!(verified.signer, SignerKind::OwnCa { .. }));
        assert_eq!(verified.attributes.challenge(), Some("c3"));
    }

    #[test]
    fn reads_the_profiles_otad_makes() {
        let (_, signer) = issued_identity(KeyUsageProfile::Signing, "profile signer");
        let attrs = vec!["UDID".to_string(), "SERIAL".to_string()];
        let service = profile::profile_service(&brand(), "http://x/ota/phase23", &attrs, "ch1");
        let signed_service = sign_profile(&signer, &service);
        let (signer_cert, dict) = open_signed_profile("phase 1", &signed_service, None).unwrap();
        assert_eq!(signer_cert, signer.certificate);
        let phase1 = read_profile_service(&dict, signer_cert).unwrap();
        assert_eq!(phase1.url, "http://x/ota/phase23");
        assert_eq!(phase1.challenge, "ch1");
        assert_eq!(phase1.attributes, attrs);

        let subject = vec![
            ("CN".to_string(), "UDID-1".to_string()),
            ("O".into(), "Ex".into()),
        ];
        let (scep, _) = profile::scep_payload(&brand(), "scep", "http://x/scep", &subject, "ch2");
        let configuration = profile::configuration(&brand(), "n", "identity", vec![scep]);
        let scep = read_scep_profile(&configuration).unwrap();
        assert_eq!(scep.url, "http://x/scep");
        assert_eq!(scep.challenge, "ch2");
        assert_eq!(scep.subject, subject);
        assert_eq!(scep.common_name(), Some("UDID-1"));
        assert_eq!(scep.keysize, 2048);

        let err =
            read_scep_profile(&profile::configuration(&brand(), "n", "s", vec![])).unwrap_err();
        assert_eq!(err, "phase 2: profile: no com.apple.security.scep payload");
        let err = read_profile_service(&configuration, Vec::new()).unwrap_err();
        assert!(err.contains("not \"Profile Service\""), "{err}");
    }

    #[test]
    fn a_profile_signed_by_someone_else_is_refused() {
        let (_, signer) = issued_identity(KeyUsageProfile::Signing, "profile signer");
        let (_, other) = issued_identity(KeyUsageProfile::Signing, "someone else");
        let body = sign_profile(&signer, &Value::Dictionary(Dictionary::new()));
        assert!(open_signed_profile("phase 2", &body, Some(&signer.certificate)).is_ok());
        let err = open_signed_profile("phase 2", &body, Some(&other.certificate)).unwrap_err();
        assert_eq!(
            err,
            "phase 2: profile signer: not the certificate that signed phase 1"
        );

        let mut tampered = body.clone();
        let at = tampered.windows(4).position(|w| w == b"dict").unwrap();
        tampered[at] = b'D';
        let err = open_signed_profile("phase 2", &tampered, None).unwrap_err();
        assert!(err.starts_with("phase 2: profile signature: "), "{err}");
    }

    #[test]
    fn decrypts_the_final_profile() {
        let (_, identity) = issued_identity(KeyUsageProfile::DeviceIdentity, "device");
        let subject = vec![("CN".to_string(), "UDID-1".to_string())];
        let (scep, _) = profile::scep_payload(&brand(), "scep", "http://x/scep", &subject, "c");
        let wifi = {
            let mut payload = Dictionary::new();
            payload.insert(
                "PayloadType".into(),
                Value::String("com.apple.wifi.managed".into()),
            );
            Value::Dictionary(payload)
        };
        let mut final_profile = profile::configuration(&brand(), "n", "s", vec![scep, wifi]);
        profile::encrypt_payload_content(&mut final_profile, |plain| {
            cms::enveloped::encrypt(plain, &identity.certificate, ContentCipher::Aes256Cbc)
        })
        .unwrap()
        .unwrap();

        let opened = read_final_profile(final_profile.clone(), &identity).unwrap();
        assert_eq!(
            opened.payload_types,
            ["com.apple.security.scep", "com.apple.wifi.managed"]
        );
        assert_eq!(opened.cipher, ContentCipher::Aes256Cbc);
        assert_eq!(opened.payloads.len(), 2);

        let (_, stranger) = issued_identity(KeyUsageProfile::DeviceIdentity, "another device");
        let err = read_final_profile(final_profile.clone(), &stranger).unwrap_err();
        assert!(
            err.starts_with("phase 3: profile: EncryptedPayloadContent: "),
            "{err}"
        );

        let clear = profile::configuration(&brand(), "n", "s", vec![]);
        let err = read_final_profile(clear, &identity).unwrap_err();
        assert_eq!(
            err,
            "phase 3: profile: has a clear PayloadContent besides the encrypted one"
        );
    }

    #[test]
    fn plists_from_the_server_are_bounded() {
        let deep = format!(
            "<?xml version=\"1.0\"?><plist version=\"1.0\">{}{}</plist>",
            "<array>".repeat(MAX_PLIST_DEPTH + 1),
            "</array>".repeat(MAX_PLIST_DEPTH + 1)
        );
        assert_eq!(
            parse_plist(deep.as_bytes()).unwrap_err(),
            format!("plist: nested deeper than {MAX_PLIST_DEPTH}")
        );
        let fine = format!(
            "<?xml version=\"1.0\"?><plist version=\"1.0\">{}<array/>{}</plist>",
            "<array>".repeat(MAX_PLIST_DEPTH - 1),
            "</array>".repeat(MAX_PLIST_DEPTH - 1)
        );
        assert!(parse_plist(fine.as_bytes()).is_ok());
        let wide = format!(
            "<plist><array>{}</array></plist>",
            "<true/>".repeat(MAX_PLIST_TAGS)
        );
        assert!(parse_plist(wide.as_bytes())
            .unwrap_err()
            .contains("more than"));
        assert!(parse_plist(&vec![b' '; MAX_PLIST_BYTES + 1])
            .unwrap_err()
            .contains("bytes"));
        assert!(parse_plist(b"<plist><dict><key>a</key></plist>").is_err());
    }

    #[test]
    fn failures_name_the_phase_status_and_reason() {
        let refused = HttpResponse {
            status: 403,
            content_type: Some("text/plain; charset=utf-8".into()),
            body: b"\nphase 2: challenge unknown or already used\nmore\n".to_vec(),
            headers: Vec::new(),
        };
        assert_eq!(
            expect_success("phase 2", &refused, &[PROFILE_CONTENT_TYPE]).unwrap_err(),
            "phase 2: HTTP 403: phase 2: challenge unknown or already used"
        );
        let silent = HttpResponse {
            status: 500,
            content_type: None,
            body: Vec::new(),
            headers: Vec::new(),
        };
        assert_eq!(
            expect_success("phase 3", &silent, &[PROFILE_CONTENT_TYPE]).unwrap_err(),
            "phase 3: HTTP 500: no reason given"
        );
        let wrong_type = HttpResponse {
            status: 200,
            content_type: Some("text/html".into()),
            body: Vec::new(),
            headers: Vec::new(),
        };
        assert_eq!(
            expect_success("phase 1", &wrong_type, &[PROFILE_CONTENT_TYPE]).unwrap_err(),
            "phase 1: HTTP 200 with Content-Type text/html, expected \
             application/x-apple-aspen-config"
        );
        let right = HttpResponse {
            status: 200,
            content_type: Some("Application/X-Apple-Aspen-Config".into()),
            body: Vec::new(),
            headers: Vec::new(),
        };
        assert!(expect_success("phase 1", &right, &[PROFILE_CONTENT_TYPE]).is_ok());
        assert_eq!(reason(&[b'x'; 500]).len(), MAX_REASON_CHARS);
        assert_eq!(reason(b"bad\x07 bell"), "bad bell");
    }

    #[test]
    fn phase1_over_http() {
        let dir = tempfile::tempdir().unwrap();
        let device = Device::new(&options(dir.path())).unwrap();
        let (_, signer) = issued_identity(KeyUsageProfile::Signing, "profile signer");
        let attrs = vec!["UDID".to_string()];
        let service = profile::profile_service(&brand(), "http://x/ota/phase23", &attrs, "ch");
        let signed_service = sign_profile(&signer, &service);

        let (listener, url) = listen();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let server = serve(
            listener,
            2,
            Box::new(move |request| {
                log.lock().unwrap().push(request.target.clone());
                match log.lock().unwrap().len() {
                    1 => (200, PROFILE_CONTENT_TYPE, signed_service.clone()),
                    _ => (
                        403,
                        "text/plain",
                        b"phase 1: enrollment is closed\n".to_vec(),
                    ),
                }
            }),
        );
        let phase1 = device.phase1(&format!("{url}/")).unwrap();
        assert_eq!(phase1.challenge, "ch");
        assert_eq!(phase1.signer_certificate, signer.certificate);
        let err = device.phase1(&url).unwrap_err();
        assert_eq!(err, "phase 1: HTTP 403: phase 1: enrollment is closed");
        server.join().unwrap();
        assert_eq!(*seen.lock().unwrap(), ["/ota/enroll", "/ota/enroll"]);

        let (closed, url) = listen();
        drop(closed);
        let err = device.phase1(&url).unwrap_err();
        assert!(
            err.starts_with(&format!("phase 1: GET {url}/ota/enroll: ")),
            "{err}"
        );
    }

    #[test]
    fn phase2_over_http_posts_the_signed_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let device = Device::new(&options(dir.path())).unwrap();
        let (_, signer) = issued_identity(KeyUsageProfile::Signing, "profile signer");
        let subject = vec![("CN".to_string(), device.udid.clone())];
        let (scep, _) =
            profile::scep_payload(&brand(), "scep", "http://x/scep", &subject, "scep-c");
        let configuration = profile::configuration(&brand(), "n", "identity", vec![scep]);
        let reply = sign_profile(&signer, &Value::Dictionary(configuration));

        let (listener, url) = listen();
        let seen = Arc::new(Mutex::new(None));
        let log = Arc::clone(&seen);
        let server = serve(
            listener,
            1,
            Box::new(move |request| {
                *log.lock().unwrap() = Some(request.clone());
                (200, PROFILE_CONTENT_TYPE, reply.clone())
            }),
        );
        let phase1 = Phase1 {
            url: format!("{url}/ota/phase23"),
            challenge: "p1-challenge".into(),
            attributes: Vec::new(),
            signer_certificate: signer.certificate.clone(),
        };
        let scep = device.phase2(&phase1).unwrap();
        server.join().unwrap();
        assert_eq!(scep.challenge, "scep-c");
        assert_eq!(scep.common_name(), Some(device.udid.as_str()));

        let request = seen.lock().unwrap().clone().unwrap();
        assert_eq!(request.target, "/ota/phase23");
        assert_eq!(
            request.content_type.as_deref(),
            Some(SIGNED_BODY_CONTENT_TYPE)
        );
        let message = signed::verify(&request.body).unwrap();
        let attributes = crate::ota::attributes::parse(&message.content.unwrap()).unwrap();
        assert_eq!(attributes.challenge(), Some("p1-challenge"));
    }

    /// The parts of a fake SCEP server.
    struct FakeScep {
        ca: CertificateAuthority,
        ra: ScepIdentity,
        challenge: &'static str,
        /// Send back a wrong recipientNonce.
        wrong_nonce: bool,
        /// What the PKIOperation request used: digest and cipher.
        used: Arc<Mutex<Option<(DigestAlgorithm, ContentCipher)>>>,
    }

    impl FakeScep {
        fn new(challenge: &'static str) -> FakeScep {
            let (ca, ra) = issued_identity(KeyUsageProfile::SigningAndEncipherment, "test RA");
            FakeScep {
                ca,
                ra,
                challenge,
                wrong_nonce: false,
                used: Arc::default(),
            }
        }

        fn answer(&self, request: &Seen) -> (u16, &'static str, Vec<u8>) {
            if request.target.ends_with("operation=GetCACaps") {
                return (
                    200,
                    "text/plain",
                    b"POSTPKIOperation\nSHA-256\nAES\n".to_vec(),
                );
            }
            if request.target.ends_with("operation=GetCACert") {
                let both = cms::certs_only(&[&self.ra.certificate, self.ca.certificate()]);
                return (200, CA_RA_CERT_CONTENT_TYPE, both.unwrap());
            }
            assert!(
                request.target.ends_with("operation=PKIOperation"),
                "{}",
                request.target
            );
            assert_eq!(
                request.content_type.as_deref(),
                Some(PKI_MESSAGE_CONTENT_TYPE)
            );

            let message = signed::verify(&request.body).unwrap();
            let header = message::read_header(|oid| message.signed_attribute(oid)).unwrap();
            assert_eq!(header.message_type, MessageType::PkcsReq);
            let envelope = message.content.as_deref().unwrap();
            let opened =
                cms::decrypt(envelope, &self.ra.certificate, self.ra.key.decrypting()).unwrap();
            *self.used.lock().unwrap() = Some((message.signer.digest, opened.cipher));
            let request_info = csr::parse(&opened.content).unwrap();

            let granted = request_info.challenge_password.as_deref() == Some(self.challenge);
            let issued = granted.then(|| {
                let subject = [(
                    SubjectAttribute::CommonName,
                    request_info.common_name.clone().unwrap(),
                )];
                let issued = self
                    .ca
                    .issue(&IssueRequest {
                        subject: &subject,
                        public_key_spki_der: &request_info.public_key_spki_der,
                        serial: random_serial(),
                        validity_days: 30,
                        usage: KeyUsageProfile::DeviceIdentity,
                    })
                    .unwrap();
                cms::certs_only(&[&issued]).unwrap()
            });
            let nonce = if self.wrong_nonce {
                vec![0u8; 16]
            } else {
                header.sender_nonce
            };
            let rep = message::CertRep {
                status: if granted {
                    PkiStatus::Success
                } else {
                    PkiStatus::Failure
                },
                fail_info: (!granted).then_some(FailInfo::BadRequest),
                transaction_id: &header.transaction_id,
                recipient_nonce: &nonce,
                digest: message.signer.digest,
                payload: issued.as_deref().map(|d| {
                    (
                        d,
                        ContentCipher::Aes128Cbc,
                        message.signer.certificate.as_slice(),
                    )
                }),
            };
            let body =
                message::build_cert_rep(&rep, &self.ra.certificate, self.ra.key.signing()).unwrap();
            (200, PKI_MESSAGE_CONTENT_TYPE, body)
        }
    }

    fn scep_payload(url: &str, challenge: &str, udid: &str) -> ScepPayload {
        ScepPayload {
            url: format!("{url}/scep"),
            challenge: challenge.into(),
            subject: vec![("CN".into(), udid.into()), ("O".into(), "Example".into())],
            keysize: 2048,
        }
    }

    #[test]
    fn enroll_scep_gets_a_certificate_for_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut device = Device::new(&options(dir.path())).unwrap();
        let fake = FakeScep::new("good");
        let ca = fake.ca.certificate().to_vec();
        let used = Arc::clone(&fake.used);
        let (listener, url) = listen();
        let server = serve(listener, 3, Box::new(move |request| fake.answer(request)));

        let certificate = device
            .enroll_scep(&scep_payload(&url, "good", &device.udid))
            .unwrap();
        server.join().unwrap();

        let identity = device.scep_identity.as_ref().unwrap();
        assert_eq!(identity.certificate, certificate);
        assert_eq!(identity.ca_certificate, ca);
        assert_eq!(
            cert::spki_der(&certificate).unwrap(),
            identity.key.public_key_spki_der()
        );
        assert_ne!(
            identity.key.public_key_spki_der(),
            device.device_key.public_key_spki_der()
        );
        let summary = cert::summarize(&certificate).unwrap();
        assert_eq!(summary.common_name.as_deref(), Some(device.udid.as_str()));
        assert_eq!(
            *used.lock().unwrap(),
            Some((DigestAlgorithm::Sha256, ContentCipher::Aes128Cbc))
        );
    }

    #[test]
    fn enroll_scep_reports_a_refusal_and_a_wrong_nonce() {
        let dir = tempfile::tempdir().unwrap();
        let mut device = Device::new(&options(dir.path())).unwrap();
        let (listener, url) = listen();
        let fake = FakeScep::new("good");
        let server = serve(listener, 3, Box::new(move |request| fake.answer(request)));
        let err = device
            .enroll_scep(&scep_payload(&url, "stale", &device.udid))
            .unwrap_err();
        assert_eq!(err, "scep PKIOperation: CertRep FAILURE (badRequest)");
        assert!(device.scep_identity.is_none());
        server.join().unwrap();

        let (listener, url) = listen();
        let mut fake = FakeScep::new("good");
        fake.wrong_nonce = true;
        let server = serve(listener, 3, Box::new(move |request| fake.answer(request)));
        let err = device
            .enroll_scep(&scep_payload(&url, "good", &device.udid))
            .unwrap_err();
        assert_eq!(
            err,
            "scep PKIOperation: CertRep recipientNonce is not our senderNonce"
        );
        server.join().unwrap();

        // Refused before any request: nothing listens there.
        let mut odd = scep_payload("http://127.0.0.1:9", "good", &device.udid);
        odd.keysize = 1024;
        let err = device.enroll_scep(&odd).unwrap_err();
        assert_eq!(
            err,
            "scep PKIOperation: Keysize 1024 is not one this device makes"
        );
    }

    #[test]
    fn get_ca_cert_answers() {
        let (ca, ra) = issued_identity(KeyUsageProfile::SigningAndEncipherment, "RA");
        let ca_der = ca.certificate().to_vec();

        let single = read_ca_cert(CA_CERT_CONTENT_TYPE, &ca_der).unwrap();
        assert_eq!(
            single,
            Authorities {
                ca: ca_der.clone(),
                ra: None
            }
        );
        assert_eq!(single.recipient(), ca_der.as_slice());

        for order in [
            [ca_der.as_slice(), &ra.certificate],
            [&ra.certificate, ca_der.as_slice()],
        ] {
            let both = read_ca_cert(CA_RA_CERT_CONTENT_TYPE, &cms::certs_only(&order).unwrap());
            let both = both.unwrap();
            assert_eq!(both.ca, ca_der);
            assert_eq!(both.ra.as_deref(), Some(ra.certificate.as_slice()));
            assert_eq!(both.recipient(), ra.certificate.as_slice());
            assert_eq!(
                both.signers(),
                [ra.certificate.as_slice(), ca_der.as_slice()]
            );
        }

        let ra_only = cms::certs_only(&[&ra.certificate]).unwrap();
        let err = read_ca_cert(CA_RA_CERT_CONTENT_TYPE, &ra_only).unwrap_err();
        assert_eq!(err, "no self-signed CA certificate among those sent");
        let err = read_ca_cert(CA_CERT_CONTENT_TYPE, &ra.certificate).unwrap_err();
        assert_eq!(err, "the certificate is not a self-signed CA");
        assert!(read_ca_cert(CA_RA_CERT_CONTENT_TYPE, b"junk").is_err());
    }

    #[test]
    fn caps_choose_digest_and_cipher() {
        let caps = parse_ca_caps(b"POSTPKIOperation\r\nSHA-256\r\n  AES \r\n\r\nDES3\n");
        assert_eq!(caps, ["POSTPKIOperation", "SHA-256", "AES", "DES3"]);
        assert_eq!(choose_digest(&caps), DigestAlgorithm::Sha256);
        assert_eq!(choose_cipher(&caps), ContentCipher::Aes128Cbc);

        let old = parse_ca_caps(b"DES3\nSHA-1\n");
        assert_eq!(choose_digest(&old), DigestAlgorithm::Sha256);
        assert_eq!(choose_cipher(&old), ContentCipher::Des3Cbc);
        assert_eq!(
            choose_digest(&parse_ca_caps(b"SHA-512")),
            DigestAlgorithm::Sha512
        );
        assert_eq!(
            choose_digest(&parse_ca_caps(b"SHA-512\nSHA-256")),
            DigestAlgorithm::Sha256
        );
        assert_eq!(
            choose_cipher(&parse_ca_caps(b"SCEPStandard")),
            ContentCipher::Aes128Cbc
        );
        assert_eq!(
            parse_ca_caps("x\n".repeat(MAX_CA_CAPS + 5).as_bytes()).len(),
            MAX_CA_CAPS
        );
    }

    #[test]
    fn throwaway_certificate_and_transaction_id() {
        let key = RsaPrivateKey::generate(2048).unwrap();
        let certificate = self_signed_certificate(&key, "UDID-1").unwrap();
        let spki = cert::spki_der(&certificate).unwrap();
        assert_eq!(spki, key.public_key_spki_der());
        assert!(cert::is_signed_by(&certificate, &spki));
        let summary = cert::summarize(&certificate).unwrap();
        assert_eq!(summary.common_name.as_deref(), Some("UDID-1"));
        assert!(summary.not_after - summary.not_before <= 86_400 + 300);

        let id = transaction_id(&key);
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(id, transaction_id(&key));
        assert_eq!(
            with_operation("http://x/scep", "GetCACaps"),
            "http://x/scep?operation=GetCACaps"
        );
        assert_eq!(
            with_operation("http://x/s?a=b", "GetCACert"),
            "http://x/s?a=b&operation=GetCACert"
        );
    }

    #[test]
    fn summary_prints_one_line_each() {
        let summary = Summary {
            udid: "U".into(),
            serial: "S".into(),
            certificate_serial: "0a1b".into(),
            payload_types: vec!["com.apple.security.scep".into(), "com.apple.mdm".into()],
            cipher: ContentCipher::Des3Cbc,
        };
        assert_eq!(
            summary.to_string(),
            "udid: U\nserial: S\ncertificate_serial: 0a1b\n\
             payload_types: com.apple.security.scep, com.apple.mdm\ncipher: des-ede3-cbc\n"
        );
    }
}
