//! Where the CPU goes during a workload: CPU seconds per group of processes (RabbitMQ,
//! Postgres, each of our roles, the benchmark itself with its receiver), read from
//! /proc (through the harness's reader), so the report can say what bounds a figure.

use std::collections::BTreeMap;

/// CPU seconds used so far, per group.
pub type Snapshot = BTreeMap<String, f64>;

pub fn snapshot(ours: &[(String, u32)]) -> Snapshot {
    let me = std::process::id();
    let mut out = Snapshot::new();
    for pid in qr3_testkit::procfs::pids() {
        let Some(cpu) = qr3_testkit::procfs::cpu_time(pid) else {
            continue;
        };
        let comm = cpu.comm.as_str();
        let group = if pid == me {
            "bench (publisher + receiver)".to_owned()
        } else if let Some((name, _)) = ours.iter().find(|(_, p)| *p == pid) {
            name.clone()
        } else if comm.starts_with("beam") || comm == "erl_child_setup" {
            "rabbitmq".to_owned()
        } else if comm == "postgres" {
            "postgres".to_owned()
        } else {
            continue;
        };
        *out.entry(group).or_default() += cpu.seconds;
    }
    out
}

/// Cores used per group between two snapshots taken `seconds` apart.
pub fn cores(before: &Snapshot, after: &Snapshot, seconds: f64) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(group, total)| {
            (
                group.clone(),
                (total - before.get(group).copied().unwrap_or(0.0)) / seconds.max(1e-9),
            )
        })
        .collect()
}
