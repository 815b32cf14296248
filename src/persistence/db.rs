//! Opening the database (SQLite file created on first use, or PostgreSQL) and migrating it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbErr,
    ExecResult, QueryResult, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::DatabaseSettings;
use crate::persistence::error::{RepoError, classify};

/// Which engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// # Errors
    /// A URL of another scheme.
    pub fn of(url: &str) -> Result<Self, RepoError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(RepoError::Config(format!(
                "unsupported database URL {url:?}: use sqlite://PATH or postgres://..."
            )))
        }
    }
}

/// Connects; for SQLite creates the file and its directory, turns on WAL with full fsync (points
/// are money-like: a committed event survives a power cut), a busy timeout, and the memory map
/// configured for reads (`sqlite_mmap_bytes`; off by default, measured slower for writes).
///
/// # Errors
/// The database is unreachable or the URL is wrong.
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, RepoError> {
    let backend = Backend::of(&settings.url)?;
    let mut url = settings.url.clone();
    if backend == Backend::Sqlite {
        url = prepare_sqlite_file(&url)?;
    }
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(settings.max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .acquire_timeout(Duration::from_millis(settings.connect_timeout_ms))
        // A ping before each use is one more round trip per statement: only a connection idle
        // for a second is pinged (one the database may have dropped meanwhile, as in a restart).
        .test_before_acquire_if_idle_for(Duration::from_secs(1))
        .sqlx_logging(false);
    if let Some(schema) = &settings.schema {
        options.set_schema_search_path(schema.clone());
    }
    let busy_timeout = Duration::from_millis(settings.sqlite_busy_timeout_ms);
    let mmap_bytes = settings.sqlite_mmap_bytes.to_string();
    options.map_sqlx_sqlite_opts(move |opts| {
        opts.journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(busy_timeout)
            .foreign_keys(true)
            .pragma("mmap_size", mmap_bytes.clone())
    });
    Database::connect(options).await.map_err(classify)
}

/// Begins a transaction that will write. On SQLite the process's writers of one file take turns
/// in the order they asked (one at a time, so nothing waits inside SQLite), then `BEGIN
/// IMMEDIATE` takes the file's write lock: SQLite's own wait for a busy lock polls with sleeps of
/// up to 100 ms, in no order, and under a steady stream of writers one of them could wait out the
/// busy timeout. A deferred transaction that read first would fail with `SQLITE_BUSY` when another
/// writer got there in between. PostgreSQL ignores the mode and takes no turn.
///
/// # Errors
/// The database.
pub async fn begin_write(db: &DatabaseConnection) -> Result<WriteTransaction, RepoError> {
    let turn = write_turn(db).await?;
    begin_write_in(db, turn).await
}

/// [`begin_write`] for a writer that already holds its turn (taken by [`write_turn`]).
///
/// # Errors
/// The database.
pub(crate) async fn begin_write_in(
    db: &DatabaseConnection,
    turn: WriteTurn,
) -> Result<WriteTransaction, RepoError> {
    let txn = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        })
        .await
        .map_err(classify)?;
    Ok(WriteTransaction { txn, _turn: turn })
}

/// This writer's turn at a SQLite file, once the writers before it are done; `None` on
/// PostgreSQL. Whoever holds it may begin a write transaction without waiting inside SQLite.
///
/// # Errors
/// The database is closing.
pub(crate) async fn write_turn(db: &DatabaseConnection) -> Result<WriteTurn, RepoError> {
    match write_turns(db) {
        Some(turns) => turns
            .acquire_owned()
            .await
            .map(Some)
            .map_err(|_| RepoError::Unavailable("the database is closing".into())),
        None => Ok(None),
    }
}

/// A writer's turn at a SQLite file, held until its write ends; `None` on PostgreSQL.
pub(crate) type WriteTurn = Option<OwnedSemaphorePermit>;

/// The turns of a SQLite file's writers in this process: one at a time, in order of asking.
fn write_turns(db: &DatabaseConnection) -> Option<Arc<Semaphore>> {
    static TURNS: LazyLock<Mutex<HashMap<PathBuf, Arc<Semaphore>>>> = LazyLock::new(Mutex::default);
    if db.get_database_backend() != sea_orm::DbBackend::Sqlite {
        return None;
    }
    let file = db
        .get_sqlite_connection_pool()
        .connect_options()
        .get_filename()
        .to_path_buf();
    let mut turns = TURNS.lock().unwrap_or_else(PoisonError::into_inner);
    Some(Arc::clone(
        turns
            .entry(file)
            .or_insert_with(|| Arc::new(Semaphore::new(1))),
    ))
}

/// A transaction begun by [`begin_write`], holding its writer's turn until it ends.
pub struct WriteTransaction {
    txn: DatabaseTransaction,
    _turn: WriteTurn,
}

impl std::fmt::Debug for WriteTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTransaction").finish_non_exhaustive()
    }
}

impl WriteTransaction {
    /// Commits, then gives the turn to the next writer.
    ///
    /// # Errors
    /// The database.
    pub async fn commit(self) -> Result<(), DbErr> {
        self.txn.commit().await
    }
}

impl std::ops::Deref for WriteTransaction {
    type Target = DatabaseTransaction;

    fn deref(&self) -> &DatabaseTransaction {
        &self.txn
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for WriteTransaction {
    fn get_database_backend(&self) -> sea_orm::DbBackend {
        self.txn.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.txn.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.txn.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.txn.query_one_raw(stmt).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.txn.query_all_raw(stmt).await
    }

    fn support_returning(&self) -> bool {
        self.txn.support_returning()
    }
}

/// Applies every pending migration.
///
/// # Errors
/// A migration failed.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), RepoError> {
    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        // Replicas that start together: one migrates, inside one transaction (PostgreSQL DDL is
        // transactional), while the others wait on the lock and then find nothing to do.
        let txn = db.begin().await.map_err(classify)?;
        txn.execute_unprepared("SELECT pg_advisory_xact_lock(5202611)")
            .await
            .map_err(classify)?;
        Migrator::up(&txn, None).await.map_err(classify)?;
        return txn.commit().await.map_err(classify);
    }
    Migrator::up(db, None).await.map_err(classify)
}

/// The tables of the connection's schema that have passed 8 pages (64 kB) and at least doubled
/// since PostgreSQL last measured them: on disk (`relpages`, set by `ANALYZE` and `VACUUM`), or in
/// live rows (`reltuples`) by the statistics collector's count.
///
/// Size on disk first, so that a table grown a second ago is seen at once and whatever
/// `track_counts` says. Rows as well, for an analyze that ran while a bulk write was still
/// uncommitted: it counts the pages the write filled but none of its rows (`reltuples` 0), so the
/// planner then expects no rows at all however large the table grows; the pages have not doubled
/// since, and only the committed rows show it. With `track_counts` off that count stays 0 and only
/// the pages are compared. The comparison is strict so that an emptied table is not analyzed every
/// round. The schema is compared by its oid, so that only its own tables' sizes are asked for (by
/// name, the database's every table was: 4.4 against 0.56 ms on a database of 23 schemas).
const GROWN_TABLES: &str = "SELECT format('%I.%I', current_schema(), c.relname) \
     FROM pg_class c \
     CROSS JOIN LATERAL (SELECT pg_relation_size(c.oid) \
         / current_setting('block_size')::bigint AS pages) AS size \
     WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r' \
       AND size.pages >= 8 \
       AND (size.pages >= 2 * c.relpages::bigint \
            OR pg_stat_get_live_tuples(c.oid) > 2 * c.reltuples) \
     ORDER BY 1";

/// Analyzes, on PostgreSQL, every table of the schema that has at least doubled since it was
/// last analyzed; returns their names (none on SQLite, whose plans do not follow statistics).
///
/// Why: every pooled connection plans a statement once, and keeps that generic plan until a table
/// it reads is analyzed. A table analyzed while nearly empty (autovacuum's first analyze, at 50
/// rows, or an administrator's) has its look-ups planned as sequential scans, and a bulk write
/// such as a tenant's first synchronization then runs each look-up over every row written so far,
/// until autovacuum next gets to the table (once a minute at best; never with it off). `ANALYZE`
/// after a bulk load is PostgreSQL's own advice, and it makes every connection plan again. Doubling
/// bounds the work: a few analyzes of a table as it grows, each reading at most 30,000 rows.
/// `SKIP_LOCKED`: a table another replica or autovacuum is analyzing is left to it.
///
/// # Errors
/// The database.
pub async fn analyze_grown_tables(db: &DatabaseConnection) -> Result<Vec<String>, RepoError> {
    if db.get_database_backend() != sea_orm::DbBackend::Postgres {
        return Ok(Vec::new());
    }
    let rows = db
        .query_all_raw(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            GROWN_TABLES,
        ))
        .await
        .map_err(classify)?;
    let mut analyzed = Vec::with_capacity(rows.len());
    for row in rows {
        let table: String = row.try_get_by_index(0).map_err(classify)?;
        db.execute_unprepared(&format!("ANALYZE (SKIP_LOCKED) {table}"))
            .await
            .map_err(classify)?;
        analyzed.push(table);
    }
    Ok(analyzed)
}

/// [`analyze_grown_tables`] for a caller that goes on whatever happens: what it analyzed is logged,
/// and a failure too (the planner's loss only; the next call tries again).
pub async fn analyze_grown_tables_or_warn(db: &DatabaseConnection) {
    match analyze_grown_tables(db).await {
        Ok(tables) if tables.is_empty() => {}
        Ok(tables) => tracing::debug!(?tables, "analyzed the tables that grew"),
        Err(err) => tracing::warn!(%err, "the tables that grew were not analyzed"),
    }
}

/// Makes sure the directory of a SQLite file exists and asks SQLite to create the file.
fn prepare_sqlite_file(url: &str) -> Result<String, RepoError> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" {
        return Err(RepoError::Config(
            "an in-memory SQLite database is one database per connection: use a file".into(),
        ));
    }
    if let Some(dir) = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| RepoError::Config(format!("cannot create {}: {e}", dir.display())))?;
    }
    let query = if query.contains("mode=") {
        query.to_owned()
    } else if query.is_empty() {
        "mode=rwc".to_owned()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok(format!("sqlite://{path}?{query}"))
}

/// A SQLite file of its own in `dir` for a unit test, with a pool of `max_connections`.
#[cfg(test)]
pub(crate) async fn test_sqlite(
    dir: &tempfile::TempDir,
    max_connections: u32,
) -> DatabaseConnection {
    connect(&DatabaseSettings {
        url: format!("sqlite://{}", dir.path().join("test.db").display()),
        max_connections,
        connect_timeout_ms: 5_000,
        sqlite_busy_timeout_ms: 2_000,
        sqlite_mmap_bytes: 0,
        write_batch_max: 1,
        auto_migrate: false,
        analyze_interval_ms: 0,
        schema: None,
    })
    .await
    .expect("connect")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patched sqlx-core (vendor/README.md) gives a connection with nothing left to send back
    /// to the pool as it is dropped, not in a task spawned for it: on this single-threaded test
    /// runtime such a task could not have run yet.
    #[tokio::test]
    async fn a_connection_is_back_in_the_pool_as_soon_as_it_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = test_sqlite(&dir, 1).await;
        db.execute_unprepared("SELECT 1")
            .await
            .expect("a statement");
        let pool = db.get_sqlite_connection_pool();
        assert_eq!(pool.num_idle(), 1);
        let conn = pool.acquire().await.expect("the connection");
        assert_eq!(pool.num_idle(), 0);
        drop(conn);
        assert_eq!(pool.num_idle(), 1);
    }

    /// SeaORM's `.one()` binds its `LIMIT 1`. Unless SQLite is built with the query planner
    /// stability guarantee (.cargo/config.toml), such a statement, taken from the connection's
    /// cache, is prepared again at every execution, as a value bound to it may change its plan.
    #[tokio::test]
    async fn a_cached_statement_with_a_bound_limit_is_not_prepared_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = test_sqlite(&dir, 1).await;
        db.execute_unprepared("CREATE TABLE numbers (n INTEGER PRIMARY KEY)")
            .await
            .expect("table");
        let look_up = "SELECT n FROM numbers WHERE n > ? ORDER BY n LIMIT ?";
        for n in 0..5_i64 {
            db.query_one_raw(Statement::from_sql_and_values(
                sea_orm::DbBackend::Sqlite,
                look_up,
                [n.into(), 1_i64.into()],
            ))
            .await
            .expect("look-up");
        }
        let counters = db
            .query_one_raw(Statement::from_sql_and_values(
                sea_orm::DbBackend::Sqlite,
                "SELECT run, reprep FROM sqlite_stmt WHERE sql = ?",
                [look_up.into()],
            ))
            .await
            .expect("sqlite_stmt")
            .expect("the look-up is cached");
        let count = |name: &str| counters.try_get::<i64>("", name).expect(name);
        assert_eq!((count("run"), count("reprep")), (5, 0), "run, reprep");
    }

    #[test]
    fn sqlite_urls_get_create_mode_and_memory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("sub/loyalty.db");
        let url = prepare_sqlite_file(&format!("sqlite://{}", file.display())).expect("url");
        assert!(url.ends_with("loyalty.db?mode=rwc"));
        assert!(file.parent().expect("parent").is_dir());
        assert!(prepare_sqlite_file("sqlite::memory:").is_err());
        assert_eq!(
            Backend::of("postgresql://x").expect("pg"),
            Backend::Postgres
        );
        assert!(Backend::of("mysql://x").is_err());
    }
}
