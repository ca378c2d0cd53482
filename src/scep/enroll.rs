//! PKCSReq (RFC 8894 §3.3.1): a new certificate for a CSR, authorised by a challenge.
//!
//! Issuance is a chain of small checks — the CSR against its signer, the key size, the
//! challenge — then signing; the subject comes from the challenge's binding or the
//! configured policy, never blindly from the CSR.

use log::info;

use super::{open_envelope, refuse, succeed, FailInfo, ReplyTo, ScepError};
use crate::cms::{enveloped, signed};
use crate::context::Context;
use crate::issuance;
use crate::pki::{cert, csr};
use crate::store::{now, CertRecord, ChallengePurpose};

/// Longest CN taken from a CSR when a static challenge authorises it.
pub const MAX_COMMON_NAME: usize = 64;

/// The subject `scep.subject` gives a certificate whose CSR names itself `cn`.
fn static_subject(ctx: &Context, cn: &str) -> Vec<(String, String)> {
    ctx.config
        .scep
        .subject
        .iter()
        .filter_map(|entry| entry.split_once('='))
        .map(|(kind, value)| {
            let value = value
                .replace("$CN", cn)
                .replace("$ORGANIZATION", &ctx.config.server.organization);
            (kind.to_string(), value)
        })
        .collect()
}

/// Who the certificate is for, and on whose authority.
pub(crate) struct Authorisation {
    /// The subject, as (attribute short name, value) pairs.
    pub subject: Vec<(String, String)>,
    /// The device it is bound to, if any.
    pub udid: Option<String>,
    /// What authorised it ("ota", "static", "renewal", "approved").
    pub authorised_by: &'static str,
}

/// PKCSReq: decrypt, check the CSR, check the challenge, issue, answer.
pub(crate) fn pkcs_req(
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

    let request = match check_csr(&decrypted.content, requester) {
        Ok(request) => request,
        Err(reason) => return refuse(ctx, to, FailInfo::BadRequest, &reason, remote),
    };
    if let Err(reason) = check_answerable(request.key_bits) {
        return refuse(ctx, to, FailInfo::BadAlg, &reason, remote);
    }
    if ctx.derived.manual_approval {
        return super::poll::queue(ctx, to, requester, &decrypted, &request, remote);
    }
    let authorisation = match authorise(ctx, &request) {
        Ok(authorisation) => authorisation,
        Err(reason) => return refuse(ctx, to, FailInfo::BadRequest, &reason, remote),
    };

    let issued = issue(ctx, &request.public_key_spki_der, &authorisation, remote)?;
    let degenerate =
        signed::certs_only(&[&issued]).map_err(|err| ScepError::Internal(err.to_string()))?;
    succeed(ctx, to, &degenerate, decrypted.cipher, requester)
}

/// The CertRep is encrypted to the requester's key: refuse what cannot be answered before a
/// challenge is spent or a certificate issued.
pub(crate) fn check_answerable(key_bits: usize) -> Result<(), String> {
    if key_bits < enveloped::MIN_ENCRYPTION_RSA_BITS {
        return Err(format!(
            "RSA-{key_bits} keys cannot be answered; use {} bits or more",
            enveloped::MIN_ENCRYPTION_RSA_BITS
        ));
    }
    Ok(())
}

/// Parses the CSR and checks it matches the request's signer: a PKCSReq is signed with a
/// throwaway certificate for the very key the CSR asks to certify.
pub(crate) fn check_csr(
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
pub(crate) fn authorise(
    ctx: &Context,
    request: &csr::CertificationRequest,
) -> Result<Authorisation, String> {
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
        // An OTA device's identity (CN = its UDID) comes from OTA enrollment only: under the
        // static challenge anyone holding it could mint a blocked device's certificate, or
        // keep one renewing that no block would ever stop.
        if crate::store::valid_udid(cn) {
            // In any case: a UDID spelled in another case is still that device to a reader.
            let mut spellings = vec![
                cn.to_string(),
                cn.to_ascii_uppercase(),
                cn.to_ascii_lowercase(),
            ];
            spellings.sort();
            spellings.dedup();
            let mut known = false;
            for spelling in &spellings {
                let found = ctx
                    .store
                    .device(spelling)
                    .map_err(|err| format!("device lookup failed: {err}"))?;
                known |= found.is_some();
            }
            if known {
                return Err(format!(
                    "CN {cn} is the UDID of a device enrolled over the air: its certificates \
                     come from OTA enrollment only"
                ));
            }
        }
        return Ok(Authorisation {
            subject: static_subject(ctx, cn),
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
    // A device blocked between phase 2 and its SCEP request gets no certificate either.
    if let Some(udid) = record.udid.as_deref() {
        crate::decide::check_scep(ctx, udid)?;
    }
    Ok(Authorisation {
        subject: record.subject,
        udid: record.udid,
        authorised_by: "ota",
    })
}

/// Issues and records the certificate, then moves the device it is bound to along.
pub(crate) fn issue(
    ctx: &Context,
    public_key_spki_der: &[u8],
    authorisation: &Authorisation,
    remote: &str,
) -> Result<Vec<u8>, ScepError> {
    let grant = issuance::Grant {
        subject: &authorisation.subject,
        udid: authorisation.udid.as_deref(),
        authorised_by: authorisation.authorised_by,
        remote,
    };
    let (issued, record) = issuance::issue(ctx, public_key_spki_der, &grant, now())
        .map_err(|err| ScepError::Internal(err.to_string()))?;
    issued_to(ctx, &record, authorisation, remote)?;
    Ok(issued)
}

/// Records an issuance against the device it was bound to, and logs it.
pub(crate) fn issued_to(
    ctx: &Context,
    record: &CertRecord,
    authorisation: &Authorisation,
    remote: &str,
) -> Result<(), ScepError> {
    if let Some(udid) = &authorisation.udid {
        crate::ota::certificate_issued(ctx, udid, &record.serial, remote, now())
            .map_err(|err| ScepError::Internal(err.to_string()))?;
    }
    info!(
        "scep: issued certificate {} to {} ({}) remote={remote}",
        record.serial,
        authorisation.udid.as_deref().unwrap_or("-"),
        authorisation.authorised_by
    );
    Ok(())
}
