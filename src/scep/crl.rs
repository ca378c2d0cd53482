//! GetCRL ([RFC 8894 section 3.3.4](https://www.rfc-editor.org/rfc/rfc8894#section-3.3.4)):
//! the CA's current CRL, for a client that names a certificate by issuer and serial.
//!
//! One CRL covers everything our CA issued, so the serial only goes to the log; the issuer
//! must be our CA. The answer is a CertRep SUCCESS whose envelope holds a degenerate
//! SignedData with the CRL in `crls` — the same CRL `GET /crl` serves.

use der::asn1::{AnyRef, IntRef};
use der::{Decode as _, Encode as _, Tagged as _};
use log::info;

use super::enroll::check_answerable;
use super::{open_envelope, refuse, succeed, FailInfo, ReplyTo, ScepError};
use crate::cms::{ber, signed};
use crate::context::Context;
use crate::pki::{cert, crl};
use crate::store::now;

/// `IssuerAndSerialNumber ::= SEQUENCE { issuer Name, serialNumber CertificateSerialNumber }`
/// ([RFC 5652 section 10.2.4](https://www.rfc-editor.org/rfc/rfc5652#section-10.2.4)); the
/// issuer kept as its DER, to be compared byte for byte.
#[derive(der::Sequence)]
struct IssuerAndSerialNumber<'a> {
    issuer: AnyRef<'a>,
    serial_number: IntRef<'a>,
}

/// What a GetCRL request names: the issuer Name's DER and the serial (hex).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CrlQuery {
    /// The issuer Name, DER.
    pub issuer: Vec<u8>,
    /// The serial as lowercase hex without leading zero octets.
    pub serial_hex: String,
}

/// Reads the IssuerAndSerialNumber a GetCRL envelope holds (BER accepted).
pub(crate) fn read_query(content: &[u8]) -> Result<CrlQuery, String> {
    let der = ber::normalize(content).map_err(|err| format!("IssuerAndSerialNumber: {err}"))?;
    let parsed = IssuerAndSerialNumber::from_der(&der)
        .map_err(|err| format!("IssuerAndSerialNumber: {err}"))?;
    if parsed.issuer.tag() != der::Tag::Sequence {
        return Err("IssuerAndSerialNumber: issuer is not a Name".into());
    }
    let issuer = parsed
        .issuer
        .to_der()
        .map_err(|err| format!("IssuerAndSerialNumber: issuer: {err}"))?;
    // The form `cert::serial_hex` gives, without the sign octet.
    let serial_hex: String = parsed
        .serial_number
        .as_bytes()
        .iter()
        .skip_while(|octet| **octet == 0)
        .map(|octet| format!("{octet:02x}"))
        .collect();
    let serial_hex = if serial_hex.is_empty() {
        "0".to_string()
    } else {
        serial_hex
    };
    Ok(CrlQuery { issuer, serial_hex })
}

/// Answers a GetCRL request: the current CRL (re-signed first if it is due), encrypted to the
/// requester with the request's cipher.
pub(crate) fn get_crl(
    ctx: &Context,
    to: &ReplyTo,
    message: &signed::SignedMessage,
    remote: &str,
) -> Result<Vec<u8>, ScepError> {
    let requester = message.signer.certificate.as_slice();
    let decrypted = match open_envelope(ctx, to, message, remote) {
        Ok(decrypted) => decrypted,
        Err(reply) => return reply,
    };

    let query = match read_query(&decrypted.content) {
        Ok(query) => query,
        Err(reason) => return refuse(ctx, to, FailInfo::BadRequest, &reason, remote),
    };
    if query.issuer != ctx.ca.subject_der() {
        let reason = "GetCRL: the issuer named is not this CA";
        return refuse(ctx, to, FailInfo::BadCertId, reason, remote);
    }
    let bits = cert::spki_der(requester)
        .and_then(|spki| cert::RsaPublicKey::from_spki_der(&spki).map(|key| key.bits));
    let answerable = match bits {
        Ok(bits) => check_answerable(bits),
        Err(err) => Err(format!("signer certificate: {err}")),
    };
    if let Err(reason) = answerable {
        return refuse(ctx, to, FailInfo::BadAlg, &reason, remote);
    }

    let crl_der = crl::current(&ctx.store, &ctx.ca, ctx.derived.crl_validity, now())
        .map_err(|err| ScepError::Internal(format!("GetCRL: {err}")))?;
    let degenerate =
        signed::crls_only(&crl_der).map_err(|err| ScepError::Internal(format!("GetCRL: {err}")))?;
    let reply = succeed(ctx, to, &degenerate, decrypted.cipher, requester)?;
    info!(
        "scep: GetCRL for serial {} answered, transaction {} remote={remote}",
        query.serial_hex, to.transaction_id
    );
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DER of an IssuerAndSerialNumber with this issuer Name DER and serial content octets.
    fn query_der(issuer: &[u8], serial: &[u8]) -> Vec<u8> {
        let serial = [&[0x02, serial.len() as u8][..], serial].concat();
        let body = [issuer, &serial].concat();
        [&[0x30, body.len() as u8][..], &body].concat()
    }

    #[test]
    fn query_keeps_the_issuer_as_sent() {
        // Name: SEQUENCE { SET { SEQUENCE { OID 2.5.4.3, UTF8String "CA" } } }
        let issuer = [
            0x30, 0x0d, 0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x02, b'C',
            b'A',
        ];
        let query = read_query(&query_der(&issuer, &[0x00, 0x8f, 0x01])).unwrap();
        assert_eq!(query.issuer, issuer);
        assert_eq!(query.serial_hex, "8f01");
    }

    #[test]
    fn openssl_reads_the_crl_in_the_degenerate_signed_data() {
        let ca = crate::pki::ca::CertificateAuthority::create("GetCRL CA", "Org", 30).unwrap();
        let now = now();
        let revoked = [crl::RevokedEntry {
            serial_hex: "0a1b".into(),
            revoked_at: now - 60,
            reason: crl::RevocationReason::KeyCompromise,
        }];
        let crl_der = crl::sign(
            &ca,
            &crl::CrlParams {
                number: 9,
                this_update: now - 60,
                next_update: now + 3600,
                revoked: &revoked,
            },
        )
        .unwrap();
        let degenerate = signed::crls_only(&crl_der).unwrap();
        assert!(
            signed::crls_only(&crl_der[1..]).is_err(),
            "a CRL is one SEQUENCE"
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("reply.p7"), &degenerate).unwrap();
        let output = std::process::Command::new("openssl")
            .current_dir(dir.path())
            .args([
                "pkcs7",
                "-inform",
                "DER",
                "-in",
                "reply.p7",
                "-print_certs",
                "-text",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        assert!(
            stdout.contains("Certificate Revocation List (CRL):"),
            "{stdout}"
        );
        assert!(stdout.contains("Serial Number: 0A1B"), "{stdout}");
        assert!(stdout.contains("CN=GetCRL CA") || stdout.contains("CN = GetCRL CA"));
    }

    #[test]
    fn query_refusals() {
        let not_a_name = [0x04, 0x01, 0x00];
        assert!(read_query(&query_der(&not_a_name, &[1]))
            .unwrap_err()
            .contains("issuer is not a Name"));
        assert!(read_query(b"\x30\x00").is_err());
        assert!(read_query(b"").is_err());
        let mut trailing = query_der(&[0x30, 0x00], &[1]);
        trailing.push(0);
        assert!(read_query(&trailing).is_err());
    }
}
