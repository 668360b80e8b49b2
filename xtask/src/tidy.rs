//! `cargo xtask tidy`: checks that keep the documentation from drifting from the code.
//!
//! - Every module (`crates/*/src/**.rs`) is named in docs/ARCHITECTURE.md's code map,
//!   in its crate's section: `name.rs` (or `dir/name.rs`), a `mod.rs` by its directory
//!   (`dir/`), a crate root (`lib.rs`, `main.rs`) by the section itself.
//! - Every configuration key a doc names (`section.key` in backticks, in docs/*.md and
//!   README.md) exists: in the embedded defaults, or else `Settings` accepts it (the
//!   config crate denies unknown keys, so its own deserializer is the judge).
//! - Every metric a doc names (`qr3_…` in backticks) is registered by
//!   crates/telemetry (`_bucket`, `_sum` and `_count` of a histogram included).
//! - No attribute allowing clippy's `too_many_arguments` lint anywhere: pass a struct.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

pub fn tidy(root: &Path) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    problems.extend(code_map(root)?);
    problems.extend(doc_names(root)?);
    problems.extend(forbidden_allows(root)?);
    if problems.is_empty() {
        println!("tidy: ok");
        return Ok(());
    }
    for problem in &problems {
        eprintln!("tidy: {problem}");
    }
    bail!("tidy found {} problem(s)", problems.len())
}

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn crates(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root.join("crates"))? {
        let entry = entry?;
        if entry.path().join("src").is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The text of ARCHITECTURE.md's section for `crates/<name>`, up to the next `### `.
fn section<'a>(architecture: &'a str, name: &str) -> Option<&'a str> {
    let heading = format!("### `crates/{name}`");
    let start = architecture.find(&heading)?;
    let rest = &architecture[start + heading.len()..];
    let end = rest
        .find("\n### ")
        .or_else(|| rest.find("\n## "))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

fn code_map(root: &Path) -> anyhow::Result<Vec<String>> {
    let architecture = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md"))?;
    let mut problems = Vec::new();
    for name in crates(root)? {
        let Some(text) = section(&architecture, &name) else {
            problems.push(format!(
                "docs/ARCHITECTURE.md has no section `crates/{name}`"
            ));
            continue;
        };
        let src = root.join("crates").join(&name).join("src");
        for file in rust_files(&src)? {
            let relative = file
                .strip_prefix(&src)?
                .to_string_lossy()
                .replace('\\', "/");
            if !module_named(text, &relative) {
                problems.push(format!(
                    "crates/{name}/src/{relative} is not in docs/ARCHITECTURE.md's code map (section `crates/{name}`)"
                ));
            }
        }
    }
    Ok(problems)
}

/// Whether a crate's section names the module at `relative` (from its `src/`).
fn module_named(section: &str, relative: &str) -> bool {
    if relative == "lib.rs" || relative == "main.rs" {
        return true;
    }
    let mut parts: Vec<&str> = relative.split('/').collect();
    let file = parts.pop().expect("a path has a file name");
    if file == "mod.rs" {
        let Some(dir) = parts.last() else {
            return false;
        };
        return section.contains(&format!("{dir}/")) || section.contains(&format!("`{dir}`"));
    }
    // `name.rs` as a word: not the tail of a longer name (`x_name.rs`).
    section.match_indices(file).any(|(at, _)| {
        section[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
    })
}

/// Spans between backticks in `text` (inline code), and code blocks' lines.
fn code_spans(text: &str) -> Vec<&str> {
    let mut spans = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            spans.push(line);
            continue;
        }
        let mut pieces = line.split('`');
        pieces.next();
        while let Some(inside) = pieces.next() {
            spans.push(inside);
            pieces.next();
        }
    }
    spans
}

/// Names in a span: runs of `[a-z0-9_.]` that stand alone. A run that continues a
/// longer name (after `>`, `.`, `-`, `/`, `:`, `<`, `{`, or before `::`, `(`, `<`, `*`,
/// `/`, `-`) is a path, a queue name, a call or a pattern, not a key or a metric.
fn words(span: &str) -> impl Iterator<Item = &str> {
    let is_name = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.';
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in span
        .char_indices()
        .chain(std::iter::once((span.len(), ' ')))
    {
        match (start, is_name(c)) {
            (None, true) => start = Some(i),
            (Some(from), false) => {
                start = None;
                let before = span[..from].chars().next_back();
                let after = &span[i..];
                let joined = before
                    .is_some_and(|b| ">.-/:<{A".contains(b) || b.is_ascii_uppercase())
                    || after.starts_with("::")
                    || after.starts_with(['(', '<', '*', '/', '-']);
                let word = span[from..i].trim_end_matches('.');
                if !joined && !word.is_empty() && !word.starts_with('.') {
                    out.push(word);
                }
            }
            _ => {}
        }
    }
    out.into_iter()
}

const FILE_EXTENSIONS: &[&str] = &[
    "rs", "md", "toml", "json", "sql", "sh", "yaml", "yml", "svg", "txt", "html", "js", "py",
    "lock", "conf", "csv", "log", "pem", "key",
];

fn doc_names(root: &Path) -> anyhow::Result<Vec<String>> {
    let defaults: toml::Table = qr3_config::DEFAULTS_TOML
        .parse()
        .context("the embedded defaults are TOML")?;
    let sections: BTreeSet<&str> = defaults.keys().map(String::as_str).collect();
    let metrics = registered_metrics(root)?;
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.push(root.join("README.md"));
    docs.sort();
    let mut problems = BTreeSet::new();
    for doc in docs {
        let text = std::fs::read_to_string(&doc)?;
        let shown = doc.strip_prefix(root)?.display().to_string();
        for span in code_spans(&text) {
            for word in words(span) {
                if let Some(metric) = word.strip_prefix("qr3_") {
                    // `qr3_sender=debug` is a log target, not a metric.
                    let target = span.contains(&format!("{word}="));
                    if !metric.is_empty()
                        && !metric.ends_with('_')
                        && !target
                        && !is_metric(&metrics, word)
                    {
                        problems.insert(format!(
                            "{shown} names metric `{word}`, which is not registered"
                        ));
                    }
                    continue;
                }
                let Some((section, key)) = word.split_once('.') else {
                    continue;
                };
                if !sections.contains(section)
                    || key.contains('.')
                    || key.is_empty()
                    || FILE_EXTENSIONS.contains(&key)
                {
                    continue;
                }
                if !is_config_key(&defaults, section, key) {
                    problems.insert(format!(
                        "{shown} names configuration key `{word}`, which does not exist"
                    ));
                }
            }
        }
    }
    Ok(problems.into_iter().collect())
}

/// A key of the defaults, or one `Settings` accepts (keys without a default, such as
/// `secrets.encryption_key`): an unknown key is refused as an "unknown field".
fn is_config_key(defaults: &toml::Table, section: &str, key: &str) -> bool {
    if defaults
        .get(section)
        .and_then(|s| s.as_table())
        .is_some_and(|s| s.contains_key(key))
    {
        return true;
    }
    let mut with_key = defaults.clone();
    if let Some(table) = with_key.get_mut(section).and_then(|s| s.as_table_mut()) {
        table.insert(key.to_owned(), toml::Value::String(String::new()));
    }
    match toml::Value::Table(with_key).try_into::<qr3_config::Settings>() {
        Ok(_) => true,
        Err(error) => !error.to_string().contains("unknown field"),
    }
}

/// Metric names registered in crates/telemetry: what a fresh `Metrics` registry
/// exports (the process collector and every metric without labels), and the
/// `"qr3_…"` literals of its non-test code (the labelled ones, which export nothing
/// until a first series exists).
fn registered_metrics(root: &Path) -> anyhow::Result<BTreeSet<String>> {
    let mut names: BTreeSet<String> = qr3_telemetry::Metrics::new()
        .registry()
        .gather()
        .iter()
        .map(|family| family.name().to_owned())
        .collect();
    for file in rust_files(&root.join("crates/telemetry/src"))? {
        let text = std::fs::read_to_string(&file)?;
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for literal in code.split('"').skip(1).step_by(2) {
            if literal.starts_with("qr3_")
                && literal
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                names.insert(literal.to_owned());
            }
        }
    }
    if names.len() < 10 {
        bail!(
            "found only {} metrics in crates/telemetry: the tidy check needs fixing",
            names.len()
        );
    }
    Ok(names)
}

fn is_metric(metrics: &BTreeSet<String>, name: &str) -> bool {
    metrics.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| metrics.contains(base))
        })
}

fn forbidden_allows(root: &Path) -> anyhow::Result<Vec<String>> {
    // Spelt in two pieces so that this file does not match itself.
    let needle = format!("clippy::{}", "too_many_arguments");
    let mut problems = Vec::new();
    for dir in ["crates", "xtask"] {
        for file in rust_files(&root.join(dir))? {
            let text = std::fs::read_to_string(&file)?;
            let attribute = |l: &str| {
                let l = l.trim_start();
                (l.starts_with("#[allow(") || l.starts_with("#![allow(")) && l.contains(&needle)
            };
            if text.lines().any(attribute) {
                problems.push(format!(
                    "{} allows {needle}: pass a struct instead",
                    file.strip_prefix(root)?.display()
                ));
            }
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_is_named_by_its_file_or_its_directory() {
        let section = "`store.rs` holds it; `dead_letters/` the rest; see routes/admin/ too";
        assert!(module_named(section, "store.rs"));
        assert!(module_named(section, "lib.rs"));
        assert!(module_named(section, "dead_letters/mod.rs"));
        assert!(module_named(section, "routes/admin/mod.rs"));
        assert!(
            !module_named(section, "re.rs"),
            "not the tail of a longer name"
        );
        assert!(!module_named(section, "other/mod.rs"));
    }

    #[test]
    fn keys_come_from_the_config_crate_and_metrics_from_telemetry() {
        let defaults: toml::Table = qr3_config::DEFAULTS_TOML.parse().unwrap();
        assert!(is_config_key(&defaults, "delivery", "timeout_ms"));
        assert!(
            is_config_key(&defaults, "secrets", "encryption_key"),
            "no default, still a key"
        );
        assert!(is_config_key(&defaults, "api", "admin_token"));
        assert!(!is_config_key(&defaults, "delivery", "no_such_key"));
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let metrics = registered_metrics(root).unwrap();
        assert!(is_metric(&metrics, "qr3_deliveries_deferred_total"));
        assert!(is_metric(&metrics, "qr3_log_batch_size_count"));
        assert!(!is_metric(&metrics, "qr3_no_such_metric"));
    }

    #[test]
    fn only_code_spans_are_read() {
        let text = "a `delivery.x` b ingest.rs `c`\n```sh\nrun --set api.y=1\n```\n";
        assert_eq!(code_spans(text), ["delivery.x", "c", "run --set api.y=1"]);
        assert_eq!(words("--set api.y=1").collect::<Vec<_>>(), ["api.y", "1"]);
        let names = |span| words(span).collect::<Vec<_>>();
        assert!(names("<prefix>.ingest.dead").is_empty(), "a queue name");
        assert!(names("qr3_broker::connect").is_empty(), "a crate path");
        assert!(
            names("qr3_ensure_delivery_partitions()").is_empty(),
            "a call"
        );
        assert_eq!(
            names("qr3_http_requests_total{route}"),
            ["qr3_http_requests_total"]
        );
        assert_eq!(
            names("delivery.defer_ms = 1000"),
            ["delivery.defer_ms", "1000"]
        );
    }
}
