//! SCEP pkiMessage types and their attribute encodings (RFC 8894 §3.2), for both sides:
//! the server reads requests and writes CertReps; `otad simulate` and tests do the reverse.
//!
//! A pkiMessage is a CMS SignedData whose signed attributes carry messageType, pkiStatus,
//! failInfo, transactionID, senderNonce and recipientNonce, and whose content is an
//! EnvelopedData (the CSR on the way in, a certificates-only SignedData on the way out).

use const_oid::ObjectIdentifier;
use der::{Decode, Encode};

use crate::cms::{self, enveloped, oid, signed, ContentCipher, DigestAlgorithm};

/// The length of the nonces otad sends.
pub const NONCE_LEN: usize = 16;
/// Longest transactionID accepted.
pub const MAX_TRANSACTION_ID: usize = 128;

/// messageType (RFC 8894 §3.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// 3: the server's response.
    CertRep,
    /// 17: renewal of an existing certificate.
    RenewalReq,
    /// 19: a certificate request.
    PkcsReq,
    /// 20: polling for a pending request (GetCertInitial).
    CertPoll,
    /// 21: fetching a certificate by issuer and serial.
    GetCert,
    /// 22: fetching a CRL.
    GetCrl,
}

impl MessageType {
    /// The decimal value carried as a PrintableString.
    pub fn number(self) -> u8 {
        match self {
            MessageType::CertRep => 3,
            MessageType::RenewalReq => 17,
            MessageType::PkcsReq => 19,
            MessageType::CertPoll => 20,
            MessageType::GetCert => 21,
            MessageType::GetCrl => 22,
        }
    }

    /// From the decimal value.
    pub fn from_number(value: &str) -> Option<MessageType> {
        [
            MessageType::CertRep,
            MessageType::RenewalReq,
            MessageType::PkcsReq,
            MessageType::CertPoll,
            MessageType::GetCert,
            MessageType::GetCrl,
        ]
        .into_iter()
        .find(|t| t.number().to_string() == value)
    }
}

/// pkiStatus (RFC 8894 §3.2.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PkiStatus {
    /// 0: the certificate is in the reply.
    Success,
    /// 2: refused; failInfo says why.
    Failure,
    /// 3: waiting for approval.
    Pending,
}

impl PkiStatus {
    fn number(self) -> u8 {
        match self {
            PkiStatus::Success => 0,
            PkiStatus::Failure => 2,
            PkiStatus::Pending => 3,
        }
    }

    fn from_number(value: &str) -> Option<PkiStatus> {
        match value {
            "0" => Some(PkiStatus::Success),
            "2" => Some(PkiStatus::Failure),
            "3" => Some(PkiStatus::Pending),
            _ => None,
        }
    }
}

/// failInfo (RFC 8894 §3.2.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailInfo {
    /// 0: unrecognised or unsupported algorithm.
    BadAlg,
    /// 1: integrity check (signature, decryption) failed.
    BadMessageCheck,
    /// 2: transaction not permitted or supported.
    BadRequest,
    /// 3: the signingTime was not close enough to ours.
    BadTime,
    /// 4: no certificate matches the criteria.
    BadCertId,
}

impl FailInfo {
    fn number(self) -> u8 {
        match self {
            FailInfo::BadAlg => 0,
            FailInfo::BadMessageCheck => 1,
            FailInfo::BadRequest => 2,
            FailInfo::BadTime => 3,
            FailInfo::BadCertId => 4,
        }
    }

    fn from_number(value: &str) -> Option<FailInfo> {
        [
            FailInfo::BadAlg,
            FailInfo::BadMessageCheck,
            FailInfo::BadRequest,
            FailInfo::BadTime,
            FailInfo::BadCertId,
        ]
        .into_iter()
        .find(|f| f.number().to_string() == value)
    }
}

/// Whether `text` fits a PrintableString (X.680 §41.4), as a CertRep must echo it.
pub fn is_printable(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b))
}

/// DER of a PrintableString attribute value.
pub fn printable(value: &str) -> Result<Vec<u8>, String> {
    der::asn1::PrintableStringRef::new(value)
        .and_then(|s| s.to_der())
        .map_err(|err| format!("PrintableString {value:?}: {err}"))
}

/// DER of an OCTET STRING attribute value.
pub fn octets(value: &[u8]) -> Result<Vec<u8>, String> {
    der::asn1::OctetStringRef::new(value)
        .and_then(|s| s.to_der())
        .map_err(|err| format!("OCTET STRING: {err}"))
}

/// Reads a string attribute value: PrintableString as the RFC says, and UTF8String or
/// IA5String as some clients send.
pub fn read_string(value_der: &[u8]) -> Option<String> {
    let any = der::asn1::AnyRef::from_der(value_der).ok()?;
    let text = match der::Tagged::tag(&any) {
        der::Tag::PrintableString | der::Tag::Utf8String | der::Tag::Ia5String => {
            std::str::from_utf8(any.value()).ok()?
        }
        _ => return None,
    };
    Some(text.to_string())
}

/// Reads an OCTET STRING attribute value.
pub fn read_octets(value_der: &[u8]) -> Option<Vec<u8>> {
    der::asn1::OctetStringRef::from_der(value_der)
        .ok()
        .map(|o| o.as_bytes().to_vec())
}

/// A fresh random nonce.
pub fn new_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    let _ = aws_lc_rs::rand::fill(&mut nonce);
    nonce
}

/// What a client needs to build a request.
pub struct RequestParams<'a> {
    /// PKCSReq, RenewalReq, …
    pub message_type: MessageType,
    /// The transactionID (PrintableString).
    pub transaction_id: &'a str,
    /// The senderNonce.
    pub sender_nonce: [u8; NONCE_LEN],
    /// The digest of the SignedData.
    pub digest: DigestAlgorithm,
    /// The cipher of the EnvelopedData.
    pub cipher: ContentCipher,
    /// The certificate to encrypt to (the RA's, or the CA's without an RA).
    pub recipient: &'a [u8],
    /// The signer's certificate (a throwaway self-signed one for PKCSReq).
    pub signer_certificate: &'a [u8],
    /// The signer's key.
    pub signer_key: &'a aws_lc_rs::signature::RsaKeyPair,
}

/// A DER pkiMessage: SignedData with the SCEP attributes over an EnvelopedData of `inner`.
pub fn build_request(inner: &[u8], params: &RequestParams<'_>) -> Result<Vec<u8>, String> {
    let envelope = enveloped::encrypt(inner, params.recipient, params.cipher)
        .map_err(|err| format!("pkiMessage envelope: {err}"))?;
    let attributes = vec![
        (
            oid::MESSAGE_TYPE,
            printable(&params.message_type.number().to_string())?,
        ),
        (oid::TRANSACTION_ID, printable(params.transaction_id)?),
        (oid::SENDER_NONCE, octets(&params.sender_nonce)?),
    ];
    let signer = signed::SignerIdentity {
        certificate: params.signer_certificate,
        key: params.signer_key,
    };
    let options = signed::SignOptions {
        extra_attributes: &attributes,
        ..signed::SignOptions::data(params.digest, true, &[])
    };
    signed::sign(&envelope, &signer, &options).map_err(|err| format!("pkiMessage: {err}"))
}

/// The server's answer to one request, as the server builds it.
pub struct CertRep<'a> {
    /// Success, failure or pending.
    pub status: PkiStatus,
    /// Why, for a failure.
    pub fail_info: Option<FailInfo>,
    /// The request's transactionID.
    pub transaction_id: &'a str,
    /// The request's senderNonce, returned as recipientNonce.
    pub recipient_nonce: &'a [u8],
    /// The digest to sign with (the request's).
    pub digest: DigestAlgorithm,
    /// For success: the certificates-only SignedData, the cipher, and who to encrypt to.
    pub payload: Option<(&'a [u8], ContentCipher, &'a [u8])>,
}

/// Signs a CertRep with the RA's identity.
pub fn build_cert_rep(
    rep: &CertRep<'_>,
    ra_certificate: &[u8],
    ra_key: &aws_lc_rs::signature::RsaKeyPair,
) -> Result<Vec<u8>, String> {
    let content = match rep.payload {
        Some((degenerate, cipher, recipient)) => enveloped::encrypt(degenerate, recipient, cipher)
            .map_err(|err| format!("CertRep envelope: {err}"))?,
        None => Vec::new(),
    };
    let mut attributes = vec![
        (
            oid::MESSAGE_TYPE,
            printable(&MessageType::CertRep.number().to_string())?,
        ),
        (
            oid::PKI_STATUS,
            printable(&rep.status.number().to_string())?,
        ),
        (oid::TRANSACTION_ID, printable(rep.transaction_id)?),
        (oid::SENDER_NONCE, octets(&new_nonce())?),
        (oid::RECIPIENT_NONCE, octets(rep.recipient_nonce)?),
    ];
    if let Some(fail_info) = rep.fail_info {
        attributes.push((oid::FAIL_INFO, printable(&fail_info.number().to_string())?));
    }
    let signer = signed::SignerIdentity {
        certificate: ra_certificate,
        key: ra_key,
    };
    let options = signed::SignOptions {
        extra_attributes: &attributes,
        ..signed::SignOptions::data(rep.digest, true, &[])
    };
    signed::sign(&content, &signer, &options).map_err(|err| format!("CertRep: {err}"))
}

/// A CertRep as a client reads it.
#[derive(Debug)]
pub struct ParsedReply {
    /// pkiStatus.
    pub status: PkiStatus,
    /// failInfo, for a failure.
    pub fail_info: Option<FailInfo>,
    /// transactionID.
    pub transaction_id: String,
    /// recipientNonce.
    pub recipient_nonce: Vec<u8>,
    /// The certificates of the decrypted certificates-only SignedData (empty unless success).
    pub certificates: Vec<Vec<u8>>,
}

/// Verifies a CertRep signed by one of `trusted_signers`, decrypts its content with our key
/// and returns what it says.
pub fn parse_reply(
    body: &[u8],
    trusted_signers: &[&[u8]],
    our_certificate: &[u8],
    our_key: &aws_lc_rs::rsa::PrivateDecryptingKey,
) -> Result<ParsedReply, String> {
    let message = signed::verify(body).map_err(|err| format!("CertRep: {err}"))?;
    if !trusted_signers.contains(&message.signer.certificate.as_slice()) {
        return Err("CertRep: not signed by the RA or CA we asked".into());
    }
    let string = |oid| message.signed_attribute(&oid).and_then(read_string);
    let message_type = string(oid::MESSAGE_TYPE).and_then(|v| MessageType::from_number(&v));
    if message_type != Some(MessageType::CertRep) {
        return Err("CertRep: messageType is not CertRep (3)".into());
    }
    let status = string(oid::PKI_STATUS)
        .and_then(|v| PkiStatus::from_number(&v))
        .ok_or("CertRep: no valid pkiStatus")?;
    let fail_info = string(oid::FAIL_INFO).and_then(|v| FailInfo::from_number(&v));
    let transaction_id = string(oid::TRANSACTION_ID).ok_or("CertRep: no transactionID")?;
    let recipient_nonce = message
        .signed_attribute(&oid::RECIPIENT_NONCE)
        .and_then(read_octets)
        .ok_or("CertRep: no recipientNonce")?;

    let mut certificates = Vec::new();
    if status == PkiStatus::Success {
        let envelope = message
            .content
            .as_deref()
            .ok_or("CertRep: success without content")?;
        let inner = enveloped::decrypt(envelope, our_certificate, our_key)
            .map_err(|err| format!("CertRep content: {err}"))?;
        certificates = signed::parse_certs_only(&inner.content)
            .map_err(|err| format!("CertRep certificates: {err}"))?;
    }
    Ok(ParsedReply {
        status,
        fail_info,
        transaction_id,
        recipient_nonce,
        certificates,
    })
}

/// What the server reads from a verified request's signed attributes.
#[derive(Debug, Clone)]
pub struct RequestHeader {
    /// messageType.
    pub message_type: MessageType,
    /// transactionID.
    pub transaction_id: String,
    /// senderNonce.
    pub sender_nonce: Vec<u8>,
}

/// Why a request's SCEP attributes are unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// No transactionID or senderNonce: no CertRep can be addressed to the request.
    Unaddressable(&'static str),
    /// The request can be answered (with a FAILURE), but its messageType is missing or
    /// unknown.
    BadMessageType {
        /// transactionID.
        transaction_id: String,
        /// senderNonce.
        sender_nonce: Vec<u8>,
    },
}

/// Reads messageType, transactionID and senderNonce through `attribute`, which returns the
/// DER of a signed attribute's first value.
pub fn read_header<'a>(
    attribute: impl Fn(&ObjectIdentifier) -> Option<&'a [u8]>,
) -> Result<RequestHeader, HeaderError> {
    let transaction_id = attribute(&oid::TRANSACTION_ID)
        .and_then(read_string)
        .filter(|t| !t.is_empty() && t.len() <= MAX_TRANSACTION_ID && is_printable(t))
        .ok_or(HeaderError::Unaddressable("transactionID"))?;
    let sender_nonce = attribute(&oid::SENDER_NONCE)
        .and_then(read_octets)
        .filter(|n| (8..=64).contains(&n.len()))
        .ok_or(HeaderError::Unaddressable("senderNonce"))?;
    let Some(message_type) = attribute(&oid::MESSAGE_TYPE)
        .and_then(read_string)
        .and_then(|v| MessageType::from_number(&v))
    else {
        return Err(HeaderError::BadMessageType {
            transaction_id,
            sender_nonce,
        });
    };
    Ok(RequestHeader {
        message_type,
        transaction_id,
        sender_nonce,
    })
}

/// Whether a CMS error is about an algorithm otad does not support (failInfo badAlg).
pub fn is_algorithm_error(err: &cms::CmsError) -> bool {
    matches!(
        err,
        cms::CmsError::UnsupportedDigest(_)
            | cms::CmsError::UnsupportedCipher(_)
            | cms::CmsError::UnsupportedSignatureAlgorithm(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for t in ["3", "17", "19", "20", "21", "22"] {
            assert_eq!(MessageType::from_number(t).unwrap().number().to_string(), t);
        }
        assert_eq!(MessageType::from_number("18"), None);
        assert_eq!(PkiStatus::from_number("2"), Some(PkiStatus::Failure));
        assert_eq!(FailInfo::from_number("4"), Some(FailInfo::BadCertId));
        assert_eq!(FailInfo::from_number("5"), None);
    }

    #[test]
    fn attribute_values_round_trip() {
        let der = printable("19").unwrap();
        assert_eq!(der, vec![0x13, 2, b'1', b'9']);
        assert_eq!(read_string(&der).as_deref(), Some("19"));
        assert_eq!(read_string(&[0x0c, 1, b'x']).as_deref(), Some("x"));
        assert_eq!(read_string(&[0x04, 1, b'x']), None);
        let nonce = octets(&[1, 2, 3]).unwrap();
        assert_eq!(read_octets(&nonce), Some(vec![1, 2, 3]));
        assert!(printable("not_printable!").is_err());
    }
}
