use super::*;
use chrono::{Duration, NaiveDateTime, TimeZone};
use proptest::prelude::*;

const TZ: Tz = chrono_tz::Europe::Warsaw;

fn local(text: &str) -> DateTime<Utc> {
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").expect("local time");
    TZ.from_local_datetime(&naive)
        .single()
        .expect("unambiguous")
        .with_timezone(&Utc)
}

fn day(text: &str) -> NaiveDate {
    text.parse().expect("day")
}

fn event(
    id: &str,
    user: &str,
    action: ConsentAction,
    at: DateTime<Utc>,
    version: u32,
) -> ConsentEvent {
    ConsentEvent {
        event_id: id.into(),
        user_id: user.into(),
        client_id: "org:c".into(),
        action,
        occurred_at: at,
        declaration_type_id: "loyalty".into(),
        agreement_version: version,
        source: "test".into(),
        recorded_at: at,
    }
}

fn accept(id: &str, user: &str, at: &str, version: u32) -> ConsentEvent {
    event(id, user, ConsentAction::Accept, local(at), version)
}

fn withdraw(id: &str, user: &str, at: &str) -> ConsentEvent {
    event(id, user, ConsentAction::Withdraw, local(at), 1)
}

fn user(id: &str) -> UserFacts {
    UserFacts {
        user_id: id.into(),
        client_id: "org:c".into(),
        deactivated_at: None,
    }
}

fn org() -> ClientFacts {
    ClientFacts {
        client_id: "org:c".into(),
        has_account: true,
    }
}

fn version(number: u32, at: &str) -> AgreementVersion {
    AgreementVersion {
        declaration_type_id: "loyalty".into(),
        version: number,
        published_at: local(at),
        title: String::new(),
        content_url: String::new(),
    }
}

fn days_of(
    users: &[(UserFacts, Vec<ConsentEvent>)],
    versions: &[AgreementVersion],
    first: &str,
    last: &str,
) -> Vec<NaiveDate> {
    eligible_days(
        &client_eligibility(&org(), users, versions),
        TZ,
        day(first),
        day(last),
    )
}

#[test]
fn agreed_today_not_tomorrow_agreed_again_the_day_after_gives_days_one_and_three() {
    let events = vec![
        accept("e1", "u", "2026-03-01 10:00", 1),
        withdraw("e2", "u", "2026-03-02 10:00"),
        accept("e3", "u", "2026-03-03 10:00", 1),
    ];
    let found = days_of(&[(user("u"), events)], &[], "2026-03-01", "2026-03-04");
    assert_eq!(
        found,
        [day("2026-03-01"), day("2026-03-03"), day("2026-03-04")]
    );
}

#[test]
fn accepting_and_withdrawing_within_one_day_does_not_count() {
    let events = vec![
        accept("e1", "u", "2026-03-01 08:00", 1),
        withdraw("e2", "u", "2026-03-01 17:00"),
    ];
    assert!(days_of(&[(user("u"), events)], &[], "2026-02-28", "2026-03-02").is_empty());
}

#[test]
fn two_users_with_overlapping_consents_cover_the_union() {
    let alice = vec![
        accept("a1", "alice", "2026-03-01 09:00", 1),
        withdraw("a2", "alice", "2026-03-03 09:00"),
    ];
    let bob = vec![
        accept("b1", "bob", "2026-03-02 09:00", 1),
        withdraw("b2", "bob", "2026-03-05 09:00"),
    ];
    let found = days_of(
        &[(user("alice"), alice), (user("bob"), bob)],
        &[],
        "2026-02-28",
        "2026-03-06",
    );
    assert_eq!(
        found,
        [
            day("2026-03-01"),
            day("2026-03-02"),
            day("2026-03-03"),
            day("2026-03-04")
        ]
    );
}

#[test]
fn a_version_published_mid_day_counts_only_for_acceptances_of_it_before_the_day_ends() {
    let versions = [
        version(1, "2026-01-01 00:00"),
        version(2, "2026-03-10 12:00"),
    ];
    let old_only = vec![accept("e1", "u", "2026-03-01 10:00", 1)];
    let found = days_of(
        &[(user("u"), old_only)],
        &versions,
        "2026-03-09",
        "2026-03-11",
    );
    assert_eq!(
        found,
        [day("2026-03-09")],
        "the old version stops counting at the publication"
    );

    let renewed = vec![
        accept("e1", "u", "2026-03-01 10:00", 1),
        accept("e2", "u", "2026-03-10 18:00", 2),
    ];
    let found = days_of(
        &[(user("u"), renewed)],
        &versions,
        "2026-03-09",
        "2026-03-11",
    );
    assert_eq!(
        found,
        [day("2026-03-09"), day("2026-03-10"), day("2026-03-11")]
    );

    let late = vec![
        accept("e1", "u", "2026-03-01 10:00", 1),
        accept("e2", "u", "2026-03-11 00:30", 2),
    ];
    let found = days_of(&[(user("u"), late)], &versions, "2026-03-09", "2026-03-11");
    assert_eq!(found, [day("2026-03-09"), day("2026-03-11")]);
}

#[test]
fn an_acceptance_at_23_30_counts_for_that_day_and_one_at_00_30_does_not_count_for_the_day_before() {
    let evening = vec![accept("e1", "u", "2026-03-01 23:30", 1)];
    assert_eq!(
        days_of(&[(user("u"), evening)], &[], "2026-03-01", "2026-03-01"),
        [day("2026-03-01")]
    );
    let after_midnight = vec![accept("e1", "u", "2026-03-02 00:30", 1)];
    assert!(
        days_of(
            &[(user("u"), after_midnight)],
            &[],
            "2026-03-01",
            "2026-03-01"
        )
        .is_empty()
    );
}

#[test]
fn individuals_and_clients_without_an_account_are_never_eligible() {
    let events = vec![accept("e1", "u", "2026-03-01 10:00", 1)];
    let users = [(user("u"), events)];
    for client in [
        ClientFacts {
            client_id: "ind:p".into(),
            has_account: true,
        },
        ClientFacts {
            client_id: "org:c".into(),
            has_account: false,
        },
    ] {
        assert!(client_eligibility(&client, &users, &[]).is_empty());
    }
}

#[test]
fn a_deactivated_users_consent_stops_counting_at_the_deactivation() {
    let events = vec![accept("e1", "u", "2026-03-01 10:00", 1)];
    let deactivated = UserFacts {
        deactivated_at: Some(local("2026-03-03 15:00")),
        ..user("u")
    };
    let found = days_of(&[(deactivated, events)], &[], "2026-03-01", "2026-03-05");
    assert_eq!(found, [day("2026-03-01"), day("2026-03-02")]);
}

#[test]
fn a_withdrawal_without_an_acceptance_changes_nothing() {
    let events = vec![withdraw("e1", "u", "2026-03-01 10:00")];
    assert!(acceptances(&user("u"), &events).is_empty());
    assert!(!held_before(&user("u"), &events, local("2026-03-01 10:00")));
    let events = vec![
        accept("e0", "u", "2026-02-01 10:00", 1),
        withdraw("e1", "u", "2026-03-01 10:00"),
    ];
    assert!(held_before(&user("u"), &events, local("2026-03-01 10:00")));
}

#[test]
fn a_users_state_says_since_when_it_holds() {
    let versions = [
        version(1, "2026-01-01 00:00"),
        version(2, "2026-03-10 12:00"),
    ];
    let events = vec![accept("e1", "u", "2026-03-01 10:00", 1)];
    let before = user_consent_at(&user("u"), &events, &versions, local("2026-03-05 00:00"));
    assert_eq!(
        before,
        UserConsentState {
            accepted: true,
            accepted_version: 1,
            current_version: 1,
            since: Some(local("2026-03-01 10:00"))
        }
    );
    let after = user_consent_at(&user("u"), &events, &versions, local("2026-03-11 00:00"));
    assert_eq!(
        after,
        UserConsentState {
            accepted: false,
            accepted_version: 1,
            current_version: 2,
            since: Some(local("2026-03-10 12:00"))
        }
    );
    let never = user_consent_at(&user("u"), &[], &versions, local("2026-03-11 00:00"));
    assert_eq!(
        (never.accepted, never.accepted_version, never.since),
        (false, 0, None)
    );
}

#[test]
fn the_current_version_is_the_latest_published() {
    let versions = [
        version(1, "2026-01-01 00:00"),
        version(2, "2026-03-10 12:00"),
    ];
    assert_eq!(current_version(&versions, local("2025-12-31 00:00")), 0);
    assert_eq!(current_version(&versions, local("2026-03-10 11:59")), 1);
    assert_eq!(current_version(&versions, local("2026-03-10 12:00")), 2);
}

fn arb_events() -> impl Strategy<Value = Vec<ConsentEvent>> {
    proptest::collection::vec(
        (0_i64..(20 * 24 * 60), any::<bool>(), 1_u32..4, 0_usize..3),
        0..25,
    )
    .prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (minute, is_accept, version, user))| {
                let at = local("2026-03-20 00:00") + Duration::minutes(minute);
                let action = if is_accept {
                    ConsentAction::Accept
                } else {
                    ConsentAction::Withdraw
                };
                event(
                    &format!("e{i:03}"),
                    ["u0", "u1", "u2"][user],
                    action,
                    at,
                    version,
                )
            })
            .collect()
    })
}

fn by_user(events: &[ConsentEvent]) -> Vec<(UserFacts, Vec<ConsentEvent>)> {
    ["u0", "u1", "u2"]
        .iter()
        .map(|id| {
            (
                user(id),
                events
                    .iter()
                    .filter(|e| e.user_id == *id)
                    .cloned()
                    .collect(),
            )
        })
        .collect()
}

proptest! {
    #[test]
    fn eligibility_does_not_depend_on_the_order_events_arrive_in(
        events in arb_events(),
        seed in any::<u64>(),
    ) {
        let versions = [version(2, "2026-03-25 12:00"), version(3, "2026-04-02 06:00")];
        let mut shuffled = events.clone();
        // A deterministic shuffle from the seed.
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let j = usize::try_from(state % (i as u64 + 1)).unwrap_or(0);
            shuffled.swap(i, j);
        }
        prop_assert_eq!(
            client_eligibility(&org(), &by_user(&events), &versions),
            client_eligibility(&org(), &by_user(&shuffled), &versions)
        );
    }

    #[test]
    fn a_client_is_eligible_exactly_when_some_user_holds_a_current_acceptance(
        events in arb_events(),
        probe in 0_i64..(25 * 24 * 60),
    ) {
        let versions = [version(2, "2026-03-25 12:00"), version(3, "2026-04-02 06:00")];
        let users = by_user(&events);
        let eligibility = client_eligibility(&org(), &users, &versions);
        let at = local("2026-03-20 00:00") + Duration::minutes(probe);
        let current = current_version(&versions, at);
        let expected = users.iter().any(|(u, evs)| {
            acceptances(u, evs).iter().any(|a| a.span.contains(at) && a.version >= current)
        });
        prop_assert_eq!(eligibility.iter().any(|i| i.contains(at)), expected);
    }

    #[test]
    fn a_day_counts_exactly_when_the_client_is_eligible_just_before_it_ends(
        events in arb_events(),
        offset in 0_i64..25,
    ) {
        let eligibility = client_eligibility(&org(), &by_user(&events), &[]);
        let d = day("2026-03-20") + Duration::days(offset);
        let last_moment = end_of_day(TZ, d) - Duration::microseconds(1);
        prop_assert_eq!(eligible_on(&eligibility, TZ, d), eligibility.iter().any(|i| i.contains(last_moment)));
    }
}
