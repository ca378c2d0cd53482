//! Issuing and recording one device certificate: shared by SCEP (PKCSReq, RenewalReq) and
//! `otad request approve`, so there is one place where serials are drawn and recorded.
//!
//! A serial is recorded in a transaction of its own that refuses one already recorded, so
//! two issuances can never share one. Updating the device record is the caller's (another
//! transaction).

use std::fmt;

use crate::context::Context;
use crate::pki::ca::{random_serial, IssueRequest, KeyUsageProfile, SubjectAttribute};
use crate::pki::{cert, PkiError};
use crate::store::{CertRecord, StoreError};

/// Draws of a fresh serial when one is (astronomically unlikely) already taken.
const SERIAL_ATTEMPTS: usize = 4;

/// What a certificate is issued on.
pub struct Grant<'a> {
    /// The subject, as (attribute short name, value) pairs.
    pub subject: &'a [(String, String)],
    /// The device it is bound to, if any.
    pub udid: Option<&'a str>,
    /// What authorised it ("ota", "static", "renewal", "approved").
    pub authorised_by: &'a str,
    /// Who asked: the client's address, or what stands for an admin command.
    pub remote: &'a str,
}

/// Why no certificate was issued.
#[derive(Debug)]
#[non_exhaustive]
pub enum IssueError {
    /// A subject attribute the CA cannot write.
    Subject(String),
    /// The CA could not sign or the result did not read back.
    Pki(PkiError),
    /// The record could not be written.
    Store(StoreError),
    /// Every serial drawn was taken.
    NoFreeSerial,
}

impl fmt::Display for IssueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IssueError::Subject(kind) => write!(f, "subject attribute {kind:?}: not supported"),
            IssueError::Pki(err) => write!(f, "issuing: {err}"),
            IssueError::Store(err) => write!(f, "recording the certificate: {err}"),
            IssueError::NoFreeSerial => f.write_str("no free serial after several draws"),
        }
    }
}

impl std::error::Error for IssueError {}

/// Issues a certificate for `public_key_spki_der` and records it; returns its DER and record.
pub fn issue(
    ctx: &Context,
    public_key_spki_der: &[u8],
    grant: &Grant<'_>,
    at: i64,
) -> Result<(Vec<u8>, CertRecord), IssueError> {
    let subject = grant
        .subject
        .iter()
        .map(|(kind, value)| {
            SubjectAttribute::from_short_name(kind)
                .map(|attribute| (attribute, value.clone()))
                .ok_or_else(|| IssueError::Subject(kind.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let ca_serial = cert::serial_hex(ctx.ca.certificate()).unwrap_or_default();
    // A certificate does not outlive the CA that vouches for it by more than a day (an
    // imported CA may expire within scep.cert_validity).
    let ca_days_left = cert::summarize(ctx.ca.certificate())
        .map(|ca| (ca.not_after.saturating_sub(at).saturating_sub(60) / 86_400).max(1))
        .map_err(IssueError::Pki)?;
    let validity_days = u32::try_from(ca_days_left)
        .unwrap_or(u32::MAX)
        .min(ctx.derived.cert_validity_days);
    for _ in 0..SERIAL_ATTEMPTS {
        let request = IssueRequest {
            subject: &subject,
            public_key_spki_der,
            serial: random_serial(),
            validity_days,
            usage: KeyUsageProfile::DeviceIdentity,
        };
        let issued = ctx.ca.issue(&request).map_err(IssueError::Pki)?;
        let summary = cert::summarize(&issued).map_err(IssueError::Pki)?;
        // A serial is never the CA's own (nor, through create_cert, any earlier one).
        if summary.serial_hex == ca_serial {
            continue;
        }
        let record = CertRecord {
            serial: summary.serial_hex,
            udid: grant.udid.map(str::to_string),
            subject: summary.subject,
            issued_at: at,
            not_after: summary.not_after,
            revoked: None,
            revocation_reason: None,
            authorised_by: grant.authorised_by.to_string(),
            superseded_by: None,
            pem: cert::der_to_pem(&issued),
        };
        match ctx.store.create_cert(&record) {
            Ok(()) => {
                let mut event = crate::events::Event::new("certificate")
                    .certificate(&record.serial)
                    .field("subject", record.subject.as_str())
                    .field("authorised_by", grant.authorised_by)
                    .field("not_after", crate::store::rfc3339(record.not_after))
                    .remote(grant.remote);
                if let Some(udid) = grant.udid {
                    event = event.udid(udid);
                }
                ctx.events.record(event);
                ctx.metrics.issued(match grant.authorised_by {
                    "ota" => "ota",
                    "static" => "static",
                    "renewal" => "renewal",
                    "approved" => "approved",
                    _ => "other",
                });
                return Ok((issued, record));
            }
            Err(StoreError::SerialTaken(serial)) => {
                log::warn!("serial {serial} already recorded; drawing another");
            }
            Err(err) => return Err(IssueError::Store(err)),
        }
    }
    Err(IssueError::NoFreeSerial)
}
