//! Everything a request handler needs, loaded once at start-up: config, state, keys, anchors.
//!
//! Loading checks what can be checked before the first request arrives: that the keys match
//! their certificates, that extra device CAs parse, that a profile template is a valid plist
//! whose variables are all known, that decision hooks are executable files.

use std::path::Path;

use crate::config::{Config, Derived};
use crate::pki::apple::TrustAnchor;
use crate::pki::ca::CertificateAuthority;
use crate::pki::cert;
use crate::pki::keys::RsaPrivateKey;
use crate::store::Store;

/// Files of the state dir that hold identities.
pub mod files {
    /// The CA certificate.
    pub const CA_CERT: &str = "ca/ca.pem";
    /// The CA key.
    pub const CA_KEY: &str = "ca/ca.key";
    /// The RA certificate (SCEP decryption and CertRep signing).
    pub const RA_CERT: &str = "ca/ra.pem";
    /// The RA key.
    pub const RA_KEY: &str = "ca/ra.key";
    /// The profile-signing certificate.
    pub const SIGNER_CERT: &str = "ca/signer.pem";
    /// The profile-signing key.
    pub const SIGNER_KEY: &str = "ca/signer.key";
}

/// A certificate and its private key.
pub struct Identity {
    /// The certificate, DER.
    pub certificate: Vec<u8>,
    /// Its key.
    pub key: RsaPrivateKey,
}

impl Identity {
    /// Reads a PEM certificate and key from the state dir and checks that they belong together.
    pub fn load(store: &Store, cert_file: &str, key_file: &str) -> Result<Identity, String> {
        let cert_pem = read_text(store, cert_file)?;
        let key_pem = read_text(store, key_file)?;
        let certificate = cert::pem_to_der(&cert_pem)
            .map_err(|err| format!("{}: {err}", store.path(cert_file).display()))?;
        let key = RsaPrivateKey::from_pem(&key_pem)
            .map_err(|err| format!("{}: {err}", store.path(key_file).display()))?;
        let spki = cert::spki_der(&certificate)
            .map_err(|err| format!("{}: {err}", store.path(cert_file).display()))?;
        if spki != key.public_key_spki_der() {
            return Err(format!(
                "{}: the key does not match the certificate {}",
                store.path(key_file).display(),
                store.path(cert_file).display()
            ));
        }
        Ok(Identity { certificate, key })
    }
}

fn read_text(store: &Store, file: &str) -> Result<String, String> {
    let bytes = store.read_file(file).map_err(|err| err.to_string())?;
    String::from_utf8(bytes).map_err(|_| format!("{}: not PEM text", store.path(file).display()))
}

/// The loaded server.
pub struct Context {
    /// The configuration as written.
    pub config: Config,
    /// Values derived from it.
    pub derived: Derived,
    /// The state dir.
    pub store: Store,
    /// Our SCEP CA.
    pub ca: CertificateAuthority,
    /// The RA identity.
    pub ra: Identity,
    /// The profile-signing identity.
    pub signer: Identity,
    /// Device CAs whose keys vouch for genuine devices: Apple's, then `ota.extra_device_ca`.
    pub device_anchors: Vec<TrustAnchor>,
    /// The configured final profile, if `profile.template` is set.
    pub template: Option<plist::Dictionary>,
    /// Phase 1's gate: the failed-login table.
    pub gate: crate::gate::Gate,
    /// The events log (`events.jsonl`): `ctx.events.record(Event::new(...))`.
    pub events: std::sync::Arc<crate::events::EventLog>,
    /// The counters behind `GET /metrics`.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Context {
    /// Loads the config at `path` and everything it points to.
    pub fn load(path: &Path) -> Result<Context, String> {
        let (config, derived) = Config::load(path).map_err(|err| err.to_string())?;
        Context::from_config(config, derived)
    }

    /// Loads everything a validated config points to.
    pub fn from_config(config: Config, derived: Derived) -> Result<Context, String> {
        let store = Store::open(&derived.state_dir).map_err(|err| err.to_string())?;

        let ca_identity = Identity::load(&store, files::CA_CERT, files::CA_KEY)?;
        let ca = CertificateAuthority::load(&ca_identity.certificate, ca_identity.key)
            .map_err(|err| format!("{}: {err}", store.path(files::CA_CERT).display()))?;
        let ra = Identity::load(&store, files::RA_CERT, files::RA_KEY)?;
        let signer = Identity::load(&store, files::SIGNER_CERT, files::SIGNER_KEY)?;

        let mut device_anchors = vec![TrustAnchor::apple_device_ca()];
        for path in &derived.extra_device_ca {
            let pem =
                crate::store::fsutil::read_bounded(path, crate::pki::cert::MAX_PEM_BYTES as u64)
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    .map_err(|err| {
                        format!(
                            "ota.extra_device_ca: {}: cannot read: {err}",
                            path.display()
                        )
                    })?;
            let der = cert::pem_to_der(&pem)
                .map_err(|err| format!("ota.extra_device_ca: {}: {err}", path.display()))?;
            let anchor = TrustAnchor::from_der(&path.display().to_string(), &der)
                .map_err(|err| format!("ota.extra_device_ca: {}: {err}", path.display()))?;
            device_anchors.push(anchor);
        }

        let template = match &derived.profile_template {
            None => None,
            Some(path) => Some(load_template(path, &derived.hooks.variables)?),
        };
        for (key, program) in [
            ("hooks.phase2", &derived.hooks.phase2),
            ("hooks.phase3", &derived.hooks.phase3),
        ] {
            if let Some(program) = program {
                check_program(key, program)?;
            }
        }

        let events = std::sync::Arc::new(crate::events::EventLog::open(
            &derived.state_dir,
            &derived.events,
        ));
        Ok(Context {
            events,
            metrics: std::sync::Arc::default(),
            config,
            derived,
            store,
            ca,
            ra,
            signer,
            device_anchors,
            template,
            gate: crate::gate::Gate::default(),
        })
    }
}

/// Checks that a hook is an executable regular file, so a typo fails at start-up.
fn check_program(key: &str, program: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let metadata =
        std::fs::metadata(program).map_err(|err| format!("{key}: {}: {err}", program.display()))?;
    if !metadata.is_file() || metadata.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "{key}: {}: not an executable file (chmod +x it)",
            program.display()
        ));
    }
    Ok(())
}

/// Largest `profile.template` read.
const MAX_TEMPLATE_BYTES: u64 = 1024 * 1024;

/// Reads a `.mobileconfig` template: an unsigned plist dictionary with a PayloadContent array,
/// whose `${NAME}` variables are built in or in `declared` (`hooks.variables`).
fn load_template(path: &Path, declared: &[String]) -> Result<plist::Dictionary, String> {
    let bytes = crate::store::fsutil::read_bounded(path, MAX_TEMPLATE_BYTES)
        .map_err(|err| format!("profile.template: {}: cannot read: {err}", path.display()))?;
    let value = plist::Value::from_reader(std::io::Cursor::new(bytes))
        .map_err(|err| format!("profile.template: {}: not a plist: {err}", path.display()))?;
    let dict = value.into_dictionary().ok_or_else(|| {
        format!(
            "profile.template: {}: not a plist dictionary",
            path.display()
        )
    })?;
    if !matches!(dict.get("PayloadContent"), Some(plist::Value::Array(_))) {
        return Err(format!(
            "profile.template: {}: needs a PayloadContent array (an unsigned .mobileconfig)",
            path.display()
        ));
    }
    crate::decide::template::scan(&dict, declared)
        .map_err(|why| format!("profile.template: {}: {why}", path.display()))?;
    Ok(dict)
}

impl Context {
    /// Who answers SCEP: the RA (its certificate and key) when `scep.ra` is on, else the CA
    /// itself, for clients that cannot handle an RA.
    pub fn scep_responder(&self) -> (&[u8], &RsaPrivateKey) {
        if self.config.scep.ra {
            (&self.ra.certificate, &self.ra.key)
        } else {
            (self.ca.certificate(), self.ca.key())
        }
    }
}
