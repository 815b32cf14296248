//! Plain types and rules: points arithmetic, tenant settings, ledger invariants, the clock.
//! Nothing here knows about gRPC or the database.

/// `as_str` and `parse` between an enum's variants and their stored names.
macro_rules! names {
    ($ty:ty { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($name => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}

pub mod access;
pub mod calendar;
pub mod clock;
pub mod consent;
pub mod coupons;
pub mod directory;
pub mod documents;
pub mod engine;
pub mod idempotency;
pub mod intervals;
pub mod ledger;
pub mod points;
pub mod redemption;
pub mod rule_spec;
pub mod rules;
pub mod settings;
pub mod sync;
pub mod tenant;
pub mod validation;
