//! `otad verify` on the real macOS phase 2 request and on variants of it built here, each
//! checked for its verdict: the JSON line it prints and the exit code.

mod common;

use std::path::Path;
use std::process::Command;

use common::der::{children, encode, signed_data_fields, split, with_signed_data_fields};
use common::server::otad_bin;
use otad::cms::{ber, oid, signed, DigestAlgorithm};

const FIXTURE: &str = "ota/phase2-macos-vm.der";
/// Inside the real device certificate's validity (2022-10-22 to 2023-10-22).
const PINNED_TIME: &str = "2023-01-01T00:00:00Z";

/// Runs `otad verify` on files; returns the parsed JSON lines and whether it exited 0.
fn verify(args: &[&str], files: &[&Path]) -> (Vec<serde_json::Value>, bool) {
    let output = Command::new(otad_bin())
        .arg("verify")
        .args(args)
        .args(files)
        .output()
        .unwrap();
    assert!(
        output.stderr.is_empty() || output.status.code() == Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    (lines, output.status.success())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn the_real_request_is_trusted_at_a_pinned_time() {
    let Some(real) = common::fixture(FIXTURE) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "real.der", &real);

    let (lines, ok) = verify(&["--at", PINNED_TIME], &[&file]);
    assert!(ok);
    let verdict = &lines[0];
    assert_eq!(verdict["trusted"], true);
    assert_eq!(verdict["phase"], 2);
    assert_eq!(verdict["error"], serde_json::Value::Null);
    assert_eq!(
        verdict["signer"]["issuer"],
        "C=US, O=Apple Inc., OU=Apple iPhone, CN=Apple iPhone Device CA"
    );
    assert_eq!(
        verdict["signer"]["subject"],
        "CN=0B5938EB-A130-466F-BFA5-BFA950500D03"
    );
    assert_eq!(
        verdict["attributes"]["UDID"],
        "78897E40-F532-5DE0-A7DC-56BAC5CEEB9C"
    );
    assert_eq!(verdict["attributes"]["SERIAL"], "ZDL2M9PTJ3");
    assert_eq!(verdict["attributes"]["PRODUCT"], "VirtualMac2,1");
    assert_eq!(verdict["attributes"]["VERSION"], "22A380");
    assert!(
        verdict["attributes"].get("CHALLENGE").is_none(),
        "the challenge is not printed"
    );

    // Today the device certificate has expired: untrusted, and the error says why.
    let (lines, ok) = verify(&[], &[&file]);
    assert!(!ok);
    assert_eq!(lines[0]["trusted"], false);
    assert_eq!(lines[0]["phase"], 2);
    assert!(
        lines[0]["error"].as_str().unwrap().contains("expired"),
        "{}",
        lines[0]
    );
}

#[test]
fn variants_of_the_real_request_get_the_right_verdict() {
    let Some(real) = common::fixture(FIXTURE) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let der = ber::normalize(&real).unwrap();
    let original = signed::verify(&der).unwrap();
    let content = original.content.clone().unwrap();

    // eContent in many chunks, as other devices send it.
    let mut fields = signed_data_fields(&der).unwrap();
    let mut encapsulated = vec![0x30, 0x80];
    encapsulated.extend_from_slice(&encode(0x06, oid::ID_DATA.as_bytes()));
    encapsulated.extend_from_slice(&[0xa0, 0x80, 0x24, 0x80]);
    for chunk in content.chunks(100) {
        encapsulated.extend_from_slice(&encode(0x04, chunk));
    }
    encapsulated.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    fields[2] = encapsulated;
    let chunked = with_signed_data_fields(&fields);

    // The leaf only.
    let mut fields = signed_data_fields(&der).unwrap();
    fields[3] = encode(0xa0, &original.signer.certificate);
    let leaf_only = with_signed_data_fields(&fields);

    // The chain without the leaf.
    let mut fields = signed_data_fields(&der).unwrap();
    let chain = children(split(&fields[3]).unwrap().0.content).unwrap();
    fields[3] = encode(
        0xa0,
        &chain
            .iter()
            .skip(1)
            .flat_map(|c| c.raw.to_vec())
            .collect::<Vec<u8>>(),
    );
    let no_leaf = with_signed_data_fields(&fields);

    // A byte of the content changed ("78897E40" becomes "78897E41"), and a signature byte.
    let at = real.windows(8).position(|w| w == b"78897E40").unwrap();
    let mut tampered_content = real.clone();
    tampered_content[at + 7] = b'1';
    let mut tampered_signature = der.clone();
    let last = tampered_signature.len() - 10;
    tampered_signature[last] ^= 0x01;

    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        ("der.der", der.clone(), true, ""),
        ("chunked.ber", chunked, true, ""),
        ("leaf-only.der", leaf_only, true, ""),
        ("no-leaf.der", no_leaf, false, "signer certificate"),
        ("tampered-content.der", tampered_content, false, "signature"),
        (
            "tampered-signature.der",
            tampered_signature,
            false,
            "signature",
        ),
        (
            "truncated.der",
            real[..real.len() / 2].to_vec(),
            false,
            "body",
        ),
        ("empty.der", Vec::new(), false, "body"),
    ];
    let files: Vec<_> = cases
        .iter()
        .map(|(name, bytes, _, _)| write(dir.path(), name, bytes))
        .collect();
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let (lines, ok) = verify(&["--at", PINNED_TIME], &paths);
    assert!(!ok, "one untrusted file makes the exit code 1");
    assert_eq!(lines.len(), cases.len());
    for ((name, _, trusted, error), verdict) in cases.iter().zip(&lines) {
        assert_eq!(verdict["trusted"], *trusted, "{name}: {verdict}");
        if *trusted {
            assert_eq!(
                verdict["attributes"]["UDID"], "78897E40-F532-5DE0-A7DC-56BAC5CEEB9C",
                "{name}"
            );
        } else {
            let text = verdict["error"].as_str().unwrap_or_default();
            assert!(text.contains(error), "{name}: {verdict}");
        }
    }
}

/// A certificate with Apple iPhone Device CA's exact name over another key signs a device
/// certificate that names it as issuer: every name is Apple's, no key is.
#[test]
fn an_impostor_with_apples_names_is_refused() {
    let Some(real) = common::fixture(FIXTURE) else {
        return;
    };
    let der = ber::normalize(&real).unwrap();
    let original = signed::verify(&der).unwrap();

    let impostor = common::impostor::impostor_device_ca();
    let (leaf, leaf_key) =
        common::impostor::impostor_device(&impostor, "0B5938EB-A130-466F-BFA5-BFA950500D03");

    let identity = signed::SignerIdentity {
        certificate: &leaf,
        key: leaf_key.signing(),
    };
    let certificates = [impostor.certificate()];
    let options = signed::SignOptions::data(DigestAlgorithm::Sha256, false, &certificates);
    let body = signed::sign(original.content.as_deref().unwrap(), &identity, &options).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "impostor.der", &body);
    let (lines, ok) = verify(&["--at", PINNED_TIME], &[&file]);
    assert!(!ok);
    assert_eq!(lines[0]["trusted"], false);
    assert_eq!(lines[0]["phase"], serde_json::Value::Null);
    assert_eq!(
        lines[0]["signer"]["issuer"],
        "C=US, O=Apple Inc., OU=Apple iPhone, CN=Apple iPhone Device CA"
    );
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap()
            .contains("not issued by Apple Device CA"),
        "{}",
        lines[0]
    );
}

#[test]
fn usage_errors_exit_2_and_missing_files_are_untrusted() {
    let output = Command::new(otad_bin()).arg("verify").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let output = Command::new(otad_bin())
        .args(["verify", "--at", "yesterday", "x"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("RFC 3339"));
    let (lines, ok) = verify(&[], &[Path::new("/nonexistent/body.der")]);
    assert!(!ok);
    assert!(lines[0]["error"].as_str().unwrap().contains("cannot read"));
}
