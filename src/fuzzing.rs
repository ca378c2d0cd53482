//! What each fuzz target does with one input, shared by the cargo-fuzz targets in `fuzz/`
//! (nightly) and by `tests/fuzz_replay.rs` (stable), which replays the committed corpus.
//!
//! Every function takes the raw input and returns nothing: a bad input must come back as an
//! `Err` from otad's parsers, so the only failure a fuzzer can see is a panic (or a hang, or
//! memory without bound). A function panics on purpose only where a property it checks does
//! not hold. The keys the targets decrypt with are fixed (the throwaway client key of
//! `testdata/scep`), so that seeds made in one process still open in the next; they are read
//! once per process, never per input.

use std::path::Path;
use std::sync::OnceLock;

use crate::cms::{ber, enveloped, signed};
use crate::config::Config;
use crate::ota::{self, attributes};
use crate::pki::apple::TrustAnchor;
use crate::pki::ca::CertificateAuthority;
use crate::pki::keys::RsaPrivateKey;
use crate::pki::{cert, csr};
use crate::plistshape;
use crate::scep::{self, message};

/// The fixed key of the fuzz targets: `testdata/scep/client-key.pem`, a key made for tests
/// that protects nothing. It decrypts (enveloped, scep_message) and it is the key of the CA
/// that the signed target trusts.
pub const FUZZ_KEY_PEM: &str = include_str!("../testdata/scep/client-key.pem");

/// The certificate of [`FUZZ_KEY_PEM`]: `testdata/scep/client-cert.pem`, the recipient that
/// the enveloped and scep_message targets decrypt as.
pub const FUZZ_RECIPIENT_PEM: &str = include_str!("../testdata/scep/client-cert.pem");

/// Common name of the fuzz CA (key [`FUZZ_KEY_PEM`]), trusted as a device CA and as our CA.
pub const FUZZ_CA_NAME: &str = "otad fuzz CA";

/// The path a fuzzed config claims to come from; only named in errors and joined to
/// relative paths, never read.
const CONFIG_PATH: &str = "/nonexistent/otad-fuzz/otad.toml";

/// The recipient that inputs are decrypted as: certificate DER and key.
pub struct Recipient {
    /// The certificate DER.
    pub certificate: Vec<u8>,
    /// Its key.
    pub key: RsaPrivateKey,
}

/// The fixed recipient, read once per process; `None` only if the testdata were broken.
pub fn recipient() -> Option<&'static Recipient> {
    static RECIPIENT: OnceLock<Option<Recipient>> = OnceLock::new();
    RECIPIENT
        .get_or_init(|| {
            let certificate = cert::pem_to_der(FUZZ_RECIPIENT_PEM).ok()?;
            let key = RsaPrivateKey::from_pem(FUZZ_KEY_PEM).ok()?;
            Some(Recipient { certificate, key })
        })
        .as_ref()
}

/// The fuzz CA: a self-signed CA over [`FUZZ_KEY_PEM`]. RSA PKCS#1 v1.5 signatures are
/// deterministic and every field is fixed, so every process builds the same certificate.
pub fn fuzz_ca() -> Option<&'static CertificateAuthority> {
    static CA: OnceLock<Option<CertificateAuthority>> = OnceLock::new();
    CA.get_or_init(|| {
        let key = RsaPrivateKey::from_pem(FUZZ_KEY_PEM).ok()?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, FUZZ_CA_NAME);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0f, 0x22]));
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(2045, 1, 1);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let signer = key.rcgen_key().ok()?;
        let certificate = params.self_signed(&signer).ok()?;
        CertificateAuthority::load(certificate.der().as_ref(), key).ok()
    })
    .as_ref()
}

/// The device anchors of the signed target: Apple's pinned Device CA, as the server pins it,
/// and the fuzz CA in the place of an admin's extra anchor (so that seeds made here reach
/// the attributes parser).
fn anchors() -> &'static [TrustAnchor] {
    static ANCHORS: OnceLock<Vec<TrustAnchor>> = OnceLock::new();
    ANCHORS.get_or_init(|| {
        let mut anchors = vec![TrustAnchor::apple_device_ca()];
        if let Some(anchor) =
            fuzz_ca().and_then(|ca| TrustAnchor::from_der(FUZZ_CA_NAME, ca.certificate()).ok())
        {
            anchors.push(anchor);
        }
        anchors
    })
}

/// Target `ber`: normalise; what comes out is DER, and DER normalises to itself.
pub fn ber(data: &[u8]) {
    let Ok(der) = ber::normalize(data) else {
        return;
    };
    match ber::normalize(&der) {
        Ok(again) => assert!(again == der, "normalising DER changed it"),
        Err(err) => panic!("the normaliser refused its own output: {err}"),
    }
}

/// Target `signed`: SignedData verified and read unverified, then classified as a phase 2/3
/// body (pinned Apple anchor plus the fuzz CA as device anchors, the fuzz CA as our CA).
pub fn signed(data: &[u8]) {
    let verified = signed::verify(data);
    let unverified = signed::read_unverified(data);
    if let Ok(message) = &verified {
        let Ok(unverified) = unverified else {
            panic!("a SignedData that verifies cannot be read unverified");
        };
        assert!(
            unverified.content == message.content,
            "verify and read_unverified disagree on the content"
        );
    }
    let _ = ota::classify(data, anchors(), fuzz_ca());
}

/// Target `enveloped`: EnvelopedData decrypted as the fixed recipient.
pub fn enveloped(data: &[u8]) {
    let Some(recipient) = recipient() else {
        return;
    };
    let _ = enveloped::decrypt(data, &recipient.certificate, recipient.key.decrypting());
}

/// Target `scep_message`: a pkiMessage as PKIOperation reads it before it issues anything
/// (verify, or read unverified to address a FAILURE; the SCEP header; the envelope opened
/// as the fixed RA; the CSR in it), as a POST body and, when the input is text, as a GET
/// `message=` parameter.
pub fn scep_message(data: &[u8]) {
    pki_message(data);
    if let Ok(param) = std::str::from_utf8(data) {
        if let Ok(decoded) = scep::decode_get_message(param) {
            pki_message(&decoded);
        }
    }
}

/// One pkiMessage body through the steps of [`scep_message`].
fn pki_message(body: &[u8]) {
    let message = match signed::verify(body) {
        Ok(message) => message,
        Err(_) => {
            if let Ok(unverified) = signed::read_unverified(body) {
                let _ = message::read_header(|oid| unverified.signed_attribute(oid));
            }
            return;
        }
    };
    if message::read_header(|oid| message.signed_attribute(oid)).is_err() {
        return;
    }
    let (Some(content), Some(recipient)) = (message.content.as_deref(), recipient()) else {
        return;
    };
    if let Ok(decrypted) =
        enveloped::decrypt(content, &recipient.certificate, recipient.key.decrypting())
    {
        let _ = csr::parse(&decrypted.content);
    }
}

/// Target `phase_plist`: the signed content of a phase 2/3 body, shape check and parser.
/// What the shape check lets through must not nest deeper, once parsed, than it allowed.
pub fn phase_plist(data: &[u8]) {
    let shape = plistshape::check(data, attributes::MAX_DEPTH, attributes::MAX_TAGS);
    let _ = attributes::parse(data);
    if shape.is_ok() && data.len() <= attributes::MAX_PLIST_BYTES {
        if let Ok(value) = plist::Value::from_reader_xml(data) {
            let depth = plist_depth(&value);
            assert!(
                depth <= attributes::MAX_DEPTH,
                "the shape check passed a plist nested {depth} deep"
            );
        }
    }
}

/// How deep collections nest in `value` (a lone dictionary or array is 1, a string 0).
fn plist_depth(value: &plist::Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 0usize)];
    while let Some((value, depth)) = pending.pop() {
        match value {
            plist::Value::Array(items) => pending.extend(items.iter().map(|v| (v, depth + 1))),
            plist::Value::Dictionary(dict) => pending.extend(dict.values().map(|v| (v, depth + 1))),
            _ => {}
        }
        deepest = deepest.max(match value {
            plist::Value::Array(_) | plist::Value::Dictionary(_) => depth + 1,
            _ => depth,
        });
    }
    deepest
}

/// Target `config`: configuration text parsed and validated (nothing is read from disk).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Config::parse(text, Path::new(CONFIG_PATH));
}

/// What a fuzz target does with one input.
pub type Target = fn(&[u8]);

/// The targets by name, in the order the fuzz project lists them.
pub const TARGETS: &[(&str, Target)] = &[
    ("ber", ber),
    ("signed", signed),
    ("enveloped", enveloped),
    ("scep_message", scep_message),
    ("phase_plist", phase_plist),
    ("config", config),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_keys_load_and_match() {
        let recipient = recipient().expect("testdata recipient");
        let ca = fuzz_ca().expect("fuzz CA");
        assert_eq!(
            cert::spki_der(&recipient.certificate).unwrap(),
            recipient.key.public_key_spki_der()
        );
        assert_eq!(ca.spki_der(), recipient.key.public_key_spki_der());
        assert_eq!(anchors().len(), 2);
    }

    #[test]
    fn fuzz_ca_is_the_same_every_time() {
        let key = RsaPrivateKey::from_pem(FUZZ_KEY_PEM).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, FUZZ_CA_NAME);
        let first = params.self_signed(&key.rcgen_key().unwrap()).unwrap();
        let second = params.self_signed(&key.rcgen_key().unwrap()).unwrap();
        assert_eq!(first.der(), second.der());
    }
}
