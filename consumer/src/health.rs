//! Readiness: the sidecar is ready while the queue answers and it is not draining.

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
    draining: bool,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            state: Mutex::new(State {
                not_ready: Some("the queue has not answered yet".into()),
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
        state.not_ready.clone().map_or(Ok(()), Err)
    }

    fn publish(&self, state: &State) {
        self.metrics
            .ready
            .set(i64::from(state.not_ready.is_none() && !state.draining));
    }
}
