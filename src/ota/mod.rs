//! The three OTA enrollment phases (Apple's "Over-the-Air Profile Delivery and Configuration").
//!
//! - Phase 1: [`phase1`] hands out a signed Profile Service payload with a fresh challenge.
//! - Phase 2: the device signs its attributes with its Apple device certificate; [`phase23`]
//!   checks the signer by Apple's pinned key, consumes the challenge and answers with a SCEP
//!   profile whose one-time challenge is bound to the device's UDID.
//! - Phase 3: the device signs its attributes again with the certificate our SCEP CA issued
//!   it; [`phase23`] checks that certificate was issued to this UDID and answers with the final
//!   profile, encrypted to that certificate.
//!
//! Phases 2 and 3 share one URL: the phase is chosen by who signed the body ([`classify`]).

pub mod attributes;
pub mod machine;
pub mod profile;

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use log::{info, warn};

use crate::cms::{self, signed, ContentCipher, DigestAlgorithm};
use crate::config::ProfileCipher;
use crate::context::{Context, Identity};
use crate::decide::{self, Asking};
use crate::gate::tokens;
use crate::pki::apple::TrustAnchor;
use crate::pki::ca::CertificateAuthority;
use crate::pki::cert;
use crate::store::{
    Admission, ChallengeLimits, ChallengePurpose, ChallengeRecord, DeviceRecord, HistoryEntry,
    NoRoom,
};
use attributes::DeviceAttributes;
use machine::Event;
use profile::{Branding, MdmSettings};

/// Why a phase request was refused. The HTTP status for each is chosen in `http`.
#[derive(Debug)]
#[non_exhaustive]
pub enum OtaError {
    /// The body is not a well-formed request (400).
    Malformed(String),
    /// The signer is not trusted, or the signature does not verify (403).
    Untrusted(String),
    /// The challenge is missing, unknown, used or expired (403).
    Challenge(String),
    /// The step is out of order for this device, or the device is refused (403).
    Refused(String),
    /// The blocklist, the device policy or a decision hook refused the device (403); the
    /// text is the reason, for the admin and the client alike.
    Denied(String),
    /// Too much is in progress to take more now: try again in `retry_after` seconds (503).
    Busy {
        /// The reason, one line.
        why: String,
        /// Seconds the client should wait (Retry-After).
        retry_after: u64,
    },
    /// This client, or the enrollment token it came with, holds as many live challenges as
    /// one may: try again in `retry_after` seconds (429).
    ClientBusy {
        /// The reason, one line.
        why: String,
        /// Seconds the client should wait (Retry-After).
        retry_after: u64,
    },
    /// Something on our side failed; the detail goes to the log, not the client (500).
    Internal(String),
}

impl fmt::Display for OtaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OtaError::Malformed(why)
            | OtaError::Untrusted(why)
            | OtaError::Challenge(why)
            | OtaError::Refused(why)
            | OtaError::Denied(why)
            | OtaError::Busy { why, .. }
            | OtaError::ClientBusy { why, .. }
            | OtaError::Internal(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for OtaError {}

impl OtaError {
    /// The same error with "`prefix`: " before its text.
    fn with_prefix(self, prefix: &str) -> OtaError {
        let add = |why: String| format!("{prefix}: {why}");
        match self {
            OtaError::Malformed(why) => OtaError::Malformed(add(why)),
            OtaError::Untrusted(why) => OtaError::Untrusted(add(why)),
            OtaError::Challenge(why) => OtaError::Challenge(add(why)),
            OtaError::Refused(why) => OtaError::Refused(add(why)),
            OtaError::Denied(why) => OtaError::Denied(add(why)),
            OtaError::Busy { why, retry_after } => OtaError::Busy {
                why: add(why),
                retry_after,
            },
            OtaError::ClientBusy { why, retry_after } => OtaError::ClientBusy {
                why: add(why),
                retry_after,
            },
            OtaError::Internal(why) => OtaError::Internal(add(why)),
        }
    }
}

impl OtaError {
    /// The kind of refusal, as a fixed label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            OtaError::Malformed(_) => "malformed",
            OtaError::Untrusted(_) => "untrusted",
            OtaError::Challenge(_) => "challenge",
            OtaError::Refused(_) => "refused",
            OtaError::Denied(_) => "denied",
            OtaError::Busy { .. } => "busy",
            OtaError::ClientBusy { .. } => "rate_limited",
            OtaError::Internal(_) => "internal",
        }
    }
}

impl From<crate::store::StoreError> for OtaError {
    fn from(err: crate::store::StoreError) -> Self {
        OtaError::Internal(format!("state: {err}"))
    }
}

/// Who signed a phase 2 or 3 body, which decides the phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerKind {
    /// A device certificate signed by a pinned device CA's key (Apple's, or an extra one).
    Device {
        /// The anchor's name.
        anchor: String,
    },
    /// A certificate our SCEP CA signed.
    OwnCa {
        /// Its serial, lowercase hex.
        serial: String,
    },
}

impl SignerKind {
    /// 2 or 3.
    pub fn phase(&self) -> u8 {
        match self {
            SignerKind::Device { .. } => 2,
            SignerKind::OwnCa { .. } => 3,
        }
    }
}

/// A verified phase 2 or 3 body.
pub struct VerifiedBody {
    /// The SignedData, signature checked.
    pub message: signed::SignedMessage,
    /// Who signed it.
    pub signer: SignerKind,
    /// What the device says about itself.
    pub attributes: DeviceAttributes,
}

/// Verifies a phase 2/3 body's signature and decides who signed it.
///
/// The phase is chosen by the signer and nothing else: a body that verifies under a pinned
/// device CA's key is phase 2; one whose signer our CA issued is phase 3. Certificates are
/// matched by key, never by name, so a certificate carrying Apple's names over another key
/// is refused. The certificates the device sent besides its own are not needed: the anchors
/// are pinned here, and Apple's expired intermediates add nothing to that.
pub fn classify(
    body: &[u8],
    anchors: &[TrustAnchor],
    ca: Option<&CertificateAuthority>,
) -> Result<VerifiedBody, OtaError> {
    let message = signed::verify(body).map_err(|err| match err {
        cms::CmsError::BadSignature
        | cms::CmsError::MessageDigestMismatch
        | cms::CmsError::ContentTypeMismatch => OtaError::Untrusted(format!("signature: {err}")),
        other => OtaError::Malformed(format!("body: {other}")),
    })?;
    let leaf = &message.signer.certificate;
    let Some(signer) = signer_kind(leaf, anchors, ca) else {
        let who = cert::summarize(leaf)
            .map(|s| s.subject)
            .unwrap_or_else(|_| "?".into());
        return Err(OtaError::Untrusted(format!(
            "signer {who}: not issued by Apple Device CA or by this server"
        )));
    };

    let content = message.content.as_deref().unwrap_or_default();
    let attributes =
        attributes::parse(content).map_err(|err| OtaError::Malformed(err.to_string()))?;
    Ok(VerifiedBody {
        message,
        signer,
        attributes,
    })
}

/// Who vouches for a signer certificate: a pinned device CA's key, our CA's key, or nobody.
pub fn signer_kind(
    leaf: &[u8],
    anchors: &[TrustAnchor],
    ca: Option<&CertificateAuthority>,
) -> Option<SignerKind> {
    if let Some(anchor) = anchors.iter().find(|a| a.verify_issued(leaf).is_ok()) {
        return Some(SignerKind::Device {
            anchor: anchor.name.clone(),
        });
    }
    if ca.is_some_and(|ca| ca.issued(leaf)) {
        return cert::serial_hex(leaf)
            .ok()
            .map(|serial| SignerKind::OwnCa { serial });
    }
    None
}

fn branding(ctx: &Context) -> Branding {
    Branding {
        organization: ctx.config.server.organization.clone(),
        identifier: ctx.config.server.identifier.clone(),
        display_name: ctx.config.ota.display_name.clone(),
    }
}

/// A fresh random challenge: 32 bytes, base64url.
pub fn new_challenge() -> String {
    let mut bytes = [0u8; 32];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs a profile plist with the profile-signing identity (SHA-256, signed attributes, our
/// CA's certificate included so the device can show who signed it).
pub fn sign_profile(ctx: &Context, profile: &plist::Value) -> Result<Vec<u8>, OtaError> {
    sign_with(&ctx.signer, ctx.ca.certificate(), &profile::to_xml(profile))
}

fn sign_with(identity: &Identity, ca_cert: &[u8], content: &[u8]) -> Result<Vec<u8>, OtaError> {
    let signer = signed::SignerIdentity {
        certificate: &identity.certificate,
        key: identity.key.signing(),
    };
    let certificates = [ca_cert];
    let options = signed::SignOptions::data(DigestAlgorithm::Sha256, true, &certificates);
    signed::sign(content, &signer, &options)
        .map_err(|err| OtaError::Internal(format!("signing: {err}")))
}

/// Phase 1: a signed Profile Service payload with a fresh single-use challenge (or the
/// static `ota.challenge`). The challenge carries `admission`, who phase 1 let in, to phase 2,
/// and is counted under `remote`'s address for `ota.max_live_challenges_per_client`.
pub fn phase1(
    ctx: &Context,
    admission: &Admission,
    remote: &str,
    now: i64,
) -> Result<Vec<u8>, OtaError> {
    let challenge = if ctx.config.ota.challenge.is_empty() {
        let challenge = new_challenge();
        let record = ChallengeRecord {
            purpose: ChallengePurpose::Phase2,
            created: now,
            expires: now.saturating_add(ttl_secs(ctx.derived.ota_challenge_ttl)),
            udid: None,
            subject: Vec::new(),
            admission: admission.clone(),
            client: Some(crate::gate::client_key(remote)),
        };
        // Room under the caps is taken first; any refusal after it gives the room back.
        let slot = ctx
            .store
            .reserve_challenge(record, challenge_limits(ctx), now)
            .map_err(|no_room| room_refusal(no_room, remote))?;
        // A token's live challenges are capped, so a 1-use link cannot mint them unbounded.
        if let Some(id) = &admission.token {
            tokens::reserve_challenge(&ctx.store, id, &challenge, slot.record().expires, now)
                .map_err(token_refusal)?;
        }
        slot.put(&challenge)?;
        challenge
    } else {
        ctx.config.ota.challenge.clone()
    };

    let url = format!("{}/ota/phase23", ctx.config.server.url);
    let payload = profile::profile_service(
        &branding(ctx),
        &url,
        &ctx.config.ota.device_attributes,
        &challenge,
    );
    sign_profile(ctx, &payload)
}

/// Phase 1 for HEAD: what [`phase1`] would refuse before minting its challenge (no room for
/// another live challenge, on the server or on the token), checked without minting one or
/// changing anything.
pub fn phase1_head(
    ctx: &Context,
    admission: &Admission,
    remote: &str,
    now: i64,
) -> Result<(), OtaError> {
    if ctx.config.ota.challenge.is_empty() {
        check_challenge_room(ctx, remote, now)?;
        if let Some(id) = &admission.token {
            tokens::check_room(&ctx.store, id, now).map_err(token_refusal)?;
        }
    }
    Ok(())
}

/// `HEAD /mdm/enroll`: what [`plain_enrollment`] would refuse before minting its challenge,
/// checked without minting one.
pub fn plain_enrollment_head(ctx: &Context, remote: &str, now: i64) -> Result<(), OtaError> {
    check_challenge_room(ctx, remote, now)
}

/// A token refusal as the client sees it (403; 429 at its cap of live challenges), or our
/// own failure (500).
fn token_refusal(err: tokens::TokenError) -> OtaError {
    match err {
        tokens::TokenError::Store(err) => OtaError::Internal(format!("enrollment tokens: {err}")),
        tokens::TokenError::Busy { why, retry_after } => OtaError::ClientBusy { why, retry_after },
        other => OtaError::Refused(other.to_string()),
    }
}

/// Anyone may download the Profile Service payload, and each download leaves a challenge
/// record for `ota.challenge_ttl`: past `ota.max_live_challenges`, phase 1 answers 503 until some
/// are used or expire, so a flood of downloads cannot fill the disk; past
/// `ota.max_live_challenges_per_client` from one address, 429, so that one client cannot
/// take every place.
fn challenge_limits(ctx: &Context) -> ChallengeLimits {
    ChallengeLimits {
        max_live: ctx.config.ota.max_live_challenges,
        max_per_client: ctx.config.ota.max_live_challenges_per_client,
    }
}

/// What a download would be refused for the caps, checked without minting a challenge.
fn check_challenge_room(ctx: &Context, remote: &str, now: i64) -> Result<(), OtaError> {
    let client = Some(crate::gate::client_key(remote));
    ctx.store
        .check_challenge_room(client, challenge_limits(ctx), now)
        .map_err(|no_room| room_refusal(no_room, remote))
}

/// A cap's refusal as the client sees it.
fn room_refusal(no_room: NoRoom, remote: &str) -> OtaError {
    match no_room {
        NoRoom::Full { live, retry_after } => OtaError::Busy {
            why: format!(
                "{live} enrollments are waiting for their device, the most the server takes \
                 (ota.max_live_challenges); try again later"
            ),
            retry_after,
        },
        NoRoom::Client { live, retry_after } => {
            // Named as it is counted: an IPv6 client by its /64.
            let client = match crate::gate::client_key(remote) {
                std::net::IpAddr::V6(network) => format!("{network}/64"),
                v4 => v4.to_string(),
            };
            OtaError::ClientBusy {
                why: format!(
                    "{live} enrollments from {client} are waiting for their device, the most \
                     one address may start (ota.max_live_challenges_per_client); try again \
                     later"
                ),
                retry_after,
            }
        }
    }
}

fn ttl_secs(ttl: std::time::Duration) -> i64 {
    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)
}

/// What a phase 2 or 3 request produced.
pub struct PhaseReply {
    /// 2 or 3.
    pub phase: u8,
    /// The device's UDID.
    pub udid: String,
    /// The signed profile to send back.
    pub body: Vec<u8>,
}

/// Phase 2 or 3, chosen by who signed `body`.
pub fn phase23(ctx: &Context, body: &[u8], remote: &str, now: i64) -> Result<PhaseReply, OtaError> {
    let verified = classify(body, &ctx.device_anchors, Some(&ctx.ca))
        .inspect_err(|err| ctx.metrics.phase("unclassified", err.kind()))?;
    let udid = verified.attributes.udid().to_string();
    if !crate::store::valid_udid(&udid) {
        ctx.metrics.phase("unclassified", "malformed");
        return Err(OtaError::Malformed(format!(
            "UDID {:?}: not a valid UDID",
            truncate(&udid)
        )));
    }
    let (label, answered) = match &verified.signer {
        SignerKind::Device { .. } => ("2", phase2(ctx, &verified, remote, now)),
        SignerKind::OwnCa { serial } => ("3", phase3(ctx, &verified, serial, remote, now)),
    };
    ctx.metrics.phase(
        label,
        answered.as_ref().map_or_else(OtaError::kind, |_| "ok"),
    );
    let body = answered?;
    Ok(PhaseReply {
        phase: verified.signer.phase(),
        udid,
        body,
    })
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

/// Checks and consumes the phase 1 challenge the device echoes; returns who phase 1 admitted
/// with it (nobody in particular for the static `ota.challenge`).
fn consume_phase1_challenge(
    ctx: &Context,
    attributes: &DeviceAttributes,
    now: i64,
) -> Result<Admission, OtaError> {
    let Some(challenge) = attributes.challenge() else {
        return Err(OtaError::Challenge(
            "phase 2: no CHALLENGE in the device attributes".into(),
        ));
    };
    if !ctx.config.ota.challenge.is_empty() {
        let expected = ctx.config.ota.challenge.as_bytes();
        return aws_lc_rs::constant_time::verify_slices_are_equal(challenge.as_bytes(), expected)
            .map(|()| Admission::default())
            .map_err(|_| OtaError::Challenge("phase 2: wrong challenge".into()));
    }
    match ctx
        .store
        .take_challenge(challenge, ChallengePurpose::Phase2)?
    {
        Some(record) if record.expires > now => Ok(record.admission),
        Some(_) => Err(OtaError::Challenge(
            "phase 2: challenge expired; download the profile again".into(),
        )),
        None => Err(OtaError::Challenge(
            "phase 2: challenge unknown or already used".into(),
        )),
    }
}

/// Hands out a one-time SCEP challenge bound to `udid` and the subject its certificate gets.
fn bind_scep_challenge(
    ctx: &Context,
    udid: &str,
    now: i64,
) -> Result<(String, Vec<(String, String)>), OtaError> {
    let subject = vec![
        ("CN".to_string(), udid.to_string()),
        ("O".to_string(), ctx.config.server.organization.clone()),
    ];
    let challenge = new_challenge();
    let record = ChallengeRecord {
        purpose: ChallengePurpose::Scep,
        created: now,
        expires: now.saturating_add(ttl_secs(ctx.derived.scep_challenge_ttl)),
        udid: Some(udid.to_string()),
        subject: subject.clone(),
        admission: Admission::default(),
        client: None,
    };
    ctx.store.put_challenge(&challenge, &record)?;
    Ok((challenge, subject))
}

fn phase2(
    ctx: &Context,
    verified: &VerifiedBody,
    remote: &str,
    now: i64,
) -> Result<Vec<u8>, OtaError> {
    let leaf = &verified.message.signer.certificate;
    if ctx.derived.check_apple_leaf_validity {
        cert::check_validity(leaf, now)
            .map_err(|err| OtaError::Untrusted(format!("phase 2 device certificate: {err}")))?;
    }
    let attributes = &verified.attributes;
    let udid = attributes.udid();

    // The challenge is spent first: only a fresh phase 1 gets as far as policy and hooks,
    // so a replayed body cannot run a hook again.
    let admission = consume_phase1_challenge(ctx, attributes, now)?;
    let token = admission.token.as_deref().zip(attributes.challenge());
    let spender = tokens::Spender {
        udid,
        serial: attributes.get("SERIAL"),
        remote,
    };
    let asking = Asking {
        step: "phase 2",
        phase: 2,
        udid,
        attributes,
        admission: &admission,
        remote,
    };

    // The token first, without spending (so a device its scope refuses runs no hook), then
    // policy and hook. A refusal on the way frees the place its challenge held on the token.
    let decided = token
        .map_or(Ok(()), |(id, _)| {
            tokens::precheck(&ctx.store, id, spender, now)
                .map_err(|err| token_refusal(err).with_prefix("phase 2"))
        })
        .and_then(|()| decide::check_policy(ctx, &asking))
        .and_then(|()| decide::ask_hook(ctx, &asking, None, &BTreeMap::new()));
    let variables = match decided {
        Ok(variables) => variables,
        Err(err) => {
            if let Some((id, challenge)) = token {
                if let Err(release) = tokens::release_challenge(&ctx.store, id, challenge, now) {
                    warn!("enrollment token {id}: freeing a refused device's place: {release}");
                }
            }
            return Err(err);
        }
    };

    // The token's use is spent here, not in phase 1, and only once policy and hook allowed
    // the device (a refused device burns no use): checked again under the lock (revoked,
    // expired, used up by a device that came first, another device than its scope).
    if let Some((id, challenge)) = token {
        tokens::spend(&ctx.store, id, challenge, spender, now)
            .map_err(|err| token_refusal(err).with_prefix("phase 2"))?;
    }
    let (scep_challenge, subject) = bind_scep_challenge(ctx, udid, now)?;

    let brand = branding(ctx);
    let scep_url = format!("{}/scep", ctx.config.server.url);
    let (scep, _) = profile::scep_payload(&brand, "scep", &scep_url, &subject, &scep_challenge);
    let profile = profile::configuration(&brand, &brand.display_name, "identity", vec![scep]);
    let body = sign_profile(ctx, &plist::Value::Dictionary(profile))?;

    let entry = HistoryEntry::new("phase2", now, remote, None);
    let decided = Decided {
        admission,
        hook_variables: variables,
    };
    let user = decided.admission.user.clone();
    let token = decided.admission.token.clone();
    update_device(ctx, udid, attributes, Some(decided), Event::Phase2, entry)?;
    let mut event = device_event("phase2", udid, attributes, remote);
    if let Some(user) = user {
        event = event.field("user", user);
    }
    // The token's public id, never its secret.
    if let Some(token) = token {
        event = event.field("token", token);
    }
    ctx.events.record(event);
    info!(
        "phase 2: udid={udid} serial={} product={} remote={remote}",
        attributes.get("SERIAL").unwrap_or("-"),
        attributes.get("PRODUCT").unwrap_or("-")
    );
    Ok(body)
}

/// What phase 2 decided about a device, kept on its record for phase 3.
struct Decided {
    /// Who phase 1 admitted.
    admission: Admission,
    /// What `hooks.phase2` returned.
    hook_variables: BTreeMap<String, String>,
}

/// An events-log entry for a device step: its UDID, serial number, product and version.
fn device_event(
    kind: &str,
    udid: &str,
    attributes: &DeviceAttributes,
    remote: &str,
) -> crate::events::Event {
    let mut event = crate::events::Event::new(kind).udid(udid);
    if let Some(serial) = attributes.get("SERIAL") {
        event = event.serial(serial);
    }
    for (attribute, field) in [("PRODUCT", "product"), ("VERSION", "version")] {
        if let Some(value) = attributes.get(attribute) {
            event = event.field(field, value);
        }
    }
    event.remote(remote)
}

/// Moves a device through the state machine and records the event, under the state lock.
/// Phase 2 passes who phase 1 admitted and its hook's variables, which replace what the
/// device record held.
fn update_device(
    ctx: &Context,
    udid: &str,
    attributes: &DeviceAttributes,
    decided: Option<Decided>,
    event: Event,
    entry: HistoryEntry,
) -> Result<(), OtaError> {
    ctx.store.transaction(|| {
        let existing = ctx.store.device(udid)?;
        let from = existing.as_ref().map(|d| d.phase);
        let phase = machine::next(from, event)
            .map_err(|err| OtaError::Refused(format!("{udid}: {err}")))?;
        // Checked again under the lock: two replays racing past the first check.
        if let (Event::Phase3, Some(device), Some(serial)) = (event, &existing, &entry.serial) {
            if delivered(device, serial) {
                return Err(already_delivered(serial));
            }
        }
        let mut device = existing.unwrap_or_else(|| DeviceRecord {
            udid: udid.to_string(),
            attributes: BTreeMap::new(),
            phase,
            first_seen: entry.at,
            last_seen: entry.at,
            certificates: Vec::new(),
            history: Vec::new(),
            admission: Admission::default(),
            hook_variables: BTreeMap::new(),
        });
        device.phase = phase;
        if let Some(decided) = decided {
            device.admission = decided.admission;
            device.hook_variables = decided.hook_variables;
        }
        device.attributes = attributes.recordable();
        device.record(HistoryEntry {
            attributes: attributes.recordable(),
            ..entry
        });
        ctx.store.save_device(&device)?;
        Ok(())
    })
}

/// Whether phase 3 already delivered the final profile for certificate `serial`.
fn delivered(device: &DeviceRecord, serial: &str) -> bool {
    device
        .history
        .iter()
        .any(|entry| entry.event == "phase3" && entry.serial.as_deref() == Some(serial))
}

fn already_delivered(serial: &str) -> OtaError {
    OtaError::Refused(format!(
        "phase 3: the final profile was already delivered for certificate {serial}; to \
         enroll again, start over from the enroll link"
    ))
}

fn phase3(
    ctx: &Context,
    verified: &VerifiedBody,
    serial: &str,
    remote: &str,
    now: i64,
) -> Result<Vec<u8>, OtaError> {
    let attributes = &verified.attributes;
    let udid = attributes.udid();
    let leaf = &verified.message.signer.certificate;

    let record = ctx.store.cert(serial)?.ok_or_else(|| {
        OtaError::Untrusted(format!(
            "phase 3 signer {serial}: not a certificate this server issued to a device"
        ))
    })?;
    if record.revoked.is_some() {
        return Err(OtaError::Untrusted(format!(
            "phase 3 signer {serial}: revoked"
        )));
    }
    match record.udid.as_deref() {
        Some(bound) if bound == udid => {}
        Some(bound) => {
            return Err(OtaError::Untrusted(format!(
                "phase 3 signer {serial}: issued to UDID {bound}, not {}",
                truncate(udid)
            )))
        }
        None => {
            return Err(OtaError::Untrusted(format!(
                "phase 3 signer {serial}: not issued through OTA enrollment"
            )))
        }
    }
    cert::check_validity(leaf, now)
        .map_err(|err| OtaError::Untrusted(format!("phase 3 signer {serial}: {err}")))?;
    if current_certificate(ctx, udid)?.as_deref() != Some(serial) {
        return Err(OtaError::Untrusted(format!(
            "phase 3 signer {serial}: no longer the device's current certificate"
        )));
    }
    let device = ctx.store.device(udid)?;
    machine::next(device.as_ref().map(|d| d.phase), Event::Phase3)
        .map_err(|err| OtaError::Refused(format!("{udid}: {err}")))?;
    let Some(device) = device else {
        return Err(OtaError::Refused(format!("{udid}: phase 3 before phase 2")));
    };
    // One final profile per certificate: a captured phase 3 body replayed would otherwise
    // run the hook and mint a SCEP challenge each time.
    if delivered(&device, serial) {
        return Err(already_delivered(serial));
    }

    // What phase 2 recorded came in a body Apple's device certificate signed; phase 3's
    // body is signed only by the key the device made for SCEP. So the decisions, the
    // template and the record use the attested attributes, and a phase 3 body naming
    // another serial is refused.
    let attested = DeviceAttributes {
        values: device.attributes.clone(),
    };
    if let (Some(said), Some(recorded)) = (attributes.get("SERIAL"), attested.get("SERIAL")) {
        if said != recorded {
            return Err(OtaError::Refused(format!(
                "phase 3: SERIAL {:?} is not the {recorded} phase 2 reported for {udid}",
                truncate(said)
            )));
        }
    }

    // Phase 3 is decided again: a block or rule added since phase 2 still applies.
    let (admission, mut variables) = (device.admission, device.hook_variables);
    let asking = Asking {
        step: "phase 3",
        phase: 3,
        udid,
        attributes: &attested,
        admission: &admission,
        remote,
    };
    decide::check_policy(ctx, &asking)?;
    let fresh = decide::ask_hook(ctx, &asking, Some(serial), &variables)?;
    variables.extend(fresh);

    let values = decide::template_values(&attested, &admission, &variables);
    let mut profile = final_profile(ctx, udid, &values, now)?;
    let cipher = match ctx.derived.profile_cipher {
        ProfileCipher::Des3 => ContentCipher::Des3Cbc,
        ProfileCipher::Aes128 => ContentCipher::Aes128Cbc,
        ProfileCipher::Aes256 => ContentCipher::Aes256Cbc,
    };
    profile::encrypt_payload_content(&mut profile, |plain| {
        cms::enveloped::encrypt(plain, leaf, cipher)
    })
    .ok_or_else(|| OtaError::Internal("final profile: no PayloadContent array".into()))?
    .map_err(|err| OtaError::Internal(format!("final profile encryption: {err}")))?;
    let body = sign_profile(ctx, &plist::Value::Dictionary(profile))?;

    let entry = HistoryEntry::new("phase3", now, remote, Some(serial));
    update_device(ctx, udid, &attested, None, Event::Phase3, entry)?;
    ctx.events
        .record(device_event("phase3", udid, &attested, remote).certificate(serial));
    info!(
        "phase 3: udid={udid} serial={} certificate={serial} remote={remote}",
        attested.get("SERIAL").unwrap_or("-")
    );
    Ok(body)
}

/// The final profile before encryption: the configured template rendered with `values`, or
/// an MDM enrollment profile with its own SCEP identity (a fresh challenge bound to the
/// device). It exists only in memory until it is encrypted.
fn final_profile(
    ctx: &Context,
    udid: &str,
    values: &BTreeMap<String, String>,
    now: i64,
) -> Result<plist::Dictionary, OtaError> {
    if let Some(template) = &ctx.template {
        return decide::template::render(template, values).map_err(|err| match err {
            decide::template::RenderError::Missing(name) => {
                // A declared hook variable nobody supplied: fail closed, never a profile
                // with a hole in it.
                log::error!(
                    "phase 3: device {udid}: profile.template uses ${{{name}}}, which no hook \
                     supplied; refusing the device"
                );
                OtaError::Denied(format!(
                    "phase 3: device {udid}: the final profile lacks ${{{name}}}; see the \
                     server log"
                ))
            }
            decide::template::RenderError::Broken(why) => {
                OtaError::Internal(format!("profile.template: {why}"))
            }
        });
    }
    let (challenge, subject) = bind_scep_challenge(ctx, udid, now)?;
    Ok(mdm_profile(ctx, &challenge, &subject))
}

/// An MDM enrollment profile: a SCEP payload to our CA and an MDM payload using it.
pub fn mdm_profile(
    ctx: &Context,
    scep_challenge: &str,
    subject: &[(String, String)],
) -> plist::Dictionary {
    let brand = branding(ctx);
    let scep_url = format!("{}/scep", ctx.config.server.url);
    let (scep, identity_uuid) =
        profile::scep_payload(&brand, "mdm-identity", &scep_url, subject, scep_challenge);
    let mdm = &ctx.config.mdm;
    let settings = MdmSettings {
        server_url: mdm.server_url.clone(),
        checkin_url: mdm.checkin_url.clone(),
        topic: mdm.topic.clone(),
        sign_message: mdm.sign_message,
        access_rights: mdm.access_rights,
    };
    let mdm_payload = profile::mdm_payload(&brand, &settings, &identity_uuid);
    profile::configuration(
        &brand,
        &brand.display_name,
        "mdm-enrollment",
        vec![scep, mdm_payload],
    )
}

/// The plain enrollment profile for `/mdm/enroll`: a fresh one-time SCEP challenge not bound
/// to any device (the caller proved nothing), signed.
pub fn plain_enrollment(ctx: &Context, remote: &str, now: i64) -> Result<Vec<u8>, OtaError> {
    let challenge = new_challenge();
    let subject = vec![("O".to_string(), ctx.config.server.organization.clone())];
    let record = ChallengeRecord {
        purpose: ChallengePurpose::Scep,
        created: now,
        expires: now.saturating_add(ttl_secs(ctx.derived.scep_challenge_ttl)),
        udid: None,
        subject: subject.clone(),
        admission: Admission::default(),
        client: Some(crate::gate::client_key(remote)),
    };
    ctx.store
        .reserve_challenge(record, challenge_limits(ctx), now)
        .map_err(|no_room| room_refusal(no_room, remote))?
        .put(&challenge)?;
    let profile = mdm_profile(ctx, &challenge, &subject);
    sign_profile(ctx, &plist::Value::Dictionary(profile))
}

/// `POST /mdm/enroll`: the MDM enrollment profile for a device whose DEP machine-info body is
/// signed by a pinned device CA's key; its SCEP challenge is bound to the device's UDID.
pub fn dep_enrollment(
    ctx: &Context,
    body: &[u8],
    remote: &str,
    now: i64,
) -> Result<PhaseReply, OtaError> {
    let verified = classify(body, &ctx.device_anchors, None)?;
    let udid = verified.attributes.udid().to_string();
    if !crate::store::valid_udid(&udid) {
        return Err(OtaError::Malformed(format!(
            "UDID {:?}: not a valid UDID",
            truncate(&udid)
        )));
    }
    if ctx.derived.check_apple_leaf_validity {
        cert::check_validity(&verified.message.signer.certificate, now).map_err(|err| {
            OtaError::Untrusted(format!("machine info device certificate: {err}"))
        })?;
    }

    let asking = Asking {
        step: "dep enrollment",
        phase: 2,
        udid: &udid,
        attributes: &verified.attributes,
        admission: &Admission::default(),
        remote,
    };
    decide::check_policy(ctx, &asking)?;

    let (challenge, subject) = bind_scep_challenge(ctx, &udid, now)?;
    let profile = mdm_profile(ctx, &challenge, &subject);
    let body = sign_profile(ctx, &plist::Value::Dictionary(profile))?;

    let entry = HistoryEntry::new("dep-enroll", now, remote, None);
    update_device(ctx, &udid, &verified.attributes, None, Event::Phase2, entry)?;
    info!("dep enrollment: udid={udid} remote={remote}");
    ctx.events.record(device_event(
        "dep-enroll",
        &udid,
        &verified.attributes,
        remote,
    ));
    Ok(PhaseReply {
        phase: 2,
        udid,
        body,
    })
}

/// Records that the SCEP CA issued `serial` to the device `udid` (with a challenge bound to
/// it in phase 2 or 3): the device moves to certified and keeps the serial.
pub fn certificate_issued(
    ctx: &Context,
    udid: &str,
    serial: &str,
    remote: &str,
    now: i64,
) -> Result<(), OtaError> {
    ctx.store.transaction(|| {
        let Some(mut device) = ctx.store.device(udid)? else {
            return Err(OtaError::Refused(format!(
                "{udid}: certificate for a device never seen"
            )));
        };
        device.phase = machine::next(Some(device.phase), Event::CertificateIssued)
            .map_err(|err| OtaError::Refused(format!("{udid}: {err}")))?;
        device.certificates.push(serial.to_string());
        device.record(HistoryEntry::new("certificate", now, remote, Some(serial)));
        ctx.store.save_device(&device)?;
        Ok(())
    })
}

/// The serial of the last certificate issued to the device `udid`, if any: the only one of
/// its certificates that may still act for it (phase 3, renewal).
pub fn current_certificate(ctx: &Context, udid: &str) -> Result<Option<String>, OtaError> {
    Ok(ctx
        .store
        .device(udid)?
        .and_then(|device| device.certificates.last().cloned()))
}
