//! SeaORM implementation of [`CatalogRepository`]: products with labels and manufacturer, the
//! category tree with its ancestor closure, and orders.

use std::collections::HashMap;

use async_trait::async_trait;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder,
};

use super::CatalogRepository;
use super::entities::{categories, category_ancestors, orders, product_labels, products};
use super::error::{RepoError, classify};
use crate::domain::clock::{Clock, SystemClock};
use crate::domain::directory::{CategoryRecord, OrderRecord, ProductRecord, category_closure};
use crate::domain::rules::ProductFacts;
use crate::domain::tenant::TenantId;

#[derive(Debug, Clone)]
pub struct SeaCatalogRepository {
    db: DatabaseConnection,
}

impl SeaCatalogRepository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

#[async_trait]
impl CatalogRepository for SeaCatalogRepository {
    async fn save_product(
        &self,
        tenant: &TenantId,
        product: &ProductRecord,
    ) -> Result<(), RepoError> {
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        let done = save_product_in(&txn, tenant, product).await?;
        txn.commit().await.map_err(classify)?;
        Ok(done)
    }

    async fn save_category(
        &self,
        tenant: &TenantId,
        category: &CategoryRecord,
    ) -> Result<(), RepoError> {
        let txn = crate::persistence::db::begin_write(&self.db).await?;
        save_category_in(&txn, tenant, category).await?;
        txn.commit().await.map_err(classify)?;
        Ok(())
    }

    async fn save_order(&self, tenant: &TenantId, order: &OrderRecord) -> Result<(), RepoError> {
        save_order_in(&self.db, tenant, order).await
    }

    async fn product_facts(
        &self,
        tenant: &TenantId,
        product_ids: &[String],
    ) -> Result<HashMap<String, ProductFacts>, RepoError> {
        let mut facts: HashMap<String, ProductFacts> = HashMap::new();
        for chunk in product_ids.chunks(super::IN_LIST_CHUNK) {
            let rows = products::Entity::find()
                .filter(products::Column::TenantId.eq(tenant.as_str()))
                .filter(products::Column::ProductId.is_in(chunk.iter().map(String::as_str)))
                .all(&self.db)
                .await
                .map_err(classify)?;
            let leaves: Vec<String> = rows.iter().filter_map(|p| p.category_id.clone()).collect();
            let (ancestors, labels) =
                tokio::try_join!(self.ancestors(tenant, &leaves), self.labels(tenant, chunk))?;
            for row in rows {
                let categories = row
                    .category_id
                    .as_ref()
                    .and_then(|c| ancestors.get(c).cloned())
                    .unwrap_or_default();
                facts.insert(
                    row.product_id.clone(),
                    ProductFacts {
                        product_id: row.product_id,
                        categories,
                        label_ids: Vec::new(),
                        manufacturer_id: row.manufacturer_id,
                    },
                );
            }
            for label in labels {
                if let Some(f) = facts.get_mut(&label.product_id) {
                    f.label_ids.push(label.label_id);
                }
            }
        }
        Ok(facts)
    }

    async fn orders(
        &self,
        tenant: &TenantId,
        order_numbers: &[String],
    ) -> Result<HashMap<String, OrderRecord>, RepoError> {
        let mut found = HashMap::new();
        for chunk in order_numbers.chunks(super::IN_LIST_CHUNK) {
            let rows = orders::Entity::find()
                .filter(orders::Column::TenantId.eq(tenant.as_str()))
                .filter(orders::Column::OrderNumber.is_in(chunk.iter().map(String::as_str)))
                .all(&self.db)
                .await
                .map_err(classify)?;
            for r in rows {
                found.insert(
                    r.order_number.clone(),
                    OrderRecord {
                        order_number: r.order_number,
                        order_id: r.order_id,
                        client_id: r.client_id,
                        order_date: r.order_date.to_utc(),
                        status: r.status,
                        removed: r.removed_at.is_some(),
                        updated_at: r.updated_at.to_utc(),
                    },
                );
            }
        }
        Ok(found)
    }
}

impl SeaCatalogRepository {
    /// The products' labels, by label id.
    async fn labels(
        &self,
        tenant: &TenantId,
        product_ids: &[String],
    ) -> Result<Vec<product_labels::Model>, RepoError> {
        product_labels::Entity::find()
            .filter(product_labels::Column::TenantId.eq(tenant.as_str()))
            .filter(product_labels::Column::ProductId.is_in(product_ids.iter().map(String::as_str)))
            .order_by_asc(product_labels::Column::LabelId)
            .all(&self.db)
            .await
            .map_err(classify)
    }

    /// Each category's ancestors-or-self, nearest first.
    async fn ancestors(
        &self,
        tenant: &TenantId,
        leaves: &[String],
    ) -> Result<HashMap<String, Vec<String>>, RepoError> {
        if leaves.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = category_ancestors::Entity::find()
            .filter(category_ancestors::Column::TenantId.eq(tenant.as_str()))
            .filter(category_ancestors::Column::CategoryId.is_in(leaves.iter().map(String::as_str)))
            .order_by_asc(category_ancestors::Column::CategoryId)
            .order_by_asc(category_ancestors::Column::Depth)
            .all(&self.db)
            .await
            .map_err(classify)?;
        let mut chains: HashMap<String, Vec<String>> = HashMap::new();
        for row in rows {
            chains
                .entry(row.category_id)
                .or_default()
                .push(row.ancestor_id);
        }
        // A leaf the tree does not know yet still matches rules on itself.
        for leaf in leaves {
            chains
                .entry(leaf.clone())
                .or_insert_with(|| vec![leaf.clone()]);
        }
        Ok(chains)
    }
}

pub(crate) async fn save_product_in(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    product: &ProductRecord,
) -> Result<(), RepoError> {
    let row = products::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        product_id: Set(product.product_id.clone()),
        name: Set(product.name.clone()),
        sku: Set(product.sku.clone()),
        category_id: Set(product.category_id.clone()),
        manufacturer_id: Set(product.manufacturer_id.clone()),
        is_ecommerce: Set(product.is_ecommerce),
        active: Set(product.active),
        removed_at: Set(None),
        updated_at: Set(product.updated_at.fixed_offset()),
    };
    products::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([products::Column::TenantId, products::Column::ProductId])
                .update_columns([
                    products::Column::Name,
                    products::Column::Sku,
                    products::Column::CategoryId,
                    products::Column::ManufacturerId,
                    products::Column::IsEcommerce,
                    products::Column::Active,
                    products::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec(conn)
        .await
        .map_err(classify)?;
    product_labels::Entity::delete_many()
        .filter(product_labels::Column::TenantId.eq(tenant.as_str()))
        .filter(product_labels::Column::ProductId.eq(product.product_id.as_str()))
        .exec(conn)
        .await
        .map_err(classify)?;
    if !product.label_ids.is_empty() {
        let labels = product
            .label_ids
            .iter()
            .map(|label| product_labels::ActiveModel {
                tenant_id: Set(tenant.as_str().to_owned()),
                product_id: Set(product.product_id.clone()),
                label_id: Set(label.clone()),
            });
        product_labels::Entity::insert_many(labels)
            .exec(conn)
            .await
            .map_err(classify)?;
    }
    Ok(())
}

pub(crate) async fn save_category_in(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    category: &CategoryRecord,
) -> Result<bool, RepoError> {
    let stored =
        categories::Entity::find_by_id((tenant.as_str().to_owned(), category.category_id.clone()))
            .one(conn)
            .await
            .map_err(classify)?;
    if stored.is_some_and(|c| c.parent_id == category.parent_id && c.name == category.name) {
        // Unchanged: the tree and its closure stay as they are.
        return Ok(false);
    }
    let row = categories::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        category_id: Set(category.category_id.clone()),
        parent_id: Set(category.parent_id.clone()),
        name: Set(category.name.clone()),
        updated_at: Set(SystemClock.now().fixed_offset()),
    };
    categories::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([categories::Column::TenantId, categories::Column::CategoryId])
                .update_columns([
                    categories::Column::ParentId,
                    categories::Column::Name,
                    categories::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec(conn)
        .await
        .map_err(classify)?;
    // A move changes the ancestors of a whole subtree: rebuild the tenant's closure.
    let tree: HashMap<String, Option<String>> = categories::Entity::find()
        .filter(categories::Column::TenantId.eq(tenant.as_str()))
        .all(conn)
        .await
        .map_err(classify)?
        .into_iter()
        .map(|c| (c.category_id, c.parent_id))
        .collect();
    category_ancestors::Entity::delete_many()
        .filter(category_ancestors::Column::TenantId.eq(tenant.as_str()))
        .exec(conn)
        .await
        .map_err(classify)?;
    let closure = category_closure(&tree);
    for chunk in closure.chunks(super::IN_LIST_CHUNK) {
        let rows =
            chunk.iter().map(
                |(category_id, ancestor_id, depth)| category_ancestors::ActiveModel {
                    tenant_id: Set(tenant.as_str().to_owned()),
                    category_id: Set(category_id.clone()),
                    ancestor_id: Set(ancestor_id.clone()),
                    depth: Set(i32::try_from(*depth).unwrap_or(i32::MAX)),
                },
            );
        category_ancestors::Entity::insert_many(rows)
            .exec(conn)
            .await
            .map_err(classify)?;
    }
    Ok(true)
}

pub(crate) async fn save_order_in(
    conn: &impl ConnectionTrait,
    tenant: &TenantId,
    order: &OrderRecord,
) -> Result<(), RepoError> {
    let row = orders::ActiveModel {
        tenant_id: Set(tenant.as_str().to_owned()),
        order_number: Set(order.order_number.clone()),
        order_id: Set(order.order_id.clone()),
        client_id: Set(order.client_id.clone()),
        order_date: Set(order.order_date.fixed_offset()),
        status: Set(order.status.clone()),
        removed_at: Set(order.removed.then(|| order.updated_at.fixed_offset())),
        updated_at: Set(order.updated_at.fixed_offset()),
    };
    orders::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([orders::Column::TenantId, orders::Column::OrderNumber])
                .update_columns([
                    orders::Column::OrderId,
                    orders::Column::ClientId,
                    orders::Column::OrderDate,
                    orders::Column::Status,
                    orders::Column::RemovedAt,
                    orders::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec(conn)
        .await
        .map_err(classify)?;
    Ok(())
}
