//! The reward catalogue (DOMAIN.md §5): coupons as an administrator defines them, and the rules
//! their fields must keep.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;

use crate::domain::points::to_minor_units;
use crate::domain::validation::{FieldViolation, Invalid};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CouponType {
    /// A code in an ONe pool bound to a cart-discount campaign.
    CartDiscount,
    /// A code in an ONe pool bound to a gift-product campaign.
    GiftProduct,
    /// Fulfilled outside the system: an e-mail alert.
    Special,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CouponStatus {
    Active,
    Archived,
}

impl CouponType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CartDiscount => "CART_DISCOUNT",
            Self::GiftProduct => "GIFT_PRODUCT",
            Self::Special => "SPECIAL",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::CartDiscount, Self::GiftProduct, Self::Special]
            .into_iter()
            .find(|t| t.as_str() == text)
    }

    /// Delivered as a code into an ONe coupon pool.
    pub fn uses_pool(self) -> bool {
        matches!(self, Self::CartDiscount | Self::GiftProduct)
    }
}

impl CouponStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Archived => "ARCHIVED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Active, Self::Archived]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// Display details of the discount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discount {
    FixedAmount { amount: Decimal, currency: String },
    Percentage(Decimal),
}

/// The fields an administrator sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponSpec {
    pub coupon_type: CouponType,
    pub name: String,
    pub description: String,
    pub pool_id: Option<String>,
    pub email: Option<String>,
    pub point_value: Decimal,
    pub image_url: String,
    pub appearance_date: NaiveDate,
    pub expiration_date: NaiveDate,
    pub redemption_deadline: NaiveDate,
    pub segment_ids: Vec<String>,
    pub stock: Option<u32>,
    pub per_client_limit: Option<u32>,
    pub discount: Option<Discount>,
}

/// A coupon as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coupon {
    pub coupon_id: String,
    pub spec: CouponSpec,
    pub status: CouponStatus,
    pub redeemed_count: u32,
    pub revision: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Coupon {
    /// Offered on `day`: active and within appearance..=expiration.
    pub fn offered_on(&self, day: NaiveDate) -> bool {
        self.status == CouponStatus::Active
            && self.spec.appearance_date <= day
            && day <= self.spec.expiration_date
    }
}

/// A coupon as one client sees it on one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferView {
    /// The client's available points cover the point value.
    pub affordable: bool,
    /// `None`: unlimited.
    pub remaining_stock: Option<u32>,
    pub remaining_for_client: Option<u32>,
}

impl Coupon {
    /// Whether a redemption of the coupon can be planned knowing nothing of the client but its
    /// id: no segment restricts it (so the client's segments do not decide), and it is delivered
    /// as a pool code (only a SPECIAL coupon's e-mail names the client).
    pub fn plannable_without_client(&self) -> bool {
        self.spec.segment_ids.is_empty() && self.spec.coupon_type.uses_pool()
    }

    /// The coupon as offered to a client on `day`, or `None` when the client cannot have it:
    /// not on offer that day, restricted to segments the client is not in, out of stock, or the
    /// client's limit reached.
    pub fn offer_for(
        &self,
        day: NaiveDate,
        client_segments: &std::collections::BTreeSet<String>,
        available: Decimal,
        redeemed_by_client: u32,
    ) -> Option<OfferView> {
        let in_segment = self.spec.segment_ids.is_empty()
            || self
                .spec
                .segment_ids
                .iter()
                .any(|s| client_segments.contains(s));
        let remaining_stock = self
            .spec
            .stock
            .map(|s| s.saturating_sub(self.redeemed_count));
        let remaining_for_client = self
            .spec
            .per_client_limit
            .map(|l| l.saturating_sub(redeemed_by_client));
        let exhausted = remaining_stock == Some(0) || remaining_for_client == Some(0);
        (self.offered_on(day) && in_segment && !exhausted).then(|| OfferView {
            affordable: available >= self.spec.point_value,
            remaining_stock,
            remaining_for_client,
        })
    }
}

/// What the checks of a spec need to know beyond the spec.
#[derive(Debug, Clone, Copy)]
pub struct SpecContext {
    /// Today in the tenant's time zone.
    pub today: NaiveDate,
    /// The appearance day the coupon had before this change (`None` when creating): an unchanged
    /// day may lie in the past.
    pub previous_appearance: Option<NaiveDate>,
    /// The named pool exists in ONe.
    pub pool_known: bool,
    /// Redemptions made so far (the stock cannot go below them).
    pub redeemed: u32,
}

impl CouponSpec {
    /// Every rule the spec breaks, as field violations under `spec.`.
    pub fn violations(&self, ctx: SpecContext) -> Vec<FieldViolation> {
        let mut found = Vec::new();
        let mut bad =
            |name: &str, why: String| found.push(FieldViolation::new(format!("spec.{name}"), why));
        if self.name.trim().is_empty() || self.name.len() > 128 {
            bad("name", "must be 1 to 128 characters".into());
        }
        if self.description.len() > 2_000 {
            bad("description", "must be at most 2000 characters".into());
        }
        match (&self.pool_id, self.coupon_type.uses_pool()) {
            (None, true) => bad(
                "pool_id",
                format!("is required for a {} coupon", self.coupon_type.as_str()),
            ),
            (Some(pool), true) if !ctx.pool_known => {
                bad("pool_id", format!("pool {pool} does not exist in ONe"));
            }
            (Some(_), false) => bad("pool_id", "must be empty for a SPECIAL coupon".into()),
            _ => {}
        }
        match (&self.email, self.coupon_type) {
            (None, CouponType::Special) => bad("email", "is required for a SPECIAL coupon".into()),
            (Some(email), CouponType::Special) if !is_email(email) => {
                bad("email", format!("{email:?} is not an e-mail address"));
            }
            _ => {}
        }
        if self.point_value <= Decimal::ZERO {
            bad("point_value", "must be greater than 0".into());
        } else if let Err(e) = to_minor_units(self.point_value) {
            bad("point_value", e.to_string());
        }
        if !is_web_url(&self.image_url) {
            bad("image_url", "must be an http(s) URL".into());
        }
        let tomorrow = ctx.today.succ_opt().unwrap_or(ctx.today);
        if ctx.previous_appearance != Some(self.appearance_date) && self.appearance_date < tomorrow
        {
            bad(
                "appearance_date",
                format!("must be {tomorrow} or later (not earlier than one day after today)"),
            );
        }
        if self.expiration_date <= self.appearance_date {
            bad(
                "expiration_date",
                "must be after the appearance date".into(),
            );
        }
        if self.redemption_deadline < self.expiration_date {
            bad(
                "redemption_deadline",
                "must not be before the expiration date".into(),
            );
        }
        if self.stock == Some(0) || self.stock.is_some_and(|s| s < ctx.redeemed) {
            bad(
                "stock",
                format!(
                    "must be at least 1 and at least the {} redemptions made",
                    ctx.redeemed
                ),
            );
        }
        if self.per_client_limit == Some(0) {
            bad("per_client_limit", "must be at least 1".into());
        }
        if self
            .segment_ids
            .iter()
            .any(|s| s.trim().is_empty() || s.len() > 128)
        {
            bad(
                "segment_ids",
                "every segment id must be 1 to 128 characters".into(),
            );
        }
        found.extend(discount_violations(self.discount.as_ref()));
        found
    }

    /// # Errors
    /// The violations, when there are any.
    pub fn check(&self, ctx: SpecContext) -> Result<(), Invalid> {
        Invalid::check(self.violations(ctx))
    }
}

/// The display details' rules: a percentage in (0, 100], a positive amount in an ISO currency.
fn discount_violations(discount: Option<&Discount>) -> Vec<FieldViolation> {
    let mut found = Vec::new();
    let mut bad =
        |name: &str, why: &str| found.push(FieldViolation::new(format!("spec.{name}"), why));
    match discount {
        Some(Discount::Percentage(p)) if *p <= Decimal::ZERO || *p > Decimal::ONE_HUNDRED => {
            bad(
                "discount.percentage",
                "must be greater than 0 and at most 100",
            );
        }
        Some(Discount::FixedAmount { amount, currency }) => {
            if *amount <= Decimal::ZERO {
                bad("discount.fixed_amount.amount", "must be greater than 0");
            }
            if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
                bad(
                    "discount.fixed_amount.currency",
                    "must be an ISO 4217 code such as EUR",
                );
            }
        }
        _ => {}
    }
    found
}

fn is_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !text.chars().any(char::is_whitespace)
        && !domain.contains('@')
}

fn is_web_url(text: &str) -> bool {
    url::Url::parse(text).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        text.parse().expect("day")
    }

    fn spec() -> CouponSpec {
        CouponSpec {
            coupon_type: CouponType::CartDiscount,
            name: "10 EUR off".into(),
            description: String::new(),
            pool_id: Some("pool-1".into()),
            email: None,
            point_value: Decimal::from(500),
            image_url: "https://cdn.example.com/c.png".into(),
            appearance_date: day("2026-03-21"),
            expiration_date: day("2026-04-30"),
            redemption_deadline: day("2026-05-31"),
            segment_ids: vec![],
            stock: Some(100),
            per_client_limit: Some(2),
            discount: Some(Discount::FixedAmount {
                amount: Decimal::TEN,
                currency: "EUR".into(),
            }),
        }
    }

    fn creating() -> SpecContext {
        SpecContext {
            today: day("2026-03-20"),
            previous_appearance: None,
            pool_known: true,
            redeemed: 0,
        }
    }

    fn fields(spec: &CouponSpec, ctx: SpecContext) -> Vec<String> {
        spec.violations(ctx).into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn a_sound_coupon_passes_and_appearance_today_is_refused_at_creation() {
        assert!(spec().violations(creating()).is_empty());
        let today = CouponSpec {
            appearance_date: day("2026-03-20"),
            ..spec()
        };
        assert_eq!(fields(&today, creating()), ["spec.appearance_date"]);
        let unchanged = SpecContext {
            previous_appearance: Some(day("2026-03-20")),
            ..creating()
        };
        assert!(
            today.violations(unchanged).is_empty(),
            "an update may keep a past appearance day"
        );
    }

    #[test]
    fn an_offer_needs_the_day_the_segment_stock_and_the_clients_limit() {
        let coupon = Coupon {
            coupon_id: "c".into(),
            spec: CouponSpec {
                segment_ids: vec!["gold".into()],
                ..spec()
            },
            status: CouponStatus::Active,
            redeemed_count: 99,
            revision: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let gold: std::collections::BTreeSet<String> = ["gold".to_owned()].into_iter().collect();
        let offer = coupon
            .offer_for(day("2026-04-01"), &gold, Decimal::from(499), 1)
            .expect("offered");
        assert_eq!(
            offer,
            OfferView {
                affordable: false,
                remaining_stock: Some(1),
                remaining_for_client: Some(1)
            }
        );
        assert!(
            coupon
                .offer_for(day("2026-03-20"), &gold, Decimal::from(500), 0)
                .is_none(),
            "not yet on offer"
        );
        assert!(
            coupon
                .offer_for(
                    day("2026-04-01"),
                    &std::collections::BTreeSet::new(),
                    Decimal::from(500),
                    0
                )
                .is_none(),
            "segment"
        );
        assert!(
            coupon
                .offer_for(day("2026-04-01"), &gold, Decimal::from(500), 2)
                .is_none(),
            "client limit reached"
        );
        let sold_out = Coupon {
            redeemed_count: 100,
            ..coupon
        };
        assert!(
            sold_out
                .offer_for(day("2026-04-01"), &gold, Decimal::from(500), 0)
                .is_none(),
            "out of stock"
        );
    }

    #[test]
    fn the_dates_must_follow_each_other() {
        let bad = CouponSpec {
            expiration_date: day("2026-03-21"),
            redemption_deadline: day("2026-03-20"),
            ..spec()
        };
        assert_eq!(
            fields(&bad, creating()),
            ["spec.expiration_date", "spec.redemption_deadline"]
        );
    }

    #[test]
    fn only_a_pool_coupon_no_segment_restricts_is_planned_without_the_client() {
        let coupon = |spec: CouponSpec| Coupon {
            coupon_id: "c".into(),
            spec,
            status: CouponStatus::Active,
            redeemed_count: 0,
            revision: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        assert!(coupon(spec()).plannable_without_client());
        let gift = CouponSpec {
            coupon_type: CouponType::GiftProduct,
            ..spec()
        };
        assert!(coupon(gift).plannable_without_client());
        let gold = CouponSpec {
            segment_ids: vec!["gold".into()],
            ..spec()
        };
        assert!(!coupon(gold).plannable_without_client(), "segments decide");
        let special = CouponSpec {
            coupon_type: CouponType::Special,
            pool_id: None,
            email: Some("rewards@acme.example".into()),
            ..spec()
        };
        assert!(
            !coupon(special).plannable_without_client(),
            "its e-mail names the client"
        );
    }

    #[test]
    fn pool_coupons_need_a_known_pool_and_special_coupons_an_e_mail() {
        let unknown = SpecContext {
            pool_known: false,
            ..creating()
        };
        assert_eq!(fields(&spec(), unknown), ["spec.pool_id"]);
        let no_pool = CouponSpec {
            pool_id: None,
            ..spec()
        };
        assert_eq!(fields(&no_pool, creating()), ["spec.pool_id"]);
        let special = CouponSpec {
            coupon_type: CouponType::Special,
            pool_id: None,
            email: Some("not an address".into()),
            ..spec()
        };
        assert_eq!(fields(&special, creating()), ["spec.email"]);
        let fine = CouponSpec {
            email: Some("rewards@acme.example".into()),
            ..special
        };
        assert!(fine.violations(creating()).is_empty());
    }

    #[test]
    fn values_limits_and_display_details_are_checked() {
        let bad = CouponSpec {
            point_value: Decimal::ZERO,
            image_url: "ftp://x".into(),
            stock: Some(0),
            per_client_limit: Some(0),
            discount: Some(Discount::Percentage(Decimal::from(120))),
            ..spec()
        };
        assert_eq!(
            fields(&bad, creating()),
            [
                "spec.point_value",
                "spec.image_url",
                "spec.stock",
                "spec.per_client_limit",
                "spec.discount.percentage"
            ]
        );
        let below_redeemed = SpecContext {
            redeemed: 10,
            previous_appearance: Some(day("2026-03-21")),
            ..creating()
        };
        assert_eq!(
            fields(
                &CouponSpec {
                    stock: Some(5),
                    ..spec()
                },
                below_redeemed
            ),
            ["spec.stock"]
        );
    }
}
