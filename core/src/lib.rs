//! `bigtransfer-core`: the blocking, resumable upload engine of bigtransfer.
//!
//! This crate speaks the bigtransfer wire protocol (see `docs/PROTOCOL.md`):
//! a client sends a file's name, size and CRC-32; the server answers how
//! many bytes it already holds; the client sends the rest; the server checks
//! the CRC-32 of the whole file and answers `CRC32_OK` or `CRC32_ERROR`.
//!
//! It is built on `std::net` and threads only (no async runtime). The pure
//! protocol logic ([`proto`], [`name`]) is kept apart from the socket and file
//! work ([`client`], [`server`], [`store`], [`part`]) so it can be tested and fuzzed on
//! bytes alone.
//!
//! It is not a CLI: argument parsing, prompts and progress bars live in the
//! `bigtransfer` binary.

#![deny(missing_docs)]
// Unsafe code lives in `sys` (system calls `rustix` lacks, the page-aligned
// buffer) and `alloc` (the global allocator) only, each of which allows it.
#![deny(unsafe_code)]

pub mod alloc;
pub mod auth;
pub mod cache;
pub mod client;
pub mod compress;
pub mod congestion;
pub mod crc;
pub mod dirsums;
mod error;
pub mod getwire;
mod json;
pub mod keep;
pub mod known_hosts;
pub mod listing;
pub mod machine;
pub mod name;
pub mod part;
mod pieces;
pub mod proto;
#[cfg(feature = "s3")]
pub mod s3;
pub mod server;
pub mod session;
pub mod sniff;
pub mod sparse;
pub mod store;
mod sys;
#[cfg(test)]
mod testdata;
pub mod text;
pub mod throttle;
pub mod tls;
mod tls_stream;
pub mod transport;
pub mod tree;
pub mod v2;

pub use client::tree::{send_tree, TreeOutcome, TreeProgress};
pub use client::{send_file, Control, Outcome, Progress, Protocol, SendOptions};
pub use crc::crc32_file;
pub use error::{Error, ErrorKind, Result};
pub use name::SafeName;
pub use server::{Server, ServerConfig, StopHandle};

/// The version of this library, from its Cargo manifest.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
