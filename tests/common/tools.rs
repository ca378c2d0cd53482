//! Outside tools the tests use as independent readers and clients (`openssl`,
//! `scepclient`): whether they are there, and running them.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Whether `tool` runs; if not, says SKIP, or fails under `CI=true` (CI installs them all).
pub fn have(tool: &str, version_flag: &str) -> bool {
    let found = Command::new(tool).arg(version_flag).output().is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is missing under CI=true (.ci/run installs it)"
        );
        eprintln!("SKIP: {tool} is not installed");
    }
    found
}

/// Runs openssl in `dir`, asserting success; returns its stdout.
pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// `openssl cms -decrypt` of the DER EnvelopedData in `dir/sealed` with a PEM cert and key.
pub fn openssl_decrypt(dir: &Path, sealed: &str, cert: &str, key: &str) -> Vec<u8> {
    openssl(
        dir,
        &[
            "cms", "-decrypt", "-inform", "DER", "-in", sealed, "-recip", cert, "-inkey", key,
        ],
    )
}

/// The PayloadType of each payload in a plist array.
pub fn payload_types(payloads: &plist::Value) -> Vec<String> {
    payloads
        .as_array()
        .expect("a payload array")
        .iter()
        .map(|p| {
            p.as_dictionary().expect("a payload")["PayloadType"]
                .as_string()
                .expect("a type")
                .to_string()
        })
        .collect()
}
