//! `baton incidents` and `baton report ID`: read the incident store.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config;

/// `baton incidents`: the incidents recorded, newest first.
pub fn list(config: &Path, dir: Option<PathBuf>, json: bool) -> ExitCode {
    let store = match incident_store(config, dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("baton incidents: {e}");
            return ExitCode::from(2);
        }
    };
    match store.list() {
        Ok(v) if json => {
            println!("{}", serde_json::json!({ "incidents": v }));
            ExitCode::SUCCESS
        }
        Ok(v) => {
            print!("{}", crate::observe::incidents::list_text(&v));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("baton incidents: the store cannot be read: {e}");
            ExitCode::from(2)
        }
    }
}

/// `baton report ID`: an incident's escalation report, Markdown and HTML.
pub fn report(id: i64, config: &Path, dir: Option<PathBuf>, out: Option<PathBuf>) -> ExitCode {
    let found = incident_store(config, dir).and_then(|s| s.get(id).map_err(|e| e.to_string()));
    match found {
        Ok(Some(i)) => {
            let prefix = out.unwrap_or_else(|| PathBuf::from(format!("incident-{id}")));
            let md = prefix.with_extension("md");
            let html = prefix.with_extension("html");
            if let Err(e) = std::fs::write(&md, crate::observe::incidents::report_md(&i))
                .and_then(|_| std::fs::write(&html, crate::observe::incidents::report_html(&i)))
            {
                eprintln!("baton report: cannot write {}: {e}", md.display());
                return ExitCode::from(2);
            }
            println!("{}\n{}", md.display(), html.display());
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("baton report: no incident {id} (`baton incidents` lists them)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("baton report: {e}");
            ExitCode::from(2)
        }
    }
}

/// The incident store in `dir`, or else the one named by the config's
/// `[incidents] dir` (by default in the state directory).
fn incident_store(
    config: &Path,
    dir: Option<PathBuf>,
) -> Result<crate::observe::incidents::Store, String> {
    let dir = match dir {
        Some(d) => d,
        // No config file: the default store (a fresh install).
        None if !config.exists() => config::state_dir().join("incidents"),
        None => config::load(config)
            .map_err(|e| e.to_string())?
            .incidents
            .dir
            .ok_or("the config says [incidents] dir = \"off\": incidents are not recorded")?,
    };
    crate::observe::incidents::Store::open_existing(&dir).map_err(|e| e.to_string())
}
