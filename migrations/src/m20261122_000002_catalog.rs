//! What synchronization copies from ONe core: products with categories (a closure table, so a
//! rule on a category reaches its sub-categories by an index probe), labels and manufacturers;
//! clients, users, segments and memberships; orders (the online order numbers); coupon pools.

use sea_orm_migration::prelude::*;

use crate::columns::{
    create_all, drop_all, flag, id, index, instant, int, label, opt_id, opt_instant, table, tenant,
    text,
};

pub struct Migration;

const TABLES: &[&str] = &[
    "categories",
    "category_ancestors",
    "manufacturers",
    "products",
    "product_labels",
    "segments",
    "clients",
    "client_segments",
    "users",
    "orders",
    "coupon_pools",
];

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261122_000002_catalog"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let tables = vec![
            table(
                "categories",
                vec![
                    tenant(),
                    id("category_id"),
                    opt_id("parent_id"),
                    text("name"),
                    instant("updated_at"),
                ],
                &["tenant_id", "category_id"],
            ),
            // Every (category, ancestor-or-self) pair.
            table(
                "category_ancestors",
                vec![tenant(), id("category_id"), id("ancestor_id"), int("depth")],
                &["tenant_id", "category_id", "ancestor_id"],
            ),
            table(
                "manufacturers",
                vec![tenant(), id("manufacturer_id"), text("name")],
                &["tenant_id", "manufacturer_id"],
            ),
            table(
                "products",
                vec![
                    tenant(),
                    id("product_id"),
                    text("name"),
                    text("sku"),
                    opt_id("category_id"),
                    opt_id("manufacturer_id"),
                    flag("is_ecommerce", true),
                    flag("active", true),
                    opt_instant("removed_at"),
                    instant("updated_at"),
                ],
                &["tenant_id", "product_id"],
            ),
            table(
                "product_labels",
                vec![tenant(), id("product_id"), id("label_id")],
                &["tenant_id", "product_id", "label_id"],
            ),
            table(
                "segments",
                vec![
                    tenant(),
                    id("segment_id"),
                    text("name"),
                    text("description"),
                    opt_instant("removed_at"),
                    instant("updated_at"),
                ],
                &["tenant_id", "segment_id"],
            ),
            table(
                "clients",
                vec![
                    tenant(),
                    // "org:<uuid>" or "ind:<uuid>".
                    id("client_id"),
                    // ORGANISATION or INDIVIDUAL, from the id's prefix.
                    label("kind"),
                    text("name"),
                    label("status"),
                    flag("has_account", true),
                    instant("updated_at"),
                ],
                &["tenant_id", "client_id"],
            ),
            table(
                "client_segments",
                vec![tenant(), id("client_id"), id("segment_id")],
                &["tenant_id", "client_id", "segment_id"],
            ),
            table(
                "users",
                vec![
                    tenant(),
                    id("user_id"),
                    id("client_id"),
                    flag("active", true),
                    // Consent stops counting from this instant.
                    opt_instant("deactivated_at"),
                    // GDPR: personal data removed, ids kept as pseudonyms.
                    flag("anonymized", false),
                    instant("updated_at"),
                ],
                &["tenant_id", "user_id"],
            ),
            table(
                "orders",
                vec![
                    tenant(),
                    id("order_number"),
                    id("order_id"),
                    id("client_id"),
                    instant("order_date"),
                    label("status"),
                    // A REMOVED order stops counting as online.
                    opt_instant("removed_at"),
                    instant("updated_at"),
                ],
                &["tenant_id", "order_number"],
            ),
            table(
                "coupon_pools",
                vec![
                    tenant(),
                    id("pool_id"),
                    text("name"),
                    text("campaign_id"),
                    text("campaign_name"),
                    flag("active", true),
                    instant("updated_at"),
                ],
                &["tenant_id", "pool_id"],
            ),
        ];
        let indexes = vec![
            index(
                "category_ancestors",
                "ix_category_ancestors_ancestor",
                &["tenant_id", "ancestor_id"],
                false,
            ),
            index(
                "products",
                "ix_products_category",
                &["tenant_id", "category_id"],
                false,
            ),
            index(
                "products",
                "ix_products_manufacturer",
                &["tenant_id", "manufacturer_id"],
                false,
            ),
            index(
                "product_labels",
                "ix_product_labels_label",
                &["tenant_id", "label_id"],
                false,
            ),
            index(
                "client_segments",
                "ix_client_segments_segment",
                &["tenant_id", "segment_id"],
                false,
            ),
            index(
                "users",
                "ix_users_client",
                &["tenant_id", "client_id"],
                false,
            ),
            index(
                "orders",
                "ux_orders_order_id",
                &["tenant_id", "order_id"],
                true,
            ),
            index(
                "orders",
                "ix_orders_client",
                &["tenant_id", "client_id"],
                false,
            ),
        ];
        create_all(manager, tables, indexes).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, TABLES).await
    }
}
