//! PostgreSQL only: `loyalty_redeem_batch` checks, under its locks, that what a redemption was
//! planned from still holds: the coupon at the revision the plan was made from (`revision`), and,
//! for a plan made without reading the client (`client_unread`), that the client exists. Either
//! failing refuses the item with `LY004` and writes nothing for it; the service then reads both
//! again and plans anew.
//!
//! The service plans a redemption of a coupon that no segment restricts from the coupon as it
//! last read it, without reading the client first: one round trip fewer per redemption. The
//! check also closes the window in which a coupon edited between the read and the write was
//! redeemed on its old terms.
//!
//! The function is the earlier one with those changes made to its text; the unit test below
//! checks that each was made.

use sea_orm_migration::prelude::*;

use crate::m20261205_000013_redeem_function_statements::REDEEM_BATCH_FUNCTION_FEWER_STATEMENTS;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261206_000016_redeem_checks_its_plan"
    }
}

/// Each change: the text it replaces, what replaces it, and how many times it occurs.
const CHANGES: &[(&str, &str, usize)] = &[
    (
        "    v_redeemed bigint;\n",
        "    v_redeemed bigint;\n    v_revision int;\n",
        1,
    ),
    // The lone redemption's read (with its lock), then a batch's (locked already).
    (
        "SELECT redeemed_count INTO v_redeemed FROM coupons",
        "SELECT redeemed_count, revision INTO v_redeemed, v_revision FROM coupons",
        2,
    ),
    (
        "        IF (p->>'limit') IS NOT NULL THEN\n",
        "        IF (p->>'client_unread') IS NOT NULL AND NOT EXISTS (SELECT 1 FROM clients
                WHERE tenant_id = v_tenant AND client_id = v_client) THEN
            failed_state := 'LY004';
            failed_message := 'the client is not known';
        ELSIF (p->>'revision') IS NOT NULL
                AND v_revision IS DISTINCT FROM (p->>'revision')::int THEN
            failed_state := 'LY004';
            failed_message := 'the coupon changed';
        END IF;
        IF failed_state IS NULL AND (p->>'limit') IS NOT NULL THEN\n",
        1,
    ),
];

pub(crate) fn redeem_batch_function() -> String {
    CHANGES.iter().fold(
        REDEEM_BATCH_FUNCTION_FEWER_STATEMENTS.to_owned(),
        |text, (from, to, _)| text.replace(from, to),
    )
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres_only(manager, &[&redeem_batch_function()]).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres_only(manager, &[REDEEM_BATCH_FUNCTION_FEWER_STATEMENTS]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_is_made_where_the_earlier_function_has_its_text() {
        for (from, to, times) in CHANGES {
            assert_eq!(
                REDEEM_BATCH_FUNCTION_FEWER_STATEMENTS.matches(from).count(),
                *times,
                "{from}"
            );
            assert_eq!(redeem_batch_function().matches(to).count(), *times, "{to}");
        }
        let function = redeem_batch_function();
        let checked = function.find("'the coupon changed'").expect("the check");
        let limit = function
            .find("(p->>'limit') IS NOT NULL")
            .expect("the limit");
        assert!(checked < limit, "the plan is checked before anything else");
    }
}
