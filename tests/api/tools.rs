//! The external tools the tool-driven suites run (Helm, promtool, Prometheus, Alertmanager,
//! node and chromium, the validators' Python, the OCI image and its runtime), found by one rule:
//! an explicit setting, else a copy in the repository, else PATH. A missing tool skips its test
//! with a note, except under `TASKPULSE_REQUIRE_TOOLS=1` (set by `scripts/test.sh`), where a
//! skip would pass a suite that never ran, so it fails instead.

use std::path::{Path, PathBuf};

/// Whether a missing tool fails the test rather than skipping it.
pub fn required() -> bool {
    std::env::var("TASKPULSE_REQUIRE_TOOLS").as_deref() == Ok("1")
}

/// `what` is missing: a failure when tools are required, else a skip note. `how` says how to
/// get it. Always `None`, so a finder can end with it.
#[track_caller]
pub fn missing<T>(what: &str, how: &str) -> Option<T> {
    assert!(!required(), "{what} and TASKPULSE_REQUIRE_TOOLS=1 ({how})");
    eprintln!("SKIPPED: {what} ({how})");
    None
}

/// The first of `names` in a directory of PATH.
pub fn on_path(names: &[&str]) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Where to look for a tool, in order: the file `env` names, `local` in the repository, then
/// `names` on PATH (the first name is the tool's name in messages).
pub struct Tool<'a> {
    pub env: Option<&'a str>,
    pub local: Option<&'a str>,
    pub names: &'a [&'a str],
    /// How to get it, for the skip note or the failure.
    pub how: &'a str,
}

impl Tool<'_> {
    /// The tool's path, or `None` after [`missing`].
    #[track_caller]
    pub fn find(&self) -> Option<PathBuf> {
        let from_env = self
            .env
            .and_then(std::env::var_os)
            .map(PathBuf::from)
            .filter(|p| p.is_file());
        let local = || {
            self.local
                .map(|rel| Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
                .filter(|p| p.is_file())
        };
        let found = from_env.or_else(local).or_else(|| on_path(self.names));
        if found.is_some() {
            return found;
        }
        let places: Vec<String> = self
            .env
            .map(|e| format!("${e}"))
            .into_iter()
            .chain(self.local.map(str::to_string))
            .chain(std::iter::once("PATH".to_string()))
            .collect();
        let what = format!(
            "{} not found ({})",
            self.names.join(" or "),
            places.join(", ")
        );
        missing(&what, self.how)
    }
}
