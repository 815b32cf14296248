//! A revision per client of what an earn reads about it (its row, the segments it is in, its
//! eligibility intervals), raised by triggers in the writing transaction itself, as the tenant's
//! pricing revision is for what prices a line (migration `m20261202_000009`); segment rates,
//! which price a line too, now raise the pricing revision. On PostgreSQL, `loyalty_earn` checks
//! an earn's basis (`basis`: both revisions the earn was priced at), when it is given one,
//! before it writes: a basis that no longer holds refuses the earn with `LY004` and writes
//! nothing; the service then reads the client again and prices anew.
//!
//! The service prices an earn of a client it read before from what it read, without reading the
//! client first: one round trip fewer per earn. The revisions make that exact: no writer
//! (synchronization, the agreements API, an import, a hand-made fix in SQL) can change what an
//! earn was priced from without one of them moving.
//!
//! The earn function is the one of `m20261205_000014` with the check put before its statement;
//! the unit test below checks that it was. On SQLite an earn's script checks its basis with its
//! first statement, an insert into the view `earn_basis_checks` whose trigger raises
//! (`SQLITE_CONSTRAINT_TRIGGER`) when the basis no longer holds: the check costs no script of
//! its own under the write lock.

use sea_orm_migration::prelude::*;

use crate::m20261202_000009_pricing_revisions::{pricing_trigger_drops, pricing_triggers};
use crate::m20261205_000014_earn_lone_call::earn_function;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261206_000017_earn_basis"
    }
}

/// The tables whose rows name a client and decide how an earn of it is priced.
const CLIENT_TABLES: &[&str] = &["client_segments", "client_eligibility"];

/// Where the earn function's statement begins; the check goes before it.
const EARN_STATEMENT: &str = "BEGIN\n    WITH bal AS (";
const EARN_CHECKED: &str = "BEGIN
    -- An earn priced without reading: what it was priced from must still hold.
    IF p ? 'basis' AND NOT EXISTS (
            SELECT 1 FROM clients
            WHERE tenant_id = p->>'tenant' AND client_id = p->>'client'
                AND revision = (p->'basis'->>'client')::bigint
                AND COALESCE((SELECT revision FROM pricing_revisions
                    WHERE tenant_id = p->>'tenant'), 0) = (p->'basis'->>'pricing')::bigint) THEN
        RAISE EXCEPTION 'what the earn was priced from changed' USING ERRCODE = 'LY004';
    END IF;
    WITH bal AS (";

pub(crate) fn earn_function_checked() -> String {
    earn_function().replacen(EARN_STATEMENT, EARN_CHECKED, 1)
}

/// PostgreSQL: the client row's own changes raise its revision (unless the change sets it);
/// a change to a row naming a client raises that client's.
const POSTGRES_FUNCTIONS: &[&str] = &[
    r"
CREATE FUNCTION raise_own_client_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.revision = OLD.revision THEN
        NEW.revision := OLD.revision + 1;
    END IF;
    RETURN NEW;
END;
$$",
    r"
CREATE FUNCTION raise_client_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        UPDATE clients SET revision = revision + 1
        WHERE tenant_id = OLD.tenant_id AND client_id = OLD.client_id;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        UPDATE clients SET revision = revision + 1
        WHERE tenant_id = NEW.tenant_id AND client_id = NEW.client_id;
    END IF;
    RETURN NULL;
END;
$$",
];

/// SQLite: an insert into the view checks an earn's basis; its trigger writes nothing and
/// raises when the client is not at `client_revision` or the tenant not at `pricing_revision`.
pub(crate) const SQLITE_BASIS_CHECK: &[&str] = &[
    "CREATE VIEW earn_basis_checks AS \
     SELECT NULL AS tenant_id, NULL AS client_id, NULL AS client_revision, \
     NULL AS pricing_revision WHERE 0",
    "CREATE TRIGGER earn_basis_check INSTEAD OF INSERT ON earn_basis_checks BEGIN \
     SELECT RAISE(ABORT, 'what the earn was priced from changed') \
     WHERE NOT EXISTS (SELECT 1 FROM clients WHERE tenant_id = NEW.tenant_id \
     AND client_id = NEW.client_id AND revision = NEW.client_revision) \
     OR COALESCE((SELECT revision FROM pricing_revisions WHERE tenant_id = NEW.tenant_id), 0) \
     <> NEW.pricing_revision; \
     END",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("ALTER TABLE clients ADD COLUMN revision BIGINT NOT NULL DEFAULT 0")
            .await?;
        let backend = manager.get_database_backend();
        for trigger in pricing_triggers(backend, "segment_rates") {
            db.execute_unprepared(&trigger).await?;
        }
        if backend == sea_orm::DbBackend::Postgres {
            for function in POSTGRES_FUNCTIONS {
                db.execute_unprepared(function).await?;
            }
            db.execute_unprepared(
                "CREATE TRIGGER clients_revision BEFORE UPDATE ON clients \
                 FOR EACH ROW EXECUTE FUNCTION raise_own_client_revision()",
            )
            .await?;
            for name in CLIENT_TABLES {
                db.execute_unprepared(&format!(
                    "CREATE TRIGGER {name}_client_revision \
                     AFTER INSERT OR UPDATE OR DELETE ON {name} \
                     FOR EACH ROW EXECUTE FUNCTION raise_client_revision()"
                ))
                .await?;
            }
            db.execute_unprepared(&earn_function_checked()).await?;
            return Ok(());
        }
        // SQLite: a trigger per table and kind of change. The client row's own trigger watches
        // every column but the revision, so that raising it does not fire it again.
        db.execute_unprepared(
            "CREATE TRIGGER clients_revision \
             AFTER UPDATE OF tenant_id, client_id, kind, name, status, has_account, updated_at \
             ON clients BEGIN \
             UPDATE clients SET revision = revision + 1 \
             WHERE tenant_id = NEW.tenant_id AND client_id = NEW.client_id; \
             END",
        )
        .await?;
        let raise = |row: &str| {
            format!(
                "UPDATE clients SET revision = revision + 1 \
                 WHERE tenant_id = {row}.tenant_id AND client_id = {row}.client_id;"
            )
        };
        for name in CLIENT_TABLES {
            for (change, raised) in [
                ("INSERT", raise("NEW")),
                ("UPDATE", format!("{} {}", raise("OLD"), raise("NEW"))),
                ("DELETE", raise("OLD")),
            ] {
                db.execute_unprepared(&format!(
                    "CREATE TRIGGER {name}_client_revision_{kind} AFTER {change} ON {name} \
                     BEGIN {raised} END",
                    kind = change.to_lowercase()
                ))
                .await?;
            }
        }
        for statement in SQLITE_BASIS_CHECK {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        for drop in pricing_trigger_drops(backend, "segment_rates") {
            db.execute_unprepared(&drop).await?;
        }
        if backend == sea_orm::DbBackend::Postgres {
            db.execute_unprepared(&earn_function()).await?;
            for name in CLIENT_TABLES {
                db.execute_unprepared(&format!("DROP TRIGGER {name}_client_revision ON {name}"))
                    .await?;
            }
            db.execute_unprepared("DROP TRIGGER clients_revision ON clients")
                .await?;
            db.execute_unprepared("DROP FUNCTION raise_client_revision()")
                .await?;
            db.execute_unprepared("DROP FUNCTION raise_own_client_revision()")
                .await?;
        } else {
            for kind in ["insert", "update", "delete"] {
                for name in CLIENT_TABLES {
                    db.execute_unprepared(&format!("DROP TRIGGER {name}_client_revision_{kind}"))
                        .await?;
                }
            }
            db.execute_unprepared("DROP TRIGGER clients_revision")
                .await?;
            db.execute_unprepared("DROP VIEW earn_basis_checks").await?;
        }
        db.execute_unprepared("ALTER TABLE clients DROP COLUMN revision")
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earn_function_checks_its_basis_before_it_writes() {
        let function = earn_function_checked();
        assert_eq!(earn_function().matches(EARN_STATEMENT).count(), 1);
        assert!(function.starts_with("\nCREATE OR REPLACE FUNCTION loyalty_earn(p jsonb)"));
        let checked = function.find("ERRCODE = 'LY004'").expect("the check");
        let written = function.find("INSERT INTO").expect("the writes");
        assert!(
            checked < written,
            "the basis is checked before anything is written"
        );
        assert!(!function.contains("pg_get_serial_sequence"), "m14's text");
    }
}
