//! The broker's nodes: `amqp.url` names one node or the nodes of a cluster, and every
//! connection starts at a rotating node so that replicas spread over the cluster and a
//! reconnection tries another node first.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use lapin::uri::AMQPUri;

/// The node URLs of one broker (a single node, a cluster, or one load-balanced
/// endpoint), in the order configured.
#[derive(Clone)]
pub struct Nodes {
    urls: Vec<String>,
    /// `host:port` of each node: what logs may show (URLs may hold passwords).
    addresses: Vec<String>,
}

/// Why `amqp.url` names no usable node. Never holds the URL itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodesError {
    #[error("amqp.url names no node")]
    Empty,
    #[error("amqp.url entry {0} is not an amqp:// or amqps:// URL")]
    Invalid(usize),
}

impl Nodes {
    /// Parses one URL or a comma-separated list of them (blank entries are ignored).
    pub fn parse(list: &str) -> Result<Self, NodesError> {
        let mut urls = Vec::new();
        let mut addresses = Vec::new();
        for (i, url) in list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .enumerate()
        {
            let parsed: AMQPUri = url.parse().map_err(|_| NodesError::Invalid(i + 1))?;
            if parsed.authority.host.is_empty() {
                return Err(NodesError::Invalid(i + 1));
            }
            addresses.push(format!(
                "{}:{}",
                parsed.authority.host, parsed.authority.port
            ));
            urls.push(url.to_owned());
        }
        if urls.is_empty() {
            return Err(NodesError::Empty);
        }
        Ok(Self { urls, addresses })
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The URL of node `i` (holds credentials: never log it).
    pub fn url(&self, i: usize) -> &str {
        &self.urls[i]
    }

    /// `host:port` of node `i`, for logs.
    pub fn address(&self, i: usize) -> &str {
        &self.addresses[i]
    }

    /// Every node's `host:port`, comma-separated, for logs.
    pub fn addresses(&self) -> String {
        self.addresses.join(", ")
    }

    /// The order in which the next connection tries the nodes: every node once,
    /// starting at a process-wide rotating offset (random at start-up), so that the
    /// processes of a deployment spread over the cluster and each new connection of a
    /// process starts one node further than the last.
    pub fn order(&self) -> impl Iterator<Item = usize> + '_ {
        let start = next_start() % self.len();
        (0..self.len()).map(move |k| (start + k) % self.len())
    }
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nodes")
            .field("addresses", &self.addresses)
            .finish()
    }
}

/// The rotating offset: random at the first call, then one more at each.
fn next_start() -> usize {
    static NEXT: OnceLock<AtomicUsize> = OnceLock::new();
    NEXT.get_or_init(|| {
        // `RandomState` is seeded from the operating system's randomness.
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        AtomicUsize::new(seed as usize % 1024)
    })
    .fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_one_url_or_a_list_and_shows_only_host_and_port() {
        let one = Nodes::parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one.address(0), "127.0.0.1:5672");
        let list = Nodes::parse(
            "amqp://u:s3cret@rabbit-0:5672/%2f, amqps://u:s3cret@rabbit-1/%2f,,amqp://rabbit-2:5673",
        )
        .unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(
            list.addresses(),
            "rabbit-0:5672, rabbit-1:5671, rabbit-2:5673"
        );
        assert_eq!(list.url(1), "amqps://u:s3cret@rabbit-1/%2f");
        assert!(!format!("{list:?}").contains("s3cret"));
    }

    #[test]
    fn refuses_an_empty_list_or_a_non_amqp_entry_without_showing_it() {
        assert_eq!(Nodes::parse(" , ").unwrap_err(), NodesError::Empty);
        let error = Nodes::parse("amqp://h:1/%2f,http://u:s3cret@h:2/").unwrap_err();
        assert_eq!(error, NodesError::Invalid(2));
        assert!(!error.to_string().contains("s3cret"));
        assert_eq!(
            Nodes::parse("not a url").unwrap_err(),
            NodesError::Invalid(1)
        );
    }

    #[test]
    fn every_connection_tries_each_node_once_starting_one_further() {
        let nodes = Nodes::parse("amqp://a,amqp://b,amqp://c").unwrap();
        let first: Vec<usize> = nodes.order().collect();
        let second: Vec<usize> = nodes.order().collect();
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2]);
        assert_eq!(first[1], (first[0] + 1) % 3);
        // No other unit test connects, so nothing takes an offset in between.
        assert_eq!(second[0], (first[0] + 1) % 3);
    }
}
