//! Parallel streams on the server: the session a first connection owns
//! and the joined connections that feed it. A join is checked (session
//! known, proof of the join secret on this very connection, nonce never
//! seen, same upload), receives data frames through its own machine
//! (each block verified as usual), and hands each good block whole to the
//! owner through the session's bounded channel. The owner, the one holder
//! of the part, writes it at its offset between its own frames and counts
//! it held, so resume, repair, the whole CRC-32 and the verdict are those
//! of one stream. Memory: at most two blocks per joined stream (one being
//! received, one waiting in the channel).
//!
//! Not for the wire format (`crate::session`) nor the machines.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use super::conn::Shell;
use crate::machine::{self, Action, Event, Fault, Held, HeldPart, HeldSet, PartId};
use crate::session::{Join, Joined, Session};
use crate::v2::FaultCode;

/// The first connection of a session.
pub(super) struct Owner {
    pub(super) session: Arc<Session>,
    pub(super) blocks: Receiver<Joined>,
}

/// A joined connection: where its verified blocks go.
pub(super) struct Sink {
    session: Arc<Session>,
    tx: SyncSender<Joined>,
    /// The block being received: index and bytes so far.
    current: Option<(u64, Vec<u8>)>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.session.left();
    }
}

fn refused(words: impl Into<String>) -> Fault {
    Fault::new(FaultCode::AuthFailed, words)
}

impl Sink {
    /// Payload bytes of the block being received.
    pub(super) fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Fault> {
        let block = self.session.block;
        let Some((idx, buf)) = self.current.as_mut() else {
            return Err(Fault::new(FaultCode::Internal, "payload outside a block"));
        };
        if offset != *idx * block + buf.len() as u64 {
            return Err(Fault::new(
                FaultCode::Internal,
                "joined payload out of order",
            ));
        }
        buf.extend_from_slice(bytes);
        Ok(())
    }
}

impl Shell<'_> {
    /// [`Action::Join`]: attaches this connection to the session it names.
    pub(super) fn join(&mut self, j: &Join, authenticated: bool) -> Result<(), Fault> {
        use std::sync::atomic::Ordering;
        if !self.conn.unadmitted.swap(false, Ordering::SeqCst) {
            return Err(Fault::new(
                FaultCode::Busy,
                "evicted before it was admitted",
            ));
        }
        if self.sh.cfg.token.is_some() && !authenticated {
            return Err(refused("join refused: this server requires a token"));
        }
        let id = crate::session::hex(&j.session);
        let Some(s) = self.sh.sessions.find(&j.session) else {
            return Err(Fault::new(
                FaultCode::TakenOver,
                format!("join refused: no session {id} (it ended or never was)"),
            ));
        };
        if !s.ticket.check(j, self.stream.channel_binding().as_ref()) {
            return Err(refused(format!(
                "join refused: wrong join secret for session {id} (or a join recorded on another connection)"
            )));
        }
        let same = (self.rx.header(), self.rx.offer()).0.is_some_and(|h| {
            h.filesize == s.filesize
                && self.rx.name().is_some_and(|n| n.as_str() == s.name)
                && self.rx.offer().is_some_and(|o| o.block_size == s.block)
        });
        if !same {
            return Err(Fault::bad(format!(
                "join refused: session {id} is another upload (name, size or block size differ)"
            )));
        }
        let tx = s.admit(j).map_err(refused)?;
        self.sink = Some(Sink {
            session: s,
            tx,
            current: None,
        });
        Ok(())
    }

    /// [`Action::OpenHeld`] on a joined connection: nothing is held on
    /// this stream (the owner's held list is the one the client planned by).
    pub(super) fn open_joined(&mut self, id: &PartId) -> Result<Held, Fault> {
        let Some(sink) = &self.sink else {
            return Err(Fault::new(FaultCode::Internal, "no session joined"));
        };
        let set = HeldSet::new(id.filesize, sink.session.block)?;
        let peer = self.conn.peer;
        (self.sh.logger)(&format!(
            "{peer}: stream joined the upload of {} (session {})",
            sink.session.name,
            crate::session::hex(&sink.session.ticket.session)
        ));
        Ok(Held::Blocks(set))
    }

    /// Opens a session for this (first) connection when its client asked
    /// for streams and the part is on the local disk.
    pub(super) fn maybe_own_session(&mut self, id: &PartId, held: &Held) {
        let (Some(n), Held::Blocks(set)) = (self.rx.streams_asked(), held) else {
            return;
        };
        if n < 2 || self.sh.remote_storage() {
            return;
        }
        match self
            .sh
            .sessions
            .open(&id.name, id.filesize, set.block_size(), n)
        {
            Ok((session, blocks)) => {
                self.rx.grant_session(session.ticket.clone());
                self.owner = Some(Owner { session, blocks });
            }
            Err(e) => (self.sh.logger)(&format!("{}: no session: {e}", self.conn.peer)),
        }
    }

    /// A storage action on a joined connection: blocks are collected and
    /// handed over whole once verified; the rest concerns the owner.
    pub(super) fn apply_joined(&mut self, a: &Action) -> Event {
        let Some(sink) = self.sink.as_mut() else {
            return Event::Applied(Err(Fault::new(FaultCode::Internal, "no session joined")));
        };
        let r = match *a {
            Action::BeginBlock { idx } => {
                let len = crate::v2::block_range(sink.session.filesize, sink.session.block, idx).1;
                sink.current = Some((idx, Vec::with_capacity(len as usize)));
                Ok(())
            }
            Action::RecordBlock { idx, crc, good } => match sink.current.take() {
                Some((i, bytes)) if i == idx && good => {
                    // Blocks here while the owner is behind: the bound.
                    sink.tx.send(Joined { idx, bytes, crc }).map_err(|_| {
                        Fault::new(
                            FaultCode::TakenOver,
                            "the session's first connection ended; reconnect to resume",
                        )
                    })
                }
                // A damaged block is dropped: the owner asks for it again.
                _ => Ok(()),
            },
            Action::Recheck => return Event::Rechecked(Ok(machine::Recheck::Same)),
            _ => Ok(()),
        };
        Event::Applied(r)
    }

    /// The owner writes the blocks its joined streams verified, between
    /// its own frames. Returns whether any was taken.
    pub(super) fn take_joined(&mut self, now: Instant) -> bool {
        let mut took = false;
        while self.owner.is_some() && self.rx.can_take_joined() {
            let next = match self.owner.as_ref().map(|o| o.blocks.try_recv()) {
                Some(Ok(j)) => j,
                Some(Err(TryRecvError::Empty | TryRecvError::Disconnected)) | None => break,
            };
            took = true;
            if let Err(f) = self.write_block(now, &next) {
                self.rx.handle_abort(now, f);
                break;
            }
        }
        took
    }

    fn write_block(&mut self, now: Instant, j: &Joined) -> Result<(), Fault> {
        let Some(s) = self.owner.as_ref().map(|o| Arc::clone(&o.session)) else {
            return Ok(());
        };
        let offset = crate::v2::block_range(s.filesize, s.block, j.idx).0;
        self.rx.joining_block(j.idx);
        let part = self
            .part
            .as_mut()
            .ok_or_else(|| Fault::new(FaultCode::Internal, "no held part"))?;
        part.begin_block(j.idx)?;
        part.write_at(offset, &j.bytes)?;
        part.record_block(j.idx, j.crc, true)?;
        self.rx.joined_block(now, j.idx, j.crc);
        if let Some(c) = &self.claim {
            c.received();
        }
        self.count_joined(j.bytes.len() as u64);
        Ok(())
    }

    /// The owner ended: joins can no longer find it.
    pub(super) fn close_session(&mut self) {
        if let Some(o) = self.owner.take() {
            self.sh.sessions.close(&o.session.ticket.session);
        }
    }
}
