//! `one-loyalty-bench`: the load generator, and the baselines it is judged against.
//!
//! - `service`: seeds a database, starts `--replicas` real `one-loyalty serve` processes on it
//!   and loads them through tonic clients, one connection per client: earn (10-line invoices),
//!   redeem (uniform over many clients, and one hot client), balance reads, a mixed workload.
//! - `echo`: (B4) the same clients against a trivial tonic server (the health service alone).
//! - `sqlite`: (B5) a minimal SQLite loop doing the writes of the B2 pgbench scripts, through the
//!   service's own connection settings (WAL, `synchronous = FULL`).
//!
//! Every run prints one `RESULT` line: throughput and p50/p99/p999 latency of the calls that
//! succeeded, and the count of those that did not. `benches/perf.sh` runs them all with the B0
//! and B2 baselines and writes the ratios.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Days, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use one_loyalty::config::{DatabaseSettings, LimitSettings, Overrides, Settings};
use one_loyalty::domain::clock::{Clock, FixedClock};
use one_loyalty::domain::directory::{ClientRecord, UserRecord};
use one_loyalty::domain::sync::CouponPoolRecord;
use one_loyalty::domain::tenant::TenantId;
use one_loyalty::persistence::db;
use one_loyalty::proto::loyalty::v1 as pb;
use one_loyalty::startup::Application;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};
use tokio::io::AsyncBufReadExt;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const TENANT: &str = "demo";
const PRODUCTS: u32 = 10;
const HOT_CLIENT: &str = "c-hot";
const SHORT_HISTORY_CLIENT: &str = "c-history-10";
const LONG_HISTORY_CLIENT: &str = "c-history-long";
const COUPON_NAME: &str = "bench 7 points";
const COUPON_POINTS: &str = "7";
/// The client whose earned lots the seed spends all at once, with this coupon.
const SPENT_LOTS_CLIENT: &str = "c-spent-lots";
const SPEND_LOTS_COUPON_NAME: &str = "bench spend every lot";
/// The client whose earned lots all keep points left through every run.
const LIVE_LOTS_CLIENT: &str = "c-live-lots";

#[derive(Debug, Parser)]
#[command(
    name = "one-loyalty-bench",
    about = "Load generator and baselines of ONe Loyalty"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Seeds the database, starts the service on it and runs each workload at each concurrency.
    Service(ServiceArgs),
    /// B4: the same gRPC clients against a trivial tonic server (the health service alone).
    Echo(LoadArgs),
    /// B5: the writes of the B2 scripts in a minimal SQLite loop.
    Sqlite(SqliteArgs),
    /// Serves B4's trivial server and prints its port (started by `echo`).
    #[command(hide = true)]
    EchoServer,
}

#[derive(Debug, Clone, Args)]
struct LoadArgs {
    /// Concurrent clients, each on its own connection; a run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    concurrency: Vec<usize>,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of unmeasured load before each run.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// A label printed on every result line.
    #[arg(long, default_value = "")]
    label: String,
    /// Threads of the gRPC load, each one event loop with its share of the clients, as pgbench's
    /// `-j` (B5's loop, in this process, runs on the main runtime instead).
    #[arg(long, default_value_t = 1)]
    load_threads: usize,
}

#[derive(Debug, Clone, Args)]
struct ServiceArgs {
    /// The database the service runs on (`sqlite://PATH` or `postgres://...`); it is seeded first.
    #[arg(long)]
    database_url: String,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "earn,redeem,redeem-hot,balance,mixed"
    )]
    workloads: Vec<Workload>,
    /// Client companies in the uniform workloads.
    #[arg(long, default_value_t = 10_000)]
    clients: u32,
    /// Events of the long-history client read by `balance-long-history` (the short one has 10).
    #[arg(long, default_value_t = 0)]
    history: u32,
    /// Earned lots of the client that `redeem-spent-lots` redeems for, all spent by the seed.
    #[arg(long, default_value_t = 0)]
    spent_lots: u32,
    /// Earned lots of the client that `redeem-live-lots` redeems for, 10,000 points each, none
    /// spent by the seed.
    #[arg(long, default_value_t = 0)]
    live_lots: u32,
    /// Service processes on the one database; clients are spread over them.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Skip seeding (the database was seeded by an earlier run with the same --clients).
    #[arg(long)]
    no_seed: bool,
    /// Redemptions name the user redeeming (the client's seeded user), as the front office's do.
    #[arg(long)]
    front_office: bool,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Debug, Clone, Args)]
struct SqliteArgs {
    /// The SQLite file (replaced).
    #[arg(long, default_value = "target/bench-b5.sqlite")]
    path: PathBuf,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "earn,redeem,redeem-hot,balance"
    )]
    workloads: Vec<Workload>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// A 10-line invoice of a random client, earned at once.
    Earn,
    /// A 7-point coupon redeemed by a random client.
    Redeem,
    /// A 7-point coupon redeemed by one client, by every caller.
    RedeemHot,
    /// A 7-point coupon redeemed by one client, by every caller, whose `--spent-lots` earned lots
    /// are all spent (its points were granted since): a client that has bought and spent for years.
    RedeemSpentLots,
    /// A 7-point coupon redeemed by one client, by every caller, whose `--live-lots` earned lots
    /// all have points left: a client that has bought for years and not spent yet. Each
    /// redemption takes from the oldest lot; a run spends few of them.
    RedeemLiveLots,
    /// The balance of a random client.
    Balance,
    /// The balance of a client with 10 events.
    BalanceShortHistory,
    /// The balance of a client with `--history` events.
    BalanceLongHistory,
    /// 30 % earn, 20 % redeem, 50 % balance reads.
    Mixed,
    /// A health check of the trivial server.
    Echo,
}

impl Workload {
    fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_owned())
    }
}

type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// The service's allocator (src/main.rs), so that B5's loop, in this process, allocates as the
/// service does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The seed's in-process service logs only when asked (RUST_LOG), so that its errors' causes
    // can be read; measurements run with it off.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let outcome = match cli.command {
        Command::Service(args) => service(args).await,
        Command::Echo(load) => echo(load).await,
        Command::Sqlite(args) => sqlite(args).await,
        Command::EchoServer => echo_server().await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// What one run measured.
struct Measured {
    errors: BTreeMap<String, u64>,
    latencies_ns: Vec<u64>,
    seconds: f64,
}

impl Measured {
    /// Nothing yet, over the run's measured seconds.
    fn of_run(load: &LoadArgs) -> Self {
        Self {
            errors: BTreeMap::new(),
            latencies_ns: Vec::new(),
            seconds: Duration::from_secs(load.duration).as_secs_f64(),
        }
    }

    /// Adds what one caller or one load thread measured (sorted by the caller, once, after).
    fn add(&mut self, latencies_ns: Vec<u64>, errors: BTreeMap<String, u64>) {
        self.latencies_ns.extend(latencies_ns);
        for (code, count) in errors {
            *self.errors.entry(code).or_default() += count;
        }
    }

    fn percentile_ms(&self, fraction: f64) -> f64 {
        if self.latencies_ns.is_empty() {
            return f64::NAN;
        }
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        #[allow(clippy::cast_sign_loss)]
        let rank = ((self.latencies_ns.len() as f64) * fraction).ceil() as usize;
        let index = rank.clamp(1, self.latencies_ns.len()) - 1;
        #[allow(clippy::cast_precision_loss)]
        let ms = self.latencies_ns[index] as f64 / 1e6;
        ms
    }

    fn mean_ms(&self) -> f64 {
        if self.latencies_ns.is_empty() {
            return f64::NAN;
        }
        let sum: u128 = self.latencies_ns.iter().map(|&n| u128::from(n)).sum();
        #[allow(clippy::cast_precision_loss)]
        let mean = sum as f64 / self.latencies_ns.len() as f64 / 1e6;
        mean
    }

    fn print(&self, name: &str, backend: &str, concurrency: usize, label: &str) {
        #[allow(clippy::cast_precision_loss)]
        let tps = self.latencies_ns.len() as f64 / self.seconds;
        let errors: u64 = self.errors.values().sum();
        println!(
            "RESULT workload={name} backend={backend} clients={concurrency} label={} ops={} \
             errors={errors} tps={tps:.1} mean_ms={:.3} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3}",
            if label.is_empty() { "-" } else { label },
            self.latencies_ns.len(),
            self.mean_ms(),
            self.percentile_ms(0.50),
            self.percentile_ms(0.99),
            self.percentile_ms(0.999),
        );
        if !self.errors.is_empty() {
            eprintln!("  failed calls of {name}: {:?}", self.errors);
        }
    }
}

/// A caller: one connection's clients, or one database handle.
// One per load task, made once: the size of the service variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Caller {
    Service {
        earn: pb::earn_service_client::EarnServiceClient<Channel>,
        redeem: pb::redeem_service_client::RedeemServiceClient<Channel>,
        ledger: pb::ledger_service_client::LedgerServiceClient<Channel>,
        coupon_id: Arc<str>,
        clients: u32,
        sale_date: Arc<str>,
        front_office: bool,
    },
    Echo(HealthClient<Channel>),
    Sqlite(DatabaseConnection),
}

/// Unique per process run, so that document and request ids never repeat across runs.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

fn next_id(kind: &str) -> String {
    let run = RUN_ID.get_or_init(|| Utc::now().timestamp_micros());
    format!("{kind}-{run}-{}", SEQUENCE.fetch_add(1, Ordering::Relaxed))
}

static RUN_ID: std::sync::OnceLock<i64> = std::sync::OnceLock::new();

fn authorized<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("one-tenant", MetadataValue::from_static(TENANT));
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::from_static("Bearer demo-admin-key-local-only"),
    );
    request
}

fn client_id(index: u32) -> String {
    format!("c-{index}")
}

impl Caller {
    async fn call(&mut self, workload: Workload, rng: &mut SmallRng) -> Result<(), String> {
        let workload = if workload == Workload::Mixed {
            match rng.random_range(0..10) {
                0..=2 => Workload::Earn,
                3..=4 => Workload::Redeem,
                _ => Workload::Balance,
            }
        } else {
            workload
        };
        match self {
            Self::Service {
                earn,
                redeem,
                ledger,
                coupon_id,
                clients,
                sale_date,
                front_office,
            } => {
                let random_client = client_id(rng.random_range(0..*clients));
                let outcome = match workload {
                    Workload::Earn => earn
                        .process_invoice(authorized(invoice(&random_client, sale_date)))
                        .await
                        .map(drop),
                    Workload::Redeem
                    | Workload::RedeemHot
                    | Workload::RedeemSpentLots
                    | Workload::RedeemLiveLots => {
                        let client = match workload {
                            Workload::RedeemHot => HOT_CLIENT.to_owned(),
                            Workload::RedeemSpentLots => SPENT_LOTS_CLIENT.to_owned(),
                            Workload::RedeemLiveLots => LIVE_LOTS_CLIENT.to_owned(),
                            _ => random_client,
                        };
                        redeem
                            .redeem_coupon(authorized(pb::RedeemCouponRequest {
                                request_id: next_id("redeem"),
                                user_id: if *front_office {
                                    format!("u-{client}")
                                } else {
                                    String::new()
                                },
                                client_id: client,
                                coupon_id: coupon_id.to_string(),
                            }))
                            .await
                            .map(drop)
                    }
                    Workload::Balance
                    | Workload::BalanceShortHistory
                    | Workload::BalanceLongHistory => {
                        let client = match workload {
                            Workload::BalanceShortHistory => SHORT_HISTORY_CLIENT.to_owned(),
                            Workload::BalanceLongHistory => LONG_HISTORY_CLIENT.to_owned(),
                            _ => random_client,
                        };
                        ledger
                            .get_balance(authorized(pb::GetBalanceRequest {
                                client_id: client,
                                expiring_within_days: 0,
                            }))
                            .await
                            .map(drop)
                    }
                    Workload::Echo | Workload::Mixed => return Err("not a service workload".into()),
                };
                outcome.map_err(|status| format!("{:?}", status.code()))
            }
            Self::Echo(health) => health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(drop)
                .map_err(|status| format!("{:?}", status.code())),
            Self::Sqlite(conn) => sqlite_call(conn, workload, rng)
                .await
                .map_err(|err| err.to_string()),
        }
    }
}

fn invoice(client: &str, sale_date: &str) -> pb::ProcessInvoiceRequest {
    let document_id = next_id("inv");
    let lines = (1..=PRODUCTS)
        .map(|no| pb::DocumentLine {
            line_no: no,
            product_id: format!("P{no}"),
            quantity: "3".into(),
            order_number: String::new(),
            corrected_line_no: 0,
        })
        .collect();
    pb::ProcessInvoiceRequest {
        request_id: document_id.clone(),
        invoice: Some(pb::Document {
            number: format!("FV/{document_id}"),
            document_id,
            client_id: client.into(),
            sale_date: sale_date.into(),
            lines,
            ..Default::default()
        }),
    }
}

/// Runs `workload` on `callers` (one task each, with its index among all the run's callers) for
/// the warm-up, then measures for `duration`.
async fn measure(callers: Vec<(usize, Caller)>, workload: Workload, load: &LoadArgs) -> Measured {
    let warmup_end = Instant::now() + Duration::from_secs(load.warmup);
    let end = warmup_end + Duration::from_secs(load.duration);
    let tasks: Vec<_> = callers
        .into_iter()
        .map(|(index, mut caller)| {
            tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(index as u64 ^ 0x5eed);
                let mut latencies = Vec::new();
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                loop {
                    let started = Instant::now();
                    if started >= end {
                        break;
                    }
                    let outcome = caller.call(workload, &mut rng).await;
                    if started < warmup_end {
                        continue;
                    }
                    match outcome {
                        Ok(()) => latencies
                            .push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)),
                        Err(code) => *errors.entry(code).or_default() += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut measured = Measured::of_run(load);
    for task in tasks {
        match task.await {
            Ok((latencies, errors)) => measured.add(latencies, errors),
            Err(err) => *measured.errors.entry(format!("task: {err}")).or_default() += 1,
        }
    }
    measured.latencies_ns.sort_unstable();
    measured
}

/// Makes the caller of a given index, on the event loop that will run it.
type CallerFactory = Arc<
    dyn Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = Result<Caller, BenchError>> + Send>>
        + Send
        + Sync,
>;

/// Runs `workload` with `concurrency` gRPC callers on `load.load_threads` threads of their own,
/// each a single-threaded event loop with every `load_threads`-th caller and its connection, as
/// pgbench's threads are: the load generator shares the machine's cores with the service and
/// its database, and a work-stealing runtime wakes its idle workers for every task it hands on
/// (docs/PERFORMANCE.md).
async fn measure_apart(
    concurrency: usize,
    workload: Workload,
    load: &LoadArgs,
    make: CallerFactory,
) -> Result<Measured, BenchError> {
    let threads = load.load_threads.clamp(1, concurrency.max(1));
    let connected = Arc::new(std::sync::Barrier::new(threads));
    let loops: Vec<_> = (0..threads)
        .map(|first| {
            let (make, connected, load) = (Arc::clone(&make), Arc::clone(&connected), load.clone());
            std::thread::spawn(move || -> Result<Measured, BenchError> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let mut callers = Vec::new();
                    let mut failed = None;
                    for index in (first..concurrency).step_by(threads) {
                        match make(index).await {
                            Ok(caller) => callers.push((index, caller)),
                            Err(err) => {
                                failed = Some(err);
                                break;
                            }
                        }
                    }
                    // Every loop starts its warm-up once all the connections are made; one that
                    // failed to connect still waits here, so that the others are not left waiting.
                    connected.wait();
                    if let Some(err) = failed {
                        return Err(err);
                    }
                    Ok(measure(callers, workload, &load).await)
                })
            })
        })
        .collect();
    let joined = tokio::task::spawn_blocking(move || {
        loops
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .map_err(|_| BenchError::from("a load thread panicked"))?
            })
            .collect::<Result<Vec<_>, BenchError>>()
    })
    .await??;
    let mut measured = Measured::of_run(load);
    for part in joined {
        measured.add(part.latencies_ns, part.errors);
    }
    measured.latencies_ns.sort_unstable();
    Ok(measured)
}

async fn connect(address: &str) -> Result<Channel, BenchError> {
    Ok(Endpoint::from_shared(address.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

// ---------------------------------------------------------------------------------------------
// The service

fn backend_of(url: &str) -> &'static str {
    if url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    }
}

async fn service(args: ServiceArgs) -> Result<(), BenchError> {
    if !args.no_seed {
        let started = Instant::now();
        seed(&args).await?;
        eprintln!(
            "seeded {} clients in {:.1} s",
            args.clients,
            started.elapsed().as_secs_f64()
        );
    }
    let mut replicas = Vec::new();
    for _ in 0..args.replicas.max(1) {
        replicas.push(ServiceProcess::start(&args.database_url).await?);
    }
    let coupon_id: Arc<str> = find_coupon(&replicas[0].address, COUPON_NAME).await?.into();
    let sale_date: Arc<str> = yesterday().into();
    let addresses: Arc<[String]> = replicas.iter().map(|r| r.address.clone()).collect();
    let backend = backend_of(&args.database_url);
    let vacuum = match backend {
        "postgres" => Some(
            sea_orm::Database::connect(args.database_url.as_str())
                .await
                .map_err(|e| format!("connecting to vacuum: {e}"))?,
        ),
        _ => None,
    };
    if let Some(db) = vacuum.as_ref().filter(|_| !args.no_seed) {
        // What seeding left dirty is written out now, not during the first measurement.
        db.execute_unprepared("VACUUM ANALYZE").await?;
        db.execute_unprepared("CHECKPOINT").await?;
    }
    for workload in &args.workloads {
        for &concurrency in &args.load.concurrency {
            // Each measurement starts from the tables as autovacuum keeps them, whatever the
            // server's setting (this machine's PostgreSQL runs with autovacuum off): the rows one
            // hot client or coupon changes thousands of times a second are otherwise read
            // through every dead version the earlier measurements left.
            if let Some(db) = &vacuum {
                db.execute_unprepared("VACUUM ANALYZE").await?;
            }
            let (addresses, coupon_id, sale_date) = (
                Arc::clone(&addresses),
                Arc::clone(&coupon_id),
                Arc::clone(&sale_date),
            );
            let (clients, front_office) = (args.clients, args.front_office);
            let make: CallerFactory = Arc::new(move |index| {
                let address = addresses[index % addresses.len()].clone();
                let (coupon_id, sale_date) = (Arc::clone(&coupon_id), Arc::clone(&sale_date));
                Box::pin(async move {
                    let channel = connect(&address).await?;
                    Ok(Caller::Service {
                        earn: pb::earn_service_client::EarnServiceClient::new(channel.clone()),
                        redeem: pb::redeem_service_client::RedeemServiceClient::new(
                            channel.clone(),
                        ),
                        ledger: pb::ledger_service_client::LedgerServiceClient::new(channel),
                        coupon_id,
                        clients,
                        sale_date,
                        front_office,
                    })
                })
            });
            measure_apart(concurrency, *workload, &args.load, make)
                .await?
                .print(&workload.name(), backend, concurrency, &args.load.label);
        }
    }
    for replica in replicas {
        replica.stop().await;
    }
    Ok(())
}

/// Yesterday in the tenant's default time zone (Europe/Warsaw): a closed sale day, earned at once.
fn yesterday() -> String {
    let today = Utc::now()
        .with_timezone(&chrono_tz::Europe::Warsaw)
        .date_naive();
    today
        .checked_sub_days(Days::new(1))
        .unwrap_or(today)
        .to_string()
}

/// A `one-loyalty serve` process on a free port, with the rate limits off.
struct ServiceProcess {
    child: tokio::process::Child,
    address: String,
}

impl ServiceProcess {
    async fn start(database_url: &str) -> Result<Self, BenchError> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let binary = sibling_binary("one-loyalty")?;
        let child = tokio::process::Command::new(binary)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("LOYALTY__DATABASE__URL", database_url)
            .env("LOYALTY__METRICS__LISTEN", "")
            .env("LOYALTY__TELEMETRY__LOG_FILTER", "error")
            // With no ONe endpoint every pool code would be retried for ever: deliveries are not
            // part of these workloads.
            .env("LOYALTY__OUTBOX__ENABLED", "false")
            .env("LOYALTY__LIMITS__PER_KEY_PER_SECOND", "0")
            .env("LOYALTY__LIMITS__PER_TENANT_PER_SECOND", "0")
            .env("LOYALTY__LIMITS__PER_TENANT_CONCURRENCY", "0")
            .env("LOYALTY__LIMITS__PER_KEY_CONCURRENCY", "0")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let address = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            if let Ok(channel) = connect(&address).await {
                let ready = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                if ready.is_ok() {
                    return Ok(Self { child, address });
                }
            }
            if Instant::now() > deadline {
                return Err(format!("the service at {address} did not start").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn sibling_binary(name: &str) -> Result<PathBuf, BenchError> {
    let me = std::env::current_exe()?;
    let dir = me.parent().ok_or("no directory for the bench binary")?;
    Ok(dir.join(name))
}

async fn find_coupon(address: &str, name: &str) -> Result<String, BenchError> {
    let mut coupons = pb::coupon_service_client::CouponServiceClient::new(connect(address).await?);
    let listed = coupons
        .list_coupons(authorized(pb::ListCouponsRequest {
            page_size: 100,
            ..Default::default()
        }))
        .await?
        .into_inner();
    listed
        .coupons
        .into_iter()
        .find(|c| c.spec.as_ref().is_some_and(|s| s.name == name))
        .map(|c| c.coupon_id)
        .ok_or_else(|| "the bench coupon is missing: seed first".into())
}

/// Seeds through the service's own API, in-process, on a clock pinned to 2026-01-01 (so that the
/// coupon is on offer and the consents, base points and grants are in the past): the clients and
/// their users (as synchronization writes them), a consent per user, base points for P1..P10,
/// the 7-point coupon, a grant of points to every client, and the history clients' events.
#[allow(clippy::too_many_lines)] // one linear seeding script
async fn seed(args: &ServiceArgs) -> Result<(), BenchError> {
    let start = DateTime::parse_from_rfc3339("2026-01-01T09:00:00Z")?.to_utc();
    let clock = Arc::new(FixedClock::new(start));
    let mut settings = Settings::load(
        None,
        &Overrides {
            listen: Some("127.0.0.1:0".parse()?),
            database_url: Some(args.database_url.clone()),
        },
    )?;
    settings.jobs.enabled = false;
    settings.outbox.enabled = false;
    settings.metrics.listen = String::new();
    settings.limits = LimitSettings::default();
    // Seeding is not measured: a slow call is reported (see `seeding`), not cut off.
    settings.server.request_timeout_ms = SEEDING_CALL_TIMEOUT.as_millis().try_into()?;
    let app = Application::build_with_clock(settings, Arc::clone(&clock) as Arc<dyn Clock>).await?;
    let services = app.services().clone();
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let tenant = TenantId::parse(TENANT)?;

    let mut names: Vec<String> = (0..args.clients).map(client_id).collect();
    names.extend(
        [
            HOT_CLIENT,
            SHORT_HISTORY_CLIENT,
            LONG_HISTORY_CLIENT,
            SPENT_LOTS_CLIENT,
            LIVE_LOTS_CLIENT,
        ]
        .map(str::to_owned),
    );
    let saves = names.iter().map(|client| {
        let services = services.clone();
        let tenant = tenant.clone();
        let client = client.clone();
        async move {
            let record = ClientRecord {
                client_id: client.clone(),
                name: client.clone(),
                status: "ACTIVE".into(),
                has_account: true,
                segment_ids: vec![],
                updated_at: start,
            };
            seeding(
                format!("saving client {client}"),
                services.directory.save_client(&tenant, &record),
            )
            .await?;
            let user = UserRecord {
                user_id: format!("u-{client}"),
                client_id: client,
                active: true,
                deactivated_at: None,
                updated_at: start,
            };
            seeding(
                format!("saving user {}", user.user_id),
                services.directory.save_user(&tenant, &user),
            )
            .await?;
            Ok(())
        }
    });
    run_all(saves, 16).await?;
    seeding(
        "saving the coupon pool",
        services.coupon_repo.save_pool(
            &tenant,
            &CouponPoolRecord {
                pool_id: "pool-bench".into(),
                name: "bench codes".into(),
                campaign_id: "camp-bench".into(),
                campaign_name: "bench".into(),
                active: true,
            },
        ),
    )
    .await?;

    let channel = connect(&address).await?;
    let mut agreements = pb::agreement_service_client::AgreementServiceClient::new(channel.clone());
    let consent_at = prost_types::Timestamp {
        seconds: start.timestamp() - 86_400,
        nanos: 0,
    };
    // 1,000 events are allowed per call, but on PostgreSQL such a call can outlast the request
    // timeout (docs/PERFORMANCE.md).
    for (batch, chunk) in names.chunks(200).enumerate() {
        let events = chunk
            .iter()
            .map(|client| pb::ConsentEvent {
                event_id: format!("bench-consent-{client}"),
                user_id: format!("u-{client}"),
                action: pb::ConsentAction::Accept as i32,
                occurred_at: Some(consent_at),
                agreement_version: 1,
                source: "bench".into(),
                ..Default::default()
            })
            .collect();
        let request_id = format!("bench-consents-{batch}-{}", chunk.len());
        seeding(
            format!("recording consents {request_id}"),
            agreements.record_consent_events(authorized(pb::RecordConsentEventsRequest {
                request_id: request_id.clone(),
                events,
            })),
        )
        .await?;
    }
    let mut rules = pb::rules_service_client::RulesServiceClient::new(channel.clone());
    seeding(
        "setting base points",
        rules.set_base_points(authorized(pb::SetBasePointsRequest {
            request_id: "bench-base-points".into(),
            effective_from: "2026-01-01".into(),
            entries: (1..=PRODUCTS)
                .map(|no| pb::BasePointsEntry {
                    product_id: format!("P{no}"),
                    points: "10".into(),
                    ..Default::default()
                })
                .collect(),
        })),
    )
    .await?;
    let mut coupons = pb::coupon_service_client::CouponServiceClient::new(channel.clone());
    seeding(
        "creating the coupon",
        coupons.create_coupon(authorized(bench_coupon(
            "bench-coupon",
            COUPON_NAME,
            COUPON_POINTS,
            "2026-01-02",
        ))),
    )
    .await?;

    // Grants: every client can redeem through any run; the hot client far more.
    let mut grants: Vec<(String, String, String)> = regular_clients(&names)
        .map(|c| {
            let points = if c == HOT_CLIENT {
                "100000000"
            } else {
                "1000000"
            };
            (format!("bench-grant-{c}"), c.clone(), points.to_owned())
        })
        .collect();
    for (client, events) in [
        (SHORT_HISTORY_CLIENT, 10),
        (LONG_HISTORY_CLIENT, args.history),
    ] {
        grants.extend((0..events).map(|n| {
            (
                format!("bench-history-{client}-{n}"),
                client.to_owned(),
                "1".into(),
            )
        }));
    }
    let ledger = pb::ledger_service_client::LedgerServiceClient::new(channel.clone());
    let calls = grants.into_iter().map(|(request_id, client, points)| {
        let mut ledger = ledger.clone();
        async move {
            seeding(
                format!("granting {request_id}"),
                ledger.adjust_points(authorized(grant(request_id.clone(), client, points))),
            )
            .await?;
            Ok(())
        }
    });
    run_all(calls, 16).await?;
    seed_past_activity(&clock, &channel, &address, &names).await?;
    if args.spent_lots > 0 {
        spend_every_lot(&clock, &channel, &address, args.spent_lots).await?;
    }
    earn_lots(&channel, LIVE_LOTS_CLIENT, args.live_lots, "1000").await?;
    let _ = stop.send(());
    server.await??;
    Ok(())
}

/// A cart-discount coupon of the bench's pool, on offer from `appearance_date`.
fn bench_coupon(
    request_id: &str,
    name: &str,
    points: &str,
    appearance_date: &str,
) -> pb::CreateCouponRequest {
    pb::CreateCouponRequest {
        request_id: request_id.into(),
        spec: Some(pb::CouponSpec {
            r#type: pb::CouponType::CartDiscount as i32,
            name: name.into(),
            pool_id: "pool-bench".into(),
            point_value: points.into(),
            image_url: "https://cdn.example.com/bench.png".into(),
            appearance_date: appearance_date.into(),
            expiration_date: "2030-12-31".into(),
            redemption_deadline: "2031-01-31".into(),
            discount: Some(pb::Discount {
                value: Some(pb::discount::Value::FixedAmount(pb::FixedAmount {
                    amount: "1".into(),
                    currency: "EUR".into(),
                })),
            }),
            ..Default::default()
        }),
    }
}

/// Points given by the seed, as an adjustment.
fn grant(request_id: String, client_id: String, points: String) -> pb::AdjustPointsRequest {
    pb::AdjustPointsRequest {
        request_id,
        client_id,
        points,
        reason_code: "BENCH".into(),
        reason: "bench seed".into(),
        user_id: "bench".into(),
    }
}

/// The spent-lots client as one that has bought and spent for years: `lots` one-line invoices
/// earned, one redemption of all their points, then a grant (which makes no lot) of the points
/// that `redeem-spent-lots` spends. Each of those redemptions looks for a lot with points left
/// among the spent ones. Runs after [`seed_past_activity`], on 2026-01-03, and ends on 2026-01-04.
async fn spend_every_lot(
    clock: &FixedClock,
    channel: &Channel,
    address: &str,
    lots: u32,
) -> Result<(), BenchError> {
    earn_lots(channel, SPENT_LOTS_CLIENT, lots, "3").await?;
    let mut ledger = pb::ledger_service_client::LedgerServiceClient::new(channel.clone());
    let earned = seeding(
        "reading the spent-lots client's balance",
        ledger.get_balance(authorized(pb::GetBalanceRequest {
            client_id: SPENT_LOTS_CLIENT.into(),
            expiring_within_days: 0,
        })),
    )
    .await?
    .into_inner()
    .balance
    .ok_or("a balance without its figures")?
    .available;
    let mut coupons = pb::coupon_service_client::CouponServiceClient::new(channel.clone());
    seeding(
        "creating the coupon that spends every lot",
        coupons.create_coupon(authorized(bench_coupon(
            "bench-coupon-spend-every-lot",
            SPEND_LOTS_COUPON_NAME,
            &earned,
            "2026-01-04",
        ))),
    )
    .await?;
    clock.set(DateTime::parse_from_rfc3339("2026-01-04T09:00:00Z")?.to_utc());
    let mut redeem = pb::redeem_service_client::RedeemServiceClient::new(channel.clone());
    let coupon_id = find_coupon(address, SPEND_LOTS_COUPON_NAME).await?;
    seeding(
        "spending every lot",
        redeem.redeem_coupon(authorized(pb::RedeemCouponRequest {
            request_id: "bench-spend-every-lot".into(),
            client_id: SPENT_LOTS_CLIENT.into(),
            coupon_id,
            user_id: String::new(),
        })),
    )
    .await?;
    seeding(
        "granting the spent-lots client",
        ledger.adjust_points(authorized(grant(
            format!("bench-grant-{SPENT_LOTS_CLIENT}"),
            SPENT_LOTS_CLIENT.into(),
            "100000000".into(),
        ))),
    )
    .await?;
    Ok(())
}

/// `lots` one-line invoices of `client`, each of `quantity` of the first product (10 points
/// apiece), each earning a lot of its own.
async fn earn_lots(
    channel: &Channel,
    client: &str,
    lots: u32,
    quantity: &str,
) -> Result<(), BenchError> {
    let earn = pb::earn_service_client::EarnServiceClient::new(channel.clone());
    let earns = (0..lots).map(|_| {
        let mut earn = earn.clone();
        let mut request = invoice(client, "2026-01-02");
        if let Some(document) = request.invoice.as_mut() {
            document.lines.truncate(1);
            for line in &mut document.lines {
                line.quantity = quantity.into();
            }
        }
        async move {
            let request_id = request.request_id.clone();
            seeding(
                format!("earning {request_id}"),
                earn.process_invoice(authorized(request)),
            )
            .await?;
            Ok(())
        }
    });
    run_all(earns, 16).await
}

/// The seeded clients but the two whose histories are read and the two whose lots are (their
/// events are only those seeded for them).
fn regular_clients(names: &[String]) -> impl Iterator<Item = &String> {
    names.iter().filter(|c| {
        ![
            SHORT_HISTORY_CLIENT,
            LONG_HISTORY_CLIENT,
            SPENT_LOTS_CLIENT,
            LIVE_LOTS_CLIENT,
        ]
        .contains(&c.as_str())
    })
}

/// A shop that has been running: an earned invoice for every client and a redemption for every
/// tenth, two days after the grants. Without them the documents and redemptions tables would be
/// empty when the first measurement's `VACUUM ANALYZE` runs, and PostgreSQL, told they are empty,
/// would plan their look-ups as sequential scans and keep those plans while the tables grow during
/// the measurement (this machine's PostgreSQL runs with autovacuum off, so nothing analyzes them
/// again): the first 1-caller earn measured 0.75x of the ones after it (docs/PERFORMANCE.md).
async fn seed_past_activity(
    clock: &FixedClock,
    channel: &Channel,
    address: &str,
    names: &[String],
) -> Result<(), BenchError> {
    clock.set(DateTime::parse_from_rfc3339("2026-01-03T09:00:00Z")?.to_utc());
    let earn = pb::earn_service_client::EarnServiceClient::new(channel.clone());
    let sale_date = "2026-01-02";
    let earns = regular_clients(names).map(|client| {
        let mut earn = earn.clone();
        let request = invoice(client, sale_date);
        async move {
            let request_id = request.request_id.clone();
            seeding(
                format!("earning {request_id}"),
                earn.process_invoice(authorized(request)),
            )
            .await?;
            Ok(())
        }
    });
    run_all(earns, 16).await?;
    let coupon_id = find_coupon(address, COUPON_NAME).await?;
    let redeem = pb::redeem_service_client::RedeemServiceClient::new(channel.clone());
    let redemptions = regular_clients(names).step_by(10).map(|client| {
        let mut redeem = redeem.clone();
        let request = pb::RedeemCouponRequest {
            request_id: next_id("seed-redeem"),
            client_id: client.clone(),
            coupon_id: coupon_id.clone(),
            user_id: String::new(),
        };
        async move {
            let request_id = request.request_id.clone();
            seeding(
                format!("redeeming {request_id}"),
                redeem.redeem_coupon(authorized(request)),
            )
            .await?;
            Ok(())
        }
    });
    run_all(redemptions, 16).await
}

/// The seed's request timeout: seeding is not measured, and a call cut off there cost a whole
/// table's run (docs/PERFORMANCE.md).
const SEEDING_CALL_TIMEOUT: Duration = Duration::from_mins(5);

/// A seeding call longer than this is reported by name.
const SEEDING_SLOW_CALL: Duration = Duration::from_secs(2);

/// Awaits one seeding call; a failure names the call, and so does a slow success (on stderr).
async fn seeding<T, E: std::fmt::Display>(
    call_name: impl std::fmt::Display,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, BenchError> {
    let started = Instant::now();
    let outcome = call.await;
    let took = started.elapsed();
    match outcome {
        Err(err) => Err(format!("seeding, {call_name} (after {took:.1?}): {err}").into()),
        Ok(value) => {
            if took > SEEDING_SLOW_CALL {
                eprintln!("seeding: {call_name} took {took:.1?}");
            }
            Ok(value)
        }
    }
}

/// Runs the futures as tasks, at most `width` at once, and fails on the first error.
async fn run_all<F>(futures: impl IntoIterator<Item = F>, width: usize) -> Result<(), BenchError>
where
    F: std::future::Future<Output = Result<(), BenchError>> + Send + 'static,
{
    let mut running = tokio::task::JoinSet::new();
    for future in futures {
        if running.len() >= width
            && let Some(done) = running.join_next().await
        {
            done??;
        }
        running.spawn(future);
    }
    while let Some(done) = running.join_next().await {
        done??;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// B4: a trivial tonic server

async fn echo(load: LoadArgs) -> Result<(), BenchError> {
    let mut server = tokio::process::Command::new(std::env::current_exe()?)
        .arg("echo-server")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = server
        .stdout
        .take()
        .ok_or("the echo server has no stdout")?;
    let port = tokio::io::BufReader::new(stdout)
        .lines()
        .next_line()
        .await?
        .ok_or("the echo server printed no port")?;
    let address = format!("http://127.0.0.1:{}", port.trim());
    for &concurrency in &load.concurrency {
        let address = address.clone();
        let make: CallerFactory = Arc::new(move |_| {
            let address = address.clone();
            Box::pin(async move { Ok(Caller::Echo(HealthClient::new(connect(&address).await?))) })
        });
        measure_apart(concurrency, Workload::Echo, &load, make)
            .await?
            .print("echo", "none", concurrency, &load.label);
    }
    let _ = server.start_kill();
    let _ = server.wait().await;
    Ok(())
}

async fn echo_server() -> Result<(), BenchError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    let (_reporter, health) = tonic_health::server::health_reporter();
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming(one_loyalty::startup::accepting(listener))
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// B5: the B2 writes in a minimal SQLite loop

/// Balances seeded, as in the B2 schema.
const B5_CLIENTS: i64 = 100_000;

const B5_SCHEMA: [&str; 7] = [
    "CREATE TABLE bl_balances (tenant_id INTEGER NOT NULL, client_id INTEGER NOT NULL, \
     total INTEGER NOT NULL DEFAULT 0, available INTEGER NOT NULL DEFAULT 0, \
     PRIMARY KEY (tenant_id, client_id))",
    "CREATE TABLE bl_events (id INTEGER PRIMARY KEY, tenant_id INTEGER NOT NULL, \
     client_id INTEGER NOT NULL, kind INTEGER NOT NULL, points INTEGER NOT NULL, \
     document_id TEXT, request_id TEXT, created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    "CREATE UNIQUE INDEX bl_events_document ON bl_events (tenant_id, document_id) \
     WHERE document_id IS NOT NULL",
    "CREATE UNIQUE INDEX bl_events_request ON bl_events (tenant_id, request_id) \
     WHERE request_id IS NOT NULL",
    "CREATE INDEX bl_events_client ON bl_events (tenant_id, client_id, id DESC)",
    "CREATE TABLE bl_event_lines (tenant_id INTEGER NOT NULL, event_id INTEGER NOT NULL, \
     line_no INTEGER NOT NULL, product_id INTEGER NOT NULL, quantity TEXT NOT NULL, \
     points INTEGER NOT NULL, breakdown TEXT NOT NULL, \
     PRIMARY KEY (tenant_id, event_id, line_no))",
    "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 100000) \
     INSERT INTO bl_balances (tenant_id, client_id, total, available) \
     SELECT 1, n, 1000000000, 1000000000 FROM g",
];

async fn sqlite(args: SqliteArgs) -> Result<(), BenchError> {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = args.path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
    if let Some(dir) = args.path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // The service's own pool and pragmas (WAL, synchronous = FULL, busy timeout).
    let settings = Settings::load(
        None,
        &Overrides {
            listen: None,
            database_url: Some(format!("sqlite://{}", args.path.display())),
        },
    )?;
    let database: DatabaseSettings = settings.database;
    let conn = db::connect(&database).await?;
    for statement in B5_SCHEMA {
        conn.execute_unprepared(statement).await?;
    }
    for workload in &args.workloads {
        for &concurrency in &args.load.concurrency {
            let callers = (0..concurrency)
                .map(|index| (index, Caller::Sqlite(conn.clone())))
                .collect();
            measure(callers, *workload, &args.load).await.print(
                &workload.name(),
                "sqlite-minimal",
                concurrency,
                &args.load.label,
            );
        }
    }
    Ok(())
}

fn sqlite_statement(sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(sea_orm::DatabaseBackend::Sqlite, sql, values)
}

async fn sqlite_call(
    conn: &DatabaseConnection,
    workload: Workload,
    rng: &mut SmallRng,
) -> Result<(), BenchError> {
    let client = if workload == Workload::RedeemHot {
        1
    } else {
        rng.random_range(1..=B5_CLIENTS)
    };
    match workload {
        Workload::Earn => {
            let txn = conn.begin().await?;
            let event = txn
                .query_one_raw(sqlite_statement(
                    "INSERT INTO bl_events (tenant_id, client_id, kind, points, document_id) \
                     VALUES (1, ?, 1, 1000, ?) RETURNING id",
                    vec![client.into(), next_id("inv").into()],
                ))
                .await?
                .ok_or("no event id")?;
            let event_id: i64 = event.try_get("", "id")?;
            txn.execute_raw(sqlite_statement(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 10) \
                 INSERT INTO bl_event_lines \
                 (tenant_id, event_id, line_no, product_id, quantity, points, breakdown) \
                 SELECT 1, ?, n, n * 7, '3', 100, \
                 '{\"base\":\"10\",\"qty\":\"3\",\"rule\":\"r1\",\"factor\":\"2\",\"rate\":\"1.5\"}' \
                 FROM g",
                vec![event_id.into()],
            ))
            .await?;
            txn.execute_raw(sqlite_statement(
                "UPDATE bl_balances SET total = total + 1000, available = available + 1000 \
                 WHERE tenant_id = 1 AND client_id = ?",
                vec![client.into()],
            ))
            .await?;
            txn.commit().await?;
        }
        Workload::Redeem | Workload::RedeemHot => {
            // SQLite has no UPDATE in a WITH: the debit and its event in one transaction.
            let txn = conn.begin().await?;
            let debited = txn
                .query_one_raw(sqlite_statement(
                    "UPDATE bl_balances SET available = available - 7, total = total - 7 \
                     WHERE tenant_id = 1 AND client_id = ? AND available >= 7 RETURNING client_id",
                    vec![client.into()],
                ))
                .await?;
            if debited.is_some() {
                txn.execute_raw(sqlite_statement(
                    "INSERT INTO bl_events (tenant_id, client_id, kind, points, request_id) \
                     VALUES (1, ?, 2, -7, ?)",
                    vec![client.into(), next_id("rq").into()],
                ))
                .await?;
            }
            txn.commit().await?;
        }
        Workload::RedeemSpentLots | Workload::RedeemLiveLots | Workload::Mixed | Workload::Echo => {
            return Err(format!("{} is not a B5 workload", workload.name()).into());
        }
        Workload::Balance | Workload::BalanceShortHistory | Workload::BalanceLongHistory => {
            conn.query_one_raw(sqlite_statement(
                "SELECT total, available FROM bl_balances WHERE tenant_id = 1 AND client_id = ?",
                vec![client.into()],
            ))
            .await?
            .ok_or("no balance")?;
        }
    }
    Ok(())
}
