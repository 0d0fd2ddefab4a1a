//! The layer rule (ARCHITECTURE.md, "Layers"): a top-level module of
//! `src/` may import only the modules of lower layers, so the modules form
//! no import cycle and the request path never imports a tool. Read from
//! the source, as rust-analyzer's tidy tests do.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Bottom to top. Each may import (`crate::NAME`) only those before it.
const LAYERS: &[&str] = &[
    "core", "config", "upstream", "observe", "gateway", "proxy", "server", "origin", "cli",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The `crate::NAME` paths a file uses, outside comments.
fn imports(src: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in src.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
    }
    found
}

#[test]
fn modules_import_only_lower_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut violations = Vec::new();
    let mut seen = BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(mine) = LAYERS.iter().position(|l| *l == top) else {
            violations.push(format!(
                "{}: module `{top}` has no layer (add it to LAYERS and ARCHITECTURE.md)",
                rel.display()
            ));
            continue;
        };
        seen.insert(top.clone());
        for name in imports(&std::fs::read_to_string(f).unwrap()) {
            if name == top {
                continue;
            }
            match LAYERS.iter().position(|l| *l == name) {
                Some(theirs) if theirs < mine => {}
                Some(_) => violations.push(format!(
                    "{}: `{top}` imports `crate::{name}`, which is not below it",
                    rel.display()
                )),
                None => violations.push(format!(
                    "{}: `crate::{name}` is not a layered module",
                    rel.display()
                )),
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layer rule broken:\n{}",
        violations.join("\n")
    );
    assert_eq!(
        seen.len(),
        LAYERS.len(),
        "a layer without a module: {LAYERS:?} vs {seen:?}"
    );
}

#[test]
fn architecture_md_states_the_same_layers() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .unwrap();
    let line = LAYERS.join(" ← ");
    assert!(
        doc.contains(&line),
        "ARCHITECTURE.md should state the layer order as `{line}`"
    );
}

#[test]
fn the_layer_check_sees_an_upward_import() {
    // The check itself: a path in a comment is not an import, one in code is.
    let src = "// crate::cli is mentioned\nuse crate::proxy::handle;\nlet x = crate::core::clock::now_ms();\n";
    let got = imports(src);
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        vec!["core".to_string(), "proxy".to_string()]
    );
}
