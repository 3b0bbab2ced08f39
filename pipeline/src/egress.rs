//! Where pushline may connect when a user chose the URL: a Web Push subscription's
//! endpoint is a URL a person registers, and the dispatcher POSTs to it. Without a policy
//! that makes the dispatcher a proxy into the deployment's own network (cloud metadata,
//! Redis, admin ports). The policy is one [`EgressPolicy`], used twice:
//!
//! - at registration ([`EgressPolicy::check_registration`]): the URL's scheme, origin
//!   and, for hosts allowed only as "any public host", every address the name resolves to;
//! - at connect time: [`EgressPolicy::route`] again for every push, and a resolver
//!   ([`PublicResolver`]) that drops every address that is not public, so a name that
//!   resolved to a public address at registration and to `127.0.0.1` later (DNS
//!   rebinding) is still refused.
//!
//! | endpoint | verdict |
//! |---|---|
//! | not `https` | refused |
//! | origin in `private_origins` (exact scheme, host and port) | allowed, any address, trusting the configured extra CAs ([`Route::Private`]) |
//! | another port of a `private_origins` host | refused |
//! | host is an IP literal that is not public, `localhost`, `*.localhost` | refused |
//! | origin matches `allowed_origins` (`*.` wildcards allowed) | allowed, public addresses only ([`Route::Public`]) |
//! | any other host, with `allow_any_public_host` | allowed, public addresses only |
//! | any other host | refused |
//!
//! "Public" is [`is_public`]: not loopback, private (RFC 1918), link-local, CGNAT,
//! unique-local, multicast, unspecified, documentation, benchmarking or reserved, and the
//! IPv4 forms embedded in IPv6 (mapped, compatible, 6to4, NAT64) are judged as IPv4.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// The browsers' push services: Chrome and Edge on Chromium (FCM), Firefox (Mozilla
/// autopush), Safari (Apple) and Edge on Windows (WNS).
pub const BROWSER_PUSH_SERVICES: &[&str] = &[
    "https://fcm.googleapis.com",
    "https://android.googleapis.com",
    "https://updates.push.services.mozilla.com",
    "https://web.push.apple.com",
    "https://*.push.apple.com",
    "https://*.notify.windows.com",
];

/// How long a registration waits for a name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// `[…endpoints]`: where user-chosen endpoints may point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointsConfig {
    /// Origins (`https://host[:port]`, `https://*.domain` for its subdomains) of push
    /// services endpoints may name, on public addresses only. Default: the browsers'
    /// push services.
    pub allowed_origins: Vec<String>,
    /// Origins allowed on any address, private ones included (a push service inside the
    /// network, a staging or test peer): exact origins, no wildcards. Only these trust
    /// the dispatcher's extra CAs.
    pub private_origins: Vec<String>,
    /// Allow any host on a public address as well, not only `allowed_origins`.
    pub allow_any_public_host: bool,
}

impl Default for EndpointsConfig {
    fn default() -> Self {
        EndpointsConfig {
            allowed_origins: BROWSER_PUSH_SERVICES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            private_origins: Vec::new(),
            allow_any_public_host: false,
        }
    }
}

/// An origin as configured: scheme `https`, a host (or `*.` and a domain) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    /// Lower-case host; for a wildcard, the domain after `*.`.
    host: String,
    wildcard: bool,
    port: u16,
}

impl Origin {
    fn parse(setting: &str, text: &str) -> Result<Origin, ConfigError> {
        let bad = |why: &str| ConfigError::invalid(setting, format!("`{text}`: {why}"));
        let rest = text
            .strip_prefix("https://")
            .ok_or_else(|| bad("must be an https:// origin"))?;
        let (wildcard, rest) = match rest.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, rest),
        };
        let url = Url::parse(&format!("https://{rest}")).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.path(), "" | "/") || url.query().is_some() || !url.username().is_empty() {
            return Err(bad("an origin has no path, query or credentials"));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) if !wildcard => ip.to_string(),
            Some(url::Host::Ipv6(ip)) if !wildcard => ip.to_string(),
            Some(_) => return Err(bad("a wildcard needs a domain after `*.`")),
            None => return Err(bad("has no host")),
        };
        Ok(Origin {
            host,
            wildcard,
            port: url.port_or_known_default().unwrap_or(443),
        })
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        port == self.port
            && if self.wildcard {
                host.strip_suffix(self.host.as_str())
                    .is_some_and(|label| label.len() > 1 && label.ends_with('.'))
            } else {
                host == self.host
            }
    }
}

/// How a push to an allowed endpoint connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Public addresses only, public roots only.
    Public,
    /// An operator-allowed origin on any address, trusting the configured extra CAs.
    Private,
}

/// Why an endpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not an `https://` URL with a host.
    #[error("must be an https:// URL")]
    NotHttps,
    /// The host is a loopback, private, link-local or otherwise non-public address (or
    /// resolves to one).
    #[error("points to an address that is not public")]
    NotPublic,
    /// The origin is not a push service this deployment allows.
    #[error("is not on a push service this deployment allows")]
    NotAllowed,
    /// The name does not resolve.
    #[error("names a host that does not resolve")]
    Unresolvable,
}

impl Refusal {
    /// Bounded label for metrics.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Refusal::NotHttps => "not_https",
            Refusal::NotPublic => "not_public",
            Refusal::NotAllowed => "not_allowed",
            Refusal::Unresolvable => "unresolvable",
        }
    }
}

/// The policy for one kind of user-chosen endpoint.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    allowed: Vec<Origin>,
    private: Vec<Origin>,
    any_public: bool,
}

impl EgressPolicy {
    /// The policy of `config`; `section` names it in errors (e.g. `webpush.endpoints`).
    pub fn new(section: &str, config: &EndpointsConfig) -> Result<Self, ConfigError> {
        let parse = |name: &str, list: &[String]| {
            let setting = format!("{section}.{name}");
            list.iter()
                .map(|text| Origin::parse(&setting, text))
                .collect::<Result<Vec<_>, _>>()
        };
        let allowed = parse("allowed_origins", &config.allowed_origins)?;
        let private = parse("private_origins", &config.private_origins)?;
        if private.iter().any(|o| o.wildcard) {
            return Err(ConfigError::invalid(
                format!("{section}.private_origins"),
                "takes exact origins, no wildcards",
            ));
        }
        Ok(EgressPolicy {
            allowed,
            private,
            any_public: config.allow_any_public_host,
        })
    }

    /// Whether a push to `url` may go, and how it connects; the check every push makes.
    pub fn route(&self, url: &Url) -> Result<Route, Refusal> {
        if url.scheme() != "https" {
            return Err(Refusal::NotHttps);
        }
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return Err(Refusal::NotHttps);
        };
        let name = match &host {
            url::Host::Domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => ip.to_string(),
        };
        if self.private.iter().any(|o| o.matches(&name, port)) {
            return Ok(Route::Private);
        }
        // A private origin's host allows that origin only, not its other ports.
        if self.private.iter().any(|o| o.host == name) {
            return Err(Refusal::NotAllowed);
        }
        let literal_or_local = match host {
            url::Host::Ipv4(ip) => !is_public(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => !is_public(IpAddr::V6(ip)),
            url::Host::Domain(_) => name == "localhost" || name.ends_with(".localhost"),
        };
        if literal_or_local {
            return Err(Refusal::NotPublic);
        }
        if self.any_public || self.allowed.iter().any(|o| o.matches(&name, port)) {
            return Ok(Route::Public);
        }
        Err(Refusal::NotAllowed)
    }

    /// The check at registration: [`EgressPolicy::route`], and for a name allowed only as
    /// "any public host", every address it resolves to must be public.
    pub async fn check_registration(&self, url: &Url) -> Result<(), Refusal> {
        if self.route(url)? == Route::Private {
            return Ok(());
        }
        let Some(url::Host::Domain(name)) = url.host() else {
            return Ok(());
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let port = url.port_or_known_default().unwrap_or(443);
        if self.allowed.iter().any(|o| o.matches(&name, port)) {
            // The operator's list; the dispatcher's resolver still filters its addresses.
            return Ok(());
        }
        let addresses = tokio::time::timeout(RESOLVE_TIMEOUT, resolve(&name))
            .await
            .map_err(|_| Refusal::Unresolvable)?
            .map_err(|_| Refusal::Unresolvable)?;
        if addresses.is_empty() {
            return Err(Refusal::Unresolvable);
        }
        if addresses.iter().any(|a| !is_public(a.ip())) {
            return Err(Refusal::NotPublic);
        }
        Ok(())
    }
}

async fn resolve(name: &str) -> std::io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host((name, 0)).await?.collect())
}

/// A resolver for HTTP clients that connect to user-chosen hosts: it answers only the
/// public addresses of a name, and an error when it has none.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicResolver;

impl PublicResolver {
    /// As the `Arc` reqwest's `ClientBuilder::dns_resolver` takes.
    pub fn shared() -> Arc<PublicResolver> {
        Arc::new(PublicResolver)
    }
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let public: Vec<SocketAddr> = resolve(&name)
                .await?
                .into_iter()
                .filter(|a| is_public(a.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!("{name} has no public address").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether `ip` is an address on the public internet (see the module's table).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let not_public = a == 0 // "this network", unspecified
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168)
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224; // multicast, reserved, broadcast
    !not_public
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    let embedded = |hi: usize| {
        Ipv4Addr::new(
            (segments[hi] >> 8) as u8,
            segments[hi] as u8,
            (segments[hi + 1] >> 8) as u8,
            segments[hi + 1] as u8,
        )
    };
    match segments {
        // Unspecified, loopback and the deprecated IPv4-compatible ::a.b.c.d.
        [0, 0, 0, 0, 0, 0, _, _] => false,
        // IPv4-mapped ::ffff:a.b.c.d.
        [0, 0, 0, 0, 0, 0xffff, _, _] => is_public_v4(embedded(6)),
        // NAT64 64:ff9b::a.b.c.d; its local-use 64:ff9b:1::/48 is not public.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => is_public_v4(embedded(6)),
        [0x64, 0xff9b, 1, ..] => false,
        // Discard-only 100::/64.
        [0x100, 0, 0, 0, ..] => false,
        // Teredo 2001::/32 (reaches any IPv4 through a relay), documentation 2001:db8::/32.
        [0x2001, 0, ..] | [0x2001, 0xdb8, ..] => false,
        // 6to4 2002::/16 carries an IPv4 address.
        [0x2002, ..] => is_public_v4(embedded(1)),
        [first, ..] => {
            (first & 0xfe00) != 0xfc00 // unique-local fc00::/7
                && (first & 0xffc0) != 0xfe80 // link-local fe80::/10
                && (first & 0xffc0) != 0xfec0 // site-local fec0::/10
                && (first & 0xff00) != 0xff00 // multicast
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).expect("url")
    }

    fn policy(allowed: &[&str], private: &[&str], any_public: bool) -> EgressPolicy {
        EgressPolicy::new(
            "webpush.endpoints",
            &EndpointsConfig {
                allowed_origins: allowed.iter().map(|s| (*s).to_owned()).collect(),
                private_origins: private.iter().map(|s| (*s).to_owned()).collect(),
                allow_any_public_host: any_public,
            },
        )
        .expect("policy")
    }

    #[test]
    fn addresses_inside_a_network_are_not_public() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "192.0.2.1",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2002:a00:1::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
        ] {
            assert!(!is_public(ip.parse().expect(ip)), "{ip} is not public");
        }
        for ip in [
            "8.8.8.8",
            "142.250.74.46",
            "172.32.0.1",
            "100.128.0.1",
            "2a00:1450:4001:82a::200a",
            "::ffff:8.8.8.8",
            "2002:808:808::",
        ] {
            assert!(is_public(ip.parse().expect(ip)), "{ip} is public");
        }
    }

    #[test]
    fn only_allowed_push_services_on_https_are_routed() {
        let p = EgressPolicy::new("e", &EndpointsConfig::default()).expect("defaults parse");
        for good in [
            "https://fcm.googleapis.com/fcm/send/abc:def",
            "https://updates.push.services.mozilla.com/wpush/v2/x",
            "https://web.push.apple.com/QW",
            "https://wns2-by3p.notify.windows.com/w/?token=x",
        ] {
            assert_eq!(p.route(&url(good)), Ok(Route::Public), "{good}");
        }
        for (bad, refusal) in [
            ("http://fcm.googleapis.com/fcm/send/x", Refusal::NotHttps),
            ("https://fcm.googleapis.com:8443/x", Refusal::NotAllowed),
            ("https://notify.windows.com/x", Refusal::NotAllowed),
            ("https://evil.example/x", Refusal::NotAllowed),
            (
                "https://169.254.169.254/latest/meta-data/",
                Refusal::NotPublic,
            ),
            ("https://10.0.0.1:6379/", Refusal::NotPublic),
            ("https://[::1]:8080/", Refusal::NotPublic),
            ("https://[::ffff:7f00:1]/", Refusal::NotPublic),
            ("https://localhost:8080/", Refusal::NotPublic),
            ("https://a.localhost/", Refusal::NotPublic),
            ("https://127.0.0.1:9000/direct", Refusal::NotPublic),
            // WHATWG parsing turns these into 127.0.0.1 before anything else sees them.
            ("https://2130706433/", Refusal::NotPublic),
            ("https://0x7f.1/", Refusal::NotPublic),
        ] {
            assert_eq!(p.route(&url(bad)), Err(refusal), "{bad}");
        }
    }

    #[test]
    fn a_private_origin_allows_that_origin_and_nothing_else_on_its_host() {
        let p = policy(&[], &["https://127.0.0.1:4443"], false);
        assert_eq!(
            p.route(&url("https://127.0.0.1:4443/push/1")),
            Ok(Route::Private)
        );
        assert_eq!(
            p.route(&url("https://127.0.0.1:6379/")),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(
            p.route(&url("https://127.0.0.2:4443/")),
            Err(Refusal::NotPublic)
        );
        assert_eq!(
            p.route(&url("http://127.0.0.1:4443/")),
            Err(Refusal::NotHttps)
        );
        let v6 = policy(&[], &["https://[::1]:4443"], false);
        assert_eq!(v6.route(&url("https://[::1]:4443/p")), Ok(Route::Private));
        let p = policy(&[], &["https://push.internal:8443"], true);
        assert_eq!(
            p.route(&url("https://push.internal:9000/")),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(p.route(&url("https://push.example/")), Ok(Route::Public));
    }

    #[test]
    fn origins_are_checked_when_configured() {
        for bad in [
            "http://push.example",
            "https://push.example/path",
            "https://*.10.0.0.1",
            "https://user@push.example",
        ] {
            let config = EndpointsConfig {
                allowed_origins: vec![bad.into()],
                ..EndpointsConfig::default()
            };
            let error = EgressPolicy::new("webpush.endpoints", &config).expect_err(bad);
            assert!(
                error
                    .to_string()
                    .contains("webpush.endpoints.allowed_origins"),
                "{error}"
            );
        }
        let config = EndpointsConfig {
            private_origins: vec!["https://*.internal".into()],
            ..EndpointsConfig::default()
        };
        assert!(EgressPolicy::new("e", &config).is_err());
    }

    #[tokio::test]
    async fn a_public_host_that_resolves_inside_is_refused_at_registration() {
        let p = policy(&[], &[], true);
        assert_eq!(
            p.check_registration(&url("https://localhost/x")).await,
            Err(Refusal::NotPublic)
        );
        // `localhost.` with a trailing dot; `ip6-localhost` resolves to loopback, or not at
        // all, depending on the machine's hosts file: refused either way.
        assert_eq!(
            p.check_registration(&url("https://localhost./x")).await,
            Err(Refusal::NotPublic)
        );
        assert!(
            p.check_registration(&url("https://ip6-localhost/x"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn the_resolver_answers_no_private_address() {
        use reqwest::dns::Resolve as _;
        let name: reqwest::dns::Name = "localhost".parse().expect("name");
        let resolved = PublicResolver.resolve(name).await;
        assert!(resolved.is_err(), "localhost resolves to loopback only");
    }
}
