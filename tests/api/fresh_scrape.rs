//! A sidecar that has seen nothing yet, as Prometheus and Grafana first meet it: every family
//! the dashboards, the alert rules and the README name is in its first scrape, and every
//! counter whose label values are known in advance is there at 0, so panels show 0 rather than
//! "No data" and `increase()` sees the first event.

use std::collections::BTreeSet;

use crate::conductor::Emulator;
use crate::drift::{
    check_expr, dashboards, panel_queries, parse_exposition, parse_rules, readme_metrics,
    repo_path, rule_files, variable_queries,
};
use crate::process::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_sidecar_exports_every_named_family_and_its_counters_at_zero() {
    let emu = Emulator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    // no checker pass yet: its counters must exist before the first one
    let server = Server::start(
        dir.path(),
        &[
            "--database",
            &db,
            "--conductor-url",
            &emu.url(),
            "--check-interval",
            "1h",
        ],
        &[],
    )
    .await;
    let text = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let families = parse_exposition(&text);
    let mut problems = Vec::new();

    let rules: Vec<_> = rule_files()
        .into_iter()
        .map(|(p, t)| (p, parse_rules(&t)))
        .collect();
    let recorded: BTreeSet<String> = rules
        .iter()
        .flat_map(|(_, rs)| {
            rs.iter()
                .filter(|r| r.kind == "record")
                .map(|r| r.name.clone())
        })
        .collect();
    let mut checked = 0;
    for (path, rs) in &rules {
        for r in rs {
            let place = format!("{} {} `{}`", path.display(), r.kind, r.name);
            check_expr(&families, &recorded, &place, &r.expr, false, &mut problems);
            checked += 1;
        }
    }
    for (file, dashboard) in dashboards() {
        let exprs = panel_queries(&dashboard)
            .into_iter()
            .map(|q| q.expr)
            .chain(variable_queries(&dashboard));
        for expr in exprs {
            check_expr(
                &families,
                &recorded,
                &format!("dashboards/{file}"),
                &expr,
                false,
                &mut problems,
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "{checked} expressions");
    let readme = std::fs::read_to_string(repo_path("docs/metrics.md")).unwrap();
    for (name, kind, _) in readme_metrics(&readme) {
        match families.get(&name) {
            None => problems.push(format!("README's `{name}` is not in a fresh scrape")),
            Some(f) if f.kind != kind => {
                problems.push(format!("`{name}`: README says {kind}, /metrics {}", f.kind))
            }
            Some(_) => {}
        }
    }
    // every counter is there, at 0, from the start
    for (name, f) in &families {
        if f.kind == "counter" && f.samples == 0 {
            problems.push(format!("counter `{name}` has no series in a fresh scrape"));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n\n/metrics:\n{text}",
        problems.join("\n")
    );

    // the known label values, each of them
    let series = |name: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .count()
    };
    let checker_rules = series("taskpulse_checker_violations");
    for rule in [
        "lease_expired",
        "successor_finished",
        "wait_overdue",
        "store_divergence",
        "lost_terminal_update",
    ] {
        assert!(
            text.contains(&format!(
                "taskpulse_checker_repairs_total{{rule=\"{rule}\",outcome=\"repaired\"}} 0"
            )) || text.contains(&format!(
                "taskpulse_checker_repairs_total{{outcome=\"repaired\",rule=\"{rule}\"}} 0"
            )),
            "{rule}'s repairs at 0"
        );
    }
    assert_eq!(checker_rules, 5, "one violations series per rule");
    assert_eq!(
        series("taskpulse_checker_repairs_total"),
        checker_rules * 4,
        "rule x outcome"
    );
    assert_eq!(
        series("taskpulse_transitions_rejected_total"),
        7 * 9,
        "terminal x status"
    );
    // api, conductor_webhook, conductor_proxy, conductor_db, conductor_redis, kestra_db,
    // airflow_db x accepted, duplicate, rejected
    assert_eq!(series("taskpulse_updates_total"), 7 * 3, "source x outcome");
    assert_eq!(series("taskpulse_store_writes_total"), 3);
    assert_eq!(series("taskpulse_conductor_heartbeats_total"), 2);
    assert_eq!(series("taskpulse_conductor_db_polls_total"), 2, "ok, error");
    assert_eq!(series("taskpulse_kestra_db_polls_total"), 2, "ok, error");
    assert_eq!(series("taskpulse_airflow_db_polls_total"), 2, "ok, error");
    // (a scrape counts itself before it renders)
    let counter = |l: &&str| {
        l.contains("_total") && !l.starts_with('#') && !l.starts_with("taskpulse_scrapes_total")
    };
    for line in text.lines().filter(counter) {
        assert!(
            line.ends_with(" 0"),
            "a counter not at 0 on a fresh sidecar: {line}"
        );
    }
}
