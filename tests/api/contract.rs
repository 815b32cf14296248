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
use one_loyalty::persistence::group_commit::BatchWriter;
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
    a_decided_invoice_is_stored_alike_in_one_call_and_in_a_transaction,
    a_clients_segments_come_with_their_rates_and_only_theirs,
    an_earns_client_read_answers_eligibility_as_the_agreements_read_does,
    a_redemptions_read_of_client_and_coupon_answers_as_their_own_reads_do,
    a_redemption_is_stored_alike_in_one_call_and_statement_by_statement,
    a_refused_redemption_leaves_no_trace_and_a_long_spend_reads_on,
    a_plan_made_without_reading_its_user_is_written_only_for_an_active_user_of_the_client,
    every_change_to_what_prices_a_line_raises_the_tenants_pricing_revision,
    redemptions_written_together_each_have_their_own_outcome,
    a_batch_that_fails_as_a_whole_is_written_again_item_by_item,
    earns_written_together_each_have_their_own_outcome,
    every_change_to_what_an_earn_reads_of_a_client_raises_its_revision,
    an_earn_whose_basis_moved_is_refused_and_leaves_no_trace,
    every_migration_goes_down_and_up_again,
    lines_kept_in_their_rows_go_back_to_tables_and_return_unchanged,
    every_look_up_of_lots_is_answered_from_the_lot_indexes,
    indexes_on_optional_keys_hold_only_the_rows_that_have_one,
    event_and_message_ids_follow_the_largest_without_a_sequence_row,
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

/// An invoice as stored (or to store) and the decision on it.
type DecidedInvoice = (
    one_loyalty::domain::documents::DocumentRecord,
    one_loyalty::persistence::documents::Completion,
);

/// [`decided_invoice`] `id` of `client`, received and decided in one call (the function on
/// PostgreSQL, the script on SQLite): the record as stored, and the decision.
async fn received_decided(
    repo: &one_loyalty::persistence::documents::SeaDocumentRepository,
    t: &TenantId,
    id: &str,
    client: &str,
    now: chrono::DateTime<Utc>,
) -> DecidedInvoice {
    use one_loyalty::persistence::DocumentRepository;
    use one_loyalty::persistence::documents::Received;
    let (pushed, decision) = decided_invoice(id, client, now);
    let (earn, _) = decision.event.as_ref().expect("an earning decision");
    assert!(
        one_loyalty::persistence::few_statements::is_plain_earn(earn),
        "the one-call path is the one under test"
    );
    let Received::Stored(stored) = repo
        .receive(t, &pushed, Some(&decision))
        .await
        .expect("receive")
    else {
        panic!("{id} was new");
    };
    (stored, decision)
}

/// A decided 2-line invoice `id` for `client`, with its earn (a locked, expiring lot) and the
/// calculation of its lines.
fn decided_invoice(id: &str, client: &str, now: chrono::DateTime<Utc>) -> DecidedInvoice {
    use one_loyalty::domain::documents::{
        Document, DocumentKind, DocumentLine, DocumentRecord, DocumentSource, DocumentStatus,
    };
    use one_loyalty::domain::engine::{LineCalculation, RuleEvaluation};
    use one_loyalty::domain::rules::{Channel, RuleTarget, TargetKind};
    use one_loyalty::domain::settings::StackingMode;
    let day = NaiveDate::from_ymd_opt(2026, 3, 1).expect("day");
    let lines: Vec<DocumentLine> = (1..=2)
        .map(|n| DocumentLine {
            line_no: n,
            product_id: format!("P{n}"),
            quantity: dec("2.5"),
            order_number: (n == 2).then(|| "ZAM/1".into()),
            corrected_line_no: None,
        })
        .collect();
    let record = DocumentRecord {
        document: Document {
            document_id: id.into(),
            number: format!("FV/{id}"),
            kind: DocumentKind::Invoice,
            client_id: client.into(),
            sale_date: day,
            customer_purchase_numbers: vec!["PO-1".into()],
            lines,
            correction_type: None,
            corrected_document_id: None,
            offline: false,
            issued_at: Some(now),
        },
        source: DocumentSource::Api,
        status: DocumentStatus::Received,
        non_earning_reason: None,
        points: Decimal::ZERO,
        event_id: None,
        received_at: now,
        processed_at: None,
        earn_after: Some(now),
    };
    let calculation = |n: u32| LineCalculation {
        line_no: n,
        product_id: format!("P{n}"),
        quantity: dec("2.5"),
        channel: if n == 2 {
            Channel::Online
        } else {
            Channel::Offline
        },
        order_number: (n == 2).then(|| "ZAM/1".into()),
        pricing_date: day,
        base_points: (n == 1).then(|| dec("10")),
        rules: vec![RuleEvaluation {
            rule_id: "R1".into(),
            rule_version: 3,
            rule_name: "x2 \"spring\"".into(),
            factor: dec("2"),
            applied: n == 1,
            reason: if n == 1 {
                String::new()
            } else {
                "outside its window".into()
            },
            matched_by: RuleTarget {
                kind: TargetKind::Product,
                id: format!("P{n}"),
            },
        }],
        stacking_mode: StackingMode::Multiply,
        multiplier: dec("2"),
        segment_id: (n == 1).then(|| "gold".into()),
        segment_rate: dec("1.5"),
        unrounded_points: dec("75.0000001"),
        points: if n == 1 { dec("75") } else { dec("0.0001") },
        note: (n == 2).then(|| "no base points".into()),
    };
    let event = NewLedgerEvent {
        client_id: client.into(),
        event_type: EventType::Earn,
        points: dec("75.0001"),
        occurred_at: now,
        document_id: Some(id.into()),
        request_id: None,
        reason_code: None,
        reason: Some(format!("invoice FV/{id}")),
        actor_key_id: None,
        actor_user_id: None,
        related_event_id: None,
        redemption_id: None,
        reservation_id: None,
        stacking_mode: Some(StackingMode::Multiply),
        lot: Some(LotTerms::new(now, 14, 24)),
    };
    let completion = one_loyalty::persistence::documents::Completion {
        status: DocumentStatus::Processed,
        reason: None,
        earn_after: None,
        event: Some((event, vec![calculation(1), calculation(2)])),
        basis: None,
    };
    (record, completion)
}

/// A pushed invoice and its earn are written in one function call on PostgreSQL and in one
/// script on SQLite; a document decided later, in a transaction of one statement per row: both
/// must leave the same rows.
#[allow(clippy::too_many_lines)] // one scenario, compared table by table
async fn a_decided_invoice_is_stored_alike_in_one_call_and_in_a_transaction(store: &TestDb) {
    use one_loyalty::persistence::DocumentRepository;
    use one_loyalty::persistence::documents::{Received, SeaDocumentRepository};
    use one_loyalty::persistence::entities::{
        document_lines, documents, earn_lots, ledger_event_lines, ledger_events,
    };
    let repo = SeaDocumentRepository::new(store.db.clone(), Arc::new(SystemClock));
    let ledger = SeaLedgerRepository::new(store.db.clone(), Arc::new(SystemClock));
    let t = tenant("t1");
    // At microseconds, what both databases keep.
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    let (a, _) = received_decided(&repo, &t, "A", "org:a", now).await;
    // Stored first, decided later: the transaction path.
    let (waiting, decision) = decided_invoice("B", "org:a", now);
    repo.receive(&t, &waiting, None).await.expect("receive B");
    let b = repo
        .complete(&t, &waiting, &decision)
        .await
        .expect("complete B");
    let (ea, eb) = (a.event_id.expect("A earned"), b.event_id.expect("B earned"));
    assert!(eb > ea, "events numbered in order: {ea} then {eb}");
    assert_eq!(repo.find(&t, "A").await.expect("find"), Some(a.clone()));

    let doc = |id: &'static str| {
        let db = store.db.clone();
        async move {
            let mut row = documents::Entity::find_by_id(("t1".to_owned(), id.to_owned()))
                .one(&db)
                .await
                .expect("read")
                .expect("document");
            row.document_id = String::new();
            row.number = String::new();
            row.event_id = None;
            row.attempts = 0;
            row.processed_at = None;
            row
        }
    };
    assert_eq!(doc("A").await, doc("B").await, "document rows");
    let lines = |id: &'static str| {
        let db = store.db.clone();
        async move {
            document_lines::Entity::find()
                .filter(document_lines::Column::DocumentId.eq(id))
                .all(&db)
                .await
                .expect("read")
                .into_iter()
                .map(|mut l| {
                    l.document_id = String::new();
                    l
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(lines("A").await, lines("B").await, "document lines");
    assert_eq!(lines("A").await.len(), 2);

    let event = |id: i64| {
        let db = store.db.clone();
        async move {
            let mut row = ledger_events::Entity::find()
                .filter(ledger_events::Column::EventId.eq(id))
                .one(&db)
                .await
                .expect("read")
                .expect("event");
            row.event_id = 0;
            row.document_id = None;
            row.reason = None;
            row.recorded_at = chrono::DateTime::UNIX_EPOCH.fixed_offset();
            row
        }
    };
    let (row_a, row_b) = (event(ea).await, event(eb).await);
    assert_eq!(row_a.balance_after, 750_001, "A's running balance");
    assert_eq!(row_b.balance_after, 1_500_002, "B's running balance");
    assert_eq!(
        ledger_events::Model {
            balance_after: 0,
            ..row_a
        },
        ledger_events::Model {
            balance_after: 0,
            ..row_b
        },
        "event rows"
    );
    let event_lines = |id: i64| {
        let db = store.db.clone();
        async move {
            ledger_event_lines::Entity::find()
                .filter(ledger_event_lines::Column::EventId.eq(id))
                .all(&db)
                .await
                .expect("read")
                .into_iter()
                .map(|mut l| {
                    l.event_id = 0;
                    l
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(event_lines(ea).await, event_lines(eb).await, "event lines");
    let (detail_a, lines_a) = ledger
        .event_detail(&t, ea)
        .await
        .expect("read")
        .expect("detail");
    assert_eq!(
        Some(lines_a),
        decision.event.clone().map(|(_, lines)| lines),
        "the calculation reads back exactly"
    );
    assert_eq!(detail_a.event.points, dec("75.0001"));
    let lot = |id: i64| {
        let db = store.db.clone();
        async move {
            let mut row = earn_lots::Entity::find_by_id(("t1".to_owned(), id))
                .one(&db)
                .await
                .expect("read")
                .expect("lot");
            row.event_id = 0;
            row.earned_at = chrono::DateTime::UNIX_EPOCH.fixed_offset();
            row
        }
    };
    let (lot_a, lot_b) = (lot(ea).await, lot(eb).await);
    assert!(lot_a.locked && lot_a.remaining == 750_001, "{lot_a:?}");
    let terms = LotTerms::new(now, 14, 24);
    assert_eq!(
        (lot_a.unlocks_at, lot_a.expires_at),
        (
            terms.unlocks_at.map(|t| t.fixed_offset()),
            terms.expires_at.map(|t| t.fixed_offset())
        ),
        "the lot's terms"
    );
    assert_eq!(lot_a, lot_b, "lots");
    let balance_row =
        || balances::Entity::find_by_id(("t1".to_owned(), "org:a".to_owned())).one(&store.db);
    let balance = balance_row().await.expect("read").expect("balance");
    assert_eq!(
        (
            balance.total,
            balance.available,
            balance.locked,
            balance.reserved
        ),
        (1_500_002, 0, 1_500_002, 0),
        "both earns locked"
    );
    assert_eq!((balance.event_count, balance.last_event_id), (2, Some(eb)));
    // A redelivery writes nothing and answers with what is stored.
    let (again, decision) = decided_invoice("A", "org:a", now);
    let before = repo
        .receive(&t, &again, Some(&decision))
        .await
        .expect("redeliver A");
    assert_eq!(before, Received::Before(a));
    let after = ledger
        .balance(&t, "org:a")
        .await
        .expect("read")
        .expect("balance");
    assert_eq!(
        after.total,
        dec("150.0002"),
        "the redelivery earned nothing"
    );
    // Pushed again for a client with a balance row: the one-call path adds to the row.
    let (pushed, decision) = decided_invoice("C", "org:a", now);
    let Received::Stored(c) = repo
        .receive(&t, &pushed, Some(&decision))
        .await
        .expect("receive C")
    else {
        panic!("C was new");
    };
    let ec = c.event_id.expect("C earned");
    assert!(ec > eb, "events numbered in order: {eb} then {ec}");
    let row_c = event(ec).await;
    assert_eq!(row_c.balance_after, 2_250_003, "C's running balance");
    assert_eq!(
        ledger_events::Model {
            balance_after: 0,
            ..row_c
        },
        ledger_events::Model {
            balance_after: 0,
            ..event(eb).await
        },
        "event rows"
    );
    assert_eq!(event_lines(ec).await, event_lines(eb).await, "event lines");
    assert_eq!(lot(ec).await, lot_b, "lots");
    assert_eq!(doc("C").await, doc("B").await, "document rows");
    let balance = balance_row().await.expect("read").expect("balance");
    assert_eq!(
        (
            balance.total,
            balance.available,
            balance.locked,
            balance.reserved,
            balance.event_count,
            balance.last_event_id
        ),
        (2_250_003, 0, 2_250_003, 0, 3, Some(ec)),
        "the earns added up"
    );
}

/// Clients org:a, org:b and org:c of tenant t1 and org:a of t2 (named "{client} of {tenant}";
/// org:c without an account), in the segments `members` lists as (tenant, client, segment).
async fn clients_in_segments(store: &TestDb, members: &[(&str, &str, &str)]) {
    use one_loyalty::persistence::entities::{client_segments, clients};
    let known = [
        ("t1", "org:a"),
        ("t1", "org:b"),
        ("t1", "org:c"),
        ("t2", "org:a"),
    ];
    clients::Entity::insert_many(known.map(|(t, c)| clients::ActiveModel {
        tenant_id: Set(t.into()),
        client_id: Set(c.into()),
        kind: Set("ORGANIZATION".into()),
        name: Set(format!("{c} of {t}")),
        status: Set("ACTIVE".into()),
        has_account: Set(c != "org:c"),
        updated_at: Set(Utc::now().fixed_offset()),
        revision: sea_orm::ActiveValue::NotSet,
    }))
    .exec(&store.db)
    .await
    .expect("clients");
    client_segments::Entity::insert_many(members.iter().map(|&(t, c, s)| {
        client_segments::ActiveModel {
            tenant_id: Set(t.into()),
            client_id: Set(c.into()),
            segment_id: Set(s.into()),
        }
    }))
    .exec(&store.db)
    .await
    .expect("members");
}

/// An earn reads a client, its segments with their rates and the tenant's pricing revision in one
/// query: every segment it belongs to, each segment's dated rates, none of another client's or
/// another tenant's; nothing for a client not known.
#[allow(clippy::too_many_lines)] // the rows of two tenants, then what each read returns
async fn a_clients_segments_come_with_their_rates_and_only_theirs(store: &TestDb) {
    use one_loyalty::persistence::RulesRepository;
    use one_loyalty::persistence::entities::{pricing_revisions, segment_rates};
    use one_loyalty::persistence::rules::SeaRulesRepository;
    let day = |d: u32| NaiveDate::from_ymd_opt(2026, 3, d).expect("day");
    let members = [
        ("t1", "org:a", "gold"),
        ("t1", "org:a", "bronze"),
        ("t1", "org:b", "silver"),
        ("t2", "org:a", "platinum"),
    ];
    clients_in_segments(store, &members).await;
    let rates = [
        ("t1", "gold", 1, 11_000),
        ("t1", "gold", 10, 12_000),
        ("t1", "silver", 1, 10_500),
        ("t2", "platinum", 1, 20_000),
        ("t2", "gold", 1, 30_000),
    ];
    segment_rates::Entity::insert_many(rates.map(|(t, s, d, units)| segment_rates::ActiveModel {
        tenant_id: Set(t.into()),
        segment_id: Set(s.into()),
        effective_from: Set(day(d)),
        rate: Set(units),
        request_id: Set(format!("{t}-{s}-{d}")),
        recorded_at: Set(Utc::now().fixed_offset()),
    }))
    .exec(&store.db)
    .await
    .expect("rates");
    // Set t1's and t2's revisions apart.
    for (t, revision) in [("t1", 7), ("t2", 9)] {
        pricing_revisions::Entity::insert(pricing_revisions::ActiveModel {
            tenant_id: Set(t.into()),
            revision: Set(revision),
        })
        .on_conflict(
            sea_orm::sea_query::OnConflict::column(pricing_revisions::Column::TenantId)
                .update_column(pricing_revisions::Column::Revision)
                .to_owned(),
        )
        .exec(&store.db)
        .await
        .expect("revision");
    }
    let repo = SeaRulesRepository::new(store.db.clone());
    let priced = |client: &'static str| {
        let repo = repo.clone();
        async move {
            repo.priced_client(&tenant("t1"), client, None)
                .await
                .expect("read")
        }
    };
    let a = priced("org:a").await.expect("org:a is known");
    assert_eq!(
        (a.client.client_id.as_str(), a.client.name.as_str()),
        ("org:a", "org:a of t1")
    );
    assert!(a.client.has_account);
    assert_eq!(a.basis.pricing_revision, 7, "the tenant's own revision");
    assert_eq!(a.eligible, None, "not asked");
    let mut segments = a.client.segment_ids.clone();
    segments.sort();
    assert_eq!(
        segments,
        ["bronze", "gold"],
        "every segment, with a rate or not, once"
    );
    assert_eq!(a.segment_rates.len(), 1, "only gold has rates: {a:?}");
    let gold = &a.segment_rates["gold"];
    assert_eq!(gold.entries().len(), 2, "both of gold's dated rates");
    assert_eq!(gold.on(day(5)), Some(dec("1.1")));
    assert_eq!(gold.on(day(10)), Some(dec("1.2")));
    let c = priced("org:c").await.expect("org:c is known");
    assert!(!c.client.has_account);
    assert!(c.client.segment_ids.is_empty() && c.segment_rates.is_empty());
    assert_eq!(c.basis.pricing_revision, 7);
    assert_eq!(priced("org:unknown").await, None);
}

/// An earn reads whether the client counted as agreed with the client itself, in one statement;
/// it must answer what the agreements' own read (`holds_until`) answers: only the tenant's
/// declaration type, only the last interval starting before the instant, an interval that ends
/// at the instant still reaching it, an open interval reaching every later instant.
async fn an_earns_client_read_answers_eligibility_as_the_agreements_read_does(store: &TestDb) {
    use one_loyalty::domain::consent::EligibilityProbe;
    use one_loyalty::persistence::agreements::SeaAgreementRepository;
    use one_loyalty::persistence::entities::{client_eligibility, clients};
    use one_loyalty::persistence::rules::SeaRulesRepository;
    use one_loyalty::persistence::{AgreementRepository, RulesRepository};
    let at = |d: u32| {
        NaiveDate::from_ymd_opt(2026, 3, d)
            .and_then(|day| day.and_hms_opt(23, 0, 0))
            .expect("instant")
            .and_utc()
    };
    for (t, c) in [("t1", "org:a"), ("t1", "org:b"), ("t2", "org:b")] {
        clients::Entity::insert(clients::ActiveModel {
            tenant_id: Set(t.into()),
            client_id: Set(c.into()),
            kind: Set("ORGANIZATION".into()),
            name: Set(c.into()),
            status: Set("ACTIVE".into()),
            has_account: Set(true),
            updated_at: Set(Utc::now().fixed_offset()),
            revision: sea_orm::ActiveValue::NotSet,
        })
        .exec(&store.db)
        .await
        .expect("client");
    }
    let intervals = [
        ("t1", "D1", "org:a", 2, Some(5)),
        ("t1", "D1", "org:a", 10, None),
        ("t1", "D2", "org:a", 6, Some(9)),
        ("t2", "D1", "org:b", 1, None),
    ];
    client_eligibility::Entity::insert_many(intervals.map(|(t, d, c, from, until)| {
        client_eligibility::ActiveModel {
            tenant_id: Set(t.into()),
            declaration_type_id: Set(d.into()),
            client_id: Set(c.into()),
            valid_from: Set(at(from).fixed_offset()),
            valid_until: Set(until.map(|u| at(u).fixed_offset())),
        }
    }))
    .exec(&store.db)
    .await
    .expect("eligibility");
    let rules = SeaRulesRepository::new(store.db.clone());
    let agreements = SeaAgreementRepository::new(store.db.clone());
    let t1 = tenant("t1");
    let cases = [
        ("org:a", 1, false, "before any interval"),
        (
            "org:a",
            2,
            false,
            "at an interval's start, which must come before",
        ),
        ("org:a", 3, true, "inside"),
        ("org:a", 5, true, "at its end"),
        (
            "org:a",
            7,
            false,
            "between two (another declaration type's does not count)",
        ),
        ("org:a", 20, true, "inside an open one"),
        (
            "org:b",
            20,
            false,
            "none of its own (another tenant's does not count)",
        ),
    ];
    for (client, day, expected, why) in cases {
        let probe = EligibilityProbe {
            declaration_type_id: "D1".into(),
            at: at(day),
        };
        let held = agreements
            .holds_until(&t1, client, &probe)
            .await
            .expect("holds_until");
        let priced = rules
            .priced_client(&t1, client, Some(probe))
            .await
            .expect("read")
            .expect("known client");
        assert_eq!(
            (held, priced.eligible),
            (expected, Some(expected)),
            "{client} on day {day}: {why}"
        );
    }
}

/// A redemption reads the client and the coupon, each with its segments, in one statement; it
/// must answer what the two reads of their own answer: every segment of each once (not every
/// pair of them), the coupon's in order, nothing of another client, coupon or tenant, no client
/// when the client is unknown and no coupon when the coupon is.
#[allow(clippy::too_many_lines)] // the rows of two tenants, then every pair read both ways
async fn a_redemptions_read_of_client_and_coupon_answers_as_their_own_reads_do(store: &TestDb) {
    use one_loyalty::domain::coupons::{CouponType, Discount};
    use one_loyalty::persistence::coupons::SeaCouponRepository;
    use one_loyalty::persistence::directory::SeaDirectoryRepository;
    use one_loyalty::persistence::entities::coupon_segments;
    use one_loyalty::persistence::{ClientAndCoupon, CouponRepository, DirectoryRepository};
    let members = [
        ("t1", "org:a", "gold"),
        ("t1", "org:a", "bronze"),
        ("t1", "org:a", "silver"),
        ("t1", "org:b", "silver"),
        ("t2", "org:a", "platinum"),
    ];
    clients_in_segments(store, &members).await;
    let mut limited = coupon("t1", "cp:limited", "Limited");
    limited.stock = Set(Some(5));
    limited.per_client_limit = Set(Some(2));
    limited.redeemed_count = Set(3);
    let mut for_few = coupon("t1", "cp:few", "For few");
    for_few.coupon_type = Set("CART_DISCOUNT".into());
    for_few.pool_id = Set(Some("pool:1".into()));
    for_few.discount_kind = Set(Some("PERCENTAGE".into()));
    for_few.discount_value = Set(Some("12.5".into()));
    coupons::Entity::insert_many([
        coupon("t1", "cp:open", "Open"),
        limited,
        for_few,
        coupon("t2", "cp:open", "Open"),
        coupon("t2", "cp:t2", "Only t2's"),
    ])
    .exec(&store.db)
    .await
    .expect("coupons");
    let restrictions = [
        ("t1", "cp:limited", "silver"),
        ("t1", "cp:few", "zinc"),
        ("t1", "cp:few", "gold"),
        ("t1", "cp:few", "amber"),
        ("t1", "cp:few", "silver"),
        ("t2", "cp:open", "platinum"),
    ];
    coupon_segments::Entity::insert_many(restrictions.map(|(t, k, s)| {
        coupon_segments::ActiveModel {
            tenant_id: Set(t.into()),
            coupon_id: Set(k.into()),
            segment_id: Set(s.into()),
        }
    }))
    .exec(&store.db)
    .await
    .expect("restrictions");
    let coupons = SeaCouponRepository::new(store.db.clone());
    let directory = SeaDirectoryRepository::new(store.db.clone());
    let sorted = |mut read: ClientAndCoupon| {
        read.client.segment_ids.sort();
        read
    };

    // Every pair, against the two reads of their own.
    let t1 = tenant("t1");
    for client_id in ["org:a", "org:b", "org:c", "org:unknown"] {
        for coupon_id in ["cp:open", "cp:limited", "cp:few", "cp:t2", "cp:unknown"] {
            let read = coupons
                .with_client(&t1, coupon_id, client_id)
                .await
                .expect("read");
            let client = directory.client(&t1, client_id).await.expect("client");
            let coupon = coupons.get(&t1, coupon_id).await.expect("coupon");
            let expected = client.map(|client| ClientAndCoupon { client, coupon });
            assert_eq!(
                read.map(sorted),
                expected.map(sorted),
                "{client_id} with {coupon_id}"
            );
        }
    }

    // And what those reads are.
    let read = coupons
        .with_client(&t1, "cp:few", "org:a")
        .await
        .expect("read")
        .map(sorted)
        .expect("org:a is known");
    assert_eq!(read.client.name, "org:a of t1");
    assert_eq!(
        read.client.segment_ids,
        ["bronze", "gold", "silver"],
        "each of the client's segments once"
    );
    let few = read.coupon.expect("cp:few is known");
    assert_eq!(
        few.spec.segment_ids,
        ["amber", "gold", "silver", "zinc"],
        "each of the coupon's segments once, in order"
    );
    assert_eq!(
        (few.spec.coupon_type, few.spec.discount),
        (
            CouponType::CartDiscount,
            Some(Discount::Percentage(dec("12.5")))
        )
    );
    let read = coupons
        .with_client(&t1, "cp:limited", "org:c")
        .await
        .expect("read")
        .expect("org:c is known");
    assert!(read.client.segment_ids.is_empty() && !read.client.has_account);
    let limited = read.coupon.expect("cp:limited is known");
    assert_eq!(
        (
            limited.spec.stock,
            limited.spec.per_client_limit,
            limited.redeemed_count
        ),
        (Some(5), Some(2), 3)
    );
    assert_eq!(limited.spec.segment_ids, ["silver"]);
    let read = coupons
        .with_client(&t1, "cp:t2", "org:b")
        .await
        .expect("read")
        .expect("org:b is known");
    assert_eq!(
        (read.client.segment_ids.as_slice(), read.coupon),
        (["silver".to_owned()].as_slice(), None),
        "another tenant's coupon is not known"
    );
    assert_eq!(
        coupons
            .with_client(&t1, "cp:open", "org:unknown")
            .await
            .expect("read"),
        None
    );
    let read = coupons
        .with_client(&tenant("t2"), "cp:open", "org:a")
        .await
        .expect("read")
        .expect("t2's org:a is known");
    assert_eq!(read.client.name, "org:a of t2");
    assert_eq!(read.client.segment_ids, ["platinum"]);
    assert_eq!(
        read.coupon.map(|c| c.spec.segment_ids),
        Some(vec!["platinum".to_owned()])
    );
}

/// Client `client` earns lots of `points` each (one locked besides, which a spend skips).
async fn earn_lots_for(ledger: &SeaLedgerRepository, t: &TenantId, client: &str, points: &[&str]) {
    let now = Utc::now();
    for (n, p) in points.iter().enumerate() {
        let mut earn = event(client, p);
        earn.event_type = EventType::Earn;
        earn.document_id = Some(format!("{client}-inv-{n}"));
        earn.lot = Some(LotTerms::new(now, 0, 12));
        ledger.append(t, &earn, None).await.expect("earn");
    }
    let mut locked = event(client, "100");
    locked.event_type = EventType::Earn;
    locked.document_id = Some(format!("{client}-inv-locked"));
    locked.lot = Some(LotTerms::new(now, 30, 12));
    ledger.append(t, &locked, None).await.expect("locked earn");
}

/// A plan to redeem coupon c1 for `points`, as the redeem service makes it.
fn redeem_plan(
    client: &str,
    request_id: &str,
    points: &str,
) -> one_loyalty::persistence::RedeemPlan {
    use one_loyalty::domain::redemption::{Delivery, Redemption, RedemptionStatus};
    let now = Utc::now();
    let redemption_id = format!("rdm-{request_id}");
    let mut use_event = event(client, &format!("-{points}"));
    use_event.event_type = EventType::Use;
    use_event.request_id = Some(request_id.into());
    use_event.redemption_id = Some(redemption_id.clone());
    use_event.reason_code = None;
    use_event.reason = Some("Mug".into());
    one_loyalty::persistence::RedeemPlan {
        redemption: Redemption {
            redemption_id: redemption_id.clone(),
            request_id: request_id.into(),
            client_id: client.into(),
            user_id: None,
            coupon_id: "c1".into(),
            coupon_name: "Mug".into(),
            points: dec(points),
            status: RedemptionStatus::Pending,
            code: None,
            valid_until: NaiveDate::from_ymd_opt(2027, 1, 1).expect("day"),
            use_event_id: None,
            refund_event_id: None,
            reason: None,
            created_at: now,
            updated_at: now,
        },
        stock: None,
        per_client_limit: None,
        use_event,
        coupon_revision: Some(1),
        client_unread: false,
        delivery: Delivery::SendSpecialEmail {
            to: "rewards@example.com".into(),
            client_id: "org".into(),
            client_name: "Org".into(),
            user_id: None,
            coupon_name: "Mug".into(),
            points: points.into(),
            redeemed_at: now,
            company_logo_url: String::new(),
            redemption_id,
        },
    }
}

/// A redemption planned without reading the client names the user redeeming: the write takes it
/// only for an active user of that client, in one call and statement by statement, and one it
/// refuses leaves nothing.
async fn a_plan_made_without_reading_its_user_is_written_only_for_an_active_user_of_the_client(
    store: &TestDb,
) {
    use one_loyalty::domain::directory::{ClientRecord, UserRecord};
    use one_loyalty::persistence::directory::SeaDirectoryRepository;
    use one_loyalty::persistence::{DirectoryRepository, RedemptionRepository};
    let (ledger, requests, fast, t) = mug_redemptions(store).await;
    let directory = SeaDirectoryRepository::new(store.db.clone());
    for client in ["org:f", "org:s", "org:x"] {
        let record = ClientRecord {
            client_id: client.into(),
            name: client.into(),
            status: "ACTIVE".into(),
            has_account: true,
            segment_ids: vec![],
            updated_at: Utc::now(),
        };
        directory.save_client(&t, &record).await.expect("client");
    }
    for (client, repo) in [
        ("org:f", fast.clone()),
        ("org:s", fast.clone().statement_by_statement()),
    ] {
        earn_lots_for(&ledger, &t, client, &["5"]).await;
        let q = |name: &str| format!("{client}/{name}");
        for (user, of, active) in [("active", client, true), ("gone", client, false)]
            .into_iter()
            .chain([("elsewhere", "org:x", true)])
        {
            let record = UserRecord {
                user_id: q(user),
                client_id: of.into(),
                active,
                deactivated_at: None,
                updated_at: Utc::now(),
            };
            directory.save_user(&t, &record).await.expect("user");
        }
        let plan = |request: &str, user: &str| {
            let mut plan = redeem_plan(client, &q(request), "1");
            plan.client_unread = true;
            plan.redemption.user_id = Some(q(user));
            plan
        };
        for (request, user) in [
            ("gone", "gone"),
            ("elsewhere", "elsewhere"),
            ("nobody", "nobody"),
        ] {
            let err = repo
                .redeem(&t, &plan(request, user), &redeem_record(&q(request)))
                .await
                .expect_err(request);
            assert!(
                matches!(err, RepoError::Stale(ref m) if m.contains("user")),
                "{client}, {request}: {err:?}"
            );
            assert_eq!(
                requests.find(&t, &q(request)).await.expect("find"),
                None,
                "{client}: {request} left no record"
            );
        }
        let available = || async {
            ledger
                .balance(&t, client)
                .await
                .expect("read")
                .expect("balance")
                .available
        };
        assert_eq!(available().await, dec("5"), "{client}: nothing spent");
        let written = repo
            .redeem(&t, &plan("active", "active"), &redeem_record(&q("active")))
            .await
            .expect("an active user of the client");
        assert_eq!(written.user_id, Some(q("active")));
        assert_eq!(available().await, dec("4"), "{client}: one spent");
    }
}

/// The repositories a redemption is written and checked with, on tenant t1 with its coupon c1
/// ("Mug").
async fn mug_redemptions(
    store: &TestDb,
) -> (
    SeaLedgerRepository,
    SeaIdempotencyRepository,
    one_loyalty::persistence::redemptions::SeaRedemptionRepository,
    TenantId,
) {
    coupons::Entity::insert(coupon("t1", "c1", "Mug"))
        .exec(&store.db)
        .await
        .expect("coupon");
    (
        SeaLedgerRepository::new(store.db.clone(), Arc::new(SystemClock)),
        SeaIdempotencyRepository::new(store.db.clone()),
        one_loyalty::persistence::redemptions::SeaRedemptionRepository::new(
            store.db.clone(),
            Arc::new(SystemClock),
        ),
        tenant("t1"),
    )
}

fn redeem_record(request_id: &str) -> IdempotencyRecord {
    IdempotencyRecord {
        request_id: request_id.into(),
        operation: "RedeemService/RedeemCoupon".into(),
        request_hash: "h".into(),
        result_ref: String::new(),
    }
}

/// What is left in a client's lots, oldest first.
async fn lots_left(store: &TestDb, client: &str) -> Vec<i64> {
    use one_loyalty::persistence::entities::earn_lots;
    use sea_orm::QueryOrder;
    earn_lots::Entity::find()
        .filter(earn_lots::Column::ClientId.eq(client))
        .order_by_asc(earn_lots::Column::EventId)
        .all(&store.db)
        .await
        .expect("lots")
        .into_iter()
        .map(|l| l.remaining)
        .collect()
}

/// A redemption is written by one function call on PostgreSQL and by two scripts on SQLite; by
/// the statement-by-statement repository, one row at a time: both must leave the same rows.
#[allow(clippy::too_many_lines)] // one scenario, compared table by table
async fn a_redemption_is_stored_alike_in_one_call_and_statement_by_statement(store: &TestDb) {
    use one_loyalty::persistence::RedemptionRepository;
    use one_loyalty::persistence::entities::{idempotency_records, ledger_events, outbox};
    use one_loyalty::persistence::redemptions::SeaRedemptionRepository;
    let ledger = SeaLedgerRepository::new(store.db.clone(), Arc::new(SystemClock));
    let fast = SeaRedemptionRepository::new(store.db.clone(), Arc::new(SystemClock));
    let slow = fast.clone().statement_by_statement();
    let t = tenant("t1");
    coupons::Entity::insert(coupon("t1", "c1", "Mug"))
        .exec(&store.db)
        .await
        .expect("coupon");
    for client in ["org:a", "org:b"] {
        earn_lots_for(&ledger, &t, client, &["3", "4", "5"]).await;
    }
    let plan = redeem_plan("org:a", "q-a", "6");
    assert!(
        one_loyalty::persistence::few_statements::is_plain_redemption(&plan),
        "the few-round-trip path is the one under test"
    );
    let a = fast
        .redeem(&t, &plan, &redeem_record("q-a"))
        .await
        .expect("redeem a");
    let b = slow
        .redeem(&t, &redeem_plan("org:b", "q-b", "6"), &redeem_record("q-b"))
        .await
        .expect("redeem b");
    let left = [0, 10_000, 50_000, 1_000_000];
    assert_eq!(
        lots_left(store, "org:a").await,
        left,
        "oldest first, the locked lot skipped"
    );
    assert_eq!(lots_left(store, "org:b").await, left);
    assert_eq!(fast.get(&t, "rdm-q-a").await.expect("get"), Some(a.clone()));

    let mask_redemption = |mut r: one_loyalty::domain::redemption::Redemption| {
        assert!(
            r.use_event_id.is_some(),
            "the redemption names its Use event"
        );
        r.redemption_id = String::new();
        r.request_id = String::new();
        r.client_id = String::new();
        r.use_event_id = None;
        r.created_at = chrono::DateTime::default();
        r.updated_at = chrono::DateTime::default();
        r
    };
    assert_eq!(mask_redemption(a.clone()), mask_redemption(b.clone()));
    let stored = |r: &one_loyalty::domain::redemption::Redemption| {
        let (fast, id) = (fast.clone(), r.redemption_id.clone());
        let t = t.clone();
        async move { fast.get(&t, &id).await.expect("get").expect("stored") }
    };
    assert_eq!(
        mask_redemption(stored(&a).await),
        mask_redemption(stored(&b).await),
        "redemption rows"
    );

    let use_event = |id: Option<i64>| {
        let db = store.db.clone();
        async move {
            let mut row = ledger_events::Entity::find()
                .filter(ledger_events::Column::EventId.eq(id.expect("use event")))
                .one(&db)
                .await
                .expect("read")
                .expect("event");
            row.event_id = 0;
            row.client_id = String::new();
            row.request_id = None;
            row.redemption_id = None;
            row.occurred_at = chrono::DateTime::default();
            row.recorded_at = chrono::DateTime::default();
            row
        }
    };
    let ua = use_event(a.use_event_id).await;
    assert_eq!(ua, use_event(b.use_event_id).await, "Use events");
    assert_eq!((ua.points, ua.balance_after), (-60_000, 1_060_000));

    let balance = |client: &'static str| {
        let db = store.db.clone();
        async move {
            let mut row = balances::Entity::find_by_id(("t1".to_owned(), client.to_owned()))
                .one(&db)
                .await
                .expect("read")
                .expect("balance");
            row.client_id = String::new();
            row.last_event_id = None;
            row.updated_at = chrono::DateTime::default();
            row
        }
    };
    let ba = balance("org:a").await;
    assert_eq!(ba, balance("org:b").await, "balance rows");
    assert_eq!(
        (ba.total, ba.available, ba.locked, ba.event_count),
        (1_060_000, 60_000, 1_000_000, 5)
    );
    let last = |client: &'static str| {
        let db = store.db.clone();
        async move {
            balances::Entity::find_by_id(("t1".to_owned(), client.to_owned()))
                .one(&db)
                .await
                .expect("read")
                .expect("balance")
                .last_event_id
        }
    };
    assert_eq!(last("org:a").await, a.use_event_id);
    assert_eq!(last("org:b").await, b.use_event_id);

    let message = |redemption_id: String| {
        let db = store.db.clone();
        async move {
            let mut row = outbox::Entity::find()
                .filter(outbox::Column::AggregateId.eq(redemption_id))
                .one(&db)
                .await
                .expect("read")
                .expect("message");
            row.message_id = 0;
            row.aggregate_id = String::new();
            row.next_attempt_at = chrono::DateTime::default();
            row.created_at = chrono::DateTime::default();
            let mut payload: serde_json::Value =
                serde_json::from_str(&row.payload).expect("payload");
            payload["redemption_id"] = serde_json::Value::Null;
            payload["redeemed_at"] = serde_json::Value::Null;
            row.payload = payload.to_string();
            row
        }
    };
    assert_eq!(
        message(a.redemption_id.clone()).await,
        message(b.redemption_id.clone()).await,
        "outbox messages"
    );

    let request = |id: &'static str| {
        let db = store.db.clone();
        async move {
            let mut row = idempotency_records::Entity::find_by_id(("t1".to_owned(), id.to_owned()))
                .one(&db)
                .await
                .expect("read")
                .expect("record");
            row.request_id = String::new();
            row.created_at = chrono::DateTime::default();
            row.result_ref = row.result_ref.map(|r| r.replace(id, ""));
            row
        }
    };
    assert_eq!(
        request("q-a").await,
        request("q-b").await,
        "request records"
    );
    assert_eq!(request("q-a").await.result_ref.as_deref(), Some("rdm-"));

    let counted = coupons::Entity::find_by_id(("t1".to_owned(), "c1".to_owned()))
        .one(&store.db)
        .await
        .expect("read")
        .expect("coupon")
        .redeemed_count;
    assert_eq!(counted, 2);
}

/// Every guard of a redemption, on both paths: what it refuses (points, stock, the client's limit,
/// a request id or a code taken) leaves no trace (no record, no event, no lot spent, no count),
/// and a spend beyond the lots read at once goes on to the next.
#[allow(clippy::too_many_lines)] // one scenario per guard
async fn a_refused_redemption_leaves_no_trace_and_a_long_spend_reads_on(store: &TestDb) {
    use one_loyalty::persistence::RedemptionRepository;
    let (ledger, requests, fast, t) = mug_redemptions(store).await;
    for (client, repo) in [
        ("org:f", fast.clone()),
        ("org:s", fast.clone().statement_by_statement()),
    ] {
        coupons::Entity::update_many()
            .col_expr(coupons::Column::RedeemedCount, Expr::value(0))
            .exec(&store.db)
            .await
            .expect("reset the count");
        let lots: Vec<&str> = std::iter::repeat_n("1", 70).collect();
        earn_lots_for(&ledger, &t, client, &lots).await;
        let before = ledger
            .balance(&t, client)
            .await
            .expect("read")
            .expect("balance");
        let lots_before = lots_left(store, client).await;
        // Request ids are the tenant's: each client's are its own.
        let q = |name: &str| format!("{client}/{name}");
        let refused = |plan: one_loyalty::persistence::RedeemPlan| {
            let repo = repo.clone();
            let t = t.clone();
            async move {
                let record = redeem_record(&plan.redemption.request_id);
                repo.redeem(&t, &plan, &record).await.expect_err("refused")
            }
        };
        let err = refused(redeem_plan(client, &q("dear"), "70.0001")).await;
        assert!(matches!(err, RepoError::Precondition(_)), "{err:?}");
        // Planned from what no longer holds: the coupon at another revision, or a client that
        // was not read and is not known (none of these clients is in `clients`).
        let mut edited = redeem_plan(client, &q("edited"), "1");
        edited.coupon_revision = Some(2);
        let err = refused(edited).await;
        assert!(
            matches!(err, RepoError::Stale(ref m) if m.contains("coupon")),
            "{err:?}"
        );
        let mut unread = redeem_plan(client, &q("unread"), "1");
        unread.client_unread = true;
        let err = refused(unread).await;
        assert!(
            matches!(err, RepoError::Stale(ref m) if m.contains("client")),
            "{err:?}"
        );
        let mut no_stock = redeem_plan(client, &q("stock"), "1");
        no_stock.stock = Some(0);
        let err = refused(no_stock).await;
        assert!(
            matches!(err, RepoError::Precondition(ref m) if m.contains("stock")),
            "{err:?}"
        );
        let mut limited = redeem_plan(client, &q("limit-1"), "1");
        limited.per_client_limit = Some(1);
        repo.redeem(&t, &limited, &redeem_record(&q("limit-1")))
            .await
            .expect("first within the limit");
        let mut again = redeem_plan(client, &q("limit-2"), "1");
        again.per_client_limit = Some(1);
        let err = refused(again).await;
        assert!(
            matches!(err, RepoError::Precondition(ref m) if m.contains("limit")),
            "{err:?}"
        );
        let err = refused(redeem_plan(client, &q("limit-1"), "1")).await;
        assert!(
            matches!(err, RepoError::Conflict(_)),
            "a request id twice: {err:?}"
        );
        // A code given out already: refused, and the second request's record taken back.
        let mut coded = redeem_plan(client, &q("code-1"), "1");
        coded.redemption.code = Some(q("code"));
        repo.redeem(&t, &coded, &redeem_record(&q("code-1")))
            .await
            .expect("the first with the code");
        let mut same_code = redeem_plan(client, &q("code-2"), "1");
        same_code.redemption.code = Some(q("code"));
        let err = refused(same_code).await;
        assert!(
            matches!(err, RepoError::Conflict(_)),
            "a code twice: {err:?}"
        );
        for request in ["dear", "edited", "unread", "stock", "limit-2", "code-2"] {
            assert_eq!(
                requests.find(&t, &q(request)).await.expect("find"),
                None,
                "{client}: {request} left no record"
            );
        }
        let after = ledger
            .balance(&t, client)
            .await
            .expect("read")
            .expect("balance");
        assert_eq!(
            after.total,
            before.total - dec("2"),
            "{client}: only the two first spent"
        );
        let mut expected = lots_before.clone();
        expected[0] = 0;
        expected[1] = 0;
        assert_eq!(
            lots_left(store, client).await,
            expected,
            "{client}: two lots spent"
        );

        // 67 points: the 64 lots read at once, then 3 more.
        repo.redeem(
            &t,
            &redeem_plan(client, &q("long"), "67"),
            &redeem_record(&q("long")),
        )
        .await
        .expect("a long spend");
        let left = lots_left(store, client).await;
        let mut expected = vec![0; 69];
        expected.extend([10_000, 1_000_000]);
        assert_eq!(
            left, expected,
            "{client}: one point left, and the locked lot"
        );
        let balance = ledger
            .balance(&t, client)
            .await
            .expect("read")
            .expect("balance");
        assert_eq!((balance.available, balance.locked), (dec("1"), dec("100")));
    }
}

/// The pricing cache is exact only if no write to a pricing table can leave the revision where
/// it was: inserts through the repositories, then an update and a delete of each table in plain
/// SQL, as a hand-made fix would be.
#[allow(clippy::too_many_lines)] // one check per table and kind of change
async fn every_change_to_what_prices_a_line_raises_the_tenants_pricing_revision(store: &TestDb) {
    use one_loyalty::domain::directory::{CategoryRecord, ProductRecord};
    use one_loyalty::domain::rules::{
        MultiplierRule, RuleStatus, RuleTarget, StoredRule, TargetKind,
    };
    use one_loyalty::persistence::catalog::SeaCatalogRepository;
    use one_loyalty::persistence::rules::SeaRulesRepository;
    use one_loyalty::persistence::{CatalogRepository, RulesRepository};
    use sea_orm::ConnectionTrait;
    let catalog = SeaCatalogRepository::new(store.db.clone());
    let rules = SeaRulesRepository::new(store.db.clone());
    let (t1, t2) = (tenant("t1"), tenant("t2"));
    let revision = || async { rules.pricing_revision(&t1).await.expect("revision") };
    assert_eq!(revision().await, 0, "nothing changed yet");

    let mut last = 0;
    let mut raised = |now: i64, what: &str| {
        assert!(now > last, "{what}: the revision stayed at {last}");
        last = now;
    };
    let category = CategoryRecord {
        category_id: "C1".into(),
        parent_id: None,
        name: "Cables".into(),
    };
    catalog
        .save_category(&t1, &category)
        .await
        .expect("category");
    raised(revision().await, "a category");
    let product = ProductRecord {
        product_id: "P1".into(),
        name: "Cable".into(),
        sku: "P1".into(),
        category_id: Some("C1".into()),
        label_ids: vec!["L1".into()],
        manufacturer_id: None,
        is_ecommerce: true,
        active: true,
        updated_at: Utc::now(),
    };
    catalog.save_product(&t1, &product).await.expect("product");
    raised(revision().await, "a product");
    rules
        .set_base_points(
            &t1,
            NaiveDate::from_ymd_opt(2026, 1, 1).expect("day"),
            &[("P1".into(), dec("10"))],
            &record("base", 1),
        )
        .await
        .expect("base points");
    raised(revision().await, "base points");
    let rule = StoredRule {
        rule: MultiplierRule {
            rule_id: "R1".into(),
            version: 1,
            status: RuleStatus::Published,
            name: "Double".into(),
            description: String::new(),
            targets: vec![RuleTarget {
                kind: TargetKind::Product,
                id: "P1".into(),
            }],
            factor: dec("2"),
            valid_from: NaiveDate::from_ymd_opt(2026, 1, 1).expect("day"),
            valid_until: None,
            segment_ids: vec!["gold".into()],
            channel: None,
        },
        created_at: Utc::now(),
        published_at: Some(Utc::now()),
        archived_at: None,
    };
    rules
        .save_rule(&t1, &rule, &record("rule", 1))
        .await
        .expect("rule");
    raised(revision().await, "a rule");

    for table in [
        "products",
        "categories",
        "category_ancestors",
        "product_labels",
        "base_points",
        "multiplier_rules",
        "multiplier_rule_targets",
        "multiplier_rule_segments",
    ] {
        let count = store
            .db
            .query_one_raw(sea_orm::Statement::from_string(
                store.db.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM {table} WHERE tenant_id = 't1'"),
            ))
            .await
            .expect("count")
            .expect("row")
            .try_get::<i64>("", "n")
            .expect("n");
        assert!(count > 0, "{table} holds a row of t1");
        for change in [
            format!("UPDATE {table} SET tenant_id = tenant_id WHERE tenant_id = 't1'"),
            format!("DELETE FROM {table} WHERE tenant_id = 't1'"),
        ] {
            store.db.execute_unprepared(&change).await.expect(&change);
            raised(revision().await, &change);
        }
    }
    assert_eq!(
        rules.pricing_revision(&t2).await.expect("revision"),
        0,
        "another tenant's revision is its own"
    );
}

/// `plans` redeemed together, as group commit writes them: on PostgreSQL in one
/// `loyalty_redeem_batch` call, on SQLite in one transaction, each in a savepoint of its own.
async fn redeem_together(
    store: &TestDb,
    t: &TenantId,
    plans: &[one_loyalty::persistence::RedeemPlan],
) -> Vec<Result<one_loyalty::domain::redemption::Redemption, RepoError>> {
    use one_loyalty::persistence::few_statements::{PreparedRedemption, RedemptionWriter};
    use one_loyalty::persistence::sqlite_script::{PreparedScriptRedemption, ScriptWriter};
    let now = Utc::now();
    // As the repository records them: the request names its redemption.
    let records: Vec<_> = plans
        .iter()
        .map(|plan| IdempotencyRecord {
            result_ref: plan.redemption.redemption_id.clone(),
            ..redeem_record(&plan.redemption.request_id)
        })
        .collect();
    if store.db.get_database_backend() == sea_orm::DbBackend::Postgres {
        let prepared = plans
            .iter()
            .zip(&records)
            .map(|(plan, record)| PreparedRedemption::new(t, plan, record, now).expect("prepared"))
            .collect();
        return written_in_turn(RedemptionWriter::new(store.db.clone()), prepared).await;
    }
    let prepared = plans
        .iter()
        .zip(&records)
        .map(|(plan, record)| {
            PreparedScriptRedemption::new(t, plan, record, now).expect("prepared")
        })
        .collect();
    written_in_turn(ScriptWriter::new(store.db.clone()), prepared).await
}

/// `items` written as one batch by `writer`, once it has its turn to write.
async fn written_in_turn<I, O, W: BatchWriter<I, O>>(
    writer: W,
    items: Vec<I>,
) -> Vec<Result<O, RepoError>> {
    let turn = writer.turn().await.expect("a turn to write");
    writer.write(items, turn).await
}

/// Each client's available points are as given, and every balance is the sum of its events.
async fn assert_available(ledger: &SeaLedgerRepository, t: &TenantId, expected: &[(&str, &str)]) {
    for (client, available) in expected {
        let balance = ledger
            .balance(t, client)
            .await
            .expect("read")
            .expect("balance");
        assert_eq!(balance.available, dec(available), "{client}");
    }
    for audit in ledger.audit(t).await.expect("audit") {
        assert!(audit.violations().is_empty(), "{audit:?}");
    }
}

/// Redemptions written together (group commit: on PostgreSQL one `loyalty_redeem_batch` call, on
/// SQLite one transaction) each have the outcome they would have alone, in the batch's order,
/// and what one refuses leaves no trace while the others are written.
#[allow(clippy::too_many_lines)] // one batch, each item's outcome and every table it touches
async fn redemptions_written_together_each_have_their_own_outcome(store: &TestDb) {
    use one_loyalty::persistence::entities::{idempotency_records, outbox};
    use one_loyalty::persistence::redemptions::SeaRedemptionRepository;
    use one_loyalty::persistence::{RedeemPlan, RedemptionRepository};
    use sea_orm::PaginatorTrait;
    let ledger = SeaLedgerRepository::new(store.db.clone(), Arc::new(SystemClock));
    let t = tenant("t1");
    for (id, name) in [("c1", "Mug"), ("c2", "Pen")] {
        coupons::Entity::insert(coupon("t1", id, name))
            .exec(&store.db)
            .await
            .expect("coupon");
    }
    for client in ["org:a", "org:b", "org:c"] {
        earn_lots_for(&ledger, &t, client, &["3", "4", "5"]).await;
    }
    let of = |coupon: &str, mut plan: RedeemPlan| {
        plan.redemption.coupon_id = coupon.into();
        plan
    };
    let stock = |stock: u32, mut plan: RedeemPlan| {
        plan.stock = Some(stock);
        plan
    };
    let limit = |limit: u32, mut plan: RedeemPlan| {
        plan.per_client_limit = Some(limit);
        plan
    };
    let mut reused = redeem_plan("org:b", "q-a1", "1");
    reused.redemption.redemption_id = "rdm-q-a1-again".into();
    let mut edited = redeem_plan("org:c", "q-c0", "1");
    edited.coupon_revision = Some(2);
    let plans = vec![
        edited,
        redeem_plan("org:a", "q-a1", "3"),
        redeem_plan("org:a", "q-a2", "4"),
        redeem_plan("org:a", "q-a3", "6"),
        of("c2", stock(1, redeem_plan("org:b", "q-b1", "1"))),
        of("c2", stock(1, redeem_plan("org:b", "q-b2", "1"))),
        reused,
        limit(1, redeem_plan("org:c", "q-c1", "2")),
        limit(1, redeem_plan("org:c", "q-c2", "2")),
    ];
    let outcomes = redeem_together(store, &t, &plans).await;
    let kinds: Vec<&str> = outcomes
        .iter()
        .map(|outcome| match outcome {
            Ok(_) => "ok",
            Err(RepoError::Precondition(m)) if m.contains("not enough") => "points",
            Err(RepoError::Precondition(m)) if m.contains("stock") => "stock",
            Err(RepoError::Precondition(m)) if m.contains("limit") => "limit",
            Err(RepoError::Conflict(_)) => "conflict",
            Err(RepoError::Stale(_)) => "stale",
            Err(other) => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "stale", "ok", "ok", "points", "ok", "stock", "conflict", "ok", "limit"
        ]
    );
    let written: Vec<_> = outcomes.into_iter().filter_map(Result::ok).collect();
    for (redemption, plan) in written
        .iter()
        .zip([&plans[1], &plans[2], &plans[4], &plans[7]])
    {
        assert_eq!(redemption.redemption_id, plan.redemption.redemption_id);
        let stored = SeaRedemptionRepository::new(store.db.clone(), Arc::new(SystemClock))
            .get(&t, &redemption.redemption_id)
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(stored.use_event_id, redemption.use_event_id);
    }

    // The points: a spent 3 and 4 from its oldest lots and has 5 left; b 1 and c 2, from 3.
    assert_eq!(lots_left(store, "org:a").await, [0, 0, 50_000, 1_000_000]);
    assert_eq!(
        lots_left(store, "org:b").await,
        [20_000, 40_000, 50_000, 1_000_000]
    );
    assert_eq!(
        lots_left(store, "org:c").await,
        [10_000, 40_000, 50_000, 1_000_000]
    );
    assert_available(
        &ledger,
        &t,
        &[("org:a", "5"), ("org:b", "11"), ("org:c", "10")],
    )
    .await;

    // What was refused left nothing: no record of its request, no message, no count.
    let records = idempotency_records::Entity::find()
        .filter(idempotency_records::Column::TenantId.eq("t1"))
        .all(&store.db)
        .await
        .expect("records");
    let mut ids: Vec<_> = records.into_iter().map(|r| r.request_id).collect();
    ids.sort();
    assert_eq!(ids, ["q-a1", "q-a2", "q-b1", "q-c1"]);
    assert_eq!(
        outbox::Entity::find()
            .count(&store.db)
            .await
            .expect("count"),
        4
    );
    let counted = |id: &'static str| {
        let db = store.db.clone();
        async move {
            coupons::Entity::find_by_id(("t1".to_owned(), id.to_owned()))
                .one(&db)
                .await
                .expect("read")
                .expect("coupon")
                .redeemed_count
        }
    };
    assert_eq!((counted("c1").await, counted("c2").await), (3, 1));
}

/// A batch whose function call fails as a whole (an error the function does not catch: here a
/// Use event whose request id an earlier event holds) is written again item by item, so only
/// that item fails and the others are written. On SQLite, where the batch is one transaction,
/// that item is undone in its savepoint alone, with the same outcomes.
async fn a_batch_that_fails_as_a_whole_is_written_again_item_by_item(store: &TestDb) {
    let ledger = SeaLedgerRepository::new(store.db.clone(), Arc::new(SystemClock));
    let t = tenant("t1");
    coupons::Entity::insert(coupon("t1", "c1", "Mug"))
        .exec(&store.db)
        .await
        .expect("coupon");
    for client in ["org:a", "org:b"] {
        earn_lots_for(&ledger, &t, client, &["3", "4", "5"]).await;
    }
    let mut adjustment = event("org:b", "1");
    adjustment.request_id = Some("held".into());
    ledger
        .append(&t, &adjustment, None)
        .await
        .expect("adjustment");
    let mut clashing = redeem_plan("org:b", "q-2", "1");
    clashing.use_event.request_id = Some("held".into());
    let plans = [
        redeem_plan("org:a", "q-1", "1"),
        clashing,
        redeem_plan("org:b", "q-3", "2"),
    ];
    let outcomes = redeem_together(store, &t, &plans).await;
    assert!(outcomes[0].is_ok(), "{outcomes:?}");
    assert!(
        matches!(outcomes[1], Err(RepoError::Conflict(_))),
        "{outcomes:?}"
    );
    assert!(outcomes[2].is_ok(), "{outcomes:?}");
    assert_available(&ledger, &t, &[("org:a", "11"), ("org:b", "11")]).await;
}

/// Earns written together (group commit: on PostgreSQL one `loyalty_earn_batch` call, on SQLite
/// one transaction of a script per earn) each have the outcome they would have alone: a document
/// delivered twice in one batch is stored once and earns once, one client's events are numbered
/// in the batch's order, and every balance is the sum of its events.
async fn earns_written_together_each_have_their_own_outcome(store: &TestDb) {
    use one_loyalty::persistence::DocumentRepository;
    use one_loyalty::persistence::documents::SeaDocumentRepository;
    let t = tenant("t1");
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    let deliveries = [
        ("A1", "org:a"),
        ("B1", "org:b"),
        ("A2", "org:a"),
        ("A1", "org:a"),
    ];
    let decided: Vec<_> = deliveries
        .iter()
        .map(|(id, client)| decided_invoice(id, client, now))
        .collect();
    let repo = SeaDocumentRepository::new(store.db.clone(), Arc::new(SystemClock));
    let outcomes = write_earns_together(store, &t, &decided, now, |_| {}).await;
    let event_ids: Vec<Option<i64>> = outcomes
        .into_iter()
        .map(|outcome| outcome.expect("written"))
        .collect();
    let [Some(a1), Some(b1), Some(a2), None] = event_ids[..] else {
        panic!("three earned, the second A1 stored before: {event_ids:?}");
    };
    assert!(
        a1 < a2,
        "org:a's events in the order of the batch: {a1}, {a2}"
    );
    assert_ne!(b1, a1);
    for (id, event_id) in [("A1", a1), ("B1", b1), ("A2", a2)] {
        let found = repo.find(&t, id).await.expect("find").expect("stored");
        assert_eq!(found.event_id, Some(event_id), "{id} names its event");
    }
    let ledger = SeaLedgerRepository::new(store.db.clone(), Arc::new(SystemClock));
    for (client, events) in [("org:a", 2), ("org:b", 1)] {
        let balance = ledger
            .balance(&t, client)
            .await
            .expect("read")
            .expect("balance");
        assert_eq!(
            balance.total,
            dec("75.0001") * Decimal::from(events),
            "{client} earned once per document"
        );
    }
    for audit in ledger.audit(&t).await.expect("audit") {
        assert!(audit.violations().is_empty(), "{audit:?}");
    }
}

/// Writes the decided invoices as group commit writes them together: on PostgreSQL in one
/// `loyalty_earn_batch` call, on SQLite in one transaction of a script per earn. `alter` changes
/// each stored document before it is written.
async fn write_earns_together(
    store: &TestDb,
    t: &TenantId,
    decided: &[(
        one_loyalty::domain::documents::DocumentRecord,
        one_loyalty::persistence::documents::Completion,
    )],
    now: chrono::DateTime<Utc>,
    alter: impl Fn(&mut one_loyalty::domain::documents::DocumentRecord),
) -> Vec<Result<Option<i64>, RepoError>> {
    use one_loyalty::persistence::few_statements::{EarnWriter, PreparedEarn};
    use one_loyalty::persistence::sqlite_script::{PreparedScriptEarn, ScriptWriter};
    let parts: Vec<_> = decided
        .iter()
        .map(|(record, decision)| {
            let (event, lines) = decision.event.as_ref().expect("an earn");
            let mut stored = decision.applied_to(record.clone(), None, now);
            alter(&mut stored);
            (stored, event, lines, decision.basis)
        })
        .collect();
    if store.db.get_database_backend() == sea_orm::DbBackend::Postgres {
        let items = parts
            .iter()
            .map(|(stored, event, lines, basis)| {
                PreparedEarn::new(t, stored, event, lines, *basis, now).expect("prepared")
            })
            .collect();
        written_in_turn(EarnWriter::new(store.db.clone()), items).await
    } else {
        let items = parts
            .iter()
            .map(|(stored, event, lines, basis)| {
                PreparedScriptEarn::new(t, stored, event, lines, *basis, now).expect("prepared")
            })
            .collect();
        written_in_turn(ScriptWriter::new(store.db.clone()), items).await
    }
}

/// On PostgreSQL, an earn the database refuses (here a document whose client id is longer than its
/// column) fails the same way alone (a lone earn has no subtransaction: the call fails) and in a
/// batch (its subtransaction fails, the others are written), and leaves nothing behind either
/// way. PostgreSQL only: SQLite does not bound a text's length; the service refuses an id
/// that long before it gets there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earn_the_database_refuses_fails_alike_alone_and_together_on_postgres() {
    use one_loyalty::persistence::DocumentRepository;
    use one_loyalty::persistence::documents::SeaDocumentRepository;
    if !crate::helpers::postgres_configured() {
        eprintln!("skipped: LOYALTY_TEST_DATABASE_URL is not set");
        return;
    }
    let fixture = TestDb::new(crate::helpers::Backend::Postgres).await;
    let store = &fixture;
    let t = tenant("t1");
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    let repo = SeaDocumentRepository::new(store.db.clone(), Arc::new(SystemClock));
    let ledger = SeaLedgerRepository::new(store.db.clone(), Arc::new(SystemClock));
    let client_id_too_long = |stored: &mut one_loyalty::domain::documents::DocumentRecord| {
        if stored.document.document_id == "BAD" {
            stored.document.client_id = "c".repeat(200);
        }
    };
    let bad = decided_invoice("BAD", "org:a", now);
    let alone = write_earns_together(
        store,
        &t,
        std::slice::from_ref(&bad),
        now,
        client_id_too_long,
    )
    .await;
    assert!(
        matches!(alone[..], [Err(RepoError::Other(_))]),
        "alone: {alone:?}"
    );
    let together = write_earns_together(
        store,
        &t,
        &[bad, decided_invoice("GOOD", "org:b", now)],
        now,
        client_id_too_long,
    )
    .await;
    assert!(
        matches!(together[..], [Err(RepoError::Other(_)), Ok(Some(_))]),
        "together: {together:?}"
    );
    assert!(repo.find(&t, "BAD").await.expect("find").is_none());
    assert!(repo.find(&t, "GOOD").await.expect("find").is_some());
    assert!(ledger.balance(&t, "org:a").await.expect("read").is_none());
    for audit in ledger.audit(&t).await.expect("audit") {
        assert!(audit.violations().is_empty(), "{audit:?}");
    }
    fixture.finish().await;
}

/// The schema can be taken down to nothing and built again: every migration's `down` undoes its
/// `up` (tables, triggers, and on PostgreSQL the write functions), in reverse order.
async fn every_migration_goes_down_and_up_again(store: &TestDb) {
    use migrations::{Migrator, MigratorTrait};
    use sea_orm::{ConnectionTrait, Statement};
    let count = |sql: &'static str| {
        let db = store.db.clone();
        async move {
            db.query_one_raw(Statement::from_string(db.get_database_backend(), sql))
                .await
                .expect(sql)
                .expect("a row")
                .try_get::<i64>("", "n")
                .expect("n")
        }
    };
    let (tables, functions) = match store.db.get_database_backend() {
        sea_orm::DbBackend::Postgres => (
            "SELECT COUNT(*) AS n FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name <> 'seaql_migrations'",
            "SELECT COUNT(*) AS n FROM pg_proc \
             WHERE pronamespace = current_schema()::regnamespace AND proname LIKE 'loyalty%'",
        ),
        _ => (
            "SELECT COUNT(*) AS n FROM sqlite_master \
             WHERE type IN ('table', 'trigger') AND name NOT LIKE 'sqlite%' \
             AND name <> 'seaql_migrations'",
            "SELECT 0 AS n",
        ),
    };
    let built = (count(tables).await, count(functions).await);
    assert!(built.0 > 20, "the schema is built: {built:?}");
    if store.db.get_database_backend() == sea_orm::DbBackend::Postgres {
        assert!(built.1 >= 3, "the write functions are there: {built:?}");
    }
    Migrator::down(&store.db, None).await.expect("down");
    assert_eq!(
        (count(tables).await, count(functions).await),
        (0, 0),
        "nothing is left"
    );
    Migrator::up(&store.db, None).await.expect("up again");
    assert_eq!(
        (count(tables).await, count(functions).await),
        built,
        "built again alike"
    );
}

/// How many migrations go down to just before migration `name`: it and every one after it.
fn steps_down_to_before(name: &str) -> u32 {
    use migrations::{Migrator, MigratorTrait};
    let all = Migrator::migrations();
    let at = all
        .iter()
        .position(|m| m.name() == name)
        .unwrap_or_else(|| panic!("no migration {name}"));
    u32::try_from(all.len() - at).expect("a few migrations")
}

/// Takes the schema down to just before migration `name`.
async fn down_to_before(db: &sea_orm::DatabaseConnection, name: &str) {
    use migrations::{Migrator, MigratorTrait};
    Migrator::down(db, Some(steps_down_to_before(name)))
        .await
        .unwrap_or_else(|e| panic!("down to before {name}: {e}"));
}

/// A document's lines and an event's calculation are kept in their rows' `lines`
/// (`m20261207_000020`), and `document_lines` and `ledger_event_lines` are views over them. Taken
/// down, that migration puts every line back into the tables, row for row as the views gave
/// them; taken up again, it moves them back into the rows, and both read back unchanged.
async fn lines_kept_in_their_rows_go_back_to_tables_and_return_unchanged(store: &TestDb) {
    use migrations::{Migrator, MigratorTrait};
    use one_loyalty::persistence::DocumentRepository;
    use one_loyalty::persistence::documents::SeaDocumentRepository;
    use one_loyalty::persistence::entities::{document_lines, ledger_event_lines};
    let repo = SeaDocumentRepository::new(store.db.clone(), Arc::new(SystemClock));
    let ledger = SeaLedgerRepository::new(store.db.clone(), Arc::new(SystemClock));
    let t = tenant("t1");
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    let (a, decision) = received_decided(&repo, &t, "A", "org:a", now).await;
    // A document stored and not decided: lines, and no event.
    let (waiting, _) = decided_invoice("B", "org:b", now);
    repo.receive(&t, &waiting, None).await.expect("receive B");
    let event_id = a.event_id.expect("A earned");
    let read_back = || async {
        (
            repo.find(&t, "A").await.expect("find A"),
            repo.find(&t, "B").await.expect("find B"),
            ledger.event_detail(&t, event_id).await.expect("detail"),
        )
    };
    let line_rows = || async {
        let mut documents = document_lines::Entity::find()
            .all(&store.db)
            .await
            .expect("document lines");
        documents.sort_by(|x, y| (&x.document_id, x.line_no).cmp(&(&y.document_id, y.line_no)));
        let mut events = ledger_event_lines::Entity::find()
            .all(&store.db)
            .await
            .expect("event lines");
        events.sort_by_key(|l| (l.event_id, l.line_no));
        (documents, events)
    };
    let before = read_back().await;
    assert_eq!(before.0.as_ref().map(|d| d.document.lines.len()), Some(2));
    assert_eq!(before.1.as_ref().map(|d| d.document.lines.len()), Some(2));
    assert_eq!(
        before.2.as_ref().map(|(_, lines)| lines.clone()),
        decision.event.clone().map(|(_, lines)| lines),
        "the calculation reads back exactly"
    );
    let viewed = line_rows().await;
    assert_eq!((viewed.0.len(), viewed.1.len()), (4, 2), "{viewed:?}");
    assert!(
        viewed.1.iter().any(|l| l.rules.contains("rule_id")),
        "a line's rules are there: {viewed:?}"
    );

    down_to_before(&store.db, "m20261207_000020_lines_in_their_rows").await;
    assert_eq!(
        line_rows().await,
        viewed,
        "the tables hold what the views gave"
    );
    Migrator::up(&store.db, None).await.expect("up again");
    assert_eq!(
        line_rows().await,
        viewed,
        "the views give what the tables held"
    );
    assert_eq!(
        read_back().await,
        before,
        "documents and calculation read back unchanged"
    );
}

/// Each look-up of lots is planned on the indexes that hold only the lots it can return
/// (`m20261205_000015`), so that a redemption's walk and the lots job pass over no spent or
/// expired lot. On PostgreSQL each is planned as a prepared statement's generic plan, the one a
/// pooled connection goes on to reuse, with whole-table scans off: a condition bound as a value
/// instead of written out would leave the partial indexes unusable and fail this. On SQLite the
/// redemption script's walk seeks each next lot from the last one, not from the client's first,
/// and updates the lots it walked by their rowids.
async fn every_look_up_of_lots_is_answered_from_the_lot_indexes(store: &TestDb) {
    use one_loyalty::persistence::ledger::{lots_due, lots_expiring, lots_spendable};
    use sea_orm::sea_query::{PostgresQueryBuilder, QueryBuilder};
    use sea_orm::{ConnectionTrait, QuerySelect, QueryTrait, Statement, TransactionTrait};
    let backend = store.db.get_database_backend();
    let t = TenantId::parse("t1").expect("tenant");
    let now = Utc::now();
    let mut look_ups = vec![
        (
            "spendable",
            lots_spendable(&t, "org:a").limit(64).build(backend),
            &["ix_earn_lots_spendable"][..],
        ),
        (
            "due",
            lots_due(now, 100).build(backend),
            &["ix_earn_lots_locked", "ix_earn_lots_expiring"][..],
        ),
        (
            "expiring",
            lots_expiring(&t, "org:a", now).build(backend),
            &["ix_earn_lots_spendable|ix_earn_lots_expiring"][..],
        ),
    ];
    if backend == sea_orm::DbBackend::Sqlite {
        // The redemption script's walk: its first lot, then each next one sought from the last;
        // the lots walked then updated one by one, not found by a pass over the tenant's lots.
        look_ups.push((
            "walk",
            one_loyalty::persistence::sqlite_script::lots_spent_oldest_first(&t, "org:a", 100),
            &[
                "ix_earn_lots_spendable (tenant_id=? AND client_id=?)",
                "ix_earn_lots_spendable (tenant_id=? AND client_id=? AND earned_at>?)",
                "SEARCH earn_lots USING INTEGER PRIMARY KEY (rowid=?)",
            ][..],
        ));
    }
    for (name, statement, indexes) in look_ups {
        let values = statement.values.clone().map(|v| v.0).unwrap_or_default();
        let plan: Vec<String> = if backend == sea_orm::DbBackend::Postgres {
            let txn = store.db.begin().await.expect("begin");
            txn.execute_unprepared("SET LOCAL enable_seqscan = off")
                .await
                .expect("set");
            txn.execute_unprepared("SET LOCAL plan_cache_mode = force_generic_plan")
                .await
                .expect("set");
            // A prepared statement outlives the transaction: each has a name of its own.
            txn.execute_unprepared(&format!("PREPARE look_up_{name} AS {}", statement.sql))
                .await
                .expect("prepare");
            let arguments: Vec<String> = values
                .iter()
                .map(|v| PostgresQueryBuilder.value_to_string(v))
                .collect();
            let rows = txn
                .query_all_raw(Statement::from_string(
                    backend,
                    format!("EXPLAIN EXECUTE look_up_{name}({})", arguments.join(", ")),
                ))
                .await
                .expect("explain");
            txn.execute_unprepared(&format!("DEALLOCATE look_up_{name}"))
                .await
                .expect("deallocate");
            txn.rollback().await.expect("rollback");
            rows.iter()
                .map(|r| r.try_get::<String>("", "QUERY PLAN").expect("plan line"))
                .collect()
        } else {
            store
                .db
                .query_all_raw(Statement::from_sql_and_values(
                    backend,
                    format!("EXPLAIN QUERY PLAN {}", statement.sql),
                    values,
                ))
                .await
                .expect("explain")
                .iter()
                .map(|r| r.try_get::<String>("", "detail").expect("plan line"))
                .collect()
        };
        let plan = plan.join("\n");
        for index in indexes {
            assert!(
                index.split('|').any(|one| plan.contains(one)),
                "{name} is planned without {index}:\n{plan}"
            );
        }
    }
}

/// The client revision an earn's basis holds moves with every change to what an earn reads of
/// the client: its row (saved by synchronization or changed in SQL), the segments it is in and
/// its eligibility intervals; another client's stays. A segment's rates move the tenant's
/// pricing revision.
async fn every_change_to_what_an_earn_reads_of_a_client_raises_its_revision(store: &TestDb) {
    use one_loyalty::domain::directory::ClientRecord;
    use one_loyalty::persistence::directory::SeaDirectoryRepository;
    use one_loyalty::persistence::rules::SeaRulesRepository;
    use one_loyalty::persistence::{DirectoryRepository, EarnBasis, RulesRepository};
    use sea_orm::ConnectionTrait;
    clients_in_segments(store, &[("t1", "org:a", "gold"), ("t1", "org:b", "gold")]).await;
    let rules = SeaRulesRepository::new(store.db.clone());
    let t = tenant("t1");
    let basis = |client: &'static str| {
        let rules = rules.clone();
        let t = t.clone();
        async move {
            rules
                .priced_client(&t, client, None)
                .await
                .expect("read")
                .expect("known")
                .basis
        }
    };
    let other = basis("org:b").await;
    let mut last = basis("org:a").await;
    let mut moved = |now: EarnBasis, client: bool, what: &str| {
        if client {
            assert!(
                now.client_revision > last.client_revision,
                "{what}: the client's revision stayed at {}",
                last.client_revision
            );
            assert_eq!(now.pricing_revision, last.pricing_revision, "{what}");
        } else {
            assert!(
                now.pricing_revision > last.pricing_revision,
                "{what}: the pricing revision stayed at {}",
                last.pricing_revision
            );
            assert_eq!(now.client_revision, last.client_revision, "{what}");
        }
        last = now;
    };
    let directory = SeaDirectoryRepository::new(store.db.clone());
    let client = ClientRecord {
        client_id: "org:a".into(),
        name: "Renamed".into(),
        status: "ACTIVE".into(),
        has_account: true,
        segment_ids: vec!["gold".into(), "silver".into()],
        updated_at: Utc::now(),
    };
    directory.save_client(&t, &client).await.expect("save");
    moved(basis("org:a").await, true, "the client saved");
    let at = |day: u32| format!("'2026-03-{day:02} 00:00:00+00:00'");
    for change in [
        "UPDATE clients SET name = 'Again' WHERE tenant_id = 't1' AND client_id = 'org:a'"
            .to_owned(),
        "INSERT INTO client_segments (tenant_id, client_id, segment_id) \
         VALUES ('t1', 'org:a', 'bronze')"
            .to_owned(),
        "UPDATE client_segments SET segment_id = 'copper' \
         WHERE tenant_id = 't1' AND client_id = 'org:a' AND segment_id = 'bronze'"
            .to_owned(),
        "DELETE FROM client_segments WHERE tenant_id = 't1' AND client_id = 'org:a' \
         AND segment_id = 'copper'"
            .to_owned(),
        format!(
            "INSERT INTO client_eligibility \
             (tenant_id, declaration_type_id, client_id, valid_from, valid_until) \
             VALUES ('t1', 'D1', 'org:a', {}, NULL)",
            at(1)
        ),
        format!(
            "UPDATE client_eligibility SET valid_until = {} \
             WHERE tenant_id = 't1' AND client_id = 'org:a'",
            at(9)
        ),
        "DELETE FROM client_eligibility WHERE tenant_id = 't1' AND client_id = 'org:a'".to_owned(),
    ] {
        store.db.execute_unprepared(&change).await.expect(&change);
        moved(basis("org:a").await, true, &change);
    }
    set_gold_rate(&rules, &t).await;
    moved(basis("org:a").await, false, "a segment's rate");
    let now_other = basis("org:b").await;
    assert_eq!(
        now_other.client_revision, other.client_revision,
        "another client's revision is its own"
    );
}

/// An earn priced without a read carries its basis; its write checks it under its locks, on
/// every path (one call or script, alone or together, and a transaction of statements): one
/// that moved refuses the earn as stale and writes nothing of it, nor stops the others.
#[allow(clippy::too_many_lines)] // one scenario per path
async fn an_earn_whose_basis_moved_is_refused_and_leaves_no_trace(store: &TestDb) {
    use one_loyalty::persistence::documents::SeaDocumentRepository;
    use one_loyalty::persistence::rules::SeaRulesRepository;
    use one_loyalty::persistence::{DocumentRepository, EarnBasis, RulesRepository};
    use sea_orm::ConnectionTrait;
    clients_in_segments(store, &[("t1", "org:a", "gold")]).await;
    let repo = SeaDocumentRepository::new(store.db.clone(), Arc::new(SystemClock));
    let rules = SeaRulesRepository::new(store.db.clone());
    let ledger = SeaLedgerRepository::new(store.db.clone(), Arc::new(SystemClock));
    let t = tenant("t1");
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    let basis = || async {
        rules
            .priced_client(&t, "org:a", None)
            .await
            .expect("read")
            .expect("known")
            .basis
    };
    let with_basis = |id: &str, basis: EarnBasis| {
        let (record, mut decision) = decided_invoice(id, "org:a", now);
        decision.basis = Some(basis);
        (record, decision)
    };
    let total = || async {
        ledger
            .balance(&t, "org:a")
            .await
            .expect("read")
            .map(|b| b.total)
    };
    let stale = |outcome: Result<_, RepoError>, what: &str| {
        assert!(
            matches!(outcome, Err(RepoError::Stale(_))),
            "{what}: {outcome:?}"
        );
    };

    // The basis as read: written.
    let first = basis().await;
    let (doc, decision) = with_basis("A", first);
    repo.receive(&t, &doc, Some(&decision))
        .await
        .expect("a basis that holds");
    assert_eq!(total().await, Some(dec("75.0001")));

    // The client moved: refused on the one-call path, and nothing of it stored.
    store
        .db
        .execute_unprepared(
            "INSERT INTO client_segments (tenant_id, client_id, segment_id) \
             VALUES ('t1', 'org:a', 'silver')",
        )
        .await
        .expect("a new segment");
    let (doc, decision) = with_basis("B", first);
    stale(
        repo.receive(&t, &doc, Some(&decision)).await.map(|_| ()),
        "one call",
    );
    assert_eq!(repo.find(&t, "B").await.expect("find"), None);

    // The statement path: a document stored as received, completed on a stale basis.
    repo.receive(&t, &doc, None).await.expect("received");
    stale(
        repo.complete(&t, &doc, &decision).await.map(|_| ()),
        "a transaction",
    );
    let waiting = repo.find(&t, "B").await.expect("find").expect("stored");
    assert_eq!((waiting.status, waiting.event_id), (doc.status, None));

    // The pricing moved: the client's revision alone does not make it hold.
    let second = basis().await;
    set_gold_rate(&rules, &t).await;
    let third = basis().await;
    assert_eq!(third.client_revision, second.client_revision);
    let (record_c, decision_c) = with_basis("C", second);
    stale(
        repo.receive(&t, &record_c, Some(&decision_c))
            .await
            .map(|_| ()),
        "the pricing revision",
    );
    // A client not known holds no basis.
    let (record_x, mut decision_x) = decided_invoice("X", "org:nobody", now);
    decision_x.basis = Some(third);
    stale(
        repo.receive(&t, &record_x, Some(&decision_x))
            .await
            .map(|_| ()),
        "an unknown client",
    );

    // Together: the stale item refused alone, the others written.
    let batch = [with_basis("D", second), with_basis("E", third)];
    let outcomes = write_earns_together(store, &t, &batch, now, |_| {}).await;
    assert!(
        matches!(outcomes[0], Err(RepoError::Stale(_))),
        "{outcomes:?}"
    );
    assert!(matches!(outcomes[1], Ok(Some(_))), "{outcomes:?}");
    for (id, stored) in [("C", false), ("D", false), ("E", true), ("X", false)] {
        assert_eq!(
            repo.find(&t, id).await.expect("find").is_some(),
            stored,
            "{id}"
        );
    }
    assert_eq!(
        total().await,
        Some(dec("150.0002")),
        "A and E earned, no other"
    );
    for audit in ledger.audit(&t).await.expect("audit") {
        assert!(audit.violations().is_empty(), "{audit:?}");
    }
}

/// Gold's rate, 1.5 from 2026-03-01, as the rules API sets it.
async fn set_gold_rate(rules: &one_loyalty::persistence::rules::SeaRulesRepository, t: &TenantId) {
    use one_loyalty::persistence::RulesRepository;
    rules
        .set_segment_rate(
            t,
            "gold",
            NaiveDate::from_ymd_opt(2026, 3, 1).expect("day"),
            dec("1.5"),
            &record("rate", 1),
        )
        .await
        .expect("rate");
}

/// The indexes on an optional key hold only the rows that have one (`m20261207_000021`), and taken
/// down, that migration gives back the indexes as they were. Uniqueness where the key is set is
/// the ledger's and the coupons' tests' to check (`one_event_per_document_is_enforced_by_the_database`
/// and the others); here, rows without the key are written side by side, and each index's
/// definition is read back from the database.
async fn indexes_on_optional_keys_hold_only_the_rows_that_have_one(store: &TestDb) {
    use migrations::{Migrator, MigratorTrait};
    use sea_orm::{ConnectionTrait, Statement};
    let indexes = [
        ("ux_ledger_events_request", "request_id"),
        ("ux_ledger_events_document", "document_id"),
        ("ix_documents_corrected", "corrected_document_id"),
        ("ux_redemptions_code", "code"),
    ];
    let backend = store.db.get_database_backend();
    let definition = |index: &'static str| {
        let db = store.db.clone();
        async move {
            let sql = if backend == sea_orm::DbBackend::Postgres {
                "SELECT indexdef AS definition FROM pg_indexes \
                 WHERE schemaname = current_schema() AND indexname = $1"
            } else {
                "SELECT sql AS definition FROM sqlite_master WHERE type = 'index' AND name = ?"
            };
            db.query_one_raw(Statement::from_sql_and_values(backend, sql, [index.into()]))
                .await
                .expect("read the index")
                .unwrap_or_else(|| panic!("{index} exists"))
                .try_get::<String>("", "definition")
                .expect("its definition")
        }
    };
    // PostgreSQL writes the predicate back in parentheses.
    let partial_on = |column: &str, definition: &str| {
        let definition = definition.replace(['(', ')'], "");
        definition.ends_with(&format!("WHERE {column} IS NOT NULL"))
    };

    let ledger = SeaLedgerRepository::new(store.db.clone(), Arc::new(SystemClock));
    let t = tenant("t1");
    ledger
        .append(&t, &event("org:a", "10"), None)
        .await
        .expect("an event with neither a document nor a request id");
    ledger
        .append(&t, &event("org:a", "5"), None)
        .await
        .expect("and another beside it");
    for (index, column) in indexes {
        let text = definition(index).await;
        assert!(partial_on(column, &text), "{index} is partial: {text}");
    }

    down_to_before(
        &store.db,
        "m20261207_000021_optional_keys_indexed_where_set",
    )
    .await;
    for (index, column) in indexes {
        let text = definition(index).await;
        assert!(!partial_on(column, &text), "{index} is whole again: {text}");
        assert!(text.contains(column), "{index} is on {column}: {text}");
    }
    Migrator::up(&store.db, None).await.expect("up again");
    for (index, column) in indexes {
        let text = definition(index).await;
        assert!(
            partial_on(column, &text),
            "{index} is partial again: {text}"
        );
    }
}

/// On SQLite, `ledger_events` and `outbox` give ids without `AUTOINCREMENT` (`m20261207_000022`):
/// no row of `sqlite_sequence` is kept for them, and the next id is the largest plus one. Taken
/// down, that migration puts the keyword back with each sequence at the table's largest id; up
/// again, the schema (tables, indexes, triggers, views) is exactly as it was and no row is lost.
/// On PostgreSQL the ids come from sequences and the migration does nothing: the same steps give
/// ever larger ids there too.
async fn event_and_message_ids_follow_the_largest_without_a_sequence_row(store: &TestDb) {
    use migrations::{Migrator, MigratorTrait};
    let db = store.db.clone();
    let sqlite = db.get_database_backend() == sea_orm::DbBackend::Sqlite;
    let schema = || text_rows(&db, SQLITE_SCHEMA);
    let sequences = || text_rows(&db, SQLITE_SEQUENCES);
    let contents = || text_rows(&db, LEDGER_AND_OUTBOX_CONTENTS);
    let ledger = SeaLedgerRepository::new(db.clone(), Arc::new(SystemClock));
    let t = tenant("t1");
    let append = |points: &'static str| {
        let (ledger, t) = (&ledger, &t);
        async move {
            ledger
                .append(t, &event("org:a", points), None)
                .await
                .expect("an event")
                .event_id
        }
    };
    let message = |aggregate: &'static str| outbox_message(&db, aggregate);

    let (first, second) = (append("10").await, append("5").await);
    let first_message = message("m1").await;
    assert!(second > first, "{first} then {second}");
    let built = if sqlite { schema().await } else { Vec::new() };
    if sqlite {
        for table in ["ledger_events", "outbox"] {
            let definition = &built
                .iter()
                .find(|object| object[0] == "table" && object[1] == table)
                .expect("the table")[3];
            assert!(!definition.contains("AUTOINCREMENT"), "{definition}");
        }
        assert!(sequences().await.is_empty(), "no sequence rows");
    }
    let kept = if sqlite { contents().await } else { Vec::new() };

    down_to_before(&db, "m20261207_000022_sqlite_ids_without_autoincrement").await;
    if sqlite {
        let with_keyword: Vec<_> = built
            .iter()
            .map(|object| {
                let mut object = object.clone();
                if object[0] == "table" && ["ledger_events", "outbox"].contains(&&*object[1]) {
                    object[3] = object[3].replacen(" PRIMARY KEY", " PRIMARY KEY AUTOINCREMENT", 1);
                }
                object
            })
            .collect();
        assert_eq!(
            schema().await,
            with_keyword,
            "down: the keyword back, nothing else"
        );
        assert_eq!(
            sequences().await.concat(),
            [
                format!("ledger_events={second}"),
                format!("outbox={first_message}")
            ]
            .into_iter()
            .flat_map(|row| [row, String::new(), String::new(), String::new()])
            .collect::<Vec<_>>(),
            "each sequence at its table's largest id"
        );
        assert_eq!(contents().await, kept, "down: no row lost");
    }
    let third = append("1").await;
    assert!(third > second, "{second} then {third}");
    let kept = if sqlite { contents().await } else { Vec::new() };

    Migrator::up(&db, None).await.expect("up again");
    if sqlite {
        assert_eq!(schema().await, built, "up: the schema exactly as it was");
        assert_eq!(contents().await, kept, "up: no row lost");
        assert!(sequences().await.is_empty(), "no sequence rows again");
    }
    let fourth = append("2").await;
    let second_message = message("m2").await;
    assert!(fourth > third, "{third} then {fourth}");
    assert!(second_message > first_message);
    if sqlite {
        assert_eq!(
            (third, fourth),
            (second + 1, third + 1),
            "the largest plus one"
        );
        assert_eq!(second_message, first_message + 1);
    }
}

/// SQLite only (`m20261207_000022` does nothing on PostgreSQL): a rebuild that fails part-way
/// leaves the schema as it was. A view over the view `ledger_event_lines` is one the migration
/// does not make way for: it drops `ledger_event_lines`, and the rename then finds the other view
/// naming it and fails. The whole migration rolls back: no table dropped, no view missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_that_fails_part_way_leaves_the_schema_as_it_was_on_sqlite() {
    use migrations::{Migrator, MigratorTrait};
    use sea_orm::ConnectionTrait;
    let fixture = TestDb::new(crate::helpers::Backend::Sqlite).await;
    let db = &fixture.db;
    db.execute_unprepared(
        "CREATE VIEW line_points AS SELECT event_id, line_no, points FROM ledger_event_lines",
    )
    .await
    .expect("a view over the lines' view");
    let before = text_rows(db, SQLITE_SCHEMA).await;
    let steps = steps_down_to_before("m20261207_000022_sqlite_ids_without_autoincrement");
    let failed = Migrator::down(db, Some(steps)).await;
    assert!(failed.is_err(), "the rename fails: {failed:?}");
    assert_eq!(
        text_rows(db, SQLITE_SCHEMA).await,
        before,
        "rolled back whole"
    );
    assert!(
        text_rows(db, SQLITE_SEQUENCES).await.is_empty(),
        "the ids still come without a sequence"
    );
}

/// The schema objects of a SQLite database (type, name, table, definition), but its own.
const SQLITE_SCHEMA: &str = "SELECT type, name, tbl_name, sql FROM sqlite_master \
    WHERE name NOT LIKE 'sqlite_%' AND name <> 'seaql_migrations' ORDER BY type, name";
/// The rows of `sqlite_sequence` for the ledger and the outbox.
const SQLITE_SEQUENCES: &str = "SELECT name || '=' || seq, '', '', '' FROM sqlite_sequence \
    WHERE name IN ('ledger_events', 'outbox') ORDER BY name";
/// What a rebuilt ledger and outbox must keep: the events' count, sum and largest id, and the
/// largest message id.
const LEDGER_AND_OUTBOX_CONTENTS: &str = "SELECT CAST(COUNT(*) AS TEXT), \
    CAST(SUM(points) AS TEXT), CAST(MAX(event_id) AS TEXT), \
    (SELECT CAST(MAX(message_id) AS TEXT) FROM outbox) FROM ledger_events";

/// Every row `sql` gives, its first four columns as text (NULL as empty).
async fn text_rows(db: &sea_orm::DatabaseConnection, sql: &'static str) -> Vec<Vec<String>> {
    use sea_orm::{ConnectionTrait, Statement};
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect(sql)
        .iter()
        .map(|row| {
            (0..4)
                .map(|column| {
                    row.try_get_by_index::<Option<String>>(column)
                        .expect("text")
                        .unwrap_or_default()
                })
                .collect()
        })
        .collect()
}

/// A pending outbox message of tenant `t1` for `aggregate`; its id.
async fn outbox_message(db: &sea_orm::DatabaseConnection, aggregate: &str) -> i64 {
    use one_loyalty::persistence::entities::outbox;
    let now = Utc::now().fixed_offset();
    outbox::Entity::insert(outbox::ActiveModel {
        tenant_id: Set("t1".into()),
        kind: Set("TEST".into()),
        aggregate_id: Set(aggregate.into()),
        payload: Set("{}".into()),
        status: Set("PENDING".into()),
        attempts: Set(0),
        next_attempt_at: Set(now),
        created_at: Set(now),
        ..Default::default()
    })
    .exec(db)
    .await
    .expect("a message")
    .last_insert_id
}
