//! Golden responses: what otad sends in phases 1, 2 and 3, read by `openssl cms` (an
//! independent decoder), with the values that are random per request masked, compared to
//! the plists in `testdata/golden/`.
//!
//! `OTAD_REGENERATE_GOLDEN=1 cargo test --test golden` rewrites them (see testdata/README.md);
//! review the diff before committing.

mod common;

use std::path::{Path, PathBuf};

use common::server::TestServer;
use common::tools::{have, openssl, openssl_decrypt};
use otad::httpclient;
use otad::simulate::Device;
use plist::Value;

const UDID: &str = "0000FE00-1122334455667788";
const SERIAL: &str = "C02GOLDEN01";
/// Keys whose values are random per response.
const RANDOM_KEYS: &[&str] = &["PayloadUUID", "Challenge", "IdentityCertificateUUID"];

/// Verifies a signed profile with openssl against our CA and returns its plist.
fn openssl_verify(server: &TestServer, name: &str, body: &[u8]) -> Value {
    let dir = server.dir.path();
    std::fs::write(dir.join(name), body).unwrap();
    let ca = server.state_file("ca/ca.pem");
    let ca = ca.to_str().unwrap();
    let xml = openssl(
        dir,
        &[
            "cms", "-verify", "-inform", "DER", "-in", name, "-CAfile", ca, "-purpose", "any",
        ],
    );
    Value::from_reader_xml(&xml[..]).unwrap()
}

/// Replaces what is random per response, and the test server's port, with fixed marks.
fn mask(value: &mut Value, url: &str) {
    match value {
        Value::Dictionary(dict) => {
            for (key, inner) in dict.iter_mut() {
                if RANDOM_KEYS.contains(&key.as_str()) {
                    *inner = Value::String("<random>".into());
                } else if key == "EncryptedPayloadContent" {
                    *inner = Value::String("<encrypted>".into());
                } else {
                    mask(inner, url);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| mask(item, url)),
        Value::String(text) => *text = text.replace(url, "http://otad.test"),
        _ => {}
    }
}

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/golden")
        .join(name)
}

fn compare(name: &str, mut value: Value, url: &str) {
    mask(&mut value, url);
    let mut actual = Vec::new();
    value.to_writer_xml(&mut actual).unwrap();
    let actual = String::from_utf8(actual).unwrap() + "\n";
    let path = golden_path(name);
    if std::env::var_os("OTAD_REGENERATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "{}: {err} (regenerate: see testdata/README.md)",
            path.display()
        )
    });
    assert_eq!(actual, expected, "{name} differs from its golden file");
}

#[test]
fn phase_responses_match_their_golden_plists() {
    if !have("openssl", "version") {
        return;
    }
    let server = TestServer::start(|config| config);
    let mut options = server.device_options();
    options.udid = Some(UDID.into());
    options.serial = Some(SERIAL.into());
    let mut device = Device::new(&options).unwrap();

    // Phase 1.
    let response = httpclient::get(&format!("{}/ota/enroll", server.url)).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(
        response.content_type.as_deref(),
        Some("application/x-apple-aspen-config")
    );
    let phase1 = openssl_verify(&server, "phase1.der", &response.body);
    let challenge = phase1.as_dictionary().unwrap()["PayloadContent"]
        .as_dictionary()
        .unwrap()["Challenge"]
        .as_string()
        .unwrap()
        .to_string();
    assert!(
        challenge.len() >= 32,
        "a challenge of at least 32 characters"
    );
    compare("phase1-profile-service.plist", phase1, &server.url);

    // Phase 2: a device body, answered by the SCEP profile.
    let phase2_url = format!("{}/ota/phase23", server.url);
    let body = device.phase2_body(&challenge).unwrap();
    let response = httpclient::post(&phase2_url, "application/pkcs7-signature", &body).unwrap();
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let phase2 = openssl_verify(&server, "phase2.der", &response.body);
    compare("phase2-scep-profile.plist", phase2, &server.url);

    // SCEP, then phase 3: the final profile, its payloads encrypted to the device.
    let phase1_parsed = device.phase1(&server.url).unwrap();
    let scep = device.phase2(&phase1_parsed).unwrap();
    device.enroll_scep(&scep).unwrap();
    let body = device.phase3_body(&challenge).unwrap();
    let response = httpclient::post(&phase2_url, "application/pkcs7-signature", &body).unwrap();
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let phase3 = openssl_verify(&server, "phase3.der", &response.body);
    let sealed = phase3.as_dictionary().unwrap()["EncryptedPayloadContent"]
        .as_data()
        .unwrap()
        .to_vec();
    compare("phase3-profile.plist", phase3, &server.url);

    let identity = device.scep_identity.as_ref().unwrap();
    let dir = server.dir.path();
    std::fs::write(dir.join("sealed.der"), &sealed).unwrap();
    std::fs::write(
        dir.join("device.pem"),
        otad::pki::cert::der_to_pem(&identity.certificate),
    )
    .unwrap();
    std::fs::write(dir.join("device.key"), identity.key.to_pkcs8_pem()).unwrap();
    let xml = openssl_decrypt(dir, "sealed.der", "device.pem", "device.key");
    let payloads = Value::from_reader_xml(&xml[..]).unwrap();
    let items = payloads.as_array().unwrap();
    let scep_uuid = items[0].as_dictionary().unwrap()["PayloadUUID"]
        .as_string()
        .unwrap();
    let mdm = items[1].as_dictionary().unwrap();
    assert_eq!(
        mdm["IdentityCertificateUUID"].as_string(),
        Some(scep_uuid),
        "the MDM identity is the SCEP payload"
    );
    compare("phase3-payloads.plist", payloads, &server.url);
}
