//! Header rewriting, both ways: the upstream request filter (hop-by-hop
//! fields removed, `Host` kept or taken from HTTP/2's `:authority`,
//! `X-Forwarded-*`, `Via`, `X-Request-Id`) and the upstream response
//! filter (hop-by-hop removed, what they said about the connection kept,
//! `Via`); and the `Proxy-Status` value.
//!
//! Must not: know RFC 9209 tokens beyond writing the one the cause gives.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};

use super::context::Ctx;
use crate::core::cause::Cause;
use crate::upstream;
use crate::upstream::h1::Hop;

/// An incoming `X-Request-Id` is kept when it is 1-128 safe characters.
pub(super) fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:+/=".contains(c))
}

pub(super) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(super) static PROXY_STATUS: HeaderName = HeaderName::from_static("proxy-status");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub(super) static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Bit `n` set: some hop-by-hop field name is `n` bytes long (`te` 2,
/// `trailer` and `upgrade` 7, `connection` and `keep-alive` 10,
/// `proxy-connection` 16, `transfer-encoding` 17).
const HOP_LENGTHS: u64 = 1 << 2 | 1 << 7 | 1 << 10 | 1 << 16 | 1 << 17;

/// `Upgrade`'s and `Keep-Alive`'s places in [`hop_by_hop_fields`].
const UPGRADE_BIT: usize = 4;
const KEEP_ALIVE_BIT: usize = 5;

/// The fields that are hop-by-hop by definition (RFC 9110 §7.6.1).
fn hop_by_hop_fields() -> [&'static HeaderName; 7] {
    [
        &header::CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
    ]
}

/// Removes hop-by-hop fields (RFC 9110 §7.6.1): those named in
/// `Connection`, and the well-known ones. `Upgrade` survives on an upgrade.
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) -> Hop {
    // One pass over the (few) names, noting which hop-by-hop fields are
    // present: removing by name costs a hash each, and most messages carry
    // at most `Connection: keep-alive`.
    let fields = hop_by_hop_fields();
    let mut hop = Hop::default();
    let mut present = 0u8;
    for k in h.keys() {
        // Most names have a length no hop-by-hop name has: one bit test
        // instead of seven name comparisons.
        if HOP_LENGTHS & (1 << k.as_str().len().min(63)) == 0 {
            continue;
        }
        if let Some(i) = fields.iter().position(|f| *f == k) {
            present |= 1 << i;
        }
    }
    if present & 1 != 0
        && let header::Entry::Occupied(e) = h.entry(header::CONNECTION)
    {
        // One lookup reads and removes every `Connection` line.
        let mut named: Vec<HeaderName> = Vec::new();
        for v in e.iter() {
            for t in v.as_bytes().split(|b| *b == b',') {
                let t = t.trim_ascii();
                hop.close |= t.eq_ignore_ascii_case(b"close");
                // The usual tokens name no other field.
                if t.is_empty()
                    || [&b"keep-alive"[..], b"close", b"upgrade", b"te"]
                        .iter()
                        .any(|k| t.eq_ignore_ascii_case(k))
                {
                    continue;
                }
                // `Connection: host` (or content-length) would strip what
                // routing and framing rest on: such a name is ignored.
                if let Ok(n) = HeaderName::from_bytes(t)
                    && n != header::HOST
                    && n != header::CONTENT_LENGTH
                {
                    named.push(n);
                }
            }
        }
        e.remove_entry_mult();
        for n in named {
            h.remove(n);
        }
    }
    // The others that are present, by their bits (none, usually).
    let mut rest = present & !1;
    while rest != 0 {
        let i = rest.trailing_zeros() as usize;
        rest &= rest - 1;
        if upgrade && i == UPGRADE_BIT {
            continue;
        }
        let removed = h.remove(fields[i]);
        if i == KEEP_ALIVE_BIT {
            hop.keepalive_ms = removed.and_then(|v| upstream::keepalive_hint(v.as_bytes()));
        }
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    hop
}

/// The client asks for a protocol upgrade baton tunnels: `Connection:
/// upgrade` and an `Upgrade` naming something other than `h2c`. An h2c
/// upgrade is never tunnelled (it would carry requests past routing); its
/// fields are stripped as hop-by-hop and the request goes as HTTP/1.1.
pub(super) fn is_upgrade(h: &HeaderMap) -> bool {
    let Some(wanted) = h.get(header::UPGRADE) else {
        return false;
    };
    !tokens(wanted).any(|t| t.eq_ignore_ascii_case(b"h2c"))
        && h.get_all(header::CONNECTION)
            .iter()
            .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(b"upgrade")))
}

/// Whether a `101` is the upgrade the client asked for: the response's
/// `Upgrade` names a protocol of the request's (RFC 9110 §7.8).
pub(super) fn upgrade_agreed(request: &HeaderMap, response: &HeaderMap) -> bool {
    let (Some(asked), Some(got)) = (request.get(header::UPGRADE), response.get(header::UPGRADE))
    else {
        return false;
    };
    tokens(got).all(|g| tokens(asked).any(|a| a.eq_ignore_ascii_case(g)))
}

/// The comma-separated tokens of a field value, trimmed.
fn tokens(v: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    v.as_bytes()
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

pub(super) fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn via_value(v: Version) -> HeaderValue {
    // Checked once, at compile time (`from_static` at run time scans the
    // bytes on every call).
    const H2: HeaderValue = HeaderValue::from_static("2 baton");
    const H10: HeaderValue = HeaderValue::from_static("1.0 baton");
    const H11: HeaderValue = HeaderValue::from_static("1.1 baton");
    match v {
        Version::HTTP_2 => H2,
        Version::HTTP_10 => H10,
        _ => H11,
    }
}

pub(super) fn append_via(h: &mut HeaderMap, v: Version) {
    match h.entry(header::VIA) {
        header::Entry::Occupied(mut e) => {
            let joined = continued_via(Some(e.get()), v);
            e.insert(joined);
        }
        header::Entry::Vacant(e) => {
            e.insert(via_value(v));
        }
    }
}

/// `Via` with baton's hop after `prev`'s.
fn continued_via(prev: Option<&HeaderValue>, v: Version) -> HeaderValue {
    let ours = via_value(v);
    let Some(old) = prev else { return ours };
    let old = old.as_bytes();
    let mut joined = Vec::with_capacity(old.len() + 2 + ours.len());
    joined.extend_from_slice(old);
    joined.extend_from_slice(b", ");
    joined.extend_from_slice(ours.as_bytes());
    HeaderValue::from_maybe_shared(Bytes::from(joined)).unwrap_or(ours)
}

/// `X-Forwarded-For` with the client's address appended. IPv4 is written by
/// hand: `Ipv4Addr`'s `Display` went through the formatter and cost more
/// than the rest of the request rewrite (callgrind, docs/benchmarks.md).
fn forwarded_for(prev: Option<&HeaderValue>, ip: std::net::IpAddr) -> HeaderValue {
    let mut buf: Vec<u8> = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + 39);
    if let Some(p) = prev {
        buf.extend_from_slice(p.as_bytes());
        buf.extend_from_slice(b", ");
    }
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut num = itoa::Buffer::new();
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                buf.extend_from_slice(num.format(*o).as_bytes());
            }
        }
        std::net::IpAddr::V6(v6) => buf.extend_from_slice(v6.to_string().as_bytes()),
    }
    HeaderValue::from_maybe_shared(Bytes::from(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The client a request is for, and whether it came over HTTPS, when
/// `peer` is a trusted proxy: from `Forwarded` (RFC 7239) if present,
/// else `X-Forwarded-For` and `X-Forwarded-Proto`. The chain is walked
/// from the right, past the trusted proxies; the first address that is
/// not one is the client (an address further left could be made up by the
/// client itself). Anything unreadable stops the walk at the last trusted
/// hop. From an untrusted peer nothing is believed: `(peer, false)`.
pub fn real_client(
    h: &HeaderMap,
    peer: std::net::SocketAddr,
    trusted: &[ipnet::IpNet],
) -> (std::net::SocketAddr, bool) {
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|n| n.contains(&ip));
    if trusted.is_empty() || !is_trusted(peer.ip()) {
        return (peer, false);
    }
    let joined = |name: &HeaderName| {
        let parts: Vec<&str> = h
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!parts.is_empty()).then(|| parts.join(","))
    };
    // (address, proto) per hop, leftmost first.
    let hops: Vec<(Option<std::net::SocketAddr>, Option<String>)> =
        if let Some(f) = joined(&header::FORWARDED) {
            f.split(',')
                .map(|element| {
                    let mut addr = None;
                    let mut proto = None;
                    for pair in element.split(';') {
                        let Some((k, v)) = pair.trim().split_once('=') else {
                            continue;
                        };
                        let v = v.trim().trim_matches('"');
                        match k.trim().to_ascii_lowercase().as_str() {
                            "for" => addr = node_addr(v),
                            "proto" => proto = Some(v.to_ascii_lowercase()),
                            _ => {}
                        }
                    }
                    (addr, proto)
                })
                .collect()
        } else {
            let proto = joined(&X_FORWARDED_PROTO)
                .and_then(|p| p.split(',').next().map(|p| p.trim().to_ascii_lowercase()));
            let Some(xff) = joined(&X_FORWARDED_FOR) else {
                return (peer, proto.as_deref() == Some("https"));
            };
            let n = xff.split(',').count();
            xff.split(',')
                .enumerate()
                .map(|(i, a)| {
                    (
                        node_addr(a.trim()),
                        (i + 1 == n).then(|| proto.clone()).flatten(),
                    )
                })
                .collect()
        };
    let xfp = hops.last().and_then(|(_, p)| p.clone());
    let mut client = peer;
    let mut proto = xfp;
    for (addr, p) in hops.iter().rev() {
        let Some(a) = addr else { break };
        client = *a;
        if p.is_some() {
            proto = p.clone();
        }
        if !is_trusted(a.ip()) {
            break;
        }
    }
    (client, proto.as_deref() == Some("https"))
}

/// A forwarded node: `203.0.113.9`, `203.0.113.9:4711`, `[2001:db8::1]:443`
/// or `2001:db8::1`; `None` for `unknown` or an obfuscated name.
fn node_addr(v: &str) -> Option<std::net::SocketAddr> {
    v.parse::<std::net::SocketAddr>()
        .ok()
        .or_else(|| v.parse::<std::net::IpAddr>().ok().map(|ip| (ip, 0).into()))
        .or_else(|| {
            let ip = v.strip_prefix('[')?.strip_suffix(']')?;
            ip.parse::<std::net::IpAddr>().ok().map(|ip| (ip, 0).into())
        })
}

/// A `Proxy-Status` structured-field string: printable ASCII, escaped.
fn sf_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

/// `Proxy-Status: baton; error=<type>; next-hop="..."; details="..."`.
pub fn proxy_status(
    cause: Cause,
    next_hop: Option<&str>,
    details: Option<&str>,
    received: Option<u16>,
) -> HeaderValue {
    let mut s = String::with_capacity(96);
    s.push_str("baton; error=");
    s.push_str(cause.proxy_status());
    if let Some(h) = next_hop {
        s.push_str("; next-hop=");
        sf_string(&mut s, h);
    }
    if let Some(r) = received {
        s.push_str("; received-status=");
        s.push_str(&r.to_string());
    }
    if let Some(d) = details {
        s.push_str("; details=");
        sf_string(&mut s, d);
    }
    HeaderValue::from_str(&s)
        .unwrap_or_else(|_| HeaderValue::from_static("baton; error=proxy_internal_error"))
}

/// The host part of a `Host` value or an authority: no port, no brackets.
pub(super) fn strip_port(raw: &str) -> &str {
    if let Some(rest) = raw.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(h, _)| h)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    }
}

/// The fields baton adds to an upstream request. They are not inserted
/// in the request's map (a hashed insert each): baton's HTTP/1.1 client
/// writes them after the client's fields, and hyper's, HTTP/2's and
/// FastCGI's requests add them to their copy of the map
/// (`upstream::exchange::Request::added`).
pub(super) type Added = Vec<(HeaderName, HeaderValue)>;

/// Bits of [`Ctx::own_fields`]: the client's request carries a field of
/// this name (so the map must be looked at; clear, it is surely absent).
pub(super) const HAS_XFF: u8 = 1;
pub(super) const HAS_XFP: u8 = 1 << 1;
pub(super) const HAS_XFH: u8 = 1 << 2;
pub(super) const HAS_VIA: u8 = 1 << 3;
pub(super) const HAS_REQUEST_ID: u8 = 1 << 4;

/// The [`Ctx::own_fields`] bit of a field name, if it is one baton sets.
pub(super) fn own_field(name: &HeaderName) -> u8 {
    if *name == header::VIA {
        HAS_VIA
    } else if *name == X_FORWARDED_FOR {
        HAS_XFF
    } else if *name == X_FORWARDED_PROTO {
        HAS_XFP
    } else if *name == X_FORWARDED_HOST {
        HAS_XFH
    } else if *name == X_REQUEST_ID {
        HAS_REQUEST_ID
    } else {
        0
    }
}

/// The upstream request filter: hop-by-hop fields out, the route's rules,
/// `Host`; and baton's own fields (`X-Forwarded-For`, `-Proto`, `-Host`,
/// `Via`, `X-Request-Id`) returned, the client's fields of those names
/// taken out of the map (`X-Forwarded-For` and `Via` are continued).
pub(super) fn upstream_request(ctx: &Ctx, headers: &mut HeaderMap, upgrade: bool) -> Added {
    let _ = strip_hop_by_hop(headers, upgrade);
    // The fields of baton's names the map may hold: the client's, and any
    // a route's rules set.
    let mut own = ctx.own_fields;
    if let Some(route) = ctx.route_config() {
        route.request_headers.apply(headers);
        for (n, _) in &route.request_headers.set {
            own |= own_field(n);
        }
    }
    // The one host the request is for (the host filter settled it: `Host`,
    // an absolute-form target's authority, or HTTP/2's :authority), sent
    // upstream as `Host` whatever `Connection` named.
    let host = match &ctx.host_field {
        // As received: already in the block.
        Some(h) if !ctx.host_from_target => Some(h.clone()),
        _ => {
            let v = ctx
                .host_field
                .clone()
                .or_else(|| HeaderValue::from_str(ctx.uri.authority()?.as_str()).ok());
            if let Some(h) = &v {
                headers.insert(header::HOST, h.clone());
            }
            v
        }
    };
    let mut added = Added::with_capacity(5);
    // Several X-Forwarded-For lines are one list (RFC 9110 §5.3): HAProxy's
    // `option forwardfor` adds a line of its own.
    let prev = if own & HAS_XFF == 0 {
        None
    } else {
        let mut lines = headers.get_all(&X_FORWARDED_FOR).iter();
        let prev = match (lines.next(), lines.next()) {
            (Some(first), None) => Some(first.clone()),
            (None, _) => None,
            (Some(_), Some(_)) => {
                let all: Vec<&[u8]> = headers
                    .get_all(&X_FORWARDED_FOR)
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect();
                HeaderValue::from_bytes(&all.join(&b", "[..])).ok()
            }
        };
        headers.remove(&X_FORWARDED_FOR);
        prev
    };
    added.push((
        X_FORWARDED_FOR.clone(),
        forwarded_for(prev.as_ref(), ctx.peer.ip()),
    ));
    const HTTP: HeaderValue = HeaderValue::from_static("http");
    const HTTPS: HeaderValue = HeaderValue::from_static("https");
    if own & HAS_XFP != 0 {
        headers.remove(&X_FORWARDED_PROTO);
    }
    added.push((
        X_FORWARDED_PROTO.clone(),
        if ctx.https { HTTPS } else { HTTP },
    ));
    if own & HAS_XFH != 0 {
        headers.remove(&X_FORWARDED_HOST);
    }
    if let Some(h) = host {
        added.push((X_FORWARDED_HOST.clone(), h));
    }
    let via = if own & HAS_VIA == 0 {
        via_value(ctx.version)
    } else {
        let prev = headers.remove(header::VIA);
        continued_via(prev.as_ref(), ctx.version)
    };
    added.push((header::VIA, via));
    if own & HAS_REQUEST_ID != 0 {
        headers.remove(&X_REQUEST_ID);
    }
    added.push((X_REQUEST_ID.clone(), ctx.id.clone()));
    added
}

/// The upstream response filter: hop-by-hop fields out (what they said
/// about the connection returned), `Via` in.
pub(super) fn upstream_response(headers: &mut HeaderMap, upgraded: bool) -> Hop {
    let hop = strip_hop_by_hop(headers, upgraded);
    append_via(headers, Version::HTTP_11);
    hop
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_status_escapes() {
        let v = proxy_status(
            Cause::ConnectionRefused,
            Some("127.0.0.1:1"),
            Some("say \"hi\"\n"),
            None,
        );
        assert_eq!(
            v.to_str().unwrap(),
            r#"baton; error=connection_refused; next-hop="127.0.0.1:1"; details="say \"hi\"?""#
        );
    }

    #[test]
    fn hop_bits_name_upgrade_and_keep_alive() {
        let f = hop_by_hop_fields();
        assert_eq!(*f[UPGRADE_BIT], header::UPGRADE);
        assert_eq!(*f[KEEP_ALIVE_BIT], KEEP_ALIVE);
    }

    #[test]
    fn hop_lengths_cover_every_hop_by_hop_name() {
        for f in hop_by_hop_fields() {
            assert_ne!(HOP_LENGTHS & (1 << f.as_str().len()), 0, "{f}");
        }
    }

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_for_appends() {
        let v4: std::net::IpAddr = "10.0.0.25".parse().unwrap();
        assert_eq!(forwarded_for(None, v4), "10.0.0.25");
        let prev = HeaderValue::from_static("203.0.113.9");
        assert_eq!(
            forwarded_for(Some(&prev), "::1".parse().unwrap()),
            "203.0.113.9, ::1"
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client_and_the_scheme() {
        let trusted: Vec<ipnet::IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ];
        let peer: std::net::SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            m
        };
        let ip = |r: (std::net::SocketAddr, bool)| (r.0.ip().to_string(), r.1);
        // The rightmost untrusted address; one the client wrote itself
        // further left is not believed.
        let m = h(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.7"),
            ("x-forwarded-proto", "https"),
        ]);
        assert_eq!(
            ip(real_client(&m, peer, &trusted)),
            ("203.0.113.9".into(), true)
        );
        // Two header lines are one list.
        let m = h(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.7"),
        ]);
        assert_eq!(
            ip(real_client(&m, peer, &trusted)),
            ("203.0.113.9".into(), false)
        );
        // Forwarded wins over X-Forwarded-For; IPv6 with a port; proto per element.
        let m = h(&[
            (
                "forwarded",
                "for=\"[2001:db8::5]:4711\";proto=https, for=10.0.0.7;proto=http",
            ),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        assert_eq!(
            ip(real_client(&m, peer, &trusted)),
            ("2001:db8::5".into(), true)
        );
        // `unknown` stops at the last trusted hop.
        let m = h(&[("forwarded", "for=unknown, for=10.0.0.7")]);
        assert_eq!(
            ip(real_client(&m, peer, &trusted)),
            ("10.0.0.7".into(), false)
        );
        // From an untrusted peer nothing is believed.
        let stranger: std::net::SocketAddr = "198.51.100.1:5000".parse().unwrap();
        let m = h(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        assert_eq!(
            ip(real_client(&m, stranger, &trusted)),
            ("198.51.100.1".into(), false)
        );
        assert_eq!(ip(real_client(&m, peer, &[])), ("10.0.0.2".into(), false));
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("example.com"), "example.com");
    }
}
