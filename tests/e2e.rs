//! End to end: a real `otad serve` on loopback, driven by `otad simulate` devices through
//! phase 1, phase 2, SCEP and phase 3, and by requests that must be refused.

mod common;

use std::process::Command;

use common::server::{otad_bin, TestServer};
use otad::httpclient;
use otad::simulate::Device;

#[test]
fn simulate_walks_all_three_phases() {
    let server = TestServer::start(|config| config);
    let output = Command::new(otad_bin())
        .args(["simulate", "--url", &server.url, "--device-ca"])
        .arg(&server.device_ca_dir)
        .args([
            "--udid",
            "00008030-001A35E12345802E",
            "--serial",
            "F2LXK0AAHG7F",
        ])
        .output()
        .expect("run otad simulate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "simulate failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    assert!(
        stdout.contains("udid: 00008030-001A35E12345802E"),
        "{stdout}"
    );
    assert!(stdout.contains("com.apple.mdm"), "{stdout}");
    assert!(stdout.contains("com.apple.security.scep"), "{stdout}");

    // The device record and the certificate record agree on who holds what.
    let device = server.device_record("00008030-001A35E12345802E").unwrap();
    assert_eq!(device["phase"], "enrolled");
    assert_eq!(device["attributes"]["SERIAL"], "F2LXK0AAHG7F");
    assert!(
        device["attributes"].get("CHALLENGE").is_none(),
        "the challenge is not recorded"
    );
    let events: Vec<&str> = device["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["phase2", "certificate", "phase3"]);
    for phase in [0, 2] {
        assert_eq!(
            device["history"][phase]["attributes"]["SERIAL"], "F2LXK0AAHG7F",
            "each phase's attributes are kept"
        );
    }
    let serial = device["certificates"][0].as_str().unwrap().to_string();
    assert!(
        stdout.contains(&format!("certificate_serial: {serial}")),
        "{stdout}"
    );
    let cert = server.cert_record(&serial).unwrap();
    assert_eq!(cert["udid"], "00008030-001A35E12345802E");
    assert_eq!(cert["authorised_by"], "ota");

    // One info line per phase, and no challenge value in the log.
    let log = server.log();
    for line in [
        "phase 1:",
        "phase 2: udid=00008030-001A35E12345802E",
        "scep: issued certificate",
        "phase 3: udid=",
    ] {
        assert!(log.contains(line), "log lacks {line:?}:\n{log}");
    }
}

#[test]
fn every_variant_of_device_signing_enrolls() {
    let server = TestServer::start(|config| config);
    for (signed_attributes, leaf_only) in [(true, false), (false, true), (true, true)] {
        let mut options = server.device_options();
        options.signed_attributes = signed_attributes;
        options.leaf_only = leaf_only;
        let summary = otad::simulate::run(&options).unwrap_or_else(|err| {
            panic!("signed_attributes={signed_attributes} leaf_only={leaf_only}: {err}")
        });
        assert_eq!(
            summary.payload_types,
            vec!["com.apple.security.scep", "com.apple.mdm"]
        );
    }
}

#[test]
fn a_used_challenge_is_refused_and_changes_nothing() {
    let server = TestServer::start(|config| config);
    let device = Device::new(&server.device_options()).unwrap();
    let phase1 = device.phase1(&server.url).unwrap();
    device.phase2(&phase1).unwrap();

    let before = server.snapshot();
    let err = device
        .phase2(&phase1)
        .expect_err("a replayed challenge must fail");
    assert!(err.contains("403"), "{err}");
    assert!(err.contains("challenge unknown or already used"), "{err}");
    assert_eq!(
        server.snapshot(),
        before,
        "a refused request writes nothing"
    );
    assert!(server.log().contains("WARN"), "refusals are logged at warn");
}

#[test]
fn a_certificate_issued_to_another_udid_is_refused_in_phase_3() {
    let server = TestServer::start(|config| config);
    let mut first = Device::new(&server.device_options()).unwrap();
    let phase1 = first.phase1(&server.url).unwrap();
    let scep = first.phase2(&phase1).unwrap();
    first.enroll_scep(&scep).unwrap();

    // A second genuine device walks phase 2, then signs phase 3 with the first one's identity.
    let mut second = Device::new(&server.device_options()).unwrap();
    let phase1_second = second.phase1(&server.url).unwrap();
    second.phase2(&phase1_second).unwrap();
    second.scep_identity = first.scep_identity.take();
    let err = second
        .phase3(&phase1_second)
        .expect_err("another device's certificate must fail");
    assert!(err.contains("403"), "{err}");
    assert!(err.contains(&format!("not {}", second.udid)), "{err}");
}

#[test]
fn phase_3_before_a_certificate_is_impossible_and_a_stranger_is_refused() {
    let server = TestServer::start(|config| config);

    // A device CA the server does not list: its devices are strangers.
    let stranger_dir = server.dir.path().join("stranger-ca");
    let mut options = server.device_options();
    options.device_ca_dir = stranger_dir;
    let stranger = Device::new(&options).unwrap();
    let phase1 = stranger.phase1(&server.url).unwrap();
    let err = stranger
        .phase2(&phase1)
        .expect_err("an unknown device CA must fail");
    assert!(err.contains("403"), "{err}");
    assert!(
        err.contains("not issued by Apple Device CA or by this server"),
        "{err}"
    );
}

#[test]
fn http_errors_have_the_right_status_and_a_reason() {
    let server = TestServer::start(|config| config);
    let before = server.snapshot();

    let unknown = httpclient::get(&format!("{}/nope", server.url)).unwrap();
    assert_eq!(unknown.status, 404);
    let wrong_method = httpclient::get(&format!("{}/ota/phase23", server.url)).unwrap();
    assert_eq!(wrong_method.status, 405);
    let malformed = httpclient::post(
        &format!("{}/ota/phase23", server.url),
        "application/pkcs7-signature",
        b"hello",
    )
    .unwrap();
    assert_eq!(malformed.status, 400);
    assert!(
        String::from_utf8_lossy(&malformed.body).starts_with("body: "),
        "{:?}",
        malformed.body
    );
    let big = vec![0x30u8; 64 * 1024 + 1];
    let too_large = httpclient::post(
        &format!("{}/ota/phase23", server.url),
        "application/pkcs7-signature",
        &big,
    )
    .unwrap();
    assert_eq!(too_large.status, 413);
    let plain = httpclient::get(&format!("{}/mdm/enroll", server.url)).unwrap();
    assert_eq!(plain.status, 404);
    let dep = httpclient::post(
        &format!("{}/mdm/enroll", server.url),
        "application/pkcs7-signature",
        b"x",
    )
    .unwrap();
    assert_eq!(dep.status, 404, "DEP machine info is off by default");
    assert!(String::from_utf8_lossy(&plain.body).contains("mdm.plain_enroll"));

    assert_eq!(server.snapshot(), before, "refused requests write nothing");
    let ca = httpclient::get(&format!("{}/ca", server.url)).unwrap();
    assert_eq!(ca.status, 200);
    assert_eq!(
        ca.content_type.as_deref(),
        Some("application/x-x509-ca-cert")
    );
    let pem = std::fs::read_to_string(server.state_file("ca/ca.pem")).unwrap();
    assert_eq!(ca.body, otad::pki::cert::pem_to_der(&pem).unwrap());
}

#[test]
fn a_static_ota_challenge_can_be_reused() {
    let server = TestServer::start(|config| {
        common::server::set_key(&config, "ota", "challenge", "\"static-ota-challenge\"")
    });
    let device = Device::new(&server.device_options()).unwrap();
    let phase1 = device.phase1(&server.url).unwrap();
    assert_eq!(phase1.challenge, "static-ota-challenge");
    device.phase2(&phase1).unwrap();
    device.phase2(&phase1).unwrap();
}

#[test]
fn mdm_enroll_serves_the_plain_profile_only_when_enabled_and_dep_bodies_when_signed() {
    let server = TestServer::start(|config| {
        let config = common::server::set_key(&config, "mdm", "plain_enroll", "true");
        common::server::set_key(&config, "mdm", "dep_enroll", "true")
    });
    let plain = httpclient::get(&format!("{}/mdm/enroll", server.url)).unwrap();
    assert_eq!(plain.status, 200);
    assert_eq!(
        plain.content_type.as_deref(),
        Some("application/x-apple-aspen-config")
    );
    let (_, profile) = otad::simulate::open_signed_profile("plain", &plain.body, None).unwrap();
    let types: Vec<_> = profile["PayloadContent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p.as_dictionary().unwrap()["PayloadType"]
                .as_string()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(types, ["com.apple.security.scep", "com.apple.mdm"]);

    // A DEP machine-info body signed by a trusted device certificate gets the profile, with
    // the SCEP subject bound to its UDID; a stranger's is refused.
    let device = Device::new(&server.device_options()).unwrap();
    let body = device.phase2_body("").unwrap();
    let dep = httpclient::post(
        &format!("{}/mdm/enroll", server.url),
        "application/pkcs7-signature",
        &body,
    )
    .unwrap();
    assert_eq!(dep.status, 200, "{}", String::from_utf8_lossy(&dep.body));
    let (_, profile) = otad::simulate::open_signed_profile("dep", &dep.body, None).unwrap();
    let scep = otad::simulate::read_scep_profile(&profile).unwrap();
    assert_eq!(scep.common_name(), Some(device.udid.as_str()));

    let mut options = server.device_options();
    options.device_ca_dir = server.dir.path().join("stranger-ca");
    let stranger = Device::new(&options).unwrap();
    let body = stranger.phase2_body("").unwrap();
    let refused = httpclient::post(
        &format!("{}/mdm/enroll", server.url),
        "application/pkcs7-signature",
        &body,
    )
    .unwrap();
    assert_eq!(refused.status, 403);
}

/// The real macOS request through a running server: refused as expired by default; with
/// `apple_leaf_validity = "ignore"` and its own challenge configured as the static one, it
/// passes phase 2 and gets a SCEP profile bound to its UDID.
#[test]
fn the_real_macos_request_passes_phase_2_on_a_running_server() {
    let Some(real) = common::fixture("ota/phase2-macos-vm.der") else {
        return;
    };
    let checking = TestServer::start(|config| config);
    let url = format!("{}/ota/phase23", checking.url);
    let expired = httpclient::post(&url, "application/pkcs7-signature", &real).unwrap();
    assert_eq!(expired.status, 403);
    assert!(String::from_utf8_lossy(&expired.body).contains("expired"));

    let challenge = "8gLEIttrT7qbLOZs3XzL5XPgNXCliGwRLtn2Lfe4GBsa7g6MGm2sJjicKrLFal4D";
    let server = TestServer::start(|config| {
        let config = common::server::set_key(&config, "ota", "apple_leaf_validity", "\"ignore\"");
        common::server::set_key(&config, "ota", "challenge", &format!("\"{challenge}\""))
    });
    let url = format!("{}/ota/phase23", server.url);
    let response = httpclient::post(&url, "application/pkcs7-signature", &real).unwrap();
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let (_, profile) =
        otad::simulate::open_signed_profile("phase 2", &response.body, None).unwrap();
    let scep = otad::simulate::read_scep_profile(&profile).unwrap();
    assert_eq!(
        scep.common_name(),
        Some("78897E40-F532-5DE0-A7DC-56BAC5CEEB9C")
    );
    let device = server
        .device_record("78897E40-F532-5DE0-A7DC-56BAC5CEEB9C")
        .unwrap();
    assert_eq!(device["phase"], "identified");
    assert_eq!(device["attributes"]["PRODUCT"], "VirtualMac2,1");
    assert!(
        !server.log().contains(challenge),
        "the challenge never reaches the log"
    );
}

#[test]
fn aes_profiles_and_a_configured_template() {
    let server = TestServer::start(|config| {
        common::server::set_key(&config, "ota", "profile_cipher", "\"aes256\"")
    });
    let summary = otad::simulate::run(&server.device_options()).unwrap();
    assert_eq!(summary.cipher, otad::cms::ContentCipher::Aes256Cbc);

    let template = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        template.path(),
        r#"<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict>
<key>PayloadType</key><string>Configuration</string>
<key>PayloadIdentifier</key><string>com.example.wifi</string>
<key>PayloadUUID</key><string>6F2C3A4E-7A1B-4C4D-9E8F-0A1B2C3D4E5F</string>
<key>PayloadVersion</key><integer>1</integer>
<key>PayloadContent</key><array><dict>
<key>PayloadType</key><string>com.apple.wifi.managed</string>
<key>PayloadIdentifier</key><string>com.example.wifi.1</string>
<key>PayloadUUID</key><string>0A1B2C3D-4E5F-4A1B-8C2D-3E4F5A6B7C8D</string>
<key>PayloadVersion</key><integer>1</integer>
<key>SSID_STR</key><string>Example</string>
</dict></array>
</dict></plist>"#,
    )
    .unwrap();
    let path = format!("{:?}", template.path());
    let server =
        TestServer::start(|config| common::server::set_key(&config, "profile", "template", &path));
    let summary = otad::simulate::run(&server.device_options()).unwrap();
    assert_eq!(summary.payload_types, vec!["com.apple.wifi.managed"]);
}

#[test]
fn pkioperation_by_get_with_base64_in_the_query() {
    use base64::Engine;
    use otad::scep::message::{self, PkiStatus};

    let server = TestServer::start(|config| {
        common::server::set_key(&config, "scep", "challenge", "\"get-static-challenge\"")
    });
    let caps = httpclient::get(&format!("{}/scep?operation=GetCACaps", server.url)).unwrap();
    let caps = String::from_utf8(caps.body).unwrap();
    for cap in [
        "POSTPKIOperation",
        "SHA-1",
        "SHA-256",
        "AES",
        "DES3",
        "SCEPStandard",
    ] {
        assert!(
            caps.lines().any(|l| l == cap),
            "GetCACaps lacks {cap}: {caps}"
        );
    }
    let ca_cert = httpclient::get(&format!("{}/scep?operation=GetCACert", server.url)).unwrap();
    assert_eq!(
        ca_cert.content_type.as_deref(),
        Some("application/x-x509-ca-ra-cert")
    );
    let certs = otad::cms::signed::parse_certs_only(&ca_cert.body).unwrap();
    assert_eq!(certs.len(), 2, "the RA and the CA");
    let ra = &certs[0];

    let (requester, request, nonce) =
        common::scep::pkcs_req(ra, "get-client", "get-static-challenge", "get-transaction");
    // Raw base64 with its + and /, and without padding, as some clients send it.
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&request);
    let url = format!(
        "{}/scep?operation=PKIOperation&message={encoded}",
        server.url
    );
    let response = httpclient::get(&url).unwrap();
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(
        response.content_type.as_deref(),
        Some("application/x-pki-message")
    );
    let reply = message::parse_reply(
        &response.body,
        &[ra.as_slice()],
        &requester.certificate,
        requester.key.decrypting(),
    )
    .unwrap();
    assert_eq!(reply.status, PkiStatus::Success);
    assert_eq!(reply.transaction_id, "get-transaction");
    assert_eq!(reply.recipient_nonce, nonce);
    assert_eq!(reply.certificates.len(), 1, "only the issued certificate");
    assert_eq!(
        otad::pki::cert::spki_der(&reply.certificates[0]).unwrap(),
        requester.key.public_key_spki_der()
    );
}

#[test]
fn a_challenge_offered_for_the_wrong_purpose_is_not_spent() {
    use otad::scep::message;

    let server = TestServer::start(|config| config);
    let device = Device::new(&server.device_options()).unwrap();
    let phase1 = device.phase1(&server.url).unwrap();

    // The phase 1 challenge offered to SCEP is refused there and still works in phase 2.
    let certs = otad::cms::signed::parse_certs_only(
        &httpclient::get(&format!("{}/scep?operation=GetCACert", server.url))
            .unwrap()
            .body,
    )
    .unwrap();
    let (requester, request, _) =
        common::scep::pkcs_req(&certs[0], "x", &phase1.challenge, "wrong-purpose");
    let url = format!("{}/scep?operation=PKIOperation", server.url);
    let response = httpclient::post(&url, "application/x-pki-message", &request).unwrap();
    let reply = message::parse_reply(
        &response.body,
        &[certs[0].as_slice()],
        &requester.certificate,
        requester.key.decrypting(),
    )
    .unwrap();
    assert_eq!(reply.status, message::PkiStatus::Failure);
    assert_eq!(reply.fail_info, Some(message::FailInfo::BadRequest));

    device
        .phase2(&phase1)
        .expect("the phase 1 challenge is still good for phase 2");
}

#[test]
fn an_older_certificate_of_a_re_enrolled_device_is_refused_in_phase_3() {
    let server = TestServer::start(|config| config);
    let mut device = Device::new(&server.device_options()).unwrap();
    let phase1 = device.phase1(&server.url).unwrap();
    let scep = device.phase2(&phase1).unwrap();
    device.enroll_scep(&scep).unwrap();
    let first = device.scep_identity.take();

    // The device enrolls again (a wipe, say): a new certificate replaces the first.
    let phase1_again = device.phase1(&server.url).unwrap();
    let scep = device.phase2(&phase1_again).unwrap();
    device.enroll_scep(&scep).unwrap();

    // Whoever kept the first key cannot act for the device any more.
    let current = std::mem::replace(&mut device.scep_identity, first);
    let err = device
        .phase3(&phase1_again)
        .expect_err("the old certificate must fail");
    assert!(
        err.contains("no longer the device's current certificate"),
        "{err}"
    );
    device.scep_identity = current;
    device
        .phase3(&phase1_again)
        .expect("the current certificate works");
}
