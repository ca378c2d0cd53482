//! The SCEP service at `/scep` (RFC 8894): GetCACaps, GetCACert and PKIOperation.
//!
//! Issuance is a chain of small checks — message, challenge, policy — then signing. Every
//! refusal of a request that can be addressed (it has a transactionID and a senderNonce) is a
//! signed CertRep FAILURE with a failInfo, answered with HTTP 200, because that is what SCEP
//! clients read; only a body that cannot be read as a pkiMessage gets an HTTP error.

pub mod message;

use std::fmt;

use base64::Engine;
use log::{info, warn};

use crate::cms::{enveloped, signed, CmsError, DigestAlgorithm};
use crate::context::Context;
use crate::http::Incoming;
use crate::pki::ca::{random_serial, IssueRequest, KeyUsageProfile, SubjectAttribute};
use crate::pki::{cert, csr};
use crate::store::{now, CertRecord, ChallengePurpose, StoreError};
use message::{CertRep, FailInfo, HeaderError, MessageType, PkiStatus};

/// What GetCACaps advertises, one keyword a line; otad honours each of them.
pub const CA_CAPS: &[&str] = &[
    "POSTPKIOperation",
    "SHA-1",
    "SHA-256",
    "SHA-512",
    "AES",
    "DES3",
    "SCEPStandard",
];

/// Longest CN taken from a CSR when a static challenge authorises it.
pub const MAX_COMMON_NAME: usize = 64;

/// Tries at a fresh serial when one is (astronomically unlikely) already recorded.
const SERIAL_ATTEMPTS: usize = 4;

/// A SCEP request that gets an HTTP error rather than a CertRep.
#[derive(Debug)]
#[non_exhaustive]
pub enum ScepError {
    /// No or an unknown `operation` parameter (400).
    BadOperation(String),
    /// An operation otad does not offer (404).
    Unsupported(&'static str),
    /// The body is not a pkiMessage, or it cannot be addressed a CertRep (400).
    Unreadable(String),
    /// Something on our side failed (500).
    Internal(String),
}

impl ScepError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            ScepError::BadOperation(_) | ScepError::Unreadable(_) => 400,
            ScepError::Unsupported(_) => 404,
            ScepError::Internal(_) => 500,
        }
    }
}

impl fmt::Display for ScepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScepError::BadOperation(why) => write!(f, "scep: {why}"),
            ScepError::Unsupported(what) => write!(f, "scep: {what} is not supported"),
            ScepError::Unreadable(why) => write!(f, "scep: pkiMessage: {why}"),
            ScepError::Internal(why) => write!(f, "scep: {why}"),
        }
    }
}

impl std::error::Error for ScepError {}

/// A SCEP answer.
pub struct ScepReply {
    /// Content-Type.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

/// Handles one request to `/scep`; `body` is the POST body.
pub fn handle(
    ctx: &Context,
    incoming: &Incoming<'_>,
    body: Option<&[u8]>,
) -> Result<ScepReply, ScepError> {
    let operation = incoming.param("operation").unwrap_or_default();
    match operation {
        "GetCACaps" => Ok(ScepReply {
            content_type: "text/plain",
            body: CA_CAPS
                .iter()
                .map(|c| format!("{c}\n"))
                .collect::<String>()
                .into_bytes(),
        }),
        "GetCACert" => {
            let ra = ctx.ra.certificate.as_slice();
            let body = signed::certs_only(&[ra, ctx.ca.certificate()])
                .map_err(|err| ScepError::Internal(format!("GetCACert: {err}")))?;
            Ok(ScepReply {
                content_type: "application/x-x509-ca-ra-cert",
                body,
            })
        }
        "GetNextCACert" => Err(ScepError::Unsupported(
            "GetNextCACert (no CA rollover is configured)",
        )),
        "PKIOperation" => {
            let message = match body {
                Some(body) => body.to_vec(),
                None => decode_get_message(incoming.param("message").unwrap_or_default())?,
            };
            let body = pki_operation(ctx, &message, &incoming.remote)?;
            Ok(ScepReply {
                content_type: "application/x-pki-message",
                body,
            })
        }
        "" => Err(ScepError::BadOperation("no operation parameter".into())),
        other => Err(ScepError::BadOperation(format!(
            "operation {:?} is unknown",
            other.chars().take(32).collect::<String>()
        ))),
    }
}

/// Decodes a GET `message` parameter: base64 as clients send it, tolerating URL-safe
/// letters, spaces where `+` was decoded away, line breaks and missing padding.
pub fn decode_get_message(param: &str) -> Result<Vec<u8>, ScepError> {
    let cleaned: String = param
        .chars()
        .filter(|c| !matches!(c, '\r' | '\n' | '\t' | '='))
        .map(|c| match c {
            ' ' => '+',
            '-' => '+',
            '_' => '/',
            other => other,
        })
        .collect();
    if cleaned.is_empty() {
        return Err(ScepError::Unreadable("no message parameter".into()));
    }
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(cleaned.as_bytes())
        .map_err(|err| ScepError::Unreadable(format!("message parameter is not base64: {err}")))
}

/// The digest a CertRep is signed with: the request's, except SHA-1, which aws-lc-rs does not
/// sign with; SHA-256 is what GetCACaps advertises first and every client verifies.
fn reply_digest(request: DigestAlgorithm) -> DigestAlgorithm {
    match request {
        DigestAlgorithm::Sha1 => DigestAlgorithm::Sha256,
        other => other,
    }
}

/// Where a CertRep goes: the request's transactionID and senderNonce, and the digest to sign
/// it with.
struct ReplyTo {
    transaction_id: String,
    sender_nonce: Vec<u8>,
    digest: DigestAlgorithm,
}

fn pki_operation(ctx: &Context, body: &[u8], remote: &str) -> Result<Vec<u8>, ScepError> {
    let message = match signed::verify(body) {
        Ok(message) => message,
        Err(err) => return refuse_unverified(ctx, body, &err, remote),
    };
    let digest = reply_digest(message.signer.digest);
    let header = match message::read_header(|oid| message.signed_attribute(oid)) {
        Ok(header) => header,
        Err(HeaderError::Unaddressable(what)) => {
            return Err(ScepError::Unreadable(format!("no valid {what}")));
        }
        Err(HeaderError::BadMessageType {
            transaction_id,
            sender_nonce,
        }) => {
            let to = ReplyTo {
                transaction_id,
                sender_nonce,
                digest,
            };
            let reason = "messageType missing or unknown";
            return refuse(ctx, &to, FailInfo::BadRequest, reason, remote);
        }
    };
    let to = ReplyTo {
        transaction_id: header.transaction_id.clone(),
        sender_nonce: header.sender_nonce.clone(),
        digest,
    };

    match header.message_type {
        MessageType::PkcsReq => pkcs_req(ctx, &to, &message, remote),
        other => {
            // TODO: RenewalReq, CertPoll, GetCert and GetCRL arrive with the full RFC 8894
            // breadth; until then they are refused in the client's own terms.
            let reason = format!("{other:?} is not supported yet");
            refuse(ctx, &to, FailInfo::BadRequest, &reason, remote)
        }
    }
}

/// A request whose signature or algorithms fail still gets a signed FAILURE when it can be
/// addressed. Its attributes are read unverified for that alone: a FAILURE carries nothing
/// but the client's own transactionID and nonce back.
fn refuse_unverified(
    ctx: &Context,
    body: &[u8],
    err: &CmsError,
    remote: &str,
) -> Result<Vec<u8>, ScepError> {
    let unreadable = || ScepError::Unreadable(err.to_string());
    let unverified = signed::read_unverified(body).map_err(|_| unreadable())?;
    let (transaction_id, sender_nonce) =
        match message::read_header(|oid| unverified.signed_attribute(oid)) {
            Ok(header) => (header.transaction_id, header.sender_nonce),
            Err(HeaderError::BadMessageType {
                transaction_id,
                sender_nonce,
            }) => (transaction_id, sender_nonce),
            Err(HeaderError::Unaddressable(_)) => return Err(unreadable()),
        };
    let fail_info = if message::is_algorithm_error(err) {
        FailInfo::BadAlg
    } else {
        FailInfo::BadMessageCheck
    };
    let digest = unverified
        .digest
        .map_or(DigestAlgorithm::Sha256, reply_digest);
    let to = ReplyTo {
        transaction_id,
        sender_nonce,
        digest,
    };
    refuse(ctx, &to, fail_info, &format!("pkiMessage: {err}"), remote)
}

/// A CertRep FAILURE, logged at warn with the reason.
fn refuse(
    ctx: &Context,
    to: &ReplyTo,
    fail_info: FailInfo,
    reason: &str,
    remote: &str,
) -> Result<Vec<u8>, ScepError> {
    warn!(
        "scep: refused transaction {}: {reason} (failInfo {fail_info:?}) remote={remote}",
        to.transaction_id
    );
    let rep = CertRep {
        status: PkiStatus::Failure,
        fail_info: Some(fail_info),
        transaction_id: &to.transaction_id,
        recipient_nonce: &to.sender_nonce,
        digest: to.digest,
        payload: None,
    };
    message::build_cert_rep(&rep, &ctx.ra.certificate, ctx.ra.key.signing())
        .map_err(ScepError::Internal)
}

/// Who the certificate is for, and on whose authority.
struct Authorisation {
    subject: Vec<(String, String)>,
    udid: Option<String>,
    authorised_by: &'static str,
}

/// PKCSReq: decrypt, check the CSR, check the challenge, issue, answer.
fn pkcs_req(
    ctx: &Context,
    to: &ReplyTo,
    message: &signed::SignedMessage,
    remote: &str,
) -> Result<Vec<u8>, ScepError> {
    let Some(envelope) = message.content.as_deref() else {
        return refuse(
            ctx,
            to,
            FailInfo::BadRequest,
            "PKCSReq without content",
            remote,
        );
    };
    let requester = message.signer.certificate.as_slice();

    // The RA decrypts; every failure of key transport or content decryption looks the same.
    let decrypted = match enveloped::decrypt(envelope, &ctx.ra.certificate, ctx.ra.key.decrypting())
    {
        Ok(decrypted) => decrypted,
        Err(err) => {
            let fail_info = if message::is_algorithm_error(&err) {
                FailInfo::BadAlg
            } else {
                FailInfo::BadMessageCheck
            };
            return refuse(ctx, to, fail_info, &err.to_string(), remote);
        }
    };

    let request = match check_csr(&decrypted.content, requester) {
        Ok(request) => request,
        Err(reason) => return refuse(ctx, to, FailInfo::BadRequest, &reason, remote),
    };
    // The CertRep is encrypted to this very key: refuse what cannot be answered before a
    // challenge is spent or a certificate issued.
    if request.key_bits < enveloped::MIN_ENCRYPTION_RSA_BITS {
        // TODO: answer RSA-1024 requesters too; aws-lc-rs encrypts to 2048 bits and up only.
        let reason = format!(
            "RSA-{} keys cannot be answered; use {} bits or more",
            request.key_bits,
            enveloped::MIN_ENCRYPTION_RSA_BITS
        );
        return refuse(ctx, to, FailInfo::BadAlg, &reason, remote);
    }
    let authorisation = match authorise(ctx, &request) {
        Ok(authorisation) => authorisation,
        Err(reason) => return refuse(ctx, to, FailInfo::BadRequest, &reason, remote),
    };

    let issued = issue(ctx, &request, &authorisation)?;
    let serial = cert::serial_hex(&issued).map_err(|err| ScepError::Internal(err.to_string()))?;
    if let Some(udid) = &authorisation.udid {
        crate::ota::certificate_issued(ctx, udid, &serial, remote, now())
            .map_err(|err| ScepError::Internal(err.to_string()))?;
    }
    info!(
        "scep: issued certificate {serial} to {} ({}) remote={remote}",
        authorisation.udid.as_deref().unwrap_or("-"),
        authorisation.authorised_by
    );

    let degenerate =
        signed::certs_only(&[&issued]).map_err(|err| ScepError::Internal(err.to_string()))?;
    let rep = CertRep {
        status: PkiStatus::Success,
        fail_info: None,
        transaction_id: &to.transaction_id,
        recipient_nonce: &to.sender_nonce,
        digest: to.digest,
        payload: Some((&degenerate, decrypted.cipher, requester)),
    };
    message::build_cert_rep(&rep, &ctx.ra.certificate, ctx.ra.key.signing())
        .map_err(ScepError::Internal)
}

/// Parses the CSR and checks it matches the request's signer: a PKCSReq is signed with a
/// throwaway certificate for the very key the CSR asks to certify.
fn check_csr(
    csr_der: &[u8],
    signer_certificate: &[u8],
) -> Result<csr::CertificationRequest, String> {
    let request = csr::parse(csr_der).map_err(|err| format!("CSR: {err}"))?;
    let signer_key =
        cert::spki_der(signer_certificate).map_err(|err| format!("signer certificate: {err}"))?;
    if signer_key != request.public_key_spki_der {
        return Err("PKCSReq signer's key is not the CSR's key".into());
    }
    Ok(request)
}

/// The challenge decides who the certificate is for: a one-time challenge from phase 2 or 3
/// carries the device and subject it was bound to; the static `scep.challenge` lets the CSR
/// name itself (its CN, checked) under our organization.
fn authorise(ctx: &Context, request: &csr::CertificationRequest) -> Result<Authorisation, String> {
    let Some(challenge) = request
        .challenge_password
        .as_deref()
        .filter(|c| !c.is_empty())
    else {
        return Err("CSR has no challengePassword".into());
    };

    let static_challenge = ctx.config.scep.challenge.as_bytes();
    if !static_challenge.is_empty()
        && aws_lc_rs::constant_time::verify_slices_are_equal(challenge.as_bytes(), static_challenge)
            .is_ok()
    {
        let cn = request
            .common_name
            .as_deref()
            .filter(|cn| !cn.is_empty() && cn.len() <= MAX_COMMON_NAME)
            .filter(|cn| cn.chars().all(|c| !c.is_control()))
            .ok_or("CSR needs a CN of 1 to 64 printable characters")?;
        let subject = vec![
            ("CN".to_string(), cn.to_string()),
            ("O".to_string(), ctx.config.server.organization.clone()),
        ];
        return Ok(Authorisation {
            subject,
            udid: None,
            authorised_by: "static",
        });
    }

    let record = ctx
        .store
        .take_challenge(challenge, ChallengePurpose::Scep)
        .map_err(|err| format!("challenge lookup failed: {err}"))?
        .ok_or("challenge unknown or already used")?;
    if record.expires <= now() {
        return Err("challenge expired".into());
    }
    Ok(Authorisation {
        subject: record.subject,
        udid: record.udid,
        authorised_by: "ota",
    })
}

fn issue(
    ctx: &Context,
    request: &csr::CertificationRequest,
    authorisation: &Authorisation,
) -> Result<Vec<u8>, ScepError> {
    let subject: Vec<(SubjectAttribute, String)> = authorisation
        .subject
        .iter()
        .filter_map(|(kind, value)| {
            SubjectAttribute::from_short_name(kind).map(|k| (k, value.clone()))
        })
        .collect();

    for _ in 0..SERIAL_ATTEMPTS {
        let issue_request = IssueRequest {
            subject: &subject,
            public_key_spki_der: &request.public_key_spki_der,
            serial: random_serial(),
            validity_days: ctx.derived.cert_validity_days,
            usage: KeyUsageProfile::DeviceIdentity,
        };
        let issued = ctx
            .ca
            .issue(&issue_request)
            .map_err(|err| ScepError::Internal(format!("issuing: {err}")))?;
        let summary =
            cert::summarize(&issued).map_err(|err| ScepError::Internal(err.to_string()))?;
        let record = CertRecord {
            serial: summary.serial_hex.clone(),
            udid: authorisation.udid.clone(),
            subject: summary.subject.clone(),
            issued_at: now(),
            not_after: summary.not_after,
            revoked: None,
            authorised_by: authorisation.authorised_by.to_string(),
            pem: cert::der_to_pem(&issued),
        };
        match ctx.store.create_cert(&record) {
            Ok(()) => return Ok(issued),
            Err(StoreError::SerialTaken(serial)) => {
                warn!("scep: serial {serial} already recorded; drawing another")
            }
            Err(err) => {
                return Err(ScepError::Internal(format!(
                    "recording the certificate: {err}"
                )))
            }
        }
    }
    Err(ScepError::Internal(
        "no free serial after several draws".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_message_decoding_tolerates_what_clients_send() {
        let raw = vec![0xfbu8, 0xff, 0xfe, 0x01];
        let standard = base64::engine::general_purpose::STANDARD.encode(&raw);
        assert_eq!(standard, "+//+AQ==");
        assert_eq!(decode_get_message(&standard).unwrap(), raw);
        assert_eq!(decode_get_message("+//+AQ").unwrap(), raw);
        assert_eq!(decode_get_message(" //+AQ==").unwrap(), raw);
        assert_eq!(decode_get_message("-__-AQ").unwrap(), raw);
        assert_eq!(decode_get_message("+//+\r\nAQ==").unwrap(), raw);
        assert!(decode_get_message("").is_err());
        assert!(decode_get_message("!!!").is_err());
    }
}
