//! Currencies and the one place where money is rounded.
//!
//! Amounts are exact [`Decimal`]s everywhere in the ledger. Rounding happens only
//! when a statement line is made, to the currency's minor units, half away from
//! zero; [`Currency::round`] is that single rounding rule.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::error::LedgerError;

/// An ISO 4217 currency the ledger can bill in, with its minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(into = "String", try_from = "String")]
pub enum Currency {
    #[default]
    Usd,
    Eur,
    Gbp,
    Chf,
    Cad,
    Aud,
    Jpy,
    Krw,
    Kwd,
    Bhd,
}

impl Currency {
    /// Every supported currency, for look-ups by code.
    pub const ALL: [Currency; 10] = [
        Currency::Usd,
        Currency::Eur,
        Currency::Gbp,
        Currency::Chf,
        Currency::Cad,
        Currency::Aud,
        Currency::Jpy,
        Currency::Krw,
        Currency::Kwd,
        Currency::Bhd,
    ];

    /// The ISO 4217 code, e.g. `"USD"`.
    pub fn code(self) -> &'static str {
        match self {
            Currency::Usd => "USD",
            Currency::Eur => "EUR",
            Currency::Gbp => "GBP",
            Currency::Chf => "CHF",
            Currency::Cad => "CAD",
            Currency::Aud => "AUD",
            Currency::Jpy => "JPY",
            Currency::Krw => "KRW",
            Currency::Kwd => "KWD",
            Currency::Bhd => "BHD",
        }
    }

    /// Digits after the decimal point in the currency's smallest unit.
    pub fn minor_units(self) -> u32 {
        match self {
            Currency::Jpy | Currency::Krw => 0,
            Currency::Kwd | Currency::Bhd => 3,
            _ => 2,
        }
    }

    /// Rounds an exact amount to a statement line amount: minor units, half away from zero.
    pub fn round(self, amount: Decimal) -> Decimal {
        let mut r = amount
            .round_dp_with_strategy(self.minor_units(), RoundingStrategy::MidpointAwayFromZero);
        // Keep the scale fixed so "1" prints as "1.00" in every export.
        r.rescale(self.minor_units());
        r
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::ALL
            .into_iter()
            .find(|c| c.code().eq_ignore_ascii_case(s))
            .ok_or_else(|| LedgerError::UnknownCurrency(s.to_owned()))
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> Self {
        c.code().to_owned()
    }
}

impl TryFrom<String> for Currency {
    type Error = LedgerError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn rounds_half_away_from_zero_to_minor_units() {
        let cases = [
            (Currency::Usd, "0.005", "0.01"),
            (Currency::Usd, "-0.005", "-0.01"),
            (Currency::Usd, "0.0049999", "0.00"),
            (Currency::Usd, "2.675", "2.68"),
            (Currency::Usd, "1", "1.00"),
            (Currency::Eur, "10.125", "10.13"),
            (Currency::Gbp, "-10.125", "-10.13"),
            (Currency::Jpy, "0.5", "1"),
            (Currency::Jpy, "-2.5", "-3"),
            (Currency::Jpy, "2.4999", "2"),
            (Currency::Kwd, "1.0005", "1.001"),
        ];
        for (cur, input, want) in cases {
            let got = cur.round(d(input));
            assert_eq!(got.to_string(), want, "{cur} {input}");
        }
    }

    #[test]
    fn parses_codes_case_insensitively_and_rejects_unknown() {
        assert_eq!(Currency::from_str("jpy").unwrap(), Currency::Jpy);
        assert_eq!(Currency::from_str("EUR").unwrap().minor_units(), 2);
        assert!(matches!(
            Currency::from_str("XXX"),
            Err(LedgerError::UnknownCurrency(_))
        ));
        let json = serde_json::to_string(&Currency::Gbp).unwrap();
        assert_eq!(json, "\"GBP\"");
        assert_eq!(
            serde_json::from_str::<Currency>(&json).unwrap(),
            Currency::Gbp
        );
    }
}
