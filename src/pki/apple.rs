//! Apple's public CA certificates, embedded and pinned, and [`TrustAnchor`]: a CA trusted by
//! its public key, never by its name.
//!
//! OTA phase 2 trusts a device only if Apple iPhone Device CA's key signed its certificate.
//! A certificate that carries Apple's names but was signed by another key is an impostor.
//! Apple's intermediates have expired and Apple says to trust them anyway, so an anchor's own
//! validity is never looked at; the caller checks the leaf's with
//! [`check_validity`](super::cert::check_validity).

use super::cert::{self, RsaPublicKey};
use super::PkiError;

/// Apple Root CA (RSA-2048, valid to 2035), SHA-256 fingerprint
/// B0:B1:73:0E:CB:C7:FF:45:05:14:2C:49:F1:29:5E:6E:DA:6B:CA:ED:7E:2C:68:C5:BE:91:B5:A1:10:01:F0:24.
pub const APPLE_ROOT_CA_PEM: &str = r"-----BEGIN CERTIFICATE-----
MIIEuzCCA6OgAwIBAgIBAjANBgkqhkiG9w0BAQUFADBiMQswCQYDVQQGEwJVUzET
MBEGA1UEChMKQXBwbGUgSW5jLjEmMCQGA1UECxMdQXBwbGUgQ2VydGlmaWNhdGlv
biBBdXRob3JpdHkxFjAUBgNVBAMTDUFwcGxlIFJvb3QgQ0EwHhcNMDYwNDI1MjE0
MDM2WhcNMzUwMjA5MjE0MDM2WjBiMQswCQYDVQQGEwJVUzETMBEGA1UEChMKQXBw
bGUgSW5jLjEmMCQGA1UECxMdQXBwbGUgQ2VydGlmaWNhdGlvbiBBdXRob3JpdHkx
FjAUBgNVBAMTDUFwcGxlIFJvb3QgQ0EwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAw
ggEKAoIBAQDkkakJH5HbHkdQ6wXtXnmELes2oldMVeyLGYne+Uts9QerIjAC6Bg+
+FAJ039BqJj50cpmnCRrEdCju+QbKsMflZ56DKRHi1vUFjczy8QPTc4UadHJGXL1
XQ7Vf1+b8iUDulWPTV0N8WQ1IxVLFVkds5T39pyez1C6wVhQZ48ItCD3y6wsIG9w
tj8BMIy3Q88PnT3zK0koGsj+zrW5DtleHNbLPbU6rfQPDgCSC7EhFi501TwN22IW
q6NxkkdTVcGvL0Gz+PvjcM3mo0xFfh9Ma1CWQYnEdGILEINBhzOKgbEwWOxaBDKM
aLOPHd5lc/9nXmW8Sdh2nzMUZaF3lMktAgMBAAGjggF6MIIBdjAOBgNVHQ8BAf8E
BAMCAQYwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUK9BpR5R2Cf70a40uQKb3
R01/CF4wHwYDVR0jBBgwFoAUK9BpR5R2Cf70a40uQKb3R01/CF4wggERBgNVHSAE
ggEIMIIBBDCCAQAGCSqGSIb3Y2QFATCB8jAqBggrBgEFBQcCARYeaHR0cHM6Ly93
d3cuYXBwbGUuY29tL2FwcGxlY2EvMIHDBggrBgEFBQcCAjCBthqBs1JlbGlhbmNl
IG9uIHRoaXMgY2VydGlmaWNhdGUgYnkgYW55IHBhcnR5IGFzc3VtZXMgYWNjZXB0
YW5jZSBvZiB0aGUgdGhlbiBhcHBsaWNhYmxlIHN0YW5kYXJkIHRlcm1zIGFuZCBj
b25kaXRpb25zIG9mIHVzZSwgY2VydGlmaWNhdGUgcG9saWN5IGFuZCBjZXJ0aWZp
Y2F0aW9uIHByYWN0aWNlIHN0YXRlbWVudHMuMA0GCSqGSIb3DQEBBQUAA4IBAQBc
NplMLXi37Yyb3PN3m/J20ncwT8EfhYOFG5k9RzfyqZtAjizUsZAS2L70c5vu0mQP
y3lPNNiiPvl4/2vIB+x9OYOLUyDTOMSxv5pPCmv/K/xZpwUJfBdAVhEedNO3iyM7
R6PVbyTi69G3cN8PReEnyvFteO3ntRcXqNx+IjXKJdXZD9Zr1KIkIxH3oayPc4Fg
xhtbCS+SsvhESPBgOJ4V9T0mZyCKM2r3DYLP3uujL/lTaltkwGMzd/c6ByxW69oP
IQ7aunMZT7XZNn/Bh1XZp5m5MkL72NVxnn6hUrcbvZNCJBIqxw8dtk2cXmPIS4AX
UKqK1drk/NAJBzewdXUh
-----END CERTIFICATE-----
";

/// Apple iPhone Certification Authority (RSA-2048, issued by Apple Root CA, expired
/// 2022-04-12; Apple says to trust it anyway).
pub const APPLE_IPHONE_CA_PEM: &str = r"-----BEGIN CERTIFICATE-----
MIID8zCCAtugAwIBAgIBFzANBgkqhkiG9w0BAQUFADBiMQswCQYDVQQGEwJVUzET
MBEGA1UEChMKQXBwbGUgSW5jLjEmMCQGA1UECxMdQXBwbGUgQ2VydGlmaWNhdGlv
biBBdXRob3JpdHkxFjAUBgNVBAMTDUFwcGxlIFJvb3QgQ0EwHhcNMDcwNDEyMTc0
MzI4WhcNMjIwNDEyMTc0MzI4WjB5MQswCQYDVQQGEwJVUzETMBEGA1UEChMKQXBw
bGUgSW5jLjEmMCQGA1UECxMdQXBwbGUgQ2VydGlmaWNhdGlvbiBBdXRob3JpdHkx
LTArBgNVBAMTJEFwcGxlIGlQaG9uZSBDZXJ0aWZpY2F0aW9uIEF1dGhvcml0eTCC
ASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBAKMevvBHwLSeEFtGpLghuE+G
IXAoRWBcHMPICmRjiPv8ae74VPzpW7cGTgQvw2szr0RM6kuACbSH9lu0/WTds3Lg
E7P9F9m856jtwoxhwir57M6lXtZp62QLjQiPuKBQRgncGeTlsJRtu/eZmMTom0FO
1PFl4xtSetzoA9luHdoQVYakKVhJDOpH1xU0M/bAoERKcL4stSowN4wuFevR5GyX
OFVWsTUrWOpEoyaF7shmSuTPifA9Y60p3q26WrPcpaOapwlOgBY1ZaSFDWN7PmOK
2n1KRuyjORg0ucYoZRi8E2Ccf1esFMmJ7aG2h2hStoROuMiD7PmeGauzwQuGx58C
AwEAAaOBnDCBmTAOBgNVHQ8BAf8EBAMCAYYwDwYDVR0TAQH/BAUwAwEB/zAdBgNV
HQ4EFgQU5zQqLiLeOWBrtJTOd4NhLzGgfDUwHwYDVR0jBBgwFoAUK9BpR5R2Cf70
a40uQKb3R01/CF4wNgYDVR0fBC8wLTAroCmgJ4YlaHR0cDovL3d3dy5hcHBsZS5j
b20vYXBwbGVjYS9yb290LmNybDANBgkqhkiG9w0BAQUFAAOCAQEAHdHVe910TtcX
/IItDJmbXkJy8mnc1WteDQxrSz57FCXes5TooPoPgInyFz0AAqKRkb50V9yvmp+h
Cn0wvgAqzCFZ6/1JrG51GeiaegPRhvbn9rAOS0n6o7dButfR41ahfYOrl674UUom
wYVCEyaNA1RmEF5ghAUSMStrVMCgyEG8VB7nVK0TANJKx7vBiq+BCI7wRgq/J6a+
3M85OoBwGSMyo2tmXZ5NqEdJsntFtVEzp3RnCU62bG9I9yy5MwVEa0W+dEtvsoaR
tD4lKCWes8JRhvxP5a87qrtELAFJ4nSzNPpE7xTCEfItGRpRidMISkFsWFbemzrh
BVflYs/SDw==
-----END CERTIFICATE-----
";

/// Apple iPhone Device CA (RSA-1024, issued by Apple iPhone Certification Authority, expired
/// 2014-04-16), which still signs device certificates with SHA-1 and SHA-256.
pub const APPLE_IPHONE_DEVICE_CA_PEM: &str = r"-----BEGIN CERTIFICATE-----
MIIDaTCCAlGgAwIBAgIBATANBgkqhkiG9w0BAQUFADB5MQswCQYDVQQGEwJVUzET
MBEGA1UEChMKQXBwbGUgSW5jLjEmMCQGA1UECxMdQXBwbGUgQ2VydGlmaWNhdGlv
biBBdXRob3JpdHkxLTArBgNVBAMTJEFwcGxlIGlQaG9uZSBDZXJ0aWZpY2F0aW9u
IEF1dGhvcml0eTAeFw0wNzA0MTYyMjU0NDZaFw0xNDA0MTYyMjU0NDZaMFoxCzAJ
BgNVBAYTAlVTMRMwEQYDVQQKEwpBcHBsZSBJbmMuMRUwEwYDVQQLEwxBcHBsZSBp
UGhvbmUxHzAdBgNVBAMTFkFwcGxlIGlQaG9uZSBEZXZpY2UgQ0EwgZ8wDQYJKoZI
hvcNAQEBBQADgY0AMIGJAoGBAPGUSsnquloYYK3Lok1NTlQZaRdZB2bLl+hmmkdf
Rq5nerVKc1SxywT2vTa4DFU4ioSDMVJl+TPhl3ecK0wmsCU/6TKqewh0lOzBSzgd
Z04IUpRai1mjXNeT9KD+VYW7TEaXXm6yd0UvZ1y8Cxi/WblshvcqdXbSGXH0KWO5
JQuvAgMBAAGjgZ4wgZswDgYDVR0PAQH/BAQDAgGGMA8GA1UdEwEB/wQFMAMBAf8w
HQYDVR0OBBYEFLL+ISNEhpVqedWBJo5zENinTI50MB8GA1UdIwQYMBaAFOc0Ki4i
3jlga7SUzneDYS8xoHw1MDgGA1UdHwQxMC8wLaAroCmGJ2h0dHA6Ly93d3cuYXBw
bGUuY29tL2FwcGxlY2EvaXBob25lLmNybDANBgkqhkiG9w0BAQUFAAOCAQEAd13P
Z3pMViukVHe9WUg8Hum+0I/0kHKvjhwVd/IMwGlXyU7DhUYWdja2X/zqj7W24Aq5
7dEKm3fqqxK5XCFVGY5HI0cRsdENyTP7lxSiiTRYj2mlPedheCn+k6T5y0U4Xr40
FXwWb2nWqCF1AgIudhgvVbxlvqcxUm8Zz7yDeJ0JFovXQhyO5fLUHRLCQFssAbf8
B4i8rYYsBUhYTspVJcxVpIIltkYpdIRSIARA49HNvKK4hzjzMS/OhKQpVKw+OCEZ
xptCVeN2pjbdt9uzi175oVo/u6B2ArKAW17u6XEHIdDMOe7cb33peVI6TD15W4MI
pyQPbp8orlXe+tA8JA==
-----END CERTIFICATE-----
";

/// Names of the embedded anchors, for logs.
const APPLE_ROOT_CA_NAME: &str = "Apple Root CA";
/// See [`APPLE_ROOT_CA_NAME`].
const APPLE_IPHONE_CA_NAME: &str = "Apple iPhone Certification Authority";
/// See [`APPLE_ROOT_CA_NAME`].
const APPLE_IPHONE_DEVICE_CA_NAME: &str = "Apple iPhone Device CA";

/// A CA trusted by its public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustAnchor {
    /// A name for logs; never used to decide trust.
    pub name: String,
    /// The anchor's certificate DER (empty if an embedded one could not be read).
    pub certificate: Vec<u8>,
    /// The pinned SubjectPublicKeyInfo DER.
    spki: Vec<u8>,
    /// The anchor's subject Name DER, for the second (name) check.
    subject: Vec<u8>,
}

impl TrustAnchor {
    /// An anchor from a CA certificate's DER; its key must be RSA.
    ///
    /// The certificate's validity and extensions are not looked at: trust comes from the
    /// caller choosing this certificate, and Apple's anchors have expired.
    pub fn from_der(name: &str, der: &[u8]) -> Result<Self, PkiError> {
        let certificate = cert::parse_certificate(der)?;

        let spki = certificate.public_key().raw;
        RsaPublicKey::from_spki_der(spki)?;
        Ok(Self {
            name: name.to_owned(),
            certificate: der.to_vec(),
            spki: spki.to_vec(),
            subject: certificate.subject().as_raw().to_vec(),
        })
    }

    /// Apple iPhone Device CA, from [`APPLE_IPHONE_DEVICE_CA_PEM`]: the key that signs
    /// device identity certificates.
    pub fn apple_device_ca() -> TrustAnchor {
        Self::embedded(APPLE_IPHONE_DEVICE_CA_NAME, APPLE_IPHONE_DEVICE_CA_PEM)
    }

    /// Apple iPhone Certification Authority, from [`APPLE_IPHONE_CA_PEM`].
    pub fn apple_iphone_ca() -> TrustAnchor {
        Self::embedded(APPLE_IPHONE_CA_NAME, APPLE_IPHONE_CA_PEM)
    }

    /// Apple Root CA, from [`APPLE_ROOT_CA_PEM`].
    pub fn apple_root_ca() -> TrustAnchor {
        Self::embedded(APPLE_ROOT_CA_NAME, APPLE_ROOT_CA_PEM)
    }

    /// An anchor from embedded PEM. The constants are checked by unit tests; were one ever
    /// unreadable, the anchor would have no key and trust nothing (fail closed, no panic).
    fn embedded(name: &str, pem: &str) -> TrustAnchor {
        match cert::pem_to_der(pem).and_then(|der| Self::from_der(name, &der)) {
            Ok(anchor) => anchor,
            Err(err) => {
                log::error!("embedded anchor {name}: {err}; it will trust nothing");
                TrustAnchor {
                    name: name.to_owned(),
                    certificate: Vec::new(),
                    spki: Vec::new(),
                    subject: Vec::new(),
                }
            }
        }
    }

    /// The pinned SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// The anchor's subject Name DER.
    pub fn subject_der(&self) -> &[u8] {
        &self.subject
    }

    /// The leaf's signature verifies under this anchor's pinned key, and (a second check,
    /// never the first) the leaf's issuer name equals the anchor's subject, byte for byte.
    ///
    /// The leaf's validity is not checked here; see [`cert::check_validity`].
    pub fn verify_issued(&self, leaf_der: &[u8]) -> Result<(), PkiError> {
        let leaf = cert::parse_certificate(leaf_der)?;

        // The key decides; the name is only looked at once the key has said yes.
        if leaf.signature_algorithm != leaf.tbs_certificate.signature {
            return Err(PkiError::SignatureNotByAnchor);
        }
        cert::verify_x509_signature(
            &self.spki,
            &leaf.signature_algorithm.algorithm,
            leaf.signature_algorithm.parameters.as_ref(),
            leaf.tbs_certificate.as_ref(),
            &leaf.signature_value,
        )
        .map_err(|err| match err {
            PkiError::UnsupportedSignatureAlgorithm(oid) => {
                PkiError::UnsupportedSignatureAlgorithm(oid)
            }
            _ => PkiError::SignatureNotByAnchor,
        })?;

        if leaf.issuer().as_raw() != self.subject.as_slice() {
            return Err(PkiError::IssuerNameMismatch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::digest;

    #[test]
    fn embedded_chain_verifies_by_key() {
        let root = TrustAnchor::apple_root_ca();
        let iphone = TrustAnchor::apple_iphone_ca();
        let device = TrustAnchor::apple_device_ca();
        assert!(!device.certificate.is_empty());

        assert_eq!(iphone.verify_issued(&device.certificate), Ok(()));
        assert_eq!(root.verify_issued(&iphone.certificate), Ok(()));
        assert_eq!(root.verify_issued(&root.certificate), Ok(()));
    }

    #[test]
    fn wrong_anchor_is_refused() {
        let root = TrustAnchor::apple_root_ca();
        let device = TrustAnchor::apple_device_ca();
        // The Device CA was signed by the iPhone CA, not by the root.
        assert_eq!(
            root.verify_issued(&device.certificate),
            Err(PkiError::SignatureNotByAnchor)
        );
        assert_eq!(
            device.verify_issued(&device.certificate),
            Err(PkiError::SignatureNotByAnchor)
        );
    }

    #[test]
    fn root_fingerprint_is_apples() {
        let root = TrustAnchor::apple_root_ca();
        let fingerprint = digest::digest(&digest::SHA256, &root.certificate);
        let hex: Vec<String> = fingerprint
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02X}"))
            .collect();
        assert_eq!(
            hex.join(":"),
            "B0:B1:73:0E:CB:C7:FF:45:05:14:2C:49:F1:29:5E:6E:\
             DA:6B:CA:ED:7E:2C:68:C5:BE:91:B5:A1:10:01:F0:24"
        );
    }

    #[test]
    fn device_ca_key_is_rsa_1024() {
        let device = TrustAnchor::apple_device_ca();
        let key = RsaPublicKey::from_spki_der(device.spki_der()).unwrap();
        assert_eq!(key.bits, 1024);
        assert_eq!(device.name, "Apple iPhone Device CA");
        let summary = cert::summarize(&device.certificate).unwrap();
        assert_eq!(
            summary.common_name.as_deref(),
            Some("Apple iPhone Device CA")
        );
    }

    #[test]
    fn broken_anchor_trusts_nothing() {
        let broken = TrustAnchor::embedded("broken", "not pem");
        assert!(broken.spki_der().is_empty());
        let device = TrustAnchor::apple_device_ca();
        assert_eq!(
            broken.verify_issued(&device.certificate),
            Err(PkiError::SignatureNotByAnchor)
        );
    }
}
