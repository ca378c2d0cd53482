//! The CMS layer against a real OTA phase 2 request from macOS 13 (see the fixtures README):
//! the request as sent, and variants of it rebuilt here the ways other devices send theirs
//! (DER, many eContent chunks, leaf certificate only) or the ways an attacker might (flipped
//! content or signature, truncation).

mod common;

use common::der::{children, encode, signed_data_fields, split, with_signed_data_fields};

use std::error::Error;

use otad::cms::{ber, oid, signed, CmsError, DigestAlgorithm};

type TestResult = Result<(), Box<dyn Error>>;

/// The real request: SignedData in BER, SHA-1, no signed attributes, four certificates.
const FIXTURE: &str = "ota/phase2-macos-vm.der";

/// The UDID the request's content carries.
const UDID: &str = "78897E40-F532-5DE0-A7DC-56BAC5CEEB9C";

/// The fixture, normalised to DER.
fn real_der(real: &[u8]) -> Result<Vec<u8>, Box<dyn Error>> {
    Ok(ber::normalize(real)?)
}

/// Whether `text` looks like an uppercase or lowercase UUID (8-4-4-4-12 hex digits).
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|group| group.len()).collect();
    lengths == [8, 4, 4, 4, 12]
        && groups
            .iter()
            .all(|group| group.chars().all(|c| c.is_ascii_hexdigit()))
}

#[test]
fn real_request_verifies() -> TestResult {
    let Some(real) = common::fixture(FIXTURE) else {
        return Ok(());
    };
    let message = signed::verify(&real)?;

    assert_eq!(message.content_type, oid::ID_DATA);
    assert_eq!(message.signer.digest, DigestAlgorithm::Sha1);
    assert!(message.signer.signed_attributes.is_none());
    assert_eq!(message.certificates.len(), 4);
    assert_eq!(
        message.certificates.first(),
        Some(&message.signer.certificate)
    );

    let (_, certificate) = x509_parser::parse_x509_certificate(&message.signer.certificate)?;
    let common_name = certificate
        .subject()
        .iter_common_name()
        .next()
        .ok_or("signer has no CN")?
        .as_str()?;
    assert!(
        is_uuid(common_name),
        "signer CN {common_name} is not a UUID"
    );
    let issuer = certificate
        .issuer()
        .iter_common_name()
        .next()
        .ok_or("no issuer CN")?
        .as_str()?;
    assert_eq!(issuer, "Apple iPhone Device CA");

    let content = message.content.as_deref().ok_or("no content")?;
    assert!(content.starts_with(b"<?xml"));
    let plist: plist::Value = plist::from_bytes(content)?;
    let dictionary = plist.as_dictionary().ok_or("content is not a dictionary")?;
    let udid = dictionary.get("UDID").and_then(plist::Value::as_string);
    assert_eq!(udid, Some(UDID));
    let product = dictionary.get("PRODUCT").and_then(plist::Value::as_string);
    assert_eq!(product, Some("VirtualMac2,1"));
    Ok(())
}

#[test]
fn normalising_is_needed_and_idempotent() -> TestResult {
    let Some(real) = common::fixture(FIXTURE) else {
        return Ok(());
    };
    let once = ber::normalize(&real)?;
    assert_ne!(once, real, "the real request is BER");
    assert!(once.len() < real.len());
    assert_eq!(ber::normalize(&once)?, once);

    // The certificates come out byte for byte as they went in.
    let message = signed::verify(&real)?;
    for certificate in &message.certificates {
        let found = real
            .windows(certificate.len())
            .any(|window| window == certificate.as_slice());
        assert!(found, "certificate bytes changed in normalisation");
    }
    Ok(())
}

#[test]
fn der_re_encoding_verifies() -> TestResult {
    let Some(real) = common::fixture(FIXTURE) else {
        return Ok(());
    };
    let der = real_der(&real)?;
    let from_der = signed::verify(&der)?;
    assert_eq!(from_der, signed::verify(&real)?);
    Ok(())
}

#[test]
fn many_econtent_chunks_verify() -> TestResult {
    let Some(real) = common::fixture(FIXTURE) else {
        return Ok(());
    };
    let der = real_der(&real)?;
    let original = signed::verify(&der)?;
    let content = original.content.as_deref().ok_or("no content")?;

    for chunk_size in [1, 7, 64, 500] {
        let mut fields = signed_data_fields(&der)?;
        // EncapsulatedContentInfo in BER: indefinite lengths, eContent as a constructed
        // OCTET STRING of many chunks.
        let mut encapsulated = vec![0x30, 0x80];
        encapsulated.extend_from_slice(&encode(0x06, oid::ID_DATA.as_bytes()));
        encapsulated.extend_from_slice(&[0xa0, 0x80, 0x24, 0x80]);
        for chunk in content.chunks(chunk_size) {
            encapsulated.extend_from_slice(&encode(0x04, chunk));
        }
        encapsulated.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        *fields.get_mut(2).ok_or("no encapContentInfo")? = encapsulated;

        let chunked = with_signed_data_fields(&fields);
        let message = signed::verify(&chunked)?;
        assert_eq!(
            message.content.as_deref(),
            Some(content),
            "chunks of {chunk_size}"
        );
    }
    Ok(())
}

#[test]
fn leaf_only_verifies() -> TestResult {
    let Some(real) = common::fixture(FIXTURE) else {
        return Ok(());
    };
    let der = real_der(&real)?;
    let original = signed::verify(&der)?;

    let mut fields = signed_data_fields(&der)?;
    let certificates = fields.get_mut(3).ok_or("no certificates")?;
    assert_eq!(certificates.first(), Some(&0xa0));
    *certificates = encode(0xa0, &original.signer.certificate);

    let message = signed::verify(&with_signed_data_fields(&fields))?;
    assert_eq!(
        message.certificates,
        vec![original.signer.certificate.clone()]
    );
    assert_eq!(message.content, original.content);

    // Without the leaf, nothing can verify the signature.
    let mut fields = signed_data_fields(&der)?;
    let chain = children(split(fields.get(3).ok_or("no certificates")?)?.0.content)?;
    let others: Vec<u8> = chain
        .iter()
        .skip(1)
        .flat_map(|cert| cert.raw.to_vec())
        .collect();
    *fields.get_mut(3).ok_or("no certificates")? = encode(0xa0, &others);
    let result = signed::verify(&with_signed_data_fields(&fields));
    assert!(matches!(result, Err(CmsError::SignerCertificateMissing)));
    Ok(())
}

#[test]
fn flipped_content_is_refused() -> TestResult {
    let Some(real) = common::fixture(FIXTURE) else {
        return Ok(());
    };
    for mut message in [real.clone(), real_der(&real)?] {
        let start = message
            .windows(UDID.len())
            .position(|window| window == UDID.as_bytes())
            .ok_or("UDID not found")?;
        let octet = message.get_mut(start).ok_or("range")?;
        *octet ^= 0x01;
        let result = signed::verify(&message);
        assert!(
            matches!(
                result,
                Err(CmsError::BadSignature | CmsError::MessageDigestMismatch)
            ),
            "{result:?}"
        );
    }
    Ok(())
}

#[test]
fn flipped_signature_is_refused() -> TestResult {
    let Some(real) = common::fixture(FIXTURE) else {
        return Ok(());
    };
    let der = real_der(&real)?;
    // The SignerInfo is last and ends with its 128-octet signature (RSA-1024).
    for from_end in [1, 64, 128] {
        let mut message = der.clone();
        let index = message.len() - from_end;
        let octet = message.get_mut(index).ok_or("range")?;
        *octet ^= 0x40;
        assert!(
            matches!(signed::verify(&message), Err(CmsError::BadSignature)),
            "flipped {from_end} from the end"
        );
    }
    Ok(())
}

#[test]
fn truncated_requests_are_refused() -> TestResult {
    let Some(real) = common::fixture(FIXTURE) else {
        return Ok(());
    };
    let der = real_der(&real)?;
    for message in [&real, &der] {
        let mut cuts: Vec<usize> = (0..message.len()).step_by(37).collect();
        cuts.extend([1, 2, 15, 48, message.len() - 2, message.len() - 1]);
        for cut in cuts {
            let prefix = message.get(..cut).ok_or("range")?;
            assert!(signed::verify(prefix).is_err(), "cut at {cut} verified");
        }
    }
    Ok(())
}

#[test]
fn no_single_octet_corruption_changes_the_content() -> TestResult {
    let Some(real) = common::fixture(FIXTURE) else {
        return Ok(());
    };
    let content = signed::verify(&real)?.content;
    for original in [real.clone(), real_der(&real)?] {
        for index in 0..original.len() {
            let mut corrupted = original.clone();
            let octet = corrupted.get_mut(index).ok_or("range")?;
            *octet ^= 0x5a;
            // Corrupting the CA certificates may go unnoticed; nothing may change the content
            // that verifies, and nothing may panic.
            if let Ok(message) = signed::verify(&corrupted) {
                assert_eq!(
                    message.content, content,
                    "corrupting octet {index} verified"
                );
            }
        }
    }
    Ok(())
}
