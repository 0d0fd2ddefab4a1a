//! The published docs match the code.

#[test]
fn errors_md_has_the_cause_table() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/errors.md")).unwrap();
    assert!(
        doc.contains(&baton::core::cause::Cause::markdown_table()),
        "docs/errors.md is out of date: run `baton causes` and paste the table"
    );
}

#[test]
fn demo_self_test_passes() {
    let port = baton::origin::refusing_addr().port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args([
            "demo",
            "--self-test",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // stderr too: a demo that fails before its first step says why there.
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("\nok   ").count(), 9, "{stdout}");
    // The dashboard's "reload config" works on the demo: it runs from a file.
    assert!(
        stdout.contains("\nok   reload       POST http://"),
        "{stdout}"
    );
}

/// docs/metrics.md lists exactly the families `/metrics` serves, and the
/// Grafana dashboard only queries those.
#[tokio::test]
async fn metrics_md_and_the_grafana_dashboard_match_the_served_metrics() {
    use crate::support::{Gw, Origin, Script};
    let o = Origin::start(Script::Ok("hi".into())).await.unwrap();
    let gw = Gw::start(&crate::support::one_route(o.addr)).await;
    let text = gw.metrics().await;
    gw.stop().await;
    // `# TYPE baton_requests counter`: a counter's samples end in _total.
    let mut served: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            }
        })
        .collect();
    served.sort();
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{root}/docs/metrics.md")).unwrap();
    let mut documented: Vec<String> = doc
        .lines()
        .filter(|l| l.starts_with("| `baton_"))
        .map(|l| l[3..].split('`').next().unwrap().to_string())
        .collect();
    documented.sort();
    // Families without samples yet are not served: compare with what the
    // code registers, and check the served ones by their exact names.
    let src = std::fs::read_to_string(format!("{root}/src/observe/metrics.rs")).unwrap();
    let mut registered: Vec<String> = src
        .split("registry.register(")
        .skip(1)
        .map(|r| format!("baton_{}", r.split('"').nth(1).unwrap()))
        .collect();
    registered.sort();
    let mut bare: Vec<String> = documented
        .iter()
        .map(|d| d.trim_end_matches("_total").to_string())
        .collect();
    bare.sort();
    assert_eq!(
        bare, registered,
        "docs/metrics.md's table vs src/metrics.rs"
    );
    for s in &served {
        assert!(documented.contains(s), "{s} is served but not documented");
    }
    let dash = std::fs::read_to_string(format!("{root}/docs/grafana-dashboard.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&dash).unwrap();
    let mut queried = 0;
    for p in v["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(name) = word.strip_prefix("baton_").map(|_| word) {
                    let base = name.trim_end_matches("_bucket");
                    assert!(
                        documented.iter().any(|s| s == base),
                        "{name} in the dashboard is not a metric"
                    );
                    queried += 1;
                }
            }
        }
    }
    assert!(
        queried >= documented.len(),
        "every family has a panel: {queried}"
    );
}

/// The docs stand alone: every relative link names a file in the
/// repository, and nothing points outside it.
#[test]
fn docs_link_only_to_files_in_the_repository() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut bad = Vec::new();
    for (path, text) in markdown_files(root) {
        let dir = path.parent().unwrap();
        if text.contains("../shared") {
            bad.push(format!("{}: mentions ../shared", path.display()));
        }
        for (i, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(at) = rest.find("](") {
                rest = &rest[at + 2..];
                let target = rest.split([')', ' ', '#']).next().unwrap_or("");
                let external = target.is_empty()
                    || target.starts_with("http://")
                    || target.starts_with("https://")
                    || target.starts_with("mailto:");
                if !external && !dir.join(target).exists() {
                    bad.push(format!("{}:{}: {target}", path.display(), i + 1));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "links outside the repository:\n{}",
        bad.join("\n")
    );
}

/// A blank line inside a Markdown table ends it: the rows after it render
/// as text. Every table row is followed by another row or a non-row.
#[test]
fn no_markdown_table_is_split_by_a_blank_line() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut bad = Vec::new();
    for (path, text) in markdown_files(root) {
        let lines: Vec<&str> = text.lines().collect();
        for i in 1..lines.len().saturating_sub(1) {
            let header_follows = lines
                .get(i + 2)
                .is_some_and(|l| l.starts_with("|") && l.chars().all(|c| "|-: ".contains(c)));
            if lines[i].trim().is_empty()
                && lines[i - 1].starts_with('|')
                && lines[i + 1].starts_with('|')
                && !header_follows
            {
                bad.push(format!("{}:{}", path.display(), i + 1));
            }
        }
    }
    assert!(bad.is_empty(), "tables split by a blank line at {bad:?}");
}

/// README.md, ARCHITECTURE.md and docs/*.md, with their text.
fn markdown_files(root: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    let mut files = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    files
        .into_iter()
        .map(|p| {
            let t = std::fs::read_to_string(&p).unwrap();
            (p, t)
        })
        .collect()
}
