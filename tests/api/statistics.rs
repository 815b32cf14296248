//! PostgreSQL's plans for tables that grew: a connection keeps the generic plan it made for a
//! statement until a table it reads is analyzed, and a plan made while a table was nearly empty
//! reads every row of it. The service analyzes the tables that have doubled since their last
//! analyze: after each synchronization read (tests/api/sync.rs) and every
//! `database.analyze_interval_ms`, whatever wrote them (here).

use std::time::Duration;

use one_loyalty::persistence::db::analyze_grown_tables;
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};

use crate::helpers::{Backend, ClockedApp, TestDb, postgres_configured};

/// The plan `EXPLAIN EXECUTE` gives for the observer's prepared look-up of a user by its key.
pub async fn user_lookup_plan(observer: &DatabaseConnection) -> String {
    observer
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "EXPLAIN EXECUTE user_by_key('demo', 'u-1')",
        ))
        .await
        .expect("explain")
        .iter()
        .map(|row| row.try_get_by_index::<String>(0).expect("plan line"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A connection of its own on `store`'s schema, planning as every pooled connection of the
/// service does, whose look-up of a user by its key is planned for an empty `users`: analyzed
/// while empty (as autovacuum's first analyze, or an administrator's, leaves a table), then the
/// statement run until PostgreSQL settles on its generic plan, a sequential scan.
pub async fn observe_user_lookup(store: &TestDb) -> DatabaseConnection {
    let mut settings = store.settings.clone();
    settings.max_connections = 1;
    let observer = one_loyalty::persistence::db::connect(&settings)
        .await
        .expect("observer");
    observer
        .execute_unprepared("ANALYZE users")
        .await
        .expect("analyze");
    observer
        .execute_unprepared(
            "PREPARE user_by_key(text, text) AS \
             SELECT * FROM users WHERE tenant_id = $1 AND user_id = $2",
        )
        .await
        .expect("prepare");
    // PostgreSQL settles on a generic plan after five custom ones.
    for _ in 0..6 {
        observer
            .execute_unprepared("EXECUTE user_by_key('demo', 'u-1')")
            .await
            .expect("execute");
    }
    let plan = user_lookup_plan(&observer).await;
    assert!(
        plan.contains("Seq Scan on users"),
        "the look-up was not planned for an empty table:\n{plan}"
    );
    observer
}

/// `count` users of tenant `demo` written in one statement, by no path of the service's.
async fn write_users(db: &impl ConnectionTrait, count: u32) {
    db.execute_unprepared(&format!(
        "INSERT INTO users (tenant_id, user_id, client_id, active, anonymized, updated_at) \
         SELECT 'demo', 'u-' || i, 'org:' || (i % 100), true, false, now() \
         FROM generate_series(1, {count}) AS i"
    ))
    .await
    .expect("users");
}

/// What `read` gives, read again every 100 ms until `done` holds or 30 s have passed (a generous
/// bound for a loaded CI machine, where the service's analyze or the statistics collector lags).
async fn read_until<T, Read, Reading>(mut read: Read, done: impl Fn(&T) -> bool) -> T
where
    Read: FnMut() -> Reading,
    Reading: Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut value = read().await;
    while !done(&value) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        value = read().await;
    }
    value
}

/// 1,000 users written in one statement, by no path of the service's (as an import into the
/// database, or a burst of writes, would): the service's periodic analyze, every 100 ms here,
/// has the observer's look-up planned again as an index scan of the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_that_grew_are_analyzed_within_the_interval_whatever_wrote_them() {
    if !postgres_configured() {
        eprintln!("skipped: LOYALTY_TEST_DATABASE_URL is not set");
        return;
    }
    let app = ClockedApp::configured(Backend::Postgres, |s| {
        s.database.analyze_interval_ms = 100;
    })
    .await;
    let observer = observe_user_lookup(&app.store).await;
    write_users(&app.store.db, 1_000).await;
    let plan = read_until(
        || user_lookup_plan(&observer),
        |plan: &String| plan.contains("users_pkey"),
    )
    .await;
    assert!(
        plan.contains("users_pkey") && !plan.contains("Seq Scan"),
        "the look-up kept its plan for an empty table after 1,000 users:\n{plan}"
    );
    observer.close().await.ok();
    app.finish().await;
}

/// `users`' pages and rows as PostgreSQL last measured them (`relpages`, `reltuples`).
async fn measured_users(db: &DatabaseConnection) -> (i32, i64) {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT relpages, reltuples::bigint FROM pg_class WHERE oid = 'users'::regclass",
        ))
        .await
        .expect("pg_class")
        .expect("users");
    (
        row.try_get_by_index(0).expect("relpages"),
        row.try_get_by_index(1).expect("reltuples"),
    )
}

/// A fresh PostgreSQL store whose `users` autovacuum leaves alone, so that only the analyzes a test
/// runs count; and `users`' name as [`analyze_grown_tables`] gives it. None (the test skipped)
/// without PostgreSQL.
async fn users_analyzed_by_the_service_only() -> Option<(TestDb, String)> {
    if !postgres_configured() {
        eprintln!("skipped: LOYALTY_TEST_DATABASE_URL is not set");
        return None;
    }
    let store = TestDb::new(Backend::Postgres).await;
    store
        .db
        .execute_unprepared("ALTER TABLE users SET (autovacuum_enabled = false)")
        .await
        .expect("autovacuum off");
    let users = format!(
        "{}.users",
        store.settings.schema.as_deref().expect("schema")
    );
    Some((store, users))
}

/// An analyze that ran while 2,000 users were written in a transaction not yet committed counted
/// their pages and none of their rows, so the planner expected none. Once they are committed the
/// table is analyzed again, though its pages have not grown since; and then not again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_analyzed_while_a_bulk_write_was_uncommitted_is_analyzed_again_after_it() {
    let Some((store, users)) = users_analyzed_by_the_service_only().await else {
        return;
    };
    let writer = store.db.begin().await.expect("begin");
    write_users(&writer, 2_000).await;
    let during = analyze_grown_tables(&store.db).await.expect("analyze");
    assert!(
        during.contains(&users),
        "not analyzed while written: {during:?}"
    );
    let (pages, rows) = measured_users(&store.db).await;
    assert!(
        pages >= 8 && rows == 0,
        "measured {pages} pages, {rows} rows"
    );
    writer.commit().await.expect("commit");
    // The writer's counts reach the statistics collector when its connection goes idle, within
    // seconds.
    let after = read_until(
        || async { analyze_grown_tables(&store.db).await.expect("analyze") },
        |grown: &Vec<String>| grown.contains(&users),
    )
    .await;
    assert!(
        after.contains(&users),
        "not analyzed after the commit: {after:?}"
    );
    let (pages_after, rows_after) = measured_users(&store.db).await;
    assert!(
        pages_after == pages && rows_after == 2_000,
        "measured {pages_after} pages, {rows_after} rows"
    );
    let again = analyze_grown_tables(&store.db).await.expect("analyze");
    assert!(!again.contains(&users), "analyzed again: {again:?}");
}

/// A table whose every row was deleted, analyzed since (its pages still there, no rows): its live
/// rows, none, are not more than twice none, so it is not analyzed again at every round. The rows
/// are written and deleted in one transaction, so that the statistics collector's count is none
/// whenever the writer's counts reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_table_is_not_analyzed_at_every_round() {
    let Some((store, users)) = users_analyzed_by_the_service_only().await else {
        return;
    };
    let writer = store.db.begin().await.expect("begin");
    write_users(&writer, 2_000).await;
    writer
        .execute_unprepared("DELETE FROM users")
        .await
        .expect("delete");
    writer.commit().await.expect("commit");
    store
        .db
        .execute_unprepared("ANALYZE users")
        .await
        .expect("analyze");
    let (pages, rows) = measured_users(&store.db).await;
    assert!(
        pages >= 8 && rows == 0,
        "measured {pages} pages, {rows} rows"
    );
    let grown = analyze_grown_tables(&store.db).await.expect("analyze");
    assert!(!grown.contains(&users), "analyzed again: {grown:?}");
}
