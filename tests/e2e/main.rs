//! End-to-end tests of the `bigtransfer` binary over loopback: uploads of
//! every shape, interruptions and resumes, hostile input, the interactive
//! prompts, and wire compatibility with the stdlib Python scripts.

mod attacker;
mod auth;
mod compat;
mod compress;
mod diskfull;
mod docs;
mod get;
mod harness;
mod hostile;
mod interactive;
mod keep;
mod list_dirs;
mod messages;
mod peers;
#[cfg(feature = "s3")]
mod s3;
mod service;
mod streams;
mod tls;
mod tree;
mod tree_get;
mod tree_get_alone;
mod tree_token;
mod upload;
mod verified;
