//! The server's answers to the machine's actions: admission (size limit,
//! token throttling), the claim on a name (free space reserved for the
//! connection's life, taking over by the rules in `claims`), opening the
//! held part on the local disk or in the object store, and the storage actions with the log lines
//! they deserve.
//!
//! Order matters, and is the machine's: nothing touches a held part before
//! the upload is admitted and claimed, so a refused header never changes
//! or creates a stored file. Not for sockets (the shell's, in `conn`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::backend::ServerPart;
use super::claims::{self, SourceId};
use super::conn::Shell;
use super::local::{storage_fault, LocalStorage};
use super::{lock, Shared};
use crate::machine::{self, Action, Event, Fault, Held, PartId, Recheck, Storage, StoredAs};
use crate::name::SafeName;
use crate::v2::FaultCode;

impl Shell<'_> {
    /// [`Action::Admit`]: the size limit and token throttling (before the
    /// challenge; free space is reserved only once the client proved the
    /// token, see [`Shell::claim`]).
    pub(super) fn admit(&mut self, name: &SafeName, filesize: u64) -> Result<(), Fault> {
        let sh = self.sh;
        if let Some(max) = sh.cfg.max_file_size.filter(|&m| filesize > m) {
            return Err(Fault::new(
                FaultCode::TooLarge,
                format!(
                    "refused {name}: {filesize} bytes is over the limit of {max} (--max-file-size)"
                ),
            ));
        }
        let challenged = sh.cfg.token.is_some() && self.rx.offer().is_some();
        if challenged && !lock(&sh.throttle).allows(self.conn.peer.ip(), Instant::now()) {
            // Counted for the summary, not logged one by one.
            self.quiet = true;
            return Err(Fault::new(
                FaultCode::AuthFailed,
                "authentication refused: too many wrong tokens from your address; wait a minute",
            ));
        }
        Ok(())
    }

    /// [`Action::Claim`]: the connection is admitted (it may no longer be
    /// evicted), the space it still needs is reserved for its life (after
    /// authentication, so a client without the token cannot hold space),
    /// and it becomes the one writing `name`.
    pub(super) fn claim(&mut self, name: &SafeName, authenticated: bool) -> Result<(), Fault> {
        if !self.conn.unadmitted.swap(false, Ordering::SeqCst) {
            return Err(Fault::new(
                FaultCode::Busy,
                "evicted before it was admitted",
            ));
        }
        let header = self
            .rx
            .header()
            .ok_or_else(|| Fault::new(FaultCode::Internal, "claim before the header"))?;
        if !self.sh.remote_storage() {
            // An object store has no free space to count.
            let held = self.sh.store.held_hint(name, header.filesize);
            let needed = header.filesize.saturating_sub(held);
            self.reservation = Some(reserve_space(self.sh, name, needed)?);
        }
        let request = claims::Request {
            name,
            conn_id: self.conn.id,
            stream: self.stream.shutdown_handle(),
            peer: self.conn.peer,
            source: SourceId::of(header, self.rx.offer().as_ref()),
            authenticated,
        };
        self.claim = Some(claims::claim(self.sh, request)?);
        Ok(())
    }

    /// [`Action::OpenHeld`]: opens the held part and says what it holds.
    pub(super) fn open(&mut self, id: &PartId) -> Result<Held, Fault> {
        let (part, held) = self.open_part(id)?;
        let peer = self.conn.peer;
        if let Some(note) = part.note() {
            (self.sh.logger)(&format!("{peer}: {note}"));
        }
        let name = self.rx.name().map(|n| n.to_string()).unwrap_or_default();
        let size = id.filesize;
        let tls = if self.stream.is_encrypted() {
            " over TLS"
        } else {
            ""
        };
        (self.sh.logger)(&match &held {
            Held::Prefix { offset, .. } => {
                format!("{peer}: receiving {name} ({size} bytes{tls}) from offset {offset}")
            }
            Held::Blocks(set) => format!(
                "{peer}: receiving {name} ({size} bytes, protocol 2{tls}, blocks of {}); holds {} bytes in {} verified blocks",
                set.block_size(),
                part.held_bytes(),
                part.held_blocks()
            ),
        });
        self.part = Some(part);
        Ok(held)
    }

    /// Opens the held part in the server's storage.
    fn open_part(&self, id: &PartId) -> Result<(ServerPart, Held), Fault> {
        #[cfg(feature = "s3")]
        if let Some(s3) = &self.sh.s3 {
            let (p, held) = s3.open(id)?;
            return Ok((ServerPart::S3(p), held));
        }
        let storage = LocalStorage {
            store: &self.sh.store,
        };
        let (p, held) = storage.open(id)?;
        Ok((ServerPart::Local(p), held))
    }

    /// A storage action on the held part, with its log line.
    pub(super) fn apply(&mut self, a: &Action) -> Event {
        if matches!(a, Action::Recheck | Action::Commit { .. } | Action::Discard) {
            if let Some(c) = &self.claim {
                c.ending();
            }
        }
        let Some(part) = self.part.as_mut() else {
            return Event::Applied(Err(Fault::new(FaultCode::Internal, "no held part")));
        };
        let ev = machine::apply(part, a)
            .unwrap_or_else(|| Event::Applied(Err(Fault::new(FaultCode::Internal, "not storage"))));
        self.note(a, &ev);
        ev
    }

    /// The log lines of storage work: damaged blocks, tampering, repairs.
    fn note(&self, a: &Action, ev: &Event) {
        let (peer, name) = (self.conn.peer, self.rx.name().map(|n| n.to_string()));
        let name = name.unwrap_or_default();
        let line = match (a, ev) {
            (Action::RecordBlock { idx, good: false, .. }, _) => {
                format!("{peer}: {name}: block {idx} arrived damaged; will ask for it again")
            }
            (_, Event::Rechecked(Ok(Recheck::Changed(bad)))) => format!(
                "{peer}: {name}: {} held block(s) changed on disk behind the server's back; asking for them again",
                bad.len()
            ),
            (_, Event::Committed(Ok(StoredAs::Unchanged))) => {
                format!("{peer}: {name}: already stored with the same content; left untouched")
            }
            (_, Event::Committed(Ok(StoredAs::Kept(v)))) => {
                format!("{peer}: {name}: a different file was stored under this name; kept it as {v}")
            }
            (_, Event::Committed(Ok(StoredAs::Replaced))) => {
                format!("{peer}: {name}: replaced the file stored under this name (--overwrite)")
            }
            (Action::Checkpoint, Event::Applied(Ok(()))) => match self.rx.repairing() {
                Some((round, n)) => {
                    format!("{peer}: {name}: asking again for {n} block(s), round {round}")
                }
                None => return,
            },
            _ => return,
        };
        (self.sh.logger)(&line);
    }
}

/// Space kept for an upload in progress: what is still to arrive of it
/// counts against the free space that other uploads see. Released as
/// bytes arrive (they then use real space) and when the upload ends.
pub(super) struct Reservation<'a> {
    sh: &'a Shared,
    left: AtomicU64,
}

impl Reservation<'_> {
    /// `n` bytes arrived and now take real space.
    pub(super) fn arrived(&self, n: u64) {
        let mut cur = self.left.load(Ordering::Relaxed);
        loop {
            let take = cur.min(n);
            match self
                .left
                .compare_exchange(cur, cur - take, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let mut total = lock(&self.sh.reserved);
                    *total = total.saturating_sub(take);
                    return;
                }
                Err(now) => cur = now,
            }
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let left = self.left.swap(0, Ordering::Relaxed);
        let mut total = lock(&self.sh.reserved);
        *total = total.saturating_sub(left);
    }
}

/// Refuses an upload that needs more than the free space left once every
/// upload in progress has what it still needs, or that would leave less
/// than `--min-free`; otherwise reserves its space. Checked and reserved
/// under one lock, so concurrent uploads cannot all pass on the same free
/// space (three 20 MiB uploads onto 64 MiB with `--min-free 32M` all
/// passed before).
fn reserve_space<'a>(
    sh: &'a Shared,
    name: &SafeName,
    needed: u64,
) -> Result<Reservation<'a>, Fault> {
    let mut reserved = lock(&sh.reserved);
    let avail = sh
        .store
        .available_space()
        .map_err(|e| storage_fault(&e, e.to_string()))?;
    let avail = avail.saturating_sub(*reserved);
    let no_space = |msg: String| Fault::new(FaultCode::NoSpace, msg);
    if needed > avail {
        return Err(no_space(format!(
            "refused {name}: needs {needed} more bytes, only {avail} free on the server (counting uploads in progress)"
        )));
    }
    if avail - needed < sh.cfg.min_free {
        return Err(no_space(format!(
            "refused {name}: it would leave {} bytes free, under the server's minimum of {} (--min-free)",
            avail - needed,
            sh.cfg.min_free
        )));
    }
    *reserved += needed;
    Ok(Reservation {
        sh,
        left: AtomicU64::new(needed),
    })
}
