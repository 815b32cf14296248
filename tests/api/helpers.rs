//! `spawn_app()` and friends: a server on port 0 with a fresh database, typed clients, and the
//! ledger-invariant check every scenario ends with.

use std::sync::Arc;

pub use crate::fakes::{LiveOutboxApp, OutboxApp, SyncApp};

use one_loyalty::config::{BootstrapApiKey, BootstrapTenant, Overrides, Settings};
use one_loyalty::domain::clock::{Clock, FixedClock, SystemClock};
use one_loyalty::domain::directory::{ClientRecord, UserRecord};
use one_loyalty::domain::tenant::TenantId;
use one_loyalty::persistence::LedgerRepository;
use one_loyalty::persistence::db;
use one_loyalty::persistence::entities::{balances, ledger_events, reservations};
use one_loyalty::persistence::ledger::SeaLedgerRepository;
use one_loyalty::proto::loyalty::v1 as pb;
use one_loyalty::startup::{Application, Services};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect,
};
use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

pub const DEMO_TENANT: &str = "demo";
pub const DEMO_KEY: &str = "demo-admin-key-local-only";
pub const OTHER_TENANT: &str = "acme";
pub const OTHER_KEY: &str = "acme-test-key";

/// Generates, for each named `async fn name(fixture)`, a module `name` with one test per
/// backend. The PostgreSQL test returns at once (and says so) when no URL is set; CI sets it and
/// fails when PostgreSQL is unreachable.
#[macro_export]
macro_rules! on_both_backends {
    ($fixture:ident: $($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let fixture = $crate::helpers::$fixture::new($crate::helpers::Backend::Sqlite).await;
                    super::$name(&fixture).await;
                    fixture.finish().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if !$crate::helpers::postgres_configured() {
                        eprintln!("skipped: LOYALTY_TEST_DATABASE_URL is not set");
                        return;
                    }
                    let fixture = $crate::helpers::$fixture::new($crate::helpers::Backend::Postgres).await;
                    super::$name(&fixture).await;
                    fixture.finish().await;
                }
            }
        )+
    };
}

/// A module `$module` with one test per backend for a scenario that takes the backend and builds
/// its own fixtures (`async fn scenario(backend: Backend)`); PostgreSQL as in `on_both_backends`.
#[macro_export]
macro_rules! per_backend {
    ($module:ident => $scenario:ident) => {
        mod $module {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$scenario($crate::helpers::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if !$crate::helpers::postgres_configured() {
                    eprintln!("skipped: LOYALTY_TEST_DATABASE_URL is not set");
                    return;
                }
                super::$scenario($crate::helpers::Backend::Postgres).await;
            }
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn postgres_configured() -> bool {
    std::env::var("LOYALTY_TEST_DATABASE_URL").is_ok_and(|url| !url.is_empty())
}

/// A fresh, migrated database: a temporary SQLite file, or a new PostgreSQL schema.
pub struct TestDb {
    pub db: DatabaseConnection,
    pub settings: one_loyalty::config::DatabaseSettings,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        let mut settings = Settings::load(None, &Overrides::default())
            .expect("default settings")
            .database;
        let mut dir = None;
        match backend {
            Backend::Sqlite => {
                let tmp = tempfile::tempdir().expect("temp dir");
                settings.url = format!("sqlite://{}", tmp.path().join("loyalty.db").display());
                dir = Some(tmp);
            }
            Backend::Postgres => {
                let url =
                    std::env::var("LOYALTY_TEST_DATABASE_URL").expect("LOYALTY_TEST_DATABASE_URL");
                let schema = format!("t_{}", random_suffix());
                let admin = sea_orm::Database::connect(url.as_str())
                    .await
                    .unwrap_or_else(|e| {
                        panic!("PostgreSQL at LOYALTY_TEST_DATABASE_URL is unreachable: {e}")
                    });
                admin
                    .execute_unprepared(&format!("CREATE SCHEMA \"{schema}\""))
                    .await
                    .expect("create schema");
                admin.close().await.ok();
                settings.url = url;
                settings.schema = Some(schema);
            }
        }
        settings.max_connections = 16;
        Self::connected(settings, dir).await
    }

    /// A store on the database `settings` name, migrated.
    pub async fn at(settings: one_loyalty::config::DatabaseSettings) -> Self {
        Self::connected(settings, None).await
    }

    async fn connected(
        settings: one_loyalty::config::DatabaseSettings,
        dir: Option<tempfile::TempDir>,
    ) -> Self {
        let db = db::connect(&settings).await.expect("connect");
        db::migrate(&db).await.expect("migrate");
        Self {
            db,
            settings,
            _dir: dir,
        }
    }

    /// Fails the test when any client's balance differs from the sum of its events.
    pub async fn assert_ledger_consistent(&self) {
        let repo = SeaLedgerRepository::new(
            self.db.clone(),
            std::sync::Arc::new(one_loyalty::domain::clock::SystemClock),
        );
        let mut ids: Vec<String> = balances::Entity::find()
            .select_only()
            .column(balances::Column::TenantId)
            .distinct()
            .into_tuple()
            .all(&self.db)
            .await
            .expect("tenants with balances");
        let with_events: Vec<String> = ledger_events::Entity::find()
            .select_only()
            .column(ledger_events::Column::TenantId)
            .distinct()
            .into_tuple()
            .all(&self.db)
            .await
            .expect("tenants with events");
        ids.extend(with_events);
        ids.sort();
        ids.dedup();
        for id in ids {
            let tenant = TenantId::parse(&id).expect("tenant id");
            for audit in repo.audit(&tenant).await.expect("audit") {
                let violations = audit.violations();
                assert!(
                    violations.is_empty(),
                    "ledger of tenant {id} broken: {violations:?}"
                );
            }
        }
        // The reserved part of every balance is what its held reservations hold.
        let held: Vec<(String, String, i64)> = reservations::Entity::find()
            .select_only()
            .column(reservations::Column::TenantId)
            .column(reservations::Column::ClientId)
            .column_as(
                sea_orm::sea_query::Expr::cust("CAST(SUM(points) AS BIGINT)"),
                "held",
            )
            .filter(reservations::Column::Status.eq("HELD"))
            .group_by(reservations::Column::TenantId)
            .group_by(reservations::Column::ClientId)
            .into_tuple()
            .all(&self.db)
            .await
            .expect("held reservations");
        let held: std::collections::BTreeMap<(String, String), i64> =
            held.into_iter().map(|(t, c, p)| ((t, c), p)).collect();
        for row in balances::Entity::find()
            .all(&self.db)
            .await
            .expect("balances")
        {
            let key = (row.tenant_id.clone(), row.client_id.clone());
            assert_eq!(
                row.reserved,
                held.get(&key).copied().unwrap_or(0),
                "reserved points of {key:?} differ from its held reservations"
            );
        }
    }

    pub async fn finish(&self) {
        self.assert_ledger_consistent().await;
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(16)
        .map(|c| char::from(c).to_ascii_lowercase())
        .collect()
}

/// A running server on port 0 over a fresh database.
pub struct TestApp {
    pub channel: Channel,
    /// The port the server listens on.
    pub port: u16,
    pub services: Services,
    /// The server's own pool (the store's is another).
    pub db: DatabaseConnection,
    pub store: TestDb,
    shutdown: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    server: std::sync::Mutex<
        Option<tokio::task::JoinHandle<Result<(), one_loyalty::startup::StartupError>>>,
    >,
}

impl TestApp {
    pub async fn new(backend: Backend) -> Self {
        Self::with_drain(backend, 0).await
    }

    /// A server whose shutdown keeps answering `NOT_SERVING` for `drain_ms` before it stops.
    pub async fn with_drain(backend: Backend, drain_ms: u64) -> Self {
        Self::build(backend, drain_ms, Arc::new(SystemClock)).await
    }

    async fn build(backend: Backend, drain_ms: u64, clock: Arc<dyn Clock>) -> Self {
        Self::build_with_metrics(backend, drain_ms, clock, String::new()).await
    }

    /// A server that also serves Prometheus metrics on `metrics_listen`. The recorder is global
    /// to the process: only one test may turn metrics on.
    pub async fn with_metrics(backend: Backend, metrics_listen: String) -> Self {
        Self::configured(backend, Arc::new(SystemClock), |s| {
            s.metrics.listen = metrics_listen;
        })
        .await
    }

    async fn build_with_metrics(
        backend: Backend,
        drain_ms: u64,
        clock: Arc<dyn Clock>,
        metrics_listen: String,
    ) -> Self {
        Self::configured(backend, clock, |s| {
            s.server.shutdown_drain_ms = drain_ms;
            s.metrics.listen = metrics_listen;
        })
        .await
    }

    /// A server whose settings `configure` changes after the test defaults are applied.
    pub async fn configured(
        backend: Backend,
        clock: Arc<dyn Clock>,
        configure: impl FnOnce(&mut Settings),
    ) -> Self {
        Self::on_store(TestDb::new(backend).await, clock, configure).await
    }

    /// A server on an existing store.
    pub async fn on_store(
        store: TestDb,
        clock: Arc<dyn Clock>,
        configure: impl FnOnce(&mut Settings),
    ) -> Self {
        let mut settings = Settings::load(None, &Overrides::default()).expect("settings");
        settings.server.listen = "127.0.0.1:0".parse().expect("address");
        settings.server.shutdown_drain_ms = 0;
        settings.metrics.listen = String::new();
        // Tests run the jobs and the outbox themselves, under a pinned clock where it matters.
        settings.jobs.enabled = false;
        settings.outbox.enabled = false;
        // Tests make bursts of calls on purpose; the rate-limit test turns limits back on.
        settings.limits = one_loyalty::config::LimitSettings::default();
        settings.database = store.settings.clone();
        settings.bootstrap.tenants.push(BootstrapTenant {
            id: OTHER_TENANT.into(),
            name: "Acme".into(),
        });
        settings.bootstrap.api_keys.push(BootstrapApiKey {
            tenant: OTHER_TENANT.into(),
            key: OTHER_KEY.into(),
            label: "test".into(),
            roles: vec!["admin".into()],
        });
        configure(&mut settings);
        let tls = settings.server.tls.enabled();
        let app = Application::build_with_clock(settings, clock)
            .await
            .expect("build application");
        let services = app.services().clone();
        let db = app.db().clone();
        let port = app.port();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        let endpoint = Channel::from_shared(format!("http://127.0.0.1:{port}")).expect("endpoint");
        // A TLS server is reached by the test's own TLS channel; this plaintext one stays idle.
        let channel = if tls {
            endpoint.connect_lazy()
        } else {
            endpoint
                .connect()
                .await
                .expect("connect to the test server")
        };
        Self {
            channel,
            port,
            services,
            db,
            store,
            shutdown: std::sync::Mutex::new(Some(tx)),
            server: std::sync::Mutex::new(Some(server)),
        }
    }

    /// A request with the demo tenant's admin credentials.
    #[allow(clippy::unused_self)] // a method, so that tests read `app.request(..)`
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        request_as(DEMO_TENANT, DEMO_KEY, message)
    }

    /// Creates or replaces a client of the demo tenant (synchronization does this in service).
    pub async fn seed_client(&self, client_id: &str, has_account: bool) {
        let record = ClientRecord {
            client_id: client_id.into(),
            name: client_id.into(),
            status: "ACTIVE".into(),
            has_account,
            segment_ids: vec![],
            updated_at: chrono::Utc::now(),
        };
        let tenant = TenantId::parse(DEMO_TENANT).expect("tenant");
        self.services
            .directory
            .save_client(&tenant, &record)
            .await
            .expect("save client");
    }

    /// Creates or replaces an active user of a demo-tenant client.
    pub async fn seed_user(&self, user_id: &str, client_id: &str) {
        let record = UserRecord {
            user_id: user_id.into(),
            client_id: client_id.into(),
            active: true,
            deactivated_at: None,
            updated_at: chrono::Utc::now(),
        };
        let tenant = TenantId::parse(DEMO_TENANT).expect("tenant");
        self.services
            .directory
            .save_user(&tenant, &record)
            .await
            .expect("save user");
    }

    pub fn settings_client(&self) -> pb::settings_service_client::SettingsServiceClient<Channel> {
        pb::settings_service_client::SettingsServiceClient::new(self.channel.clone())
    }

    /// Asks the server to stop and waits until it has.
    pub async fn stop(&self) {
        let sender = self.shutdown.lock().expect("lock").take();
        if let Some(tx) = sender {
            let _ = tx.send(());
        }
        let handle = self.server.lock().expect("lock").take();
        if let Some(handle) = handle {
            handle
                .await
                .expect("server task")
                .expect("server stopped cleanly");
        }
    }

    pub async fn finish(&self) {
        self.store.assert_ledger_consistent().await;
        self.stop().await;
    }
}

/// A server on a pinned clock, starting 2026-03-20 12:00 UTC.
pub struct ClockedApp {
    pub app: TestApp,
    pub clock: Arc<FixedClock>,
}

impl ClockedApp {
    pub async fn new(backend: Backend) -> Self {
        Self::configured(backend, |_| {}).await
    }

    /// A clocked server whose settings `configure` changes.
    pub async fn configured(backend: Backend, configure: impl FnOnce(&mut Settings)) -> Self {
        Self::on_store(TestDb::new(backend).await, configure).await
    }

    /// A clocked server on an existing store.
    pub async fn on_store(store: TestDb, configure: impl FnOnce(&mut Settings)) -> Self {
        let start = chrono::DateTime::parse_from_rfc3339("2026-03-20T12:00:00Z")
            .expect("instant")
            .to_utc();
        let clock = Arc::new(FixedClock::new(start));
        let app = TestApp::on_store(store, Arc::clone(&clock) as Arc<dyn Clock>, configure).await;
        Self { app, clock }
    }

    /// Moves the pinned clock to `rfc3339`.
    pub fn set_time(&self, rfc3339: &str) {
        self.clock.set(
            chrono::DateTime::parse_from_rfc3339(rfc3339)
                .expect("instant")
                .to_utc(),
        );
    }

    pub async fn finish(&self) {
        self.app.finish().await;
    }
}

impl std::ops::Deref for ClockedApp {
    type Target = TestApp;

    fn deref(&self) -> &TestApp {
        &self.app
    }
}

/// A request carrying `one-tenant` and a bearer key (either may be empty to leave it out).
pub fn request_as<T>(tenant: &str, key: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if !tenant.is_empty() {
        request.metadata_mut().insert(
            "one-tenant",
            MetadataValue::try_from(tenant).expect("tenant metadata"),
        );
    }
    if !key.is_empty() {
        request.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {key}")).expect("key metadata"),
        );
    }
    request
}

/// The field violations of an `INVALID_ARGUMENT` status.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let mut fields: Vec<String> = details
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    fields.sort();
    fields
}
