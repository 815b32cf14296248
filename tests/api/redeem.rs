//! `RedeemService` end to end: spending that never overdraws under concurrency, idempotent
//! retries, stock and per-client limits, the coupon's days, cancellation with a refund, and
//! points as credit (reserve, commit, release, expiry). Coupons are created on 2026-03-20 and
//! redeemed from 2026-03-22.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::join_all;
use one_loyalty::domain::directory::{ClientRecord, UserRecord};
use one_loyalty::domain::tenant::TenantId;
use one_loyalty::proto::loyalty::v1 as pb;
use pb::redeem_service_client::RedeemServiceClient;
use rust_decimal::Decimal;
use tonic::Code;
use tonic::transport::Channel;

use crate::coupons::{create, pools, spec};
use crate::helpers::{ClockedApp, DEMO_TENANT, violated_fields};
use crate::on_both_backends;

on_both_backends!(ClockedApp:
    five_hundred_concurrent_redeems_spend_exactly_what_the_balance_allows,
    one_request_id_sent_twenty_times_redeems_once,
    a_stock_of_ten_is_redeemed_exactly_ten_times_under_a_hundred_concurrent_calls,
    the_coupons_days_segments_limit_and_the_points_decide_who_may_redeem,
    a_coupon_edited_after_it_was_redeemed_is_redeemed_on_its_new_terms,
    a_front_office_redemption_as_read_is_taken_only_from_an_active_user_of_the_client,
    a_cancelled_redemption_is_refunded_and_gives_its_unit_back,
    reserved_points_cannot_be_spent_elsewhere_and_are_committed_once,
    expired_reservations_are_released_by_the_job,
    bad_redeem_and_reserve_requests_name_their_fields_and_change_nothing,
    reserved_points_of_an_expiring_lot_expire_only_if_the_reservation_gives_them_back,
);

pub fn redeem_client(app: &ClockedApp) -> RedeemServiceClient<Channel> {
    RedeemServiceClient::new(app.channel.clone())
}

/// A client with an account and `points` available, in `segments`.
pub async fn funded_client(app: &ClockedApp, client_id: &str, points: &str, segments: &[&str]) {
    let record = ClientRecord {
        client_id: client_id.into(),
        name: format!("Client {client_id}"),
        status: "ACTIVE".into(),
        has_account: true,
        segment_ids: segments.iter().map(|s| (*s).to_owned()).collect(),
        updated_at: chrono::Utc::now(),
    };
    let tenant = TenantId::parse(DEMO_TENANT).expect("tenant");
    app.services
        .directory
        .save_client(&tenant, &record)
        .await
        .expect("client");
    let grant = pb::AdjustPointsRequest {
        request_id: format!("grant-{client_id}"),
        client_id: client_id.into(),
        points: points.into(),
        reason_code: "WELCOME".into(),
        reason: "welcome points".into(),
        user_id: "admin".into(),
    };
    pb::ledger_service_client::LedgerServiceClient::new(app.channel.clone())
        .adjust_points(app.request(grant))
        .await
        .expect("points");
}

/// A cart-discount coupon worth `points`, on offer 2026-03-21..=2026-04-30; returns its id.
pub async fn coupon(
    app: &ClockedApp,
    name: &str,
    points: &str,
    stock: Option<u32>,
    limit: Option<u32>,
) -> String {
    pools(app).await;
    create(
        app,
        &format!("create-{name}"),
        pb::CouponSpec {
            point_value: points.into(),
            stock,
            per_client_limit: limit,
            ..spec(name)
        },
    )
    .await
    .expect("coupon")
    .coupon_id
}

fn redeem_request(request_id: &str, client_id: &str, coupon_id: &str) -> pb::RedeemCouponRequest {
    pb::RedeemCouponRequest {
        request_id: request_id.into(),
        client_id: client_id.into(),
        coupon_id: coupon_id.into(),
        user_id: String::new(),
    }
}

pub async fn redeem(
    app: &ClockedApp,
    request: pb::RedeemCouponRequest,
) -> Result<pb::Redemption, tonic::Status> {
    redeem_client(app)
        .redeem_coupon(app.request(request))
        .await
        .map(|r| r.into_inner().redemption.expect("redemption"))
}

pub async fn balance(app: &ClockedApp, client_id: &str) -> pb::Balance {
    pb::ledger_service_client::LedgerServiceClient::new(app.channel.clone())
        .get_balance(app.request(pb::GetBalanceRequest {
            client_id: client_id.into(),
            expiring_within_days: 0,
        }))
        .await
        .expect("balance")
        .into_inner()
        .balance
        .expect("balance")
}

fn points(text: &str) -> Decimal {
    text.parse().expect("decimal")
}

async fn history(app: &ClockedApp, client_id: &str) -> Vec<pb::LedgerEvent> {
    pb::ledger_service_client::LedgerServiceClient::new(app.channel.clone())
        .list_events(app.request(pb::ListEventsRequest {
            client_id: client_id.into(),
            page_size: 1000,
            ..Default::default()
        }))
        .await
        .expect("events")
        .into_inner()
        .events
}

async fn coupon_count(app: &ClockedApp, coupon_id: &str) -> u32 {
    pb::coupon_service_client::CouponServiceClient::new(app.channel.clone())
        .get_coupon(app.request(pb::GetCouponRequest {
            coupon_id: coupon_id.into(),
        }))
        .await
        .expect("coupon")
        .into_inner()
        .coupon
        .expect("coupon")
        .redeemed_count
}

async fn five_hundred_concurrent_redeems_spend_exactly_what_the_balance_allows(app: &ClockedApp) {
    funded_client(app, "org:racer", "1000", &[]).await;
    let coupon_id = coupon(app, "Seven", "7", None, None).await;
    app.set_time("2026-03-22T10:00:00Z");

    // A reader polls the balance for the whole run: it must never see a negative part.
    let running = Arc::new(AtomicBool::new(true));
    let reader = {
        let (running, channel) = (Arc::clone(&running), app.channel.clone());
        tokio::spawn(async move {
            let mut client = pb::ledger_service_client::LedgerServiceClient::new(channel);
            let mut reads = 0u32;
            while running.load(Ordering::Relaxed) {
                let balance = client
                    .get_balance(crate::helpers::request_as(
                        DEMO_TENANT,
                        crate::helpers::DEMO_KEY,
                        pb::GetBalanceRequest {
                            client_id: "org:racer".into(),
                            expiring_within_days: 0,
                        },
                    ))
                    .await
                    .expect("balance")
                    .into_inner()
                    .balance
                    .expect("balance");
                for part in [&balance.total, &balance.available] {
                    assert!(
                        points(part) >= Decimal::ZERO,
                        "negative balance {balance:?}"
                    );
                }
                reads += 1;
            }
            reads
        })
    };
    let calls = (0..500).map(|i| {
        let mut client = redeem_client(app);
        let request = app.request(redeem_request(
            &format!("race-{i}"),
            "org:racer",
            &coupon_id,
        ));
        async move { client.redeem_coupon(request).await }
    });
    let results = join_all(calls).await;
    running.store(false, Ordering::Relaxed);
    let reads = reader.await.expect("reader");

    let succeeded = results.iter().filter(|r| r.is_ok()).count();
    let refused: Vec<&tonic::Status> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(succeeded, 142, "1000 / 7 = 142 rest 6");
    assert_eq!(refused.len(), 358);
    assert!(
        refused
            .iter()
            .all(|s| s.code() == Code::FailedPrecondition && s.message().contains("available")),
        "{:?}",
        refused
            .iter()
            .find(|s| s.code() != Code::FailedPrecondition)
    );
    let balance = balance(app, "org:racer").await;
    assert_eq!(
        (points(&balance.total), points(&balance.available)),
        (points("6"), points("6"))
    );
    let uses = history(app, "org:racer")
        .await
        .into_iter()
        .filter(|e| e.r#type == pb::EventType::Use as i32)
        .count();
    assert_eq!(uses, 142);
    assert_eq!(coupon_count(app, &coupon_id).await, 142);
    assert!(reads > 0, "the reader read during the run");
}

async fn one_request_id_sent_twenty_times_redeems_once(app: &ClockedApp) {
    funded_client(app, "org:retry", "100", &[]).await;
    let coupon_id = coupon(app, "Ten", "10", None, None).await;
    let other_coupon = coupon(app, "Twenty", "20", None, None).await;
    app.set_time("2026-03-22T10:00:00Z");

    let concurrent = (0..10).map(|_| redeem(app, redeem_request("same", "org:retry", &coupon_id)));
    let mut replies: Vec<pb::Redemption> = join_all(concurrent)
        .await
        .into_iter()
        .map(|r| r.expect("every retry succeeds"))
        .collect();
    for _ in 0..10 {
        replies.push(
            redeem(app, redeem_request("same", "org:retry", &coupon_id))
                .await
                .expect("retry"),
        );
    }
    assert!(
        replies.iter().all(|r| *r == replies[0]),
        "identical replies"
    );
    let first = &replies[0];
    assert_eq!(first.status, pb::RedemptionStatus::Pending as i32);
    assert_eq!(first.points, "10.00");
    assert!(
        first.code.starts_with("LP-") && first.code.len() == 15,
        "{}",
        first.code
    );
    assert_eq!(first.valid_until, "2026-05-31");

    let reused = redeem(app, redeem_request("same", "org:retry", &other_coupon))
        .await
        .expect_err("another coupon under the same id");
    assert_eq!(reused.code(), Code::AlreadyExists);

    let uses: Vec<pb::LedgerEvent> = history(app, "org:retry")
        .await
        .into_iter()
        .filter(|e| e.r#type == pb::EventType::Use as i32)
        .collect();
    assert_eq!(uses.len(), 1, "one Use event");
    assert_eq!(uses[0].event_id, first.use_event_id);
    assert_eq!(
        points(&balance(app, "org:retry").await.available),
        points("90")
    );
    let listed = redeem_client(app)
        .list_redemptions(app.request(pb::ListRedemptionsRequest {
            client_id: "org:retry".into(),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner()
        .redemptions;
    assert_eq!(listed, vec![first.clone()]);
    assert_eq!(coupon_count(app, &other_coupon).await, 0, "nothing written");
}

async fn a_stock_of_ten_is_redeemed_exactly_ten_times_under_a_hundred_concurrent_calls(
    app: &ClockedApp,
) {
    for c in 0..20 {
        funded_client(app, &format!("org:s{c}"), "100", &[]).await;
    }
    let coupon_id = coupon(app, "Scarce", "5", Some(10), None).await;
    app.set_time("2026-03-22T10:00:00Z");
    let calls = (0..100).map(|i| {
        redeem(
            app,
            redeem_request(
                &format!("stock-{i}"),
                &format!("org:s{}", i % 20),
                &coupon_id,
            ),
        )
    });
    let results = join_all(calls).await;
    let issued = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(issued, 10);
    for refusal in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(refusal.code(), Code::FailedPrecondition);
        assert!(refusal.message().contains("out of stock"), "{refusal:?}");
    }
    assert_eq!(coupon_count(app, &coupon_id).await, 10);
    let mut spent = Decimal::ZERO;
    for c in 0..20 {
        spent += points("100") - points(&balance(app, &format!("org:s{c}")).await.total);
    }
    assert_eq!(spent, points("50"), "only the ten redemptions spent points");
}

async fn the_coupons_days_segments_limit_and_the_points_decide_who_may_redeem(app: &ClockedApp) {
    funded_client(app, "org:gold", "1000", &["gold"]).await;
    funded_client(app, "org:plain", "1000", &[]).await;
    funded_client(app, "org:poor", "3", &["gold"]).await;
    let limited = coupon(app, "Twice", "10", None, Some(2)).await;
    let gold_only = create(
        app,
        "create-gold",
        pb::CouponSpec {
            point_value: "10".into(),
            segment_ids: vec!["gold".into()],
            ..spec("Gold only")
        },
    )
    .await
    .expect("gold coupon")
    .coupon_id;
    let refusal = |r: Result<pb::Redemption, tonic::Status>| {
        let status = r.expect_err("refused");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        status.message().to_owned()
    };

    // Before its appearance day (today is 2026-03-20; it appears 2026-03-21).
    let early = refusal(redeem(app, redeem_request("early", "org:gold", &limited)).await);
    assert!(early.contains("not offered on 2026-03-20"), "{early}");
    // On its appearance day and on its expiration day it is offered.
    app.set_time("2026-03-21T00:30:00+01:00");
    redeem(app, redeem_request("first", "org:gold", &limited))
        .await
        .expect("appearance day");
    app.set_time("2026-04-30T23:00:00+02:00");
    redeem(app, redeem_request("second", "org:gold", &limited))
        .await
        .expect("expiration day");
    let third = refusal(redeem(app, redeem_request("third", "org:gold", &limited)).await);
    assert!(third.contains("limit"), "{third}");
    redeem(app, redeem_request("other-client", "org:plain", &limited))
        .await
        .expect("the limit is per client");

    let outside = refusal(redeem(app, redeem_request("outside", "org:plain", &gold_only)).await);
    assert!(outside.contains("segments"), "{outside}");
    let poor = refusal(redeem(app, redeem_request("poor", "org:poor", &gold_only)).await);
    assert!(poor.contains("not enough available points"), "{poor}");
    redeem(app, redeem_request("gold", "org:gold", &gold_only))
        .await
        .expect("a gold client");

    // The day after its expiration, in the tenant's time zone (Europe/Warsaw by default).
    app.set_time("2026-04-30T22:30:00Z");
    let late = refusal(redeem(app, redeem_request("late", "org:plain", &gold_only)).await);
    assert!(late.contains("not offered on 2026-05-01"), "{late}");

    // An archived coupon is not offered.
    app.set_time("2026-04-01T10:00:00Z");
    pb::coupon_service_client::CouponServiceClient::new(app.channel.clone())
        .archive_coupon(app.request(pb::ArchiveCouponRequest {
            request_id: "archive".into(),
            coupon_id: gold_only.clone(),
        }))
        .await
        .expect("archive");
    refusal(redeem(app, redeem_request("archived", "org:gold", &gold_only)).await);

    let unknown = redeem(app, redeem_request("unknown", "org:gold", "cpn_nope"))
        .await
        .expect_err("unknown coupon");
    assert_eq!(unknown.code(), Code::NotFound);
    let nobody = redeem(app, redeem_request("nobody", "org:nobody", &limited))
        .await
        .expect_err("unknown client");
    assert_eq!(nobody.code(), Code::NotFound);
    assert_eq!(points(&balance(app, "org:gold").await.total), points("970"));
}

/// A front-office redemption names the user redeeming. Of a coupon the service has read before,
/// it is planned without reading the user: the write takes it only from an active user of the
/// client, and answers any other as the full path does.
async fn a_front_office_redemption_as_read_is_taken_only_from_an_active_user_of_the_client(
    app: &ClockedApp,
) {
    funded_client(app, "org:front", "1000", &[]).await;
    let coupon_id = coupon(app, "Front", "10", None, None).await;
    app.set_time("2026-03-22T10:00:00Z");
    app.seed_user("u-front", "org:front").await;
    app.seed_user("u-elsewhere", "org:other").await;
    app.seed_user("u-gone", "org:front").await;
    let gone = UserRecord {
        user_id: "u-gone".into(),
        client_id: "org:front".into(),
        active: false,
        deactivated_at: Some(chrono::Utc::now()),
        updated_at: chrono::Utc::now(),
    };
    app.services
        .directory
        .save_user(&TenantId::parse(DEMO_TENANT).expect("tenant"), &gone)
        .await
        .expect("deactivate");
    for (request_id, user_id) in [("elsewhere", "u-elsewhere"), ("gone", "u-gone")] {
        // By an active user: the coupon is read (again: a refusal forgets it), so that the next
        // goes to the write as read, which refuses it, and is then answered in full.
        let by_user = redeem(
            app,
            pb::RedeemCouponRequest {
                user_id: "u-front".into(),
                ..redeem_request(&format!("before-{request_id}"), "org:front", &coupon_id)
            },
        )
        .await
        .expect("by an active user of the client");
        assert_eq!(by_user.user_id, "u-front");
        let refused = redeem(
            app,
            pb::RedeemCouponRequest {
                user_id: user_id.into(),
                ..redeem_request(request_id, "org:front", &coupon_id)
            },
        )
        .await
        .expect_err(user_id);
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert_eq!(violated_fields(&refused), vec!["user_id"], "{refused:?}");
    }
    assert_eq!(
        points(&balance(app, "org:front").await.total),
        points("980")
    );
}

/// A redemption of a coupon the service has read before is planned from it without reading it
/// again (docs/PERFORMANCE.md): an edit since, made here or by another replica, must still decide.
async fn a_coupon_edited_after_it_was_redeemed_is_redeemed_on_its_new_terms(app: &ClockedApp) {
    funded_client(app, "org:edit", "1000", &[]).await;
    let coupon_id = coupon(app, "Edited", "10", None, None).await;
    app.set_time("2026-03-22T10:00:00Z");
    let first = redeem(app, redeem_request("before", "org:edit", &coupon_id))
        .await
        .expect("first");
    assert_eq!(first.points, "10.00");
    let again = redeem(app, redeem_request("as-read", "org:edit", &coupon_id))
        .await
        .expect("planned from the coupon as read");
    assert_eq!(again.points, "10.00");
    let coupons = || pb::coupon_service_client::CouponServiceClient::new(app.channel.clone());
    coupons()
        .update_coupon(app.request(pb::UpdateCouponRequest {
            request_id: "dearer".into(),
            coupon_id: coupon_id.clone(),
            spec: Some(pb::CouponSpec {
                point_value: "25".into(),
                stock: None,
                per_client_limit: None,
                ..spec("Edited")
            }),
            expected_revision: 1,
        }))
        .await
        .expect("update");
    let dearer = redeem(app, redeem_request("after", "org:edit", &coupon_id))
        .await
        .expect("on the new terms");
    assert_eq!(dearer.points, "25.00");
    redeem(app, redeem_request("after-again", "org:edit", &coupon_id))
        .await
        .expect("the new terms as read");
    assert_eq!(points(&balance(app, "org:edit").await.total), points("930"));
    // With the coupon as read: answered in the full path's order, the client before the user.
    let stranger = |request_id: &str, client_id: &str| pb::RedeemCouponRequest {
        user_id: "u-stranger".into(),
        ..redeem_request(request_id, client_id, &coupon_id)
    };
    let neither = redeem(app, stranger("neither", "org:nobody"))
        .await
        .expect_err("unknown client and user");
    assert_eq!(neither.code(), Code::NotFound, "{neither:?}");
    assert!(neither.message().contains("client"), "{neither:?}");
    let no_user = redeem(app, stranger("no-user", "org:edit"))
        .await
        .expect_err("unknown user");
    assert_eq!(no_user.code(), Code::NotFound, "{no_user:?}");
    assert!(no_user.message().contains("user"), "{no_user:?}");
    let nobody = redeem(app, redeem_request("nobody", "org:nobody", &coupon_id))
        .await
        .expect_err("unknown client");
    assert_eq!(nobody.code(), Code::NotFound, "{nobody:?}");

    coupons()
        .archive_coupon(app.request(pb::ArchiveCouponRequest {
            request_id: "archive".into(),
            coupon_id: coupon_id.clone(),
        }))
        .await
        .expect("archive");
    let archived = redeem(app, redeem_request("archived", "org:edit", &coupon_id))
        .await
        .expect_err("archived");
    assert_eq!(archived.code(), Code::FailedPrecondition, "{archived:?}");
    let retried = redeem(app, redeem_request("after", "org:edit", &coupon_id))
        .await
        .expect("a retry answers with the first redemption");
    assert_eq!(retried, dearer);
    assert_eq!(points(&balance(app, "org:edit").await.total), points("930"));
}

async fn a_cancelled_redemption_is_refunded_and_gives_its_unit_back(app: &ClockedApp) {
    funded_client(app, "org:c", "100", &[]).await;
    let coupon_id = coupon(app, "Once", "40", Some(1), None).await;
    app.set_time("2026-03-22T10:00:00Z");
    let redeemed = redeem(app, redeem_request("buy", "org:c", &coupon_id))
        .await
        .expect("redeem");
    assert_eq!(points(&balance(app, "org:c").await.available), points("60"));
    let sold_out = redeem(app, redeem_request("again", "org:c", &coupon_id))
        .await
        .expect_err("stock of one");
    assert!(sold_out.message().contains("out of stock"));

    let cancel = |request_id: &str, reason: &str| pb::CancelRedemptionRequest {
        request_id: request_id.into(),
        redemption_id: redeemed.redemption_id.clone(),
        reason: reason.into(),
    };
    let no_reason = redeem_client(app)
        .cancel_redemption(app.request(cancel("c0", " ")))
        .await
        .expect_err("a reason is required");
    assert_eq!(violated_fields(&no_reason), vec!["reason"]);
    let cancelled = redeem_client(app)
        .cancel_redemption(app.request(cancel("c1", "client complaint")))
        .await
        .expect("cancel")
        .into_inner()
        .redemption
        .expect("redemption");
    assert_eq!(cancelled.status, pb::RedemptionStatus::Cancelled as i32);
    assert!(cancelled.reason.contains("client complaint"));
    assert!(!cancelled.refund_event_id.is_empty());
    let retried = redeem_client(app)
        .cancel_redemption(app.request(cancel("c1", "client complaint")))
        .await
        .expect("retry")
        .into_inner()
        .redemption
        .expect("redemption");
    assert_eq!(retried, cancelled);
    let twice = redeem_client(app)
        .cancel_redemption(app.request(cancel("c2", "again")))
        .await
        .expect_err("cancelled already");
    assert_eq!(twice.code(), Code::FailedPrecondition);

    let events = history(app, "org:c").await;
    let refund = events
        .iter()
        .find(|e| e.event_id == cancelled.refund_event_id)
        .expect("the refund event");
    assert_eq!(refund.r#type, pb::EventType::Refund as i32);
    assert_eq!(points(&refund.points), points("40"));
    assert_eq!(
        events
            .iter()
            .filter(|e| e.r#type == pb::EventType::Refund as i32)
            .count(),
        1
    );
    assert_eq!(
        points(&balance(app, "org:c").await.available),
        points("100")
    );
    assert_eq!(coupon_count(app, &coupon_id).await, 0, "the unit is back");
    redeem(app, redeem_request("rebuy", "org:c", &coupon_id))
        .await
        .expect("the stock allows one again");

    let got = redeem_client(app)
        .get_redemption(app.request(pb::GetRedemptionRequest {
            redemption_id: redeemed.redemption_id.clone(),
        }))
        .await
        .expect("get")
        .into_inner()
        .redemption
        .expect("redemption");
    assert_eq!(got, cancelled);
    let cancelled_only = redeem_client(app)
        .list_redemptions(app.request(pb::ListRedemptionsRequest {
            status: pb::RedemptionStatus::Cancelled as i32,
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner()
        .redemptions;
    assert_eq!(cancelled_only, vec![cancelled]);
}

fn reserve_request(request_id: &str, client_id: &str, points: &str) -> pb::ReservePointsRequest {
    pb::ReservePointsRequest {
        request_id: request_id.into(),
        client_id: client_id.into(),
        basket_id: "basket-1".into(),
        points: points.into(),
        user_id: String::new(),
    }
}

async fn reserve(
    app: &ClockedApp,
    request: pb::ReservePointsRequest,
) -> Result<pb::Reservation, tonic::Status> {
    redeem_client(app)
        .reserve_points(app.request(request))
        .await
        .map(|r| r.into_inner().reservation.expect("reservation"))
}

async fn reserved_points_cannot_be_spent_elsewhere_and_are_committed_once(app: &ClockedApp) {
    funded_client(app, "org:r", "100", &[]).await;
    let coupon_id = coupon(app, "Thirty", "30", None, None).await;
    app.set_time("2026-03-22T10:00:00Z");
    let held = reserve(app, reserve_request("hold", "org:r", "80"))
        .await
        .expect("reserve");
    assert_eq!(held.status, pb::ReservationStatus::Held as i32);
    assert_eq!(
        held.expires_at.as_ref().map(|t| t.seconds),
        Some(
            chrono::DateTime::parse_from_rfc3339("2026-03-22T10:15:00Z")
                .expect("t")
                .timestamp()
        ),
        "the default time-to-live is 15 minutes"
    );
    let again = reserve(app, reserve_request("hold", "org:r", "80"))
        .await
        .expect("retry");
    assert_eq!(again, held);
    let b = balance(app, "org:r").await;
    assert_eq!(
        (points(&b.total), points(&b.available), points(&b.reserved)),
        (points("100"), points("20"), points("80"))
    );
    let spend = redeem(app, redeem_request("spend", "org:r", &coupon_id))
        .await
        .expect_err("only 20 available");
    assert_eq!(spend.code(), Code::FailedPrecondition);
    let more = reserve(app, reserve_request("hold-2", "org:r", "21"))
        .await
        .expect_err("only 20 available");
    assert_eq!(more.code(), Code::FailedPrecondition);

    let commit = |request_id: &str| pb::CommitReservationRequest {
        request_id: request_id.into(),
        reservation_id: held.reservation_id.clone(),
        order_number: "ORD-1001".into(),
    };
    let committed = redeem_client(app)
        .commit_reservation(app.request(commit("commit")))
        .await
        .expect("commit")
        .into_inner()
        .reservation
        .expect("reservation");
    assert_eq!(committed.status, pb::ReservationStatus::Committed as i32);
    assert_eq!(committed.order_number, "ORD-1001");
    assert!(!committed.use_event_id.is_empty());
    let retried = redeem_client(app)
        .commit_reservation(app.request(commit("commit")))
        .await
        .expect("retry")
        .into_inner()
        .reservation
        .expect("reservation");
    assert_eq!(retried, committed);
    let twice = redeem_client(app)
        .commit_reservation(app.request(commit("commit-2")))
        .await
        .expect_err("committed already");
    assert_eq!(twice.code(), Code::FailedPrecondition);
    let release = redeem_client(app)
        .release_reservation(app.request(pb::ReleaseReservationRequest {
            request_id: "release".into(),
            reservation_id: held.reservation_id.clone(),
        }))
        .await
        .expect_err("committed, not held");
    assert_eq!(release.code(), Code::FailedPrecondition);

    let b = balance(app, "org:r").await;
    assert_eq!(
        (points(&b.total), points(&b.available), points(&b.reserved)),
        (points("20"), points("20"), points("0"))
    );
    let uses: Vec<pb::LedgerEvent> = history(app, "org:r")
        .await
        .into_iter()
        .filter(|e| e.r#type == pb::EventType::Use as i32)
        .collect();
    assert_eq!(uses.len(), 1);
    assert_eq!(points(&uses[0].points), points("-80"));
    assert_eq!(uses[0].event_id, committed.use_event_id);

    // Released points are available again.
    let second = reserve(app, reserve_request("hold-3", "org:r", "15"))
        .await
        .expect("reserve");
    let released = redeem_client(app)
        .release_reservation(app.request(pb::ReleaseReservationRequest {
            request_id: "release-3".into(),
            reservation_id: second.reservation_id.clone(),
        }))
        .await
        .expect("release")
        .into_inner()
        .reservation
        .expect("reservation");
    assert_eq!(released.status, pb::ReservationStatus::Released as i32);
    assert_eq!(points(&balance(app, "org:r").await.available), points("20"));
}

async fn expired_reservations_are_released_by_the_job(app: &ClockedApp) {
    funded_client(app, "org:x", "50", &[]).await;
    app.set_time("2026-03-22T10:00:00Z");
    let held = reserve(app, reserve_request("hold", "org:x", "50"))
        .await
        .expect("reserve");
    let other = reserve(app, reserve_request("hold-0", "org:x", "1"))
        .await
        .expect_err("all 50 are reserved");
    assert_eq!(other.code(), Code::FailedPrecondition);
    assert_eq!(
        app.services.redeem.release_expired(100).await.expect("job"),
        0
    );

    app.set_time("2026-03-22T10:15:00Z");
    let late = redeem_client(app)
        .commit_reservation(app.request(pb::CommitReservationRequest {
            request_id: "late".into(),
            reservation_id: held.reservation_id.clone(),
            order_number: "ORD-9".into(),
        }))
        .await
        .expect_err("expired");
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert!(late.message().contains("expired"), "{late:?}");
    assert_eq!(
        app.services.redeem.release_expired(100).await.expect("job"),
        1
    );
    assert_eq!(
        app.services.redeem.release_expired(100).await.expect("job"),
        0
    );
    let after = redeem_client(app)
        .get_reservation(app.request(pb::GetReservationRequest {
            reservation_id: held.reservation_id.clone(),
        }))
        .await
        .expect("get")
        .into_inner()
        .reservation
        .expect("reservation");
    assert_eq!(after.status, pb::ReservationStatus::Expired as i32);
    assert!(after.settled_at.is_some());
    let b = balance(app, "org:x").await;
    assert_eq!(
        (points(&b.available), points(&b.reserved)),
        (points("50"), points("0"))
    );
    assert!(
        history(app, "org:x")
            .await
            .iter()
            .all(|e| e.r#type != pb::EventType::Use as i32),
        "nothing was spent"
    );
}

async fn bad_redeem_and_reserve_requests_name_their_fields_and_change_nothing(app: &ClockedApp) {
    funded_client(app, "org:b", "10", &[]).await;
    app.set_time("2026-03-22T10:00:00Z");
    let status = redeem(app, redeem_request("bad", " ", ""))
        .await
        .expect_err("empty fields");
    assert_eq!(violated_fields(&status), vec!["client_id", "coupon_id"]);
    let status = redeem(app, redeem_request("", "org:b", "cpn_x"))
        .await
        .expect_err("no request id");
    assert_eq!(violated_fields(&status), vec!["request_id"]);
    for (amount, why) in [
        ("0", "zero"),
        ("-1", "negative"),
        ("1.001", "beyond-scale-2"),
    ] {
        let status = reserve(app, reserve_request(&format!("r-{why}"), "org:b", amount))
            .await
            .expect_err(why);
        assert_eq!(violated_fields(&status), vec!["points"], "{why}");
    }
    let status = reserve(app, reserve_request("r-text", "org:b", "ten"))
        .await
        .expect_err("not a number");
    assert_eq!(violated_fields(&status), vec!["points"]);
    let status = reserve(
        app,
        pb::ReservePointsRequest {
            user_id: "u-stranger".into(),
            ..reserve_request("r-user", "org:b", "1")
        },
    )
    .await
    .expect_err("unknown user");
    assert_eq!(status.code(), Code::NotFound);
    let b = balance(app, "org:b").await;
    assert_eq!(
        (points(&b.available), points(&b.reserved)),
        (points("10"), points("0"))
    );
}

/// Points earned in a lot that expires on 2026-03-23, all reserved just before midnight.
async fn reserve_an_expiring_lot(app: &ClockedApp, client_id: &str) -> pb::Reservation {
    use one_loyalty::domain::clock::Clock;
    use one_loyalty::domain::ledger::{EventType, LotTerms, NewLedgerEvent};
    use one_loyalty::persistence::LedgerRepository;
    funded_client(app, client_id, "0.01", &[]).await;
    let clock: Arc<dyn Clock> = app.clock.clone();
    let ledger =
        one_loyalty::persistence::ledger::SeaLedgerRepository::new(app.store.db.clone(), clock);
    let earned_at = chrono::DateTime::parse_from_rfc3339("2026-03-20T12:00:00Z")
        .expect("instant")
        .to_utc();
    let earn = NewLedgerEvent {
        client_id: client_id.into(),
        event_type: EventType::Earn,
        points: points("100"),
        occurred_at: earned_at,
        document_id: Some(format!("inv-{client_id}")),
        request_id: None,
        reason_code: None,
        reason: None,
        actor_key_id: None,
        actor_user_id: None,
        related_event_id: None,
        redemption_id: None,
        reservation_id: None,
        stacking_mode: None,
        lot: Some(LotTerms {
            unlocks_at: None,
            expires_at: Some(
                chrono::DateTime::parse_from_rfc3339("2026-03-23T00:00:00Z")
                    .expect("instant")
                    .to_utc(),
            ),
        }),
    };
    let tenant = TenantId::parse(DEMO_TENANT).expect("tenant");
    ledger.append(&tenant, &earn, None).await.expect("earn");
    app.set_time("2026-03-22T23:55:00Z");
    reserve(
        app,
        reserve_request(&format!("hold-{client_id}"), client_id, "100.01"),
    )
    .await
    .expect("reserve everything")
}

async fn reserved_points_of_an_expiring_lot_expire_only_if_the_reservation_gives_them_back(
    app: &ClockedApp,
) {
    let committed = reserve_an_expiring_lot(app, "org:buyer").await;
    app.set_time("2026-03-22T23:50:00Z");
    let released = reserve_an_expiring_lot(app, "org:quitter").await;

    // The lot is due, but its points are reserved: expiring them now would overdraw.
    app.set_time("2026-03-23T00:05:00Z");
    assert_eq!(
        app.services.ledger.run_lot_jobs(100).await.expect("job"),
        (0, 0)
    );
    for client in ["org:buyer", "org:quitter"] {
        let b = balance(app, client).await;
        assert_eq!(
            (points(&b.total), points(&b.available), points(&b.reserved)),
            (points("100.01"), points("0"), points("100.01")),
            "{client}"
        );
    }
    // Committed: the order spent the lot's points; nothing is left to expire.
    redeem_client(app)
        .commit_reservation(app.request(pb::CommitReservationRequest {
            request_id: "commit-buyer".into(),
            reservation_id: committed.reservation_id.clone(),
            order_number: "ORD-77".into(),
        }))
        .await
        .expect("commit before the hold ends");
    // Released: the points come back and the overdue lot expires on the next run.
    redeem_client(app)
        .release_reservation(app.request(pb::ReleaseReservationRequest {
            request_id: "release-quitter".into(),
            reservation_id: released.reservation_id.clone(),
        }))
        .await
        .expect("release");
    assert_eq!(
        app.services.ledger.run_lot_jobs(100).await.expect("job"),
        (0, 1)
    );
    let buyer = balance(app, "org:buyer").await;
    assert_eq!(
        (points(&buyer.total), points(&buyer.available)),
        (points("0"), points("0"))
    );
    let quitter = balance(app, "org:quitter").await;
    assert_eq!(
        (points(&quitter.total), points(&quitter.available)),
        (points("0.01"), points("0.01")),
        "the 100 expired, the adjustment outside the lot did not"
    );
}
