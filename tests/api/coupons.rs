//! `CouponService` end to end: the administrator's fields and their rules, names unique per
//! tenant, revisions, archiving, filters and the ONe coupon pools. Today is 2026-03-20.

use one_loyalty::domain::tenant::TenantId;
use one_loyalty::persistence::coupons::CouponPoolRecord;
use one_loyalty::proto::loyalty::v1 as pb;
use pb::coupon_service_client::CouponServiceClient;

use crate::helpers::{
    ClockedApp, DEMO_TENANT, OTHER_KEY, OTHER_TENANT, request_as, violated_fields,
};
use crate::on_both_backends;

on_both_backends!(ClockedApp:
    a_coupon_is_created_read_updated_and_archived,
    an_appearance_today_and_every_other_broken_rule_are_named,
    coupon_names_are_unique_per_tenant,
    pool_coupons_need_an_active_one_pool_and_pools_are_listed,
    coupons_are_listed_by_status_type_and_day,
    creating_a_coupon_is_idempotent_by_request_id,
    a_client_is_offered_what_is_on_offer_in_its_segments_with_an_affordable_flag,
);

pub async fn pools(app: &ClockedApp) {
    let tenant = TenantId::parse(DEMO_TENANT).expect("tenant");
    for (id, active) in [("pool-spring", true), ("pool-old", false)] {
        let pool = CouponPoolRecord {
            pool_id: id.into(),
            name: format!("{id} codes"),
            campaign_id: format!("camp-{id}"),
            campaign_name: "Spring sale".into(),
            active,
        };
        app.services
            .coupon_repo
            .save_pool(&tenant, &pool)
            .await
            .expect("pool");
    }
}

pub fn spec(name: &str) -> pb::CouponSpec {
    pb::CouponSpec {
        r#type: pb::CouponType::CartDiscount as i32,
        name: name.into(),
        pool_id: "pool-spring".into(),
        point_value: "500".into(),
        image_url: "https://cdn.example.com/10eur.png".into(),
        appearance_date: "2026-03-21".into(),
        expiration_date: "2026-04-30".into(),
        redemption_deadline: "2026-05-31".into(),
        stock: Some(100),
        per_client_limit: Some(2),
        discount: Some(pb::Discount {
            value: Some(pb::discount::Value::FixedAmount(pb::FixedAmount {
                amount: "10".into(),
                currency: "EUR".into(),
            })),
        }),
        ..Default::default()
    }
}

pub fn special(name: &str) -> pb::CouponSpec {
    pb::CouponSpec {
        r#type: pb::CouponType::Special as i32,
        pool_id: String::new(),
        email: "rewards@acme.example".into(),
        discount: None,
        ..spec(name)
    }
}

fn client(app: &ClockedApp) -> CouponServiceClient<tonic::transport::Channel> {
    CouponServiceClient::new(app.channel.clone())
}

pub async fn create(
    app: &ClockedApp,
    request_id: &str,
    spec: pb::CouponSpec,
) -> Result<pb::Coupon, tonic::Status> {
    let request = pb::CreateCouponRequest {
        request_id: request_id.into(),
        spec: Some(spec),
    };
    client(app)
        .create_coupon(app.request(request))
        .await
        .map(|r| r.into_inner().coupon.expect("coupon"))
}

async fn a_coupon_is_created_read_updated_and_archived(app: &ClockedApp) {
    pools(app).await;
    let created = create(app, "c1", spec("10 EUR off")).await.expect("create");
    assert_eq!(
        (created.status, created.revision, created.redeemed_count),
        (pb::CouponStatus::Active as i32, 1, 0)
    );
    let read = client(app)
        .get_coupon(app.request(pb::GetCouponRequest {
            coupon_id: created.coupon_id.clone(),
        }))
        .await
        .expect("get")
        .into_inner()
        .coupon
        .expect("coupon");
    assert_eq!(read, created);
    let update =
        |request_id: &str, expected_revision: u32, point_value: &str| pb::UpdateCouponRequest {
            request_id: request_id.into(),
            coupon_id: created.coupon_id.clone(),
            spec: Some(pb::CouponSpec {
                point_value: point_value.into(),
                ..spec("10 EUR off")
            }),
            expected_revision,
        };
    let updated = client(app)
        .update_coupon(app.request(update("u1", 1, "450")))
        .await
        .expect("update")
        .into_inner()
        .coupon
        .expect("coupon");
    assert_eq!(
        (
            updated.revision,
            updated.spec.as_ref().map(|s| s.point_value.as_str())
        ),
        (2, Some("450"))
    );
    let status = client(app)
        .update_coupon(app.request(update("u2", 1, "400")))
        .await
        .expect_err("stale");
    assert_eq!(status.code(), tonic::Code::Aborted);
    let archived = client(app)
        .archive_coupon(app.request(pb::ArchiveCouponRequest {
            request_id: "a1".into(),
            coupon_id: created.coupon_id.clone(),
        }))
        .await
        .expect("archive")
        .into_inner()
        .coupon
        .expect("coupon");
    assert_eq!(
        (archived.status, archived.revision),
        (pb::CouponStatus::Archived as i32, 3)
    );
    let status = client(app)
        .get_coupon(app.request(pb::GetCouponRequest {
            coupon_id: "cpn_missing".into(),
        }))
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), tonic::Code::NotFound);
}

async fn an_appearance_today_and_every_other_broken_rule_are_named(app: &ClockedApp) {
    pools(app).await;
    let today = pb::CouponSpec {
        appearance_date: "2026-03-20".into(),
        ..spec("Today")
    };
    let status = create(app, "t1", today).await.expect_err("today");
    assert_eq!(violated_fields(&status), ["spec.appearance_date"]);
    create(app, "t2", spec("Tomorrow"))
        .await
        .expect("tomorrow is the earliest");
    let broken = pb::CouponSpec {
        name: String::new(),
        point_value: "0".into(),
        image_url: "not a url".into(),
        expiration_date: "2026-03-21".into(),
        redemption_deadline: "2026-03-20".into(),
        stock: Some(0),
        ..spec("x")
    };
    let status = create(app, "t3", broken).await.expect_err("broken");
    assert_eq!(
        violated_fields(&status),
        [
            "spec.expiration_date",
            "spec.image_url",
            "spec.name",
            "spec.point_value",
            "spec.redemption_deadline",
            "spec.stock"
        ]
    );
    let no_email = pb::CouponSpec {
        email: String::new(),
        ..special("Trip")
    };
    assert_eq!(
        violated_fields(&create(app, "t4", no_email).await.expect_err("email")),
        ["spec.email"]
    );
    let untyped = pb::CouponSpec {
        r#type: 0,
        ..spec("Untyped")
    };
    assert_eq!(
        violated_fields(&create(app, "t5", untyped).await.expect_err("type")),
        ["spec.type"]
    );
}

async fn coupon_names_are_unique_per_tenant(app: &ClockedApp) {
    create(app, "n1", special("Weekend in Tatras"))
        .await
        .expect("first");
    let status = create(app, "n2", special("Weekend in Tatras"))
        .await
        .expect_err("taken");
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    let theirs = pb::CreateCouponRequest {
        request_id: "n1".into(),
        spec: Some(special("Weekend in Tatras")),
    };
    client(app)
        .create_coupon(request_as(OTHER_TENANT, OTHER_KEY, theirs))
        .await
        .expect("another tenant may use the name");
}

async fn pool_coupons_need_an_active_one_pool_and_pools_are_listed(app: &ClockedApp) {
    pools(app).await;
    let unknown = pb::CouponSpec {
        pool_id: "pool-ghost".into(),
        ..spec("Ghost")
    };
    assert_eq!(
        violated_fields(&create(app, "p1", unknown).await.expect_err("unknown pool")),
        ["spec.pool_id"]
    );
    let inactive = pb::CouponSpec {
        pool_id: "pool-old".into(),
        ..spec("Old")
    };
    assert_eq!(
        violated_fields(
            &create(app, "p2", inactive)
                .await
                .expect_err("inactive pool")
        ),
        ["spec.pool_id"]
    );
    let listed = client(app)
        .list_coupon_pools(app.request(pb::ListCouponPoolsRequest {
            page_size: 1,
            page_token: String::new(),
        }))
        .await
        .expect("pools")
        .into_inner();
    assert_eq!(
        listed
            .pools
            .iter()
            .map(|p| p.pool_id.as_str())
            .collect::<Vec<_>>(),
        ["pool-old"]
    );
    let rest = client(app)
        .list_coupon_pools(app.request(pb::ListCouponPoolsRequest {
            page_size: 10,
            page_token: listed.next_page_token,
        }))
        .await
        .expect("pools")
        .into_inner();
    assert_eq!(
        rest.pools
            .iter()
            .map(|p| (p.pool_id.as_str(), p.active))
            .collect::<Vec<_>>(),
        [("pool-spring", true)]
    );
}

async fn coupons_are_listed_by_status_type_and_day(app: &ClockedApp) {
    pools(app).await;
    create(app, "l1", spec("Cart")).await.expect("cart");
    let later = pb::CouponSpec {
        appearance_date: "2026-05-01".into(),
        expiration_date: "2026-05-31".into(),
        redemption_deadline: "2026-06-30".into(),
        ..special("Later")
    };
    create(app, "l2", later).await.expect("later");
    let list = |request: pb::ListCouponsRequest| async move {
        client(app)
            .list_coupons(app.request(request))
            .await
            .expect("list")
            .into_inner()
            .coupons
    };
    let names = |coupons: Vec<pb::Coupon>| {
        coupons
            .into_iter()
            .filter_map(|c| c.spec.map(|s| s.name))
            .collect::<Vec<_>>()
    };
    assert_eq!(list(pb::ListCouponsRequest::default()).await.len(), 2);
    assert_eq!(
        names(
            list(pb::ListCouponsRequest {
                offered_on: "2026-04-10".into(),
                ..Default::default()
            })
            .await
        ),
        ["Cart"]
    );
    assert_eq!(
        names(
            list(pb::ListCouponsRequest {
                r#type: pb::CouponType::Special as i32,
                ..Default::default()
            })
            .await
        ),
        ["Later"]
    );
    assert!(
        list(pb::ListCouponsRequest {
            status: pb::CouponStatus::Archived as i32,
            ..Default::default()
        })
        .await
        .is_empty()
    );
}

async fn creating_a_coupon_is_idempotent_by_request_id(app: &ClockedApp) {
    let first = create(app, "same", special("Once")).await.expect("first");
    let again = create(app, "same", special("Once")).await.expect("retry");
    assert_eq!(again, first);
    let status = create(app, "same", special("Twice"))
        .await
        .expect_err("reused");
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    assert_eq!(
        client(app)
            .list_coupons(app.request(pb::ListCouponsRequest::default()))
            .await
            .expect("list")
            .into_inner()
            .coupons
            .len(),
        1
    );
}

/// org:buyer, in segment gold, with 600 available points.
async fn seed_buyer(app: &ClockedApp) {
    pools(app).await;
    let buyer = one_loyalty::domain::directory::ClientRecord {
        client_id: "org:buyer".into(),
        name: "Buyer".into(),
        status: "ACTIVE".into(),
        has_account: true,
        segment_ids: vec!["gold".into()],
        updated_at: chrono::Utc::now(),
    };
    let tenant = TenantId::parse(DEMO_TENANT).expect("tenant");
    app.services
        .directory
        .save_client(&tenant, &buyer)
        .await
        .expect("client");
    let grant = pb::AdjustPointsRequest {
        request_id: "grant".into(),
        client_id: "org:buyer".into(),
        points: "600".into(),
        reason_code: "WELCOME".into(),
        reason: "welcome points".into(),
        user_id: "admin".into(),
    };
    pb::ledger_service_client::LedgerServiceClient::new(app.channel.clone())
        .adjust_points(app.request(grant))
        .await
        .expect("points");
}

/// Five coupons: on offer to all (500 and 800 points), to gold only, to silver only, and later.
async fn seed_offers(app: &ClockedApp) {
    create(app, "o1", spec("Cart")).await.expect("cart");
    create(
        app,
        "o2",
        pb::CouponSpec {
            point_value: "800".into(),
            ..special("Trip")
        },
    )
    .await
    .expect("trip");
    create(
        app,
        "o3",
        pb::CouponSpec {
            point_value: "100".into(),
            segment_ids: vec!["gold".into()],
            ..special("Gold only")
        },
    )
    .await
    .expect("gold");
    create(
        app,
        "o4",
        pb::CouponSpec {
            segment_ids: vec!["silver".into()],
            ..special("Silver only")
        },
    )
    .await
    .expect("silver");
    let later = pb::CouponSpec {
        appearance_date: "2026-05-01".into(),
        expiration_date: "2026-05-31".into(),
        redemption_deadline: "2026-06-30".into(),
        ..special("Later")
    };
    create(app, "o5", later).await.expect("later");
}

async fn a_client_is_offered_what_is_on_offer_in_its_segments_with_an_affordable_flag(
    app: &ClockedApp,
) {
    seed_buyer(app).await;
    seed_offers(app).await;
    let offers = |affordable_only: bool| {
        let request = pb::ListOffersRequest {
            client_id: "org:buyer".into(),
            date: "2026-04-10".into(),
            affordable_only,
            ..Default::default()
        };
        async move {
            pb::redeem_service_client::RedeemServiceClient::new(app.channel.clone())
                .list_offers(app.request(request))
                .await
        }
    };
    let all = offers(false).await.expect("offers").into_inner();
    assert_eq!(all.available_points, "600.00");
    let mut seen: Vec<(String, bool)> = all
        .offers
        .iter()
        .map(|o| {
            (
                o.coupon
                    .as_ref()
                    .and_then(|c| c.spec.as_ref())
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
                o.affordable,
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("Cart".to_owned(), true),
            ("Gold only".to_owned(), true),
            ("Trip".to_owned(), false)
        ]
    );
    let cart = all
        .offers
        .iter()
        .find(|o| {
            o.coupon
                .as_ref()
                .and_then(|c| c.spec.as_ref())
                .is_some_and(|s| s.name == "Cart")
        })
        .expect("cart");
    assert_eq!(
        (cart.remaining_stock, cart.remaining_for_client),
        (Some(100), Some(2))
    );
    assert_eq!(
        offers(true)
            .await
            .expect("offers")
            .into_inner()
            .offers
            .len(),
        2
    );
    let request = pb::ListOffersRequest {
        client_id: "org:ghost".into(),
        ..Default::default()
    };
    let status = pb::redeem_service_client::RedeemServiceClient::new(app.channel.clone())
        .list_offers(app.request(request))
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), tonic::Code::NotFound);
}
