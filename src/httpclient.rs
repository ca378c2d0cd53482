//! A minimal blocking HTTP/1.1 client for `http://` URLs, used by `otad simulate` to talk to a
//! running otad the way a device would, and by the events webhook ([`post_with`], which also
//! speaks `https://` through rustls when given a TLS config).
//!
//! One request per connection (`Connection: close`), no redirects, no cookies, no proxies: it
//! only ever talks to the URL it is given. Everything read from the server is bounded (header
//! count, header bytes, body bytes) and every socket operation has a timeout, so a hostile or
//! stuck server can make a request fail but not hang or exhaust memory. Framing follows
//! [RFC 9112](https://www.rfc-editor.org/rfc/rfc9112): Content-Length, chunked, or to EOF.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Most response headers read.
pub const MAX_HEADERS: usize = 64;
/// Most bytes in the status line and headers together (chunked trailers count too).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Largest response body accepted.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Connect, read and write timeout.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 8 * 1024;
/// Longest chunk-size line of a chunked body (size, extensions, CRLF).
const MAX_CHUNK_LINE: usize = 1024;
/// Most chunks in one chunked body; a server sending one-byte chunks cannot spin us forever.
const MAX_CHUNKS: usize = 64 * 1024;

/// Why a request failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL is not `http://host[:port][/path][?query]`.
    InvalidUrl(&'static str),
    /// The Content-Type given for a POST body contains control characters.
    InvalidContentType,
    /// An extra request header's name or value is empty or has control characters.
    InvalidHeader,
    /// The URL is `https://`, which this client cannot speak yet.
    TlsNotSupported,
    /// The URL's scheme is neither `http` nor `https`.
    UnsupportedScheme(String),
    /// The host name resolved to no address.
    Resolve {
        /// host:port as in the URL.
        authority: String,
        /// Why, if the resolver said.
        source: Option<io::Error>,
    },
    /// No address of the host accepted a connection.
    Connect {
        /// host:port as in the URL.
        authority: String,
        /// The last connection error.
        source: io::Error,
    },
    /// Writing the request failed.
    Send(io::Error),
    /// Reading the response failed (timeouts included).
    Receive(io::Error),
    /// The server closed the connection before a complete status line and headers.
    HeadersTruncated,
    /// The status line is not `HTTP/1.x NNN reason`.
    StatusLineMalformed,
    /// A header line is not `name: value`.
    HeaderMalformed,
    /// More than [`MAX_HEADERS`] headers.
    TooManyHeaders,
    /// More than [`MAX_HEADER_BYTES`] of status line and headers.
    HeadersTooLarge,
    /// Content-Length is not a number, or differs between two headers.
    ContentLengthInvalid,
    /// A Transfer-Encoding other than chunked.
    TransferEncodingUnsupported(String),
    /// A chunked body's framing is broken.
    ChunkMalformed,
    /// The body is larger than [`MAX_BODY_BYTES`].
    BodyTooLarge,
    /// The connection closed before the whole body arrived.
    BodyTruncated {
        /// Bytes announced.
        expected: usize,
        /// Bytes received.
        received: usize,
    },
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::InvalidUrl(why) => write!(f, "url: {why}"),
            HttpError::InvalidContentType => {
                f.write_str("request: content type contains control characters")
            }
            HttpError::InvalidHeader => {
                f.write_str("request: a header name or value is empty or has control characters")
            }
            HttpError::TlsNotSupported => f.write_str(
                "url: https needs a certificate to check the server with \
                     (otad simulate --ca-file FILE)",
            ),
            HttpError::UnsupportedScheme(scheme) => {
                write!(f, "url: scheme {scheme:?} is not supported (use http://)")
            }
            HttpError::Resolve {
                authority,
                source: Some(err),
            } => {
                write!(f, "{authority}: cannot resolve: {err}")
            }
            HttpError::Resolve {
                authority,
                source: None,
            } => {
                write!(f, "{authority}: resolves to no address")
            }
            HttpError::Connect { authority, source } => {
                write!(f, "{authority}: cannot connect: {source}")
            }
            HttpError::Send(err) => write!(f, "request: cannot send: {err}"),
            HttpError::Receive(err) => write!(f, "response: cannot read: {err}"),
            HttpError::HeadersTruncated => {
                f.write_str("response: connection closed before the headers ended")
            }
            HttpError::StatusLineMalformed => f.write_str("response: malformed status line"),
            HttpError::HeaderMalformed => f.write_str("response: malformed header line"),
            HttpError::TooManyHeaders => write!(f, "response: more than {MAX_HEADERS} headers"),
            HttpError::HeadersTooLarge => {
                write!(
                    f,
                    "response: headers over the {MAX_HEADER_BYTES} bytes allowed"
                )
            }
            HttpError::ContentLengthInvalid => f.write_str("response: invalid Content-Length"),
            HttpError::TransferEncodingUnsupported(te) => {
                write!(f, "response: transfer encoding {te:?} is not supported")
            }
            HttpError::ChunkMalformed => f.write_str("response: malformed chunked body"),
            HttpError::BodyTooLarge => {
                write!(f, "response: body over the {MAX_BODY_BYTES} bytes allowed")
            }
            HttpError::BodyTruncated { expected, received } => write!(
                f,
                "response: body truncated ({received} of {expected} bytes received)"
            ),
        }
    }
}

impl std::error::Error for HttpError {}

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The Content-Type header, as sent (parameters included), if there was one.
    pub content_type: Option<String>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Every header as sent (name, trimmed value), in order.
    pub headers: Vec<(String, String)>,
}

impl HttpResponse {
    /// The media type of Content-Type without parameters, lowercase
    /// ("application/x-pki-message" for "application/x-pki-message; charset=binary").
    pub fn media_type(&self) -> Option<String> {
        let content_type = self.content_type.as_deref()?;
        let media = content_type.split(';').next().unwrap_or_default().trim();
        Some(media.to_ascii_lowercase())
    }

    /// The first value of the header `name` (compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<HttpResponse, HttpError> {
    request("GET", url, None, &[])
}

/// `GET url` with extra request headers (Authorization, say). A name or value with control
/// characters is refused, so nothing can break out of its header line.
pub fn get_with_headers(url: &str, headers: &[(&str, &str)]) -> Result<HttpResponse, HttpError> {
    request("GET", url, None, headers)
}

/// `POST url` with a body of the given Content-Type.
pub fn post(url: &str, content_type: &str, body: &[u8]) -> Result<HttpResponse, HttpError> {
    request("POST", url, Some((content_type, body)), &[])
}

/// How [`post_with`] sends: its timeouts, extra headers and TLS.
#[derive(Clone)]
pub struct RequestOptions {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of each read and write.
    pub io_timeout: Duration,
    /// From connecting to the end of the response: a server that trickles its answer a byte
    /// at a time is cut off here, at most one `io_timeout` later.
    pub total_timeout: Duration,
    /// Extra headers, each `(name, value)`; values with control characters are refused.
    pub headers: Vec<(String, String)>,
    /// The TLS client config for `https://` URLs; without it they are refused.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// User-Agent.
    pub user_agent: &'static str,
}

/// Most CA certificates read from one PEM file.
const MAX_CA_CERTIFICATES: usize = 256;

/// A rustls client config on aws-lc-rs, trusting the certificates of the PEM file `ca_file`
/// (named `key` in errors, a config key or a flag) or else the system's roots.
pub fn tls_config(
    key: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let shown = path.display();
            let pem = crate::store::fsutil::read_bounded(path, 4 * 1024 * 1024)
                .map_err(|err| format!("{key} {shown}: cannot read: {err}"))?;
            let certificates = CertificateDer::pem_slice_iter(&pem)
                .take(MAX_CA_CERTIFICATES)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| format!("{key} {shown}: not PEM: {err}"))?;
            for certificate in certificates {
                roots
                    .add(certificate)
                    .map_err(|err| format!("{key} {shown}: {err}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for err in &found.errors {
                log::warn!("system root certificates: {err}");
            }
            roots.add_parsable_certificates(found.certs);
        }
    }
    if roots.is_empty() {
        return Err(format!(
            "no root certificate to check the server with; give {key} a PEM file"
        ));
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS: {err}"))
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
}

/// The TLS client config [`get`] and [`post`] use for `https://` URLs (the simulator's).
static REQUEST_TLS: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> =
    std::sync::OnceLock::new();

/// Lets [`get`] and [`post`] speak TLS, checking servers with `config`; false when a config
/// was set already (the first one stays).
pub fn enable_tls(config: std::sync::Arc<rustls::ClientConfig>) -> bool {
    REQUEST_TLS.set(config).is_ok()
}

/// `POST url` with a body, extra headers, timeouts and (for `https://`) TLS.
pub fn post_with(
    url: &str,
    content_type: &str,
    body: &[u8],
    options: &RequestOptions,
) -> Result<HttpResponse, HttpError> {
    let target = parse_url_for(url, options.tls.is_some())?;
    let unsafe_text = |text: &str| text.chars().any(|c| c.is_control());
    if unsafe_text(content_type)
        || options
            .headers
            .iter()
            .any(|(name, value)| unsafe_text(name) || unsafe_text(value) || name.contains(':'))
    {
        return Err(HttpError::InvalidContentType);
    }
    let deadline = Instant::now() + options.total_timeout;
    let stream = connect_with(&target, options.connect_timeout)?;
    for set in [
        stream.set_read_timeout(Some(options.io_timeout)),
        stream.set_write_timeout(Some(options.io_timeout)),
    ] {
        set.map_err(HttpError::Send)?;
    }

    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {}\r\nAccept: */*\r\n\
         Connection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        target.path,
        target.authority(),
        options.user_agent,
        body.len()
    );
    for (name, value) in &options.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    message.extend_from_slice(body);

    match (&options.tls, target.tls) {
        (Some(config), true) => {
            let name = rustls::pki_types::ServerName::try_from(target.connect_host.clone())
                .map_err(|_| HttpError::InvalidUrl("not a valid TLS server name"))?;
            let connection = rustls::ClientConnection::new(std::sync::Arc::clone(config), name)
                .map_err(|err| HttpError::Send(io::Error::other(err)))?;
            let mut tls = rustls::StreamOwned::new(connection, stream);
            tls.write_all(&message)
                .and_then(|()| tls.flush())
                .map_err(HttpError::Send)?;
            read_response(&mut BufReader::new(Deadline {
                inner: tls,
                deadline,
            }))
        }
        _ => {
            let mut writer = &stream;
            writer
                .write_all(&message)
                .and_then(|()| writer.flush())
                .map_err(HttpError::Send)?;
            read_response(&mut BufReader::new(Deadline {
                inner: &stream,
                deadline,
            }))
        }
    }
}

/// A reader that refuses to read past `deadline`.
struct Deadline<R> {
    inner: R,
    deadline: Instant,
}

impl<R: Read> Read for Deadline<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() >= self.deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the whole response took too long",
            ));
        }
        self.inner.read(buf)
    }
}

/// The parts of an `http://` URL this client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// Host as written (brackets kept for IPv6), for the Host header.
    host: String,
    /// Host as given to the resolver (brackets removed).
    connect_host: String,
    /// Port, 80 unless given.
    port: u16,
    /// Path and query, `/` when the URL has none.
    path: String,
    /// `https://`: speak TLS to the host.
    tls: bool,
}

impl Target {
    /// host:port, for messages and the Host header.
    fn authority(&self) -> String {
        if self.port == if self.tls { 443 } else { 80 } {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Checks that [`post_with`] can send to `url` (`https://` too when `https_ok`), so that a URL
/// it could never reach is refused once, at start-up, rather than on every try.
pub fn check_url(url: &str, https_ok: bool) -> Result<(), HttpError> {
    parse_url_for(url, https_ok).map(|_| ())
}

/// `url` as it may be shown in a log line or an error. The host part ends where this
/// client ends it (at the first `/`, `?` or `#`); a user and password before its last `@`
/// and the query (which often carries a key) are replaced by placeholders, and a fragment
/// is left out. An `@` after the host part (a password holding an unencoded `/`, `?` or
/// `#`, or an `@` in the path) hides everything but the scheme: what follows may be a
/// secret, and the host it seems to name is not the one this client would connect to.
pub fn mask_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let (authority, tail) = host_part_and_rest(rest);
    if tail.contains('@') {
        return format!("{scheme}(not shown: an @ after the host part)");
    }

    let (credentials, host) = match authority.rsplit_once('@') {
        Some((_, host)) => ("(credentials not shown)@", host),
        None => ("", authority),
    };
    let (path, query) = match tail.find(['?', '#']) {
        Some(at) => {
            let (path, after) = tail.split_at_checked(at).unwrap_or((tail, ""));
            let query = if after.starts_with('?') {
                "?(query not shown)"
            } else {
                ""
            };
            (path, query)
        }
        None => (tail, ""),
    };
    format!("{scheme}{credentials}{host}{path}{query}")
}

/// Whether `url` carries a user or password in its host part (as this client reads it).
pub fn has_credentials(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    host_part_and_rest(rest).0.contains('@')
}

/// The host part of what follows `scheme://` (up to the first `/`, `?` or `#`) and the rest.
pub(crate) fn host_part_and_rest(rest: &str) -> (&str, &str) {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    rest.split_at_checked(end).unwrap_or((rest, ""))
}

/// Splits an `http://` URL. Control characters and spaces are refused so that nothing from the
/// URL can break out of the request line or the Host header.
#[cfg(test)]
fn parse_url(url: &str) -> Result<Target, HttpError> {
    parse_url_for(url, false)
}

/// Splits an `http://` URL, or an `https://` one when `https_ok`.
fn parse_url_for(url: &str, https_ok: bool) -> Result<Target, HttpError> {
    if url.len() > MAX_URL_LEN {
        return Err(HttpError::InvalidUrl("too long"));
    }
    if url.chars().any(|c| c.is_control() || c == ' ') {
        return Err(HttpError::InvalidUrl(
            "contains spaces or control characters",
        ));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(HttpError::InvalidUrl(
            "no scheme (expected http://host/...)",
        ));
    };
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" if https_ok => true,
        "https" => return Err(HttpError::TlsNotSupported),
        _ => return Err(HttpError::UnsupportedScheme(scheme.to_string())),
    };

    // The fragment is never sent.
    let rest = rest.split('#').next().unwrap_or_default();
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at_checked(split).unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(HttpError::InvalidUrl("user information is not supported"));
    }
    let (host, port) = split_authority(authority, if tls { 443 } else { 80 })?;
    let connect_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if connect_host.is_empty() {
        return Err(HttpError::InvalidUrl("no host"));
    }
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok(Target {
        host: host.to_string(),
        connect_host,
        port,
        path,
        tls,
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_authority(authority: &str, default_port: u16) -> Result<(&str, u16), HttpError> {
    let (host, port) = if authority.starts_with('[') {
        let Some(end) = authority.find(']') else {
            return Err(HttpError::InvalidUrl("unterminated IPv6 address"));
        };
        let (host, after) = authority
            .split_at_checked(end + 1)
            .ok_or(HttpError::InvalidUrl("unterminated IPv6 address"))?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(HttpError::InvalidUrl("junk after the IPv6 address")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => default_port,
        Some(port) => port
            .parse::<u16>()
            .map_err(|_| HttpError::InvalidUrl("bad port"))?,
    };
    if port == 0 {
        return Err(HttpError::InvalidUrl("bad port"));
    }
    Ok((host, port))
}

/// One request on a fresh connection.
fn request(
    method: &str,
    url: &str,
    body: Option<(&str, &[u8])>,
    headers: &[(&str, &str)],
) -> Result<HttpResponse, HttpError> {
    let tls = REQUEST_TLS.get();
    let target = parse_url_for(url, tls.is_some())?;
    if let Some((content_type, _)) = body {
        if content_type.chars().any(|c| c.is_control()) {
            return Err(HttpError::InvalidContentType);
        }
    }
    if headers.iter().any(|(name, value)| {
        name.is_empty()
            || name.contains(':')
            || format!("{name}{value}").chars().any(char::is_control)
    }) {
        return Err(HttpError::InvalidHeader);
    }

    let stream = connect(&target)?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(HttpError::Send)?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(HttpError::Send)?;

    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: otad-simulate\r\nAccept: */*\r\n\
         Connection: close\r\n",
        target.path,
        target.authority()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let payload = match body {
        Some((content_type, bytes)) => {
            head.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                bytes.len()
            ));
            bytes
        }
        None => &[][..],
    };
    head.push_str("\r\n");

    // One buffer, one write: small requests leave in one segment.
    let mut message = head.into_bytes();
    message.extend_from_slice(payload);
    if let (Some(config), true) = (tls, target.tls) {
        let name = rustls::pki_types::ServerName::try_from(target.connect_host.clone())
            .map_err(|_| HttpError::InvalidUrl("not a valid TLS server name"))?;
        let connection = rustls::ClientConnection::new(std::sync::Arc::clone(config), name)
            .map_err(|err| HttpError::Send(io::Error::other(err)))?;
        let mut stream = rustls::StreamOwned::new(connection, stream);
        stream
            .write_all(&message)
            .and_then(|()| stream.flush())
            .map_err(HttpError::Send)?;
        return read_response(&mut BufReader::new(stream));
    }
    let mut writer = &stream;
    writer
        .write_all(&message)
        .and_then(|()| writer.flush())
        .map_err(HttpError::Send)?;

    read_response(&mut BufReader::new(&stream))
}

/// Connects to the first address of the host that answers.
fn connect(target: &Target) -> Result<TcpStream, HttpError> {
    connect_with(target, TIMEOUT)
}

/// Connects to the first address of the host that answers within `timeout` each.
fn connect_with(target: &Target, timeout: Duration) -> Result<TcpStream, HttpError> {
    let authority = target.authority();
    let addresses = (target.connect_host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|err| HttpError::Resolve {
            authority: authority.clone(),
            source: Some(err),
        })?;

    let mut last = None;
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => return Ok(stream),
            Err(err) => last = Some(err),
        }
    }
    Err(match last {
        Some(source) => HttpError::Connect { authority, source },
        None => HttpError::Resolve {
            authority,
            source: None,
        },
    })
}

/// Reads one line (up to and including LF) of at most `limit` bytes; `None` at EOF.
fn read_line(reader: &mut impl BufRead, limit: usize) -> Result<Option<Vec<u8>>, HttpError> {
    let mut line = Vec::new();
    let read = reader
        .take(limit as u64)
        .read_until(b'\n', &mut line)
        .map_err(HttpError::Receive)?;
    if read == 0 {
        return Ok(None);
    }
    Ok(Some(line))
}

/// Strips the line ending (CRLF, or a bare LF some servers send).
fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Reads a status line, headers and body.
fn read_response(reader: &mut impl BufRead) -> Result<HttpResponse, HttpError> {
    let mut header_budget = MAX_HEADER_BYTES;

    let status_line = read_header_line(reader, &mut header_budget)?;
    let status = parse_status_line(&status_line)?;

    let mut headers: Vec<(String, String)> = Vec::new();
    loop {
        let line = read_header_line(reader, &mut header_budget)?;
        if line.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        headers.push(parse_header(&line)?);
    }

    let header = |name: &'static str| header_values(&headers, name);
    let content_type = header("content-type").next().cloned();

    // RFC 9112 section 6.3: these never have a body, whatever the headers say.
    let body = if (100..200).contains(&status) || status == 204 || status == 304 {
        Vec::new()
    } else if let Some(encoding) = header("transfer-encoding").last() {
        if !encoding.trim().eq_ignore_ascii_case("chunked") {
            return Err(HttpError::TransferEncodingUnsupported(encoding.clone()));
        }
        read_chunked(reader, header_budget)?
    } else {
        let mut lengths = header("content-length").map(|v| v.trim().parse::<usize>());
        match lengths.next() {
            None => read_to_eof(reader)?,
            Some(first) => {
                let first = first.map_err(|_| HttpError::ContentLengthInvalid)?;
                if lengths.any(|other| other.ok() != Some(first)) {
                    return Err(HttpError::ContentLengthInvalid);
                }
                read_exact_body(reader, first)?
            }
        }
    };

    Ok(HttpResponse {
        status,
        content_type,
        body,
        headers,
    })
}

/// The values of every header called `name`, in order.
fn header_values<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a String> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// One status or header line without its line ending, charged to the header budget.
fn read_header_line(reader: &mut impl BufRead, budget: &mut usize) -> Result<Vec<u8>, HttpError> {
    let Some(line) = read_line(reader, budget.saturating_add(1))? else {
        return Err(HttpError::HeadersTruncated);
    };
    if line.len() > *budget {
        return Err(HttpError::HeadersTooLarge);
    }
    *budget -= line.len();
    if !line.ends_with(b"\n") {
        return Err(HttpError::HeadersTruncated);
    }
    Ok(trim_eol(&line).to_vec())
}

/// `HTTP/1.1 200 OK` → 200.
fn parse_status_line(line: &[u8]) -> Result<u16, HttpError> {
    let text = std::str::from_utf8(line).map_err(|_| HttpError::StatusLineMalformed)?;
    let mut parts = text.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(HttpError::StatusLineMalformed);
    }
    let status = code
        .parse::<u16>()
        .map_err(|_| HttpError::StatusLineMalformed)?;
    if !(100..=999).contains(&status) {
        return Err(HttpError::StatusLineMalformed);
    }
    Ok(status)
}

/// `Name: value` → (name, trimmed value).
fn parse_header(line: &[u8]) -> Result<(String, String), HttpError> {
    let text = std::str::from_utf8(line).map_err(|_| HttpError::HeaderMalformed)?;
    let (name, value) = text.split_once(':').ok_or(HttpError::HeaderMalformed)?;
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(HttpError::HeaderMalformed);
    }
    Ok((name.to_string(), value.trim().to_string()))
}

/// A body of exactly `length` bytes.
fn read_exact_body(reader: &mut impl Read, length: usize) -> Result<Vec<u8>, HttpError> {
    if length > MAX_BODY_BYTES {
        return Err(HttpError::BodyTooLarge);
    }
    let mut body = Vec::with_capacity(length);
    reader
        .take(length as u64)
        .read_to_end(&mut body)
        .map_err(HttpError::Receive)?;
    if body.len() != length {
        return Err(HttpError::BodyTruncated {
            expected: length,
            received: body.len(),
        });
    }
    Ok(body)
}

/// A body that ends when the server closes the connection.
fn read_to_eof(reader: &mut impl Read) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    reader
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(HttpError::Receive)?;
    if body.len() > MAX_BODY_BYTES {
        return Err(HttpError::BodyTooLarge);
    }
    Ok(body)
}

/// A chunked body (RFC 9112 section 7.1); trailers are read and dropped, charged to what is
/// left of the header budget.
fn read_chunked(
    reader: &mut impl BufRead,
    mut trailer_budget: usize,
) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    for _ in 0..MAX_CHUNKS {
        let Some(line) = read_line(reader, MAX_CHUNK_LINE)? else {
            return Err(HttpError::ChunkMalformed);
        };
        if !line.ends_with(b"\n") {
            return Err(HttpError::ChunkMalformed);
        }
        let size = parse_chunk_size(trim_eol(&line))?;

        if size == 0 {
            loop {
                let trailer = read_header_line(reader, &mut trailer_budget)?;
                if trailer.is_empty() {
                    return Ok(body);
                }
            }
        }

        if size > MAX_BODY_BYTES.saturating_sub(body.len()) {
            return Err(HttpError::BodyTooLarge);
        }
        let before = body.len();
        reader
            .take(size as u64)
            .read_to_end(&mut body)
            .map_err(HttpError::Receive)?;
        if body.len() - before != size {
            return Err(HttpError::ChunkMalformed);
        }
        let Some(end) = read_line(reader, 2)? else {
            return Err(HttpError::ChunkMalformed);
        };
        if !trim_eol(&end).is_empty() || !end.ends_with(b"\n") {
            return Err(HttpError::ChunkMalformed);
        }
    }
    Err(HttpError::ChunkMalformed)
}

/// The hex size before any `;extension`.
fn parse_chunk_size(line: &[u8]) -> Result<usize, HttpError> {
    let text = std::str::from_utf8(line).map_err(|_| HttpError::ChunkMalformed)?;
    let hex = text.split(';').next().unwrap_or_default().trim();
    if hex.is_empty() || hex.len() > 8 {
        return Err(HttpError::ChunkMalformed);
    }
    usize::from_str_radix(hex, 16).map_err(|_| HttpError::ChunkMalformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    #[test]
    fn a_response_trickled_a_byte_at_a_time_is_cut_off_at_the_total_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
            for _ in 0..40 {
                if stream.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let options = RequestOptions {
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(1),
            total_timeout: Duration::from_millis(500),
            headers: Vec::new(),
            tls: None,
            user_agent: "test",
        };
        let err = post_with(&url, "application/json", b"{}", &options).unwrap_err();
        assert!(err.to_string().contains("took too long"), "{err}");
        server.join().unwrap();
    }

    /// Serves one connection: reads the request (headers plus Content-Length body), answers
    /// with `reply`, and hands back the request bytes it saw.
    fn serve_once(reply: Vec<u8>) -> (String, JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(&stream);
            let mut request = Vec::new();
            let mut length = 0usize;
            loop {
                let mut line = Vec::new();
                reader.read_until(b'\n', &mut line).unwrap();
                request.extend_from_slice(&line);
                let text = String::from_utf8_lossy(&line).to_ascii_lowercase();
                if let Some(value) = text.strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
                if line == b"\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            request.extend_from_slice(&body);
            let mut writer = &stream;
            writer.write_all(&reply).unwrap();
            request
        });
        (format!("http://127.0.0.1:{port}"), handle)
    }

    #[test]
    fn get_reads_a_content_length_body() {
        let reply = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
                      Content-Length: 5\r\n\r\nhello"
            .to_vec();
        let (base, server) = serve_once(reply);
        let response = get(&format!("{base}/healthz?x=1")).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(
            response.content_type.as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(response.media_type().as_deref(), Some("text/plain"));
        assert_eq!(response.body, b"hello");

        let request = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(
            request.starts_with("GET /healthz?x=1 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nConnection: close\r\n"));
        let host = base.trim_start_matches("http://");
        assert!(
            request.contains(&format!("\r\nHost: {host}\r\n")),
            "{request}"
        );
        assert!(!request.contains("Content-Length"));
    }

    #[test]
    fn post_sends_the_body_with_its_type_and_length() {
        let reply = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\n\r\nrefused".to_vec();
        let (base, server) = serve_once(reply);
        let body = [0x30u8, 0x80, 0x00, 0x00, 0xff];
        let response = post(
            &format!("{base}/ota/phase23"),
            "application/pkcs7-signature",
            &body,
        )
        .unwrap();
        assert_eq!(response.status, 403);
        assert_eq!(response.content_type, None);
        assert_eq!(response.body, b"refused");

        let request = server.join().unwrap();
        let text = String::from_utf8_lossy(&request);
        assert!(text.starts_with("POST /ota/phase23 HTTP/1.1\r\n"));
        assert!(text.contains("\r\nContent-Type: application/pkcs7-signature\r\n"));
        assert!(text.contains("\r\nContent-Length: 5\r\n"));
        assert!(request.ends_with(&body));
    }

    #[test]
    fn chunked_and_to_eof_bodies() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                        4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: y\r\n\r\n"
            .to_vec();
        let (base, server) = serve_once(chunked);
        assert_eq!(get(&base).unwrap().body, b"Wikipedia");
        let request = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(
            request.starts_with("GET / HTTP/1.1\r\n"),
            "an empty path is sent as /"
        );

        let (base, server) = serve_once(b"HTTP/1.0 200 OK\n\nuntil the end".to_vec());
        assert_eq!(get(&base).unwrap().body, b"until the end");
        server.join().unwrap();
    }

    #[test]
    fn response_framing_errors() {
        let read = |bytes: &[u8]| read_response(&mut &bytes[..]);
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"),
            Err(HttpError::BodyTruncated {
                expected: 10,
                received: 5
            })
        ));
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n"),
            Err(HttpError::BodyTooLarge)
        ));
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"),
            Err(HttpError::ContentLengthInvalid)
        ));
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
            Err(HttpError::ContentLengthInvalid)
        ));
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nContent"),
            Err(HttpError::HeadersTruncated)
        ));
        assert!(matches!(read(b""), Err(HttpError::HeadersTruncated)));
        assert!(matches!(
            read(b"SMTP 220 hi\r\n\r\n"),
            Err(HttpError::StatusLineMalformed)
        ));
        assert!(matches!(
            read(b"HTTP/1.1 20 OK\r\n\r\n"),
            Err(HttpError::StatusLineMalformed)
        ));
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"),
            Err(HttpError::HeaderMalformed)
        ));
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(HttpError::TransferEncodingUnsupported(_))
        ));
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Err(HttpError::ChunkMalformed)
        ));
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"),
            Err(HttpError::ChunkMalformed)
        ));
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFF\r\n"),
            Err(HttpError::BodyTooLarge)
        ));
        let no_body = read(b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\n").unwrap();
        assert_eq!((no_body.status, no_body.body.len()), (204, 0));
    }

    #[test]
    fn header_count_and_size_are_bounded() {
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for n in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{n}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(
            read_response(&mut &many[..]),
            Err(HttpError::TooManyHeaders)
        ));

        let mut exactly = b"HTTP/1.1 200 OK\r\n".to_vec();
        for n in 1..MAX_HEADERS {
            exactly.extend_from_slice(format!("X-{n}: v\r\n").as_bytes());
        }
        exactly.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
        assert_eq!(
            read_response(&mut &exactly[..]).unwrap().body,
            b"ok",
            "64 headers are fine"
        );

        let mut large = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        large.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES));
        large.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(
            read_response(&mut &large[..]),
            Err(HttpError::HeadersTooLarge)
        ));
    }

    #[test]
    fn body_to_eof_is_bounded() {
        let mut big = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        big.resize(big.len() + MAX_BODY_BYTES + 1, b'x');
        assert!(matches!(
            read_response(&mut &big[..]),
            Err(HttpError::BodyTooLarge)
        ));
    }

    #[test]
    fn urls() {
        let target = parse_url("http://127.0.0.1:8080/scep?operation=GetCACaps#frag").unwrap();
        assert_eq!(target.connect_host, "127.0.0.1");
        assert_eq!(target.port, 8080);
        assert_eq!(target.path, "/scep?operation=GetCACaps");
        assert_eq!(target.authority(), "127.0.0.1:8080");

        let v6 = parse_url("http://[::1]:9/x").unwrap();
        assert_eq!(
            (v6.connect_host.as_str(), v6.port, v6.authority()),
            ("::1", 9, "[::1]:9".into())
        );
        let plain = parse_url("HTTP://localhost?q").unwrap();
        assert_eq!((plain.port, plain.path.as_str()), (80, "/?q"));

        assert!(matches!(
            get("https://127.0.0.1/"),
            Err(HttpError::TlsNotSupported)
        ));
        assert_eq!(
            HttpError::TlsNotSupported.to_string(),
            "url: https needs a certificate to check the server with \
             (otad simulate --ca-file FILE)"
        );
        assert!(matches!(
            parse_url("ftp://x/"),
            Err(HttpError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            parse_url("127.0.0.1/x"),
            Err(HttpError::InvalidUrl(_))
        ));
        assert!(matches!(
            parse_url("http://a b/"),
            Err(HttpError::InvalidUrl(_))
        ));
        assert!(matches!(
            parse_url("http://x/\r\nHost: y"),
            Err(HttpError::InvalidUrl(_))
        ));
        assert!(matches!(
            parse_url("http://u@x/"),
            Err(HttpError::InvalidUrl(_))
        ));
        assert!(matches!(
            parse_url("http://x:99999/"),
            Err(HttpError::InvalidUrl(_))
        ));
        assert!(matches!(
            parse_url("http://:80/"),
            Err(HttpError::InvalidUrl(_))
        ));
        assert!(matches!(
            parse_url("http://[::1/"),
            Err(HttpError::InvalidUrl(_))
        ));
    }

    #[test]
    fn masked_urls_show_neither_credentials_nor_query() {
        let cases = [
            ("http://127.0.0.1:9/x", "http://127.0.0.1:9/x"),
            (
                "http://user:pass@127.0.0.1:9/x",
                "http://(credentials not shown)@127.0.0.1:9/x",
            ),
            (
                "https://hook:pa55@hooks.example.com/otad?key=s3cr3t",
                "https://(credentials not shown)@hooks.example.com/otad?(query not shown)",
            ),
            ("http://h/x?token=abc#frag", "http://h/x?(query not shown)"),
            ("http://h/x#frag", "http://h/x"),
            // Unencoded / ? # @ in a password, or an @ in the path: nothing but the scheme
            // (the host this client would use is not the one the text seems to name).
            (
                "http://u:p/a?s#s@w@h:1/y",
                "http://(not shown: an @ after the host part)",
            ),
            (
                "http://127.0.0.2:1/x@127.0.0.1:18998/hook",
                "http://(not shown: an @ after the host part)",
            ),
            ("http://u:p@w@h:1/y", "http://(credentials not shown)@h:1/y"),
            ("not a url?secret", "not a url?(query not shown)"),
        ];
        for (url, shown) in cases {
            assert_eq!(mask_url(url), shown, "{url}");
        }
        for url in [
            "http://u:pass@h/",
            "http://u:p/ass@h/?k=pass",
            "http://h/?pass",
        ] {
            assert!(!mask_url(url).contains("pass"), "{url}: {}", mask_url(url));
        }
        assert!(has_credentials("http://u:p@h/"));
        assert!(!has_credentials("http://h/a@b"));
        assert!(!has_credentials("http://h/?q=1@x"));
    }

    #[test]
    fn header_injection_through_the_content_type_is_refused() {
        let err = post("http://127.0.0.1:9/", "text/plain\r\nX-Injected: 1", b"").unwrap_err();
        assert!(matches!(err, HttpError::InvalidContentType), "{err}");
    }

    #[test]
    fn a_closed_port_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = get(&format!("http://127.0.0.1:{port}/")).unwrap_err();
        assert!(matches!(err, HttpError::Connect { .. }), "{err}");
        assert!(err
            .to_string()
            .starts_with(&format!("127.0.0.1:{port}: cannot connect")));
    }
}
