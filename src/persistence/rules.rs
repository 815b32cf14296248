//! SeaORM implementation of [`RulesRepository`]: effective-dated base points and segment rates,
//! and versioned multiplier rules with their targets and segments.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};

use super::agreements::{held, holding_at};
use super::entities::{
    base_points, client_segments, clients, multiplier_rule_segments, multiplier_rule_targets,
    multiplier_rules, pricing_revisions, segment_rates,
};
use super::error::{RepoError, classify};
use super::idempotency::insert_record;
use super::{ClientPricing, EarnBasis, RulesRepository};
use crate::domain::clock::{Clock, SystemClock};
use crate::domain::consent::EligibilityProbe;
use crate::domain::directory::ClientRecord;
use crate::domain::idempotency::IdempotencyRecord;
use crate::domain::points::{from_minor_units, to_minor_units};
use crate::domain::rules::{
    Channel, EffectiveDated, MultiplierRule, RuleStatus, RuleTarget, StoredRule, TargetKind,
};
use crate::domain::tenant::TenantId;

/// Rows per INSERT: far below SQLite's limit of 32,766 bound values.
const CHUNK: usize = 1_000;

#[derive(Debug, Clone)]
pub struct SeaRulesRepository {
    db: DatabaseConnection,
}

impl SeaRulesRepository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

fn to_i32(value: u32) -> Result<i32, RepoError> {
    i32::try_from(value).map_err(|_| RepoError::Other(format!("{value} does not fit a column")))
}

#[async_trait]
impl RulesRepository for SeaRulesRepository {
    async fn set_base_points(
        &self,
        tenant: &TenantId,
        effective_from: NaiveDate,
        entries: &[(String, Decimal)],
        request: &IdempotencyRecord,
    ) -> Result<(), RepoError> {
        let now = SystemClock.now().fixed_offset();
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        insert_record(&txn, tenant, request).await?;
        for chunk in entries.chunks(CHUNK) {
            let rows = chunk
                .iter()
                .map(|(product_id, points)| {
                    Ok(base_points::ActiveModel {
                        tenant_id: Set(tenant.as_str().to_owned()),
                        product_id: Set(product_id.clone()),
                        effective_from: Set(effective_from),
                        points: Set(to_minor_units(*points)?),
                        request_id: Set(request.request_id.clone()),
                        recorded_at: Set(now),
                    })
                })
                .collect::<Result<Vec<_>, RepoError>>()?;
            base_points::Entity::insert_many(rows)
                .on_conflict(
                    OnConflict::columns([
                        base_points::Column::TenantId,
                        base_points::Column::ProductId,
                        base_points::Column::EffectiveFrom,
                    ])
                    .update_columns([
                        base_points::Column::Points,
                        base_points::Column::RequestId,
                        base_points::Column::RecordedAt,
                    ])
                    .to_owned(),
                )
                .exec(&txn)
                .await
                .map_err(classify)?;
        }
        txn.commit().await.map_err(classify)
    }

    async fn base_points(
        &self,
        tenant: &TenantId,
        product_ids: &[String],
    ) -> Result<HashMap<String, EffectiveDated>, RepoError> {
        let mut rows = Vec::new();
        for chunk in product_ids.chunks(CHUNK) {
            rows.extend(
                base_points::Entity::find()
                    .filter(base_points::Column::TenantId.eq(tenant.as_str()))
                    .filter(base_points::Column::ProductId.is_in(chunk.iter().map(String::as_str)))
                    .all(&self.db)
                    .await
                    .map_err(classify)?,
            );
        }
        Ok(group_dated(
            rows.into_iter()
                .map(|r| (r.product_id, r.effective_from, r.points)),
        ))
    }

    async fn base_points_page(
        &self,
        tenant: &TenantId,
        after: Option<String>,
        products: u64,
    ) -> Result<Vec<(String, EffectiveDated)>, RepoError> {
        let mut query = base_points::Entity::find()
            .select_only()
            .column(base_points::Column::ProductId)
            .distinct()
            .filter(base_points::Column::TenantId.eq(tenant.as_str()));
        if let Some(after) = after {
            query = query.filter(base_points::Column::ProductId.gt(after));
        }
        let ids: Vec<String> = query
            .order_by_asc(base_points::Column::ProductId)
            .limit(products)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(classify)?;
        let mut books = self.base_points(tenant, &ids).await?;
        Ok(ids
            .into_iter()
            .map(|id| {
                let book = books.remove(&id).unwrap_or_default();
                (id, book)
            })
            .collect())
    }

    async fn save_rule(
        &self,
        tenant: &TenantId,
        rule: &StoredRule,
        request: &IdempotencyRecord,
    ) -> Result<(), RepoError> {
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        insert_record(&txn, tenant, request).await?;
        let r = &rule.rule;
        let key = |q: sea_orm::Select<multiplier_rules::Entity>| {
            q.filter(multiplier_rules::Column::TenantId.eq(tenant.as_str()))
                .filter(multiplier_rules::Column::RuleId.eq(r.rule_id.as_str()))
                .filter(multiplier_rules::Column::Version.eq(r.version))
        };
        // Editing a draft replaces that version; anything else is a new version.
        let existing = key(multiplier_rules::Entity::find())
            .one(&txn)
            .await
            .map_err(classify)?;
        if let Some(existing) = existing {
            if existing.status != RuleStatus::Draft.as_str() {
                return Err(RepoError::Conflict(format!(
                    "rule {} version {} is no longer a draft",
                    r.rule_id, r.version
                )));
            }
            delete_version(&txn, tenant, &r.rule_id, r.version).await?;
        }
        let row = multiplier_rules::ActiveModel {
            tenant_id: Set(tenant.as_str().to_owned()),
            rule_id: Set(r.rule_id.clone()),
            version: Set(to_i32(r.version)?),
            status: Set(r.status.as_str().to_owned()),
            name: Set(r.name.clone()),
            description: Set(r.description.clone()),
            factor: Set(to_minor_units(r.factor)?),
            valid_from: Set(r.valid_from),
            valid_until: Set(r.valid_until),
            channel: Set(r.channel.map(|c| c.as_str().to_owned())),
            created_at: Set(rule.created_at.fixed_offset()),
            published_at: Set(rule.published_at.map(|t| t.fixed_offset())),
            archived_at: Set(rule.archived_at.map(|t| t.fixed_offset())),
        };
        multiplier_rules::Entity::insert(row)
            .exec(&txn)
            .await
            .map_err(classify)?;
        let version = to_i32(r.version)?;
        for chunk in r.targets.chunks(CHUNK) {
            let rows = chunk.iter().map(|t| multiplier_rule_targets::ActiveModel {
                tenant_id: Set(tenant.as_str().to_owned()),
                rule_id: Set(r.rule_id.clone()),
                version: Set(version),
                target_kind: Set(t.kind.as_str().to_owned()),
                target_id: Set(t.id.clone()),
            });
            multiplier_rule_targets::Entity::insert_many(rows)
                .exec(&txn)
                .await
                .map_err(classify)?;
        }
        if !r.segment_ids.is_empty() {
            let rows = r
                .segment_ids
                .iter()
                .map(|s| multiplier_rule_segments::ActiveModel {
                    tenant_id: Set(tenant.as_str().to_owned()),
                    rule_id: Set(r.rule_id.clone()),
                    version: Set(version),
                    segment_id: Set(s.clone()),
                });
            multiplier_rule_segments::Entity::insert_many(rows)
                .exec(&txn)
                .await
                .map_err(classify)?;
        }
        txn.commit().await.map_err(classify)
    }

    async fn change_status(
        &self,
        tenant: &TenantId,
        rule_id: &str,
        publish: Option<u32>,
        at: DateTime<Utc>,
        request: &IdempotencyRecord,
    ) -> Result<(), RepoError> {
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        insert_record(&txn, tenant, request).await?;
        let of_rule = Condition::all()
            .add(multiplier_rules::Column::TenantId.eq(tenant.as_str()))
            .add(multiplier_rules::Column::RuleId.eq(rule_id));
        // Publishing archives the version in force; archiving ends every version.
        let archived = multiplier_rules::Entity::update_many()
            .col_expr(
                multiplier_rules::Column::Status,
                Expr::value(RuleStatus::Archived.as_str()),
            )
            .col_expr(
                multiplier_rules::Column::ArchivedAt,
                Expr::value(at.fixed_offset()),
            )
            .filter(of_rule.clone())
            .filter(if publish.is_some() {
                multiplier_rules::Column::Status.eq(RuleStatus::Published.as_str())
            } else {
                multiplier_rules::Column::Status.ne(RuleStatus::Archived.as_str())
            });
        archived.exec(&txn).await.map_err(classify)?;
        if let Some(version) = publish {
            let published = multiplier_rules::Entity::update_many()
                .col_expr(
                    multiplier_rules::Column::Status,
                    Expr::value(RuleStatus::Published.as_str()),
                )
                .col_expr(
                    multiplier_rules::Column::PublishedAt,
                    Expr::value(at.fixed_offset()),
                )
                .filter(of_rule)
                .filter(multiplier_rules::Column::Version.eq(version))
                .filter(multiplier_rules::Column::Status.eq(RuleStatus::Draft.as_str()))
                .exec(&txn)
                .await
                .map_err(classify)?;
            if published.rows_affected != 1 {
                return Err(RepoError::Conflict(format!(
                    "rule {rule_id} version {version} is not a draft any more"
                )));
            }
        }
        txn.commit().await.map_err(classify)
    }

    async fn rule_versions(
        &self,
        tenant: &TenantId,
        rule_id: &str,
    ) -> Result<Vec<StoredRule>, RepoError> {
        let rows = multiplier_rules::Entity::find()
            .filter(multiplier_rules::Column::TenantId.eq(tenant.as_str()))
            .filter(multiplier_rules::Column::RuleId.eq(rule_id))
            .order_by_asc(multiplier_rules::Column::Version)
            .all(&self.db)
            .await
            .map_err(classify)?;
        load_rules(&self.db, tenant, rows).await
    }

    async fn rules_page(
        &self,
        tenant: &TenantId,
        after: Option<String>,
        rules: u64,
    ) -> Result<Vec<Vec<StoredRule>>, RepoError> {
        let mut query = multiplier_rules::Entity::find()
            .select_only()
            .column(multiplier_rules::Column::RuleId)
            .distinct()
            .filter(multiplier_rules::Column::TenantId.eq(tenant.as_str()));
        if let Some(after) = after {
            query = query.filter(multiplier_rules::Column::RuleId.gt(after));
        }
        let ids: Vec<String> = query
            .order_by_asc(multiplier_rules::Column::RuleId)
            .limit(rules)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(classify)?;
        let mut grouped = Vec::with_capacity(ids.len());
        for id in ids {
            grouped.push(self.rule_versions(tenant, &id).await?);
        }
        Ok(grouped)
    }

    async fn published_rules_for(
        &self,
        tenant: &TenantId,
        targets: &[RuleTarget],
    ) -> Result<Vec<MultiplierRule>, RepoError> {
        let mut keys: Vec<(String, i32)> = Vec::new();
        for chunk in targets.chunks(CHUNK / 2) {
            let mut any_target = Condition::any();
            for t in chunk {
                any_target = any_target.add(
                    Condition::all()
                        .add(multiplier_rule_targets::Column::TargetKind.eq(t.kind.as_str()))
                        .add(multiplier_rule_targets::Column::TargetId.eq(t.id.as_str())),
                );
            }
            let found: Vec<(String, i32)> = multiplier_rule_targets::Entity::find()
                .select_only()
                .column(multiplier_rule_targets::Column::RuleId)
                .column(multiplier_rule_targets::Column::Version)
                .filter(multiplier_rule_targets::Column::TenantId.eq(tenant.as_str()))
                .filter(any_target)
                .into_tuple()
                .all(&self.db)
                .await
                .map_err(classify)?;
            keys.extend(found);
        }
        keys.sort();
        keys.dedup();
        let mut rows = Vec::new();
        for chunk in keys.chunks(CHUNK / 2) {
            let mut any_key = Condition::any();
            for (rule_id, version) in chunk {
                any_key = any_key.add(
                    Condition::all()
                        .add(multiplier_rules::Column::RuleId.eq(rule_id.as_str()))
                        .add(multiplier_rules::Column::Version.eq(*version)),
                );
            }
            rows.extend(
                multiplier_rules::Entity::find()
                    .filter(multiplier_rules::Column::TenantId.eq(tenant.as_str()))
                    .filter(multiplier_rules::Column::Status.eq(RuleStatus::Published.as_str()))
                    .filter(any_key)
                    .all(&self.db)
                    .await
                    .map_err(classify)?,
            );
        }
        Ok(load_rules(&self.db, tenant, rows)
            .await?
            .into_iter()
            .map(|s| s.rule)
            .collect())
    }

    async fn set_segment_rate(
        &self,
        tenant: &TenantId,
        segment_id: &str,
        effective_from: NaiveDate,
        rate: Decimal,
        request: &IdempotencyRecord,
    ) -> Result<(), RepoError> {
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        insert_record(&txn, tenant, request).await?;
        let row = segment_rates::ActiveModel {
            tenant_id: Set(tenant.as_str().to_owned()),
            segment_id: Set(segment_id.to_owned()),
            effective_from: Set(effective_from),
            rate: Set(to_minor_units(rate)?),
            request_id: Set(request.request_id.clone()),
            recorded_at: Set(SystemClock.now().fixed_offset()),
        };
        segment_rates::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([
                    segment_rates::Column::TenantId,
                    segment_rates::Column::SegmentId,
                    segment_rates::Column::EffectiveFrom,
                ])
                .update_columns([
                    segment_rates::Column::Rate,
                    segment_rates::Column::RequestId,
                    segment_rates::Column::RecordedAt,
                ])
                .to_owned(),
            )
            .exec(&txn)
            .await
            .map_err(classify)?;
        txn.commit().await.map_err(classify)
    }

    async fn segment_rates(
        &self,
        tenant: &TenantId,
        segment_ids: Option<Vec<String>>,
    ) -> Result<HashMap<String, EffectiveDated>, RepoError> {
        let mut query = segment_rates::Entity::find()
            .filter(segment_rates::Column::TenantId.eq(tenant.as_str()));
        if let Some(ids) = segment_ids {
            query = query.filter(segment_rates::Column::SegmentId.is_in(ids));
        }
        let rows = query.all(&self.db).await.map_err(classify)?;
        Ok(group_dated(
            rows.into_iter()
                .map(|r| (r.segment_id, r.effective_from, r.rate)),
        ))
    }

    async fn pricing_revision(&self, tenant: &TenantId) -> Result<i64, RepoError> {
        Ok(
            pricing_revisions::Entity::find_by_id(tenant.as_str().to_owned())
                .one(&self.db)
                .await
                .map_err(classify)?
                .map_or(0, |r| r.revision),
        )
    }

    async fn priced_client(
        &self,
        tenant: &TenantId,
        client_id: &str,
        eligibility: Option<EligibilityProbe>,
    ) -> Result<Option<ClientPricing>, RepoError> {
        use sea_orm::sea_query::{ExprTrait, Query, SubQueryStatement};
        let client = |c: clients::Column| Expr::col((clients::Entity, c));
        let member = |c: client_segments::Column| Expr::col((client_segments::Entity, c));
        let rate = |c: segment_rates::Column| Expr::col((segment_rates::Entity, c));
        let revision = pricing_revision_of(tenant);
        let holding = match &eligibility {
            Some(probe) => Expr::from(SubQueryStatement::SelectStatement(holding_at(
                tenant, client_id, probe,
            ))),
            None => Expr::null(),
        };
        // The client once per segment it is in and rate that segment has (once with none).
        let query = Query::select()
            .expr(client(clients::Column::Name))
            .expr(client(clients::Column::Status))
            .expr(client(clients::Column::HasAccount))
            .expr(client(clients::Column::UpdatedAt))
            .expr(member(client_segments::Column::SegmentId))
            .expr(rate(segment_rates::Column::EffectiveFrom))
            .expr(rate(segment_rates::Column::Rate))
            .expr(Expr::from(SubQueryStatement::SelectStatement(revision)))
            .expr(holding)
            .expr(client(clients::Column::Revision))
            .from(clients::Entity)
            .left_join(
                client_segments::Entity,
                member(client_segments::Column::TenantId)
                    .equals((clients::Entity, clients::Column::TenantId))
                    .and(
                        member(client_segments::Column::ClientId)
                            .equals((clients::Entity, clients::Column::ClientId)),
                    ),
            )
            .left_join(
                segment_rates::Entity,
                rate(segment_rates::Column::TenantId)
                    .equals((client_segments::Entity, client_segments::Column::TenantId))
                    .and(
                        rate(segment_rates::Column::SegmentId)
                            .equals((client_segments::Entity, client_segments::Column::SegmentId)),
                    ),
            )
            .and_where(client(clients::Column::TenantId).eq(tenant.as_str()))
            .and_where(client(clients::Column::ClientId).eq(client_id))
            .to_owned();
        let rows = self.db.query_all(&query).await.map_err(classify)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let updated_at: chrono::DateTime<chrono::FixedOffset> =
            first.try_get_by_index(3).map_err(classify)?;
        let revision: Option<i64> = first.try_get_by_index(7).map_err(classify)?;
        let client_revision: i64 = first.try_get_by_index(9).map_err(classify)?;
        let mut record = ClientRecord {
            client_id: client_id.to_owned(),
            name: first.try_get_by_index(0).map_err(classify)?,
            status: first.try_get_by_index(1).map_err(classify)?,
            has_account: first.try_get_by_index(2).map_err(classify)?,
            segment_ids: Vec::new(),
            updated_at: updated_at.to_utc(),
        };
        let mut rates = Vec::new();
        for row in &rows {
            let segment: Option<String> = row.try_get_by_index(4).map_err(classify)?;
            let Some(segment) = segment else { continue };
            let from: Option<NaiveDate> = row.try_get_by_index(5).map_err(classify)?;
            let units: Option<i64> = row.try_get_by_index(6).map_err(classify)?;
            if let (Some(from), Some(units)) = (from, units) {
                rates.push((segment.clone(), from, units));
            }
            if !record.segment_ids.contains(&segment) {
                record.segment_ids.push(segment);
            }
        }
        Ok(Some(ClientPricing {
            client: record,
            segment_rates: group_dated(rates.into_iter()),
            basis: EarnBasis {
                pricing_revision: revision.unwrap_or(0),
                client_revision,
            },
            eligible: eligibility.map(|_| held(first, 8)).transpose()?,
        }))
    }
}

fn group_dated(
    rows: impl Iterator<Item = (String, NaiveDate, i64)>,
) -> HashMap<String, EffectiveDated> {
    let mut grouped: HashMap<String, Vec<(NaiveDate, Decimal)>> = HashMap::new();
    for (key, day, units) in rows {
        grouped
            .entry(key)
            .or_default()
            .push((day, from_minor_units(units)));
    }
    grouped
        .into_iter()
        .map(|(k, v)| (k, EffectiveDated::new(v)))
        .collect()
}

async fn delete_version(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    rule_id: &str,
    version: u32,
) -> Result<(), RepoError> {
    let version = to_i32(version)?;
    multiplier_rule_targets::Entity::delete_many()
        .filter(multiplier_rule_targets::Column::TenantId.eq(tenant.as_str()))
        .filter(multiplier_rule_targets::Column::RuleId.eq(rule_id))
        .filter(multiplier_rule_targets::Column::Version.eq(version))
        .exec(conn)
        .await
        .map_err(classify)?;
    multiplier_rule_segments::Entity::delete_many()
        .filter(multiplier_rule_segments::Column::TenantId.eq(tenant.as_str()))
        .filter(multiplier_rule_segments::Column::RuleId.eq(rule_id))
        .filter(multiplier_rule_segments::Column::Version.eq(version))
        .exec(conn)
        .await
        .map_err(classify)?;
    multiplier_rules::Entity::delete_many()
        .filter(multiplier_rules::Column::TenantId.eq(tenant.as_str()))
        .filter(multiplier_rules::Column::RuleId.eq(rule_id))
        .filter(multiplier_rules::Column::Version.eq(version))
        .exec(conn)
        .await
        .map_err(classify)?;
    Ok(())
}

/// Rule rows with their targets and segments.
async fn load_rules(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    rows: Vec<multiplier_rules::Model>,
) -> Result<Vec<StoredRule>, RepoError> {
    let mut loaded = Vec::with_capacity(rows.len());
    for row in rows {
        let targets = multiplier_rule_targets::Entity::find()
            .filter(multiplier_rule_targets::Column::TenantId.eq(tenant.as_str()))
            .filter(multiplier_rule_targets::Column::RuleId.eq(row.rule_id.as_str()))
            .filter(multiplier_rule_targets::Column::Version.eq(row.version))
            .order_by_asc(multiplier_rule_targets::Column::TargetKind)
            .order_by_asc(multiplier_rule_targets::Column::TargetId)
            .all(conn)
            .await
            .map_err(classify)?
            .into_iter()
            .map(|t| {
                TargetKind::parse(&t.target_kind)
                    .map(|kind| RuleTarget {
                        kind,
                        id: t.target_id,
                    })
                    .ok_or_else(|| RepoError::Corrupt(format!("target kind {:?}", t.target_kind)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let segment_ids = multiplier_rule_segments::Entity::find()
            .filter(multiplier_rule_segments::Column::TenantId.eq(tenant.as_str()))
            .filter(multiplier_rule_segments::Column::RuleId.eq(row.rule_id.as_str()))
            .filter(multiplier_rule_segments::Column::Version.eq(row.version))
            .all(conn)
            .await
            .map_err(classify)?
            .into_iter()
            .map(|s| s.segment_id)
            .collect();
        let corrupt =
            |what: &str| RepoError::Corrupt(format!("multiplier_rules.{what} of {}", row.rule_id));
        loaded.push(StoredRule {
            rule: MultiplierRule {
                version: u32::try_from(row.version).map_err(|_| corrupt("version"))?,
                status: RuleStatus::parse(&row.status).ok_or_else(|| corrupt("status"))?,
                name: row.name,
                description: row.description,
                targets,
                factor: from_minor_units(row.factor),
                valid_from: row.valid_from,
                valid_until: row.valid_until,
                segment_ids,
                channel: match row.channel {
                    Some(c) => Some(Channel::parse(&c).ok_or_else(|| corrupt("channel"))?),
                    None => None,
                },
                rule_id: row.rule_id,
            },
            created_at: row.created_at.to_utc(),
            published_at: row.published_at.map(|t| t.to_utc()),
            archived_at: row.archived_at.map(|t| t.to_utc()),
        });
    }
    Ok(loaded)
}

/// The tenant's pricing revision, as a one-column SELECT (no row until its first change: read as
/// 0).
pub(super) fn pricing_revision_of(tenant: &TenantId) -> sea_orm::sea_query::SelectStatement {
    sea_orm::sea_query::Query::select()
        .column(pricing_revisions::Column::Revision)
        .from(pricing_revisions::Entity)
        .and_where(pricing_revisions::Column::TenantId.eq(tenant.as_str()))
        .to_owned()
}
