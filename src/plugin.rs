//! Being an ONe plugin: the manifest the framework reads (what the plugin is, its services,
//! permissions and settings), and the registration with the framework's registry: register at
//! start-up (retried with backoff until the registry answers), heartbeat while serving,
//! deregister on graceful shutdown.

use std::time::Duration;

use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

use crate::config::PluginSettings;
use crate::domain::access::Permission;
use crate::domain::redemption::Backoff;
use crate::proto::plugin::v1 as plugin;

pub const PLUGIN_ID: &str = "one-loyalty";

/// What each permission lets a role do, as ONe's role editor shows it.
fn describe(permission: Permission) -> &'static str {
    match permission {
        Permission::SettingsRead => "See the loyalty settings",
        Permission::SettingsManage => "Change the loyalty settings",
        Permission::RulesRead => "See base points, multiplier rules and segment rates",
        Permission::RulesManage => "Change base points, multiplier rules and segment rates",
        Permission::CouponsRead => "See the reward catalogue",
        Permission::CouponsManage => "Create, change and archive coupons",
        Permission::PointsEarn => "Send invoices and corrections; preview points",
        Permission::PointsAdjust => "Add or take away points by hand",
        Permission::HistoryRead => "See balances, histories and how points were computed",
        Permission::Redeem => "Redeem coupons and use points as credit",
        Permission::RedemptionsManage => "Cancel redemptions",
        Permission::AgreementsRead => "See agreement versions, consents and eligibility",
        Permission::AgreementsManage => "Record consents and publish agreement versions",
        Permission::SyncManage => "Run and watch synchronization; import offline documents",
    }
}

/// The settings the framework shows and stores for a tenant (DOMAIN.md §8).
fn settings() -> Vec<plugin::SettingDescriptor> {
    let setting = |key: &str, kind: &str, description: &str, default: &str, shared: bool| {
        plugin::SettingDescriptor {
            key: key.into(),
            r#type: kind.into(),
            description: description.into(),
            default_value: default.into(),
            allowed_values: Vec::new(),
            shared,
        }
    };
    vec![
        setting(
            "company_logo_url",
            "url",
            "Company logo shown in e-mails",
            "",
            true,
        ),
        setting(
            "document_sync.interval_seconds",
            "uint32",
            "How often documents are synchronized",
            "300",
            true,
        ),
        setting(
            "document_sync.from_date",
            "date",
            "Documents of sale days before this are not read",
            "",
            true,
        ),
        setting(
            "loyalty_declaration_type_id",
            "string",
            "Loyalty Program Declaration Type ID",
            "",
            false,
        ),
        setting("points_scale", "uint32", "Decimals of points", "2", false),
        plugin::SettingDescriptor {
            allowed_values: vec!["MAX".into(), "MULTIPLY".into(), "ADD".into()],
            ..setting(
                "stacking_mode",
                "enum",
                "How multipliers combine",
                "MAX",
                false,
            )
        },
        setting(
            "offline_lines_earn",
            "bool",
            "Offline lines earn points",
            "true",
            false,
        ),
        setting(
            "lock_days",
            "uint32",
            "Days earned points stay locked",
            "0",
            false,
        ),
        setting(
            "expiry_months",
            "uint32",
            "Months after which points expire",
            "0",
            false,
        ),
        setting(
            "reservation_ttl_seconds",
            "uint32",
            "How long points reserved for a basket are held",
            "900",
            false,
        ),
        setting(
            "time_zone",
            "time_zone",
            "The tenant's time zone",
            "Europe/Warsaw",
            false,
        ),
    ]
}

/// The plugin's manifest: `services` are the fully qualified gRPC services it serves.
pub fn manifest(services: &[&str]) -> plugin::PluginManifest {
    plugin::PluginManifest {
        plugin_id: PLUGIN_ID.into(),
        name: "ONe Loyalty".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        services: services.iter().map(|s| (*s).to_owned()).collect(),
        permissions: Permission::ALL
            .iter()
            .map(|p| plugin::Permission {
                name: p.as_str().into(),
                description: describe(*p).into(),
            })
            .collect(),
        settings: settings(),
    }
}

/// `PluginManifestService`: open to the framework without a key (it is public information).
pub struct ManifestGrpc {
    manifest: plugin::PluginManifest,
}

impl ManifestGrpc {
    pub fn new(manifest: plugin::PluginManifest) -> Self {
        Self { manifest }
    }
}

#[tonic::async_trait]
impl plugin::plugin_manifest_service_server::PluginManifestService for ManifestGrpc {
    async fn get_manifest(
        &self,
        _request: Request<plugin::GetManifestRequest>,
    ) -> Result<Response<plugin::GetManifestResponse>, Status> {
        Ok(Response::new(plugin::GetManifestResponse {
            manifest: Some(self.manifest.clone()),
        }))
    }
}

/// Registers with the registry (retrying with backoff until it answers), then heartbeats at the
/// interval the registry asks for, until `stop` fires; then deregisters. Returns when done.
pub async fn stay_registered(
    settings: PluginSettings,
    manifest: plugin::PluginManifest,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(endpoint) = Endpoint::from_shared(settings.registry_endpoint.clone()) else {
        tracing::error!(endpoint = %settings.registry_endpoint, "plugin registry endpoint is malformed");
        return;
    };
    let channel = endpoint
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let mut registry =
        plugin::plugin_registry_service_client::PluginRegistryServiceClient::new(channel);
    let backoff = Backoff {
        base: Duration::from_millis(200),
        max: Duration::from_secs(30),
        jitter_percent: 20,
    };
    let mut attempt = 0;
    let registered = loop {
        if *stop.borrow() {
            return;
        }
        let request = plugin::RegisterPluginRequest {
            manifest: Some(manifest.clone()),
            endpoint: settings.advertised_endpoint.clone(),
            instance_id: settings.instance_id.clone(),
        };
        match registry.register_plugin(request).await {
            Ok(reply) => break reply.into_inner(),
            Err(status) => {
                attempt += 1;
                let delay = backoff.jittered(attempt, &mut rand::rng());
                tracing::warn!(%status, attempt, retry_in_ms = delay.as_millis(), "plugin registration failed");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    tracing::info!(registration_id = %registered.registration_id, "registered with the plugin registry");
    let every = Duration::from_secs(u64::from(registered.heartbeat_interval_seconds.max(1)));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {
                let beat = plugin::HeartbeatRequest {
                    registration_id: registered.registration_id.clone(),
                    serving: true,
                };
                if let Err(status) = registry.heartbeat(beat).await {
                    tracing::warn!(%status, "plugin heartbeat failed; sent again next interval");
                }
            }
            _ = stop.changed() => break,
        }
    }
    let leave = plugin::DeregisterPluginRequest {
        registration_id: registered.registration_id.clone(),
    };
    match registry.deregister_plugin(leave).await {
        Ok(_) => tracing::info!("deregistered from the plugin registry"),
        Err(status) => tracing::warn!(%status, "plugin deregistration failed"),
    }
}
