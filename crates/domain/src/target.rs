//! Webhook target URLs and which addresses they may point at (SSRF protection).
//!
//! A URL is checked when it is registered (literal IPs and `localhost` names) and the
//! sender checks every resolved address again at connection time, so DNS rebinding does
//! not get through. [`is_forbidden_ip`] is the one definition both use.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// What targets a deployment accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetPolicy {
    /// `http://` is accepted only when this is false.
    pub require_https: bool,
    /// Loopback, private, link-local and other internal addresses are accepted only when
    /// this is true (local development and tests).
    pub allow_private: bool,
}

impl TargetPolicy {
    /// Whether this policy lets a webhook target `url`: its scheme (`https`, or `http`
    /// unless HTTPS is required), no credentials, a host, and not an internal one
    /// unless private targets are allowed. `WebhookUrl::parse` checks it on input; the
    /// sender again at send time, on the URL read back from storage.
    pub fn admits(&self, url: &WebhookUrl) -> Result<(), InvalidUrl> {
        let url = &url.0;
        match url.scheme() {
            "https" => {}
            "http" if !self.require_https => {}
            "http" => return Err(InvalidUrl::HttpsRequired),
            _ => return Err(InvalidUrl::Scheme),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(InvalidUrl::Credentials);
        }
        let host = url.host().ok_or(InvalidUrl::NoHost)?;
        if !self.allow_private && is_forbidden_host(&host) {
            return Err(InvalidUrl::PrivateTarget);
        }
        Ok(())
    }
}

impl Default for TargetPolicy {
    fn default() -> Self {
        Self {
            require_https: true,
            allow_private: false,
        }
    }
}

/// An absolute http(s) URL that passed the [`TargetPolicy`] it was parsed with.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl(Url);

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUrl {
    #[error("url must be an absolute URL: {0}")]
    Malformed(String),
    #[error("url must be at most {max} characters long")]
    TooLong { max: usize },
    #[error("url scheme must be https")]
    HttpsRequired,
    #[error("url scheme must be http or https")]
    Scheme,
    #[error("url must name a host")]
    NoHost,
    #[error("url must not contain credentials")]
    Credentials,
    #[error("url points at a private, loopback or otherwise internal address")]
    PrivateTarget,
}

impl WebhookUrl {
    pub const MAX_LEN: usize = 2048;

    pub fn parse(s: &str, policy: TargetPolicy) -> Result<Self, InvalidUrl> {
        if s.len() > Self::MAX_LEN {
            return Err(InvalidUrl::TooLong { max: Self::MAX_LEN });
        }
        let url = Self(Url::parse(s).map_err(|e| InvalidUrl::Malformed(e.to_string()))?);
        policy.admits(&url)?;
        Ok(url)
    }

    /// Re-validates a URL read back from storage; storage only holds parsed URLs.
    pub fn from_trusted(s: &str) -> Result<Self, InvalidUrl> {
        Url::parse(s)
            .map(Self)
            .map_err(|e| InvalidUrl::Malformed(e.to_string()))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn url(&self) -> &Url {
        &self.0
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({})", self.0.as_str())
    }
}

fn is_forbidden_host(host: &Host<&str>) -> bool {
    match host {
        Host::Ipv4(ip) => is_forbidden_ip(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => is_forbidden_ip(IpAddr::V6(*ip)),
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost"
                || name.ends_with(".localhost")
                || name.ends_with(".internal")
                || name == "metadata.google.internal"
        }
    }
}

/// Whether a webhook may never connect to `ip` (unless private targets are allowed):
/// unspecified, loopback, private, shared (CGNAT), link-local (including cloud metadata
/// at 169.254.169.254 and fd00:ec2::254), benchmarking, documentation, reserved,
/// broadcast and multicast ranges, unique-local and site-local IPv6, the IETF-reserved
/// `::/8` and `2001::/23`, and IPv6 forms that embed a forbidden IPv4 address
/// (IPv4-mapped, NAT64, 6to4).
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0                                   // "this network", 0.0.0.0/8
        || a == 10                           // private
        || a == 127                          // loopback
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64.0.0/10
        || (a == 169 && b == 254)            // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0)    // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)    // TEST-NET-1
        || (a == 192 && b == 88 && c == 99)  // 6to4 relay anycast
        || (a == 192 && b == 168)            // private
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113)  // TEST-NET-3
        || a >= 224 // multicast, reserved, broadcast
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_forbidden_v4(v4);
    }
    let seg = ip.segments();
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    // NAT64 64:ff9b::/96 and 6to4 2002::/16 embed an IPv4 address.
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6].iter().all(|&s| s == 0) {
        return is_forbidden_v4(embedded(seg[6], seg[7]));
    }
    if seg[0] == 0x2002 {
        return is_forbidden_v4(embedded(seg[1], seg[2]));
    }
    // The rest of the reserved ::/8: ::, ::1, IPv4-compatible ::a.b.c.d,
    // IPv4-translated ::ffff:0:a.b.c.d and local-use NAT64 64:ff9b:1::/48.
    if seg[0] & 0xff00 == 0 {
        return true;
    }
    (seg[0] & 0xfe00) == 0xfc00            // unique local fc00::/7 (AWS metadata fd00:ec2::254)
        || (seg[0] & 0xffc0) == 0xfe80     // link-local fe80::/10
        || (seg[0] & 0xffc0) == 0xfec0     // site-local fec0::/10 (deprecated)
        || (seg[0] & 0xff00) == 0xff00     // multicast
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        || (seg[0] == 0x2001 && seg[1] < 0x0200) // IETF protocol assignments 2001::/23 (Teredo, benchmarking, ORCHID)
        || (seg[0] == 0x0100 && seg[1..4].iter().all(|&s| s == 0)) // discard-only 100::/64
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: TargetPolicy = TargetPolicy {
        require_https: true,
        allow_private: false,
    };

    #[test]
    fn accepts_public_https() {
        assert!(WebhookUrl::parse("https://example.com/webhooks/qr3", STRICT).is_ok());
    }

    #[test]
    fn refuses_bad_urls() {
        assert_eq!(
            WebhookUrl::parse("http://example.com/", STRICT),
            Err(InvalidUrl::HttpsRequired)
        );
        assert_eq!(
            WebhookUrl::parse("ftp://example.com/", STRICT),
            Err(InvalidUrl::Scheme)
        );
        assert!(matches!(
            WebhookUrl::parse("/relative", STRICT),
            Err(InvalidUrl::Malformed(_))
        ));
        assert_eq!(
            WebhookUrl::parse("https://u:p@example.com/", STRICT),
            Err(InvalidUrl::Credentials)
        );
        let long = format!("https://example.com/{}", "a".repeat(2100));
        assert!(matches!(
            WebhookUrl::parse(&long, STRICT),
            Err(InvalidUrl::TooLong { .. })
        ));
    }

    #[test]
    fn refuses_internal_targets_in_every_spelling() {
        for url in [
            "https://127.0.0.1/",
            "https://localhost/",
            "https://api.localhost./",
            "https://10.1.2.3/",
            "https://172.16.0.1/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://224.0.0.1/",
            "https://2130706433/", // decimal 127.0.0.1
            "https://0x7f000001/", // hex 127.0.0.1
            "https://0177.0.0.1/", // octal 127.0.0.1
            "https://[::1]/",
            "https://[::]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:a9fe:a9fe]/",
            "https://[fd00:ec2::254]/",
            "https://[fe80::1]/",
            "https://[64:ff9b::a00:1]/",
            "https://[2002:c0a8:101::1]/",
            "https://metadata.google.internal/",
            "https://127.1/",  // short form of 127.0.0.1
            "https://0/",      // 0.0.0.0
            "https://0x7f.1/", // hex short form
            "https://LOCALHOST./",
            "https://%6c%6f%63alhost/",         // percent-encoded host
            "https://\u{ff4c}\u{ff4f}calhost/", // full-width letters, IDNA-mapped
            "https://255.255.255.255/",
            "https://[0:0:0:0:0:ffff:7f00:1]/",
            "https://[::ffff:0:7f00:1]/", // IPv4-translated
            "https://[::127.0.0.1]/",     // IPv4-compatible
            "https://[64:ff9b:1::a]/",    // local-use NAT64
            "https://[2001::1]/",         // Teredo
            "https://[ff02::1]/",
            "https://[fc00::1]/",
        ] {
            assert_eq!(
                WebhookUrl::parse(url, STRICT),
                Err(InvalidUrl::PrivateTarget),
                "{url}"
            );
        }
    }

    #[test]
    fn policy_can_allow_local_targets() {
        let dev = TargetPolicy {
            require_https: false,
            allow_private: true,
        };
        assert!(WebhookUrl::parse("http://127.0.0.1:9999/hook", dev).is_ok());
    }

    #[test]
    fn public_addresses_are_allowed() {
        assert!(!is_forbidden_ip("93.184.216.34".parse().unwrap()));
        assert!(!is_forbidden_ip(
            "2606:2800:220:1:248:1893:25c8:1946".parse().unwrap()
        ));
        assert!(!is_forbidden_ip("::ffff:93.184.216.34".parse().unwrap()));
        for ip in [
            "8.8.8.8",
            "2001:4860:4860::8888",
            "64:ff9b::5db8:d822", // NAT64 of a public address
            "2002:5db8:d822::1",  // 6to4 of a public address
        ] {
            assert!(!is_forbidden_ip(ip.parse().unwrap()), "{ip}");
        }
    }
}
