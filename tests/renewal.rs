//! RenewalReq, manual approval with CertPoll, and GetCert (RFC 8894 §3.3) against a real
//! `otad serve` on loopback: driven by otad's own client code (`scep::message`), by
//! `otad request`, and by Debian's `scepclient` (micromdm/scep 2.1), which renews when its
//! certificate file exists and polls by sending its PKCSReq again every 30 seconds.
//!
//! Where `scepclient` is missing its tests say so and skip, except under `CI=true`.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use der::{Decode, Encode};
use x509_cert::name::Name;

use common::server::{otad_bin, set_key, TestServer};
use common::state::{self, RecordKind};
use common::tools::{have, openssl};
use otad::cms::{ContentCipher, DigestAlgorithm};
use otad::pki::ca::SubjectAttribute;
use otad::pki::ca::{random_serial, CertificateAuthority, IssueRequest, KeyUsageProfile};
use otad::pki::keys::RsaPrivateKey;
use otad::pki::{cert, csr};
use otad::scep::message::{self, FailInfo, MessageType, ParsedReply, PkiStatus, RequestParams};
use otad::simulate::{Device, SimulateOptions};

const STATIC_CHALLENGE: &str = "renewal-static-challenge";

/// How long a test waits for scepclient (its PENDING loop sleeps 30 s between tries).
const SCEPCLIENT_DEADLINE: Duration = Duration::from_secs(120);

/// A key and the certificate that goes with it.
struct Identity {
    key: RsaPrivateKey,
    certificate: Vec<u8>,
}

/// A new key and a throwaway self-signed certificate for it, as PKCSReq wants.
fn throwaway(common_name: &str) -> Identity {
    self_signed(RsaPrivateKey::generate(2048).unwrap(), common_name)
}

/// The same key under another throwaway certificate, as a client that makes one per message.
fn recertified(identity: &Identity, common_name: &str) -> Identity {
    let key = RsaPrivateKey::from_pkcs8_der(identity.key.to_pkcs8_der()).unwrap();
    self_signed(key, common_name)
}

/// `key` with a self-signed certificate naming `common_name`.
fn self_signed(key: RsaPrivateKey, common_name: &str) -> Identity {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()));
    let certificate = params
        .self_signed(&key.rcgen_key().unwrap())
        .unwrap()
        .der()
        .to_vec();
    Identity { key, certificate }
}

/// `IssuerAndSubject ::= SEQUENCE { issuer Name, subject Name }` (RFC 8894 §3.3.3).
#[derive(der::Sequence)]
struct IssuerAndSubject {
    issuer: Name,
    subject: Name,
}

/// otad's SCEP endpoint as a client sees it: the RA to encrypt to and trust, and the CA.
struct Scep {
    url: String,
    ra: Vec<u8>,
    ca: Vec<u8>,
}

impl Scep {
    fn new(server: &TestServer) -> Scep {
        let read = |file: &str| {
            cert::pem_to_der(&std::fs::read_to_string(server.state_file(file)).unwrap()).unwrap()
        };
        Scep {
            url: format!("{}/scep?operation=PKIOperation", server.url),
            ra: read("ca/ra.pem"),
            ca: read("ca/ca.pem"),
        }
    }

    /// A pkiMessage of `message_type` around `inner`, signed by `signer`.
    fn build(
        &self,
        message_type: MessageType,
        transaction_id: &str,
        inner: &[u8],
        signer: &Identity,
    ) -> Vec<u8> {
        let params = RequestParams {
            message_type,
            transaction_id,
            sender_nonce: message::new_nonce(),
            digest: DigestAlgorithm::Sha256,
            cipher: ContentCipher::Aes128Cbc,
            recipient: &self.ra,
            signer_certificate: &signer.certificate,
            signer_key: signer.key.signing(),
        };
        message::build_request(inner, &params).unwrap()
    }

    /// POSTs a pkiMessage; reads the CertRep, decrypting a SUCCESS with `reader`.
    fn post(&self, pki_message: &[u8], transaction_id: &str, reader: &Identity) -> ParsedReply {
        let response =
            otad::httpclient::post(&self.url, "application/x-pki-message", pki_message).unwrap();
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        let reply = message::parse_reply(
            &response.body,
            &[&self.ra],
            &reader.certificate,
            reader.key.decrypting(),
        )
        .unwrap();
        assert_eq!(reply.transaction_id, transaction_id);
        reply
    }

    /// Builds, sends and reads one request signed and read by `signer`.
    fn send(
        &self,
        message_type: MessageType,
        transaction_id: &str,
        inner: &[u8],
        signer: &Identity,
    ) -> ParsedReply {
        let pki_message = self.build(message_type, transaction_id, inner, signer);
        self.post(&pki_message, transaction_id, signer)
    }

    /// CertPoll for the request whose CSR was `csr_der`.
    fn poll(&self, transaction_id: &str, csr_der: &[u8], signer: &Identity) -> ParsedReply {
        let asked = IssuerAndSubject {
            issuer: ca_name(&self.ca),
            subject: csr_subject(csr_der),
        };
        let inner = asked.to_der().unwrap();
        self.send(MessageType::CertPoll, transaction_id, &inner, signer)
    }
}

fn ca_name(ca: &[u8]) -> Name {
    x509_cert::Certificate::from_der(ca)
        .unwrap()
        .tbs_certificate
        .subject
}

fn csr_subject(csr_der: &[u8]) -> Name {
    x509_cert::request::CertReq::from_der(csr_der)
        .unwrap()
        .info
        .subject
}

/// The one certificate of a SUCCESS.
fn issued(reply: &ParsedReply) -> Vec<u8> {
    assert_eq!(reply.status, PkiStatus::Success, "{reply:?}");
    assert_eq!(reply.certificates.len(), 1);
    reply.certificates[0].clone()
}

fn failure(reply: &ParsedReply) -> FailInfo {
    assert_eq!(reply.status, PkiStatus::Failure, "{reply:?}");
    reply.fail_info.unwrap()
}

fn serial(certificate: &[u8]) -> String {
    cert::serial_hex(certificate).unwrap()
}

fn cert_record(server: &TestServer, serial: &str) -> serde_json::Value {
    server.cert_record(serial).unwrap()
}

/// How many records of a kind the state log holds.
fn count_records(server: &TestServer, kind: RecordKind) -> usize {
    server.count(kind)
}

/// Enrolls a fresh key with a PKCSReq carrying `challenge`; the reply as it came.
fn pkcs_req(scep: &Scep, cn: &str, challenge: &str) -> (Identity, Vec<u8>, String, ParsedReply) {
    let identity = throwaway(cn);
    let request = csr::build(&identity.key, cn, Some(challenge)).unwrap();
    let transaction_id = format!("T-{}", serial(&identity.certificate));
    let reply = scep.send(MessageType::PkcsReq, &transaction_id, &request, &identity);
    (identity, request, transaction_id, reply)
}

/// A simulated device through phases 1 and 2, then a PKCSReq with the challenge phase 2
/// handed out: the identity it got (the throwaway key and the issued certificate).
fn certified_over_the_air(server: &TestServer, scep: &Scep, options: &SimulateOptions) -> Identity {
    let device = Device::new(options).unwrap();
    let phase1 = device.phase1(&server.url).unwrap();
    let payload = device.phase2(&phase1).unwrap();
    let cn = payload.common_name().unwrap().to_string();
    let (key, _, _, reply) = pkcs_req(scep, &cn, &payload.challenge);
    Identity {
        key: key.key,
        certificate: issued(&reply),
    }
}

fn static_challenge_server(approval: &str) -> TestServer {
    TestServer::start(|config| {
        let config = set_key(
            &config,
            "scep",
            "challenge",
            &format!("\"{STATIC_CHALLENGE}\""),
        );
        set_key(&config, "scep", "approval", &format!("\"{approval}\""))
    })
}

/// `otad request ARGS --config <server's config>`.
fn otad_request(server: &TestServer, args: &[&str]) -> Output {
    Command::new(otad_bin())
        .arg("request")
        .args(args)
        .arg("--config")
        .arg(server.state_file("otad.toml"))
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `otad request list --json`, parsed.
fn listed(server: &TestServer) -> Vec<serde_json::Value> {
    let output = otad_request(server, &["list", "--json"]);
    assert!(output.status.success(), "{}", text(&output));
    serde_json::from_slice::<serde_json::Value>(&output.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn renewal_signed_by_the_old_certificate_keeps_the_subject_and_supersedes_it() {
    let server = static_challenge_server("auto");
    let scep = Scep::new(&server);
    let caps = otad::httpclient::get(&format!("{}/scep?operation=GetCACaps", server.url)).unwrap();
    assert!(String::from_utf8_lossy(&caps.body)
        .lines()
        .any(|l| l == "Renewal"));

    let (first_key, _, _, reply) = pkcs_req(&scep, "renewing-client", STATIC_CHALLENGE);
    let old = Identity {
        key: first_key.key,
        certificate: issued(&reply),
    };
    let old_summary = cert::summarize(&old.certificate).unwrap();
    assert_eq!(old_summary.subject, "CN=renewing-client, O=Test Org");

    // A new key; the CSR asks for another name and carries no challenge.
    let new_key = RsaPrivateKey::generate(2048).unwrap();
    let request = csr::build(&new_key, "a-name-the-client-wants", None).unwrap();
    let reply = scep.send(MessageType::RenewalReq, "renew-1", &request, &old);
    let renewed = issued(&reply);
    let summary = cert::summarize(&renewed).unwrap();
    assert_eq!(
        summary.subject, old_summary.subject,
        "the old subject is kept"
    );
    assert_ne!(summary.serial_hex, old_summary.serial_hex);
    assert_eq!(
        cert::spki_der(&renewed).unwrap(),
        new_key.public_key_spki_der()
    );
    assert!(cert::is_signed_by(
        &renewed,
        &cert::spki_der(&scep.ca).unwrap()
    ));

    let old_record = cert_record(&server, &old_summary.serial_hex);
    assert_eq!(old_record["superseded_by"], summary.serial_hex.as_str());
    let new_record = cert_record(&server, &summary.serial_hex);
    assert_eq!(new_record["authorised_by"], "renewal");
    assert_eq!(new_record["superseded_by"], serde_json::Value::Null);
    assert!(server.log().contains(&format!(
        "renewed certificate {} as {}",
        old_summary.serial_hex, summary.serial_hex
    )));

    // The renewed certificate renews again, this time for the same key.
    let current = Identity {
        key: new_key,
        certificate: renewed.clone(),
    };
    let same_key = csr::build(&current.key, "same-key", None).unwrap();
    let again = issued(&scep.send(MessageType::RenewalReq, "renew-2", &same_key, &current));
    assert_eq!(
        cert::spki_der(&again).unwrap(),
        cert::spki_der(&renewed).unwrap()
    );
    assert_eq!(
        cert::summarize(&again).unwrap().subject,
        old_summary.subject
    );
    assert_eq!(
        cert_record(&server, &summary.serial_hex)["superseded_by"],
        serial(&again).as_str()
    );

    // The first certificate asked again with its successor's key (a lost reply) gets that
    // successor again; with any other key it is refused: one certificate renews once.
    let retry = issued(&scep.send(MessageType::RenewalReq, "renew-1", &request, &old));
    assert_eq!(retry, renewed);
    let other = csr::build(&RsaPrivateKey::generate(2048).unwrap(), "x", None).unwrap();
    let reply = scep.send(MessageType::RenewalReq, "renew-3", &other, &old);
    assert_eq!(failure(&reply), FailInfo::BadRequest);
    assert_eq!(count_records(&server, RecordKind::Cert), 3);
}

#[test]
fn renewal_signed_by_anyone_else_is_refused_with_bad_message_check() {
    let server = static_challenge_server("auto");
    let scep = Scep::new(&server);
    let request = csr::build(&RsaPrivateKey::generate(2048).unwrap(), "x", None).unwrap();

    // A self-signed certificate.
    let stranger = throwaway("stranger");
    let reply = scep.send(MessageType::RenewalReq, "stranger", &request, &stranger);
    assert_eq!(failure(&reply), FailInfo::BadMessageCheck);

    // A certificate from another CA, even with our CA's names.
    let other_ca = CertificateAuthority::create("otad SCEP CA", "Test Org", 30).unwrap();
    let key = RsaPrivateKey::generate(2048).unwrap();
    let spki = key.public_key_spki_der();
    let foreign = other_ca
        .issue(&IssueRequest {
            subject: &[(SubjectAttribute::CommonName, "foreign".into())],
            public_key_spki_der: &spki,
            serial: random_serial(),
            validity_days: 30,
            usage: KeyUsageProfile::DeviceIdentity,
        })
        .unwrap();
    let foreign = Identity {
        key,
        certificate: foreign,
    };
    let reply = scep.send(MessageType::RenewalReq, "foreign", &request, &foreign);
    assert_eq!(failure(&reply), FailInfo::BadMessageCheck);

    // One of ours, but revoked.
    let (key, _, _, reply) = pkcs_req(&scep, "to-be-revoked", STATIC_CHALLENGE);
    let ours = Identity {
        key: key.key,
        certificate: issued(&reply),
    };
    let ours_serial = serial(&ours.certificate);
    let mut record = cert_record(&server, &ours_serial);
    record["revoked"] = serde_json::json!(otad::store::now());
    state::put(&server.state, RecordKind::Cert, &ours_serial, &record);
    let reply = scep.send(MessageType::RenewalReq, "revoked", &request, &ours);
    assert_eq!(failure(&reply), FailInfo::BadMessageCheck);

    // One of ours that crl.json lists while its record is not marked yet (a revocation
    // killed after its index entry): refused as well.
    let (key, _, _, reply) = pkcs_req(&scep, "listed-only", STATIC_CHALLENGE);
    let listed_only = Identity {
        key: key.key,
        certificate: issued(&reply),
    };
    let index_path = server.state_file("crl.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["revoked"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "serial": serial(&listed_only.certificate),
            "revoked_at": otad::store::now(),
            "reason": "keyCompromise",
        }));
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index).unwrap()).unwrap();
    let reply = scep.send(
        MessageType::RenewalReq,
        "listed-only",
        &request,
        &listed_only,
    );
    assert_eq!(failure(&reply), FailInfo::BadMessageCheck);

    // Likewise when crl.json spells the serial in upper case with a leading zero octet, as
    // a tool or an admin's editor may.
    let (key, _, _, reply) = pkcs_req(&scep, "listed-respelled", STATIC_CHALLENGE);
    let respelled = Identity {
        key: key.key,
        certificate: issued(&reply),
    };
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["revoked"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "serial": format!("00{}", serial(&respelled.certificate).to_uppercase()),
            "revoked_at": otad::store::now(),
            "reason": "keyCompromise",
        }));
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index).unwrap()).unwrap();
    let reply = scep.send(
        MessageType::RenewalReq,
        "listed-respelled",
        &request,
        &respelled,
    );
    assert_eq!(failure(&reply), FailInfo::BadMessageCheck);

    assert_eq!(
        count_records(&server, RecordKind::Cert),
        3,
        "nothing was issued"
    );
    let log = server.log();
    assert!(
        log.contains("signer certificate: not issued by this CA"),
        "{log}"
    );
    assert!(log.contains("revoked (failInfo BadMessageCheck)"), "{log}");
}

#[test]
fn renewal_of_a_device_certificate_gives_the_device_the_new_serial() {
    let server = TestServer::start(|config| config);
    let scep = Scep::new(&server);
    let mut options = server.device_options();
    options.udid = Some("00008030-001A35E12345802E".into());
    let old = certified_over_the_air(&server, &scep, &options);
    let request = csr::build(&RsaPrivateKey::generate(2048).unwrap(), "x", None).unwrap();
    let renewed = issued(&scep.send(MessageType::RenewalReq, "device-renewal", &request, &old));
    assert_eq!(
        cert::summarize(&renewed).unwrap().subject,
        "CN=00008030-001A35E12345802E, O=Test Org"
    );

    let device = server.device_record("00008030-001A35E12345802E").unwrap();
    assert_eq!(
        device["certificates"],
        serde_json::json!([serial(&old.certificate), serial(&renewed)])
    );
    assert_eq!(device["phase"], "certified");
    let record = cert_record(&server, &serial(&renewed));
    assert_eq!(record["udid"], "00008030-001A35E12345802E");
}

#[test]
fn a_blocked_device_renews_nothing() {
    let server = TestServer::start(|config| config);
    let scep = Scep::new(&server);
    let mut options = server.device_options();
    options.serial = Some("C02RENEWBLK".into());
    let old = certified_over_the_air(&server, &scep, &options);
    let new_key = RsaPrivateKey::generate(2048).unwrap();
    let request = csr::build(&new_key, "x", None).unwrap();
    let renewed = issued(&scep.send(MessageType::RenewalReq, "before-block", &request, &old));

    let config = server.config_path();
    let config = config.to_str().unwrap();
    let (code, _, err) = common::cli::otad(&[
        "device",
        "block",
        "--config",
        config,
        "C02RENEWBLK",
        "--reason",
        "stolen",
    ]);
    assert_eq!(code, 0, "{err}");
    let certs = count_records(&server, RecordKind::Cert);

    // Neither the current certificate nor the one it was renewed as renews any more, and a
    // repeat of the renewal already made is not answered with its certificate either.
    let current = Identity {
        key: new_key,
        certificate: renewed,
    };
    for (label, signer) in [("blocked-old", &old), ("blocked-new", &current)] {
        let reply = scep.send(MessageType::RenewalReq, label, &request, signer);
        assert_eq!(reply.status, PkiStatus::Failure, "{label}");
        assert_eq!(failure(&reply), FailInfo::BadRequest, "{label}");
        assert!(reply.certificates.is_empty(), "{label}");
    }
    assert_eq!(
        count_records(&server, RecordKind::Cert),
        certs,
        "no certificate issued"
    );
    let log = server.log();
    assert!(
        log.contains("C02RENEWBLK: blocked by admin (stolen) (failInfo BadRequest)"),
        "{log}"
    );
}

#[test]
fn the_static_challenge_mints_no_certificate_for_an_ota_devices_udid() {
    let server = static_challenge_server("auto");
    let scep = Scep::new(&server);
    let mut options = server.device_options();
    options.udid = Some("00008030-00AA11BB22CC33DD".into());
    let device = Device::new(&options).unwrap();
    let phase1 = device.phase1(&server.url).unwrap();
    device.phase2(&phase1).unwrap();
    let certs = count_records(&server, RecordKind::Cert);

    let (_, _, _, reply) = pkcs_req(&scep, "00008030-00AA11BB22CC33DD", STATIC_CHALLENGE);
    assert_eq!(failure(&reply), FailInfo::BadRequest);
    assert_eq!(
        count_records(&server, RecordKind::Cert),
        certs,
        "nothing issued"
    );
    assert!(
        server
            .log()
            .contains("is the UDID of a device enrolled over the air"),
        "{}",
        server.log()
    );

    let (_, _, _, reply) = pkcs_req(&scep, "00008030-00aa11bb22cc33dd", STATIC_CHALLENGE);
    assert_eq!(failure(&reply), FailInfo::BadRequest, "in another case too");

    // Any other CN, a UDID-shaped one of no known device included, is served as before.
    for cn in ["laptop-1", "00008030-00AA11BB22CC33DE"] {
        let (_, _, _, reply) = pkcs_req(&scep, cn, STATIC_CHALLENGE);
        assert_eq!(reply.status, PkiStatus::Success, "{cn}");
    }
}

#[test]
fn an_approved_request_is_not_delivered_once_its_device_is_blocked() {
    let server = TestServer::start(|config| set_key(&config, "scep", "approval", "\"manual\""));
    let scep = Scep::new(&server);
    let mut options = server.device_options();
    options.serial = Some("C02APPRBLK".into());
    let device = Device::new(&options).unwrap();
    let phase1 = device.phase1(&server.url).unwrap();
    let payload = device.phase2(&phase1).unwrap();
    let cn = payload.common_name().unwrap().to_string();
    let (identity, request, transaction_id, reply) = pkcs_req(&scep, &cn, &payload.challenge);
    assert_eq!(reply.status, PkiStatus::Pending);
    let id = listed(&server)[0]["id"].as_str().unwrap().to_string();
    let approved = otad_request(&server, &["approve", &id]);
    assert!(approved.status.success(), "{}", text(&approved));

    let config = server.config_path();
    let config = config.to_str().unwrap();
    let (code, _, err) = common::cli::otad(&["device", "block", "--config", config, "C02APPRBLK"]);
    assert_eq!(code, 0, "{err}");
    let polled = scep.poll(&transaction_id, &request, &identity);
    assert_eq!(failure(&polled), FailInfo::BadRequest);
    assert!(polled.certificates.is_empty());

    // Unblocked, the next poll gets the certificate that was approved.
    let (code, _, err) =
        common::cli::otad(&["device", "unblock", "--config", config, "C02APPRBLK"]);
    assert_eq!(code, 0, "{err}");
    let polled = scep.poll(&transaction_id, &request, &identity);
    assert_eq!(polled.status, PkiStatus::Success);
    assert_eq!(polled.certificates.len(), 1);
}

#[test]
fn get_cert_answers_a_known_serial_and_refuses_an_unknown_one() {
    let server = static_challenge_server("auto");
    let scep = Scep::new(&server);
    let (_, _, _, reply) = pkcs_req(&scep, "someone", STATIC_CHALLENGE);
    let theirs = issued(&reply);

    // Anyone may fetch a certificate; the reply is encrypted to the asker.
    let asker = throwaway("asker");
    let tbs = x509_cert::Certificate::from_der(&theirs)
        .unwrap()
        .tbs_certificate;
    let known = cms::cert::IssuerAndSerialNumber {
        issuer: tbs.issuer.clone(),
        serial_number: tbs.serial_number.clone(),
    };
    let reply = scep.send(
        MessageType::GetCert,
        "get-1",
        &known.to_der().unwrap(),
        &asker,
    );
    assert_eq!(issued(&reply), theirs);

    let unknown = cms::cert::IssuerAndSerialNumber {
        issuer: tbs.issuer.clone(),
        serial_number: x509_cert::serial_number::SerialNumber::new(&[0x01, 0x02, 0x03]).unwrap(),
    };
    let reply = scep.send(
        MessageType::GetCert,
        "get-2",
        &unknown.to_der().unwrap(),
        &asker,
    );
    assert_eq!(failure(&reply), FailInfo::BadCertId);

    let other_issuer = cms::cert::IssuerAndSerialNumber {
        issuer: tbs.subject.clone(),
        serial_number: tbs.serial_number.clone(),
    };
    let reply = scep.send(
        MessageType::GetCert,
        "get-3",
        &other_issuer.to_der().unwrap(),
        &asker,
    );
    assert_eq!(failure(&reply), FailInfo::BadCertId);

    let reply = scep.send(MessageType::GetCert, "get-4", b"\x30\x00", &asker);
    assert_eq!(failure(&reply), FailInfo::BadRequest);
}

#[test]
fn manual_approval_queues_then_approve_and_deny_decide_what_polls_see() {
    let server = static_challenge_server("manual");
    let scep = Scep::new(&server);
    for (args, first_line) in [
        (vec!["--help"], "usage: otad request list"),
        (vec!["list", "--help"], "usage: otad request list"),
        (vec!["approve", "--help"], "usage: otad request approve"),
        (vec!["deny", "--help"], "usage: otad request deny"),
    ] {
        let output = Command::new(otad_bin())
            .arg("request")
            .args(&args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {}", text(&output));
        assert!(
            text(&output).starts_with(first_line),
            "{args:?}: {}",
            text(&output)
        );
    }
    assert!(text(&otad_request(&server, &["list"])).contains("no requests"));

    // PKCSReq: everything is checked now, and the answer is PENDING.
    let identity = throwaway("waiting-client");
    let request = csr::build(&identity.key, "waiting-client", Some(STATIC_CHALLENGE)).unwrap();
    let first_message = scep.build(MessageType::PkcsReq, "manual-1", &request, &identity);
    let reply = scep.post(&first_message, "manual-1", &identity);
    assert_eq!(reply.status, PkiStatus::Pending);
    assert_eq!(
        count_records(&server, RecordKind::Cert),
        0,
        "nothing issued yet"
    );
    let requests = listed(&server);
    assert_eq!(requests.len(), 1);
    let id = requests[0]["id"].as_str().unwrap().to_string();
    assert_eq!(requests[0]["status"], "pending");
    assert_eq!(requests[0]["transaction_id"], "manual-1");
    assert_eq!(requests[0]["subject"], "CN=waiting-client, O=Test Org");
    assert_eq!(requests[0]["authorised_by"], "static");
    let listing = text(&otad_request(&server, &["list"]));
    assert!(listing.starts_with("ID  "), "a header row first: {listing}");
    let row = listing.lines().nth(1).unwrap_or_default();
    assert!(row.starts_with(&format!("{id}  pending")), "{listing}");

    // A PKCSReq with a wrong challenge is refused at once and queues nothing.
    let (_, _, _, refused) = pkcs_req(&scep, "wrong", "not-the-challenge");
    assert_eq!(failure(&refused), FailInfo::BadRequest);
    assert_eq!(listed(&server).len(), 1);

    // CertPoll while pending; for another subject or an unknown transaction, badCertId.
    assert_eq!(
        scep.poll("manual-1", &request, &identity).status,
        PkiStatus::Pending
    );
    let other_subject = csr::build(&identity.key, "someone-else", None).unwrap();
    assert_eq!(
        failure(&scep.poll("manual-1", &other_subject, &identity)),
        FailInfo::BadCertId
    );
    assert_eq!(
        failure(&scep.poll("no-such-transaction", &request, &identity)),
        FailInfo::BadCertId
    );
    // Polling needs the request's key.
    let impostor = throwaway("waiting-client");
    assert_eq!(
        failure(&scep.poll("manual-1", &request, &impostor)),
        FailInfo::BadMessageCheck
    );

    // Approve: the certificate is issued now, and the next poll gets it.
    let output = otad_request(&server, &["approve", &id]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("approved; issued certificate"),
        "{}",
        text(&output)
    );
    let certificate = issued(&scep.poll("manual-1", &request, &identity));
    assert_eq!(
        cert::spki_der(&certificate).unwrap(),
        identity.key.public_key_spki_der()
    );
    // A poll signed by another throwaway certificate for the same key is answered to it.
    let same_key = recertified(&identity, "waiting-client");
    assert_ne!(same_key.certificate, identity.certificate);
    assert_eq!(
        issued(&scep.poll("manual-1", &request, &same_key)),
        certificate
    );
    assert_eq!(
        cert::summarize(&certificate).unwrap().subject,
        "CN=waiting-client, O=Test Org"
    );
    assert_eq!(
        cert_record(&server, &serial(&certificate))["authorised_by"],
        "approved"
    );
    // The same PKCSReq sent again (scepclient's way of polling) gets the same certificate.
    assert_eq!(
        issued(&scep.post(&first_message, "manual-1", &identity)),
        certificate
    );
    let again = otad_request(&server, &["approve", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again).contains("already approved"),
        "{}",
        text(&again)
    );
    assert_eq!(count_records(&server, RecordKind::Cert), 1);

    // Deny: the next poll is FAILURE badRequest.
    let (denied, denied_csr, denied_tid, reply) =
        pkcs_req(&scep, "denied-client", STATIC_CHALLENGE);
    assert_eq!(reply.status, PkiStatus::Pending);
    let denied_id = listed(&server)
        .iter()
        .find(|r| r["transaction_id"] == denied_tid.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let output = otad_request(
        &server,
        &["deny", &denied_id, "--reason", "not one of ours"],
    );
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        failure(&scep.poll(&denied_tid, &denied_csr, &denied)),
        FailInfo::BadRequest
    );
    assert!(server.log().contains("denied: not one of ours"));
    let output = otad_request(&server, &["approve", &denied_id]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains("already denied (not one of ours)"));
    let output = otad_request(&server, &["approve", "0123456789abcdef0123456789abcdef"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains("not found"), "{}", text(&output));
    assert_eq!(count_records(&server, RecordKind::Cert), 1);
    // Both requests arrived within the same second: the order between them is not fixed.
    let mut statuses: Vec<String> = listed(&server)
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect();
    statuses.sort();
    assert_eq!(statuses, ["approved", "denied"]);
}

#[test]
fn manual_approval_spends_a_one_time_challenge_at_request_time() {
    let server = TestServer::start(|config| set_key(&config, "scep", "approval", "\"manual\""));
    let scep = Scep::new(&server);
    let mut options = server.device_options();
    options.udid = Some("00008030-0000000000000001".into());
    let device = Device::new(&options).unwrap();
    let payload = device.phase2(&device.phase1(&server.url).unwrap()).unwrap();
    let challenges = count_records(&server, RecordKind::Challenge);

    let cn = payload.common_name().unwrap().to_string();
    let (identity, request, transaction_id, reply) = pkcs_req(&scep, &cn, &payload.challenge);
    assert_eq!(reply.status, PkiStatus::Pending);
    assert_eq!(
        count_records(&server, RecordKind::Challenge),
        challenges - 1,
        "spent now"
    );
    let (_, _, _, second) = pkcs_req(&scep, &cn, &payload.challenge);
    assert_eq!(failure(&second), FailInfo::BadRequest, "and only once");

    let id = listed(&server)[0]["id"].as_str().unwrap().to_string();
    assert_eq!(listed(&server)[0]["udid"], "00008030-0000000000000001");
    let output = otad_request(&server, &["approve", &id]);
    assert!(output.status.success(), "{}", text(&output));
    let certificate = issued(&scep.poll(&transaction_id, &request, &identity));
    assert_eq!(
        cert::summarize(&certificate).unwrap().subject,
        "CN=00008030-0000000000000001, O=Test Org"
    );
    let device = server.device_record("00008030-0000000000000001").unwrap();
    assert_eq!(device["phase"], "certified");
    assert_eq!(
        device["certificates"],
        serde_json::json!([serial(&certificate)])
    );
}

/// Runs scepclient in `dir` with the static challenge, as a child process.
fn spawn_scepclient(dir: &Path, server: &TestServer, cn: &str) -> std::process::Child {
    Command::new("scepclient")
        .current_dir(dir)
        .args(["-server-url", &format!("{}/scep", server.url)])
        .args(["-challenge", STATIC_CHALLENGE])
        .args([
            "-private-key",
            "key.pem",
            "-certificate",
            "cert.pem",
            "-cn",
            cn,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a scepclient child; kills it at the deadline.
fn finish(mut child: std::process::Child) -> (bool, String) {
    let deadline = Instant::now() + SCEPCLIENT_DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().unwrap();
    (output.status.success(), text(&output))
}

#[test]
fn scepclient_renews_when_it_already_holds_a_certificate() {
    if !have("scepclient", "-version") || !have("openssl", "version") {
        return;
    }
    let server = static_challenge_server("auto");
    let dir = server.dir.path().join("client");
    std::fs::create_dir(&dir).unwrap();
    let (ok, output) = finish(spawn_scepclient(&dir, &server, "renewing-scepclient"));
    assert!(ok, "first enrollment: {output}\n{}", server.log());
    let first = cert::pem_to_der(&std::fs::read_to_string(dir.join("cert.pem")).unwrap()).unwrap();

    // With cert.pem present, scepclient sends a RenewalReq signed by it (same key, same CSR).
    let (ok, output) = finish(spawn_scepclient(&dir, &server, "renewing-scepclient"));
    assert!(ok, "renewal: {output}\n{}", server.log());
    let second = cert::pem_to_der(&std::fs::read_to_string(dir.join("cert.pem")).unwrap()).unwrap();
    assert_ne!(serial(&first), serial(&second));
    assert_eq!(
        cert::spki_der(&first).unwrap(),
        cert::spki_der(&second).unwrap()
    );
    assert_eq!(
        cert::summarize(&second).unwrap().subject,
        cert::summarize(&first).unwrap().subject
    );
    assert_eq!(
        cert_record(&server, &serial(&first))["superseded_by"],
        serial(&second).as_str()
    );
    assert_eq!(
        cert_record(&server, &serial(&second))["authorised_by"],
        "renewal"
    );
    let ca = server.state_file("ca/ca.pem");
    let verified = openssl(
        &dir,
        &["verify", "-CAfile", ca.to_str().unwrap(), "cert.pem"],
    );
    assert!(String::from_utf8_lossy(&verified).contains("cert.pem: OK"));
}

#[test]
fn scepclient_waits_for_manual_approval_and_then_gets_its_certificate() {
    if !have("scepclient", "-version") || !have("openssl", "version") {
        return;
    }
    let server = static_challenge_server("manual");
    let dir = server.dir.path().join("patient");
    std::fs::create_dir(&dir).unwrap();
    let child = spawn_scepclient(&dir, &server, "patient-scepclient");

    // Approve while it waits (it sends its PKCSReq again every 30 seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let requests = listed(&server);
        if let Some(request) = requests.first() {
            break request["id"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no request queued: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!dir.join("cert.pem").exists());
    let output = otad_request(&server, &["approve", &id]);
    assert!(output.status.success(), "{}", text(&output));

    let (ok, output) = finish(child);
    assert!(ok, "scepclient: {output}\n{}", server.log());
    assert!(output.contains("PENDING"), "it was told to wait: {output}");
    let ca = server.state_file("ca/ca.pem");
    let verified = openssl(
        &dir,
        &["verify", "-CAfile", ca.to_str().unwrap(), "cert.pem"],
    );
    assert!(String::from_utf8_lossy(&verified).contains("cert.pem: OK"));
    let subject = openssl(&dir, &["x509", "-in", "cert.pem", "-noout", "-subject"]);
    assert!(String::from_utf8_lossy(&subject).contains("CN = patient-scepclient, O = Test Org"));
    assert_eq!(listed(&server)[0]["status"], "approved");
}

#[test]
fn racing_renewals_of_one_certificate_issue_once() {
    let server = static_challenge_server("auto");
    let scep = Scep::new(&server);
    let (first_key, _, _, reply) = pkcs_req(&scep, "racing-client", STATIC_CHALLENGE);
    let old = Identity {
        key: first_key.key,
        certificate: issued(&reply),
    };
    let new_key = RsaPrivateKey::generate(2048).unwrap();
    let request = csr::build(&new_key, "racing-client", None).unwrap();
    let messages: Vec<Vec<u8>> = (0..6)
        .map(|n| {
            scep.build(
                MessageType::RenewalReq,
                &format!("race-{n}"),
                &request,
                &old,
            )
        })
        .collect();
    let certs_before = count_records(&server, RecordKind::Cert);

    let scep = std::sync::Arc::new(scep);
    let old = std::sync::Arc::new(old);
    let handles: Vec<_> = messages
        .into_iter()
        .enumerate()
        .map(|(n, message)| {
            let (scep, old) = (std::sync::Arc::clone(&scep), std::sync::Arc::clone(&old));
            std::thread::spawn(move || issued(&scep.post(&message, &format!("race-{n}"), &old)))
        })
        .collect();
    let answers: Vec<Vec<u8>> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    assert_eq!(
        count_records(&server, RecordKind::Cert),
        certs_before + 1,
        "one renewal issued"
    );
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "every racer got the one successor"
    );
}

#[test]
fn a_transaction_id_stays_with_the_key_it_was_first_used_for() {
    let server = static_challenge_server("manual");
    let scep = Scep::new(&server);
    let first = throwaway("first-client");
    let request = csr::build(&first.key, "first-client", Some(STATIC_CHALLENGE)).unwrap();
    let reply = scep.send(MessageType::PkcsReq, "T-shared", &request, &first);
    assert_eq!(reply.status, PkiStatus::Pending);

    // Someone else, with a valid challenge of their own, reuses the transactionID.
    let other = throwaway("other-client");
    let request = csr::build(&other.key, "other-client", Some(STATIC_CHALLENGE)).unwrap();
    let reply = scep.send(MessageType::PkcsReq, "T-shared", &request, &other);
    assert_eq!(failure(&reply), FailInfo::BadRequest);
    assert_eq!(
        listed(&server).len(),
        1,
        "nothing was queued for the second key"
    );
    assert!(server.log().contains("already used by request"));
}
