//! SCEP interop with clients and encoders no one here wrote, against a real `otad serve` on
//! loopback: Debian's `scepclient` (micromdm/scep 2.1) with 1024-, 2048- and 4096-bit keys;
//! certmonger's `scep-submit` helper for GetCACaps, GetCACert and PKIOperation; PKCSReqs
//! whose CSR and EnvelopedData OpenSSL made (streamed, indefinite-length BER) and whose outer
//! SignedData arrives re-encoded as BER; and the golden scepclient exchange in
//! `testdata/scep/`, re-read without any tool.
//!
//! Where a tool is missing a test says SKIP and passes, except under `CI=true` (`.ci/run`
//! installs `scep`, `certmonger` and `openssl`). `OTAD_REGENERATE_SCEP_GOLDEN=1` rewrites
//! the golden files from a fresh scepclient run (see testdata/README.md).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::der;
use common::server::{set_key, TestServer};
use common::tools::{have, openssl};
use otad::cms::{self, oid, signed, ContentCipher, DigestAlgorithm};
use otad::httpclient;
use otad::pki::cert;
use otad::pki::keys::RsaPrivateKey;
use otad::scep::message::{self, FailInfo, MessageType, PkiStatus, RequestParams};

/// The static `scep.challenge` of every server here.
const STATIC_CHALLENGE: &str = "scep-interop-static";

/// Where Debian's certmonger package puts its SCEP helper.
const SCEP_SUBMIT: &str = "/usr/lib/certmonger/scep-submit";

/// Set to 1 to rewrite `testdata/scep/` from a fresh scepclient exchange.
const REGENERATE: &str = "OTAD_REGENERATE_SCEP_GOLDEN";

/// The golden SCEP files.
fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/scep")
}

/// A server whose static SCEP challenge is [`STATIC_CHALLENGE`].
fn static_server() -> TestServer {
    TestServer::start(|config| {
        set_key(
            &config,
            "scep",
            "challenge",
            &format!("\"{STATIC_CHALLENGE}\""),
        )
    })
}

/// A new folder `name` in the server's temp dir.
fn workdir(server: &TestServer, name: &str) -> PathBuf {
    let dir = server.dir.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    dir
}

/// stdout and stderr of a finished command, for assertion messages.
fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs scepclient in `dir` with a new key of `key_size` bits, the static challenge and CN
/// `cn`; it writes `key.pem` and `cert.pem` there.
fn scepclient(dir: &Path, url: &str, key_size: usize, challenge: &str, cn: &str) -> Output {
    Command::new("scepclient")
        .current_dir(dir)
        .args([
            "-server-url",
            &format!("{url}/scep"),
            "-challenge",
            challenge,
        ])
        .args(["-private-key", "key.pem", "-certificate", "cert.pem"])
        .args(["-keySize", &key_size.to_string(), "-cn", cn])
        .output()
        .expect("run scepclient")
}

#[test]
fn scepclient_gets_a_certificate_for_1024_2048_and_4096_bit_keys() {
    if !have("scepclient", "-version") || !have("openssl", "version") {
        return;
    }
    let server = static_server();
    let ca = server.state_file("ca/ca.pem");
    let ca = ca.to_str().unwrap();

    for bits in [1024usize, 2048, 4096] {
        let dir = workdir(&server, &format!("rsa{bits}"));
        let cn = format!("interop-{bits}");
        let output = scepclient(&dir, &server.url, bits, STATIC_CHALLENGE, &cn);
        assert!(
            output.status.success(),
            "scepclient -keySize {bits}: {}\n{}",
            text(&output),
            server.log()
        );

        let verified = openssl(&dir, &["verify", "-CAfile", ca, "cert.pem"]);
        assert_eq!(String::from_utf8_lossy(&verified).trim(), "cert.pem: OK");
        let details = openssl(&dir, &["x509", "-in", "cert.pem", "-noout", "-text"]);
        let details = String::from_utf8_lossy(&details);
        assert!(
            details.contains(&format!("Public-Key: ({bits} bit)")),
            "{bits}: {details}"
        );
        assert!(details.contains(&format!("CN = {cn}")), "{details}");

        // The certificate is for the key scepclient holds, not just any key of that size.
        let cert_modulus = openssl(&dir, &["x509", "-in", "cert.pem", "-noout", "-modulus"]);
        let key_modulus = openssl(&dir, &["rsa", "-in", "key.pem", "-noout", "-modulus"]);
        assert_eq!(cert_modulus, key_modulus, "{bits}");
    }
    assert!(
        server.log().matches("scep: issued certificate").count() >= 3,
        "{}",
        server.log()
    );
}

#[test]
fn certmonger_reads_get_ca_caps_and_get_ca_cert() {
    if !have(SCEP_SUBMIT, "--usage") {
        return;
    }
    let server = static_server();
    let url = format!("{}/scep", server.url);

    let caps = Command::new(SCEP_SUBMIT)
        .args(["-u", &url, "-c"])
        .output()
        .unwrap();
    assert_eq!(caps.status.code(), Some(0), "{}", text(&caps));
    let printed: Vec<String> = String::from_utf8_lossy(&caps.stdout)
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(printed, otad::scep::CA_CAPS);

    // The RA certificate first, then the CA, as the man page says.
    let certs = Command::new(SCEP_SUBMIT)
        .args(["-u", &url, "-C"])
        .output()
        .unwrap();
    assert_eq!(certs.status.code(), Some(0), "{}", text(&certs));
    let printed = cert::pem_to_der_all(&String::from_utf8_lossy(&certs.stdout)).unwrap();
    let expected: Vec<Vec<u8>> = ["ca/ra.pem", "ca/ca.pem"]
        .iter()
        .map(|file| {
            let pem = std::fs::read_to_string(server.state_file(file)).unwrap();
            cert::pem_to_der(&pem).unwrap()
        })
        .collect();
    assert_eq!(printed, expected);
}

/// A requester as OpenSSL makes one: an RSA key, a PKCS#10 CSR carrying a challengePassword,
/// and the throwaway self-signed certificate a PKCSReq is signed with.
struct Requester {
    key: RsaPrivateKey,
    /// DER.
    certificate: Vec<u8>,
    /// DER.
    csr: Vec<u8>,
}

/// Makes a [`Requester`] in `dir` with `openssl genrsa` and `openssl req`; files
/// `key.pem`, `csr.der`, `signer.der`, `signer.pem`.
fn openssl_requester(dir: &Path, bits: usize, cn: &str, challenge: &str) -> Requester {
    openssl(dir, &["genrsa", "-out", "key.pem", &bits.to_string()]);
    std::fs::write(
        dir.join("req.cnf"),
        format!(
            "[req]\nprompt = no\ndistinguished_name = dn\nattributes = attrs\n\
             [dn]\nCN = {cn}\n[attrs]\nchallengePassword = {challenge}\n"
        ),
    )
    .unwrap();
    let csr_args = [
        "req", "-new", "-key", "key.pem", "-config", "req.cnf", "-outform", "DER", "-out",
        "csr.der",
    ];
    openssl(dir, &csr_args);
    let signer_args = [
        "req",
        "-x509",
        "-new",
        "-key",
        "key.pem",
        "-subj",
        "/CN=throwaway",
        "-days",
        "1",
        "-out",
        "signer.pem",
    ];
    openssl(dir, &signer_args);
    openssl(
        dir,
        &[
            "x509",
            "-in",
            "signer.pem",
            "-outform",
            "DER",
            "-out",
            "signer.der",
        ],
    );

    let pem = std::fs::read_to_string(dir.join("key.pem")).unwrap();
    Requester {
        key: RsaPrivateKey::from_pem(&pem).unwrap(),
        certificate: std::fs::read(dir.join("signer.der")).unwrap(),
        csr: std::fs::read(dir.join("csr.der")).unwrap(),
    }
}

/// A PKCSReq pkiMessage (RFC 8894 §3.3.1) around `envelope`, whatever made it, signed by the
/// requester with the SCEP signed attributes.
fn pkcs_req_around(
    envelope: &[u8],
    requester: &Requester,
    transaction_id: &str,
    sender_nonce: &[u8],
) -> Vec<u8> {
    let attributes = vec![
        (
            oid::MESSAGE_TYPE,
            message::printable(&MessageType::PkcsReq.number().to_string()).unwrap(),
        ),
        (
            oid::TRANSACTION_ID,
            message::printable(transaction_id).unwrap(),
        ),
        (oid::SENDER_NONCE, message::octets(sender_nonce).unwrap()),
    ];
    let signer = signed::SignerIdentity {
        certificate: &requester.certificate,
        key: requester.key.signing(),
    };
    let options = signed::SignOptions {
        extra_attributes: &attributes,
        ..signed::SignOptions::data(DigestAlgorithm::Sha256, true, &[])
    };
    signed::sign(envelope, &signer, &options).unwrap()
}

/// The RA and CA certificates (DER) from GetCACert.
fn get_ca_cert(server: &TestServer) -> (Vec<u8>, Vec<u8>) {
    let response = httpclient::get(&format!("{}/scep?operation=GetCACert", server.url)).unwrap();
    assert_eq!(response.status, 200);
    let mut certificates = signed::parse_certs_only(&response.body)
        .unwrap()
        .into_iter();
    let ra = certificates.next().unwrap();
    let ca = certificates.next().unwrap();
    (ra, ca)
}

/// POSTs a pkiMessage and reads the CertRep as the requester.
fn submit(
    server: &TestServer,
    body: &[u8],
    ra: &[u8],
    requester: &Requester,
) -> message::ParsedReply {
    let url = format!("{}/scep?operation=PKIOperation", server.url);
    let response = httpclient::post(&url, "application/x-pki-message", body).unwrap();
    assert_eq!(response.status, 200, "{}", server.log());
    message::parse_reply(
        &response.body,
        &[ra],
        &requester.certificate,
        requester.key.decrypting(),
    )
    .unwrap()
}

/// Asserts a SUCCESS CertRep for this transaction, whose one certificate `openssl verify`
/// accepts under the server's CA.
fn assert_issued(
    server: &TestServer,
    dir: &Path,
    reply: &message::ParsedReply,
    transaction_id: &str,
    sender_nonce: &[u8],
) {
    assert_eq!(
        reply.status,
        PkiStatus::Success,
        "{:?}\n{}",
        reply.fail_info,
        server.log()
    );
    assert_eq!(reply.transaction_id, transaction_id);
    assert_eq!(reply.recipient_nonce, sender_nonce);
    assert_eq!(reply.certificates.len(), 1);
    let issued = reply.certificates.first().unwrap();
    std::fs::write(dir.join("issued.pem"), cert::der_to_pem(issued)).unwrap();
    let ca = server.state_file("ca/ca.pem");
    let verified = openssl(
        dir,
        &["verify", "-CAfile", ca.to_str().unwrap(), "issued.pem"],
    );
    assert_eq!(String::from_utf8_lossy(&verified).trim(), "issued.pem: OK");
}

/// `openssl cms -encrypt -stream` of the CSR to the RA: indefinite-length BER.
fn openssl_envelope(dir: &Path, ra: &[u8], cipher_flag: &str) -> Vec<u8> {
    std::fs::write(dir.join("ra.pem"), cert::der_to_pem(ra)).unwrap();
    openssl(
        dir,
        &[
            "cms",
            "-encrypt",
            "-stream",
            "-binary",
            "-outform",
            "DER",
            cipher_flag,
            "-in",
            "csr.der",
            "-out",
            "envelope.ber",
            "ra.pem",
        ],
    );
    let envelope = std::fs::read(dir.join("envelope.ber")).unwrap();
    assert_eq!(
        envelope.get(..2),
        Some(&[0x30, 0x80][..]),
        "openssl streams indefinite-length BER"
    );
    envelope
}

#[test]
fn pkcs_req_around_openssl_streamed_ber_enveloped_data_succeeds() {
    if !have("openssl", "version") {
        return;
    }
    let server = static_server();
    let (ra, _) = get_ca_cert(&server);
    for (n, cipher_flag) in ["-aes256", "-aes128", "-des3"].into_iter().enumerate() {
        let dir = workdir(&server, &format!("openssl-ber-{n}"));
        let requester = openssl_requester(&dir, 2048, "openssl-ber", STATIC_CHALLENGE);
        let envelope = openssl_envelope(&dir, &ra, cipher_flag);

        let transaction_id = format!("OPENSSL-BER-{n}");
        let nonce = message::new_nonce();
        let body = pkcs_req_around(&envelope, &requester, &transaction_id, &nonce);
        let reply = submit(&server, &body, &ra, &requester);
        assert_issued(&server, &dir, &reply, &transaction_id, &nonce);
    }
}

#[test]
fn openssl_csr_with_a_wrong_challenge_gets_bad_request() {
    if !have("openssl", "version") {
        return;
    }
    let server = static_server();
    let (ra, _) = get_ca_cert(&server);
    let dir = workdir(&server, "wrong-challenge");
    let requester = openssl_requester(&dir, 2048, "wrong", "not-the-challenge");
    let envelope = openssl_envelope(&dir, &ra, "-aes256");
    let nonce = message::new_nonce();
    let body = pkcs_req_around(&envelope, &requester, "WRONG-1", &nonce);
    let reply = submit(&server, &body, &ra, &requester);
    assert_eq!(reply.status, PkiStatus::Failure);
    assert_eq!(reply.fail_info, Some(FailInfo::BadRequest));
    assert_eq!(reply.recipient_nonce, nonce);
    assert!(reply.certificates.is_empty());
}

/// `tag` with an indefinite length around `content`, closed by end-of-contents.
fn indefinite(tag: u8, content: &[u8]) -> Vec<u8> {
    [&[tag, 0x80][..], content, &[0x00, 0x00]].concat()
}

/// A DER pkiMessage re-encoded the way devices send theirs: the ContentInfo, its `[0]`, the
/// SignedData, the encapContentInfo and its `[0]` with indefinite lengths, and the eContent
/// as a constructed OCTET STRING of `chunk`-octet pieces; certificates and SignerInfos stay
/// DER.
fn ber_pki_message(der_message: &[u8], chunk: usize) -> Vec<u8> {
    let fields = der::signed_data_fields(der_message).unwrap();
    let [version, digest_algorithms, encap, certificates, signer_infos] = fields.as_slice() else {
        panic!("a pkiMessage SignedData has five fields");
    };
    let (encap, _) = der::split(encap).unwrap();
    let encap_fields = der::children(encap.content).unwrap();
    let [content_type, explicit] = encap_fields.as_slice() else {
        panic!("encapContentInfo has a type and a content");
    };
    let (octets, _) = der::split(explicit.content).unwrap();
    assert_eq!(octets.tag, 0x04);

    let pieces: Vec<u8> = octets
        .content
        .chunks(chunk)
        .flat_map(|piece| der::encode(0x04, piece))
        .collect();
    let e_content = indefinite(0x24, &pieces);
    let encap = indefinite(
        0x30,
        &[content_type.raw, &indefinite(0xa0, &e_content)].concat(),
    );
    let signed_data = indefinite(
        0x30,
        &[
            version.as_slice(),
            digest_algorithms,
            &encap,
            certificates,
            signer_infos,
        ]
        .concat(),
    );
    let content_type = der::encode(0x06, oid::ID_SIGNED_DATA.as_bytes());
    indefinite(
        0x30,
        &[content_type, indefinite(0xa0, &signed_data)].concat(),
    )
}

#[test]
fn pkcs_req_whose_outer_signed_data_is_ber_succeeds() {
    if !have("openssl", "version") {
        return;
    }
    let server = static_server();
    let (ra, _) = get_ca_cert(&server);
    let dir = workdir(&server, "outer-ber");
    let requester = openssl_requester(&dir, 2048, "outer-ber", STATIC_CHALLENGE);

    for (n, (cipher, chunk)) in [
        (ContentCipher::Aes256Cbc, 100),
        (ContentCipher::Des3Cbc, 1000),
    ]
    .into_iter()
    .enumerate()
    {
        let transaction_id = format!("OUTER-BER-{n}");
        let nonce = message::new_nonce();
        let params = RequestParams {
            message_type: MessageType::PkcsReq,
            transaction_id: &transaction_id,
            sender_nonce: nonce,
            digest: DigestAlgorithm::Sha256,
            cipher,
            recipient: &ra,
            signer_certificate: &requester.certificate,
            signer_key: requester.key.signing(),
        };
        let der_message = message::build_request(&requester.csr, &params).unwrap();
        let ber_message = ber_pki_message(&der_message, chunk);
        assert_ne!(ber_message, der_message);
        assert_eq!(cms::ber::normalize(&ber_message).unwrap(), der_message);

        let reply = submit(&server, &ber_message, &ra, &requester);
        assert_issued(&server, &dir, &reply, &transaction_id, &nonce);
    }

    // Both BER layers at once: OpenSSL's streamed envelope inside a BER SignedData.
    let envelope = openssl_envelope(&dir, &ra, "-aes256");
    let nonce = message::new_nonce();
    let der_message = pkcs_req_around(&envelope, &requester, "OUTER-BER-2", &nonce);
    let reply = submit(&server, &ber_pki_message(&der_message, 64), &ra, &requester);
    assert_issued(&server, &dir, &reply, "OUTER-BER-2", &nonce);
}

/// PEM "PKCS7" of a DER pkiMessage, as scep-submit reads it.
fn pkcs7_pem(der_message: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der_message);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    format!(
        "-----BEGIN PKCS7-----\n{}\n-----END PKCS7-----\n",
        lines.join("\n")
    )
}

#[test]
fn certmonger_submits_an_openssl_made_pkcs_req() {
    if !have(SCEP_SUBMIT, "--usage") || !have("openssl", "version") {
        return;
    }
    let server = static_server();
    let (ra, ca) = get_ca_cert(&server);
    let url = format!("{}/scep", server.url);

    for (name, challenge) in [("good", STATIC_CHALLENGE), ("bad", "a-wrong-challenge")] {
        let dir = workdir(&server, &format!("certmonger-{name}"));
        std::fs::write(dir.join("ca.pem"), cert::der_to_pem(&ca)).unwrap();
        let requester = openssl_requester(&dir, 2048, &format!("certmonger-{name}"), challenge);
        let envelope = openssl_envelope(&dir, &ra, "-aes256");
        let nonce = message::new_nonce();
        let body = pkcs_req_around(&envelope, &requester, "CERTMONGER-1", &nonce);
        std::fs::write(dir.join("request.pem"), pkcs7_pem(&body)).unwrap();

        let output = Command::new(SCEP_SUBMIT)
            .current_dir(&dir)
            .args([
                "-u",
                &url,
                "-r",
                "ra.pem",
                "-N",
                "ca.pem",
                "-p",
                "request.pem",
            ])
            .output()
            .unwrap();
        if name == "bad" {
            // Exit 2: "the CA rejected the request", in badRequest's words.
            assert_eq!(output.status.code(), Some(2), "{}", text(&output));
            assert!(
                text(&output).contains("not permitted or is not supported"),
                "{}",
                text(&output)
            );
            continue;
        }

        // Exit 0 and the pkcsPKIEnvelope in PEM, which openssl opens with the requester's
        // key: a certificates-only SignedData holding the issued certificate.
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        std::fs::write(dir.join("envelope.pem"), &output.stdout).unwrap();
        openssl(
            &dir,
            &[
                "cms",
                "-decrypt",
                "-inform",
                "PEM",
                "-in",
                "envelope.pem",
                "-recip",
                "signer.pem",
                "-inkey",
                "key.pem",
                "-binary",
                "-out",
                "certs.p7",
            ],
        );
        let printed = openssl(
            &dir,
            &[
                "pkcs7",
                "-inform",
                "DER",
                "-in",
                "certs.p7",
                "-print_certs",
                "-out",
                "issued.pem",
            ],
        );
        assert!(printed.is_empty());
        let ca_path = server.state_file("ca/ca.pem");
        let verified = openssl(
            &dir,
            &["verify", "-CAfile", ca_path.to_str().unwrap(), "issued.pem"],
        );
        assert_eq!(String::from_utf8_lossy(&verified).trim(), "issued.pem: OK");
        let subject = openssl(&dir, &["x509", "-in", "issued.pem", "-noout", "-subject"]);
        assert!(
            String::from_utf8_lossy(&subject).contains("CN = certmonger-good"),
            "{}",
            String::from_utf8_lossy(&subject)
        );
    }
}

/// One HTTP/1.1 message from `reader`: the head and, by Content-Length, the body; `None`
/// at end of stream.
fn read_http_message(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut message = Vec::new();
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            content_length = value.trim().parse().ok()?;
        }
        message.extend_from_slice(line.as_bytes());
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body).ok()?;
    message.extend_from_slice(&body);
    Some(message)
}

/// The body of an HTTP message.
fn http_body(message: &[u8]) -> Vec<u8> {
    let end = message
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap();
    message.get(end + 4..).unwrap().to_vec()
}

/// Request and response of each PKIOperation that crossed the proxy.
type Exchanges = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

/// A recording proxy on a loopback port in front of `upstream` (`127.0.0.1:PORT`): each
/// request goes to the server on a new connection; PKIOperation POST bodies and the answers
/// are kept. Returns its URL; it serves until the test ends.
fn recording_proxy(upstream: String, exchanges: Exchanges) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let _ = client.set_read_timeout(Some(Duration::from_secs(20)));
            let mut writer = client.try_clone().unwrap();
            let mut reader = BufReader::new(client);
            while let Some(request) = read_http_message(&mut reader) {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    return;
                };
                let _ = server.set_read_timeout(Some(Duration::from_secs(20)));
                let mut server_writer = server.try_clone().unwrap();
                if server_writer.write_all(&request).is_err() {
                    return;
                }
                let Some(response) = read_http_message(&mut BufReader::new(server)) else {
                    return;
                };
                if request.starts_with(b"POST ") {
                    let mut kept = exchanges.lock().unwrap();
                    kept.push((http_body(&request), http_body(&response)));
                }
                if writer.write_all(&response).is_err() {
                    break;
                }
            }
        }
    });
    url
}

/// Runs scepclient through a recording proxy against a fresh server and writes
/// `testdata/scep/`: the CA and RA certificates, scepclient's key and certificate, its
/// PKCSReq and otad's CertRep.
fn regenerate_golden() {
    assert!(
        have("scepclient", "-version"),
        "{REGENERATE} needs scepclient"
    );
    let server = static_server();
    let exchanges: Exchanges = Arc::default();
    let upstream = server.url.trim_start_matches("http://").to_string();
    let proxy = recording_proxy(upstream, Arc::clone(&exchanges));
    let dir = workdir(&server, "golden");
    let output = scepclient(&dir, &proxy, 2048, STATIC_CHALLENGE, "golden-client");
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output),
        server.log()
    );

    let exchanges = exchanges.lock().unwrap();
    let [(request, response)] = exchanges.as_slice() else {
        panic!("one PKIOperation expected, saw {}", exchanges.len());
    };
    let golden = golden_dir();
    std::fs::create_dir_all(&golden).unwrap();
    for (from, to) in [
        (server.state_file("ca/ca.pem"), "ca.pem"),
        (server.state_file("ca/ra.pem"), "ra.pem"),
        (dir.join("key.pem"), "client-key.pem"),
        (dir.join("cert.pem"), "client-cert.pem"),
    ] {
        std::fs::copy(from, golden.join(to)).unwrap();
    }
    std::fs::write(golden.join("pkcsreq.der"), request).unwrap();
    std::fs::write(golden.join("certrep.der"), response).unwrap();
    eprintln!("wrote {}", golden.display());
}

/// A golden file.
fn golden(name: &str) -> Vec<u8> {
    let path = golden_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The DER of a golden PEM certificate.
fn golden_certificate(name: &str) -> Vec<u8> {
    cert::pem_to_der(&String::from_utf8(golden(name)).unwrap()).unwrap()
}

/// A string-valued signed attribute.
fn string_attribute(message: &signed::SignedMessage, oid: &const_oid::ObjectIdentifier) -> String {
    message
        .signed_attribute(oid)
        .and_then(message::read_string)
        .unwrap_or_else(|| panic!("no string attribute {oid}"))
}

#[test]
fn golden_scepclient_exchange_reads_back() {
    if std::env::var(REGENERATE).as_deref() == Ok("1") {
        regenerate_golden();
    }
    let ca = golden_certificate("ca.pem");
    let ra = golden_certificate("ra.pem");
    let client_certificate = golden_certificate("client-cert.pem");

    // scepclient's PKCSReq: signed by its throwaway certificate, with the SCEP header.
    let request = signed::verify(&golden("pkcsreq.der")).unwrap();
    assert_eq!(
        string_attribute(&request, &oid::MESSAGE_TYPE),
        MessageType::PkcsReq.number().to_string()
    );
    let transaction_id = string_attribute(&request, &oid::TRANSACTION_ID);
    assert!(!transaction_id.is_empty() && message::is_printable(&transaction_id));
    let sender_nonce = request
        .signed_attribute(&oid::SENDER_NONCE)
        .and_then(message::read_octets)
        .unwrap();
    assert_eq!(sender_nonce.len(), 16);
    let header = message::read_header(|oid| request.signed_attribute(oid)).unwrap();
    assert_eq!(header.message_type, MessageType::PkcsReq);
    assert_eq!(header.transaction_id, transaction_id);
    assert!(request.content.is_some());
    let signer_key = cert::spki_der(&request.signer.certificate).unwrap();
    assert_eq!(signer_key, cert::spki_der(&client_certificate).unwrap());

    // otad's CertRep: signed by the saved RA, SUCCESS, answering that very request.
    let response = signed::verify(&golden("certrep.der")).unwrap();
    assert_eq!(response.signer.certificate, ra);
    assert!(cert::is_signed_by(&ra, &cert::spki_der(&ca).unwrap()));
    assert_eq!(
        string_attribute(&response, &oid::MESSAGE_TYPE),
        MessageType::CertRep.number().to_string()
    );
    assert_eq!(string_attribute(&response, &oid::PKI_STATUS), "0");
    assert_eq!(
        string_attribute(&response, &oid::TRANSACTION_ID),
        transaction_id
    );
    let recipient_nonce = response
        .signed_attribute(&oid::RECIPIENT_NONCE)
        .and_then(message::read_octets)
        .unwrap();
    assert_eq!(recipient_nonce, sender_nonce);

    // Opened with scepclient's (test-only) key: the certificate scepclient saved, issued by
    // the saved CA.
    let client_key =
        RsaPrivateKey::from_pem(&String::from_utf8(golden("client-key.pem")).unwrap()).unwrap();
    let reply = message::parse_reply(
        &golden("certrep.der"),
        &[&ra],
        &request.signer.certificate,
        client_key.decrypting(),
    )
    .unwrap();
    assert_eq!(reply.status, PkiStatus::Success);
    assert_eq!(
        reply.certificates,
        std::slice::from_ref(&client_certificate)
    );
    assert!(cert::is_signed_by(
        &client_certificate,
        &cert::spki_der(&ca).unwrap()
    ));

    // An independent reader agrees the CertRep's signature holds (the chain is checked above;
    // -noverify keeps the expiry of the saved certificates out of it).
    if have("openssl", "version") {
        let dir = golden_dir();
        let verified = Command::new("openssl")
            .current_dir(&dir)
            .args(["cms", "-verify", "-inform", "DER", "-in", "certrep.der"])
            .args([
                "-certfile",
                "ra.pem",
                "-noverify",
                "-binary",
                "-out",
                "/dev/null",
            ])
            .output()
            .unwrap();
        assert!(verified.status.success(), "{}", text(&verified));
    }
}
