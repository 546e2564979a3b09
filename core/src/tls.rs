//! TLS 1.3 without certificates: the server's Ed25519 key, its fingerprint,
//! and the rustls configurations that pin it.
//!
//! The server holds one Ed25519 key (made on first start, kept in a 0600
//! file) and presents it as an RFC 7250 raw public key; the client checks
//! the SHA-256 of that SubjectPublicKeyInfo against a pin or, on first
//! contact, accepts it and lets the caller store it (see [`known_hosts`]).
//! Signatures are checked by rustls' own helpers with the ring provider,
//! passed explicitly (never the process-wide default). ALPN
//! [`ALPN`] is required on both sides.
//!
//! Not for moving bytes (see [`crate::transport`]) nor for storing pins
//! (see [`known_hosts`]). No certificates, no CA, no TLS 1.2, no session
//! resumption: every connection proves the key again.
//!
//! [`known_hosts`]: crate::known_hosts

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls13_signature_with_raw_key, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, ServerConfig,
    SignatureAlgorithm, SignatureScheme,
};
use sha2::{Digest, Sha256};

use crate::{Error, ErrorKind, Result};

/// The one ALPN protocol id both sides require.
pub const ALPN: &[u8] = b"bigtransfer/2";

/// The TLS exporter label of the channel binding (RFC 9266 style, our own
/// label so it can never collide with another protocol's binding).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-bigtransfer-token-binding";

/// The crypto provider of every configuration here: ring, explicitly, with
/// AES-128-GCM preferred (ring's order puts AES-256 first; 128 is ample
/// and takes 10 AES rounds instead of 14 on every byte of a 50 GB file).
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

/// The SHA-256 of a key's SubjectPublicKeyInfo DER, shown as ssh shows
/// keys: `SHA256:` and unpadded standard base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a SubjectPublicKeyInfo DER.
    pub fn of_spki(spki: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(spki).into())
    }

    /// The 32 hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses a user-given `SHA256:<base64>` (padding optional, the prefix
    /// in any case), with a message saying what is wrong.
    ///
    /// ```
    /// use bigtransfer_core::tls::Fingerprint;
    /// let f = Fingerprint::of_spki(b"k");
    /// assert_eq!(Fingerprint::parse(&f.to_string()).unwrap(), f);
    /// assert!(Fingerprint::parse("MD5:ab:cd").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Fingerprint> {
        let t = text.trim();
        let bad = |why: &str| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "\"{}\" is not a key fingerprint: {why} (expected SHA256: followed by 43 \
                     base64 characters, as the server prints it)",
                    crate::text::printable(t)
                ),
            )
        };
        let body = match t.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("SHA256:") => &t[7..],
            _ => return Err(bad("it does not start with SHA256:")),
        };
        let body = body.trim_end_matches('=');
        let bytes = STANDARD_NO_PAD
            .decode(body)
            .map_err(|_| bad("the part after SHA256: is not base64"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| bad("it does not encode 32 bytes"))?;
        Ok(Fingerprint(arr))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SHA256:{}", STANDARD_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Fingerprint> {
        Fingerprint::parse(s)
    }
}

/// Where a server keeps its key when no `--key FILE` is given: the file
/// `key` in the `.bigtransfer` folder of its storage directory `dir`.
///
/// ```
/// use std::path::Path;
/// let p = bigtransfer_core::tls::state_key_path(Path::new("/srv/in"));
/// assert_eq!(p, Path::new("/srv/in/.bigtransfer/key"));
/// ```
pub fn state_key_path(dir: &Path) -> PathBuf {
    dir.join(crate::name::RESERVED_NAME).join("key")
}

/// The server's Ed25519 key, ready for rustls. `Debug` never shows the
/// private half.
#[derive(Clone)]
pub struct ServerKey {
    signing: Arc<dyn SigningKey>,
    spki: Vec<u8>,
    pkcs8: Arc<Vec<u8>>,
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerKey({})", self.fingerprint())
    }
}

impl ServerKey {
    /// A fresh random Ed25519 key (not saved anywhere).
    pub fn generate() -> Result<ServerKey> {
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| Error::new(ErrorKind::Storage, "cannot generate an Ed25519 key"))?;
        ServerKey::from_pkcs8_der(doc.as_ref().to_vec())
    }

    /// A key from PKCS#8 DER; only Ed25519 is accepted.
    pub fn from_pkcs8_der(der: Vec<u8>) -> Result<ServerKey> {
        let bad = |why: String| Error::new(ErrorKind::InvalidInput, why);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.clone()));
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| bad(format!("not a usable PKCS#8 private key: {e}")))?;
        if signing.algorithm() != SignatureAlgorithm::ED25519 {
            return Err(bad(format!(
                "the key is {:?}, but bigtransfer server keys are Ed25519",
                signing.algorithm()
            )));
        }
        let spki = signing
            .public_key()
            .ok_or_else(|| bad("the key does not reveal its public half".into()))?
            .as_ref()
            .to_vec();
        Ok(ServerKey {
            signing,
            spki,
            pkcs8: Arc::new(der),
        })
    }

    /// The SubjectPublicKeyInfo DER of the public half.
    pub fn spki(&self) -> &[u8] {
        &self.spki
    }

    /// The fingerprint clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_spki(&self.spki)
    }

    /// The private key as PEM (`BEGIN PRIVATE KEY`, PKCS#8), as written to
    /// key files; openssl reads it.
    fn to_pem(&self) -> String {
        let b64 = STANDARD.encode(self.pkcs8.as_slice());
        let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(chunk));
            out.push('\n');
        }
        out.push_str("-----END PRIVATE KEY-----\n");
        out
    }

    /// Loads a key file (PEM or DER PKCS#8), refusing one that others may
    /// read: a key that leaked is no proof of anything.
    pub fn load(path: &Path) -> Result<ServerKey> {
        let mut file = open_key_file(path)?;
        let meta = file
            .metadata()
            .map_err(|e| key_io("cannot inspect the key file", path, e))?;
        check_key_mode(path, meta.mode(), meta.is_file())?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| key_io("cannot read the key file", path, e))?;
        let der = if bytes.starts_with(b"-----BEGIN") {
            match PrivateKeyDer::from_pem_slice(&bytes) {
                Ok(PrivateKeyDer::Pkcs8(k)) => k.secret_pkcs8_der().to_vec(),
                _ => return Err(key_format(path, "no PKCS#8 PRIVATE KEY block in it")),
            }
        } else {
            bytes
        };
        ServerKey::from_pkcs8_der(der).map_err(|e| key_format(path, &e.to_string()))
    }

    /// Loads the key at `path`, or makes one there if there is no file yet
    /// (the parent directory is created with mode 0700). Returns the key and
    /// whether it was created now. Safe against a second server starting at
    /// the same moment: the file appears whole or not at all, and the loser
    /// of the race loads the winner's key.
    pub fn load_or_create(path: &Path) -> Result<(ServerKey, bool)> {
        match ServerKey::load(path) {
            Ok(k) => return Ok((k, false)),
            Err(e) if e.io_error().map(|i| i.kind()) == Some(io::ErrorKind::NotFound) => {}
            Err(e) => return Err(e),
        }
        let key = ServerKey::generate()?;
        match key.save_new(path) {
            Ok(()) => Ok((key, true)),
            Err(e) if e.io_error().map(|i| i.kind()) == Some(io::ErrorKind::AlreadyExists) => {
                Ok((ServerKey::load(path)?, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the key to `path`, which must not exist yet: a temporary file
    /// (O_EXCL, mode 0600 from birth, synced) is hard-linked into place, so
    /// no reader ever sees a partial or world-readable key.
    pub fn save_new(&self, path: &Path) -> Result<()> {
        let dir = parent_dir(path);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| key_io("cannot create the key directory", &dir, e))?;
        let tmp = temp_path(path);
        let written = write_private_file(&tmp, self.to_pem().as_bytes());
        let linked = written.and_then(|()| fs::hard_link(&tmp, path));
        let _ = fs::remove_file(&tmp);
        linked.map_err(|e| key_io("cannot write the key file", path, e))?;
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// The directory a file lives in (`.` for a bare name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A fresh name next to `path` for a file about to replace or become it.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_dir(path).join(format!(".{name}.tmp.{}.{nanos}", std::process::id()))
}

/// Creates `path` (which must not exist) with mode 0600 and `bytes`, synced.
pub(crate) fn write_private_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // The umask can only remove bits; make sure no one but us ever reads it.
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn open_key_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| key_io("cannot open the key file", path, e))
}

fn check_key_mode(path: &Path, mode: u32, regular: bool) -> Result<()> {
    if !regular {
        return Err(key_format(path, "it is not a regular file"));
    }
    if mode & 0o077 != 0 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "the key file {} is readable or writable by other users (mode {:04o}); \
                 a server key must be private: run `chmod 600 {}` if no one else has read it, \
                 otherwise delete it so a new key is made (clients will then see a changed key)",
                path.display(),
                mode & 0o7777,
                path.display()
            ),
        ));
    }
    Ok(())
}

fn key_io(what: &str, path: &Path, e: io::Error) -> Error {
    Error::io(ErrorKind::Storage, format!("{what} {}", path.display()), e)
}

fn key_format(path: &Path, why: &str) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!("{} is not a bigtransfer server key: {why}", path.display()),
    )
}

/// Presents the one raw public key, but only to clients that ask for our
/// ALPN: refusing here makes the handshake itself fail for other clients.
#[derive(Debug)]
struct RawKeyResolver(Arc<CertifiedKey>);

impl ResolvesServerCert for RawKeyResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut offered = hello.alpn()?;
        offered.any(|p| p == ALPN).then(|| self.0.clone())
    }

    fn only_raw_public_keys(&self) -> bool {
        true
    }
}

/// The server's TLS configuration: TLS 1.3 only, ring, the raw public key
/// of `key`, ALPN [`ALPN`] required, no tickets (no resumption).
pub fn server_config(key: &ServerKey) -> Result<Arc<ServerConfig>> {
    let certified = CertifiedKey::new(
        vec![CertificateDer::from(key.spki.clone())],
        key.signing.clone(),
    );
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_setup)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(RawKeyResolver(Arc::new(certified))));
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// Which server key a client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinPolicy {
    /// Only the key with this fingerprint (a known host, or one given with
    /// `--fingerprint`, even on first contact).
    Expect(Fingerprint),
    /// First contact: any key whose signature checks out; the caller reads
    /// it afterwards ([`crate::transport::TlsTransport::peer_fingerprint`])
    /// and stores it.
    TrustOnFirstUse,
}

/// The server presented another key than the pinned one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyMismatch {
    /// The pinned fingerprint.
    pub expected: Fingerprint,
    /// The fingerprint the server presented.
    pub presented: Fingerprint,
}

impl fmt::Display for HostKeyMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the server's key is not the expected one: expected {}, the server presented {}",
            self.expected, self.presented
        )
    }
}

impl std::error::Error for HostKeyMismatch {}

/// Checks the server's raw public key against the policy, and its handshake
/// signature with rustls' helper.
#[derive(Debug)]
struct PinVerifier {
    policy: PinPolicy,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ));
        }
        let presented = Fingerprint::of_spki(end_entity.as_ref());
        match self.policy {
            PinPolicy::Expect(expected) if expected != presented => {
                let mismatch = HostKeyMismatch {
                    expected,
                    presented,
                };
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(mismatch)),
                )))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        // Unreachable with a TLS 1.3-only configuration; refuse anyway.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(cert.as_ref()),
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The client's TLS configuration: TLS 1.3 only, ring, raw public keys
/// checked by `pin`, ALPN [`ALPN`], no SNI (the name proves nothing here
/// and need not cross the wire in clear), no resumption.
pub fn client_config(pin: PinPolicy) -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let verifier = PinVerifier {
        policy: pin,
        provider: provider.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_setup)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_sni = false;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

fn tls_setup(e: rustls::Error) -> Error {
    Error::new(ErrorKind::InvalidInput, format!("cannot set up TLS: {e}"))
}

/// The key mismatch behind a handshake error, if that is what it was.
pub fn mismatch_of(e: &io::Error) -> Option<HostKeyMismatch> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<HostKeyMismatch>().cloned()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bt-tls-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn fingerprint_formats_like_ssh_and_parses_back() {
        let f = Fingerprint::of_spki(b"some spki");
        let s = f.to_string();
        assert!(s.starts_with("SHA256:"));
        assert_eq!(s.len(), 7 + 43, "{s}");
        assert!(!s.contains('='));
        assert_eq!(Fingerprint::parse(&s).unwrap(), f);
        assert_eq!(
            Fingerprint::parse(&format!(" sha256:{}= ", &s[7..])).unwrap(),
            f
        );
        let e = Fingerprint::parse("SHA256:abc").unwrap_err().to_string();
        assert!(e.contains("32 bytes"), "{e}");
        let e = Fingerprint::parse("SHA256:!!!").unwrap_err().to_string();
        assert!(e.contains("not base64"), "{e}");
        let e = Fingerprint::parse("ab:cd:ef").unwrap_err().to_string();
        assert!(e.contains("SHA256:"), "{e}");
    }

    #[test]
    fn fingerprint_is_sha256_of_the_spki() {
        let k = ServerKey::generate().unwrap();
        // An Ed25519 SPKI: 12 bytes of DER prefix and the 32-byte key.
        assert_eq!(k.spki().len(), 44);
        assert_eq!(
            &k.spki()[..12],
            &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]
        );
        let want: [u8; 32] = Sha256::digest(k.spki()).into();
        assert_eq!(k.fingerprint().as_bytes(), &want);
        assert_ne!(
            ServerKey::generate().unwrap().fingerprint(),
            k.fingerprint()
        );
    }

    #[test]
    fn key_file_is_private_reloads_and_a_shared_one_is_refused() {
        let dir = scratch("key");
        let path = state_key_path(&dir);
        let (k, created) = ServerKey::load_or_create(&path).unwrap();
        assert!(created);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
        let (again, created) = ServerKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again.fingerprint(), k.fingerprint());
        assert!(k.save_new(&path).is_err(), "never overwrites a key");
        assert_eq!(
            ServerKey::load(&path).unwrap().fingerprint(),
            k.fingerprint()
        );
        // No temporary files left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = ServerKey::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_or_foreign_key_files_are_refused_with_the_path() {
        let dir = scratch("bad");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        write_private_file(
            &path,
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = ServerKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("is not a bigtransfer server key"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
        let missing = ServerKey::load(&dir.join("nope")).unwrap_err();
        assert_eq!(missing.io_error().unwrap().kind(), io::ErrorKind::NotFound);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn der_key_files_load_too() {
        let dir = scratch("der");
        fs::create_dir_all(&dir).unwrap();
        let k = ServerKey::generate().unwrap();
        let path = dir.join("key.der");
        write_private_file(&path, k.pkcs8.as_slice()).unwrap();
        assert_eq!(
            ServerKey::load(&path).unwrap().fingerprint(),
            k.fingerprint()
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
