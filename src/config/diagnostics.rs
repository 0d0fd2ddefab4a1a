//! What a config problem says: the key, where it is, why, and the fix;
//! and the helpers that write them (serde's errors explained, "did you
//! mean").

use std::fmt;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub fix: String,
}

/// Every problem found in a config file, in file order.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} problem{}",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(
                f,
                "{}:{}:{}: {}: {}\n    fix: {}",
                self.file, e.line, e.col, e.key, e.message, e.fix
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Turns a serde error into the key it concerns and a fix.
pub(super) fn explain_serde_error(section: &str, msg: &str, at: &str) -> (String, String) {
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or(at);
        let expected: Vec<&str> = msg
            .split("expected ")
            .nth(1)
            .map(|e| {
                e.split(['`', ',', ' '])
                    .filter(|s| !s.is_empty() && *s != "one" && *s != "of" && *s != "or")
                    .collect()
            })
            .unwrap_or_default();
        let fix = match closest(field, &expected) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("remove it; valid keys here: {}", expected.join(", ")),
        };
        return (format!("{section}.{field}"), fix);
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or("");
        return (
            format!("{section}.{field}"),
            format!("add `{field} = ...` to this section (see docs/config.md)"),
        );
    }
    if msg.starts_with("invalid type") {
        return (section.to_string(), "check the value's type: durations are strings (\"2s\"), counts are integers, lists use [ ]".into());
    }
    (
        section.to_string(),
        "see docs/config.md for this section's keys".into(),
    )
}

/// The candidate within edit distance 2, if any (for "did you mean").
pub(super) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                cur.push(
                    (prev[j] + usize::from(ca != *cb))
                        .min(prev[j + 1] + 1)
                        .min(cur[j] + 1),
                );
            }
            prev = cur;
        }
        prev[b.len()]
    }
    candidates
        .iter()
        .map(|c| (distance(word, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, c)| c)
}
