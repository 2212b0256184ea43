//! Billing periods: calendar months in a configurable timezone, with a grace
//! window before a month closes, and the rule that sends late usage to the next
//! open period as a flagged adjustment.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, LocalResult, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::error::LedgerError;

/// A calendar month, e.g. `2025-01`. Ordered chronologically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Period {
    year: i32,
    month: u32,
}

impl Period {
    /// A month; `month` is 1..=12.
    pub fn new(year: i32, month: u32) -> Result<Self, LedgerError> {
        if !(1..=12).contains(&month) || !(0..=9999).contains(&year) {
            return Err(LedgerError::InvalidPeriod(format!("{year}-{month}")));
        }
        Ok(Period { year, month })
    }

    pub fn year(self) -> i32 {
        self.year
    }

    pub fn month(self) -> u32 {
        self.month
    }

    /// The following month.
    pub fn next(self) -> Period {
        if self.month == 12 {
            Period {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Period {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// `yyyymm` as a number: big-endian encoding of it sorts chronologically, which
    /// is what makes `(client, period)` range scans work.
    pub fn key(self) -> u32 {
        // `new` keeps the year in 0..=9999, so the conversion cannot fail.
        u32::try_from(self.year).unwrap_or(0) * 100 + self.month
    }

    /// Inverse of [`Period::key`].
    pub fn from_key(key: u32) -> Result<Period, LedgerError> {
        let year =
            i32::try_from(key / 100).map_err(|_| LedgerError::InvalidPeriod(key.to_string()))?;
        Period::new(year, key % 100)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl FromStr for Period {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || LedgerError::InvalidPeriod(s.to_owned());
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        Period::new(year, month).map_err(|_| bad())
    }
}

impl From<Period> for String {
    fn from(p: Period) -> Self {
        p.to_string()
    }
}

impl TryFrom<String> for Period {
    type Error = LedgerError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// How timestamps map to periods and when a period closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calendar {
    /// Months are calendar months in this timezone.
    pub tz: Tz,
    /// A period closes this long after its last instant; usage that arrives later
    /// is booked into the next open period as an adjustment.
    pub grace: Duration,
}

impl Default for Calendar {
    fn default() -> Self {
        Calendar {
            tz: Tz::UTC,
            grace: Duration::hours(72),
        }
    }
}

impl Calendar {
    /// The month containing `ts` in this calendar's timezone.
    pub fn period_of(&self, ts: DateTime<Utc>) -> Period {
        let local = ts.with_timezone(&self.tz);
        Period {
            year: local.year(),
            month: local.month(),
        }
    }

    /// First instant of the period.
    pub fn start(&self, p: Period) -> DateTime<Utc> {
        local_midnight(self.tz, p.year, p.month)
    }

    /// First instant after the period (the start of the next).
    pub fn end(&self, p: Period) -> DateTime<Utc> {
        self.start(p.next())
    }

    /// Closed once the grace window after its end has passed.
    pub fn is_closed(&self, p: Period, now: DateTime<Utc>) -> bool {
        now >= self.end(p) + self.grace
    }

    /// The period usage at `ts` is booked into when it arrives at `now`: its own
    /// month while that is open, otherwise the earliest open month after it, flagged
    /// as a late adjustment (`true`).
    pub fn assign(&self, ts: DateTime<Utc>, now: DateTime<Utc>) -> (Period, bool) {
        let own = self.period_of(ts);
        let mut p = own;
        while self.is_closed(p, now) {
            p = p.next();
        }
        (p, p != own)
    }
}

/// Midnight on the first of a month in `tz`. Some zones have historically skipped
/// midnight at a DST change; then the month starts at the first instant that
/// exists that day.
fn local_midnight(tz: Tz, year: i32, month: u32) -> DateTime<Utc> {
    for hour in 0..24 {
        match tz.with_ymd_and_hms(year, month, 1, hour, 0, 0) {
            LocalResult::Single(t) => return t.with_timezone(&Utc),
            LocalResult::Ambiguous(a, _) => return a.with_timezone(&Utc),
            LocalResult::None => continue,
        }
    }
    // Unreachable for real zones (no zone skips a whole day at a month start), but
    // the UTC reading of the date is a sane answer rather than a panic.
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .earliest()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn periods_follow_the_configured_timezone() {
        let tokyo = Calendar {
            tz: chrono_tz::Asia::Tokyo,
            grace: Duration::zero(),
        };
        let utc_cal = Calendar::default();
        // 2025-01-31T20:00Z is already February 1st in Tokyo.
        let t = utc("2025-01-31T20:00:00Z");
        assert_eq!(utc_cal.period_of(t).to_string(), "2025-01");
        assert_eq!(tokyo.period_of(t).to_string(), "2025-02");
        assert_eq!(
            tokyo.start("2025-02".parse().unwrap()),
            utc("2025-01-31T15:00:00Z")
        );
        let ny = Calendar {
            tz: chrono_tz::America::New_York,
            grace: Duration::zero(),
        };
        // DST: March starts at UTC-5, April at UTC-4.
        assert_eq!(
            ny.start("2025-03".parse().unwrap()),
            utc("2025-03-01T05:00:00Z")
        );
        assert_eq!(
            ny.end("2025-03".parse().unwrap()),
            utc("2025-04-01T04:00:00Z")
        );
    }

    #[test]
    fn late_usage_goes_to_the_next_open_period_after_grace() {
        let cal = Calendar {
            tz: Tz::UTC,
            grace: Duration::hours(24),
        };
        let ts = utc("2025-01-31T23:59:00Z");
        let jan: Period = "2025-01".parse().unwrap();
        // Within grace: still January.
        assert_eq!(cal.assign(ts, utc("2025-02-01T23:00:00Z")), (jan, false));
        // After grace: February, flagged.
        assert_eq!(
            cal.assign(ts, utc("2025-02-02T00:00:00Z")),
            (jan.next(), true)
        );
        // Much later: the earliest open period.
        assert_eq!(
            cal.assign(ts, utc("2025-04-15T00:00:00Z")),
            ("2025-04".parse().unwrap(), true)
        );
        assert!(!cal.is_closed(jan, utc("2025-02-01T23:59:59Z")));
        assert!(cal.is_closed(jan, utc("2025-02-02T00:00:00Z")));
    }

    #[test]
    fn period_text_and_keys_round_trip_and_sort() {
        let dec: Period = "2024-12".parse().unwrap();
        assert_eq!(dec.next().to_string(), "2025-01");
        assert!(dec < dec.next());
        assert!(dec.key() < dec.next().key());
        assert_eq!(Period::from_key(dec.key()).unwrap(), dec);
        for bad in ["2025-13", "2025-0", "2025", "x-01", "2025-1a"] {
            assert!(bad.parse::<Period>().is_err(), "{bad}");
        }
    }
}
