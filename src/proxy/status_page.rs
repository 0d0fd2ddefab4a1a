//! `[server] status_page`: a page for visitors that says whether each
//! upstream works now, and since when (HTML, or JSON on request).

use super::context::Ctx;
use super::pages::Format;
use super::respond::Answer;
use crate::core::clock::clock;

/// `[server] status_page`: whether each upstream has a usable server now,
/// and since its servers last changed state; HTML, or JSON on request.
pub(super) fn render(ctx: &Ctx) -> Answer {
    let (gw, rt, accept) = (&ctx.gw, &ctx.rt, ctx.accept.as_ref());
    let now = crate::core::clock::now_ms();
    let since = gw.metrics.incidents.last_change_by_upstream();
    let open: std::collections::HashMap<String, i64> = gw
        .metrics
        .incidents
        .open_incidents()
        .into_iter()
        .map(|i| (i.upstream, i.started))
        .collect();
    // Per routed upstream, by the name visitors know it by: down (no
    // usable server), failing (an open incident, or the last request on
    // every usable server failed), or working; and since when.
    let rows: Vec<(String, &str, Option<i64>)> = rt
        .upstreams
        .iter()
        .enumerate()
        .filter_map(|(i, u)| {
            let public = public_name(&rt.config, i)?;
            let name = &*u.cfg.name;
            Some(if !u.servers.iter().any(|s| s.health.usable(now)) {
                (public, "down", since.get(name).copied())
            } else if let Some(t) = open.get(name) {
                (public, "failing", Some(*t))
            } else if u
                .servers
                .iter()
                .all(|s| !s.health.usable(now) || s.health.failing().is_some())
            {
                // Too few requests for an incident yet, but the last one
                // on every usable server failed (the dashboard's red).
                (public, "failing", None)
            } else {
                (public, "working", since.get(name).copied())
            })
        })
        .collect();
    let worst = |st: &str| rows.iter().any(|r| r.1 == st);
    // The whole site, when every part is down or failing.
    let whole = !rows.is_empty() && rows.iter().all(|r| r.1 != "working");
    let checked = clock(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    );
    let (ctype, body) = if Format::negotiate(accept.map(|v| v.as_bytes())) == Format::Json {
        let v = serde_json::json!({
            "up": !worst("down") && !worst("failing"),
            "time": crate::core::clock::now(),
            "services": rows.iter().map(|(n, st, t)| serde_json::json!({"name": n, "up": *st == "working", "state": st, "since": t.map(crate::core::clock::clock)})).collect::<Vec<_>>(),
        });
        ("application/json", v.to_string() + "\n")
    } else {
        let esc = crate::core::text::html_escape;
        let list: String = rows
            .iter()
            .map(|(n, st, t)| {
                format!(
                    "<li class=\"{st}\"><b>{}</b>: {}{}</li>\n",
                    esc(n),
                    match *st {
                        "down" => "not available",
                        "failing" => "having problems",
                        _ => "working",
                    },
                    t.map_or(String::new(), |t| format!(" (since {} UTC)", clock(t)))
                )
            })
            .collect();
        let (title, lead) = if whole && rows.iter().all(|r| r.1 == "down") {
            (
                "This site is down for everyone",
                "It is not just you: the site's gateway sees every part of it as not available.",
            )
        } else if whole {
            (
                "This site is having problems",
                "It is not just you: requests to every part of the site are failing right now.",
            )
        } else if worst("down") {
            (
                "Part of this site is down for everyone",
                "It is not just you: the site's gateway sees the parts below as not available.",
            )
        } else if worst("failing") {
            (
                "Part of this site is having problems",
                "It is not just you: many requests to the parts below are failing right now.",
            )
        } else {
            (
                "Everything is working",
                "If the site does not work for you, the problem is likely between you and the site (your network, DNS, or browser).",
            )
        };
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><meta http-equiv=\"refresh\" content=\"30\"><title>Status</title><style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}}.working b{{color:#15803d}}.failing b{{color:#b45309}}.down b{{color:#b91c1c}}</style></head><body>\n<h1>{title}</h1>\n<p>{lead}</p>\n<ul>\n{list}</ul>\n<p><small>Checked {checked} UTC by the site's gateway; this page refreshes every 30 seconds.</small></p>\n</body></html>\n",
            ),
        )
    };
    Answer::Page {
        content_type: ctype,
        body,
    }
}

/// The name visitors know upstream `i` by: its `display_name`, else where
/// its routes lead (`/shop`, `shop.example.com`, "The rest of the site");
/// `None` when no route leads to it (visitors cannot reach it). Internal
/// upstream names are never shown.
fn public_name(cfg: &crate::config::Config, i: usize) -> Option<String> {
    let u = cfg.upstreams.get(i)?;
    let mine: Vec<&crate::config::Route> = cfg
        .routes
        .iter()
        .filter(|r| r.upstream == Some(i))
        .collect();
    if mine.is_empty() {
        return None;
    }
    if let Some(d) = &u.display_name {
        return Some(d.clone());
    }
    let alone = cfg.routes.iter().all(|r| r.upstream == Some(i));
    let names: Vec<String> = mine
        .iter()
        .map(|r| {
            let host = r.host.first().map_or(String::new(), |h| h.to_string());
            match (host.is_empty(), r.path.as_str()) {
                (true, "/") if alone => "The site".to_string(),
                (true, "/") => "The rest of the site".to_string(),
                (true, p) => p.to_string(),
                (false, "/") => host,
                (false, p) => format!("{host}{p}"),
            }
        })
        .collect();
    Some(names.join(", "))
}
