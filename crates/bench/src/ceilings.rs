//! Ceilings measured in the same run, each with nothing of ours in the way: the broker
//! alone (throughput, and the latency of the two broker hops every delivery takes), the
//! receiver alone, and Postgres alone on the attempt-log write path.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use qr3_broker::{Outgoing, Publisher};
use qr3_domain::Trigger;
use qr3_domain::{DeliveryId, EventId, EventType, Timestamp, WebhookId, WorkspaceId};
use qr3_store::{AttemptDetail, AttemptRecord, AttemptStatus, Store};

/// Persistent messages of `size` bytes through one quorum queue: published with
/// pipelined confirms (batches of 500) while one consumer with prefetch 512 acks each.
/// Messages per second, first publish to last ack.
pub async fn broker(url: &str, queue: &str, messages: usize, size: usize) -> anyhow::Result<f64> {
    let connection = qr3_broker::connect(url, "qr3-bench-ceiling").await?;
    let channel = connection.create_channel().await?;
    quorum_queue(&channel, queue).await?;
    channel.basic_qos(512, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumed = tokio::spawn(async move {
        let mut n = 0;
        while let Some(Ok(delivery)) = consumer.next().await {
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            n += 1;
            if n == messages {
                break;
            }
        }
        Instant::now()
    });
    let publisher = Publisher::open(&connection).await?;
    let message = Outgoing {
        exchange: String::new(),
        routing_key: queue.to_owned(),
        properties: BasicProperties::default().with_delivery_mode(2),
        body: vec![b'x'; size],
    };
    let batch = vec![message; 500];
    let started = Instant::now();
    let mut sent = 0;
    while sent < messages {
        let n = (messages - sent).min(batch.len());
        publisher.publish_all(&batch[..n]).await?;
        sent += n;
    }
    let finished = tokio::time::timeout(Duration::from_secs(300), consumed).await??;
    let _ = channel.queue_delete(queue.into(), Default::default()).await;
    let _ = connection.close(200, "done".into()).await;
    Ok(messages as f64 / (finished - started).as_secs_f64())
}

/// Declares a durable quorum queue named `queue`.
async fn quorum_queue(channel: &lapin::Channel, queue: &str) -> anyhow::Result<()> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    Ok(())
}

/// The broker's share of W3's latency: messages published at `rate` per second (a
/// confirmed batch every 10 ms, as W3 publishes events) to quorum queue `<queue>.a`,
/// where a relay republishes each one with a confirm to `<queue>.b` before acking it
/// (as ingest turns an event into a job), and a consumer of `<queue>.b` takes it (as a
/// sender does). Publish-to-consume milliseconds, sorted.
pub async fn broker_two_hops(
    url: &str,
    queue: &str,
    rate: usize,
    seconds: u64,
) -> anyhow::Result<Vec<f64>> {
    let (first, second) = (format!("{queue}.a"), format!("{queue}.b"));
    let connection = qr3_broker::connect(url, "qr3-bench-ceiling").await?;
    let channel = connection.create_channel().await?;
    quorum_queue(&channel, &first).await?;
    quorum_queue(&channel, &second).await?;
    let started = Instant::now();
    let total = rate * seconds as usize;

    // The relay: its own channel for consuming, a confirming publisher, one task per
    // message so confirms overlap as they do in ingest.
    let relay_channel = connection.create_channel().await?;
    relay_channel
        .basic_qos(512, BasicQosOptions::default())
        .await?;
    let mut relay_in = relay_channel
        .basic_consume(
            first.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let relay_out = Publisher::open(&connection).await?;
    let relay_to = second.clone();
    let relay = tokio::spawn(async move {
        while let Some(Ok(delivery)) = relay_in.next().await {
            let publisher = relay_out.clone();
            let message = Outgoing {
                exchange: String::new(),
                routing_key: relay_to.clone(),
                properties: BasicProperties::default().with_delivery_mode(2),
                body: delivery.data.clone(),
            };
            tokio::spawn(async move {
                if publisher.publish_all(&[message]).await.is_ok() {
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                }
            });
        }
    });

    let sink_channel = connection.create_channel().await?;
    sink_channel
        .basic_qos(512, BasicQosOptions::default())
        .await?;
    let mut sink = sink_channel
        .basic_consume(
            second.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumed = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(total);
        while let Some(Ok(delivery)) = sink.next().await {
            let sent_us: u64 = std::str::from_utf8(&delivery.data[..20])
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or_default();
            let now_us = started.elapsed().as_micros() as u64;
            latencies.push(now_us.saturating_sub(sent_us) as f64 / 1000.0);
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            if latencies.len() == total {
                break;
            }
        }
        latencies
    });

    let publisher = Publisher::open(&connection).await?;
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0;
    while sent < total {
        tick.tick().await;
        let n = per_tick.min(total - sent);
        let now_us = started.elapsed().as_micros() as u64;
        // The send time in the first 20 bytes, padded to an event's size.
        let mut body = format!("{now_us:>20}").into_bytes();
        body.resize(260, b'x');
        let message = Outgoing {
            exchange: String::new(),
            routing_key: first.clone(),
            properties: BasicProperties::default().with_delivery_mode(2),
            body,
        };
        publisher.publish_all(&vec![message; n]).await?;
        sent += n;
    }
    let mut latencies = tokio::time::timeout(Duration::from_secs(60), consumed).await??;
    relay.abort();
    for name in [&first, &second] {
        let _ = channel
            .queue_delete(name.as_str().into(), Default::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

/// POSTs of `body` to `url` from `concurrency` keep-alive clients. Requests per second.
pub async fn receiver(
    url: &str,
    requests: usize,
    concurrency: usize,
    body: Bytes,
) -> anyhow::Result<f64> {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(concurrency)
            .build_http();
    let remaining = Arc::new(AtomicUsize::new(requests));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, remaining, body, url) = (
            client.clone(),
            remaining.clone(),
            body.clone(),
            url.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            while remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let request = hyper::Request::post(&url)
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))
                    .expect("valid request");
                if let Ok(response) = client.request(request).await {
                    let _ = response.into_body().collect().await;
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok(requests as f64 / started.elapsed().as_secs_f64())
}

/// Attempt-log rows written through the store's batch path, one writer, `batch` rows
/// per transaction, as one sender writes them. Rows per second.
pub async fn postgres(store: &Store, rows: usize, batch: usize) -> anyhow::Result<f64> {
    let workspace = WorkspaceId::generate();
    let webhooks: Vec<WebhookId> = (0..10).map(|_| WebhookId::generate()).collect();
    let make = |i: usize| AttemptRecord {
        id: DeliveryId::generate(),
        webhook_id: webhooks[i % webhooks.len()].clone(),
        workspace_id: workspace.clone(),
        event_id: EventId::generate(),
        event_type: EventType::QrScanned,
        status: AttemptStatus::Success,
        status_code: Some(200),
        response_time_ms: 3,
        attempt: 1,
        trigger: Trigger::Event,
        error: None,
        created_at: Timestamp::now(),
        // The detail a sender logs with every attempt: its headers, a small payload and
        // a short response body.
        detail: Some(AttemptDetail {
            request_headers: (0..11)
                .map(|h| (format!("x-header-{h}"), "v".repeat(40)))
                .collect(),
            request_body: format!(
                r#"{{"id":"evt_{i}","type":"qr.scanned","data":{{"qr_id":"{}"}}}}"#,
                "q".repeat(120)
            ),
            response_body: Some("ok".into()),
        }),
    };
    let started = Instant::now();
    let mut written = 0;
    while written < rows {
        let n = (rows - written).min(batch);
        let records: Vec<AttemptRecord> = (written..written + n).map(make).collect();
        store.record_attempts(&records, 10).await?;
        written += n;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}
