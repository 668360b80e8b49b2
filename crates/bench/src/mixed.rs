//! W6: 1,000 webhooks with a realistic receiver mix under a steady stream of events.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt, TryStreamExt};

use crate::behaviour::Behaviour;
use crate::procs::Proc;
use crate::report::{LatencyClass, Mixed};
use crate::workloads::{create_webhook, event, sender_counts, wait_for_arrivals, Rig, Workspace};
use crate::Sizes;

/// W6's webhooks.
pub const WEBHOOKS: usize = 1_000;
/// The receiver index of W6's first webhook (clear of the other workloads' indexes).
const FIRST_INDEX: usize = 1_000;
/// The healthy latency classes (milliseconds), each with its share in percent.
pub const CLASSES: [(u64, usize); 3] = [(20, 50), (200, 30), (1_000, 15)];
/// The share (percent) answering 500 at once; the remaining 1 % hang.
const FAILING_PERCENT: usize = 4;

/// The behaviour of W6's `i`-th webhook: the mix is laid out per hundred, so every
/// hundred consecutive webhooks hold it exactly.
fn behaviour(i: usize) -> Behaviour {
    let mut slot = i % 100;
    for (delay_ms, percent) in CLASSES {
        if slot < percent {
            return Behaviour::Answer {
                status: 200,
                delay_ms,
            };
        }
        slot -= percent;
    }
    if slot < FAILING_PERCENT {
        Behaviour::Answer {
            status: 500,
            delay_ms: 0,
        }
    } else {
        Behaviour::Hang
    }
}

/// Creates W6's webhooks in `ws`, gives each receiver path its behaviour, publishes
/// `w6_rate` events per second for `w6_seconds` (every event goes to all 1,000) and
/// measures what the healthy webhooks received.
pub async fn run(
    rig: Rig<'_>,
    api: &str,
    ws: &Workspace,
    procs: &[Proc],
    sizes: Sizes,
) -> anyhow::Result<Mixed> {
    let receiver = rig.receiver;
    {
        let mut behaviours = receiver.log.behaviours.lock().expect("lock");
        for i in 0..WEBHOOKS {
            behaviours.insert(FIRST_INDEX + i, behaviour(i));
        }
    }
    stream::iter(0..WEBHOOKS)
        .map(|i| {
            let url = receiver.url(FIRST_INDEX + i);
            async move { create_webhook(api, ws, &url, &["*"]).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let latency_of = |index: usize| match index.checked_sub(FIRST_INDEX).map(behaviour) {
        Some(Behaviour::Answer {
            status: 200,
            delay_ms,
        }) if index < FIRST_INDEX + WEBHOOKS => Some(delay_ms),
        _ => None,
    };
    let healthy_per_event = (0..WEBHOOKS)
        .filter(|i| latency_of(FIRST_INDEX + i).is_some())
        .count();

    let counts = sender_counts(procs).await;
    let start_index = receiver.log.count();
    let events = sizes.w6_rate * sizes.w6_seconds as usize;
    let expected = events * healthy_per_event;
    let mut published: HashMap<String, Instant> = HashMap::with_capacity(events);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / sizes.w6_rate as u32);
    let started = Instant::now();
    for n in 0..events {
        tick.tick().await;
        let id = format!("evt_w6_{n}");
        let message = event(rig.exchange, ws, &id);
        published.insert(id, Instant::now());
        rig.publisher
            .publish_all(std::slice::from_ref(&message))
            .await?;
    }
    wait_for_arrivals(receiver, start_index, expected, |i| latency_of(i).is_some()).await;
    let arrivals: Vec<(usize, String, Instant)> =
        receiver.log.arrivals.lock().expect("lock")[start_index..].to_vec();
    let after = sender_counts(procs).await;

    // Receipt is the end of the receiver's answer: arrival plus its own latency.
    let mut samples: HashMap<u64, Vec<f64>> = HashMap::new();
    let mut distinct: HashSet<(usize, &str)> = HashSet::new();
    let mut healthy_arrivals = 0;
    let mut failing_requests = 0;
    let mut end = started;
    for (index, id, at) in &arrivals {
        let Some(delay_ms) = latency_of(*index) else {
            if (FIRST_INDEX..FIRST_INDEX + WEBHOOKS).contains(index) {
                failing_requests += 1;
            }
            continue;
        };
        healthy_arrivals += 1;
        end = end.max(*at);
        let Some(sent) = published.get(id) else {
            continue;
        };
        if distinct.insert((*index, id.as_str())) {
            let receipt = (*at - *sent).as_secs_f64() * 1000.0 + delay_ms as f64;
            samples.entry(delay_ms).or_default().push(receipt);
        }
    }
    let classes = CLASSES
        .iter()
        .map(|(latency_ms, percent)| {
            let mut s = samples.remove(latency_ms).unwrap_or_default();
            s.sort_by(f64::total_cmp);
            let webhooks = WEBHOOKS * percent / 100;
            LatencyClass {
                latency_ms: *latency_ms,
                webhooks,
                expected: webhooks * events,
                delivered: s.len(),
                p50_ms: crate::report::percentile(&s, 0.50),
                p99_ms: crate::report::percentile(&s, 0.99),
                max_ms: s.last().copied().unwrap_or(f64::NAN),
            }
        })
        .collect();
    let seconds = (end - started).as_secs_f64();
    Ok(Mixed {
        webhooks: WEBHOOKS,
        rate_per_s: sizes.w6_rate,
        seconds: sizes.w6_seconds,
        events,
        healthy_expected: expected,
        healthy_delivered: distinct.len(),
        healthy_duplicates: healthy_arrivals - distinct.len(),
        healthy_deliveries_per_s: distinct.len() as f64 / seconds,
        classes,
        failing_requests,
        sender_parked: after[0].saturating_sub(counts[0]),
        sender_skipped: after[1].saturating_sub(counts[1]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hundred_webhooks_hold_the_mix() {
        let mix: Vec<Behaviour> = (300..400).map(behaviour).collect();
        let answering = |delay: u64, code: u16| {
            mix.iter()
                .filter(|b| {
                    **b == Behaviour::Answer {
                        status: code,
                        delay_ms: delay,
                    }
                })
                .count()
        };
        assert_eq!(answering(20, 200), 50);
        assert_eq!(answering(200, 200), 30);
        assert_eq!(answering(1_000, 200), 15);
        assert_eq!(answering(0, 500), 4);
        assert_eq!(mix.iter().filter(|b| **b == Behaviour::Hang).count(), 1);
    }
}
