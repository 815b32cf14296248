//! PostgreSQL only: a lone earn is written without a subtransaction, and `loyalty_earn` names its
//! sequence instead of looking it up at every call.
//!
//! `loyalty_earn_batch` wraps each earn in a subtransaction (an `EXCEPTION` block) so that one
//! that fails leaves the others of its batch written. An earn that goes alone has no others: what
//! fails it may fail the call, which undoes it, and the caller reads the same error from the
//! call (`classify` and `classify_code` give a SQLSTATE the same meaning) as it would have read
//! from the item's row. Its subtransaction cost about 0.035 ms per lone earn (docs/PERFORMANCE.md).
//! `pg_get_serial_sequence`, called twice per earn, was 1.8 % of the earn function's CPU.
//!
//! Both functions are the earlier ones with those two changes made to their text; the unit tests
//! below check that each change was made.

use sea_orm_migration::prelude::*;

use crate::m20261202_000011_earn_function::EARN_BATCH_FUNCTION;
use crate::m20261202_000012_earn_function_columns::EARN_FUNCTION_BY_COLUMN;
use crate::or_replace;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261205_000014_earn_lone_call"
    }
}

const SEQUENCE_LOOKED_UP: &str = "nextval(pg_get_serial_sequence('ledger_events', 'event_id'))";
const SEQUENCE_NAMED: &str = "nextval('ledger_events_event_id_seq')";

/// Where the batch function's loop begins; the lone branch goes before it.
const LOOP_START: &str = "BEGIN\n    FOR v_item IN";
const LONE_BRANCH: &str = "BEGIN
    -- A lone earn: no subtransaction; what fails it fails the call.
    IF jsonb_array_length(p_items) = 1 THEN
        item := 1;
        event_id := loyalty_earn(p_items->0);
        RETURN NEXT;
        RETURN;
    END IF;
    FOR v_item IN";

pub(crate) fn earn_function() -> String {
    EARN_FUNCTION_BY_COLUMN.replace(SEQUENCE_LOOKED_UP, SEQUENCE_NAMED)
}

fn earn_batch_function() -> String {
    or_replace(EARN_BATCH_FUNCTION).replacen(LOOP_START, LONE_BRANCH, 1)
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres_only(manager, &[&earn_function(), &earn_batch_function()]).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres_only(
            manager,
            &[EARN_FUNCTION_BY_COLUMN, &or_replace(EARN_BATCH_FUNCTION)],
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earn_function_names_its_sequence_at_both_draws() {
        let function = earn_function();
        assert_eq!(
            EARN_FUNCTION_BY_COLUMN.matches(SEQUENCE_LOOKED_UP).count(),
            2
        );
        assert!(!function.contains("pg_get_serial_sequence"));
        assert_eq!(function.matches(SEQUENCE_NAMED).count(), 2);
        assert!(function.starts_with("\nCREATE OR REPLACE FUNCTION loyalty_earn(p jsonb)"));
    }

    #[test]
    fn the_batch_function_writes_a_lone_earn_before_its_loop() {
        let function = earn_batch_function();
        assert!(function.starts_with("\nCREATE OR REPLACE FUNCTION loyalty_earn_batch("));
        let lone = function
            .find("IF jsonb_array_length(p_items) = 1")
            .expect("lone branch");
        let looped = function.find("FOR v_item IN").expect("the loop");
        assert!(lone < looped);
        assert_eq!(function.matches("EXCEPTION WHEN OTHERS").count(), 1);
    }
}
