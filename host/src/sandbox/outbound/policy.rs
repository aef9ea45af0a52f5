//! Which origins a guest may call: the activity's `[activity.outbound] allowed_hosts`, parsed once, and
//! the addresses no grant reaches unless it names them exactly (cloud metadata and credential
//! endpoints, link-local ranges).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A URL scheme a guest may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginScheme {
    /// `http`, port 80 by default.
    Http,
    /// `https`, port 443 by default.
    Https,
}

impl OriginScheme {
    /// The port used when an origin or a request names none.
    pub fn default_port(self) -> u16 {
        match self {
            OriginScheme::Http => 80,
            OriginScheme::Https => 443,
        }
    }

    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            OriginScheme::Http => "http",
            OriginScheme::Https => "https",
        }
    }

    /// The scheme of a URL, if it is one a guest may use.
    pub fn parse(scheme: &str) -> Option<OriginScheme> {
        match scheme.to_ascii_lowercase().as_str() {
            "http" => Some(OriginScheme::Http),
            "https" => Some(OriginScheme::Https),
            _ => None,
        }
    }
}

/// Which hosts an allowed origin covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// Exactly this name (lowercase, no trailing dot).
    Name(String),
    /// Any name strictly below this domain (`*.example.com` covers `api.example.com`, not
    /// `example.com`).
    Subdomains(String),
    /// Exactly this address: the only way to reach a protected address.
    Ip(IpAddr),
}

/// One entry of `[activity.outbound] allowed_hosts`: scheme, host (or `*.` wildcard, or IP) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin {
    scheme: OriginScheme,
    host: HostPattern,
    port: u16,
}

impl FromStr for AllowedOrigin {
    type Err = String;

    fn from_str(text: &str) -> Result<AllowedOrigin, String> {
        let bad = |why: &str| {
            format!(
                "{text:?} is not an allowed origin: {why}; write scheme://host[:port], e.g. \
                 \"https://api.example.com\", \"https://*.example.com\" or \"http://127.0.0.1:8080\""
            )
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme =
            OriginScheme::parse(scheme).ok_or_else(|| bad("the scheme must be http or https"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(bad("an origin has no path, query or fragment"));
        }
        if authority.contains('@') {
            return Err(bad("an origin has no user name or password"));
        }
        let (host, port) = split_host_port(authority).map_err(|why| bad(&why))?;
        let port = port.unwrap_or(scheme.default_port());
        let host = if let Ok(ip) = host.parse::<IpAddr>() {
            HostPattern::Ip(ip)
        } else if let Some(domain) = host.strip_prefix("*.") {
            check_name(domain).map_err(|why| bad(&why))?;
            HostPattern::Subdomains(normalise_name(domain))
        } else if host.contains('*') {
            return Err(bad("a wildcard may only be a leading `*.`"));
        } else {
            check_name(host).map_err(|why| bad(&why))?;
            HostPattern::Name(normalise_name(host))
        };
        Ok(AllowedOrigin { scheme, host, port })
    }
}

impl<'de> serde::Deserialize<'de> for AllowedOrigin {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for AllowedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.scheme.as_str();
        match &self.host {
            HostPattern::Name(name) => write!(f, "{scheme}://{name}:{}", self.port),
            HostPattern::Subdomains(domain) => write!(f, "{scheme}://*.{domain}:{}", self.port),
            HostPattern::Ip(IpAddr::V6(ip)) => write!(f, "{scheme}://[{ip}]:{}", self.port),
            HostPattern::Ip(ip) => write!(f, "{scheme}://{ip}:{}", self.port),
        }
    }
}

impl AllowedOrigin {
    fn covers(&self, target: &Target) -> bool {
        if self.scheme != target.scheme || self.port != target.port {
            return false;
        }
        match (&self.host, &target.host) {
            (HostPattern::Ip(allowed), TargetHost::Ip(ip)) => allowed == ip,
            (HostPattern::Name(allowed), TargetHost::Name(name)) => allowed == name,
            (HostPattern::Subdomains(domain), TargetHost::Name(name)) => name
                .strip_suffix(domain.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            _ => false,
        }
    }

    /// Whether this entry names exactly `ip`: the only grant that reaches a protected address.
    fn names_ip(&self, ip: IpAddr) -> bool {
        self.host == HostPattern::Ip(ip)
    }
}

/// The host part of a request's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetHost {
    /// A DNS name (lowercase, no trailing dot).
    Name(String),
    /// An IP literal.
    Ip(IpAddr),
}

/// Where a guest's request goes, from the request's own scheme and authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: OriginScheme,
    /// The host to resolve or connect to.
    pub host: TargetHost,
    /// The port (the scheme's default when the authority names none).
    pub port: u16,
}

impl Target {
    /// The target of a request with this scheme and authority (`host[:port]`); `Err` says
    /// why it cannot be one (an unsupported scheme, user info, a malformed host).
    pub fn new(scheme: &str, authority: &str) -> Result<Target, String> {
        let scheme = OriginScheme::parse(scheme)
            .ok_or_else(|| format!("the scheme {scheme:?} is not http or https"))?;
        if authority.contains('@') {
            return Err("user info in the authority is not allowed".into());
        }
        let (host, port) = split_host_port(authority)?;
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => TargetHost::Ip(ip),
            Err(_) => {
                check_name(host)?;
                TargetHost::Name(normalise_name(host))
            }
        };
        Ok(Target {
            scheme,
            host,
            port: port.unwrap_or(scheme.default_port()),
        })
    }

    /// `host:port` as a connection would name it.
    pub fn authority(&self) -> String {
        match &self.host {
            TargetHost::Name(name) => format!("{name}:{}", self.port),
            TargetHost::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            TargetHost::Ip(ip) => format!("{ip}:{}", self.port),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority())
    }
}

/// An activity's `[activity.outbound] allowed_hosts`. Empty (the default) allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    origins: Vec<AllowedOrigin>,
}

impl From<Vec<AllowedOrigin>> for Allowlist {
    fn from(origins: Vec<AllowedOrigin>) -> Allowlist {
        Allowlist { origins }
    }
}

impl Allowlist {
    /// Parses every entry; the error names the first bad one and the expected form.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Allowlist, String> {
        let origins = entries
            .iter()
            .map(|entry| entry.as_ref().parse())
            .collect::<Result<_, _>>()?;
        Ok(Allowlist { origins })
    }

    /// The entries that cover `target`: empty means the request is denied.
    pub fn admits(&self, target: &Target) -> bool {
        self.origins.iter().any(|origin| origin.covers(target))
    }

    /// Whether a connection of an admitted `target` may go to `ip`: any address, except the
    /// protected ones, which only an entry naming that exact IP (for this scheme and port)
    /// reaches.
    pub fn may_connect(&self, target: &Target, ip: IpAddr) -> bool {
        !is_protected(ip)
            || self
                .origins
                .iter()
                .any(|origin| origin.covers(target) && origin.names_ip(ip))
    }

    /// Whether nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }
}

/// Addresses a guest never reaches through a name or a wildcard: they hand out the worker's
/// own cloud credentials (instance metadata, container credentials) or are link-local.
pub fn is_protected(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_protected_v4(ip),
        IpAddr::V6(ip) => {
            if let Some(mapped) = ip.to_ipv4_mapped() {
                return is_protected_v4(mapped);
            }
            let ec2_metadata = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
            ip == ec2_metadata || (ip.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

fn is_protected_v4(ip: Ipv4Addr) -> bool {
    // 169.254.0.0/16 holds 169.254.169.254 (EC2, GCP and Azure metadata) and 169.254.170.2
    // (ECS and EKS container credentials); 100.100.100.200 is Alibaba Cloud's metadata.
    ip.is_link_local() || ip == Ipv4Addr::new(100, 100, 100, 200)
}

/// Splits `host[:port]` or `[v6]:port`.
fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let parse_port = |port: &str| {
        port.parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{port:?} is not a port"))
    };
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "an IPv6 address must end with `]`".to_string())?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{host:?} is not an IPv6 address"));
        }
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(parse_port(port)?))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(format!("unexpected {after:?} after the address")),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Ok((host, Some(parse_port(port)?))),
        None => Ok((authority, None)),
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if valid {
        Ok(())
    } else {
        Err(format!("{name:?} is not a host name"))
    }
}

fn normalise_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        let (scheme, authority) = url.split_once("://").unwrap();
        Target::new(scheme, authority).unwrap()
    }

    fn list(entries: &[&str]) -> Allowlist {
        Allowlist::parse(entries).unwrap()
    }

    #[test]
    fn origins_match_scheme_host_and_port() {
        let allow = list(&["https://api.example.com", "http://127.0.0.1:8080"]);
        assert!(allow.admits(&target("https://api.example.com")));
        assert!(allow.admits(&target("https://API.Example.com:443")));
        assert!(allow.admits(&target("http://127.0.0.1:8080")));
        assert!(!allow.admits(&target("http://api.example.com")), "scheme");
        assert!(
            !allow.admits(&target("https://api.example.com:8443")),
            "port"
        );
        assert!(!allow.admits(&target("http://127.0.0.1:8081")), "port");
        assert!(!allow.admits(&target("https://other.example.com")), "host");
        assert!(!Allowlist::default().admits(&target("https://api.example.com")));
    }

    #[test]
    fn wildcards_cover_subdomains_only() {
        let allow = list(&["https://*.example.com"]);
        assert!(allow.admits(&target("https://a.example.com")));
        assert!(allow.admits(&target("https://a.b.example.com")));
        assert!(!allow.admits(&target("https://example.com")));
        assert!(!allow.admits(&target("https://badexample.com")));
        assert!(!allow.admits(&target("https://example.com.evil.net")));
    }

    #[test]
    fn protected_addresses_need_an_entry_naming_them() {
        let wildcard = list(&["http://*.example.com", "http://metadata.example"]);
        let name = target("http://metadata.example");
        for ip in [
            "169.254.169.254",
            "169.254.170.2",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!wildcard.may_connect(&name, ip.parse().unwrap()), "{ip}");
        }
        assert!(wildcard.may_connect(&name, "93.184.216.34".parse().unwrap()));
        let exact = list(&["http://169.254.169.254"]);
        let direct = target("http://169.254.169.254");
        assert!(exact.admits(&direct));
        assert!(exact.may_connect(&direct, "169.254.169.254".parse().unwrap()));
    }

    #[test]
    fn bad_entries_are_refused_with_the_expected_form() {
        for bad in [
            "api.example.com",
            "ftp://x.com",
            "https://x.com/path",
            "https://a.*.com",
            "https://u@x.com",
            "https://x.com:0",
            "https://",
        ] {
            let err = Allowlist::parse(&[bad]).unwrap_err();
            assert!(err.contains("scheme://host[:port]"), "{bad}: {err}");
        }
        assert!(Allowlist::parse(&["https://[::1]:8443", "http://localhost"]).is_ok());
    }
}
