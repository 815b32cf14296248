//! Fault tests on real `one-loyalty serve` processes under a mixed workload whose clients retry
//! every call with its request id until it gets an answer:
//! - the service killed with SIGKILL at random moments (`FAULT_KILLS`, 20 by default);
//! - PostgreSQL (a private cluster of this test's own) stopped hard and started again;
//! - two replicas on one PostgreSQL with every background job running in both.
//!
//! Afterwards: every acknowledged operation is in the ledger exactly once, every refused one is
//! not, each client's balance is what the answers add up to, and every balance equals the sum of
//! its events.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use one_loyalty::domain::directory::ProductRecord;
use one_loyalty::domain::tenant::TenantId;
use one_loyalty::persistence::entities::{ledger_events, reservations};
use one_loyalty::proto::loyalty::v1 as pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::coupons::{create, pools, spec};
use crate::helpers::{Backend, ClockedApp, DEMO_TENANT, TestApp, TestDb, request_as};
use crate::redeem::funded_client;

const CLIENTS_PER_WORKER: usize = 3;
const WORKERS: usize = 6;
const COUPON_POINTS: i64 = 7;
/// Calls each life of the killed service answers before its kill may come.
const ANSWERS_PER_LIFE: usize = 3;

crate::per_backend!(killed_under_load => the_service_killed_under_load_loses_and_repeats_nothing);

/// A `one-loyalty serve` process on `port` over `store`, with the rate limits off.
pub fn spawn_service(store: &TestDb, port: u16, env: &[(&str, &str)]) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_one-loyalty"));
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("LOYALTY__DATABASE__URL", &store.settings.url)
        .env("LOYALTY__METRICS__LISTEN", "")
        .env("LOYALTY__TELEMETRY__LOG_FILTER", "error")
        .env("LOYALTY__LIMITS__PER_KEY_PER_SECOND", "0")
        .env("LOYALTY__LIMITS__PER_TENANT_PER_SECOND", "0")
        .env("LOYALTY__LIMITS__PER_TENANT_CONCURRENCY", "0")
        .env("LOYALTY__LIMITS__PER_KEY_CONCURRENCY", "0")
        .env("LOYALTY__SERVER__SHUTDOWN_DRAIN_MS", "0")
        .stdout(std::process::Stdio::null())
        .stderr(service_log(port))
        .kill_on_drop(true);
    if let Some(schema) = &store.settings.schema {
        command.env("LOYALTY__DATABASE__SCHEMA", schema);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().expect("start one-loyalty")
}

/// A port for a service process, free now and below the kernel's ephemeral range (from 32768
/// here), so that no outgoing connection of the tests, which the kernel gives an ephemeral port,
/// can take it before the service binds it (a service started on such a port did once not come
/// up). Ports are handed out in turn from a random start, none twice in a test run.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 10_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = rand::random_range(0..SPAN);
    let _ = NEXT.compare_exchange(0, start + 1, Ordering::Relaxed, Ordering::Relaxed);
    (0..SPAN)
        .map(|_| FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN)
        .find(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// Where the service on `port` writes its errors (only errors: `LOG_FILTER` is `error`), so that
/// a service that never became ready says why; each start on the port begins the file anew.
fn service_log_path(port: u16) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("one-loyalty-test-service-{port}.log"))
}

fn service_log(port: u16) -> std::process::Stdio {
    std::fs::File::create(service_log_path(port))
        .map_or_else(|_| std::process::Stdio::null(), std::process::Stdio::from)
}

/// Waits until the service on `port` answers health checks.
pub async fn wait_ready(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
    loop {
        if let Ok(channel) = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint")
            .connect()
            .await
        {
            let health = tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if health.is_ok() {
                return;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            // Errors only, of this start only: short enough to give whole.
            let log = std::fs::read_to_string(service_log_path(port)).unwrap_or_default();
            panic!("service on {port} not ready; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The workload

/// The seeded store: funded clients with accepted consents, product P1 at 10 points a unit and a
/// 7-point coupon on offer.
pub struct Seeded {
    pub store: TestDb,
    pub coupon_id: String,
    pub clients: Vec<String>,
}

/// Seeds through the API of an in-process service on a clock pinned to 2026-03-20, then stops it.
pub async fn seed(store: TestDb, clients: usize) -> Seeded {
    let (app, coupon_id, names) = seed_in_process(store, clients).await;
    finish_seed(app, coupon_id, names).await
}

/// Stops the in-process service that seeded the store.
async fn finish_seed(app: ClockedApp, coupon_id: String, clients: Vec<String>) -> Seeded {
    let ClockedApp { app, .. } = app;
    app.stop().await;
    let TestApp { store, .. } = app;
    Seeded {
        store,
        coupon_id,
        clients,
    }
}

/// The seeding, with the in-process service left running for more.
async fn seed_in_process(store: TestDb, clients: usize) -> (ClockedApp, String, Vec<String>) {
    let app = ClockedApp::on_store(store, |_| {}).await;
    let names: Vec<String> = (0..clients).map(|i| format!("f-{i}")).collect();
    for name in &names {
        funded_client(&app, name, "100", &[]).await;
    }
    let coupon_id = earning_and_spending(&app, &names, "fault coupon").await;
    (app, coupon_id, names)
}

/// What earning and spending need for `clients` (which exist already): a user of each who
/// accepted the agreement on 2026-02-01, product P1 at 10 points a unit from 2026-01-01, and a
/// 7-point coupon named `coupon_name` on offer from 2026-03-21 to 2030; returns its id.
pub async fn earning_and_spending(
    app: &ClockedApp,
    clients: &[String],
    coupon_name: &str,
) -> String {
    let tenant = TenantId::parse(DEMO_TENANT).expect("tenant");
    let mut consents = Vec::new();
    for name in clients {
        app.seed_user(&format!("u-{name}"), name).await;
        consents.push(pb::ConsentEvent {
            event_id: format!("consent-{name}"),
            user_id: format!("u-{name}"),
            action: pb::ConsentAction::Accept as i32,
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_769_940_000, // 2026-02-01
                nanos: 0,
            }),
            agreement_version: 1,
            ..Default::default()
        });
    }
    pb::agreement_service_client::AgreementServiceClient::new(app.channel.clone())
        .record_consent_events(app.request(pb::RecordConsentEventsRequest {
            request_id: "consents".into(),
            events: consents,
        }))
        .await
        .expect("consents");
    app.services
        .catalog
        .save_product(
            &tenant,
            &ProductRecord {
                product_id: "P1".into(),
                name: "P1".into(),
                sku: "P1".into(),
                category_id: None,
                label_ids: vec![],
                manufacturer_id: None,
                is_ecommerce: true,
                active: true,
                updated_at: chrono::Utc::now(),
            },
        )
        .await
        .expect("product");
    pb::rules_service_client::RulesServiceClient::new(app.channel.clone())
        .set_base_points(app.request(pb::SetBasePointsRequest {
            request_id: "base".into(),
            effective_from: "2026-01-01".into(),
            entries: vec![pb::BasePointsEntry {
                product_id: "P1".into(),
                points: "10".into(),
                ..Default::default()
            }],
        }))
        .await
        .expect("base points");
    pools(app).await;
    create(
        app,
        &format!("create-{}", coupon_name.replace(' ', "-")),
        pb::CouponSpec {
            point_value: COUPON_POINTS.to_string(),
            stock: None,
            per_client_limit: None,
            expiration_date: "2030-12-31".into(),
            redemption_deadline: "2031-01-31".into(),
            ..spec(coupon_name)
        },
    )
    .await
    .expect("coupon")
    .coupon_id
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Earn,
    Adjust,
    Redeem,
    Reserve,
    Commit,
    Release,
}

/// An operation and the answer it finally got.
#[derive(Debug, Clone)]
struct Answered {
    kind: Kind,
    /// The request id (the document id for an earn).
    key: String,
    client: String,
    points: i64,
    ok: bool,
    /// The reservation a commit or release settled.
    reservation: String,
}

/// Status codes a caller may retry on while the service or its database is away.
fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
    )
}

/// The failures seen on the way, by code.
type Seen = Arc<Mutex<BTreeMap<String, u64>>>;

/// A closure that sends `request` with the demo credentials through a clone of `client`.
macro_rules! send {
    ($client:expr, $method:ident, $request:expr) => {{
        let client = $client.clone();
        let request = $request.clone();
        move || {
            let mut client = client.clone();
            let request = request.clone();
            async move {
                client
                    .$method(request_as(DEMO_TENANT, crate::helpers::DEMO_KEY, request))
                    .await
            }
        }
    }};
}

/// Sends `call` until it is answered with success or a refusal that is not transient.
async fn until_answered<T, F, Fut>(seen: &Seen, mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_mins(2);
    loop {
        match call().await {
            Err(status) if transient(status.code()) => {
                *seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no answer for two minutes: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

fn channel(ports: &[u16], index: usize) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{}", ports[index % ports.len()]))
        .expect("endpoint")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

/// A sale day closed whatever the hour: yesterday's is not until the tenant's grace after
/// midnight (an hour by default) has passed.
fn sale_date() -> String {
    (chrono::Utc::now()
        .with_timezone(&chrono_tz::Europe::Warsaw)
        .date_naive()
        - chrono::Days::new(2))
    .to_string()
}

/// One caller: random operations on its own clients until `stop`, each retried with its request
/// id until answered; one answer in four is asked for again and must come back the same.
#[allow(clippy::too_many_lines)]
async fn worker(
    index: usize,
    ports: Vec<u16>,
    clients: Vec<String>,
    coupon_id: String,
    stop: Arc<AtomicBool>,
    seen: Seen,
    progress: Arc<AtomicUsize>,
) -> Vec<Answered> {
    let channel = channel(&ports, index);
    let earn = pb::earn_service_client::EarnServiceClient::new(channel.clone());
    let ledger = pb::ledger_service_client::LedgerServiceClient::new(channel.clone());
    let redeem = pb::redeem_service_client::RedeemServiceClient::new(channel);
    let mut rng = StdRng::seed_from_u64(index as u64);
    let mut held: Vec<(String, String, i64)> = Vec::new();
    let mut answered = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("w{index}-{n}");
        let client = clients[rng.random_range(0..clients.len())].clone();
        let roll = rng.random_range(0..12);
        let ask_again = rng.random_range(0..4) == 0;
        let kind = match roll {
            0..=2 => Kind::Earn,
            3..=4 => Kind::Adjust,
            5..=6 => Kind::Redeem,
            7..=8 => Kind::Reserve,
            9..=10 if !held.is_empty() => Kind::Commit,
            _ if !held.is_empty() => Kind::Release,
            _ => Kind::Adjust,
        };
        let times = if ask_again { 2 } else { 1 };
        // Drawn once: asking again sends the very same request.
        let adjust_points: i64 = rng.random_range(1..30);
        let reserve_points: i64 = rng.random_range(1..20);
        let settle_pick = rng.random_range(0..held.len().max(1));
        // A commit or release settles one held reservation: (id, owner, points).
        let settled =
            matches!(kind, Kind::Commit | Kind::Release).then(|| held.swap_remove(settle_pick));
        let mut first: Option<(bool, String)> = None;
        let mut points = 0;
        for _ in 0..times {
            let (ok, reply) = match kind {
                Kind::Earn => {
                    let units = i64::from(u8::try_from(n % 5).unwrap_or(0)) + 1;
                    points = 10 * units;
                    let request = pb::ProcessInvoiceRequest {
                        request_id: key.clone(),
                        invoice: Some(pb::Document {
                            document_id: format!("doc-{key}"),
                            number: format!("FV/{key}"),
                            client_id: client.clone(),
                            sale_date: sale_date(),
                            lines: vec![pb::DocumentLine {
                                line_no: 1,
                                product_id: "P1".into(),
                                quantity: units.to_string(),
                                order_number: String::new(),
                                corrected_line_no: 0,
                            }],
                            ..Default::default()
                        }),
                    };
                    let result = until_answered(&seen, send!(earn, process_invoice, request)).await;
                    let result = result.map(|r| r.into_inner().result.unwrap_or_default());
                    match result {
                        Ok(r) => {
                            assert_eq!(r.status, pb::DocumentStatus::Processed as i32, "{r:?}");
                            (true, r.event_id)
                        }
                        Err(status) => panic!("earn refused: {status:?}"),
                    }
                }
                Kind::Adjust => {
                    points = adjust_points;
                    let request = pb::AdjustPointsRequest {
                        request_id: key.clone(),
                        client_id: client.clone(),
                        points: points.to_string(),
                        reason_code: "FAULTS".into(),
                        reason: "fault test".into(),
                        user_id: "tester".into(),
                    };
                    let result = until_answered(&seen, send!(ledger, adjust_points, request))
                        .await
                        .expect("adjust");
                    (true, result.into_inner().event.unwrap_or_default().event_id)
                }
                Kind::Redeem => {
                    points = COUPON_POINTS;
                    let request = pb::RedeemCouponRequest {
                        request_id: key.clone(),
                        client_id: client.clone(),
                        coupon_id: coupon_id.clone(),
                        user_id: String::new(),
                    };
                    match until_answered(&seen, send!(redeem, redeem_coupon, request)).await {
                        Ok(r) => (
                            true,
                            r.into_inner().redemption.unwrap_or_default().redemption_id,
                        ),
                        Err(status) if status.code() == Code::FailedPrecondition => {
                            (false, String::new())
                        }
                        Err(status) => panic!("redeem: {status:?}"),
                    }
                }
                Kind::Reserve => {
                    points = reserve_points;
                    let request = pb::ReservePointsRequest {
                        request_id: key.clone(),
                        client_id: client.clone(),
                        basket_id: format!("basket-{key}"),
                        points: points.to_string(),
                        user_id: String::new(),
                    };
                    match until_answered(&seen, send!(redeem, reserve_points, request)).await {
                        Ok(r) => {
                            let id = r
                                .into_inner()
                                .reservation
                                .unwrap_or_default()
                                .reservation_id;
                            if first.is_none() {
                                held.push((id.clone(), client.clone(), points));
                            }
                            (true, id)
                        }
                        Err(status) if status.code() == Code::FailedPrecondition => {
                            (false, String::new())
                        }
                        Err(status) => panic!("reserve: {status:?}"),
                    }
                }
                Kind::Commit | Kind::Release => {
                    let (subject, _, reserved) = settled.as_ref().expect("a held reservation");
                    points = *reserved;
                    let result = if kind == Kind::Commit {
                        let request = pb::CommitReservationRequest {
                            request_id: key.clone(),
                            reservation_id: subject.clone(),
                            order_number: format!("order-{key}"),
                        };
                        until_answered(&seen, send!(redeem, commit_reservation, request))
                            .await
                            .map(|r| r.into_inner().reservation.unwrap_or_default().status)
                    } else {
                        let request = pb::ReleaseReservationRequest {
                            request_id: key.clone(),
                            reservation_id: subject.clone(),
                        };
                        until_answered(&seen, send!(redeem, release_reservation, request))
                            .await
                            .map(|r| r.into_inner().reservation.unwrap_or_default().status)
                    };
                    (
                        true,
                        format!("{:?}", result.expect("settle a held reservation")),
                    )
                }
            };
            match &first {
                None => first = Some((ok, reply)),
                Some(earlier) => assert_eq!(
                    earlier,
                    &(ok, reply),
                    "{kind:?} {key} answered differently when asked again"
                ),
            }
        }
        let (ok, _) = first.unwrap_or_default();
        let (reservation, client) =
            settled.map_or((String::new(), client), |(id, owner, _)| (id, owner));
        progress.fetch_add(1, Ordering::Relaxed);
        answered.push(Answered {
            kind,
            key: if kind == Kind::Earn {
                format!("doc-{key}")
            } else {
                key
            },
            client,
            points,
            ok,
            reservation,
        });
    }
    answered
}

/// Runs the workers until `disrupt` returns, then lets them finish their current operation.
async fn under_load<R, D: std::future::Future<Output = R>>(
    seeded: &Seeded,
    ports: &[u16],
    seen: &Seen,
    progress: &Arc<AtomicUsize>,
    disrupt: D,
) -> (Vec<Answered>, R) {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|index| {
            let clients = seeded.clients
                [index * CLIENTS_PER_WORKER..(index + 1) * CLIENTS_PER_WORKER]
                .to_vec();
            tokio::spawn(worker(
                index,
                ports.to_vec(),
                clients,
                seeded.coupon_id.clone(),
                Arc::clone(&stop),
                Arc::clone(seen),
                Arc::clone(progress),
            ))
        })
        .collect();
    let disrupted = disrupt.await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = Vec::new();
    for worker in workers {
        answered.extend(worker.await.expect("worker"));
    }
    (answered, disrupted)
}

/// Every answered operation is in the store exactly once (refused ones not at all); each
/// client's total (from its `start` points, 100 when not named) and reserved points are what the
/// answers add up to; the ledger is consistent.
async fn assert_exactly_once(
    seeded: &Seeded,
    port: u16,
    answered: &[Answered],
    start: &BTreeMap<String, i64>,
) {
    let db = &seeded.store.db;
    let mut expected: BTreeMap<String, (i64, i64)> = seeded
        .clients
        .iter()
        .map(|c| (c.clone(), (start.get(c).copied().unwrap_or(100), 0)))
        .collect();
    for op in answered {
        let events = match op.kind {
            Kind::Earn => ledger_events::Entity::find()
                .filter(ledger_events::Column::DocumentId.eq(op.key.as_str()))
                .count(db)
                .await
                .expect("count"),
            Kind::Reserve => reservations::Entity::find()
                .filter(reservations::Column::RequestId.eq(op.key.as_str()))
                .count(db)
                .await
                .expect("count"),
            Kind::Release => reservations::Entity::find()
                .filter(reservations::Column::ReservationId.eq(op.reservation.as_str()))
                .filter(reservations::Column::Status.eq("RELEASED"))
                .count(db)
                .await
                .expect("count"),
            Kind::Adjust | Kind::Redeem | Kind::Commit => ledger_events::Entity::find()
                .filter(ledger_events::Column::RequestId.eq(op.key.as_str()))
                .count(db)
                .await
                .expect("count"),
        };
        assert_eq!(events, u64::from(op.ok), "{op:?}");
        let entry = expected.entry(op.client.clone()).or_default();
        if op.ok {
            match op.kind {
                Kind::Earn | Kind::Adjust => entry.0 += op.points,
                Kind::Redeem => entry.0 -= op.points,
                Kind::Reserve => entry.1 += op.points,
                Kind::Commit => {
                    entry.0 -= op.points;
                    entry.1 -= op.points;
                }
                Kind::Release => entry.1 -= op.points,
            }
        }
    }
    let mut ledger = pb::ledger_service_client::LedgerServiceClient::new(channel(&[port], 0));
    for (client, (total, reserved)) in &expected {
        let balance = ledger
            .get_balance(request_as(
                DEMO_TENANT,
                crate::helpers::DEMO_KEY,
                pb::GetBalanceRequest {
                    client_id: client.clone(),
                    expiring_within_days: 0,
                },
            ))
            .await
            .expect("balance")
            .into_inner()
            .balance
            .unwrap_or_default();
        let parse = |text: &str| -> i64 {
            let value: rust_decimal::Decimal = text.parse().expect("decimal");
            i64::try_from(value).expect("whole points")
        };
        assert_eq!(
            (parse(&balance.total), parse(&balance.reserved)),
            (*total, *reserved),
            "client {client}"
        );
    }
    seeded.store.assert_ledger_consistent().await;
}

fn count(answered: &[Answered], ok: bool) -> usize {
    answered.iter().filter(|a| a.ok == ok).count()
}

async fn the_service_killed_under_load_loses_and_repeats_nothing(backend: Backend) {
    let kills: u32 = std::env::var("FAULT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seeded = seed(TestDb::new(backend).await, WORKERS * CLIENTS_PER_WORKER).await;
    let port = free_port();
    let seen: Seen = Arc::default();
    let store = &seeded.store;
    let mut rng = StdRng::seed_from_u64(7);
    let progress = Arc::new(AtomicUsize::new(0));
    let (answered, mut service) = under_load(&seeded, &[port], &seen, &progress, async {
        for _ in 0..kills {
            let mut service = spawn_service(store, port, &[("LOYALTY__OUTBOX__ENABLED", "false")]);
            wait_ready(port).await;
            // Under load: each life of the service answers some calls before it is killed, at a
            // random moment after that, whatever the speed of the machine.
            let before = progress.load(Ordering::Relaxed);
            let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
            while progress.load(Ordering::Relaxed) < before + ANSWERS_PER_LIFE {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the restarted service answered fewer than {ANSWERS_PER_LIFE} calls in 60 s"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
            service.start_kill().expect("SIGKILL");
            service.wait().await.expect("killed");
        }
        // Up again for the workers to finish.
        let service = spawn_service(store, port, &[("LOYALTY__OUTBOX__ENABLED", "false")]);
        wait_ready(port).await;
        service
    })
    .await;
    assert_exactly_once(&seeded, port, &answered, &BTreeMap::new()).await;
    service.start_kill().expect("stop");
    service.wait().await.expect("stopped");
    let failures = seen.lock().expect("seen").clone();
    eprintln!(
        "{kills} SIGKILLs: {} operations answered ({} done, {} refused), failed attempts retried: {failures:?}",
        answered.len(),
        count(&answered, true),
        count(&answered, false)
    );
    assert!(
        !failures.is_empty(),
        "no call ever failed: the kills missed"
    );
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL restarted under load

/// A PostgreSQL cluster of this test's own (initdb in a temporary directory, a free port), so
/// that stopping it disturbs no other test. Run as the `postgres` user when the test runs as root.
struct PrivateCluster {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivateCluster {
    fn create() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("pg_ctl").exists())
            .max()
            .expect("pg_ctl");
        let dir = tempfile::tempdir().expect("temp dir");
        // PostgreSQL refuses to run as root.
        let as_postgres = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let cluster = Self {
            dir,
            bin,
            port: free_port(),
            as_postgres,
        };
        if as_postgres {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(cluster.dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the cluster directory");
        }
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        cluster.start();
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            std::process::Command::new(program)
        };
        let output = command.args(args).output().expect(tool);
        assert!(
            output.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server at once, as a crash would (no checkpoint, connections cut).
    fn stop_hard(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let data = self.data();
        let program = self.bin.join("pg_ctl");
        let mut command = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            std::process::Command::new(program)
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_gives_unavailable_then_recovers_by_itself() {
    if !crate::helpers::postgres_configured() {
        eprintln!("skipped: LOYALTY_TEST_DATABASE_URL is not set");
        return;
    }
    let cluster = PrivateCluster::create();
    let mut settings =
        one_loyalty::config::Settings::load(None, &one_loyalty::config::Overrides::default())
            .expect("settings")
            .database;
    settings.url = cluster.url();
    settings.max_connections = 4;
    let seeded = seed(TestDb::at(settings).await, WORKERS * CLIENTS_PER_WORKER).await;
    let port = free_port();
    let mut service = spawn_service(
        &seeded.store,
        port,
        &[
            ("LOYALTY__OUTBOX__ENABLED", "false"),
            ("LOYALTY__DATABASE__CONNECT_TIMEOUT_MS", "1000"),
        ],
    );
    wait_ready(port).await;
    let seen: Seen = Arc::default();
    let (answered, ()) = under_load(&seeded, &[port], &seen, &Arc::default(), async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.stop_hard();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let failed_while_down = seen.lock().expect("seen").values().sum::<u64>();
        assert!(
            failed_while_down > 0,
            "no call failed while PostgreSQL was down"
        );
        cluster.start();
        // The same service process, not restarted, must answer again: every worker ends with a
        // call that is retried until it is answered, and the checks below read through it.
        tokio::time::sleep(Duration::from_secs(3)).await;
    })
    .await;
    let failures = seen.lock().expect("seen").clone();
    let codes: Vec<&String> = failures.keys().collect();
    assert_eq!(
        codes,
        [&"Unavailable".to_owned()],
        "while PostgreSQL was down, calls must fail with UNAVAILABLE only: {failures:?}"
    );
    assert_exactly_once(&seeded, port, &answered, &BTreeMap::new()).await;
    service.start_kill().expect("stop");
    service.wait().await.expect("stopped");
    eprintln!(
        "PostgreSQL stopped hard and restarted: {} operations answered, attempts refused meanwhile: {failures:?}",
        answered.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Two replicas

/// Work left due in the past for the replicas' jobs: per client, an invoice whose sale day had
/// not closed (to earn), a lot past its expiry (to expire), a reservation past its TTL (to
/// release) and a redemption whose code awaits delivery (to deliver).
async fn leave_due_work(app: &ClockedApp, clients: &[String]) {
    app.settings_client()
        .update_settings(app.request(pb::UpdateSettingsRequest {
            request_id: "replicas-settings".into(),
            settings: Some(pb::TenantSettings {
                expiry_months: 1,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["expiry_months".into()],
            }),
            expected_revision: 0,
        }))
        .await
        .expect("settings");
    let mut earn = pb::earn_service_client::EarnServiceClient::new(app.channel.clone());
    for (kind, sale_date) in [("old", "2026-03-19"), ("pending", "2026-03-20")] {
        for client in clients {
            let document_id = format!("{kind}-{client}");
            let result = earn
                .process_invoice(app.request(pb::ProcessInvoiceRequest {
                    request_id: document_id.clone(),
                    invoice: Some(pb::Document {
                        number: format!("FV/{document_id}"),
                        document_id,
                        client_id: client.clone(),
                        sale_date: sale_date.into(),
                        lines: vec![pb::DocumentLine {
                            line_no: 1,
                            product_id: "P1".into(),
                            quantity: "1".into(),
                            order_number: String::new(),
                            corrected_line_no: 0,
                        }],
                        ..Default::default()
                    }),
                }))
                .await
                .expect("invoice")
                .into_inner()
                .result
                .unwrap_or_default();
            let expected = if kind == "old" {
                pb::DocumentStatus::Processed
            } else {
                pb::DocumentStatus::PendingDayClose
            };
            assert_eq!(result.status, expected as i32, "{result:?}");
        }
    }
    app.set_time("2026-03-22T10:00:00Z");
    let mut redeem = pb::redeem_service_client::RedeemServiceClient::new(app.channel.clone());
    for client in clients {
        redeem
            .reserve_points(app.request(pb::ReservePointsRequest {
                request_id: format!("old-reserve-{client}"),
                client_id: client.clone(),
                basket_id: format!("old-basket-{client}"),
                points: "5".into(),
                user_id: String::new(),
            }))
            .await
            .expect("reserve");
    }
}

/// What the replicas' jobs have done so far: (pending invoices earned, lots expired, lots due
/// but not expired yet, reservations released by the job).
async fn jobs_done(db: &sea_orm::DatabaseConnection) -> (u64, u64, u64, u64) {
    use one_loyalty::persistence::entities::earn_lots;
    let earned = ledger_events::Entity::find()
        .filter(ledger_events::Column::DocumentId.starts_with("pending-"))
        .count(db)
        .await
        .expect("earned");
    let expired = ledger_events::Entity::find()
        .filter(ledger_events::Column::EventType.eq("EXPIRE"))
        .count(db)
        .await
        .expect("expired");
    let released = reservations::Entity::find()
        .filter(reservations::Column::Status.eq("EXPIRED"))
        .count(db)
        .await
        .expect("released");
    let overdue = earn_lots::Entity::find()
        .filter(earn_lots::Column::ExpiresAt.lt(chrono::Utc::now().fixed_offset()))
        .filter(earn_lots::Column::Remaining.gt(0))
        .count(db)
        .await
        .expect("overdue");
    (earned, expired, overdue, released)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario, set up, run and checked in order
async fn two_replicas_with_every_job_running_do_each_thing_once() {
    use one_loyalty::persistence::entities::{documents, redemptions, sync_cursors};
    use one_loyalty::sim::{CoreSim, SimSpec, SimState};

    if !crate::helpers::postgres_configured() {
        eprintln!("skipped: LOYALTY_TEST_DATABASE_URL is not set");
        return;
    }
    let spec = SimSpec {
        clients: 5,
        products: 10,
        invoices_per_day: 10,
        lines_per_invoice: 3,
        days: 2,
        seed: 5,
    };
    let sim = CoreSim::new(SimState::generate(spec, chrono::Utc::now()));
    sim.state()
        .upsert_pool("pool-spring", true, chrono::Utc::now());
    let sim_url = crate::fakes::start_sim(&sim).await;

    let clients = WORKERS * CLIENTS_PER_WORKER;
    let (app, coupon_id, names) =
        seed_in_process(TestDb::new(Backend::Postgres).await, clients).await;
    leave_due_work(&app, &names).await;
    let seeded = finish_seed(app, coupon_id, names).await;
    let due = u64::try_from(clients).expect("count");

    let ports = [free_port(), free_port()];
    let env = [
        ("LOYALTY__CORE__ENDPOINT", sim_url.as_str()),
        ("LOYALTY__JOBS__INTERVAL_MS", "100"),
        ("LOYALTY__OUTBOX__INTERVAL_MS", "100"),
        ("LOYALTY__SYNC__INTERVAL_MS", "100"),
        ("LOYALTY__SYNC__BATCH_SIZE", "3"),
    ];
    let mut replicas = [
        spawn_service(&seeded.store, ports[0], &env),
        spawn_service(&seeded.store, ports[1], &env),
    ];
    wait_ready(ports[0]).await;
    wait_ready(ports[1]).await;
    let seen: Seen = Arc::default();
    let db = &seeded.store.db;
    let (answered, done) = under_load(&seeded, &ports, &seen, &Arc::default(), async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let done = jobs_done(db).await;
            let synced = sync_cursors::Entity::find()
                .filter(sync_cursors::Column::TenantId.eq(DEMO_TENANT))
                .filter(sync_cursors::Column::Stream.eq("DOCUMENTS"))
                .one(db)
                .await
                .expect("cursor")
                .map_or(0, |c| c.items_synced);
            // An old lot is expired, or was spent by the workload first.
            if done.0 >= due && done.2 == 0 && done.3 >= due && synced >= 20 {
                // Let both replicas run their loops a few more times over finished work.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return jobs_done(db).await;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "jobs not done: {done:?}, documents synced {synced}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    // Drain the redemptions the workload made just before it stopped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while redemptions::Entity::find()
        .filter(redemptions::Column::Status.ne("ISSUED"))
        .count(db)
        .await
        .expect("pending")
        > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "codes not delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (earned, expired, overdue, released) = done;
    assert_eq!(
        (earned, overdue, released),
        (due, 0, due),
        "each pending invoice earned once, no lot left overdue, each reservation released once"
    );
    let expiries = ledger_events::Entity::find()
        .filter(ledger_events::Column::EventType.eq("EXPIRE"))
        .all(db)
        .await
        .expect("expiries");
    let expired_lots: std::collections::BTreeSet<Option<i64>> =
        expiries.iter().map(|e| e.related_event_id).collect();
    assert_eq!(
        (expired_lots.len(), expiries.len()),
        (
            usize::try_from(expired).expect("count"),
            usize::try_from(expired).expect("count")
        ),
        "one expiry per lot"
    );
    // 100 granted, 10 earned by the old invoice and 10 by the job, less what of the old lot was
    // left to expire (the workload may have spent some of it first); the reservation released.
    let start: BTreeMap<String, i64> = seeded
        .clients
        .iter()
        .map(|c| {
            let expired: rust_decimal::Decimal = expiries
                .iter()
                .filter(|e| &e.client_id == c && e.tenant_id == DEMO_TENANT)
                .map(|e| one_loyalty::domain::points::from_minor_units(e.points))
                .sum();
            (
                c.clone(),
                120 + i64::try_from(expired).expect("whole points"),
            )
        })
        .collect();
    let issued = redemptions::Entity::find()
        .all(db)
        .await
        .expect("redemptions");
    let requests = sim.state().code_requests.clone();
    for redemption in &issued {
        let code = redemption.code.clone().unwrap_or_default();
        assert_eq!(
            requests.get(&code).copied(),
            Some(1),
            "code of {} sent once",
            redemption.redemption_id
        );
    }
    assert_eq!(
        requests.len(),
        issued.len(),
        "no code sent that no redemption holds"
    );
    // The seeding service also made tenant "acme", which the replicas synchronize as well.
    assert_eq!(
        documents::Entity::find()
            .filter(documents::Column::TenantId.eq(DEMO_TENANT))
            .filter(documents::Column::Source.eq("SYNC"))
            .count(db)
            .await
            .expect("synced documents"),
        20,
        "each synchronized document stored once"
    );
    assert_exactly_once(&seeded, ports[1], &answered, &start).await;
    for replica in &mut replicas {
        replica.start_kill().expect("stop");
        replica.wait().await.expect("stopped");
    }
    eprintln!(
        "two replicas: {} operations answered over both; {due} invoices earned, \
         {due} reservations released by the jobs, {expired} lots expired (the others spent first), \
         {} codes delivered, each once; retried: {:?}",
        answered.len(),
        issued.len(),
        seen.lock().expect("seen")
    );
}
