//! PostgreSQL only: `loyalty_redeem_batch` checks, under its locks, the user a redemption planned
//! without reading the client names (`user`, given with `client_unread`): it must be an active
//! user of the client. If it is not, the item is refused with `LY004` and nothing is written for
//! it; the service then reads the client and the user and answers as the full path does.
//!
//! The service plans a front-office redemption (one that names the user redeeming) of a coupon it
//! has read before without reading the user first: one round trip fewer per such redemption, as
//! `m20261206_000016` made it for the client.
//!
//! The function is the one of `m20261206_000016` with its client check followed by the user's;
//! the unit test below checks that it was.

use sea_orm_migration::prelude::*;

use crate::m20261206_000016_redeem_checks_its_plan::redeem_batch_function as unchecked_user;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &'static str {
        "m20261206_000019_redeem_checks_its_user"
    }
}

/// The client check, after which the user's goes.
const CLIENT_CHECKED: &str = "            failed_message := 'the client is not known';\n";
const USER_CHECKED: &str = "            failed_message := 'the client is not known';
        ELSIF (p->>'user') IS NOT NULL AND NOT EXISTS (SELECT 1 FROM users
                WHERE tenant_id = v_tenant AND user_id = p->>'user' AND client_id = v_client
                    AND active) THEN
            failed_state := 'LY004';
            failed_message := 'the user is not an active user of the client';\n";

fn redeem_batch_function() -> String {
    unchecked_user().replace(CLIENT_CHECKED, USER_CHECKED)
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres_only(manager, &[&redeem_batch_function()]).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres_only(manager, &[&unchecked_user()]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_is_checked_right_after_the_client() {
        assert_eq!(unchecked_user().matches(CLIENT_CHECKED).count(), 1);
        let function = redeem_batch_function();
        assert_eq!(function.matches(USER_CHECKED).count(), 1);
        let user = function.find("(p->>'user')").expect("the user's check");
        let limit = function
            .find("(p->>'limit') IS NOT NULL")
            .expect("the limit");
        assert!(
            user < limit,
            "checked before anything is counted or written"
        );
    }
}
