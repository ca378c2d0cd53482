//! The SCEP service at `/scep` (RFC 8894): GetCACaps, GetCACert and PKIOperation.
//!
//! Issuance is a chain of small checks — message, challenge, policy — then signing. Every
//! refusal of a request that can be addressed (it has a transactionID and a senderNonce) is a
//! signed CertRep FAILURE with a failInfo, answered with HTTP 200, because that is what SCEP
//! clients read; only a body that cannot be read as a pkiMessage gets an HTTP error.

mod crl;
mod enroll;
pub mod message;
mod poll;
mod renewal;

use std::fmt;

use base64::Engine;
use log::warn;

use crate::cms::{enveloped, signed, CmsError, ContentCipher, DigestAlgorithm};
use crate::context::Context;
use crate::http::Incoming;
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
    "Renewal",
];

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

impl From<crate::store::StoreError> for ScepError {
    fn from(err: crate::store::StoreError) -> Self {
        ScepError::Internal(format!("state: {err}"))
    }
}

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
            if !ctx.config.scep.ra {
                return Ok(ScepReply {
                    content_type: "application/x-x509-ca-cert",
                    body: ctx.ca.certificate().to_vec(),
                });
            }
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
pub(crate) struct ReplyTo {
    /// The request's transactionID.
    pub transaction_id: String,
    /// The request's senderNonce, returned as recipientNonce.
    pub sender_nonce: Vec<u8>,
    /// The digest to sign the CertRep with.
    pub digest: DigestAlgorithm,
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
    if let Some(reason) = signing_time_off(&message, crate::store::now()) {
        return refuse(ctx, &to, FailInfo::BadTime, &reason, remote);
    }

    match header.message_type {
        MessageType::PkcsReq => enroll::pkcs_req(ctx, &to, &message, remote),
        MessageType::RenewalReq => renewal::renewal_req(ctx, &to, &message, remote),
        MessageType::CertPoll => poll::cert_poll(ctx, &to, &message, remote),
        MessageType::GetCert => poll::get_cert(ctx, &to, &message, remote),
        MessageType::GetCrl => crl::get_crl(ctx, &to, &message, remote),
        MessageType::CertRep => refuse(
            ctx,
            &to,
            FailInfo::BadRequest,
            "a CertRep is not a request",
            remote,
        ),
    }
}

/// How far a request's signingTime may be from ours before it gets FAILURE badTime.
pub const MAX_SIGNING_TIME_SKEW: i64 = 24 * 3600;

/// Why a request's signingTime (when it has one) is too far from `now`, RFC 8894 §3.2.1.4.
fn signing_time_off(message: &signed::SignedMessage, now: i64) -> Option<String> {
    use der::Decode;
    let value = message.signed_attribute(&crate::cms::oid::SIGNING_TIME)?;
    let Ok(time) = x509_cert::time::Time::from_der(value) else {
        return Some("signingTime: not a UTCTime or GeneralizedTime".into());
    };
    let signed_at = i64::try_from(time.to_unix_duration().as_secs()).unwrap_or(i64::MAX);
    let skew = signed_at.saturating_sub(now).saturating_abs();
    (skew > MAX_SIGNING_TIME_SKEW).then(|| {
        format!("signingTime is {skew} s from the server's clock (at most {MAX_SIGNING_TIME_SKEW})")
    })
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
pub(crate) fn refuse(
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
    ctx.events.record_refusal(
        crate::events::Event::new("refusal")
            .field("protocol", "scep")
            .field("transaction_id", to.transaction_id.as_str())
            .field("fail_info", format!("{fail_info:?}"))
            .reason(reason)
            .remote(remote),
        remote,
    );
    let rep = CertRep {
        status: PkiStatus::Failure,
        fail_info: Some(fail_info),
        transaction_id: &to.transaction_id,
        recipient_nonce: &to.sender_nonce,
        digest: to.digest,
        payload: None,
    };
    let (responder, key) = ctx.scep_responder();
    message::build_cert_rep(&rep, responder, key.signing()).map_err(ScepError::Internal)
}

/// The RA opens a request's EnvelopedData. Every failure of key transport or content
/// decryption looks the same; on failure the `Err` holds the CertRep FAILURE to send.
pub(crate) fn open_envelope(
    ctx: &Context,
    to: &ReplyTo,
    message: &signed::SignedMessage,
    remote: &str,
) -> Result<enveloped::Decrypted, Result<Vec<u8>, ScepError>> {
    let Some(envelope) = message.content.as_deref() else {
        return Err(refuse(
            ctx,
            to,
            FailInfo::BadRequest,
            "request without content",
            remote,
        ));
    };
    let (responder, key) = ctx.scep_responder();
    enveloped::decrypt(envelope, responder, key.decrypting()).map_err(|err| {
        let fail_info = if message::is_algorithm_error(&err) {
            FailInfo::BadAlg
        } else {
            FailInfo::BadMessageCheck
        };
        refuse(ctx, to, fail_info, &err.to_string(), remote)
    })
}

/// A CertRep SUCCESS carrying `degenerate` (a certificates- or CRL-only SignedData),
/// encrypted to the requester with the request's cipher.
pub(crate) fn succeed(
    ctx: &Context,
    to: &ReplyTo,
    degenerate: &[u8],
    cipher: ContentCipher,
    requester: &[u8],
) -> Result<Vec<u8>, ScepError> {
    let rep = CertRep {
        status: PkiStatus::Success,
        fail_info: None,
        transaction_id: &to.transaction_id,
        recipient_nonce: &to.sender_nonce,
        digest: to.digest,
        payload: Some((degenerate, cipher, requester)),
    };
    let (responder, key) = ctx.scep_responder();
    message::build_cert_rep(&rep, responder, key.signing()).map_err(ScepError::Internal)
}

/// A CertRep PENDING: the request waits for an admin; the client polls with CertPoll.
pub(crate) fn pending(ctx: &Context, to: &ReplyTo) -> Result<Vec<u8>, ScepError> {
    let rep = CertRep {
        status: PkiStatus::Pending,
        fail_info: None,
        transaction_id: &to.transaction_id,
        recipient_nonce: &to.sender_nonce,
        digest: to.digest,
        payload: None,
    };
    let (responder, key) = ctx.scep_responder();
    message::build_cert_rep(&rep, responder, key.signing()).map_err(ScepError::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_time_far_from_ours_is_named() {
        use der::Encode;
        let at = |unix: u64| {
            let time = der::asn1::UtcTime::from_unix_duration(std::time::Duration::from_secs(unix))
                .unwrap();
            time.to_der().unwrap()
        };
        let message = |value: Vec<u8>| signed::SignedMessage {
            content_type: crate::cms::oid::ID_DATA,
            content: None,
            certificates: Vec::new(),
            signer: signed::Signer {
                certificate: Vec::new(),
                digest: DigestAlgorithm::Sha256,
                signed_attributes: Some(vec![signed::SignedAttribute {
                    oid: crate::cms::oid::SIGNING_TIME,
                    values: vec![value],
                }]),
            },
        };
        let now = 1_800_000_000;
        assert_eq!(
            signing_time_off(&message(at(1_800_000_000 - 3600)), now),
            None
        );
        let off = signing_time_off(&message(at(1_800_000_000 - 3 * 86_400)), now).unwrap();
        assert!(off.starts_with("signingTime is 259200 s"), "{off}");
        assert!(signing_time_off(&message(vec![0x04, 0]), now).is_some());
    }

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
