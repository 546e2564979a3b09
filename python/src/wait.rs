//! Running engine work on a Rust thread while the calling Python thread
//! waits without the GIL, waking every [`TICK`] to run Python signal
//! handlers (Ctrl-C) and the caller's per-tick work (progress callbacks).
//!
//! The engine's calls block for as long as a transfer or a server runs; run
//! on the calling thread they would hold off `KeyboardInterrupt` until they
//! return. Here they run on a worker thread and report through a [`Slot`];
//! the waiting thread can give up on them (after asking them to stop) at any
//! tick. Not for: anything that touches Python objects: workers never do.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// How often a waiting thread wakes to check signals and report progress
/// (so a progress callback runs at most 20 times a second).
pub(crate) const TICK: Duration = Duration::from_millis(50);

/// How long a cancelled worker is given to wind down before the caller
/// stops waiting for it (it then ends on its own, unobserved).
pub(crate) const CANCEL_GRACE: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct SlotState<T> {
    done: bool,
    value: Option<T>,
}

/// A value that one thread produces once and others wait for.
pub(crate) struct Slot<T> {
    state: Mutex<SlotState<T>>,
    cv: Condvar,
}

impl<T> Slot<T> {
    /// An empty slot.
    pub(crate) fn new() -> Slot<T> {
        Slot {
            state: Mutex::new(SlotState {
                done: false,
                value: None,
            }),
            cv: Condvar::new(),
        }
    }

    /// Stores the value and wakes every waiter.
    pub(crate) fn put(&self, value: T) {
        let mut s = lock(&self.state);
        s.done = true;
        s.value = Some(value);
        self.cv.notify_all();
    }

    /// Waits up to `timeout` for the value to be stored; whether it is.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = lock(&self.state);
        while !s.done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .cv
                .wait_timeout(s, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }

    /// Whether the value was stored (even if taken since).
    pub(crate) fn is_done(&self) -> bool {
        lock(&self.state).done
    }

    /// Takes the value, if stored and not taken yet.
    pub(crate) fn take(&self) -> Option<T> {
        lock(&self.state).value.take()
    }
}

/// Waits up to `timeout` for `slot` with the GIL released.
pub(crate) fn wait_detached<T: Send>(py: Python<'_>, slot: &Slot<T>, timeout: Duration) -> bool {
    py.detach(|| slot.wait(timeout))
}

/// What the per-tick work of [`Worker::run`] wants next.
pub(crate) enum Step {
    /// Keep waiting.
    Continue,
    /// Ask the worker to stop and wait (up to [`CANCEL_GRACE`]) for its result.
    Cancel,
}

type Outcome<T> = std::thread::Result<T>;

/// One piece of engine work running on its own thread.
pub(crate) struct Worker<T> {
    slot: Arc<Slot<Outcome<T>>>,
    cancel: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

fn panicked() -> PyErr {
    PyRuntimeError::new_err("internal error: a bigtransfer worker thread panicked")
}

impl<T: Send + 'static> Worker<T> {
    /// Starts `work` on a thread named `name`; `work` gets the cancel flag,
    /// which it should poll and stop soon after it is set.
    pub(crate) fn spawn<F>(name: &str, work: F) -> PyResult<Worker<T>>
    where
        F: FnOnce(&AtomicBool) -> T + Send + 'static,
    {
        let slot: Arc<Slot<Outcome<T>>> = Arc::new(Slot::new());
        let cancel = Arc::new(AtomicBool::new(false));
        let (slot2, cancel2) = (Arc::clone(&slot), Arc::clone(&cancel));
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let out = catch_unwind(AssertUnwindSafe(|| work(&cancel2)));
                slot2.put(out);
            })
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start a thread: {e}")))?;
        Ok(Worker {
            slot,
            cancel,
            handle: Some(handle),
        })
    }

    fn finish(&mut self, py: Python<'_>) -> PyResult<T> {
        if let Some(h) = self.handle.take() {
            // The worker stored its result: it is about to return.
            let _ = py.detach(|| h.join());
        }
        match self.slot.take() {
            Some(Ok(v)) => Ok(v),
            _ => Err(panicked()),
        }
    }

    /// Sets the cancel flag and gives the worker [`CANCEL_GRACE`] to finish;
    /// its result, if any, is dropped. Signals arriving meanwhile stay
    /// pending for the interpreter.
    fn abandon(mut self, py: Python<'_>) {
        self.cancel.store(true, Ordering::SeqCst);
        if wait_detached(py, &self.slot, CANCEL_GRACE) {
            let _ = self.finish(py);
        }
    }

    /// Waits for the result with the GIL released. Every [`TICK`] it runs
    /// the signal handlers, then `tick` (until that asked to cancel).
    ///
    /// Returns `Ok(Some(result))` when the worker finished (also after a
    /// [`Step::Cancel`]), `Ok(None)` when it was cancelled and did not finish
    /// within [`CANCEL_GRACE`], and the error of a signal handler (e.g.
    /// `KeyboardInterrupt`) or of `tick` after cancelling the worker.
    pub(crate) fn run(
        mut self,
        py: Python<'_>,
        mut tick: impl FnMut(Python<'_>) -> PyResult<Step>,
    ) -> PyResult<Option<T>> {
        let mut cancelled_at: Option<Instant> = None;
        loop {
            if wait_detached(py, &self.slot, TICK) {
                return self.finish(py).map(Some);
            }
            if let Err(e) = py.check_signals() {
                self.abandon(py);
                return Err(e);
            }
            match cancelled_at {
                Some(t) if t.elapsed() >= CANCEL_GRACE => return Ok(None),
                Some(_) => {}
                None => match tick(py) {
                    Ok(Step::Continue) => {}
                    Ok(Step::Cancel) => {
                        self.cancel.store(true, Ordering::SeqCst);
                        cancelled_at = Some(Instant::now());
                    }
                    Err(e) => {
                        self.abandon(py);
                        return Err(e);
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_times_out_then_delivers_once() {
        let slot: Arc<Slot<u32>> = Arc::new(Slot::new());
        assert!(!slot.wait(Duration::from_millis(10)));
        assert!(!slot.is_done());
        let s2 = Arc::clone(&slot);
        let t = std::thread::spawn(move || s2.put(7));
        assert!(slot.wait(Duration::from_secs(30)));
        assert!(t.join().is_ok());
        assert!(slot.is_done());
        assert_eq!(slot.take(), Some(7));
        assert_eq!(slot.take(), None);
        assert!(
            slot.wait(Duration::ZERO),
            "stays done after the value is taken"
        );
    }
}
