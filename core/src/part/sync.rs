//! Checkpoints made durable on a helper thread ([`Syncer`]), so that a
//! connection's thread keeps receiving while the disk flushes.
//!
//! Not for deciding what a checkpoint records (see [`super::ledger`]) or
//! when one is taken (see [`super::DiskPart`]); jobs never touch a socket.

use crate::{Error, ErrorKind, Result};

/// One checkpoint's disk work, run by a [`Syncer`].
pub(crate) type SyncJob = Box<dyn FnOnce() -> Result<()> + Send>;

/// Makes checkpoints durable on a helper thread, one at a time, so that the
/// connection's thread keeps receiving while the disk flushes. A checkpoint
/// `fdatasync`s the part, then writes and syncs the record; on this class of
/// machine that blocked the receive loop for 5-10 ms every step.
///
/// At most one job is in flight, with a note of what it records (`T`): the
/// caller settles the previous job (taking back its note to apply it) before
/// submitting the next, which bounds both the memory and the data a crash
/// can cost. A job's error (a failed `fdatasync` means data may be lost) is
/// returned by [`Syncer::settle`], never dropped.
///
/// Not for anything but checkpoints: jobs must not touch the socket.
#[derive(Debug)]
pub(crate) struct Syncer<T> {
    worker: Option<SyncWorker>,
    in_flight: Option<T>,
}

#[derive(Debug)]
struct SyncWorker {
    jobs: std::sync::mpsc::SyncSender<SyncJob>,
    results: std::sync::mpsc::Receiver<Result<()>>,
    thread: std::thread::JoinHandle<()>,
}

fn checkpoint_thread_gone() -> Error {
    Error::new(
        ErrorKind::Storage,
        "the checkpoint thread stopped unexpectedly",
    )
}

impl<T> Syncer<T> {
    /// A syncer with no thread yet: the thread starts with the first job,
    /// so short uploads never start one.
    pub(crate) fn new() -> Syncer<T> {
        Syncer {
            worker: None,
            in_flight: None,
        }
    }

    /// The note of the job in flight, if any.
    pub(crate) fn in_flight(&self) -> Option<&T> {
        self.in_flight.as_ref()
    }

    /// Waits for the job in flight, if any: its note once it succeeded,
    /// `None` if nothing was in flight, or its error.
    pub(crate) fn settle(&mut self) -> Result<Option<T>> {
        let Some(note) = self.in_flight.take() else {
            return Ok(None);
        };
        match self.worker.as_ref().map(|w| w.results.recv()) {
            Some(Ok(r)) => r.map(|()| Some(note)),
            _ => Err(checkpoint_thread_gone()),
        }
    }

    /// Starts `job`, noted as `note`. The previous job must have been
    /// settled.
    pub(crate) fn submit(&mut self, job: SyncJob, note: T) -> Result<()> {
        if self.in_flight.is_some() {
            return Err(Error::new(
                ErrorKind::Storage,
                "internal: a checkpoint is already in flight",
            ));
        }
        if self.worker.is_none() {
            let (jobs, job_rx) = std::sync::mpsc::sync_channel::<SyncJob>(1);
            let (res_tx, results) = std::sync::mpsc::sync_channel(1);
            let thread = std::thread::Builder::new()
                .name("bt-checkpoint".into())
                .spawn(move || {
                    for job in job_rx {
                        if res_tx.send(job()).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|e| {
                    Error::io(ErrorKind::Storage, "cannot start a checkpoint thread", e)
                })?;
            self.worker = Some(SyncWorker {
                jobs,
                results,
                thread,
            });
        }
        match self.worker.as_ref().map(|w| w.jobs.send(job)) {
            Some(Ok(())) => {
                self.in_flight = Some(note);
                Ok(())
            }
            _ => Err(checkpoint_thread_gone()),
        }
    }
}

impl<T> Drop for Syncer<T> {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            // Closing the job channel ends the thread after its current job.
            drop(w.jobs);
            let _ = w.thread.join();
        }
    }
}
