//! Egress: where the requests a Canary's author controls may go (its checks, its webhooks and
//! its promotion webhook), so that a tenant cannot use canaryd's place in the network.
//!
//! Three rules, configured by the admin (`egress` in the daemon's config):
//! - **hosts**: a URL's host must match `egress.hosts` (`*.svc` matches any name ending in
//!   `.svc`, a name or an IP literal matches itself, `*` matches every host) or be the
//!   Canary's own `spec.prod.host` / `spec.stage.host`. Checked before any connection.
//! - **addresses**: unless `egress.allowPrivateAddresses`, loopback, link-local, cloud
//!   metadata and unspecified addresses (and their IPv4-mapped and NAT64 forms) are refused.
//!   An IP literal is checked before the request; a name is checked after resolution by the
//!   client's own resolver ([`EgressPolicy::client`]), which hands the connector only the
//!   addresses it allows, so no second lookup can rebind the name between check and connect.
//!   RFC 1918 addresses stay allowed: cluster services live there.
//! - **check methods**: a check may only use `egress.checkMethods` (GET and HEAD by default).
//!
//! The client follows no redirect (a 3xx is an answer like any other) and uses no proxy.
//! Messages never carry a response body, a URL's userinfo or its query ([`redact`]).

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// The most of a check's response body canaryd reads to look for `bodyContains`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// One entry of `egress.hosts`, or one of the Canary's own hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    /// `*`: every host.
    Any,
    /// `*.x`: names ending in `.x` (kept with its leading dot, lower case).
    Suffix(String),
    /// A name, lower case, without a trailing dot.
    Exact(String),
    /// An IP literal.
    Ip(IpAddr),
}

impl HostPattern {
    /// An `egress.hosts` entry; the error says what is wrong with it.
    fn parse(text: &str) -> Result<Self, String> {
        let raw = text.trim().to_ascii_lowercase();
        if raw == "*" {
            return Ok(Self::Any);
        }
        if let Ok(ip) = raw.trim_start_matches('[').trim_end_matches(']').parse() {
            return Ok(Self::Ip(ip));
        }
        // One trailing dot (the absolute form of a name) is the same name.
        let t = raw.strip_suffix('.').unwrap_or(&raw);
        let (suffix, name) = match t.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(format!(
                "\"{text}\" is not a host pattern; write a name (api.example.com), *.suffix \
                 (*.svc), an IP address or *"
            ));
        }
        Ok(if suffix {
            Self::Suffix(format!(".{name}"))
        } else {
            Self::Exact(name.to_string())
        })
    }

    /// A Canary's own host: only ever itself (a `*` in it is no wildcard).
    fn own(text: &str) -> Self {
        let t = text.trim().trim_end_matches('.').to_ascii_lowercase();
        match t.trim_start_matches('[').trim_end_matches(']').parse() {
            Ok(ip) => Self::Ip(ip),
            Err(_) => Self::Exact(t),
        }
    }

    fn matches(&self, host: &url::Host<&str>) -> bool {
        match (self, host) {
            (Self::Any, _) => true,
            (Self::Suffix(suffix), url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                d.len() > suffix.len() && d.ends_with(suffix.as_str())
            }
            (Self::Exact(name), url::Host::Domain(d)) => {
                d.trim_end_matches('.').eq_ignore_ascii_case(name)
            }
            (Self::Ip(ip), url::Host::Ipv4(a)) => *ip == IpAddr::V4(*a),
            (Self::Ip(ip), url::Host::Ipv6(a)) => *ip == IpAddr::V6(*a),
            _ => false,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Suffix(s) => write!(f, "*{s}"),
            Self::Exact(name) => f.write_str(name),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Checks one `egress.hosts` entry as the config loader does; the error says how to fix it.
pub fn check_host_pattern(text: &str) -> Result<(), String> {
    HostPattern::parse(text).map(|_| ())
}

/// The HTTP methods a check can have at all (an admin lists some of them in `egress.checkMethods`).
pub use crate::api::limits::CHECK_METHODS;

/// Why a request was not made. Each message names the host or method, the rule and the key
/// of canaryd's config that would allow it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the URL is not valid ({0})")]
    InvalidUrl(String),
    #[error("scheme {0} refused: only http and https")]
    Scheme(String),
    #[error("the URL has no host")]
    NoHost,
    #[error(
        "host {host} refused: it matches none of egress.hosts [{patterns}] in canaryd's config \
         and is not the Canary's prod or stage host; an admin adds it to egress.hosts"
    )]
    Host { host: String, patterns: String },
    #[error(
        "host {host} refused: {reason} address, and egress.allowPrivateAddresses is false in \
         canaryd's config; an admin sets it to true to allow such addresses"
    )]
    Address { host: String, reason: &'static str },
    #[error(
        "host {host} refused: it resolves only to refused addresses ({addresses}), and \
         egress.allowPrivateAddresses is false in canaryd's config; an admin sets it to true \
         to allow them"
    )]
    Resolved { host: String, addresses: String },
    #[error(
        "method {method} refused: it is not in egress.checkMethods [{allowed}] in canaryd's \
         config; an admin adds {method} there"
    )]
    Method { method: String, allowed: String },
}

/// The admin's egress rules, ready to check URLs and to build the client that enforces them
/// after resolution.
#[derive(Clone, Debug)]
pub struct EgressPolicy {
    hosts: Vec<HostPattern>,
    allow_private_addresses: bool,
    check_methods: Vec<String>,
}

impl Default for EgressPolicy {
    /// The defaults of `egress`: cluster services only, no private addresses, GET and HEAD.
    fn default() -> Self {
        crate::config::EgressConfig::default().policy()
    }
}

impl EgressPolicy {
    /// From `egress.hosts`, `egress.allowPrivateAddresses` and `egress.checkMethods`. Entries
    /// that are not valid patterns match nothing (the config loader refuses them first).
    pub fn new(hosts: &[String], allow_private_addresses: bool, check_methods: &[String]) -> Self {
        Self {
            hosts: hosts
                .iter()
                .filter_map(|h| HostPattern::parse(h).ok())
                .collect(),
            allow_private_addresses,
            check_methods: check_methods
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .collect(),
        }
    }

    pub fn allows_private_addresses(&self) -> bool {
        self.allow_private_addresses
    }

    /// The URL, parsed, when it may be requested: http(s), a host allowed by `egress.hosts`
    /// or among `own_hosts` (the Canary's prod and stage hosts), and, for an IP literal, an
    /// allowed address. A name's addresses are checked by [`Self::client`] when it resolves.
    pub fn check_url(&self, url: &str, own_hosts: &[String]) -> Result<url::Url, Refusal> {
        let parsed = url::Url::parse(url).map_err(|e| Refusal::InvalidUrl(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Refusal::Scheme(parsed.scheme().to_string()));
        }
        let host = parsed.host().ok_or(Refusal::NoHost)?;
        let shown = host.to_string();
        let allowed = self.hosts.iter().any(|p| p.matches(&host))
            || own_hosts.iter().any(|h| HostPattern::own(h).matches(&host));
        if !allowed {
            return Err(Refusal::Host {
                host: shown,
                patterns: self.patterns(),
            });
        }
        let ip = match host {
            url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
            url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
            url::Host::Domain(_) => None,
        };
        if let Some(reason) = ip.and_then(|ip| self.refused_address(ip)) {
            return Err(Refusal::Address {
                host: shown,
                reason,
            });
        }
        Ok(parsed)
    }

    /// The method of a check, when `egress.checkMethods` lists it.
    pub fn check_method(&self, method: &str) -> Result<reqwest::Method, Refusal> {
        let upper = method.to_ascii_uppercase();
        let refused = || Refusal::Method {
            method: upper.clone(),
            allowed: self.check_methods.join(", "),
        };
        if !self.check_methods.contains(&upper) {
            return Err(refused());
        }
        reqwest::Method::from_bytes(upper.as_bytes()).map_err(|_| refused())
    }

    /// Why `ip` is refused (`loopback`, `link-local`, ...), or `None` when it may be used.
    pub fn refused_address(&self, ip: IpAddr) -> Option<&'static str> {
        if self.allow_private_addresses {
            None
        } else {
            forbidden(ip)
        }
    }

    /// The HTTP client for checks and webhooks: its resolver drops refused addresses (and
    /// fails when none is left), it follows no redirect and uses no proxy.
    pub fn client(&self) -> reqwest::Client {
        crate::tls::http_client()
            .user_agent(concat!("canaryd/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(Resolver {
                allow_private_addresses: self.allow_private_addresses,
            }))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client with default settings")
    }

    fn patterns(&self) -> String {
        self.hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why an address is refused under `allowPrivateAddresses: false`.
fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => forbidden_v4(a),
        IpAddr::V6(a) => forbidden_v6(a),
    }
}

fn forbidden_v4(a: Ipv4Addr) -> Option<&'static str> {
    const METADATA: [Ipv4Addr; 2] = [
        Ipv4Addr::new(169, 254, 169, 254),
        Ipv4Addr::new(100, 100, 100, 200),
    ];
    if METADATA.contains(&a) {
        Some("cloud metadata")
    } else if a.is_loopback() {
        Some("loopback")
    } else if a.is_link_local() {
        Some("link-local")
    } else if a.octets()[0] == 0 {
        // 0.0.0.0/8: "this host"; Linux connects 0.0.0.0 to itself.
        Some("unspecified")
    } else {
        None
    }
}

fn forbidden_v6(a: Ipv6Addr) -> Option<&'static str> {
    const METADATA: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);
    if a == METADATA {
        return Some("cloud metadata");
    }
    if a.is_loopback() {
        return Some("loopback");
    }
    if a.is_unspecified() {
        return Some("unspecified");
    }
    if a.is_unicast_link_local() {
        return Some("link-local");
    }
    if let Some(v4) = a.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
    let s = a.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [x, y] = [s[6].to_be_bytes(), s[7].to_be_bytes()];
        return forbidden_v4(Ipv4Addr::new(x[0], x[1], y[0], y[1]));
    }
    None
}

/// Resolves with the system's resolver (tokio's `lookup_host`) and keeps only the addresses
/// the policy allows: the connector never sees another, so nothing can rebind in between.
struct Resolver {
    allow_private_addresses: bool,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private_addresses;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if allow_private {
                return Ok(Box::new(all.into_iter()) as reqwest::dns::Addrs);
            }
            let (kept, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
                all.into_iter().partition(|a| forbidden(a.ip()).is_none());
            if kept.is_empty() && !refused.is_empty() {
                let addresses = refused
                    .iter()
                    .map(|a| format!("{}: {}", a.ip(), forbidden(a.ip()).unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Box::new(Refusal::Resolved { host, addresses }) as _);
            }
            if !refused.is_empty() {
                tracing::debug!(%host, refused = refused.len(), "dropped refused addresses of a name");
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What went wrong with a request, for a message: the policy's refusal when it was one,
/// otherwise the error and its causes. Pass an error stripped of its URL
/// (`reqwest::Error::without_url`); no cause of a request error carries a response body.
pub fn describe(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(refusal) = e.downcast_ref::<Refusal>() {
            return refusal.to_string();
        }
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// A URL as messages and logs may show it: without userinfo, query and fragment (where
/// credentials and tokens live).
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.has_host() => {
            // Both fail only for URLs that cannot have them, which then have none.
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        _ => {
            // Not a URL with a host (a template, a typo, `user:pass@host` read as a scheme):
            // cut at the query or fragment, drop what precedes an `@` in the authority.
            let cut = url.find(['?', '#']).map_or(url, |i| &url[..i]);
            match cut.split_once("://") {
                Some((scheme, rest)) => {
                    let end = rest.find('/').unwrap_or(rest.len());
                    let authority = &rest[..end];
                    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                    format!("{scheme}://{host}{}", &rest[end..])
                }
                None => cut.rsplit_once('@').map_or(cut, |(_, h)| h).to_string(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str], private: bool) -> EgressPolicy {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        EgressPolicy::new(&hosts, private, &["GET".into(), "HEAD".into()])
    }

    #[test]
    fn the_default_allows_cluster_services_and_the_canarys_own_hosts_only() {
        let p = EgressPolicy::default();
        for url in [
            "http://flaskapp.stage.svc/health",
            "http://flaskapp.stage.svc.cluster.local:8080/health",
            "https://FLASKAPP.Stage.SVC.cluster.local./x",
        ] {
            assert!(p.check_url(url, &[]).is_ok(), "{url}");
        }
        for url in [
            "http://svc/",
            "http://example.com/",
            "http://flaskapp.stage.svc.evil.com/",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest/meta-data/",
        ] {
            let e = p.check_url(url, &[]).unwrap_err();
            assert!(matches!(e, Refusal::Host { .. }), "{url}: {e}");
            assert!(e.to_string().contains("egress.hosts"), "{e}");
        }
        let own = ["flaskapp.example.com".to_string()];
        assert!(p.check_url("http://flaskapp.example.com/", &own).is_ok());
        assert!(p.check_url("http://other.example.com/", &own).is_err());
    }

    #[test]
    fn a_canarys_own_host_is_never_a_wildcard() {
        let p = policy(&[], true);
        let own = ["*".to_string(), "*.com".to_string()];
        assert!(p.check_url("http://example.com/", &own).is_err());
    }

    #[test]
    fn listed_ip_literals_pass_the_host_rule_and_then_the_address_rule() {
        let p = policy(
            &[
                "127.0.0.1",
                "169.254.169.254",
                "[::1]",
                "::ffff:127.0.0.1",
                "10.1.2.3",
            ],
            false,
        );
        assert!(
            p.check_url("http://10.1.2.3:8080/", &[]).is_ok(),
            "RFC 1918 stays allowed"
        );
        for (url, reason) in [
            ("http://127.0.0.1:9/", "loopback"),
            ("http://169.254.169.254/", "cloud metadata"),
            ("http://[::1]/", "loopback"),
            ("http://[::ffff:127.0.0.1]/", "loopback"),
        ] {
            let e = p.check_url(url, &[]).unwrap_err();
            assert!(
                matches!(&e, Refusal::Address { reason: r, .. } if r.contains(reason)),
                "{url}: {e}"
            );
            assert!(
                e.to_string().contains("egress.allowPrivateAddresses"),
                "{e}"
            );
        }
        let open = policy(&["127.0.0.1"], true);
        assert!(open.check_url("http://127.0.0.1:9/", &[]).is_ok());
    }

    #[test]
    fn other_spellings_of_an_ip_are_the_ip() {
        // The URL parser turns these into 127.0.0.1, as reqwest's does.
        let p = policy(&["127.0.0.1"], false);
        for url in ["http://2130706433/", "http://0x7f.1/", "http://127.1/"] {
            let e = p.check_url(url, &[]).unwrap_err();
            assert!(matches!(e, Refusal::Address { .. }), "{url}: {e}");
        }
    }

    #[test]
    fn the_forbidden_addresses() {
        let bad = [
            "127.0.0.1",
            "127.255.0.1",
            "169.254.0.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ];
        for a in bad {
            assert!(forbidden(a.parse().unwrap()).is_some(), "{a}");
        }
        let good = [
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "8.8.8.8",
            "fd00::1",
            "2001:db8::1",
        ];
        for a in good {
            assert_eq!(forbidden(a.parse().unwrap()), None, "{a}");
        }
    }

    #[test]
    fn patterns_are_checked_and_matched_case_insensitively() {
        for bad in [
            "",
            "*.",
            "a*b.com",
            "http://x.svc",
            "x.svc:80",
            "*.*.svc",
            "x..svc",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
        let p = policy(&["*.Example.COM", "api.internal"], true);
        assert!(p.check_url("http://a.b.example.com/", &[]).is_ok());
        assert!(p.check_url("http://example.com/", &[]).is_err());
        assert!(p.check_url("http://API.internal/", &[]).is_ok());
        assert!(p.check_url("http://x.api.internal/", &[]).is_err());
        assert!(policy(&["*"], true)
            .check_url("http://anything.example/", &[])
            .is_ok());
    }

    #[test]
    fn only_http_and_https() {
        let p = policy(&["*"], true);
        for url in ["file:///etc/passwd", "ftp://x.svc/", "gopher://x.svc/"] {
            assert!(
                matches!(p.check_url(url, &[]), Err(Refusal::Scheme(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn check_methods_name_the_config_key() {
        let p = EgressPolicy::default();
        assert_eq!(p.check_method("get").unwrap(), reqwest::Method::GET);
        assert_eq!(p.check_method("HEAD").unwrap(), reqwest::Method::HEAD);
        let e = p.check_method("POST").unwrap_err().to_string();
        assert!(
            e.contains("egress.checkMethods") && e.contains("POST"),
            "{e}"
        );
    }

    #[test]
    fn redact_strips_userinfo_query_and_fragment() {
        assert_eq!(
            redact("http://user:pass@host.svc:8080/x/y?token=abc#frag"),
            "http://host.svc:8080/x/y"
        );
        assert_eq!(redact("https://host/"), "https://host/");
        // Not a URL yet (a template, a typo): still no secret.
        let shown = redact("http://user:pass@{{ host }}/x?token=abc");
        assert!(!shown.contains("pass") && !shown.contains("abc"), "{shown}");
        assert_eq!(redact("user:pass@host/p?q=1"), "host/p");
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_to_loopback() {
        use reqwest::dns::Resolve as _;
        let resolver = Resolver {
            allow_private_addresses: false,
        };
        let e = match resolver.resolve("localhost".parse().unwrap()).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        let text = describe(&*e);
        assert!(
            text.contains("host localhost refused") && text.contains("loopback"),
            "{text}"
        );
        let open = Resolver {
            allow_private_addresses: true,
        };
        let addrs: Vec<SocketAddr> = open
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
