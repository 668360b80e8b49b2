//! Acknowledging consumed messages with as few frames as possible.
//!
//! A log batch finishes many jobs at once. Those below the oldest job still in flight
//! are settled by one `basic.ack` with `multiple`; those above it (they overtook a slow
//! job) are acknowledged one by one, so a slow receiver never holds back the others'
//! acknowledgements or the prefetch window. Requeues stay individual `basic.nack`s.

use std::collections::BTreeSet;
use std::sync::Arc;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;

pub struct AckTracker {
    channel: Channel,
    /// Held across sending, so acks leave in the order they were computed: a multiple
    /// ack overtaken by a higher one would name a tag already settled, which the broker
    /// answers by closing the channel.
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Received and not yet finished.
    outstanding: BTreeSet<u64>,
    /// Finished, being acknowledged (only ever non-empty inside `ack`).
    finished: BTreeSet<u64>,
}

/// The right (and duty) to settle one received job.
pub struct Settlement {
    pub tag: u64,
    tracker: Arc<AckTracker>,
}

impl AckTracker {
    pub fn new(channel: Channel) -> Arc<Self> {
        Arc::new(Self {
            channel,
            state: tokio::sync::Mutex::default(),
        })
    }

    /// Records a received job, in delivery order, before it is handed to a task.
    pub async fn received(self: &Arc<Self>, tag: u64) -> Settlement {
        self.state.lock().await.outstanding.insert(tag);
        Settlement {
            tag,
            tracker: self.clone(),
        }
    }

    /// Acknowledges finished jobs: every finished job below the oldest unfinished one
    /// is settled by one multiple ack on the highest of them; finished jobs above it
    /// (overtaking a slow one) are acknowledged one by one, so a slow job never holds
    /// back the others' acknowledgement (and with it the prefetch window).
    pub async fn ack(&self, tags: impl IntoIterator<Item = u64>) {
        let mut state = self.state.lock().await;
        for tag in tags {
            if state.outstanding.remove(&tag) {
                state.finished.insert(tag);
            }
        }
        let limit = state.outstanding.first().copied().unwrap_or(u64::MAX);
        // A multiple ack must name a tag the broker still holds unacknowledged: the
        // highest finished tag below the oldest unfinished one.
        let through = state.finished.range(..limit).next_back().copied();
        let above = match through {
            Some(through) => state.finished.split_off(&(through + 1)),
            None => std::mem::take(&mut state.finished),
        };
        state.finished.clear();
        if let Some(through) = through {
            if let Err(error) = self
                .channel
                .basic_ack(through, BasicAckOptions { multiple: true })
                .await
            {
                tracing::warn!(%error, "cannot acknowledge messages; the broker will redeliver them");
            }
        }
        for tag in above {
            if let Err(error) = self
                .channel
                .basic_ack(tag, BasicAckOptions { multiple: false })
                .await
            {
                tracing::warn!(%error, "cannot acknowledge a message; the broker will redeliver it");
            }
        }
    }

    /// Hands a job back to the broker to be delivered again.
    pub async fn requeue(&self, tag: u64) {
        {
            let mut state = self.state.lock().await;
            state.outstanding.remove(&tag);
            let options = BasicNackOptions {
                requeue: true,
                multiple: false,
            };
            if let Err(error) = self.channel.basic_nack(tag, options).await {
                tracing::warn!(%error, "cannot requeue a message; the broker will redeliver it");
            }
        }
        // Jobs finished after this one may now be acknowledgeable.
        self.ack([]).await;
    }
}

impl Settlement {
    pub async fn ack(self) {
        self.tracker.ack([self.tag]).await;
    }

    pub async fn requeue(self) {
        self.tracker.requeue(self.tag).await;
    }

    pub fn tracker(&self) -> &Arc<AckTracker> {
        &self.tracker
    }
}
