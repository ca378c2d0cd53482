//! RenewalReq ([RFC 8894 §3.3.1.2](https://www.rfc-editor.org/rfc/rfc8894#section-3.3.1.2)):
//! a new certificate for the holder of one of ours, signed with that certificate.
//!
//! The signer is the authority here, not a challenge: it must be a certificate our CA key
//! signed, recorded among the certificates, not revoked and valid now. The CSR may be for a
//! new key or the same one; the new certificate keeps the old one's subject and device
//! binding, whatever the CSR asks for, and the old record points to its successor.

use log::info;

use super::enroll::{check_answerable, issued_to, Authorisation};
use super::poll::signer_key_bits;
use super::{open_envelope, refuse, succeed, FailInfo, ReplyTo, ScepError};
use crate::cms::{signed, ContentCipher};
use crate::context::Context;
use crate::issuance;
use crate::pki::{cert, csr};
use crate::store::{now, CertRecord, StoreError};

/// The subject attributes a renewed certificate can carry over, by OID, with the short names
/// `pki::ca::SubjectAttribute` knows them by.
const CARRIED_ATTRIBUTES: &[(&str, &str)] = &[
    ("2.5.4.3", "CN"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.6", "C"),
    ("2.5.4.8", "ST"),
    ("2.5.4.7", "L"),
    ("2.5.4.5", "serialNumber"),
];

/// Why a RenewalReq's signer is not one that may renew.
enum SignerCheck {
    /// Not an acceptable signer (FAILURE badMessageCheck).
    Refused(String),
    /// The state dir could not be read.
    Internal(String),
}

/// RenewalReq: check the signer, decrypt, check the CSR, issue under the old subject, mark
/// the old certificate superseded, answer.
pub(crate) fn renewal_req(
    ctx: &Context,
    to: &ReplyTo,
    message: &signed::SignedMessage,
    remote: &str,
) -> Result<Vec<u8>, ScepError> {
    let signer = message.signer.certificate.as_slice();
    let old = match check_signer(ctx, signer, now()) {
        Ok(old) => old,
        Err(SignerCheck::Refused(reason)) => {
            return refuse(ctx, to, FailInfo::BadMessageCheck, &reason, remote)
        }
        Err(SignerCheck::Internal(why)) => return Err(ScepError::Internal(why)),
    };
    // A blocked device renews nothing, not even a repeat of a renewal already made.
    if let Err(reason) = check_device(ctx, &old) {
        return refuse(ctx, to, FailInfo::BadRequest, &reason, remote);
    }

    let decrypted = match open_envelope(ctx, to, message, remote) {
        Ok(decrypted) => decrypted,
        Err(reply) => return reply,
    };
    // No challenge and no signer-key match: the old certificate authorises, and the CSR's
    // own signature proves possession of the (possibly new) key.
    let request = match csr::parse(&decrypted.content) {
        Ok(request) => request,
        Err(err) => {
            let reason = format!("CSR: {err}");
            return refuse(ctx, to, FailInfo::BadRequest, &reason, remote);
        }
    };
    // The reply is encrypted to the old key; the next renewal's to the new one.
    let answerable = signer_key_bits(signer)
        .and_then(check_answerable)
        .and_then(|()| check_answerable(request.key_bits));
    if let Err(reason) = answerable {
        return refuse(ctx, to, FailInfo::BadAlg, &reason, remote);
    }

    if let Some(successor) = &old.superseded_by {
        return renewed_again(
            ctx,
            to,
            &old,
            successor,
            &request,
            decrypted.cipher,
            signer,
            remote,
        );
    }
    let subject = match carried_subject(signer) {
        Ok(subject) => subject,
        Err(reason) => return refuse(ctx, to, FailInfo::BadRequest, &reason, remote),
    };
    let authorisation = Authorisation {
        subject,
        udid: old.udid.clone(),
        authorised_by: "renewal",
    };

    // Under the state lock, so that of two renewals racing with one certificate exactly one
    // issues; the other finds the successor and is answered as a repeat.
    let grant = issuance::Grant {
        subject: &authorisation.subject,
        udid: authorisation.udid.as_deref(),
        authorised_by: authorisation.authorised_by,
        remote,
    };
    let renewed = ctx.store.transaction(|| -> Result<Renewed, ScepError> {
        let mut current = ctx.store.cert(&old.serial)?.unwrap_or_else(|| old.clone());
        // A revocation committed while this request waited for the lock wins, and so does
        // one interrupted after its CRL index entry (its record not marked yet), in whatever
        // spelling crl.json gives its serial. An entry that cannot be read names no
        // certificate, so it stops no renewal (fsck and the CRL's re-signing report it).
        if current.revoked.is_some() || ctx.store.crl_index_read()?.index.lists(&current.serial) {
            return Ok(Renewed::Revoked);
        }
        // So does a block committed meanwhile.
        if let Err(reason) = check_device(ctx, &current) {
            return Ok(Renewed::Blocked(reason));
        }
        if let Some(successor) = current.superseded_by.clone() {
            return Ok(Renewed::Already(successor));
        }
        let (issued, record) =
            match issuance::issue(ctx, &request.public_key_spki_der, &grant, now()) {
                Ok(issued) => issued,
                // What the old certificate carries (say, an imported one's 80-character CN) is
                // the request's problem, not the server's.
                Err(err @ (issuance::IssueError::Subject(_) | issuance::IssueError::Pki(_))) => {
                    return Ok(Renewed::Unissuable(err.to_string()));
                }
                Err(err) => return Err(ScepError::Internal(err.to_string())),
            };
        current.superseded_by = Some(record.serial.clone());
        ctx.store.update_cert(&current)?;
        Ok(Renewed::New(issued, record))
    })?;
    let (issued, record) = match renewed {
        Renewed::New(issued, record) => (issued, record),
        Renewed::Unissuable(why) => {
            let reason = format!(
                "signer certificate {}: cannot be renewed: {why}",
                old.serial
            );
            return refuse(ctx, to, FailInfo::BadRequest, &reason, remote);
        }
        Renewed::Revoked => {
            let reason = format!("signer certificate {}: revoked", old.serial);
            return refuse(ctx, to, FailInfo::BadMessageCheck, &reason, remote);
        }
        Renewed::Blocked(reason) => {
            return refuse(ctx, to, FailInfo::BadRequest, &reason, remote);
        }
        Renewed::Already(successor) => {
            let cipher = decrypted.cipher;
            return renewed_again(ctx, to, &old, &successor, &request, cipher, signer, remote);
        }
    };
    issued_to(ctx, &record, &authorisation, remote)?;
    info!(
        "scep: renewed certificate {} as {} remote={remote}",
        old.serial, record.serial
    );
    let degenerate =
        signed::certs_only(&[&issued]).map_err(|err| ScepError::Internal(err.to_string()))?;
    succeed(ctx, to, &degenerate, decrypted.cipher, signer)
}

/// The blocklist for the device a certificate is bound to (`otad device block`), as at
/// PKCSReq: `Err` with the reason when the device is blocked.
fn check_device(ctx: &Context, record: &CertRecord) -> Result<(), String> {
    match record.udid.as_deref() {
        Some(udid) => crate::decide::check_scep(ctx, udid)
            .map_err(|why| format!("signer certificate {}: {why}", record.serial)),
        None => Ok(()),
    }
}

/// The signer's certificate record, if the signer may renew: our CA key signed it, we
/// recorded issuing exactly it, it is not revoked, and it is valid at `at`.
fn check_signer(ctx: &Context, signer: &[u8], at: i64) -> Result<CertRecord, SignerCheck> {
    if !ctx.ca.issued(signer) {
        return Err(SignerCheck::Refused(
            "signer certificate: not issued by this CA".into(),
        ));
    }
    let serial = cert::serial_hex(signer)
        .map_err(|err| SignerCheck::Refused(format!("signer certificate: {err}")))?;
    let refused = |why: &str| SignerCheck::Refused(format!("signer certificate {serial}: {why}"));

    let record = match ctx.store.cert(&serial) {
        Ok(Some(record)) => record,
        Ok(None) | Err(StoreError::InvalidName(_)) => return Err(refused("no record of it")),
        Err(err) => {
            return Err(SignerCheck::Internal(format!(
                "certificate {serial}: {err}"
            )))
        }
    };
    if cert::pem_to_der(&record.pem).ok().as_deref() != Some(signer) {
        return Err(refused("not the certificate recorded under its serial"));
    }
    if record.revoked.is_some() {
        return Err(refused("revoked"));
    }
    if record.superseded_by.is_none() {
        if let Some(udid) = &record.udid {
            let current = crate::ota::current_certificate(ctx, udid)
                .map_err(|err| SignerCheck::Internal(err.to_string()))?;
            if current.as_deref() != Some(serial.as_str()) {
                return Err(refused("no longer the device's current certificate"));
            }
        }
    }
    cert::check_validity(signer, at).map_err(|err| refused(&err.to_string()))?;
    Ok(record)
}

/// A RenewalReq signed by a certificate already renewed: a client whose reply was lost asks
/// again, with the key of the successor, and gets the successor again. Any other key is
/// refused, so that one old certificate renews once.
#[allow(clippy::too_many_arguments)]
fn renewed_again(
    ctx: &Context,
    to: &ReplyTo,
    old: &CertRecord,
    successor: &str,
    request: &csr::CertificationRequest,
    cipher: ContentCipher,
    signer: &[u8],
    remote: &str,
) -> Result<Vec<u8>, ScepError> {
    let successor_der = ctx
        .store
        .cert(successor)
        .ok()
        .flatten()
        .filter(|record| record.revoked.is_none())
        .and_then(|record| cert::pem_to_der(&record.pem).ok())
        .filter(|der| cert::spki_der(der).is_ok_and(|key| key == request.public_key_spki_der));
    let Some(successor_der) = successor_der else {
        let reason = format!(
            "signer certificate {}: already renewed as {successor}",
            old.serial
        );
        return refuse(ctx, to, FailInfo::BadRequest, &reason, remote);
    };
    info!(
        "scep: renewal of {} asked again; sent {successor} again remote={remote}",
        old.serial
    );
    let degenerate = signed::certs_only(&[&successor_der])
        .map_err(|err| ScepError::Internal(err.to_string()))?;
    succeed(ctx, to, &degenerate, cipher, signer)
}

/// The old certificate's subject as (short name, value) pairs, in order. An attribute the
/// CA cannot write again is refused rather than dropped.
fn carried_subject(certificate: &[u8]) -> Result<Vec<(String, String)>, String> {
    let parsed =
        cert::parse_certificate(certificate).map_err(|err| format!("signer certificate: {err}"))?;
    parsed
        .subject()
        .iter_attributes()
        .map(|attribute| {
            let oid = attribute.attr_type().to_id_string();
            let short_name = CARRIED_ATTRIBUTES
                .iter()
                .find(|(known, _)| *known == oid)
                .map(|(_, short_name)| *short_name)
                .ok_or_else(|| {
                    format!("signer certificate: subject attribute {oid} cannot be renewed")
                })?;
            let value = attribute
                .as_str()
                .map_err(|_| format!("signer certificate: subject {short_name} is not text"))?;
            Ok((short_name.to_string(), value.to_string()))
        })
        .collect()
}

/// What the locked step of a renewal found.
enum Renewed {
    /// A new certificate, recorded.
    New(Vec<u8>, CertRecord),
    /// The certificate was renewed already, as this serial.
    Already(String),
    /// The device was blocked meanwhile (the reason).
    Blocked(String),
    /// The certificate was revoked meanwhile.
    Revoked,
    /// The CA cannot write the old subject again.
    Unissuable(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ca::{
        random_serial, CertificateAuthority, IssueRequest, KeyUsageProfile, SubjectAttribute,
    };
    use crate::pki::keys::RsaPrivateKey;

    fn issued(subject: &[(SubjectAttribute, String)]) -> Vec<u8> {
        let ca = CertificateAuthority::create("Test CA", "Org", 30).unwrap();
        let key = RsaPrivateKey::generate(2048).unwrap();
        let spki = key.public_key_spki_der();
        ca.issue(&IssueRequest {
            subject,
            public_key_spki_der: &spki,
            serial: random_serial(),
            validity_days: 1,
            usage: KeyUsageProfile::DeviceIdentity,
        })
        .unwrap()
    }

    #[test]
    fn the_subject_is_carried_over_in_order() {
        let certificate = issued(&[
            (SubjectAttribute::CommonName, "UDID-1".into()),
            (SubjectAttribute::OrganizationalUnit, "Lab".into()),
            (SubjectAttribute::Organization, "Test Org".into()),
            (SubjectAttribute::Country, "DE".into()),
        ]);
        let subject = carried_subject(&certificate).unwrap();
        let pairs: Vec<(&str, &str)> = subject
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("CN", "UDID-1"),
                ("OU", "Lab"),
                ("O", "Test Org"),
                ("C", "DE")
            ]
        );
        for (_, short_name) in CARRIED_ATTRIBUTES {
            assert!(
                SubjectAttribute::from_short_name(short_name).is_some(),
                "{short_name}"
            );
        }
    }

    #[test]
    fn a_subject_the_ca_cannot_write_again_is_refused() {
        let key = RsaPrivateKey::generate(2048).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(
            rcgen::DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            rcgen::DnValue::Ia5String("a@example.com".try_into().unwrap()),
        );
        let certificate = params
            .self_signed(&key.rcgen_key().unwrap())
            .unwrap()
            .der()
            .to_vec();
        let err = carried_subject(&certificate).unwrap_err();
        assert_eq!(
            err,
            "signer certificate: subject attribute 1.2.840.113549.1.9.1 cannot be renewed"
        );
        assert!(carried_subject(b"not a certificate").is_err());
    }
}
