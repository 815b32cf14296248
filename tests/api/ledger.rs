//! `LedgerService` end to end: balances, history, event detail and adjustments.

use one_loyalty::proto::loyalty::v1 as pb;
use pb::ledger_service_client::LedgerServiceClient;
use tonic::transport::Channel;

use crate::helpers::{TestApp, violated_fields};
use crate::on_both_backends;

on_both_backends!(TestApp:
    a_known_client_without_events_has_a_zero_balance_and_an_unknown_one_is_not_found,
    adjustments_move_the_balance_and_show_in_the_history_newest_first,
    a_penalty_may_take_the_balance_below_zero,
    an_adjustment_is_idempotent_by_request_id,
    concurrent_adjustments_all_count_and_concurrent_retries_count_once,
    history_filters_by_type_and_period_and_pages,
    bad_adjustments_are_refused_field_by_field_and_change_nothing,
);

fn client(app: &TestApp) -> LedgerServiceClient<Channel> {
    LedgerServiceClient::new(app.channel.clone())
}

fn adjustment(request_id: &str, client_id: &str, points: &str) -> pb::AdjustPointsRequest {
    pb::AdjustPointsRequest {
        request_id: request_id.into(),
        client_id: client_id.into(),
        points: points.into(),
        reason_code: "GOODWILL".into(),
        reason: "late delivery of order 42".into(),
        user_id: "admin-anna".into(),
    }
}

async fn adjust(
    app: &TestApp,
    request: pb::AdjustPointsRequest,
) -> Result<pb::LedgerEvent, tonic::Status> {
    client(app)
        .adjust_points(app.request(request))
        .await
        .map(|r| r.into_inner().event.expect("event"))
}

async fn balance(app: &TestApp, client_id: &str) -> Result<pb::Balance, tonic::Status> {
    let request = pb::GetBalanceRequest {
        client_id: client_id.into(),
        expiring_within_days: 0,
    };
    client(app)
        .get_balance(app.request(request))
        .await
        .map(|r| r.into_inner().balance.expect("balance"))
}

async fn events(app: &TestApp, request: pb::ListEventsRequest) -> pb::ListEventsResponse {
    client(app)
        .list_events(app.request(request))
        .await
        .expect("events")
        .into_inner()
}

async fn a_known_client_without_events_has_a_zero_balance_and_an_unknown_one_is_not_found(
    app: &TestApp,
) {
    app.seed_client("org:new", true).await;
    let b = balance(app, "org:new").await.expect("balance");
    assert_eq!(
        (
            b.total.as_str(),
            b.available.as_str(),
            b.expiring_within_days
        ),
        ("0.00", "0.00", 30)
    );
    assert_eq!(
        balance(app, "org:ghost").await.expect_err("unknown").code(),
        tonic::Code::NotFound
    );
    let status = adjust(app, adjustment("a1", "org:ghost", "5"))
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), tonic::Code::NotFound);
}

async fn adjustments_move_the_balance_and_show_in_the_history_newest_first(app: &TestApp) {
    app.seed_client("org:c", true).await;
    let first = adjust(app, adjustment("a1", "org:c", "12.5"))
        .await
        .expect("add");
    assert_eq!(
        (first.points.as_str(), first.balance_after.as_str()),
        ("12.50", "12.50")
    );
    assert_eq!(first.r#type, pb::EventType::Adjust as i32);
    assert_eq!(
        first.actor.as_ref().map(|a| a.user_id.as_str()),
        Some("admin-anna")
    );
    let mut penalty = adjustment("a2", "org:c", "-2.25");
    penalty.reason_code = "PENALTY".into();
    let second = adjust(app, penalty).await.expect("penalty");
    assert_eq!(second.balance_after, "10.25");
    let b = balance(app, "org:c").await.expect("balance");
    assert_eq!(
        (
            b.total.as_str(),
            b.available.as_str(),
            b.last_event_id.as_str()
        ),
        ("10.25", "10.25", second.event_id.as_str())
    );
    let listed = events(
        app,
        pb::ListEventsRequest {
            client_id: "org:c".into(),
            ..Default::default()
        },
    )
    .await;
    let ids: Vec<&str> = listed.events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, [second.event_id.as_str(), first.event_id.as_str()]);
    let detail = client(app)
        .get_event(app.request(pb::GetEventRequest {
            event_id: first.event_id.clone(),
        }))
        .await
        .expect("detail")
        .into_inner()
        .event
        .expect("event");
    assert_eq!(
        (detail.reason_code.as_str(), detail.reason.as_str()),
        ("GOODWILL", "late delivery of order 42")
    );
    let status = client(app)
        .get_event(app.request(pb::GetEventRequest {
            event_id: "999999".into(),
        }))
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), tonic::Code::NotFound);
}

async fn a_penalty_may_take_the_balance_below_zero(app: &TestApp) {
    app.seed_client("org:c", true).await;
    adjust(app, adjustment("a1", "org:c", "5"))
        .await
        .expect("add");
    let mut penalty = adjustment("a2", "org:c", "-8");
    penalty.reason_code = "PENALTY".into();
    assert_eq!(
        adjust(app, penalty).await.expect("penalty").balance_after,
        "-3.00"
    );
    assert_eq!(
        balance(app, "org:c").await.expect("balance").available,
        "-3.00"
    );
}

async fn an_adjustment_is_idempotent_by_request_id(app: &TestApp) {
    app.seed_client("org:c", true).await;
    let first = adjust(app, adjustment("same", "org:c", "7"))
        .await
        .expect("first");
    let again = adjust(app, adjustment("same", "org:c", "7"))
        .await
        .expect("retry");
    assert_eq!(again, first, "the retry answers with the first event");
    let status = adjust(app, adjustment("same", "org:c", "8"))
        .await
        .expect_err("other payload");
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    assert_eq!(balance(app, "org:c").await.expect("balance").total, "7.00");
}

async fn concurrent_adjustments_all_count_and_concurrent_retries_count_once(app: &TestApp) {
    app.seed_client("org:hot", true).await;
    let distinct = (0..20).map(|i| adjust(app, adjustment(&format!("d{i}"), "org:hot", "1.5")));
    for result in futures::future::join_all(distinct).await {
        result.expect("adjust");
    }
    let retries = (0..10).map(|_| adjust(app, adjustment("one", "org:hot", "100")));
    let replies: Vec<pb::LedgerEvent> = futures::future::join_all(retries)
        .await
        .into_iter()
        .map(|r| r.expect("retry"))
        .collect();
    assert!(
        replies.iter().all(|r| r.event_id == replies[0].event_id),
        "every retry got the one event"
    );
    assert_eq!(
        balance(app, "org:hot").await.expect("balance").total,
        "130.00"
    );
}

async fn history_filters_by_type_and_period_and_pages(app: &TestApp) {
    app.seed_client("org:c", true).await;
    for i in 0..5 {
        adjust(app, adjustment(&format!("h{i}"), "org:c", "1"))
            .await
            .expect("adjust");
    }
    let page = |token: String| pb::ListEventsRequest {
        client_id: "org:c".into(),
        page_size: 2,
        page_token: token,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let listed = events(app, page(token)).await;
        seen.extend(listed.events.iter().map(|e| e.balance_after.clone()));
        if listed.next_page_token.is_empty() {
            break;
        }
        token = listed.next_page_token;
    }
    assert_eq!(seen, ["5.00", "4.00", "3.00", "2.00", "1.00"]);
    let earns = events(
        app,
        pb::ListEventsRequest {
            client_id: "org:c".into(),
            types: vec![pb::EventType::Earn as i32],
            ..Default::default()
        },
    )
    .await;
    assert!(earns.events.is_empty());
    let future = prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + 3_600,
        nanos: 0,
    };
    let later = events(
        app,
        pb::ListEventsRequest {
            client_id: "org:c".into(),
            from: Some(future),
            ..Default::default()
        },
    )
    .await;
    assert!(later.events.is_empty());
    let status = client(app)
        .list_events(app.request(pb::ListEventsRequest {
            client_id: "org:c".into(),
            page_token: "zz".into(),
            ..Default::default()
        }))
        .await
        .expect_err("bad token");
    assert_eq!(violated_fields(&status), ["page_token"]);
}

async fn bad_adjustments_are_refused_field_by_field_and_change_nothing(app: &TestApp) {
    app.seed_client("org:c", true).await;
    let mut bad = adjustment("b1", "org:c", "0.001");
    bad.reason_code = "good will".into();
    bad.reason = String::new();
    let status = adjust(app, bad).await.expect_err("invalid");
    assert_eq!(
        violated_fields(&status),
        ["points", "reason", "reason_code"]
    );
    let status = adjust(app, adjustment("b2", "org:c", "1e3"))
        .await
        .expect_err("not a decimal");
    assert_eq!(violated_fields(&status), ["points"]);
    assert_eq!(balance(app, "org:c").await.expect("balance").total, "0.00");
    adjust(app, adjustment("b1", "org:c", "1"))
        .await
        .expect("the refused request id is still free");
}
