//! Who may upload: a shared token, proved by challenge-response.
//!
//! A server configured with a token sends each protocol-2 client a fresh
//! random nonce; the client answers with HMAC-SHA256(token, context ||
//! nonce || header), and the server checks it in constant time. The token
//! never crosses the wire, a recorded answer is useless against the next
//! nonce, and binding the header means an answer cannot be reused for
//! another file. Not for secrecy of the data: there is no encryption here
//! (see SECURITY.md).
//!
//! Inside TLS both proofs also cover the connection's channel binding (the
//! TLS exporter value, see [`crate::transport::Transport::channel_binding`]),
//! and the server speaks first: [`Token::server_proof`] shows the client
//! that the server knows the token, then [`Token::client_answer`] shows the
//! server the same. A man in the middle who terminates TLS on both sides
//! has two different bindings, so nothing he relays is valid on the other
//! connection. Both use their own labels, distinct from the plaintext
//! answer's, so no proof can be replayed as another kind.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Error, ErrorKind, Result};

/// Bytes of a challenge nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of an answer (an HMAC-SHA256 tag).
pub const ANSWER_LEN: usize = 32;

/// Domain separation: an answer is only ever valid for this use.
const CONTEXT: &[u8] = b"bigtransfer auth v1\0";
/// Label of the server's proof inside TLS.
const SERVER_PROOF: &[u8] = b"bigtransfer auth v2 server proof\0";
/// Label of the client's answer inside TLS.
const CLIENT_ANSWER: &[u8] = b"bigtransfer auth v2 client answer\0";

/// Bytes of a TLS channel binding.
pub const BINDING_LEN: usize = 32;

/// Estimated entropy a token must have, in bits (see [`Token::strength_bits`]).
pub const MIN_TOKEN_BITS: u32 = 128;
/// Distinct byte values a token must have (stops `aaaa…`, `abab…`).
pub const MIN_DISTINCT_BYTES: usize = 8;

/// A shared secret. Its `Debug` output never shows it.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token from its bytes (at least 16 of them, so it cannot be guessed
    /// in a few tries).
    ///
    /// ```
    /// use bigtransfer_core::auth::Token;
    /// assert!(Token::new(b"short".to_vec()).is_err());
    /// assert!(Token::new(b"a long enough shared secret".to_vec()).is_ok());
    /// ```
    pub fn new(bytes: Vec<u8>) -> Result<Token> {
        if bytes.len() < 16 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "the token must be at least 16 bytes long",
            ));
        }
        Ok(Token(bytes))
    }

    /// Reads a token from a file (trailing newlines are not part of it).
    pub fn from_file(path: &Path) -> Result<Token> {
        let mut b = std::fs::read(path).map_err(|e| {
            Error::io(
                ErrorKind::InvalidInput,
                format!("cannot read the token file {}", path.display()),
                e,
            )
        })?;
        while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
            b.pop();
        }
        Token::new(b)
    }

    /// A warning when the token file at `path` can be read by other users
    /// (group or world read bits): anyone who reads it can upload, and can
    /// impersonate the server to clients inside TLS.
    pub fn file_exposure(path: &Path) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode();
        (mode & 0o044 != 0).then(|| {
            format!(
                "warning: the token file {} is readable by other users (mode {:03o}); make it private: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            )
        })
    }

    fn mac(&self, nonce: &[u8; NONCE_LEN], header: &[u8]) -> Hmac<Sha256> {
        let mut m = self.keyed();
        m.update(CONTEXT);
        m.update(nonce);
        m.update(header);
        m
    }

    fn keyed(&self) -> Hmac<Sha256> {
        // new_from_slice accepts keys of any length for HMAC.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable_mac())
    }

    /// label || nonce || binding || header: fixed-size fields first and the
    /// header last, so no two inputs share an encoding.
    fn bound_mac(
        &self,
        label: &[u8],
        nonce: &[u8; NONCE_LEN],
        binding: &[u8; BINDING_LEN],
        header: &[u8],
    ) -> Hmac<Sha256> {
        let mut m = self.keyed();
        m.update(label);
        m.update(nonce);
        m.update(binding);
        m.update(header);
        m
    }

    /// Inside TLS, sent by the server with its nonce: proves to the client
    /// that this server (on this very connection) knows the token.
    pub fn server_proof(
        &self,
        nonce: &[u8; NONCE_LEN],
        binding: &[u8; BINDING_LEN],
        header: &[u8],
    ) -> [u8; ANSWER_LEN] {
        let m = self.bound_mac(SERVER_PROOF, nonce, binding, header);
        m.finalize().into_bytes().into()
    }

    /// The client's check of [`Token::server_proof`], in constant time.
    pub fn check_server_proof(
        &self,
        nonce: &[u8; NONCE_LEN],
        binding: &[u8; BINDING_LEN],
        header: &[u8],
        proof: &[u8],
    ) -> bool {
        let m = self.bound_mac(SERVER_PROOF, nonce, binding, header);
        m.verify_slice(proof).is_ok()
    }

    /// Inside TLS, the client's answer (sent only after the server's proof
    /// checked out).
    pub fn client_answer(
        &self,
        nonce: &[u8; NONCE_LEN],
        binding: &[u8; BINDING_LEN],
        header: &[u8],
    ) -> [u8; ANSWER_LEN] {
        let m = self.bound_mac(CLIENT_ANSWER, nonce, binding, header);
        m.finalize().into_bytes().into()
    }

    /// The server's check of [`Token::client_answer`], in constant time.
    pub fn check_client_answer(
        &self,
        nonce: &[u8; NONCE_LEN],
        binding: &[u8; BINDING_LEN],
        header: &[u8],
        answer: &[u8],
    ) -> bool {
        let m = self.bound_mac(CLIENT_ANSWER, nonce, binding, header);
        m.verify_slice(answer).is_ok()
    }

    /// A new random token: 256 bits from the OS, as 64 lowercase hex
    /// characters (the token is that text, as typed into files and flags).
    /// Print it with [`Token::reveal`].
    pub fn generate() -> Result<Token> {
        let raw = nonce()?;
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        Token::new(hex.into_bytes())
    }

    /// The secret itself, for printing a token just made. Never log it.
    pub fn reveal(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// A conservative estimate of the token's entropy in bits: its length
    /// times the bits per character of the smallest usual alphabet holding
    /// all its bytes (hex 4, base64/base64url 6, printable ASCII 6.5, any
    /// byte 8), trailing `=` padding not counted. A token with fewer than
    /// [`MIN_DISTINCT_BYTES`] different bytes counts as 0. This is a floor
    /// against careless tokens ("password123…"), not a proof of randomness:
    /// a long English sentence still passes, so prefer `bigtransfer token`.
    pub fn strength_bits(&self) -> u32 {
        let body: &[u8] = {
            let mut b = &self.0[..];
            while let [rest @ .., b'='] = b {
                b = rest;
            }
            b
        };
        let mut seen = [false; 256];
        body.iter().for_each(|b| seen[*b as usize] = true);
        if seen.iter().filter(|s| **s).count() < MIN_DISTINCT_BYTES {
            return 0;
        }
        let tenths_per_char: u64 = if body.iter().all(u8::is_ascii_hexdigit) {
            40
        } else if body
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+/-_".contains(b))
        {
            60
        } else if body.iter().all(|b| (0x20..0x7f).contains(b)) {
            65
        } else {
            80
        };
        u32::try_from(body.len() as u64 * tenths_per_char / 10).unwrap_or(u32::MAX)
    }

    /// Refuses a token that could be guessed offline: any recorded
    /// exchange (or, inside TLS, the server's proof, which anyone who
    /// connects receives) lets an attacker test guesses at full speed.
    ///
    /// ```
    /// use bigtransfer_core::auth::Token;
    /// let weak = Token::new(b"correcthorse1234".to_vec()).unwrap();
    /// assert!(weak.check_strength().is_err());
    /// assert!(Token::generate().unwrap().check_strength().is_ok());
    /// ```
    pub fn check_strength(&self) -> Result<()> {
        let bits = self.strength_bits();
        if bits >= MIN_TOKEN_BITS {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "the token is too weak: about {bits} bits of entropy estimated, \
                 {MIN_TOKEN_BITS} needed (e.g. 32 hex or 22 base64 random characters); \
                 anyone who records one exchange can guess a weak token offline. \
                 Make a strong one with `bigtransfer token`"
            ),
        ))
    }

    /// The answer to `nonce` for the header JSON bytes `header`.
    pub fn answer(&self, nonce: &[u8; NONCE_LEN], header: &[u8]) -> [u8; ANSWER_LEN] {
        self.mac(nonce, header).finalize().into_bytes().into()
    }

    /// Whether `answer` is right, compared in constant time.
    pub fn check(&self, nonce: &[u8; NONCE_LEN], header: &[u8], answer: &[u8]) -> bool {
        self.mac(nonce, header).verify_slice(answer).is_ok()
    }

    /// The server's side of a challenge, for every kind of connection: the
    /// proof to send with the nonce inside TLS (`binding` given), none in
    /// plaintext. Uploads, downloads, lists and tree sessions all use this.
    pub fn challenge_proof(
        &self,
        nonce: &[u8; NONCE_LEN],
        binding: Option<&[u8; BINDING_LEN]>,
        header: &[u8],
    ) -> Option<[u8; ANSWER_LEN]> {
        binding.map(|b| self.server_proof(nonce, b, header))
    }

    /// The server's check of an answer to [`Token::challenge_proof`]'s
    /// challenge: the bound answer inside TLS, the plain one outside.
    pub fn check_challenge_answer(
        &self,
        nonce: &[u8; NONCE_LEN],
        binding: Option<&[u8; BINDING_LEN]>,
        header: &[u8],
        answer: &[u8],
    ) -> bool {
        match binding {
            Some(b) => self.check_client_answer(nonce, b, header, answer),
            None => self.check(nonce, header, answer),
        }
    }
}

#[cold]
fn unreachable_mac() -> Hmac<Sha256> {
    // HMAC takes keys of every length; keep a total function anyway.
    <Hmac<Sha256> as Mac>::new_from_slice(b"\0")
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

/// A fresh random nonce from the OS.
pub fn nonce() -> Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    let mut filled = 0;
    while filled < NONCE_LEN {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let r = rustix::rand::getrandom(&mut n[filled..], rustix::rand::GetRandomFlags::empty())
            .map_err(std::io::Error::from);
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let r = {
            use std::io::Read;
            std::fs::File::open("/dev/urandom").and_then(|mut f| f.read(&mut n[filled..]))
        };
        match r {
            Ok(got) if got > 0 => filled += got,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(_) => {
                let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no random bytes");
                return Err(Error::io(ErrorKind::Storage, "cannot get random bytes", e));
            }
            Err(e) => return Err(Error::io(ErrorKind::Storage, "cannot get random bytes", e)),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_depend_on_token_nonce_and_header() {
        let t = Token::new(b"0123456789abcdef-secret".to_vec()).unwrap();
        let other = Token::new(b"0123456789abcdef-SECRET".to_vec()).unwrap();
        let (n1, n2) = (nonce().unwrap(), nonce().unwrap());
        assert_ne!(n1, n2);
        let a = t.answer(&n1, b"{h}");
        assert!(t.check(&n1, b"{h}", &a));
        assert!(!other.check(&n1, b"{h}", &a), "wrong token");
        assert!(!t.check(&n2, b"{h}", &a), "replayed against a new nonce");
        assert!(!t.check(&n1, b"{x}", &a), "answer for another header");
        assert!(!t.check(&n1, b"{h}", &a[..31]), "truncated");
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    fn bound_setup() -> (Token, [u8; NONCE_LEN], [u8; BINDING_LEN], [u8; BINDING_LEN]) {
        let t = Token::generate().unwrap();
        (t, nonce().unwrap(), nonce().unwrap(), nonce().unwrap())
    }

    #[test]
    fn bound_proofs_depend_on_everything_and_differ_by_role() {
        let (t, n, b1, b2) = bound_setup();
        let other = Token::generate().unwrap();
        let p = t.server_proof(&n, &b1, b"{h}");
        let a = t.client_answer(&n, &b1, b"{h}");
        assert_ne!(p, a, "roles have distinct labels");
        assert_ne!(
            a,
            t.answer(&n, b"{h}"),
            "distinct from the plaintext answer"
        );
        assert!(t.check_server_proof(&n, &b1, b"{h}", &p));
        assert!(t.check_client_answer(&n, &b1, b"{h}", &a));
        assert!(
            !t.check_client_answer(&n, &b1, b"{h}", &p),
            "a proof is no answer"
        );
        assert!(
            !t.check_server_proof(&n, &b1, b"{h}", &a),
            "an answer is no proof"
        );
        assert!(
            !other.check_client_answer(&n, &b1, b"{h}", &a),
            "wrong token"
        );
        assert!(
            !t.check_client_answer(&n, &b2, b"{h}", &a),
            "other connection"
        );
        assert!(
            !t.check_server_proof(&n, &b2, b"{h}", &p),
            "other connection"
        );
        assert!(!t.check_client_answer(&b2, &b1, b"{h}", &a), "other nonce");
        assert!(!t.check_client_answer(&n, &b1, b"{x}", &a), "other header");
        assert!(
            !t.check_client_answer(&n, &b1, b"{h}", &a[..31]),
            "truncated"
        );
    }

    #[test]
    fn generated_tokens_are_strong_hex_and_unique() {
        let t = Token::generate().unwrap();
        let text = t.reveal();
        assert_eq!(text.len(), 64);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(t.strength_bits(), 256);
        assert_ne!(Token::generate().unwrap().reveal(), text);
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    #[test]
    fn strength_rule() {
        let bits = |s: &[u8]| Token::new(s.to_vec()).unwrap().strength_bits();
        assert_eq!(bits(b"0123456789abcdef0123456789abcdef"), 128, "32 hex");
        assert_eq!(bits(b"0123456789abcdef0123456789abcde"), 124, "31 hex");
        assert_eq!(bits(b"ABCDEFGHIJKLMNOPQRSTUv=="), 132, "22 base64");
        assert_eq!(
            bits(b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            0,
            "one letter"
        );
        assert_eq!(bits(b"abababababababababababababababab"), 0, "two letters");
        assert_eq!(bits(b"correct horse battery staple!"), 188, "29 printable");
        let weak = Token::new(b"password12345678".to_vec()).unwrap();
        let e = weak.check_strength().unwrap_err().to_string();
        assert!(
            e.contains("too weak") && e.contains("bigtransfer token"),
            "{e}"
        );
        assert!(e.contains("about 96 bits"), "{e}");
    }

    #[test]
    fn hmac_sha256_known_answer() {
        // RFC 4231 test case 2 ("Jefe"), through the same primitive.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        let hex: String = m
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
