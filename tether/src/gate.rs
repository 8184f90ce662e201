//! A gate that opens once, with an outcome: waited on by threads and by tasks. The bootstrap
//! stage opens the container's root with it (or says why there is none) while the tether already
//! reads its config and talks to the host.

use std::sync::{Condvar, Mutex, MutexGuard};

/// What a gate opened with: nothing, or why what it guards will never be.
pub type Outcome = Result<(), String>;

#[derive(Default)]
pub struct Gate {
    outcome: Mutex<Option<Outcome>>,
    opened: Condvar,
    notify: tokio::sync::Notify,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("outcome", &*self.lock())
            .finish()
    }
}

impl Gate {
    /// A gate open from the start.
    pub fn opened() -> Self {
        let g = Self::default();
        g.open(Ok(()));
        g
    }

    fn lock(&self) -> MutexGuard<'_, Option<Outcome>> {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the gate with `outcome` (the first one stays).
    pub fn open(&self, outcome: Outcome) {
        self.lock().get_or_insert(outcome);
        self.opened.notify_all();
        self.notify.notify_waiters();
    }

    /// The outcome, once open.
    pub fn outcome(&self) -> Option<Outcome> {
        self.lock().clone()
    }

    /// Blocks the calling thread until the gate is open.
    pub fn wait_blocking(&self) -> Outcome {
        let mut outcome = self.lock();
        loop {
            if let Some(o) = &*outcome {
                return o.clone();
            }
            outcome = self.opened.wait(outcome).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Returns once the gate is open.
    pub async fn wait(&self) -> Outcome {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before the check: an open() between the two still wakes us.
        notified.as_mut().enable();
        if let Some(o) = self.outcome() {
            return o;
        }
        notified.await;
        self.outcome().unwrap_or(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn tasks_and_threads_pass_once_it_opens_with_its_outcome() {
        let g = Arc::new(Gate::default());
        let task = tokio::spawn({
            let g = g.clone();
            async move { g.wait().await }
        });
        let thread = std::thread::spawn({
            let g = g.clone();
            move || g.wait_blocking()
        });
        tokio::task::yield_now().await;
        assert!(!task.is_finished() && !thread.is_finished());
        g.open(Err("no disk".into()));
        g.open(Ok(()));
        assert_eq!(
            task.await.unwrap(),
            Err("no disk".into()),
            "the first outcome stays"
        );
        assert_eq!(thread.join().unwrap(), Err("no disk".into()));
        assert_eq!(g.wait().await, Err("no disk".into()), "at once when open");
        assert_eq!(Gate::opened().wait_blocking(), Ok(()));
    }
}
