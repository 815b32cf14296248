//! The repository contract: the same behaviour from the SeaORM repositories on SQLite and on
//! PostgreSQL, including the constraints that make double processing impossible.

use std::sync::Arc;

use chrono::{NaiveDate, Utc};
use one_loyalty::domain::access::ApiKeyRecord;
use one_loyalty::domain::clock::SystemClock;
use one_loyalty::domain::idempotency::IdempotencyRecord;
use one_loyalty::domain::ledger::{EventType, HistoryQuery, LotTerms, NewLedgerEvent};
use one_loyalty::domain::settings::TenantSettings;
use one_loyalty::domain::tenant::TenantId;
use one_loyalty::persistence::access::SeaAccessRepository;
use one_loyalty::persistence::entities::{balances, coupons, redemptions};
use one_loyalty::persistence::idempotency::SeaIdempotencyRepository;
use one_loyalty::persistence::ledger::SeaLedgerRepository;
use one_loyalty::persistence::settings::SeaSettingsRepository;
use one_loyalty::persistence::{
    AccessRepository, IdempotencyRepository, LedgerRepository, RepoError, SettingsRepository,
};
use rust_decimal::Decimal;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};

use crate::helpers::TestDb;
use crate::on_both_backends;

on_both_backends!(TestDb:
    points_round_trip_exactly_including_large_and_tiny_amounts,
    one_event_per_document_is_enforced_by_the_database,
    one_event_per_request_id_is_enforced_by_the_database,
    concurrent_appends_keep_the_balance_equal_to_the_sum_of_events,
    one_tenants_ledger_is_unreachable_from_another,
    concurrent_penalties_consume_a_lot_without_conflicts,
    the_invariant_checker_catches_a_tampered_balance,
    coupon_names_and_redemption_codes_are_unique_per_tenant,
    a_settings_revision_can_be_written_once,
    api_keys_are_found_by_hash_only,
);

fn tenant(id: &str) -> TenantId {
    TenantId::parse(id).expect("tenant")
}

fn recent(client_id: &str) -> HistoryQuery {
    HistoryQuery {
        client_id: client_id.into(),
        limit: 10,
        ..HistoryQuery::default()
    }
}

fn dec(text: &str) -> Decimal {
    text.parse().expect("decimal")
}

fn event(client: &str, points: &str) -> NewLedgerEvent {
    NewLedgerEvent {
        client_id: client.into(),
        event_type: EventType::Adjust,
        points: dec(points),
        occurred_at: Utc::now(),
        document_id: None,
        request_id: None,
        reason_code: Some("TEST".into()),
        reason: Some("contract test".into()),
        actor_key_id: None,
        actor_user_id: None,
        related_event_id: None,
        redemption_id: None,
        reservation_id: None,
        stacking_mode: None,
        lot: None,
    }
}

async fn points_round_trip_exactly_including_large_and_tiny_amounts(store: &TestDb) {
    let ledger = SeaLedgerRepository::new(store.db.clone(), Arc::new(SystemClock));
    let t = tenant("t1");
    let big = ledger
        .append(&t, &event("org:a", "12345678901234.5678"), None)
        .await
        .expect("big");
    let tiny = ledger
        .append(&t, &event("org:a", "0.0001"), None)
        .await
        .expect("tiny");
    assert_eq!(big.balance_after, dec("12345678901234.5678"));
    assert_eq!(tiny.balance_after, dec("12345678901234.5679"));
    let events = ledger.history(&t, &recent("org:a")).await.expect("events");
    let points: Vec<Decimal> = events.iter().map(|e| e.event.points).collect();
    assert_eq!(points, [dec("0.0001"), dec("12345678901234.5678")]);
    let balance = ledger
        .balance(&t, "org:a")
        .await
        .expect("read")
        .expect("balance");
    assert_eq!(balance.total, dec("12345678901234.5679"));
    assert_eq!(balance.available, dec("12345678901234.5679"));
    assert_eq!(balance.last_event_id, Some(tiny.event_id));
    let negative = ledger
        .append(&t, &event("org:b", "-0.0001"), None)
        .await
        .expect("negative");
    assert_eq!(negative.balance_after, dec("-0.0001"));
    let too_precise = ledger.append(&t, &event("org:a", "0.00001"), None).await;
    assert!(
        too_precise.is_err(),
        "five decimals cannot be stored exactly and are refused"
    );
}

async fn one_event_per_document_is_enforced_by_the_database(store: &TestDb) {
    let ledger = SeaLedgerRepository::new(store.db.clone(), Arc::new(SystemClock));
    let t = tenant("t1");
    let mut earn = event("org:a", "10");
    earn.event_type = EventType::Earn;
    earn.document_id = Some("inv-1".into());
    ledger.append(&t, &earn, None).await.expect("first");
    let again = ledger.append(&t, &earn, None).await.expect_err("second");
    assert!(matches!(again, RepoError::Conflict(_)), "{again:?}");
    let balance = ledger
        .balance(&t, "org:a")
        .await
        .expect("read")
        .expect("balance");
    assert_eq!(balance.total, dec("10"), "the refused event left no trace");
    ledger
        .append(&tenant("t2"), &earn, None)
        .await
        .expect("the same document id in another tenant");
}

async fn one_event_per_request_id_is_enforced_by_the_database(store: &TestDb) {
    let ledger = SeaLedgerRepository::new(store.db.clone(), Arc::new(SystemClock));
    let t = tenant("t1");
    ledger
        .append(&t, &event("org:a", "10"), None)
        .await
        .expect("credit");
    let mut spend = event("org:a", "-3");
    spend.event_type = EventType::Use;
    spend.request_id = Some("req-1".into());
    ledger.append(&t, &spend, None).await.expect("first");
    let again = ledger.append(&t, &spend, None).await.expect_err("second");
    assert!(matches!(again, RepoError::Conflict(_)), "{again:?}");
    assert_eq!(
        ledger
            .history(&t, &recent("org:a"))
            .await
            .expect("events")
            .len(),
        2
    );
    let mut overdraw = event("org:a", "-7.01");
    overdraw.event_type = EventType::Use;
    let refused = ledger
        .append(&t, &overdraw, None)
        .await
        .expect_err("a spend beyond the available points");
    assert!(matches!(refused, RepoError::Precondition(_)), "{refused:?}");
    let balance = ledger
        .balance(&t, "org:a")
        .await
        .expect("read")
        .expect("row");
    assert_eq!(
        balance.available,
        dec("7"),
        "the refused spend left no trace"
    );
}

async fn concurrent_appends_keep_the_balance_equal_to_the_sum_of_events(store: &TestDb) {
    let ledger = Arc::new(SeaLedgerRepository::new(
        store.db.clone(),
        Arc::new(SystemClock),
    ));
    let t = tenant("t1");
    let appends = (0..32).map(|i| {
        let ledger = Arc::clone(&ledger);
        let t = t.clone();
        tokio::spawn(async move {
            ledger
                .append(&t, &event("org:hot", &format!("{}.25", i + 1)), None)
                .await
        })
    });
    let mut after: Vec<Decimal> = Vec::new();
    for handle in appends {
        after.push(handle.await.expect("task").expect("append").balance_after);
    }
    let expected: Decimal = (1..=32).map(|i| dec(&format!("{i}.25"))).sum();
    let balance = ledger
        .balance(&t, "org:hot")
        .await
        .expect("read")
        .expect("balance");
    assert_eq!(balance.total, expected);
    after.sort();
    after.dedup();
    assert_eq!(after.len(), 32, "every event saw its own running balance");
    assert_eq!(after.last().copied(), Some(expected));
}

async fn one_tenants_ledger_is_unreachable_from_another(store: &TestDb) {
    let ledger = SeaLedgerRepository::new(store.db.clone(), Arc::new(SystemClock));
    ledger
        .append(&tenant("t1"), &event("org:shared", "5"), None)
        .await
        .expect("append");
    assert_eq!(
        ledger
            .balance(&tenant("t2"), "org:shared")
            .await
            .expect("read"),
        None
    );
    assert!(
        ledger
            .history(&tenant("t2"), &recent("org:shared"))
            .await
            .expect("read")
            .is_empty()
    );
    assert!(ledger.audit(&tenant("t2")).await.expect("audit").is_empty());
}

async fn the_invariant_checker_catches_a_tampered_balance(store: &TestDb) {
    let ledger = SeaLedgerRepository::new(store.db.clone(), Arc::new(SystemClock));
    let t = tenant("t1");
    ledger
        .append(&t, &event("org:a", "10"), None)
        .await
        .expect("append");
    let tamper = |delta: i64| {
        balances::Entity::update_many()
            .col_expr(
                balances::Column::Total,
                Expr::col(balances::Column::Total).add(delta),
            )
            .filter(balances::Column::TenantId.eq("t1"))
            .exec(&store.db)
    };
    tamper(1).await.expect("tamper");
    let audits = ledger.audit(&t).await.expect("audit");
    assert_eq!(audits.len(), 1);
    // A total raised behind the ledger's back no longer matches its events, nor its own parts.
    assert_eq!(audits[0].violations().len(), 2, "{audits:?}");
    tamper(-1).await.expect("restore");
    assert!(
        ledger.audit(&t).await.expect("audit")[0]
            .violations()
            .is_empty()
    );
}

fn coupon(tenant: &str, id: &str, name: &str) -> coupons::ActiveModel {
    let day = NaiveDate::from_ymd_opt(2027, 1, 1).expect("day");
    let now = Utc::now().fixed_offset();
    coupons::ActiveModel {
        tenant_id: Set(tenant.into()),
        coupon_id: Set(id.into()),
        name: Set(name.into()),
        coupon_type: Set("SPECIAL".into()),
        description: Set(String::new()),
        pool_id: Set(None),
        email: Set(Some("rewards@example.com".into())),
        point_value: Set(70_000),
        image_url: Set("https://example.com/c.png".into()),
        appearance_date: Set(day),
        expiration_date: Set(day),
        redemption_deadline: Set(day),
        stock: Set(None),
        per_client_limit: Set(None),
        redeemed_count: Set(0),
        discount_kind: Set(None),
        discount_value: Set(None),
        discount_currency: Set(None),
        status: Set("ACTIVE".into()),
        revision: Set(1),
        created_at: Set(now),
        updated_at: Set(now),
    }
}

fn redemption(tenant: &str, id: &str, request_id: &str, code: &str) -> redemptions::ActiveModel {
    let now = Utc::now().fixed_offset();
    redemptions::ActiveModel {
        tenant_id: Set(tenant.into()),
        redemption_id: Set(id.into()),
        request_id: Set(request_id.into()),
        client_id: Set("org:a".into()),
        user_id: Set(None),
        coupon_id: Set("c1".into()),
        coupon_name: Set("Mug".into()),
        points: Set(70_000),
        status: Set("PENDING".into()),
        code: Set(Some(code.into())),
        valid_until: Set(NaiveDate::from_ymd_opt(2027, 1, 1).expect("day")),
        use_event_id: Set(None),
        refund_event_id: Set(None),
        reason: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
}

async fn coupon_names_and_redemption_codes_are_unique_per_tenant(store: &TestDb) {
    let db = &store.db;
    coupons::Entity::insert(coupon("t1", "c1", "Mug"))
        .exec(db)
        .await
        .expect("first coupon");
    let err = coupons::Entity::insert(coupon("t1", "c2", "Mug"))
        .exec(db)
        .await
        .expect_err("same name");
    assert!(matches!(
        one_loyalty::persistence::error::classify(err),
        RepoError::Conflict(_)
    ));
    coupons::Entity::insert(coupon("t2", "c1", "Mug"))
        .exec(db)
        .await
        .expect("same name, other tenant");

    redemptions::Entity::insert(redemption("t1", "r1", "q1", "CODE-AAAA"))
        .exec(db)
        .await
        .expect("first");
    let same_code = redemptions::Entity::insert(redemption("t1", "r2", "q2", "CODE-AAAA"))
        .exec(db)
        .await
        .expect_err("code");
    assert!(matches!(
        one_loyalty::persistence::error::classify(same_code),
        RepoError::Conflict(_)
    ));
    let same_request = redemptions::Entity::insert(redemption("t1", "r3", "q1", "CODE-BBBB"))
        .exec(db)
        .await
        .expect_err("request");
    assert!(matches!(
        one_loyalty::persistence::error::classify(same_request),
        RepoError::Conflict(_)
    ));
    redemptions::Entity::insert(redemption("t2", "r1", "q1", "CODE-AAAA"))
        .exec(db)
        .await
        .expect("other tenant");
}

fn record(request_id: &str, revision: u32) -> IdempotencyRecord {
    IdempotencyRecord {
        request_id: request_id.into(),
        operation: "SettingsService/UpdateSettings".into(),
        request_hash: "h".into(),
        result_ref: revision.to_string(),
    }
}

async fn a_settings_revision_can_be_written_once(store: &TestDb) {
    let repo = SeaSettingsRepository::new(store.db.clone());
    let requests = SeaIdempotencyRepository::new(store.db.clone());
    let t = tenant("t1");
    assert_eq!(
        repo.current(&t).await.expect("defaults"),
        TenantSettings::default()
    );
    let first = TenantSettings {
        revision: 1,
        points_scale: 0,
        updated_at: Some(Utc::now()),
        ..TenantSettings::default()
    };
    repo.save(&t, &first, &record("a", 1), "k")
        .await
        .expect("first");
    let rival = TenantSettings {
        points_scale: 3,
        ..first.clone()
    };
    let err = repo
        .save(&t, &rival, &record("b", 1), "k")
        .await
        .expect_err("same revision");
    assert!(matches!(err, RepoError::Conflict(_)), "{err:?}");
    assert_eq!(
        requests.find(&t, "b").await.expect("read"),
        None,
        "the failed save left no record"
    );
    let stored = repo.current(&t).await.expect("current");
    assert_eq!(stored.points_scale, 0);
    assert_eq!(stored.revision, 1);
    assert_eq!(
        repo.revision(&t, 1)
            .await
            .expect("read")
            .map(|s| s.points_scale),
        Some(0)
    );
    assert_eq!(
        requests.find(&t, "a").await.expect("read"),
        Some(record("a", 1))
    );
    assert_eq!(
        repo.current(&tenant("t2")).await.expect("other").revision,
        0
    );
}

async fn api_keys_are_found_by_hash_only(store: &TestDb) {
    let repo = SeaAccessRepository::new(store.db.clone());
    let t = tenant("t1");
    repo.ensure_tenant(&t, "T1").await.expect("tenant");
    repo.ensure_tenant(&t, "T1 again")
        .await
        .expect("idempotent");
    assert!(repo.tenant_exists(&t).await.expect("exists"));
    let key = ApiKeyRecord {
        tenant: t.clone(),
        key_id: "k1".into(),
        key_hash: "ab".repeat(32),
        roles: vec!["admin".into(), "auditor".into()],
        label: "ops".into(),
        created_at: Utc::now(),
        revoked_at: None,
    };
    repo.store_key(&key).await.expect("store");
    let found = repo
        .find_key_by_hash(&key.key_hash)
        .await
        .expect("find")
        .expect("found");
    assert_eq!((found.tenant, found.roles), (t, key.roles.clone()));
    assert_eq!(
        repo.find_key_by_hash(&"cd".repeat(32)).await.expect("find"),
        None
    );
    let stolen = ApiKeyRecord {
        tenant: tenant("t2"),
        ..key
    };
    assert!(matches!(
        repo.store_key(&stolen).await,
        Err(RepoError::Conflict(_))
    ));
}

async fn concurrent_penalties_consume_a_lot_without_conflicts(store: &TestDb) {
    let ledger = Arc::new(SeaLedgerRepository::new(
        store.db.clone(),
        Arc::new(SystemClock),
    ));
    let t = tenant("t1");
    let mut earn = event("org:lots", "100");
    earn.event_type = EventType::Earn;
    earn.lot = Some(LotTerms::new(Utc::now(), 0, 12));
    ledger.append(&t, &earn, None).await.expect("earn");
    let penalties = (0..20).map(|_| {
        let ledger = Arc::clone(&ledger);
        let t = t.clone();
        tokio::spawn(async move { ledger.append(&t, &event("org:lots", "-8"), None).await })
    });
    for handle in penalties {
        handle
            .await
            .expect("task")
            .expect("every penalty lands: the client's row lock orders them");
    }
    let balance = ledger
        .balance(&t, "org:lots")
        .await
        .expect("read")
        .expect("balance");
    assert_eq!(
        balance.total,
        dec("-60"),
        "20 penalties of 8 exhaust the lot of 100 and go on"
    );
    let far = Utc::now() + chrono::Duration::days(400);
    assert_eq!(
        ledger
            .expiring(&t, "org:lots", far)
            .await
            .expect("expiring"),
        Decimal::ZERO,
        "the lot is used up"
    );
}
