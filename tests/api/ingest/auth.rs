//! The bearer token.

use super::*;

async fn the_api_needs_the_bearer_token_when_one_is_set(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_with(&db, |s| {
        s.http.auth_token = Some(Secret("s3cret-token".into()));
    })
    .await;
    let body = update("auth-1", "IN_PROGRESS");
    let post = |auth: Option<&'static str>| {
        let mut req = app.client.post(app.url("/api/v1/updates")).json(&body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    for bad in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cret-token-and-more"),
        Some("Bearer s3cret-toke"),
        Some("Bearer "),
        Some("s3cret-token"),
        Some("Basic czNjcmV0LXRva2Vu"),
    ] {
        let resp = post(bad).await.expect("request sent");
        assert_eq!(resp.status(), 401, "POST with {bad:?}");
        assert!(
            resp.headers().contains_key("www-authenticate"),
            "401 says how to authenticate"
        );
    }
    // nothing of the refused requests was applied
    app.settle().await;
    assert!(app.stored("auth-1").await.is_none());

    let get = |path: &str, auth: Option<&'static str>| {
        let mut req = app.client.get(app.url(path));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    for path in ["/api/v1/tasks", "/api/v1/tasks/auth-1"] {
        for bad in [None, Some("Bearer wrong")] {
            let resp = get(path, bad).await.expect("request sent");
            assert_eq!(resp.status(), 401, "GET {path} with {bad:?}");
        }
    }

    let resp = post(Some("Bearer s3cret-token"))
        .await
        .expect("request sent");
    assert_eq!(resp.status(), 200);
    let r: Value = resp.json().await.unwrap();
    assert_counts(&r, 1, 0, 0);
    let resp = get("/api/v1/tasks", Some("Bearer s3cret-token"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let list: Value = resp.json().await.unwrap();
    assert_eq!(list["count"], 1, "{list}");
    let resp = get("/api/v1/tasks/auth-1", Some("Bearer s3cret-token"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // the sidecar's own health and metrics need no token
    for path in ["/metrics", "/healthz", "/readyz"] {
        let resp = get(path, None).await.expect("request sent");
        assert_eq!(resp.status(), 200, "{path}");
    }
    // the refused requests were not counted as ingested updates
    let scrape = app.scrape().await;
    let count = |outcome| {
        crate::helpers::metric_value(
            &scrape,
            "taskpulse_updates_total",
            &[("source", "api"), ("outcome", outcome)],
        )
    };
    assert_eq!(count("accepted"), Some(1.0));
    assert_eq!(count("rejected"), Some(0.0));
}
store_test!(the_api_needs_the_bearer_token_when_one_is_set);
