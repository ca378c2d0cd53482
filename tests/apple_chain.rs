//! Apple's device certificate chain against the pinned anchors: real device certificates
//! verify under Apple iPhone Device CA's key, and a CA that copies Apple's names with another
//! key is refused, as is everything it issues.

mod common;

use common::impostor::impostor_device_ca;
use otad::pki::apple::{
    TrustAnchor, APPLE_IPHONE_CA_PEM, APPLE_IPHONE_DEVICE_CA_PEM, APPLE_ROOT_CA_PEM,
};
use otad::pki::ca::{random_serial, IssueRequest, KeyUsageProfile, SubjectAttribute};
use otad::pki::cert;
use otad::pki::keys::RsaPrivateKey;
use otad::pki::PkiError;
use x509_parser::prelude::{FromDer, X509Certificate};

/// 2019-01-01T00:00:00Z, inside the 2018 device certificate's validity.
const IN_2019: i64 = 1_546_300_800;
/// 2025-01-01T00:00:00Z, inside the 2024 device certificate's validity.
const IN_2025: i64 = 1_735_689_600;

/// Reads a PEM fixture as DER, or `None` when fixtures are absent.
fn fixture_der(relative: &str) -> Option<Vec<u8>> {
    let bytes = common::fixture(relative)?;
    let text = String::from_utf8(bytes).expect("fixture is text");
    Some(cert::pem_to_der(&text).expect("fixture is a PEM certificate"))
}

#[test]
fn device_certificates_verify_under_the_device_ca_key() {
    let anchor = TrustAnchor::apple_device_ca();
    for (name, inside) in [
        ("apple/device-cert-sha1-2018.pem", IN_2019),
        ("apple/device-cert-sha256-2024.pem", IN_2025),
    ] {
        let Some(leaf) = fixture_der(name) else {
            return;
        };
        assert_eq!(anchor.verify_issued(&leaf), Ok(()), "{name}");
        assert!(cert::is_signed_by(&leaf, anchor.spki_der()), "{name}");
        assert_eq!(cert::check_validity(&leaf, inside), Ok(()), "{name}");

        // The other Apple anchors did not sign device certificates.
        assert_eq!(
            TrustAnchor::apple_iphone_ca().verify_issued(&leaf),
            Err(PkiError::SignatureNotByAnchor),
            "{name}"
        );
        assert_eq!(
            TrustAnchor::apple_root_ca().verify_issued(&leaf),
            Err(PkiError::SignatureNotByAnchor),
            "{name}"
        );
    }
}

#[test]
fn device_certificate_facts() {
    let Some(sha1) = fixture_der("apple/device-cert-sha1-2018.pem") else {
        return;
    };
    let Some(sha256) = fixture_der("apple/device-cert-sha256-2024.pem") else {
        return;
    };

    let summary = cert::summarize(&sha1).unwrap();
    assert_eq!(
        summary.common_name.as_deref(),
        Some("6001A957-6FC5-4856-8C5E-DC2E32C61CB9")
    );
    assert_eq!(summary.serial_hex, "0135401dc29b65dc3784");
    assert!(summary.issuer.contains("CN=Apple iPhone Device CA"));
    // The 2018 certificate has expired; its validity, unlike an anchor's, counts.
    assert!(matches!(
        cert::check_validity(&sha1, IN_2025),
        Err(PkiError::CertificateExpired { .. })
    ));

    let summary = cert::summarize(&sha256).unwrap();
    assert_eq!(
        summary.common_name.as_deref(),
        Some("1EB44D08-42EE-471B-BBD6-136582A7BAA4")
    );
    assert_eq!(summary.not_after, 1_809_027_342);
    let (_, parsed) = X509Certificate::from_der(&sha256).unwrap();
    assert_eq!(
        parsed.signature_algorithm.algorithm.to_id_string(),
        "1.2.840.113549.1.1.11"
    );
}

#[test]
fn fixture_anchors_equal_the_embedded_ones() {
    for (name, embedded) in [
        ("apple/apple-root-ca.pem", APPLE_ROOT_CA_PEM),
        (
            "apple/apple-iphone-certification-authority.pem",
            APPLE_IPHONE_CA_PEM,
        ),
        (
            "apple/apple-iphone-device-ca.pem",
            APPLE_IPHONE_DEVICE_CA_PEM,
        ),
    ] {
        let Some(bytes) = common::fixture(name) else {
            return;
        };
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(
            cert::pem_to_der(&text).unwrap(),
            cert::pem_to_der(embedded).unwrap(),
            "{name}"
        );
        // The fixture files add descriptive lines after the block; the block is embedded.
        assert!(text.starts_with(embedded), "{name}");
    }
    let Some(device_ca) = fixture_der("apple/apple-iphone-device-ca.pem") else {
        return;
    };
    assert_eq!(TrustAnchor::apple_device_ca().certificate, device_ca);
}

#[test]
fn impostor_with_apples_names_is_refused() {
    let apple = TrustAnchor::apple_device_ca();
    let impostor = impostor_device_ca();

    // The impostor really does carry Apple's name, byte for byte.
    let (_, impostor_cert) = X509Certificate::from_der(impostor.certificate()).unwrap();
    assert_eq!(impostor_cert.subject().as_raw(), apple.subject_der());

    let device_key = RsaPrivateKey::generate(2048).unwrap();
    let spki = device_key.public_key_spki_der();
    let subject = vec![(
        SubjectAttribute::CommonName,
        "6001A957-6FC5-4856-8C5E-DC2E32C61CB9".to_owned(),
    )];
    let leaf = impostor
        .issue(&IssueRequest {
            subject: &subject,
            public_key_spki_der: &spki,
            serial: random_serial(),
            validity_days: 365,
            usage: KeyUsageProfile::DeviceIdentity,
        })
        .unwrap();
    let (_, leaf_cert) = X509Certificate::from_der(&leaf).unwrap();
    assert_eq!(leaf_cert.issuer().as_raw(), apple.subject_der());

    // Names match, keys do not: refused, both the leaf and the impostor CA itself.
    assert_eq!(
        apple.verify_issued(&leaf),
        Err(PkiError::SignatureNotByAnchor)
    );
    assert!(!cert::is_signed_by(&leaf, apple.spki_der()));
    assert_eq!(
        apple.verify_issued(impostor.certificate()),
        Err(PkiError::SignatureNotByAnchor)
    );

    // The impostor's own key does verify its leaf, so the refusal above is the key's doing.
    let impostor_anchor = TrustAnchor::from_der("impostor", impostor.certificate()).unwrap();
    assert_eq!(impostor_anchor.verify_issued(&leaf), Ok(()));
}

#[test]
fn real_device_certificate_is_refused_by_an_impostor_anchor() {
    let Some(leaf) = fixture_der("apple/device-cert-sha256-2024.pem") else {
        return;
    };
    let impostor = impostor_device_ca();
    let anchor = TrustAnchor::from_der("impostor", impostor.certificate()).unwrap();
    assert_eq!(
        anchor.verify_issued(&leaf),
        Err(PkiError::SignatureNotByAnchor)
    );
}
