//! The client's answer to a tree session's token challenge: the same
//! answer a single upload gives (plain, or inside TLS bound to the
//! connection, sent only after the server proved the token), over the
//! tree frames (`A`, see `docs/PROTOCOL.md`, "Tree sessions").
//!
//! Not for single uploads (the sender machine) nor single-file downloads
//! (`get`); tree sends and tree downloads both use it.

use crate::auth::{Token, ANSWER_LEN};
use crate::transport::Transport;
use crate::tree::wire;
use crate::v2::{self, ServerMsg};
use crate::{Error, ErrorKind, Result};

/// Answers the challenge whose payload is `challenge` (the nonce, and
/// inside TLS the server's proof), with `token`, for the session whose
/// header's JSON is `json` (what the proofs cover).
pub(super) fn answer(
    token: Option<&Token>,
    stream: &mut dyn Transport,
    challenge: &[u8],
    json: &[u8],
) -> Result<()> {
    let Some(token) = token else {
        return Err(Error::new(
            ErrorKind::Refused,
            "the server requires a token: pass --token-file (or set BIGTRANSFER_TOKEN)",
        ));
    };
    let msg = v2::parse_server_msg(wire::CHALLENGE, challenge)?;
    let a = match (msg, stream.channel_binding()) {
        (ServerMsg::Challenge(nonce), _) => token.answer(&nonce, json),
        (ServerMsg::BoundChallenge { nonce, proof }, Some(b))
            if token.check_server_proof(&nonce, &b, json, &proof) =>
        {
            token.client_answer(&nonce, &b, json)
        }
        // A server that cannot prove the token learns nothing about ours.
        _ => [0u8; ANSWER_LEN],
    };
    let mut frame = Vec::new();
    let cut = |e| {
        Error::io(
            ErrorKind::ConnectionLost,
            "the connection was cut while answering the challenge",
            e,
        )
    };
    wire::write_frame(&mut frame, wire::ANSWER, &a).map_err(cut)?;
    stream.write_all(&frame).map_err(cut)?;
    stream.flush().map_err(cut)
}
