//! TLS for otad's listener: rustls with the aws-lc-rs provider, TLS 1.2 and 1.3, the
//! certificate chain and key read from PEM files (`tls.cert`, `tls.key`), and reloaded in
//! place on SIGHUP: a new handshake gets the new certificate, a connection already open keeps
//! the one it started with.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// Largest PEM file read (a chain of a few certificates, or one key).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Most certificates in the chain file.
const MAX_CHAIN: usize = 16;

/// Why the TLS certificate or key cannot be used.
#[derive(Debug)]
pub enum TlsError {
    /// A file cannot be read.
    Read(PathBuf, io::Error),
    /// A file is larger than any certificate chain or key.
    TooLarge(PathBuf),
    /// The chain file holds no PEM certificate, or is not PEM.
    NoCertificate(PathBuf),
    /// The chain file holds more certificates than otad sends.
    ChainTooLong(PathBuf),
    /// The key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1).
    NoKey(PathBuf, String),
    /// The key is of a kind or size rustls cannot sign with.
    UnusableKey(PathBuf, String),
    /// The key is not the key of the first certificate.
    KeyMismatch(PathBuf, PathBuf),
    /// rustls refused the configuration.
    Config(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read(path, err) => write!(f, "{}: cannot read: {err}", path.display()),
            TlsError::TooLarge(path) => write!(
                f,
                "{}: over {MAX_PEM_BYTES} bytes; is this a PEM certificate or key file?",
                path.display()
            ),
            TlsError::NoCertificate(path) => write!(
                f,
                "tls.cert {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                path.display()
            ),
            TlsError::ChainTooLong(path) => write!(
                f,
                "tls.cert {}: more than {MAX_CHAIN} certificates; keep the server certificate \
                 and its intermediates only",
                path.display()
            ),
            TlsError::NoKey(path, why) => write!(
                f,
                "tls.key {}: no PEM private key in it ({why}); give PKCS#8, PKCS#1 or SEC1 PEM, \
                 unencrypted",
                path.display()
            ),
            TlsError::UnusableKey(path, why) => {
                write!(f, "tls.key {}: cannot sign with it: {why}", path.display())
            }
            TlsError::KeyMismatch(key, cert) => write!(
                f,
                "tls.key {}: not the key of the first certificate in tls.cert {}; check the \
                 pair (the server certificate must come first)",
                key.display(),
                cert.display()
            ),
            TlsError::Config(why) => write!(f, "TLS configuration: {why}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// The TLS side of the listener: the rustls configuration and the files it reloads from.
pub struct Tls {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: Arc<CurrentCertificate>,
    config: Arc<ServerConfig>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the chain and key and builds a TLS 1.2 + 1.3 server configuration.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Tls, TlsError> {
        let certified = read_certified_key(cert_path, key_path)?;
        let current = Arc::new(CurrentCertificate(RwLock::new(Arc::new(certified))));

        let provider = Arc::new(aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|err| TlsError::Config(err.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];

        Ok(Tls {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current,
            config: Arc::new(config),
        })
    }

    /// Reads the files again and, if they make a usable pair, serves the new certificate to
    /// every later handshake. On an error the old certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let certified = read_certified_key(&self.cert_path, &self.key_path)?;
        let mut current = self
            .current
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = Arc::new(certified);
        Ok(())
    }

    /// The configuration for new server connections.
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }

    /// The certificate chain served now, DER, server certificate first.
    pub fn chain(&self) -> Vec<Vec<u8>> {
        let current = self
            .current
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        current.cert.iter().map(|c| c.as_ref().to_vec()).collect()
    }
}

/// The certificate every new handshake gets; swapped by [`Tls::reload`].
#[derive(Debug)]
struct CurrentCertificate(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(Arc::clone(&current))
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let size = fs::metadata(path)
        .map_err(|err| TlsError::Read(path.to_path_buf(), err))?
        .len();
    if size > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge(path.to_path_buf()));
    }
    fs::read(path).map_err(|err| TlsError::Read(path.to_path_buf(), err))
}

fn read_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read_pem(cert_path)?;
    let mut chain = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&cert_pem) {
        let cert = cert.map_err(|_| TlsError::NoCertificate(cert_path.to_path_buf()))?;
        if chain.len() == MAX_CHAIN {
            return Err(TlsError::ChainTooLong(cert_path.to_path_buf()));
        }
        chain.push(cert);
    }
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_path_buf()));
    }

    let key_pem = read_pem(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|err| TlsError::NoKey(key_path.to_path_buf(), err.to_string()))?;
    let provider = aws_lc_rs::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|err| TlsError::UnusableKey(key_path.to_path_buf(), err.to_string()))?;

    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|_| TlsError::KeyMismatch(key_path.to_path_buf(), cert_path.to_path_buf()))?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        fs::write(&cert_path, cert.pem()).unwrap();
        fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path, cert.der().to_vec())
    }

    /// One handshake over loopback; returns the certificate the server presented.
    fn handshake(tls: &Tls, trusted: &[Vec<u8>]) -> Result<Vec<u8>, String> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let config = tls.config();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let connection = rustls::ServerConnection::new(config).unwrap();
            let mut tls_stream = rustls::StreamOwned::new(connection, stream);
            let mut buffer = [0u8; 5];
            if tls_stream.read_exact(&mut buffer).is_ok() {
                let _ = tls_stream.write_all(b"pong!");
                let _ = tls_stream.flush();
            }
        });

        let mut roots = rustls::RootCertStore::empty();
        for der in trusted {
            roots.add(CertificateDer::from(der.clone())).unwrap();
        }
        let provider = Arc::new(aws_lc_rs::default_provider());
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let connection = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut stream = rustls::StreamOwned::new(connection, TcpStream::connect(address).unwrap());
        let result = stream
            .write_all(b"ping!")
            .and_then(|()| {
                let mut answer = [0u8; 5];
                stream.read_exact(&mut answer).map(|()| answer)
            })
            .map_err(|err| err.to_string());
        let presented = stream
            .conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| c.as_ref().to_vec());
        drop(stream);
        let _ = server.join();
        let answer = result?;
        assert_eq!(&answer, b"pong!");
        presented.ok_or_else(|| "no certificate".to_string())
    }

    #[test]
    fn serves_the_pair_and_a_reload_changes_only_later_handshakes() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path, first) = write_pair(dir.path(), "server");
        let tls = Tls::load(&cert_path, &key_path).unwrap();
        assert_eq!(
            handshake(&tls, std::slice::from_ref(&first)).unwrap(),
            first
        );

        let (new_cert, new_key, second) = write_pair(dir.path(), "next");
        fs::rename(&new_cert, &cert_path).unwrap();
        fs::rename(&new_key, &key_path).unwrap();
        tls.reload().unwrap();
        assert_eq!(tls.chain(), vec![second.clone()]);
        assert_eq!(
            handshake(&tls, std::slice::from_ref(&second)).unwrap(),
            second
        );
        assert!(
            handshake(&tls, &[first]).is_err(),
            "the old certificate is gone"
        );
    }

    #[test]
    fn a_failed_reload_keeps_the_certificate_in_service() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path, first) = write_pair(dir.path(), "server");
        let tls = Tls::load(&cert_path, &key_path).unwrap();

        fs::write(&key_path, "not a key").unwrap();
        let err = tls.reload().unwrap_err();
        assert!(matches!(err, TlsError::NoKey(_, _)), "{err}");
        assert_eq!(tls.chain(), vec![first.clone()]);
        assert_eq!(
            handshake(&tls, std::slice::from_ref(&first)).unwrap(),
            first
        );
    }

    #[test]
    fn mistakes_in_the_files_name_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path, _) = write_pair(dir.path(), "a");
        let (_, other_key, _) = write_pair(dir.path(), "b");

        let err = Tls::load(&cert_path, &other_key).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch(_, _)), "{err}");
        assert!(err
            .to_string()
            .contains("not the key of the first certificate"));

        let missing = dir.path().join("missing.crt");
        let err = Tls::load(&missing, &key_path).unwrap_err();
        assert!(err
            .to_string()
            .starts_with(&format!("{}: cannot read", missing.display())));

        let empty = dir.path().join("empty.crt");
        fs::write(&empty, "").unwrap();
        let err = Tls::load(&empty, &key_path).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate(_)), "{err}");

        let swapped = Tls::load(&key_path, &cert_path).unwrap_err();
        assert!(matches!(swapped, TlsError::NoCertificate(_)), "{swapped}");
    }
}
