//! The roles' own figures as the benchmark reads them: counters and gauges on each
//! process's /metrics. The processes themselves are the deployment harness's
//! ([`qr3_testkit::Process`], called `Proc` here).

pub use qr3_testkit::Process as Proc;

/// The sum of every series of each counter in `names` on a process's /metrics (0 for a
/// counter not exported yet, or when the process does not answer).
pub async fn counters(metrics: &str, names: &[&str]) -> Vec<f64> {
    let text = match reqwest::get(metrics).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    names
        .iter()
        .map(|name| {
            text.lines()
                .filter(|line| {
                    line.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                })
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        })
        .collect()
}

/// The value of an unlabelled gauge on a process's /metrics; `None` when the process
/// does not answer or does not export it.
pub async fn gauge(metrics: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(metrics).await.ok()?.text().await.ok()?;
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
