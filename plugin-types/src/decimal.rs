//! The exact decimal encodings used for money across the WIT boundary.
//!
//! WIT has no decimal type, and floats would lose cents. Contract 0.2 sends
//! `rust_decimal`'s own parts ([`Parts`]: a 96-bit mantissa and a scale).
//! Contract 0.1, and JSON everywhere, use text with a strict grammar: an optional `-`, 1 to 28 digits, optionally a
//! `.` and 1 to 28 more digits, at most 28 significant digits in all. Parsing
//! is strict on purpose: an exponent, a `+`, whitespace or `NaN` from a
//! plugin is a bug to surface, not something to guess at.

use rust_decimal::Decimal;

/// The longest text accepted: sign, 28 digits, point, 28 digits.
const MAX_TEXT_LEN: usize = 58;

/// Why a text is not an exact decimal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// The text is empty.
    #[error("empty decimal")]
    Empty,
    /// The text is longer than any valid decimal.
    #[error("decimal text is {0} characters long (at most {MAX_TEXT_LEN})")]
    TooLong(usize),
    /// The text breaks the grammar.
    #[error("`{0}` is not a plain decimal (expected e.g. `12.50` or `-0.001`)")]
    Syntax(String),
    /// The value has more significant digits than `rust_decimal` holds.
    #[error("`{0}` has more than 28 significant digits")]
    Precision(String),
    /// A binary decimal's scale is beyond what `rust_decimal` holds.
    #[error("scale {0} is above 28")]
    Scale(u8),
}

/// A decimal as contract 0.2 carries it: `(-1)^negative × mantissa ×
/// 10^-scale`, with `mantissa = mantissa_high × 2^64 + mantissa_low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// The low 64 bits of the mantissa.
    pub mantissa_low: u64,
    /// The high 32 bits of the mantissa.
    pub mantissa_high: u32,
    /// Digits after the decimal point, 0 to 28.
    pub scale: u8,
    /// Whether the amount is below zero.
    pub negative: bool,
}

/// Splits a `Decimal` into its wire parts (exact, and it keeps the scale).
pub fn to_parts(value: &Decimal) -> Parts {
    let mantissa = value.mantissa().unsigned_abs();
    Parts {
        // The two truncations pick the halves of a 96-bit value.
        mantissa_low: mantissa as u64,
        mantissa_high: (mantissa >> 64) as u32,
        // A `Decimal`'s scale is at most 28.
        scale: u8::try_from(value.scale()).unwrap_or(u8::MAX),
        negative: value.is_sign_negative(),
    }
}

/// Rebuilds a `Decimal` from wire parts, refusing a scale above 28.
pub fn from_parts(parts: Parts) -> Result<Decimal, DecimalError> {
    if u32::from(parts.scale) > Decimal::MAX_SCALE {
        return Err(DecimalError::Scale(parts.scale));
    }
    Ok(Decimal::from_parts(
        parts.mantissa_low as u32,
        (parts.mantissa_low >> 32) as u32,
        parts.mantissa_high,
        parts.negative,
        u32::from(parts.scale),
    ))
}

/// Parses the wire text into a `Decimal`, refusing anything outside the grammar.
pub fn parse(text: &str) -> Result<Decimal, DecimalError> {
    if text.is_empty() {
        return Err(DecimalError::Empty);
    }
    if text.len() > MAX_TEXT_LEN {
        return Err(DecimalError::TooLong(text.len()));
    }
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (int_part, frac_part) = match unsigned.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (unsigned, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let frac_ok = frac_part.is_none_or(all_digits);
    if !all_digits(int_part) || !frac_ok {
        return Err(DecimalError::Syntax(text.to_owned()));
    }
    Decimal::from_str_exact(text).map_err(|_| DecimalError::Precision(text.to_owned()))
}

/// Formats a `Decimal` as wire text. Never uses an exponent.
///
/// The same text as `Decimal`'s `Display` (sign, digits, the scale's trailing
/// zeros kept), built directly from the mantissa: the host formats every
/// amount of every request summary and offer it hands a plugin, and
/// `Display` goes through the formatting machinery.
pub fn format(value: &Decimal) -> String {
    let digits = value.mantissa().unsigned_abs().to_string();
    let scale = value.scale() as usize;
    let mut out = String::with_capacity(digits.len() + scale + 3);
    if value.is_sign_negative() {
        out.push('-');
    }
    if scale == 0 {
        out.push_str(&digits);
    } else if digits.len() <= scale {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', scale - digits.len()));
        out.push_str(&digits);
    } else {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// Parses a decimal the way clients and configs write it: wire grammar, plus a
/// leading `+` tolerated. Used for human-edited files only, never for plugin
/// output.
pub fn parse_lenient(text: &str) -> Result<Decimal, DecimalError> {
    let trimmed = text.trim();
    parse(trimmed.strip_prefix('+').unwrap_or(trimmed))
}

/// Serde support: decimals as JSON strings only, never JSON numbers (a JSON
/// number goes through `f64` in most tools and may already be wrong).
pub mod exact {
    use super::{format, parse};
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as a JSON string.
    pub fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(value))
    }

    /// Deserializes from a JSON string in the wire grammar.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde support for `Option<Decimal>` as an optional JSON string.
pub mod exact_opt {
    use super::{format, parse};
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes `None` as null and `Some` as a JSON string.
    pub fn serialize<S: Serializer>(value: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_str(&format(v)),
            None => s.serialize_none(),
        }
    }

    /// Deserializes null or a JSON string in the wire grammar.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        let text = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        text.map(|t| parse(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Serde support for maps of name to decimal, as a JSON object of strings.
pub mod exact_map {
    use super::{format, parse};
    use rust_decimal::Decimal;
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::collections::BTreeMap;

    /// Serializes as a JSON object whose values are strings.
    pub fn serialize<S: Serializer>(
        value: &BTreeMap<String, Decimal>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(value.len()))?;
        for (k, v) in value {
            map.serialize_entry(k, &format(v))?;
        }
        map.end()
    }

    /// Deserializes a JSON object whose values are wire-grammar strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Decimal>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                let parsed = parse(&v).map_err(serde::de::Error::custom)?;
                Ok((k, parsed))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every decimal survives its parts both ways, scale included.
        #[test]
        fn parts_round_trip(
            lo in any::<u32>(), mid in any::<u32>(), hi in any::<u32>(),
            negative in any::<bool>(), scale in 0u32..=28,
        ) {
            let d = Decimal::from_parts(lo, mid, hi, negative, scale);
            let back = from_parts(to_parts(&d)).unwrap();
            prop_assert_eq!(back, d);
            prop_assert_eq!(back.scale(), d.scale());
            prop_assert_eq!(format(&back), format(&d));
        }

        #[test]
        fn format_matches_display(lo: u32, mid: u32, hi: u32, negative: bool, scale in 0u32..=28) {
            let d = Decimal::from_parts(lo, mid, hi, negative, scale);
            prop_assert_eq!(format(&d), d.to_string());
        }

        #[test]
        fn format_matches_display_for_small_amounts(m in -10_000_000i64..10_000_000, scale in 0u32..=12) {
            let d = Decimal::new(m, scale);
            prop_assert_eq!(format(&d), d.to_string());
        }
    }

    #[test]
    fn format_keeps_sign_and_scale_at_the_edges() {
        for d in [
            Decimal::ZERO,
            Decimal::from_parts(0, 0, 0, true, 3),
            Decimal::MAX,
            Decimal::MIN,
            Decimal::new(5, 28),
            Decimal::new(-1250, 2),
            Decimal::new(u64::MAX as i64, 0),
        ] {
            assert_eq!(format(&d), d.to_string(), "{d:?}");
        }
    }

    #[test]
    fn accepts_plain_decimals() {
        for (text, expect) in [
            ("0", Decimal::ZERO),
            ("12.50", Decimal::new(1250, 2)),
            ("-0.001", Decimal::new(-1, 3)),
            ("0007", Decimal::new(7, 0)),
        ] {
            assert_eq!(parse(text), Ok(expect), "{text}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for text in [
            "", " 1", "1 ", "+1", "1e5", "1E5", "NaN", "inf", ".5", "5.", "1.2.3", "--1", "1,000",
            "0x10", "١",
        ] {
            assert!(parse(text).is_err(), "{text:?} should be refused");
        }
        assert!(matches!(
            parse("123456789012345678901234567890"),
            Err(DecimalError::Precision(_))
        ));
        assert!(matches!(
            parse(&"1".repeat(80)),
            Err(DecimalError::TooLong(80))
        ));
    }

    #[test]
    fn json_numbers_are_refused() {
        #[derive(serde::Deserialize, Debug)]
        struct Amount {
            #[serde(with = "exact")]
            #[allow(dead_code)]
            value: Decimal,
        }
        assert!(serde_json::from_str::<Amount>(r#"{"value": 0.1}"#).is_err());
        let ok: Amount = serde_json::from_str(r#"{"value": "0.1"}"#).unwrap();
        assert_eq!(ok.value, Decimal::new(1, 1));
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(mantissa in any::<i64>(), scale in 0u32..=18) {
            let value = Decimal::new(mantissa, scale);
            prop_assert_eq!(parse(&format(&value)), Ok(value));
        }
    }
}
