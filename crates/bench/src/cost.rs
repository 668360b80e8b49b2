//! What one delivery costs during a workload: the CPU time of each process group per
//! delivery (from /proc, like `cpu`), and what Postgres wrote for it: the growth of
//! every table with its indexes and TOAST (`pg_total_relation_size`, the delivery log's
//! partitions apart), and the WAL written (`pg_current_wal_lsn()` before and after).
//!
//! WAL positions are the whole server's: anything else writing to the same Postgres
//! during the workload is counted too, so the WAL figure is an upper bound on a shared
//! machine.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::cpu::{self, Snapshot};

/// The relations of the delivery log: the attempts and the payloads they share, every
/// partition of each, in both the V8 tables (`delivery_log…`) and the older ones.
const LOG_TABLES: &str =
    "(c.relname LIKE 'delivery\\_attempts%' OR c.relname LIKE 'event\\_payloads%' \
     OR c.relname LIKE 'delivery\\_log%')";

/// Postgres's sizes at one moment.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    log_bytes: i64,
    table_bytes: i64,
    log_rows: i64,
    wal: f64,
}

/// One workload's cost, per delivery.
#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub workload: String,
    pub deliveries: usize,
    /// CPU microseconds per delivery of each process group (our roles by process name,
    /// `rabbitmq`, `postgres`, the benchmark itself).
    pub cpu_us: BTreeMap<String, f64>,
    /// The sum over our own processes (senders, ingests, API).
    pub qr3_cpu_us: f64,
    /// Growth of the delivery log's tables and indexes (attempts and payloads, all
    /// partitions), per delivery.
    pub log_bytes: f64,
    /// Growth of every table with its indexes (the log, ingest claims, webhooks…).
    pub table_bytes: f64,
    /// WAL written by the whole server, per delivery.
    pub wal_bytes: f64,
}

/// Opened before a workload, finished after it.
pub struct Probe {
    client: tokio_postgres::Client,
    pids: Vec<(String, u32)>,
    cpu: Snapshot,
    sizes: Sizes,
}

impl Probe {
    pub async fn start(db_url: &str, pids: &[(String, u32)]) -> anyhow::Result<Self> {
        let client = qr3_store::connect_once(db_url)
            .await
            .context("cannot connect to measure Postgres")?;
        let sizes = sizes(&client).await?;
        Ok(Self {
            client,
            pids: pids.to_vec(),
            cpu: cpu::snapshot(pids),
            sizes,
        })
    }

    /// The cost of what happened since `start`, over `deliveries`. Waits first (3 s at
    /// most) for the delivery log to stop growing: the senders' last batches.
    pub async fn finish(self, workload: &str, deliveries: usize) -> anyhow::Result<Cost> {
        let started = Instant::now();
        let mut last = sizes(&self.client).await?;
        while started.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = sizes(&self.client).await?;
            let still = now.log_rows == last.log_rows;
            last = now;
            if still {
                break;
            }
        }
        let cpu_after = cpu::snapshot(&self.pids);
        let n = deliveries.max(1) as f64;
        let cpu_us: BTreeMap<String, f64> = cpu_after
            .iter()
            .map(|(group, total)| {
                let before = self.cpu.get(group).copied().unwrap_or(0.0);
                (group.clone(), (total - before) * 1e6 / n)
            })
            .collect();
        let qr3_cpu_us = cpu_us
            .iter()
            .filter(|(group, _)| self.pids.iter().any(|(name, _)| name == *group))
            .map(|(_, us)| us)
            .sum();
        Ok(Cost {
            workload: workload.to_owned(),
            deliveries,
            cpu_us,
            qr3_cpu_us,
            log_bytes: (last.log_bytes - self.sizes.log_bytes) as f64 / n,
            table_bytes: (last.table_bytes - self.sizes.table_bytes) as f64 / n,
            wal_bytes: (last.wal - self.sizes.wal) / n,
        })
    }
}

async fn sizes(client: &tokio_postgres::Client) -> anyhow::Result<Sizes> {
    let row = client
        .query_one(
            &format!(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)) FILTER (WHERE {LOG_TABLES}), 0)::int8,
                        coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8,
                        pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'public' AND c.relkind = 'r'"
            ),
            &[],
        )
        .await
        .context("cannot read table sizes")?;
    // The row count tells when the senders' last batches are in.
    let rows: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM delivery_attempts) + (SELECT count(*) FROM delivery_log)",
            &[],
        )
        .await
        .context("cannot count the delivery log")?
        .get(0);
    Ok(Sizes {
        log_bytes: row.get(0),
        table_bytes: row.get(1),
        log_rows: rows,
        wal: row.get(2),
    })
}
