//! `RulesService` end to end: base points in bulk and over time, the multiplier rule life cycle,
//! segment rates.

use one_loyalty::proto::loyalty::v1 as pb;
use pb::rules_service_client::RulesServiceClient;
use tonic::transport::Channel;

use crate::helpers::{TestApp, violated_fields};
use crate::on_both_backends;

on_both_backends!(TestApp:
    ten_thousand_base_points_are_set_in_one_call_and_read_back,
    base_points_keep_their_history_and_a_day_reads_the_value_in_force,
    a_rule_goes_from_draft_to_published_to_archived_and_a_published_rule_is_never_edited,
    bad_rules_are_refused_field_by_field,
    rules_are_listed_by_status_target_and_day,
    segment_rates_are_effective_dated,
    rule_changes_are_idempotent_by_request_id,
);

fn client(app: &TestApp) -> RulesServiceClient<Channel> {
    RulesServiceClient::new(app.channel.clone())
}

async fn set_points(
    app: &TestApp,
    request_id: &str,
    from: &str,
    entries: &[(&str, &str)],
) -> Result<u32, tonic::Status> {
    let request = pb::SetBasePointsRequest {
        request_id: request_id.into(),
        effective_from: from.into(),
        entries: entries
            .iter()
            .map(|(p, points)| pb::BasePointsEntry {
                product_id: (*p).into(),
                points: (*points).into(),
                ..Default::default()
            })
            .collect(),
    };
    client(app)
        .set_base_points(app.request(request))
        .await
        .map(|r| r.into_inner().products_updated)
}

async fn list_points(
    app: &TestApp,
    request: pb::ListBasePointsRequest,
) -> pb::ListBasePointsResponse {
    client(app)
        .list_base_points(app.request(request))
        .await
        .expect("list")
        .into_inner()
}

fn spec(name: &str, factor: &str) -> pb::MultiplierRuleSpec {
    pb::MultiplierRuleSpec {
        name: name.into(),
        targets: vec![pb::RuleTarget {
            kind: pb::TargetKind::Category as i32,
            id: "C-electrical".into(),
        }],
        factor: factor.into(),
        valid_from: "2026-03-01".into(),
        valid_until: "2026-03-31".into(),
        ..Default::default()
    }
}

async fn create(
    app: &TestApp,
    request_id: &str,
    spec: pb::MultiplierRuleSpec,
) -> Result<pb::MultiplierRule, tonic::Status> {
    let request = pb::CreateMultiplierRuleRequest {
        request_id: request_id.into(),
        spec: Some(spec),
    };
    client(app)
        .create_multiplier_rule(app.request(request))
        .await
        .map(|r| r.into_inner().rule.expect("rule"))
}

async fn update(
    app: &TestApp,
    request_id: &str,
    rule_id: &str,
    spec: pb::MultiplierRuleSpec,
) -> Result<pb::MultiplierRule, tonic::Status> {
    let request = pb::UpdateMultiplierRuleRequest {
        request_id: request_id.into(),
        rule_id: rule_id.into(),
        spec: Some(spec),
    };
    client(app)
        .update_multiplier_rule(app.request(request))
        .await
        .map(|r| r.into_inner().rule.expect("rule"))
}

async fn publish(
    app: &TestApp,
    request_id: &str,
    rule_id: &str,
    version: u32,
) -> Result<pb::MultiplierRule, tonic::Status> {
    let request = pb::PublishMultiplierRuleRequest {
        request_id: request_id.into(),
        rule_id: rule_id.into(),
        version,
    };
    client(app)
        .publish_multiplier_rule(app.request(request))
        .await
        .map(|r| r.into_inner().rule.expect("rule"))
}

async fn get(app: &TestApp, rule_id: &str) -> pb::GetMultiplierRuleResponse {
    let request = pb::GetMultiplierRuleRequest {
        rule_id: rule_id.into(),
        version: 0,
    };
    client(app)
        .get_multiplier_rule(app.request(request))
        .await
        .expect("get")
        .into_inner()
}

fn statuses(response: &pb::GetMultiplierRuleResponse) -> Vec<(u32, i32)> {
    response
        .versions
        .iter()
        .map(|v| (v.version, v.status))
        .collect()
}

async fn ten_thousand_base_points_are_set_in_one_call_and_read_back(app: &TestApp) {
    let ids: Vec<String> = (0..10_000).map(|i| format!("P{i:05}")).collect();
    let entries: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "12.5")).collect();
    assert_eq!(
        set_points(app, "bulk-1", "2026-01-01", &entries)
            .await
            .expect("bulk"),
        10_000
    );
    let first = list_points(
        app,
        pb::ListBasePointsRequest {
            as_of: "2026-06-01".into(),
            page_size: 1000,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(first.entries.len(), 1000);
    assert_eq!(first.entries[0].product_id, "P00000");
    assert_eq!(first.entries[0].points, "12.5");
    let mut total = first.entries.len();
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let page = list_points(
            app,
            pb::ListBasePointsRequest {
                as_of: "2026-06-01".into(),
                page_size: 1000,
                page_token: token,
                ..Default::default()
            },
        )
        .await;
        total += page.entries.len();
        token = page.next_page_token;
    }
    assert_eq!(total, 10_000);
}

async fn base_points_keep_their_history_and_a_day_reads_the_value_in_force(app: &TestApp) {
    set_points(app, "b1", "2026-01-01", &[("P1", "10"), ("P2", "4")])
        .await
        .expect("first");
    set_points(app, "b2", "2026-03-01", &[("P1", "20")])
        .await
        .expect("second");
    let on = |day: &str| pb::ListBasePointsRequest {
        as_of: day.into(),
        product_ids: vec!["P1".into(), "P2".into()],
        ..Default::default()
    };
    let february = list_points(app, on("2026-02-15")).await;
    assert_eq!(
        february
            .entries
            .iter()
            .map(|e| e.points.as_str())
            .collect::<Vec<_>>(),
        ["10", "4"]
    );
    let march = list_points(app, on("2026-03-01")).await;
    assert_eq!(march.entries[0].points, "20");
    assert!(list_points(app, on("2025-12-31")).await.entries.is_empty());
    let history = list_points(
        app,
        pb::ListBasePointsRequest {
            product_ids: vec!["P1".into()],
            include_history: true,
            ..Default::default()
        },
    )
    .await;
    let rows: Vec<(&str, &str, &str)> = history
        .entries
        .iter()
        .map(|e| {
            (
                e.points.as_str(),
                e.effective_from.as_str(),
                e.effective_until.as_str(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [("10", "2026-01-01", "2026-03-01"), ("20", "2026-03-01", "")]
    );
    let status = set_points(app, "b3", "2026-04-01", &[("P1", "-1"), ("P1", "2")])
        .await
        .expect_err("invalid");
    assert_eq!(
        violated_fields(&status),
        ["entries[0].points", "entries[1].product_id"]
    );
}

async fn a_rule_goes_from_draft_to_published_to_archived_and_a_published_rule_is_never_edited(
    app: &TestApp,
) {
    let draft = create(app, "c1", spec("Spring", "2"))
        .await
        .expect("create");
    assert_eq!(
        (draft.version, draft.status),
        (1, pb::RuleStatus::Draft as i32)
    );
    let id = draft.rule_id.clone();
    let edited = update(app, "u1", &id, spec("Spring", "2.5"))
        .await
        .expect("edit draft");
    assert_eq!(
        (
            edited.version,
            edited.spec.as_ref().map(|s| s.factor.as_str())
        ),
        (1, Some("2.5")),
        "a draft is edited in place"
    );
    let published = publish(app, "p1", &id, 1).await.expect("publish");
    assert_eq!(published.status, pb::RuleStatus::Published as i32);
    assert!(published.published_at.is_some());
    let next = update(app, "u2", &id, spec("Spring", "3"))
        .await
        .expect("edit published");
    assert_eq!(
        (next.version, next.status),
        (2, pb::RuleStatus::Draft as i32),
        "editing a published rule makes a new version"
    );
    let v1 = get(app, &id).await;
    assert_eq!(
        statuses(&v1),
        [
            (1, pb::RuleStatus::Published as i32),
            (2, pb::RuleStatus::Draft as i32)
        ]
    );
    assert_eq!(
        v1.versions[0].spec.as_ref().map(|s| s.factor.as_str()),
        Some("2.5"),
        "the published version is unchanged"
    );
    let status = publish(app, "p-again", &id, 1)
        .await
        .expect_err("not a draft");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    publish(app, "p2", &id, 2).await.expect("publish v2");
    assert_eq!(
        statuses(&get(app, &id).await),
        [
            (1, pb::RuleStatus::Archived as i32),
            (2, pb::RuleStatus::Published as i32)
        ]
    );
    let archived = client(app)
        .archive_multiplier_rule(app.request(pb::ArchiveMultiplierRuleRequest {
            request_id: "a1".into(),
            rule_id: id.clone(),
        }))
        .await
        .expect("archive")
        .into_inner()
        .rule
        .expect("rule");
    assert_eq!(archived.status, pb::RuleStatus::Archived as i32);
    let status = update(app, "u3", &id, spec("Spring", "4"))
        .await
        .expect_err("archived");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let status = publish(app, "p3", "rule_missing", 1)
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), tonic::Code::NotFound);
}

async fn bad_rules_are_refused_field_by_field(app: &TestApp) {
    let mut bad = spec("", "0");
    bad.targets.push(pb::RuleTarget {
        kind: 0,
        id: "x".into(),
    });
    bad.valid_until = "2026-02-01".into();
    let status = create(app, "bad-1", bad).await.expect_err("invalid");
    assert_eq!(
        violated_fields(&status),
        [
            "spec.factor",
            "spec.name",
            "spec.targets[1].kind",
            "spec.valid_until"
        ]
    );
    let mut precise = spec("Too precise", "1.00001");
    precise.valid_from = "March".into();
    let status = create(app, "bad-2", precise).await.expect_err("invalid");
    assert_eq!(violated_fields(&status), ["spec.factor", "spec.valid_from"]);
}

async fn rules_are_listed_by_status_target_and_day(app: &TestApp) {
    let a = create(app, "c-a", spec("A", "2")).await.expect("a");
    publish(app, "p-a", &a.rule_id, 1).await.expect("publish a");
    let mut label = spec("B", "1.5");
    label.targets = vec![pb::RuleTarget {
        kind: pb::TargetKind::Label as i32,
        id: "L-eco".into(),
    }];
    label.valid_from = "2026-05-01".into();
    label.valid_until = String::new();
    create(app, "c-b", label).await.expect("b");
    let list = |request: pb::ListMultiplierRulesRequest| async move {
        client(app)
            .list_multiplier_rules(app.request(request))
            .await
            .expect("list")
            .into_inner()
            .rules
    };
    assert_eq!(
        list(pb::ListMultiplierRulesRequest::default()).await.len(),
        2
    );
    let published = list(pb::ListMultiplierRulesRequest {
        status: pb::RuleStatus::Published as i32,
        ..Default::default()
    })
    .await;
    assert_eq!(
        published
            .iter()
            .map(|r| r.rule_id.as_str())
            .collect::<Vec<_>>(),
        [a.rule_id.as_str()]
    );
    let by_label = list(pb::ListMultiplierRulesRequest {
        target: Some(pb::RuleTarget {
            kind: pb::TargetKind::Label as i32,
            id: "L-eco".into(),
        }),
        ..Default::default()
    })
    .await;
    assert_eq!(
        by_label
            .iter()
            .map(|r| r.spec.as_ref().map(|s| s.name.as_str()))
            .collect::<Vec<_>>(),
        [Some("B")]
    );
    let in_june = list(pb::ListMultiplierRulesRequest {
        active_on: "2026-06-01".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(in_june.len(), 1, "A ended in March");
    let paged = list(pb::ListMultiplierRulesRequest {
        page_size: 1,
        ..Default::default()
    })
    .await;
    assert_eq!(paged.len(), 1);
}

async fn segment_rates_are_effective_dated(app: &TestApp) {
    let set = |request_id: &str, segment: &str, rate: &str, from: &str| {
        let request = pb::SetSegmentRateRequest {
            request_id: request_id.into(),
            segment_id: segment.into(),
            rate: rate.into(),
            effective_from: from.into(),
        };
        async move { client(app).set_segment_rate(app.request(request)).await }
    };
    set("s1", "gold", "1.1", "2026-01-01").await.expect("gold");
    set("s2", "gold", "1.2", "2026-06-01")
        .await
        .expect("gold later");
    set("s3", "silver", "1.05", "2026-01-01")
        .await
        .expect("silver");
    let status = set("s4", "gold", "0", "2026-01-01")
        .await
        .expect_err("zero");
    assert_eq!(violated_fields(&status), ["rate"]);
    let list = |request: pb::ListSegmentRatesRequest| async move {
        client(app)
            .list_segment_rates(app.request(request))
            .await
            .expect("list")
            .into_inner()
            .rates
    };
    let march = list(pb::ListSegmentRatesRequest {
        as_of: "2026-03-01".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(
        march
            .iter()
            .map(|r| (r.segment_id.as_str(), r.rate.as_str()))
            .collect::<Vec<_>>(),
        [("gold", "1.1"), ("silver", "1.05")]
    );
    let gold = list(pb::ListSegmentRatesRequest {
        segment_id: "gold".into(),
        include_history: true,
        ..Default::default()
    })
    .await;
    assert_eq!(
        gold.iter()
            .map(|r| (r.rate.as_str(), r.effective_until.as_str()))
            .collect::<Vec<_>>(),
        [("1.1", "2026-06-01"), ("1.2", "")]
    );
}

async fn rule_changes_are_idempotent_by_request_id(app: &TestApp) {
    let first = create(app, "same", spec("Once", "2"))
        .await
        .expect("create");
    let again = create(app, "same", spec("Once", "2")).await.expect("retry");
    assert_eq!(
        again.rule_id, first.rule_id,
        "the retry returns the first rule"
    );
    let listed = client(app)
        .list_multiplier_rules(app.request(pb::ListMultiplierRulesRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .rules;
    assert_eq!(listed.len(), 1, "no second rule was created");
    let status = create(app, "same", spec("Other", "2"))
        .await
        .expect_err("reused");
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    publish(app, "pub", &first.rule_id, 1)
        .await
        .expect("publish");
    let replay = publish(app, "pub", &first.rule_id, 1)
        .await
        .expect("publish retry");
    assert_eq!(replay.status, pb::RuleStatus::Published as i32);
}
