//! The points rules: effective-dated base points per product, versioned multiplier rules with
//! their targets (indexed by target, so a line's rules are found without scanning all rules) and
//! segments, and effective-dated segment rates.

use sea_orm_migration::prelude::*;

use crate::columns::{
    amount, create_all, day, drop_all, id, index, instant, int, label, opt_day, opt_instant,
    opt_label, table, tenant, text,
};

pub struct Migration;

const TABLES: &[&str] = &[
    "base_points",
    "multiplier_rules",
    "multiplier_rule_targets",
    "multiplier_rule_segments",
    "segment_rates",
];

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261122_000005_rules"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let tables = vec![
            table(
                "base_points",
                vec![
                    tenant(),
                    id("product_id"),
                    day("effective_from"),
                    amount("points"),
                    id("request_id"),
                    instant("recorded_at"),
                ],
                &["tenant_id", "product_id", "effective_from"],
            ),
            table(
                "multiplier_rules",
                vec![
                    tenant(),
                    id("rule_id"),
                    int("version"),
                    // DRAFT, PUBLISHED or ARCHIVED.
                    label("status"),
                    text("name"),
                    text("description"),
                    amount("factor"),
                    day("valid_from"),
                    opt_day("valid_until"),
                    // ONLINE, OFFLINE, or NULL for both.
                    opt_label("channel"),
                    instant("created_at"),
                    opt_instant("published_at"),
                    opt_instant("archived_at"),
                ],
                &["tenant_id", "rule_id", "version"],
            ),
            table(
                "multiplier_rule_targets",
                vec![
                    tenant(),
                    id("rule_id"),
                    int("version"),
                    // PRODUCT, CATEGORY, LABEL or MANUFACTURER.
                    label("target_kind"),
                    id("target_id"),
                ],
                &[
                    "tenant_id",
                    "rule_id",
                    "version",
                    "target_kind",
                    "target_id",
                ],
            ),
            table(
                "multiplier_rule_segments",
                vec![tenant(), id("rule_id"), int("version"), id("segment_id")],
                &["tenant_id", "rule_id", "version", "segment_id"],
            ),
            table(
                "segment_rates",
                vec![
                    tenant(),
                    id("segment_id"),
                    day("effective_from"),
                    amount("rate"),
                    id("request_id"),
                    instant("recorded_at"),
                ],
                &["tenant_id", "segment_id", "effective_from"],
            ),
        ];
        let indexes = vec![
            index(
                "multiplier_rules",
                "ix_multiplier_rules_status",
                &["tenant_id", "status"],
                false,
            ),
            index(
                "multiplier_rule_targets",
                "ix_multiplier_rule_targets_target",
                &["tenant_id", "target_kind", "target_id"],
                false,
            ),
        ];
        create_all(manager, tables, indexes).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, TABLES).await
    }
}
