//! The ONe front office acting for one client's user: it reads and redeems for that client
//! only, records the user on what it causes, and sees nothing of other clients (their records
//! answer as missing).

use one_loyalty::proto::loyalty::v1 as pb;
use tonic::Code;

use crate::helpers::{ClockedApp, DEMO_TENANT, request_as};
use crate::on_both_backends;
use crate::redeem::{coupon, funded_client, redeem_client};

on_both_backends!(ClockedApp:
    the_front_office_reaches_only_the_client_it_acts_for,
);

/// A request of the front office acting for `org:a`'s user `u-a`.
fn acting<T>(key: &str, message: T) -> tonic::Request<T> {
    let mut request = request_as(DEMO_TENANT, key, message);
    request
        .metadata_mut()
        .insert("one-client-id", "org:a".parse().expect("metadata"));
    request
        .metadata_mut()
        .insert("one-user-id", "u-a".parse().expect("metadata"));
    request
}

fn ledger(
    app: &ClockedApp,
) -> pb::ledger_service_client::LedgerServiceClient<tonic::transport::Channel> {
    pb::ledger_service_client::LedgerServiceClient::new(app.channel.clone())
}

fn denied<T>(reply: Result<tonic::Response<T>, tonic::Status>) {
    let status = reply.err().expect("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

/// Another client's record answers as if it did not exist.
fn missing<T>(reply: Result<tonic::Response<T>, tonic::Status>) {
    let status = reply.err().expect("hidden");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[allow(clippy::too_many_lines)] // one walk through every kind of reach
async fn the_front_office_reaches_only_the_client_it_acts_for(app: &ClockedApp) {
    funded_client(app, "org:a", "100", &[]).await;
    funded_client(app, "org:b", "100", &[]).await;
    app.seed_user("u-a", "org:a").await;
    app.seed_user("u-b", "org:b").await;
    let coupon_id = coupon(app, "Ten", "10", None, None).await;
    app.set_time("2026-03-22T10:00:00Z");
    let key = app
        .services
        .access
        .issue_key(
            DEMO_TENANT,
            &["front-office".to_owned()],
            "ONe front office",
        )
        .await
        .expect("key")
        .secret;
    // Balances and histories: its client by name or by default, never another.
    let own = ledger(app)
        .get_balance(acting(&key, pb::GetBalanceRequest::default()))
        .await
        .expect("its own balance")
        .into_inner()
        .balance
        .expect("balance");
    assert_eq!(own.client_id, "org:a");
    denied(
        ledger(app)
            .get_balance(acting(
                &key,
                pb::GetBalanceRequest {
                    client_id: "org:b".into(),
                    ..Default::default()
                },
            ))
            .await,
    );
    denied(
        ledger(app)
            .list_events(acting(
                &key,
                pb::ListEventsRequest {
                    client_id: "org:b".into(),
                    ..Default::default()
                },
            ))
            .await,
    );
    let b_events = ledger(app)
        .list_events(app.request(pb::ListEventsRequest {
            client_id: "org:b".into(),
            ..Default::default()
        }))
        .await
        .expect("admin")
        .into_inner()
        .events;
    missing(
        ledger(app)
            .get_event(acting(
                &key,
                pb::GetEventRequest {
                    event_id: b_events[0].event_id.clone(),
                },
            ))
            .await,
    );

    // Redeeming: for its client, with its user recorded; never for another client or user.
    let mine = redeem_client(app)
        .redeem_coupon(acting(
            &key,
            pb::RedeemCouponRequest {
                request_id: "fo-1".into(),
                coupon_id: coupon_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("redeem for its client")
        .into_inner()
        .redemption
        .expect("redemption");
    assert_eq!(
        (mine.client_id.as_str(), mine.user_id.as_str()),
        ("org:a", "u-a")
    );
    denied(
        redeem_client(app)
            .redeem_coupon(acting(
                &key,
                pb::RedeemCouponRequest {
                    request_id: "fo-2".into(),
                    client_id: "org:b".into(),
                    coupon_id: coupon_id.clone(),
                    ..Default::default()
                },
            ))
            .await,
    );
    denied(
        redeem_client(app)
            .redeem_coupon(acting(
                &key,
                pb::RedeemCouponRequest {
                    request_id: "fo-3".into(),
                    coupon_id: coupon_id.clone(),
                    user_id: "u-b".into(),
                    ..Default::default()
                },
            ))
            .await,
    );
    let theirs = redeem_client(app)
        .redeem_coupon(app.request(pb::RedeemCouponRequest {
            request_id: "admin-1".into(),
            client_id: "org:b".into(),
            coupon_id: coupon_id.clone(),
            ..Default::default()
        }))
        .await
        .expect("admin redeems for org:b")
        .into_inner()
        .redemption
        .expect("redemption");
    // Another client's redemption answers exactly as one that does not exist.
    let hidden = redeem_client(app)
        .get_redemption(acting(
            &key,
            pb::GetRedemptionRequest {
                redemption_id: theirs.redemption_id.clone(),
            },
        ))
        .await
        .expect_err("hidden");
    let unknown_id = format!("{}x", theirs.redemption_id);
    let unknown = redeem_client(app)
        .get_redemption(acting(
            &key,
            pb::GetRedemptionRequest {
                redemption_id: unknown_id.clone(),
            },
        ))
        .await
        .expect_err("unknown");
    assert_eq!(hidden.code(), Code::NotFound);
    assert_eq!(
        hidden.message(),
        unknown
            .message()
            .replace(&unknown_id, &theirs.redemption_id),
        "the same answer whatever the reason"
    );
    let listed = redeem_client(app)
        .list_redemptions(acting(&key, pb::ListRedemptionsRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .redemptions;
    assert_eq!(listed, vec![mine]);

    // Reservations of another client answer as missing, and stay as they are.
    denied(
        redeem_client(app)
            .reserve_points(acting(
                &key,
                pb::ReservePointsRequest {
                    request_id: "fo-r1".into(),
                    client_id: "org:b".into(),
                    basket_id: "b".into(),
                    points: "5".into(),
                    ..Default::default()
                },
            ))
            .await,
    );
    let held = redeem_client(app)
        .reserve_points(app.request(pb::ReservePointsRequest {
            request_id: "admin-r1".into(),
            client_id: "org:b".into(),
            basket_id: "b".into(),
            points: "5".into(),
            ..Default::default()
        }))
        .await
        .expect("admin reserves for org:b")
        .into_inner()
        .reservation
        .expect("reservation");
    missing(
        redeem_client(app)
            .get_reservation(acting(
                &key,
                pb::GetReservationRequest {
                    reservation_id: held.reservation_id.clone(),
                },
            ))
            .await,
    );
    missing(
        redeem_client(app)
            .release_reservation(acting(
                &key,
                pb::ReleaseReservationRequest {
                    request_id: "fo-release".into(),
                    reservation_id: held.reservation_id.clone(),
                },
            ))
            .await,
    );
    let still = redeem_client(app)
        .get_reservation(app.request(pb::GetReservationRequest {
            reservation_id: held.reservation_id.clone(),
        }))
        .await
        .expect("admin")
        .into_inner()
        .reservation
        .expect("reservation");
    assert_eq!(still.status, pb::ReservationStatus::Held as i32);

    // Outside its permissions, whatever the client.
    denied(
        ledger(app)
            .adjust_points(acting(
                &key,
                pb::AdjustPointsRequest {
                    request_id: "fo-adjust".into(),
                    client_id: "org:a".into(),
                    points: "1000".into(),
                    reason_code: "GIFT".into(),
                    reason: "please".into(),
                    user_id: "u-a".into(),
                },
            ))
            .await,
    );
    // A front-office call must say whom it acts for.
    denied(
        ledger(app)
            .get_balance(request_as(
                DEMO_TENANT,
                &key,
                pb::GetBalanceRequest::default(),
            ))
            .await,
    );
}
