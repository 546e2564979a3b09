//! Who may upload: a shared token, proved by challenge-response.
//!
//! A server configured with a token sends each protocol-2 client a fresh
//! random nonce; the client answers with HMAC-SHA256(token, context ||
//! nonce || header), and the server checks it in constant time. The token
//! never crosses the wire, a recorded answer is useless against the next
//! nonce, and binding the header means an answer cannot be reused for
//! another file. Not for secrecy of the data: there is no encryption here
//! (see SECURITY.md).

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

    fn mac(&self, nonce: &[u8; NONCE_LEN], header: &[u8]) -> Hmac<Sha256> {
        // new_from_slice accepts keys of any length for HMAC.
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable_mac());
        m.update(CONTEXT);
        m.update(nonce);
        m.update(header);
        m
    }

    /// The answer to `nonce` for the header JSON bytes `header`.
    pub fn answer(&self, nonce: &[u8; NONCE_LEN], header: &[u8]) -> [u8; ANSWER_LEN] {
        self.mac(nonce, header).finalize().into_bytes().into()
    }

    /// Whether `answer` is right, compared in constant time.
    pub fn check(&self, nonce: &[u8; NONCE_LEN], header: &[u8], answer: &[u8]) -> bool {
        self.mac(nonce, header).verify_slice(answer).is_ok()
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
        // SAFETY: getrandom writes at most the given length into the buffer.
        let r = unsafe { libc::getrandom(n[filled..].as_mut_ptr().cast(), NONCE_LEN - filled, 0) };
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let r: isize = {
            use std::io::Read;
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read(&mut n[filled..]))
                .map(|x| x as isize)
                .unwrap_or(-1)
        };
        if r > 0 {
            filled += r as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::io(
                ErrorKind::Storage,
                "cannot get random bytes",
                std::io::Error::last_os_error(),
            ));
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
