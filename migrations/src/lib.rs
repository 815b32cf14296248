//! The ONe Loyalty database schema as SeaORM migrations, one file per aggregate. The same meaning
//! on SQLite and PostgreSQL: tenant id in every key, points as `BIGINT` minor units at a fixed
//! storage scale of 4 (exact on both backends), instants as timestamps with time zone, calendar
//! days as dates. Shipped migrations are never edited; a change is a new migration.

// A migration is a declarative list of tables; splitting it would hide the schema.
#![allow(clippy::too_many_lines)]

pub use sea_orm_migration::prelude::*;

mod columns;
mod m20261122_000001_tenants;
mod m20261122_000002_catalog;
mod m20261122_000003_documents;
mod m20261122_000004_agreements;
mod m20261122_000005_rules;
mod m20261122_000006_ledger;
mod m20261122_000007_coupons;
mod m20261122_000008_sync_and_jobs;
mod m20261202_000009_pricing_revisions;
mod m20261202_000010_redeem_function;
mod m20261202_000011_earn_function;
mod m20261202_000012_earn_function_columns;
mod m20261205_000013_redeem_function_statements;
mod m20261205_000014_earn_lone_call;
mod m20261205_000015_live_lot_indexes;
mod m20261206_000016_redeem_checks_its_plan;
mod m20261206_000017_earn_basis;
mod m20261206_000018_write_refusals;
mod m20261206_000019_redeem_checks_its_user;
mod m20261207_000020_lines_in_their_rows;
mod m20261207_000021_optional_keys_indexed_where_set;
mod m20261207_000022_sqlite_ids_without_autoincrement;

/// Runs `statements` in order on PostgreSQL (functions that only its write paths call); on SQLite
/// there is nothing to do.
async fn on_postgres_only(manager: &SchemaManager<'_>, statements: &[&str]) -> Result<(), DbErr> {
    if manager.get_database_backend() == sea_orm::DbBackend::Postgres {
        run_in_order(manager, statements).await?;
    }
    Ok(())
}

/// Runs `statements` in order, on either backend.
async fn run_in_order(manager: &SchemaManager<'_>, statements: &[&str]) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for statement in statements {
        db.execute_unprepared(statement).await?;
    }
    Ok(())
}

/// `function`'s `CREATE FUNCTION` as `CREATE OR REPLACE FUNCTION`: a later migration installs an
/// earlier body again (in its `down`) or an edited one over it.
fn or_replace(function: &str) -> String {
    function.replacen("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
}

/// Every migration, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_tenants::Migration),
            Box::new(m20261122_000002_catalog::Migration),
            Box::new(m20261122_000003_documents::Migration),
            Box::new(m20261122_000004_agreements::Migration),
            Box::new(m20261122_000005_rules::Migration),
            Box::new(m20261122_000006_ledger::Migration),
            Box::new(m20261122_000007_coupons::Migration),
            Box::new(m20261122_000008_sync_and_jobs::Migration),
            Box::new(m20261202_000009_pricing_revisions::Migration),
            Box::new(m20261202_000010_redeem_function::Migration),
            Box::new(m20261202_000011_earn_function::Migration),
            Box::new(m20261202_000012_earn_function_columns::Migration),
            Box::new(m20261205_000013_redeem_function_statements::Migration),
            Box::new(m20261205_000014_earn_lone_call::Migration),
            Box::new(m20261205_000015_live_lot_indexes::Migration),
            Box::new(m20261206_000016_redeem_checks_its_plan::Migration),
            Box::new(m20261206_000017_earn_basis::Migration),
            Box::new(m20261206_000018_write_refusals::Migration),
            Box::new(m20261206_000019_redeem_checks_its_user::Migration),
            Box::new(m20261207_000020_lines_in_their_rows::Migration),
            Box::new(m20261207_000021_optional_keys_indexed_where_set::Migration),
            Box::new(m20261207_000022_sqlite_ids_without_autoincrement::Migration),
        ]
    }
}
