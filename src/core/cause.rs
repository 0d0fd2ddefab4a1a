//! The one table of failure causes.
//!
//! Owns: the closed [`Cause`] enum and, for each cause, everything that
//! reports it: the HTTP status, the RFC 9209 `Proxy-Status` error type, the
//! phase, whether a retry is safe, the visitor's words and the operator's fix.
//! This is the only module that knows RFC 9209 tokens.
//!
//! Must not: do I/O or decide policy. Classification of concrete errors
//! happens in `upstream`; retry decisions in `proxy`; this module only
//! answers "what does this cause mean".

use std::fmt;

/// Where in the exchange a failure happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Choosing a route and an upstream (nothing sent anywhere yet).
    Route,
    /// Resolving the upstream's host name.
    Dns,
    /// Opening the TCP or Unix-socket connection.
    Connect,
    /// The TLS handshake with the upstream.
    Tls,
    /// Sending the request head and body.
    WriteRequest,
    /// Waiting for and parsing the response head.
    ReadHead,
    /// Streaming the response body (the client already has the head).
    ReadBody,
}

impl Phase {
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Route => "route",
            Phase::Dns => "dns",
            Phase::Connect => "connect",
            Phase::Tls => "tls",
            Phase::WriteRequest => "write_request",
            Phase::ReadHead => "read_head",
            Phase::ReadBody => "read_body",
        }
    }
}

/// Who is at fault, as far as a proxy can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Gateway,
}

/// Whether the failed attempt may be repeated on another server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Nothing reached the upstream: safe for every method.
    NothingSent,
    /// The upstream may have seen the request; the proxy's replay rules
    /// decide (method, reused connection, bytes received).
    MaybeProcessed,
    /// Retrying cannot help or is unsafe (the response already started, or
    /// the upstream answered and the answer is the problem).
    Never,
}

macro_rules! causes {
    ($( $variant:ident {
        id: $id:literal,
        token: $token:literal,
        status: $status:literal,
        phase: $phase:ident,
        side: $side:ident,
        retry: $retry:ident,
        title: $title:literal,
        visitor: $visitor:literal,
        seen: $seen:literal,
        fix: $fix:literal $(,)?
    } ),+ $(,)?) => {
        /// Every reason baton may fail to deliver an upstream response.
        ///
        /// Closed and `Copy`: every report (status, `Proxy-Status`, metric
        /// label, log field, error page, fix hint) is derived from it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Cause { $($variant),+ }

        impl Cause {
            /// Every cause, in table order (used for docs and metrics).
            pub const ALL: &'static [Cause] = &[$(Cause::$variant),+];

            /// Stable identifier used in logs, metrics and JSON.
            pub const fn id(self) -> &'static str { match self { $(Cause::$variant => $id),+ } }
            /// RFC 9209 §2.3 error type for `Proxy-Status`.
            pub const fn proxy_status(self) -> &'static str { match self { $(Cause::$variant => $token),+ } }
            /// The status baton answers with (RFC 9209's recommendation).
            pub const fn status(self) -> u16 { match self { $(Cause::$variant => $status),+ } }
            pub const fn phase(self) -> Phase { match self { $(Cause::$variant => Phase::$phase),+ } }
            pub const fn side(self) -> Side { match self { $(Cause::$variant => Side::$side),+ } }
            pub const fn retry(self) -> Retry { match self { $(Cause::$variant => Retry::$retry),+ } }
            /// Headline for the visitor, in plain words.
            pub const fn title(self) -> &'static str { match self { $(Cause::$variant => $title),+ } }
            /// One or two sentences for the visitor.
            pub const fn visitor_text(self) -> &'static str { match self { $(Cause::$variant => $visitor),+ } }
            /// What usually produces this in real deployments.
            pub const fn seen_when(self) -> &'static str { match self { $(Cause::$variant => $seen),+ } }
            /// What the operator should change.
            pub const fn fix(self) -> &'static str { match self { $(Cause::$variant => $fix),+ } }
        }
    };
}

causes! {
    NoRoute {
        id: "no_route", token: "destination_not_found", status: 404, phase: Route, side: Client, retry: Never,
        title: "There is nothing at this address",
        visitor: "This gateway has no site configured for this host name and path.",
        seen: "A request for a host or path that no [[routes]] entry matches: a typo in the host, a missing route after a deploy, or a scanner.",
        fix: "Add a [[routes]] entry whose host and path match the request, or check the Host header the client sends.",
    },
    FileNotFound {
        id: "file_not_found", token: "destination_not_found", status: 404, phase: Route, side: Client, retry: Never,
        title: "There is nothing at this address",
        visitor: "There is no page or file at this address on this site.",
        seen: "A FastCGI upstream's try_files found no file, directory index or front controller for the path: a broken link, a removed file, or a scanner probing for /wp-login.php.",
        fix: "Nothing, if the link is wrong; otherwise check the upstream's root and try_files (WordPress and Laravel need the front controller, \"/index.php?$args\", last).",
    },
    Forbidden {
        id: "path_forbidden", token: "http_request_denied", status: 403, phase: Route, side: Client, retry: Never,
        title: "This address is not available",
        visitor: "This site does not serve this address.",
        seen: "A request for a hidden file (.env, .git, .htaccess), a path with `..` or a NUL byte, or a symbolic link out of a FastCGI upstream's root: almost always a scanner.",
        fix: "Nothing to fix: baton never serves these from a document root. Move files that must be public out of hidden directories.",
    },
    ProxyConfiguration {
        id: "proxy_configuration", token: "proxy_configuration_error", status: 500, phase: Connect, side: Gateway, retry: NothingSent,
        title: "The site's gateway is misconfigured",
        visitor: "The gateway in front of this site is set up to send requests somewhere it cannot.",
        seen: "An upstream address that is one of baton's own listeners (a loop), found at connect time, e.g. after DNS.",
        fix: "Correct the upstream's servers list; `baton check` shows the offending key.",
    },
    Maintenance {
        id: "maintenance", token: "destination_unavailable", status: 503, phase: Route, side: Gateway, retry: Never,
        title: "The site is down for maintenance",
        visitor: "The site's operator has taken this part of the site down for planned maintenance.",
        seen: "A route with `maintenance` set: planned downtime announced the way search engines want it (503 with Retry-After).",
        fix: "Remove `maintenance` from the route and reload when the work is done.",
    },
    AccessDenied {
        id: "access_denied", token: "http_request_denied", status: 403, phase: Route, side: Client, retry: Never,
        title: "Access to this address is restricted",
        visitor: "This part of the site is not open to your network.",
        seen: "A client outside a route's allow list or inside its deny list: an admin area open to the office only, an endpoint blocked for everyone (xmlrpc.php), or a visitor on another network than expected (a VPN, a proxy).",
        fix: "If the client should get in, add its address or network to the route's allow list (or take it out of deny); behind a load balancer, set server.trusted_proxies so baton sees the real client address.",
    },
    AuthRequired {
        id: "auth_required", token: "http_request_denied", status: 401, phase: Route, side: Client, retry: Never,
        title: "Sign-in required",
        visitor: "This part of the site needs a user name and password.",
        seen: "A request without credentials, or with a user or password not in the route's basic_auth file: a browser asks its user, a scanner moves on.",
        fix: "If a user should get in, add them to the route's basic_auth file (`htpasswd -B FILE USER`) and reload.",
    },
    RateLimited {
        id: "rate_limited", token: "http_request_denied", status: 429, phase: Route, side: Client, retry: Never,
        title: "Too many requests",
        visitor: "You are sending requests faster than this site allows. Wait a moment before trying again.",
        seen: "A client above the route's rate_limit: a script or crawler, a retry loop, or many users behind one address.",
        fix: "If legitimate, raise the route's rate_limit or rate_limit_burst, or key it on an API key header instead of the client IP.",
    },
    BodyTooLarge {
        id: "request_body_too_large", token: "http_request_error", status: 413, phase: Route, side: Client, retry: Never,
        title: "The request is too large",
        visitor: "The file or form you sent is larger than this site accepts.",
        seen: "An upload whose Content-Length is above server.max_body_bytes.",
        fix: "Raise server.max_body_bytes if such uploads are expected.",
    },
    RequestMalformed {
        id: "request_malformed", token: "http_request_error", status: 400, phase: Route, side: Client, retry: Never,
        title: "The request was not valid HTTP",
        visitor: "Your browser or app sent a request this site could not read.",
        seen: "A client that is not speaking HTTP/1.1 to an HTTP port (TLS to a plain port, a port scanner, a broken bot), a request line with characters HTTP forbids, or an ambiguous host: two Host fields, none on HTTP/1.1, HTTP/2's :authority and Host naming two hosts. Answered before a route is chosen; logged with the client address.",
        fix: "Nothing, for scanners. If a real client does it, check that it uses http:// (not https://) for this port and encodes its URLs.",
    },
    TransferCodingUnsupported {
        id: "transfer_coding_unsupported", token: "http_request_error", status: 501, phase: Route, side: Client, retry: Never,
        title: "The request used an encoding this site does not support",
        visitor: "Your browser or app sent the request in a transfer encoding this site does not support.",
        seen: "A request whose Transfer-Encoding is anything but `chunked` (`identity, chunked`, `gzip, chunked`, made-up codings): a smuggling attempt or a broken client. Forwarding it would leave its framing to the upstream's reading (RFC 9112 §6.1).",
        fix: "Nothing, for scanners and smuggling probes. A real client must send its body with Content-Length or plain chunked framing.",
    },
    RequestHeaderTooLarge {
        id: "request_header_too_large", token: "http_request_error", status: 431, phase: Route, side: Client, retry: Never,
        title: "The request headers are too large",
        visitor: "Your browser sent more cookies or headers than this site accepts. Clearing this site's cookies usually fixes it.",
        seen: "Cookies that grew over time (many tracking or session cookies on one domain), or a huge Authorization or Referer header, above server.max_request_header_bytes.",
        fix: "Find which cookie grows (the browser's storage view); raise server.max_request_header_bytes if large heads are legitimate.",
    },
    RequestBodyIncomplete {
        id: "request_body_incomplete", token: "http_request_error", status: 400, phase: WriteRequest, side: Client, retry: Never,
        title: "The request was incomplete",
        visitor: "Your browser stopped sending the request before it was complete, or sent it garbled.",
        seen: "A client that closed the connection, stalled or sent malformed chunked framing during an upload (a cancelled upload, a flaky mobile network, a broken or hostile client). Never counted against the upstream.",
        fix: "Nothing on the server, unless many clients do it: then look for a network problem or a body limit in front of baton.",
    },
    RequestTimeout {
        id: "request_timeout", token: "http_request_error", status: 408, phase: Route, side: Client, retry: Never,
        title: "The request took too long to arrive",
        visitor: "Your browser or app took too long to send its request. Trying again usually works.",
        seen: "A client that sent part of a request head and then nothing for server.header_read_timeout (slowloris, a stalled mobile network), or that stopped sending its body for server.body_read_timeout mid-upload. Baton answers 408 and closes the connection; never counted against the upstream.",
        fix: "Nothing, for attacks and dead networks. If real uploads stall, raise server.body_read_timeout; look for a body or head limit in a device in front of baton.",
    },
    BackendRestarting {
        id: "backend_restarting", token: "destination_unavailable", status: 503, phase: Route, side: Upstream, retry: Never,
        title: "The site's application is restarting",
        visitor: "The site's application is being restarted. This usually takes a few seconds.",
        seen: "A supervised backend ([upstreams.NAME.process]) that exited or crashed and is being started again, and did not become ready within the upstream's start_wait.",
        fix: "Read the backend's own output in baton's log (tagged with the upstream) and its exit code; a crash loop means the app fails at start (config, missing dependency, port in use).",
    },
    NoHealthyServer {
        id: "no_healthy_server", token: "destination_unavailable", status: 503, phase: Route, side: Upstream, retry: Never,
        title: "The site's application is not available right now",
        visitor: "Every server of the site's application is failing its health checks or was taken out after errors. The gateway will send traffic again as soon as one recovers.",
        seen: "All servers down (a deploy that stopped them all, a shared dependency such as the database failing), or health checks on a path that does not answer 2xx/3xx.",
        fix: "Look at the failure log lines before this one (they name the first cause), check the servers' health path by hand, and `baton check` for a health path that 404s.",
    },
    ConcurrencyLimit {
        id: "concurrency_limit", token: "connection_limit_reached", status: 503, phase: Route, side: Gateway, retry: Never,
        title: "The site is too busy right now",
        visitor: "The site is receiving more requests than it can handle at the moment. Trying again in a few seconds usually works.",
        seen: "More requests in flight to the upstream than its max_concurrent, and the queue full or waited on for longer than queue_timeout: a traffic spike, or a slow upstream holding slots.",
        fix: "Raise max_concurrent or queue if the app has capacity; otherwise find what makes requests slow. Baton sheds load here instead of letting the app collapse.",
    },
    DnsError {
        id: "dns_error", token: "dns_error", status: 502, phase: Dns, side: Upstream, retry: NothingSent,
        title: "The site's application could not be found",
        visitor: "The gateway could not look up the address of the site's application.",
        seen: "A misspelt upstream host name, a container or service that was removed (its name no longer resolves), NXDOMAIN or SERVFAIL from the resolver.",
        fix: "Check the upstream host name (`dig NAME`), the resolver in [resolver], and that the service still exists.",
    },
    DnsTimeout {
        id: "dns_timeout", token: "dns_timeout", status: 504, phase: Dns, side: Upstream, retry: NothingSent,
        title: "The site's application could not be found in time",
        visitor: "Looking up the address of the site's application took too long.",
        seen: "A resolver that is down or unreachable, a firewall dropping port 53, a wrong nameserver address.",
        fix: "Check that the nameservers in [resolver] (or /etc/resolv.conf) answer: `dig @NAMESERVER NAME`.",
    },
    ConnectionRefused {
        id: "connection_refused", token: "connection_refused", status: 502, phase: Connect, side: Upstream, retry: NothingSent,
        title: "The site's application is not running",
        visitor: "The site's application refused the connection. It is probably stopped or restarting.",
        seen: "The app crashed or is restarting, listens on another port, or listens on 127.0.0.1 while the gateway dials ::1 (or the reverse).",
        fix: "Start the application and check its port (`ss -ltnp`); make the servers list match the address it listens on.",
    },
    ConnectionTimeout {
        id: "connection_timeout", token: "connection_timeout", status: 504, phase: Connect, side: Upstream, retry: NothingSent,
        title: "The site's application did not answer in time",
        visitor: "The site's application did not accept the connection in time. It may be overloaded or unreachable.",
        seen: "A firewall or security group dropping packets, a dead host, a stale IP address, or an accept queue that is full.",
        fix: "Check reachability from the gateway host (`nc -vz HOST PORT`), firewalls, and the app's listen backlog; keep connect_timeout short.",
    },
    ConnectError {
        id: "connect_error", token: "destination_ip_unroutable", status: 502, phase: Connect, side: Upstream, retry: NothingSent,
        title: "The site's application cannot be reached",
        visitor: "The network path to the site's application is broken.",
        seen: "No route to host or network unreachable (EHOSTUNREACH, ENETUNREACH), or no free local ports (EADDRNOTAVAIL).",
        fix: "Check routing and the upstream address; for EADDRNOTAVAIL, keep upstream keep-alive on and widen net.ipv4.ip_local_port_range.",
    },
    SocketNotFound {
        id: "socket_not_found", token: "destination_unavailable", status: 503, phase: Connect, side: Upstream, retry: NothingSent,
        title: "The site's application is not running",
        visitor: "The site's application is not running right now, or is restarting.",
        seen: "The Unix socket does not exist: the app (PHP-FPM, gunicorn) is stopped, or the path names another version (php7.4 vs php8.2).",
        fix: "Start the application, and make the unix: path in servers match the socket it creates (PHP-FPM: the pool's `listen`).",
    },
    SocketPermission {
        id: "socket_permission_denied", token: "destination_unavailable", status: 503, phase: Connect, side: Upstream, retry: NothingSent,
        title: "The site's application cannot be reached",
        visitor: "The gateway is not allowed to talk to the site's application.",
        seen: "The Unix socket's owner, group or mode (or a parent directory without +x) does not let baton's user connect; or SELinux.",
        fix: "Give baton's user access: PHP-FPM `listen.owner`, `listen.group`, `listen.mode = 0660`; check parents with `namei -l PATH`.",
    },
    UpstreamBusy {
        id: "upstream_busy", token: "connection_limit_reached", status: 503, phase: Connect, side: Upstream, retry: NothingSent,
        title: "The site is too busy right now",
        visitor: "The site's application has no free workers at the moment.",
        seen: "A Unix socket whose accept queue is full (EAGAIN): every worker is busy, e.g. PHP-FPM at pm.max_children.",
        fix: "Raise the app's worker count (pm.max_children) and listen backlog, or find what makes requests slow.",
    },
    TlsProtocol {
        id: "tls_protocol_error", token: "tls_protocol_error", status: 502, phase: Tls, side: Upstream, retry: NothingSent,
        title: "The site's application could not be reached securely",
        visitor: "A secure connection to the site's application could not be set up.",
        seen: "TLS to a plain-HTTP port, no common protocol version or cipher, a middlebox that breaks TLS.",
        fix: "Check that the upstream port speaks TLS and supports TLS 1.2 or 1.3 (`openssl s_client -connect HOST:PORT -servername NAME`).",
    },
    TlsCertificate {
        id: "tls_certificate_error", token: "tls_certificate_error", status: 502, phase: Tls, side: Upstream, retry: NothingSent,
        title: "The site's application could not be reached securely",
        visitor: "The site's application presented a certificate the gateway does not trust.",
        seen: "An expired or self-signed certificate, a name that does not match the upstream host, a missing intermediate.",
        fix: "Renew or fix the upstream certificate chain, or set the upstream's tls_server_name to the name on the certificate.",
    },
    TlsAlert {
        id: "tls_alert_received", token: "tls_alert_received", status: 502, phase: Tls, side: Upstream, retry: NothingSent,
        title: "The site's application could not be reached securely",
        visitor: "The site's application refused the secure connection.",
        seen: "The upstream rejected the handshake: no SNI or a wrong SNI, a required client certificate, an unsupported version.",
        fix: "Check the upstream's TLS settings and the SNI baton sends (tls_server_name).",
    },
    ConnectionTerminated {
        id: "connection_terminated", token: "connection_terminated", status: 502, phase: ReadHead, side: Upstream, retry: MaybeProcessed,
        title: "The site's application stopped answering",
        visitor: "The site's application closed the connection without sending an answer.",
        seen: "The keep-alive race (the app closed an idle connection as the gateway reused it), a worker killed mid-request (OOM, gunicorn WORKER TIMEOUT, max-requests recycling), or a crash.",
        fix: "Check the app's logs at that time for crashes or worker kills; make the app's keep-alive idle timeout longer than baton's keepalive_timeout.",
    },
    FastCgiNoResponse {
        id: "fastcgi_no_response", token: "connection_terminated", status: 502, phase: ReadHead, side: Upstream, retry: MaybeProcessed,
        title: "The site's application stopped answering",
        visitor: "The site's application ended without sending an answer.",
        seen: "A PHP-FPM worker that died mid-request (segfault in an extension, killed by request_terminate_timeout or the OOM killer, recycled by pm.max_requests) or a script that ended without output: nginx's \"upstream prematurely closed FastCGI stdout\".",
        fix: "Look in PHP-FPM's log for \"exited on signal\" or \"execution timed out\" at that time; raise memory_limit or request_terminate_timeout deliberately; disable the crashing extension.",
    },
    ScriptNotFound {
        id: "script_not_found", token: "destination_not_found", status: 404, phase: ReadHead, side: Gateway, retry: Never,
        title: "There is nothing at this address",
        visitor: "The page's script could not be found by the site's application.",
        seen: "PHP-FPM's \"Primary script unknown\": SCRIPT_FILENAME names a file PHP-FPM cannot open, because it runs in another container or chroot, or its user cannot read the document root.",
        fix: "Make the upstream's root the path as PHP-FPM sees it (mount the same path in both containers), and let the pool's user read it (`namei -l FILE`).",
    },
    WriteTimeout {
        id: "request_write_timeout", token: "connection_write_timeout", status: 504, phase: WriteRequest, side: Upstream, retry: Never,
        title: "The site's application did not answer in time",
        visitor: "The site's application stopped accepting the request.",
        seen: "The app is not reading the request body (a stuck worker, a full pool), or the network stalled.",
        fix: "Check the app's capacity and what it is blocked on; raise write_timeout only for slow uploads that need it.",
    },
    ResponseHeadTimeout {
        id: "response_head_timeout", token: "http_response_timeout", status: 504, phase: ReadHead, side: Upstream, retry: Never,
        title: "The site's application did not answer in time",
        visitor: "The site's application took too long to answer.",
        seen: "A slow database query or external call, a saturated worker pool queueing requests, a deadlock.",
        fix: "Find the slow path in the app (its slow log); raise read_timeout only deliberately, and keep it below any outer load balancer's idle timeout.",
    },
    ProtocolError {
        id: "http_protocol_error", token: "http_protocol_error", status: 502, phase: ReadHead, side: Upstream, retry: Never,
        title: "The site's application sent an invalid answer",
        visitor: "The site's application answered with something that is not valid HTTP.",
        seen: "A service that does not speak HTTP on that port (a database, SSH), an app printing output before its headers, or a malformed status line.",
        fix: "Check that the upstream port serves HTTP/1.1 (`curl -v http://HOST:PORT/`).",
    },
    UpstreamSpeaksHttp2 {
        id: "upstream_speaks_http2", token: "http_protocol_error", status: 502, phase: ReadHead, side: Upstream, retry: Never,
        title: "The site's application sent an invalid answer",
        visitor: "The site's application speaks a different protocol than the gateway expects.",
        seen: "An HTTP/2-only (h2c, gRPC) backend behind a gateway that speaks HTTP/1.1 to it.",
        fix: "Enable HTTP/1.1 on the backend, or point the route at an HTTP/1.1 port.",
    },
    UpstreamSpeaksTls {
        id: "upstream_speaks_tls", token: "http_protocol_error", status: 502, phase: ReadHead, side: Upstream, retry: Never,
        title: "The site's application sent an invalid answer",
        visitor: "The site's application expects a secure connection.",
        seen: "A TLS port (443, 8443) listed as a plain-HTTP upstream.",
        fix: "Enable tls on the upstream, or point it at its plain-HTTP port.",
    },
    ResponseHeaderTooLarge {
        id: "response_header_too_large", token: "http_response_header_section_size", status: 502, phase: ReadHead, side: Upstream, retry: Never,
        title: "The site's application sent an answer that is too large",
        visitor: "The site's application sent response headers larger than the gateway accepts.",
        seen: "Large Set-Cookie headers (OAuth/JWT sessions), many Link or CSP headers, debug headers.",
        fix: "Shrink the app's response headers, or raise max_response_header_bytes on the upstream.",
    },
    ResponseIncomplete {
        id: "response_incomplete", token: "http_response_incomplete", status: 502, phase: ReadBody, side: Upstream, retry: Never,
        title: "The site's application stopped in the middle of its answer",
        visitor: "The site's application stopped sending before the page was complete.",
        seen: "The app crashed or was killed mid-response (OOM), a Content-Length that is larger than the body, a connection reset during the body.",
        fix: "Check the app's logs and memory at that time; check compression or middleware that rewrites bodies without fixing Content-Length.",
    },
    ResponseBodyTimeout {
        id: "response_body_timeout", token: "connection_read_timeout", status: 504, phase: ReadBody, side: Upstream, retry: Never,
        title: "The site's application stopped in the middle of its answer",
        visitor: "The site's application stopped sending part-way through its answer.",
        seen: "An app that stalls after its headers (a stuck stream, a slow export), longer than read_timeout between two reads.",
        fix: "Find why the app stalls mid-body; for deliberate long polls or streams raise read_timeout on that upstream.",
    },
    UpgradeFailed {
        id: "upgrade_failed", token: "http_upgrade_failed", status: 502, phase: ReadHead, side: Upstream, retry: Never,
        title: "The site's application refused the connection upgrade",
        visitor: "The site's application could not switch to the requested protocol (for example WebSocket).",
        seen: "The app answered 101 but the upgraded stream failed, or a WebSocket endpoint behind the wrong route.",
        fix: "Check the app's WebSocket endpoint and that the route sends upgrades to it.",
    },
    Internal {
        id: "internal_error", token: "proxy_internal_error", status: 500, phase: Route, side: Gateway, retry: Never,
        title: "The site's gateway had an internal problem",
        visitor: "Something went wrong inside the gateway in front of this site.",
        seen: "A bug in baton, or an exhausted local resource (file descriptors).",
        fix: "Look at baton's log line for this request ID; raise `ulimit -n` if it mentions too many open files; report a bug otherwise.",
    },
}

impl Cause {
    /// Whether this failure says something about the server itself, so it
    /// counts towards passive ejection. The application's own answers (big
    /// headers, a 500) do not, nor does baton's own state.
    pub const fn counts_against_server(self) -> bool {
        matches!(self.side(), Side::Upstream)
            && !matches!(
                self,
                Cause::ResponseHeaderTooLarge | Cause::UpgradeFailed | Cause::NoHealthyServer
            )
    }

    /// Whether a visitor retrying later may succeed (drives the error page's
    /// automatic retry and `Retry-After`).
    pub const fn transient(self) -> bool {
        !matches!(
            self,
            Cause::NoRoute
                | Cause::FileNotFound
                | Cause::Forbidden
                | Cause::ScriptNotFound
                | Cause::ProxyConfiguration
                | Cause::Internal
                | Cause::BodyTooLarge
                | Cause::RequestBodyIncomplete
                | Cause::RequestMalformed
                | Cause::RequestHeaderTooLarge
                | Cause::TransferCodingUnsupported
        )
    }

    /// The cause of a failed socket operation, from its errno number and the
    /// phase it happened in. The one errno table: the gateway's connect
    /// classifier and `baton logs` (nginx's `(111: ...)`, Apache's `(111)`)
    /// both use it, by number, because libc's wording differs (glibc, musl).
    pub fn from_errno(errno: i32, phase: Phase, unix: bool) -> Cause {
        use libc::*;
        match phase {
            Phase::Route | Phase::Dns | Phase::Connect => match errno {
                ECONNREFUSED => Cause::ConnectionRefused,
                ENOENT => Cause::SocketNotFound,
                EACCES | EPERM if unix => Cause::SocketPermission,
                ENOTSOCK | ECONNRESET if unix => Cause::SocketNotFound,
                EAGAIN => Cause::UpstreamBusy,
                ETIMEDOUT => Cause::ConnectionTimeout,
                EMFILE | ENFILE => Cause::Internal,
                // EHOSTUNREACH, ENETUNREACH, EADDRNOTAVAIL, SELinux's EACCES
                // on TCP: the path to the server is broken.
                _ => Cause::ConnectError,
            },
            Phase::Tls => match errno {
                ETIMEDOUT => Cause::ConnectionTimeout,
                _ => Cause::TlsProtocol,
            },
            Phase::WriteRequest => match errno {
                ETIMEDOUT => Cause::WriteTimeout,
                _ => Cause::ConnectionTerminated,
            },
            Phase::ReadHead => match errno {
                ETIMEDOUT => Cause::ResponseHeadTimeout,
                _ => Cause::ConnectionTerminated,
            },
            Phase::ReadBody => match errno {
                ETIMEDOUT => Cause::ResponseBodyTimeout,
                _ => Cause::ResponseIncomplete,
            },
        }
    }

    /// The cause with this stable id (`connection_refused`).
    pub fn from_id(id: &str) -> Option<Cause> {
        Cause::ALL.iter().copied().find(|c| c.id() == id)
    }

    /// The Markdown table published in `docs/errors.md`; a test keeps the
    /// two identical.
    pub fn markdown_table() -> String {
        let mut out = String::from(
            "| cause | status | Proxy-Status error | phase | retry | what usually causes it | fix |\n|---|---|---|---|---|---|---|\n",
        );
        for c in Cause::ALL {
            let retry = match c.retry() {
                Retry::NothingSent => "any method, next server",
                Retry::MaybeProcessed => "replay rules",
                Retry::Never => "never",
            };
            out.push_str(&format!(
                "| `{}` | {} | `{}` | {} | {} | {} | {} |\n",
                c.id(),
                c.status(),
                c.proxy_status(),
                c.phase().as_str(),
                retry,
                c.seen_when(),
                c.fix()
            ));
        }
        out
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_rfc_9209_recommendations() {
        for c in Cause::ALL {
            let t = c.proxy_status();
            let expected = match t {
                _ if t.ends_with("_timeout") => 504,
                "destination_unavailable" | "connection_limit_reached" => 503,
                "proxy_internal_error" | "proxy_configuration_error" => 500,
                // Deliberate deviations (docs/errors.md): a request no
                // route matches is the client's problem, and users expect
                // 404; a client over its rate limit gets 429; RFC 9209 fixes
                // no status for http_request_error: 413 and 431 say what is
                // wrong, 408 a request that did not arrive in time, 501
                // a transfer coding baton does not implement (RFC 9112
                // §6.1), 400 otherwise.
                "destination_not_found" => 404,
                // A hidden file or `..` under a FastCGI root, or a client
                // outside an allow list: 403; no credentials a route's
                // basic_auth accepts: 401 (RFC 9110 §15.5.2).
                "http_request_denied" if c.status() == 403 => 403,
                "http_request_denied" if *c == Cause::AuthRequired => 401,
                "http_request_denied" => 429,
                "http_request_error" => {
                    assert!([400, 408, 413, 431, 501].contains(&c.status()), "{c}");
                    c.status()
                }
                _ => 502,
            };
            assert_eq!(c.status(), expected, "{c}");
        }
    }

    #[test]
    fn ids_are_unique() {
        let mut ids: Vec<_> = Cause::ALL.iter().map(|c| c.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), Cause::ALL.len());
    }
}
