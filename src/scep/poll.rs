//! Requests that wait for an admin (`scep.approval = "manual"`), CertPoll (GetCertInitial,
//! [RFC 8894 §3.3.3](https://www.rfc-editor.org/rfc/rfc8894#section-3.3.3)) that asks how
//! one stands, and GetCert
//! ([RFC 8894 §3.3.4](https://www.rfc-editor.org/rfc/rfc8894#section-3.3.4)) that fetches a
//! certificate by issuer and serial.
//!
//! A queued PKCSReq has passed every check, its challenge included, before it is stored;
//! approval (`otad request approve`) only issues. Clients learn the outcome either by
//! CertPoll or, as `scepclient` does, by sending the very same PKCSReq again, which is
//! answered from the stored request without spending a challenge twice.

use der::{Decode, Encode, SliceReader};
use log::info;
use x509_cert::name::Name;

use super::enroll::{authorise, check_answerable};
use super::{open_envelope, pending, refuse, succeed, FailInfo, ReplyTo, ScepError};
use crate::cms::{enveloped, signed, ContentCipher};
use crate::context::Context;
use crate::pki::{cert, csr};
use crate::store::{self, now, Decision, PendingRequest};

/// The PEM label of a stored CSR.
const CSR_PEM_LABEL: &str = "CERTIFICATE REQUEST";

/// `IssuerAndSubject ::= SEQUENCE { issuer Name, subject Name }`, what a CertPoll carries
/// ([RFC 8894 §3.3.3](https://www.rfc-editor.org/rfc/rfc8894#section-3.3.3)).
#[derive(Debug, Clone, PartialEq, Eq, der::Sequence)]
pub struct IssuerAndSubject {
    /// The CA's name: the issuer the certificate will have.
    pub issuer: Name,
    /// The subject of the CSR the client sent.
    pub subject: Name,
}

/// Under `scep.approval = "manual"`, a PKCSReq whose CSR passed [`super::enroll::check_csr`]
/// and `check_answerable`: a retransmission of a stored request is answered from it;
/// anything else is authorised (its challenge is spent now) and queued, answered PENDING.
pub(crate) fn queue(
    ctx: &Context,
    to: &ReplyTo,
    requester: &[u8],
    decrypted: &enveloped::Decrypted,
    request: &csr::CertificationRequest,
    remote: &str,
) -> Result<Vec<u8>, ScepError> {
    let at = now();
    let earlier = ctx
        .store
        .pending_for_transaction(&to.transaction_id, at)
        .map_err(|err| ScepError::Internal(format!("pending requests: {err}")))?;
    if let Some(earlier) = earlier {
        if stored_csr(&earlier).is_ok_and(|stored| stored == decrypted.content) {
            return answer(ctx, to, &earlier, decrypted.cipher, requester, remote);
        }
        // A transactionID stays with the key it was first used for: another requester
        // reusing it would take over what a poll under it finds.
        let same_key = stored_csr(&earlier)
            .ok()
            .and_then(|stored| csr::parse(&stored).ok())
            .is_some_and(|stored| stored.public_key_spki_der == request.public_key_spki_der);
        if !same_key {
            let reason = format!(
                "transactionID: already used by request {} for another key",
                earlier.id
            );
            return refuse(ctx, to, FailInfo::BadRequest, &reason, remote);
        }
        if earlier.is_pending() {
            let reason = format!(
                "transactionID: request {} under it still waits for approval",
                earlier.id
            );
            return refuse(ctx, to, FailInfo::BadRequest, &reason, remote);
        }
    }

    // Refuse a full queue before the challenge is spent.
    if !has_room(ctx, at)? {
        let reason = format!(
            "pending requests: {} already kept; deny or wait for old ones",
            store::MAX_PENDING_RECORDS
        );
        return refuse(ctx, to, FailInfo::BadRequest, &reason, remote);
    }
    let authorisation = match authorise(ctx, request) {
        Ok(authorisation) => authorisation,
        Err(reason) => return refuse(ctx, to, FailInfo::BadRequest, &reason, remote),
    };

    let id = store::new_pending_id()
        .ok_or_else(|| ScepError::Internal("pending request id: no randomness".into()))?;
    let record = PendingRequest {
        id: id.clone(),
        transaction_id: to.transaction_id.clone(),
        csr: cert::encode_pem(CSR_PEM_LABEL, &decrypted.content),
        subject: authorisation.subject,
        udid: authorisation.udid,
        authorised_by: authorisation.authorised_by.to_string(),
        requester: cert::der_to_pem(requester),
        remote: remote.to_string(),
        created: at,
        decision: Decision::Pending,
    };
    ctx.store
        .create_pending(&record)
        .map_err(|err| ScepError::Internal(format!("pending request {id}: {err}")))?;
    info!(
        "scep: request {id} waits for approval (transaction {}, {}, {}) remote={remote}",
        to.transaction_id,
        subject_text(&record.subject),
        record.udid.as_deref().unwrap_or("-"),
    );
    pending(ctx, to)
}

/// Whether one more request may be stored, sweeping stale ones when the folder is full.
fn has_room(ctx: &Context, at: i64) -> Result<bool, ScepError> {
    let internal = |err: store::StoreError| ScepError::Internal(format!("pending requests: {err}"));
    if ctx.store.count_pending().map_err(internal)? < store::MAX_PENDING_RECORDS {
        return Ok(true);
    }
    // Full of files: drop the long-decided ones, then count only what still waits, so that
    // denying requests frees room at once.
    ctx.store.sweep_pending(at).map_err(internal)?;
    Ok(ctx.store.count_undecided(at).map_err(internal)? < store::MAX_PENDING_RECORDS)
}

/// CertPoll: how the request under this transactionID stands. Pending → PENDING; approved →
/// SUCCESS with the certificate; denied or expired → FAILURE badRequest; unknown → FAILURE
/// badCertId.
pub(crate) fn cert_poll(
    ctx: &Context,
    to: &ReplyTo,
    message: &signed::SignedMessage,
    remote: &str,
) -> Result<Vec<u8>, ScepError> {
    let decrypted = match open_envelope(ctx, to, message, remote) {
        Ok(decrypted) => decrypted,
        Err(reply) => return reply,
    };
    let asked = match IssuerAndSubject::from_der(&decrypted.content) {
        Ok(asked) => asked,
        Err(err) => {
            let reason = format!("CertPoll: IssuerAndSubject: {err}");
            return refuse(ctx, to, FailInfo::BadRequest, &reason, remote);
        }
    };

    let record = ctx
        .store
        .pending_for_transaction(&to.transaction_id, now())
        .map_err(|err| ScepError::Internal(format!("pending requests: {err}")))?;
    let Some(record) = record else {
        let reason = "CertPoll: no request under this transactionID";
        return refuse(ctx, to, FailInfo::BadCertId, reason, remote);
    };
    if let Err(reason) = check_poll(ctx, &asked, &record, &message.signer.certificate) {
        return refuse(ctx, to, reason.0, &reason.1, remote);
    }
    answer(
        ctx,
        to,
        &record,
        decrypted.cipher,
        &message.signer.certificate,
        remote,
    )
}

/// A CertPoll names our CA (or the RA that answers for it) and the subject of the CSR it
/// polls for, and is signed with the CSR's key: anyone else learns nothing about the
/// request.
fn check_poll(
    ctx: &Context,
    asked: &IssuerAndSubject,
    record: &PendingRequest,
    signer_certificate: &[u8],
) -> Result<(), (FailInfo, String)> {
    let unusable = |what: String| {
        (
            FailInfo::BadRequest,
            format!("request {}: {what}", record.id),
        )
    };
    if !same_name(&asked.issuer, ctx.ca.subject_der())
        && !responder_subject(ctx).is_some_and(|ra| same_name(&asked.issuer, &ra))
    {
        return Err((
            FailInfo::BadCertId,
            "CertPoll: issuer is not this CA".into(),
        ));
    }
    // The key before the subject: whoever holds only a transactionID must not learn, from
    // which failInfo comes back, whether a subject they guessed is the request's.
    let csr_der = stored_csr(record).map_err(unusable)?;
    let request = csr::parse(&csr_der).map_err(|err| unusable(format!("CSR: {err}")))?;
    let signer_key = cert::spki_der(signer_certificate).map_err(|err| {
        (
            FailInfo::BadMessageCheck,
            format!("signer certificate: {err}"),
        )
    })?;
    if signer_key != request.public_key_spki_der {
        let reason = "CertPoll: signer's key is not the request's".to_string();
        return Err((FailInfo::BadMessageCheck, reason));
    }
    let csr_subject = csr_subject_der(&csr_der).map_err(unusable)?;
    if !same_name(&asked.subject, &csr_subject) {
        let reason = "CertPoll: subject is not the one of the request".to_string();
        return Err((FailInfo::BadCertId, reason));
    }
    Ok(())
}

/// The CertRep for a stored request as it stands now. A certificate goes to `recipient`, the
/// asking message's signer, whose key the caller checked is the CSR's: the certificate
/// kept with the request may be another throwaway one for that key, and the client finds
/// its RecipientInfo by the certificate it signed with.
fn answer(
    ctx: &Context,
    to: &ReplyTo,
    record: &PendingRequest,
    cipher: ContentCipher,
    recipient: &[u8],
    remote: &str,
) -> Result<Vec<u8>, ScepError> {
    match &record.decision {
        Decision::Pending => pending(ctx, to),
        Decision::Denied { reason, .. } => {
            let reason = format!("request {}: denied: {reason}", record.id);
            refuse(ctx, to, FailInfo::BadRequest, &reason, remote)
        }
        Decision::Approved {
            certificate,
            serial,
            ..
        } => {
            // Approved before the device was blocked: not delivered now.
            if let Some(udid) = record.udid.as_deref() {
                if let Err(why) = crate::decide::check_scep(ctx, udid) {
                    let reason = format!("request {}: {why}", record.id);
                    return refuse(ctx, to, FailInfo::BadRequest, &reason, remote);
                }
            }
            let internal =
                |err: String| ScepError::Internal(format!("request {}: {err}", record.id));
            let issued = cert::pem_to_der(certificate).map_err(|err| internal(err.to_string()))?;
            let degenerate =
                signed::certs_only(&[&issued]).map_err(|err| internal(err.to_string()))?;
            info!(
                "scep: delivered certificate {serial} of approved request {} remote={remote}",
                record.id
            );
            succeed(ctx, to, &degenerate, cipher, recipient)
        }
    }
}

/// GetCert: a certificate this CA issued, by issuer and serial; anything else is FAILURE
/// badCertId. Certificates are public, so any signer may ask; the reply is encrypted to it.
pub(crate) fn get_cert(
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
    let asked = match cms::cert::IssuerAndSerialNumber::from_der(&decrypted.content) {
        Ok(asked) => asked,
        Err(err) => {
            let reason = format!("GetCert: IssuerAndSerialNumber: {err}");
            return refuse(ctx, to, FailInfo::BadRequest, &reason, remote);
        }
    };

    if !same_name(&asked.issuer, ctx.ca.subject_der()) {
        let reason = "GetCert: issuer is not this CA";
        return refuse(ctx, to, FailInfo::BadCertId, reason, remote);
    }
    // Serials are positive; a negative INTEGER names no certificate of ours.
    if asked
        .serial_number
        .as_bytes()
        .first()
        .is_some_and(|first| first & 0x80 != 0)
    {
        let reason = "GetCert: a negative serial number";
        return refuse(ctx, to, FailInfo::BadCertId, reason, remote);
    }
    let serial = serial_hex(asked.serial_number.as_bytes());
    let record = match ctx.store.cert(&serial) {
        Ok(Some(record)) => record,
        Ok(None) | Err(store::StoreError::InvalidName(_)) => {
            let reason = format!("GetCert: no certificate {serial} was issued here");
            return refuse(ctx, to, FailInfo::BadCertId, &reason, remote);
        }
        Err(err) => return Err(ScepError::Internal(format!("certificate {serial}: {err}"))),
    };
    match signer_key_bits(requester).and_then(check_answerable) {
        Ok(()) => {}
        Err(reason) => return refuse(ctx, to, FailInfo::BadAlg, &reason, remote),
    }

    let issued = cert::pem_to_der(&record.pem)
        .map_err(|err| ScepError::Internal(format!("certificate {serial}: {err}")))?;
    let degenerate =
        signed::certs_only(&[&issued]).map_err(|err| ScepError::Internal(err.to_string()))?;
    info!("scep: GetCert delivered certificate {serial} remote={remote}");
    succeed(ctx, to, &degenerate, decrypted.cipher, requester)
}

/// The subject Name DER of the certificate that answers SCEP (the RA's, or the CA's).
fn responder_subject(ctx: &Context) -> Option<Vec<u8>> {
    let (responder, _) = ctx.scep_responder();
    let certificate = x509_cert::Certificate::from_der(responder).ok()?;
    certificate.tbs_certificate.subject.to_der().ok()
}

/// The RSA key size of a certificate's key, which a CertRep is encrypted to.
pub(crate) fn signer_key_bits(certificate: &[u8]) -> Result<usize, String> {
    let spki = cert::spki_der(certificate).map_err(|err| format!("signer certificate: {err}"))?;
    cert::RsaPublicKey::from_spki_der(&spki)
        .map(|key| key.bits)
        .map_err(|err| format!("signer certificate: {err}"))
}

/// Whether a Name from a request equals a Name we hold as DER. Both are compared as DER
/// re-encoded from their decoded form, so that only the encoding of the SET OF order differs.
fn same_name(asked: &Name, ours_der: &[u8]) -> bool {
    let Ok(ours) = Name::from_der(ours_der) else {
        return false;
    };
    matches!((asked.to_der(), ours.to_der()), (Ok(a), Ok(b)) if a == b)
}

/// The stored CSR's DER.
fn stored_csr(record: &PendingRequest) -> Result<Vec<u8>, String> {
    cert::pem_blocks(&record.csr)
        .map_err(|err| format!("stored CSR: {err}"))?
        .into_iter()
        .find(|block| block.label == CSR_PEM_LABEL)
        .map(|block| block.der)
        .ok_or_else(|| "stored CSR: no CERTIFICATE REQUEST block".to_string())
}

/// The subject Name DER of a CSR: the second field of its CertificationRequestInfo, which is
/// the first field of the request (RFC 2986 §4).
fn csr_subject_der(csr_der: &[u8]) -> Result<Vec<u8>, String> {
    let malformed = |err: der::Error| format!("stored CSR: {err}");
    let outer = der::asn1::AnyRef::from_der(csr_der).map_err(malformed)?;
    let mut reader = SliceReader::new(outer.value()).map_err(malformed)?;
    let info: x509_cert::request::CertReqInfo =
        der::Decode::decode(&mut reader).map_err(malformed)?;
    info.subject.to_der().map_err(malformed)
}

/// Lowercase hex of a serial's INTEGER content without leading zero bytes, as certificate
/// records are named.
fn serial_hex(bytes: &[u8]) -> String {
    let hex: String = bytes
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect();
    if hex.is_empty() {
        "0".into()
    } else {
        hex
    }
}

/// A subject as "CN=…, O=…" for a log line.
pub(crate) fn subject_text(subject: &[(String, String)]) -> String {
    subject
        .iter()
        .map(|(kind, value)| format!("{kind}={value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::keys::RsaPrivateKey;

    #[test]
    fn serials_are_named_like_certificate_records() {
        assert_eq!(serial_hex(&[0x00, 0x8a, 0x01]), "8a01");
        assert_eq!(serial_hex(&[0x7f]), "7f");
        assert_eq!(serial_hex(&[0x00]), "0");
        assert_eq!(serial_hex(&[]), "0");
    }

    #[test]
    fn the_subject_of_a_csr_is_read_as_der() {
        let key = RsaPrivateKey::generate(2048).unwrap();
        let request = csr::build(&key, "poller", Some("secret")).unwrap();
        let subject = csr_subject_der(&request).unwrap();
        let name = Name::from_der(&subject).unwrap();
        assert_eq!(name.to_string(), "CN=poller");
        assert!(same_name(&name, &subject));
        let other =
            Name::from_der(&csr_subject_der(&csr::build(&key, "x", None).unwrap()).unwrap())
                .unwrap();
        assert!(!same_name(&other, &subject));
        assert!(!same_name(&name, b"\x30\x00\x00"));
        assert!(csr_subject_der(b"\x30\x03\x02\x01\x00").is_err());
    }

    #[test]
    fn issuer_and_subject_round_trips() {
        let key = RsaPrivateKey::generate(2048).unwrap();
        let subject =
            Name::from_der(&csr_subject_der(&csr::build(&key, "a", None).unwrap()).unwrap())
                .unwrap();
        let asked = IssuerAndSubject {
            issuer: subject.clone(),
            subject,
        };
        let der = asked.to_der().unwrap();
        assert_eq!(der.first(), Some(&0x30));
        assert_eq!(IssuerAndSubject::from_der(&der).unwrap(), asked);
        assert!(IssuerAndSubject::from_der(&der[..der.len() - 1]).is_err());
    }

    #[test]
    fn stored_csr_reads_back_and_a_bad_one_is_named() {
        let key = RsaPrivateKey::generate(2048).unwrap();
        let request = csr::build(&key, "a", None).unwrap();
        let mut record = PendingRequest {
            id: "0123456789abcdef0123456789abcdef".into(),
            transaction_id: "T".into(),
            csr: cert::encode_pem(CSR_PEM_LABEL, &request),
            subject: vec![("CN".into(), "a".into()), ("O".into(), "Org".into())],
            udid: None,
            authorised_by: "static".into(),
            requester: String::new(),
            remote: String::new(),
            created: 0,
            decision: Decision::Pending,
        };
        assert_eq!(stored_csr(&record).unwrap(), request);
        assert_eq!(subject_text(&record.subject), "CN=a, O=Org");
        record.csr = cert::der_to_pem(&request);
        assert_eq!(
            stored_csr(&record).unwrap_err(),
            "stored CSR: no CERTIFICATE REQUEST block"
        );
    }
}
