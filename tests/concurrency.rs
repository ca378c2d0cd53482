//! Concurrency against a running server: many SCEP issuances at once get distinct serials,
//! all recorded; CLI writes made while devices enroll are all kept.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use common::cli::{json, new_token, otad};
use common::server::{set_key, TestServer};
use otad::cms::{ContentCipher, DigestAlgorithm};
use otad::httpclient;
use otad::pki::keys::RsaPrivateKey;
use otad::pki::{cert, csr};
use otad::scep::message::{self, MessageType, PkiStatus, RequestParams};
use otad::simulate::fleet::{self, FleetOptions};
use otad::simulate::read_ca_cert;

const STATIC_CHALLENGE: &str = "concurrency-test-challenge";
/// PKCSReqs sent at once.
const ISSUANCES: usize = 200;
/// Threads sending them.
const THREADS: usize = 32;

/// The self-signed certificate a PKCSReq is signed with (RFC 8894 §2.3).
fn throwaway_certificate(key: &RsaPrivateKey) -> Vec<u8> {
    let now = time::OffsetDateTime::now_utc();
    let mut params = rcgen::CertificateParams::default();
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, "concurrency requester");
    params.distinguished_name = name;
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::hours(24);
    params
        .self_signed(&key.rcgen_key().unwrap())
        .unwrap()
        .der()
        .to_vec()
}

#[test]
fn concurrent_pkcsreqs_get_distinct_recorded_serials() {
    let server = TestServer::start(|config| {
        set_key(
            &config,
            "scep",
            "challenge",
            &format!("{STATIC_CHALLENGE:?}"),
        )
    });
    let scep_url = format!("{}/scep", server.url);
    let response = httpclient::get(&format!("{scep_url}?operation=GetCACert")).unwrap();
    let media = response.media_type().unwrap();
    let authorities = read_ca_cert(&media, &response.body).unwrap();
    let signers = authorities.signers();

    // One requester key; every request its own CN, transactionID and nonce, built first.
    let key = RsaPrivateKey::generate(2048).unwrap();
    let throwaway = throwaway_certificate(&key);
    let requests: Vec<(Vec<u8>, String, [u8; message::NONCE_LEN])> = (0..ISSUANCES)
        .map(|n| {
            let request = csr::build(&key, &format!("device-{n}"), Some(STATIC_CHALLENGE)).unwrap();
            let transaction_id = format!("CONCURRENCY-{n}");
            let sender_nonce = message::new_nonce();
            let params = RequestParams {
                message_type: MessageType::PkcsReq,
                transaction_id: &transaction_id,
                sender_nonce,
                digest: DigestAlgorithm::Sha256,
                cipher: ContentCipher::Aes128Cbc,
                recipient: authorities.recipient(),
                signer_certificate: &throwaway,
                signer_key: key.signing(),
            };
            let body = message::build_request(&request, &params).unwrap();
            (body, transaction_id, sender_nonce)
        })
        .collect();

    let url = format!("{scep_url}?operation=PKIOperation");
    let next = AtomicUsize::new(0);
    let serials = Mutex::new(Vec::new());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                while let Some((body, transaction_id, nonce)) =
                    requests.get(next.fetch_add(1, Ordering::Relaxed))
                {
                    let outcome = httpclient::post(&url, "application/x-pki-message", body)
                        .map_err(|err| err.to_string())
                        .and_then(|response| {
                            if response.status != 200 {
                                return Err(format!("HTTP {}", response.status));
                            }
                            message::parse_reply(
                                &response.body,
                                &signers,
                                &throwaway,
                                key.decrypting(),
                            )
                            .map_err(|err| err.to_string())
                        });
                    match outcome {
                        Ok(reply)
                            if reply.status == PkiStatus::Success
                                && reply.transaction_id == *transaction_id
                                && reply.recipient_nonce == *nonce =>
                        {
                            let ours = reply.certificates.iter().find(|c| {
                                cert::spki_der(c).is_ok_and(|s| s == key.public_key_spki_der())
                            });
                            let serial = ours.map(|c| cert::serial_hex(c).unwrap());
                            serials.lock().unwrap().push(serial);
                        }
                        Ok(reply) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{transaction_id}: {:?}", reply.status)),
                        Err(err) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{transaction_id}: {err}")),
                    }
                }
            });
        }
    });

    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{failures:?}\n{}", server.log());
    let serials: Vec<String> = serials
        .into_inner()
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(
        serials.len(),
        ISSUANCES,
        "every reply holds our certificate"
    );
    let distinct: BTreeSet<&String> = serials.iter().collect();
    assert_eq!(distinct.len(), ISSUANCES, "serials are distinct");
    for serial in &serials {
        let record = server
            .cert_record(serial)
            .unwrap_or_else(|| panic!("{serial}: not recorded"));
        assert_eq!(record["serial"], serial.as_str());
        assert_eq!(record["authorised_by"], "static");
    }
    let listed = json(&server, &["cert", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), ISSUANCES);
}

#[test]
fn cli_writes_during_enrollments_lose_nothing() {
    const DEVICES: usize = 24;
    const TOKENS: usize = 12;

    let server = TestServer::start(|config| config);
    let state = server.state.to_string_lossy().into_owned();
    let config = server.config_path().to_string_lossy().into_owned();

    // A first fleet gives certificates to revoke.
    let first = FleetOptions {
        device: server.device_options(),
        devices: 6,
        concurrency: 3,
        retry: false,
    };
    let to_revoke = Mutex::new(Vec::new());
    let summary = fleet::run(&first, &|done| {
        to_revoke
            .lock()
            .unwrap()
            .push(done.certificate_serial.clone())
    })
    .unwrap();
    assert_eq!(summary.ok, 6, "{:?}", summary.failures);
    let to_revoke = to_revoke.into_inner().unwrap();

    // Then enrollments (with a token) and CLI writes, all at once.
    let (secret, token_id) = new_token(&server, DEVICES as u32);
    let made = Mutex::new(Vec::new());
    let summary = std::thread::scope(|scope| {
        let enrollments = scope.spawn(|| {
            let mut device = server.device_options();
            device.token = Some(secret.clone());
            let options = FleetOptions {
                device,
                devices: DEVICES,
                concurrency: 4,
                retry: false,
            };
            fleet::run(&options, &|_| {}).unwrap()
        });
        for worker in 0..3 {
            let (state, config, made, to_revoke) = (&state, &config, &made, &to_revoke);
            scope.spawn(move || {
                for n in (worker..TOKENS).step_by(3) {
                    let note = format!("concurrency {n}");
                    let (code, out, err) = otad(&[
                        "token", "new", "--state", state, "--uses", "3", "--note", &note,
                    ]);
                    assert_eq!(code, 0, "token new: {err}");
                    let id = out.lines().find_map(|l| l.strip_prefix("id: ")).unwrap();
                    made.lock().unwrap().push(id.to_string());
                    if let Some(serial) = to_revoke.get(n / 2).filter(|_| n % 2 == 0) {
                        let (code, _, err) = otad(&["cert", "revoke", "--config", config, serial]);
                        assert_eq!(code, 0, "cert revoke {serial}: {err}");
                    }
                }
            });
        }
        enrollments.join().unwrap()
    });
    assert_eq!(summary.ok, DEVICES, "{:?}", summary.failures);

    let tokens = json(&server, &["token", "list"]);
    let ids: BTreeSet<&str> = tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    let made = made.into_inner().unwrap();
    assert_eq!(made.len(), TOKENS);
    for id in &made {
        assert!(ids.contains(id.as_str()), "token {id} is lost");
    }
    let used = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == token_id.as_str())
        .map(|t| t["used"].as_u64().unwrap());
    assert_eq!(used, Some(DEVICES as u64), "every enrollment spent one use");

    // Revoked: serials n / 2 for even n below TOKENS, i.e. the first TOKENS / 2.
    let crl: serde_json::Value =
        serde_json::from_slice(&std::fs::read(server.state_file("crl.json")).unwrap()).unwrap();
    let listed: BTreeSet<&str> = crl["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["serial"].as_str().unwrap())
        .collect();
    for serial in to_revoke.iter().take(TOKENS / 2) {
        assert!(
            listed.contains(serial.as_str()),
            "revocation of {serial} lost"
        );
    }
    assert_eq!(listed.len(), TOKENS / 2);
    let (code, out, err) = otad(&["fsck", "--config", &config]);
    assert_eq!(code, 0, "fsck: {out}{err}");
}
