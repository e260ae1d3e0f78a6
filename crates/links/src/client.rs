//! What a request tells about its client: its address (the TCP peer, or the last
//! `X-Forwarded-For` hop — the one our own proxy appended — only when
//! `links.trust_forwarded_for` says such a proxy is in front),
//! its User-Agent, and the first-party cookies `rs_cid` (a browser id) and `rs_click` (the
//! last click id). Cookie values we did not mint are ignored. A raw address or User-Agent is
//! never logged or kept: [`Signals`] is what is stored, keyed hashes (`fraud.hash_key`) made
//! exactly as the attribution worker makes them, so they compare equal across services.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{COOKIE, USER_AGENT};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use refstream_core::fraud::{ip_prefix, keyed_hash};

use crate::AppState;

/// The browser-id cookie.
pub const BROWSER_COOKIE: &str = "rs_cid";
/// The click-id cookie.
pub const CLICK_COOKIE: &str = "rs_click";
/// How long the browser id lives: 400 days, the longest browsers keep a cookie.
pub const BROWSER_COOKIE_MAX_AGE_SECS: i64 = 400 * 86_400;

/// The client's address, as the request's extractor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        Ok(Self(client_ip(peer, &parts.headers, state.links.trust_forwarded_for)))
    }
}

/// The client address: the last `X-Forwarded-For` hop when `trust_forwarded_for` and it
/// parses, else the TCP peer (unspecified when unknown). The last hop is the address the
/// trusted proxy in front saw and appended; earlier hops come from the client and can be forged.
/// IPv4-mapped IPv6 reads as IPv4, so one client hashes alike whichever way it arrived.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trust_forwarded_for: bool) -> IpAddr {
    let last_hop = || {
        let last_line = headers.get_all("x-forwarded-for").iter().next_back()?.to_str().ok()?;
        last_line.rsplit(',').next()?.trim().parse::<IpAddr>().ok()
    };
    let forwarded = trust_forwarded_for.then(last_hop).flatten();
    forwarded.or(peer).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)).to_canonical()
}

/// The rate-limit key of an address: the address itself for IPv4, its /64 network for IPv6
/// (one subscriber holds a whole /64).
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
    }
}

/// Keyed hashes of a client's address, its /24 or /64 network and its User-Agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signals {
    pub ip_hash: String,
    pub ip_prefix_hash: String,
    pub ua_hash: Option<String>,
}

impl Signals {
    pub fn hash(key: &[u8], ip: IpAddr, user_agent: Option<&str>) -> Self {
        Self {
            ip_hash: keyed_hash(key, &ip.to_string()),
            ip_prefix_hash: keyed_hash(key, &ip_prefix(ip)),
            ua_hash: user_agent.map(|ua| keyed_hash(key, ua)),
        }
    }
}

/// The User-Agent header, when present, readable and not blank.
pub fn user_agent(headers: &HeaderMap) -> Option<&str> {
    headers.get(USER_AGENT).and_then(|v| v.to_str().ok()).map(str::trim).filter(|s| !s.is_empty())
}

/// The value of cookie `name` across every `Cookie` header.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Whether `s` looks like a browser id we mint (32 lower-case hex digits).
pub fn is_browser_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A fresh browser id.
pub fn mint_browser_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A `Set-Cookie` value for a first-party, HTTP-only, `SameSite=Lax` cookie on the whole site.
pub fn set_cookie(name: &str, value: &str, max_age_secs: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_peer_is_the_client_unless_a_trusted_proxy_says_otherwise() {
        let peer = Some("10.0.0.9".parse().unwrap());
        let h = headers(&[("x-forwarded-for", "203.0.113.7, 10.0.0.1")]);
        assert_eq!(client_ip(peer, &h, false), "10.0.0.9".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(peer, &h, true), "10.0.0.1".parse::<IpAddr>().unwrap(), "the hop our proxy appended, not the client's claim");
        let bad = headers(&[("x-forwarded-for", "unknown")]);
        assert_eq!(client_ip(peer, &bad, true), "10.0.0.9".parse::<IpAddr>().unwrap(), "an unparsable hop falls back to the peer");
        assert_eq!(client_ip(peer, &HeaderMap::new(), true), "10.0.0.9".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(None, &HeaderMap::new(), false), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }

    #[test]
    fn mapped_ipv6_reads_as_ipv4() {
        let peer = Some("::ffff:192.0.2.1".parse().unwrap());
        assert_eq!(client_ip(peer, &HeaderMap::new(), false), "192.0.2.1".parse::<IpAddr>().unwrap());
        let h = headers(&[("x-forwarded-for", "2001:db8::1")]);
        assert_eq!(client_ip(peer, &h, true), "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ipv6_clients_are_limited_per_64() {
        let a = limit_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = limit_key("2001:db8:1:2:bbbb::9".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(a, "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_eq!(limit_key("192.0.2.1".parse().unwrap()), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn cookies_are_found_across_headers() {
        let h = headers(&[("cookie", "a=1; rs_cid=0123456789abcdef0123456789abcdef"), ("cookie", "rs_click=c_X")]);
        assert_eq!(cookie(&h, BROWSER_COOKIE), Some("0123456789abcdef0123456789abcdef"));
        assert_eq!(cookie(&h, CLICK_COOKIE), Some("c_X"));
        assert_eq!(cookie(&h, "rs"), None);
        assert!(is_browser_id(cookie(&h, BROWSER_COOKIE).unwrap()));
        assert!(!is_browser_id("<script>") && !is_browser_id("0123456789ABCDEF0123456789ABCDEF"));
        assert!(is_browser_id(&mint_browser_id()));
    }

    #[test]
    fn set_cookie_values_carry_every_attribute() {
        assert_eq!(set_cookie("rs_click", "c_1", 604_800, false), "rs_click=c_1; Path=/; Max-Age=604800; HttpOnly; SameSite=Lax");
        assert_eq!(set_cookie("rs_cid", "ab", 34_560_000, true), "rs_cid=ab; Path=/; Max-Age=34560000; HttpOnly; SameSite=Lax; Secure");
        assert_eq!(BROWSER_COOKIE_MAX_AGE_SECS, 34_560_000);
    }

    #[test]
    fn signals_are_keyed_hashes_never_raw_values() {
        let ip: IpAddr = "192.0.2.77".parse().unwrap();
        let s = Signals::hash(b"0123456789abcdef", ip, Some("curl/8"));
        assert_eq!(s.ip_hash, keyed_hash(b"0123456789abcdef", "192.0.2.77"));
        assert_eq!(s.ip_prefix_hash, keyed_hash(b"0123456789abcdef", "192.0.2.0/24"));
        assert_eq!(s.ua_hash, Some(keyed_hash(b"0123456789abcdef", "curl/8")));
        assert!(s.ip_hash.len() == 64 && s.ip_hash.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(Signals::hash(b"0123456789abcdef", ip, None).ua_hash, None);
    }

    #[test]
    fn a_blank_user_agent_is_none() {
        assert_eq!(user_agent(&headers(&[("user-agent", "  ")])), None);
        assert_eq!(user_agent(&headers(&[("user-agent", "curl/8")])), Some("curl/8"));
    }
}
