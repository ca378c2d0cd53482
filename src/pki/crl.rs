//! Certificate revocation lists signed by our CA
//! ([RFC 5280 section 5](https://www.rfc-editor.org/rfc/rfc5280#section-5)): building one,
//! reading one back, and keeping the state dir's `crl.der` current.
//!
//! A CRL is laid out by rcgen and signed through aws-lc-rs with the CA key (sha256WithRSA),
//! version 2, with thisUpdate, nextUpdate, authorityKeyIdentifier, cRLNumber and, per entry,
//! the revocation date and a reasonCode. What it lists comes from the store's CRL index
//! (`store::crl`), written in the same transaction as the certificate records, so the CRL
//! never lags a revocation and signing it never scans every certificate.
//!
//! A revocation writes, under the state lock, the index entry first, then the certificate
//! record, then the CRL. A crash in between leaves an index that lists the certificate and a
//! CRL that does not: whoever next serves the CRL sees it is behind and signs a new one (and
//! marks the record), so the revocation reaches relying parties without anyone's help. The
//! reverse (a record marked revoked that the index lacks, from an older otad or a restored
//! backup) is found by `otad fsck` and mended by [`reconcile`], which `fsck --repair` and the
//! server's start-up repair run.
//!
//! The CRL is re-signed on every revocation and, by whoever serves it, once the stored one is
//! within a quarter of its validity of nextUpdate; the number only ever grows.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use log::{error, info, warn};
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer as _;
use x509_parser::revocation_list::CertificateRevocationList;

use super::ca::{CertificateAuthority, CLOCK_SKEW_SECONDS};
use super::{cert, PkiError};
use crate::store::crl::{CrlIndex, ResignFailure, RevocationRecord};
use crate::store::{CertRecord, Store, StoreError};

/// The most certificates one CRL lists; revoking more is refused.
pub const MAX_CRL_ENTRIES: usize = 100_000;

/// The largest CRL we read back (100,000 entries with reasons are under 4 MiB).
pub const MAX_CRL_BYTES: usize = 8 * 1024 * 1024;

/// The longest serial we list, in octets (RFC 5280 section 4.1.2.2 allows 20).
pub const MAX_SERIAL_OCTETS: usize = crate::store::crl::MAX_SERIAL_OCTETS;

/// How long after a failed re-sign of the CRL (an entry of `crl.json` that cannot be read, a
/// CA that may not sign) requests are served the stored CRL without trying again, unless
/// `crl.json` or `crl.der` changes meanwhile.
pub const RESIGN_RETRY_SECONDS: i64 = 60;

/// The media type of a DER CRL (RFC 2585 section 4.2).
pub const CONTENT_TYPE: &str = "application/pkix-crl";

/// Why a certificate was revoked: the reasonCode values an admin may give
/// ([RFC 5280 section 5.3.1](https://www.rfc-editor.org/rfc/rfc5280#section-5.3.1)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationReason {
    /// 0; the CRL entry then carries no reasonCode, as RFC 5280 asks.
    Unspecified,
    /// 1: the certificate's private key is known or suspected to be compromised.
    KeyCompromise,
    /// 3: the subject's name or other information changed.
    AffiliationChanged,
    /// 4: the certificate was replaced by another.
    Superseded,
    /// 5: the certificate is no longer needed (a retired device).
    CessationOfOperation,
}

impl RevocationReason {
    /// Every reason an admin may give, in code order.
    pub const ALL: [RevocationReason; 5] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
    ];

    /// The name RFC 5280 gives it ("keyCompromise").
    pub fn name(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
        }
    }

    /// The reason for a name as [`name`](Self::name) writes it, in any letter case.
    pub fn from_name(name: &str) -> Option<RevocationReason> {
        Self::ALL
            .into_iter()
            .find(|reason| reason.name().eq_ignore_ascii_case(name))
    }

    /// The CRLReason value.
    pub fn code(self) -> u8 {
        match self {
            RevocationReason::Unspecified => 0,
            RevocationReason::KeyCompromise => 1,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
        }
    }

    fn rcgen(self) -> rcgen::RevocationReason {
        match self {
            RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can go wrong with a CRL or a revocation; each variant names one condition.
#[derive(Debug)]
#[non_exhaustive]
pub enum CrlError {
    /// The CA's key or certificate could not be used.
    Pki(PkiError),
    /// The state dir failed.
    Store(StoreError),
    /// The CA certificate has keyUsage without cRLSign, so it may not sign CRLs.
    NotACrlSigner,
    /// rcgen refused to build the CRL.
    BuildFailed(String),
    /// rcgen wrote our name differently from the CA certificate's subject.
    IssuerNameMismatch,
    /// A CRL is larger than [`MAX_CRL_BYTES`].
    TooLarge(usize),
    /// A CRL is not a DER CertificateList as RFC 5280 section 5.1 lays it out.
    Malformed(String),
    /// A CRL was not issued by our CA (another name, or a signature that does not verify).
    NotOurs,
    /// Revoking one more would list more than [`MAX_CRL_ENTRIES`].
    TooManyEntries,
    /// A serial that is not lowercase hex of 1 to [`MAX_SERIAL_OCTETS`] octets.
    SerialInvalid(String),
    /// The index names a reason that is not one of [`RevocationReason::ALL`].
    ReasonUnknown(String),
    /// No certificate with this serial is recorded.
    CertificateUnknown(String),
    /// The certificate is already revoked and listed.
    AlreadyRevoked {
        /// The serial.
        serial: String,
        /// When it was revoked (unix seconds).
        at: i64,
    },
    /// A time outside what a CRL can state.
    TimeOutOfRange(i64),
    /// The cRLNumber cannot grow any further.
    NumberExhausted,
}

impl fmt::Display for CrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pki(err) => write!(f, "crl: {err}"),
            Self::Store(err) => write!(f, "crl: {err}"),
            Self::NotACrlSigner => write!(
                f,
                "ca certificate: keyUsage lacks cRLSign, so it may not sign CRLs"
            ),
            Self::BuildFailed(why) => write!(f, "crl: build failed ({why})"),
            Self::IssuerNameMismatch => {
                write!(f, "crl: issuer name is not the ca certificate's subject")
            }
            Self::TooLarge(len) => {
                write!(f, "crl: {len} bytes is over the limit of {MAX_CRL_BYTES}")
            }
            Self::Malformed(why) => write!(f, "crl: malformed ({why})"),
            Self::NotOurs => write!(f, "crl: not signed by this ca"),
            Self::TooManyEntries => write!(
                f,
                "crl: already lists {MAX_CRL_ENTRIES} certificates, the most it may"
            ),
            Self::SerialInvalid(serial) => write!(
                f,
                "certificate serial {serial:?}: not lowercase hex of 1 to {MAX_SERIAL_OCTETS} \
                 octets"
            ),
            Self::ReasonUnknown(name) => write!(
                f,
                "revocation reason {name:?}: unknown (use one of {})",
                reason_names()
            ),
            Self::CertificateUnknown(serial) => {
                write!(f, "certificate {serial}: not recorded in this state dir")
            }
            Self::AlreadyRevoked { serial, at } => {
                write!(
                    f,
                    "certificate {serial}: already revoked at {}",
                    crate::store::rfc3339(*at)
                )
            }
            Self::TimeOutOfRange(at) => write!(f, "crl: time {at} is out of range"),
            Self::NumberExhausted => write!(f, "crl: cRLNumber cannot grow any further"),
        }
    }
}

impl std::error::Error for CrlError {}

impl From<StoreError> for CrlError {
    fn from(err: StoreError) -> CrlError {
        CrlError::Store(err)
    }
}

impl From<PkiError> for CrlError {
    fn from(err: PkiError) -> CrlError {
        CrlError::Pki(err)
    }
}

/// The reason names, comma-separated, for messages and help texts.
pub fn reason_names() -> String {
    RevocationReason::ALL
        .iter()
        .map(|reason| reason.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One certificate a CRL lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// The serial, lowercase hex without leading zero octets (as `cert::serial_hex`).
    pub serial_hex: String,
    /// When it was revoked (unix seconds).
    pub revoked_at: i64,
    /// Why.
    pub reason: RevocationReason,
}

/// What one CRL says.
#[derive(Debug, Clone, Copy)]
pub struct CrlParams<'a> {
    /// The cRLNumber (RFC 5280 section 5.2.3), 1 and up.
    pub number: u64,
    /// thisUpdate (unix seconds).
    pub this_update: i64,
    /// nextUpdate (unix seconds), after thisUpdate.
    pub next_update: i64,
    /// The certificates revoked, at most [`MAX_CRL_ENTRIES`].
    pub revoked: &'a [RevokedEntry],
}

/// Signs a CRL with the CA's key: version 2, sha256WithRSAEncryption, AKI (the CA's own
/// subjectKeyIdentifier, so clients chain it like the certificates we issue) and cRLNumber
/// ([RFC 5280 section 5.1](https://www.rfc-editor.org/rfc/rfc5280#section-5.1)).
pub fn sign(ca: &CertificateAuthority, params: &CrlParams<'_>) -> Result<Vec<u8>, CrlError> {
    if params.revoked.len() > MAX_CRL_ENTRIES {
        return Err(CrlError::TooManyEntries);
    }
    let mut revoked_certs = Vec::with_capacity(params.revoked.len());
    for entry in params.revoked {
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial_octets(&entry.serial_hex)?),
            revocation_time: datetime(entry.revoked_at)?,
            reason_code: Some(entry.reason.rcgen()),
            invalidity_date: None,
        });
    }
    let crl_params = CertificateRevocationListParams {
        this_update: datetime(params.this_update)?,
        next_update: datetime(params.next_update)?,
        crl_number: SerialNumber::from(params.number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: key_identifier_method(ca.certificate())?,
    };

    let issuer = ca.issuer();
    let crl = crl_params.signed_by(issuer).map_err(|err| match err {
        rcgen::Error::IssuerNotCrlSigner => CrlError::NotACrlSigner,
        other => CrlError::BuildFailed(other.to_string()),
    })?;
    let der = crl.der().to_vec();

    // rcgen re-encodes our name from the certificate; a client finds the CRL's CA by that
    // name, so one that differs by a byte would be a CRL for no one.
    let parsed = parse(&der)?;
    if parsed.tbs_cert_list.issuer.as_raw() != ca.subject_der() {
        return Err(CrlError::IssuerNameMismatch);
    }
    Ok(der)
}

/// What a CRL we signed says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlSummary {
    /// The cRLNumber.
    pub number: u64,
    /// thisUpdate (unix seconds).
    pub this_update: i64,
    /// nextUpdate (unix seconds).
    pub next_update: i64,
    /// Each entry: serial (lowercase hex), revocation date, reasonCode if present.
    pub revoked: Vec<(String, i64, Option<u8>)>,
}

/// Reads a CRL and checks that our CA issued it: its issuer is our subject byte for byte and
/// its signature verifies under our key. Also demands what we always write: nextUpdate and a
/// cRLNumber of at most 8 octets.
pub fn read(crl_der: &[u8], ca: &CertificateAuthority) -> Result<CrlSummary, CrlError> {
    read_issued_by(crl_der, ca.subject_der(), ca.spki_der())
}

/// [`read`] for a reader that holds only the CA certificate (`otad fsck`, which needs no
/// private key): the CRL must name its subject and verify under its public key.
pub fn read_with_certificate(
    crl_der: &[u8],
    ca_certificate: &[u8],
) -> Result<CrlSummary, CrlError> {
    let certificate = cert::parse_certificate(ca_certificate)?;
    let tbs = &certificate.tbs_certificate;
    read_issued_by(crl_der, tbs.subject.as_raw(), tbs.subject_pki.raw)
}

fn read_issued_by(
    crl_der: &[u8],
    subject_der: &[u8],
    spki_der: &[u8],
) -> Result<CrlSummary, CrlError> {
    let crl = parse(crl_der)?;

    let tbs = &crl.tbs_cert_list;
    if tbs.issuer.as_raw() != subject_der {
        return Err(CrlError::NotOurs);
    }
    if crl.signature_algorithm != tbs.signature {
        return Err(CrlError::Malformed(
            "signatureAlgorithm differs from the one signed".into(),
        ));
    }
    cert::verify_x509_signature(
        spki_der,
        &crl.signature_algorithm.algorithm,
        crl.signature_algorithm.parameters.as_ref(),
        tbs.as_ref(),
        &crl.signature_value,
    )
    .map_err(|_| CrlError::NotOurs)?;

    let next_update = tbs
        .next_update
        .ok_or_else(|| CrlError::Malformed("no nextUpdate".into()))?;
    let number = crl
        .crl_number()
        .map(|number| number.to_bytes_be())
        .filter(|octets| octets.len() <= 8)
        .map(|octets| octets.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)))
        .ok_or_else(|| CrlError::Malformed("no cRLNumber of at most 8 octets".into()))?;
    let revoked = tbs
        .revoked_certificates
        .iter()
        .map(|entry| {
            let reason = entry
                .extensions()
                .iter()
                .find_map(|ext| match ext.parsed_extension() {
                    ParsedExtension::ReasonCode(code) => Some(code.0),
                    _ => None,
                });
            (
                hex_octets(entry.raw_serial()),
                entry.revocation_date.timestamp(),
                reason,
            )
        })
        .collect();
    Ok(CrlSummary {
        number,
        this_update: tbs.this_update.timestamp(),
        next_update: next_update.timestamp(),
        revoked,
    })
}

/// Whether a CRL should be re-signed at `now`: within a quarter of `validity` of its
/// nextUpdate (so clients that cache it until then never hold an expired one), or with a
/// nextUpdate further away than `validity` allows (the setting was shortened).
pub fn is_due(summary: &CrlSummary, validity: Duration, now: i64) -> bool {
    let validity = seconds(validity);
    let quarter = validity / 4;
    now.saturating_add(quarter) >= summary.next_update
        || summary.next_update > now.saturating_add(validity)
}

/// The index entries a CRL does not list: what a revocation interrupted after its index entry
/// leaves (none at other times, since the CRL is always signed from the whole index).
pub fn missing_from<'a>(summary: &CrlSummary, index: &'a CrlIndex) -> Vec<&'a RevocationRecord> {
    let listed: HashSet<&str> = summary
        .revoked
        .iter()
        .map(|(serial, _, _)| serial.as_str())
        .collect();
    index
        .revoked
        .iter()
        .filter(|entry| !listed.contains(entry.serial.as_str()))
        .collect()
}

/// The current CRL for `GET /crl` and SCEP GetCRL: the stored one, or a newly signed one when
/// there is none yet, it is due ([`is_due`]), it is behind the index (an interrupted
/// revocation: then the records of the certificates it lacked are marked revoked too, as the
/// index says), it lists a serial twice or it does not verify under our key.
///
/// When a new one cannot be signed (an entry of `crl.json` that cannot be read, say) and a
/// stored CRL verifies, that one is served and the failure logged as an error; requests then
/// serve it without trying again for [`RESIGN_RETRY_SECONDS`], or until `crl.json` or
/// `crl.der` changes, so a bad entry costs one log line and one lock per try, not per request.
pub fn current(
    store: &Store,
    ca: &CertificateAuthority,
    validity: Duration,
    now: i64,
) -> Result<Vec<u8>, CrlError> {
    // Both files are replaced atomically, so an unlocked look is safe; a CRL that looks stale
    // is decided again under the lock, where another request or the CLI may have re-signed it.
    // A look that fails (crl.json does not parse) is decided there too.
    if let Ok(Some(der)) = stored_if_current(store, ca, validity, now) {
        return Ok(der);
    }

    if let Some(failed) = store.crl_resign_failure() {
        let retry_at = failed.at.saturating_add(RESIGN_RETRY_SECONDS);
        if failed.stamp == store.crl_stamp() && (failed.at..retry_at).contains(&now) {
            if let Some((der, _)) = last_good(store, ca) {
                return Ok(der);
            }
        }
    }

    match store.transaction(|| resign_if_stale(store, ca, validity, now)) {
        Ok(der) => {
            store.set_crl_resign_failure(None);
            Ok(der)
        }
        Err(err) => {
            let Some((der, summary)) = last_good(store, ca) else {
                return Err(err);
            };
            error!(
                "{err}; so the CRL is not re-signed: GET /crl and GetCRL serve the stored one \
                 (number {}, next update {}) meanwhile, trying again in {RESIGN_RETRY_SECONDS} \
                 s or once crl.json changes",
                summary.number,
                crate::store::rfc3339(summary.next_update)
            );
            store.set_crl_resign_failure(Some(ResignFailure {
                stamp: store.crl_stamp(),
                at: now,
            }));
            Ok(der)
        }
    }
}

/// [`current`]'s work under the state lock: the stored CRL if it is current after all, else
/// a new one, signed and stored.
fn resign_if_stale(
    store: &Store,
    ca: &CertificateAuthority,
    validity: Duration,
    now: i64,
) -> Result<Vec<u8>, CrlError> {
    if let Some(der) = stored_if_current(store, ca, validity, now)? {
        return Ok(der);
    }
    let index = store.crl_index()?;

    // Only the entries the stored CRL lacks: a few record reads, never all of the certificates.
    let lacking: Vec<RevocationRecord> = match store.crl()? {
        None => index.revoked.clone(),
        Some(der) => read(&der, ca)
            .map(|summary| {
                missing_from(&summary, &index)
                    .into_iter()
                    .cloned()
                    .collect()
            })
            .unwrap_or_default(),
    };
    for serial in complete_records(store, &lacking)? {
        warn!(
            "certificate {serial}: listed in crl.json but its record was not marked revoked \
             (an interrupted revocation); marked now"
        );
    }
    let signed = sign_next(store, ca, index, validity, now)?;
    store_signed(store, &signed)?;
    Ok(signed.der)
}

/// The stored CRL and what it says, if there is one and it verifies under our key.
fn last_good(store: &Store, ca: &CertificateAuthority) -> Option<(Vec<u8>, CrlSummary)> {
    let der = store.crl().ok()??;
    let summary = read(&der, ca).ok()?;
    Some((der, summary))
}

/// Whether a CRL lists some serial more than once (as one signed from a `crl.json` with a
/// duplicate entry did before otad read such entries once).
pub fn lists_a_serial_twice(summary: &CrlSummary) -> bool {
    let mut seen = HashSet::with_capacity(summary.revoked.len());
    !summary
        .revoked
        .iter()
        .all(|(serial, _, _)| seen.insert(serial.as_str()))
}

/// The stored CRL if it needs no re-signing: it verifies, has the index's number, is not due,
/// lists every entry of the index that reads (one that does not is [`current`]'s to report
/// when a re-sign is due) and lists each serial once.
fn stored_if_current(
    store: &Store,
    ca: &CertificateAuthority,
    validity: Duration,
    now: i64,
) -> Result<Option<Vec<u8>>, CrlError> {
    let Some(der) = store.crl()? else {
        return Ok(None);
    };
    let index = store.crl_index_read()?.index;
    match read(&der, ca) {
        Ok(summary)
            if summary.number == index.number
                && !is_due(&summary, validity, now)
                && missing_from(&summary, &index).is_empty()
                && !lists_a_serial_twice(&summary) =>
        {
            Ok(Some(der))
        }
        Ok(_) => Ok(None),
        Err(err) => {
            warn!(
                "{}: {err}; signing a new one",
                store.path(crate::store::crl::CRL_FILE).display()
            );
            Ok(None)
        }
    }
}

/// How long past its notAfter a revoked certificate stays on the CRL.
pub const EXPIRED_GRACE_SECONDS: i64 = 7 * 86_400;

/// Whether a revoked certificate with this notAfter belongs on a CRL signed at `now`: until
/// [`EXPIRED_GRACE_SECONDS`] after it expired (entries without one stay listed).
pub fn still_listed(not_after: Option<i64>, now: i64) -> bool {
    not_after.is_none_or(|not_after| not_after.saturating_add(EXPIRED_GRACE_SECONDS) >= now)
}

/// A CRL signed but not yet stored, and the index it was signed from (with its number).
struct Signed {
    der: Vec<u8>,
    index: CrlIndex,
    listed: usize,
    next_update: i64,
}

/// Signs the next CRL from `index`, in memory: nothing is written, so a CRL that cannot be
/// signed changes no file.
fn sign_next(
    store: &Store,
    ca: &CertificateAuthority,
    mut index: CrlIndex,
    validity: Duration,
    now: i64,
) -> Result<Signed, CrlError> {
    // The number grows past the stored CRL's too, should the index be older than the CRL (a
    // state restored from mismatched backups).
    let stored_number = store
        .crl()?
        .and_then(|der| read(&der, ca).ok())
        .map_or(0, |summary| summary.number);
    let number = index
        .number
        .max(stored_number)
        .checked_add(1)
        .ok_or(CrlError::NumberExhausted)?;

    // An expired certificate is refused on its dates alone, so RFC 5280 section 3.3 lets
    // the CRL forget it; a week's grace covers relying parties with slow clocks. The CRL
    // then stays as small as the revoked certificates still in their validity.
    index
        .revoked
        .retain(|record| still_listed(record.not_after, now));
    let revoked = index
        .revoked
        .iter()
        .map(|record| {
            let reason = RevocationReason::from_name(&record.reason)
                .ok_or_else(|| CrlError::ReasonUnknown(record.reason.clone()))?;
            Ok(RevokedEntry {
                serial_hex: record.serial.clone(),
                revoked_at: record.revoked_at,
                reason,
            })
        })
        .collect::<Result<Vec<_>, CrlError>>()?;
    let params = CrlParams {
        number,
        this_update: now.saturating_sub(CLOCK_SKEW_SECONDS),
        next_update: now.saturating_add(seconds(validity)),
        revoked: &revoked,
    };
    let der = sign(ca, &params)?;
    index.number = number;
    Ok(Signed {
        der,
        index,
        listed: revoked.len(),
        next_update: params.next_update,
    })
}

/// Stores a CRL [`sign_next`] signed, and its index (the caller holds the state lock).
fn store_signed(store: &Store, signed: &Signed) -> Result<(), CrlError> {
    store.save_crl(&signed.index, &signed.der)?;
    info!(
        "crl: signed number {} listing {} certificates, next update {}",
        signed.index.number,
        signed.listed,
        crate::store::rfc3339(signed.next_update)
    );
    Ok(())
}

/// Marks revoked, as the index entries say (time and reason), each of these certificates
/// whose record exists and is not marked yet (the caller holds the state lock); returns their
/// serials. A certificate without a readable record is left to `otad fsck`.
fn complete_records(store: &Store, entries: &[RevocationRecord]) -> Result<Vec<String>, CrlError> {
    let mut marked = Vec::new();
    for entry in entries {
        let Ok(Some(mut record)) = store.cert(&entry.serial) else {
            continue;
        };
        if record.revoked.is_some() {
            continue;
        }
        record.revoked = Some(entry.revoked_at);
        record.revocation_reason = Some(entry.reason.clone());
        store.update_cert(&record)?;
        marked.push(entry.serial.clone());
    }
    Ok(marked)
}

/// The reason a record names, if it is one we list, else `fallback`.
fn recorded_reason(record: &CertRecord, fallback: RevocationReason) -> RevocationReason {
    record
        .revocation_reason
        .as_deref()
        .and_then(RevocationReason::from_name)
        .unwrap_or(fallback)
}

/// What [`reconcile`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Certificates the index listed whose records now say revoked (time and reason from
    /// the index).
    pub marked: Vec<String>,
    /// Certificates whose records said revoked, now added to the index.
    pub listed: Vec<String>,
    /// The number of the CRL signed, if one was.
    pub signed: Option<u64>,
}

/// Brings the certificate records, the CRL index and the CRL into agreement after an
/// interrupted revocation, in both directions (the caller holds the state lock):
///
/// - an index entry whose record is not marked revoked: the record is marked, with the
///   entry's time and reason;
/// - a record marked revoked that the index lacks (and that is not long expired, see
///   [`still_listed`]): it is added to the index with the record's time and reason;
/// - then, if anything was added or the stored CRL is missing, does not verify, is due or is
///   behind the index, a new CRL is signed and stored.
///
/// Reads every certificate record: `otad fsck --repair` and the server's start-up repair
/// run it, never a request.
pub fn reconcile(
    store: &Store,
    ca: &CertificateAuthority,
    validity: Duration,
    now: i64,
) -> Result<Reconciled, CrlError> {
    let mut index = store.crl_index()?;
    let (certs, _unreadable) = store.certs_skipping()?;
    let mut done = Reconciled::default();

    // The index says revoked: the records follow.
    let unmarked_serials: HashSet<&str> = certs
        .iter()
        .filter(|record| record.revoked.is_none())
        .map(|record| record.serial.as_str())
        .collect();
    let unmarked: Vec<RevocationRecord> = index
        .revoked
        .iter()
        .filter(|entry| unmarked_serials.contains(entry.serial.as_str()))
        .cloned()
        .collect();
    done.marked = complete_records(store, &unmarked)?;

    // A record says revoked: the index follows.
    let indexed: HashSet<String> = index.revoked.iter().map(|e| e.serial.clone()).collect();
    for record in &certs {
        let Some(revoked_at) = record.revoked else {
            continue;
        };
        if indexed.contains(&record.serial)
            || !still_listed(Some(record.not_after), now)
            || serial_octets(&record.serial).is_err()
        {
            continue;
        }
        if index.revoked.len() >= MAX_CRL_ENTRIES {
            return Err(CrlError::TooManyEntries);
        }
        index.revoked.push(RevocationRecord {
            serial: record.serial.clone(),
            revoked_at,
            reason: recorded_reason(record, RevocationReason::Unspecified)
                .name()
                .to_string(),
            not_after: Some(record.not_after),
        });
        done.listed.push(record.serial.clone());
    }

    if !done.listed.is_empty() || stored_if_current(store, ca, validity, now)?.is_none() {
        let signed = sign_next(store, ca, index, validity, now)?;
        store_signed(store, &signed)?;
        done.signed = Some(signed.index.number);
    }
    Ok(done)
}

/// A revocation done: the certificate's record as now stored, and the CRL that lists it.
#[derive(Debug)]
pub struct Revocation {
    /// The record, with `revoked` and `revocation_reason` set.
    pub record: CertRecord,
    /// The new CRL, DER.
    pub crl: Vec<u8>,
    /// Its cRLNumber.
    pub crl_number: u64,
}

/// Revokes the certificate `serial` for `reason` and re-signs the CRL, in one transaction.
/// The new CRL is signed first, in memory; then the index entry is stored, then the record
/// (phase 3 and renewal refuse it from then on), then the CRL. A crash in between leaves an
/// index that lists the certificate ahead of the CRL, which the next reader of the CRL signs
/// again (see the module doc). A revocation interrupted either way is completed here rather
/// than refused: a record marked revoked that the index lacks is listed with its own time
/// and reason, an index entry whose record is not marked has its record marked.
pub fn revoke(
    store: &Store,
    ca: &CertificateAuthority,
    validity: Duration,
    serial: &str,
    reason: RevocationReason,
    now: i64,
) -> Result<Revocation, CrlError> {
    serial_octets(serial)?;
    store.transaction(|| {
        let mut record = store
            .cert(serial)?
            .ok_or_else(|| CrlError::CertificateUnknown(serial.to_string()))?;
        let mut index = store.crl_index()?;
        let entry = index
            .revoked
            .iter()
            .find(|entry| entry.serial == serial)
            .cloned();
        match (record.revoked, entry) {
            (Some(at), Some(_)) => {
                return Err(CrlError::AlreadyRevoked {
                    serial: serial.to_string(),
                    at,
                })
            }
            (None, Some(entry)) => {
                // Interrupted after the index entry: the record catches up with it.
                record.revoked = Some(entry.revoked_at);
                record.revocation_reason = Some(entry.reason);
            }
            (revoked, None) => {
                if index.revoked.len() >= MAX_CRL_ENTRIES {
                    return Err(CrlError::TooManyEntries);
                }
                // A record already marked (interrupted by an older otad) keeps its own time
                // and reason.
                let reason = match revoked {
                    Some(_) => recorded_reason(&record, reason),
                    None => reason,
                };
                record.revoked = Some(revoked.unwrap_or(now));
                record.revocation_reason = Some(reason.name().to_string());
                index.revoked.push(RevocationRecord {
                    serial: serial.to_string(),
                    revoked_at: revoked.unwrap_or(now),
                    reason: reason.name().to_string(),
                    not_after: Some(record.not_after),
                });
            }
        }

        let signed = sign_next(store, ca, index, validity, now)?;
        // TODO: phase 3 reads only the record, so a kill between these two writes lets a
        // certificate whose final profile was not delivered yet pass phase 3 until the next
        // CRL fetch, restart or fsck --repair marks it (renewal also reads the index);
        // reading crl.json on every phase 3 was judged too dear for so narrow a window.
        store.save_crl_index(&signed.index)?;
        store.update_cert(&record)?;
        store_signed(store, &signed)?;
        Ok(Revocation {
            record,
            crl: signed.der,
            crl_number: signed.index.number,
        })
    })
}

/// Parses a DER CRL, whole, within [`MAX_CRL_BYTES`].
fn parse(crl_der: &[u8]) -> Result<CertificateRevocationList<'_>, CrlError> {
    if crl_der.len() > MAX_CRL_BYTES {
        return Err(CrlError::TooLarge(crl_der.len()));
    }
    let (rest, crl) = CertificateRevocationList::from_der(crl_der)
        .map_err(|err| CrlError::Malformed(err.to_string()))?;
    if !rest.is_empty() {
        return Err(CrlError::Malformed("trailing bytes".into()));
    }
    Ok(crl)
}

/// The AKI for our CRLs: the CA certificate's subjectKeyIdentifier where it has one (an
/// imported CA's may be a SHA-1 one), else the SHA-256 one rcgen puts in the certificates it
/// issues under such a CA.
fn key_identifier_method(ca_certificate: &[u8]) -> Result<KeyIdMethod, CrlError> {
    let certificate = cert::parse_certificate(ca_certificate)?;
    let ski = certificate
        .extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        });
    Ok(ski.map_or(KeyIdMethod::Sha256, KeyIdMethod::PreSpecified))
}

/// The octets of a serial as `cert::serial_hex` writes it (an even number of lowercase hex
/// digits, or "0").
pub fn serial_octets(serial_hex: &str) -> Result<Vec<u8>, CrlError> {
    let invalid = || CrlError::SerialInvalid(serial_hex.chars().take(64).collect());
    if serial_hex == "0" {
        return Ok(vec![0]);
    }
    let digits = serial_hex.as_bytes();
    if digits.is_empty() || !digits.len().is_multiple_of(2) || digits.len() > 2 * MAX_SERIAL_OCTETS
    {
        return Err(invalid());
    }
    let nibble = |digit: u8| match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    };
    digits
        .chunks(2)
        .map(|pair| match pair {
            [high, low] => Some((nibble(*high)? << 4) | nibble(*low)?),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)
}

/// Lowercase hex of an INTEGER's content octets without leading zero octets ("0" for zero),
/// the form `cert::serial_hex` gives certificate serials.
fn hex_octets(octets: &[u8]) -> String {
    let significant: String = octets
        .iter()
        .skip_while(|octet| **octet == 0)
        .map(|octet| format!("{octet:02x}"))
        .collect();
    if significant.is_empty() {
        "0".to_string()
    } else {
        significant
    }
}

fn datetime(unix: i64) -> Result<OffsetDateTime, CrlError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|_| CrlError::TimeOutOfRange(unix))
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::keys::RsaPrivateKey;
    use std::process::Command;
    use std::sync::OnceLock;

    const DAY: Duration = Duration::from_secs(86_400);
    const NOW: i64 = 1_800_000_000;

    /// One CA for the tests that only sign and read (key generation is the slow part).
    fn shared_ca() -> &'static CertificateAuthority {
        static CA: OnceLock<CertificateAuthority> = OnceLock::new();
        CA.get_or_init(|| CertificateAuthority::create("CRL Test CA", "Test Org", 3650).unwrap())
    }

    fn entry(serial: &str, reason: RevocationReason) -> RevokedEntry {
        RevokedEntry {
            serial_hex: serial.into(),
            revoked_at: NOW - 60,
            reason,
        }
    }

    fn record(serial: &str) -> CertRecord {
        CertRecord {
            serial: serial.into(),
            udid: Some("00008030-001A35E12345802E".into()),
            subject: "CN=00008030-001A35E12345802E, O=Test Org".into(),
            issued_at: NOW - 3600,
            not_after: NOW + 365 * 86_400,
            revoked: None,
            revocation_reason: None,
            superseded_by: None,
            authorised_by: "ota".into(),
            pem: String::new(),
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        Store::temporary()
    }

    #[test]
    fn reason_names_and_codes() {
        assert_eq!(
            RevocationReason::from_name("keycompromise"),
            Some(RevocationReason::KeyCompromise)
        );
        assert_eq!(RevocationReason::from_name("caCompromise"), None);
        let codes: Vec<u8> = RevocationReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes, [0, 1, 3, 4, 5]);
        for reason in RevocationReason::ALL {
            assert_eq!(RevocationReason::from_name(reason.name()), Some(reason));
        }
        assert_eq!(
            reason_names(),
            "unspecified, keyCompromise, affiliationChanged, superseded, cessationOfOperation"
        );
    }

    #[test]
    fn serial_octets_take_what_serial_hex_writes() {
        assert_eq!(serial_octets("0").unwrap(), vec![0]);
        assert_eq!(serial_octets("00ff").unwrap(), vec![0, 0xff]);
        assert_eq!(serial_octets("7f01").unwrap(), vec![0x7f, 1]);
        for bad in ["", "abc", "0A", "zz", "../x", &"ab".repeat(21)] {
            assert!(
                matches!(serial_octets(bad), Err(CrlError::SerialInvalid(_))),
                "{bad:?}"
            );
        }
        assert_eq!(hex_octets(&[0, 0x8f, 1]), "8f01");
        assert_eq!(hex_octets(&[0]), "0");
    }

    #[test]
    fn signed_crl_reads_back_with_every_field() {
        let ca = shared_ca();
        let revoked = [
            entry("0a1b", RevocationReason::KeyCompromise),
            entry("8f00ee", RevocationReason::Unspecified),
            entry("01", RevocationReason::CessationOfOperation),
        ];
        let der = sign(
            ca,
            &CrlParams {
                number: 42,
                this_update: NOW,
                next_update: NOW + 7 * 86_400,
                revoked: &revoked,
            },
        )
        .unwrap();

        let summary = read(&der, ca).unwrap();
        assert_eq!(summary.number, 42);
        assert_eq!(summary.this_update, NOW);
        assert_eq!(summary.next_update, NOW + 7 * 86_400);
        assert_eq!(
            summary.revoked,
            vec![
                ("0a1b".to_string(), NOW - 60, Some(1)),
                // RFC 5280 section 5.3.1: no reasonCode rather than unspecified.
                ("8f00ee".to_string(), NOW - 60, None),
                ("01".to_string(), NOW - 60, Some(5)),
            ]
        );

        // The AKI is the CA's SKI, so chain builders find the CA.
        let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
        let aki = crl
            .extensions()
            .iter()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.clone(),
                _ => None,
            });
        let ca_cert = cert::parse_certificate(ca.certificate()).unwrap();
        let ski = ca_cert
            .extensions()
            .iter()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            });
        assert_eq!(aki.map(|id| id.0.to_vec()), ski);
        assert!(ski.is_some());
    }

    #[test]
    fn openssl_verifies_our_crl() {
        let ca = shared_ca();
        let revoked = [entry("0a1b", RevocationReason::Superseded)];
        let der = sign(
            ca,
            &CrlParams {
                number: 3,
                this_update: crate::store::now() - 60,
                next_update: crate::store::now() + 86_400,
                revoked: &revoked,
            },
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("crl.der"), &der).unwrap();
        std::fs::write(
            dir.path().join("ca.pem"),
            cert::der_to_pem(ca.certificate()),
        )
        .unwrap();
        let output = Command::new("openssl")
            .current_dir(dir.path())
            .args(["crl", "-inform", "DER", "-in", "crl.der", "-noout", "-text"])
            .args(["-CAfile", "ca.pem"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}{stderr}");
        assert!(stderr.contains("verify OK"), "{stderr}");
        assert!(stdout.contains("Serial Number: 0A1B"), "{stdout}");
        assert!(stdout.contains("Superseded"), "{stdout}");
        assert!(stdout.contains("X509v3 CRL Number:"), "{stdout}");
    }

    #[test]
    fn read_refuses_what_we_did_not_sign() {
        let ca = shared_ca();
        let params = CrlParams {
            number: 1,
            this_update: NOW,
            next_update: NOW + 86_400,
            revoked: &[],
        };
        let der = sign(ca, &params).unwrap();

        // Same name, another key.
        let impostor = CertificateAuthority::create("CRL Test CA", "Test Org", 30).unwrap();
        let forged = sign(&impostor, &params).unwrap();
        assert!(matches!(read(&forged, ca), Err(CrlError::NotOurs)));

        // Another name.
        let other = CertificateAuthority::create("Other CA", "Test Org", 30).unwrap();
        assert!(matches!(read(&der, &other), Err(CrlError::NotOurs)));

        let mut trailing = der.clone();
        trailing.push(0);
        assert!(matches!(read(&trailing, ca), Err(CrlError::Malformed(_))));
        assert!(matches!(
            read(&der[..der.len() - 1], ca),
            Err(CrlError::Malformed(_))
        ));
        let mut flipped = der.clone();
        if let Some(last) = flipped.last_mut() {
            *last ^= 1;
        }
        assert!(matches!(read(&flipped, ca), Err(CrlError::NotOurs)));
        assert!(matches!(
            read(&vec![0x30; MAX_CRL_BYTES + 1], ca),
            Err(CrlError::TooLarge(_))
        ));
    }

    /// A CA whose keyUsage has keyCertSign but not cRLSign.
    fn ca_without_crl_sign() -> CertificateAuthority {
        let key = RsaPrivateKey::generate(2048).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "No CRL CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let der = params
            .self_signed(&key.rcgen_key().unwrap())
            .unwrap()
            .der()
            .to_vec();
        CertificateAuthority::load(&der, key).unwrap()
    }

    #[test]
    fn a_ca_whose_key_usage_lacks_crl_sign_is_told_so() {
        let ca = ca_without_crl_sign();
        let err = sign(
            &ca,
            &CrlParams {
                number: 1,
                this_update: NOW,
                next_update: NOW + 60,
                revoked: &[],
            },
        );
        assert!(matches!(err, Err(CrlError::NotACrlSigner)), "{err:?}");
    }

    #[test]
    fn due_within_a_quarter_of_validity_or_when_validity_shrank() {
        let summary = CrlSummary {
            number: 1,
            this_update: NOW,
            next_update: NOW + 8 * 86_400,
            revoked: Vec::new(),
        };
        let validity = 8 * DAY;
        assert!(!is_due(&summary, validity, NOW));
        assert!(!is_due(&summary, validity, NOW + 6 * 86_400 - 1));
        assert!(is_due(&summary, validity, NOW + 6 * 86_400));
        assert!(is_due(&summary, validity, NOW + 9 * 86_400));
        assert!(is_due(&summary, DAY, NOW), "validity shortened to a day");
    }

    #[test]
    fn current_signs_once_then_serves_the_stored_one_until_due() {
        let ca = shared_ca();
        let (_dir, store) = store();

        let first = current(&store, ca, 8 * DAY, NOW).unwrap();
        assert_eq!(read(&first, ca).unwrap().number, 1);
        assert_eq!(store.crl().unwrap().as_deref(), Some(first.as_slice()));
        assert_eq!(current(&store, ca, 8 * DAY, NOW + 86_400).unwrap(), first);

        let renewed = current(&store, ca, 8 * DAY, NOW + 6 * 86_400).unwrap();
        let summary = read(&renewed, ca).unwrap();
        assert_eq!(summary.number, 2);
        assert_eq!(summary.next_update, NOW + 14 * 86_400);
        assert_eq!(store.crl_index().unwrap().number, 2);

        // A stored CRL that does not verify is replaced, with a higher number.
        store
            .save_crl(&store.crl_index().unwrap(), b"\x30\x00")
            .unwrap();
        let replaced = current(&store, ca, 8 * DAY, NOW + 6 * 86_400).unwrap();
        assert_eq!(read(&replaced, ca).unwrap().number, 3);
    }

    #[test]
    fn revoke_marks_the_record_and_lists_it_with_its_reason() {
        let ca = shared_ca();
        let (_dir, store) = store();
        store.create_cert(&record("0a1b")).unwrap();
        store.create_cert(&record("0c")).unwrap();

        let err = revoke(&store, ca, DAY, "0d", RevocationReason::KeyCompromise, NOW);
        assert!(matches!(err, Err(CrlError::CertificateUnknown(_))));
        let err = revoke(
            &store,
            ca,
            DAY,
            "../x",
            RevocationReason::KeyCompromise,
            NOW,
        );
        assert!(matches!(err, Err(CrlError::SerialInvalid(_))));
        assert_eq!(store.crl().unwrap(), None, "refusals sign nothing");

        let done = revoke(
            &store,
            ca,
            DAY,
            "0a1b",
            RevocationReason::KeyCompromise,
            NOW,
        )
        .unwrap();
        assert_eq!(done.crl_number, 1);
        assert_eq!(done.record.revoked, Some(NOW));
        let stored = store.cert("0a1b").unwrap().unwrap();
        assert_eq!(stored.revoked, Some(NOW));
        assert_eq!(stored.revocation_reason.as_deref(), Some("keyCompromise"));
        assert_eq!(
            read(&done.crl, ca).unwrap().revoked,
            vec![("0a1b".to_string(), NOW, Some(1))]
        );

        let again = revoke(
            &store,
            ca,
            DAY,
            "0a1b",
            RevocationReason::Superseded,
            NOW + 5,
        );
        assert!(matches!(
            again,
            Err(CrlError::AlreadyRevoked { at: NOW, .. })
        ));

        let second = revoke(
            &store,
            ca,
            DAY,
            "0c",
            RevocationReason::Unspecified,
            NOW + 9,
        )
        .unwrap();
        assert_eq!(second.crl_number, 2);
        assert_eq!(
            read(&second.crl, ca).unwrap().revoked,
            vec![
                ("0a1b".to_string(), NOW, Some(1)),
                ("0c".to_string(), NOW + 9, None)
            ]
        );
    }

    #[test]
    fn a_revoked_certificate_leaves_the_crl_a_week_after_it_expired() {
        let ca = shared_ca();
        let (_dir, store) = store();
        let mut short = record("0f");
        short.not_after = NOW + 86_400;
        store.create_cert(&short).unwrap();
        store.create_cert(&record("10")).unwrap();
        let reason = RevocationReason::KeyCompromise;
        revoke(&store, ca, DAY, "0f", reason, NOW).unwrap();
        let both = revoke(&store, ca, DAY, "10", reason, NOW + 1).unwrap();
        assert_eq!(read(&both.crl, ca).unwrap().revoked.len(), 2);

        // Expired, within the grace: still listed.
        let later = current(&store, ca, DAY, NOW + 7 * 86_400).unwrap();
        assert_eq!(read(&later, ca).unwrap().revoked.len(), 2);
        // Past it: gone from the CRL and the index; the record stays revoked.
        let much_later = current(&store, ca, DAY, NOW + 9 * 86_400).unwrap();
        let listed = read(&much_later, ca).unwrap().revoked;
        assert_eq!(listed, vec![("10".to_string(), NOW + 1, Some(1))]);
        assert!(!store.crl_index().unwrap().lists("0f"));
        assert!(store.cert("0f").unwrap().unwrap().revoked.is_some());
    }

    #[test]
    fn an_interrupted_revocation_is_listed_when_revoked_again() {
        let ca = shared_ca();
        let (_dir, store) = store();
        // The record was written, the crash came before the index.
        let mut interrupted = record("0e");
        interrupted.revoked = Some(NOW - 100);
        interrupted.revocation_reason = Some("affiliationChanged".into());
        store.create_cert(&interrupted).unwrap();

        let done = revoke(&store, ca, DAY, "0e", RevocationReason::KeyCompromise, NOW).unwrap();
        assert_eq!(
            read(&done.crl, ca).unwrap().revoked,
            vec![("0e".to_string(), NOW - 100, Some(3))],
            "the first revocation's time and reason stand"
        );
        assert_eq!(store.cert("0e").unwrap().unwrap().revoked, Some(NOW - 100));
    }

    #[test]
    fn the_index_entry_is_written_before_the_record_and_a_crl_behind_it_is_re_signed() {
        let ca = shared_ca();
        let (_dir, store) = store();
        store.create_cert(&record("0a1b")).unwrap();
        store.create_cert(&record("0c")).unwrap();
        revoke(
            &store,
            ca,
            DAY,
            "0a1b",
            RevocationReason::KeyCompromise,
            NOW,
        )
        .unwrap();

        // What a revocation of 0c killed after its index entry leaves: crl.json lists it,
        // its record and crl.der do not.
        let mut index = store.crl_index().unwrap();
        index.revoked.push(RevocationRecord {
            serial: "0c".into(),
            revoked_at: NOW + 10,
            reason: "superseded".into(),
            not_after: Some(NOW + 365 * 86_400),
        });
        store.save_crl_index(&index).unwrap();
        assert_eq!(
            index.number, 1,
            "the stored CRL's number: only its list is behind"
        );

        // Whoever serves the CRL next signs one that lists it, and marks the record.
        let served = current(&store, ca, DAY, NOW + 20).unwrap();
        let summary = read(&served, ca).unwrap();
        assert_eq!(summary.number, 2);
        assert_eq!(
            summary.revoked,
            vec![
                ("0a1b".to_string(), NOW, Some(1)),
                ("0c".to_string(), NOW + 10, Some(4))
            ]
        );
        let marked = store.cert("0c").unwrap().unwrap();
        assert_eq!(marked.revoked, Some(NOW + 10));
        assert_eq!(marked.revocation_reason.as_deref(), Some("superseded"));
        assert_eq!(current(&store, ca, DAY, NOW + 30).unwrap(), served);
    }

    #[test]
    fn revoking_again_completes_a_revocation_interrupted_after_its_index_entry() {
        let ca = shared_ca();
        let (_dir, store) = store();
        store.create_cert(&record("0d")).unwrap();
        let index = CrlIndex {
            number: 0,
            revoked: vec![RevocationRecord {
                serial: "0d".into(),
                revoked_at: NOW - 50,
                reason: "keyCompromise".into(),
                not_after: Some(NOW + 86_400),
            }],
        };
        store.save_crl_index(&index).unwrap();

        let done = revoke(&store, ca, DAY, "0d", RevocationReason::Unspecified, NOW).unwrap();
        assert_eq!(
            done.record.revoked,
            Some(NOW - 50),
            "the index's time stands"
        );
        assert_eq!(
            done.record.revocation_reason.as_deref(),
            Some("keyCompromise")
        );
        assert_eq!(store.cert("0d").unwrap().unwrap(), done.record);
        assert_eq!(
            read(&done.crl, ca).unwrap().revoked,
            vec![("0d".to_string(), NOW - 50, Some(1))]
        );
        assert!(matches!(
            revoke(&store, ca, DAY, "0d", RevocationReason::Unspecified, NOW),
            Err(CrlError::AlreadyRevoked { .. })
        ));
    }

    #[test]
    fn a_crl_that_cannot_be_signed_changes_no_file() {
        let ca = ca_without_crl_sign();
        let (_dir, store) = store();
        store.create_cert(&record("0e")).unwrap();

        let err = revoke(&store, &ca, DAY, "0e", RevocationReason::KeyCompromise, NOW);
        assert!(matches!(err, Err(CrlError::NotACrlSigner)), "{err:?}");
        assert_eq!(store.cert("0e").unwrap().unwrap().revoked, None);
        assert!(!store.path(crate::store::crl::CRL_INDEX_FILE).exists());
        assert_eq!(store.crl().unwrap(), None);
    }

    #[test]
    fn reconcile_mends_both_directions_and_then_has_nothing_to_do() {
        let ca = shared_ca();
        let (_dir, store) = store();
        for serial in ["01", "02", "03", "04"] {
            store.create_cert(&record(serial)).unwrap();
        }
        revoke(&store, ca, DAY, "01", RevocationReason::KeyCompromise, NOW).unwrap();

        // 02: marked revoked, never listed (the order of older otad, killed in between).
        let mut unlisted = record("02");
        unlisted.revoked = Some(NOW + 1);
        unlisted.revocation_reason = Some("cessationOfOperation".into());
        store.update_cert(&unlisted).unwrap();
        // 03: listed, never marked.
        let mut index = store.crl_index().unwrap();
        index.revoked.push(RevocationRecord {
            serial: "03".into(),
            revoked_at: NOW + 2,
            reason: "affiliationChanged".into(),
            not_after: Some(NOW + 365 * 86_400),
        });
        store.save_crl_index(&index).unwrap();
        // 04: revoked long ago and long expired: rightly off the CRL, and left off.
        let mut expired = record("04");
        expired.not_after = NOW - EXPIRED_GRACE_SECONDS - 1;
        expired.revoked = Some(NOW - 400 * 86_400);
        store.update_cert(&expired).unwrap();

        let done = reconcile(&store, ca, DAY, NOW + 5).unwrap();
        assert_eq!(done.marked, ["03"]);
        assert_eq!(done.listed, ["02"]);
        assert_eq!(done.signed, Some(2));
        let crl = read(&store.crl().unwrap().unwrap(), ca).unwrap();
        assert_eq!(
            crl.revoked,
            vec![
                ("01".to_string(), NOW, Some(1)),
                ("03".to_string(), NOW + 2, Some(3)),
                ("02".to_string(), NOW + 1, Some(5)),
            ]
        );
        let marked = store.cert("03").unwrap().unwrap();
        assert_eq!(marked.revoked, Some(NOW + 2));
        assert_eq!(
            marked.revocation_reason.as_deref(),
            Some("affiliationChanged")
        );
        assert!(!store.crl_index().unwrap().lists("04"));

        let again = reconcile(&store, ca, DAY, NOW + 6).unwrap();
        assert_eq!(again, Reconciled::default(), "nothing left to mend");
    }

    /// Writes `crl.json` by hand, as an admin or another tool might: these entries (serial,
    /// revoked_at, reason) and this number.
    fn write_index_by_hand(store: &Store, number: u64, entries: &[(&str, i64, &str)]) {
        let revoked: Vec<serde_json::Value> = entries
            .iter()
            .map(|(serial, at, reason)| {
                serde_json::json!({ "serial": serial, "revoked_at": at, "reason": reason })
            })
            .collect();
        let json = serde_json::json!({ "number": number, "revoked": revoked });
        std::fs::write(
            store.path(crate::store::crl::CRL_INDEX_FILE),
            serde_json::to_vec_pretty(&json).unwrap(),
        )
        .unwrap();
    }

    const LONG_SERIAL: &str = "7af283648cc5672255b3da3c3b2d7d01";

    #[test]
    fn a_serial_with_leading_zeros_is_signed_once_and_its_record_marked() {
        let ca = shared_ca();
        let (_dir, store) = store();
        store.create_cert(&record(LONG_SERIAL)).unwrap();
        let zeros = format!("00{LONG_SERIAL}");
        write_index_by_hand(&store, 0, &[(&zeros, NOW - 10, "keyCompromise")]);

        let first = current(&store, ca, DAY, NOW).unwrap();
        let summary = read(&first, ca).unwrap();
        assert_eq!(summary.number, 1);
        assert_eq!(
            summary.revoked,
            vec![(LONG_SERIAL.to_string(), NOW - 10, Some(1))]
        );
        assert_eq!(
            store.cert(LONG_SERIAL).unwrap().unwrap().revoked,
            Some(NOW - 10),
            "the record follows the index"
        );
        assert!(store.crl_index().unwrap().lists(LONG_SERIAL));

        // Put the hand-written spelling back: the stored CRL is current for it all the same.
        let stored = store.crl_index().unwrap().number;
        write_index_by_hand(&store, stored, &[(&zeros, NOW - 10, "keyCompromise")]);
        for second in 1..=300 {
            assert_eq!(current(&store, ca, DAY, NOW + second).unwrap(), first);
        }
        assert_eq!(read(&store.crl().unwrap().unwrap(), ca).unwrap().number, 1);
        assert_eq!(
            reconcile(&store, ca, DAY, NOW + 301).unwrap(),
            Reconciled::default()
        );
    }

    #[test]
    fn reconcile_marks_the_record_of_a_serial_written_in_upper_case() {
        let ca = shared_ca();
        let (_dir, store) = store();
        store.create_cert(&record("338eb89a97bdfd3e")).unwrap();
        write_index_by_hand(&store, 0, &[("338EB89A97BDFD3E", NOW - 5, "superseded")]);

        let done = reconcile(&store, ca, DAY, NOW).unwrap();
        assert_eq!(done.marked, ["338eb89a97bdfd3e"]);
        assert_eq!(done.signed, Some(1));
        let crl = read(&store.crl().unwrap().unwrap(), ca).unwrap();
        assert_eq!(
            crl.revoked,
            vec![("338eb89a97bdfd3e".to_string(), NOW - 5, Some(4))]
        );
        // Served as stored, not refused (it was: "not lowercase hex of 1 to 20 octets").
        write_index_by_hand(&store, 1, &[("338EB89A97BDFD3E", NOW - 5, "superseded")]);
        let served = current(&store, ca, DAY, NOW + 1).unwrap();
        assert_eq!(Some(served), store.crl().unwrap());
    }

    #[test]
    fn a_serial_listed_twice_is_signed_once_with_its_first_revocation() {
        let ca = shared_ca();
        let (_dir, store) = store();
        write_index_by_hand(
            &store,
            0,
            &[
                ("0a1b", NOW - 10, "keyCompromise"),
                ("0c", NOW - 9, "unspecified"),
                ("0A1B", NOW - 20, "superseded"),
            ],
        );
        let signed = current(&store, ca, DAY, NOW).unwrap();
        assert_eq!(
            read(&signed, ca).unwrap().revoked,
            vec![
                ("0a1b".to_string(), NOW - 20, Some(4)),
                ("0c".to_string(), NOW - 9, None)
            ]
        );

        // A CRL an older otad signed from such an index, listing it twice, is replaced once.
        let twice = [
            entry("0a1b", RevocationReason::KeyCompromise),
            entry("0a1b", RevocationReason::Superseded),
        ];
        let params = CrlParams {
            number: 5,
            this_update: NOW,
            next_update: NOW + 86_400,
            revoked: &twice,
        };
        let mut index = store.crl_index().unwrap();
        index.number = 5;
        store.save_crl(&index, &sign(ca, &params).unwrap()).unwrap();
        let replaced = current(&store, ca, DAY, NOW + 1).unwrap();
        let summary = read(&replaced, ca).unwrap();
        assert_eq!(summary.number, 6);
        assert!(!lists_a_serial_twice(&summary));
        assert_eq!(current(&store, ca, DAY, NOW + 2).unwrap(), replaced);
    }

    #[test]
    fn an_unreadable_entry_keeps_the_last_crl_served_and_is_retried_a_minute_later() {
        let ca = shared_ca();
        let (_dir, store) = store();
        store.create_cert(&record("0a1b")).unwrap();
        let good = current(&store, ca, DAY, NOW).unwrap();
        assert_eq!(read(&good, ca).unwrap().number, 1);

        // A new entry the stored CRL lacks, and one that cannot be read.
        let entries = [
            ("0a1b", NOW, "keyCompromise"),
            ("0a1g", NOW, "keyCompromise"),
        ];
        write_index_by_hand(&store, 1, &entries);
        let hand_written = std::fs::read(store.path(crate::store::crl::CRL_INDEX_FILE)).unwrap();
        assert_eq!(current(&store, ca, DAY, NOW + 1).unwrap(), good);
        let failed = store.crl_resign_failure().unwrap();
        assert_eq!(failed.at, NOW + 1);

        // Within the minute: no new try (its time would move).
        assert_eq!(current(&store, ca, DAY, NOW + 30).unwrap(), good);
        assert_eq!(store.crl_resign_failure(), Some(failed));
        // After it: one.
        assert_eq!(current(&store, ca, DAY, NOW + 61).unwrap(), good);
        assert_eq!(store.crl_resign_failure().unwrap().at, NOW + 61);
        assert_eq!(
            std::fs::read(store.path(crate::store::crl::CRL_INDEX_FILE)).unwrap(),
            hand_written,
            "crl.json is left as written"
        );
        assert!(matches!(
            revoke(
                &store,
                ca,
                DAY,
                "0a1b",
                RevocationReason::KeyCompromise,
                NOW
            ),
            Err(CrlError::Store(StoreError::Corrupt { .. }))
        ));

        // Mended: the next request signs at once, within the minute.
        write_index_by_hand(&store, 1, &entries[..1]);
        let signed = current(&store, ca, DAY, NOW + 62).unwrap();
        let summary = read(&signed, ca).unwrap();
        assert_eq!(summary.number, 2);
        assert_eq!(summary.revoked, vec![("0a1b".to_string(), NOW, Some(1))]);
        assert_eq!(store.crl_resign_failure(), None);

        // With no CRL to fall back on, the failure is the caller's.
        let (_other_dir, empty) = self::store();
        write_index_by_hand(&empty, 0, &entries);
        assert!(matches!(
            current(&empty, ca, DAY, NOW),
            Err(CrlError::Store(StoreError::Corrupt { .. }))
        ));
    }

    #[test]
    fn an_unknown_reason_keeps_the_last_crl_served() {
        let ca = shared_ca();
        let (_dir, store) = store();
        let good = current(&store, ca, DAY, NOW).unwrap();
        write_index_by_hand(&store, 1, &[("0a1b", NOW, "lostIt")]);
        assert_eq!(current(&store, ca, DAY, NOW + 1).unwrap(), good);
        assert!(store.crl_resign_failure().is_some());
    }
}
