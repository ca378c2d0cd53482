//! The admin commands behind `otad init`, `otad serve` and `otad verify`.
//!
//! `main.rs` parses arguments; these functions do the work and return what to print, so the
//! integration tests can run them without a process.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{error, info, warn};
use serde_json::json;

use crate::config::{self, Config};
use crate::context::{files, Context};
use crate::ota::{attributes, signer_kind, SignerKind};
use crate::pki::apple::TrustAnchor;
use crate::pki::ca::{
    random_serial, CertificateAuthority, IssueRequest, KeyUsageProfile, SubjectAttribute,
};
use crate::pki::keyfile::{self, KeyPassword};
use crate::pki::keys::RsaPrivateKey;
use crate::pki::{cert, crl, PkiError};
use crate::store::{self, Store};
use crate::systemd;

/// How long the CA, RA and profile signer made by `otad init` are valid.
pub const IDENTITY_VALIDITY_DAYS: u32 = 10 * 365;

/// What `otad init` takes.
pub struct InitOptions {
    /// The state dir to create.
    pub state: PathBuf,
    /// The base URL devices will reach otad at.
    pub url: String,
    /// The organization in profiles and certificate subjects.
    pub organization: String,
    /// An existing CA to take over instead of creating one.
    pub import: Option<CaImport>,
}

/// An existing CA for `otad init --ca-cert --ca-key`: a PEM certificate and its key (PKCS#1,
/// PKCS#8, or PKCS#8 encrypted with PBES2).
pub struct CaImport {
    /// The CA certificate, PEM.
    pub certificate: PathBuf,
    /// The CA key, PEM.
    pub key: PathBuf,
    /// Where the password of an encrypted key comes from.
    pub password: KeyPassword,
}

/// What `otad init` made: the message for stdout, and warnings for stderr.
#[derive(Debug)]
pub struct Initialized {
    /// What was created and what to do next.
    pub message: String,
    /// Things done that an admin should know about (a CA key readable by others).
    pub warnings: Vec<String>,
}

/// `otad init`: a new state dir with config, CA (new, or imported), RA and profile signer.
/// Refuses to touch an existing state. An imported CA is checked completely (key, CA
/// constraints, validity, able to sign certificates and CRLs) before anything is written.
pub fn init(options: &InitOptions) -> Result<Initialized, String> {
    let state = &options.state;
    check_state_is_new(state)?;
    let text = config::template(&options.url, &options.organization);
    Config::parse(&text, &state.join("otad.toml"))
        .map_err(|err| format!("--url or --organization: {err}"))?;

    let org = &options.organization;
    let mut warnings = Vec::new();
    let ca = match &options.import {
        Some(import) => {
            let ca = import_ca(import)?;
            warnings.extend(key_readable_by_others(&import.key, state));
            ca
        }
        None => CertificateAuthority::create(
            &format!("{org} Enrollment CA"),
            org,
            IDENTITY_VALIDITY_DAYS,
        )
        .map_err(|err| format!("creating the CA: {err}"))?,
    };
    // An imported CA may expire sooner than ten years from now; what it issues must not
    // outlive it.
    let validity_days = identity_validity_days(&ca)?;
    let ra = issue_identity(
        &ca,
        &format!("{org} SCEP RA"),
        org,
        KeyUsageProfile::SigningAndEncipherment,
        validity_days,
    )?;
    let signer = issue_identity(
        &ca,
        &format!("{org} Profile Signer"),
        org,
        KeyUsageProfile::Signing,
        validity_days,
    )?;

    // Only now, with everything made and checked, does the state dir appear.
    let store = Store::create(state).map_err(|err| err.to_string())?;
    let write = |file: &str, bytes: &[u8], mode: u32| {
        store
            .write_file(file, bytes, mode)
            .map_err(|err| err.to_string())
    };
    write(files::CA_KEY, ca.key().to_pkcs8_pem().as_bytes(), 0o600)?;
    write(
        files::CA_CERT,
        cert::der_to_pem(ca.certificate()).as_bytes(),
        0o644,
    )?;
    write(files::RA_KEY, ra.1.to_pkcs8_pem().as_bytes(), 0o600)?;
    write(files::RA_CERT, cert::der_to_pem(&ra.0).as_bytes(), 0o644)?;
    write(files::SIGNER_KEY, signer.1.to_pkcs8_pem().as_bytes(), 0o600)?;
    write(
        files::SIGNER_CERT,
        cert::der_to_pem(&signer.0).as_bytes(),
        0o644,
    )?;
    // The config goes last: its presence marks a complete state dir.
    write("otad.toml", text.as_bytes(), 0o640)?;

    let what = match &options.import {
        Some(_) => {
            let subject = cert::summarize(ca.certificate())
                .map(|summary| summary.subject)
                .unwrap_or_default();
            format!(
                "imported CA {subject:?}, new RA and profile signer; the CA key is now stored \
                 unencrypted in {} (mode 0600)",
                state.join(files::CA_KEY).display()
            )
        }
        None => "CA, RA and profile signer".to_string(),
    };
    let message = format!(
        "created {} ({what})\nconfig: {}\nnext: edit [mdm] in the config, then run: otad \
         serve --config {}",
        state.display(),
        state.join("otad.toml").display(),
        state.join("otad.toml").display()
    );
    Ok(Initialized { message, warnings })
}

/// A warning when the CA key that was imported can be read by its group or by others:
/// whoever reads it can issue device identities the MDM server trusts.
fn key_readable_by_others(key: &Path, state: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;

    let mode = std::fs::symlink_metadata(key).ok()?.permissions().mode();
    if mode & 0o044 == 0 {
        return None;
    }
    Some(format!(
        "--ca-key {}: readable by {} (mode {:04o}): anyone who can read it can issue device \
         identities your MDM server trusts; otad keeps its own copy in {} (mode 0600), so \
         delete this one, or chmod 600 it and keep it offline",
        key.display(),
        match (mode & 0o040 != 0, mode & 0o004 != 0) {
            (true, true) => "its group and others",
            (true, false) => "its group",
            _ => "others",
        },
        mode & 0o7777,
        state.join(files::CA_KEY).display()
    ))
}

/// Loads and checks a CA to take over: one certificate, its key, a CA, valid now, and able to
/// sign what otad signs with it (certificates and CRLs: both are tried here, so that a name
/// rcgen cannot re-encode exactly or a keyUsage without cRLSign fails init, not the server).
fn import_ca(import: &CaImport) -> Result<CertificateAuthority, String> {
    let cert_flag = format!("--ca-cert {}", import.certificate.display());
    let key_flag = format!("--ca-key {}", import.key.display());

    let cert_text = keyfile::read_text_file(&import.certificate)
        .map_err(|why| format!("{cert_flag}: {why}"))?;
    let certificates =
        cert::pem_to_der_all(&cert_text).map_err(|err| format!("{cert_flag}: {err}"))?;
    let [certificate] = certificates.as_slice() else {
        return Err(format!(
            "{cert_flag}: holds {} certificates; give the CA certificate alone",
            certificates.len()
        ));
    };
    let key = keyfile::read_key_file(&import.key, &import.password)
        .map_err(|why| format!("{key_flag}: {why}"))?;

    let ca = CertificateAuthority::load(certificate, key).map_err(|err| match err {
        PkiError::CaKeyMismatch => {
            format!("{key_flag}: not the key of the certificate in {cert_flag}")
        }
        PkiError::NotACaCertificate => format!(
            "{cert_flag}: not a CA certificate (basicConstraints must say cA, and keyUsage, if \
             present, keyCertSign)"
        ),
        PkiError::UnsupportedPublicKey(_) => format!(
            "{cert_flag}: holds {}; otad's CA must be RSA of 2048 to 8192 bits (give an RSA \
             CA's certificate and key, or leave out --ca-cert and --ca-key to let otad init \
             create one)",
            cert::spki_der(certificate)
                .map(|spki| keyfile::describe_public_key(&spki))
                .unwrap_or_else(|err| format!("a public key otad cannot read ({err})"))
        ),
        other => format!("{cert_flag}: {other}"),
    })?;
    cert::check_validity(ca.certificate(), store::now())
        .map_err(|err| format!("{cert_flag}: {err}"))?;
    let now = store::now();
    crl::sign(
        &ca,
        &crl::CrlParams {
            number: 1,
            this_update: now,
            next_update: now + 60,
            revoked: &[],
        },
    )
    .map_err(|err| match err {
        crl::CrlError::NotACrlSigner => format!(
            "{cert_flag}: its keyUsage lacks cRLSign, so otad cannot sign CRLs with it; \
             re-issue the CA certificate (same key) with keyUsage cRLSign, or leave out \
             --ca-cert and --ca-key to let otad init create a new CA"
        ),
        other => format!("{cert_flag}: cannot sign CRLs with it: {other}"),
    })?;
    Ok(ca)
}

/// `otad init` writes only into a folder that does not exist yet or is empty, so it can never
/// overwrite a CA.
fn check_state_is_new(state: &Path) -> Result<(), String> {
    if state.join("otad.toml").exists() {
        return Err(format!(
            "{}: already holds an otad state; refusing to overwrite it (choose another --state, \
             or move the old one away first)",
            state.display()
        ));
    }
    if state.join("ca").exists() {
        return Err(format!(
            "{}: holds a partial otad state (ca/ but no otad.toml: an interrupted init?); \
             move it away and run init again",
            state.display()
        ));
    }
    match std::fs::read_dir(state).map(|mut entries| entries.next().is_some()) {
        Ok(true) => Err(format!(
            "{}: not empty; otad init needs a new or empty folder",
            state.display()
        )),
        Ok(false) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(format!(
            "{}: cannot be used as a state dir: {err}",
            state.display()
        )),
    }
}

/// Days the RA and profile signer are valid: [`IDENTITY_VALIDITY_DAYS`], or fewer, up to the
/// CA's own notAfter.
fn identity_validity_days(ca: &CertificateAuthority) -> Result<u32, String> {
    let not_after = cert::summarize(ca.certificate())
        .map_err(|err| format!("ca certificate: {err}"))?
        .not_after;
    // A minute's margin: the certificates are issued a moment after this is computed.
    let days_left = not_after.saturating_sub(store::now()).saturating_sub(60) / 86_400;
    let days = u32::try_from(days_left)
        .unwrap_or(u32::MAX)
        .min(IDENTITY_VALIDITY_DAYS);
    if days == 0 {
        return Err("ca certificate: expires within a day; nothing can be issued under it".into());
    }
    Ok(days)
}

fn issue_identity(
    ca: &CertificateAuthority,
    common_name: &str,
    organization: &str,
    usage: KeyUsageProfile,
    validity_days: u32,
) -> Result<(Vec<u8>, RsaPrivateKey), String> {
    let key = RsaPrivateKey::generate(2048).map_err(|err| format!("{common_name}: key: {err}"))?;
    let subject = [
        (SubjectAttribute::CommonName, common_name.to_string()),
        (SubjectAttribute::Organization, organization.to_string()),
    ];
    let request = IssueRequest {
        subject: &subject,
        public_key_spki_der: &key.public_key_spki_der(),
        serial: random_serial(),
        validity_days,
        usage,
    };
    let certificate = ca
        .issue(&request)
        .map_err(|err| format!("{common_name}: {err}"))?;
    Ok((certificate, key))
}

/// `otad serve`: loads everything, warns about what an admin should know, and serves.
pub fn serve(config_path: &Path, listen: Option<&str>) -> Result<(), String> {
    // Before any thread exists, so that every thread inherits the mask and the variables
    // systemd set are read and cleared by one thread alone.
    systemd::block_signals().map_err(|err| format!("blocking signals: {err}"))?;
    let passed = systemd::passed_listener().map_err(|err| err.to_string())?;

    let (config, derived) = Config::load(config_path).map_err(|err| err.to_string())?;
    crate::logger::init(derived.log_level, derived.log_format);
    let Prepared { ctx, tls, webhook } = prepare(config, derived)?;

    for warning in config_warnings(&ctx) {
        warn!("{warning}");
    }

    let (listener, listen) = match passed {
        Some(listener) => {
            let at = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into());
            (listener, format!("{at} (passed by systemd)"))
        }
        None => {
            let listen = listen.unwrap_or(&ctx.config.http.listen).to_string();
            let address: std::net::SocketAddr = listen.parse().map_err(|err| {
                format!("--listen {listen:?}: not an address:port like 127.0.0.1:8080 ({err})")
            })?;
            let listener = std::net::TcpListener::bind(address)
                .map_err(|err| format!("{listen}: cannot listen: {err}"))?;
            (listener, listen)
        }
    };
    // A server killed mid-write leaves temp files and maybe a stale index entry; the safe
    // repairs of `otad fsck --repair` run before serving, and what they cannot fix is said.
    let signer = crate::fsck::CrlSigner {
        ca: &ctx.ca,
        validity: ctx.derived.crl_validity,
    };
    match crate::fsck::repair_state(&ctx.store, Some(&signer)) {
        Ok((report, repaired)) => {
            for line in &repaired {
                info!("start-up repair: {line}");
            }
            if report.problems() > 0 {
                warn!(
                    "state: {} problem(s) left; run `otad fsck --config {}` for the list",
                    report.problems(),
                    config_path.display()
                );
            }
        }
        Err(err) => warn!("state: the start-up check failed: {err}"),
    }
    // Events a crash kept only in the state log go to events.jsonl before anything else.
    match ctx.events.recover_spool(&ctx.store) {
        Ok(0) => {}
        Ok(n) => info!("start-up repair: events: {n} event(s) kept in the state log written"),
        Err(err) => warn!("events: writing the events kept in the state log: {err}"),
    }
    raise_open_file_limit(ctx.config.http.max_connections);
    let tls = tls.map(Arc::new);
    // The CRL exists before anyone asks (an MDM server or a relying party may fetch it
    // first), and a CRL past its nextUpdate is re-signed now rather than on first request.
    if let Err(err) =
        crate::pki::crl::current(&ctx.store, &ctx.ca, ctx.derived.crl_validity, store::now())
    {
        warn!("CRL: cannot sign it at start-up: {err}; GET /crl will try again");
    }
    let ctx = Arc::new(ctx);
    let shutdown = Arc::new(crate::http::guard::Shutdown::default());
    start_sweeper(Arc::clone(&ctx));
    start_signal_handler(Arc::clone(&shutdown), tls.clone());
    if let Some(webhook) = webhook {
        crate::events::webhook::start(Arc::clone(&ctx.events), webhook)?;
    }
    info!(
        "otad {} serving {} on {listen}{}",
        env!("CARGO_PKG_VERSION"),
        ctx.config.server.url,
        if tls.is_some() { " (TLS)" } else { "" }
    );
    if let Err(err) = systemd::notify("READY=1") {
        warn!("NOTIFY_SOCKET: cannot report readiness: {err}");
    }
    let (events, state) = (Arc::clone(&ctx.events), Arc::clone(&ctx));
    crate::http::serve(ctx, listener, tls, shutdown);
    // A window's count of refusals not logged one by one would be lost with the process.
    events.record_suppressed_now();
    if let Err(err) = events.flush_spool(&state.store) {
        warn!("events: syncing what requests wrote: {err}");
    }
    info!("stopped");
    Ok(())
}

/// What `otad serve` loads before it listens, every file a config names checked: what
/// [`prepare`] returns.
pub struct Prepared {
    /// The state, keys, anchors, profile template and hooks ([`Context::from_config`]).
    pub ctx: Context,
    /// The listener's certificate and key, when `[tls]` is set.
    pub tls: Option<crate::tls::Tls>,
    /// The events webhook (its URL, HMAC key file and CA file), when `events.webhook` is set.
    pub webhook: Option<crate::events::webhook::Webhook>,
}

/// Every check `otad serve` makes at start-up before it listens, and that `otad
/// check-config` makes too, by calling this same function: the state dir and its keys, the
/// extra device CAs, the profile template, the hooks, the TLS pair, the webhook's URL,
/// secret file and CA file. What is left to `serve` alone needs the running server: binding
/// the port, the start-up repairs of the state, the open-files limit, signing the CRL.
pub fn prepare(config: Config, derived: config::Derived) -> Result<Prepared, String> {
    let tls = match &derived.tls {
        Some((cert, key)) => Some(crate::tls::Tls::load(cert, key).map_err(|err| err.to_string())?),
        None => None,
    };
    let webhook = crate::events::webhook::Webhook::prepare(&derived.events)?;
    let ctx = Context::from_config(config, derived)?;
    Ok(Prepared { ctx, tls, webhook })
}

/// What an admin should know about a config that loads: settings that are allowed but weaken
/// enrollment or are left unfinished. `otad serve` logs each at start-up and `otad
/// check-config` prints each, so both say the same.
pub fn config_warnings(ctx: &Context) -> Vec<String> {
    let mut warnings = Vec::new();
    for anchor in ctx.device_anchors.iter().skip(1) {
        warnings.push(format!(
            "ota.extra_device_ca: trusting {} like Apple's device CA: anything it signs can \
             enroll (meant for testing)",
            anchor.name
        ));
    }
    for key in ctx.config.mdm_placeholders() {
        warnings.push(format!(
            "{key}: not set (empty, or the placeholder `otad init` wrote); \
             set it to your MDM server's value"
        ));
    }
    if !ctx.config.scep.ra {
        warnings.push(
            "scep.ra = false: the CA key also decrypts SCEP requests and signs CertReps".into(),
        );
    }
    if !ctx.config.ota.challenge.is_empty() {
        warnings.push(
            "ota.challenge: one static challenge for every device, so a captured phase 2 \
             answer can be replayed; leave it empty for a fresh single-use one per download"
                .into(),
        );
    }
    let ota = &ctx.config.ota;
    let anonymous = ctx.config.mdm.plain_enroll
        || (ota.challenge.is_empty() && !ota.require_token && !ota.require_user);
    let per_client = ota.max_live_challenges_per_client;
    if anonymous && (per_client == 0 || per_client >= ota.max_live_challenges) {
        warnings.push(format!(
            "ota.max_live_challenges_per_client = {per_client}: one client may hold all \
             ota.max_live_challenges = {} live challenges and close enrollment to everyone \
             until they expire; set it below that (1000 by default), and ota.require_token \
             or ota.require_user on an exposed server",
            ota.max_live_challenges
        ));
    }
    for (key, program) in [
        ("hooks.phase2", &ctx.derived.hooks.phase2),
        ("hooks.phase3", &ctx.derived.hooks.phase3),
        ("auth.command", &ctx.derived.auth_command),
    ] {
        if let Some(program) = program {
            warnings.extend(program_writable_by_others(key, program));
        }
    }
    let secrets = [
        (
            "tls.key",
            ctx.derived.tls.as_ref().map(|(_, key)| key),
            "act as this server towards devices and admins",
        ),
        (
            "events.webhook_secret_file",
            ctx.derived.events.webhook_secret_file.as_ref(),
            "sign events the webhook's receiver takes for otad's",
        ),
    ];
    for (key, path, power) in secrets {
        if let Some(path) = path {
            warnings.extend(secret_readable_by_others(key, path, power));
        }
    }
    // The users file is read at each login, not at start-up: a broken one would refuse every
    // login without a word until then.
    if ctx.derived.auth_command.is_none() {
        if let Err(err) = crate::gate::users::load(&ctx.store) {
            warnings.push(format!(
                "{err}: every HTTP Basic login is refused until it is fixed"
            ));
        }
    }
    let webhook = &ctx.config.events.webhook;
    if webhook.to_ascii_lowercase().starts_with("http://")
        && crate::httpclient::has_credentials(webhook)
    {
        warnings.push(format!(
            "events.webhook {}: credentials over plain http:// cross the network readable by \
             anyone on the way; use https://",
            crate::httpclient::mask_url(webhook)
        ));
    }
    warnings
}

/// A warning when a secret file a config names (`tls.key`, `events.webhook_secret_file`) can
/// be read by its group or by others: whoever reads it can do `power`.
fn secret_readable_by_others(key: &str, path: &Path, power: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;

    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    if mode & 0o044 == 0 {
        return None;
    }
    Some(format!(
        "{key} {}: readable by {} (mode {:04o}): anyone who can read it can {power}; chmod \
         600 it (owned by the user otad runs as)",
        path.display(),
        match (mode & 0o040 != 0, mode & 0o004 != 0) {
            (true, true) => "its group and others",
            (true, false) => "its group",
            _ => "others",
        },
        mode & 0o7777
    ))
}

/// Warnings for a program otad runs (a hook, `auth.command`) that a user other than its
/// owner may change: the program itself writable by group or others, or owned by a user
/// who is neither root nor the one running otad; the folder holding it (which lets its file
/// be replaced) likewise. A sticky folder (like /tmp) lets nobody but a file's owner and
/// the folder's owner replace the file, so only those owners are looked at there. Whoever
/// can change the program decides who enrolls.
fn program_writable_by_others(key: &str, program: &Path) -> Vec<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let mut places = vec![program.to_path_buf()];
    // The folder of the name as written, and the folder of the file a symlink leads to.
    places.extend(program.parent().map(Path::to_path_buf));
    if let Ok(real) = std::fs::canonicalize(program) {
        if real != program {
            places.push(real.clone());
        }
        places.extend(real.parent().map(Path::to_path_buf));
    }
    places.dedup();
    // TODO: folders above the program's own are not looked at; a writable /opt with a tidy
    // /opt/hooks is missed. Walking every ancestor would need the sticky rule below for each.

    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    let mut warnings = Vec::new();
    for place in places {
        let Ok(metadata) = std::fs::metadata(&place) else {
            continue;
        };
        let facts = PlaceFacts {
            mode: metadata.permissions().mode(),
            owner: metadata.uid(),
            is_dir: metadata.is_dir(),
        };
        warnings.extend(place_weaknesses(key, &place, &facts, me));
    }
    warnings
}

/// What [`place_weaknesses`] looks at in a program or its folder.
struct PlaceFacts {
    mode: u32,
    owner: u32,
    is_dir: bool,
}

/// The ways others than root and `me` may change `place` (a program, or its folder).
fn place_weaknesses(key: &str, place: &Path, facts: &PlaceFacts, me: u32) -> Vec<String> {
    let mode = facts.mode;
    let what = if facts.is_dir { "its folder " } else { "" };
    let sticky = facts.is_dir && mode & 0o1000 != 0;
    let mut warnings = Vec::new();

    // In a sticky folder, a user who can write to it can add files but cannot replace or
    // rename another user's: its mode is no weakness then.
    if mode & 0o022 != 0 && !sticky {
        warnings.push(format!(
            "{key}: {what}{} is writable by {} (mode {:04o}): whoever can change it decides \
             who enrolls; chmod go-w it",
            place.display(),
            match (mode & 0o020 != 0, mode & 0o002 != 0) {
                (true, true) => "group and others",
                (true, false) => "its group",
                _ => "others",
            },
            mode & 0o7777
        ));
    }

    // An owner may always change a file, and replace any file in a folder it owns.
    if facts.owner != 0 && facts.owner != me {
        let (can, fix) = if facts.is_dir {
            (
                "can replace the program in it",
                "move the program to a folder owned by root",
            )
        } else {
            ("can change it", "chown root it")
        };
        warnings.push(format!(
            "{key}: {what}{} is owned by uid {}, neither root nor the user running otad (uid \
             {me}): that user {can} and so decides who enrolls; {fix}",
            place.display(),
            facts.owner
        ));
    }
    warnings
}

/// Each client connection takes a descriptor, and a request being handled a few more (state
/// files, a hook's pipes): the soft limit (often 1,024) goes up to the hard one, and a hard
/// limit too low for `http.max_connections` is said at start-up.
fn raise_open_file_limit(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct we own.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if read != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    let needed = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(64);
    if limit.rlim_cur < needed {
        warn!(
            "open files: the limit is {}, but http.max_connections = {max_connections} may need \
             {needed}; raise LimitNOFILE (systemd) or ulimit -n, or lower http.max_connections",
            limit.rlim_cur
        );
    }
}

/// Acts on SIGTERM, SIGINT and SIGHUP, which [`systemd::block_signals`] kept from every
/// other thread: a stop lets the requests in flight finish (the acceptor waits for them,
/// bounded by `guard::DRAIN`); a second stop signal ends the process at once; SIGHUP reloads
/// the TLS certificate and key.
fn start_signal_handler(
    shutdown: Arc<crate::http::guard::Shutdown>,
    tls: Option<Arc<crate::tls::Tls>>,
) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match systemd::wait_for_signal() {
                Ok(systemd::Signal::Stop) if shutdown.is_stopping() => {
                    warn!("a second stop signal: exiting without waiting");
                    std::process::exit(1);
                }
                Ok(systemd::Signal::Stop) => {
                    info!("stopping on a signal: finishing the requests in flight");
                    let _ = systemd::notify("STOPPING=1");
                    shutdown.begin();
                }
                Ok(systemd::Signal::Reload) => {
                    let _ = systemd::notify("RELOADING=1");
                    match &tls {
                        Some(tls) => match tls.reload() {
                            Ok(()) => info!("SIGHUP: TLS certificate and key reloaded"),
                            Err(err) => error!("SIGHUP: {err}; the previous certificate stays"),
                        },
                        // Logs go to stderr (journald): nothing to reopen.
                        None => info!("SIGHUP: no TLS certificate to reload"),
                    }
                    let _ = systemd::notify("READY=1");
                }
                Err(err) => {
                    warn!("waiting for signals: {err}");
                    return;
                }
            }
        });
    if let Err(err) = spawned {
        warn!("cannot start the signal handler: {err}");
    }
}

/// How often the sweeper removes expired challenges.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// How often the sweeper looks whether to run early.
const SWEEP_LOOK: std::time::Duration = std::time::Duration::from_secs(1);

/// Removes expired challenges at start and then every ten minutes, or at the next second once
/// `ota.max_live_challenges` of them have expired since the last sweep, and compacts the
/// state log whenever more than half of it is records since replaced or removed. Expired
/// challenges count for nothing at once; this bounds their records, at twice the cap or so,
/// even with a short `ota.challenge_ttl`, and the compaction bounds the log at about twice
/// what is live.
fn start_sweeper(ctx: Arc<Context>) {
    let spawned = std::thread::Builder::new()
        .name("sweeper".into())
        .spawn(move || loop {
            match ctx.store.sweep_challenges(store::now()) {
                Ok(0) => {}
                Ok(n) => info!("removed {n} expired challenges"),
                Err(err) => warn!("sweeping challenges: {err}"),
            }
            let swept = std::time::Instant::now();
            loop {
                if let Err(err) = ctx.events.flush_spool(&ctx.store) {
                    warn!("events: syncing what requests wrote: {err}");
                }
                compact_if_worth_it(&ctx.store);
                if swept.elapsed() >= SWEEP_INTERVAL
                    || ctx.store.expired_challenges_unswept() >= ctx.config.ota.max_live_challenges
                {
                    break;
                }
                std::thread::sleep(SWEEP_LOOK);
            }
        });
    if let Err(err) = spawned {
        warn!("cannot start the challenge sweeper: {err}");
    }
}

/// Compacts the state log if [`store::Store::wants_compaction`] says it would shrink much.
fn compact_if_worth_it(store: &store::Store) {
    match store.wants_compaction() {
        Ok(false) => {}
        Ok(true) => {
            let started = std::time::Instant::now();
            match store.compact() {
                Ok((before, after)) => info!(
                    "state log compacted: {before} -> {after} bytes in {} ms",
                    started.elapsed().as_millis()
                ),
                Err(err) => warn!("compacting the state log: {err}"),
            }
        }
        Err(err) => warn!("state log: {err}"),
    }
}

/// What `otad verify` takes.
pub struct VerifyOptions {
    /// A config whose CA and extra device CAs to trust too.
    pub config: Option<PathBuf>,
    /// Verification time (unix seconds); now if absent.
    pub at: Option<i64>,
    /// Request bodies to check.
    pub files: Vec<PathBuf>,
}

/// `otad verify`: one JSON line per file, and whether every file was trusted.
pub fn verify(options: &VerifyOptions) -> Result<(Vec<String>, bool), String> {
    let mut anchors = vec![TrustAnchor::apple_device_ca()];
    let context = match &options.config {
        Some(path) => {
            let ctx = Context::load(path)?;
            anchors = ctx.device_anchors.clone();
            Some(ctx)
        }
        None => None,
    };
    let at = options.at.unwrap_or_else(store::now);

    let mut lines = Vec::new();
    let mut all_trusted = true;
    for file in &options.files {
        let verdict = verify_one(file, &anchors, context.as_ref(), at);
        all_trusted &= verdict["trusted"] == json!(true);
        lines.push(verdict.to_string());
    }
    Ok((lines, all_trusted))
}

fn verify_one(
    file: &Path,
    anchors: &[TrustAnchor],
    ctx: Option<&Context>,
    at: i64,
) -> serde_json::Value {
    let mut verdict = json!({
        "file": file.display().to_string(),
        "trusted": false,
        "phase": null,
        "signer": null,
        "attributes": {},
        "error": null,
    });
    if let Err(err) = check_body(file, anchors, ctx, at, &mut verdict) {
        verdict["error"] = json!(err);
    } else {
        verdict["trusted"] = json!(true);
    }
    verdict
}

fn check_body(
    file: &Path,
    anchors: &[TrustAnchor],
    ctx: Option<&Context>,
    at: i64,
    verdict: &mut serde_json::Value,
) -> Result<(), String> {
    let body = std::fs::read(file).map_err(|err| format!("cannot read: {err}"))?;
    let body = unarmor(&body).unwrap_or(body);
    let message = crate::cms::signed::verify(&body).map_err(|err| format!("body: {err}"))?;
    let leaf = &message.signer.certificate;
    if let Ok(summary) = cert::summarize(leaf) {
        verdict["signer"] = json!({
            "subject": summary.subject,
            "issuer": summary.issuer,
            "serial": summary.serial_hex,
        });
    }
    let content = message.content.as_deref().unwrap_or_default();
    let parsed = attributes::parse(content).map_err(|err| err.to_string())?;
    verdict["attributes"] = json!(parsed.recordable());

    let kind = signer_kind(leaf, anchors, ctx.map(|c| &c.ca))
        .ok_or("signer not issued by Apple Device CA or by this server")?;
    verdict["phase"] = json!(kind.phase());
    cert::check_validity(leaf, at).map_err(|err| format!("signer certificate: {err}"))?;
    if let (SignerKind::OwnCa { serial }, Some(ctx)) = (&kind, ctx) {
        let record = ctx
            .store
            .cert(serial)
            .map_err(|err| err.to_string())?
            .ok_or_else(|| format!("signer {serial}: not recorded as issued by this server"))?;
        if record.revoked.is_some() {
            return Err(format!("signer {serial}: revoked"));
        }
        if record.udid.as_deref() != Some(parsed.udid()) {
            return Err(format!(
                "signer {serial}: not issued to UDID {}",
                parsed.udid()
            ));
        }
    }
    Ok(())
}

/// The DER inside a PEM-armoured body (`-----BEGIN PKCS7-----`, `CMS`, …), as OpenSSL and
/// some capture tools write them; `None` for anything else.
fn unarmor(body: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    if !text.trim_start().starts_with("-----BEGIN ") {
        return None;
    }
    let base64: String = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("-----"))
        .collect();
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, base64).ok()
}

/// Parses an RFC 3339 time for `--at`.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|err| {
            format!("--at {text:?}: not an RFC 3339 time like 2023-01-01T00:00:00Z ({err})")
        })
}

/// Keys whose values are secrets: `check-config` prints them masked.
const SECRET_KEYS: [(&str, &str); 2] = [("ota", "challenge"), ("scep", "challenge")];

/// What `otad check-config` found in a config that passed.
#[derive(Debug)]
pub struct CheckedConfig {
    /// The effective settings as TOML, secrets masked.
    pub settings: String,
    /// What `otad serve` would warn about at start-up ([`config_warnings`]).
    pub warnings: Vec<String>,
}

/// What `otad check-config` does: the config, then everything `serve` checks before it
/// listens, through the same [`prepare`], then the effective settings as TOML with secrets
/// masked, and the start-up warnings ([`config_warnings`]). Nothing is written.
pub fn check_config(config_path: &Path) -> Result<CheckedConfig, String> {
    let (config, derived) = Config::load(config_path).map_err(|err| err.to_string())?;
    let Prepared { ctx, .. } = prepare(config, derived)?;
    Ok(CheckedConfig {
        settings: effective_settings(&ctx.config)?,
        warnings: config_warnings(&ctx),
    })
}

/// The configuration as otad reads it, every key with its value, secrets masked.
pub fn effective_settings(config: &Config) -> Result<String, String> {
    let mut table = toml::Table::try_from(config)
        .map_err(|err| format!("cannot write the settings out: {err}"))?;
    for (section, key) in SECRET_KEYS {
        let value = table
            .get_mut(section)
            .and_then(|s| s.as_table_mut())
            .and_then(|s| s.get_mut(key));
        if let Some(value) = value {
            if value.as_str().is_some_and(|v| !v.is_empty()) {
                *value = toml::Value::String("(set, not shown)".into());
            }
        }
    }
    // A webhook URL may carry a user and password before its host, and a key in its query.
    let webhook = table
        .get_mut("events")
        .and_then(|s| s.as_table_mut())
        .and_then(|s| s.get_mut("webhook"));
    if let Some(value) = webhook {
        if let Some(url) = value.as_str() {
            *value = toml::Value::String(crate::httpclient::mask_url(url));
        }
    }
    toml::to_string(&table).map_err(|err| format!("cannot write the settings out: {err}"))
}

/// A fresh state made by `otad init`, for unit tests of the admin commands.
#[cfg(test)]
pub(crate) fn test_state() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    init(&InitOptions {
        state: state.clone(),
        url: "http://127.0.0.1:9".into(),
        organization: "Test Org".into(),
        import: None,
    })
    .expect("otad init");
    (dir, state.join("otad.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_config_prints_every_integer_key_at_its_largest_value() {
        let (_dir, config) = test_state();
        let text = std::fs::read_to_string(&config).unwrap();
        let largest = [
            ("workers = 0", "workers = 256".to_string()),
            (
                "max_body = 65536",
                format!("max_body = {}", 16 * 1024 * 1024),
            ),
            (
                "max_connections = 4096",
                "max_connections = 65536".to_string(),
            ),
            (
                "max_live_challenges = 100000",
                format!("max_live_challenges = {}", config::MAX_LIVE_CHALLENGES),
            ),
            ("max_output = 65536", "max_output = 1048576".to_string()),
            (
                "max_size = 16777216",
                format!("max_size = {}", crate::events::MAX_MAX_SIZE),
            ),
            ("keep = 5", format!("keep = {}", crate::events::MAX_KEEP)),
            (
                "cert_validity = \"365d\"",
                "cert_validity = 315360000".to_string(),
            ),
        ];
        let mut edited = text.clone();
        for (default, value) in &largest {
            assert!(edited.contains(default), "{default}");
            edited = edited.replacen(default, value, 1);
        }
        std::fs::write(&config, &edited).unwrap();
        let checked = check_config(&config).unwrap();
        for (_, value) in &largest {
            let printed = value.replace("315360000", "\"315360000\"");
            assert!(
                checked.settings.lines().any(|line| line == printed),
                "{value} in {}",
                checked.settings
            );
        }
    }

    #[test]
    fn a_hook_in_a_sticky_folder_is_not_warned_about_for_the_folder() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("tmp");
        std::fs::create_dir(&folder).unwrap();
        let hook = folder.join("x.sh");
        std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        let set_mode = |mode| {
            std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(mode)).unwrap()
        };

        set_mode(0o1777);
        assert_eq!(
            program_writable_by_others("hooks.phase2", &hook),
            Vec::<String>::new()
        );

        // The file's own mode still counts in a sticky folder.
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o757)).unwrap();
        assert_eq!(
            program_writable_by_others("hooks.phase2", &hook),
            [format!(
                "hooks.phase2: {} is writable by others (mode 0757): whoever can change it \
                 decides who enrolls; chmod go-w it",
                hook.display()
            )]
        );

        // Without the sticky bit, the folder lets anyone replace the file.
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        set_mode(0o777);
        let warnings = program_writable_by_others("hooks.phase2", &hook);
        set_mode(0o755);
        assert_eq!(
            warnings,
            [format!(
                "hooks.phase2: its folder {} is writable by group and others (mode 0777): \
                 whoever can change it decides who enrolls; chmod go-w it",
                folder.display()
            )]
        );
    }

    #[test]
    fn a_program_or_folder_owned_by_another_user_is_warned_about_and_sticky_is_never_chmod() {
        let place = Path::new("/tmp/x.sh");
        let facts = |mode, owner, is_dir| PlaceFacts {
            mode,
            owner,
            is_dir,
        };

        // Root's and the current user's own files in a root-owned sticky folder: nothing.
        for owner in [0, 1000] {
            assert!(place_weaknesses("k", place, &facts(0o755, owner, false), 1000).is_empty());
        }
        assert!(place_weaknesses("k", Path::new("/tmp"), &facts(0o1777, 0, true), 1000).is_empty());

        // A file another user owns: that user can replace it, sticky folder or not.
        assert_eq!(
            place_weaknesses("hooks.phase2", place, &facts(0o755, 1234, false), 1000),
            [
                "hooks.phase2: /tmp/x.sh is owned by uid 1234, neither root nor the user running \
              otad (uid 1000): that user can change it and so decides who enrolls; chown root \
              it"
            ]
        );

        // A sticky folder another user owns: its owner can replace any file in it, and the
        // advice is never chmod go-w.
        let warnings = place_weaknesses("k", Path::new("/s"), &facts(0o1777, 1234, true), 1000);
        assert_eq!(
            warnings,
            ["k: its folder /s is owned by uid 1234, neither root nor the user running otad (uid \
              1000): that user can replace the program in it and so decides who enrolls; move \
              the program to a folder owned by root"]
        );
        // A sticky bit on a file means nothing: its mode still counts.
        assert_eq!(
            place_weaknesses("k", place, &facts(0o1777, 0, false), 1000).len(),
            1
        );
    }

    #[test]
    fn init_names_the_kind_of_a_ca_certificate_that_is_not_rsa() {
        let dir = tempfile::tempdir().unwrap();
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let certificate = params.self_signed(&ec).unwrap();
        let (cert_path, key_path) = (dir.path().join("ec.pem"), dir.path().join("rsa.key"));
        std::fs::write(&cert_path, certificate.pem()).unwrap();
        let rsa = RsaPrivateKey::generate(2048).unwrap();
        std::fs::write(&key_path, rsa.to_pkcs8_pem().as_bytes()).unwrap();

        let err = init(&InitOptions {
            state: dir.path().join("state"),
            url: "http://127.0.0.1:9".into(),
            organization: "Test Org".into(),
            import: Some(CaImport {
                certificate: cert_path.clone(),
                key: key_path,
                password: KeyPassword::NotGiven,
            }),
        })
        .unwrap_err();
        assert_eq!(
            err,
            format!(
                "--ca-cert {}: holds an EC key (P-256); otad's CA must be RSA of 2048 to 8192 \
                 bits (give an RSA CA's certificate and key, or leave out --ca-cert and \
                 --ca-key to let otad init create one)",
                cert_path.display()
            )
        );
        assert!(!dir.path().join("state").exists(), "nothing written");
    }

    #[test]
    fn the_webhook_url_is_masked_in_the_settings_and_in_load_errors() {
        let (_dir, config) = test_state();
        let text = std::fs::read_to_string(&config).unwrap();
        let with = |url: &str| text.replacen("webhook = \"\"", &format!("webhook = {url:?}"), 1);
        std::fs::write(&config, with("http://user:pass@127.0.0.1:9/x?key=k3y")).unwrap();
        let checked = check_config(&config).unwrap();
        assert!(checked.settings.contains(
            "webhook = \"http://(credentials not shown)@127.0.0.1:9/x?(query not shown)\""
        ));
        std::fs::write(&config, with("ftp://user:pass@127.0.0.1:9/x?key=k3y")).unwrap();
        let err = check_config(&config).unwrap_err();
        assert!(err.contains("events.webhook: "), "{err}");
        assert!(!err.contains("pass") && !err.contains("k3y"), "{err}");
    }
}
