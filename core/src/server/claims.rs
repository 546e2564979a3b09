//! Who may write a name: one connection at a time, and who may take over.
//!
//! "The newest connection wins" exists for a client that reconnects while
//! the server still believes its dead connection is open. It must not let
//! anyone else destroy or starve an upload, so a newcomer takes over a
//! live upload only when all of these hold:
//! - it is the same source (same size and CRC-32 for version 1; same size
//!   and source id for version 2), else it is refused as busy;
//! - it is authenticated if the running upload is;
//! - the running connection has received nothing for [`TAKEOVER_IDLE`]
//!   (a reconnecting client's old connection is silent; a running one is
//!   not), else it is refused as busy and retries later.
//!
//! A connection that is already ending (checkpointing after a disconnect,
//! or storing its verdict) is waited for, never refused. The holder is
//! told by a flag and a shutdown of its read side, so the newcomer never
//! writes on another connection's socket under the lock; the holder's own
//! thread says "taken over" and checkpoints. Not for: storage.

use std::net::SocketAddr;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{lock, Shared};
use crate::machine::Fault;
use crate::name::SafeName;
use crate::proto::Header;
use crate::transport::Shutdown;
use crate::v2::{FaultCode, Offer};

/// How long a running upload must have been silent before a newcomer of
/// the same source may take it over.
pub(super) const TAKEOVER_IDLE: Duration = Duration::from_secs(3);

/// How long a newcomer waits for the connection it took over to let go.
const LET_GO: Duration = Duration::from_secs(30);

/// What an upload is of: only the same source may take a live upload over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SourceId {
    /// A version-1 upload: its size and whole-file CRC-32.
    V1 { size: u64, crc32: u32 },
    /// A version-2 upload: its size and the client's source id, if sent.
    V2 { size: u64, sid: Option<[u8; 16]> },
}

impl SourceId {
    pub(super) fn of(header: &Header, offer: Option<&Offer>) -> SourceId {
        match offer {
            None => SourceId::V1 {
                size: header.filesize,
                crc32: header.crc32,
            },
            Some(o) => SourceId::V2 {
                size: header.filesize,
                sid: o.source,
            },
        }
    }

    /// Same source, as far as can be proven: a version-2 upload without a
    /// source id (an older client) proves nothing.
    fn same(&self, other: &SourceId) -> bool {
        match (self, other) {
            (SourceId::V2 { sid: None, .. }, _) | (_, SourceId::V2 { sid: None, .. }) => false,
            (a, b) => a == b,
        }
    }
}

/// What other threads may see of the connection holding a name.
#[derive(Debug, Default)]
pub(super) struct Activity {
    /// When it last received bytes (server milliseconds).
    pub(super) last_rx_ms: AtomicU64,
    /// Set by a newcomer taking over, before it shuts our read side.
    pub(super) taken_over: AtomicBool,
    /// Set once the connection stopped receiving (verdict or teardown):
    /// a newcomer waits for it instead of being refused.
    pub(super) ending: AtomicBool,
}

pub(super) struct Claimant {
    conn_id: u64,
    stream: Shutdown,
    source: SourceId,
    authenticated: bool,
    activity: Arc<Activity>,
}

/// Owns the right to write one name's held part; released on drop.
pub(super) struct Claim<'a> {
    sh: &'a Shared,
    pub(super) name: SafeName,
    conn_id: u64,
    pub(super) activity: Arc<Activity>,
}

impl Claim<'_> {
    /// Notes that bytes arrived (a newcomer sees the upload is alive).
    pub(super) fn received(&self) {
        self.activity
            .last_rx_ms
            .store(self.sh.now_ms(), Ordering::Relaxed);
    }

    /// Notes that this connection receives no more.
    pub(super) fn ending(&self) {
        self.activity.ending.store(true, Ordering::SeqCst);
    }

    /// Whether a newcomer took this upload over.
    pub(super) fn taken_over(&self) -> bool {
        self.activity.taken_over.load(Ordering::SeqCst)
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut claims = lock(&self.sh.claims);
        if claims
            .get(&self.name)
            .is_some_and(|c| c.conn_id == self.conn_id)
        {
            claims.remove(&self.name);
        }
        self.sh.claims_cv.notify_all();
    }
}

/// The newcomer's request for a name.
pub(super) struct Request<'s> {
    pub(super) name: &'s SafeName,
    pub(super) conn_id: u64,
    pub(super) stream: Shutdown,
    pub(super) peer: SocketAddr,
    pub(super) source: SourceId,
    pub(super) authenticated: bool,
}

/// Takes `req.name` for this connection, by the rules in the module doc.
pub(super) fn claim<'a>(sh: &'a Shared, req: Request<'_>) -> Result<Claim<'a>, Fault> {
    let deadline = Instant::now() + LET_GO;
    let mut claims = lock(&sh.claims);
    let mut announced = false;
    // A holder that looks busy may merely not have noticed yet that its
    // client is gone: look again for a while before refusing.
    let patience = Instant::now() + TAKEOVER_IDLE + Duration::from_millis(500);
    while let Some(old) = claims.get(req.name) {
        if !old.activity.ending.load(Ordering::SeqCst) {
            if let Err(f) = may_take_over(sh, old, &req) {
                if Instant::now() >= patience || old.conn_id > req.conn_id {
                    return Err(f);
                }
                claims = sh
                    .claims_cv
                    .wait_timeout(claims, Duration::from_millis(100))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
                continue;
            }
            if !announced {
                (sh.logger)(&format!(
                    "{}: {}: taking over from an older connection of the same source",
                    req.peer, req.name
                ));
                old.activity.taken_over.store(true, Ordering::SeqCst);
                old.stream.shutdown_read();
                announced = true;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(busy(format!(
                "{}: the older connection did not let go within {} s; try again",
                req.name,
                LET_GO.as_secs()
            )));
        }
        claims = sh
            .claims_cv
            .wait_timeout(claims, left)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
    register(sh, &mut claims, req)
}

/// Records the newcomer as the holder of its name (the claims lock held).
fn register<'a>(
    sh: &'a Shared,
    claims: &mut std::collections::HashMap<SafeName, Claimant>,
    req: Request<'_>,
) -> Result<Claim<'a>, Fault> {
    let stream = req.stream;
    let activity = Arc::new(Activity::default());
    activity.last_rx_ms.store(sh.now_ms(), Ordering::Relaxed);
    claims.insert(
        req.name.clone(),
        Claimant {
            conn_id: req.conn_id,
            stream,
            source: req.source,
            authenticated: req.authenticated,
            activity: Arc::clone(&activity),
        },
    );
    Ok(Claim {
        sh,
        name: req.name.clone(),
        conn_id: req.conn_id,
        activity,
    })
}

/// Whether the newcomer may take the running upload `old` over.
fn may_take_over(sh: &Shared, old: &Claimant, req: &Request<'_>) -> Result<(), Fault> {
    let name = req.name;
    if old.conn_id > req.conn_id {
        // Connections are numbered as accepted: the holder arrived after
        // us, so we are the stale one, merely slower to get here.
        return Err(busy(format!("{name}: a newer connection is uploading it")));
    }
    if !old.source.same(&req.source) {
        return Err(busy(format!(
            "{name} is being uploaded right now from another source; try again when that upload has ended"
        )));
    }
    if old.authenticated && !req.authenticated {
        return Err(Fault::new(
            FaultCode::AuthRequired,
            format!("{name} is being uploaded by an authenticated client; only an authenticated client may take it over"),
        ));
    }
    let idle = sh
        .now_ms()
        .saturating_sub(old.activity.last_rx_ms.load(Ordering::Relaxed));
    if idle < TAKEOVER_IDLE.as_millis() as u64 {
        return Err(busy(format!(
            "{name} is being uploaded right now by another connection (data arrived {idle} ms ago); try again later"
        )));
    }
    Ok(())
}

fn busy(msg: String) -> Fault {
    Fault::new(FaultCode::Busy, msg)
}
