//! PostgreSQL only: the two hot writes in one round trip each. Each transaction they replace was
//! a round trip per row (BEGIN, ten statements, COMMIT), and these calls' time was their round
//! trips (docs/PERFORMANCE.md).
//!
//! - A received invoice with its earn: one statement. Data-modifying CTEs make the writes one
//!   atomic statement: it commits on its own, and a failure anywhere writes nothing.
//! - A redemption: one call of a PL/pgSQL function. It cannot be one statement: a statement sees
//!   the database as it was when it started, before it waited for the client's balance lock, and
//!   would spend lots that another redemption had just spent; inside a function each statement
//!   sees the database anew.
//!
//! The rows are the ones the transaction path builds (`document_row`, `line_rows`, `event_row`,
//! `lot_row`, the event lines' `row`, the redemption's `to_row`, `outbox_row`, `record_row`),
//! sent as JSON objects keyed by column and turned back into rows of the table's own type by
//! `jsonb_populate_record`, so no column list is written twice. Only what the database decides
//! itself is added there: the ids it gives and the running balance.

use chrono::{DateTime, SecondsFormat, Utc};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, Iden,
    Iterable, RuntimeErr, Statement,
};
use serde_json::{Map, Value as Json};

use super::RedeemPlan;
use super::documents::{document_row, line_rows};
use super::error::{RepoError, classify, classify_code};
use super::event_lines::row as event_line_row;
use super::group_commit::BatchWriter;
use super::idempotency::record_row;
use super::ledger::{entering_locked, event_row, lot_row, spend_source};
use super::redemptions::{limit_reached, live_statuses, out_of_stock, outbox_row, to_row};
use crate::domain::documents::DocumentRecord;
use crate::domain::engine::LineCalculation;
use crate::domain::idempotency::IdempotencyRecord;
use crate::domain::ledger::{EventType, NewLedgerEvent};
use crate::domain::points::to_minor_units;
use crate::domain::redemption::Redemption;
use crate::domain::tenant::TenantId;

/// The earn, in order of the locks it takes: the client's balance row first (created, or locked
/// by the conflict update), unless the document is stored already; the event's id is drawn only
/// then, under the lock, so that one client's events are numbered in the order they commit, as
/// on the transaction path. A concurrent first delivery of the same document waits on that row
/// and then fails on the document's primary key, which undoes the whole statement.
const EARN: &str = r"
WITH bal AS (
    INSERT INTO balances AS b
        (tenant_id, client_id, total, available, locked, reserved, last_event_id, event_count,
         updated_at)
    SELECT $1, $2, $3, $4, $5, 0, nextval(pg_get_serial_sequence('ledger_events', 'event_id')),
        1, $6
    WHERE NOT EXISTS (SELECT 1 FROM documents WHERE tenant_id = $1 AND document_id = $7)
    ON CONFLICT (tenant_id, client_id) DO UPDATE SET
        total = b.total + EXCLUDED.total,
        available = b.available + EXCLUDED.available,
        locked = b.locked + EXCLUDED.locked,
        last_event_id = nextval(pg_get_serial_sequence('ledger_events', 'event_id')),
        event_count = b.event_count + 1,
        updated_at = EXCLUDED.updated_at
    RETURNING b.last_event_id AS event_id, b.total AS total
), event AS (
    INSERT INTO ledger_events
    SELECT r.* FROM bal, jsonb_populate_record(NULL::ledger_events,
        $8::jsonb || jsonb_build_object('event_id', bal.event_id, 'balance_after', bal.total)) r
), document AS (
    INSERT INTO documents
    SELECT r.* FROM bal, jsonb_populate_record(NULL::documents,
        $9::jsonb || jsonb_build_object('event_id', bal.event_id)) r
), document_line AS (
    INSERT INTO document_lines
    SELECT r.* FROM bal, jsonb_array_elements($10::jsonb) l,
        jsonb_populate_record(NULL::document_lines, l) r
), lot AS (
    INSERT INTO earn_lots
    SELECT r.* FROM bal, jsonb_array_elements($11::jsonb) l,
        jsonb_populate_record(NULL::earn_lots, l || jsonb_build_object('event_id', bal.event_id)) r
), event_line AS (
    INSERT INTO ledger_event_lines
    SELECT r.* FROM bal, jsonb_array_elements($12::jsonb) l,
        jsonb_populate_record(NULL::ledger_event_lines,
            l || jsonb_build_object('event_id', bal.event_id)) r
)
SELECT event_id FROM bal
";

/// Whether an event can be written by [`receive_earning`]: an earn takes from no lot and spends
/// nothing, so the balance moves by its points alone.
pub fn fits(db: &DatabaseConnection, event: &NewLedgerEvent) -> bool {
    db.get_database_backend() == DbBackend::Postgres
        && event.event_type == EventType::Earn
        && event.points.is_sign_positive()
        && event.related_event_id.is_none()
        && event.reservation_id.is_none()
        && event.redemption_id.is_none()
}

/// Stores a decided document (`stored`: the record as it stands once decided) with its earn
/// `event` and `lines`. `Some(event id)`: stored now; `None`: the document was stored before and
/// nothing was written. A concurrent first delivery of the same document is `Conflict`.
///
/// # Errors
/// `Conflict` as above, or the database.
pub async fn receive_earning(
    db: &DatabaseConnection,
    tenant: &TenantId,
    stored: &DocumentRecord,
    event: &NewLedgerEvent,
    lines: &[LineCalculation],
    now: DateTime<Utc>,
) -> Result<Option<i64>, RepoError> {
    let points = to_minor_units(event.points).map_err(|e| RepoError::Other(e.to_string()))?;
    let into_locked = entering_locked(event, points);
    let lots: Vec<_> = event
        .lot
        .filter(|_| points > 0)
        .map(|terms| lot_row(tenant, &event.client_id, 0, points, terms, now))
        .into_iter()
        .collect();
    let event_lines = lines
        .iter()
        .map(|l| event_line_row(tenant, 0, l))
        .collect::<Result<Vec<_>, _>>()?;
    // The id and the running balance are the statement's; the zeros are replaced there.
    let values: Vec<sea_orm::Value> = vec![
        tenant.as_str().into(),
        event.client_id.as_str().into(),
        points.into(),
        (points - into_locked).into(),
        into_locked.into(),
        now.fixed_offset().into(),
        stored.document.document_id.as_str().into(),
        row_param(&event_row(tenant, event, points, 0, now))?,
        row_param(&document_row(tenant, stored)?)?,
        rows_param(&line_rows(tenant, &stored.document)?)?,
        rows_param(&lots)?,
        rows_param(&event_lines)?,
    ];
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            EARN,
            values,
        ))
        .await
        .map_err(classify)?;
    row.map(|r| r.try_get::<i64>("", "event_id").map_err(classify))
        .transpose()
}

/// The function's refusals, by the SQLSTATE it raises them with.
const NOT_ENOUGH_POINTS: &str = "LY001";
const LIMIT_REACHED: &str = "LY002";
const OUT_OF_STOCK: &str = "LY003";

/// Whether a redemption can be written by [`RedemptionWriter`]: its Use event spends available
/// points from the oldest lots, with no reservation behind it and no lot named.
pub fn fits_redemption(db: &DatabaseConnection, plan: &RedeemPlan) -> bool {
    let event = &plan.use_event;
    db.get_database_backend() == DbBackend::Postgres
        && event.event_type == EventType::Use
        && event.points.is_sign_negative()
        && event.related_event_id.is_none()
        && event.reservation_id.is_none()
        && event.lot.is_none()
}

/// A redemption ready for `loyalty_redeem` (migration `m20261202_000010_redeem_function`): its
/// arguments as one JSON object, and what its answer is made of.
#[derive(Debug)]
pub struct PreparedRedemption {
    arguments: Json,
    /// The redemption as stored, but for its Use event's id.
    stored: Redemption,
    coupon_id: String,
    per_client_limit: Option<u32>,
    use_event: NewLedgerEvent,
    /// The Use event's points in minor units (negative).
    points: i64,
}

impl PreparedRedemption {
    /// The request's `record`, the Use event, the redemption, its outbox message, the coupon's
    /// stock and the client's limit, as the function takes them. The running balance and the
    /// ids are the function's; the zeros are replaced there.
    ///
    /// # Errors
    /// Points that do not fit the storage scale, or a row that cannot be encoded.
    pub fn new(
        tenant: &TenantId,
        plan: &RedeemPlan,
        record: &IdempotencyRecord,
        now: DateTime<Utc>,
    ) -> Result<Self, RepoError> {
        let event = &plan.use_event;
        let points = to_minor_units(event.points).map_err(|e| RepoError::Other(e.to_string()))?;
        let mut stored = plan.redemption.clone();
        stored.created_at = now;
        stored.updated_at = now;
        let arguments = serde_json::json!({
            "tenant": tenant.as_str(),
            "client": event.client_id,
            "cost": -points,
            "now": json_instant(now),
            "record": json_row(&record_row(tenant, record))?,
            "event": json_row(&event_row(tenant, event, points, 0, now))?,
            "redemption": json_row(&to_row(tenant, &stored)?)?,
            "message": json_row(&outbox_row(tenant, plan, now)?)?,
            "coupon": stored.coupon_id,
            "stock": plan.stock,
            "limit": plan.per_client_limit,
            "live": live_statuses(),
        });
        Ok(Self {
            arguments,
            coupon_id: stored.coupon_id.clone(),
            stored,
            per_client_limit: plan.per_client_limit,
            use_event: event.clone(),
            points,
        })
    }

    /// The redemption as stored, with the id of the Use event the function wrote.
    fn written(self, use_event_id: i64) -> Redemption {
        Redemption {
            use_event_id: Some(use_event_id),
            ..self.stored
        }
    }

    /// What the function's error `code` (with its `detail` and `message`) means for this
    /// redemption: one of its refusals, or what the database said.
    fn refused(&self, code: &str, detail: Option<&str>, message: String) -> RepoError {
        match code {
            LIMIT_REACHED => {
                limit_reached(&self.coupon_id, self.per_client_limit.unwrap_or_default())
            }
            OUT_OF_STOCK => out_of_stock(&self.coupon_id),
            NOT_ENOUGH_POINTS => detail
                .and_then(|d| d.parse::<i64>().ok())
                .and_then(|available| spend_source(&self.use_event, self.points, available).err())
                .unwrap_or(RepoError::Precondition(message)),
            _ => classify_code(Some(code), message),
        }
    }
}

/// Writes redemptions in one round trip that commits on its own: one alone by `loyalty_redeem`,
/// several queued together by `loyalty_redeem_batch`, each in a subtransaction of its own. Each
/// writes the request's record, the Use event, the lots it spends (oldest first, under the
/// client's balance lock), the balance, the redemption, its outbox message and the coupon's
/// count, or nothing: a refusal (points, the client's limit, the stock) is `Precondition`, a
/// request id or code taken is `Conflict`.
#[derive(Debug)]
pub struct RedemptionWriter {
    db: DatabaseConnection,
}

impl RedemptionWriter {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    async fn one(&self, item: PreparedRedemption) -> Result<Redemption, RepoError> {
        let call = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT loyalty_redeem($1::jsonb) AS use_event_id",
                [item.arguments.to_string().into()],
            ))
            .await;
        let row = match call {
            Ok(row) => {
                row.ok_or_else(|| RepoError::Other("loyalty_redeem returned no row".into()))?
            }
            Err(err) => {
                return Err(match database_error(&err) {
                    Some((code, detail)) => item.refused(&code, detail.as_deref(), err.to_string()),
                    None => classify(err),
                });
            }
        };
        let use_event_id = row.try_get::<i64>("", "use_event_id").map_err(classify)?;
        Ok(item.written(use_event_id))
    }

    async fn batch(&self, items: Vec<PreparedRedemption>) -> Vec<Result<Redemption, RepoError>> {
        let arguments = Json::Array(items.iter().map(|i| i.arguments.clone()).collect());
        let call = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT use_event_id, refused_state, refused_detail, refused_message \
                 FROM loyalty_redeem_batch($1::jsonb)",
                [arguments.to_string().into()],
            ))
            .await;
        let rows = match call {
            Ok(rows) if rows.len() == items.len() => rows,
            Ok(rows) => {
                let err = RepoError::Other(format!(
                    "loyalty_redeem_batch answered {} of {} redemptions",
                    rows.len(),
                    items.len()
                ));
                return items.iter().map(|_| Err(err.clone())).collect();
            }
            Err(err) => {
                let err = classify(err);
                return items.iter().map(|_| Err(err.clone())).collect();
            }
        };
        items
            .into_iter()
            .zip(rows)
            .map(|(item, row)| {
                let column = |name: &str| row.try_get::<Option<String>>("", name).map_err(classify);
                if let Some(code) = column("refused_state")? {
                    let message = column("refused_message")?.unwrap_or_default();
                    return Err(item.refused(&code, column("refused_detail")?.as_deref(), message));
                }
                let use_event_id = row.try_get::<i64>("", "use_event_id").map_err(classify)?;
                Ok(item.written(use_event_id))
            })
            .collect()
    }
}

impl BatchWriter<PreparedRedemption, Redemption> for RedemptionWriter {
    async fn write(
        &self,
        mut items: Vec<PreparedRedemption>,
    ) -> Vec<Result<Redemption, RepoError>> {
        if items.len() == 1
            && let Some(item) = items.pop()
        {
            return vec![self.one(item).await];
        }
        self.batch(items).await
    }
}

/// The SQLSTATE and detail of an error PostgreSQL raised, if `err` is one.
fn database_error(err: &DbErr) -> Option<(String, Option<String>)> {
    use sea_orm::sqlx::postgres::PgDatabaseError;
    let (DbErr::Query(RuntimeErr::SqlxError(sqlx)) | DbErr::Exec(RuntimeErr::SqlxError(sqlx))) =
        err
    else {
        return None;
    };
    match sqlx.as_ref() {
        sea_orm::sqlx::Error::Database(db) => db
            .try_downcast_ref::<PgDatabaseError>()
            .map(|pg| (pg.code().to_owned(), pg.detail().map(str::to_owned))),
        _ => None,
    }
}

/// A row as the JSON text a statement's `$n::jsonb` parameter takes.
fn row_param<A: ActiveModelTrait>(row: &A) -> Result<sea_orm::Value, RepoError> {
    Ok(Json::Object(json_row(row)?).to_string().into())
}

/// Rows as the JSON array text a statement's `jsonb_array_elements($n::jsonb)` takes.
fn rows_param<A: ActiveModelTrait>(rows: &[A]) -> Result<sea_orm::Value, RepoError> {
    let objects = rows
        .iter()
        .map(|row| json_row(row).map(Json::Object))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json::Array(objects).to_string().into())
}

/// A row as a JSON object keyed by column name; columns not set are left out.
fn json_row<A: ActiveModelTrait>(row: &A) -> Result<Map<String, Json>, RepoError> {
    let mut object = Map::new();
    for column in <A::Entity as EntityTrait>::Column::iter() {
        if let Some(value) = row.get(column).into_value() {
            object.insert(column.to_string(), json_value(value)?);
        }
    }
    Ok(object)
}

/// An instant as PostgreSQL keeps it (microseconds, truncated as bound parameters are).
fn json_instant(instant: DateTime<Utc>) -> Json {
    Json::String(instant.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// A column value as `jsonb_populate_record` reads it back exactly: integers as JSON integers,
/// days as `YYYY-MM-DD`, instants as RFC 3339 at microseconds (what PostgreSQL keeps, truncated
/// as the bound parameters of the transaction path are).
fn json_value(value: sea_orm::Value) -> Result<Json, RepoError> {
    use sea_orm::Value as V;
    Ok(match value {
        V::Bool(v) => v.map_or(Json::Null, Json::Bool),
        V::Int(v) => v.map_or(Json::Null, Json::from),
        V::BigInt(v) => v.map_or(Json::Null, Json::from),
        V::String(v) => v.map_or(Json::Null, Json::String),
        V::ChronoDate(v) => v.map_or(Json::Null, |d| {
            Json::String(d.format("%Y-%m-%d").to_string())
        }),
        V::ChronoDateTimeWithTimeZone(v) => v.map_or(Json::Null, |t| json_instant(t.to_utc())),
        other => {
            return Err(RepoError::Other(format!(
                "a column of type {other:?} cannot be written in one statement"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};

    #[test]
    fn values_become_json_that_postgresql_reads_back_exactly() {
        use sea_orm::Value as V;
        let instant = Utc
            .with_ymd_and_hms(2026, 12, 1, 21, 35, 20)
            .single()
            .expect("instant")
            + chrono::Duration::nanoseconds(123_456_789);
        let cases = [
            (V::BigInt(Some(9_007_199_254_740_993)), "9007199254740993"),
            (V::BigInt(None), "null"),
            (V::Int(Some(-3)), "-3"),
            (V::Bool(Some(true)), "true"),
            (V::String(Some("a\"b".into())), r#""a\"b""#),
            (
                V::ChronoDate(NaiveDate::from_ymd_opt(2026, 3, 1)),
                r#""2026-03-01""#,
            ),
            (
                V::ChronoDateTimeWithTimeZone(Some(instant.fixed_offset())),
                r#""2026-12-01T21:35:20.123456Z""#,
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(json_value(value).expect("converts").to_string(), expected);
        }
        assert!(json_value(V::Double(Some(1.5))).is_err());
    }
}
