//! Foreign exchange for qualification: a deposit in another currency than its campaign's is
//! converted with the rate in force at the deposit's time (the latest recorded rate whose
//! `effective_at` is not after it, direct or inverted), rounded to the campaign currency's minor
//! unit (JPY has none, KWD three) half away from zero. No rate in force: the deposit does not
//! qualify. Rates are data recorded ahead of the deposits they convert, so the decision is a
//! function of event times.

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};

use crate::money::{Currency, Money};

/// One rate: 1 `base` = `rate` `quote`, in force from `effective_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    pub base: Currency,
    pub quote: Currency,
    pub rate: Decimal,
    pub effective_at: DateTime<Utc>,
}

/// A converted amount, with the rate used and from when it was in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Converted {
    pub amount: Money,
    /// `None` when no conversion was needed.
    pub rate: Option<(Decimal, DateTime<Utc>)>,
}

/// Digits after the decimal point of a currency's minor unit (ISO 4217).
pub fn minor_units(c: Currency) -> u32 {
    const NONE: &[&str] = &["BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"];
    const THREE: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
    if NONE.contains(&c.as_str()) {
        0
    } else if THREE.contains(&c.as_str()) {
        3
    } else {
        2
    }
}

/// The recorded rates.
#[derive(Debug, Clone, Default)]
pub struct Rates(pub Vec<Rate>);

impl Rates {
    /// `amount` in `to` at `at`, or `None` when no rate is in force.
    pub fn convert(&self, amount: Money, to: Currency, at: DateTime<Utc>) -> Option<Converted> {
        if amount.currency == to {
            return Some(Converted { amount, rate: None });
        }
        let latest = |base: Currency, quote: Currency| {
            self.0.iter().filter(|r| r.base == base && r.quote == quote && r.effective_at <= at).max_by_key(|r| r.effective_at)
        };
        let (rate, since) = match (latest(amount.currency, to), latest(to, amount.currency)) {
            (Some(d), Some(i)) if i.effective_at > d.effective_at => (Decimal::ONE.checked_div(i.rate)?.round_dp(10), i.effective_at),
            (Some(d), _) => (d.rate, d.effective_at),
            (None, Some(i)) => (Decimal::ONE.checked_div(i.rate)?.round_dp(10), i.effective_at),
            (None, None) => return None,
        };
        let converted = amount.amount.checked_mul(rate)?.round_dp_with_strategy(minor_units(to), RoundingStrategy::MidpointAwayFromZero);
        Some(Converted { amount: Money::new(converted, to), rate: Some((rate, since)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn c(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    #[test]
    fn converts_with_the_rate_in_force_and_rounds_to_the_minor_unit() {
        let t0 = DateTime::from_timestamp(1_764_000_000, 0).unwrap();
        let rates = Rates(vec![
            Rate { base: c("EUR"), quote: c("USD"), rate: "1.08".parse().unwrap(), effective_at: t0 },
            Rate { base: c("EUR"), quote: c("USD"), rate: "1.10".parse().unwrap(), effective_at: t0 + Duration::days(1) },
            Rate { base: c("USD"), quote: c("JPY"), rate: "150.123".parse().unwrap(), effective_at: t0 },
        ]);
        let eur = Money::new("20.00".parse().unwrap(), c("EUR"));
        let at = |d: i64| t0 + Duration::hours(d);
        assert_eq!(rates.convert(eur, c("USD"), at(1)).unwrap().amount.amount, "21.60".parse::<Decimal>().unwrap());
        assert_eq!(rates.convert(eur, c("USD"), at(25)).unwrap().amount.amount, "22.00".parse::<Decimal>().unwrap());
        assert_eq!(rates.convert(eur, c("USD"), t0 - Duration::seconds(1)), None, "no rate in force yet");
        let usd = Money::new("10.01".parse().unwrap(), c("USD"));
        assert_eq!(rates.convert(usd, c("JPY"), at(1)).unwrap().amount.amount, Decimal::new(1503, 0), "JPY has no minor unit");
        let yen = Money::new(Decimal::new(3000, 0), c("JPY"));
        let back = rates.convert(yen, c("USD"), at(1)).unwrap();
        assert_eq!(back.amount.amount, "19.98".parse::<Decimal>().unwrap(), "the inverse rate");
        assert_eq!(rates.convert(usd, c("USD"), at(1)).unwrap().rate, None);
    }
}
