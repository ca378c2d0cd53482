//! A SCEP client's first request, as the integration tests send it: a fresh key, a
//! self-signed certificate for it (RFC 8894 section 2.3), and a PKCSReq built with otad's own
//! client code (SHA-256, AES-128).

#![allow(dead_code)]

use otad::cms::{ContentCipher, DigestAlgorithm};
use otad::pki::csr;
use otad::pki::keys::RsaPrivateKey;
use otad::scep::message::{self, MessageType, RequestParams, NONCE_LEN};

/// Who sent a PKCSReq: its key and the self-signed certificate the request is signed with.
pub struct Requester {
    pub key: RsaPrivateKey,
    pub certificate: Vec<u8>,
}

/// A PKCSReq for a CSR with `common_name` and `challenge`, encrypted to `recipient` (the
/// RA certificate from GetCACert); returns who sent it, the pkiMessage and its senderNonce.
pub fn pkcs_req(
    recipient: &[u8],
    common_name: &str,
    challenge: &str,
    transaction_id: &str,
) -> (Requester, Vec<u8>, [u8; NONCE_LEN]) {
    let key = RsaPrivateKey::generate(2048).unwrap();
    let request = csr::build(&key, common_name, Some(challenge)).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let certificate = params
        .self_signed(&key.rcgen_key().unwrap())
        .unwrap()
        .der()
        .to_vec();
    let nonce = message::new_nonce();
    let pki_message = message::build_request(
        &request,
        &RequestParams {
            message_type: MessageType::PkcsReq,
            transaction_id,
            sender_nonce: nonce,
            digest: DigestAlgorithm::Sha256,
            cipher: ContentCipher::Aes128Cbc,
            recipient,
            signer_certificate: &certificate,
            signer_key: key.signing(),
        },
    )
    .unwrap();
    (Requester { key, certificate }, pki_message, nonce)
}
