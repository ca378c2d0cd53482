//! Who may start an enrollment: phase 1's gate.
//!
//! Before phase 1 hands out its challenge, [`admit`] decides who is asking and whether they
//! may: the person (a user header from a trusted reverse proxy, or HTTP Basic checked
//! against the users file or `auth.command`) and the enrollment token in the link. What it
//! admits becomes the [`Admission`] the challenge carries to phase 2, where a token's use
//! is spent ([`tokens::spend`]).
//!
//! - `ota.require_user`: anonymous phase 1 gets 401 with `WWW-Authenticate: Basic`, so
//!   Safari asks for a name and password. Credentials given while not required are still
//!   checked.
//! - `ota.require_token`: phase 1 without a usable token gets 403. A token given while not
//!   required is still checked.
//! - Failed logins are counted per remote address ([`ratelimit`]); too many get 429.

pub mod cidr;
pub mod ratelimit;
pub mod tokens;
pub mod users;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use base64::Engine;
use log::{error, info, warn};
use zeroize::Zeroizing;

use crate::context::Context;
use crate::logger::one_line;
use crate::store::Admission;
use ratelimit::LoginLimiter;
use tokens::TokenError;

/// The longest Authorization header value read.
pub const MAX_AUTHORIZATION_LEN: usize = 4096;

/// The longest user name taken from a proxy header or an `auth.command` login.
pub const MAX_USER_LEN: usize = 256;

/// Most bytes of stdout kept from `auth.command` (it is not read; only the exit code counts).
pub const AUTH_COMMAND_MAX_OUTPUT: usize = 4096;

/// The state phase 1's gate keeps between requests: the failed-login table.
#[derive(Debug, Default)]
pub struct Gate {
    /// Failed logins per remote address.
    pub limiter: LoginLimiter,
}

/// What phase 1's request brings to the gate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phase1Request<'a> {
    /// The client, for logs and the failed-login count: the TCP peer ("127.0.0.1:50000"),
    /// or the address a trusted proxy's X-Forwarded-For names.
    pub remote: &'a str,
    /// The TCP peer, as the guard names it: whether to believe the proxy user header.
    pub peer: &'a str,
    /// The `token` query parameter.
    pub token: Option<&'a str>,
    /// The Authorization header.
    pub authorization: Option<&'a str>,
    /// The header named by `auth.proxy_user_header`, where that is set.
    pub proxy_user: Option<&'a str>,
}

/// Why the gate refused; `http` turns each into its status.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GateError {
    /// No person, or the wrong password (401, with a Basic challenge).
    Unauthorized(String),
    /// No usable token, or something else the request cannot fix by logging in (403).
    Forbidden(String),
    /// Too many failed logins from this address; retry after this many seconds (429).
    TooManyFailures(u64),
    /// Our side failed (500); the detail is for the log.
    Internal(String),
}

impl fmt::Display for GateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GateError::Unauthorized(why) | GateError::Forbidden(why) | GateError::Internal(why) => {
                f.write_str(why)
            }
            GateError::TooManyFailures(seconds) => write!(
                f,
                "too many failed logins from this address; try again in {seconds} s"
            ),
        }
    }
}

impl std::error::Error for GateError {}

/// The peer's IP address, from the guard's "ip:port".
pub fn peer_ip(remote: &str) -> Option<IpAddr> {
    remote
        .parse::<SocketAddr>()
        .ok()
        .map(|addr| addr.ip().to_canonical())
}

/// The client `remote` is counted under, as the failed-login table counts it: the address
/// of the guard's "ip:port", or the bare address a trusted proxy's X-Forwarded-For names;
/// IPv6 by its /64. A remote that is neither (none is, from the guard) counts as 0.0.0.0.
pub fn client_key(remote: &str) -> IpAddr {
    let address = peer_ip(remote)
        .or_else(|| remote.parse::<IpAddr>().ok().map(|ip| ip.to_canonical()))
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    ratelimit::counted_as(address)
}

/// Phase 1's refusal of a token while `ota.challenge` is static; `otad token new` warns with
/// the same words.
pub const STATIC_CHALLENGE_TOKEN: &str = "phase 1: enrollment tokens are refused while \
     ota.challenge is static (their uses could not be counted); set ota.challenge = \"\" to \
     use tokens, or open the enroll link without ?token=";

/// Decides who phase 1 admits. See the module doc for the rules.
pub fn admit(ctx: &Context, request: &Phase1Request<'_>, now: i64) -> Result<Admission, GateError> {
    let user = authenticate(ctx, request)?;
    if user.is_none() && ctx.config.ota.require_user {
        return Err(GateError::Unauthorized(
            "phase 1: log in to enroll this device".into(),
        ));
    }

    // A static challenge leaves no challenge record to carry a token to phase 2, where its
    // use would be spent: a token there could never be used up, so it is refused.
    if request.token.is_some() && !ctx.config.ota.challenge.is_empty() {
        return Err(GateError::Forbidden(STATIC_CHALLENGE_TOKEN.into()));
    }

    let token = match request.token {
        Some(secret) => Some(
            tokens::lookup(&ctx.store, secret, now).map_err(|err| match err {
                TokenError::Store(err) => GateError::Internal(format!("enrollment tokens: {err}")),
                other => GateError::Forbidden(other.to_string()),
            })?,
        ),
        None if ctx.config.ota.require_token => {
            return Err(GateError::Forbidden(
                "phase 1: an enrollment token is required; open the link you were given".into(),
            ))
        }
        None => None,
    };

    Ok(Admission {
        user,
        token_note: token.as_ref().and_then(tokens::TokenRecord::note),
        token: token.map(|t| t.id),
    })
}

/// The person behind the request, if any: the proxy's user header from a trusted peer, else
/// HTTP Basic. Wrong credentials are an error even where no person is required.
fn authenticate(ctx: &Context, request: &Phase1Request<'_>) -> Result<Option<String>, GateError> {
    let remote = request.remote;
    let peer = peer_ip(request.peer);

    let header_name = &ctx.config.auth.proxy_user_header;
    if let (false, Some(value)) = (header_name.is_empty(), request.proxy_user) {
        let trusted = peer.is_some_and(|ip| cidr::any_contains(&ctx.derived.trusted_proxies, &ip));
        if trusted {
            let user = value.trim();
            if user.is_empty() || user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
                return Err(GateError::Forbidden(format!(
                    "{header_name}: not a user name (1 to {MAX_USER_LEN} printable characters)"
                )));
            }
            return Ok(Some(user.to_string()));
        }
        warn!(
            "phase 1: {header_name} ignored: the peer is not in http.trusted_proxies \
             remote={remote}"
        );
    }

    let Some(authorization) = request.authorization else {
        return Ok(None);
    };
    // Behind a trusted proxy, the client its X-Forwarded-For names: one client's failures
    // do not hold back the others.
    let limiter_key = client_key(remote);
    ctx.gate
        .limiter
        .check(limiter_key, Instant::now())
        .map_err(GateError::TooManyFailures)?;
    let Some((name, password)) = parse_basic(authorization) else {
        ctx.gate.limiter.failed(limiter_key, Instant::now());
        return Err(GateError::Unauthorized(
            "authorization: not HTTP Basic with a user name and password".into(),
        ));
    };

    let verdict = match &ctx.derived.auth_command {
        Some(program) => run_auth_command(ctx, program, &name, &password),
        None => users::authenticate(&ctx.store, &name, &password),
    };
    match verdict {
        Ok(true) => {
            info!(
                "phase 1: user {} logged in remote={remote}",
                one_line(&name, 80)
            );
            Ok(Some(name))
        }
        Ok(false) => {
            ctx.gate.limiter.failed(limiter_key, Instant::now());
            warn!(
                "phase 1: login refused for user {:?} remote={remote}",
                one_line(&name, 80)
            );
            Err(GateError::Unauthorized(
                "phase 1: wrong user name or password".into(),
            ))
        }
        Err(err) => {
            ctx.gate.limiter.failed(limiter_key, Instant::now());
            error!(
                "phase 1: login for user {:?} refused, cannot check it: {err} remote={remote}",
                one_line(&name, 80)
            );
            Err(GateError::Unauthorized(
                "phase 1: wrong user name or password".into(),
            ))
        }
    }
}

/// `Basic base64(name:password)` → (name, password); `None` for anything else, a name
/// with control characters, or one over [`MAX_USER_LEN`].
pub fn parse_basic(header: &str) -> Option<(String, Zeroizing<String>)> {
    if header.len() > MAX_AUTHORIZATION_LEN {
        return None;
    }
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?,
    );
    let text = std::str::from_utf8(&decoded).ok()?;
    let (name, password) = text.split_once(':')?;
    if name.is_empty() || name.len() > MAX_USER_LEN || name.chars().any(char::is_control) {
        return None;
    }
    Some((name.to_string(), Zeroizing::new(password.to_string())))
}

/// Asks `auth.command`: `{"user": …, "password": …}` on stdin, exit 0 accepts. Anything
/// else refuses; a timeout, a crash or a program that cannot start is an `Err` (refused
/// too: fail closed).
fn run_auth_command(
    ctx: &Context,
    program: &std::path::Path,
    name: &str,
    password: &str,
) -> Result<bool, String> {
    let input = Zeroizing::new(
        serde_json::to_vec(&serde_json::json!({"user": name, "password": password}))
            .unwrap_or_default(),
    );
    let limits = crate::hook::Limits {
        timeout: ctx.derived.auth_timeout,
        max_output: AUTH_COMMAND_MAX_OUTPUT,
    };
    let finished =
        crate::hook::run(program, &input, &limits).map_err(|err| format!("auth.command: {err}"))?;
    match (finished.code, finished.signal) {
        (Some(0), _) => Ok(true),
        (Some(_), _) => Ok(false),
        (None, signal) => Err(format!(
            "auth.command: {}: ended by signal {} ({})",
            program.display(),
            signal.unwrap_or_default(),
            one_line(finished.stderr.trim(), 200)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(text: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(text)
        )
    }

    #[test]
    fn basic_credentials_are_parsed_strictly() {
        let (name, password) = parse_basic(&basic("alice:pa:ss word")).unwrap();
        assert_eq!(name, "alice");
        assert_eq!(password.as_str(), "pa:ss word");
        let (_, empty) = parse_basic(&format!("basic {}", &basic("bob:")[6..])).unwrap();
        assert_eq!(empty.as_str(), "");
        for bad in [
            "Bearer abc".to_string(),
            "Basic".to_string(),
            "Basic !!!".to_string(),
            basic("no-colon"),
            basic(":password"),
            basic("a\nb:password"),
            format!("Basic {}", "A".repeat(MAX_AUTHORIZATION_LEN)),
        ] {
            assert!(parse_basic(&bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn peers_are_read_from_the_guard_remote() {
        assert_eq!(
            peer_ip("127.0.0.1:5000"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(peer_ip("[::1]:5000"), Some("::1".parse().unwrap()));
        assert_eq!(peer_ip("-"), None);
    }

    #[test]
    fn clients_are_keyed_as_the_login_limiter_counts_them() {
        let key = |remote| client_key(remote).to_string();
        assert_eq!(key("192.0.2.7:50312"), "192.0.2.7");
        assert_eq!(key("192.0.2.7"), "192.0.2.7", "from X-Forwarded-For");
        assert_eq!(key("[::ffff:192.0.2.7]:443"), "192.0.2.7");
        assert_eq!(key("[2001:db8:1:2:aaaa::1]:443"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::");
        assert_eq!(key("-"), "0.0.0.0");
    }
}
