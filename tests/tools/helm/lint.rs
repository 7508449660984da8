//! `helm lint`, and the values the chart refuses.

use super::*;

#[test]
fn helm_lint_is_clean_with_defaults_and_every_values_file() {
    let Some(helm) = helm() else { return };
    for values in [
        None,
        Some(ALL_ON),
        Some(SQLITE_PVC),
        Some(EXISTING_SECRET),
        Some(SIDECAR),
    ] {
        let mut args = vec!["lint", "--strict", CHART];
        if let Some(v) = values {
            args.extend(["-f", v]);
        }
        let out = run(&helm, &args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // helm 3.8 lint reports a template's `fail` as [INFO] only
        assert!(
            out.status.success()
                && !text.contains("[WARNING]")
                && !text.contains("[ERROR]")
                && !text.contains("Fail:"),
            "helm {args:?}: {}",
            describe(&out)
        );
    }
}

#[test]
fn helm_refuses_what_cannot_work() {
    let Some(helm) = helm() else { return };
    for (args, message) in [
        (vec!["--set", "replicaCount=2"], "SQLite is single-process"),
        (
            vec!["--set", "database.type=postgres"],
            "needs database.url or existingSecret",
        ),
        (
            vec!["--set", "database.type=mysql"],
            "database.type must be",
        ),
        (
            vec!["--set", "config.database=sqlite://x.db"],
            "config.database is set by the chart",
        ),
    ] {
        let err = template_error(&helm, &args);
        assert!(err.contains(message), "{args:?}: {err}");
    }
}
