//! SQLite: one way for a write's script to refuse itself under the write lock, with no script of
//! its own for the check (each script is a hand-off to the connection's worker thread and back).
//!
//! An insert into the view `write_refusals` of a refusal aborts the statement, and with it the
//! script, with `SQLITE_CONSTRAINT_TRIGGER` and the refusal as the error's message; an insert of
//! NULL does nothing. A refusal begins with its code, the SQLSTATE our PostgreSQL functions give
//! the same refusal (`LY001` not enough points, `LY002` the client's limit, `LY003` out of
//! stock, `LY004` what the write was planned from changed), then what it says. The script
//! computes the refusal (a `CASE` over what it reads), so the checks stay in the code that plans
//! the write; the trigger only raises.
//!
//! It replaces the earn's own check, the view `earn_basis_checks` of `m20261206_000017`, which
//! is dropped. PostgreSQL: nothing (its functions check and raise themselves).

use sea_orm_migration::prelude::*;

use crate::m20261206_000017_earn_basis::SQLITE_BASIS_CHECK;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261206_000018_write_refusals"
    }
}

const SQLITE_REFUSALS: &[&str] = &[
    "CREATE VIEW write_refusals AS SELECT NULL AS refusal WHERE 0",
    "CREATE TRIGGER write_refusal INSTEAD OF INSERT ON write_refusals \
     WHEN NEW.refusal IS NOT NULL BEGIN SELECT RAISE(ABORT, NEW.refusal); END",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm::DbBackend::Sqlite {
            return Ok(());
        }
        let db = manager.get_connection();
        for statement in SQLITE_REFUSALS {
            db.execute_unprepared(statement).await?;
        }
        // Its trigger goes with it.
        db.execute_unprepared("DROP VIEW earn_basis_checks").await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm::DbBackend::Sqlite {
            return Ok(());
        }
        let db = manager.get_connection();
        for statement in SQLITE_BASIS_CHECK {
            db.execute_unprepared(statement).await?;
        }
        db.execute_unprepared("DROP VIEW write_refusals").await?;
        Ok(())
    }
}
