//! Synchronization end to end against the simulated ONe (`one_loyalty::sim`, started in the
//! test): every stream, repeat runs that change nothing, changes and removals at the source,
//! runs cut short at random moments, an outage, and points earned from synced invoices.

use std::collections::BTreeMap;
use std::time::Duration;

use one_loyalty::domain::sync::SyncStream;
use one_loyalty::domain::tenant::TenantId;
use one_loyalty::persistence::entities::{documents, ledger_events};
use one_loyalty::proto::core::v1 as core;
use one_loyalty::proto::loyalty::v1 as pb;
use one_loyalty::service::sync::StreamRun;
use one_loyalty::sim::Faults;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};

use crate::fakes::SyncApp;
use crate::helpers::DEMO_TENANT;
use crate::on_both_backends;

on_both_backends!(SyncApp:
    every_stream_is_synced_and_a_second_run_changes_nothing,
    changes_and_removals_at_the_source_are_reflected,
    synced_invoices_earn_once_and_runs_cut_short_change_nothing,
    an_outage_is_retried_shown_in_the_status_and_caught_up,
    a_full_resynchronization_pages_through_the_lists,
    an_import_stores_the_good_documents_and_names_every_bad_row,
    dropped_and_refused_connections_are_survived,
    a_consent_event_sent_again_with_other_content_keeps_its_first,
);

fn tenant() -> TenantId {
    TenantId::parse(DEMO_TENANT).expect("tenant")
}

/// Runs every stream; panics on a failed stream.
async fn sync_all(app: &SyncApp) -> BTreeMap<SyncStream, StreamRun> {
    app.services
        .sync
        .run_tenant(&tenant())
        .await
        .into_iter()
        .map(|(stream, run)| (stream, run.unwrap_or_else(|e| panic!("{stream:?}: {e}"))))
        .collect()
}

async fn status(app: &SyncApp) -> Vec<pb::StreamStatus> {
    pb::sync_service_client::SyncServiceClient::new(app.channel.clone())
        .get_sync_status(app.request(pb::GetSyncStatusRequest::default()))
        .await
        .expect("status")
        .into_inner()
        .streams
}

async fn document_count(app: &SyncApp) -> u64 {
    documents::Entity::find()
        .count(&app.store.db)
        .await
        .expect("documents")
}

async fn every_stream_is_synced_and_a_second_run_changes_nothing(app: &SyncApp) {
    let first = sync_all(app).await;
    // 2 segments, 50 products (+ 5 categories), 20 clients, 20 users, 15 orders, 30 invoices,
    // 28 consent events (+ 1 version), 1 pool.
    let applied: BTreeMap<SyncStream, usize> = first.iter().map(|(s, r)| (*s, r.applied)).collect();
    assert_eq!(
        applied,
        BTreeMap::from([
            (SyncStream::Segments, 2),
            (SyncStream::Products, 55),
            (SyncStream::Clients, 20),
            (SyncStream::Users, 20),
            (SyncStream::Orders, 15),
            (SyncStream::Declarations, 29),
            (SyncStream::CouponPools, 1),
            (SyncStream::Documents, 30),
        ])
    );
    assert_eq!(document_count(app).await, 30);
    let client = app
        .services
        .directory
        .client(&tenant(), "org:2")
        .await
        .expect("read")
        .expect("client org:2");
    assert_eq!(client.segment_ids, vec!["gold".to_owned()]);
    assert!(
        app.services
            .coupon_repo
            .pool(&tenant(), one_loyalty::sim::POOL_ID)
            .await
            .expect("read")
            .is_some_and(|p| p.active)
    );
    let before = status(app).await;
    assert_eq!(before.len(), 8);
    for stream in &before {
        assert!(stream.last_error.is_empty(), "{stream:?}");
        assert!(!stream.cursor.is_empty(), "{stream:?}");
        assert!(stream.last_success_at.is_some());
    }

    let second = sync_all(app).await;
    assert!(
        second.values().all(|r| r.applied == 0),
        "a second run writes nothing: {second:?}"
    );
    let after = status(app).await;
    let cursors = |s: &[pb::StreamStatus]| {
        s.iter()
            .map(|x| (x.stream, x.cursor.clone(), x.items_synced))
            .collect::<Vec<_>>()
    };
    assert_eq!(cursors(&after), cursors(&before));
    assert_eq!(document_count(app).await, 30);
}

async fn changes_and_removals_at_the_source_are_reflected(app: &SyncApp) {
    sync_all(app).await;
    let at = one_loyalty::domain::clock::Clock::now(app.clock.as_ref());
    {
        let mut sim = app.sim.state();
        let mut client = sim.client("org:3").expect("org:3");
        client.name = "Renamed Ltd".into();
        client.segment_ids = vec!["gold".into(), "silver".into()];
        client.status = core::ClientStatus::Blocked as i32;
        sim.upsert_client(client, at);
        sim.remove_order("ORD-2", at);
        sim.upsert_pool(one_loyalty::sim::POOL_ID, false, at);
    }
    let runs = sync_all(app).await;
    assert_eq!(runs[&SyncStream::Clients].applied, 1);
    assert_eq!(runs[&SyncStream::Orders].applied, 1);
    let client = app
        .services
        .directory
        .client(&tenant(), "org:3")
        .await
        .expect("read")
        .expect("org:3");
    assert_eq!(
        (client.name.as_str(), client.status.as_str()),
        ("Renamed Ltd", "BLOCKED")
    );
    assert_eq!(
        client.segment_ids,
        vec!["gold".to_owned(), "silver".to_owned()]
    );
    let orders = app
        .services
        .catalog
        .orders(&tenant(), &["ORD-2".to_owned(), "ORD-4".to_owned()])
        .await
        .expect("orders");
    assert!(
        orders["ORD-2"].removed,
        "a removed order stops counting as online"
    );
    assert!(!orders["ORD-4"].removed);
    assert!(
        app.services
            .coupon_repo
            .pool(&tenant(), one_loyalty::sim::POOL_ID)
            .await
            .expect("read")
            .is_some_and(|p| !p.active)
    );
}

/// Whether each client's eligibility is open (it has an interval without an end).
async fn eligible_now(app: &SyncApp, clients: &[&str]) -> Vec<bool> {
    use one_loyalty::persistence::entities::client_eligibility;
    let mut open = Vec::new();
    for client in clients {
        let intervals = client_eligibility::Entity::find()
            .filter(client_eligibility::Column::TenantId.eq(DEMO_TENANT))
            .filter(client_eligibility::Column::ClientId.eq(*client))
            .all(&app.store.db)
            .await
            .expect("eligibility");
        open.push(intervals.iter().any(|i| i.valid_until.is_none()));
    }
    open
}

/// ONe's feed sends event 1 (org:1's user agreeing) again with the other action, then a new
/// withdrawal of org:3's user, then that withdrawal again as an agreement, all in one page: the
/// first content of each id stays, the changed copies count for nothing, and the withdrawal is
/// recorded and takes effect.
async fn a_consent_event_sent_again_with_other_content_keeps_its_first(app: &SyncApp) {
    use one_loyalty::persistence::entities::consent_events;
    sync_all(app).await;
    let first = || async {
        consent_events::Entity::find_by_id((DEMO_TENANT.to_owned(), "1".to_owned()))
            .one(&app.store.db)
            .await
            .expect("read")
            .expect("event 1")
    };
    let before = first().await;
    assert_eq!(before.client_id, "org:1");
    assert_eq!(eligible_now(app, &["org:1", "org:3"]).await, [true, true]);
    let at = one_loyalty::domain::clock::Clock::now(app.clock.as_ref());
    {
        let mut sim = app.sim.state();
        sim.resend_consent_changed("1");
        let withdrawal = sim.consent("u-3", "org:3", false, at);
        // And the new withdrawal sent again in the same page as an agreement.
        sim.resend_consent_changed(&withdrawal);
    }
    let runs = sync_all(app).await;
    assert_eq!(runs[&SyncStream::Declarations].applied, 1);
    assert_eq!(first().await, before);
    assert_eq!(eligible_now(app, &["org:1", "org:3"]).await, [true, false]);
}

/// Points per client, and how many Earn events there are.
async fn points(app: &SyncApp) -> (BTreeMap<String, String>, u64) {
    let mut balances = BTreeMap::new();
    for c in 1..=20 {
        let client_id = format!("org:{c}");
        let total = crate::redeem::balance(app, &client_id).await.total;
        balances.insert(client_id, total);
    }
    let earns = ledger_events::Entity::find()
        .filter(ledger_events::Column::EventType.eq("EARN"))
        .count(&app.store.db)
        .await
        .expect("events");
    (balances, earns)
}

async fn earn_everything(app: &SyncApp) {
    app.services.earn.run_due(1_000).await.expect("earn");
}

async fn synced_invoices_earn_once_and_runs_cut_short_change_nothing(app: &SyncApp) {
    // Runs stopped at random moments, as a crash would stop them: a transaction in flight is
    // rolled back, and what committed carries its cursor.
    let mut rng_state: u64 = 0x9e37_79b9;
    for _ in 0..12 {
        rng_state = rng_state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let stop_after = Duration::from_micros(500 + (rng_state >> 33) % 20_000);
        let sync = std::sync::Arc::clone(&app.services.sync);
        let run = tokio::spawn(async move { sync.run_tenant(&tenant()).await });
        tokio::time::sleep(stop_after).await;
        run.abort();
        let _ = run.await;
    }
    sync_all(app).await;
    earn_everything(app).await;
    let (interrupted, earns) = points(app).await;

    // The same ONe read by a fresh service in one go.
    let reference = SyncApp::with_sim(
        if app.store.settings.url.starts_with("sqlite") {
            crate::helpers::Backend::Sqlite
        } else {
            crate::helpers::Backend::Postgres
        },
        app.sim.clone(),
        app.sim_endpoint.clone(),
    )
    .await;
    sync_all(&reference).await;
    earn_everything(&reference).await;
    let (uninterrupted, reference_earns) = points(&reference).await;
    reference.finish().await;

    assert_eq!(interrupted, uninterrupted);
    assert_eq!(earns, reference_earns);
    assert!(earns > 20, "most invoices earn: {earns}");
    let earned: u64 = documents::Entity::find()
        .filter(documents::Column::EventId.is_not_null())
        .count(&app.store.db)
        .await
        .expect("documents");
    assert_eq!(earned, earns, "one Earn event per earning document");

    // Synced again and earned again: nothing more.
    sync_all(app).await;
    earn_everything(app).await;
    assert_eq!(points(app).await, (interrupted, earns));
}

async fn an_outage_is_retried_shown_in_the_status_and_caught_up(app: &SyncApp) {
    app.sim.set_faults(Faults {
        down: true,
        ..Faults::default()
    });
    let failed = app
        .services
        .sync
        .run_stream(&tenant(), SyncStream::Clients)
        .await
        .expect_err("ONe is down");
    assert!(failed.to_string().contains("unavailable"), "{failed}");
    let calls_while_down = app.sim.state().calls;
    assert!(
        calls_while_down >= 4,
        "retried with backoff: {calls_while_down} calls"
    );
    let clients = status(app)
        .await
        .into_iter()
        .find(|s| s.stream == pb::SyncStream::Clients as i32)
        .expect("clients");
    assert!(clients.last_error.contains("down"), "{clients:?}");
    assert!(clients.last_success_at.is_none() && clients.last_attempt_at.is_some());

    // A short outage is bridged by the retries within one run.
    app.sim.set_faults(Faults {
        fail_next: 2,
        ..Faults::default()
    });
    let run = app
        .services
        .sync
        .run_stream(&tenant(), SyncStream::Clients)
        .await
        .expect("caught up");
    assert_eq!(run.applied, 20);
    let clients = status(app)
        .await
        .into_iter()
        .find(|s| s.stream == pb::SyncStream::Clients as i32)
        .expect("clients");
    assert!(clients.last_error.is_empty());
    assert_eq!(clients.cursor, "20");
    assert_eq!(clients.items_synced, 20);
}

async fn a_full_resynchronization_pages_through_the_lists(app: &SyncApp) {
    sync_all(app).await;
    let scheduled = pb::sync_service_client::SyncServiceClient::new(app.channel.clone())
        .trigger_sync(app.request(pb::TriggerSyncRequest {
            request_id: "full-1".into(),
            streams: vec![
                pb::SyncStream::Products as i32,
                pb::SyncStream::Clients as i32,
            ],
            full_resync: true,
        }))
        .await
        .expect("trigger")
        .into_inner()
        .scheduled;
    assert_eq!(
        scheduled,
        vec![
            pb::SyncStream::Products as i32,
            pb::SyncStream::Clients as i32
        ]
    );
    // The triggered run reads 50 products and 20 clients again, 7 per page, then clears the
    // request; nothing changed, so nothing is written.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let calls_before = app.sim.state().calls;
    loop {
        let states = app
            .services
            .sync
            .status(
                &one_loyalty::domain::access::Caller {
                    tenant: tenant(),
                    key_id: "test".into(),
                    roles: vec![],
                    acting_for: None,
                },
                &[SyncStream::Products, SyncStream::Clients],
            )
            .await
            .expect("status");
        if states
            .iter()
            .all(|(s, running)| !s.full_resync_requested && !running)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{states:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pages = app.sim.state().calls - calls_before;
    assert!(
        pages >= 8 + 3,
        "50 products and 20 clients in pages of 7: {pages} calls"
    );
    let bad = pb::sync_service_client::SyncServiceClient::new(app.channel.clone())
        .trigger_sync(app.request(pb::TriggerSyncRequest {
            request_id: "full-2".into(),
            streams: vec![99],
            full_resync: false,
        }))
        .await
        .expect_err("unknown stream");
    assert_eq!(crate::helpers::violated_fields(&bad), vec!["streams[0]"]);
}

async fn upload(
    app: &SyncApp,
    request_id: &str,
    format: pb::ImportFormat,
    file: &str,
) -> Result<pb::ImportDocumentsResponse, tonic::Status> {
    use pb::import_documents_request::Part;
    // The file in chunks of 50 bytes, cut mid-line, as a client streams it.
    let mut parts = vec![pb::ImportDocumentsRequest {
        part: Some(Part::Header(pb::ImportHeader {
            request_id: request_id.into(),
            format: format as i32,
            file_name: "offline.csv".into(),
        })),
    }];
    parts.extend(
        file.as_bytes()
            .chunks(50)
            .map(|c| pb::ImportDocumentsRequest {
                part: Some(Part::Chunk(c.to_vec())),
            }),
    );
    pb::sync_service_client::SyncServiceClient::new(app.channel.clone())
        .import_documents(app.request(tokio_stream::iter(parts)))
        .await
        .map(tonic::Response::into_inner)
}

async fn an_import_stores_the_good_documents_and_names_every_bad_row(app: &SyncApp) {
    sync_all(app).await;
    let file = "document_id,number,client_id,sale_date,line_no,product_id,quantity,order_number
off-1,OFF/1,org:2,2026-03-19,1,p-1,2,
off-1,OFF/1,org:2,2026-03-19,2,p-2,3,
off-2,OFF/2,org:4,2026-03-19,1,p-3,many,
off-2,OFF/2,org:4,2026-03-19,2,p-4,1,
off-3,OFF/3,org:6,2026-03-19,1,,1,
off-4,OFF/4,org:8,2026-03-19,1,p-5,4,
";
    let report = upload(app, "import-1", pb::ImportFormat::Csv, file)
        .await
        .expect("import");
    assert_eq!(report.rows_accepted, 3);
    assert_eq!(
        report.document_ids,
        vec!["off-1".to_owned(), "off-4".to_owned()]
    );
    let lines: Vec<u64> = report.rejected.iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![4, 5, 6]);
    assert_eq!(report.rows_rejected, 3);
    assert!(report.rejected[0].reason.contains("quantity \"many\""));
    assert!(
        report.rejected[1]
            .reason
            .contains("off-2 has a rejected row")
    );
    assert!(report.rejected[2].reason.contains("product_id"));
    for missing in ["off-2", "off-3"] {
        assert_eq!(
            documents::Entity::find()
                .filter(documents::Column::DocumentId.eq(missing))
                .count(&app.store.db)
                .await
                .expect("documents"),
            0,
            "a rejected row writes nothing"
        );
    }
    earn_everything(app).await;
    let off1 = documents::Entity::find()
        .filter(documents::Column::DocumentId.eq("off-1"))
        .one(&app.store.db)
        .await
        .expect("read")
        .expect("off-1");
    assert!(off1.offline);
    assert_eq!(off1.source, "IMPORT");
    assert_eq!(
        off1.points, 50_000,
        "5 units at 1 point, offline lines earn by default"
    );

    // The same file again: the same answer, nothing earned twice.
    let (before, earns) = points(app).await;
    let again = upload(app, "import-1", pb::ImportFormat::Csv, file)
        .await
        .expect("again");
    assert_eq!(again, report);
    earn_everything(app).await;
    assert_eq!(points(app).await, (before, earns));

    let json = concat!(
        r#"{"documentId":"off-9","number":"OFF/9","clientId":"org:10","saleDate":"2026-03-19","lines":[{"lineNo":1,"productId":"p-9","quantity":2}]}"#,
        "\n",
        r#"{"documentId":"off-10"}"#,
        "\n"
    );
    let report = upload(app, "import-2", pb::ImportFormat::JsonLines, json)
        .await
        .expect("json lines");
    assert_eq!(report.document_ids, vec!["off-9".to_owned()]);
    assert_eq!(
        report.rejected.iter().map(|r| r.line).collect::<Vec<_>>(),
        vec![2]
    );
    let no_header = pb::sync_service_client::SyncServiceClient::new(app.channel.clone())
        .import_documents(
            app.request(tokio_stream::iter(vec![pb::ImportDocumentsRequest {
                part: Some(pb::import_documents_request::Part::Chunk(b"x".to_vec())),
            }])),
        )
        .await
        .expect_err("no header");
    assert_eq!(crate::helpers::violated_fields(&no_header), vec!["header"]);
}

async fn dropped_and_refused_connections_are_survived(app: &SyncApp) {
    let demo = tenant();
    let clients = || app.services.sync.run_stream(&demo, SyncStream::Clients);
    assert_eq!(clients().await.expect("first").applied, 20);
    let add = |id: &str| {
        let at = one_loyalty::domain::clock::Clock::now(app.clock.as_ref());
        let mut sim = app.sim.state();
        let mut client = sim.client("org:1").expect("org:1");
        client.id = id.into();
        sim.upsert_client(client, at);
    };

    // ONe drops every open connection: the channel reconnects by itself.
    app.sim.drop_connections();
    tokio::time::sleep(Duration::from_millis(100)).await;
    add("org:new-1");
    assert_eq!(clients().await.expect("after a drop").applied, 1);

    // ONe closes every new connection for a while: the run fails and says so, then catches up.
    app.sim.set_faults(Faults {
        refuse_connections: true,
        ..Faults::default()
    });
    app.sim.drop_connections();
    tokio::time::sleep(Duration::from_millis(100)).await;
    add("org:new-2");
    let failed = clients().await.expect_err("connections refused");
    assert!(failed.to_string().contains("unavailable"), "{failed}");
    app.sim.set_faults(Faults::default());
    assert_eq!(clients().await.expect("accepted again").applied, 1);
    assert!(
        app.services
            .directory
            .client(&tenant(), "org:new-2")
            .await
            .expect("read")
            .is_some()
    );
}

/// A tenant's first synchronization into tables PostgreSQL analyzed while empty (as autovacuum's
/// first analyze, or an administrator's, leaves them): a connection's cached generic plan for a
/// user's look-up by its key is then a sequential scan, which would read every user stored so far
/// at every look-up. The synchronization analyzes the tables it grew, and so the connection plans
/// the look-up again, as an index scan of the key. Autovacuum (off on the CI machine, and at most
/// once a minute otherwise) plays no part in the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_synchronization_has_lookups_planned_again_for_the_tables_it_grew() {
    if !crate::helpers::postgres_configured() {
        eprintln!("skipped: LOYALTY_TEST_DATABASE_URL is not set");
        return;
    }
    let start = chrono::DateTime::parse_from_rfc3339("2026-03-20T12:00:00Z")
        .expect("instant")
        .to_utc();
    let sim = one_loyalty::sim::CoreSim::new(one_loyalty::sim::SimState::generate(
        one_loyalty::sim::SimSpec {
            clients: 1_000,
            invoices_per_day: 1,
            days: 1,
            ..one_loyalty::sim::SimSpec::default()
        },
        start,
    ));
    let endpoint = crate::fakes::start_sim(&sim).await;
    // The service's own periodic analyze off: the synchronization's alone is tested.
    let app = SyncApp::configured(crate::helpers::Backend::Postgres, sim, endpoint, |s| {
        s.database.analyze_interval_ms = 0;
    })
    .await;
    let observer = crate::statistics::observe_user_lookup(&app.store).await;

    // A run stores at most its batches' worth of a stream; the scheduler's next runs go on.
    let mut users = 0;
    loop {
        let runs = sync_all(&app).await;
        users += runs[&SyncStream::Users].applied;
        if runs.values().all(|run| run.applied == 0) {
            break;
        }
    }
    assert_eq!(users, 1_000);
    let after = crate::statistics::user_lookup_plan(&observer).await;
    assert!(
        after.contains("users_pkey") && !after.contains("Seq Scan"),
        "the look-up kept its plan for an empty table after 1,000 users:\n{after}"
    );
    // Every read analyzed what it grew: no table is left at twice its analyzed size.
    let grown = one_loyalty::persistence::db::analyze_grown_tables(&app.store.db)
        .await
        .expect("grown tables");
    assert!(grown.is_empty(), "left unanalyzed: {grown:?}");
    observer.close().await.ok();
    app.finish().await;
}
