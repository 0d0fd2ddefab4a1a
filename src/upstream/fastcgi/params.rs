//! The CGI parameters users know from nginx's `fastcgi_params`, as one
//! BEGIN_REQUEST + PARAMS block built once per request.

use http::HeaderMap;

use crate::config::FastCgiConfig;

use super::*;

/// What the CGI parameters need to know about the request.
pub struct RequestInfo<'a> {
    pub method: &'a str,
    /// `path?query` as the client sent it.
    pub request_uri: &'a str,
    pub headers: &'a HeaderMap,
    /// Fields sent after `headers` (`exchange::Request::added`).
    pub added: &'a [(http::HeaderName, http::HeaderValue)],
    pub content_length: Option<u64>,
    pub protocol: &'a str,
    pub client: std::net::SocketAddr,
    pub local: std::net::SocketAddr,
    pub server_name: &'a str,
    pub https: bool,
}

/// BEGIN_REQUEST and the PARAMS stream (with its terminator): everything
/// before STDIN. Parameters as in nginx's `fastcgi_params`, plus the
/// upstream's own `params`.
pub fn request_head(cfg: &FastCgiConfig, s: &Script, r: &RequestInfo<'_>) -> Vec<u8> {
    let mut p = Vec::with_capacity(1024);
    let mut pair = |k: &str, v: &[u8]| push_pair(&mut p, k.as_bytes(), v);
    let root = cfg.root.to_string_lossy();
    pair("SCRIPT_FILENAME", s.filename.to_string_lossy().as_bytes());
    pair("SCRIPT_NAME", s.name.as_bytes());
    if !s.path_info.is_empty() {
        pair("PATH_INFO", s.path_info.as_bytes());
        pair(
            "PATH_TRANSLATED",
            format!("{}{}", root.trim_end_matches('/'), s.path_info).as_bytes(),
        );
    }
    pair("QUERY_STRING", s.query.as_bytes());
    pair("REQUEST_METHOD", r.method.as_bytes());
    pair(
        "CONTENT_TYPE",
        r.headers
            .get(http::header::CONTENT_TYPE)
            .map_or(&b""[..], |v| v.as_bytes()),
    );
    let mut n = itoa::Buffer::new();
    pair(
        "CONTENT_LENGTH",
        r.content_length.map_or("", |l| n.format(l)).as_bytes(),
    );
    pair("REQUEST_URI", r.request_uri.as_bytes());
    pair(
        "DOCUMENT_URI",
        format!("{}{}", s.name, s.path_info).as_bytes(),
    );
    pair("DOCUMENT_ROOT", root.as_bytes());
    pair("SERVER_PROTOCOL", r.protocol.as_bytes());
    pair("REQUEST_SCHEME", if r.https { b"https" } else { b"http" });
    if r.https {
        pair("HTTPS", b"on");
    }
    pair("GATEWAY_INTERFACE", b"CGI/1.1");
    pair(
        "SERVER_SOFTWARE",
        concat!("baton/", env!("CARGO_PKG_VERSION")).as_bytes(),
    );
    pair("REMOTE_ADDR", r.client.ip().to_string().as_bytes());
    pair("REMOTE_PORT", n.format(r.client.port()).as_bytes());
    pair("SERVER_ADDR", r.local.ip().to_string().as_bytes());
    pair("SERVER_PORT", n.format(r.local.port()).as_bytes());
    pair("SERVER_NAME", r.server_name.as_bytes());
    // PHP built with --enable-force-cgi-redirect checks this.
    pair("REDIRECT_STATUS", b"200");
    let mut name = String::with_capacity(32);
    let mut field = |k: &http::HeaderName, value: &[u8]| {
        name.clear();
        name.push_str("HTTP_");
        for c in k.as_str().chars() {
            name.push(if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            });
        }
        pair(&name, value);
    };
    for k in r.headers.keys() {
        // httpoxy: a `Proxy` header must never become HTTP_PROXY.
        if k == "proxy" || k == http::header::CONTENT_TYPE || k == http::header::CONTENT_LENGTH {
            continue;
        }
        let mut vals = r.headers.get_all(k).iter();
        let first = vals.next().map_or(&b""[..], |v| v.as_bytes());
        match vals.next() {
            None => field(k, first),
            Some(second) => {
                let sep: &[u8] = if k == http::header::COOKIE {
                    b"; "
                } else {
                    b", "
                };
                let mut joined = first.to_vec();
                for v in std::iter::once(second).chain(vals) {
                    joined.extend_from_slice(sep);
                    joined.extend_from_slice(v.as_bytes());
                }
                field(k, &joined);
            }
        }
    }
    for (k, v) in r.added {
        field(k, v.as_bytes());
    }
    for (k, v) in &cfg.params {
        pair(k, v.as_bytes());
    }
    let mut out = Vec::with_capacity(p.len() + 64);
    push_begin(&mut out, true);
    push_stream(&mut out, kind::PARAMS, &p);
    push_record(&mut out, kind::PARAMS, &[]);
    out
}

/// The request an active health check sends: `GET path` with the script
/// named by the path (PHP-FPM answers its `ping.path` itself).
pub fn health_request(cfg: &FastCgiConfig, path: &str) -> Vec<u8> {
    let script = Script {
        name: path.to_string(),
        path_info: String::new(),
        filename: script_filename(cfg, path),
        query: String::new(),
    };
    let headers = HeaderMap::new();
    let lo = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    request_head(
        cfg,
        &script,
        &RequestInfo {
            method: "GET",
            request_uri: path,
            headers: &headers,
            added: &[],
            content_length: None,
            protocol: "HTTP/1.1",
            client: lo,
            local: lo,
            server_name: "localhost",
            https: false,
        },
    )
}
