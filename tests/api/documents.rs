//! Processing invoices and corrections end to end: the worked example, the agreement gate, the
//! day close, concurrent deliveries, corrections and the reasons a document earns nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use one_loyalty::domain::directory::OrderRecord;
use one_loyalty::domain::tenant::TenantId;
use one_loyalty::proto::loyalty::v1 as pb;
use pb::earn_service_client::EarnServiceClient;
use pb::{DocumentStatus as Status, NonEarningReason as Reason};

use crate::earn::{save_acme, worked_example};
use crate::helpers::{ClockedApp, DEMO_TENANT};
use crate::on_both_backends;

on_both_backends!(ClockedApp:
    the_worked_example_invoice_earns_the_hand_computed_points_with_its_breakdown,
    an_invoice_waits_for_its_sale_day_to_close_and_the_job_earns_it,
    agreed_not_agreed_agreed_again_earns_on_the_first_and_third_days_only,
    thirty_two_concurrent_deliveries_of_one_invoice_write_one_event,
    a_quantitative_correction_loses_the_points_of_the_returned_quantity,
    a_valuable_correction_and_a_correction_of_a_non_earning_invoice_change_nothing,
    a_correction_that_arrives_before_its_invoice_waits_and_is_applied_later,
    documents_that_earn_nothing_say_why,
    a_document_delivered_again_with_other_content_is_refused,
    earned_points_stay_locked_for_the_lock_period_then_expire_after_the_expiry_period,
    a_correction_of_locked_points_takes_them_from_the_locked_part,
    a_penalty_consumes_the_oldest_lots_so_expiry_takes_only_what_is_left,
    an_invoice_of_the_most_lines_allowed_earns_on_every_line_and_is_stored_whole,
    a_change_to_the_client_its_rates_or_its_agreement_prices_its_next_invoice_anew,
);

const TZ: chrono_tz::Tz = chrono_tz::Europe::Warsaw;

fn local(text: &str) -> DateTime<Utc> {
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").expect("local time");
    TZ.from_local_datetime(&naive)
        .single()
        .expect("unambiguous")
        .with_timezone(&Utc)
}

fn tenant() -> TenantId {
    TenantId::parse(DEMO_TENANT).expect("tenant")
}

fn ts(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    }
}

async fn order(app: &ClockedApp, number: &str, at: &str) {
    let record = OrderRecord {
        order_number: number.into(),
        order_id: format!("id-{number}"),
        client_id: "org:acme".into(),
        order_date: local(at),
        status: "ACCEPTED".into(),
        removed: false,
        updated_at: Utc::now(),
    };
    app.services
        .catalog
        .save_order(&tenant(), &record)
        .await
        .expect("order");
}

/// A user of org:acme who accepts the agreement at `at`.
async fn agree(app: &ClockedApp, event_id: &str, action: pb::ConsentAction, at: &str) {
    app.seed_user("u-acme", "org:acme").await;
    let request = pb::RecordConsentEventsRequest {
        request_id: format!("consent-{event_id}"),
        events: vec![pb::ConsentEvent {
            event_id: event_id.into(),
            user_id: "u-acme".into(),
            action: action as i32,
            occurred_at: Some(ts(local(at))),
            agreement_version: 1,
            ..Default::default()
        }],
    };
    pb::agreement_service_client::AgreementServiceClient::new(app.channel.clone())
        .record_consent_events(app.request(request))
        .await
        .expect("consent");
}

/// The worked example's rules, orders and an agreed client.
async fn setting(app: &ClockedApp) {
    worked_example(app).await;
    order(app, "ORD-A", "2026-03-05 10:00").await;
    order(app, "ORD-B", "2026-03-08 10:00").await;
    agree(app, "c1", pb::ConsentAction::Accept, "2026-02-01 10:00").await;
}

fn line(no: u32, product: &str, quantity: &str, order: &str) -> pb::DocumentLine {
    pb::DocumentLine {
        line_no: no,
        product_id: product.into(),
        quantity: quantity.into(),
        order_number: order.into(),
        corrected_line_no: 0,
    }
}

fn invoice(id: &str, sale_date: &str, lines: Vec<pb::DocumentLine>) -> pb::Document {
    pb::Document {
        document_id: id.into(),
        number: format!("FV/{id}"),
        client_id: "org:acme".into(),
        sale_date: sale_date.into(),
        lines,
        ..Default::default()
    }
}

/// The worked example's six lines; line 2's order is an ERP order ONe does not know: offline.
fn example_invoice(id: &str) -> pb::Document {
    invoice(
        id,
        "2026-03-09",
        vec![
            line(1, "P1", "3", "ORD-A"),
            line(2, "P2", "2", "ERP-77"),
            line(3, "P3", "5", "ORD-A"),
            line(4, "P5", "1", "ORD-B"),
            line(5, "P4", "3", "ORD-A"),
            line(6, "P4", "0.333", "ORD-A"),
        ],
    )
}

async fn process(
    app: &ClockedApp,
    document: pb::Document,
) -> Result<pb::ProcessInvoiceResponse, tonic::Status> {
    let request = pb::ProcessInvoiceRequest {
        request_id: format!("deliver-{}", document.document_id),
        invoice: Some(document),
    };
    EarnServiceClient::new(app.channel.clone())
        .process_invoice(app.request(request))
        .await
        .map(tonic::Response::into_inner)
}

async fn earned(app: &ClockedApp, document: pb::Document) -> pb::DocumentResult {
    process(app, document)
        .await
        .expect("process")
        .result
        .expect("result")
}

async fn correct(
    app: &ClockedApp,
    id: &str,
    of: &str,
    kind: pb::CorrectionType,
    lines: Vec<pb::DocumentLine>,
) -> pb::DocumentResult {
    let correction = pb::Document {
        document_id: id.into(),
        number: format!("KOR/{id}"),
        kind: pb::DocumentKind::Correction as i32,
        client_id: "org:acme".into(),
        sale_date: "2026-03-12".into(),
        lines,
        correction_type: kind as i32,
        corrected_document_id: of.into(),
        ..Default::default()
    };
    let request = pb::ProcessCorrectionRequest {
        request_id: format!("deliver-{id}"),
        correction: Some(correction),
    };
    EarnServiceClient::new(app.channel.clone())
        .process_correction(app.request(request))
        .await
        .expect("correction")
        .into_inner()
        .result
        .expect("result")
}

async fn balance(app: &ClockedApp) -> String {
    let request = pb::GetBalanceRequest {
        client_id: "org:acme".into(),
        expiring_within_days: 0,
    };
    pb::ledger_service_client::LedgerServiceClient::new(app.channel.clone())
        .get_balance(app.request(request))
        .await
        .expect("balance")
        .into_inner()
        .balance
        .expect("balance")
        .total
}

fn returned(no: u32, of_line: u32, product: &str, quantity: &str) -> pb::DocumentLine {
    pb::DocumentLine {
        corrected_line_no: of_line,
        ..line(no, product, quantity, "")
    }
}

async fn the_worked_example_invoice_earns_the_hand_computed_points_with_its_breakdown(
    app: &ClockedApp,
) {
    setting(app).await;
    let result = earned(app, example_invoice("INV-1")).await;
    assert_eq!(result.status, Status::Processed as i32);
    assert_eq!(result.points, "111.17");
    assert_eq!(balance(app).await, "111.17");
    let explained = EarnServiceClient::new(app.channel.clone())
        .explain_document(app.request(pb::ExplainDocumentRequest {
            document_id: "INV-1".into(),
        }))
        .await
        .expect("explain")
        .into_inner();
    let points: Vec<&str> = explained.lines.iter().map(|l| l.points.as_str()).collect();
    assert_eq!(points, ["66.00", "17.60", "0.00", "9.24", "16.50", "1.83"]);
    let channels: Vec<i32> = explained.lines.iter().map(|l| l.channel).collect();
    assert_eq!(
        channels[..2],
        [pb::Channel::Online as i32, pb::Channel::Offline as i32]
    );
    let drill = &explained.lines[3];
    assert_eq!(
        drill.pricing_date, "2026-03-08",
        "line 4 is priced on its order's day"
    );
    assert!(drill.rules.iter().any(|r| r.reason
        == "pricing date 2026-03-08 is before the rule's window 2026-03-10..2026-03-31"));
    assert_eq!(
        explained.lines[1].pricing_date, "2026-03-09",
        "a line without a known order is priced on the sale date"
    );
    assert_eq!(explained.stacking_mode, pb::StackingMode::Max as i32);
    let event = pb::ledger_service_client::LedgerServiceClient::new(app.channel.clone())
        .get_event(app.request(pb::GetEventRequest {
            event_id: result.event_id.clone(),
        }))
        .await
        .expect("event")
        .into_inner()
        .event
        .expect("event");
    assert_eq!(
        (event.document_id.as_str(), event.lines.len()),
        ("INV-1", 6)
    );
    assert_eq!(event.lines[5].unrounded_points, "1.8315");
}

async fn an_invoice_waits_for_its_sale_day_to_close_and_the_job_earns_it(app: &ClockedApp) {
    setting(app).await;
    app.clock.set(local("2026-03-20 14:00"));
    let pending = earned(
        app,
        invoice("INV-T", "2026-03-20", vec![line(1, "P1", "1", "")]),
    )
    .await;
    assert_eq!(pending.status, Status::PendingDayClose as i32);
    assert_eq!(balance(app).await, "0.00");
    // The day closes at midnight; the grace period (60 minutes) leaves time for late consents.
    app.clock.set(local("2026-03-21 00:30"));
    assert_eq!(
        app.services.earn.run_due(100).await.expect("job"),
        0,
        "not due yet"
    );
    app.clock.set(local("2026-03-21 01:00"));
    assert_eq!(app.services.earn.run_due(100).await.expect("job"), 1);
    let done = earned(
        app,
        invoice("INV-T", "2026-03-20", vec![line(1, "P1", "1", "")]),
    )
    .await;
    assert_eq!(done.status, Status::Processed as i32);
    assert_eq!(
        balance(app).await,
        "22.00",
        "10 x R1 2 (outranks R2 1.5) x gold 1.1"
    );
}

async fn agreed_not_agreed_agreed_again_earns_on_the_first_and_third_days_only(app: &ClockedApp) {
    worked_example(app).await;
    agree(app, "d1", pb::ConsentAction::Accept, "2026-03-01 10:00").await;
    agree(app, "d2", pb::ConsentAction::Withdraw, "2026-03-02 10:00").await;
    agree(app, "d3", pb::ConsentAction::Accept, "2026-03-03 10:00").await;
    let statuses: Vec<(i32, i32)> =
        futures::future::join_all(["2026-03-01", "2026-03-02", "2026-03-03"].map(|day| {
            earned(
                app,
                invoice(&format!("INV-{day}"), day, vec![line(1, "P4", "1", "")]),
            )
        }))
        .await
        .into_iter()
        .map(|r| (r.status, r.non_earning_reason))
        .collect();
    assert_eq!(
        statuses,
        [
            (Status::Processed as i32, Reason::Unspecified as i32),
            (Status::NotEarning as i32, Reason::NoAgreement as i32),
            (Status::Processed as i32, Reason::Unspecified as i32),
        ]
    );
    assert_eq!(
        balance(app).await,
        "11.00",
        "two invoices of 2.5 x 2 x 1.1 = 5.50"
    );
}

async fn thirty_two_concurrent_deliveries_of_one_invoice_write_one_event(app: &ClockedApp) {
    setting(app).await;
    let deliveries = (0..32).map(|_| process(app, example_invoice("INV-RACE")));
    let replies: Vec<pb::DocumentResult> = futures::future::join_all(deliveries)
        .await
        .into_iter()
        .map(|r| r.expect("delivery").result.expect("result"))
        .collect();
    assert_eq!(replies[0].status, Status::Processed as i32);
    assert!(
        replies.iter().all(|r| r == &replies[0]),
        "every delivery answers with the one stored result, to the microsecond"
    );
    assert_eq!(balance(app).await, "111.17");
    let events = pb::ledger_service_client::LedgerServiceClient::new(app.channel.clone())
        .list_events(app.request(pb::ListEventsRequest {
            client_id: "org:acme".into(),
            ..Default::default()
        }))
        .await
        .expect("events")
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
}

async fn a_quantitative_correction_loses_the_points_of_the_returned_quantity(app: &ClockedApp) {
    setting(app).await;
    earned(app, example_invoice("INV-1")).await;
    // Two of line 1's three cables come back: 66 / 3 x 2 = 44 points.
    let result = correct(
        app,
        "K-1",
        "INV-1",
        pb::CorrectionType::Quantitative,
        vec![returned(1, 1, "P1", "2")],
    )
    .await;
    assert_eq!(
        (result.status, result.points.as_str()),
        (Status::Processed as i32, "-44.00")
    );
    assert_eq!(balance(app).await, "67.17");
    let explained = EarnServiceClient::new(app.channel.clone())
        .explain_document(app.request(pb::ExplainDocumentRequest {
            document_id: "K-1".into(),
        }))
        .await
        .expect("explain")
        .into_inner();
    assert_eq!(explained.lines.len(), 1);
    assert_eq!(
        (
            explained.lines[0].quantity.as_str(),
            explained.lines[0].points.as_str()
        ),
        ("-2", "-44.00")
    );
    assert!(!explained.corrected_event_id.is_empty());
}

async fn a_valuable_correction_and_a_correction_of_a_non_earning_invoice_change_nothing(
    app: &ClockedApp,
) {
    setting(app).await;
    earned(app, example_invoice("INV-1")).await;
    let valuable = correct(
        app,
        "K-V",
        "INV-1",
        pb::CorrectionType::Valuable,
        vec![line(1, "P1", "3", "")],
    )
    .await;
    assert_eq!(
        (
            valuable.status,
            valuable.points.as_str(),
            valuable.event_id.as_str()
        ),
        (Status::Processed as i32, "0.00", "")
    );
    let nothing = earned(
        app,
        invoice("INV-0", "2026-03-09", vec![line(1, "P3", "5", "ORD-A")]),
    )
    .await;
    assert_eq!(nothing.non_earning_reason, Reason::NoBasePoints as i32);
    let correction = correct(
        app,
        "K-0",
        "INV-0",
        pb::CorrectionType::Quantitative,
        vec![returned(1, 1, "P3", "5")],
    )
    .await;
    assert_eq!(
        (correction.status, correction.points.as_str()),
        (Status::Processed as i32, "0.00")
    );
    assert_eq!(balance(app).await, "111.17");
}

async fn a_correction_that_arrives_before_its_invoice_waits_and_is_applied_later(app: &ClockedApp) {
    setting(app).await;
    let early = correct(
        app,
        "K-E",
        "INV-L",
        pb::CorrectionType::Quantitative,
        vec![returned(1, 5, "P4", "3")],
    )
    .await;
    assert_eq!(early.status, Status::WaitingForData as i32);
    earned(app, example_invoice("INV-L")).await;
    app.clock.set(local("2026-03-20 14:00"));
    app.services.earn.run_due(100).await.expect("job");
    assert_eq!(balance(app).await, "94.67", "111.17 - line 5's 16.50");
}

async fn documents_that_earn_nothing_say_why(app: &ClockedApp) {
    setting(app).await;
    app.seed_client("org:no-account", false).await;
    app.seed_client("org:unagreed", true).await;
    let cases = [
        ("ind:person", "INV-IND", Reason::IndividualClient),
        ("org:no-account", "INV-NA", Reason::NoAccount),
        ("org:unagreed", "INV-NO", Reason::NoAgreement),
    ];
    for (client_id, id, reason) in cases {
        let document = pb::Document {
            client_id: client_id.into(),
            ..invoice(id, "2026-03-09", vec![line(1, "P1", "1", "")])
        };
        assert_eq!(
            earned(app, document).await.non_earning_reason,
            reason as i32,
            "{client_id}"
        );
    }
    let request = pb::UpdateSettingsRequest {
        request_id: "offline-off".into(),
        settings: Some(pb::TenantSettings {
            offline_lines_earn: false,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["offline_lines_earn".into()],
        }),
        expected_revision: 0,
    };
    app.settings_client()
        .update_settings(app.request(request))
        .await
        .expect("settings");
    let offline = earned(
        app,
        invoice("INV-OFF", "2026-03-09", vec![line(1, "P1", "1", "ERP-1")]),
    )
    .await;
    assert_eq!(offline.non_earning_reason, Reason::OfflineExcluded as i32);
    let unknown_client = pb::Document {
        client_id: "org:later".into(),
        ..invoice("INV-LATER", "2026-03-09", vec![line(1, "P1", "1", "")])
    };
    assert_eq!(
        earned(app, unknown_client).await.status,
        Status::WaitingForData as i32
    );
    assert_eq!(balance(app).await, "0.00");
}

async fn a_document_delivered_again_with_other_content_is_refused(app: &ClockedApp) {
    setting(app).await;
    let first = process(app, example_invoice("INV-1")).await.expect("first");
    let again = process(app, example_invoice("INV-1")).await.expect("again");
    assert!(again.replayed && !first.replayed);
    assert_eq!(again.result, first.result);
    let mut changed = example_invoice("INV-1");
    changed.lines.truncate(1);
    let status = process(app, changed).await.expect_err("changed");
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    assert_eq!(balance(app).await, "111.17");
}

async fn lock_and_expire(app: &ClockedApp, lock_days: u32, expiry_months: u32) {
    let request = pb::UpdateSettingsRequest {
        request_id: "lots".into(),
        settings: Some(pb::TenantSettings {
            lock_days,
            expiry_months,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["lock_days".into(), "expiry_months".into()],
        }),
        expected_revision: 0,
    };
    app.settings_client()
        .update_settings(app.request(request))
        .await
        .expect("settings");
}

/// total, available, locked, expiring within 31 days.
async fn parts(app: &ClockedApp) -> (String, String, String, String) {
    let request = pb::GetBalanceRequest {
        client_id: "org:acme".into(),
        expiring_within_days: 31,
    };
    let b = pb::ledger_service_client::LedgerServiceClient::new(app.channel.clone())
        .get_balance(app.request(request))
        .await
        .expect("balance")
        .into_inner()
        .balance
        .expect("balance");
    (b.total, b.available, b.locked, b.expiring)
}

fn four(
    total: &str,
    available: &str,
    locked: &str,
    expiring: &str,
) -> (String, String, String, String) {
    (
        total.into(),
        available.into(),
        locked.into(),
        expiring.into(),
    )
}

async fn earned_points_stay_locked_for_the_lock_period_then_expire_after_the_expiry_period(
    app: &ClockedApp,
) {
    setting(app).await;
    lock_and_expire(app, 14, 1).await;
    earned(app, example_invoice("INV-1")).await;
    assert_eq!(
        parts(app).await,
        four("111.17", "0.00", "111.17", "111.17"),
        "locked, and expiring on 04-20 12:00, inside 31 days"
    );
    assert_eq!(
        app.services.ledger.run_lot_jobs(100).await.expect("jobs"),
        (0, 0)
    );
    app.clock.set(
        DateTime::parse_from_rfc3339("2026-04-03T12:00:00Z")
            .expect("instant")
            .to_utc(),
    );
    assert_eq!(
        app.services.ledger.run_lot_jobs(100).await.expect("jobs"),
        (1, 0),
        "14 days later it unlocks"
    );
    assert_eq!(parts(app).await, four("111.17", "111.17", "0.00", "111.17"));
    assert_eq!(
        app.services.ledger.run_lot_jobs(100).await.expect("jobs"),
        (0, 0),
        "once"
    );
    correct(
        app,
        "K-1",
        "INV-1",
        pb::CorrectionType::Quantitative,
        vec![returned(1, 1, "P1", "2")],
    )
    .await;
    assert_eq!(
        parts(app).await,
        four("67.17", "67.17", "0.00", "67.17"),
        "the return came out of the lot"
    );
    app.clock.set(
        DateTime::parse_from_rfc3339("2026-04-20T12:00:00Z")
            .expect("instant")
            .to_utc(),
    );
    assert_eq!(
        app.services.ledger.run_lot_jobs(100).await.expect("jobs"),
        (0, 1),
        "a month after earning the rest expires"
    );
    assert_eq!(parts(app).await, four("0.00", "0.00", "0.00", "0.00"));
    assert_eq!(
        app.services.ledger.run_lot_jobs(100).await.expect("jobs"),
        (0, 0),
        "once"
    );
    let events = pb::ledger_service_client::LedgerServiceClient::new(app.channel.clone())
        .list_events(app.request(pb::ListEventsRequest {
            client_id: "org:acme".into(),
            types: vec![pb::EventType::Expire as i32],
            ..Default::default()
        }))
        .await
        .expect("events")
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].points.as_str(), events[0].reason_code.as_str()),
        ("-67.17", "EXPIRY")
    );
}

async fn a_correction_of_locked_points_takes_them_from_the_locked_part(app: &ClockedApp) {
    setting(app).await;
    lock_and_expire(app, 14, 0).await;
    earned(app, example_invoice("INV-1")).await;
    correct(
        app,
        "K-1",
        "INV-1",
        pb::CorrectionType::Quantitative,
        vec![returned(1, 1, "P1", "2")],
    )
    .await;
    assert_eq!(parts(app).await, four("67.17", "0.00", "67.17", "0.00"));
    app.clock.set(
        DateTime::parse_from_rfc3339("2026-04-03T12:00:00Z")
            .expect("instant")
            .to_utc(),
    );
    assert_eq!(
        app.services.ledger.run_lot_jobs(100).await.expect("jobs"),
        (1, 0)
    );
    assert_eq!(
        parts(app).await,
        four("67.17", "67.17", "0.00", "0.00"),
        "what is left unlocks"
    );
}

async fn a_penalty_consumes_the_oldest_lots_so_expiry_takes_only_what_is_left(app: &ClockedApp) {
    setting(app).await;
    lock_and_expire(app, 0, 1).await;
    earned(app, example_invoice("INV-1")).await;
    let penalty = pb::AdjustPointsRequest {
        request_id: "penalty-1".into(),
        client_id: "org:acme".into(),
        points: "-100".into(),
        reason_code: "PENALTY".into(),
        reason: "returned pallets not paid".into(),
        user_id: "admin".into(),
    };
    pb::ledger_service_client::LedgerServiceClient::new(app.channel.clone())
        .adjust_points(app.request(penalty))
        .await
        .expect("penalty");
    assert_eq!(
        parts(app).await,
        four("11.17", "11.17", "0.00", "11.17"),
        "the penalty came out of the lot"
    );
    app.clock.set(
        DateTime::parse_from_rfc3339("2026-04-20T12:00:00Z")
            .expect("instant")
            .to_utc(),
    );
    assert_eq!(
        app.services.ledger.run_lot_jobs(100).await.expect("jobs"),
        (0, 1)
    );
    assert_eq!(
        parts(app).await,
        four("0.00", "0.00", "0.00", "0.00"),
        "nothing was taken twice"
    );
}

/// The longest invoice allowed is written whole, in statements of several chunks of rows (the
/// PostgreSQL function's JSON arguments, SQLite's script): every line stored, every line's
/// calculation kept, every line's points earned.
async fn an_invoice_of_the_most_lines_allowed_earns_on_every_line_and_is_stored_whole(
    app: &ClockedApp,
) {
    use one_loyalty::domain::documents::MAX_LINES;
    use one_loyalty::persistence::entities::{document_lines, ledger_event_lines};
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    setting(app).await;
    let count = u32::try_from(MAX_LINES).expect("a line count");
    // Each line as the worked example's first: 66.00 points.
    let lines = (1..=count).map(|no| line(no, "P1", "3", "ORD-A")).collect();
    let result = earned(app, invoice("INV-LONG", "2026-03-09", lines)).await;
    assert_eq!(result.status, Status::Processed as i32);
    let expected = format!("{}.00", 66 * count);
    assert_eq!(result.points, expected);
    assert_eq!(balance(app).await, expected);
    let stored = document_lines::Entity::find()
        .filter(document_lines::Column::DocumentId.eq("INV-LONG"))
        .count(&app.app.store.db)
        .await
        .expect("count");
    let event_id: i64 = result.event_id.parse().expect("an event id");
    let explained = ledger_event_lines::Entity::find()
        .filter(ledger_event_lines::Column::EventId.eq(event_id))
        .count(&app.app.store.db)
        .await
        .expect("count");
    assert_eq!((stored, explained), (u64::from(count), u64::from(count)));
}

/// How many steps each statement cached on the server's SQLite connections has taken through a
/// whole table (`sqlite_stmt.nscan`), summed over the connections, by its SQL. Every
/// pooled connection is taken at once, so that each is asked (the counters are per connection).
async fn full_scan_steps(app: &ClockedApp) -> BTreeMap<String, i64> {
    let pool = app.db.get_sqlite_connection_pool();
    let mut every = Vec::new();
    for _ in 0..pool.size() {
        every.push(pool.acquire().await.expect("a pooled connection"));
    }
    let mut steps = BTreeMap::new();
    for conn in &mut every {
        let rows: Vec<(String, i64)> = sea_orm::sqlx::query_as(
            "SELECT sql, nscan FROM sqlite_stmt WHERE sql NOT LIKE '%sqlite_stmt%'",
        )
        .fetch_all(&mut **conn)
        .await
        .expect("sqlite_stmt");
        for (sql, step) in rows {
            *steps.entry(sql).or_default() += step;
        }
    }
    steps
}

/// On SQLite no statement of an earn, a redemption or a read passes over a whole table: each
/// finds its rows through a key or an index, so that its cost does not grow with the tenant's
/// history. The tables hold other documents, clients, events and lots first, so that a pass over
/// one would take steps; the counters are those of the calls under test alone.
#[tokio::test]
async fn on_sqlite_no_statement_of_an_earn_a_redemption_or_a_read_passes_over_a_table() {
    use crate::redeem::{coupon, funded_client, redeem};
    let app = ClockedApp::new(crate::helpers::Backend::Sqlite).await;
    setting(&app).await;
    for client in ["org:b", "org:c", "org:d"] {
        funded_client(&app, client, "500", &[]).await;
    }
    for id in ["INV-1", "INV-2", "INV-3"] {
        earned(&app, example_invoice(id)).await;
    }
    let cart = coupon(&app, "cart", "7", Some(100), None).await;
    app.set_time("2026-03-22T12:00:00Z");
    let redemption = |request_id: &str, client_id: &str| pb::RedeemCouponRequest {
        request_id: request_id.into(),
        client_id: client_id.into(),
        coupon_id: cart.clone(),
        user_id: String::new(),
    };
    redeem(&app, redemption("r-c", "org:c"))
        .await
        .expect("redeem");
    let before = full_scan_steps(&app).await;

    for id in ["INV-4", "INV-5"] {
        let result = earned(&app, example_invoice(id)).await;
        assert_eq!(result.status, Status::Processed as i32);
    }
    for (request_id, client_id) in [("r-b1", "org:b"), ("r-b2", "org:b"), ("r-d", "org:d")] {
        redeem(&app, redemption(request_id, client_id))
            .await
            .expect("redeem");
    }
    redeem(&app, redemption("r-b1", "org:b"))
        .await
        .expect("a request sent again");
    assert_eq!(balance(&app).await, "555.85");
    let mut ledger = pb::ledger_service_client::LedgerServiceClient::new(app.channel.clone());
    for client_id in ["org:acme", "org:b"] {
        ledger
            .list_events(app.request(pb::ListEventsRequest {
                client_id: client_id.into(),
                page_size: 2,
                ..Default::default()
            }))
            .await
            .expect("events");
    }

    let after = full_scan_steps(&app).await;
    let passes: Vec<(&String, i64)> = after
        .iter()
        .map(|(sql, steps)| (sql, steps - before.get(sql).copied().unwrap_or(0)))
        .filter(|(_, steps)| *steps > 0)
        .collect();
    assert!(
        passes.is_empty(),
        "statements that passed over a table (steps):\n{passes:#?}"
    );
    assert!(
        after.keys().any(|sql| sql.contains("earn_lots")),
        "the counters are those of the service's own connections"
    );
    app.finish().await;
}

/// Invoices of a client earned before are priced from the client as read then, without reading
/// it again; every change to it, its segments' rates or its agreement prices the next one anew.
async fn a_change_to_the_client_its_rates_or_its_agreement_prices_its_next_invoice_anew(
    app: &ClockedApp,
) {
    setting(app).await;
    let p4 = |id: &str| invoice(id, "2026-03-09", vec![line(1, "P4", "1", "")]);
    let outcome = |r: pb::DocumentResult| (r.status, r.non_earning_reason, r.points);
    let processed = |points: &str| {
        (
            Status::Processed as i32,
            Reason::Unspecified as i32,
            points.to_owned(),
        )
    };
    // P4: 2.5 base points x 2 (its rule) x the best rate of the client's segments.
    assert_eq!(outcome(earned(app, p4("INV-1")).await), processed("5.50"));
    assert_eq!(
        outcome(earned(app, p4("INV-2")).await),
        processed("5.50"),
        "gold's 1.1 again"
    );
    save_acme(app, &["silver"]).await;
    assert_eq!(
        outcome(earned(app, p4("INV-3")).await),
        processed("5.25"),
        "out of gold: silver's 1.05"
    );
    pb::rules_service_client::RulesServiceClient::new(app.channel.clone())
        .set_segment_rate(app.request(pb::SetSegmentRateRequest {
            request_id: "rate-silver-up".into(),
            segment_id: "silver".into(),
            rate: "1.2".into(),
            effective_from: "2026-03-01".into(),
        }))
        .await
        .expect("rate");
    assert_eq!(
        outcome(earned(app, p4("INV-4")).await),
        processed("6.00"),
        "silver's new rate"
    );
    agree(app, "w1", pb::ConsentAction::Withdraw, "2026-03-09 08:00").await;
    assert_eq!(
        outcome(earned(app, p4("INV-5")).await),
        (
            Status::NotEarning as i32,
            Reason::NoAgreement as i32,
            "0.00".to_owned()
        ),
        "withdrawn before the sale day ended"
    );
    agree(app, "a2", pb::ConsentAction::Accept, "2026-03-09 09:00").await;
    assert_eq!(outcome(earned(app, p4("INV-6")).await), processed("6.00"));
    assert_eq!(balance(app).await, "28.25");
}
