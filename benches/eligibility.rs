//! The cost of `eligible_on`, the one question earning asks of the agreements module, for a
//! client with 1,000 consent events, against a client with 2 (the baseline) and against
//! recomputing from the whole consent history (what the eligibility cache saves).
//!
//! `cargo bench --bench eligibility` (SQLite in a temp dir; PostgreSQL too when
//! `LOYALTY_TEST_DATABASE_URL` is set). The ratios are printed at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use one_loyalty::config::{Overrides, Settings};
use one_loyalty::domain::access::Caller;
use one_loyalty::domain::clock::{Clock, SystemClock};
use one_loyalty::domain::consent::{ConsentAction, client_eligibility, eligible_on};
use one_loyalty::domain::directory::{ClientRecord, UserRecord};
use one_loyalty::domain::tenant::TenantId;
use one_loyalty::persistence::agreements::SeaAgreementRepository;
use one_loyalty::persistence::{AgreementRepository, db};
use one_loyalty::service::agreements::{NewConsent, RecordConsents};
use one_loyalty::startup::Services;
use sea_orm::ConnectionTrait;

struct Fixture {
    services: Services,
    repo: SeaAgreementRepository,
    tenant: TenantId,
    _dir: Option<tempfile::TempDir>,
}

/// The day asked about.
fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 6, 15).expect("day")
}

/// The services over `conn`, with the default configuration.
fn wire(conn: &sea_orm::DatabaseConnection, clock: &Arc<dyn Clock>) -> Services {
    let config =
        one_loyalty::config::Settings::load(None, &one_loyalty::config::Overrides::default())
            .expect("default settings");
    Services::wire(conn, clock, &config).expect("wire services")
}

async fn fixture(postgres: Option<String>) -> Fixture {
    let mut settings = Settings::load(None, &Overrides::default())
        .expect("settings")
        .database;
    let mut dir = None;
    if let Some(url) = postgres {
        let schema = format!("bench_{}", std::process::id());
        let admin = sea_orm::Database::connect(url.as_str())
            .await
            .expect("postgres");
        admin
            .execute_unprepared(&format!(
                "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE; CREATE SCHEMA \"{schema}\""
            ))
            .await
            .expect("schema");
        settings.url = url;
        settings.schema = Some(schema);
    } else {
        let tmp = tempfile::tempdir().expect("temp dir");
        settings.url = format!("sqlite://{}", tmp.path().join("bench.db").display());
        dir = Some(tmp);
    }
    let conn = db::connect(&settings).await.expect("connect");
    db::migrate(&conn).await.expect("migrate");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let services = wire(&conn, &clock);
    let tenant = TenantId::parse("bench").expect("tenant");
    let caller = Caller {
        tenant: tenant.clone(),
        key_id: "bench".into(),
        roles: vec!["admin".into()],
        acting_for: None,
    };
    for (client, events) in [("org:long", 1_000_usize), ("org:short", 2)] {
        let user = format!("{client}-user");
        let now = Utc::now();
        let record = ClientRecord {
            client_id: client.into(),
            name: client.into(),
            status: "ACTIVE".into(),
            has_account: true,
            segment_ids: vec![],
            updated_at: now,
        };
        services
            .directory
            .save_client(&tenant, &record)
            .await
            .expect("client");
        let user_record = UserRecord {
            user_id: user.clone(),
            client_id: client.into(),
            active: true,
            deactivated_at: None,
            updated_at: now,
        };
        services
            .directory
            .save_user(&tenant, &user_record)
            .await
            .expect("user");
        // Alternating accept / withdraw, one event every 12 hours, ending on an accept.
        let start: DateTime<Utc> = day().and_hms_opt(8, 0, 0).expect("time").and_utc()
            - chrono::Duration::hours(12 * i64::try_from(events).expect("count"));
        let consents: Vec<NewConsent> = (0..events)
            .map(|i| NewConsent {
                event_id: format!("{client}-{i}"),
                user_id: user.clone(),
                action: if (events - i) % 2 == 1 {
                    ConsentAction::Accept
                } else {
                    ConsentAction::Withdraw
                },
                occurred_at: start + chrono::Duration::hours(12 * i64::try_from(i).expect("index")),
                declaration_type_id: String::new(),
                agreement_version: 1,
                source: "bench".into(),
                client_id: String::new(),
            })
            .collect();
        let command = RecordConsents {
            request_id: format!("{client}-seed"),
            request_hash: "seed".into(),
            events: consents,
        };
        services
            .agreements
            .record_consents(&caller, &command)
            .await
            .expect("seed consents");
    }
    Fixture {
        services,
        repo: SeaAgreementRepository::new(conn),
        tenant,
        _dir: dir,
    }
}

/// Recomputing from the history: what `eligible_on` would cost without the cache.
async fn eligible_by_scan(f: &Fixture, client: &str) -> bool {
    let user = f
        .services
        .directory
        .user(&f.tenant, &format!("{client}-user"))
        .await
        .expect("user")
        .expect("known");
    let events = f
        .repo
        .user_events(&f.tenant, &user.user_id, "")
        .await
        .expect("events");
    let facts = f
        .services
        .directory
        .client(&f.tenant, client)
        .await
        .expect("client")
        .expect("known")
        .facts();
    let intervals = client_eligibility(&facts, &[(user.facts(), events)], &[]);
    eligible_on(&intervals, chrono_tz::Europe::Warsaw, day())
}

fn mean_of(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    f: &Fixture,
    name: &str,
    client: &'static str,
    scan: bool,
) -> Duration {
    c.bench_function(name, |b| {
        b.to_async(rt).iter(|| async {
            if scan {
                assert!(eligible_by_scan(f, client).await);
            } else {
                assert!(
                    f.services
                        .agreements
                        .eligible_on(&f.tenant, client, day())
                        .await
                        .expect("eligible_on")
                );
            }
        });
    });
    // Criterion keeps its estimates to itself; a short timed loop gives the figure for the ratio.
    let runs = 300_u32;
    let started = Instant::now();
    rt.block_on(async {
        for _ in 0..runs {
            if scan {
                eligible_by_scan(f, client).await;
            } else {
                f.services
                    .agreements
                    .eligible_on(&f.tenant, client, day())
                    .await
                    .expect("eligible_on");
            }
        }
    });
    started.elapsed() / runs
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut backends = vec![("sqlite", None)];
    if let Ok(url) = std::env::var("LOYALTY_TEST_DATABASE_URL") {
        backends.push(("postgres", Some(url)));
    }
    let mut report = Vec::new();
    for (backend, url) in backends {
        let f = rt.block_on(fixture(url));
        let short = mean_of(
            c,
            &rt,
            &f,
            &format!("{backend}/eligible_on/2_events"),
            "org:short",
            false,
        );
        let long = mean_of(
            c,
            &rt,
            &f,
            &format!("{backend}/eligible_on/1000_events"),
            "org:long",
            false,
        );
        let scan = mean_of(
            c,
            &rt,
            &f,
            &format!("{backend}/recompute_from_history/1000_events"),
            "org:long",
            true,
        );
        report.push(format!(
            "{backend}: eligible_on 1000 events {long:?}, 2 events {short:?} (ratio {:.2}); recomputing from history {scan:?} ({:.1}x eligible_on)",
            long.as_secs_f64() / short.as_secs_f64(),
            scan.as_secs_f64() / long.as_secs_f64(),
        ));
    }
    for line in report {
        println!("{line}");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
