//! An impostor of Apple iPhone Device CA: exactly Apple's subject name (same string types,
//! same order) over a key of its own. Everything about it is Apple's but the key.

#![allow(dead_code)]

use otad::pki::ca::{
    random_serial, CertificateAuthority, IssueRequest, KeyUsageProfile, SubjectAttribute,
};
use otad::pki::keys::RsaPrivateKey;
use rcgen::string::PrintableString;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, KeyUsagePurpose,
    SerialNumber,
};

/// The impostor CA.
pub fn impostor_device_ca() -> CertificateAuthority {
    let printable = |text: &str| DnValue::PrintableString(PrintableString::try_from(text).unwrap());
    let mut name = DistinguishedName::new();
    name.push(DnType::CountryName, printable("US"));
    name.push(DnType::OrganizationName, printable("Apple Inc."));
    name.push(DnType::OrganizationalUnitName, printable("Apple iPhone"));
    name.push(DnType::CommonName, printable("Apple iPhone Device CA"));

    let mut params = CertificateParams::default();
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));

    let key = RsaPrivateKey::generate(2048).unwrap();
    let certificate = params.self_signed(&key.rcgen_key().unwrap()).unwrap();
    CertificateAuthority::load(certificate.der().as_ref(), key).unwrap()
}

/// A device certificate the impostor issues, with a device-like CN; returns it and its key.
pub fn impostor_device(ca: &CertificateAuthority, common_name: &str) -> (Vec<u8>, RsaPrivateKey) {
    let key = RsaPrivateKey::generate(2048).unwrap();
    let subject = vec![(SubjectAttribute::CommonName, common_name.to_owned())];
    let certificate = ca
        .issue(&IssueRequest {
            subject: &subject,
            public_key_spki_der: &key.public_key_spki_der(),
            serial: random_serial(),
            validity_days: 365,
            usage: KeyUsageProfile::DeviceIdentity,
        })
        .unwrap();
    (certificate, key)
}
