//! Credentials and tenant isolation at the API.

use one_loyalty::proto::loyalty::v1 as pb;

use crate::helpers::{DEMO_KEY, DEMO_TENANT, OTHER_KEY, OTHER_TENANT, TestApp, request_as};
use crate::on_both_backends;

on_both_backends!(TestApp:
    a_call_without_a_key_is_unauthenticated,
    an_unknown_key_is_unauthenticated,
    a_key_used_with_another_tenant_is_permission_denied,
    a_call_naming_no_tenant_is_permission_denied,
    one_tenants_settings_are_invisible_to_another,
);

async fn get(app: &TestApp, tenant: &str, key: &str) -> Result<pb::TenantSettings, tonic::Status> {
    app.settings_client()
        .get_settings(request_as(tenant, key, pb::GetSettingsRequest {}))
        .await
        .map(|r| r.into_inner().settings.expect("settings"))
}

async fn a_call_without_a_key_is_unauthenticated(app: &TestApp) {
    let status = get(app, DEMO_TENANT, "").await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

async fn an_unknown_key_is_unauthenticated(app: &TestApp) {
    let status = get(app, DEMO_TENANT, "not-a-key")
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

async fn a_key_used_with_another_tenant_is_permission_denied(app: &TestApp) {
    let status = get(app, OTHER_TENANT, DEMO_KEY).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let status = get(app, DEMO_TENANT, OTHER_KEY).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

async fn a_call_naming_no_tenant_is_permission_denied(app: &TestApp) {
    let status = get(app, "", DEMO_KEY).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

async fn one_tenants_settings_are_invisible_to_another(app: &TestApp) {
    let update = pb::UpdateSettingsRequest {
        request_id: "iso-1".into(),
        settings: Some(pb::TenantSettings {
            points_scale: 0,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["points_scale".into()],
        }),
        expected_revision: 0,
    };
    app.settings_client()
        .update_settings(request_as(DEMO_TENANT, DEMO_KEY, update.clone()))
        .await
        .expect("demo update");
    let other = get(app, OTHER_TENANT, OTHER_KEY)
        .await
        .expect("other tenant");
    assert_eq!((other.points_scale, other.revision), (2, 0));
    // The same request id is free in another tenant.
    let theirs = app
        .settings_client()
        .update_settings(request_as(OTHER_TENANT, OTHER_KEY, update))
        .await
        .expect("other update")
        .into_inner()
        .settings
        .expect("settings");
    assert_eq!(theirs.revision, 1);
    assert_eq!(
        get(app, DEMO_TENANT, DEMO_KEY)
            .await
            .expect("demo")
            .revision,
        1
    );
}
