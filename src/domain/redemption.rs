//! Spending points (DOMAIN.md §5): redemptions of coupons, the codes they issue, reservations of
//! points for a basket, and the delivery of codes and e-mails through the outbox.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use rand::Rng;
use rust_decimal::Decimal;

use crate::domain::coupons::Coupon;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedemptionStatus {
    /// Points spent; the code or e-mail is on its way through the outbox.
    Pending,
    Issued,
    /// Refused for good by ONe; refunded.
    Failed,
    /// Cancelled by an administrator; refunded.
    Cancelled,
}

names!(RedemptionStatus {
    Pending => "PENDING",
    Issued => "ISSUED",
    Failed => "FAILED",
    Cancelled => "CANCELLED",
});

impl RedemptionStatus {
    /// Still counts against the coupon's stock and the client's limit.
    pub fn holds_the_coupon(self) -> bool {
        matches!(self, Self::Pending | Self::Issued)
    }
}

/// A coupon bought with points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redemption {
    pub redemption_id: String,
    pub request_id: String,
    pub client_id: String,
    pub user_id: Option<String>,
    pub coupon_id: String,
    pub coupon_name: String,
    pub points: Decimal,
    pub status: RedemptionStatus,
    /// The code added to the ONe pool; `None` for a SPECIAL coupon.
    pub code: Option<String>,
    /// The coupon's redemption deadline: the last day the code can be used.
    pub valid_until: NaiveDate,
    pub use_event_id: Option<i64>,
    pub refund_event_id: Option<i64>,
    /// Why it failed or was cancelled.
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Why a client cannot redeem a coupon now. Stock and the client's limit are checked again under
/// the database's locks; these are the checks a read can make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedeemRefusal {
    #[error("coupon {0} is not offered on {1}")]
    NotOffered(String, NaiveDate),
    #[error("coupon {0} is restricted to segments the client is not in")]
    OutsideSegments(String),
    #[error("coupon {0} is out of stock")]
    OutOfStock(String),
    #[error("the client has redeemed coupon {0} as often as its limit allows")]
    ClientLimitReached(String),
    #[error("not enough available points: {available} available, {needed} needed")]
    InsufficientPoints { available: Decimal, needed: Decimal },
}

impl Coupon {
    /// Whether a client in `client_segments` may buy the coupon on `day`, on the coupon's own
    /// terms (the day, its status and its segments).
    ///
    /// # Errors
    /// The first reason it may not.
    pub fn redeemable_on(
        &self,
        day: NaiveDate,
        client_segments: &BTreeSet<String>,
    ) -> Result<(), RedeemRefusal> {
        if !self.offered_on(day) {
            return Err(RedeemRefusal::NotOffered(self.coupon_id.clone(), day));
        }
        let in_segment = self.spec.segment_ids.is_empty()
            || self
                .spec
                .segment_ids
                .iter()
                .any(|s| client_segments.contains(s));
        if !in_segment {
            return Err(RedeemRefusal::OutsideSegments(self.coupon_id.clone()));
        }
        Ok(())
    }
}

/// How issued codes look: a prefix, then `length` characters drawn uniformly from `alphabet` by
/// the operating system's CSPRNG. The default alphabet leaves out characters that are easy to
/// mistake for one another (0/O, 1/I/L).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeFormat {
    pub prefix: String,
    pub length: usize,
    pub alphabet: String,
}

/// Characters a person may read for another: never in an alphabet.
pub const LOOK_ALIKES: &str = "0O1IL";
pub const DEFAULT_ALPHABET: &str = "ABCDEFGHJKMNPQRSTUVWXYZ23456789";
/// Below this, a code can be guessed by trying (59 bits with the default alphabet and length).
pub const MIN_CODE_BITS: u32 = 50;

impl Default for CodeFormat {
    fn default() -> Self {
        Self {
            prefix: "LP-".into(),
            length: 12,
            alphabet: DEFAULT_ALPHABET.into(),
        }
    }
}

impl CodeFormat {
    /// Whole bits of entropy in one code: ⌊log2(symbols^length)⌋, counted in integers (128 at
    /// most; more is never needed).
    pub fn bits(&self) -> u32 {
        let symbols = u128::try_from(self.alphabet.chars().count()).unwrap_or(u128::MAX);
        let codes = u32::try_from(self.length)
            .ok()
            .and_then(|length| symbols.checked_pow(length))
            .unwrap_or(u128::MAX);
        codes.checked_ilog2().unwrap_or(0)
    }

    /// # Errors
    /// What is wrong with the format, in words.
    pub fn validate(&self) -> Result<(), String> {
        let chars: Vec<char> = self.alphabet.chars().collect();
        let distinct: BTreeSet<char> = chars.iter().copied().collect();
        if distinct.len() != chars.len() {
            return Err("the code alphabet repeats a character".into());
        }
        if let Some(c) = chars.iter().find(|c| LOOK_ALIKES.contains(**c)) {
            return Err(format!(
                "the code alphabet holds {c:?}, which reads like another character"
            ));
        }
        if let Some(c) = chars.iter().find(|c| !c.is_ascii_alphanumeric()) {
            return Err(format!(
                "the code alphabet holds {c:?}: only letters and digits"
            ));
        }
        if self.prefix.len() > 16 || !self.prefix.chars().all(|c| c.is_ascii_graphic()) {
            return Err("the code prefix must be at most 16 printable ASCII characters".into());
        }
        if self.length > 64 {
            return Err("codes are at most 64 characters long".into());
        }
        if self.bits() < MIN_CODE_BITS {
            return Err(format!(
                "codes of {} characters from {} symbols carry {} bits; at least {MIN_CODE_BITS} are needed",
                self.length,
                chars.len(),
                self.bits()
            ));
        }
        Ok(())
    }

    /// A new code. `rng` must be a CSPRNG (the callers pass the thread's OS-seeded one).
    pub fn generate(&self, rng: &mut impl Rng) -> String {
        let symbols: Vec<char> = self.alphabet.chars().collect();
        let mut code = self.prefix.clone();
        for _ in 0..self.length {
            code.push(symbols[rng.random_range(0..symbols.len())]);
        }
        code
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationStatus {
    Held,
    Committed,
    Released,
    /// Released by the expiry job.
    Expired,
}

names!(ReservationStatus {
    Held => "HELD",
    Committed => "COMMITTED",
    Released => "RELEASED",
    Expired => "EXPIRED",
});

/// Points held for a basket until its order is placed or the hold ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub reservation_id: String,
    pub request_id: String,
    pub client_id: String,
    pub user_id: Option<String>,
    pub basket_id: String,
    pub points: Decimal,
    pub status: ReservationStatus,
    pub expires_at: DateTime<Utc>,
    pub order_number: Option<String>,
    pub use_event_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub settled_at: Option<DateTime<Utc>>,
}

/// What the outbox delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// A code into the coupon's ONe pool.
    AddPoolCode,
    /// The SPECIAL coupon's alert e-mail.
    SendSpecialEmail,
}

names!(OutboxKind {
    AddPoolCode => "ADD_POOL_CODE",
    SendSpecialEmail => "SEND_SPECIAL_EMAIL",
});

/// One delivery, as the dispatcher needs it: everything is in the payload, so that a delivery
/// never reads a coupon that changed after the redemption.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Delivery {
    AddPoolCode {
        pool_id: String,
        code: String,
        valid_until: NaiveDate,
        /// The redemption id, shown in ONe.
        reference: String,
    },
    SendSpecialEmail {
        to: String,
        client_id: String,
        client_name: String,
        user_id: Option<String>,
        coupon_name: String,
        points: String,
        redeemed_at: DateTime<Utc>,
        company_logo_url: String,
        redemption_id: String,
    },
}

impl Delivery {
    pub fn kind(&self) -> OutboxKind {
        match self {
            Self::AddPoolCode { .. } => OutboxKind::AddPoolCode,
            Self::SendSpecialEmail { .. } => OutboxKind::SendSpecialEmail,
        }
    }
}

/// The alert e-mail of a SPECIAL coupon, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertEmail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl Delivery {
    /// The alert e-mail a SPECIAL redemption sends: who redeemed what, for how many points and
    /// when, under the tenant's company logo. `None` for a pool code.
    pub fn alert_email(&self) -> Option<AlertEmail> {
        let Self::SendSpecialEmail {
            to,
            client_id,
            client_name,
            user_id,
            coupon_name,
            points,
            redeemed_at,
            company_logo_url,
            redemption_id,
        } = self
        else {
            return None;
        };
        let when = redeemed_at.format("%Y-%m-%d %H:%M UTC").to_string();
        let user = user_id.as_deref().unwrap_or("-");
        let text = format!(
            "A client redeemed a special coupon.\n\n\
             Client: {client_name} ({client_id})\n\
             User: {user}\n\
             Coupon: {coupon_name}\n\
             Points: {points}\n\
             Time: {when}\n\
             Redemption: {redemption_id}\n"
        );
        let logo = if company_logo_url.is_empty() {
            String::new()
        } else {
            format!(
                "<p><img src=\"{}\" alt=\"logo\" style=\"max-height:64px\"></p>",
                escape_html(company_logo_url)
            )
        };
        let row = |name: &str, value: &str| {
            format!(
                "<tr><th align=\"left\">{name}</th><td>{}</td></tr>",
                escape_html(value)
            )
        };
        let html = format!(
            "<html><body>{logo}<p>A client redeemed a special coupon.</p><table>{}{}{}{}{}{}</table></body></html>",
            row("Client", &format!("{client_name} ({client_id})")),
            row("User", user),
            row("Coupon", coupon_name),
            row("Points", points),
            row("Time", &when),
            row("Redemption", redemption_id),
        );
        Some(AlertEmail {
            to: to.clone(),
            subject: format!("Loyalty: {client_name} redeemed \"{coupon_name}\""),
            text,
            html,
        })
    }
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// A leased outbox message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub message_id: i64,
    pub tenant: crate::domain::tenant::TenantId,
    /// The redemption it delivers.
    pub redemption_id: String,
    pub delivery: Delivery,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Worth trying again later (the receiver is down, a timeout).
    Transient(String),
    /// Refused for good (the pool is closed, the address refused).
    Rejected(String),
}

/// When to try a failed call again: exponential from `base`, capped at `max`, with up to
/// `jitter_percent` of the delay added at random so that replicas do not retry in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub jitter_percent: u32,
}

impl Backoff {
    /// The delay after `attempts` failed attempts (1 = the first failure); `permille` in
    /// 0..=1000 picks how much of the jitter is added. Integer arithmetic throughout.
    pub fn delay(&self, attempts: u32, permille: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(30);
        let exponential = self.base.saturating_mul(1u32 << doublings).min(self.max);
        let extra = u128::from(self.jitter_percent) * u128::from(permille.min(1000));
        let nanos = exponential.as_nanos() * (100_000 + extra) / 100_000;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// [`Backoff::delay`] with the jitter drawn from `rng`.
    pub fn jittered(&self, attempts: u32, rng: &mut impl Rng) -> Duration {
        self.delay(attempts, rng.random_range(0..=1000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_format_and_leave_out_look_alikes() {
        let format = CodeFormat::default();
        assert!(format.validate().is_ok(), "{:?}", format.validate());
        assert!(format.bits() >= 59);
        let mut rng = rand::rng();
        let codes: BTreeSet<String> = (0..2_000).map(|_| format.generate(&mut rng)).collect();
        assert_eq!(codes.len(), 2_000, "no repeats in 2,000 draws of 59 bits");
        for code in &codes {
            let body = code.strip_prefix("LP-").expect("prefix");
            assert_eq!(body.len(), 12);
            assert!(body.chars().all(|c| DEFAULT_ALPHABET.contains(c)));
        }
        // Every symbol turns up: the draw covers the alphabet.
        let used: BTreeSet<char> = codes.iter().flat_map(|c| c[3..].chars()).collect();
        assert_eq!(used.len(), DEFAULT_ALPHABET.len());
    }

    #[test]
    fn weak_or_confusing_formats_are_refused() {
        let with = |alphabet: &str, length: usize| CodeFormat {
            prefix: "X".into(),
            length,
            alphabet: alphabet.into(),
        };
        assert!(
            with("ABC0", 40)
                .validate()
                .expect_err("refused")
                .contains("'0'")
        );
        assert!(
            with("AAB", 40)
                .validate()
                .expect_err("refused")
                .contains("repeats")
        );
        assert!(
            with("AB-", 40)
                .validate()
                .expect_err("refused")
                .contains("'-'")
        );
        assert!(
            with(DEFAULT_ALPHABET, 6)
                .validate()
                .expect_err("refused")
                .contains("bits")
        );
        assert!(with(DEFAULT_ALPHABET, 11).validate().is_ok());
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_bounded_jitter() {
        let backoff = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_mins(1),
            jitter_percent: 20,
        };
        assert_eq!(backoff.delay(1, 0), Duration::from_secs(1));
        assert_eq!(backoff.delay(2, 0), Duration::from_secs(2));
        assert_eq!(backoff.delay(4, 0), Duration::from_secs(8));
        assert_eq!(backoff.delay(40, 0), Duration::from_mins(1));
        assert_eq!(backoff.delay(3, 1000), Duration::from_millis(4_800));
        assert_eq!(
            backoff.delay(3, 7000),
            Duration::from_millis(4_800),
            "clamped"
        );
    }

    #[test]
    fn deliveries_round_trip_through_their_stored_json() {
        let delivery = Delivery::AddPoolCode {
            pool_id: "pool-1".into(),
            code: "LP-ABC".into(),
            valid_until: NaiveDate::from_ymd_opt(2026, 12, 31).expect("day"),
            reference: "rdm_1".into(),
        };
        let json = serde_json::to_string(&delivery).expect("json");
        assert!(json.contains("\"kind\":\"ADD_POOL_CODE\""), "{json}");
        assert_eq!(
            serde_json::from_str::<Delivery>(&json).expect("back"),
            delivery
        );
        assert_eq!(delivery.kind(), OutboxKind::AddPoolCode);
    }

    #[test]
    fn the_alert_email_names_client_coupon_points_time_and_logo_escaped() {
        let delivery = Delivery::SendSpecialEmail {
            to: "rewards@shop.example".into(),
            client_id: "org:1".into(),
            client_name: "Smith & <Sons>".into(),
            user_id: Some("u1".into()),
            coupon_name: "Trip".into(),
            points: "250.00".into(),
            redeemed_at: DateTime::parse_from_rfc3339("2026-03-20T12:30:00Z")
                .expect("instant")
                .to_utc(),
            company_logo_url: "https://cdn.example/logo.png".into(),
            redemption_id: "rdm_1".into(),
        };
        let mail = delivery.alert_email().expect("an e-mail");
        assert_eq!(mail.to, "rewards@shop.example");
        for part in [
            "Smith & <Sons> (org:1)",
            "Trip",
            "250.00",
            "2026-03-20 12:30 UTC",
            "u1",
        ] {
            assert!(mail.text.contains(part), "{part} in {}", mail.text);
        }
        assert!(mail.html.contains("Smith &amp; &lt;Sons&gt;"));
        assert!(
            mail.html
                .contains("<img src=\"https://cdn.example/logo.png\"")
        );
        assert!(!mail.html.contains("<Sons>"));
        let code = Delivery::AddPoolCode {
            pool_id: "p".into(),
            code: "c".into(),
            valid_until: NaiveDate::from_ymd_opt(2026, 1, 1).expect("day"),
            reference: "r".into(),
        };
        assert!(code.alert_email().is_none());
    }

    #[test]
    fn only_live_redemptions_hold_the_coupon() {
        assert!(RedemptionStatus::Pending.holds_the_coupon());
        assert!(RedemptionStatus::Issued.holds_the_coupon());
        assert!(!RedemptionStatus::Failed.holds_the_coupon());
        assert!(!RedemptionStatus::Cancelled.holds_the_coupon());
        for s in ["PENDING", "ISSUED", "FAILED", "CANCELLED"] {
            assert_eq!(
                RedemptionStatus::parse(s).map(RedemptionStatus::as_str),
                Some(s)
            );
        }
        for s in ["HELD", "COMMITTED", "RELEASED", "EXPIRED"] {
            assert_eq!(
                ReservationStatus::parse(s).map(ReservationStatus::as_str),
                Some(s)
            );
        }
    }
}
