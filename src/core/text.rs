//! Small text helpers shared by every layer that writes for people.
//!
//! Owns: HTML escaping, and how a URL that may hold a secret is shown.
//! Must not: do I/O.

/// Escapes text for HTML (element content and quoted attributes).
pub fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A webhook URL as logs and the dashboard show it: the path and query
/// (where Slack and most hooks keep their secret) left out.
pub fn shown_url(u: &http::Uri) -> String {
    format!(
        "{}://{}/…",
        u.scheme_str().unwrap_or("http"),
        u.authority().map_or("", |a| a.as_str())
    )
}
