//! Parallel streams for downloads: a `get` that asks for streams
//! (`bt.streams`) opens a session and receives its ticket in a `J` frame
//! before the reference; further `get` connections that name the session
//! (`bt.join`, proved with the join secret on their own connection, as
//! for uploads) are served the same file. Each stream answers its own
//! want frames: the client pulls blocks from one shared queue and writes
//! each verified one at its offset, so the server keeps no shared state
//! beyond the session's admission (replayed nonces, the stream count).
//!
//! Not for uploads' sessions (`server::streams`), the wire
//! (`crate::session`, `crate::getwire`), nor serving blocks (`server::get`).

use std::net::SocketAddr;
use std::sync::Arc;

use super::Shared;
use crate::getwire::Reference;
use crate::machine::Fault;
use crate::session::{hex, Join, Session, Sessions};
use crate::v2::{self, FaultCode, ServerMsg};

/// What the download's header asked of sessions, and the connection's
/// TLS channel binding (a join proof is bound to it).
pub(super) struct Plan {
    pub(super) streams: Option<u32>,
    pub(super) join: Option<Join>,
    pub(super) binding: Option<[u8; 32]>,
    pub(super) peer: SocketAddr,
}

enum Role {
    Alone,
    Owner(Arc<Session>),
    Joined(Arc<Session>),
}

/// This connection's place in a session, released when serving ends:
/// the owner's session closes (no more joins), a join frees its stream.
pub(super) struct Guard<'a> {
    sessions: &'a Sessions,
    role: Role,
}

impl Guard<'_> {
    /// Whether this connection is one of several (its client asks for
    /// one block per want frame, so it may ask many more rounds).
    pub(super) fn in_session(&self) -> bool {
        !matches!(self.role, Role::Alone)
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        match &self.role {
            Role::Alone => {}
            Role::Owner(s) => self.sessions.close(&s.ticket.session),
            Role::Joined(s) => s.left(),
        }
    }
}

/// Enters the session the plan asks for: a join is checked and admitted;
/// a first connection asking for two or more streams opens one, and the
/// `J` frame to send before the reference is returned.
pub(super) fn enter<'a>(
    sh: &'a Shared,
    name: &str,
    r: &Reference,
    plan: &Plan,
) -> Result<(Guard<'a>, Option<Vec<u8>>), Fault> {
    let alone = Guard {
        sessions: &sh.sessions,
        role: Role::Alone,
    };
    if let Some(j) = &plan.join {
        let s = admit(sh, name, r, j, plan)?;
        (sh.logger)(&format!(
            "{}: stream joined the download of {name} (session {})",
            plan.peer,
            hex(&s.ticket.session)
        ));
        let g = Guard {
            sessions: &sh.sessions,
            role: Role::Joined(s),
        };
        return Ok((g, None));
    }
    let Some(n) = plan.streams.filter(|&n| n >= 2) else {
        return Ok((alone, None));
    };
    match sh.sessions.open(name, r.size, r.block, n) {
        // The receiving end is for uploads' joined blocks: a download's
        // streams hand nothing to the owner.
        Ok((s, _)) => {
            let frame = v2::encode_server_msg(&ServerMsg::Join(s.ticket.clone()));
            let g = Guard {
                sessions: &sh.sessions,
                role: Role::Owner(s),
            };
            Ok((g, Some(frame)))
        }
        Err(e) => {
            (sh.logger)(&format!("{}: no session for a download: {e}", plan.peer));
            Ok((alone, None))
        }
    }
}

/// Checks a join as for uploads: the session is open, the proof is of
/// its secret on this connection, the nonce is new, the download is the
/// same file, and a stream is free.
fn admit(
    sh: &Shared,
    name: &str,
    r: &Reference,
    j: &Join,
    plan: &Plan,
) -> Result<Arc<Session>, Fault> {
    let id = hex(&j.session);
    let refused = |w: String| Fault::new(FaultCode::AuthFailed, w);
    let Some(s) = sh.sessions.find(&j.session) else {
        return Err(Fault::new(
            FaultCode::TakenOver,
            format!("join refused: no session {id} (it ended or never was)"),
        ));
    };
    if !s.ticket.check(j, plan.binding.as_ref()) {
        return Err(refused(format!(
            "join refused: wrong join secret for session {id} (or a join recorded on another connection)"
        )));
    }
    if s.name != name || s.filesize != r.size || s.block != r.block {
        return Err(Fault::bad(format!(
            "join refused: session {id} is another transfer (name, size or block size differ)"
        )));
    }
    s.admit(j).map_err(refused)?;
    Ok(s)
}
