//! Error pages: what the visitor, the API client and curl see when baton
//! must answer for the upstream.
//!
//! Owns: content negotiation (HTML for browsers, RFC 9457
//! `application/problem+json` for APIs, short text for curl), the built-in
//! templates, and filling operator templates (`[error_pages]`).
//! Must not: pick the status or the cause (they come from `cause`), or leak
//! anything that is not already safe for `Proxy-Status` details.

use bytes::Bytes;

use crate::config::PageTemplates;
use crate::core::cause::Cause;
use crate::core::text::html_escape;

/// Which representation the client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Html,
    Json,
    Text,
}

impl Format {
    /// Browsers list `text/html`; curl sends `*/*`; anything else naming a
    /// type (`application/json`, `application/xml`, ...) is an API client.
    pub fn negotiate(accept: Option<&[u8]>) -> Format {
        let Some(a) = accept.and_then(|a| std::str::from_utf8(a).ok()) else {
            return Format::Text;
        };
        let mut any_type = false;
        for part in a.split(',') {
            let mt = part.split(';').next().unwrap_or("").trim();
            match mt {
                "text/html" | "application/xhtml+xml" => return Format::Html,
                "" | "*/*" | "text/plain" | "text/*" => {}
                _ => any_type = true,
            }
        }
        if any_type { Format::Json } else { Format::Text }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Html => "text/html; charset=utf-8",
            Format::Json => "application/problem+json",
            Format::Text => "text/plain; charset=utf-8",
        }
    }
}

/// What a page may say about one failed request.
pub struct PageInfo<'a> {
    pub cause: Cause,
    pub status: u16,
    pub details: Option<&'a str>,
    pub request_id: &'a str,
    pub retry_after: Option<u64>,
    /// `[server] status_page`: linked from the page.
    pub status_page: Option<&'a str>,
    /// The request may be sent again by the page (GET, HEAD, OPTIONS): a
    /// form POST reloaded by the page's script would be a duplicate order.
    pub safe_method: bool,
}

/// Renders the body for `format`, from the operator's template if given.
pub fn render(format: Format, p: &PageInfo<'_>, templates: &PageTemplates) -> Bytes {
    let custom = match format {
        Format::Html => templates.html.as_deref(),
        Format::Json => templates.json.as_deref(),
        Format::Text => templates.text.as_deref(),
    };
    let body = match (custom, format) {
        (Some(t), f) => fill(t, p, f),
        (None, Format::Html) => fill(HTML, p, Format::Html),
        (None, Format::Json) => json(p),
        (None, Format::Text) => text(p),
    };
    Bytes::from(body)
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

fn retry_words(p: &PageInfo<'_>) -> String {
    if !p.cause.transient() {
        return "Trying again will not help until the site's operator changes its configuration."
            .into();
    }
    let when = match p.retry_after {
        Some(s) => format!("in about {s} seconds"),
        None => "in a little while".into(),
    };
    if p.safe_method {
        format!("It is worth trying again {when}; this page will do so by itself.")
    } else {
        // What was sent (a form, an order) must not be sent twice behind
        // the visitor's back.
        format!(
            "It is worth trying again {when}. What you sent may or may not have been received: check before sending it again."
        )
    }
}

fn text(p: &PageInfo<'_>) -> String {
    let mut s = format!("{} {}: {}\n", p.status, reason(p.status), p.cause.title());
    s.push_str(p.cause.visitor_text());
    s.push('\n');
    if let Some(d) = p.details {
        s.push_str("details: ");
        s.push_str(d);
        s.push('\n');
    }
    s.push_str(&format!(
        "proxy-status: {}\nrequest-id: {}\n",
        p.cause.proxy_status(),
        p.request_id
    ));
    s
}

fn json(p: &PageInfo<'_>) -> String {
    let v = serde_json::json!({
        "type": format!("urn:baton:cause:{}", p.cause.id()),
        "title": p.cause.title(),
        "status": p.status,
        "detail": p.details.unwrap_or(p.cause.visitor_text()),
        "request_id": p.request_id,
        "proxy_status": p.cause.proxy_status(),
        "cause": p.cause.id(),
        "retry_after": p.retry_after,
    });
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// Replaces `{{name}}` placeholders (documented in docs/config.md).
fn fill(template: &str, p: &PageInfo<'_>, f: Format) -> String {
    let esc = |s: &str| match f {
        Format::Html => html_escape(s),
        Format::Json => {
            let q = serde_json::to_string(s).unwrap_or_default();
            q[1..q.len() - 1].to_string()
        }
        Format::Text => s.to_string(),
    };
    let retry = p.retry_after.map_or(String::new(), |r| r.to_string());
    let auto = if p.cause.transient() && p.safe_method {
        "1"
    } else {
        "0"
    };
    let status_link = match (p.status_page, f) {
        (Some(path), Format::Html) => format!(
            "<p><a href=\"{}\">Is it down for everyone? The site's status</a></p>",
            html_escape(path)
        ),
        (Some(path), _) => esc(path),
        (None, _) => String::new(),
    };
    let vars: [(&str, String); 12] = [
        ("status", p.status.to_string()),
        ("reason", reason(p.status).to_string()),
        ("title", esc(p.cause.title())),
        ("explanation", esc(p.cause.visitor_text())),
        ("details", esc(p.details.unwrap_or(""))),
        ("cause", p.cause.id().to_string()),
        ("proxy_status", p.cause.proxy_status().to_string()),
        ("request_id", esc(p.request_id)),
        ("retry_after", retry),
        ("retry_words", esc(&retry_words(p))),
        ("auto_retry", auto.to_string()),
        ("status_link", status_link),
    ];
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find("}}") {
            Some(j) => {
                let name = after[..j].trim();
                match vars.iter().find(|(k, _)| *k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(&rest[i..i + 2 + j + 2]),
                }
                rest = &after[j + 2..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The built-in page. Its script retries after 5 s, 10 s, 20 s ... (capped
/// at 5 min, counted per path in sessionStorage), never in a tight loop.
const HTML: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{{status}} {{reason}}: {{title}}</title>
<style>
body{font:16px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:40rem;margin:8vh auto;padding:2rem;background:#fff;border-radius:12px;box-shadow:0 1px 4px #0001}
h1{font-size:1.5rem;margin:0 0 .5rem}.code{color:#8a93a6;font-weight:600;letter-spacing:.05em}
.ok{background:#eef6ee;border-left:4px solid #3a8f3a;padding:.6rem 1rem;margin:1rem 0}
details{margin-top:1.5rem;color:#4a5266}code{background:#f0f1f4;padding:.1rem .3rem;border-radius:4px}
small{color:#8a93a6}
</style></head>
<body><main>
<div class="code">{{status}} {{reason}}</div>
<h1>{{title}}</h1>
<p>{{explanation}}</p>
<p class="ok">This is not a problem with your browser, device or connection. Refreshing hard, clearing your cache or flushing DNS won't help.</p>
<p>{{retry_words}} <span id="countdown"></span></p>
<details><summary>For the site's operator</summary>
<p>Cause <code>{{cause}}</code>, <code>Proxy-Status: baton; error={{proxy_status}}</code>.</p>
<p>{{details}}</p>
<p>Search baton's log for this request ID; <code>docs/errors.md</code> lists the fix for each cause.</p>
</details>
{{status_link}}
<p><small>Request ID <code id="rid">{{request_id}}</code></small></p>
</main>
<script>
(function(){
  if ("{{auto_retry}}" !== "1") return;
  var key = "baton-retry:" + location.pathname, n = 0;
  try { n = +(sessionStorage.getItem(key) || 0); sessionStorage.setItem(key, n + 1); } catch (e) {}
  var first = +"{{retry_after}}" || 5;
  var wait = Math.min(first * Math.pow(2, n), 300), el = document.getElementById("countdown");
  (function tick(){
    el.textContent = "(retrying in " + wait + " s)";
    if (wait-- <= 0) { location.reload(); return; }
    setTimeout(tick, 1000);
  })();
})();
</script>
</body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some(b"*/*")), Format::Text);
        assert_eq!(
            Format::negotiate(Some(b"text/html,application/xhtml+xml,*/*;q=0.8")),
            Format::Html
        );
        assert_eq!(Format::negotiate(Some(b"application/json")), Format::Json);
        assert_eq!(Format::negotiate(Some(b"application/xml")), Format::Json);
    }

    #[test]
    fn templates_fill_and_escape() {
        let p = PageInfo {
            safe_method: true,
            status_page: None,
            cause: Cause::ConnectionRefused,
            status: 502,
            details: Some("<x>"),
            request_id: "abc",
            retry_after: None,
        };
        let t = PageTemplates {
            html: Some("{{status}} {{details}} {{request_id}} {{nope}}".into()),
            ..Default::default()
        };
        assert_eq!(
            &render(Format::Html, &p, &t)[..],
            b"502 &lt;x&gt; abc {{nope}}"
        );
    }
}
