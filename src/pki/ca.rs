//! Our certificate authority: a self-signed RSA-2048 CA that issues the RA and
//! profile-signing identities and the device certificates SCEP hands out.
//!
//! Certificates are laid out by rcgen and signed by aws-lc-rs (rcgen's `aws_lc_rs`
//! feature), always sha256WithRSAEncryption. No extension from a request is ever copied:
//! what a certificate may do is decided here, by [`KeyUsageProfile`].

use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::digest;
use rcgen::string::PrintableString;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::cert::{self, RsaPublicKey};
use super::keys::RsaPrivateKey;
use super::PkiError;

/// The longest validity we issue, in days (about 50 years).
pub const MAX_VALIDITY_DAYS: u32 = 50 * 366;

/// The most attributes a subject we build may have.
pub const MAX_SUBJECT_ATTRIBUTES: usize = 16;

/// How far back notBefore is set, for clients whose clocks run behind.
pub const CLOCK_SKEW_SECONDS: i64 = 5 * 60;

/// Our CA's key size.
pub const CA_KEY_BITS: usize = 2048;

/// Tries at the system random generator before [`random_serial`] falls back.
const RANDOM_ATTEMPTS: usize = 3;

/// serialNumber (X.520), as rcgen has no name for it.
const SERIAL_NUMBER_OID: [u64; 4] = [2, 5, 4, 5];

/// Random positive 128-bit serial (first byte's top bit cleared, never zero), as RFC 5280
/// section 4.1.2.2 asks: positive, unique, at most 20 octets.
pub fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];

    let filled = (0..RANDOM_ATTEMPTS).any(|_| aws_lc_rs::rand::fill(&mut serial).is_ok());
    if !filled {
        // Never seen in practice; a unique (if predictable) serial beats refusing to issue.
        log::error!("serial: system random generator failed; deriving from time and counter");
        serial = fallback_serial();
    }

    if let Some(first) = serial.first_mut() {
        *first &= 0x7f;
    }
    if serial.iter().all(|byte| *byte == 0) {
        if let Some(last) = serial.last_mut() {
            *last = 1;
        }
    }
    serial
}

/// A serial from the clock, the process id and a counter, for when randomness fails.
fn fallback_serial() -> [u8; 16] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut input = Vec::with_capacity(36);
    input.extend_from_slice(&nanos.to_be_bytes());
    input.extend_from_slice(&std::process::id().to_be_bytes());
    input.extend_from_slice(&count.to_be_bytes());
    let hash = digest::digest(&digest::SHA256, &input);

    let mut serial = [0u8; 16];
    for (out, byte) in serial.iter_mut().zip(hash.as_ref()) {
        *out = *byte;
    }
    serial
}

/// What an issued certificate's key may be used for
/// ([RFC 5280 section 4.2.1.3](https://www.rfc-editor.org/rfc/rfc5280#section-4.2.1.3)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsageProfile {
    /// A subordinate CA: keyCertSign, cRLSign, digitalSignature; basicConstraints cA with
    /// pathLen 0.
    Ca,
    /// The RA: digitalSignature (CertReps) and keyEncipherment (SCEP requests are
    /// enveloped to it).
    SigningAndEncipherment,
    /// The profile signer: digitalSignature.
    Signing,
    /// A device identity: digitalSignature and keyEncipherment, extendedKeyUsage clientAuth.
    DeviceIdentity,
}

impl KeyUsageProfile {
    /// The keyUsage bits of this profile.
    fn key_usages(self) -> Vec<KeyUsagePurpose> {
        match self {
            Self::Ca => vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
            ],
            Self::SigningAndEncipherment | Self::DeviceIdentity => vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ],
            Self::Signing => vec![KeyUsagePurpose::DigitalSignature],
        }
    }

    /// The extendedKeyUsage purposes of this profile (none means no extension).
    fn extended_key_usages(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Self::DeviceIdentity => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Self::Ca | Self::SigningAndEncipherment | Self::Signing => Vec::new(),
        }
    }

    /// basicConstraints for this profile; leaves say cA FALSE explicitly.
    fn is_ca(self) -> IsCa {
        match self {
            Self::Ca => IsCa::Ca(BasicConstraints::Constrained(0)),
            Self::SigningAndEncipherment | Self::Signing | Self::DeviceIdentity => {
                IsCa::ExplicitNoCa
            }
        }
    }
}

/// A subject name attribute type (X.520; RFC 5280 section 4.1.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SubjectAttribute {
    /// commonName (CN).
    CommonName,
    /// organizationName (O).
    Organization,
    /// organizationalUnitName (OU).
    OrganizationalUnit,
    /// countryName (C): two letters, written as PrintableString.
    Country,
    /// stateOrProvinceName (ST).
    StateOrProvince,
    /// localityName (L).
    Locality,
    /// serialNumber: written as PrintableString.
    SerialNumber,
}

impl SubjectAttribute {
    /// The short name used in string forms of names ("CN", "O", ...).
    pub fn short_name(self) -> &'static str {
        match self {
            Self::CommonName => "CN",
            Self::Organization => "O",
            Self::OrganizationalUnit => "OU",
            Self::Country => "C",
            Self::StateOrProvince => "ST",
            Self::Locality => "L",
            Self::SerialNumber => "serialNumber",
        }
    }

    /// The attribute for a short name as [`short_name`](Self::short_name) writes it.
    pub fn from_short_name(name: &str) -> Option<Self> {
        [
            Self::CommonName,
            Self::Organization,
            Self::OrganizationalUnit,
            Self::Country,
            Self::StateOrProvince,
            Self::Locality,
            Self::SerialNumber,
        ]
        .into_iter()
        .find(|attribute| attribute.short_name() == name)
    }

    /// The upper bound on the value's length in characters (RFC 5280 appendix A.1).
    fn max_chars(self) -> usize {
        match self {
            Self::Country => 2,
            Self::StateOrProvince | Self::Locality => 128,
            Self::CommonName
            | Self::Organization
            | Self::OrganizationalUnit
            | Self::SerialNumber => 64,
        }
    }

    /// The rcgen attribute type.
    fn dn_type(self) -> DnType {
        match self {
            Self::CommonName => DnType::CommonName,
            Self::Organization => DnType::OrganizationName,
            Self::OrganizationalUnit => DnType::OrganizationalUnitName,
            Self::Country => DnType::CountryName,
            Self::StateOrProvince => DnType::StateOrProvinceName,
            Self::Locality => DnType::LocalityName,
            Self::SerialNumber => DnType::CustomDnType(SERIAL_NUMBER_OID.to_vec()),
        }
    }

    /// The value as rcgen writes it: PrintableString where X.520 demands it, else UTF8String.
    fn dn_value(self, value: &str) -> Result<DnValue, PkiError> {
        let invalid = PkiError::SubjectAttributeInvalid(self.short_name());

        if value.is_empty() || value.chars().count() > self.max_chars() {
            return Err(invalid);
        }
        if value.chars().any(char::is_control) {
            return Err(invalid);
        }
        match self {
            Self::Country => {
                if !value.chars().all(|c| c.is_ascii_uppercase()) || value.len() != 2 {
                    return Err(invalid);
                }
                let printable = PrintableString::try_from(value).map_err(|_| invalid)?;
                Ok(DnValue::PrintableString(printable))
            }
            Self::SerialNumber => {
                let printable = PrintableString::try_from(value).map_err(|_| invalid)?;
                Ok(DnValue::PrintableString(printable))
            }
            _ => Ok(DnValue::Utf8String(value.to_owned())),
        }
    }
}

/// A request to issue one certificate.
#[derive(Debug, Clone, Copy)]
pub struct IssueRequest<'a> {
    /// The subject, in order; each attribute type at most once.
    pub subject: &'a [(SubjectAttribute, String)],
    /// The subject's SubjectPublicKeyInfo DER (from a CSR or a key we made).
    pub public_key_spki_der: &'a [u8],
    /// The serial number, usually [`random_serial`].
    pub serial: [u8; 16],
    /// Days from now until notAfter, 1..=[`MAX_VALIDITY_DAYS`].
    pub validity_days: u32,
    /// What the certificate's key may do.
    pub usage: KeyUsageProfile,
}

/// Our CA: certificate and key.
pub struct CertificateAuthority {
    /// The CA certificate DER.
    certificate: Vec<u8>,
    /// The CA's private key.
    key: RsaPrivateKey,
    /// The CA certificate's SubjectPublicKeyInfo DER.
    spki: Vec<u8>,
    /// The CA certificate's subject Name DER, which every issued certificate's issuer must
    /// equal byte for byte.
    subject: Vec<u8>,
    /// The rcgen issuer, built once: parsing the key and certificate again for every
    /// issuance cost most of an RSA signature.
    issuer: Issuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new self-signed RSA-2048 CA: basicConstraints CA:true critical, keyUsage
    /// keyCertSign+cRLSign (+digitalSignature), SKI, validity `validity_days`
    /// ([RFC 5280 section 4.2.1.9](https://www.rfc-editor.org/rfc/rfc5280#section-4.2.1.9)).
    pub fn create(
        common_name: &str,
        organization: &str,
        validity_days: u32,
    ) -> Result<Self, PkiError> {
        let mut subject = vec![(SubjectAttribute::CommonName, common_name.to_owned())];
        if !organization.is_empty() {
            subject.push((SubjectAttribute::Organization, organization.to_owned()));
        }
        let mut params = certificate_params(&subject, &random_serial(), validity_days)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];

        let key = RsaPrivateKey::generate(CA_KEY_BITS)?;
        let signer = key.rcgen_key()?;
        let certificate = params
            .self_signed(&signer)
            .map_err(|err| PkiError::CertificateBuildFailed(err.to_string()))?;
        Self::load(certificate.der().as_ref(), key)
    }

    /// A CA from its certificate DER and key; the key must be the certificate's, and the
    /// certificate must say cA (and keyCertSign, if it has keyUsage).
    pub fn load(cert_der: &[u8], key: RsaPrivateKey) -> Result<Self, PkiError> {
        let certificate = cert::parse_certificate(cert_der)?;

        let spki = certificate.public_key().raw;
        let ours = key.public_key_spki_der();
        if RsaPublicKey::from_spki_der(spki)?.rsa_public_key_der
            != RsaPublicKey::from_spki_der(&ours)?.rsa_public_key_der
        {
            return Err(PkiError::CaKeyMismatch);
        }

        let basic_constraints = certificate
            .basic_constraints()
            .map_err(|err| PkiError::CertificateMalformed(err.to_string()))?;
        if !basic_constraints.is_some_and(|bc| bc.value.ca) {
            return Err(PkiError::NotACaCertificate);
        }
        let key_usage = certificate
            .key_usage()
            .map_err(|err| PkiError::CertificateMalformed(err.to_string()))?;
        if key_usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
            return Err(PkiError::NotACaCertificate);
        }

        // rcgen rebuilds our name from the certificate and cannot hold multi-valued RDNs
        // (and would panic on an empty one), so refuse those here.
        if certificate
            .subject()
            .iter()
            .any(|rdn| rdn.iter().count() != 1)
        {
            return Err(PkiError::CertificateBuildFailed(
                "ca subject has a relative distinguished name that is not single-valued".to_owned(),
            ));
        }

        let issuer = Issuer::from_ca_cert_der(&cert_der.into(), key.rcgen_key()?)
            .map_err(|err| PkiError::CertificateBuildFailed(err.to_string()))?;
        Ok(Self {
            certificate: cert_der.to_vec(),
            spki: spki.to_vec(),
            subject: certificate.subject().as_raw().to_vec(),
            key,
            issuer,
        })
    }

    /// The CA certificate DER.
    pub fn certificate(&self) -> &[u8] {
        &self.certificate
    }

    /// The CA's private key.
    pub fn key(&self) -> &RsaPrivateKey {
        &self.key
    }

    /// The CA certificate's SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// The CA certificate's subject Name DER.
    pub fn subject_der(&self) -> &[u8] {
        &self.subject
    }

    /// Issues a certificate (sha256WithRSA, SKI + AKI, the key usages of `usage`, no CSR
    /// extension copied). Validity starts 5 minutes ago (clock skew)
    /// ([RFC 5280 section 4.1](https://www.rfc-editor.org/rfc/rfc5280#section-4.1)).
    pub fn issue(&self, request: &IssueRequest<'_>) -> Result<Vec<u8>, PkiError> {
        let mut params =
            certificate_params(request.subject, &request.serial, request.validity_days)?;
        params.is_ca = request.usage.is_ca();
        params.key_usages = request.usage.key_usages();
        params.extended_key_usages = request.usage.extended_key_usages();
        params.use_authority_key_identifier_extension = true;

        let subject_key = rcgen::SubjectPublicKeyInfo::from_der(request.public_key_spki_der)
            .map_err(|err| PkiError::UnsupportedPublicKey(err.to_string()))?;
        let issued = params
            .signed_by(&subject_key, &self.issuer)
            .map_err(|err| PkiError::CertificateBuildFailed(err.to_string()))?;

        // rcgen re-encodes our name; a client chains by comparing it with our subject, so a
        // certificate whose issuer differs would be useless.
        let der = issued.der().as_ref().to_vec();
        let parsed = cert::parse_certificate(&der)?;
        if parsed.issuer().as_raw() != self.subject.as_slice() {
            return Err(PkiError::IssuerNameMismatch);
        }
        Ok(der)
    }

    /// True if our CA's key signed this certificate.
    pub fn issued(&self, cert_der: &[u8]) -> bool {
        cert::is_signed_by(cert_der, &self.spki)
    }

    /// The rcgen issuer: our name and key identifier from the certificate, our key.
    pub(crate) fn issuer(&self) -> &Issuer<'static, rcgen::KeyPair> {
        &self.issuer
    }
}

/// Certificate parameters with a checked subject, serial and validity; no extensions yet.
fn certificate_params(
    subject: &[(SubjectAttribute, String)],
    serial: &[u8; 16],
    validity_days: u32,
) -> Result<CertificateParams, PkiError> {
    if validity_days == 0 || validity_days > MAX_VALIDITY_DAYS {
        return Err(PkiError::ValidityOutOfRange(validity_days));
    }
    if subject.is_empty() || subject.len() > MAX_SUBJECT_ATTRIBUTES {
        return Err(PkiError::SubjectSizeInvalid(subject.len()));
    }

    let mut name = DistinguishedName::new();
    for (index, (attribute, value)) in subject.iter().enumerate() {
        // rcgen keeps one value per type; a repeat would silently replace the first.
        let repeated = subject
            .iter()
            .take(index)
            .any(|(earlier, _)| earlier == attribute);
        if repeated {
            return Err(PkiError::SubjectAttributeRepeated(attribute.short_name()));
        }
        name.push(attribute.dn_type(), attribute.dn_value(value)?);
    }

    let now = OffsetDateTime::now_utc();
    let not_before = now
        .checked_sub(Duration::seconds(CLOCK_SKEW_SECONDS))
        .ok_or(PkiError::ValidityOutOfRange(validity_days))?;
    let not_after = now
        .checked_add(Duration::days(i64::from(validity_days)))
        .ok_or(PkiError::ValidityOutOfRange(validity_days))?;

    let mut params = CertificateParams::default();
    params.distinguished_name = name;
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::prelude::FromDer as _;

    fn device_subject() -> Vec<(SubjectAttribute, String)> {
        vec![
            (SubjectAttribute::CommonName, "device-1".to_owned()),
            (SubjectAttribute::Organization, "Example Org".to_owned()),
            (SubjectAttribute::OrganizationalUnit, "Phones".to_owned()),
            (SubjectAttribute::Country, "DE".to_owned()),
        ]
    }

    #[test]
    fn serials_are_positive_and_distinct() {
        let a = random_serial();
        let b = random_serial();
        assert_ne!(a, b);
        for serial in [a, b] {
            assert_eq!(serial.first().map(|byte| byte & 0x80), Some(0));
            assert!(serial.iter().any(|byte| *byte != 0));
        }
        assert_ne!(fallback_serial(), fallback_serial());
    }

    #[test]
    fn created_ca_has_ca_extensions() {
        let ca = CertificateAuthority::create("otad CA", "Example Org", 3650).unwrap();
        assert_eq!(ca.key().bits(), 2048);
        let (_, parsed) =
            x509_parser::certificate::X509Certificate::from_der(ca.certificate()).unwrap();
        let bc = parsed.basic_constraints().unwrap().unwrap();
        assert!(bc.critical);
        assert!(bc.value.ca);
        let ku = parsed.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
        assert!(!ku.key_encipherment());
        assert!(parsed.iter_extensions().any(|ext| matches!(
            ext.parsed_extension(),
            ParsedExtension::SubjectKeyIdentifier(_)
        )));
        assert_eq!(parsed.subject(), parsed.issuer());
        assert!(ca.issued(ca.certificate()));

        let summary = cert::summarize(ca.certificate()).unwrap();
        assert_eq!(summary.common_name.as_deref(), Some("otad CA"));
        assert_eq!(summary.subject, "CN=otad CA, O=Example Org");
        let days = (summary.not_after - summary.not_before - CLOCK_SKEW_SECONDS) / 86_400;
        assert_eq!(days, 3650);
    }

    #[test]
    fn issue_device_identity() {
        let ca = CertificateAuthority::create("otad CA", "Example Org", 3650).unwrap();
        let device_key = RsaPrivateKey::generate(2048).unwrap();
        let spki = device_key.public_key_spki_der();
        let subject = device_subject();
        let serial = random_serial();
        let der = ca
            .issue(&IssueRequest {
                subject: &subject,
                public_key_spki_der: &spki,
                serial,
                validity_days: 365,
                usage: KeyUsageProfile::DeviceIdentity,
            })
            .unwrap();

        assert!(ca.issued(&der));
        let other = CertificateAuthority::create("other CA", "", 30).unwrap();
        assert!(!other.issued(&der));
        assert!(!ca.issued(other.certificate()));

        let expected_serial: String = serial
            .iter()
            .skip_while(|byte| **byte == 0)
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(cert::serial_hex(&der).unwrap(), expected_serial);
        assert_eq!(cert::spki_der(&der).unwrap(), spki);

        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            parsed.subject().to_string(),
            "CN=device-1, O=Example Org, OU=Phones, C=DE"
        );
        assert_eq!(parsed.issuer().as_raw(), ca.subject_der());
        assert_eq!(
            parsed.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.113549.1.1.11"
        );
        let ku = parsed.key_usage().unwrap().unwrap();
        assert!(ku.critical);
        assert!(ku.value.digital_signature() && ku.value.key_encipherment());
        assert!(!ku.value.key_cert_sign());
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(!parsed.basic_constraints().unwrap().unwrap().value.ca);

        let ski = parsed
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            });
        let aki = parsed
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                }
                _ => None,
            });
        let (_, ca_parsed) =
            x509_parser::certificate::X509Certificate::from_der(ca.certificate()).unwrap();
        let ca_ski = ca_parsed
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            });
        assert!(ski.is_some());
        assert_ne!(ski, ca_ski);
        assert_eq!(aki, ca_ski);

        let summary = cert::summarize(&der).unwrap();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!((now - CLOCK_SKEW_SECONDS - summary.not_before).abs() <= 5);
        assert!(cert::check_validity(&der, now).is_ok());
    }

    #[test]
    fn profiles_set_their_key_usages() {
        let ca = CertificateAuthority::create("otad CA", "Example Org", 3650).unwrap();
        let key = RsaPrivateKey::generate(2048).unwrap();
        let spki = key.public_key_spki_der();
        let subject = vec![(SubjectAttribute::CommonName, "ra".to_owned())];
        let issue = |usage| {
            ca.issue(&IssueRequest {
                subject: &subject,
                public_key_spki_der: &spki,
                serial: random_serial(),
                validity_days: 30,
                usage,
            })
            .unwrap()
        };

        let ra = issue(KeyUsageProfile::SigningAndEncipherment);
        let (_, ra) = x509_parser::certificate::X509Certificate::from_der(&ra).unwrap();
        let ku = ra.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
        assert!(ra.extended_key_usage().unwrap().is_none());

        let signer = issue(KeyUsageProfile::Signing);
        let (_, signer) = x509_parser::certificate::X509Certificate::from_der(&signer).unwrap();
        let ku = signer.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_encipherment());

        let sub_ca = issue(KeyUsageProfile::Ca);
        let (_, sub_ca) = x509_parser::certificate::X509Certificate::from_der(&sub_ca).unwrap();
        let bc = sub_ca.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        assert!(sub_ca.key_usage().unwrap().unwrap().value.key_cert_sign());
    }

    #[test]
    fn openssl_verifies_issued_certificate() {
        let ca = CertificateAuthority::create("otad CA", "Example Org", 3650).unwrap();
        let key = RsaPrivateKey::generate(2048).unwrap();
        let spki = key.public_key_spki_der();
        let subject = device_subject();
        let der = ca
            .issue(&IssueRequest {
                subject: &subject,
                public_key_spki_der: &spki,
                serial: random_serial(),
                validity_days: 30,
                usage: KeyUsageProfile::DeviceIdentity,
            })
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.pem");
        let leaf_path = dir.path().join("leaf.pem");
        std::fs::write(&ca_path, cert::der_to_pem(ca.certificate())).unwrap();
        std::fs::write(&leaf_path, cert::der_to_pem(&der)).unwrap();
        let output = Command::new("/usr/bin/openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&ca_path)
            .arg("-purpose")
            .arg("sslclient")
            .arg(&leaf_path)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "openssl verify: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );

        // And it refuses the leaf under another CA with the same name.
        let impostor = CertificateAuthority::create("otad CA", "Example Org", 3650).unwrap();
        std::fs::write(&ca_path, cert::der_to_pem(impostor.certificate())).unwrap();
        let output = Command::new("/usr/bin/openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&ca_path)
            .arg(&leaf_path)
            .output()
            .unwrap();
        assert!(!output.status.success());
    }

    #[test]
    fn load_checks_key_and_ca() {
        let ca = CertificateAuthority::create("otad CA", "Example Org", 3650).unwrap();
        let same_key = RsaPrivateKey::from_pkcs8_der(ca.key().to_pkcs8_der()).unwrap();
        let loaded = CertificateAuthority::load(ca.certificate(), same_key).unwrap();
        assert_eq!(loaded.certificate(), ca.certificate());
        assert_eq!(loaded.spki_der(), ca.spki_der());

        let wrong_key = RsaPrivateKey::generate(2048).unwrap();
        assert_eq!(
            CertificateAuthority::load(ca.certificate(), wrong_key).err(),
            Some(PkiError::CaKeyMismatch)
        );

        let leaf_key = RsaPrivateKey::generate(2048).unwrap();
        let spki = leaf_key.public_key_spki_der();
        let subject = vec![(SubjectAttribute::CommonName, "leaf".to_owned())];
        let leaf = ca
            .issue(&IssueRequest {
                subject: &subject,
                public_key_spki_der: &spki,
                serial: random_serial(),
                validity_days: 30,
                usage: KeyUsageProfile::Signing,
            })
            .unwrap();
        assert_eq!(
            CertificateAuthority::load(&leaf, leaf_key).err(),
            Some(PkiError::NotACaCertificate)
        );
    }

    #[test]
    fn request_refusals() {
        let ca = CertificateAuthority::create("otad CA", "", 30).unwrap();
        let spki = ca.key().public_key_spki_der();
        let attempt = |subject: &[(SubjectAttribute, String)], days| {
            ca.issue(&IssueRequest {
                subject,
                public_key_spki_der: &spki,
                serial: random_serial(),
                validity_days: days,
                usage: KeyUsageProfile::Signing,
            })
            .err()
        };
        let cn = vec![(SubjectAttribute::CommonName, "x".to_owned())];

        assert_eq!(attempt(&cn, 0), Some(PkiError::ValidityOutOfRange(0)));
        assert_eq!(
            attempt(&cn, MAX_VALIDITY_DAYS + 1),
            Some(PkiError::ValidityOutOfRange(MAX_VALIDITY_DAYS + 1))
        );
        assert_eq!(attempt(&[], 30), Some(PkiError::SubjectSizeInvalid(0)));
        let twice = vec![
            (SubjectAttribute::CommonName, "a".to_owned()),
            (SubjectAttribute::CommonName, "b".to_owned()),
        ];
        assert_eq!(
            attempt(&twice, 30),
            Some(PkiError::SubjectAttributeRepeated("CN"))
        );
        let country = vec![(SubjectAttribute::Country, "Germany".to_owned())];
        assert_eq!(
            attempt(&country, 30),
            Some(PkiError::SubjectAttributeInvalid("C"))
        );
        let long = vec![(SubjectAttribute::CommonName, "x".repeat(65))];
        assert_eq!(
            attempt(&long, 30),
            Some(PkiError::SubjectAttributeInvalid("CN"))
        );
        let empty = vec![(SubjectAttribute::CommonName, String::new())];
        assert_eq!(
            attempt(&empty, 30),
            Some(PkiError::SubjectAttributeInvalid("CN"))
        );

        let bad_key = ca.issue(&IssueRequest {
            subject: &cn,
            public_key_spki_der: b"\x30\x00",
            serial: random_serial(),
            validity_days: 30,
            usage: KeyUsageProfile::Signing,
        });
        assert!(matches!(bad_key, Err(PkiError::UnsupportedPublicKey(_))));
    }

    #[test]
    fn short_names_round_trip() {
        for attribute in [
            SubjectAttribute::CommonName,
            SubjectAttribute::Country,
            SubjectAttribute::SerialNumber,
        ] {
            assert_eq!(
                SubjectAttribute::from_short_name(attribute.short_name()),
                Some(attribute)
            );
        }
        assert_eq!(SubjectAttribute::from_short_name("XX"), None);
    }
}
