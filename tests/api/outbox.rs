//! The outbox end to end: codes of redeemed coupons reach the ONe pool exactly once, through an
//! outage and a crashed delivery; a code ONe refuses for good fails the redemption and refunds
//! it; a SPECIAL coupon sends exactly one e-mail. ONe and the SMTP relay are fakes started by
//! the tests.

use std::sync::Arc;
use std::time::Duration;

use one_loyalty::domain::clock::Clock;
use one_loyalty::domain::tenant::TenantId;
use one_loyalty::persistence::RedemptionRepository;
use one_loyalty::persistence::redemptions::SeaRedemptionRepository;
use one_loyalty::proto::loyalty::v1 as pb;
use one_loyalty::service::outbox::DispatchReport;
use one_loyalty::service::promotions::PromotionsGateway;
use rust_decimal::Decimal;

use crate::coupons::{create, special};
use crate::fakes::{LiveOutboxApp, OutboxApp, PoolMode};
use crate::helpers::{ClockedApp, DEMO_TENANT};
use crate::on_both_backends;
use crate::redeem::{balance, coupon, funded_client, redeem, redeem_client};

on_both_backends!(OutboxApp:
    codes_reach_the_pool_exactly_once_after_an_outage,
    a_delivery_cut_short_by_a_crash_is_redone_and_lands_once,
    a_code_refused_for_good_fails_the_redemption_and_refunds_it,
    a_special_coupon_sends_exactly_one_email,
    pools_are_read_live_from_one_and_a_coupon_needs_one_that_exists_there,
);

on_both_backends!(LiveOutboxApp:
    the_background_dispatcher_issues_codes_without_being_asked,
);

fn request(request_id: &str, client_id: &str, coupon_id: &str) -> pb::RedeemCouponRequest {
    pb::RedeemCouponRequest {
        request_id: request_id.into(),
        client_id: client_id.into(),
        coupon_id: coupon_id.into(),
        user_id: String::new(),
    }
}

async fn dispatch(app: &ClockedApp) -> DispatchReport {
    app.services.outbox.run_once(100).await.expect("dispatch")
}

async fn status_of(app: &ClockedApp, redemption_id: &str) -> pb::Redemption {
    redeem_client(app)
        .get_redemption(app.request(pb::GetRedemptionRequest {
            redemption_id: redemption_id.into(),
        }))
        .await
        .expect("get")
        .into_inner()
        .redemption
        .expect("redemption")
}

fn report(delivered: usize, retried: usize, rejected: usize) -> DispatchReport {
    DispatchReport {
        delivered,
        retried,
        rejected,
    }
}

async fn codes_reach_the_pool_exactly_once_after_an_outage(app: &OutboxApp) {
    funded_client(app, "org:o", "100", &[]).await;
    let coupon_id = coupon(app, "Five", "5", None, None).await;
    app.set_time("2026-03-22T10:00:00Z");
    app.pool.set_mode(PoolMode::Down);
    let mut redeemed = Vec::new();
    for i in 0..3 {
        redeemed.push(
            redeem(app, request(&format!("r{i}"), "org:o", &coupon_id))
                .await
                .expect("redeem"),
        );
    }
    assert_eq!(dispatch(app).await, report(0, 3, 0), "ONe is down");
    assert_eq!(
        dispatch(app).await,
        report(0, 0, 0),
        "not due before the backoff"
    );
    app.set_time("2026-03-22T10:00:01.300Z");
    assert_eq!(
        dispatch(app).await,
        report(0, 3, 0),
        "still down, second attempt"
    );
    for r in &redeemed {
        assert_eq!(
            status_of(app, &r.redemption_id).await.status,
            pb::RedemptionStatus::Pending as i32
        );
    }

    app.pool.set_mode(PoolMode::Up);
    app.set_time("2026-03-22T10:00:02.000Z");
    assert_eq!(
        dispatch(app).await,
        report(0, 0, 0),
        "the second backoff (2 s) has not passed"
    );
    app.set_time("2026-03-22T10:00:04.000Z");
    assert_eq!(dispatch(app).await, report(3, 0, 0));
    assert_eq!(dispatch(app).await, report(0, 0, 0), "nothing left");

    let held = app.pool.codes();
    assert_eq!(held.len(), 3, "each code once");
    for r in &redeemed {
        assert_eq!(
            status_of(app, &r.redemption_id).await.status,
            pb::RedemptionStatus::Issued as i32
        );
        let (pool, valid_until, reference) = held.get(&r.code).expect("the code is in ONe");
        assert_eq!(
            (pool.as_str(), valid_until.as_str(), reference.as_str()),
            ("pool-spring", "2026-05-31", r.redemption_id.as_str())
        );
    }
    assert_eq!(app.pool.calls(), (9, 0), "6 failed calls, 3 deliveries");
}

async fn a_delivery_cut_short_by_a_crash_is_redone_and_lands_once(app: &OutboxApp) {
    funded_client(app, "org:k", "100", &[]).await;
    let coupon_id = coupon(app, "Crash", "5", None, None).await;
    app.set_time("2026-03-22T10:00:00Z");
    let redeemed = redeem(app, request("crash", "org:k", &coupon_id))
        .await
        .expect("redeem");

    // Another replica leases the message, gives the code to ONe, and dies before recording it.
    let clock: Arc<dyn Clock> = app.clock.clone();
    let repo = SeaRedemptionRepository::new(app.store.db.clone(), clock);
    let leased = repo
        .lease_deliveries(
            "replica-that-dies",
            app.clock.now(),
            Duration::from_mins(1),
            10,
        )
        .await
        .expect("lease");
    assert_eq!(leased.len(), 1);
    let core = one_loyalty::sync::gateway::CoreClient::new(&one_loyalty::config::CoreSettings {
        endpoint: app.pool_endpoint.clone(),
        token: String::new(),
        tenant_tokens: std::collections::BTreeMap::new(),
        connect_timeout_ms: 1_000,
        request_timeout_ms: 2_000,
    })
    .expect("core");
    let tenant = TenantId::parse(DEMO_TENANT).expect("tenant");
    let first = core
        .add_code(
            &tenant,
            "pool-spring",
            &redeemed.code,
            chrono::NaiveDate::from_ymd_opt(2026, 5, 31).expect("day"),
            &redeemed.redemption_id,
        )
        .await;
    assert_eq!(
        first,
        one_loyalty::domain::redemption::DeliveryOutcome::Delivered
    );

    assert_eq!(
        dispatch(app).await,
        report(0, 0, 0),
        "leased by the other replica"
    );
    app.set_time("2026-03-22T10:01:01Z");
    assert_eq!(dispatch(app).await, report(1, 0, 0), "the lease ran out");
    assert_eq!(app.pool.codes().len(), 1, "the code is in ONe once");
    assert_eq!(app.pool.calls(), (2, 1), "ONe saw it a second time");
    assert_eq!(
        status_of(app, &redeemed.redemption_id).await.status,
        pb::RedemptionStatus::Issued as i32
    );
    // The dead replica's late report changes nothing.
    assert!(
        !repo
            .delivered(&leased[0], "replica-that-dies", app.clock.now())
            .await
            .expect("late report")
    );
}

async fn a_code_refused_for_good_fails_the_redemption_and_refunds_it(app: &OutboxApp) {
    funded_client(app, "org:f", "100", &[]).await;
    let coupon_id = coupon(app, "Closed", "30", Some(5), None).await;
    app.set_time("2026-03-22T10:00:00Z");
    let redeemed = redeem(app, request("closed", "org:f", &coupon_id))
        .await
        .expect("redeem");
    assert_eq!(
        balance(app, "org:f")
            .await
            .available
            .parse::<Decimal>()
            .ok(),
        Some(Decimal::from(70))
    );
    app.pool.set_mode(PoolMode::Rejecting);
    assert_eq!(dispatch(app).await, report(0, 0, 1));
    assert_eq!(dispatch(app).await, report(0, 0, 0), "not retried");

    let failed = status_of(app, &redeemed.redemption_id).await;
    assert_eq!(failed.status, pb::RedemptionStatus::Failed as i32);
    assert!(
        failed.reason.contains("pool pool-spring is closed"),
        "{}",
        failed.reason
    );
    assert!(!failed.refund_event_id.is_empty());
    let b = balance(app, "org:f").await;
    assert_eq!(
        b.available.parse::<Decimal>().ok(),
        Some(Decimal::from(100))
    );
    let events = pb::ledger_service_client::LedgerServiceClient::new(app.channel.clone())
        .list_events(app.request(pb::ListEventsRequest {
            client_id: "org:f".into(),
            page_size: 10,
            ..Default::default()
        }))
        .await
        .expect("events")
        .into_inner()
        .events;
    let refund = &events[0];
    assert_eq!(refund.event_id, failed.refund_event_id);
    assert_eq!(refund.r#type, pb::EventType::Refund as i32);
    assert_eq!(refund.reason_code, "DELIVERY_REJECTED");
    assert!(refund.reason.contains("closed"), "{}", refund.reason);
    let count = pb::coupon_service_client::CouponServiceClient::new(app.channel.clone())
        .get_coupon(app.request(pb::GetCouponRequest {
            coupon_id: coupon_id.clone(),
        }))
        .await
        .expect("coupon")
        .into_inner()
        .coupon
        .expect("coupon")
        .redeemed_count;
    assert_eq!(count, 0, "a failed redemption does not hold the coupon");
    // An administrator cannot cancel it again: it is settled.
    let cancel = redeem_client(app)
        .cancel_redemption(app.request(pb::CancelRedemptionRequest {
            request_id: "cancel-failed".into(),
            redemption_id: redeemed.redemption_id.clone(),
            reason: "double refund attempt".into(),
        }))
        .await
        .expect_err("settled");
    assert_eq!(cancel.code(), tonic::Code::FailedPrecondition);
}

async fn a_special_coupon_sends_exactly_one_email(app: &OutboxApp) {
    funded_client(app, "org:vip", "1000", &[]).await;
    pb::settings_service_client::SettingsServiceClient::new(app.channel.clone())
        .update_settings(app.request(pb::UpdateSettingsRequest {
            request_id: "logo".into(),
            settings: Some(pb::TenantSettings {
                company_logo_url: "https://cdn.shop.test/logo.png".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["company_logo_url".into()],
            }),
            expected_revision: 0,
        }))
        .await
        .expect("logo");
    let trip = create(
        app,
        "create-trip",
        pb::CouponSpec {
            point_value: "250".into(),
            ..special("Factory trip")
        },
    )
    .await
    .expect("special coupon")
    .coupon_id;
    app.set_time("2026-03-22T10:00:00Z");
    let redeemed = redeem(app, request("trip", "org:vip", &trip))
        .await
        .expect("redeem");
    assert!(redeemed.code.is_empty(), "a special coupon has no code");
    assert_eq!(dispatch(app).await, report(1, 0, 0));
    assert_eq!(dispatch(app).await, report(0, 0, 0));

    let mail = app.smtp.received();
    assert_eq!(mail.len(), 1, "exactly one e-mail");
    assert_eq!(mail[0].to, vec!["<rewards@acme.example>"]);
    assert_eq!(mail[0].from, "<loyalty@shop.test>");
    for part in [
        "Client org:vip",
        "Factory trip",
        "250.00",
        "2026-03-22 10:00 UTC",
        "https://cdn.shop.test/logo.png",
        redeemed.redemption_id.as_str(),
    ] {
        assert!(mail[0].data.contains(part), "{part} in\n{}", mail[0].data);
    }
    assert_eq!(
        status_of(app, &redeemed.redemption_id).await.status,
        pb::RedemptionStatus::Issued as i32
    );
    assert_eq!(app.pool.calls(), (0, 0), "nothing went to a pool");
}

async fn the_background_dispatcher_issues_codes_without_being_asked(app: &LiveOutboxApp) {
    funded_client(app, "org:l", "100", &[]).await;
    let coupon_id = coupon(app, "Live", "10", None, None).await;
    app.set_time("2026-03-22T10:00:00Z");
    let redeemed = redeem(app, request("live", "org:l", &coupon_id))
        .await
        .expect("redeem");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = status_of(app, &redeemed.redemption_id).await;
        if now.status == pb::RedemptionStatus::Issued as i32 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not issued: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(app.pool.codes().contains_key(&redeemed.code));
}

async fn pools_are_read_live_from_one_and_a_coupon_needs_one_that_exists_there(app: &OutboxApp) {
    app.pool.set_pools(&[("p-live", true), ("p-closed", false)]);
    let coupons = || pb::coupon_service_client::CouponServiceClient::new(app.channel.clone());
    let list = || async {
        coupons()
            .list_coupon_pools(app.request(pb::ListCouponPoolsRequest::default()))
            .await
            .expect("pools")
            .into_inner()
            .pools
            .into_iter()
            .map(|p| (p.pool_id, p.active))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        list().await,
        vec![("p-closed".to_owned(), false), ("p-live".to_owned(), true)]
    );
    let on = |pool: &str| pb::CouponSpec {
        pool_id: pool.into(),
        ..crate::coupons::spec(&format!("On {pool}"))
    };
    // A pool created in ONe after the last listing is found when a coupon names it.
    app.pool
        .set_pools(&[("p-live", true), ("p-closed", false), ("p-new", true)]);
    create(app, "on-new", on("p-new"))
        .await
        .expect("a pool ONe holds");
    for (pool, why) in [("p-closed", "inactive"), ("p-missing", "unknown to ONe")] {
        let refused = create(app, &format!("on-{pool}"), on(pool))
            .await
            .expect_err(why);
        assert_eq!(
            crate::helpers::violated_fields(&refused),
            vec!["spec.pool_id"],
            "{why}"
        );
    }
    // A pool ONe dropped stays in the copy as inactive; with ONe down, the copy is served.
    app.pool.set_pools(&[("p-live", true)]);
    assert_eq!(
        list().await,
        vec![
            ("p-closed".to_owned(), false),
            ("p-live".to_owned(), true),
            ("p-new".to_owned(), false)
        ]
    );
    app.pool.set_mode(PoolMode::Down);
    assert_eq!(list().await.len(), 3, "the local copy while ONe is down");
}
