//! Readiness: the sidecar is ready while the queue answers, the worker listens and it is
//! not draining.

use std::sync::Mutex;

use ferry_queues::QueueError;

use crate::metrics::Metrics;
use std::sync::Arc;

pub struct Health {
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

struct State {
    /// Why the sidecar is not ready; `None` when it is.
    not_ready: Option<String>,
    /// Why the sidecar waits for the worker; `None` once it listens.
    worker_missing: Option<String>,
    draining: bool,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            state: Mutex::new(State {
                not_ready: Some("the queue has not answered yet".into()),
                worker_missing: None,
                draining: false,
            }),
            metrics,
        }
    }

    pub fn queue_answered(&self) {
        let mut state = self.state.lock().expect("health lock");
        if state.not_ready.take().is_some() && !state.draining {
            tracing::info!("the queue answers; ready");
        }
        self.publish(&state);
    }

    pub fn queue_failed(&self, error: &QueueError) {
        let mut state = self.state.lock().expect("health lock");
        state.not_ready = Some(error.to_string());
        self.publish(&state);
    }

    /// The worker does not accept connections: nothing is received until it does.
    pub fn worker_missing(&self, why: String) {
        let mut state = self.state.lock().expect("health lock");
        state.worker_missing = Some(why);
        self.publish(&state);
    }

    pub fn worker_listening(&self) {
        let mut state = self.state.lock().expect("health lock");
        state.worker_missing = None;
        self.publish(&state);
    }

    pub fn set_draining(&self) {
        let mut state = self.state.lock().expect("health lock");
        state.draining = true;
        self.publish(&state);
    }

    /// `Ok` when ready, otherwise the reason.
    pub fn readiness(&self) -> Result<(), String> {
        let state = self.state.lock().expect("health lock");
        if state.draining {
            return Err("draining: not receiving new messages".into());
        }
        // A queue that does not answer is said first: it is why nothing would come, worker
        // or not.
        match state.not_ready.as_ref().or(state.worker_missing.as_ref()) {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    fn publish(&self, state: &State) {
        self.metrics.ready.set(i64::from(
            state.not_ready.is_none() && state.worker_missing.is_none() && !state.draining,
        ));
    }
}
