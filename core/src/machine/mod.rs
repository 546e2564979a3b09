//! The protocol as sans-IO state machines: a [`Receiver`] (the server side
//! of one upload connection) and a [`Sender`] (the client side of one
//! attempt), each taking bytes and events in and giving bytes and actions
//! out, with time passed in as a value.
//!
//! Not for I/O: no socket, file, thread or clock is touched here. A
//! blocking shell per side (written next to `server` and `client`) reads
//! the transport, feeds [`Receiver::handle_input`] / [`Sender::handle_input`],
//! writes what `poll_transmit` gives, executes what `poll_action` asks (with
//! a [`Storage`] on the server, the source file on the client) and reports
//! the result with `handle_event`, and sleeps no later than `poll_timeout`.
//! The wire format itself lives in [`crate::proto`] (version 1) and
//! [`crate::v2`] (version 2); this module only sequences it.
//!
//! # The rules every shell follows
//! 1. Drain `poll_transmit` before executing the next action (a data
//!    frame's head is queued before the action that streams its payload).
//! 2. An action is executed exactly once and answered with exactly one
//!    event; until then the machine consumes no input (`used == 0`).
//! 3. Feed input until `handle_input` consumes nothing; a data frame's
//!    payload comes back as [`WriteAt`] borrowing the shell's own buffer
//!    (never copied into the machine); answer it with [`Event::Applied`].
//! 4. Call `handle_timeout(now)` when `poll_timeout()` has passed, and
//!    `handle_eof` when the peer closed or the connection broke. A shell
//!    whose write broke may first feed what the peer still sent (a
//!    Sender takes a Fault or Error frame while it streams, so the
//!    server's reason wins over "connection lost"); the action in flight
//!    is then void.
//!
//! # Receiver (server side)
//! ```text
//!  ReadLen ──> ReadHeader ──(whole header before the header deadline)──┐
//!                 │ v2 offer: MAGIC sent now                          │
//!                 v                                                   │
//!               Admit ──[action Admit: size, space]──┐                │
//!                 │ v2 and a token                   │ otherwise      │
//!                 v                                  │                │
//!             Challenge ──> AwaitAnswer (deadline) ──┤                │
//!                                                    v                │
//!                                Claim ──[action Claim]──> OpenHeld ──[action OpenHeld: Held]
//!                                                              │
//!                  ┌──────────── v1: Held::Prefix ─────────────┴───── v2: Held::Blocks ───┐
//!                  v                                                                      v
//!             SendOffset ──> Receiving (WriteAt) ──> [Recheck] Verify  SendHeld ──> DataFrames
//!                                                  [Commit|Discard]       head: [BeginBlock]
//!                                                       │                 payload: WriteAt
//!                                                  SendVerdict            trailer: [RecordBlock]
//!                                                       │                 End ─┬─> Repair [Checkpoint] ──> DataFrames
//!                                                      Done                    │     (at most MAX_REPAIR_ROUNDS)
//!                                                                              └─> Verify [Commit|Discard]
//!                                                                                   └─> SendVerdict ──> Done
//!  any error ──> Closing (v2 after MAGIC: Fault/Error frame, drain, then Done)
//!             └> Done   (v1 or before MAGIC: silent close); an open part gets [Checkpoint] first
//! ```
//!
//! # Sender (client side)
//! ```text
//!  SendHeader ──> AwaitReply (8 bytes)
//!                   ├─ offset ≤ size ──────────────> SendBytes [action SendBytes{from}] ──> AwaitVerdict1 ──> Done
//!                   ├─ MAGIC ──> AwaitChallenge ─┬─ C ──> SendAnswer ──> AwaitHeld ──┐
//!                   │                            └─ H ───────────────────────────────┤
//!                   │                                                                v
//!                   │              Plan [action HashBlocks{range}] ──> SendBlocks [SendBlock{idx}]* ──> Recheck ──> SendEnd
//!                   │                                                       ^                         [Recheck]      │
//!                   │                                                       └── Repair (list checked) <── AwaitVerdict ──> Done
//!                   ├─ EOF after a null-CRC offer ──> Done(LegacyNeedsCrc)
//!                   └─ anything else ("HTTP/1.1 …") ──> Done(NotBigtransfer)
//!  Fault/Error frame in any v2 state ──> Done(Fault{code, words})
//!  Recheck (only with `recheck`): the source changed ──> Done(SourceChanged)
//! ```
//! Repair lists are checked (each block once, within the file, not empty)
//! and at most `max_repair_rounds` are answered.
//!
//! Compression (negotiated: the offer lists `"z": ["zstd"]` unless
//! [`SenderConfig::compress`] is off; a `Z` codec frame from the server
//! before `H` agrees): in SendBlocks a block the policy wants compressed is
//! [`SendAction::PackBlock`] instead of `SendBlock` (the shell reads, packs
//! and times it; the machine sends a `Z` frame's head and asks for its
//! payload with [`SendAction::SendPacked`], or a `D` frame's head and a
//! `SendBlock` when packing did not pay). [`Sender::handle_sent`] passes the
//! shell's timing of its writes in, so the `auto` policy sees the link
//! without a clock. The Receiver's intake unpacks `Z` frames one 1 MiB
//! chunk at a time ([`WriteAt`] then owns the decompressed bytes) and
//! refuses them when no codec was agreed. The shell is
//! `client::shell`; `kept`, `resent` and `repairs` give it the counters
//! it reports.
//!
//! # Deadlines (absolute instants; `poll_timeout` gives the earliest)
//! | side | states | deadline |
//! |---|---|---|
//! | Receiver | ReadLen, ReadHeader | [`Timer::Header`]: the whole header within `header_timeout` of the accept |
//! | Receiver | AwaitAnswer | [`Timer::Answer`]: `answer_timeout` after the challenge went out |
//! | Receiver | Receiving, DataFrames | [`Timer::Idle`] since the last byte; with `min_rate`, [`Timer::Block`] per block |
//! | Receiver | Closing | [`Timer::Drain`] |
//! | Receiver | Admit, Claim, OpenHeld, Recheck, Repair, Verify | none: the shell bounds its own work |
//! | Sender | AwaitReply | [`Timer::Reply`]: `greeting_timeout` (else `reply_timeout`) since the header, not moved by its bytes |
//! | Sender | AwaitChallenge, AwaitHeld, AwaitVerdict, AwaitVerdict1 | [`Timer::Reply`] since entering or the last byte |
//! | Sender | SendBlocks, SendBytes, Plan, Recheck | none: the shell's write timeout |
//!
//! A passed deadline ends the connection: a version-2 client is told
//! [`FaultCode::TooSlow`] (transient), a legacy one is closed in silence.
//!
//! # Setup and transfer
//! Protocol 1 is the same Receiver with one "block" that grows (a held
//! prefix with its running CRC-32). The version-2 data transfer lives in
//! [`transfer`]: an [`transfer::Intake`] (held set, frame decoding, repair
//! or verdict) inside the Receiver's DataFrames state and an
//! [`transfer::Outlet`] (plan, framing, repair lists) inside the Sender's
//! Plan … AwaitVerdict states. Neither knows who opened the connection, so
//! a download is the same two with the roles swapped after a setup of its
//! own, and parallel streams are several of them over one held set.

#![forbid(unsafe_code)]

pub mod mem;
pub mod recv;
pub mod send;
pub mod transfer;

#[cfg(test)]
mod compat;
#[cfg(test)]
mod get_pair;
#[cfg(test)]
mod pair;

use std::time::{Duration, Instant};

use crate::auth::ANSWER_LEN;
use crate::v2::{self, block_range, FaultCode, ServerMsg, MAX_CLIENT_HEAD};

pub use recv::{Ending, Receiver, ReceiverConfig};
pub(crate) use send::offered_codecs;
pub use send::{Failure, Outcome, PackStats, Packed, SendAction, SendEvent, Sender, SenderConfig};

/// Most rounds of block repair before an upload is declared failed.
pub const MAX_REPAIR_ROUNDS: u32 = 5;

/// Most blocks one upload may have (the same bound as the version-2 offer
/// check), so that a connection's memory is bounded.
pub const MAX_BLOCKS: u64 = v2::MAX_BLOCKS;

/// Why an upload was refused or stopped: a code to act on and words for a
/// person. What a version-2 server sends in a Fault frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What the client should do (retry or not).
    pub code: FaultCode,
    /// Why, for a person.
    pub words: String,
    /// The same for the server's log, with what a client has no business
    /// knowing (where in the storage directory it happened); None when the
    /// words say it all.
    pub detail: Option<String>,
}

impl Fault {
    /// A fault of `code` with `words`.
    pub fn new(code: FaultCode, words: impl Into<String>) -> Fault {
        Fault {
            code,
            words: words.into(),
            detail: None,
        }
    }

    /// This fault, logged as `detail` instead of its words.
    pub fn with_detail(mut self, detail: String) -> Fault {
        self.detail = Some(detail);
        self
    }

    /// What the server logs.
    pub fn logged(&self) -> &str {
        self.detail.as_deref().unwrap_or(&self.words)
    }

    /// The peer broke the protocol.
    pub fn bad(words: impl Into<String>) -> Fault {
        Fault::new(FaultCode::BadRequest, words)
    }

    /// The frame that tells a client of revision `rev` about this fault:
    /// a coded Fault frame from revision 2 on, bare words before.
    pub fn frame(&self, rev: u64) -> Vec<u8> {
        let msg = if rev >= v2::REVISION {
            ServerMsg::Fault(self.code, self.words.clone())
        } else {
            ServerMsg::Error(self.words.clone())
        };
        v2::encode_server_msg(&msg)
    }
}

/// Which limit a deadline enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// The whole header must arrive within the header timeout.
    Header,
    /// The answer to a challenge.
    Answer,
    /// Nothing arrived for the idle timeout.
    Idle,
    /// A block arrived slower than the minimum rate.
    Block,
    /// A server's reply to the client.
    Reply,
    /// Draining a closing connection.
    Drain,
}

/// An absolute point in time by which something must have happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// When.
    pub at: Instant,
    /// What it limits.
    pub timer: Timer,
}

impl Deadline {
    /// The deadline `d` after `now`.
    pub fn after(now: Instant, d: Duration, timer: Timer) -> Deadline {
        Deadline { at: now + d, timer }
    }

    /// Whether it has passed at `now`.
    pub fn passed(&self, now: Instant) -> bool {
        now >= self.at
    }
}

/// The earlier of two optional deadlines.
pub(crate) fn earliest(a: Option<Deadline>, b: Option<Deadline>) -> Option<Deadline> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.at < x.at { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// One block of a held part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Not held (never received, damaged, or being replaced).
    Missing,
    /// Verified and written, not yet covered by a checkpoint.
    Written(u32),
    /// Verified and covered by a checkpoint (survives a crash).
    Durable(u32),
}

/// The receiver's verified blocks: block index -> CRC-32, with holes, each
/// either only written or durable. Its size is bounded by [`MAX_BLOCKS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldSet {
    filesize: u64,
    block: u64,
    slots: Vec<Slot>,
}

impl HeldSet {
    /// An empty set for a file of `filesize` bytes in blocks of `block`.
    pub fn new(filesize: u64, block: u64) -> Result<HeldSet, Fault> {
        if block == 0 {
            return Err(Fault::bad("block size 0"));
        }
        let n = v2::block_count(filesize, block);
        if n > MAX_BLOCKS {
            return Err(Fault::new(
                FaultCode::TooLarge,
                format!("{n} blocks are over the limit of {MAX_BLOCKS}"),
            ));
        }
        Ok(HeldSet {
            filesize,
            block,
            slots: vec![Slot::Missing; n as usize],
        })
    }

    /// The file's size.
    pub fn filesize(&self) -> u64 {
        self.filesize
    }

    /// The block size.
    pub fn block_size(&self) -> u64 {
        self.block
    }

    /// How many blocks the file has.
    pub fn count(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Block `idx`'s state (`None` past the end).
    pub fn slot(&self, idx: u64) -> Option<Slot> {
        self.slots.get(usize::try_from(idx).ok()?).copied()
    }

    /// Block `idx`'s CRC-32 if it is held.
    pub fn crc(&self, idx: u64) -> Option<u32> {
        match self.slot(idx)? {
            Slot::Written(c) | Slot::Durable(c) => Some(c),
            Slot::Missing => None,
        }
    }

    /// Records block `idx` as verified with `crc` (not yet durable).
    pub fn mark(&mut self, idx: u64, crc: u32) {
        if let Some(s) = self.slots.get_mut(idx as usize) {
            *s = Slot::Written(crc);
        }
    }

    /// Forgets block `idx` (it is being replaced); returns what it was.
    pub fn forget(&mut self, idx: u64) -> Slot {
        match self.slots.get_mut(idx as usize) {
            Some(s) => std::mem::replace(s, Slot::Missing),
            None => Slot::Missing,
        }
    }

    /// A checkpoint made every written block durable.
    pub fn make_durable(&mut self) {
        for s in &mut self.slots {
            if let Slot::Written(c) = *s {
                *s = Slot::Durable(c);
            }
        }
    }

    /// What survives a crash: written blocks become missing.
    pub fn keep_durable(&mut self) {
        for s in &mut self.slots {
            if let Slot::Written(_) = *s {
                *s = Slot::Missing;
            }
        }
    }

    /// How many blocks from the start are held without a hole.
    pub fn prefix(&self) -> u64 {
        self.slots
            .iter()
            .position(|s| *s == Slot::Missing)
            .unwrap_or(self.slots.len()) as u64
    }

    /// The CRC-32s of the blocks of [`HeldSet::prefix`].
    pub fn prefix_crcs(&self) -> Vec<u32> {
        (0..self.prefix()).filter_map(|i| self.crc(i)).collect()
    }

    /// Bytes covered by [`HeldSet::prefix`].
    pub fn prefix_bytes(&self) -> u64 {
        block_range(self.filesize, self.block, self.prefix()).0
    }

    /// Blocks not held, in order.
    pub fn missing(&self) -> Vec<u64> {
        (0..self.count())
            .filter(|&i| self.crc(i).is_none())
            .collect()
    }

    /// The whole file's CRC-32 when every block is held.
    pub fn whole_crc(&self) -> Option<u32> {
        let crcs: Option<Vec<u32>> = (0..self.count()).map(|i| self.crc(i)).collect();
        Some(v2::combine(&crcs?, self.filesize, self.block))
    }

    /// The version-2 held list as the first revisions read it: "the first
    /// N bytes" (blocks after a hole are sent again).
    pub fn held_msg(&self) -> ServerMsg {
        ServerMsg::Held {
            held: self.prefix_bytes(),
            block_size: self.block,
            crcs: self.prefix_crcs(),
        }
    }

    /// Runs of held blocks: (first block, how many), ascending.
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for i in (0..self.count()).filter(|&i| self.crc(i).is_some()) {
            match runs.last_mut() {
                Some((first, n)) if *first + *n == i => *n += 1,
                _ => runs.push((i, 1)),
            }
        }
        runs
    }

    /// The held list for a client of revision `rev`: with holes
    /// ([`ServerMsg::HeldSet`]) when it reads them and a block is held
    /// after a hole, else [`HeldSet::held_msg`].
    pub fn held_msg_for(&self, rev: u64) -> ServerMsg {
        let runs = self.runs();
        let holes = runs.len() > 1 || runs.first().is_some_and(|&(first, _)| first > 0);
        if rev < v2::REV_HOLES || !holes {
            return self.held_msg();
        }
        ServerMsg::HeldSet {
            block_size: self.block,
            crcs: (0..self.count()).filter_map(|i| self.crc(i)).collect(),
            runs,
        }
    }
}

/// What a storage holds of an upload when it is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// Version 1: the first `offset` bytes, whose CRC-32 is `crc32`.
    Prefix {
        /// Bytes held.
        offset: u64,
        /// Their CRC-32.
        crc32: u32,
    },
    /// Version 2: a set of verified blocks.
    Blocks(HeldSet),
}

/// How an upload is laid out, which is part of its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Version 1: a growing prefix of a file whose CRC-32 the client gave.
    Prefix {
        /// The whole file's CRC-32 from the header.
        crc32: u32,
    },
    /// Version 2: blocks of this size.
    Blocks {
        /// Block size.
        block: u64,
    },
}

/// Which upload a held part belongs to: a part of another identity is
/// never resumed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartId {
    /// The sanitised name.
    pub name: String,
    /// The whole file's size.
    pub filesize: u64,
    /// Version and its parameters.
    pub layout: Layout,
}

/// Where uploads are kept (local disk, memory, later an object store).
pub trait Storage {
    /// One upload's held part.
    type Part: HeldPart;
    /// Opens the held part of `id` (or starts an empty one) and says what
    /// it holds.
    fn open(&self, id: &PartId) -> Result<(Self::Part, Held), Fault>;
}

/// One upload's held part: writes, block records, checkpoints, commit.
pub trait HeldPart {
    /// Writes `bytes` at file offset `offset`.
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Fault>;
    /// Protocol 1's write: like [`HeldPart::write_at`], with `crc_after`,
    /// the CRC-32 of the whole prefix after these bytes, which the
    /// [`Receiver`] computed already ([`Receiver::prefix_crc`]); a storage
    /// that records a running CRC-32 uses it instead of computing it a
    /// second time. The default ignores it.
    fn write_grown(&mut self, offset: u64, bytes: &[u8], crc_after: u32) -> Result<(), Fault> {
        let _ = crc_after;
        self.write_at(offset, bytes)
    }
    /// Block `idx` is about to be overwritten: it stops counting as held
    /// (durably, if a checkpoint vouched for it).
    fn begin_block(&mut self, idx: u64) -> Result<(), Fault>;
    /// Block `idx` arrived with CRC-32 `crc`; `good` if that matched.
    fn record_block(&mut self, idx: u64, crc: u32, good: bool) -> Result<(), Fault>;
    /// Makes everything verified so far durable.
    fn checkpoint(&mut self) -> Result<(), Fault>;
    /// Before the verdict: confirms that what is held on disk is what was
    /// received (another process may have written to the part). The
    /// default trusts the storage (memory cannot change behind our back).
    fn recheck(&mut self) -> Result<Recheck, Fault> {
        Ok(Recheck::Same)
    }
    /// Stores the complete file under its name, durably.
    fn commit(&mut self, whole_crc: u32) -> Result<(), Fault>;
    /// After [`HeldPart::commit`]: what storing did to the name. The
    /// default is a storage that keeps no history.
    fn stored_as(&self) -> StoredAs {
        StoredAs::New
    }
    /// Throws the held part away.
    fn discard(&mut self) -> Result<(), Fault>;
}

pub use crate::v2::StoredAs;

/// What [`HeldPart::recheck`] found: the hook that lets a storage which
/// can change behind the server's back (a local disk) decide the verdict
/// over the bytes it holds, not over those that arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recheck {
    /// The held bytes are the ones received.
    Same,
    /// Version 2: these held blocks changed; they are missing again (and
    /// asked for in a repair round).
    Changed(Vec<u64>),
    /// Version 1 (one block that grows, so nothing to repair): the held
    /// part cannot be vouched for, why; the upload fails and is discarded.
    Wrong(String),
}

/// What the [`Receiver`] asks its shell to do; each is answered with one
/// [`Event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Check the server's policy (size limit, free space) for this upload.
    /// Answer: [`Event::Admitted`].
    Admit {
        /// The sanitised name.
        name: crate::SafeName,
        /// The file's size.
        filesize: u64,
    },
    /// Become the one connection writing `name` (taking over an older
    /// one). An upload started with authentication may only be taken over
    /// by an authenticated client. Answer: [`Event::Claimed`].
    Claim {
        /// The sanitised name.
        name: crate::SafeName,
        /// Whether this client proved the token.
        authenticated: bool,
    },
    /// Join the session `join` names (parallel streams), instead of
    /// [`Action::Claim`]: check its proof and attach to it. Answer:
    /// [`Event::Claimed`].
    Join {
        /// The session, nonce and proof from the header.
        join: crate::session::Join,
        /// Whether this client proved the token.
        authenticated: bool,
    },
    /// Open the held part. Answer: [`Event::Opened`].
    OpenHeld(PartId),
    /// See [`HeldPart::begin_block`]. Answer: [`Event::Applied`].
    BeginBlock {
        /// Block index.
        idx: u64,
    },
    /// See [`HeldPart::record_block`]. Answer: [`Event::Applied`].
    RecordBlock {
        /// Block index.
        idx: u64,
        /// CRC-32 of the bytes received.
        crc: u32,
        /// Whether it matched the sender's.
        good: bool,
    },
    /// See [`HeldPart::checkpoint`]. Answer: [`Event::Applied`].
    Checkpoint,
    /// See [`HeldPart::recheck`]: asked once the last byte (version 1) or
    /// the end frame (version 2) arrived, before the verdict. Answer:
    /// [`Event::Rechecked`].
    Recheck,
    /// See [`HeldPart::commit`]. Answer: [`Event::Applied`].
    Commit {
        /// The verified whole-file CRC-32.
        whole_crc: u32,
    },
    /// See [`HeldPart::discard`]. Answer: [`Event::Applied`].
    Discard,
    /// A list request (see [`crate::listing`]): the next page of what the
    /// server holds (the first when `first`), of `name` alone (with its
    /// numbered versions and its partial upload) or of everything.
    /// Answer: [`Event::Listed`].
    ListPage {
        /// The name asked about; `None`: everything.
        name: Option<String>,
        /// Whether this is the first page (start from the beginning).
        first: bool,
        /// Whether the client asked for directory entries and the tree
        /// parts summary (`"bt"."dirs"`): an older client refuses them.
        dirs: bool,
    },
}

/// The result of an [`Action`] or a [`WriteAt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Result of [`Action::Admit`].
    Admitted(Result<(), Fault>),
    /// Result of [`Action::Claim`].
    Claimed(Result<(), Fault>),
    /// Result of [`Action::OpenHeld`].
    Opened(Result<Held, Fault>),
    /// Result of a storage action or a write.
    Applied(Result<(), Fault>),
    /// Result of [`Action::ListPage`]: the page's entries and whether it is
    /// the last.
    Listed(Result<(Vec<crate::listing::ListEntry>, bool), Fault>),
    /// Result of [`Action::Commit`] (a shell may answer it with
    /// [`Event::Applied`] too: then the name is taken as new).
    Committed(Result<StoredAs, Fault>),
    /// Result of [`Action::Recheck`].
    Rechecked(Result<Recheck, Fault>),
}

/// Executes a storage action on `part`; `None` for the actions that are
/// the shell's policy (admit, claim, open).
pub fn apply<P: HeldPart>(part: &mut P, action: &Action) -> Option<Event> {
    let r = match *action {
        Action::Recheck => return Some(Event::Rechecked(part.recheck())),
        Action::BeginBlock { idx } => part.begin_block(idx),
        Action::RecordBlock { idx, crc, good } => part.record_block(idx, crc, good),
        Action::Checkpoint => part.checkpoint(),
        Action::Commit { whole_crc } => {
            let r = part.commit(whole_crc).map(|()| part.stored_as());
            return Some(Event::Committed(r));
        }
        Action::Discard => part.discard(),
        Action::Admit { .. }
        | Action::Claim { .. }
        | Action::Join { .. }
        | Action::OpenHeld(_)
        | Action::ListPage { .. } => return None,
    };
    Some(Event::Applied(r))
}

/// Received file bytes to write: borrowed from the shell's input buffer,
/// or owned when the machine decompressed them (one chunk of a compressed
/// block, at most [`crate::compress::PACK_CHUNK`] bytes).
#[derive(Debug, PartialEq, Eq)]
pub struct WriteAt<'a> {
    /// File offset.
    pub offset: u64,
    /// The bytes.
    pub bytes: std::borrow::Cow<'a, [u8]>,
}

/// What one [`Receiver::handle_input`] call did.
#[derive(Debug, PartialEq, Eq)]
pub struct Fed<'a> {
    /// Bytes of the input consumed.
    pub used: usize,
    /// Bytes to write (then answer with [`Event::Applied`]).
    pub write: Option<WriteAt<'a>>,
}

impl Fed<'_> {
    pub(crate) fn used(used: usize) -> Fed<'static> {
        Fed { used, write: None }
    }
}

/// One item of the client's byte stream after the header.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientItem<'a> {
    /// A data frame's head, checked against the file.
    DataHead {
        /// Block index.
        idx: u64,
        /// File offset.
        offset: u64,
        /// Payload length.
        len: u64,
    },
    /// A compressed data frame's head: `wire` bytes of packed payload for
    /// the `len` raw bytes of block `idx` follow.
    PackedHead {
        /// Block index.
        idx: u64,
        /// File offset.
        offset: u64,
        /// Raw length of the block.
        len: u64,
        /// Packed payload length.
        wire: u64,
    },
    /// Some of the payload, by reference.
    Payload(&'a [u8]),
    /// The payload's CRC-32 as the sender computed it.
    Trailer(u32),
    /// The end frame with the whole file's CRC-32.
    End(u32),
    /// The answer to a challenge.
    Answer([u8; ANSWER_LEN]),
}

#[derive(Debug, Clone)]
enum ClientAt {
    Tag,
    Head {
        tag: u8,
        buf: [u8; MAX_CLIENT_HEAD],
        n: usize,
        need: usize,
    },
    Payload {
        left: u64,
    },
    Trailer {
        buf: [u8; 4],
        n: usize,
    },
}

/// Incremental decoder of client frames: bytes in, items out, buffering at
/// most one frame head; payloads pass through by reference.
#[derive(Debug, Clone)]
pub struct ClientDecoder {
    filesize: u64,
    block: u64,
    at: ClientAt,
}

impl ClientDecoder {
    /// A decoder for frames of a file of `filesize` bytes in `block`s.
    pub fn new(filesize: u64, block: u64) -> ClientDecoder {
        ClientDecoder {
            filesize,
            block,
            at: ClientAt::Tag,
        }
    }

    /// Payload bytes of the current data frame still to come, if one is
    /// being received.
    pub fn payload_left(&self) -> Option<u64> {
        match self.at {
            ClientAt::Payload { left } => Some(left),
            _ => None,
        }
    }

    /// Decodes from `input`: bytes used and the item completed, if any.
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<ClientItem<'a>>), Fault> {
        let mut used = 0;
        while used < input.len() {
            if let ClientAt::Payload { left } = &mut self.at {
                let n = (*left).min((input.len() - used) as u64) as usize;
                *left -= n as u64;
                if *left == 0 {
                    self.at = ClientAt::Trailer { buf: [0; 4], n: 0 };
                }
                return Ok((used + n, Some(ClientItem::Payload(&input[used..used + n]))));
            }
            let b = input[used];
            used += 1;
            if let Some(item) = self.push(b)? {
                return Ok((used, Some(item)));
            }
        }
        Ok((used, None))
    }

    fn push(&mut self, b: u8) -> Result<Option<ClientItem<'static>>, Fault> {
        match &mut self.at {
            ClientAt::Tag => {
                let need = v2::client_head_len(b).map_err(|e| Fault::bad(e.to_string()))?;
                self.at = ClientAt::Head {
                    tag: b,
                    buf: [0; MAX_CLIENT_HEAD],
                    n: 0,
                    need,
                };
                Ok(None)
            }
            ClientAt::Head { tag, buf, n, need } => {
                buf[*n] = b;
                *n += 1;
                if *n < *need {
                    return Ok(None);
                }
                let (tag, rest) = (*tag, buf[..*need].to_vec());
                self.head_done(tag, &rest).map(Some)
            }
            ClientAt::Trailer { buf, n } => {
                buf[*n] = b;
                *n += 1;
                if *n < 4 {
                    return Ok(None);
                }
                let crc = u32::from_be_bytes(*buf);
                self.at = ClientAt::Tag;
                Ok(Some(ClientItem::Trailer(crc)))
            }
            ClientAt::Payload { .. } => Err(Fault::new(FaultCode::Internal, "decoder state")),
        }
    }

    fn head_done(&mut self, tag: u8, rest: &[u8]) -> Result<ClientItem<'static>, Fault> {
        let (frame, idx) = v2::parse_client_head(tag, rest, self.filesize, self.block)
            .map_err(|e| Fault::bad(e.to_string()))?;
        self.at = ClientAt::Tag;
        Ok(match frame {
            v2::ClientFrame::Data { offset, len } => {
                self.at = if len == 0 {
                    ClientAt::Trailer { buf: [0; 4], n: 0 }
                } else {
                    ClientAt::Payload { left: len }
                };
                ClientItem::DataHead { idx, offset, len }
            }
            v2::ClientFrame::Packed { offset, len, wire } => {
                // `wire` is never 0 (checked with the head).
                self.at = ClientAt::Payload { left: wire };
                ClientItem::PackedHead {
                    idx,
                    offset,
                    len,
                    wire,
                }
            }
            v2::ClientFrame::End { crc32 } => ClientItem::End(crc32),
            v2::ClientFrame::Answer(a) => ClientItem::Answer(a),
        })
    }
}

/// Incremental decoder of server frames (after [`v2::MAGIC`]): buffers one
/// frame of at most `max` payload bytes.
#[derive(Debug, Clone)]
pub struct ServerDecoder {
    max: usize,
    head: [u8; 5],
    n: usize,
    body: Option<(u8, usize)>,
    payload: Vec<u8>,
}

impl ServerDecoder {
    /// A decoder refusing payloads over `max` bytes.
    pub fn new(max: usize) -> ServerDecoder {
        ServerDecoder {
            max: max.min(v2::MAX_SERVER_FRAME),
            head: [0; 5],
            n: 0,
            body: None,
            payload: Vec::new(),
        }
    }

    /// Decodes from `input`: bytes used and the message completed, if any.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<ServerMsg>), String> {
        let mut used = 0;
        while used < input.len() {
            let Some((tag, len)) = self.body else {
                self.head[self.n] = input[used];
                self.n += 1;
                used += 1;
                if self.n == 5 {
                    let (tag, len) = v2::parse_server_head(self.head).map_err(|e| e.to_string())?;
                    if len > self.max {
                        return Err(format!("server frame of {len} bytes is over {}", self.max));
                    }
                    self.body = Some((tag, len));
                    self.payload.clear();
                }
                continue;
            };
            let take = (len - self.payload.len()).min(input.len() - used);
            self.payload.extend_from_slice(&input[used..used + take]);
            used += take;
            if self.payload.len() == len {
                return self.finish(tag).map(|m| (used, Some(m)));
            }
        }
        if let Some((tag, 0)) = self.body {
            return self.finish(tag).map(|m| (used, Some(m)));
        }
        Ok((used, None))
    }

    fn finish(&mut self, tag: u8) -> Result<ServerMsg, String> {
        self.body = None;
        self.n = 0;
        let msg = v2::parse_server_msg(tag, &self.payload).map_err(|e| e.to_string());
        self.payload = Vec::new();
        msg
    }
}

/// Shows a peer's bytes for a message: printable ASCII as is, the rest
/// escaped, at most 32 bytes.
pub(crate) fn shown(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(32)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_set_tracks_holes_and_durability() {
        let mut h = HeldSet::new(3 * 65536 + 5, 65536).unwrap();
        assert_eq!((h.count(), h.prefix(), h.whole_crc()), (4, 0, None));
        h.mark(0, 10);
        h.mark(2, 30);
        assert_eq!(
            (h.prefix(), h.prefix_bytes(), h.missing()),
            (1, 65536, vec![1, 3])
        );
        h.make_durable();
        h.mark(1, 20);
        assert_eq!(h.slot(1), Some(Slot::Written(20)));
        assert_eq!(h.prefix_crcs(), vec![10, 20, 30]);
        h.keep_durable();
        assert_eq!(
            (h.slot(1), h.slot(2)),
            (Some(Slot::Missing), Some(Slot::Durable(30)))
        );
        assert_eq!(h.forget(2), Slot::Durable(30));
        assert!(HeldSet::new(u64::MAX / 2, 65536).is_err());
    }

    #[test]
    fn client_decoder_hands_payload_through_in_any_split() {
        let (fs, b) = (65536 + 3, 65536u64);
        let mut wire = v2::encode_data_head(65536, 3).to_vec();
        wire.extend_from_slice(b"xyz");
        wire.extend_from_slice(&crc32fast::hash(b"xyz").to_be_bytes());
        wire.extend_from_slice(&v2::encode_end(7));
        for step in 1..wire.len() {
            let mut d = ClientDecoder::new(fs, b);
            let (mut pos, mut items, mut payload) = (0, Vec::new(), Vec::new());
            while pos < wire.len() {
                let end = (pos + step).min(wire.len());
                let (used, item) = d.decode(&wire[pos..end]).unwrap();
                pos += used;
                match item {
                    Some(ClientItem::Payload(p)) => payload.extend_from_slice(p),
                    Some(i) => items.push(format!("{i:?}")),
                    None => {}
                }
            }
            assert_eq!(payload, b"xyz");
            assert_eq!(items.len(), 3, "{step}: {items:?}");
        }
        assert!(ClientDecoder::new(fs, b).decode(b"Q").is_err());
    }

    #[test]
    fn server_decoder_bounds_and_splits() {
        let f = v2::encode_server_msg(&ServerMsg::Verdict(v2::Verdict::Repair(vec![1, 2])));
        for step in 1..=f.len() {
            let mut d = ServerDecoder::new(1024);
            let (mut pos, mut got) = (0, None);
            while pos < f.len() {
                let (u, m) = d.decode(&f[pos..(pos + step).min(f.len())]).unwrap();
                pos += u;
                got = got.or(m);
            }
            assert_eq!(
                got,
                Some(ServerMsg::Verdict(v2::Verdict::Repair(vec![1, 2])))
            );
        }
        assert!(ServerDecoder::new(4).decode(&f).is_err());
    }
}
