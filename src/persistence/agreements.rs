//! SeaORM implementation of [`AgreementRepository`], and the recomputation of a client's
//! eligibility intervals that every change of consents, versions, users or clients runs inside
//! its own transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::clock::{Clock, SystemClock};
use sea_orm::sea_query::{Expr, ExprTrait, Order, Query, SelectStatement};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QueryResult, QuerySelect,
};
use sha2::{Digest, Sha256};

use super::AgreementRepository;
use super::entities::{agreement_versions, client_eligibility, clients, consent_events, users};
use super::error::{RepoError, classify};
use super::idempotency::{insert_record, set_result_ref};
use crate::domain::consent::{
    AgreementVersion, ClientFacts, ConsentAction, ConsentEvent, ConsentOutcome, EligibilityProbe,
    UserFacts, client_eligibility as compute_eligibility, held_before,
};
use crate::domain::idempotency::IdempotencyRecord;
use crate::domain::intervals::Interval;
use crate::domain::tenant::TenantId;

#[derive(Debug, Clone)]
pub struct SeaAgreementRepository {
    db: DatabaseConnection,
}

impl SeaAgreementRepository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

#[async_trait]
impl AgreementRepository for SeaAgreementRepository {
    async fn record_consents(
        &self,
        tenant: &TenantId,
        events: &[ConsentEvent],
        request: &IdempotencyRecord,
    ) -> Result<Vec<ConsentOutcome>, RepoError> {
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        // Written first, so that on SQLite the write lock serializes the rest of the transaction;
        // the outcomes are filled in at the end.
        insert_record(&txn, tenant, request).await?;
        let outcomes = record_consents_in(&txn, tenant, events, ChangedEvent::Refuse).await?;
        let codes: String = outcomes.iter().map(|o| o.code()).collect();
        set_result_ref(&txn, tenant, &request.request_id, &codes).await?;
        txn.commit().await.map_err(classify)?;
        Ok(outcomes)
    }

    async fn anonymize_user(
        &self,
        tenant: &TenantId,
        user_id: &str,
        pseudonym: &str,
        request: &IdempotencyRecord,
    ) -> Result<bool, RepoError> {
        use super::entities::{ledger_events, redemptions, reservations, users};
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        insert_record(&txn, tenant, request).await?;
        let renamed = users::Entity::update_many()
            .col_expr(users::Column::UserId, Expr::value(pseudonym))
            .col_expr(users::Column::Anonymized, Expr::value(true))
            .filter(users::Column::TenantId.eq(tenant.as_str()))
            .filter(users::Column::UserId.eq(user_id))
            .exec(&txn)
            .await
            .map_err(classify)?;
        if renamed.rows_affected != 1 {
            return Ok(false);
        }
        consent_events::Entity::update_many()
            .col_expr(consent_events::Column::UserId, Expr::value(pseudonym))
            .filter(consent_events::Column::TenantId.eq(tenant.as_str()))
            .filter(consent_events::Column::UserId.eq(user_id))
            .exec(&txn)
            .await
            .map_err(classify)?;
        // Attribution only: no points, no balance and no running total change.
        ledger_events::Entity::update_many()
            .col_expr(ledger_events::Column::ActorUserId, Expr::value(pseudonym))
            .filter(ledger_events::Column::TenantId.eq(tenant.as_str()))
            .filter(ledger_events::Column::ActorUserId.eq(user_id))
            .exec(&txn)
            .await
            .map_err(classify)?;
        redemptions::Entity::update_many()
            .col_expr(redemptions::Column::UserId, Expr::value(pseudonym))
            .filter(redemptions::Column::TenantId.eq(tenant.as_str()))
            .filter(redemptions::Column::UserId.eq(user_id))
            .exec(&txn)
            .await
            .map_err(classify)?;
        reservations::Entity::update_many()
            .col_expr(reservations::Column::UserId, Expr::value(pseudonym))
            .filter(reservations::Column::TenantId.eq(tenant.as_str()))
            .filter(reservations::Column::UserId.eq(user_id))
            .exec(&txn)
            .await
            .map_err(classify)?;
        set_result_ref(&txn, tenant, &request.request_id, pseudonym).await?;
        txn.commit().await.map_err(classify)?;
        Ok(true)
    }

    async fn publish_version(
        &self,
        tenant: &TenantId,
        version: &AgreementVersion,
        request: &IdempotencyRecord,
    ) -> Result<(), RepoError> {
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        insert_record(&txn, tenant, request).await?;
        publish_version_in(&txn, tenant, version).await?;
        txn.commit().await.map_err(classify)
    }

    async fn versions(
        &self,
        tenant: &TenantId,
        declaration_type: &str,
    ) -> Result<Vec<AgreementVersion>, RepoError> {
        load_versions(&self.db, tenant, declaration_type).await
    }

    async fn user_events(
        &self,
        tenant: &TenantId,
        user_id: &str,
        declaration_type: &str,
    ) -> Result<Vec<ConsentEvent>, RepoError> {
        Ok(user_history(&self.db, tenant, user_id, declaration_type)
            .await?
            .1)
    }

    async fn user_history_page(
        &self,
        tenant: &TenantId,
        user_id: &str,
        before: Option<(DateTime<Utc>, String)>,
        limit: u64,
    ) -> Result<Vec<ConsentEvent>, RepoError> {
        let mut query = consent_events::Entity::find()
            .filter(consent_events::Column::TenantId.eq(tenant.as_str()))
            .filter(consent_events::Column::UserId.eq(user_id));
        if let Some((at, event_id)) = before {
            let at = at.fixed_offset();
            query = query.filter(
                sea_orm::Condition::any()
                    .add(consent_events::Column::OccurredAt.lt(at))
                    .add(
                        sea_orm::Condition::all()
                            .add(consent_events::Column::OccurredAt.eq(at))
                            .add(consent_events::Column::EventId.lt(event_id)),
                    ),
            );
        }
        let rows = query
            .order_by_desc(consent_events::Column::OccurredAt)
            .order_by_desc(consent_events::Column::EventId)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(classify)?;
        rows.into_iter().map(event_from_row).collect()
    }

    async fn eligibility(
        &self,
        tenant: &TenantId,
        declaration_type: &str,
        client_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Interval>, RepoError> {
        let rows = client_eligibility::Entity::find()
            .filter(client_eligibility::Column::TenantId.eq(tenant.as_str()))
            .filter(client_eligibility::Column::DeclarationTypeId.eq(declaration_type))
            .filter(client_eligibility::Column::ClientId.eq(client_id))
            .filter(client_eligibility::Column::ValidFrom.lt(to.fixed_offset()))
            .filter(
                sea_orm::Condition::any()
                    .add(client_eligibility::Column::ValidUntil.is_null())
                    .add(client_eligibility::Column::ValidUntil.gte(from.fixed_offset())),
            )
            .order_by_asc(client_eligibility::Column::ValidFrom)
            .all(&self.db)
            .await
            .map_err(classify)?;
        Ok(rows
            .into_iter()
            .map(|r| Interval::new(r.valid_from.to_utc(), r.valid_until.map(|t| t.to_utc())))
            .collect())
    }

    async fn holds_until(
        &self,
        tenant: &TenantId,
        client_id: &str,
        probe: &EligibilityProbe,
    ) -> Result<bool, RepoError> {
        let row = self
            .db
            .query_one(&holding_at(tenant, client_id, probe))
            .await
            .map_err(classify)?;
        row.map_or(Ok(false), |row| held(&row, 0))
    }
}

/// Whether the client's eligibility reaches the probe's instant
/// ([`AgreementRepository::holds_until`]): one row of one column, 1 or 0, and no row when no
/// interval starts before the instant; [`held`] reads it. Also read as a subquery of an earn's
/// client read (`RulesRepository::priced_client`), so that an earn asks once.
pub(super) fn holding_at(
    tenant: &TenantId,
    client_id: &str,
    probe: &EligibilityProbe,
) -> SelectStatement {
    let column = |c: client_eligibility::Column| Expr::col((client_eligibility::Entity, c));
    let at = probe.at.fixed_offset();
    let reaches = column(client_eligibility::Column::ValidUntil)
        .is_null()
        .or(column(client_eligibility::Column::ValidUntil).gte(at));
    // Intervals are disjoint: only the last one starting before `at` can reach it.
    Query::select()
        .expr(Expr::case(reaches, Expr::cust("1")).finally(Expr::cust("0")))
        .from(client_eligibility::Entity)
        .and_where(column(client_eligibility::Column::TenantId).eq(tenant.as_str()))
        .and_where(
            column(client_eligibility::Column::DeclarationTypeId)
                .eq(probe.declaration_type_id.as_str()),
        )
        .and_where(column(client_eligibility::Column::ClientId).eq(client_id))
        .and_where(column(client_eligibility::Column::ValidFrom).lt(at))
        .order_by(
            (
                client_eligibility::Entity,
                client_eligibility::Column::ValidFrom,
            ),
            Order::Desc,
        )
        .limit(1)
        .to_owned()
}

/// What [`holding_at`] answered, read from column `index` of `row`: no interval, or none that
/// reaches the instant, is not held.
pub(super) fn held(row: &QueryResult, index: usize) -> Result<bool, RepoError> {
    let value: Option<i32> = row.try_get_by_index(index).map_err(classify)?;
    Ok(value == Some(1))
}

fn to_i32(value: u32) -> Result<i32, RepoError> {
    i32::try_from(value).map_err(|_| RepoError::Other(format!("{value} does not fit a column")))
}

fn event_row(tenant: &TenantId, e: &ConsentEvent) -> consent_events::ActiveModel {
    consent_events::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        event_id: Set(e.event_id.clone()),
        user_id: Set(e.user_id.clone()),
        client_id: Set(e.client_id.clone()),
        action: Set(e.action.as_str().to_owned()),
        occurred_at: Set(e.occurred_at.fixed_offset()),
        declaration_type_id: Set(e.declaration_type_id.clone()),
        agreement_version: Set(i32::try_from(e.agreement_version).unwrap_or(i32::MAX)),
        source: Set(e.source.clone()),
        recorded_at: Set(e.recorded_at.fixed_offset()),
    }
}

fn event_from_row(r: consent_events::Model) -> Result<ConsentEvent, RepoError> {
    Ok(ConsentEvent {
        action: ConsentAction::parse(&r.action)
            .ok_or_else(|| RepoError::Corrupt(format!("consent_events.action {:?}", r.action)))?,
        agreement_version: u32::try_from(r.agreement_version).map_err(|_| {
            RepoError::Corrupt(format!(
                "consent_events.agreement_version {}",
                r.agreement_version
            ))
        })?,
        event_id: r.event_id,
        user_id: r.user_id,
        client_id: r.client_id,
        occurred_at: r.occurred_at.to_utc(),
        declaration_type_id: r.declaration_type_id,
        source: r.source,
        recorded_at: r.recorded_at.to_utc(),
    })
}

/// The stored events among `events`' ids, by id.
async fn find_events(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    events: &[ConsentEvent],
) -> Result<HashMap<String, ConsentEvent>, RepoError> {
    let mut found = HashMap::new();
    for chunk in events.chunks(super::IN_LIST_CHUNK) {
        let rows = consent_events::Entity::find()
            .filter(consent_events::Column::TenantId.eq(tenant.as_str()))
            .filter(
                consent_events::Column::EventId.is_in(chunk.iter().map(|e| e.event_id.as_str())),
            )
            .all(conn)
            .await
            .map_err(classify)?;
        for row in rows {
            let event = event_from_row(row)?;
            found.insert(event.event_id.clone(), event);
        }
    }
    Ok(found)
}

/// Events inserted per statement: 5,000 bound values (10 columns a row), well within SQLite's and
/// PostgreSQL's limits.
const EVENTS_PER_INSERT: usize = 500;

async fn load_versions(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    declaration_type: &str,
) -> Result<Vec<AgreementVersion>, RepoError> {
    let rows = agreement_versions::Entity::find()
        .filter(agreement_versions::Column::TenantId.eq(tenant.as_str()))
        .filter(agreement_versions::Column::DeclarationTypeId.eq(declaration_type))
        .order_by_asc(agreement_versions::Column::Version)
        .all(conn)
        .await
        .map_err(classify)?;
    rows.into_iter()
        .map(|r| {
            Ok(AgreementVersion {
                version: u32::try_from(r.version).map_err(|_| {
                    RepoError::Corrupt(format!("agreement_versions.version {}", r.version))
                })?,
                declaration_type_id: r.declaration_type_id,
                published_at: r.published_at.to_utc(),
                title: r.title,
                content_url: r.content_url,
            })
        })
        .collect()
}

fn user_facts(row: &users::Model) -> UserFacts {
    crate::domain::directory::UserRecord {
        user_id: row.user_id.clone(),
        client_id: row.client_id.clone(),
        active: row.active,
        deactivated_at: row.deactivated_at.map(|t| t.to_utc()),
        updated_at: row.updated_at.to_utc(),
    }
    .facts()
}

/// A user's facts and events of one declaration type.
async fn user_history(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    user_id: &str,
    declaration_type: &str,
) -> Result<(UserFacts, Vec<ConsentEvent>), RepoError> {
    let user = users::Entity::find_by_id((tenant.as_str().to_owned(), user_id.to_owned()))
        .one(conn)
        .await
        .map_err(classify)?
        .ok_or_else(|| RepoError::Corrupt(format!("consent events of unknown user {user_id}")))?;
    let rows = consent_events::Entity::find()
        .filter(consent_events::Column::TenantId.eq(tenant.as_str()))
        .filter(consent_events::Column::UserId.eq(user_id))
        .filter(consent_events::Column::DeclarationTypeId.eq(declaration_type))
        .all(conn)
        .await
        .map_err(classify)?;
    let events = rows
        .into_iter()
        .map(event_from_row)
        .collect::<Result<_, _>>()?;
    Ok((user_facts(&user), events))
}

/// Serializes changes to one client's eligibility. PostgreSQL: a transaction-scoped advisory
/// lock. SQLite serializes writers already (every transaction here writes first).
pub(crate) async fn lock_client(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    client_id: &str,
) -> Result<(), RepoError> {
    lock_clients(conn, tenant, &[client_id]).await
}

/// [`lock_client`] for many clients, taken in the order given, one statement for each
/// `IN_LIST_CHUNK` of them: the callers give them in the order of their ids, so that two
/// transactions locking some of the same clients cannot wait for each other.
async fn lock_clients(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    client_ids: &[&str],
) -> Result<(), RepoError> {
    if conn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    for chunk in client_ids.chunks(super::IN_LIST_CHUNK) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|client_id| {
                let digest =
                    Sha256::digest(format!("eligibility\0{tenant}\0{client_id}").as_bytes());
                let mut key = [0_u8; 8];
                key.copy_from_slice(&digest[..8]);
                i64::from_be_bytes(key).to_string()
            })
            .collect();
        // The keys are numbers this function made, written into the text; sent unprepared, so
        // that each count of clients is not a statement of its own in the connection's cache.
        // `unnest` gives the keys, and so takes the locks, in the array's order.
        let sql = format!(
            "SELECT pg_advisory_xact_lock(k) FROM unnest(ARRAY[{}]::bigint[]) AS k",
            keys.join(",")
        );
        conn.execute_unprepared(&sql).await.map_err(classify)?;
    }
    Ok(())
}

/// Rewrites a client's eligibility intervals for one declaration type from its users, their
/// events and the published versions.
pub(crate) async fn recompute_eligibility(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    client_id: &str,
    declaration_type: &str,
) -> Result<(), RepoError> {
    let versions = load_versions(conn, tenant, declaration_type).await?;
    recompute_clients(conn, tenant, &[client_id], declaration_type, &versions).await
}

/// [`recompute_eligibility`] for many clients of one declaration type, whose published versions
/// the caller has read: their rows, their users, the users' events and the rewrite of their
/// intervals are a few statements for each `IN_LIST_CHUNK` clients, not a few for each client.
/// The caller holds the clients' locks.
async fn recompute_clients(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    client_ids: &[&str],
    declaration_type: &str,
    versions: &[AgreementVersion],
) -> Result<(), RepoError> {
    for chunk in client_ids.chunks(super::IN_LIST_CHUNK) {
        let with_account: HashMap<String, bool> = clients::Entity::find()
            .filter(clients::Column::TenantId.eq(tenant.as_str()))
            .filter(clients::Column::ClientId.is_in(chunk.iter().copied()))
            .all(conn)
            .await
            .map_err(classify)?
            .into_iter()
            .map(|c| (c.client_id, c.has_account))
            .collect();
        let members = users::Entity::find()
            .filter(users::Column::TenantId.eq(tenant.as_str()))
            .filter(users::Column::ClientId.is_in(chunk.iter().copied()))
            .all(conn)
            .await
            .map_err(classify)?;
        let mut events_of: HashMap<String, Vec<ConsentEvent>> = HashMap::new();
        for users_chunk in members.chunks(super::IN_LIST_CHUNK) {
            let rows = consent_events::Entity::find()
                .filter(consent_events::Column::TenantId.eq(tenant.as_str()))
                .filter(consent_events::Column::DeclarationTypeId.eq(declaration_type))
                .filter(
                    consent_events::Column::UserId
                        .is_in(users_chunk.iter().map(|u| u.user_id.as_str())),
                )
                .all(conn)
                .await
                .map_err(classify)?;
            for row in rows {
                let event = event_from_row(row)?;
                events_of
                    .entry(event.user_id.clone())
                    .or_default()
                    .push(event);
            }
        }
        let mut histories: HashMap<&str, Vec<(UserFacts, Vec<ConsentEvent>)>> = HashMap::new();
        for member in &members {
            let events = events_of.remove(&member.user_id).unwrap_or_default();
            histories
                .entry(member.client_id.as_str())
                .or_default()
                .push((user_facts(member), events));
        }
        let mut rows = Vec::new();
        for client_id in chunk {
            // A client not synchronized yet cannot be eligible; saving it recomputes.
            let facts = ClientFacts {
                client_id: (*client_id).to_owned(),
                has_account: with_account.get(*client_id).copied().unwrap_or(false),
            };
            let users = histories.get(client_id).map_or(&[][..], Vec::as_slice);
            for interval in compute_eligibility(&facts, users, versions) {
                rows.push(client_eligibility::ActiveModel {
                    tenant_id: Set(tenant.as_str().to_owned()),
                    declaration_type_id: Set(declaration_type.to_owned()),
                    client_id: Set((*client_id).to_owned()),
                    valid_from: Set(interval.start.fixed_offset()),
                    valid_until: Set(interval.end.map(|t| t.fixed_offset())),
                });
            }
        }
        client_eligibility::Entity::delete_many()
            .filter(client_eligibility::Column::TenantId.eq(tenant.as_str()))
            .filter(client_eligibility::Column::DeclarationTypeId.eq(declaration_type))
            .filter(client_eligibility::Column::ClientId.is_in(chunk.iter().copied()))
            .exec(conn)
            .await
            .map_err(classify)?;
        // 5 values a row: 5,000 a statement.
        for rows_chunk in rows.chunks(super::IN_LIST_CHUNK) {
            client_eligibility::Entity::insert_many(rows_chunk.to_vec())
                .exec(conn)
                .await
                .map_err(classify)?;
        }
    }
    Ok(())
}

/// The declaration types with consents of a client's users, for recomputing all of them.
pub(crate) async fn declaration_types_of(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    client_id: &str,
) -> Result<Vec<String>, RepoError> {
    consent_events::Entity::find()
        .select_only()
        .column(consent_events::Column::DeclarationTypeId)
        .distinct()
        .filter(consent_events::Column::TenantId.eq(tenant.as_str()))
        .filter(consent_events::Column::ClientId.eq(client_id))
        .into_tuple()
        .all(conn)
        .await
        .map_err(classify)
}

/// What to do with an event whose id was recorded before with other content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangedEvent {
    /// Refuse the whole call with `Conflict`: a caller of ours sent it and can be told.
    Refuse,
    /// Keep the first content, say so in the log, and go on with the other events: ONe's feed
    /// sent it, and a feed cannot be answered.
    KeepFirst,
}

/// Records consent events inside the caller's transaction and recomputes, once each, the
/// eligibility of the clients they touch. An event id recorded before with the same content is a
/// `Duplicate`; with other content, as `changed` says (kept first, it is a `Duplicate` too).
pub(crate) async fn record_consents_in(
    conn: &sea_orm::DatabaseTransaction,
    tenant: &TenantId,
    events: &[ConsentEvent],
    changed: ChangedEvent,
) -> Result<Vec<ConsentOutcome>, RepoError> {
    let mut outcomes = Vec::with_capacity(events.len());
    let mut touched = BTreeSet::new();
    // What is stored, and then what this call records: an id twice in `events` is a duplicate
    // (or a change) of its first.
    let mut known = find_events(conn, tenant, events).await?;
    let mut rows = Vec::new();
    for event in events {
        if let Some(stored) = known.get(&event.event_id) {
            if !stored.same_as(event) {
                let why = format!(
                    "consent event {} was recorded with other content",
                    event.event_id
                );
                if changed == ChangedEvent::Refuse {
                    return Err(RepoError::Conflict(why));
                }
                tracing::warn!(%tenant, %why, "consent event ignored");
            }
            outcomes.push(ConsentOutcome::Duplicate);
            continue;
        }
        rows.push(event_row(tenant, event));
        known.insert(event.event_id.clone(), event.clone());
        touched.insert((event.client_id.clone(), event.declaration_type_id.clone()));
        outcomes.push(ConsentOutcome::Recorded);
    }
    for chunk in rows.chunks(EVENTS_PER_INSERT) {
        consent_events::Entity::insert_many(chunk.to_vec())
            .exec(conn)
            .await
            .map_err(classify)?;
    }
    // Clients locked in the order of their ids, as every transaction that locks several does;
    // then each declaration type's clients recomputed together.
    let mut locked: Vec<&str> = touched
        .iter()
        .map(|(client_id, _)| client_id.as_str())
        .collect();
    locked.dedup();
    lock_clients(conn, tenant, &locked).await?;
    let mut clients_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (client_id, declaration_type) in &touched {
        clients_of
            .entry(declaration_type.as_str())
            .or_default()
            .push(client_id.as_str());
    }
    for (declaration_type, client_ids) in &clients_of {
        let versions = load_versions(conn, tenant, declaration_type).await?;
        recompute_clients(conn, tenant, client_ids, declaration_type, &versions).await?;
    }
    for (event, outcome) in events.iter().zip(outcomes.iter_mut()) {
        if *outcome == ConsentOutcome::Recorded && event.action == ConsentAction::Withdraw {
            let (user, history) =
                user_history(conn, tenant, &event.user_id, &event.declaration_type_id).await?;
            if !held_before(&user, &history, event.occurred_at) {
                *outcome = ConsentOutcome::NoEffect;
            }
        }
    }
    Ok(outcomes)
}

/// Stores an agreement version inside the caller's transaction and recomputes the eligibility
/// of every client with consents of its type. `Conflict`: the version exists.
pub(crate) async fn publish_version_in(
    conn: &sea_orm::DatabaseTransaction,
    tenant: &TenantId,
    version: &AgreementVersion,
) -> Result<(), RepoError> {
    let row = agreement_versions::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        declaration_type_id: Set(version.declaration_type_id.clone()),
        version: Set(to_i32(version.version)?),
        published_at: Set(version.published_at.fixed_offset()),
        title: Set(version.title.clone()),
        content_url: Set(version.content_url.clone()),
        recorded_at: Set(SystemClock.now().fixed_offset()),
    };
    agreement_versions::Entity::insert(row)
        .exec(conn)
        .await
        .map_err(classify)?;
    let clients: Vec<String> = consent_events::Entity::find()
        .select_only()
        .column(consent_events::Column::ClientId)
        .distinct()
        .filter(consent_events::Column::TenantId.eq(tenant.as_str()))
        .filter(consent_events::Column::DeclarationTypeId.eq(version.declaration_type_id.as_str()))
        .order_by_asc(consent_events::Column::ClientId)
        .into_tuple()
        .all(conn)
        .await
        .map_err(classify)?;
    let client_ids: Vec<&str> = clients.iter().map(String::as_str).collect();
    lock_clients(conn, tenant, &client_ids).await?;
    let versions = load_versions(conn, tenant, &version.declaration_type_id).await?;
    recompute_clients(
        conn,
        tenant,
        &client_ids,
        &version.declaration_type_id,
        &versions,
    )
    .await
}
