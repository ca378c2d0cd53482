//! The configuration file, `otad.toml`: its keys, their defaults, and validation at load.
//!
//! Every key has a default, and `otad init` writes a file with every key present and
//! commented ([`template`]). Loading refuses an unknown key, a wrong type or a bad value with
//! a message naming the key, so that a typo never silently falls back to a default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The device attributes asked for in phase 1 unless `ota.device_attributes` says otherwise.
pub const DEFAULT_DEVICE_ATTRIBUTES: &[&str] = &[
    "UDID",
    "SERIAL",
    "PRODUCT",
    "VERSION",
    "IMEI",
    "MEID",
    "ICCID",
    "DEVICE_NAME",
    "MAC_ADDRESS_EN0",
];

/// Attribute names Apple documents for the Profile Service `DeviceAttributes` array.
const KNOWN_DEVICE_ATTRIBUTES: &[&str] = &[
    "UDID",
    "SERIAL",
    "PRODUCT",
    "VERSION",
    "IMEI",
    "MEID",
    "ICCID",
    "DEVICE_NAME",
    "MAC_ADDRESS_EN0",
    "COMPROMISED",
    "SPIRIT",
];

/// A configuration that failed to load; the text names the file, the key and what to do.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration, as loaded from `otad.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: the public URL and where state lives.
    pub server: ServerConfig,
    /// `[http]`: the listener.
    pub http: HttpConfig,
    /// `[tls]`: the listener's certificate; without one, plain HTTP.
    pub tls: TlsConfig,
    /// `[ota]`: the three enrollment phases.
    pub ota: OtaConfig,
    /// `[scep]`: the SCEP CA.
    pub scep: ScepConfig,
    /// `[mdm]`: the MDM enrollment profile handed out in phase 3.
    pub mdm: MdmConfig,
    /// `[profile]`: a configured final profile instead of the MDM one.
    pub profile: ProfileConfig,
    /// `[policy]`: which devices may enroll.
    pub policy: PolicyConfig,
    /// `[hooks]`: decision hooks run in phases 2 and 3.
    pub hooks: HooksConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// `[auth]`: how phase 1 checks people.
    pub auth: AuthConfig,
    /// `[events]`: the events log and its webhook.
    pub events: crate::events::EventsConfig,
    /// Where this configuration was read from (not a key).
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[tls]` keys: both set, otad speaks TLS (1.2 and 1.3) itself; both empty, plain HTTP (for
/// a reverse proxy in front, or a test on loopback).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The certificate chain, PEM, server certificate first; reloaded on SIGHUP.
    pub cert: String,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1), unencrypted; reloaded on SIGHUP.
    pub key: String,
}

/// Default `http.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// `ota.max_live_challenges_per_client` by default: more devices than a school enrolls at
/// once behind one NAT address, far fewer than `ota.max_live_challenges`.
pub const DEFAULT_MAX_LIVE_CHALLENGES_PER_CLIENT: usize = 1000;

/// `[server]` keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The base URL devices reach otad at, without a trailing slash.
    pub url: String,
    /// The state directory; relative paths are relative to the config file's folder.
    pub state_dir: PathBuf,
    /// The organization shown in profiles (PayloadOrganization) and put in certificates.
    pub organization: String,
    /// The reverse-DNS prefix of every PayloadIdentifier otad writes.
    pub identifier: String,
}

/// `[http]` keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The address to listen on.
    pub listen: String,
    /// Requests handled at once (beyond it they wait for a turn); 0: two per CPU core.
    pub workers: usize,
    /// Largest accepted request body in bytes; a larger one gets 413.
    pub max_body: usize,
    /// Client connections handled at once; more get 503 at once.
    pub max_connections: usize,
    /// Deadline for receiving one whole request ("30s"); a slower client gets 408.
    #[serde(deserialize_with = "duration_text")]
    pub request_timeout: String,
    /// Reverse proxies (IPs or CIDR networks) whose `auth.proxy_user_header` is believed.
    pub trusted_proxies: Vec<String>,
}

/// `[ota]` keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtaConfig {
    /// How long a phase 1 challenge stays valid ("1h", "30m", "3600s" or seconds).
    #[serde(deserialize_with = "duration_text")]
    pub challenge_ttl: String,
    /// A static challenge instead of a fresh one per download; empty means one-time ones.
    pub challenge: String,
    /// The attributes the device is asked for in phase 1.
    pub device_attributes: Vec<String>,
    /// "check" the Apple device certificate's validity at request time, or "ignore" it.
    pub apple_leaf_validity: String,
    /// Extra PEM files of device CAs trusted like Apple's (for testing with `otad simulate`).
    pub extra_device_ca: Vec<PathBuf>,
    /// The cipher of the phase 3 EncryptedPayloadContent: "des3", "aes128" or "aes256".
    pub profile_cipher: String,
    /// The name the device shows for the enrollment profiles.
    pub display_name: String,
    /// Refuse phase 1 without a usable enrollment token (`otad token new`).
    pub require_token: bool,
    /// Refuse phase 1 without an authenticated person (users file, `auth.command` or a
    /// trusted proxy's user header).
    pub require_user: bool,
    /// Most challenges alive at once; past it phase 1 answers 503 (a download flood cannot
    /// fill the disk).
    pub max_live_challenges: usize,
    /// Most live challenges the downloads of one client address (IPv4, or an IPv6 /64) may
    /// hold; past it phase 1 and `GET /mdm/enroll` answer it 429. 0: no bound.
    pub max_live_challenges_per_client: usize,
}

/// `[auth]` keys: how phase 1 checks the person enrolling.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The realm of the HTTP Basic challenge, shown in the login prompt.
    pub realm: String,
    /// A program that checks a login instead of the users file; empty for the users file.
    pub command: String,
    /// How long `command` may take ("5s").
    #[serde(deserialize_with = "duration_text")]
    pub timeout: String,
    /// A header a reverse proxy sets to the logged-in user ("X-Forwarded-User"); empty: off.
    pub proxy_user_header: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            realm: "otad enrollment".into(),
            command: String::new(),
            timeout: "5s".into(),
            proxy_user_header: String::new(),
        }
    }
}

/// `[scep]` keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScepConfig {
    /// A static challenge for SCEP clients that did not come through OTA; empty disables it.
    pub challenge: String,
    /// How long issued certificates are valid ("365d").
    #[serde(deserialize_with = "duration_text")]
    pub cert_validity: String,
    /// How long a one-time SCEP challenge handed out in phase 2 or 3 stays valid.
    #[serde(deserialize_with = "duration_text")]
    pub challenge_ttl: String,
    /// "auto": issue at once; "manual": queue requests for `otad request approve`.
    pub approval: String,
    /// Answer SCEP as the RA (GetCACert gives RA and CA); off, the CA itself decrypts and
    /// signs CertReps and GetCACert gives the CA certificate alone.
    pub ra: bool,
    /// The subject of certificates issued under the static `scep.challenge`: "TYPE=VALUE"
    /// entries, where `$CN` is the CSR's common name and `$ORGANIZATION` server.organization.
    pub subject: Vec<String>,
    /// How long a CRL is valid (its nextUpdate); it is re-signed on every revocation and
    /// before it runs out.
    #[serde(deserialize_with = "duration_text")]
    pub crl_validity: String,
}

/// `[mdm]` keys: the MDM server devices are handed to in phase 3.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MdmConfig {
    /// The MDM server's ServerURL.
    pub server_url: String,
    /// The MDM server's CheckInURL; empty means the same as server_url.
    pub checkin_url: String,
    /// The APNs push topic (the MDM push certificate's UID, "com.apple.mgmt.…").
    pub topic: String,
    /// Whether devices sign their MDM messages (SignMessage).
    pub sign_message: bool,
    /// The MDM AccessRights bit mask (8191 = all).
    pub access_rights: u32,
    /// Serve the plain enrollment profile at `/mdm/enroll` to anyone who asks.
    pub plain_enroll: bool,
    /// Answer Apple-signed DEP machine-info bodies POSTed to `/mdm/enroll`.
    pub dep_enroll: bool,
}

/// `[profile]` keys.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    /// A `.mobileconfig` delivered in phase 3 instead of the MDM profile; empty for MDM.
    pub template: String,
}

/// `[policy]` keys: rules on device attributes and the user, first match wins.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// "allow" or "deny": what happens to a device no rule matches.
    pub default: String,
    /// The `[[policy.rule]]` tables, in order; compiled by `decide::policy`.
    pub rule: Vec<toml::Table>,
}

/// `[hooks]` keys: programs that allow or refuse a device and may return template variables.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// The program asked before the phase 2 answer; empty for none.
    pub phase2: String,
    /// The program asked before the phase 3 answer; empty for none.
    pub phase3: String,
    /// How long a hook may run ("5s").
    #[serde(deserialize_with = "duration_text")]
    pub timeout: String,
    /// Most bytes of stdout a hook may write.
    pub max_output: usize,
    /// "deny": a failing hook refuses the device; "allow": it lets the device go on.
    pub on_error: String,
    /// The template variables hooks may return (`${SITE}` and the like).
    pub variables: Vec<String>,
}

/// `[log]` keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// "error", "warn", "info", "debug" or "trace"; `RUST_LOG` overrides it.
    pub level: String,
    /// "plain" lines or "json" objects, one per line.
    pub format: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            http: HttpConfig::default(),
            tls: TlsConfig::default(),
            ota: OtaConfig::default(),
            scep: ScepConfig::default(),
            mdm: MdmConfig::default(),
            profile: ProfileConfig::default(),
            policy: PolicyConfig::default(),
            hooks: HooksConfig::default(),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            events: crate::events::EventsConfig::default(),
            path: PathBuf::new(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            url: "http://127.0.0.1:8080".into(),
            state_dir: PathBuf::from("."),
            organization: "otad".into(),
            identifier: "com.example.otad".into(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            workers: 0,
            max_body: 64 * 1024,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            request_timeout: "30s".into(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for OtaConfig {
    fn default() -> Self {
        OtaConfig {
            challenge_ttl: "1h".into(),
            challenge: String::new(),
            device_attributes: DEFAULT_DEVICE_ATTRIBUTES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            apple_leaf_validity: "check".into(),
            extra_device_ca: Vec::new(),
            profile_cipher: "des3".into(),
            display_name: "Device Enrollment".into(),
            require_token: false,
            require_user: false,
            max_live_challenges: 100_000,
            max_live_challenges_per_client: DEFAULT_MAX_LIVE_CHALLENGES_PER_CLIENT,
        }
    }
}

impl Default for ScepConfig {
    fn default() -> Self {
        ScepConfig {
            challenge: String::new(),
            cert_validity: "365d".into(),
            challenge_ttl: "1h".into(),
            approval: "auto".into(),
            ra: true,
            subject: vec!["CN=$CN".into(), "O=$ORGANIZATION".into()],
            crl_validity: "7d".into(),
        }
    }
}

impl Default for MdmConfig {
    fn default() -> Self {
        MdmConfig {
            server_url: String::new(),
            checkin_url: String::new(),
            topic: String::new(),
            sign_message: true,
            access_rights: 8191,
            plain_enroll: false,
            dep_enroll: false,
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            default: "allow".into(),
            rule: Vec::new(),
        }
    }
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            phase2: String::new(),
            phase3: String::new(),
            timeout: "5s".into(),
            max_output: 64 * 1024,
            on_error: "deny".into(),
            variables: Vec::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "plain".into(),
        }
    }
}

/// The cipher for phase 3's EncryptedPayloadContent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileCipher {
    /// DES-EDE3-CBC, the only cipher Apple documents for profile encryption.
    Des3,
    /// AES-128-CBC.
    Aes128,
    /// AES-256-CBC.
    Aes256,
}

/// Settings derived from the raw keys once, at load, so the request path never re-parses.
#[derive(Debug, Clone)]
pub struct Derived {
    /// `ota.challenge_ttl`.
    pub ota_challenge_ttl: Duration,
    /// `scep.challenge_ttl`.
    pub scep_challenge_ttl: Duration,
    /// `http.request_timeout`.
    pub request_timeout: Duration,
    /// `http.workers`, with 0 resolved to two per CPU core.
    pub workers: usize,
    /// `scep.approval == "manual"`.
    pub manual_approval: bool,
    /// `scep.crl_validity`.
    pub crl_validity: Duration,
    /// `scep.cert_validity`, in whole days.
    pub cert_validity_days: u32,
    /// `ota.apple_leaf_validity == "check"`.
    pub check_apple_leaf_validity: bool,
    /// `ota.profile_cipher`.
    pub profile_cipher: ProfileCipher,
    /// `server.state_dir`, resolved against the config file's folder.
    pub state_dir: PathBuf,
    /// `ota.extra_device_ca`, resolved against the config file's folder.
    pub extra_device_ca: Vec<PathBuf>,
    /// `tls.cert` and `tls.key`, resolved, when otad speaks TLS itself.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `profile.template`, resolved, if set.
    pub profile_template: Option<PathBuf>,
    /// `log.level`.
    pub log_level: log::LevelFilter,
    /// `log.format`.
    pub log_format: crate::logger::LogFormat,
    /// `[policy]`, compiled.
    pub policy: crate::decide::policy::Policy,
    /// `[hooks]`, checked and resolved.
    pub hooks: crate::decide::hooks::Hooks,
    /// `auth.command`, resolved, if set.
    pub auth_command: Option<PathBuf>,
    /// `auth.timeout`.
    pub auth_timeout: Duration,
    /// `http.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<crate::gate::cidr::Cidr>,
    /// `[events]`.
    pub events: crate::events::EventSettings,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<(Config, Derived), ConfigError> {
        // Absolute, so that the paths resolved against its folder (the state dir, hooks,
        // auth.command) stay right when a hook runs in `/` or the server changes folder.
        let absolute = std::path::absolute(path);
        let path = absolute.as_deref().unwrap_or(path);
        // A state dir given where its config goes (`--config DIR`): say which file to give.
        if path.is_dir() {
            let config = path.join("otad.toml");
            let held = if config.is_file() {
                ""
            } else {
                " (it holds none: is it the state dir otad init made?)"
            };
            return Err(ConfigError(format!(
                "{}: a folder, not a config file: give {}{held}; admin commands also take \
                 --state {}",
                path.display(),
                config.display(),
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|err| {
            ConfigError(format!(
                "{}: cannot read the config file: {err}",
                path.display()
            ))
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` names it in errors and anchors
    /// relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<(Config, Derived), ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|err| {
            let message = err.message().to_string();
            let line = err
                .span()
                .map(|span| {
                    text.get(..span.start)
                        .map_or(0, |head| head.matches('\n').count())
                })
                .map(|newlines| {
                    let quoted = text
                        .lines()
                        .nth(newlines)
                        .map(str::trim)
                        .unwrap_or_default();
                    format!(" (line {}: `{quoted}`)", newlines + 1)
                })
                .unwrap_or_default();
            ConfigError(format!("{}{line}: {message}", path.display()))
        })?;
        config.path = path.to_path_buf();
        let derived = config.validate(text)?;
        Ok((config, derived))
    }

    fn validate(&mut self, text: &str) -> Result<Derived, ConfigError> {
        let file = self.path.display().to_string();
        let bad = |key: &str, why: String| {
            let line = line_of(text, key)
                .map(|n| format!(" (line {n})"))
                .unwrap_or_default();
            ConfigError(format!("{file}{line}: {key}: {why}"))
        };
        let base = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        // `.` components go (state_dir = "." would print as /etc/otad/./crl.der); `..` stays
        // as written and symlinks are not followed, so the path is the one the admin wrote.
        let resolve = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.components().collect()
            } else {
                base.join(p).components().collect()
            }
        };

        let url = self.server.url.trim_end_matches('/').to_string();
        if !is_plain_url(&url) {
            let why = format!("{url:?}: use an http(s) URL without spaces, quotes, ? or #");
            return Err(bad("server.url", why));
        }
        url_authority_and_path(&url, false)
            .map_err(|why| bad("server.url", format!("{url:?}: {why}")))?;
        self.server.url = url;
        for (key, value) in [
            ("server.organization", &self.server.organization),
            ("ota.display_name", &self.ota.display_name),
        ] {
            if value.trim().is_empty()
                || value.len() > MAX_NAME_LEN
                || value.chars().any(char::is_control)
            {
                let why = format!("must be 1 to {MAX_NAME_LEN} printable characters");
                return Err(bad(key, why));
            }
        }
        if self.server.identifier.is_empty()
            || !self
                .server
                .identifier
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
        {
            return Err(bad(
                "server.identifier",
                "must be reverse-DNS, like com.example".into(),
            ));
        }

        self.http
            .listen
            .parse::<std::net::SocketAddr>()
            .map_err(|err| {
                bad(
                    "http.listen",
                    format!("{:?} is not an address:port ({err})", self.http.listen),
                )
            })?;
        if !(1..=MAX_LIVE_CHALLENGES).contains(&self.ota.max_live_challenges) {
            return Err(bad(
                "ota.max_live_challenges",
                format!("must be between 1 and {MAX_LIVE_CHALLENGES} (100000 by default)"),
            ));
        }
        if self.http.workers > 256 {
            return Err(bad(
                "http.workers",
                "must be between 1 and 256, or 0 for two per CPU core".into(),
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.http.max_body) {
            return Err(bad(
                "http.max_body",
                "must be between 1024 and 16777216 bytes".into(),
            ));
        }

        for entry in &self.scep.subject {
            let (kind, value) = entry.split_once('=').unwrap_or_default();
            if !matches!(kind, "CN" | "O" | "OU" | "C" | "ST" | "L") || value.is_empty() {
                let why = format!("{entry:?}: use TYPE=VALUE with TYPE one of CN, O, OU, C, ST, L");
                return Err(bad("scep.subject", why));
            }
        }
        if self.scep.subject.is_empty() {
            return Err(bad(
                "scep.subject",
                "needs at least one entry, like \"CN=$CN\"".into(),
            ));
        }
        let manual_approval = match self.scep.approval.as_str() {
            "auto" => false,
            "manual" => true,
            other => {
                return Err(bad(
                    "scep.approval",
                    format!("{other:?}: use auto or manual"),
                ))
            }
        };
        let crl_validity =
            parse_duration(&self.scep.crl_validity).map_err(|why| bad("scep.crl_validity", why))?;
        if !(Duration::from_secs(3600)..=Duration::from_secs(366 * 86_400)).contains(&crl_validity)
        {
            return Err(bad(
                "scep.crl_validity",
                "must be between 1h and 366d".into(),
            ));
        }
        if !(1..=65_536).contains(&self.http.max_connections) {
            return Err(bad(
                "http.max_connections",
                "must be between 1 and 65536".into(),
            ));
        }
        let request_timeout = parse_duration(&self.http.request_timeout)
            .map_err(|why| bad("http.request_timeout", why))?;
        if request_timeout > Duration::from_secs(600) {
            return Err(bad("http.request_timeout", "must be at most 600s".into()));
        }
        let ota_challenge_ttl =
            parse_duration(&self.ota.challenge_ttl).map_err(|why| bad("ota.challenge_ttl", why))?;
        let scep_challenge_ttl = parse_duration(&self.scep.challenge_ttl)
            .map_err(|why| bad("scep.challenge_ttl", why))?;
        for (key, ttl) in [
            ("ota.challenge_ttl", ota_challenge_ttl),
            ("scep.challenge_ttl", scep_challenge_ttl),
        ] {
            if ttl > MAX_CHALLENGE_TTL {
                return Err(bad(
                    key,
                    "must be at most 30d: a challenge is a short-lived secret".into(),
                ));
            }
        }
        if !self.mdm.server_url.is_empty() && !is_plain_url(&self.mdm.server_url) {
            return Err(bad(
                "mdm.server_url",
                format!("{:?} is not an http(s) URL", self.mdm.server_url),
            ));
        }
        if !self.mdm.checkin_url.is_empty() && !is_plain_url(&self.mdm.checkin_url) {
            let why = format!(
                "{:?} is not an http(s) URL (empty: the server_url)",
                self.mdm.checkin_url
            );
            return Err(bad("mdm.checkin_url", why));
        }
        for (key, url) in [
            ("mdm.server_url", &self.mdm.server_url),
            ("mdm.checkin_url", &self.mdm.checkin_url),
        ] {
            if !url.is_empty() {
                url_authority_and_path(url, true)
                    .map_err(|why| bad(key, format!("{url:?}: {why}")))?;
            }
        }
        if !(1..=8191).contains(&self.mdm.access_rights) {
            return Err(bad(
                "mdm.access_rights",
                "must be 1 to 8191 (a bit mask; 8191 = all)".into(),
            ));
        }
        let validity = parse_duration(&self.scep.cert_validity)
            .map_err(|why| bad("scep.cert_validity", why))?;
        let cert_validity_days = u32::try_from(validity.as_secs() / 86_400)
            .ok()
            .filter(|days| (1..=3650).contains(days))
            .ok_or_else(|| bad("scep.cert_validity", "must be 1 to 3650 days".into()))?;

        for attribute in &self.ota.device_attributes {
            if !KNOWN_DEVICE_ATTRIBUTES.contains(&attribute.as_str()) {
                return Err(bad(
                    "ota.device_attributes",
                    format!(
                        "{attribute:?} is not one of {}",
                        KNOWN_DEVICE_ATTRIBUTES.join(", ")
                    ),
                ));
            }
        }
        if !self.ota.device_attributes.iter().any(|a| a == "UDID") {
            return Err(bad("ota.device_attributes", "must include UDID".into()));
        }
        let check_apple_leaf_validity = match self.ota.apple_leaf_validity.as_str() {
            "check" => true,
            "ignore" => false,
            other => {
                return Err(bad(
                    "ota.apple_leaf_validity",
                    format!("{other:?}: use check or ignore"),
                ))
            }
        };
        let profile_cipher = match self.ota.profile_cipher.as_str() {
            "des3" => ProfileCipher::Des3,
            "aes128" => ProfileCipher::Aes128,
            "aes256" => ProfileCipher::Aes256,
            other => {
                return Err(bad(
                    "ota.profile_cipher",
                    format!("{other:?}: use des3, aes128 or aes256"),
                ))
            }
        };
        for (key, value) in [
            ("ota.challenge", &self.ota.challenge),
            ("scep.challenge", &self.scep.challenge),
        ] {
            if !value.is_empty() && value.len() < 8 {
                return Err(bad(
                    key,
                    "a static challenge must be at least 8 characters".into(),
                ));
            }
        }

        let (auth_command, auth_timeout, trusted_proxies) = self.validate_gate(&bad, &resolve)?;

        let log_format = match self.log.format.as_str() {
            "plain" => crate::logger::LogFormat::Plain,
            "json" => crate::logger::LogFormat::Json,
            other => return Err(bad("log.format", format!("{other:?}: use plain or json"))),
        };
        let log_level = self.log.level.parse::<log::LevelFilter>().map_err(|_| {
            bad(
                "log.level",
                format!(
                    "{:?}: use error, warn, info, debug or trace",
                    self.log.level
                ),
            )
        })?;

        let profile_template = if self.profile.template.is_empty() {
            None
        } else {
            Some(resolve(Path::new(&self.profile.template)))
        };
        let tls = match (self.tls.cert.is_empty(), self.tls.key.is_empty()) {
            (true, true) => None,
            (false, false) => Some((
                resolve(Path::new(&self.tls.cert)),
                resolve(Path::new(&self.tls.key)),
            )),
            (false, true) => return Err(bad("tls.key", "tls.cert is set: set its key too".into())),
            (true, false) => {
                return Err(bad(
                    "tls.cert",
                    "tls.key is set: set its certificate too".into(),
                ))
            }
        };
        if tls.is_some() && !self.server.url.starts_with("https://") {
            return Err(bad(
                "server.url",
                "tls is set, so devices reach otad by https://: make server.url https://".into(),
            ));
        }
        let (policy, hooks) = self.validate_decisions(text, &resolve)?;
        let events = self.events.validate(bad, resolve)?;
        Ok(Derived {
            tls,
            events,
            ota_challenge_ttl,
            scep_challenge_ttl,
            request_timeout,
            workers: match self.http.workers {
                0 => std::thread::available_parallelism()
                    .map_or(2, |n| n.get().saturating_mul(2))
                    .min(256),
                n => n,
            },
            manual_approval,
            crl_validity,
            cert_validity_days,
            check_apple_leaf_validity,
            profile_cipher,
            state_dir: resolve(&self.server.state_dir),
            extra_device_ca: self
                .ota
                .extra_device_ca
                .iter()
                .map(|p| resolve(p))
                .collect(),
            profile_template,
            log_level,
            log_format,
            policy,
            hooks,
            auth_command,
            auth_timeout,
            trusted_proxies,
        })
    }

    /// Compiles `[policy]` and checks `[hooks]`; errors name the key or the rule number.
    fn validate_decisions(
        &self,
        text: &str,
        resolve: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<(crate::decide::policy::Policy, crate::decide::hooks::Hooks), ConfigError> {
        use crate::decide::{hooks, policy, template};
        let file = self.path.display().to_string();
        let bad = |key: &str, why: String| {
            let line = line_of(text, key)
                .map(|n| format!(" (line {n})"))
                .unwrap_or_default();
            ConfigError(format!("{file}{line}: {key}: {why}"))
        };

        let policy =
            policy::Policy::compile(&self.policy.default, &self.policy.rule).map_err(|err| {
                match err.rule {
                    Some(number) => {
                        let line = rule_line(text, number)
                            .map(|n| format!(" (line {n})"))
                            .unwrap_or_default();
                        ConfigError(format!("{file}{line}: {}", err.why))
                    }
                    None => {
                        let key = err.why.split(':').next().unwrap_or("policy").to_string();
                        let line = line_of(text, &key)
                            .map(|n| format!(" (line {n})"))
                            .unwrap_or_default();
                        ConfigError(format!("{file}{line}: {}", err.why))
                    }
                }
            })?;

        let timeout =
            parse_duration(&self.hooks.timeout).map_err(|why| bad("hooks.timeout", why))?;
        if timeout > MAX_HOOK_TIMEOUT {
            return Err(bad(
                "hooks.timeout",
                "must be at most 60s: a device is waiting".into(),
            ));
        }
        if !(1024..=1024 * 1024).contains(&self.hooks.max_output) {
            return Err(bad(
                "hooks.max_output",
                "must be between 1024 and 1048576 bytes".into(),
            ));
        }
        let fail_open = match self.hooks.on_error.as_str() {
            "deny" => false,
            "allow" => true,
            other => {
                return Err(bad(
                    "hooks.on_error",
                    format!("{other:?}: use deny (refuse the device) or allow"),
                ))
            }
        };
        if self.hooks.variables.len() > hooks::MAX_VARIABLES {
            let why = format!("at most {} names", hooks::MAX_VARIABLES);
            return Err(bad("hooks.variables", why));
        }
        for (index, name) in self.hooks.variables.iter().enumerate() {
            if !template::valid_name(name) {
                let why = format!("{name:?}: a name is A-Z, 0-9 and _, starting with a letter");
                return Err(bad("hooks.variables", why));
            }
            if template::BUILT_IN.contains(&name.as_str()) {
                let why = format!("{name:?} is built in; declare only the hooks' own names");
                return Err(bad("hooks.variables", why));
            }
            if self.hooks.variables.iter().take(index).any(|n| n == name) {
                return Err(bad("hooks.variables", format!("{name:?} is listed twice")));
            }
        }
        let program = |value: &str| (!value.is_empty()).then(|| resolve(Path::new(value)));
        let hooks = hooks::Hooks {
            phase2: program(&self.hooks.phase2),
            phase3: program(&self.hooks.phase3),
            timeout,
            max_output: self.hooks.max_output,
            fail_open,
            variables: self.hooks.variables.clone(),
        };
        Ok((policy, hooks))
    }

    /// The `[auth]` keys, `http.trusted_proxies`, `ota.require_token` and `ota.require_user`.
    fn validate_gate(
        &self,
        bad: &dyn Fn(&str, String) -> ConfigError,
        resolve: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<GateSettings, ConfigError> {
        if !self.ota.challenge.is_empty() {
            for (key, on) in [
                ("ota.require_token", self.ota.require_token),
                ("ota.require_user", self.ota.require_user),
            ] {
                if on {
                    return Err(bad(
                        key,
                        "needs one-time phase 1 challenges to bind who was admitted to; \
                         set ota.challenge = \"\" or turn this off"
                            .into(),
                    ));
                }
            }
        }

        let realm = &self.auth.realm;
        if realm.is_empty()
            || realm.len() > MAX_NAME_LEN
            || !realm.chars().all(|c| c == ' ' || c.is_ascii_graphic())
            || realm.contains(['"', '\\'])
        {
            return Err(bad(
                "auth.realm",
                format!("must be 1 to {MAX_NAME_LEN} printable ASCII characters, no quotes"),
            ));
        }
        let auth_command = if self.auth.command.is_empty() {
            None
        } else {
            let path = resolve(Path::new(&self.auth.command));
            if !path.is_file() {
                return Err(bad(
                    "auth.command",
                    format!("{}: no such program; give its full path", path.display()),
                ));
            }
            Some(path)
        };
        let auth_timeout =
            parse_duration(&self.auth.timeout).map_err(|why| bad("auth.timeout", why))?;
        if auth_timeout > Duration::from_secs(60) {
            return Err(bad("auth.timeout", "must be at most 60s".into()));
        }

        let header = &self.auth.proxy_user_header;
        if !header.is_empty() {
            if header.len() > 64
                || !header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(bad(
                    "auth.proxy_user_header",
                    format!("{header:?}: a header name is letters, digits and -"),
                ));
            }
            if self.http.trusted_proxies.is_empty() {
                return Err(bad(
                    "auth.proxy_user_header",
                    "needs http.trusted_proxies: the proxies allowed to set it".into(),
                ));
            }
        }
        if self.http.trusted_proxies.len() > MAX_TRUSTED_PROXIES {
            return Err(bad(
                "http.trusted_proxies",
                format!("at most {MAX_TRUSTED_PROXIES} entries"),
            ));
        }
        let trusted_proxies = self
            .http
            .trusted_proxies
            .iter()
            .map(|entry| crate::gate::cidr::Cidr::parse(entry))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| bad("http.trusted_proxies", why))?;
        Ok((auth_command, auth_timeout, trusted_proxies))
    }

    /// The `[mdm]` keys that still hold what `otad init` wrote, for a warning at start-up.
    pub fn mdm_placeholders(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        // The MDM profile goes out in phase 3 unless a template replaces it, and at
        // /mdm/enroll whenever that is on.
        if self.profile.template.is_empty() || self.mdm.plain_enroll || self.mdm.dep_enroll {
            let init_default = format!("{}/mdm/connect", self.server.url);
            if self.mdm.server_url.is_empty() || self.mdm.server_url == init_default {
                keys.push("mdm.server_url");
            }
            if self.mdm.topic.is_empty() || self.mdm.topic.contains(PLACEHOLDER_MARK) {
                keys.push("mdm.topic");
            }
        }
        keys
    }
}

/// Reads a duration key written either as text ("1h") or as a number of seconds (3600).
fn duration_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Visitor;

    impl serde::de::Visitor<'_> for Visitor {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration like \"90s\", \"30m\", \"1h\", \"365d\" or a number of seconds")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<String, E> {
            Ok(text.to_string())
        }

        fn visit_i64<E: serde::de::Error>(self, seconds: i64) -> Result<String, E> {
            Ok(seconds.to_string())
        }

        fn visit_u64<E: serde::de::Error>(self, seconds: u64) -> Result<String, E> {
            Ok(seconds.to_string())
        }
    }

    deserializer.deserialize_any(Visitor)
}

/// The 1-based line of `section.key` in a config text, for error messages.
fn line_of(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = dotted.split_once('.')?;
    let mut in_section = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            in_section = line == format!("[{section}]");
        } else if in_section && line.split('=').next().is_some_and(|k| k.trim() == key) {
            return Some(n + 1);
        }
    }
    None
}

/// The 1-based line of the `number`th `[[policy.rule]]` header, for error messages.
fn rule_line(text: &str, number: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.trim() == "[[policy.rule]]")
        .nth(number.checked_sub(1)?)
        .map(|(n, _)| n + 1)
}

/// The longest `hooks.timeout` accepted.
pub const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// True for an http(s) URL otad can put in a profile as it is.
fn is_plain_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() >= 10
        && !url.contains(|c: char| c.is_whitespace() || c.is_control() || "\"<>?#".contains(c))
}

/// Checks what [`is_plain_url`] leaves alone in an http(s) URL: a host, a port of 1 to 65535
/// if one is given, no user before the host unless `userinfo_allowed`, and no `.` or `..`
/// segment in the path (a device or a server would resolve it to some other path than the
/// one written).
fn url_authority_and_path(url: &str, userinfo_allowed: bool) -> Result<(), String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (authority, path) = rest
        .split_at_checked(rest.find('/').unwrap_or(rest.len()))
        .unwrap_or((rest, ""));
    let authority = match authority.rsplit_once('@') {
        Some(_) if !userinfo_allowed => {
            return Err(
                "no user or password before the host: devices are never asked for one".into(),
            )
        }
        Some((_, host)) => host,
        None => authority,
    };
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (address, after) = v6
                .split_once(']')
                .ok_or("an IPv6 host needs its closing ]")?;
            if address.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("[{address}] is not an IPv6 address"));
            }
            match after {
                "" => (address, None),
                after => (
                    address,
                    Some(after.strip_prefix(':').ok_or("junk after the ]")?),
                ),
            }
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p > 0);
        if !valid {
            return Err(format!(
                "port {port:?}: use 1 to 65535, or none for the default"
            ));
        }
    }
    let dotted = path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    });
    if dotted {
        return Err("a path with . or .. segments: write the path they lead to".into());
    }
    Ok(())
}

/// Most `ota.max_live_challenges`: each is a small file, and a count past this is a typo.
pub const MAX_LIVE_CHALLENGES: usize = 10_000_000;

/// What [`Config::validate_gate`] derives: auth.command, auth.timeout, trusted proxies.
type GateSettings = (Option<PathBuf>, Duration, Vec<crate::gate::cidr::Cidr>);

/// Most entries in `http.trusted_proxies`.
pub const MAX_TRUSTED_PROXIES: usize = 64;

/// The longest organization or display name accepted (an X.520 organizationName's limit).
pub const MAX_NAME_LEN: usize = 64;

/// The longest challenge lifetime accepted.
pub const MAX_CHALLENGE_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Marks the values `otad init` writes that an admin must replace.
pub const PLACEHOLDER_MARK: &str = "CHANGE-ME";

/// Parses "90s", "30m", "1h", "365d" or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 1h or 365d"))?;
    let seconds = match unit {
        "s" => Some(value),
        "m" => value.checked_mul(60),
        "h" => value.checked_mul(3600),
        "d" => value.checked_mul(86_400),
        _ => None,
    }
    .filter(|&s| s > 0)
    .ok_or_else(|| format!("{text:?} is not a positive duration like 90s, 30m, 1h or 365d"))?;
    Ok(Duration::from_secs(seconds))
}

/// A TOML basic string, quoted and escaped.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

/// The commented `otad.toml` that `otad init` writes: every key, with its default.
pub fn template(url: &str, organization: &str) -> String {
    let attributes = DEFAULT_DEVICE_ATTRIBUTES
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"# otad configuration. Every key is shown with its default; see README.md.
# A relative path in any key (server.state_dir, ota.extra_device_ca, profile.template,
# tls.cert, tls.key, hooks.phase2, hooks.phase3, auth.command, events.webhook_ca,
# events.webhook_secret_file) is relative to this file's folder, not to where otad runs.

[server]
# The base URL devices reach otad at (no trailing slash). Profiles point devices here.
url = {url_text}
# The state directory (CA, keys, devices, certificates). Relative to this file's folder.
state_dir = "."
# The organization shown in profiles and put in certificate subjects.
organization = {organization_text}
# The reverse-DNS prefix of every PayloadIdentifier otad writes.
identifier = "com.example.otad"

[http]
# The address and port to listen on. `otad serve --listen` overrides it.
listen = "127.0.0.1:8080"
# Requests handled at once (their crypto, hooks and state writes); 0: two per CPU core.
workers = 0
# The largest request body accepted, in bytes; larger ones get 413.
max_body = 65536
# Client connections open at once, each on a thread of its own (about 20 KiB of memory
# while it waits); more are answered 503 at once. High, so that clients that connect and
# send nothing, or a byte a second, cannot keep a device out.
max_connections = 4096
# How long a client may take to send one whole request; a slower one gets 408.
request_timeout = "30s"
# Reverse proxies (IPs or CIDR networks, IPv4 or IPv6): from them X-Forwarded-For names the
# client, and auth.proxy_user_header is believed, e.g. ["127.0.0.1/32", "::1"]. From any
# other peer both headers are ignored.
trusted_proxies = []

[tls]
# The TLS certificate chain (PEM, the server certificate first) and its unencrypted key.
# Both set: otad speaks TLS 1.2 and 1.3 itself, and SIGHUP reloads both files. Both empty:
# plain HTTP, for a reverse proxy in front or a test on loopback.
cert = ""
key = ""

[ota]
# How long a phase 1 challenge stays valid: "90s", "30m", "1h", "2d", or seconds (3600).
challenge_ttl = "1h"
# A static challenge for every download instead of a fresh one-time one (MicroMDM's way).
# Empty: one fresh, single-use challenge per download (recommended).
challenge = ""
# What the device is asked to send in phase 2. UDID is required.
device_attributes = [{attributes}]
# "check": refuse an Apple device certificate that is not valid now; "ignore": accept it.
apple_leaf_validity = "check"
# PEM files of extra device CAs trusted like Apple's. For testing with `otad simulate` only:
# anything signed by these keys can enroll. otad warns at start-up when this is set.
# A relative path is relative to this file's folder; `otad simulate` prints the absolute one.
extra_device_ca = []
# Cipher of the final profile's EncryptedPayloadContent: "des3" (the one Apple documents),
# "aes128" or "aes256".
profile_cipher = "des3"
# The name devices show for the enrollment profiles.
display_name = "Device Enrollment"
# Refuse phase 1 (403) unless the link carries a usable enrollment token (otad token new).
# A token given while this is off is still checked. Needs challenge = "".
require_token = false
# Refuse phase 1 (401, Safari asks for a login) unless a person is authenticated: HTTP Basic
# against the users file (otad user add) or auth.command, or a trusted proxy's user header.
# Credentials given while this is off are still checked. Needs challenge = "".
require_user = false
# Most enrollments waiting for their device at once (each phase 1 download leaves a
# challenge for challenge_ttl); past it phase 1 answers 503 until some are used or expire.
max_live_challenges = 100000
# Most of those one client address may hold (an IPv4 address, an IPv6 /64; behind
# http.trusted_proxies, the client X-Forwarded-For names), GET /mdm/enroll's included; past
# it that address gets 429 until some are used or expire. 0: no bound. An exposed server
# should also set require_token or require_user.
max_live_challenges_per_client = 1000

[scep]
# A static challenge for SCEP clients that do not come through OTA (scepclient, servers).
# Empty: only the one-time challenges handed out in phases 2 and 3 are accepted.
challenge = ""
# How long issued certificates are valid.
cert_validity = "365d"
# How long a one-time SCEP challenge from phase 2 or 3 stays valid.
challenge_ttl = "1h"
# "auto": issue at once; "manual": requests wait (CertRep PENDING) until
# `otad request approve ID`, and clients poll for the result.
approval = "auto"
# How long a CRL is valid (nextUpdate). It is re-signed on every revocation.
crl_validity = "7d"
# Answer SCEP as the RA, whose key is not the CA's (GetCACert gives RA and CA). false: the
# CA key itself decrypts requests and signs CertReps, for clients that cannot use an RA.
ra = true
# Subject of certificates issued under the static challenge above: TYPE=VALUE entries
# (CN, O, OU, C, ST, L); $CN is the CSR's common name, $ORGANIZATION server.organization.
# (OTA certificates always get CN=<UDID>, O=<organization>.)
subject = ["CN=$CN", "O=$ORGANIZATION"]

[mdm]
# The MDM server devices enroll with in phase 3. otad is only the front door: set these to
# your MDM server (NanoMDM, MicroMDM, ...); otad warns at start-up until both are changed.
server_url = {mdm_url_text}
# The MDM CheckInURL; empty means the same as server_url.
checkin_url = ""
# The APNs topic: the UID of your MDM push certificate. Replace {mark}.
topic = "com.apple.mgmt.{mark}"
# Whether devices sign their MDM messages.
sign_message = true
# MDM AccessRights bit mask; 8191 grants all.
access_rights = 8191
# Serve the plain (unprotected) enrollment profile at /mdm/enroll. Off: OTA is the point.
plain_enroll = false
# Answer Apple-signed DEP machine-info bodies POSTed to /mdm/enroll. They carry no challenge,
# so anyone holding a captured body (or a phase 2 body) can replay it: enable only behind TLS.
dep_enroll = false

[profile]
# A .mobileconfig delivered in phase 3 instead of the MDM profile. Empty: the MDM profile.
# Its string values may hold ${{UDID}}, ${{SERIAL}}, ${{PRODUCT}}, ${{VERSION}}, ${{DEVICE_NAME}},
# ${{IMEI}}, ${{USER}}, ${{TOKEN_NOTE}} and the hooks.variables below; $${{ is a literal ${{.
template = ""

[policy]
# What happens to a device no rule matches: "allow" or "deny".
default = "allow"
# Rules, first match wins; every field given must match, exactly or as a glob (* and ?).
# Fields: SERIAL, UDID, PRODUCT, VERSION, IMEI, MEID, DEVICE_NAME, USER. For example:
# [[policy.rule]]
# action = "deny"
# PRODUCT = "iPhone8,*"
# reason = "too old"
# `otad device block SERIAL` refuses one device before any rule is looked at.

[hooks]
# Programs asked before the phase 2 and phase 3 answers, with the device as JSON on stdin.
# Exit 0 allows (stdout: nothing, or a JSON object of variables), 1 refuses (first line of
# stdout: the reason). Empty: no hook.
phase2 = ""
phase3 = ""
# How long a hook may run; it is killed after.
timeout = "5s"
# Most bytes a hook may write to stdout.
max_output = 65536
# A hook that fails (other exit, crash, timeout): "deny" refuses the device, "allow" lets it on.
on_error = "deny"
# The variables hooks may return, for use in profile.template as ${{NAME}}.
variables = []

[auth]
# The realm of the HTTP Basic login prompt.
realm = "otad enrollment"
# A program that checks logins instead of the users file: it gets {{"user": ..., "password":
# ...}} on stdin; exit 0 accepts, anything else (or a timeout or crash) refuses. Full path.
command = ""
# How long the command may take before it is killed and the login refused.
timeout = "5s"
# A header set by a reverse proxy (oauth2-proxy: "X-Forwarded-User") naming the logged-in
# user; believed only from http.trusted_proxies. Empty: off.
proxy_user_header = ""

[log]
# error, warn, info, debug or trace. RUST_LOG overrides it.
level = "info"
# "plain" lines, or "json": one object per line (at, level, message) for a log shipper.
format = "plain"

[events]
# Every enrollment step, issuance, refusal, revocation and admin action is one JSON line in
# events.jsonl in the state dir. It is rotated when it would grow past max_size bytes
# (events.jsonl.<N>), and keep rotated files are kept.
max_size = 16777216
keep = 5
# POST every event as JSON to this http:// or https:// URL from a background thread, in order,
# at least once (X-Otad-Event-Id is the same on a retry). A user:password@ before the host is
# sent as HTTP Basic authentication (never logged). Empty: no webhook.
webhook = ""
# For https: a PEM file of the CA certificates to check the webhook's server against; empty:
# the system's root certificates.
webhook_ca = ""
# A file whose first line (16 characters or more) keys an HMAC-SHA256 of each body, sent as
# X-Otad-Signature: sha256=<hex>. Empty: unsigned.
webhook_secret_file = ""
"#,
        mark = PLACEHOLDER_MARK,
        url_text = toml_string(url),
        organization_text = toml_string(organization),
        mdm_url_text = toml_string(&format!("{}/mdm/connect", url.trim_end_matches('/'))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_loads_with_every_default() {
        let text = template("https://otad.example.com", "Example");
        let (config, derived) = Config::parse(&text, Path::new("/etc/otad/otad.toml")).unwrap();
        assert_eq!(config.server.url, "https://otad.example.com");
        // Compared as text: Path's == already ignores a `.` component.
        assert_eq!(derived.state_dir.as_os_str(), "/etc/otad");
        assert_eq!(derived.ota_challenge_ttl, Duration::from_secs(3600));
        assert_eq!(derived.cert_validity_days, 365);
        assert_eq!(derived.profile_cipher, ProfileCipher::Des3);
        assert!(derived.check_apple_leaf_validity);
        assert_eq!(
            config.mdm_placeholders(),
            vec!["mdm.server_url", "mdm.topic"]
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err =
            Config::parse("[ota]\nchallenge_tll = \"1h\"\n", Path::new("x.toml")).unwrap_err();
        assert!(err.0.contains("challenge_tll"), "{err}");
        assert!(err.0.contains("line 2"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("[ota]\nprofile_cipher = \"rc2\"\n", "ota.profile_cipher"),
            ("[ota]\nchallenge_ttl = \"soon\"\n", "ota.challenge_ttl"),
            ("[scep]\ncert_validity = \"1h\"\n", "scep.cert_validity"),
            ("[server]\nurl = \"ftp://x\"\n", "server.url"),
            ("[http]\nlisten = \"localhost\"\n", "http.listen"),
            (
                "[ota]\ndevice_attributes = [\"SERIAL\"]\n",
                "ota.device_attributes",
            ),
            ("[ota]\nchallenge = \"short\"\n", "ota.challenge"),
            ("[ota]\nchallenge_ttl = \"99d\"\n", "ota.challenge_ttl"),
            ("[server]\nurl = \"https://x.example/?a=1\"\n", "server.url"),
            ("[server]\norganization = \"\"\n", "server.organization"),
            ("[mdm]\nserver_url = \"not a url\"\n", "mdm.server_url"),
            (
                "[mdm]\ncheckin_url = \"ftp://x.example\"\n",
                "mdm.checkin_url",
            ),
            ("[mdm]\naccess_rights = 0\n", "mdm.access_rights"),
        ];
        for (text, key) in cases {
            let err = Config::parse(text, Path::new("x.toml")).unwrap_err();
            assert!(err.0.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn urls_with_a_bad_port_or_dot_segments_are_refused_with_the_key() {
        let refused = [
            ("server", "url", "http://127.0.0.1:99999", "port \"99999\""),
            ("server", "url", "http://127.0.0.1:0", "port \"0\""),
            ("server", "url", "http://127.0.0.1:", "port \"\""),
            ("server", "url", "http://127.0.0.1:8o", "port \"8o\""),
            (
                "server",
                "url",
                "https://x.example/a/../otad",
                ". or .. segments",
            ),
            (
                "server",
                "url",
                "https://x.example/%2E%2e/otad",
                ". or .. segments",
            ),
            (
                "server",
                "url",
                "https://x.example/./otad",
                ". or .. segments",
            ),
            ("server", "url", "https://x.example/..", ". or .. segments"),
            (
                "server",
                "url",
                "https://u:p@x.example",
                "no user or password",
            ),
            ("server", "url", "http://[::1:8080", "closing ]"),
            ("server", "url", "http://[zz]:8080", "not an IPv6 address"),
            ("server", "url", "http://:8080/x", "no host"),
            ("mdm", "server_url", "https://mdm.example:65536/mdm", "port"),
            (
                "mdm",
                "checkin_url",
                "https://mdm.example/../checkin",
                ".. segments",
            ),
        ];
        for (section, key, url, why) in refused {
            let text = format!("[{section}]\n{key} = {url:?}\n");
            let err = Config::parse(&text, Path::new("x.toml")).unwrap_err();
            let start = format!("x.toml (line 2): {section}.{key}: \"{url}\": ");
            assert!(err.0.starts_with(&start), "{url}: {err}");
            assert!(err.0.contains(why), "{url}: {err}");
        }
        let accepted = [
            ("server", "url", "http://127.0.0.1:65535"),
            ("server", "url", "http://[::1]:8080/otad"),
            ("server", "url", "https://x.example/a..b/otad.d/"),
            ("mdm", "server_url", "https://u:p@mdm.example/mdm"),
        ];
        for (section, key, url) in accepted {
            let text = format!("[{section}]\n{key} = {url:?}\n");
            assert!(Config::parse(&text, Path::new("x.toml")).is_ok(), "{url}");
        }
    }

    #[test]
    fn every_integer_key_has_an_upper_bound_named_with_its_line() {
        // Each integer key at its largest accepted value, then one past it.
        let keys: [(&str, &str, u64); 8] = [
            ("http", "workers", 256),
            ("http", "max_body", 16 * 1024 * 1024),
            ("http", "max_connections", 65_536),
            ("ota", "max_live_challenges", MAX_LIVE_CHALLENGES as u64),
            ("mdm", "access_rights", 8191),
            ("hooks", "max_output", 1024 * 1024),
            ("events", "max_size", crate::events::MAX_MAX_SIZE),
            ("events", "keep", crate::events::MAX_KEEP),
        ];
        for (section, key, largest) in keys {
            let text = format!("[{section}]\n\n{key} = {largest}\n");
            assert!(Config::parse(&text, Path::new("x.toml")).is_ok(), "{key}");
            for over in [largest + 1, u64::MAX] {
                let text = format!("[{section}]\n\n{key} = {over}\n");
                let err = Config::parse(&text, Path::new("x.toml")).unwrap_err();
                assert!(err.0.contains("(line 3"), "{key} = {over}: {err}");
                assert!(
                    err.0.contains(&format!("{section}.{key}")) || err.0.contains(key),
                    "{key} = {over}: {err}"
                );
            }
        }
    }

    #[test]
    fn value_errors_give_the_line_and_type_errors_quote_it() {
        let err = Config::parse("[mdm]\n\naccess_rights = 0\n", Path::new("x.toml")).unwrap_err();
        assert!(
            err.0.starts_with("x.toml (line 3): mdm.access_rights:"),
            "{err}"
        );
        let err = Config::parse("[http]\nworkers = \"4\"\n", Path::new("x.toml")).unwrap_err();
        assert!(err.0.contains("(line 2: `workers = \"4\"`)"), "{err}");
    }

    #[test]
    fn durations_may_be_bare_seconds_and_names_may_hold_quotes() {
        let text = template("https://otad.example.com", "ACME \"Devices\" \\ Co");
        let (config, _) = Config::parse(&text, Path::new("x.toml")).unwrap();
        assert_eq!(config.server.organization, "ACME \"Devices\" \\ Co");
        let (_, derived) =
            Config::parse("[ota]\nchallenge_ttl = 600\n", Path::new("x.toml")).unwrap();
        assert_eq!(derived.ota_challenge_ttl, Duration::from_secs(600));
    }

    #[test]
    fn paths_are_absolute_even_when_the_config_was_named_relatively() {
        let here = std::env::current_dir().unwrap();
        let dir = tempfile::tempdir_in(&here).unwrap();
        let config = dir.path().join("otad.toml");
        std::fs::write(&config, "[hooks]\nphase2 = \"hooks/p2.sh\"\n").unwrap();
        let relative = config.strip_prefix(&here).unwrap();
        assert!(relative.is_relative());

        let (_, derived) = Config::load(relative).unwrap();
        let hook = derived.hooks.phase2.unwrap();
        assert!(hook.is_absolute(), "{}", hook.display());
        assert_eq!(hook, dir.path().join("hooks/p2.sh"));
        assert!(derived.state_dir.is_absolute());
    }

    #[test]
    fn derived_paths_drop_dot_components_and_keep_dot_dot_as_written() {
        let config = Path::new("/srv/otad/./conf/otad.toml");
        let cases = [
            (".", "/srv/otad/conf"),
            ("./state/.", "/srv/otad/conf/state"),
            ("../state", "/srv/otad/conf/../state"),
            ("/var/lib/otad/./", "/var/lib/otad"),
            ("/var/./lib/../otad", "/var/lib/../otad"),
        ];
        for (state_dir, expected) in cases {
            let text = format!("[server]\nstate_dir = {state_dir:?}\n");
            let (_, derived) = Config::parse(&text, config).unwrap();
            assert_eq!(derived.state_dir.as_os_str(), expected, "{state_dir}");
        }
        let text = "[hooks]\nphase2 = \"./hooks/./p2.sh\"\n";
        let (_, derived) = Config::parse(text, Path::new("/etc/otad/otad.toml")).unwrap();
        let hook = derived.hooks.phase2.unwrap();
        assert_eq!(hook.as_os_str(), "/etc/otad/hooks/p2.sh");
    }

    #[test]
    fn policy_rules_and_hooks_load_from_the_template_and_errors_name_rule_and_line() {
        let text = template("https://otad.example.com", "Example");
        let (_, derived) = Config::parse(&text, Path::new("/etc/otad/otad.toml")).unwrap();
        assert_eq!(derived.policy, crate::decide::policy::Policy::default());
        assert_eq!(derived.hooks, crate::decide::hooks::Hooks::default());

        // Rules appended after the last section still belong to [policy].
        let rules = "\n[[policy.rule]]\naction = \"deny\"\nPRODUCT = \"iPhone8,*\"\n\
                     reason = \"too old\"\n\n[[policy.rule]]\naction = \"allow\"\nUSER = \"a*\"\n";
        let with_rules = format!("{text}{rules}");
        let (_, derived) = Config::parse(&with_rules, Path::new("x.toml")).unwrap();
        assert_eq!(derived.policy.rules.len(), 2);
        assert_eq!(derived.policy.rules[0].reason.as_deref(), Some("too old"));

        let bad_rule =
            format!("{with_rules}\n[[policy.rule]]\naction = \"deny\"\nSERIALL = \"X\"\n");
        let err = Config::parse(&bad_rule, Path::new("x.toml")).unwrap_err();
        let line = bad_rule.lines().count() - 2;
        assert!(
            err.0.starts_with(&format!(
                "x.toml (line {line}): policy.rule 3: unknown field"
            )),
            "{err}"
        );

        let hooks = format!(
            "{}[hooks]\nphase2 = \"hook.sh\"\nvariables = [\"SITE\"]\n",
            text.split("[hooks]").next().unwrap()
        );
        let (_, derived) = Config::parse(&hooks, Path::new("/etc/otad/otad.toml")).unwrap();
        assert_eq!(
            derived.hooks.phase2,
            Some(PathBuf::from("/etc/otad/hook.sh"))
        );
        assert_eq!(derived.hooks.variables, ["SITE"]);
        let cases = [
            (
                "[policy]\ndefault = \"maybe\"\n",
                "(line 2): policy.default",
            ),
            ("[hooks]\non_error = \"ignore\"\n", "hooks.on_error"),
            ("[hooks]\ntimeout = \"2m\"\n", "hooks.timeout"),
            ("[hooks]\nmax_output = 10\n", "hooks.max_output"),
            ("[hooks]\nvariables = [\"site\"]\n", "hooks.variables"),
            ("[hooks]\nvariables = [\"SERIAL\"]\n", "is built in"),
            ("[hooks]\nvariables = [\"A\", \"A\"]\n", "listed twice"),
            ("[policy]\nrules = []\n", "unknown field `rules`"),
        ];
        for (text, needle) in cases {
            let err = Config::parse(text, Path::new("x.toml")).unwrap_err();
            assert!(err.0.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn gate_keys_are_validated() {
        let cases = [
            (
                "[ota]\nchallenge = \"static-secret\"\nrequire_token = true\n",
                "ota.require_token",
            ),
            (
                "[ota]\nchallenge = \"static-secret\"\nrequire_user = true\n",
                "ota.require_user",
            ),
            ("[auth]\nrealm = \"a\\\"b\"\n", "auth.realm"),
            ("[auth]\ncommand = \"/nonexistent/auth\"\n", "auth.command"),
            ("[auth]\ntimeout = \"2m\"\n", "auth.timeout"),
            (
                "[auth]\nproxy_user_header = \"X-Forwarded-User\"\n",
                "auth.proxy_user_header",
            ),
            (
                "[auth]\nproxy_user_header = \"X User\"\n",
                "auth.proxy_user_header",
            ),
            (
                "[http]\ntrusted_proxies = [\"10.0.0.1/8\"]\n",
                "http.trusted_proxies",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(text, Path::new("x.toml")).unwrap_err();
            assert!(err.0.contains(key), "{text}: {err}");
        }
        let text = "[http]\ntrusted_proxies = [\"127.0.0.1/32\", \"::1\"]\n\
                    [auth]\nproxy_user_header = \"X-Forwarded-User\"\ntimeout = 2\n\
                    [ota]\nrequire_user = true\nrequire_token = true\n";
        let (config, derived) = Config::parse(text, Path::new("x.toml")).unwrap();
        assert!(config.ota.require_user && config.ota.require_token);
        assert_eq!(derived.trusted_proxies.len(), 2);
        assert_eq!(derived.auth_timeout, Duration::from_secs(2));
        assert_eq!(derived.auth_command, None);
        let (config, derived) = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(config.auth.realm, "otad enrollment");
        assert_eq!(derived.auth_timeout, Duration::from_secs(5));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
