//! Where concrete types meet: connect and migrate, wire repositories → services → gRPC router,
//! bind, serve with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::{DatabaseSettings, JobsSettings, OutboxSettings, Settings};
use crate::domain::access::RolePermissions;
use crate::domain::clock::{Clock, SystemClock};
use crate::domain::redemption::Backoff;
use crate::grpc::agreements::AgreementGrpc;
use crate::grpc::auth::AuthLayer;
use crate::grpc::coupons::CouponGrpc;
use crate::grpc::earn::EarnGrpc;
use crate::grpc::ledger::LedgerGrpc;
use crate::grpc::limits::CallLimits;
use crate::grpc::metrics::MetricsLayer;
use crate::grpc::redeem::RedeemGrpc;
use crate::grpc::rules::RulesGrpc;
use crate::grpc::settings::SettingsGrpc;
use crate::grpc::sync::SyncGrpc;
use crate::mail::SmtpMailer;
use crate::persistence::access::SeaAccessRepository;
use crate::persistence::agreements::SeaAgreementRepository;
use crate::persistence::cached::{CACHE_TTL, CachedAccessRepository, CachedSettingsRepository};
use crate::persistence::catalog::SeaCatalogRepository;
use crate::persistence::coupons::SeaCouponRepository;
use crate::persistence::directory::SeaDirectoryRepository;
use crate::persistence::documents::SeaDocumentRepository;
use crate::persistence::idempotency::SeaIdempotencyRepository;
use crate::persistence::ledger::SeaLedgerRepository;
use crate::persistence::redemptions::SeaRedemptionRepository;
use crate::persistence::reservations::SeaReservationRepository;
use crate::persistence::rules::SeaRulesRepository;
use crate::persistence::settings::SeaSettingsRepository;
use crate::persistence::sync::SeaSyncRepository;
use crate::persistence::{
    CatalogRepository, CouponRepository, DirectoryRepository, IdempotencyRepository,
    LedgerRepository, RepoError, RulesRepository, SettingsRepository, db,
};
use crate::plugin::{self, ManifestGrpc};
use crate::proto::loyalty::v1 as pb;
use crate::proto::served_descriptor_set;
use crate::service::access::{AccessError, AccessService, KNOWN_ROLES};
use crate::service::agreements::AgreementService;
use crate::service::coupons::CouponService;
use crate::service::earn::{EarnDependencies, EarnService};
use crate::service::import::ImportService;
use crate::service::ledger::LedgerService;
use crate::service::outbox::{DispatchPolicy, DispatchReport, OutboxDispatcher};
use crate::service::pricing::Pricing;
use crate::service::promotions::PromotionsGateway;
use crate::service::redeem::{RedeemDependencies, RedeemService};
use crate::service::rules::RulesService;
use crate::service::settings::SettingsService;
use crate::service::sync::{CoreGateway, SyncLimits, SyncService};
use crate::sync::gateway::CoreClient;

/// The plugin manifest, served to the ONe plugin framework without a key.
pub const MANIFEST_SERVICE: &str = "one.plugin.v1.PluginManifestService";

/// Every loyalty service the server exposes, as health and reflection name them.
pub const LOYALTY_SERVICES: &[&str] = &[
    "one.loyalty.v1.EarnService",
    "one.loyalty.v1.RedeemService",
    "one.loyalty.v1.RulesService",
    "one.loyalty.v1.CouponService",
    "one.loyalty.v1.AgreementService",
    "one.loyalty.v1.LedgerService",
    "one.loyalty.v1.SettingsService",
    "one.loyalty.v1.SyncService",
];

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Database(#[from] RepoError),
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] AccessError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics exporter: {0}")]
    Metrics(String),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("embedded descriptor set: {0}")]
    Descriptors(#[from] prost::DecodeError),
    #[error("server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("configuration: {0}")]
    Config(String),
}

/// A built, bound server, ready to run.
pub struct Application {
    listener: TcpListener,
    port: u16,
    settings: Settings,
    db: DatabaseConnection,
    services: Services,
}

/// The use cases, wired to their repositories. Cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub access: Arc<AccessService>,
    pub settings: Arc<SettingsService>,
    pub agreements: Arc<AgreementService>,
    pub rules: Arc<RulesService>,
    pub ledger: Arc<LedgerService>,
    pub directory: Arc<dyn DirectoryRepository>,
    pub catalog: Arc<dyn CatalogRepository>,
    pub earn: Arc<EarnService>,
    pub coupons: Arc<CouponService>,
    pub redeem: Arc<RedeemService>,
    pub coupon_repo: Arc<dyn CouponRepository>,
    pub outbox: Arc<OutboxDispatcher>,
    pub sync: Arc<SyncService>,
    pub import: Arc<ImportService>,
    /// What each role may do.
    pub roles: Arc<RolePermissions>,
}

impl Services {
    /// Wires every service to the SeaORM repositories over `db`, and the outbox to the ONe core
    /// and the SMTP relay of `settings`.
    ///
    /// # Errors
    /// Malformed code format, core endpoint or SMTP settings.
    pub fn wire(
        db: &DatabaseConnection,
        clock: &Arc<dyn Clock>,
        settings: &Settings,
    ) -> Result<Self, StartupError> {
        let codes = settings.codes.format();
        codes
            .validate()
            .map_err(|e| StartupError::Config(format!("codes: {e}")))?;
        let core = CoreClient::new(&settings.core)
            .map_err(|e| StartupError::Config(format!("core.endpoint: {e}")))?;
        let mailer =
            SmtpMailer::new(&settings.smtp).map_err(|e| StartupError::Config(e.to_string()))?;
        let requests: Arc<dyn IdempotencyRepository> =
            Arc::new(SeaIdempotencyRepository::new(db.clone()));
        let settings_repo: Arc<dyn SettingsRepository> = Arc::new(CachedSettingsRepository::new(
            Arc::new(SeaSettingsRepository::new(db.clone())),
            CACHE_TTL,
        ));
        let directory: Arc<dyn DirectoryRepository> =
            Arc::new(SeaDirectoryRepository::new(db.clone()));
        let catalog: Arc<dyn CatalogRepository> = Arc::new(SeaCatalogRepository::new(db.clone()));
        let rules_repo: Arc<dyn RulesRepository> = Arc::new(SeaRulesRepository::new(db.clone()));
        let ledger_repo: Arc<dyn LedgerRepository> =
            Arc::new(SeaLedgerRepository::new(db.clone(), Arc::clone(clock)));
        let agreements = Arc::new(AgreementService::new(
            Arc::new(SeaAgreementRepository::new(db.clone())),
            Arc::clone(&directory),
            Arc::clone(&settings_repo),
            Arc::clone(&requests),
            Arc::clone(clock),
        ));
        let (documents, redemptions) = ledger_writers(db, clock, settings);
        let earn = Arc::new(EarnService::new(EarnDependencies {
            pricing: Pricing::new(Arc::clone(&catalog), Arc::clone(&rules_repo)),
            documents: Arc::new(documents),
            catalog: Arc::clone(&catalog),
            ledger: Arc::clone(&ledger_repo),
            settings: Arc::clone(&settings_repo),
            clock: Arc::clone(clock),
        }));
        let coupon_repo: Arc<dyn CouponRepository> = Arc::new(SeaCouponRepository::new(db.clone()));
        let core = Arc::new(core);
        let sync = sync_service(db, &core, &settings_repo, clock, settings);
        let coupons = Arc::new(CouponService::new(
            Arc::clone(&coupon_repo),
            Arc::clone(&core) as Arc<dyn PromotionsGateway>,
            Arc::clone(&settings_repo),
            Arc::clone(&requests),
            Arc::clone(clock),
        ));
        let redeem = Arc::new(RedeemService::new(RedeemDependencies {
            coupons: Arc::clone(&coupon_repo),
            redemptions: Arc::new(redemptions),
            reservations: Arc::new(SeaReservationRepository::new(db.clone(), Arc::clone(clock))),
            directory: Arc::clone(&directory),
            ledger: Arc::clone(&ledger_repo),
            settings: Arc::clone(&settings_repo),
            requests: Arc::clone(&requests),
            clock: Arc::clone(clock),
            codes,
        }));
        let outbox = Arc::new(OutboxDispatcher::new(
            Arc::clone(&redeem),
            core,
            Arc::new(mailer),
            Arc::clone(clock),
            dispatch_policy(&settings.outbox),
        ));
        Ok(Self {
            roles: Arc::new(role_permissions(settings)?),
            import: Arc::new(ImportService::new(Arc::clone(&earn))),
            outbox,
            sync,
            coupons,
            coupon_repo,
            redeem,
            access: access_service(db, clock),
            settings: Arc::new(SettingsService::new(
                Arc::clone(&settings_repo),
                Arc::clone(&requests),
                Arc::clone(clock),
            )),
            agreements,
            earn,
            rules: Arc::new(RulesService::new(
                rules_repo,
                Arc::clone(&settings_repo),
                Arc::clone(&requests),
                Arc::clone(clock),
            )),
            ledger: Arc::new(LedgerService::new(
                ledger_repo,
                Arc::clone(&directory),
                settings_repo,
                requests,
                Arc::clone(clock),
            )),
            directory,
            catalog,
        })
    }
}

/// The repositories of the two hot writes, with their group commit as configured.
fn ledger_writers(
    db: &DatabaseConnection,
    clock: &Arc<dyn Clock>,
    settings: &Settings,
) -> (SeaDocumentRepository, SeaRedemptionRepository) {
    let most = settings.database.write_batch_max;
    (
        SeaDocumentRepository::new(db.clone(), Arc::clone(clock)).with_write_batch_max(most),
        SeaRedemptionRepository::new(db.clone(), Arc::clone(clock)).with_write_batch_max(most),
    )
}

impl Application {
    /// Builds the application with the system clock.
    ///
    /// # Errors
    /// The database, the bootstrap keys, or the listen address.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// Builds the application with a given clock (tests pin it).
    ///
    /// # Errors
    /// The database, the bootstrap keys, or the listen address.
    pub async fn build_with_clock(
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartupError> {
        let db = db::connect(&settings.database).await?;
        if settings.database.auto_migrate {
            db::migrate(&db).await?;
        }
        let services = Services::wire(&db, &clock, &settings)?;
        bootstrap(&services.access, &settings).await?;
        let addr = settings.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Bind { addr, source })?
            .port();
        Ok(Self {
            listener,
            port,
            settings,
            db,
            services,
        })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The wired services, for tests and tools.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The database connection, for tests and tools.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Serves until `shutdown` completes: health turns `NOT_SERVING`, the drain delay passes, then
    /// the server stops accepting and waits for in-flight calls.
    ///
    /// # Errors
    /// The metrics exporter, reflection or the transport.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        start_metrics_exporter(&self.settings.metrics.listen)?;
        let server = &self.settings.server;
        let limit = server.max_message_bytes;
        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::Serving).await;
        let (reflection_v1, reflection_v1alpha) = reflection_services()?;

        macro_rules! limited {
            ($server:ty, $adapter:expr) => {
                <$server>::new($adapter)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit)
            };
        }
        let drain = Duration::from_millis(server.shutdown_drain_ms);
        let draining_health = health.clone();
        let registration = spawn_registration(&self.settings);
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: health NOT_SERVING, draining");
            set_health(&draining_health, ServingStatus::NotServing).await;
            if let Some((stop, task)) = registration {
                let _ = stop.send(true);
                // Deregistering must not hold the shutdown up for long.
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            }
            tokio::time::sleep(drain).await;
        };
        let jobs = spawn_jobs(&self.settings.jobs, &self.services);
        let outbox = spawn_outbox(&self.settings.outbox, &self.services);
        let sync = spawn_sync(&self.settings, &self.services);
        let statistics = spawn_statistics(&self.settings.database, &self.db);
        tracing::info!(port = self.port, "serving gRPC");
        let mut builder = Server::builder();
        if let Some(tls) = server_tls(&server.tls)? {
            builder = builder.tls_config(tls)?;
        }
        builder
            .timeout(server.request_timeout())
            .layer(MetricsLayer)
            .layer(AuthLayer::new(
                Arc::clone(&self.services.access),
                Arc::clone(&self.services.roles),
                Arc::new(CallLimits::new(&self.settings.limits)),
            ))
            .add_service(health_service)
            .add_service(
                crate::proto::plugin::v1::plugin_manifest_service_server::PluginManifestServiceServer::new(
                    ManifestGrpc::new(plugin::manifest(LOYALTY_SERVICES)),
                ),
            )
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(limited!(
                pb::settings_service_server::SettingsServiceServer<_>,
                SettingsGrpc::new(Arc::clone(&self.services.settings))
            ))
            .add_service(limited!(
                pb::earn_service_server::EarnServiceServer<_>,
                EarnGrpc::new(Arc::clone(&self.services.earn))
            ))
            .add_service(limited!(
                pb::redeem_service_server::RedeemServiceServer<_>,
                RedeemGrpc::new(Arc::clone(&self.services.redeem))
            ))
            .add_service(limited!(
                pb::rules_service_server::RulesServiceServer<_>,
                RulesGrpc::new(Arc::clone(&self.services.rules))
            ))
            .add_service(limited!(
                pb::coupon_service_server::CouponServiceServer<_>,
                CouponGrpc::new(Arc::clone(&self.services.coupons))
            ))
            .add_service(limited!(
                pb::agreement_service_server::AgreementServiceServer<_>,
                AgreementGrpc::new(Arc::clone(&self.services.agreements))
            ))
            .add_service(limited!(
                pb::ledger_service_server::LedgerServiceServer<_>,
                LedgerGrpc::new(Arc::clone(&self.services.ledger))
            ))
            .add_service(limited!(
                pb::sync_service_server::SyncServiceServer<_>,
                SyncGrpc::new(
                    Arc::clone(&self.services.sync),
                    Arc::clone(&self.services.import)
                )
            ))
            .serve_with_incoming_shutdown(accepting(self.listener), signal)
            .await?;
        for task in [jobs, outbox, sync, statistics].into_iter().flatten() {
            task.abort();
        }
        self.db.close_by_ref().await.ok();
        tracing::info!("stopped");
        Ok(())
    }
}

/// Runs the due documents every interval until the server stops.
fn spawn_jobs(settings: &JobsSettings, services: &Services) -> Option<tokio::task::JoinHandle<()>> {
    if !settings.enabled {
        return None;
    }
    let earn = Arc::clone(&services.earn);
    let ledger = Arc::clone(&services.ledger);
    let redeem = Arc::clone(&services.redeem);
    let interval = Duration::from_millis(settings.interval_ms.max(100));
    let batch = settings.batch_size.max(1);
    Some(spawn_every(interval, move || {
        let (earn, ledger, redeem) = (Arc::clone(&earn), Arc::clone(&ledger), Arc::clone(&redeem));
        async move {
            match earn.run_due(batch).await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "processed due documents"),
                Err(err) => tracing::warn!(%err, "due documents not processed; retried next tick"),
            }
            match ledger.run_lot_jobs(batch).await {
                Ok((0, 0)) => {}
                Ok((unlocked, expired)) => {
                    tracing::info!(unlocked, expired, "earn lots unlocked and expired");
                }
                Err(err) => tracing::warn!(%err, "lots not unlocked or expired; retried next tick"),
            }
            match redeem.release_expired(batch).await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "expired reservations released"),
                Err(err) => tracing::warn!(%err, "reservations not released; retried next tick"),
            }
        }
    }))
}

/// On PostgreSQL, analyzes every interval the tables that have doubled since they were last
/// analyzed (see [`crate::persistence::db::analyze_grown_tables`]): whatever wrote them, an earn
/// burst, an import or a synchronization, no connection keeps for long a plan made while a table
/// was nearly empty, autovacuum or not.
fn spawn_statistics(
    settings: &DatabaseSettings,
    db: &DatabaseConnection,
) -> Option<tokio::task::JoinHandle<()>> {
    if settings.analyze_interval_ms == 0
        || db.get_database_backend() != sea_orm::DbBackend::Postgres
    {
        return None;
    }
    let db = db.clone();
    let interval = Duration::from_millis(settings.analyze_interval_ms.max(100));
    Some(spawn_every(interval, move || {
        let db = db.clone();
        async move { crate::persistence::db::analyze_grown_tables_or_warn(&db).await }
    }))
}

/// Runs `round` every `interval` (a late round delays the next rather than bunching them) until
/// the task is aborted.
fn spawn_every<F, R>(interval: Duration, mut round: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> R + Send + 'static,
    R: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            round().await;
        }
    })
}

/// The configured permissions of the known roles.
fn role_permissions(settings: &Settings) -> Result<RolePermissions, StartupError> {
    let roles = RolePermissions::from_names(&settings.roles)
        .map_err(|e| StartupError::Config(format!("roles: {e}")))?;
    if let Some(unknown) = roles.roles().find(|r| !KNOWN_ROLES.contains(r)) {
        return Err(StartupError::Config(format!(
            "roles: {unknown:?} is not one of {}",
            KNOWN_ROLES.join(", ")
        )));
    }
    Ok(roles)
}

/// Synchronization over the ONe core client, with the configured limits.
fn sync_service(
    db: &DatabaseConnection,
    core: &Arc<CoreClient>,
    settings_repo: &Arc<dyn SettingsRepository>,
    clock: &Arc<dyn Clock>,
    settings: &Settings,
) -> Arc<SyncService> {
    Arc::new(SyncService::new(
        Arc::clone(core) as Arc<dyn CoreGateway>,
        Arc::new(SeaSyncRepository::new(db.clone())),
        Arc::clone(settings_repo),
        Arc::clone(clock),
        SyncLimits {
            batch_size: settings.sync.batch_size.clamp(1, 10_000),
            page_size: settings.sync.page_size.clamp(1, 10_000),
            max_batches: settings.sync.max_batches.max(1),
        },
    ))
}

/// Leases, and retries after 1×, 2×, 4× … the base delay, capped, with up to 20% jitter.
fn dispatch_policy(settings: &OutboxSettings) -> DispatchPolicy {
    DispatchPolicy {
        lease: Duration::from_millis(settings.lease_ms.max(1_000)),
        backoff: Backoff {
            base: Duration::from_millis(settings.retry_base_ms.max(1)),
            max: Duration::from_millis(settings.retry_max_ms.max(1)),
            jitter_percent: 20,
        },
    }
}

/// Delivers the outbox every interval until the server stops.
fn spawn_outbox(
    settings: &OutboxSettings,
    services: &Services,
) -> Option<tokio::task::JoinHandle<()>> {
    if !settings.enabled {
        return None;
    }
    let outbox = Arc::clone(&services.outbox);
    let interval = Duration::from_millis(settings.interval_ms.max(50));
    let batch = settings.batch_size.max(1);
    Some(spawn_every(interval, move || {
        let outbox = Arc::clone(&outbox);
        async move {
            match outbox.run_once(batch).await {
                Ok(report) if report == DispatchReport::default() => {}
                Ok(report) => tracing::info!(?report, "outbox dispatched"),
                Err(err) => tracing::warn!(%err, "outbox not dispatched; retried next tick"),
            }
        }
    }))
}

/// Reads ONe every interval until the server stops; each tenant at its own document
/// synchronization interval. Off when no ONe core endpoint is configured.
fn spawn_sync(settings: &Settings, services: &Services) -> Option<tokio::task::JoinHandle<()>> {
    if !settings.sync.enabled || settings.core.endpoint.trim().is_empty() {
        return None;
    }
    let sync = Arc::clone(&services.sync);
    let interval = Duration::from_millis(settings.sync.interval_ms.max(100));
    Some(spawn_every(interval, move || {
        let sync = Arc::clone(&sync);
        async move {
            if let Err(err) = sync.run_due_tenants().await {
                tracing::warn!(%err, "synchronization round failed; retried next tick");
            }
        }
    }))
}

/// The server's TLS configuration, when a certificate is configured; mutual TLS when client CAs
/// are.
fn server_tls(
    settings: &crate::config::TlsSettings,
) -> Result<Option<tonic::transport::ServerTlsConfig>, StartupError> {
    if !settings.enabled() {
        return Ok(None);
    }
    let read = |path: &str| {
        std::fs::read(path).map_err(|e| StartupError::Config(format!("server.tls: {path}: {e}")))
    };
    let identity =
        tonic::transport::Identity::from_pem(read(&settings.cert_path)?, read(&settings.key_path)?);
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    if !settings.client_ca_path.trim().is_empty() {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
            &settings.client_ca_path,
        )?));
    }
    Ok(Some(tls))
}

/// Reflection v1 and v1alpha (grpcurl 1.8 only speaks v1alpha), listing what this server
/// answers: the loyalty services, the plugin manifest and health.
fn reflection_services() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    StartupError,
> {
    let answered: Vec<&str> = LOYALTY_SERVICES
        .iter()
        .copied()
        .chain([MANIFEST_SERVICE])
        .collect();
    let descriptors = served_descriptor_set(&answered)?;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_file_descriptor_set(descriptors.clone())
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.BadRequest and friends, so that clients can show field violations.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((reflection().build_v1()?, reflection().build_v1alpha()?))
}

/// Keeps the plugin registered while serving, when a registry is configured: the stop sender
/// and the task (which deregisters once stopped).
fn spawn_registration(
    settings: &Settings,
) -> Option<(
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
)> {
    let mut plugin_settings = settings.plugin.clone();
    if plugin_settings.registry_endpoint.trim().is_empty() {
        return None;
    }
    if plugin_settings.instance_id.is_empty() {
        plugin_settings.instance_id =
            format!("{}-{}", plugin::PLUGIN_ID, crate::service::random_id());
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(plugin::stay_registered(
        plugin_settings,
        plugin::manifest(LOYALTY_SERVICES),
        stopped,
    ));
    Some((stop, task))
}

/// API keys, looked up through a short-lived cache: every call authenticates.
fn access_service(db: &DatabaseConnection, clock: &Arc<dyn Clock>) -> Arc<AccessService> {
    Arc::new(AccessService::new(
        Arc::new(CachedAccessRepository::new(
            Arc::new(SeaAccessRepository::new(db.clone())),
            CACHE_TTL,
        )),
        Arc::clone(clock),
    ))
}

/// Creates the configured tenants and keys (the local demo key by default).
async fn bootstrap(access: &AccessService, settings: &Settings) -> Result<(), AccessError> {
    for tenant in &settings.bootstrap.tenants {
        access.ensure_tenant(&tenant.id, &tenant.name).await?;
    }
    for key in &settings.bootstrap.api_keys {
        access
            .install_key(&key.tenant, &key.key, &key.roles, &key.label)
            .await?;
    }
    Ok(())
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for service in LOYALTY_SERVICES {
        health.set_service_status(*service, status).await;
    }
}

/// Serves Prometheus metrics over HTTP when an address is configured.
fn start_metrics_exporter(listen: &str) -> Result<(), StartupError> {
    if listen.trim().is_empty() {
        return Ok(());
    }
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| StartupError::Metrics(format!("metrics.listen {listen:?}: {e}")))?;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| StartupError::Metrics(e.to_string()))
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::warn!(%err, "cannot listen for SIGTERM; only SIGINT stops the server");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// The connections a bound listener accepts, with `TCP_NODELAY` on each: a gRPC answer is
/// small and its caller waits for it, so it must not wait for the acknowledgement of an earlier
/// segment. (Serving from an incoming stream skips tonic's own default of `TCP_NODELAY` on.)
pub fn accepting(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_without_waiting_for_acknowledgements() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mut incoming = accepting(listener);
        let _caller = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let accepted = incoming
            .next()
            .await
            .expect("a connection")
            .expect("accepted");
        assert!(accepted.nodelay().expect("TCP_NODELAY readable"));
    }
}
