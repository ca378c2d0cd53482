//! The HTTP adapter: routing, and the one place where errors become HTTP statuses. otad's own
//! server ([`guard`]) reads each request within its limits and calls [`route`] (through
//! `handle`) on the connection's thread, at most `http.workers` requests at once.
//!
//! Every refusal is a status with a one-line reason in a `text/plain` body and a warn log line
//! with the remote address; an internal failure logs its detail and tells the client only
//! that it happened.

pub mod guard;

use std::net::TcpListener;
use std::sync::Arc;

use log::{error, info, warn};

use crate::context::Context;
use crate::ota::{self, OtaError};
use crate::scep;
use crate::store::now;

/// Content type of a signed configuration profile.
pub const PROFILE_CONTENT_TYPE: &str = "application/x-apple-aspen-config";

/// What a handler answers.
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Content-Type.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// A file name for Content-Disposition, for profiles Safari should offer to install.
    pub attachment: Option<&'static str>,
    /// An answer to HEAD sent without Content-Length (see [`guard::Response::length_unknown`]):
    /// GET makes its body for each request alone and mints state doing so.
    pub length_unknown: bool,
}

impl Reply {
    /// 200 with a body.
    pub fn ok(content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply {
            status: 200,
            content_type,
            body,
            attachment: None,
            length_unknown: false,
        }
    }

    /// A signed profile offered as a download.
    pub fn profile(body: Vec<u8>, file: &'static str) -> Reply {
        Reply {
            status: 200,
            content_type: PROFILE_CONTENT_TYPE,
            body,
            attachment: Some(file),
            length_unknown: false,
        }
    }

    /// HEAD where GET would hand out a profile made for that request alone (around a new
    /// challenge): the profile's Content-Type and file name, no body and no length, and
    /// nothing minted.
    pub fn profile_head(file: &'static str) -> Reply {
        Reply {
            length_unknown: true,
            ..Reply::profile(Vec::new(), file)
        }
    }
}

/// A refused request: its status and the one-line reason the client sees.
#[derive(Debug)]
pub struct Refusal {
    /// HTTP status (4xx, or 500 for our own failures).
    pub status: u16,
    /// The reason, one line.
    pub reason: String,
    /// For 405: the methods the path takes (the Allow header).
    pub allow: Option<&'static str>,
    /// More response headers (WWW-Authenticate for 401, Retry-After for 429).
    pub headers: Vec<(&'static str, String)>,
}

impl Refusal {
    /// A refusal with a status and reason.
    pub fn new(status: u16, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
            allow: None,
            headers: Vec::new(),
        }
    }
}

impl Refusal {
    /// Phase 1's gate refused: 401 with a Basic challenge, 403, 429 with Retry-After, 500.
    fn from_gate(err: crate::gate::GateError, realm: &str) -> Refusal {
        use crate::gate::GateError;
        let status = match &err {
            GateError::Unauthorized(_) => 401,
            GateError::Forbidden(_) => 403,
            GateError::TooManyFailures(_) => 429,
            _ => 500,
        };
        let mut refusal = Refusal::new(status, err.to_string());
        match err {
            GateError::Unauthorized(_) => refusal.headers.push((
                "WWW-Authenticate",
                format!("Basic realm=\"{realm}\", charset=\"UTF-8\""),
            )),
            GateError::TooManyFailures(seconds) => {
                refusal.headers.push(("Retry-After", seconds.to_string()))
            }
            _ => {}
        }
        refusal
    }
}

impl From<OtaError> for Refusal {
    fn from(err: OtaError) -> Refusal {
        let status = match &err {
            OtaError::Malformed(_) => 400,
            OtaError::Untrusted(_)
            | OtaError::Challenge(_)
            | OtaError::Refused(_)
            | OtaError::Denied(_) => 403,
            OtaError::Busy { .. } => 503,
            OtaError::ClientBusy { .. } => 429,
            OtaError::Internal(_) => 500,
            #[allow(unreachable_patterns)]
            _ => 500,
        };
        let retry_after = match &err {
            OtaError::Busy { retry_after, .. } | OtaError::ClientBusy { retry_after, .. } => {
                Some(*retry_after)
            }
            _ => None,
        };
        let mut refusal = Refusal::new(status, err.to_string());
        if let Some(seconds) = retry_after {
            refusal.headers.push(("Retry-After", seconds.to_string()));
        }
        refusal
    }
}

impl From<scep::ScepError> for Refusal {
    fn from(err: scep::ScepError) -> Refusal {
        Refusal::new(err.status(), err.to_string())
    }
}

/// A request with what the handlers need, the body not yet read.
pub struct Incoming<'a> {
    /// GET, POST, …
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The decoded query parameters.
    pub query: Vec<(String, String)>,
    /// The client's address, for logs and rate limits: the TCP peer as the guard saw it
    /// ("ip:port"), or, behind a proxy in `http.trusted_proxies`, the address its
    /// X-Forwarded-For names ("ip").
    pub remote: String,
    /// The TCP peer ("ip:port"): the proxy itself, where there is one.
    pub peer: String,
    /// The request headers as the client sent them, hop-by-hop ones removed (at most
    /// `guard::MAX_HEADERS`).
    pub headers: Vec<(String, String)>,
}

impl Incoming<'_> {
    /// The first value of a query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a header, its name compared without case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes `%XX` escapes and, in a query, `+` as a space only when `plus_is_space`.
pub fn percent_decode(text: &str, plus_is_space: bool) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |at: usize| bytes.get(at).and_then(|c| (*c as char).to_digit(16));
        match b {
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            other => out.push(other),
        }
        i += 1;
    }
    out
}

/// Most query parameters read from a request target; later ones are ignored.
pub const MAX_QUERY_PARAMS: usize = 32;

/// Splits a request target into its path and decoded query parameters. Query values are
/// decoded without turning `+` into a space: SCEP clients put raw base64 in `message`.
pub fn split_target(target: &str) -> (&str, Vec<(String, String)>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .take(MAX_QUERY_PARAMS)
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = String::from_utf8_lossy(&percent_decode(key, false)).into_owned();
            let value = String::from_utf8_lossy(&percent_decode(value, false)).into_owned();
            (key, value)
        })
        .collect();
    (path, params)
}

/// Routes one request. `body` gives the request body, which the guard read whole within its
/// route's limit (see [`guard::body_limit`]).
pub fn route(
    ctx: &Context,
    incoming: &Incoming<'_>,
    body: &mut dyn FnMut() -> Result<Vec<u8>, Refusal>,
) -> Result<Reply, Refusal> {
    let method = incoming.method;
    match incoming.path {
        "/ota/enroll" => match method {
            "GET" | "HEAD" => {
                let proxy_header = &ctx.config.auth.proxy_user_header;
                let request = crate::gate::Phase1Request {
                    remote: &incoming.remote,
                    peer: &incoming.peer,
                    token: incoming.param("token"),
                    authorization: incoming.header("Authorization"),
                    proxy_user: (!proxy_header.is_empty())
                        .then(|| incoming.header(proxy_header))
                        .flatten(),
                };
                // HEAD passes the same gate (it counts failed logins as GET does), then
                // stops short of the challenge a GET would mint for its profile.
                let admission = crate::gate::admit(ctx, &request, now())
                    .map_err(|err| Refusal::from_gate(err, &ctx.config.auth.realm))?;
                if method == "HEAD" {
                    ota::phase1_head(ctx, &admission, &incoming.remote, now())?;
                    return Ok(Reply::profile_head("enroll.mobileconfig"));
                }
                let signed = ota::phase1(ctx, &admission, &incoming.remote, now())?;
                info!(
                    "phase 1: profile service handed out user={} token={} remote={}",
                    admission
                        .user
                        .as_deref()
                        .map_or_else(|| "-".to_string(), |u| crate::logger::one_line(u, 80)),
                    admission.token.as_deref().unwrap_or("-"),
                    incoming.remote
                );
                let mut event = crate::events::Event::new("phase1").remote(&incoming.remote);
                if let Some(user) = &admission.user {
                    event = event.field("user", user.as_str());
                }
                if let Some(token) = &admission.token {
                    event = event.field("token", token.as_str());
                }
                if admission.user.is_none() && admission.token.is_none() {
                    ctx.events
                        .record_anonymous_download(event, &incoming.remote);
                } else {
                    ctx.events.record(event);
                }
                Ok(Reply::profile(signed, "enroll.mobileconfig"))
            }
            _ => Err(method_not_allowed("GET, HEAD")),
        },
        "/ota/phase23" => match method {
            "POST" => {
                let body = body()?;
                let reply = ota::phase23(ctx, &body, &incoming.remote, now())?;
                let file = if reply.phase == 2 {
                    "identity.mobileconfig"
                } else {
                    "enrollment.mobileconfig"
                };
                Ok(Reply::profile(reply.body, file))
            }
            _ => Err(method_not_allowed("POST")),
        },
        "/mdm/enroll" => match method {
            "HEAD" if ctx.config.mdm.plain_enroll => {
                // As for phase 1: GET mints a SCEP challenge for its profile; HEAD does not.
                ota::plain_enrollment_head(ctx, &incoming.remote, now())?;
                Ok(Reply::profile_head("enrollment.mobileconfig"))
            }
            "GET" if ctx.config.mdm.plain_enroll => {
                let signed = ota::plain_enrollment(ctx, &incoming.remote, now())?;
                info!(
                    "plain enrollment profile handed out remote={}",
                    incoming.remote
                );
                ctx.events.record_anonymous_download(
                    crate::events::Event::new("plain-enroll").remote(&incoming.remote),
                    &incoming.remote,
                );
                Ok(Reply::profile(signed, "enrollment.mobileconfig"))
            }
            "GET" | "HEAD" => Err(Refusal::new(
                404,
                "/mdm/enroll: off (set mdm.plain_enroll = true to serve it)",
            )),
            "POST" if ctx.config.mdm.dep_enroll => {
                let body = body()?;
                let reply = ota::dep_enrollment(ctx, &body, &incoming.remote, now())?;
                Ok(Reply::profile(reply.body, "enrollment.mobileconfig"))
            }
            "POST" => Err(Refusal::new(
                404,
                "POST /mdm/enroll: off (set mdm.dep_enroll = true to answer DEP machine info)",
            )),
            _ => Err(method_not_allowed("GET, HEAD, POST")),
        },
        "/scep" | "/scep/pkiclient.exe" | "/cgi-bin/pkiclient.exe" => match method {
            // A PKIOperation by GET is not safe: it issues, polls or revokes. Its HEAD could
            // only be answered by doing that, so it is refused; the other operations are
            // read-only and HEAD gets what GET gets, without the body.
            "HEAD" if incoming.param("operation") == Some("PKIOperation") => {
                let mut refusal = method_not_allowed("GET, POST");
                refusal.reason = "HEAD: a PKIOperation is answered only by doing it; \
                                  send it by GET or POST"
                    .into();
                Err(refusal)
            }
            "GET" | "HEAD" | "POST" => {
                let body = if method == "POST" {
                    Some(body()?)
                } else {
                    None
                };
                let reply = scep::handle(ctx, incoming, body.as_deref())?;
                Ok(Reply::ok(reply.content_type, reply.body))
            }
            _ => Err(method_not_allowed("GET, HEAD, POST")),
        },
        "/ca" => match method {
            "GET" | "HEAD" => Ok(Reply::ok(
                "application/x-x509-ca-cert",
                ctx.ca.certificate().to_vec(),
            )),
            _ => Err(method_not_allowed("GET, HEAD")),
        },
        "/crl" => match method {
            // HEAD as GET: a stale CRL is re-signed for it too, so that the length it gives
            // is that of the CRL the next GET gets.
            "GET" | "HEAD" => {
                crate::pki::crl::current(&ctx.store, &ctx.ca, ctx.derived.crl_validity, now())
                    .map(|der| Reply::ok(crate::pki::crl::CONTENT_TYPE, der))
                    .map_err(|err| Refusal::new(500, err.to_string()))
            }
            _ => Err(method_not_allowed("GET, HEAD")),
        },
        "/healthz" => match method {
            "GET" | "HEAD" => health(ctx).map(|()| Reply::ok("text/plain", b"ok\n".to_vec())),
            _ => Err(method_not_allowed("GET, HEAD")),
        },
        "/metrics" => match method {
            "GET" | "HEAD" => {
                let gauges = crate::metrics::Gauges {
                    challenges_live: ctx.store.live_challenges(),
                };
                Ok(Reply::ok(
                    "text/plain; version=0.0.4; charset=utf-8",
                    ctx.metrics.render(&gauges).into_bytes(),
                ))
            }
            _ => Err(method_not_allowed("GET, HEAD")),
        },
        path => Err(Refusal::new(
            404,
            format!("{}: no such endpoint", truncate(path)),
        )),
    }
}

/// Routes one request and keeps what must follow before it is answered: the state log's
/// sync that makes its transactions durable (one wait for all of them), its events among
/// them ([`crate::events::EventLog::spool`]), then the events' lines written to
/// `events.jsonl` in one append ([`Pending::settle`]).
pub fn answer(
    ctx: &Context,
    incoming: &Incoming<'_>,
    body: &mut dyn FnMut() -> Result<Vec<u8>, Refusal>,
) -> (Result<Reply, Refusal>, Pending) {
    let ((reply, spooled), ticket) = ctx.store.deferring(|| {
        let (reply, events) = ctx.events.buffering(|| {
            let reply = route(ctx, incoming, body);
            if let Err(refusal) = &reply {
                record_refusal(ctx, incoming, refusal);
            }
            reply
        });
        (reply, ctx.events.spool(&ctx.store, events))
    });
    (reply, Pending { ticket, spooled })
}

/// What a request leaves to do before it is answered (see [`answer`]).
pub struct Pending {
    ticket: Option<crate::store::journal::Ticket>,
    spooled: crate::events::Spooled,
}

impl Pending {
    /// Waits until the request's state (and its events with it) is durable, then writes its
    /// events to `events.jsonl`. `Err` when the state could not be made durable; its events
    /// are then written with a sync of their own.
    pub fn settle(self, ctx: &Context) -> Result<(), crate::store::StoreError> {
        let settled = ctx.store.settle(self.ticket);
        match settled {
            Ok(()) => ctx.events.write_spooled(self.spooled),
            Err(_) => ctx.events.write_spooled_durably(self.spooled),
        }
        settled
    }
}

/// The endpoints whose HTTP refusals go into the events log. SCEP records its CertRep
/// FAILUREs itself; these catch what is refused before a CertRep can be addressed.
const RECORDED_PATHS: &[&str] = &[
    "/ota/enroll",
    "/ota/phase23",
    "/mdm/enroll",
    "/scep",
    "/scep/pkiclient.exe",
    "/cgi-bin/pkiclient.exe",
];

/// Records a refusal (4xx) or failure (5xx) of an enrollment endpoint in the events log.
fn record_refusal(ctx: &Context, incoming: &Incoming<'_>, refusal: &Refusal) {
    if !RECORDED_PATHS.contains(&incoming.path) {
        return;
    }
    let kind = if refusal.status >= 500 {
        "error"
    } else {
        "refusal"
    };
    ctx.events.record_refusal(
        crate::events::Event::new(kind)
            .field("status", refusal.status)
            .field("method", incoming.method)
            .field("path", incoming.path)
            .reason(&crate::logger::one_line(&refusal.reason, 300))
            .remote(&incoming.remote),
        &incoming.remote,
    );
}

/// Whether the server can do its work: the state dir takes a write, the CA is in its
/// validity. A 503 names what is wrong.
fn health(ctx: &Context) -> Result<(), Refusal> {
    let probe = format!(".healthz-{}", std::process::id());
    ctx.store
        .write_file(&probe, b"ok\n", 0o600)
        .and_then(|()| ctx.store.remove_file(&probe))
        .map_err(|err| Refusal::new(503, format!("state dir not writable: {err}")))?;
    crate::pki::cert::check_validity(ctx.ca.certificate(), now())
        .map_err(|err| Refusal::new(503, format!("CA certificate: {err}")))?;
    Ok(())
}

/// Most X-Forwarded-For entries looked at, from the right.
const MAX_FORWARDED_HOPS: usize = 16;

/// The client behind `peer`: where `peer` is a trusted proxy, the rightmost address of
/// X-Forwarded-For that is not itself a trusted proxy (the left part of the header is what
/// the client wrote and proves nothing); otherwise `peer` itself.
pub fn client_address(
    peer: &str,
    forwarded_for: &[&str],
    trusted: &[crate::gate::cidr::Cidr],
) -> String {
    use crate::gate::cidr::any_contains;
    let trusted_peer = crate::gate::peer_ip(peer).is_some_and(|ip| any_contains(trusted, &ip));
    if !trusted_peer || forwarded_for.is_empty() {
        return peer.to_string();
    }

    let mut client = None;
    let entries = forwarded_for
        .iter()
        .rev()
        .flat_map(|value| value.rsplit(','));
    for entry in entries.take(MAX_FORWARDED_HOPS) {
        let Ok(ip) = entry.trim().parse::<std::net::IpAddr>() else {
            // A proxy writes addresses; anything else ends what can be believed.
            break;
        };
        // ::ffff:192.0.2.1 is 192.0.2.1, for the trust check and for what is logged.
        let ip = ip.to_canonical();
        client = Some(ip);
        if !any_contains(trusted, &ip) {
            break;
        }
    }
    client.map_or_else(|| peer.to_string(), |ip| ip.to_string())
}

fn method_not_allowed(allowed: &'static str) -> Refusal {
    let mut refusal = Refusal::new(405, format!("method not allowed here (use {allowed})"));
    refusal.allow = Some(allowed);
    refusal
}

fn truncate(text: &str) -> String {
    text.chars().take(80).filter(|c| !c.is_control()).collect()
}

/// Answers one request the guard read, on the connection's thread: routes it, records a
/// refusal of an enrollment endpoint in the events log, logs a 5xx at error (the client is
/// told only that it happened) and a 4xx at warn, and counts it in the metrics.
fn handle(ctx: &Arc<Context>, request: &mut guard::Request) -> guard::Handled {
    let started = std::time::Instant::now();

    let headers = std::mem::take(&mut request.head.headers);
    let mut body = Some(std::mem::take(&mut request.body));
    let method = request.head.method.as_str();
    let (path, query) = split_target(&request.head.target);
    let incoming = Incoming {
        method,
        path,
        query,
        remote: request.remote.clone(),
        peer: std::mem::take(&mut request.peer),
        headers,
    };
    let remote = &request.remote;

    // The guard read the body whole, within its route's limit.
    let (reply, pending) = answer(ctx, &incoming, &mut || Ok(body.take().unwrap_or_default()));

    let response = match reply {
        Ok(reply) => {
            let mut headers = Vec::new();
            if let Some(file) = reply.attachment {
                headers.push((
                    "Content-Disposition",
                    format!("attachment; filename=\"{file}\""),
                ));
            }
            guard::Response {
                status: reply.status,
                content_type: reply.content_type,
                headers,
                body: reply.body,
                length_unknown: reply.length_unknown,
            }
        }
        Err(refusal) => {
            // 503 is a state the client should hear about ("try again later"), not a fault.
            let mut response = if refusal.status >= 500 && refusal.status != 503 {
                error!("{method} {path}: {} remote={remote}", refusal.reason);
                guard::Response::text(refusal.status, guard::INTERNAL_ERROR)
            } else {
                warn!(
                    "{method} {path}: {} {} remote={remote}",
                    refusal.status, refusal.reason
                );
                let reason = crate::logger::one_line(&refusal.reason, 300);
                guard::Response::text(refusal.status, &reason)
            };
            if let Some(methods) = refusal.allow {
                response.headers.push(("Allow", methods.to_string()));
            }
            response.headers.extend(refusal.headers);
            response
        }
    };

    // Phases 2 and 3 count themselves (only the OTA code knows which one a body was).
    let route = crate::metrics::route_label(path);
    let counted_phase = match (path, method) {
        ("/ota/enroll", "GET") => Some("1"),
        ("/mdm/enroll", "POST") => Some("dep"),
        _ => None,
    };
    let (method, path, remote) = (method.to_string(), path.to_string(), remote.clone());
    let ctx = Arc::clone(ctx);

    // Waiting for the disk, with the worker's permit given back: what the request wrote is
    // durable, and its events written, before it is answered.
    let then = move |response: &mut guard::Response| {
        if let Err(err) = pending.settle(&ctx) {
            error!("{method} {path}: state not saved: {err} remote={remote}");
            *response = guard::Response::text(500, guard::INTERNAL_ERROR);
        }
        ctx.metrics
            .request(route, response.status, started.elapsed());
        if let Some(phase) = counted_phase {
            ctx.metrics
                .phase(phase, crate::metrics::outcome_of_status(response.status));
        }
    };
    guard::Handled {
        response,
        then: Some(Box::new(then)),
    }
}

/// Serves on `listener` (in TLS with `tls`) until `shutdown` says stop and the connections
/// in flight are done: the guard reads each request and calls the router on the
/// connection's own thread, at most `http.workers` at once.
pub fn serve(
    ctx: Arc<Context>,
    listener: TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
    shutdown: Arc<guard::Shutdown>,
) {
    let limits = guard::Limits {
        max_connections: ctx.config.http.max_connections,
        max_body: ctx.config.http.max_body,
        request_timeout: ctx.derived.request_timeout,
        workers: ctx.derived.workers,
    };
    let service = guard::Service {
        limits,
        trusted_proxies: ctx.derived.trusted_proxies.clone(),
        tls,
        shutdown,
        metrics: Arc::clone(&ctx.metrics),
        handler: Arc::new(move |request: &mut guard::Request| handle(&ctx, request)),
    };
    guard::run(listener, service);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy_and_only_up_to_it() {
        let trusted = vec![
            crate::gate::cidr::Cidr::parse("10.0.0.0/8").unwrap(),
            crate::gate::cidr::Cidr::parse("::1/128").unwrap(),
        ];
        let proxy = "10.1.2.3:40000";
        let cases: [(&str, &[&str], &str); 10] = [
            (proxy, &["203.0.113.9"], "203.0.113.9"),
            // What the client itself wrote on the left proves nothing.
            (proxy, &["6.6.6.6, 203.0.113.9"], "203.0.113.9"),
            // A chain of trusted proxies is walked to the first untrusted hop.
            (proxy, &["203.0.113.9, 10.9.9.9"], "203.0.113.9"),
            // Several headers are one list, in order.
            (proxy, &["203.0.113.9", "10.9.9.9"], "203.0.113.9"),
            (proxy, &[], proxy),
            (proxy, &["not-an-address"], proxy),
            (proxy, &["6.6.6.6, junk, 10.9.9.9"], "10.9.9.9"),
            ("[::1]:5000", &["2001:db8::7"], "2001:db8::7"),
            ("192.0.2.1:5000", &["203.0.113.9"], "192.0.2.1:5000"),
            // The proxy written as an IPv4-mapped address is still the proxy.
            (proxy, &["203.0.113.9, ::ffff:10.9.9.9"], "203.0.113.9"),
        ];
        for (peer, header, expected) in cases {
            assert_eq!(
                client_address(peer, header, &trusted),
                expected,
                "{peer} {header:?}"
            );
        }
        let long = vec!["10.0.0.1"; 100].join(",");
        assert_eq!(client_address(proxy, &[&long], &trusted), "10.0.0.1");
    }

    #[test]
    fn query_keeps_raw_plus_and_decodes_escapes() {
        let (path, query) = split_target("/scep?operation=PKIOperation&message=ab+c%2Fd%3D");
        assert_eq!(path, "/scep");
        assert_eq!(
            query[0],
            ("operation".to_string(), "PKIOperation".to_string())
        );
        assert_eq!(query[1].1, "ab+c/d=");
    }

    /// A request as the router sees it, from the guard's loopback client.
    fn incoming<'a>(method: &'a str, target: &'a str) -> Incoming<'a> {
        let (path, query) = split_target(target);
        Incoming {
            method,
            path,
            query,
            remote: "127.0.0.1:5000".into(),
            peer: "127.0.0.1:5000".into(),
            headers: Vec::new(),
        }
    }

    /// Routes `method target` with no body.
    fn answer(ctx: &Context, method: &str, target: &str) -> Result<Reply, Refusal> {
        route(ctx, &incoming(method, target), &mut || Ok(Vec::new()))
    }

    /// A server context on a fresh state dir, as `otad init` makes it.
    fn context() -> (tempfile::TempDir, Context) {
        let (dir, config) = crate::commands::test_state();
        (dir, Context::load(&config).unwrap())
    }

    #[test]
    fn head_gets_what_get_gets_on_every_read_only_route() {
        let (_dir, ctx) = context();
        let targets = [
            "/ca",
            "/crl",
            "/healthz",
            "/scep?operation=GetCACaps",
            "/scep?operation=GetCACert",
            "/cgi-bin/pkiclient.exe?operation=GetCACert",
            "/scep?operation=GetNextCACert",
            "/scep?operation=Nonsense",
            "/mdm/enroll",
            "/nowhere",
        ];
        for target in targets {
            let outcome = |method| match answer(&ctx, method, target) {
                Ok(reply) => (reply.status, reply.content_type, reply.body, false),
                Err(refusal) => (refusal.status, "", refusal.reason.into_bytes(), true),
            };
            let (get, head) = (outcome("GET"), outcome("HEAD"));
            assert_eq!(head, get, "HEAD {target}");
        }
        // The guard leaves the body out of a HEAD answer; the router only says what it is.
        let ca = answer(&ctx, "HEAD", "/ca").unwrap();
        assert_eq!(ca.body, ctx.ca.certificate());
        assert!(
            !ca.length_unknown,
            "its Content-Length is the certificate's"
        );

        // /metrics counts requests between two looks; the kind of answer is the same.
        let metrics = answer(&ctx, "HEAD", "/metrics").unwrap();
        assert_eq!(metrics.status, 200);
        assert_eq!(
            metrics.content_type,
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert!(!metrics.length_unknown);
    }

    #[test]
    fn head_of_an_enrollment_profile_mints_no_challenge() {
        let (_dir, mut ctx) = context();
        ctx.config.mdm.plain_enroll = true;
        for (target, file) in [
            ("/ota/enroll", "enroll.mobileconfig"),
            ("/mdm/enroll", "enrollment.mobileconfig"),
        ] {
            let reply = answer(&ctx, "HEAD", target).unwrap();
            assert_eq!(reply.status, 200, "{target}");
            assert_eq!(reply.content_type, PROFILE_CONTENT_TYPE, "{target}");
            assert_eq!(reply.attachment, Some(file), "{target}");
            assert!(reply.body.is_empty(), "{target}");
            assert!(reply.length_unknown, "{target}: no length to give");
            assert_eq!(
                ctx.store.live_challenges(),
                0,
                "HEAD {target} left a challenge"
            );
        }
        // GET does mint one, which is what HEAD must not do.
        let reply = answer(&ctx, "GET", "/ota/enroll").unwrap();
        assert!(!reply.body.is_empty() && !reply.length_unknown);
        assert_eq!(ctx.store.live_challenges(), 1);
    }

    #[test]
    fn head_of_phase_1_is_refused_where_get_would_be() {
        let (_dir, mut ctx) = context();
        ctx.config.ota.require_token = true;
        let status =
            |ctx: &Context, method| answer(ctx, method, "/ota/enroll").err().map(|r| r.status);
        assert_eq!(status(&ctx, "GET"), Some(403));
        assert_eq!(status(&ctx, "HEAD"), Some(403));

        // At `ota.max_live_challenges`, GET would be 503; so is HEAD, and it frees nothing.
        ctx.config.ota.require_token = false;
        ctx.config.ota.max_live_challenges = 1;
        ctx.config.mdm.plain_enroll = true;
        assert_eq!(status(&ctx, "GET"), None);
        for target in ["/ota/enroll", "/mdm/enroll"] {
            for method in ["GET", "HEAD"] {
                let refused = answer(&ctx, method, target).err().map(|r| r.status);
                assert_eq!(refused, Some(503), "{method} {target}");
            }
        }
        assert_eq!(ctx.store.live_challenges(), 1);

        // A static challenge mints nothing, so there is no room to check.
        ctx.config.ota.challenge = "static".into();
        assert_eq!(status(&ctx, "HEAD"), None);
    }

    /// Routes `method target` with no body from the client at `remote`.
    fn answer_from(
        ctx: &Context,
        method: &str,
        target: &str,
        remote: &str,
    ) -> Result<Reply, Refusal> {
        let mut from = incoming(method, target);
        from.remote = remote.into();
        route(ctx, &from, &mut || Ok(Vec::new()))
    }

    fn retry_after(refusal: &Refusal) -> Option<&str> {
        refusal
            .headers
            .iter()
            .find(|(name, _)| *name == "Retry-After")
            .map(|(_, value)| value.as_str())
    }

    #[test]
    fn one_address_is_bounded_on_phase_1_and_plain_enrollment_together() {
        let (_dir, mut ctx) = context();
        ctx.config.ota.max_live_challenges_per_client = 3;
        ctx.config.mdm.plain_enroll = true;
        let school = "198.51.100.7:50000";
        for target in ["/ota/enroll", "/mdm/enroll", "/ota/enroll"] {
            assert!(answer_from(&ctx, "GET", target, school).is_ok(), "{target}");
        }
        for (method, target) in [
            ("GET", "/ota/enroll"),
            ("HEAD", "/ota/enroll"),
            ("GET", "/mdm/enroll"),
            ("HEAD", "/mdm/enroll"),
        ] {
            let refused = answer_from(&ctx, method, target, school).err().unwrap();
            assert_eq!(refused.status, 429, "{method} {target}");
            assert_eq!(
                refused.reason,
                "3 enrollments from 198.51.100.7 are waiting for their device, the most one \
                 address may start (ota.max_live_challenges_per_client); try again later"
            );
            // The challenge TTLs are an hour: at most a minute is asked for.
            assert_eq!(retry_after(&refused), Some("60"), "{method} {target}");
        }
        assert_eq!(ctx.store.live_challenges(), 3, "a refusal mints nothing");

        // Another address is not held back; an IPv6 client counts as its /64.
        assert!(answer_from(&ctx, "GET", "/ota/enroll", "192.0.2.8:1").is_ok());
        for host in ["1", "2", "3"] {
            let remote = format!("[2001:db8:7:7::{host}]:443");
            assert!(answer_from(&ctx, "GET", "/ota/enroll", &remote).is_ok());
        }
        let refused = answer_from(&ctx, "GET", "/ota/enroll", "[2001:db8:7:7:ffff::1]:443");
        let refused = refused.err().unwrap();
        assert_eq!(refused.status, 429);
        assert!(
            refused
                .reason
                .starts_with("3 enrollments from 2001:db8:7:7::/64 are waiting"),
            "{}",
            refused.reason
        );

        // 0: no bound, only the cap on all of them.
        ctx.config.ota.max_live_challenges_per_client = 0;
        assert!(answer_from(&ctx, "GET", "/ota/enroll", school).is_ok());
        ctx.config.ota.max_live_challenges = ctx.store.live_challenges();
        let full = answer_from(&ctx, "GET", "/ota/enroll", "203.0.113.1:1")
            .err()
            .unwrap();
        assert_eq!(full.status, 503);
        assert_eq!(
            full.reason,
            "8 enrollments are waiting for their device, the most the server takes \
             (ota.max_live_challenges); try again later"
        );
        assert_eq!(retry_after(&full), Some("60"));
    }

    #[test]
    fn head_of_a_pki_operation_is_refused_and_does_nothing() {
        let (_dir, ctx) = context();
        let before = ctx.store.live_challenges();
        for path in ["/scep", "/scep/pkiclient.exe", "/cgi-bin/pkiclient.exe"] {
            let target = format!("{path}?operation=PKIOperation&message=MIIB");
            let refusal = answer(&ctx, "HEAD", &target).err().unwrap();
            assert_eq!(refusal.status, 405, "{target}");
            assert_eq!(refusal.allow, Some("GET, POST"), "{target}");
            assert!(
                refusal.reason.contains("PKIOperation"),
                "{}",
                refusal.reason
            );
            // GET reads the message (and refuses this one as unreadable).
            let get = answer(&ctx, "GET", &target).err().unwrap();
            assert_eq!(get.status, 400, "{target}");
        }
        assert_eq!(ctx.store.live_challenges(), before);
    }

    #[test]
    fn allow_lists_head_wherever_get_is_allowed() {
        let (_dir, ctx) = context();
        let cases = [
            ("POST", "/ca", "GET, HEAD"),
            ("PUT", "/crl", "GET, HEAD"),
            ("POST", "/healthz", "GET, HEAD"),
            ("DELETE", "/metrics", "GET, HEAD"),
            ("POST", "/ota/enroll", "GET, HEAD"),
            ("PUT", "/mdm/enroll", "GET, HEAD, POST"),
            ("PUT", "/scep?operation=GetCACaps", "GET, HEAD, POST"),
            ("HEAD", "/ota/phase23", "POST"),
            ("GET", "/ota/phase23", "POST"),
        ];
        for (method, target, allow) in cases {
            let refusal = answer(&ctx, method, target).err().unwrap();
            assert_eq!(
                (refusal.status, refusal.allow),
                (405, Some(allow)),
                "{method} {target}"
            );
        }
    }

    #[test]
    fn percent_decoding_tolerates_broken_escapes() {
        assert_eq!(percent_decode("%4", false), b"%4");
        assert_eq!(percent_decode("%zz", false), b"%zz");
        assert_eq!(percent_decode("a+b", true), b"a b");
    }
}
