//! Acknowledging consumed messages with as few frames as possible.
//!
//! A log batch finishes many jobs at once. Those below the oldest job still in flight
//! are settled by one `basic.ack` with `multiple`; those above it (they overtook a slow
//! job) are acknowledged one by one, so a slow receiver never holds back the others'
//! acknowledgements or the prefetch window. Requeues stay individual `basic.nack`s.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;

pub struct AckTracker {
    channel: Channel,
    /// Received and not yet finished. Never held across an await: registering a
    /// delivery never waits for acknowledgements being sent (a consumer that did could
    /// hold the turn of the lock below while the tasks sending them wait for it).
    outstanding: std::sync::Mutex<BTreeSet<u64>>,
    /// Held across sending, so acks leave in the order they were computed: a multiple
    /// ack overtaken by a higher one would name a tag already settled, which the broker
    /// answers by closing the channel.
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
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
            outstanding: std::sync::Mutex::default(),
            state: tokio::sync::Mutex::default(),
        })
    }

    /// Records a received job, in delivery order, before it is handed to a task. A tag
    /// registered while an `ack` is computed is above every finished one (tags grow in
    /// delivery order), so no multiple ack can cover it.
    pub fn received(self: &Arc<Self>, tag: u64) -> Settlement {
        self.outstanding().insert(tag);
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
        let limit = {
            let mut outstanding = self.outstanding();
            for tag in tags {
                if outstanding.remove(&tag) {
                    state.finished.insert(tag);
                }
            }
            outstanding.first().copied().unwrap_or(u64::MAX)
        };
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
        // One frame each, all queued before any is awaited: lapin queues a frame when
        // its future is first polled and resolves it once written, so awaiting them one
        // by one would cost a round through the I/O thread per job, which is what a
        // webhook hanging past the timeout (keeping the oldest tags outstanding) makes
        // the common case.
        let mut sends: Vec<_> = above
            .into_iter()
            .map(|tag| {
                Some(Box::pin(
                    self.channel
                        .basic_ack(tag, BasicAckOptions { multiple: false }),
                ))
            })
            .collect();
        let mut failures = 0usize;
        // The first poll, in tag order, queues every frame in that order.
        std::future::poll_fn(|cx| {
            for slot in sends.iter_mut() {
                if let Some(send) = slot {
                    if let std::task::Poll::Ready(result) = send.as_mut().poll(cx) {
                        failures += usize::from(result.is_err());
                        *slot = None;
                    }
                }
            }
            std::task::Poll::Ready(())
        })
        .await;
        for result in futures_util::future::join_all(sends.into_iter().flatten()).await {
            failures += usize::from(result.is_err());
        }
        if failures > 0 {
            tracing::warn!(
                failures,
                "cannot acknowledge messages; the broker will redeliver them"
            );
        }
    }

    fn outstanding(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.outstanding.lock().expect("never poisoned")
    }

    /// Hands a job back to the broker to be delivered again.
    pub async fn requeue(&self, tag: u64) {
        {
            let _sending = self.state.lock().await;
            self.outstanding().remove(&tag);
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
