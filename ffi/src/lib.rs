//! C ABI of the bigtransfer engine: the `libbigtransfer` shared and static
//! libraries and the functions declared in `include/bigtransfer.h` (generated
//! from these sources by cbindgen; see `tests/header.rs`).
//!
//! What a C program gets: send a file (`bt_send_file` with `bt_send_options`
//! and a progress callback that can cancel), run a server in the calling
//! thread (`bt_server_*`, stoppable from another thread or a signal handler),
//! the CRC-32 of a file, the library version, and per-thread error messages;
//! send several paths or directories (`bt_send_tree`) and download stored
//! files and directories (`bt_get_file`, `bt_get_tree`).
//!
//! Conventions, as in rustls-ffi and hyper's C API: opaque handles with
//! `bt_*_new` / `bt_*_free`; every fallible function returns a `bt_status`
//! (`BT_OK` = 0) and leaves its reason in `bt_last_error_message()`; every
//! pointer is checked (NULL gives `BT_NULL_POINTER`, never a crash); no panic
//! crosses the boundary (it becomes `BT_PANIC`). Strings are UTF-8 and
//! NUL-terminated, except paths, which on Unix are raw bytes.
//!
//! Not for: any transfer logic of its own (all of it is in
//! `bigtransfer-core`), nor Rust callers, who should use the core directly.

#![deny(missing_docs)]

mod get;
mod misc;
mod send;
mod server;
mod status;
mod tree;

pub use get::{bt_get_file, bt_get_result};
pub use misc::{bt_crc32_file, bt_last_error_message, bt_status_name, bt_version};
pub use send::{
    bt_list, bt_list_dirs, bt_list_entry, bt_list_fn, bt_progress_fn, bt_send_file,
    bt_send_options, bt_send_options_free, bt_send_options_new, bt_send_options_set_backoff_ms,
    bt_send_options_set_cache_dir, bt_send_options_set_connect_timeout_ms,
    bt_send_options_set_io_timeout_ms, bt_send_options_set_legacy, bt_send_options_set_limit_rate,
    bt_send_options_set_remote_name, bt_send_options_set_retries, bt_send_options_set_token,
    bt_send_result,
};
pub use server::{
    bt_log_fn, bt_server, bt_server_config, bt_server_config_free, bt_server_config_new,
    bt_server_config_set_allow_legacy, bt_server_config_set_bind_address, bt_server_config_set_dir,
    bt_server_config_set_expire_partial_secs, bt_server_config_set_header_timeout_ms,
    bt_server_config_set_idle_timeout_ms, bt_server_config_set_log_callback,
    bt_server_config_set_max_connections, bt_server_config_set_max_file_size,
    bt_server_config_set_min_free, bt_server_config_set_overwrite, bt_server_config_set_port,
    bt_server_config_set_store, bt_server_config_set_token, bt_server_free, bt_server_new,
    bt_server_port, bt_server_serve, bt_server_stop,
};
pub use status::bt_status;
pub use tree::{bt_get_tree, bt_send_tree, bt_tree_progress, bt_tree_progress_fn, bt_tree_result};
