//! `CouponService` adapter and its conversions.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{amount, day, page_position, page_size, page_token, timestamp};
use super::status::invalid;
use super::{caller, request_key};
use crate::domain::coupons::{Coupon, CouponSpec, CouponStatus, CouponType, Discount};
use crate::domain::validation::{FieldViolation, Invalid};
use crate::proto::loyalty::v1 as pb;
use crate::service::coupons::{CouponFilter, CouponService};

pub struct CouponGrpc {
    service: Arc<CouponService>,
}

impl CouponGrpc {
    pub fn new(service: Arc<CouponService>) -> Self {
        Self { service }
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::coupon_service_server::CouponService for CouponGrpc {
    async fn create_coupon(
        &self,
        request: Request<pb::CreateCouponRequest>,
    ) -> Reply<pb::CreateCouponResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let spec = spec_from_proto(m.spec.as_ref()).map_err(|e| invalid(&e))?;
        let coupon = self
            .service
            .create(&caller, &request_key(&m.request_id, &m), spec)
            .await?;
        Ok(Response::new(pb::CreateCouponResponse {
            coupon: Some(coupon_to_proto(&coupon)),
        }))
    }

    async fn update_coupon(
        &self,
        request: Request<pb::UpdateCouponRequest>,
    ) -> Reply<pb::UpdateCouponResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let spec = spec_from_proto(m.spec.as_ref()).map_err(|e| invalid(&e))?;
        let key = request_key(&m.request_id, &m);
        let coupon = self
            .service
            .update(&caller, &key, m.coupon_id.trim(), spec, m.expected_revision)
            .await?;
        Ok(Response::new(pb::UpdateCouponResponse {
            coupon: Some(coupon_to_proto(&coupon)),
        }))
    }

    async fn get_coupon(
        &self,
        request: Request<pb::GetCouponRequest>,
    ) -> Reply<pb::GetCouponResponse> {
        let caller = caller(&request)?;
        let coupon = self
            .service
            .get(&caller, request.get_ref().coupon_id.trim())
            .await?;
        Ok(Response::new(pb::GetCouponResponse {
            coupon: Some(coupon_to_proto(&coupon)),
        }))
    }

    async fn list_coupons(
        &self,
        request: Request<pb::ListCouponsRequest>,
    ) -> Reply<pb::ListCouponsResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let mut found = Vec::new();
        let filter = CouponFilter {
            status: match pb::CouponStatus::try_from(m.status) {
                Ok(pb::CouponStatus::Active) => Some(CouponStatus::Active),
                Ok(pb::CouponStatus::Archived) => Some(CouponStatus::Archived),
                _ => None,
            },
            coupon_type: type_from_proto(m.r#type),
            offered_on: (!m.offered_on.is_empty())
                .then(|| {
                    day("offered_on", &m.offered_on)
                        .map_err(|v| found.push(v))
                        .ok()
                })
                .flatten(),
        };
        let after = page_position(&m.page_token)
            .map_err(|v| found.push(v))
            .ok()
            .flatten();
        if !found.is_empty() {
            return Err(invalid(&Invalid(found)));
        }
        let (coupons, next) = self
            .service
            .list(&caller, &filter, after, page_size(m.page_size))
            .await?;
        Ok(Response::new(pb::ListCouponsResponse {
            coupons: coupons.iter().map(coupon_to_proto).collect(),
            next_page_token: next.map(|p| page_token(&p)).unwrap_or_default(),
        }))
    }

    async fn archive_coupon(
        &self,
        request: Request<pb::ArchiveCouponRequest>,
    ) -> Reply<pb::ArchiveCouponResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let coupon = self
            .service
            .archive(&caller, &request_key(&m.request_id, &m), m.coupon_id.trim())
            .await?;
        Ok(Response::new(pb::ArchiveCouponResponse {
            coupon: Some(coupon_to_proto(&coupon)),
        }))
    }

    async fn list_coupon_pools(
        &self,
        request: Request<pb::ListCouponPoolsRequest>,
    ) -> Reply<pb::ListCouponPoolsResponse> {
        let caller = caller(&request)?;
        let m = request.into_inner();
        let after = page_position(&m.page_token).map_err(|v| invalid(&Invalid(vec![v])))?;
        let (pools, next) = self
            .service
            .pools(&caller, after, page_size(m.page_size))
            .await?;
        Ok(Response::new(pb::ListCouponPoolsResponse {
            pools: pools
                .into_iter()
                .map(|p| pb::CouponPool {
                    pool_id: p.pool_id,
                    name: p.name,
                    campaign_id: p.campaign_id,
                    campaign_name: p.campaign_name,
                    active: p.active,
                })
                .collect(),
            next_page_token: next.map(|p| page_token(&p)).unwrap_or_default(),
        }))
    }
}

fn type_from_proto(value: i32) -> Option<CouponType> {
    match pb::CouponType::try_from(value).ok()? {
        pb::CouponType::CartDiscount => Some(CouponType::CartDiscount),
        pb::CouponType::GiftProduct => Some(CouponType::GiftProduct),
        pb::CouponType::Special => Some(CouponType::Special),
        pb::CouponType::Unspecified => None,
    }
}

fn optional(text: &str) -> Option<String> {
    Some(text.trim().to_owned()).filter(|t| !t.is_empty())
}

pub(crate) fn spec_from_proto(spec: Option<&pb::CouponSpec>) -> Result<CouponSpec, Invalid> {
    let Some(s) = spec else {
        return Err(Invalid::field("spec", "is required"));
    };
    let mut found = Vec::new();
    let coupon_type = type_from_proto(s.r#type);
    if coupon_type.is_none() {
        found.push(FieldViolation::new(
            "spec.type",
            "must be CART_DISCOUNT, GIFT_PRODUCT or SPECIAL",
        ));
    }
    let point_value = amount("spec.point_value", &s.point_value)
        .map_err(|v| found.push(v))
        .ok();
    let mut date = |field: &str, text: &str| day(field, text).map_err(|v| found.push(v)).ok();
    let appearance = date("spec.appearance_date", &s.appearance_date);
    let expiration = date("spec.expiration_date", &s.expiration_date);
    let deadline = date("spec.redemption_deadline", &s.redemption_deadline);
    let discount = match s.discount.as_ref().and_then(|d| d.value.as_ref()) {
        None => None,
        Some(pb::discount::Value::Percentage(p)) => amount("spec.discount.percentage", p)
            .map_err(|v| found.push(v))
            .ok()
            .map(Discount::Percentage),
        Some(pb::discount::Value::FixedAmount(f)) => {
            amount("spec.discount.fixed_amount.amount", &f.amount)
                .map_err(|v| found.push(v))
                .ok()
                .map(|amount| Discount::FixedAmount {
                    amount,
                    currency: f.currency.trim().to_owned(),
                })
        }
    };
    let (
        Some(coupon_type),
        Some(point_value),
        Some(appearance_date),
        Some(expiration_date),
        Some(redemption_deadline),
    ) = (coupon_type, point_value, appearance, expiration, deadline)
    else {
        return Err(Invalid(found));
    };
    Invalid::check(found)?;
    Ok(CouponSpec {
        coupon_type,
        name: s.name.trim().to_owned(),
        description: s.description.clone(),
        pool_id: optional(&s.pool_id),
        email: optional(&s.email),
        point_value,
        image_url: s.image_url.trim().to_owned(),
        appearance_date,
        expiration_date,
        redemption_deadline,
        segment_ids: s
            .segment_ids
            .iter()
            .map(|id| id.trim().to_owned())
            .collect(),
        stock: s.stock,
        per_client_limit: s.per_client_limit,
        discount,
    })
}

/// A coupon for the wire.
pub fn coupon_to_proto(c: &Coupon) -> pb::Coupon {
    let s = &c.spec;
    pb::Coupon {
        coupon_id: c.coupon_id.clone(),
        spec: Some(pb::CouponSpec {
            r#type: match s.coupon_type {
                CouponType::CartDiscount => pb::CouponType::CartDiscount,
                CouponType::GiftProduct => pb::CouponType::GiftProduct,
                CouponType::Special => pb::CouponType::Special,
            } as i32,
            name: s.name.clone(),
            description: s.description.clone(),
            pool_id: s.pool_id.clone().unwrap_or_default(),
            email: s.email.clone().unwrap_or_default(),
            point_value: s.point_value.normalize().to_string(),
            image_url: s.image_url.clone(),
            appearance_date: s.appearance_date.to_string(),
            expiration_date: s.expiration_date.to_string(),
            redemption_deadline: s.redemption_deadline.to_string(),
            segment_ids: s.segment_ids.clone(),
            stock: s.stock,
            per_client_limit: s.per_client_limit,
            discount: s.discount.as_ref().map(|d| pb::Discount {
                value: Some(match d {
                    Discount::Percentage(p) => {
                        pb::discount::Value::Percentage(p.normalize().to_string())
                    }
                    Discount::FixedAmount { amount, currency } => {
                        pb::discount::Value::FixedAmount(pb::FixedAmount {
                            amount: amount.normalize().to_string(),
                            currency: currency.clone(),
                        })
                    }
                }),
            }),
        }),
        status: match c.status {
            CouponStatus::Active => pb::CouponStatus::Active,
            CouponStatus::Archived => pb::CouponStatus::Archived,
        } as i32,
        redeemed_count: c.redeemed_count,
        revision: c.revision,
        created_at: Some(timestamp(c.created_at)),
        updated_at: Some(timestamp(c.updated_at)),
    }
}
