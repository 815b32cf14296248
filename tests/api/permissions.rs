//! The permission matrix: every loyalty RPC called with a key of every role, with no key and
//! with another tenant's key, and answered (or refused) exactly as the permission table and the
//! configured roles say. An RPC missing from the table would be refused for everyone; the first
//! check makes sure the table names every RPC the server offers.

use std::collections::BTreeSet;

use one_loyalty::config::{Overrides, Settings};
use one_loyalty::domain::access::RolePermissions;
use one_loyalty::grpc::permissions::RPC_PERMISSIONS;
use one_loyalty::service::access::KNOWN_ROLES;
use prost::Message;
use tonic::Code;

use crate::helpers::{DEMO_KEY, DEMO_TENANT, OTHER_TENANT, TestApp, request_as};
use crate::on_both_backends;

on_both_backends!(TestApp:
    every_rpc_answers_each_role_exactly_as_the_permission_table_says,
);

/// Every method of every `one.loyalty.v1` service, as a path.
fn offered_methods() -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(one_loyalty::proto::FILE_DESCRIPTOR_SET)
        .expect("descriptors");
    set.file
        .iter()
        .filter(|f| f.package() == "one.loyalty.v1")
        .flat_map(|f| {
            f.service.iter().flat_map(|s| {
                s.method
                    .iter()
                    .map(move |m| format!("/one.loyalty.v1.{}/{}", s.name(), m.name()))
            })
        })
        .collect()
}

/// Calls `path` with an empty message; the status code it answers with. `acting_for` adds the
/// front office's client and user metadata.
async fn code_of(
    app: &TestApp,
    path: &'static str,
    tenant: &str,
    key: &str,
    acting_for: Option<(&str, &str)>,
) -> Code {
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let mut request = request_as(tenant, key, ());
    if let Some((client, user)) = acting_for {
        request
            .metadata_mut()
            .insert("one-client-id", client.parse().expect("metadata"));
        request
            .metadata_mut()
            .insert("one-user-id", user.parse().expect("metadata"));
    }
    let reply = grpc
        .unary(request, http::uri::PathAndQuery::from_static(path), codec)
        .await;
    reply.map_or_else(|status| status.code(), |_| Code::Ok)
}

async fn every_rpc_answers_each_role_exactly_as_the_permission_table_says(app: &TestApp) {
    let table: BTreeSet<String> = RPC_PERMISSIONS
        .iter()
        .map(|(p, _)| (*p).to_owned())
        .collect();
    assert_eq!(
        table,
        offered_methods(),
        "the table names every RPC, and only those"
    );
    let settings = Settings::load(None, &Overrides::default()).expect("settings");
    let roles = RolePermissions::from_names(&settings.roles).expect("roles");
    let mut keys = Vec::new();
    for role in KNOWN_ROLES {
        let issued = app
            .services
            .access
            .issue_key(DEMO_TENANT, &[(*role).to_owned()], "matrix")
            .await
            .expect("key");
        keys.push((*role, issued.secret));
    }

    let mut cases = 0;
    let mut refusals = Vec::new();
    for (path, permission) in RPC_PERMISSIONS {
        for (role, secret) in &keys {
            // The front office always acts for one client's user.
            let acting_for = (*role == "front-office").then_some(("org:fo", "u-fo"));
            let code = code_of(app, path, DEMO_TENANT, secret, acting_for).await;
            let allowed = roles.allows(&[(*role).to_owned()], *permission);
            let as_table_says = if allowed {
                !matches!(code, Code::PermissionDenied | Code::Unauthenticated)
            } else {
                code == Code::PermissionDenied
            };
            if !as_table_says {
                refusals.push(format!("{role} {path}: {code:?}, allowed = {allowed}"));
            }
            cases += 1;
        }
        assert_eq!(
            code_of(app, path, DEMO_TENANT, "", None).await,
            Code::Unauthenticated,
            "{path}"
        );
        assert_eq!(
            code_of(app, path, "", DEMO_KEY, None).await,
            Code::PermissionDenied,
            "{path}"
        );
        assert_eq!(
            code_of(app, path, OTHER_TENANT, DEMO_KEY, None).await,
            Code::PermissionDenied,
            "{path}: a key of another tenant"
        );
        let front_office = &keys
            .iter()
            .find(|(role, _)| *role == "front-office")
            .expect("front-office key")
            .1;
        assert_eq!(
            code_of(app, path, DEMO_TENANT, front_office, None).await,
            Code::PermissionDenied,
            "{path}: a front-office call that names no client"
        );
        cases += 4;
    }
    assert!(refusals.is_empty(), "{refusals:#?}");
    // A method the table does not name is refused even to an administrator.
    assert_eq!(
        code_of(
            app,
            "/one.loyalty.v1.LedgerService/DeleteEverything",
            DEMO_TENANT,
            DEMO_KEY,
            None
        )
        .await,
        Code::PermissionDenied
    );
    assert_eq!(cases, RPC_PERMISSIONS.len() * (KNOWN_ROLES.len() + 4));
    eprintln!("permission matrix: {cases} cases");
}
