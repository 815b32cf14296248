//! Stand-ins for what the service talks to, started by the tests themselves on port 0: the ONe
//! promotions service (which can be down or refuse codes on demand) and an SMTP listener that
//! keeps every message it receives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use one_loyalty::proto::core::v1 as core;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// How the fake promotions service answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Up,
    /// Every call fails with UNAVAILABLE.
    Down,
    /// Every code is refused for good.
    Rejecting,
}

#[derive(Debug, Default)]
struct PoolState {
    mode: Option<PoolMode>,
    /// Code → (pool, valid until, reference), as ONe would hold them.
    codes: BTreeMap<String, (String, String, String)>,
    calls: usize,
    already_present: usize,
    pools: Vec<core::CouponPool>,
}

/// The ONe promotions service, holding the codes it was given.
#[derive(Debug, Clone, Default)]
pub struct FakePromotions {
    state: Arc<Mutex<PoolState>>,
}

impl FakePromotions {
    /// Serves on a free port; returns the fake and its endpoint URL.
    pub async fn start() -> (Self, String) {
        let fake = Self::default();
        fake.set_mode(PoolMode::Up);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let server = core::promotion_service_server::PromotionServiceServer::new(fake.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (fake, url)
    }

    pub fn set_mode(&self, mode: PoolMode) {
        self.state.lock().expect("lock").mode = Some(mode);
    }

    /// The tenant's pools, as (id, active).
    pub fn set_pools(&self, pools: &[(&str, bool)]) {
        self.state.lock().expect("lock").pools = pools
            .iter()
            .map(|(id, active)| core::CouponPool {
                id: (*id).into(),
                name: format!("{id} codes"),
                campaign_id: format!("camp-{id}"),
                campaign_name: "Campaign".into(),
                active: *active,
                updated_at: None,
            })
            .collect();
    }

    /// The codes held, with (pool, valid until, reference).
    pub fn codes(&self) -> BTreeMap<String, (String, String, String)> {
        self.state.lock().expect("lock").codes.clone()
    }

    /// Calls received, and how many codes arrived a second time.
    pub fn calls(&self) -> (usize, usize) {
        let state = self.state.lock().expect("lock");
        (state.calls, state.already_present)
    }
}

#[tonic::async_trait]
impl core::promotion_service_server::PromotionService for FakePromotions {
    async fn list_coupon_pools(
        &self,
        request: tonic::Request<core::ListCouponPoolsRequest>,
    ) -> Result<tonic::Response<core::ListCouponPoolsResponse>, tonic::Status> {
        let m = request.into_inner();
        let state = self.state.lock().expect("lock");
        if state.mode == Some(PoolMode::Down) {
            return Err(tonic::Status::unavailable("ONe is down"));
        }
        // Pages of at most 2, to exercise paging.
        let size = m.page_size.clamp(1, 2);
        let start = (m.page_number.max(1) - 1) as usize * size as usize;
        let pools = state
            .pools
            .iter()
            .skip(start)
            .take(size as usize)
            .cloned()
            .collect();
        Ok(tonic::Response::new(core::ListCouponPoolsResponse {
            pools,
            page: Some(core::PageInfo {
                page_number: m.page_number,
                page_size: size,
                total_count: state.pools.len() as u64,
            }),
        }))
    }

    async fn add_coupon_codes(
        &self,
        request: tonic::Request<core::AddCouponCodesRequest>,
    ) -> Result<tonic::Response<core::AddCouponCodesResponse>, tonic::Status> {
        let tenant = request
            .metadata()
            .get("one-tenant")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let m = request.into_inner();
        let mut state = self.state.lock().expect("lock");
        state.calls += 1;
        match state.mode {
            Some(PoolMode::Down) => return Err(tonic::Status::unavailable("ONe is down")),
            Some(PoolMode::Rejecting) => {
                let results = m
                    .codes
                    .iter()
                    .map(|c| core::CodeResult {
                        code: c.code.clone(),
                        outcome: core::CodeOutcome::Rejected as i32,
                        reason: format!("pool {} is closed", m.pool_id),
                    })
                    .collect();
                return Ok(tonic::Response::new(core::AddCouponCodesResponse {
                    results,
                }));
            }
            _ => {}
        }
        assert_eq!(tenant, "demo", "the tenant travels as one-tenant metadata");
        let mut results = Vec::new();
        for code in m.codes {
            let outcome = if state.codes.contains_key(&code.code) {
                state.already_present += 1;
                core::CodeOutcome::AlreadyPresent
            } else {
                state.codes.insert(
                    code.code.clone(),
                    (m.pool_id.clone(), code.valid_until, code.reference),
                );
                core::CodeOutcome::Added
            };
            results.push(core::CodeResult {
                code: code.code,
                outcome: outcome as i32,
                reason: String::new(),
            });
        }
        Ok(tonic::Response::new(core::AddCouponCodesResponse {
            results,
        }))
    }
}

/// A message the SMTP listener accepted.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

/// A minimal SMTP server (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT), no TLS, no auth.
#[derive(Debug, Clone, Default)]
pub struct SmtpSink {
    received: Arc<Mutex<Vec<ReceivedMail>>>,
}

impl SmtpSink {
    /// Listens on a free port; returns the sink and the port.
    pub async fn start() -> (Self, u16) {
        let sink = Self::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let received = Arc::clone(&sink.received);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let received = Arc::clone(&received);
                tokio::spawn(async move {
                    let _ = serve_smtp(stream, received).await;
                });
            }
        });
        (sink, port)
    }

    pub fn received(&self) -> Vec<ReceivedMail> {
        self.received.lock().expect("lock").clone()
    }
}

async fn serve_smtp(
    stream: tokio::net::TcpStream,
    received: Arc<Mutex<Vec<ReceivedMail>>>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink.test ESMTP\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_owned();
        let upper = command.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            b"250-sink.test\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = command[10..].trim().to_owned();
            b"250 OK\r\n"
        } else if upper.starts_with("RCPT TO:") {
            to.push(command[8..].trim().to_owned());
            b"250 OK\r\n"
        } else if upper == "DATA" {
            write.write_all(b"354 go ahead\r\n").await?;
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(&line);
            }
            received.lock().expect("lock").push(ReceivedMail {
                from: std::mem::take(&mut from),
                to: std::mem::take(&mut to),
                data,
            });
            b"250 queued\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            b"250 OK\r\n"
        } else {
            b"502 not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
}

/// A clocked server wired to a fake ONe promotions service and an SMTP sink. The outbox runs
/// when the test asks (`live: false`) or every 50 ms (`live: true`).
pub struct OutboxApp {
    pub app: crate::helpers::ClockedApp,
    pub pool: FakePromotions,
    /// The fake promotions service's URL.
    pub pool_endpoint: String,
    pub smtp: SmtpSink,
}

impl OutboxApp {
    pub async fn new(backend: crate::helpers::Backend) -> Self {
        Self::start(backend, false).await
    }

    pub async fn start(backend: crate::helpers::Backend, live: bool) -> Self {
        let (pool, endpoint) = FakePromotions::start().await;
        let (smtp, port) = SmtpSink::start().await;
        let app = crate::helpers::ClockedApp::configured(backend, |s| {
            s.core.endpoint.clone_from(&endpoint);
            s.core.request_timeout_ms = 2_000;
            s.smtp.host = "127.0.0.1".into();
            s.smtp.port = port;
            s.smtp.security = one_loyalty::config::SmtpSecurity::None;
            s.smtp.from = "Loyalty <loyalty@shop.test>".into();
            s.outbox.enabled = live;
            s.outbox.interval_ms = 50;
        })
        .await;
        Self {
            app,
            pool,
            pool_endpoint: endpoint,
            smtp,
        }
    }

    pub async fn finish(&self) {
        self.app.finish().await;
    }
}

impl std::ops::Deref for OutboxApp {
    type Target = crate::helpers::ClockedApp;

    fn deref(&self) -> &crate::helpers::ClockedApp {
        &self.app
    }
}

/// [`OutboxApp`] with the dispatcher running in the background.
pub struct LiveOutboxApp(pub OutboxApp);

impl LiveOutboxApp {
    pub async fn new(backend: crate::helpers::Backend) -> Self {
        Self(OutboxApp::start(backend, true).await)
    }

    pub async fn finish(&self) {
        self.0.finish().await;
    }
}

impl std::ops::Deref for LiveOutboxApp {
    type Target = OutboxApp;

    fn deref(&self) -> &OutboxApp {
        &self.0
    }
}

/// A clocked server (2026-03-20 12:00 UTC) reading a simulated ONe started by the test, with
/// small batches and pages so that paging is exercised. The tenant's declaration type is the
/// simulator's and every product earns 1 point per unit.
pub struct SyncApp {
    pub app: crate::helpers::ClockedApp,
    pub sim: one_loyalty::sim::CoreSim,
    pub sim_endpoint: String,
}

impl SyncApp {
    pub async fn new(backend: crate::helpers::Backend) -> Self {
        let start = chrono::DateTime::parse_from_rfc3339("2026-03-20T12:00:00Z")
            .expect("instant")
            .to_utc();
        let sim = one_loyalty::sim::CoreSim::new(one_loyalty::sim::SimState::generate(
            one_loyalty::sim::SimSpec::default(),
            start,
        ));
        let sim_endpoint = start_sim(&sim).await;
        Self::with_sim(backend, sim, sim_endpoint).await
    }

    /// Another server over a fresh database, reading the same simulator.
    pub async fn with_sim(
        backend: crate::helpers::Backend,
        sim: one_loyalty::sim::CoreSim,
        sim_endpoint: String,
    ) -> Self {
        Self::configured(backend, sim, sim_endpoint, |_| {}).await
    }

    /// [`SyncApp::with_sim`] with settings that `configure` changes.
    pub async fn configured(
        backend: crate::helpers::Backend,
        sim: one_loyalty::sim::CoreSim,
        sim_endpoint: String,
        configure: impl FnOnce(&mut one_loyalty::config::Settings),
    ) -> Self {
        let endpoint = sim_endpoint.clone();
        let app = crate::helpers::ClockedApp::configured(backend, |s| {
            s.core.endpoint = endpoint;
            s.sync.enabled = false;
            s.sync.batch_size = 7;
            s.sync.page_size = 7;
            configure(s);
        })
        .await;
        prepare_tenant(&app).await;
        Self {
            app,
            sim,
            sim_endpoint,
        }
    }

    pub async fn finish(&self) {
        self.app.finish().await;
    }
}

impl std::ops::Deref for SyncApp {
    type Target = crate::helpers::ClockedApp;

    fn deref(&self) -> &crate::helpers::ClockedApp {
        &self.app
    }
}

/// Serves the simulator on a free port; returns its URL.
pub async fn start_sim(sim: &one_loyalty::sim::CoreSim) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let serving = sim.clone();
    tokio::spawn(async move {
        let _ = serving.run(listener, std::future::pending()).await;
    });
    url
}

/// The simulator's declaration type, and 1 point per unit of each of its 50 products.
async fn prepare_tenant(app: &crate::helpers::ClockedApp) {
    use one_loyalty::proto::loyalty::v1 as pb;
    pb::settings_service_client::SettingsServiceClient::new(app.channel.clone())
        .update_settings(app.request(pb::UpdateSettingsRequest {
            request_id: "sim-settings".into(),
            settings: Some(pb::TenantSettings {
                loyalty_declaration_type_id: one_loyalty::sim::DECLARATION_TYPE.into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["loyalty_declaration_type_id".into()],
            }),
            expected_revision: 0,
        }))
        .await
        .expect("settings");
    pb::rules_service_client::RulesServiceClient::new(app.channel.clone())
        .set_base_points(
            app.request(pb::SetBasePointsRequest {
                request_id: "sim-base-points".into(),
                effective_from: "2026-01-01".into(),
                entries: (1..=50)
                    .map(|p| pb::BasePointsEntry {
                        product_id: format!("p-{p}"),
                        points: "1".into(),
                        ..Default::default()
                    })
                    .collect(),
            }),
        )
        .await
        .expect("base points");
}
