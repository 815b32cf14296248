//! A revision per tenant of everything that prices a line (products, their categories and
//! labels, base points, multiplier rules with their targets and segments), raised by triggers on
//! those tables in the writing transaction itself. A cache of pricing inputs is exact when it is
//! served only for the revision it was read at: no writer (synchronization, the rules API, an
//! import, a hand-made fix in SQL) can change them without the revision moving.

use sea_orm_migration::prelude::*;

use crate::columns::{big, create_all, drop_all, table, tenant};

pub struct Migration;

/// The tables that price a line.
const PRICING_TABLES: &[&str] = &[
    "products",
    "categories",
    "category_ancestors",
    "product_labels",
    "base_points",
    "multiplier_rules",
    "multiplier_rule_targets",
    "multiplier_rule_segments",
];

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261202_000009_pricing_revisions"
    }
}

/// PostgreSQL: one function; a row trigger per table (each row's tenant is raised).
const POSTGRES_FUNCTION: &str = r"
CREATE FUNCTION raise_pricing_revision() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed_tenant text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed_tenant := OLD.tenant_id;
    ELSE
        changed_tenant := NEW.tenant_id;
    END IF;
    INSERT INTO pricing_revisions (tenant_id, revision) VALUES (changed_tenant, 1)
    ON CONFLICT (tenant_id) DO UPDATE SET revision = pricing_revisions.revision + 1;
    RETURN NULL;
END;
$$";

/// The triggers that raise the tenant's pricing revision at every change to a row of the table
/// `name`: on PostgreSQL a row trigger calling `raise_pricing_revision()`, on SQLite a trigger
/// per kind of change.
pub(crate) fn pricing_triggers(backend: sea_orm::DbBackend, name: &str) -> Vec<String> {
    if backend == sea_orm::DbBackend::Postgres {
        return vec![format!(
            "CREATE TRIGGER {name}_pricing_revision \
             AFTER INSERT OR UPDATE OR DELETE ON {name} \
             FOR EACH ROW EXECUTE FUNCTION raise_pricing_revision()"
        )];
    }
    [("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")]
        .into_iter()
        .map(|(change, row)| {
            format!(
                "CREATE TRIGGER {name}_pricing_revision_{kind} AFTER {change} ON {name} \
                 BEGIN \
                 INSERT INTO pricing_revisions (tenant_id, revision) \
                 VALUES ({row}.tenant_id, 1) \
                 ON CONFLICT (tenant_id) DO UPDATE SET revision = revision + 1; \
                 END",
                kind = change.to_lowercase()
            )
        })
        .collect()
}

/// What drops [`pricing_triggers`] of the table `name`.
pub(crate) fn pricing_trigger_drops(backend: sea_orm::DbBackend, name: &str) -> Vec<String> {
    if backend == sea_orm::DbBackend::Postgres {
        return vec![format!("DROP TRIGGER {name}_pricing_revision ON {name}")];
    }
    ["insert", "update", "delete"]
        .into_iter()
        .map(|kind| format!("DROP TRIGGER {name}_pricing_revision_{kind}"))
        .collect()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_all(
            manager,
            vec![table(
                "pricing_revisions",
                vec![tenant(), big("revision")],
                &["tenant_id"],
            )],
            Vec::new(),
        )
        .await?;
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        if backend == sea_orm::DbBackend::Postgres {
            db.execute_unprepared(POSTGRES_FUNCTION).await?;
        }
        for name in PRICING_TABLES {
            for trigger in pricing_triggers(backend, name) {
                db.execute_unprepared(&trigger).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        for name in PRICING_TABLES {
            for drop in pricing_trigger_drops(backend, name) {
                db.execute_unprepared(&drop).await?;
            }
        }
        if backend == sea_orm::DbBackend::Postgres {
            db.execute_unprepared("DROP FUNCTION raise_pricing_revision()")
                .await?;
        }
        drop_all(manager, &["pricing_revisions"]).await
    }
}
