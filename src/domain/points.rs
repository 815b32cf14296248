//! Points: exact decimals, parsed from the wire, rounded once per line, and stored as integer
//! minor units at a fixed storage scale so that both databases keep them exactly.

use rust_decimal::{Decimal, RoundingStrategy};

/// Fractional digits kept in storage: every amount column is an `i64` of 1/10,000 units.
pub const STORAGE_SCALE: u32 = 4;

/// The most fractional digits a tenant's points scale may have.
pub const MAX_POINTS_SCALE: u32 = STORAGE_SCALE;

/// Why a decimal cannot be used as an amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("{0:?} is not a decimal number")]
    NotADecimal(String),
    #[error("{0} has more than {STORAGE_SCALE} fractional digits")]
    TooPrecise(Decimal),
    #[error("{0} is too large to store")]
    OutOfRange(Decimal),
}

/// Parses a decimal string from the wire ("12.50", "-3", "0.0001"). Exponents, spaces and
/// empty strings are refused.
///
/// # Errors
/// Not a plain decimal, or more than [`STORAGE_SCALE`] fractional digits.
pub fn parse_amount(text: &str) -> Result<Decimal, AmountError> {
    let plain = !text.is_empty()
        && text
            .chars()
            .enumerate()
            .all(|(i, c)| c.is_ascii_digit() || c == '.' || (i == 0 && (c == '-' || c == '+')));
    if !plain {
        return Err(AmountError::NotADecimal(text.to_owned()));
    }
    let value: Decimal = text
        .parse()
        .map_err(|_| AmountError::NotADecimal(text.to_owned()))?;
    to_minor_units(value)?;
    Ok(value.normalize())
}

/// The amount as integer minor units at [`STORAGE_SCALE`], refusing anything that would not
/// come back identical.
///
/// # Errors
/// More fractional digits than the storage scale, or too large for an `i64`.
pub fn to_minor_units(value: Decimal) -> Result<i64, AmountError> {
    if value.normalize().scale() > STORAGE_SCALE {
        return Err(AmountError::TooPrecise(value));
    }
    let scaled = value
        .checked_mul(Decimal::from(10_i64.pow(STORAGE_SCALE)))
        .ok_or(AmountError::OutOfRange(value))?;
    i64::try_from(scaled.normalize()).map_err(|_| AmountError::OutOfRange(value))
}

/// The exact decimal of stored minor units.
pub fn from_minor_units(units: i64) -> Decimal {
    Decimal::new(units, STORAGE_SCALE).normalize()
}

/// Commercial rounding to `scale` digits: half away from zero (2.345 → 2.35, -2.345 → -2.35).
pub fn round_points(value: Decimal, scale: u32) -> Decimal {
    value.round_dp_with_strategy(scale, RoundingStrategy::MidpointAwayFromZero)
}

/// Renders points for the wire with exactly `scale` fractional digits ("12.50" at scale 2).
pub fn format_points(value: Decimal, scale: u32) -> String {
    let mut shown = round_points(value, scale);
    shown.rescale(scale);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dec(text: &str) -> Decimal {
        text.parse().expect("decimal")
    }

    #[test]
    fn large_and_tiny_amounts_round_trip_through_minor_units() {
        for text in ["12345678901234.5678", "0.0001", "-0.0001", "0", "10.50"] {
            let value = parse_amount(text).expect("amount");
            let units = to_minor_units(value).expect("units");
            assert_eq!(from_minor_units(units), dec(text));
        }
        assert_eq!(
            to_minor_units(dec("12345678901234.5678")),
            Ok(123_456_789_012_345_678)
        );
    }

    #[test]
    fn amounts_with_five_decimals_or_exponents_are_refused() {
        assert_eq!(
            parse_amount("0.00001"),
            Err(AmountError::TooPrecise(dec("0.00001")))
        );
        for bad in ["", "1e3", " 1", "1,5", "abc", "--1", "1-"] {
            assert!(
                matches!(parse_amount(bad), Err(AmountError::NotADecimal(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_amount("99999999999999999999"),
            Err(AmountError::OutOfRange(_))
        ));
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(round_points(dec("2.345"), 2), dec("2.35"));
        assert_eq!(round_points(dec("-2.345"), 2), dec("-2.35"));
        assert_eq!(round_points(dec("2.344"), 2), dec("2.34"));
        assert_eq!(round_points(dec("0.5"), 0), dec("1"));
        assert_eq!(format_points(dec("12.5"), 2), "12.50");
        assert_eq!(format_points(dec("3"), 0), "3");
    }

    proptest! {
        #[test]
        fn every_storable_amount_round_trips(units in any::<i64>()) {
            let value = from_minor_units(units);
            prop_assert_eq!(to_minor_units(value), Ok(units));
            prop_assert_eq!(parse_amount(&value.to_string()), Ok(value));
        }

        #[test]
        fn rounding_moves_a_value_by_at_most_half_a_unit(units in -1_000_000_000_i64..1_000_000_000, scale in 0_u32..=4) {
            let value = from_minor_units(units);
            let rounded = round_points(value, scale);
            let half = Decimal::new(5, scale + 1);
            prop_assert!((rounded - value).abs() <= half);
            prop_assert!(rounded.scale() <= scale);
        }
    }
}
