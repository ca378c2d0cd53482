//! Revocation, CRLs and CA import against a real `otad serve` on loopback: `otad cert revoke`
//! while the server runs, `GET /crl` read by `openssl crl`, SCEP GetCRL by our own client,
//! phase 3 refusing a revoked certificate, and `otad init --ca-cert --ca-key` taking over a
//! micromdm/scep depot (made by Debian's `scepserver`) and an encrypted PKCS#8 key.
//!
//! Where `openssl` or `scepserver` is missing the test says so and skips, except under
//! `CI=true` (CI installs both).

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::der;
use common::server::{otad_bin, set_key, TestServer};
use common::tools::{have, openssl};
use otad::cms::{enveloped, signed, ContentCipher, DigestAlgorithm};
use otad::httpclient;
use otad::pki::cert;
use otad::scep::message::{self, FailInfo, MessageType, PkiStatus, RequestParams};
use otad::simulate::Device;

fn run(args: &[&str]) -> Output {
    Command::new(otad_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run otad")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `openssl` in `dir` with the arguments of `line`, split at spaces.
fn openssl_line(dir: &Path, line: &str) -> Vec<u8> {
    openssl(dir, &line.split_whitespace().collect::<Vec<_>>())
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// `GET <url>/crl`, checked for status and media type.
fn get_crl(url: &str) -> Vec<u8> {
    let response = httpclient::get(&format!("{url}/crl")).expect("GET /crl");
    assert_eq!(response.status, 200, "{:?}", response.body);
    assert_eq!(
        response.content_type.as_deref(),
        Some("application/pkix-crl")
    );
    response.body
}

/// `openssl crl -text` of a DER CRL, verified against `ca_pem`; returns the text.
fn openssl_crl(dir: &Path, crl_der: &[u8], ca_pem: &Path) -> String {
    let file = dir.join("crl.der");
    std::fs::write(&file, crl_der).unwrap();
    let output = Command::new("openssl")
        .args([
            "crl",
            "-inform",
            "DER",
            "-in",
            path_str(&file),
            "-noout",
            "-text",
        ])
        .args(["-CAfile", path_str(ca_pem)])
        .output()
        .expect("run openssl crl");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "openssl crl: {stderr}");
    assert!(stderr.contains("verify OK"), "openssl crl: {stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The CRL Number openssl prints.
fn crl_number(openssl_text: &str) -> u64 {
    let mut lines = openssl_text.lines();
    lines
        .by_ref()
        .find(|line| line.contains("X509v3 CRL Number:"))
        .expect("a CRL Number");
    lines.next().unwrap().trim().parse().unwrap()
}

/// DER of the IssuerAndSerialNumber naming `certificate`, with `issuer` instead of its
/// issuer if given.
fn issuer_and_serial(certificate: &[u8], issuer: Option<&[u8]>) -> Vec<u8> {
    let (outer, _) = der::split(certificate).unwrap();
    let (tbs, _) = der::split(outer.content).unwrap();
    let fields = der::children(tbs.content).unwrap();
    // tbsCertificate: [0] version, serialNumber, signature, issuer, …
    let serial = fields[1].raw;
    let own_issuer = fields[3].raw;
    der::encode(0x30, &[issuer.unwrap_or(own_issuer), serial].concat())
}

/// A GetCRL pkiMessage from the device's SCEP identity, to the RA.
fn get_crl_request(device: &Device, ra: &[u8], query: &[u8], transaction_id: &str) -> Vec<u8> {
    let identity = device.scep_identity.as_ref().expect("an SCEP identity");
    let params = RequestParams {
        message_type: MessageType::GetCrl,
        transaction_id,
        sender_nonce: message::new_nonce(),
        digest: DigestAlgorithm::Sha256,
        cipher: ContentCipher::Aes128Cbc,
        recipient: ra,
        signer_certificate: &identity.certificate,
        signer_key: identity.key.signing(),
    };
    message::build_request(query, &params).unwrap()
}

fn post_pki_message(url: &str, body: &[u8]) -> Vec<u8> {
    let response = httpclient::post(
        &format!("{url}/scep?operation=PKIOperation"),
        "application/x-pki-message",
        body,
    )
    .expect("POST PKIOperation");
    assert_eq!(response.status, 200, "{:?}", response.body);
    response.body
}

/// The CRL inside a GetCRL CertRep SUCCESS: verified as the RA's, decrypted with the device
/// key, read from the degenerate SignedData's `crls [1]`.
fn crl_from_cert_rep(reply: &[u8], ra: &[u8], device: &Device) -> Vec<u8> {
    let identity = device.scep_identity.as_ref().unwrap();
    let message = signed::verify(reply).unwrap();
    assert_eq!(message.signer.certificate, ra, "signed by the RA");
    let status = message
        .signed_attribute(&otad::cms::oid::PKI_STATUS)
        .and_then(message::read_string);
    assert_eq!(status.as_deref(), Some("0"), "pkiStatus SUCCESS");
    let inner = enveloped::decrypt(
        message.content.as_deref().unwrap(),
        &identity.certificate,
        identity.key.decrypting(),
    )
    .unwrap();
    let fields = der::signed_data_fields(&inner.content).unwrap();
    assert!(
        fields.iter().all(|field| field.first() != Some(&0xa0)),
        "no certificates in a GetCRL reply"
    );
    let crls = fields
        .iter()
        .find(|field| field.first() == Some(&0xa1))
        .expect("crls [1]");
    let (crls, _) = der::split(crls).unwrap();
    let only = der::children(crls.content).unwrap();
    assert_eq!(only.len(), 1, "one CRL");
    only[0].raw.to_vec()
}

#[test]
fn a_revoked_certificate_is_listed_by_get_crl_and_getcrl_and_refused_in_phase_3() {
    if !have("openssl", "version") {
        return;
    }
    let server = TestServer::start(|config| config);
    let config = server.state_file("otad.toml");
    let ca_pem = server.state_file("ca/ca.pem");
    let ra = cert::pem_to_der(&std::fs::read_to_string(server.state_file("ca/ra.pem")).unwrap())
        .unwrap();

    // Before any revocation the server signs an empty CRL, number 1, and keeps serving it.
    let first = get_crl(&server.url);
    let first_text = openssl_crl(server.dir.path(), &first, &ca_pem);
    assert_eq!(crl_number(&first_text), 1);
    assert!(
        first_text.contains("No Revoked Certificates."),
        "{first_text}"
    );
    assert_eq!(get_crl(&server.url), first, "not re-signed while current");

    let mut device = Device::new(&server.device_options()).unwrap();
    let phase1 = device.phase1(&server.url).unwrap();
    let scep = device.phase2(&phase1).unwrap();
    let certificate = device.enroll_scep(&scep).unwrap();
    let serial = cert::serial_hex(&certificate).unwrap();

    // The CLI works beside the running server.
    let listed = run(&["cert", "list", "--config", path_str(&config)]);
    assert!(listed.status.success(), "{}", text(&listed));
    let line = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .find(|line| line.starts_with(&serial))
        .map(str::to_string)
        .expect("the new certificate is listed");
    assert!(
        line.contains("valid") && line.contains(&device.udid),
        "{line}"
    );

    let revoked = run(&[
        "cert",
        "revoke",
        "--config",
        path_str(&config),
        &serial,
        "--reason",
        "keyCompromise",
    ]);
    assert!(revoked.status.success(), "{}", text(&revoked));
    assert!(
        text(&revoked).contains("CRL number 2"),
        "{}",
        text(&revoked)
    );
    let twice = run(&["cert", "revoke", "--config", path_str(&config), &serial]);
    assert_eq!(twice.status.code(), Some(1));
    assert!(text(&twice).contains("already revoked"), "{}", text(&twice));

    // GET /crl: the new CRL, verified by openssl, the serial listed with its reason.
    let crl = get_crl(&server.url);
    let crl_text = openssl_crl(server.dir.path(), &crl, &ca_pem);
    assert_eq!(crl_number(&crl_text), 2, "the CRL number grew");
    assert!(
        crl_text.contains(&format!("Serial Number: {}", serial.to_uppercase())),
        "{crl_text}"
    );
    assert!(crl_text.contains("Key Compromise"), "{crl_text}");
    assert_eq!(crl, std::fs::read(server.state_file("crl.der")).unwrap());

    // SCEP GetCRL: the same CRL, in a CertRep encrypted to the asking certificate.
    let query = issuer_and_serial(&certificate, None);
    let reply = post_pki_message(
        &server.url,
        &get_crl_request(&device, &ra, &query, "getcrl-1"),
    );
    assert_eq!(crl_from_cert_rep(&reply, &ra, &device), crl);

    // A GetCRL naming another issuer: FAILURE badCertId.
    let stranger = der::encode(0x30, &der::encode(0x31, &[]));
    let query = issuer_and_serial(&certificate, Some(&stranger));
    let reply = post_pki_message(
        &server.url,
        &get_crl_request(&device, &ra, &query, "getcrl-2"),
    );
    let identity = device.scep_identity.as_ref().unwrap();
    let parsed = message::parse_reply(
        &reply,
        &[ra.as_slice()],
        &identity.certificate,
        identity.key.decrypting(),
    )
    .unwrap();
    assert_eq!(parsed.status, PkiStatus::Failure);
    assert_eq!(parsed.fail_info, Some(FailInfo::BadCertId));
    assert_eq!(parsed.transaction_id, "getcrl-2");

    // Phase 3 with the revoked certificate: 403, revoked.
    let err = device
        .phase3(&phase1)
        .expect_err("a revoked certificate must not pass phase 3");
    assert!(err.contains("403"), "{err}");
    assert!(err.contains("revoked"), "{err}");

    // `otad cert show` and `list --json` tell the same story.
    let shown = run(&["cert", "show", "--config", path_str(&config), &serial]);
    assert!(shown.status.success(), "{}", text(&shown));
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.contains("status: revoked"), "{shown}");
    assert!(shown.contains("(keyCompromise)"), "{shown}");
    assert!(shown.contains(&cert::der_to_pem(&certificate)), "{shown}");
    let json = run(&["cert", "list", "--config", path_str(&config), "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(rows[0]["status"], "revoked");
    assert_eq!(rows[0]["serial"], serial.as_str());

    let post = httpclient::post(&format!("{}/crl", server.url), "text/plain", b"x").unwrap();
    assert_eq!(post.status, 405);
}

#[test]
fn cert_commands_explain_themselves_and_refuse_wrong_lines() {
    for sub in ["list", "show", "revoke", "import"] {
        let help = run(&["cert", sub, "--help"]);
        assert!(help.status.success());
        assert!(
            String::from_utf8_lossy(&help.stdout).starts_with(&format!("usage: otad cert {sub}")),
            "{}",
            text(&help)
        );
    }
    let wrong = run(&[
        "cert", "revoke", "--config", "x.toml", "0a", "--reason", "boredom",
    ]);
    assert_eq!(wrong.status.code(), Some(2));
    assert!(text(&wrong).contains("keyCompromise"), "{}", text(&wrong));
    let missing = run(&["cert", "list", "--config", "/nonexistent/otad.toml"]);
    assert_eq!(missing.status.code(), Some(1));
}

/// A free loopback port.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `otad serve` on a state this test made itself (TestServer makes its own with a new CA),
/// trusting a test device CA; killed on drop.
struct Served {
    child: Child,
    url: String,
    device_ca_dir: PathBuf,
    log: PathBuf,
}

impl Served {
    fn start(state: &Path, port: u16) -> Served {
        let device_ca_dir = state.with_file_name("device-ca");
        otad::simulate::load_or_create_device_ca(&device_ca_dir).unwrap();
        let config_path = state.join("otad.toml");
        let mut config = std::fs::read_to_string(&config_path).unwrap();
        config = set_key(&config, "http", "listen", &format!("\"127.0.0.1:{port}\""));
        let device_ca = device_ca_dir.join("device-ca.pem");
        config = set_key(
            &config,
            "ota",
            "extra_device_ca",
            &format!("[{device_ca:?}]"),
        );
        std::fs::write(&config_path, config).unwrap();

        let log = state.with_file_name("serve.log");
        let child = Command::new(otad_bin())
            .args(["serve", "--config", path_str(&config_path)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let served = Served {
            child,
            url: format!("http://127.0.0.1:{port}"),
            device_ca_dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if httpclient::get(&format!("{}/healthz", served.url)).is_ok_and(|r| r.status == 200) {
                return served;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "otad serve did not come up: {}",
            std::fs::read_to_string(&served.log).unwrap_or_default()
        );
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_micromdm_scep_depot_is_imported_and_its_certificates_recorded_and_revoked() {
    if !have("openssl", "version") || !have("scepserver", "-version") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let made = Command::new("scepserver")
        .current_dir(work)
        .args(["ca", "-init", "-depot", "depot", "-keySize", "2048"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let depot_ca = work.join("depot/ca.pem");
    // scepserver encrypts its key, with an empty password unless told one.
    let depot_key = std::fs::read_to_string(work.join("depot/ca.key")).unwrap();
    assert!(depot_key.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    assert!(depot_key.contains("Proc-Type: 4,ENCRYPTED"), "{depot_key}");

    let state = work.join("state");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let init = run(&[
        "init",
        "--state",
        path_str(&state),
        "--url",
        &url,
        "--ca-cert",
        path_str(&depot_ca),
        "--ca-key",
        path_str(&work.join("depot/ca.key")),
    ]);
    assert!(init.status.success(), "{}", text(&init));
    assert!(text(&init).contains("imported CA"), "{}", text(&init));

    // Our CA is the depot's; the RA and the profile signer are new, issued by it.
    let depot_der = cert::pem_to_der(&std::fs::read_to_string(&depot_ca).unwrap()).unwrap();
    let ours = cert::pem_to_der(&std::fs::read_to_string(state.join("ca/ca.pem")).unwrap());
    assert_eq!(ours.unwrap(), depot_der);
    for identity in ["ca/ra.pem", "ca/signer.pem"] {
        let path = state.join(identity);
        let verified = openssl(
            work,
            &["verify", "-CAfile", path_str(&depot_ca), path_str(&path)],
        );
        assert!(
            String::from_utf8_lossy(&verified).contains(": OK"),
            "{identity}"
        );
    }

    // A certificate the old CA issued (signed here with its key, as scepserver would).
    openssl_line(work, "genrsa -out old.key 2048");
    openssl_line(
        work,
        "req -new -key old.key -subj /CN=old-device -out old.csr",
    );
    std::fs::write(work.join("leaf.ext"), "basicConstraints=CA:FALSE\n").unwrap();
    openssl_line(
        work,
        "x509 -req -in old.csr -CA depot/ca.pem -CAkey depot/ca.key -passin pass: \
         -set_serial 0x1234 -days 30 -extfile leaf.ext -out old.pem",
    );

    let served = Served::start(&state, port);
    let config = state.join("otad.toml");

    // A device enrolls through all three phases under the imported CA.
    let options =
        otad::simulate::SimulateOptions::new(served.url.clone(), served.device_ca_dir.clone());
    let summary = otad::simulate::run(&options).unwrap_or_else(|err| {
        panic!(
            "{err}\n{}",
            std::fs::read_to_string(&served.log).unwrap_or_default()
        )
    });
    let issued = common::state::record(
        &state,
        common::state::RecordKind::Cert,
        &summary.certificate_serial,
    )
    .unwrap();
    std::fs::write(work.join("issued.pem"), issued["pem"].as_str().unwrap()).unwrap();
    let verified = openssl_line(work, "verify -CAfile depot/ca.pem issued.pem");
    assert!(String::from_utf8_lossy(&verified).contains("issued.pem: OK"));

    // The old certificate is recorded for a device, then revoked, while the server runs.
    let udid = "11111111-2222-3333-4444-555555555555";
    let imported = run(&[
        "cert",
        "import",
        "--config",
        path_str(&config),
        path_str(&work.join("old.pem")),
        "--udid",
        udid,
    ]);
    assert!(imported.status.success(), "{}", text(&imported));
    assert!(
        text(&imported).contains("imported 1234"),
        "{}",
        text(&imported)
    );
    let device = common::state::record(&state, common::state::RecordKind::Device, udid).unwrap();
    assert_eq!(device["phase"], "certified");
    assert_eq!(device["certificates"][0], "1234");

    // One the depot's key did not sign is refused.
    openssl_line(
        work,
        "req -x509 -new -key old.key -subj /CN=self -days 1 -out self.pem",
    );
    let self_signed = work.join("self.pem");
    let refused = run(&[
        "cert",
        "import",
        "--config",
        path_str(&config),
        path_str(&self_signed),
    ]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("not signed by this state's CA key"));

    let revoked = run(&[
        "cert",
        "revoke",
        "--config",
        path_str(&config),
        "12:34",
        "--reason",
        "cessationOfOperation",
    ]);
    assert!(revoked.status.success(), "{}", text(&revoked));
    let crl_text = openssl_crl(work, &get_crl(&served.url), &depot_ca);
    assert!(crl_text.contains("Serial Number: 1234"), "{crl_text}");
    assert!(crl_text.contains("Cessation Of Operation"), "{crl_text}");
}

/// A self-signed CA made by openssl in `dir`: `ca.pem` and `ca.key` (PKCS#8).
fn openssl_ca(dir: &Path) {
    openssl_line(dir, "genrsa -out ca.key 2048");
    openssl_line(
        dir,
        "req -x509 -new -key ca.key -subj /CN=Encrypted-Key-CA/O=Test -days 30 \
         -addext basicConstraints=critical,CA:TRUE \
         -addext keyUsage=critical,keyCertSign,cRLSign -out ca.pem",
    );
}

fn init_with_key(dir: &Path, state: &str, key: &str, extra: &[&str]) -> Output {
    let output = Command::new(otad_bin())
        .current_dir(dir)
        .args(["init", "--state", state, "--url", "http://127.0.0.1:9"])
        .args(["--ca-cert", "ca.pem", "--ca-key", key])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if !output.status.success() {
        assert!(!dir.join(state).exists(), "a refused init leaves no state");
    }
    output
}

#[test]
fn an_encrypted_pkcs8_ca_key_imports_with_its_password_and_refusals_are_clear() {
    if !have("openssl", "version") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    openssl_ca(work);
    std::fs::write(work.join("pass.txt"), "correct horse battery\n").unwrap();
    std::fs::write(work.join("wrong.txt"), "incorrect horse\n").unwrap();
    openssl_line(
        work,
        "pkcs8 -topk8 -v2 aes-256-cbc -in ca.key -out ca.p8 \
         -passout file:pass.txt",
    );
    assert!(std::fs::read_to_string(work.join("ca.p8"))
        .unwrap()
        .starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));

    let good = init_with_key(
        work,
        "good",
        "ca.p8",
        &["--ca-key-password-file", "pass.txt"],
    );
    assert!(good.status.success(), "{}", text(&good));
    let stored = std::fs::read_to_string(work.join("good/ca/ca.key")).unwrap();
    assert!(stored.starts_with("-----BEGIN PRIVATE KEY-----"));
    let ours = openssl_line(work, "pkey -in good/ca/ca.key -pubout");
    let theirs = openssl_line(work, "pkey -in ca.key -pubout");
    assert_eq!(ours, theirs, "the imported key is the CA's");
    let loaded = otad::context::Context::load(&work.join("good/otad.toml"));
    assert!(loaded.is_ok(), "the imported state loads as a server would");
    // The CA is valid for 30 days; what init issued under it does not outlive it.
    let not_after = |file: &str| {
        let pem = std::fs::read_to_string(work.join(file)).unwrap();
        cert::summarize(&cert::pem_to_der(&pem).unwrap())
            .unwrap()
            .not_after
    };
    let ca_not_after = not_after("ca.pem");
    for identity in ["good/ca/ra.pem", "good/ca/signer.pem"] {
        let issued = not_after(identity);
        assert!(issued <= ca_not_after, "{identity}");
        assert!(issued > ca_not_after - 2 * 86_400, "{identity}");
    }

    let wrong = init_with_key(
        work,
        "wrong",
        "ca.p8",
        &["--ca-key-password-file", "wrong.txt"],
    );
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    assert!(text(&wrong).contains("wrong password"), "{}", text(&wrong));

    let no_password = init_with_key(work, "none", "ca.p8", &[]);
    assert_eq!(no_password.status.code(), Some(1));
    assert!(
        text(&no_password).contains("--ca-key-password-file"),
        "{}",
        text(&no_password)
    );

    openssl_line(work, "genrsa -out other.key 2048");
    let mismatched = init_with_key(work, "mismatched", "other.key", &[]);
    assert_eq!(mismatched.status.code(), Some(1));
    assert!(
        text(&mismatched).contains("not the key of the certificate"),
        "{}",
        text(&mismatched)
    );

    // OpenSSL's legacy encrypted PEM (what a micromdm/scep depot holds) reads too.
    openssl_line(
        work,
        "rsa -in ca.key -traditional -aes256 -passout file:pass.txt \
         -out legacy.key",
    );
    let legacy = init_with_key(
        work,
        "legacy",
        "legacy.key",
        &["--ca-key-password-file", "pass.txt"],
    );
    assert!(legacy.status.success(), "{}", text(&legacy));
    let legacy_wrong = init_with_key(
        work,
        "legacy-wrong",
        "legacy.key",
        &["--ca-key-password-file", "wrong.txt"],
    );
    assert_eq!(legacy_wrong.status.code(), Some(1));
    assert!(
        text(&legacy_wrong).contains("wrong password"),
        "{}",
        text(&legacy_wrong)
    );

    // scrypt, as `openssl pkcs8 -scrypt` writes it, reads too.
    openssl_line(
        work,
        "pkcs8 -topk8 -scrypt -in ca.key -out ca.scrypt.p8 \
         -passout file:pass.txt",
    );
    let scrypt = init_with_key(
        work,
        "scrypt",
        "ca.scrypt.p8",
        &["--ca-key-password-file", "pass.txt"],
    );
    assert!(scrypt.status.success(), "{}", text(&scrypt));

    let half = Command::new(otad_bin())
        .current_dir(work)
        .args(["init", "--state", "half", "--url", "http://127.0.0.1:9"])
        .args(["--ca-cert", "ca.pem"])
        .output()
        .unwrap();
    assert_eq!(half.status.code(), Some(2), "{}", text(&half));
}

#[test]
fn a_leaf_certificate_is_not_taken_as_a_ca() {
    if !have("openssl", "version") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    openssl_line(work, "genrsa -out leaf.key 2048");
    openssl_line(
        work,
        "req -x509 -new -key leaf.key -subj /CN=leaf -days 30 \
         -addext basicConstraints=critical,CA:FALSE -out ca.pem",
    );
    let output = init_with_key(work, "state", "leaf.key", &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains("not a CA certificate"),
        "{}",
        text(&output)
    );
}

#[test]
fn a_ca_without_crl_sign_is_refused_in_one_sentence_that_says_what_to_do() {
    if !have("openssl", "version") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    openssl_line(work, "genrsa -out ca.key 2048");
    openssl_line(
        work,
        "req -x509 -new -key ca.key -subj /CN=No-CRL-CA -days 30 \
         -addext basicConstraints=critical,CA:TRUE \
         -addext keyUsage=critical,keyCertSign -out ca.pem",
    );
    let output = init_with_key(work, "state", "ca.key", &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr,
        "otad: --ca-cert ca.pem: its keyUsage lacks cRLSign, so otad cannot sign CRLs with \
         it; re-issue the CA certificate (same key) with keyUsage cRLSign, or leave out \
         --ca-cert and --ca-key to let otad init create a new CA\n"
    );
}

#[test]
fn a_ca_key_otad_cannot_use_is_named_with_what_it_takes_and_symlinks_are_refused_plainly() {
    if !have("openssl", "version") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    openssl_ca(work);
    std::fs::write(work.join("pass.txt"), "correct horse battery\n").unwrap();
    openssl_line(work, "ecparam -name prime256v1 -genkey -noout -out ec.key");
    openssl_line(work, "pkcs8 -topk8 -nocrypt -in ec.key -out ec.p8");
    openssl_line(
        work,
        "pkcs8 -topk8 -v2 aes-256-cbc -in ec.key -out ec.enc.p8 -passout file:pass.txt",
    );
    openssl_line(work, "genrsa -out small.key 1024");
    openssl_line(work, "rsa -in small.key -traditional -out small.pkcs1.key");
    openssl_line(work, "genpkey -algorithm ed25519 -out ed.key");

    let supported = "otad's CA needs an RSA key of 2048 to 8192 bits, in PKCS#1 (BEGIN RSA \
                     PRIVATE KEY) or PKCS#8 (BEGIN PRIVATE KEY) PEM, either of them optionally \
                     encrypted\n";
    let cases: [(&str, &[&str], &str); 6] = [
        (
            "ec.key",
            &[],
            "an EC key (P-256) in SEC1 PEM (BEGIN EC PRIVATE KEY)",
        ),
        ("ec.p8", &[], "an EC key (P-256) in PKCS#8"),
        (
            "ec.enc.p8",
            &["--ca-key-password-file", "pass.txt"],
            "decrypted, it holds an EC key (P-256) in PKCS#8",
        ),
        (
            "small.key",
            &[],
            "an RSA key of 1024 bits in PKCS#8, too small",
        ),
        (
            "small.pkcs1.key",
            &[],
            "an RSA key of 1024 bits in PKCS#1, too small",
        ),
        ("ed.key", &[], "an Ed25519 key in PKCS#8"),
    ];
    for (n, (key, extra, found)) in cases.into_iter().enumerate() {
        let output = init_with_key(work, &format!("state{n}"), key, extra);
        assert_eq!(output.status.code(), Some(1), "{key}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            stderr,
            format!("otad: --ca-key {key}: {found}: {supported}"),
            "{key}"
        );
    }

    // A symlinked key or certificate: refused, with the reason and the real path.
    std::os::unix::fs::symlink("ca.key", work.join("link.key")).unwrap();
    std::os::unix::fs::symlink("ca.pem", work.join("link.pem")).unwrap();
    let real_key = std::fs::canonicalize(work.join("ca.key")).unwrap();
    let output = init_with_key(work, "linked", "link.key", &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!(
            "otad: --ca-key link.key: a symbolic link, refused: otad init reads only the file it \
             is named, never where a link leads (a link can be re-pointed to another file); \
             give the file itself: {}\n",
            real_key.display()
        )
    );
    let output = Command::new(otad_bin())
        .current_dir(work)
        .args(["init", "--state", "linked", "--url", "http://127.0.0.1:9"])
        .args(["--ca-cert", "link.pem", "--ca-key", "ca.key"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .starts_with("otad: --ca-cert link.pem: a symbolic link, refused: "),
        "{}",
        text(&output)
    );

    // A key others can read: imported, with a warning on stderr.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(work.join("ca.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = init_with_key(work, "readable", "ca.key", &[]);
    assert!(output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(
            "otad: warning: --ca-key ca.key: readable by its group and others (mode 0644): \
             anyone who can read it can issue device identities your MDM server trusts"
        ),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("created readable"));
    std::fs::set_permissions(work.join("ca.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = init_with_key(work, "private", "ca.key", &[]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(output.stderr.is_empty(), "{}", text(&output));
}
