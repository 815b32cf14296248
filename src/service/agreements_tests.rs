use super::*;
use crate::domain::clock::FixedClock;
use crate::domain::settings::TenantSettings;
use crate::persistence::{
    MockAgreementRepository, MockDirectoryRepository, MockIdempotencyRepository,
    MockSettingsRepository,
};

fn caller() -> Caller {
    Caller {
        tenant: TenantId::parse("acme").expect("tenant"),
        key_id: "k1".into(),
        roles: vec!["admin".into()],
        acting_for: None,
    }
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("instant")
        .to_utc()
}

struct Mocks {
    repo: MockAgreementRepository,
    directory: MockDirectoryRepository,
    prior: Option<IdempotencyRecord>,
}

fn mocks() -> Mocks {
    Mocks {
        repo: MockAgreementRepository::new(),
        directory: MockDirectoryRepository::new(),
        prior: None,
    }
}

fn service(m: Mocks) -> AgreementService {
    let mut settings = MockSettingsRepository::new();
    settings.expect_current().returning(|_| {
        Ok(TenantSettings {
            declaration_type_id: "loyalty".into(),
            ..TenantSettings::default()
        })
    });
    let mut requests = MockIdempotencyRepository::new();
    let prior = m.prior;
    requests
        .expect_find()
        .returning(move |_, _| Ok(prior.clone()));
    AgreementService::new(
        Arc::new(m.repo),
        Arc::new(m.directory),
        Arc::new(settings),
        Arc::new(requests),
        Arc::new(FixedClock::new(at("2026-03-01T12:00:00Z"))),
    )
}

fn consent(event_id: &str, user_id: &str) -> NewConsent {
    NewConsent {
        event_id: event_id.into(),
        user_id: user_id.into(),
        action: ConsentAction::Accept,
        occurred_at: at("2026-03-01T10:00:00Z"),
        declaration_type_id: String::new(),
        agreement_version: 1,
        source: String::new(),
        client_id: String::new(),
    }
}

fn command(events: Vec<NewConsent>) -> RecordConsents {
    RecordConsents {
        request_id: "r1".into(),
        request_hash: "h".into(),
        events,
    }
}

fn known_user() -> UserRecord {
    UserRecord {
        user_id: "u1".into(),
        client_id: "org:c".into(),
        active: true,
        deactivated_at: None,
        updated_at: at("2026-01-01T00:00:00Z"),
    }
}

#[tokio::test]
async fn an_event_of_an_unknown_user_is_not_found_and_nothing_is_written() {
    let mut m = mocks();
    m.directory.expect_user().returning(|_, _| Ok(None));
    m.repo.expect_record_consents().never();
    let err = service(m)
        .record_consents(&caller(), &command(vec![consent("e1", "ghost")]))
        .await
        .expect_err("unknown");
    assert!(matches!(err, AgreementError::NotFound(ref what) if what == "user ghost"));
}

#[tokio::test]
async fn events_get_the_users_client_and_the_configured_declaration_type() {
    let mut m = mocks();
    m.directory
        .expect_user()
        .returning(|_, _| Ok(Some(known_user())));
    m.repo
        .expect_record_consents()
        .withf(|_, events, record| {
            events[0].client_id == "org:c"
                && events[0].declaration_type_id == "loyalty"
                && events[0].source == "api"
                && record.operation == RECORD
        })
        .times(1)
        .returning(|_, _, _| Ok(vec![ConsentOutcome::Recorded]));
    let outcomes = service(m)
        .record_consents(&caller(), &command(vec![consent("e1", "u1")]))
        .await
        .expect("recorded");
    assert_eq!(outcomes, [ConsentOutcome::Recorded]);
}

#[tokio::test]
async fn a_retried_request_answers_with_the_first_outcomes_without_writing() {
    let mut m = mocks();
    m.prior = Some(IdempotencyRecord {
        request_id: "r1".into(),
        operation: RECORD.into(),
        request_hash: "h".into(),
        result_ref: "RN".into(),
    });
    m.repo.expect_record_consents().never();
    let outcomes = service(m)
        .record_consents(&caller(), &command(vec![consent("e1", "u1")]))
        .await
        .expect("replayed");
    assert_eq!(
        outcomes,
        [ConsentOutcome::Recorded, ConsentOutcome::NoEffect]
    );
}

#[tokio::test]
async fn bad_events_are_reported_field_by_field() {
    let mut m = mocks();
    m.repo.expect_record_consents().never();
    let mut other = consent("e1", "u1");
    other.agreement_version = 2;
    let mut bad = consent("", " ");
    bad.agreement_version = 0;
    let err = service(m)
        .record_consents(&caller(), &command(vec![consent("e1", "u1"), other, bad]))
        .await
        .expect_err("invalid");
    let AgreementError::Invalid(Invalid(found)) = err else {
        panic!("{err:?}")
    };
    let fields: Vec<&str> = found.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "events[1].event_id",
            "events[2].event_id",
            "events[2].user_id",
            "events[2].agreement_version"
        ]
    );
}

#[tokio::test]
async fn a_version_must_come_after_the_latest_in_number_and_time() {
    let mut m = mocks();
    m.repo.expect_versions().returning(|_, _| {
        Ok(vec![AgreementVersion {
            declaration_type_id: "loyalty".into(),
            version: 3,
            published_at: at("2026-02-01T00:00:00Z"),
            title: String::new(),
            content_url: String::new(),
        }])
    });
    m.repo.expect_publish_version().never();
    let command = PublishVersion {
        request_id: "p1".into(),
        request_hash: "h".into(),
        declaration_type_id: String::new(),
        version: 3,
        published_at: Some(at("2026-01-15T00:00:00Z")),
        title: "Terms".into(),
        content_url: String::new(),
    };
    let err = service(m)
        .publish_version(&caller(), &command)
        .await
        .expect_err("invalid");
    let AgreementError::Invalid(Invalid(found)) = err else {
        panic!("{err:?}")
    };
    let fields: Vec<&str> = found.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(fields, ["version.version", "version.published_at"]);
}

#[tokio::test]
async fn eligible_on_asks_about_the_end_of_the_local_day() {
    let mut m = mocks();
    // Warsaw is UTC+1 in March: the 1st ends at 23:00 UTC.
    m.repo
        .expect_holds_until()
        .withf(|_, client, probe| {
            probe.declaration_type_id == "loyalty"
                && client == "org:c"
                && probe.at == at("2026-03-01T23:00:00Z")
        })
        .times(1)
        .returning(|_, _, _| Ok(true));
    let day = NaiveDate::from_ymd_opt(2026, 3, 1).expect("day");
    assert!(
        service(m)
            .eligible_on(&caller().tenant, "org:c", day)
            .await
            .expect("answer")
    );
}
