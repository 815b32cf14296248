//! GDPR: a user anonymized keeps nothing that names them, while their consent history,
//! their client's eligibility and every point stay exactly as they were, under a pseudonym.

use one_loyalty::proto::loyalty::v1 as pb;
use tonic::Code;

use crate::agreements::{eligibility, record};
use crate::helpers::ClockedApp;
use crate::on_both_backends;
use crate::redeem::{balance, coupon, funded_client, redeem, redeem_client};

on_both_backends!(ClockedApp:
    an_anonymized_user_is_a_pseudonym_everywhere_and_no_point_moves,
);

fn agreements(
    app: &ClockedApp,
) -> pb::agreement_service_client::AgreementServiceClient<tonic::transport::Channel> {
    pb::agreement_service_client::AgreementServiceClient::new(app.channel.clone())
}

async fn anonymize(
    app: &ClockedApp,
    request_id: &str,
    user_id: &str,
) -> Result<String, tonic::Status> {
    agreements(app)
        .anonymize_user(app.request(pb::AnonymizeUserRequest {
            request_id: request_id.into(),
            user_id: user_id.into(),
        }))
        .await
        .map(|r| r.into_inner().pseudonym)
}

#[allow(clippy::too_many_lines)] // one walk through every place a user id is kept
async fn an_anonymized_user_is_a_pseudonym_everywhere_and_no_point_moves(app: &ClockedApp) {
    funded_client(app, "org:g", "100", &[]).await;
    app.seed_user("jan.kowalski", "org:g").await;
    record(
        app,
        "consent-1",
        vec![pb::ConsentEvent {
            event_id: "c-1".into(),
            user_id: "jan.kowalski".into(),
            action: pb::ConsentAction::Accept as i32,
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_773_900_000,
                nanos: 0,
            }),
            agreement_version: 1,
            source: "api".into(),
            ..Default::default()
        }],
    )
    .await;
    let coupon_id = coupon(app, "Gift", "10", None, None).await;
    app.set_time("2026-03-22T10:00:00Z");
    let bought = redeem(
        app,
        pb::RedeemCouponRequest {
            request_id: "r-1".into(),
            client_id: "org:g".into(),
            coupon_id,
            user_id: "jan.kowalski".into(),
        },
    )
    .await
    .expect("redeem");
    let before = balance(app, "org:g").await;
    let eligible_before = eligibility(app, "org:g", "2026-03-01", "2026-03-31").await;

    let pseudonym = anonymize(app, "gdpr-1", "jan.kowalski")
        .await
        .expect("anonymize");
    assert!(
        pseudonym.starts_with("anon-") && !pseudonym.contains("jan"),
        "{pseudonym}"
    );
    assert_eq!(
        anonymize(app, "gdpr-1", "jan.kowalski")
            .await
            .expect("retry"),
        pseudonym,
        "a retry answers the same"
    );
    let again = anonymize(app, "gdpr-2", "jan.kowalski")
        .await
        .expect_err("gone");
    assert_eq!(
        again.code(),
        Code::NotFound,
        "nothing is kept under the old id"
    );

    // The history, under the pseudonym.
    let consent = agreements(app)
        .get_user_consent(app.request(pb::GetUserConsentRequest {
            user_id: pseudonym.clone(),
        }))
        .await
        .expect("consent under the pseudonym")
        .into_inner();
    assert_eq!(consent.client_id, "org:g");
    let old = agreements(app)
        .get_user_consent(app.request(pb::GetUserConsentRequest {
            user_id: "jan.kowalski".into(),
        }))
        .await
        .expect_err("the old id is unknown");
    assert_eq!(old.code(), Code::NotFound);
    assert_eq!(
        eligibility(app, "org:g", "2026-03-01", "2026-03-31").await,
        eligible_before
    );

    // Who redeemed, and who caused the Use event: the pseudonym; not a point moved.
    let redemption = redeem_client(app)
        .get_redemption(app.request(pb::GetRedemptionRequest {
            redemption_id: bought.redemption_id.clone(),
        }))
        .await
        .expect("redemption")
        .into_inner()
        .redemption
        .expect("redemption");
    assert_eq!(redemption.user_id, pseudonym);
    let events = pb::ledger_service_client::LedgerServiceClient::new(app.channel.clone())
        .list_events(app.request(pb::ListEventsRequest {
            client_id: "org:g".into(),
            page_size: 10,
            ..Default::default()
        }))
        .await
        .expect("events")
        .into_inner()
        .events;
    let spend = events
        .iter()
        .find(|e| e.event_id == bought.use_event_id)
        .expect("the Use event");
    assert_eq!(
        spend.actor.as_ref().map(|a| a.user_id.as_str()),
        Some(pseudonym.as_str())
    );
    assert_eq!(balance(app, "org:g").await, before);
}
