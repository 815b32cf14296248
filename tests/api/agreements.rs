//! `AgreementService` end to end: consent events, versions, and when a client counts as agreed.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use one_loyalty::domain::directory::UserRecord;
use one_loyalty::domain::tenant::TenantId;
use one_loyalty::proto::loyalty::v1 as pb;
use pb::agreement_service_client::AgreementServiceClient;
use pb::{ConsentAction, ConsentEventOutcome as Outcome};
use tonic::transport::Channel;

use crate::helpers::{DEMO_TENANT, TestApp, violated_fields};
use crate::on_both_backends;

on_both_backends!(TestApp:
    agreed_today_withdrawn_tomorrow_agreed_again_the_day_after_gives_days_one_and_three,
    two_users_with_overlapping_consents_make_their_client_eligible_on_the_union,
    one_call_for_several_clients_of_several_users_gives_each_client_its_own_days,
    a_version_published_mid_day_counts_only_acceptances_of_it_made_before_the_day_ends,
    events_delivered_in_reverse_order_give_the_same_days,
    an_individual_client_and_a_client_without_an_account_are_never_eligible,
    the_tenants_time_zone_decides_which_day_an_acceptance_counts_for,
    accepting_and_withdrawing_within_one_day_does_not_count,
    recording_is_idempotent_by_event_id_and_by_request_id,
    unknown_users_and_clients_are_not_found_and_nothing_is_recorded,
    versions_must_increase_in_number_and_publication_time,
    a_users_current_consent_and_paged_history,
    only_the_configured_declaration_type_counts,
    a_deactivated_users_consent_stops_counting_at_the_deactivation,
    eligible_on_agrees_with_the_reported_days,
);

const TZ: chrono_tz::Tz = chrono_tz::Europe::Warsaw;

fn local(text: &str) -> DateTime<Utc> {
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").expect("local time");
    TZ.from_local_datetime(&naive)
        .single()
        .expect("unambiguous")
        .with_timezone(&Utc)
}

fn ts(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).expect("nanos"),
    }
}

fn client(app: &TestApp) -> AgreementServiceClient<Channel> {
    AgreementServiceClient::new(app.channel.clone())
}

fn consent(
    event_id: &str,
    user_id: &str,
    action: ConsentAction,
    at: &str,
    version: u32,
) -> pb::ConsentEvent {
    pb::ConsentEvent {
        event_id: event_id.into(),
        user_id: user_id.into(),
        action: action as i32,
        occurred_at: Some(ts(local(at))),
        agreement_version: version,
        source: "test".into(),
        ..Default::default()
    }
}

fn accept(event_id: &str, user_id: &str, at: &str) -> pb::ConsentEvent {
    consent(event_id, user_id, ConsentAction::Accept, at, 1)
}

fn withdraw(event_id: &str, user_id: &str, at: &str) -> pb::ConsentEvent {
    consent(event_id, user_id, ConsentAction::Withdraw, at, 1)
}

async fn try_record(
    app: &TestApp,
    request_id: &str,
    events: Vec<pb::ConsentEvent>,
) -> Result<Vec<i32>, tonic::Status> {
    let request = pb::RecordConsentEventsRequest {
        request_id: request_id.into(),
        events,
    };
    client(app)
        .record_consent_events(app.request(request))
        .await
        .map(|r| r.into_inner().outcomes)
}

pub async fn record(app: &TestApp, request_id: &str, events: Vec<pb::ConsentEvent>) -> Vec<i32> {
    try_record(app, request_id, events)
        .await
        .expect("record consents")
}

pub async fn eligibility(
    app: &TestApp,
    client_id: &str,
    from: &str,
    to: &str,
) -> pb::GetClientEligibilityResponse {
    let request = pb::GetClientEligibilityRequest {
        client_id: client_id.into(),
        from_date: from.into(),
        to_date: to.into(),
    };
    client(app)
        .get_client_eligibility(app.request(request))
        .await
        .expect("eligibility")
        .into_inner()
}

async fn days(app: &TestApp, client_id: &str, from: &str, to: &str) -> Vec<String> {
    eligibility(app, client_id, from, to).await.eligible_days
}

async fn publish(
    app: &TestApp,
    request_id: &str,
    version: u32,
    at: &str,
) -> Result<pb::AgreementVersion, tonic::Status> {
    let request = pb::PublishAgreementVersionRequest {
        request_id: request_id.into(),
        version: Some(pb::AgreementVersion {
            version,
            published_at: Some(ts(local(at))),
            title: format!("Loyalty terms v{version}"),
            ..Default::default()
        }),
    };
    client(app)
        .publish_agreement_version(app.request(request))
        .await
        .map(|r| r.into_inner().version.expect("version"))
}

async fn one_client_one_user(app: &TestApp) {
    app.seed_client("org:c", true).await;
    app.seed_user("u1", "org:c").await;
}

async fn agreed_today_withdrawn_tomorrow_agreed_again_the_day_after_gives_days_one_and_three(
    app: &TestApp,
) {
    one_client_one_user(app).await;
    record(app, "r1", vec![accept("e1", "u1", "2026-03-01 10:00")]).await;
    record(app, "r2", vec![withdraw("e2", "u1", "2026-03-02 10:00")]).await;
    record(app, "r3", vec![accept("e3", "u1", "2026-03-03 10:00")]).await;
    assert_eq!(
        days(app, "org:c", "2026-03-01", "2026-03-03").await,
        ["2026-03-01", "2026-03-03"]
    );
    let answer = eligibility(app, "org:c", "2026-03-01", "2026-03-03").await;
    assert_eq!(answer.intervals.len(), 2);
    assert_eq!(answer.intervals[0].end, Some(ts(local("2026-03-02 10:00"))));
    assert_eq!(
        answer.intervals[1].end,
        Some(ts(local("2026-03-04 00:00"))),
        "clipped to the period"
    );
}

async fn two_users_with_overlapping_consents_make_their_client_eligible_on_the_union(
    app: &TestApp,
) {
    one_client_one_user(app).await;
    app.seed_user("u2", "org:c").await;
    record(
        app,
        "r1",
        vec![
            accept("a1", "u1", "2026-03-01 09:00"),
            accept("b1", "u2", "2026-03-02 09:00"),
            withdraw("a2", "u1", "2026-03-03 09:00"),
            withdraw("b2", "u2", "2026-03-05 09:00"),
        ],
    )
    .await;
    assert_eq!(
        days(app, "org:c", "2026-02-28", "2026-03-06").await,
        ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"]
    );
    let answer = eligibility(app, "org:c", "2026-02-28", "2026-03-06").await;
    assert_eq!(
        answer.intervals.len(),
        1,
        "overlaps merge into one interval"
    );
}

/// One call whose events, interleaved, touch three clients of two users each (one client without
/// an account): each client's days come from its own users' events only.
async fn one_call_for_several_clients_of_several_users_gives_each_client_its_own_days(
    app: &TestApp,
) {
    for (client_id, has_account, users) in [
        ("org:a", true, ["ua1", "ua2"]),
        ("org:b", true, ["ub1", "ub2"]),
        ("org:n", false, ["un1", "un2"]),
    ] {
        app.seed_client(client_id, has_account).await;
        for user in users {
            app.seed_user(user, client_id).await;
        }
    }
    record(
        app,
        "r1",
        vec![
            accept("a1", "ua1", "2026-03-01 09:00"),
            accept("b1", "ub1", "2026-03-02 09:00"),
            accept("n1", "un1", "2026-03-01 09:00"),
            withdraw("a2", "ua1", "2026-03-03 09:00"),
            accept("a3", "ua2", "2026-03-02 09:00"),
            withdraw("b2", "ub1", "2026-03-04 09:00"),
            accept("b3", "ub2", "2026-03-05 09:00"),
        ],
    )
    .await;
    assert_eq!(
        days(app, "org:a", "2026-02-28", "2026-03-06").await,
        [
            "2026-03-01",
            "2026-03-02",
            "2026-03-03",
            "2026-03-04",
            "2026-03-05",
            "2026-03-06"
        ]
    );
    assert_eq!(
        days(app, "org:b", "2026-02-28", "2026-03-06").await,
        ["2026-03-02", "2026-03-03", "2026-03-05", "2026-03-06"]
    );
    assert!(
        days(app, "org:n", "2026-02-28", "2026-03-06")
            .await
            .is_empty()
    );
}

async fn a_version_published_mid_day_counts_only_acceptances_of_it_made_before_the_day_ends(
    app: &TestApp,
) {
    for (client_id, user_id) in [
        ("org:old", "u-old"),
        ("org:new", "u-new"),
        ("org:late", "u-late"),
    ] {
        app.seed_client(client_id, true).await;
        app.seed_user(user_id, client_id).await;
    }
    publish(app, "v1", 1, "2026-01-01 00:00").await.expect("v1");
    record(
        app,
        "r1",
        vec![
            accept("o1", "u-old", "2026-03-01 10:00"),
            accept("n1", "u-new", "2026-03-01 10:00"),
            accept("l1", "u-late", "2026-03-01 10:00"),
        ],
    )
    .await;
    publish(app, "v2", 2, "2026-03-10 12:00").await.expect("v2");
    record(
        app,
        "r2",
        vec![
            consent("n2", "u-new", ConsentAction::Accept, "2026-03-10 18:00", 2),
            consent("l2", "u-late", ConsentAction::Accept, "2026-03-11 00:30", 2),
        ],
    )
    .await;
    assert_eq!(
        days(app, "org:old", "2026-03-09", "2026-03-11").await,
        ["2026-03-09"]
    );
    assert_eq!(
        days(app, "org:new", "2026-03-09", "2026-03-11").await,
        ["2026-03-09", "2026-03-10", "2026-03-11"]
    );
    assert_eq!(
        days(app, "org:late", "2026-03-09", "2026-03-11").await,
        ["2026-03-09", "2026-03-11"]
    );
}

async fn events_delivered_in_reverse_order_give_the_same_days(app: &TestApp) {
    let history = |user: &str, prefix: &str| {
        vec![
            accept(&format!("{prefix}1"), user, "2026-03-01 10:00"),
            withdraw(&format!("{prefix}2"), user, "2026-03-02 10:00"),
            accept(&format!("{prefix}3"), user, "2026-03-03 23:59"),
            withdraw(&format!("{prefix}4"), user, "2026-03-05 00:00"),
            accept(&format!("{prefix}5"), user, "2026-03-06 08:00"),
        ]
    };
    for (client_id, user_id) in [("org:in-order", "u-a"), ("org:reversed", "u-b")] {
        app.seed_client(client_id, true).await;
        app.seed_user(user_id, client_id).await;
    }
    for (i, event) in history("u-a", "a").into_iter().enumerate() {
        record(app, &format!("in-order-{i}"), vec![event]).await;
    }
    for (i, event) in history("u-b", "b").into_iter().rev().enumerate() {
        record(app, &format!("reversed-{i}"), vec![event]).await;
    }
    let in_order = eligibility(app, "org:in-order", "2026-02-28", "2026-03-07").await;
    let reversed = eligibility(app, "org:reversed", "2026-02-28", "2026-03-07").await;
    assert_eq!(
        in_order.eligible_days,
        [
            "2026-03-01",
            "2026-03-03",
            "2026-03-04",
            "2026-03-06",
            "2026-03-07"
        ]
    );
    assert_eq!(reversed.eligible_days, in_order.eligible_days);
    assert_eq!(reversed.intervals, in_order.intervals);
}

async fn an_individual_client_and_a_client_without_an_account_are_never_eligible(app: &TestApp) {
    app.seed_client("ind:person", true).await;
    app.seed_user("u-ind", "ind:person").await;
    app.seed_client("org:no-account", false).await;
    app.seed_user("u-noacc", "org:no-account").await;
    let outcomes = record(
        app,
        "r1",
        vec![
            accept("i1", "u-ind", "2026-03-01 10:00"),
            accept("n1", "u-noacc", "2026-03-01 10:00"),
        ],
    )
    .await;
    assert_eq!(
        outcomes,
        [Outcome::Recorded as i32, Outcome::Recorded as i32],
        "the consent is still recorded"
    );
    assert!(
        days(app, "ind:person", "2026-03-01", "2026-03-05")
            .await
            .is_empty()
    );
    assert!(
        days(app, "org:no-account", "2026-03-01", "2026-03-05")
            .await
            .is_empty()
    );
    // Gaining an account makes the recorded consent count.
    app.seed_client("org:no-account", true).await;
    assert_eq!(
        days(app, "org:no-account", "2026-03-01", "2026-03-02").await,
        ["2026-03-01", "2026-03-02"]
    );
}

async fn the_tenants_time_zone_decides_which_day_an_acceptance_counts_for(app: &TestApp) {
    app.seed_client("org:evening", true).await;
    app.seed_user("u-e", "org:evening").await;
    app.seed_client("org:night", true).await;
    app.seed_user("u-n", "org:night").await;
    // 23:30 in Warsaw is 22:30 UTC the same day; 00:30 is 23:30 UTC the day before.
    record(
        app,
        "r1",
        vec![
            accept("e1", "u-e", "2026-03-01 23:30"),
            accept("n1", "u-n", "2026-03-02 00:30"),
        ],
    )
    .await;
    assert_eq!(
        days(app, "org:evening", "2026-03-01", "2026-03-01").await,
        ["2026-03-01"]
    );
    assert!(
        days(app, "org:night", "2026-03-01", "2026-03-01")
            .await
            .is_empty()
    );
    assert_eq!(
        days(app, "org:night", "2026-03-01", "2026-03-02").await,
        ["2026-03-02"]
    );
}

async fn accepting_and_withdrawing_within_one_day_does_not_count(app: &TestApp) {
    one_client_one_user(app).await;
    record(
        app,
        "r1",
        vec![
            accept("e1", "u1", "2026-03-01 08:00"),
            withdraw("e2", "u1", "2026-03-01 17:00"),
        ],
    )
    .await;
    assert!(
        days(app, "org:c", "2026-02-28", "2026-03-02")
            .await
            .is_empty()
    );
}

async fn recording_is_idempotent_by_event_id_and_by_request_id(app: &TestApp) {
    one_client_one_user(app).await;
    let stray = record(app, "r0", vec![withdraw("w0", "u1", "2026-02-01 10:00")]).await;
    assert_eq!(
        stray,
        [Outcome::NoEffect as i32],
        "a withdrawal with nothing accepted changes nothing"
    );
    let events = vec![
        accept("e1", "u1", "2026-03-01 10:00"),
        withdraw("e2", "u1", "2026-03-05 10:00"),
    ];
    let first = record(app, "r1", events.clone()).await;
    assert_eq!(first, [Outcome::Recorded as i32, Outcome::Recorded as i32]);
    assert_eq!(
        record(app, "r1", events.clone()).await,
        first,
        "a retry answers like the first call"
    );
    let again = record(app, "r2", events.clone()).await;
    assert_eq!(
        again,
        [Outcome::Duplicate as i32, Outcome::Duplicate as i32]
    );
    let status = try_record(app, "r1", vec![accept("e9", "u1", "2026-03-01 10:00")])
        .await
        .expect_err("reused request id");
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    let changed = vec![accept("e1", "u1", "2026-03-02 11:00")];
    let status = try_record(app, "r3", changed)
        .await
        .expect_err("reused event id");
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    let days = days(app, "org:c", "2026-02-28", "2026-03-06").await;
    assert_eq!(
        days,
        ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"],
        "nothing above changed the consent"
    );
}

async fn unknown_users_and_clients_are_not_found_and_nothing_is_recorded(app: &TestApp) {
    one_client_one_user(app).await;
    let status = try_record(
        app,
        "r1",
        vec![
            accept("e1", "u1", "2026-03-01 10:00"),
            accept("e2", "ghost", "2026-03-01 10:00"),
        ],
    )
    .await
    .expect_err("unknown user");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(
        days(app, "org:c", "2026-03-01", "2026-03-02")
            .await
            .is_empty(),
        "the known user's event was not recorded either"
    );
    let request = pb::GetClientEligibilityRequest {
        client_id: "org:ghost".into(),
        from_date: "2026-03-01".into(),
        to_date: "2026-03-02".into(),
    };
    let status = client(app)
        .get_client_eligibility(app.request(request))
        .await
        .expect_err("unknown client");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = client(app)
        .get_user_consent(app.request(pb::GetUserConsentRequest {
            user_id: "ghost".into(),
        }))
        .await
        .expect_err("unknown user");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let mut bad = accept("", "u1", "2026-03-01 10:00");
    bad.action = 0;
    bad.occurred_at = None;
    let status = try_record(app, "r2", vec![bad]).await.expect_err("invalid");
    assert_eq!(
        violated_fields(&status),
        ["events[0].action", "events[0].occurred_at"]
    );
    let request = pb::GetClientEligibilityRequest {
        client_id: "org:c".into(),
        from_date: "2026-03-05".into(),
        to_date: "2026-03-01".into(),
    };
    let status = client(app)
        .get_client_eligibility(app.request(request))
        .await
        .expect_err("order");
    assert_eq!(violated_fields(&status), ["to_date"]);
}

async fn versions_must_increase_in_number_and_publication_time(app: &TestApp) {
    publish(app, "v2", 2, "2026-02-01 00:00").await.expect("v2");
    let status = publish(app, "v1", 1, "2026-03-01 00:00")
        .await
        .expect_err("lower number");
    assert_eq!(violated_fields(&status), ["version.version"]);
    let status = publish(app, "v3-early", 3, "2026-01-01 00:00")
        .await
        .expect_err("earlier");
    assert_eq!(violated_fields(&status), ["version.published_at"]);
    let replayed = publish(app, "v2", 2, "2026-02-01 00:00")
        .await
        .expect("retry");
    assert_eq!(replayed.version, 2);
    publish(app, "v3", 3, "2026-03-01 00:00").await.expect("v3");
    let listed = client(app)
        .list_agreement_versions(app.request(pb::ListAgreementVersionsRequest {
            page_size: 1,
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.versions.len(), 1);
    assert_eq!(listed.versions[0].version, 2);
    let rest = client(app)
        .list_agreement_versions(app.request(pb::ListAgreementVersionsRequest {
            page_size: 10,
            page_token: listed.next_page_token,
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        rest.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [3]
    );
    assert!(rest.next_page_token.is_empty());
}

async fn a_users_current_consent_and_paged_history(app: &TestApp) {
    one_client_one_user(app).await;
    publish(app, "v1", 1, "2026-01-01 00:00").await.expect("v1");
    record(
        app,
        "r1",
        vec![
            accept("e1", "u1", "2026-03-01 10:00"),
            withdraw("e2", "u1", "2026-03-02 10:00"),
            accept("e3", "u1", "2026-03-03 10:00"),
        ],
    )
    .await;
    let state = client(app)
        .get_user_consent(app.request(pb::GetUserConsentRequest {
            user_id: "u1".into(),
        }))
        .await
        .expect("state")
        .into_inner();
    assert!(state.accepted && state.user_active);
    assert_eq!(
        (
            state.client_id.as_str(),
            state.accepted_version,
            state.current_version
        ),
        ("org:c", 1, 1)
    );
    assert_eq!(state.since, Some(ts(local("2026-03-03 10:00"))));

    let page = |token: String| pb::ListUserConsentHistoryRequest {
        user_id: "u1".into(),
        page_size: 2,
        page_token: token,
    };
    let first = client(app)
        .list_user_consent_history(app.request(page(String::new())))
        .await
        .expect("page")
        .into_inner();
    let ids: Vec<&str> = first.events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["e3", "e2"], "newest first");
    assert_eq!(first.events[0].client_id, "org:c");
    let second = client(app)
        .list_user_consent_history(app.request(page(first.next_page_token)))
        .await
        .expect("page")
        .into_inner();
    assert_eq!(
        second
            .events
            .iter()
            .map(|e| e.event_id.as_str())
            .collect::<Vec<_>>(),
        ["e1"]
    );
    assert!(second.next_page_token.is_empty());
}

async fn set_declaration_type(app: &TestApp, request_id: &str, declaration_type: &str) {
    let request = pb::UpdateSettingsRequest {
        request_id: request_id.into(),
        settings: Some(pb::TenantSettings {
            loyalty_declaration_type_id: declaration_type.into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["loyalty_declaration_type_id".into()],
        }),
        expected_revision: 0,
    };
    app.settings_client()
        .update_settings(app.request(request))
        .await
        .expect("settings");
}

async fn only_the_configured_declaration_type_counts(app: &TestApp) {
    one_client_one_user(app).await;
    set_declaration_type(app, "s1", "loyalty").await;
    let mut marketing = accept("m1", "u1", "2026-03-01 10:00");
    marketing.declaration_type_id = "marketing".into();
    record(
        app,
        "r1",
        vec![marketing, accept("l1", "u1", "2026-03-03 10:00")],
    )
    .await;
    assert_eq!(
        days(app, "org:c", "2026-03-01", "2026-03-03").await,
        ["2026-03-03"],
        "the configured type only"
    );
    set_declaration_type(app, "s2", "marketing").await;
    assert_eq!(
        days(app, "org:c", "2026-03-01", "2026-03-03").await,
        ["2026-03-01", "2026-03-02", "2026-03-03"],
        "switching the setting switches the type that counts"
    );
}

async fn a_deactivated_users_consent_stops_counting_at_the_deactivation(app: &TestApp) {
    one_client_one_user(app).await;
    record(app, "r1", vec![accept("e1", "u1", "2026-03-01 10:00")]).await;
    let deactivated = UserRecord {
        user_id: "u1".into(),
        client_id: "org:c".into(),
        active: false,
        deactivated_at: Some(local("2026-03-03 15:00")),
        updated_at: Utc::now(),
    };
    let tenant = TenantId::parse(DEMO_TENANT).expect("tenant");
    app.services
        .directory
        .save_user(&tenant, &deactivated)
        .await
        .expect("deactivate");
    assert_eq!(
        days(app, "org:c", "2026-03-01", "2026-03-05").await,
        ["2026-03-01", "2026-03-02"]
    );
}

async fn eligible_on_agrees_with_the_reported_days(app: &TestApp) {
    one_client_one_user(app).await;
    record(
        app,
        "r1",
        vec![
            accept("e1", "u1", "2026-03-27 10:00"),
            withdraw("e2", "u1", "2026-03-29 01:30"),
            accept("e3", "u1", "2026-03-30 23:59"),
        ],
    )
    .await;
    let reported = days(app, "org:c", "2026-03-26", "2026-04-01").await;
    assert_eq!(
        reported,
        [
            "2026-03-27",
            "2026-03-28",
            "2026-03-30",
            "2026-03-31",
            "2026-04-01"
        ]
    );
    let tenant = TenantId::parse(DEMO_TENANT).expect("tenant");
    let first = NaiveDate::from_ymd_opt(2026, 3, 26).expect("day");
    for day in first.iter_days().take(7) {
        let eligible = app
            .services
            .agreements
            .eligible_on(&tenant, "org:c", day)
            .await
            .expect("eligible_on");
        assert_eq!(eligible, reported.contains(&day.to_string()), "{day}");
    }
    assert!(
        !app.services
            .agreements
            .eligible_on(&tenant, "org:unknown", first)
            .await
            .expect("unknown")
    );
}
