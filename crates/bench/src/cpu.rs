//! Where the CPU goes during a workload: CPU seconds per group of processes (RabbitMQ,
//! Postgres, each of our roles, the benchmark itself with its receiver), read from
//! /proc, so the report can say what bounds a figure.

use std::collections::BTreeMap;

/// CPU seconds used so far, per group.
pub type Snapshot = BTreeMap<String, f64>;

pub fn snapshot(ours: &[(String, u32)]) -> Snapshot {
    let ticks = 100.0; // USER_HZ on Linux
    let me = std::process::id();
    let mut out = Snapshot::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // comm is in parentheses and may contain spaces: split after the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|(_, c)| c).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else {
            continue;
        };
        let seconds =
            (utime.parse::<f64>().unwrap_or(0.0) + stime.parse::<f64>().unwrap_or(0.0)) / ticks;
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
        *out.entry(group).or_default() += seconds;
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
