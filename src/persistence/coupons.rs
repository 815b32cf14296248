//! SeaORM implementation of [`CouponRepository`]: coupons with their segment restrictions, and
//! the ONe coupon pools as synchronization mirrors them.

use async_trait::async_trait;
use rust_decimal::Decimal;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    FromQueryResult, IdenStatic, JoinType, QueryFilter, QueryOrder, QuerySelect,
};

use super::directory::client_record;
use super::entities::{
    client_segments, clients, coupon_pools, coupon_segments, coupons, redemptions,
};
use super::error::{RepoError, classify};
use super::idempotency::insert_record;
use super::{ClientAndCoupon, CouponRepository, select_prefixed, with_children};
use crate::domain::coupons::{Coupon, CouponSpec, CouponStatus, CouponType, Discount};
use crate::domain::idempotency::IdempotencyRecord;
use crate::domain::points::{from_minor_units, to_minor_units};
use crate::domain::tenant::TenantId;

pub use crate::domain::sync::CouponPoolRecord;

#[derive(Debug, Clone)]
pub struct SeaCouponRepository {
    db: DatabaseConnection,
}

impl SeaCouponRepository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

/// The prefixes of the client's and the coupon's columns in [`CouponRepository::with_client`].
const CLIENT: &str = "client_";
const COUPON: &str = "coupon_";

fn to_i32(value: u32) -> Result<i32, RepoError> {
    i32::try_from(value).map_err(|_| RepoError::Other(format!("{value} does not fit a column")))
}

#[async_trait]
impl CouponRepository for SeaCouponRepository {
    async fn save(
        &self,
        tenant: &TenantId,
        coupon: &Coupon,
        previous_revision: Option<u32>,
        request: &IdempotencyRecord,
    ) -> Result<(), RepoError> {
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        insert_record(&txn, tenant, request).await?;
        let row = to_row(tenant, coupon)?;
        match previous_revision {
            None => {
                coupons::Entity::insert(row)
                    .exec(&txn)
                    .await
                    .map_err(classify)?;
            }
            Some(previous) => {
                // Redemptions move the count under their own lock; an edit never writes it.
                let mut row = row;
                row.redeemed_count = sea_orm::ActiveValue::NotSet;
                // Optimistic: only the revision the change was made from can be replaced.
                let updated = coupons::Entity::update_many()
                    .set(row)
                    .filter(coupons::Column::TenantId.eq(tenant.as_str()))
                    .filter(coupons::Column::CouponId.eq(coupon.coupon_id.as_str()))
                    .filter(coupons::Column::Revision.eq(to_i32(previous)?))
                    .exec(&txn)
                    .await
                    .map_err(classify)?;
                if updated.rows_affected != 1 {
                    return Err(RepoError::Aborted(format!(
                        "coupon {} changed concurrently",
                        coupon.coupon_id
                    )));
                }
            }
        }
        replace_segments(&txn, tenant, coupon).await?;
        txn.commit().await.map_err(classify)
    }

    async fn get(&self, tenant: &TenantId, coupon_id: &str) -> Result<Option<Coupon>, RepoError> {
        // One read, as every redemption makes it: the coupon's row once per segment it is
        // restricted to (once with none when it is not).
        let restrictions = coupons::Entity::belongs_to(coupon_segments::Entity)
            .from((coupons::Column::TenantId, coupons::Column::CouponId))
            .to((
                coupon_segments::Column::TenantId,
                coupon_segments::Column::CouponId,
            ))
            .into();
        let rows = coupons::Entity::find_by_id((tenant.as_str().to_owned(), coupon_id.to_owned()))
            .join(JoinType::LeftJoin, restrictions)
            .select_also(coupon_segments::Entity)
            .order_by_asc(coupon_segments::Column::SegmentId)
            .all(&self.db)
            .await
            .map_err(classify)?;
        with_children(rows)
            .map(|(row, segments)| {
                from_row(row, segments.into_iter().map(|s| s.segment_id).collect())
            })
            .transpose()
    }

    async fn with_client(
        &self,
        tenant: &TenantId,
        coupon_id: &str,
        client_id: &str,
    ) -> Result<Option<ClientAndCoupon>, RepoError> {
        use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query, UnionType};
        let client = |c: clients::Column| Expr::col((clients::Entity, c));
        let listed = Alias::new("segments");
        let (client_segment, coupon_segment) = ("segment_of_client", "segment_of_coupon");
        // The client's segments and the coupon's in one list, a row each: joining both to the
        // client would return every pair of them.
        let mut segments = Query::select()
            .expr_as(
                Expr::col(client_segments::Column::SegmentId),
                Alias::new(client_segment),
            )
            .expr_as(Expr::null(), Alias::new(coupon_segment))
            .from(client_segments::Entity)
            .and_where(Expr::col(client_segments::Column::TenantId).eq(tenant.as_str()))
            .and_where(Expr::col(client_segments::Column::ClientId).eq(client_id))
            .to_owned();
        segments.union(
            UnionType::All,
            Query::select()
                .expr(Expr::null())
                .expr(Expr::col(coupon_segments::Column::SegmentId))
                .from(coupon_segments::Entity)
                .and_where(Expr::col(coupon_segments::Column::TenantId).eq(tenant.as_str()))
                .and_where(Expr::col(coupon_segments::Column::CouponId).eq(coupon_id))
                .to_owned(),
        );
        let mut query = Query::select();
        select_prefixed::<clients::Entity>(&mut query, CLIENT);
        select_prefixed::<coupons::Entity>(&mut query, COUPON);
        query
            .column((listed.clone(), Alias::new(client_segment)))
            .column((listed.clone(), Alias::new(coupon_segment)))
            .from(clients::Entity)
            .left_join(
                coupons::Entity,
                Expr::col((coupons::Entity, coupons::Column::TenantId))
                    .equals((clients::Entity, clients::Column::TenantId))
                    .and(Expr::col((coupons::Entity, coupons::Column::CouponId)).eq(coupon_id)),
            )
            .join_subquery(
                sea_orm::sea_query::JoinType::LeftJoin,
                segments,
                listed.clone(),
                Expr::val(true),
            )
            .and_where(client(clients::Column::TenantId).eq(tenant.as_str()))
            .and_where(client(clients::Column::ClientId).eq(client_id))
            // The coupon's segments in the order `get` gives them.
            .order_by((listed.clone(), Alias::new(coupon_segment)), Order::Asc)
            .order_by((listed, Alias::new(client_segment)), Order::Asc);
        let rows = self.db.query_all(&query).await.map_err(classify)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut client =
            client_record(clients::Model::from_query_result(first, CLIENT).map_err(classify)?);
        // A coupon row is there when its key is; a row that is there but unreadable is an error,
        // not an unknown coupon.
        let coupon_key: Option<String> = first
            .try_get(COUPON, coupons::Column::CouponId.as_str())
            .map_err(classify)?;
        let coupon_row = match coupon_key {
            Some(_) => Some(coupons::Model::from_query_result(first, COUPON).map_err(classify)?),
            None => None,
        };
        let mut restricted_to = Vec::new();
        for row in &rows {
            let of_client: Option<String> = row.try_get("", client_segment).map_err(classify)?;
            let of_coupon: Option<String> = row.try_get("", coupon_segment).map_err(classify)?;
            client.segment_ids.extend(of_client);
            restricted_to.extend(of_coupon);
        }
        Ok(Some(ClientAndCoupon {
            client,
            coupon: coupon_row
                .map(|row| from_row(row, restricted_to))
                .transpose()?,
        }))
    }

    async fn name_taken(
        &self,
        tenant: &TenantId,
        name: &str,
        except: &str,
    ) -> Result<bool, RepoError> {
        let found = coupons::Entity::find()
            .filter(coupons::Column::TenantId.eq(tenant.as_str()))
            .filter(coupons::Column::Name.eq(name))
            .filter(coupons::Column::CouponId.ne(except))
            .one(&self.db)
            .await
            .map_err(classify)?;
        Ok(found.is_some())
    }

    async fn page(
        &self,
        tenant: &TenantId,
        after: Option<String>,
        limit: u64,
    ) -> Result<Vec<Coupon>, RepoError> {
        let mut query =
            coupons::Entity::find().filter(coupons::Column::TenantId.eq(tenant.as_str()));
        if let Some(after) = after {
            query = query.filter(coupons::Column::CouponId.gt(after));
        }
        let rows = query
            .order_by_asc(coupons::Column::CouponId)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(classify)?;
        let mut found = Vec::with_capacity(rows.len());
        for row in rows {
            found.push(self.with_segments(tenant, row).await?);
        }
        Ok(found)
    }

    async fn redeemed_by_client(
        &self,
        tenant: &TenantId,
        client_id: &str,
    ) -> Result<std::collections::HashMap<String, u32>, RepoError> {
        let rows: Vec<(String, i64)> = redemptions::Entity::find()
            .select_only()
            .column(redemptions::Column::CouponId)
            .column_as(
                sea_orm::sea_query::Expr::cust("CAST(COUNT(*) AS BIGINT)"),
                "redeemed",
            )
            .filter(redemptions::Column::TenantId.eq(tenant.as_str()))
            .filter(redemptions::Column::ClientId.eq(client_id))
            .filter(redemptions::Column::Status.is_not_in(["FAILED", "CANCELLED"]))
            .group_by(redemptions::Column::CouponId)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(classify)?;
        Ok(rows
            .into_iter()
            .map(|(coupon, n)| (coupon, u32::try_from(n).unwrap_or(u32::MAX)))
            .collect())
    }

    async fn save_pool(&self, tenant: &TenantId, pool: &CouponPoolRecord) -> Result<(), RepoError> {
        save_pool_in(&self.db, tenant, pool).await
    }

    async fn pool(
        &self,
        tenant: &TenantId,
        pool_id: &str,
    ) -> Result<Option<CouponPoolRecord>, RepoError> {
        let row =
            coupon_pools::Entity::find_by_id((tenant.as_str().to_owned(), pool_id.to_owned()))
                .one(&self.db)
                .await
                .map_err(classify)?;
        Ok(row.map(pool_from_row))
    }

    async fn pools(
        &self,
        tenant: &TenantId,
        after: Option<String>,
        limit: u64,
    ) -> Result<Vec<CouponPoolRecord>, RepoError> {
        let mut query =
            coupon_pools::Entity::find().filter(coupon_pools::Column::TenantId.eq(tenant.as_str()));
        if let Some(after) = after {
            query = query.filter(coupon_pools::Column::PoolId.gt(after));
        }
        let rows = query
            .order_by_asc(coupon_pools::Column::PoolId)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(classify)?;
        Ok(rows.into_iter().map(pool_from_row).collect())
    }
}

impl SeaCouponRepository {
    async fn with_segments(
        &self,
        tenant: &TenantId,
        row: coupons::Model,
    ) -> Result<Coupon, RepoError> {
        let segments = self.segments_of(tenant, &row.coupon_id).await?;
        from_row(row, segments)
    }

    /// The segments a coupon is offered to.
    async fn segments_of(
        &self,
        tenant: &TenantId,
        coupon_id: &str,
    ) -> Result<Vec<String>, RepoError> {
        Ok(coupon_segments::Entity::find()
            .filter(coupon_segments::Column::TenantId.eq(tenant.as_str()))
            .filter(coupon_segments::Column::CouponId.eq(coupon_id))
            .order_by_asc(coupon_segments::Column::SegmentId)
            .all(&self.db)
            .await
            .map_err(classify)?
            .into_iter()
            .map(|s| s.segment_id)
            .collect())
    }
}

fn pool_from_row(r: coupon_pools::Model) -> CouponPoolRecord {
    CouponPoolRecord {
        pool_id: r.pool_id,
        name: r.name,
        campaign_id: r.campaign_id,
        campaign_name: r.campaign_name,
        active: r.active,
    }
}

async fn replace_segments(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    coupon: &Coupon,
) -> Result<(), RepoError> {
    coupon_segments::Entity::delete_many()
        .filter(coupon_segments::Column::TenantId.eq(tenant.as_str()))
        .filter(coupon_segments::Column::CouponId.eq(coupon.coupon_id.as_str()))
        .exec(conn)
        .await
        .map_err(classify)?;
    if coupon.spec.segment_ids.is_empty() {
        return Ok(());
    }
    let rows = coupon
        .spec
        .segment_ids
        .iter()
        .map(|s| coupon_segments::ActiveModel {
            tenant_id: Set(tenant.as_str().to_owned()),
            coupon_id: Set(coupon.coupon_id.clone()),
            segment_id: Set(s.clone()),
        });
    coupon_segments::Entity::insert_many(rows)
        .exec(conn)
        .await
        .map_err(classify)?;
    Ok(())
}

fn to_row(tenant: &TenantId, c: &Coupon) -> Result<coupons::ActiveModel, RepoError> {
    let s = &c.spec;
    let (kind, value, currency) = match &s.discount {
        None => (None, None, None),
        Some(Discount::Percentage(p)) => (Some("PERCENTAGE"), Some(p.to_string()), None),
        Some(Discount::FixedAmount { amount, currency }) => (
            Some("FIXED_AMOUNT"),
            Some(amount.to_string()),
            Some(currency.clone()),
        ),
    };
    Ok(coupons::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        coupon_id: Set(c.coupon_id.clone()),
        name: Set(s.name.clone()),
        coupon_type: Set(s.coupon_type.as_str().to_owned()),
        description: Set(s.description.clone()),
        pool_id: Set(s.pool_id.clone()),
        email: Set(s.email.clone()),
        point_value: Set(to_minor_units(s.point_value)?),
        image_url: Set(s.image_url.clone()),
        appearance_date: Set(s.appearance_date),
        expiration_date: Set(s.expiration_date),
        redemption_deadline: Set(s.redemption_deadline),
        stock: Set(s.stock.map(to_i32).transpose()?),
        per_client_limit: Set(s.per_client_limit.map(to_i32).transpose()?),
        redeemed_count: Set(to_i32(c.redeemed_count)?),
        discount_kind: Set(kind.map(str::to_owned)),
        discount_value: Set(value),
        discount_currency: Set(currency),
        status: Set(c.status.as_str().to_owned()),
        revision: Set(to_i32(c.revision)?),
        created_at: Set(c.created_at.fixed_offset()),
        updated_at: Set(c.updated_at.fixed_offset()),
    })
}

fn from_row(r: coupons::Model, segment_ids: Vec<String>) -> Result<Coupon, RepoError> {
    let corrupt = |what: &str| RepoError::Corrupt(format!("coupons.{what} of {}", r.coupon_id));
    let count = |v: i32, what: &str| u32::try_from(v).map_err(|_| corrupt(what));
    let discount = match (r.discount_kind.as_deref(), r.discount_value.as_deref()) {
        (Some("PERCENTAGE"), Some(v)) => Some(Discount::Percentage(
            v.parse::<Decimal>()
                .map_err(|_| corrupt("discount_value"))?,
        )),
        (Some("FIXED_AMOUNT"), Some(v)) => Some(Discount::FixedAmount {
            amount: v
                .parse::<Decimal>()
                .map_err(|_| corrupt("discount_value"))?,
            currency: r.discount_currency.clone().unwrap_or_default(),
        }),
        (None, _) => None,
        _ => return Err(corrupt("discount_kind")),
    };
    Ok(Coupon {
        spec: CouponSpec {
            coupon_type: CouponType::parse(&r.coupon_type).ok_or_else(|| corrupt("coupon_type"))?,
            name: r.name.clone(),
            description: r.description.clone(),
            pool_id: r.pool_id.clone(),
            email: r.email.clone(),
            point_value: from_minor_units(r.point_value),
            image_url: r.image_url.clone(),
            appearance_date: r.appearance_date,
            expiration_date: r.expiration_date,
            redemption_deadline: r.redemption_deadline,
            segment_ids,
            stock: r.stock.map(|v| count(v, "stock")).transpose()?,
            per_client_limit: r
                .per_client_limit
                .map(|v| count(v, "per_client_limit"))
                .transpose()?,
            discount,
        },
        status: CouponStatus::parse(&r.status).ok_or_else(|| corrupt("status"))?,
        redeemed_count: count(r.redeemed_count, "redeemed_count")?,
        revision: count(r.revision, "revision")?,
        created_at: r.created_at.to_utc(),
        updated_at: r.updated_at.to_utc(),
        coupon_id: r.coupon_id,
    })
}

/// Creates or replaces a pool inside the caller's transaction.
pub(crate) async fn save_pool_in(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    pool: &CouponPoolRecord,
) -> Result<(), RepoError> {
    let row = coupon_pools::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        pool_id: Set(pool.pool_id.clone()),
        name: Set(pool.name.clone()),
        campaign_id: Set(pool.campaign_id.clone()),
        campaign_name: Set(pool.campaign_name.clone()),
        active: Set(pool.active),
        updated_at: Set(
            crate::domain::clock::Clock::now(&crate::domain::clock::SystemClock).fixed_offset(),
        ),
    };
    coupon_pools::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([coupon_pools::Column::TenantId, coupon_pools::Column::PoolId])
                .update_columns([
                    coupon_pools::Column::Name,
                    coupon_pools::Column::CampaignId,
                    coupon_pools::Column::CampaignName,
                    coupon_pools::Column::Active,
                    coupon_pools::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec(conn)
        .await
        .map_err(classify)?;
    Ok(())
}
