//! `bt_send_tree` and `bt_get_tree`: send several paths or whole
//! directories in one tree session, and download stored directories (or
//! several files) into a local directory, with a progress callback that
//! gets the file being moved and both overall counts.
//!
//! Not for any transfer logic (the core's `send_tree` and `get_tree`).

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::PathBuf;

use bigtransfer_core::client::{get_tree, TreeTick};
use bigtransfer_core::{send_tree, Control};

use crate::send::bt_send_options;
use crate::status::{arg_mut, arg_path, arg_utf8, bt_status, guard, Failure};

/// Where a tree transfer is, passed to a `bt_tree_progress_fn`.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy)]
pub struct bt_tree_progress {
    /// The file last moved: its path in the tree (UTF-8, NUL-terminated,
    /// valid only during the call).
    pub path: *const c_char,
    /// Bytes of that file done.
    pub file_done: u64,
    /// Its size.
    pub file_total: u64,
    /// Files done with (moved and verified, here already, failed or not
    /// stored).
    pub files_done: u64,
    /// Files listed so far (the manifest is paged: this grows).
    pub files_total: u64,
    /// Bytes moved (a send: sent so far; a download: of the files done).
    pub bytes_done: u64,
    /// Bytes of the files listed so far.
    pub bytes_total: u64,
}

/// Progress of a tree transfer, on the calling thread, as bytes of a file
/// move and after each file; return non-zero to cancel (the call then
/// returns `BT_CANCELLED`; what is done is kept for a resume).
#[allow(non_camel_case_types)]
pub type bt_tree_progress_fn =
    Option<unsafe extern "C" fn(progress: *const bt_tree_progress, user: *mut c_void) -> c_int>;

/// The outcome of a tree transfer. On failure every field is 0.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct bt_tree_result {
    /// Regular files in the manifest.
    pub files: u64,
    /// Directories in it.
    pub dirs: u64,
    /// Symlinks in it.
    pub symlinks: u64,
    /// Sum of the files' sizes.
    pub bytes: u64,
    /// Files moved and verified by this call (stored, or downloaded).
    pub moved: u64,
    /// Files already there (nothing moved).
    pub held: u64,
    /// Files that did not verify, or the server could not send.
    pub failed: u64,
    /// Entries not stored / not replaced (a different one holds the name).
    pub not_stored: u64,
    /// File bytes sent or received, all attempts together.
    pub bytes_moved: u64,
    /// Entries left out of a send (special files, symlinks leaving it).
    pub skipped: u64,
    /// Connections made.
    pub attempts: u32,
    /// Of a send: files sent although the server held one of the same
    /// size and mtime, because their content differed (checked by
    /// CRC-32; the stored one was kept as a numbered version or replaced,
    /// as the verdict said). Always 0 for a download.
    pub changed_same_mtime: u64,
}

/// `n` NUL-terminated strings at `list`.
///
/// # Safety
/// `list` NULL or `n` readable pointers, each NULL or a NUL-terminated string.
unsafe fn strings<'a>(
    list: *const *const c_char,
    n: usize,
    what: &str,
) -> Result<Vec<&'a str>, Failure> {
    if list.is_null() || n == 0 {
        return Err(Failure::invalid(format!("{what}: give at least one")));
    }
    // SAFETY: the caller promised `n` readable pointers.
    let ptrs = unsafe { std::slice::from_raw_parts(list, n) };
    // SAFETY: each is NULL (refused) or a NUL-terminated string.
    ptrs.iter().map(|&p| unsafe { arg_utf8(p, what) }).collect()
}

/// Calls `progress` with `tick`; whether it asked to cancel.
fn report(progress: bt_tree_progress_fn, user: *mut c_void, tick: &TreeTick) -> Control {
    let Some(f) = progress else {
        return Control::Continue;
    };
    let path = CString::new(tick.path.as_str()).unwrap_or_default();
    let p = bt_tree_progress {
        path: path.as_ptr(),
        file_done: tick.file_done,
        file_total: tick.file_total,
        files_done: tick.files_done,
        files_total: tick.files_total,
        bytes_done: tick.bytes_done,
        bytes_total: tick.bytes_total,
    };
    // SAFETY: the caller promised `progress` is safe to call with `user`;
    // `p` and its path live through the call.
    if unsafe { f(&p, user) } != 0 {
        Control::Cancel
    } else {
        Control::Continue
    }
}

/// Sends `paths` (files and directories, `n_paths` of them) to the server
/// at `host`:`port` in one tree session: a directory is stored under its
/// base name with everything in it (empty directories, relative symlinks
/// that stay inside it, modes without set-id bits, mtimes, holes). Resumes
/// and retries as `bt_send_file`; a file the server holds already (same
/// path, size, mtime) costs nothing; a different one under the same name
/// keeps the stored one as a numbered version unless the server runs with
/// `--overwrite`.
///
/// - `options`: as `bt_send_file`'s (NULL for the defaults); a server
///   with a token refuses trees for now (`BT_REFUSED`).
/// - `progress`/`user`: see `bt_tree_progress_fn` (NULL for none).
///
/// Returns `BT_OK` once the session ended (check `result->failed` and
/// `not_stored`), or as `bt_send_file`.
///
/// # Safety
/// `host` a NUL-terminated string; `paths` `n_paths` readable pointers to
/// NUL-terminated strings; `options` NULL or a live handle; `result` NULL
/// or writable; `progress`, if not NULL, safe to call with `user`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn bt_send_tree(
    host: *const c_char,
    port: u16,
    paths: *const *const c_char,
    n_paths: usize,
    options: *const bt_send_options,
    progress: bt_tree_progress_fn,
    user: *mut c_void,
    result: *mut bt_tree_result,
) -> bt_status {
    guard("bt_send_tree", || {
        // SAFETY (all): forwarded contract; NULL is checked.
        let out = unsafe { arg_mut(result, "result") }?;
        *out = bt_tree_result::default();
        let host = unsafe { arg_utf8(host, "host") }?;
        let paths: Vec<PathBuf> = unsafe { raw_paths(paths, n_paths) }?;
        let opts = unsafe { crate::send::call_options(host, port, options) }?;
        let mut tick = TreeTick::default();
        let mut cb = |p: &bigtransfer_core::TreeProgress| {
            if tick.on_send(p) {
                report(progress, user, &tick)
            } else {
                Control::Continue
            }
        };
        let o = send_tree(&paths, &opts, &mut cb)?;
        *out = bt_tree_result {
            files: o.files,
            dirs: o.dirs,
            symlinks: o.symlinks,
            bytes: o.bytes,
            moved: o.stored,
            held: o.held,
            failed: o.failed,
            not_stored: o.not_stored,
            bytes_moved: o.sent,
            skipped: o.skipped,
            attempts: o.attempts,
            changed_same_mtime: o.changed_quietly,
        };
        Ok(())
    })
}

/// Paths (raw bytes on Unix) at `list`.
///
/// # Safety
/// As [`strings`].
unsafe fn raw_paths(list: *const *const c_char, n: usize) -> Result<Vec<PathBuf>, Failure> {
    if list.is_null() || n == 0 {
        return Err(Failure::invalid("paths: give at least one"));
    }
    // SAFETY: the caller promised `n` readable pointers.
    let ptrs = unsafe { std::slice::from_raw_parts(list, n) };
    ptrs.iter()
        // SAFETY: each is NULL (refused) or a NUL-terminated string.
        .map(|&p| unsafe { arg_path(p, "paths") }.map(|p| p.to_path_buf()))
        .collect()
}

/// Downloads `remotes` (`n_remotes` paths in the server's storage
/// directory: directories, or files) from the server at `host`:`port` into
/// the local directory `dest_dir` (made if missing), each under its base
/// name: every entry checked as the server checks incoming trees (no `..`,
/// absolute paths, collisions; symlinks only inside the tree, never
/// followed), every file verified against the server's CRC-32s and renamed
/// into place only when whole, modes (never set-id) and mtimes applied.
/// A call after an interrupted one fetches only what is missing; a
/// different file already here is not replaced unless `force` is non-zero.
///
/// Returns `BT_OK` once done (check `result->failed` and `not_stored`),
/// `BT_REFUSED` for a remote the server does not have or a manifest the
/// client refuses (the reason in words), or as `bt_send_file`.
///
/// # Safety
/// As `bt_send_tree`; `dest_dir` a NUL-terminated string.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn bt_get_tree(
    host: *const c_char,
    port: u16,
    remotes: *const *const c_char,
    n_remotes: usize,
    dest_dir: *const c_char,
    options: *const bt_send_options,
    force: c_int,
    progress: bt_tree_progress_fn,
    user: *mut c_void,
    result: *mut bt_tree_result,
) -> bt_status {
    guard("bt_get_tree", || {
        // SAFETY (all): forwarded contract; NULL is checked.
        let out = unsafe { arg_mut(result, "result") }?;
        *out = bt_tree_result::default();
        let host = unsafe { arg_utf8(host, "host") }?;
        let remotes: Vec<String> = unsafe { strings(remotes, n_remotes, "remotes") }?
            .into_iter()
            .map(str::to_owned)
            .collect();
        let dest = unsafe { arg_path(dest_dir, "dest_dir") }?;
        let opts = unsafe { crate::send::call_options(host, port, options) }?;
        let mut tick = TreeTick::default();
        let mut cb = |p: &bigtransfer_core::client::TreeGetProgress| {
            if tick.on_get(p) {
                report(progress, user, &tick)
            } else {
                Control::Continue
            }
        };
        let o = get_tree(&remotes, dest, &opts, force != 0, &mut cb)?;
        *out = bt_tree_result {
            files: o.files,
            dirs: o.dirs,
            symlinks: o.symlinks,
            bytes: o.bytes,
            moved: o.fetched,
            held: o.held,
            failed: o.failed,
            not_stored: o.not_replaced,
            bytes_moved: o.received,
            skipped: 0,
            attempts: o.attempts,
            changed_same_mtime: 0,
        };
        Ok(())
    })
}
