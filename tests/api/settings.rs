//! `SettingsService` end to end.

use one_loyalty::proto::loyalty::v1 as pb;

use crate::helpers::{TestApp, violated_fields};
use crate::on_both_backends;

on_both_backends!(TestApp:
    a_new_tenant_reads_the_documented_defaults,
    an_update_of_every_field_then_a_get_round_trips,
    a_masked_update_changes_only_the_named_fields,
    an_invalid_update_reports_every_field_and_changes_nothing,
    a_retried_update_returns_its_first_result_and_changes_nothing,
    a_request_id_reused_with_another_payload_is_already_exists,
    a_stale_expected_revision_is_aborted,
    concurrent_updates_each_get_their_own_revision,
);

fn mask(paths: &[&str]) -> prost_types::FieldMask {
    prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    }
}

fn update(
    request_id: &str,
    settings: pb::TenantSettings,
    paths: &[&str],
) -> pb::UpdateSettingsRequest {
    pb::UpdateSettingsRequest {
        request_id: request_id.into(),
        settings: Some(settings),
        update_mask: Some(mask(paths)),
        expected_revision: 0,
    }
}

async fn get(app: &TestApp) -> pb::TenantSettings {
    app.settings_client()
        .get_settings(app.request(pb::GetSettingsRequest {}))
        .await
        .expect("get")
        .into_inner()
        .settings
        .expect("settings")
}

async fn put(
    app: &TestApp,
    request: pb::UpdateSettingsRequest,
) -> Result<pb::TenantSettings, tonic::Status> {
    app.settings_client()
        .update_settings(app.request(request))
        .await
        .map(|r| r.into_inner().settings.expect("settings"))
}

async fn a_new_tenant_reads_the_documented_defaults(app: &TestApp) {
    let s = get(app).await;
    assert_eq!(s.points_scale, 2);
    assert_eq!(s.stacking_mode, pb::StackingMode::Max as i32);
    assert!(s.offline_lines_earn);
    assert_eq!(
        (s.lock_days, s.expiry_months, s.reservation_ttl_seconds),
        (0, 0, 900)
    );
    assert_eq!(s.time_zone, "Europe/Warsaw");
    assert_eq!(
        (
            s.day_close_grace_minutes,
            s.expiring_window_days,
            s.revision
        ),
        (60, 30, 0)
    );
    assert_eq!(s.updated_at, None);
}

fn every_field() -> pb::TenantSettings {
    pb::TenantSettings {
        company_logo_url: "https://cdn.example.com/acme/logo.png".into(),
        document_sync: Some(pb::DocumentSyncSettings {
            kinds: vec![pb::SyncDocumentKind::Invoice as i32],
            from_date: "2026-01-01".into(),
            interval_seconds: 600,
        }),
        loyalty_declaration_type_id: "decl-loyalty-7".into(),
        points_scale: 0,
        stacking_mode: pb::StackingMode::Multiply as i32,
        offline_lines_earn: false,
        lock_days: 14,
        expiry_months: 24,
        reservation_ttl_seconds: 1800,
        time_zone: "America/New_York".into(),
        day_close_grace_minutes: 120,
        expiring_window_days: 45,
        revision: 0,
        updated_at: None,
    }
}

async fn an_update_of_every_field_then_a_get_round_trips(app: &TestApp) {
    let wanted = every_field();
    let updated = put(app, update("all-1", wanted.clone(), &[]))
        .await
        .expect("update");
    let read = get(app).await;
    assert_eq!(updated, read);
    assert_eq!(read.revision, 1);
    assert!(read.updated_at.is_some());
    let strip = |s: pb::TenantSettings| pb::TenantSettings {
        revision: 0,
        updated_at: None,
        ..s
    };
    assert_eq!(strip(read), wanted);
}

async fn a_masked_update_changes_only_the_named_fields(app: &TestApp) {
    let settings = pb::TenantSettings {
        lock_days: 7,
        ..every_field()
    };
    put(
        app,
        update(
            "m-1",
            settings,
            &["lock_days", "document_sync.interval_seconds"],
        ),
    )
    .await
    .expect("update");
    let read = get(app).await;
    assert_eq!(read.lock_days, 7);
    assert_eq!(read.document_sync.expect("sync").interval_seconds, 600);
    assert_eq!(read.points_scale, 2, "not in the mask");
    assert_eq!(read.time_zone, "Europe/Warsaw", "not in the mask");
}

async fn an_invalid_update_reports_every_field_and_changes_nothing(app: &TestApp) {
    let bad = pb::TenantSettings {
        company_logo_url: "not a url".into(),
        points_scale: 7,
        time_zone: "Nowhere/City".into(),
        reservation_ttl_seconds: 5,
        ..every_field()
    };
    let status = put(app, update("bad-1", bad, &[]))
        .await
        .expect_err("invalid");
    assert_eq!(
        violated_fields(&status),
        [
            "settings.company_logo_url",
            "settings.points_scale",
            "settings.reservation_ttl_seconds",
            "settings.time_zone"
        ]
    );
    let status = put(app, update("bad-2", every_field(), &["revision", "colour"]))
        .await
        .expect_err("mask");
    assert_eq!(violated_fields(&status), ["update_mask", "update_mask"]);
    let status = put(app, update("", every_field(), &["lock_days"]))
        .await
        .expect_err("request id");
    assert_eq!(violated_fields(&status), ["request_id"]);
    assert_eq!(get(app).await.revision, 0, "nothing changed");
    // The refused request id is still free.
    assert_eq!(
        put(app, update("bad-1", every_field(), &["lock_days"]))
            .await
            .expect("valid")
            .revision,
        1
    );
}

async fn a_retried_update_returns_its_first_result_and_changes_nothing(app: &TestApp) {
    let first = put(app, update("retry-1", every_field(), &["points_scale"]))
        .await
        .expect("first");
    let other = pb::TenantSettings {
        points_scale: 3,
        ..every_field()
    };
    put(app, update("retry-2", other, &["points_scale"]))
        .await
        .expect("second change");
    let replayed = put(app, update("retry-1", every_field(), &["points_scale"]))
        .await
        .expect("retry");
    assert_eq!(replayed, first, "the retry answers with the first result");
    let now = get(app).await;
    assert_eq!(
        (now.revision, now.points_scale),
        (2, 3),
        "the retry changed nothing"
    );
}

async fn a_request_id_reused_with_another_payload_is_already_exists(app: &TestApp) {
    put(app, update("dup-1", every_field(), &["points_scale"]))
        .await
        .expect("first");
    let status = put(app, update("dup-1", every_field(), &["lock_days"]))
        .await
        .expect_err("reused");
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    let now = get(app).await;
    assert_eq!((now.revision, now.lock_days), (1, 0));
}

async fn a_stale_expected_revision_is_aborted(app: &TestApp) {
    put(app, update("rev-1", every_field(), &["points_scale"]))
        .await
        .expect("first");
    let mut guarded = update("rev-2", every_field(), &["lock_days"]);
    guarded.expected_revision = 5;
    let status = put(app, guarded.clone()).await.expect_err("stale");
    assert_eq!(status.code(), tonic::Code::Aborted);
    guarded.request_id = "rev-3".into();
    guarded.expected_revision = 1;
    assert_eq!(
        put(app, guarded).await.expect("current revision").revision,
        2
    );
}

async fn concurrent_updates_each_get_their_own_revision(app: &TestApp) {
    let calls = (1..=10_u32).map(|i| {
        let settings = pb::TenantSettings {
            lock_days: i,
            ..every_field()
        };
        put(app, update(&format!("conc-{i}"), settings, &["lock_days"]))
    });
    let results = futures::future::join_all(calls).await;
    let mut revisions: Vec<u32> = results
        .into_iter()
        .map(|r| r.expect("update").revision)
        .collect();
    revisions.sort_unstable();
    assert_eq!(revisions, (1..=10).collect::<Vec<_>>());
    assert_eq!(get(app).await.revision, 10);
}
