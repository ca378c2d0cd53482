//! Writes the seed inputs of the fuzz targets (`fuzz/`), made with otad's own code:
//! `cargo run --example fuzz_seeds -- DIR` fills `DIR/<target>/` for every target in
//! `otad::fuzzing::TARGETS`. `fuzz/seed.sh` runs it; the seeds are not committed (the
//! minimised corpus is). Keys are made here, at seed time; the signers chain to the fixed
//! fuzz CA and the envelopes are encrypted to the fixed recipient, so the targets get past
//! the signature and the key transport with them.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use otad::cms::{enveloped, signed, ContentCipher, DigestAlgorithm};
use otad::fuzzing;
use otad::pki::ca::{random_serial, IssueRequest, KeyUsageProfile, SubjectAttribute};
use otad::pki::keys::RsaPrivateKey;
use otad::pki::{cert, csr};
use otad::scep::message::{self, MessageType, RequestParams};
use otad::simulate::{Device, ScepIdentity, PHASE2_DIGEST};

/// Chunk size when a seed's OCTET STRINGs are split into constructed BER ones.
const BER_CHUNK: usize = 64;

/// The golden files beside the crate that are seeds as they are.
const GOLDEN_SCEP: &[&str] = &["pkcsreq.der", "certrep.der"];

/// The golden profiles (plists) that seed the plist parser.
const GOLDEN_PLISTS: &[&str] = &[
    "phase1-profile-service.plist",
    "phase2-scep-profile.plist",
    "phase3-payloads.plist",
    "phase3-profile.plist",
];

type Result<T> = std::result::Result<T, Box<dyn Error>>;

fn main() -> Result<()> {
    let out = PathBuf::from(std::env::args().nth(1).ok_or("usage: fuzz_seeds DIR")?);
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds = Seeds::new(&out)?;

    let ca = fuzzing::fuzz_ca().ok_or("the fuzz CA does not load")?;
    let recipient = fuzzing::recipient().ok_or("the fuzz recipient does not load")?;
    let leaf_key = RsaPrivateKey::generate(2048)?;
    let leaf = issue(ca, &leaf_key, "9D4A6A3E-2F52-4E2B-9C1E-FUZZ00000001")?;
    let scep_key = RsaPrivateKey::generate(2048)?;
    let scep_leaf = issue(ca, &scep_key, "scep-fuzz-device")?;
    let device = Device {
        udid: "0000FE00-1122334455667788".into(),
        serial: "C02FUZZ0001".into(),
        signed_attributes: false,
        leaf_only: false,
        phase2_digest: PHASE2_DIGEST,
        device_ca_certificate: ca.certificate().to_vec(),
        device_certificate: leaf.clone(),
        device_key: leaf_key,
        scep_identity: Some(ScepIdentity {
            certificate: scep_leaf.clone(),
            key: scep_key,
            ca_certificate: ca.certificate().to_vec(),
        }),
        overrides: Default::default(),
        token: None,
        login: None,
    };

    // phase_plist: what devices sign, and otad's own profiles.
    let plist = device.attributes_plist("challenge-0123456789");
    seeds.write("phase_plist", "attributes.plist", &plist)?;
    let padded = [b"\n  ".as_slice(), &plist].concat();
    seeds.write("phase_plist", "attributes-leading-space.plist", &padded)?;
    seeds.write("phase_plist", "nested.plist", NESTED_PLIST.as_bytes())?;
    for name in GOLDEN_PLISTS {
        let bytes = fs::read(crate_dir.join("testdata/golden").join(name))?;
        seeds.write("phase_plist", name, &bytes)?;
    }

    // signed: phase 2 as Macs and the iOS simulator sign it, phase 3, in DER and BER.
    let mut bodies = Vec::new();
    for (name, signed_attributes, leaf_only) in [
        ("phase2-mac", false, false),
        ("phase2-signed-attributes", true, false),
        ("phase2-leaf-only", false, true),
    ] {
        let device = Device {
            signed_attributes,
            leaf_only,
            ..clone_device(&device)?
        };
        bodies.push((name, device.phase2_body("challenge-0123456789")?));
    }
    bodies.push(("phase3", device.phase3_body("challenge-0123456789")?));
    for (name, body) in &bodies {
        seeds.write("signed", &format!("{name}.der"), body)?;
        seeds.write("signed", &format!("{name}.ber"), &to_ber(body)?)?;
    }
    let certs_only = signed::certs_only(&[&leaf, ca.certificate()])?;
    seeds.write("signed", "certs-only.der", &certs_only)?;

    // enveloped: each cipher to the fixed recipient, and the envelope of the golden CertRep.
    for cipher in [
        ContentCipher::DesCbc,
        ContentCipher::Des3Cbc,
        ContentCipher::Aes128Cbc,
        ContentCipher::Aes192Cbc,
        ContentCipher::Aes256Cbc,
    ] {
        let envelope = enveloped::encrypt(&plist, &recipient.certificate, cipher)?;
        let name = format!("{cipher:?}").to_lowercase();
        seeds.write("enveloped", &format!("{name}.der"), &envelope)?;
        seeds.write("enveloped", &format!("{name}.ber"), &to_ber(&envelope)?)?;
    }
    let certrep = fs::read(crate_dir.join("testdata/scep/certrep.der"))?;
    if let Some(envelope) = signed::read_unverified(&certrep)?.content {
        seeds.write("enveloped", "golden-certrep-envelope.der", &envelope)?;
    }

    // scep_message: every request type, DER, BER and as a GET parameter, and the goldens.
    let csr_der = csr::build(&device.device_key, "fuzz-client", Some("secret-challenge"))?;
    let issuer_and_subject = [ca.subject_der(), ca.subject_der()].concat();
    for (message_type, inner) in [
        (MessageType::PkcsReq, csr_der.as_slice()),
        (MessageType::RenewalReq, csr_der.as_slice()),
        (MessageType::CertPoll, issuer_and_subject.as_slice()),
        (MessageType::GetCert, ca.subject_der()),
        (MessageType::GetCrl, ca.subject_der()),
    ] {
        let params = RequestParams {
            message_type,
            transaction_id: "FUZZ-TRANSACTION-1",
            sender_nonce: [7; message::NONCE_LEN],
            digest: DigestAlgorithm::Sha256,
            cipher: ContentCipher::Aes128Cbc,
            recipient: &recipient.certificate,
            signer_certificate: &device.device_certificate,
            signer_key: device.device_key.signing(),
        };
        let request = message::build_request(inner, &params)?;
        let name = format!("{message_type:?}").to_lowercase();
        seeds.write("scep_message", &format!("{name}.der"), &request)?;
        seeds.write("scep_message", &format!("{name}.ber"), &to_ber(&request)?)?;
        let param = base64::engine::general_purpose::STANDARD.encode(&request);
        seeds.write("scep_message", &format!("{name}.b64"), param.as_bytes())?;
    }
    for name in GOLDEN_SCEP {
        let bytes = fs::read(crate_dir.join("testdata/scep").join(name))?;
        seeds.write("scep_message", name, &bytes)?;
        seeds.write("signed", name, &bytes)?;
        seeds.write("ber", name, &bytes)?;
    }

    // ber: the bodies above in BER, certificates, and a few hand-made shapes.
    for (name, body) in &bodies {
        seeds.write("ber", &format!("{name}.ber"), &to_ber(body)?)?;
    }
    seeds.write("ber", "certificate.der", &leaf)?;
    for (name, bytes) in BER_SHAPES {
        seeds.write("ber", name, bytes)?;
    }

    // config: the template otad init writes, and one with every section filled in.
    let template = otad::config::template("https://otad.example.test", "Fuzz Org");
    seeds.write("config", "template.toml", template.as_bytes())?;
    seeds.write("config", "full.toml", FULL_CONFIG.as_bytes())?;

    let pem = cert::der_to_pem(&scep_leaf);
    seeds.write("config", "not-toml.pem", pem.as_bytes())?;
    println!("seeds written under {}", out.display());
    Ok(())
}

/// Where the seeds go: one folder per target.
struct Seeds {
    out: PathBuf,
}

impl Seeds {
    fn new(out: &Path) -> Result<Self> {
        for (target, _) in fuzzing::TARGETS {
            fs::create_dir_all(out.join(target))?;
        }
        Ok(Seeds {
            out: out.to_path_buf(),
        })
    }

    fn write(&self, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
        Ok(fs::write(self.out.join(target).join(name), bytes)?)
    }
}

/// A certificate for `key`, issued by the fuzz CA.
fn issue(
    ca: &otad::pki::ca::CertificateAuthority,
    key: &RsaPrivateKey,
    common_name: &str,
) -> Result<Vec<u8>> {
    let subject = [(SubjectAttribute::CommonName, common_name.to_string())];
    let spki = key.public_key_spki_der();
    let request = IssueRequest {
        subject: &subject,
        public_key_spki_der: &spki,
        serial: random_serial(),
        validity_days: 3650,
        usage: KeyUsageProfile::DeviceIdentity,
    };
    Ok(ca.issue(&request)?)
}

/// A copy of the device (its keys are not `Clone`).
fn clone_device(device: &Device) -> Result<Device> {
    Ok(Device {
        udid: device.udid.clone(),
        serial: device.serial.clone(),
        signed_attributes: device.signed_attributes,
        leaf_only: device.leaf_only,
        phase2_digest: device.phase2_digest,
        device_ca_certificate: device.device_ca_certificate.clone(),
        device_certificate: device.device_certificate.clone(),
        device_key: RsaPrivateKey::from_pkcs8_der(device.device_key.to_pkcs8_der())?,
        scep_identity: None,
        overrides: Default::default(),
        token: None,
        login: None,
    })
}

/// DER made BER the way devices send it: every constructed element with an indefinite
/// length, every OCTET STRING longer than [`BER_CHUNK`] split into a constructed one.
/// Only one-octet tags, as everything otad builds has.
fn to_ber(der: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = der;
    while !rest.is_empty() {
        let (tag, content, after) = split_der(rest)?;
        if tag & 0x20 != 0 {
            out.extend_from_slice(&[tag, 0x80]);
            out.extend_from_slice(&to_ber(content)?);
            out.extend_from_slice(&[0, 0]);
        } else if tag == 0x04 && content.len() > BER_CHUNK {
            out.extend_from_slice(&[0x24, 0x80]);
            for chunk in content.chunks(BER_CHUNK) {
                out.extend_from_slice(&der_tlv(0x04, chunk));
            }
            out.extend_from_slice(&[0, 0]);
        } else {
            out.extend_from_slice(&der_tlv(tag, content));
        }
        rest = after;
    }
    Ok(out)
}

/// The tag, contents and rest of the DER element at the start of `input`.
fn split_der(input: &[u8]) -> Result<(u8, &[u8], &[u8])> {
    let tag = *input.first().ok_or("no tag")?;
    let first = *input.get(1).ok_or("no length")?;
    let (length, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let count = usize::from(first & 0x7f);
        let octets = input.get(2..2 + count).ok_or("short length")?;
        let length = octets
            .iter()
            .fold(0usize, |value, octet| (value << 8) | usize::from(*octet));
        (length, 2 + count)
    };
    let content = input.get(header..header + length).ok_or("short content")?;
    let rest = input.get(header + length..).ok_or("short content")?;
    Ok((tag, content, rest))
}

/// DER of `tag` around `content`.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    if content.len() < 0x80 {
        out.push(content.len() as u8);
    } else {
        let octets: Vec<u8> = content
            .len()
            .to_be_bytes()
            .into_iter()
            .skip_while(|o| *o == 0)
            .collect();
        out.push(0x80 | octets.len() as u8);
        out.extend_from_slice(&octets);
    }
    out.extend_from_slice(content);
    out
}

/// Small BER shapes the normaliser has to handle.
const BER_SHAPES: &[(&str, &[u8])] = &[
    (
        "indefinite-sequence",
        &[0x30, 0x80, 0x02, 0x01, 0x05, 0x00, 0x00],
    ),
    (
        "constructed-octets",
        &[0x24, 0x80, 0x04, 0x02, 1, 2, 0x04, 0x01, 3, 0x00, 0x00],
    ),
    (
        "constructed-bits",
        &[
            0x23, 0x80, 0x03, 0x02, 0x00, 0xff, 0x03, 0x02, 0x04, 0xf0, 0x00, 0x00,
        ],
    ),
    ("long-form-length", &[0x04, 0x81, 0x02, 0xab, 0xcd]),
    ("high-tag", &[0x1f, 0x81, 0x00, 0x01, 0x00]),
    (
        "nested-indefinite",
        &[0xa0, 0x80, 0x30, 0x80, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00],
    ),
    ("oid", &[0x06, 0x03, 0x2a, 0x86, 0x48]),
];

/// A plist with nesting and every value type the parser may meet.
const NESTED_PLIST: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "#,
    r#""http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>UDID</key><string>0000FE00-1122334455667788</string>
	<key>CHALLENGE</key><string>abc&amp;def</string>
	<key>NotOnConsole</key><false/>
	<key>Count</key><integer>3</integer>
	<key>Data</key><data>AAEC</data>
	<key>When</key><date>2024-01-01T00:00:00Z</date>
	<key>List</key><array><string>x</string><dict><key>k</key><real>1.5</real></dict></array>
</dict>
</plist>
"#
);

/// A config with every section present.
const FULL_CONFIG: &str = r#"
[server]
url = "https://otad.example.test"
organization = "Fuzz Org"
identifier = "test.otad.fuzz"
state_dir = "state"

[http]
listen = "127.0.0.1:8080"
workers = 4
max_body = 65536
max_connections = 64
request_timeout = "10s"

[ota]
display_name = "Fuzz enrollment"
challenge_ttl = "1h"
challenge = "ota-secret"
device_attributes = ["UDID", "SERIAL", "PRODUCT"]
apple_leaf_validity = "ignore"
extra_device_ca = ["device-ca.pem"]
profile_cipher = "aes256"

[scep]
challenge = "static-secret"
cert_validity = "365d"
challenge_ttl = "1h"
approval = "manual"
ra = true
subject = ["CN=$CN", "O=$ORGANIZATION"]
crl_validity = "7d"

[mdm]
server_url = "https://mdm.example.test/mdm"
checkin_url = "https://mdm.example.test/checkin"
topic = "com.apple.mgmt.External.CHANGE-ME"
sign_message = true
access_rights = 8191
plain_enroll = true
dep_enroll = false

[profile]
template = "profile.plist"

[log]
level = "info"
"#;
