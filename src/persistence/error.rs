//! The one place that classifies database errors.

use sea_orm::{DbErr, RuntimeErr, SqlErr};

use crate::domain::points::AmountError;
use crate::domain::tenant::TenantId;

/// What went wrong below the repositories, in terms the services act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RepoError {
    /// A unique constraint refused a row: the thing exists already.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A concurrent transaction won; the operation can be retried.
    #[error("aborted: {0}")]
    Aborted(String),
    /// A condition checked under the database's locks does not hold (not enough points, out of
    /// stock, a reservation no longer held); nothing was written.
    #[error("{0}")]
    Precondition(String),
    /// What a write was planned from no longer holds (a coupon changed since it was read):
    /// nothing was written; read again and plan anew.
    #[error("stale: {0}")]
    Stale(String),
    /// The database cannot be reached.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Stored data that the domain refuses (a corrupted or hand-edited row).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// Wrong database configuration.
    #[error("database configuration: {0}")]
    Config(String),
    /// Anything else.
    #[error("database error: {0}")]
    Other(String),
}

/// Points that do not fit the storage scale (more decimal places, or beyond `i64` minor units)
/// cannot be written.
impl From<AmountError> for RepoError {
    fn from(err: AmountError) -> Self {
        Self::Other(err.to_string())
    }
}

/// Turns a SeaORM error into a [`RepoError`]: unique violation → Conflict, serialization
/// failure, deadlock or a busy SQLite → Aborted, connection problems → Unavailable.
#[allow(clippy::needless_pass_by_value)] // by value so that `.map_err(classify)` reads well
pub fn classify(err: DbErr) -> RepoError {
    if let Some(SqlErr::UniqueConstraintViolation(msg)) = err.sql_err() {
        return RepoError::Conflict(msg);
    }
    let text = err.to_string();
    match &err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => RepoError::Unavailable(text),
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            classify_sqlx(e, text)
        }
        _ => RepoError::Other(text),
    }
}

fn classify_sqlx(err: &sea_orm::sqlx::Error, text: String) -> RepoError {
    use sea_orm::sqlx::Error as E;
    match err {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
            RepoError::Unavailable(text)
        }
        E::Database(db) if db.code().as_deref() == Some(SQLITE_CONSTRAINT_TRIGGER) => {
            // A script's own check refused the write (the view `write_refusals` of migration
            // `m20261206_000018`): the message is the refusal, its code first.
            let refusal = db.message();
            classify_code(Some(refusal_parts(refusal).0), refusal.to_owned())
        }
        E::Database(db) => classify_code(db.code().as_deref(), text),
        _ => RepoError::Other(text),
    }
}

/// A SQLite script's refusal: its code, then what follows it (its detail), if anything does.
pub(crate) fn refusal_parts(refusal: &str) -> (&str, Option<&str>) {
    refusal
        .split_once(' ')
        .map_or((refusal, None), |(code, detail)| (code, Some(detail)))
}

/// SQLite's extended result code for a trigger's `RAISE(ABORT, ...)`.
const SQLITE_CONSTRAINT_TRIGGER: &str = "1811";

/// A database error by its code (PostgreSQL's SQLSTATE, SQLite's extended result code).
pub(crate) fn classify_code(code: Option<&str>, text: String) -> RepoError {
    match code {
        // PostgreSQL unique violation (SQLite's are told by `classify` from their kind).
        Some("23505") => RepoError::Conflict(text),
        // PostgreSQL serialization failure and deadlock; SQLite BUSY and LOCKED.
        Some("40001" | "40P01" | "5" | "6" | "517" | "262") => RepoError::Aborted(text),
        // The refusals of our PostgreSQL functions (migrations `m20261202_000010`,
        // `m20261206_000016`, `m20261206_000017`) and of SQLite's scripts (`m20261206_000018`):
        // not enough points, the client's limit, out of stock; and a write whose plan no longer
        // holds.
        Some("LY001" | "LY002" | "LY003") => RepoError::Precondition(text),
        Some("LY004") => RepoError::Stale(text),
        // PostgreSQL: admin shutdown, cannot connect now.
        Some(code) if code.starts_with("08") || code == "57P01" || code == "57P03" => {
            RepoError::Unavailable(text)
        }
        _ => RepoError::Other(text),
    }
}

/// A tenant id read back from a row; one that does not parse is corrupt data.
pub(crate) fn stored_tenant(text: &str) -> Result<TenantId, RepoError> {
    TenantId::parse(text).map_err(|e| RepoError::Corrupt(e.to_string()))
}

/// Rows of (tenant id, item id), as the jobs that work across tenants read them.
pub(crate) fn tenant_keyed(
    rows: Vec<(String, String)>,
) -> Result<Vec<(TenantId, String)>, RepoError> {
    rows.into_iter()
        .map(|(tenant, id)| Ok((stored_tenant(&tenant)?, id)))
        .collect()
}
