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
//! The rows are the ones the transaction path builds (`document_row` and `event_row`, each with
//! its lines, `lot_row`, the redemption's `to_row`, `outbox_row`, `record_row`),
//! sent as JSON objects keyed by column and turned back into rows of the table's own type by
//! `jsonb_populate_record`, so no column list is written twice. Only what the database decides
//! itself is added there: the ids it gives and the running balance.

use chrono::{DateTime, SecondsFormat, Utc};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, IdenStatic,
    Iterable, QueryResult, Statement,
};
use serde_json::Value as Json;

use super::documents::document_row;
use super::error::{RepoError, classify, classify_code};
use super::event_lines::stored as stored_lines;
use super::group_commit::BatchWriter;
use super::idempotency::record_row;
use super::ledger::{entering_locked, event_row, lot_row, spend_source};
use super::redemptions::{
    limit_reached, live_statuses, out_of_stock, outbox_row, stored_at, to_row,
};
use super::{EarnBasis, RedeemPlan};
use crate::domain::documents::DocumentRecord;
use crate::domain::engine::LineCalculation;
use crate::domain::idempotency::IdempotencyRecord;
use crate::domain::ledger::{EventType, NewLedgerEvent};
use crate::domain::points::to_minor_units;
use crate::domain::redemption::Redemption;
use crate::domain::tenant::TenantId;

/// Whether an event is a plain earn, which [`EarnWriter`] (and on SQLite
/// `sqlite_script::PreparedScriptEarn`) can write: it takes from no lot and spends nothing, so the
/// balance moves by its points alone.
pub fn is_plain_earn(event: &NewLedgerEvent) -> bool {
    event.event_type == EventType::Earn
        && event.points.is_sign_positive()
        && event.related_event_id.is_none()
        && event.reservation_id.is_none()
        && event.redemption_id.is_none()
}

/// A decided document with its earn, ready for `loyalty_earn_batch` (migration
/// `m20261202_000011_earn_function`): its arguments as one JSON object.
#[derive(Debug)]
pub struct PreparedEarn {
    arguments: String,
}

impl PreparedEarn {
    /// `stored`: the record as it stands once decided, with its earn `event` and `lines`. The
    /// event's id and the running balance are the function's; the zeros are replaced there.
    /// With a `basis`, the function checks it first (migration `m20261206_000017_earn_basis`).
    ///
    /// # Errors
    /// Points that do not fit the storage scale, or a row that cannot be encoded.
    pub fn new(
        tenant: &TenantId,
        stored: &DocumentRecord,
        event: &NewLedgerEvent,
        lines: &[LineCalculation],
        basis: Option<EarnBasis>,
        now: DateTime<Utc>,
    ) -> Result<Self, RepoError> {
        let points = to_minor_units(event.points)?;
        let into_locked = entering_locked(event, points);
        let lots: Vec<_> = event
            .lot
            .filter(|_| points > 0)
            .map(|terms| lot_row(tenant, &event.client_id, 0, points, terms, now))
            .into_iter()
            .collect();
        let mut arguments = JsonObject::new();
        arguments.value("tenant", tenant.as_str())?;
        arguments.value("client", &event.client_id)?;
        arguments.value("document", &stored.document.document_id)?;
        arguments.value("total", points)?;
        arguments.value("available", points - into_locked)?;
        arguments.value("locked", into_locked)?;
        arguments.value("now", json_instant(now))?;
        arguments.row(
            "event",
            &event_row(tenant, event, stored_lines(lines)?, points, 0, now),
        )?;
        arguments.row("document_row", &document_row(tenant, stored)?)?;
        arguments.rows("lots", &lots)?;
        if let Some(basis) = basis {
            arguments.value(
                "basis",
                serde_json::json!({
                    "client": basis.client_revision,
                    "pricing": basis.pricing_revision,
                }),
            )?;
        }
        Ok(Self {
            arguments: arguments.finish(),
        })
    }
}

/// Stores decided documents with their earns in one round trip that commits on its own: one
/// call of `loyalty_earn_batch` for a lone earn or for those queued together. Earns written
/// together each go in a subtransaction of their own; a lone earn goes without one, and what
/// fails it fails the call with the same error (migration `m20261205_000014_earn_lone_call`).
/// Each answers `Some(event id)` (stored now) or `None` (the document was stored before and
/// nothing was written); a concurrent first delivery of the same document is `Conflict`.
#[derive(Debug)]
pub struct EarnWriter {
    db: DatabaseConnection,
}

impl EarnWriter {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

impl BatchItem for PreparedEarn {
    type Written = Option<i64>;
    const FUNCTION: &'static str = "loyalty_earn_batch";

    fn arguments(&self) -> &str {
        &self.arguments
    }

    fn outcome(self, row: &QueryResult) -> Result<Option<i64>, RepoError> {
        if let Some(failed) = Failure::of(row)? {
            return Err(classify_code(Some(&failed.state), failed.message));
        }
        row.try_get::<Option<i64>>("", "event_id").map_err(classify)
    }
}

impl BatchWriter<PreparedEarn, Option<i64>> for EarnWriter {
    /// Nothing to wait for: PostgreSQL's writers wait for each other's locks in the database.
    type Turn = ();

    async fn turn(&self) -> Result<(), RepoError> {
        Ok(())
    }

    async fn write(&self, items: Vec<PreparedEarn>, (): ()) -> Vec<Result<Option<i64>, RepoError>> {
        write_batch(&self.db, items).await
    }
}

/// An item of a batch function: the arguments it is given and what its row says.
trait BatchItem: Sized + Send {
    type Written: Send;
    /// The function, which takes the items' arguments as one JSON array.
    const FUNCTION: &'static str;
    /// The item's arguments: one JSON object, as text.
    fn arguments(&self) -> &str;
    /// What the item's row says: written, or what failed it.
    fn outcome(self, row: &QueryResult) -> Result<Self::Written, RepoError>;
}

/// Writes `items` in one call of their function. A call that fails as a whole (one item's
/// fault the function did not catch; nothing was written) is made again for each item alone, so
/// that only that item fails; a database that cannot be reached fails them all.
async fn write_batch<T: BatchItem>(
    db: &DatabaseConnection,
    items: Vec<T>,
) -> Vec<Result<T::Written, RepoError>> {
    let count = items.len();
    let arguments: Vec<&str> = items.iter().map(BatchItem::arguments).collect();
    match call_batch(db, T::FUNCTION, &arguments).await {
        Ok(rows) => items
            .into_iter()
            .zip(rows)
            .map(|(item, row)| item.outcome(&row))
            .collect(),
        Err(err) if count > 1 && !matches!(err, RepoError::Unavailable(_)) => {
            let mut outcomes = Vec::with_capacity(count);
            for item in items {
                let alone = call_batch(db, T::FUNCTION, &[item.arguments()]).await;
                outcomes.push(alone.and_then(|rows| match rows.first() {
                    Some(row) => item.outcome(row),
                    None => Err(RepoError::Other(format!(
                        "{} answered nothing",
                        T::FUNCTION
                    ))),
                }));
            }
            outcomes
        }
        Err(err) => (0..count).map(|_| Err(err.clone())).collect(),
    }
}

/// Calls the batch function `function` with `arguments` as one JSON array. Its rows, one per
/// argument, in the arguments' order: each names its place in the column `item` (from 1), and
/// what failed it in `failed_state`, `failed_detail` and `failed_message`.
async fn call_batch(
    db: &DatabaseConnection,
    function: &str,
    arguments: &[&str],
) -> Result<Vec<QueryResult>, RepoError> {
    let count = arguments.len();
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!("SELECT * FROM {function}($1::jsonb) ORDER BY item"),
            [format!("[{}]", arguments.join(",")).into()],
        ))
        .await
        .map_err(classify)?;
    if rows.len() != count {
        return Err(RepoError::Other(format!(
            "{function} answered {} of {count} items",
            rows.len()
        )));
    }
    Ok(rows)
}

/// What failed one item of a batch, as the batch function caught it.
struct Failure {
    state: String,
    detail: Option<String>,
    message: String,
}

impl Failure {
    /// `None` when the item was written.
    fn of(row: &QueryResult) -> Result<Option<Self>, RepoError> {
        let column = |name: &str| row.try_get::<Option<String>>("", name).map_err(classify);
        let Some(state) = column("failed_state")? else {
            return Ok(None);
        };
        Ok(Some(Self {
            state,
            detail: column("failed_detail")?,
            message: column("failed_message")?.unwrap_or_default(),
        }))
    }
}

/// The refusals of the redemption's writes, by the SQLSTATE the function gives them (and the
/// code a SQLite script's refusal begins with).
pub(super) const NOT_ENOUGH_POINTS: &str = "LY001";
pub(super) const LIMIT_REACHED: &str = "LY002";
pub(super) const OUT_OF_STOCK: &str = "LY003";
/// What a write was planned from no longer holds.
pub(super) const STALE: &str = "LY004";

/// Whether a redemption is a plain one, which [`RedemptionWriter`] (and on SQLite
/// `sqlite_script::PreparedScriptRedemption`) can write: its Use event spends available points
/// from the oldest lots, with no reservation behind it and no lot named.
pub fn is_plain_redemption(plan: &RedeemPlan) -> bool {
    let event = &plan.use_event;
    event.event_type == EventType::Use
        && event.points.is_sign_negative()
        && event.related_event_id.is_none()
        && event.reservation_id.is_none()
        && event.lot.is_none()
}

/// A plain redemption as a write that checks it itself takes it (`loyalty_redeem_batch`, or on
/// SQLite `sqlite_script::PreparedScriptRedemption`): the redemption as stored, but for its Use
/// event's id, and what the write's refusals are told from.
#[derive(Debug)]
pub(super) struct PlannedRedemption {
    pub(super) stored: Redemption,
    per_client_limit: Option<u32>,
    pub(super) use_event: NewLedgerEvent,
    /// The Use event's points in minor units (negative).
    pub(super) points: i64,
}

impl PlannedRedemption {
    /// # Errors
    /// Points that do not fit the storage scale.
    pub(super) fn new(plan: &RedeemPlan, now: DateTime<Utc>) -> Result<Self, RepoError> {
        let event = &plan.use_event;
        Ok(Self {
            stored: stored_at(plan, now),
            per_client_limit: plan.per_client_limit,
            use_event: event.clone(),
            points: to_minor_units(event.points)?,
        })
    }

    /// The redemption as stored, with the id of the Use event the write gave.
    pub(super) fn written(self, use_event_id: i64) -> Redemption {
        Redemption {
            use_event_id: Some(use_event_id),
            ..self.stored
        }
    }

    /// What the write's refusal `code` (with its `detail` and `message`) means for this
    /// redemption: one of its refusals, or what the database said.
    pub(super) fn refused(&self, code: &str, detail: Option<&str>, message: String) -> RepoError {
        let coupon = &self.stored.coupon_id;
        match code {
            LIMIT_REACHED => limit_reached(coupon, self.per_client_limit.unwrap_or_default()),
            OUT_OF_STOCK => out_of_stock(coupon),
            NOT_ENOUGH_POINTS => detail
                .and_then(|d| d.parse::<i64>().ok())
                .and_then(|available| spend_source(&self.use_event, self.points, available).err())
                .unwrap_or(RepoError::Precondition(message)),
            _ => classify_code(Some(code), message),
        }
    }
}

/// A redemption ready for `loyalty_redeem_batch` (migrations `m20261202_000010_redeem_function`
/// and `m20261205_000013_redeem_function_statements`): its arguments as one JSON object, and what
/// its answer is made of.
#[derive(Debug)]
pub struct PreparedRedemption {
    arguments: String,
    planned: PlannedRedemption,
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
        let planned = PlannedRedemption::new(plan, now)?;
        let (event, points) = (&planned.use_event, planned.points);
        let mut arguments = JsonObject::new();
        arguments.value("tenant", tenant.as_str())?;
        arguments.value("client", &event.client_id)?;
        arguments.value("cost", -points)?;
        arguments.value("now", json_instant(now))?;
        arguments.row("record", &record_row(tenant, record))?;
        arguments.row("event", &event_row(tenant, event, None, points, 0, now))?;
        arguments.row("redemption", &to_row(tenant, &planned.stored)?)?;
        arguments.row("message", &outbox_row(tenant, plan, now)?)?;
        arguments.value("coupon", &planned.stored.coupon_id)?;
        arguments.value("stock", plan.stock)?;
        arguments.value("limit", plan.per_client_limit)?;
        arguments.value("live", live_statuses())?;
        arguments.value("revision", plan.coupon_revision)?;
        if plan.client_unread {
            arguments.value("client_unread", true)?;
            if let Some(user) = &plan.redemption.user_id {
                arguments.value("user", user)?;
            }
        }
        Ok(Self {
            arguments: arguments.finish(),
            planned,
        })
    }
}

/// Writes redemptions in one round trip that commits on its own: one call of
/// `loyalty_redeem_batch` for a lone redemption or for those queued together. Each writes the
/// request's record, the Use event, the lots it spends (oldest first, under the client's balance
/// lock), the balance, the redemption, its outbox message and the coupon's count, or nothing: a
/// refusal (points, the client's limit, the stock) is `Precondition`, a request id or code taken
/// is `Conflict`.
#[derive(Debug)]
pub struct RedemptionWriter {
    db: DatabaseConnection,
}

impl RedemptionWriter {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

impl BatchItem for PreparedRedemption {
    type Written = Redemption;
    const FUNCTION: &'static str = "loyalty_redeem_batch";

    fn arguments(&self) -> &str {
        &self.arguments
    }

    fn outcome(self, row: &QueryResult) -> Result<Redemption, RepoError> {
        if let Some(failed) = Failure::of(row)? {
            return Err(self.planned.refused(
                &failed.state,
                failed.detail.as_deref(),
                failed.message,
            ));
        }
        let use_event_id = row.try_get::<i64>("", "use_event_id").map_err(classify)?;
        Ok(self.planned.written(use_event_id))
    }
}

impl BatchWriter<PreparedRedemption, Redemption> for RedemptionWriter {
    /// Nothing to wait for: PostgreSQL's writers wait for each other's locks in the database.
    type Turn = ();

    async fn turn(&self) -> Result<(), RepoError> {
        Ok(())
    }

    async fn write(
        &self,
        items: Vec<PreparedRedemption>,
        (): (),
    ) -> Vec<Result<Redemption, RepoError>> {
        write_batch(&self.db, items).await
    }
}

/// A JSON object written as text field by field, without building a tree of values: the
/// arguments of the batch functions.
struct JsonObject {
    text: Vec<u8>,
}

impl JsonObject {
    fn new() -> Self {
        Self {
            text: Vec::with_capacity(2048),
        }
    }

    fn key(&mut self, name: &str) -> Result<(), RepoError> {
        self.text
            .push(if self.text.is_empty() { b'{' } else { b',' });
        serde_json::to_writer(&mut self.text, name).map_err(encoding)?;
        self.text.push(b':');
        Ok(())
    }

    fn value(&mut self, name: &str, value: impl serde::Serialize) -> Result<(), RepoError> {
        self.key(name)?;
        serde_json::to_writer(&mut self.text, &value).map_err(encoding)
    }

    /// A row as an object keyed by column name; columns not set are left out.
    fn row<A: ActiveModelTrait>(&mut self, name: &str, row: &A) -> Result<(), RepoError> {
        self.key(name)?;
        write_row(&mut self.text, row)
    }

    fn rows<A: ActiveModelTrait>(&mut self, name: &str, rows: &[A]) -> Result<(), RepoError> {
        self.key(name)?;
        self.text.push(b'[');
        for (n, row) in rows.iter().enumerate() {
            if n > 0 {
                self.text.push(b',');
            }
            write_row(&mut self.text, row)?;
        }
        self.text.push(b']');
        Ok(())
    }

    fn finish(mut self) -> String {
        if self.text.is_empty() {
            self.text.push(b'{');
        }
        self.text.push(b'}');
        // Only JSON written by serde_json and ASCII punctuation: valid UTF-8.
        String::from_utf8(self.text)
            .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
    }
}

/// A row as a JSON object keyed by column name; columns not set, and columns that are NULL, are
/// left out. `jsonb_populate_record` reads a missing key as NULL, and PostgreSQL parses every
/// byte it is sent (`jsonb_in`, a tenth of an earn's CPU there): without its nulls an earn's
/// argument is 23 % shorter (5.5 KB to 4.2 KB for 10 lines), measured 0.92× to 0.96× the CPU
/// per call (docs/PERFORMANCE.md).
fn write_row<A: ActiveModelTrait>(text: &mut Vec<u8>, row: &A) -> Result<(), RepoError> {
    let mut first = true;
    text.push(b'{');
    for column in <A::Entity as EntityTrait>::Column::iter() {
        let Some(value) = row.get(column).into_value() else {
            continue;
        };
        let value = json_value(value)?;
        if value.is_null() {
            continue;
        }
        if !first {
            text.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut *text, column.as_str()).map_err(encoding)?;
        text.push(b':');
        serde_json::to_writer(&mut *text, &value).map_err(encoding)?;
    }
    text.push(b'}');
    Ok(())
}

#[allow(clippy::needless_pass_by_value)] // by value so that `.map_err(encoding)` reads well
fn encoding(err: serde_json::Error) -> RepoError {
    RepoError::Other(format!("encoding a row: {err}"))
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

    #[test]
    fn a_row_is_sent_without_its_null_and_unset_columns() {
        use sea_orm::ActiveValue::{NotSet, Set};

        use crate::persistence::entities::earn_lots;
        let earned_at = Utc
            .with_ymd_and_hms(2026, 12, 5, 9, 0, 0)
            .single()
            .expect("instant");
        let lot = earn_lots::ActiveModel {
            tenant_id: Set("demo".into()),
            event_id: NotSet,
            client_id: Set("c-1".into()),
            points: Set(300),
            remaining: Set(300),
            locked: Set(false),
            unlocks_at: Set(None),
            expires_at: Set(Some(earned_at.fixed_offset())),
            earned_at: Set(earned_at.fixed_offset()),
        };
        let mut text = Vec::new();
        write_row(&mut text, &lot).expect("encodes");
        assert_eq!(
            String::from_utf8(text).expect("utf-8"),
            r#"{"tenant_id":"demo","client_id":"c-1","points":300,"remaining":300,"locked":false,"#
                .to_owned()
                + r#""expires_at":"2026-12-05T09:00:00.000000Z","earned_at":"2026-12-05T09:00:00.000000Z"}"#
        );
    }
}
