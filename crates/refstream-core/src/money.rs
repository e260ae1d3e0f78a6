//! Money: a `Decimal` amount with an ISO 4217 currency. Amounts are exact (never floats), carry
//! at most 4 decimal places and 18 significant digits (the Avro `decimal(18,4)` of the
//! contract), and two amounts only combine when their currencies match.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::validate::FieldError;

/// Digits after the decimal point the contract carries.
pub const SCALE: u32 = 4;
/// Total significant digits the contract carries.
pub const PRECISION: u32 = 18;

/// Active ISO 4217 alphabetic codes (funds and precious-metal codes excluded).
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BHD", "BIF", "BMD", "BND", "BOB",
    "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP",
    "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF",
    "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK",
    "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MYR", "MZN",
    "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF",
    "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND",
    "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS", "VES", "VND", "VUV", "WST", "XAF", "XCD", "XOF", "XPF", "YER",
    "ZAR", "ZMW", "ZWG",
];

/// An ISO 4217 alphabetic currency code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub const USD: Currency = Currency(*b"USD");

    /// Accepts an active ISO 4217 code, upper case, exactly as published.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        if ISO_4217.binary_search(&raw).is_err() {
            let shown: String = raw.chars().take(16).collect();
            return Err(FieldError::new("currency", format!("`{shown}` is not an ISO 4217 currency code")));
        }
        let b = raw.as_bytes();
        Ok(Self([b[0], b[1], b[2]]))
    }

    pub fn as_str(&self) -> &str {
        // The bytes came from the ASCII table above.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl TryFrom<String> for Currency {
    type Error = FieldError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An exact amount of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount: Decimal, currency: Currency) -> Self {
        Self { amount, currency }
    }

    /// A strictly positive amount that fits `decimal(18,4)`: what a deposit or reward must be.
    pub fn positive(field: &'static str, amount: Decimal, currency: Currency) -> Result<Self, FieldError> {
        check_amount(field, amount)?;
        if amount <= Decimal::ZERO {
            return Err(FieldError::new(field, format!("must be positive, got {amount}")));
        }
        Ok(Self { amount, currency })
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.amount.normalize();
        if shown.scale() < 2 {
            shown.rescale(2);
        }
        write!(f, "{shown} {}", self.currency)
    }
}

/// Checks that `amount` fits `decimal(18,4)` without rounding.
pub fn check_amount(field: &'static str, amount: Decimal) -> Result<(), FieldError> {
    let normalized = amount.normalize();
    if normalized.scale() > SCALE {
        return Err(FieldError::new(field, format!("{amount} has more than {SCALE} decimal places")));
    }
    let limit = Decimal::from_i128_with_scale(10_i128.pow(PRECISION - SCALE), 0);
    if normalized.abs() >= limit {
        return Err(FieldError::new(field, format!("{amount} exceeds {PRECISION} digits of precision")));
    }
    Ok(())
}

/// The unscaled integer of `amount` at the contract's scale (for example 10.5 → 105000).
pub fn to_unscaled(amount: Decimal) -> i128 {
    let mut a = amount;
    a.rescale(SCALE);
    a.mantissa()
}

/// The amount an unscaled integer at the contract's scale stands for.
pub fn from_unscaled(unscaled: i128) -> Option<Decimal> {
    Decimal::try_from_i128_with_scale(unscaled, SCALE).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn iso_table_is_sorted_for_binary_search() {
        assert!(ISO_4217.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn currency_codes() {
        assert_eq!(Currency::parse("USD").unwrap(), Currency::USD);
        assert!(Currency::parse("usd").is_err());
        assert!(Currency::parse("XYZ").is_err());
        assert!(Currency::parse("").is_err());
    }

    #[test]
    fn amounts() {
        assert!(Money::positive("amount", dec("20.00"), Currency::USD).is_ok());
        assert!(Money::positive("amount", dec("0"), Currency::USD).is_err());
        assert!(Money::positive("amount", dec("-1"), Currency::USD).is_err());
        assert!(Money::positive("amount", dec("1.00001"), Currency::USD).is_err());
        assert!(Money::positive("amount", dec("1.10000"), Currency::USD).is_ok());
        assert!(Money::positive("amount", dec("99999999999999.9999"), Currency::USD).is_ok());
        assert!(Money::positive("amount", dec("100000000000000"), Currency::USD).is_err());
    }

    #[test]
    fn display_shows_cents() {
        assert_eq!(Money::new(dec("10"), Currency::USD).to_string(), "10.00 USD");
        assert_eq!(Money::new(dec("10.1250"), Currency::USD).to_string(), "10.125 USD");
    }

    #[test]
    fn unscaled_round_trip() {
        assert_eq!(to_unscaled(dec("10.5")), 105_000);
        assert_eq!(from_unscaled(105_000).unwrap(), dec("10.5"));
        assert_eq!(to_unscaled(dec("-0.0001")), -1);
    }
}
