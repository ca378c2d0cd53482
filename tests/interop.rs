//! Interop with clients no one here wrote: Debian's `scepclient` (micromdm/scep 2.1) for
//! SCEP, and `openssl cms` as an independent signer and reader of phase 3.
//!
//! Where `scepclient` or `openssl` is missing the test says so and skips, except under
//! `CI=true` (CI installs both).

mod common;

use std::path::Path;
use std::process::Command;

use common::server::{set_key, TestServer};
use common::state::RecordKind;
use common::tools::{have, openssl, openssl_decrypt, payload_types};
use otad::httpclient;
use otad::simulate::Device;

const STATIC_CHALLENGE: &str = "interop-static-challenge";

/// Runs scepclient in `dir`; returns whether it exited 0, and its output.
fn scepclient(dir: &Path, url: &str, challenge: &str, cn: &str) -> (bool, String) {
    let output = Command::new("scepclient")
        .current_dir(dir)
        .args([
            "-server-url",
            &format!("{url}/scep"),
            "-challenge",
            challenge,
        ])
        .args([
            "-private-key",
            "key.pem",
            "-certificate",
            "cert.pem",
            "-cn",
            cn,
        ])
        .output()
        .expect("run scepclient");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn scepclient_enrolls_with_the_static_challenge_and_not_with_a_wrong_one() {
    if !have("scepclient", "-version") || !have("openssl", "version") {
        return;
    }
    let server = TestServer::start(|config| {
        let config = set_key(
            &config,
            "scep",
            "challenge",
            &format!("\"{STATIC_CHALLENGE}\""),
        );
        set_key(
            &config,
            "scep",
            "subject",
            r#"["CN=$CN", "OU=Lab", "O=$ORGANIZATION"]"#,
        )
    });

    let good = server.dir.path().join("good");
    std::fs::create_dir(&good).unwrap();
    let (ok, output) = scepclient(&good, &server.url, STATIC_CHALLENGE, "interop-client");
    assert!(ok, "scepclient failed: {output}\n{}", server.log());
    let ca = server.state_file("ca/ca.pem");
    let verified = openssl(
        &good,
        &["verify", "-CAfile", ca.to_str().unwrap(), "cert.pem"],
    );
    assert!(String::from_utf8_lossy(&verified).contains("cert.pem: OK"));
    let subject = openssl(&good, &["x509", "-in", "cert.pem", "-noout", "-subject"]);
    let subject = String::from_utf8_lossy(&subject);
    assert!(
        subject.contains("CN = interop-client, OU = Lab, O = Test Org"),
        "{subject}"
    );
    let issued = std::fs::read_to_string(good.join("cert.pem")).unwrap();
    let serial =
        otad::pki::cert::serial_hex(&otad::pki::cert::pem_to_der(&issued).unwrap()).unwrap();
    let record = server.cert_record(&serial).unwrap();
    assert_eq!(record["authorised_by"], "static", "{record}");

    let bad = server.dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let certs_before = server.count(RecordKind::Cert);
    let (ok, output) = scepclient(&bad, &server.url, "a-wrong-challenge", "interop-client");
    assert!(!ok, "scepclient must fail with a wrong challenge: {output}");
    assert!(
        output.contains("badRequest"),
        "a signed CertRep FAILURE names the failInfo: {output}"
    );
    assert!(!bad.join("cert.pem").exists());
    assert_eq!(server.count(RecordKind::Cert), certs_before);
}

#[test]
fn scepclient_takes_the_phase_2_challenge_and_openssl_signs_phase_3() {
    if !have("scepclient", "-version") || !have("openssl", "version") {
        return;
    }
    let server = TestServer::start(|config| config);
    let device = Device::new(&server.device_options()).unwrap();
    let phase1 = device.phase1(&server.url).unwrap();
    let scep = device.phase2(&phase1).unwrap();

    // scepclient enrolls with the one-time challenge bound to this UDID; the subject comes
    // from the binding, whatever CN the client asks for.
    let dir = server.dir.path().join("ota-client");
    std::fs::create_dir(&dir).unwrap();
    let (ok, output) = scepclient(
        &dir,
        &server.url,
        &scep.challenge,
        "whatever-the-client-says",
    );
    assert!(ok, "scepclient failed: {output}\n{}", server.log());
    let subject = openssl(&dir, &["x509", "-in", "cert.pem", "-noout", "-subject"]);
    assert!(
        String::from_utf8_lossy(&subject).contains(&format!("CN = {}, O = Test Org", device.udid))
    );

    // The same challenge a second time is refused.
    let again = server.dir.path().join("again");
    std::fs::create_dir(&again).unwrap();
    let (ok, _) = scepclient(&again, &server.url, &scep.challenge, "x");
    assert!(!ok, "a one-time SCEP challenge works once");

    // Phase 3 signed by openssl with scepclient's key and certificate.
    std::fs::write(
        dir.join("attributes.plist"),
        device.attributes_plist(&phase1.challenge),
    )
    .unwrap();
    let body = openssl(
        &dir,
        &[
            "cms",
            "-sign",
            "-nodetach",
            "-binary",
            "-outform",
            "DER",
            "-in",
            "attributes.plist",
            "-signer",
            "cert.pem",
            "-inkey",
            "key.pem",
        ],
    );
    let response = httpclient::post(&phase1.url, "application/pkcs7-signature", &body).unwrap();
    assert_eq!(
        response.status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&response.body),
        server.log()
    );

    // openssl reads the final profile: signed by us, content encrypted to scepclient's key.
    std::fs::write(dir.join("phase3.der"), &response.body).unwrap();
    let ca = server.state_file("ca/ca.pem");
    let profile = openssl(
        &dir,
        &[
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            "phase3.der",
            "-CAfile",
            ca.to_str().unwrap(),
            "-purpose",
            "any",
        ],
    );
    let profile = plist::Value::from_reader_xml(&profile[..])
        .unwrap()
        .into_dictionary()
        .unwrap();
    assert!(profile.get("PayloadContent").is_none());
    let sealed = profile["EncryptedPayloadContent"].as_data().unwrap();
    std::fs::write(dir.join("sealed.der"), sealed).unwrap();
    let payloads = openssl_decrypt(&dir, "sealed.der", "cert.pem", "key.pem");
    let payloads = plist::Value::from_reader_xml(&payloads[..]).unwrap();
    let types = payload_types(&payloads);
    assert_eq!(types, ["com.apple.security.scep", "com.apple.mdm"]);
}

#[test]
fn without_an_ra_the_ca_answers_and_get_ca_cert_is_the_bare_certificate() {
    if !have("scepclient", "-version") {
        return;
    }
    let server = TestServer::start(|config| {
        let config = set_key(
            &config,
            "scep",
            "challenge",
            &format!("\"{STATIC_CHALLENGE}\""),
        );
        set_key(&config, "scep", "ra", "false")
    });
    let response =
        otad::httpclient::get(&format!("{}/scep?operation=GetCACert", server.url)).unwrap();
    assert_eq!(
        response.content_type.as_deref(),
        Some("application/x-x509-ca-cert")
    );
    let pem = std::fs::read_to_string(server.state_file("ca/ca.pem")).unwrap();
    assert_eq!(response.body, otad::pki::cert::pem_to_der(&pem).unwrap());

    let dir = server.dir.path().join("no-ra");
    std::fs::create_dir(&dir).unwrap();
    let (ok, output) = scepclient(&dir, &server.url, STATIC_CHALLENGE, "no-ra-client");
    assert!(ok, "scepclient failed: {output}\n{}", server.log());
    assert!(
        server.log().contains("scep.ra = false"),
        "the start-up warning says what it means"
    );
}
