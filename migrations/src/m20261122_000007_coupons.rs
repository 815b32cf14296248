//! The reward catalogue and what is bought from it: coupons (unique name per tenant), their
//! segment restrictions, redemptions (one per request id, unique code per tenant) and basket
//! reservations (points as credit).

use sea_orm_migration::prelude::*;

use crate::columns::{
    amount, create_all, day, drop_all, id, index, instant, int, label, opt_big, opt_id,
    opt_instant, opt_int, opt_label, opt_text, table, tenant, text,
};

pub struct Migration;

const TABLES: &[&str] = &["coupons", "coupon_segments", "redemptions", "reservations"];

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261122_000007_coupons"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let tables = vec![
            table(
                "coupons",
                vec![
                    tenant(),
                    id("coupon_id"),
                    id("name"),
                    // CART_DISCOUNT, GIFT_PRODUCT or SPECIAL.
                    label("coupon_type"),
                    text("description"),
                    opt_id("pool_id"),
                    opt_text("email"),
                    amount("point_value"),
                    text("image_url"),
                    day("appearance_date"),
                    day("expiration_date"),
                    day("redemption_deadline"),
                    opt_int("stock"),
                    opt_int("per_client_limit"),
                    int("redeemed_count"),
                    // FIXED_AMOUNT or PERCENTAGE.
                    opt_label("discount_kind"),
                    opt_text("discount_value"),
                    opt_label("discount_currency"),
                    // ACTIVE or ARCHIVED.
                    label("status"),
                    int("revision"),
                    instant("created_at"),
                    instant("updated_at"),
                ],
                &["tenant_id", "coupon_id"],
            ),
            table(
                "coupon_segments",
                vec![tenant(), id("coupon_id"), id("segment_id")],
                &["tenant_id", "coupon_id", "segment_id"],
            ),
            table(
                "redemptions",
                vec![
                    tenant(),
                    id("redemption_id"),
                    id("request_id"),
                    id("client_id"),
                    opt_id("user_id"),
                    id("coupon_id"),
                    text("coupon_name"),
                    amount("points"),
                    // PENDING, ISSUED, FAILED or CANCELLED.
                    label("status"),
                    opt_id("code"),
                    day("valid_until"),
                    opt_big("use_event_id"),
                    opt_big("refund_event_id"),
                    opt_text("reason"),
                    instant("created_at"),
                    instant("updated_at"),
                ],
                &["tenant_id", "redemption_id"],
            ),
            table(
                "reservations",
                vec![
                    tenant(),
                    id("reservation_id"),
                    id("request_id"),
                    id("client_id"),
                    opt_id("user_id"),
                    id("basket_id"),
                    amount("points"),
                    // HELD, COMMITTED, RELEASED or EXPIRED.
                    label("status"),
                    instant("expires_at"),
                    opt_id("order_number"),
                    opt_big("use_event_id"),
                    instant("created_at"),
                    opt_instant("settled_at"),
                ],
                &["tenant_id", "reservation_id"],
            ),
        ];
        let indexes = vec![
            index("coupons", "ux_coupons_name", &["tenant_id", "name"], true),
            index(
                "redemptions",
                "ux_redemptions_request",
                &["tenant_id", "request_id"],
                true,
            ),
            index(
                "redemptions",
                "ux_redemptions_code",
                &["tenant_id", "code"],
                true,
            ),
            index(
                "redemptions",
                "ix_redemptions_client",
                &["tenant_id", "client_id", "created_at"],
                false,
            ),
            index(
                "redemptions",
                "ix_redemptions_coupon",
                &["tenant_id", "coupon_id", "client_id"],
                false,
            ),
            index(
                "reservations",
                "ux_reservations_request",
                &["tenant_id", "request_id"],
                true,
            ),
            index(
                "reservations",
                "ix_reservations_expiry",
                &["status", "expires_at"],
                false,
            ),
        ];
        create_all(manager, tables, indexes).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, TABLES).await
    }
}
