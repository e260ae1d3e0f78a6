//! Typed access to the fields of a decoded Avro record. Every accessor names the field in its
//! error, so a dead letter says exactly what was wrong.

use apache_avro::types::Value;
use chrono::{DateTime, Utc};
use refstream_core::money::from_unscaled;
use refstream_core::validate::FieldError;
use rust_decimal::Decimal;
use uuid::Uuid;

/// The fields of one record, by name.
pub struct Fields(Vec<(String, Value)>);

impl Fields {
    pub fn of(value: Value) -> Result<Self, FieldError> {
        match value {
            Value::Record(fields) => Ok(Self(fields)),
            other => Err(FieldError::new("record", format!("expected a record, found {other:?}"))),
        }
    }

    fn take(&mut self, name: &'static str) -> Result<Value, FieldError> {
        let pos = self.0.iter().position(|(n, _)| n == name).ok_or_else(|| FieldError::new(name, "is missing"))?;
        Ok(std::mem::replace(&mut self.0[pos].1, Value::Null))
    }

    pub fn string(&mut self, name: &'static str) -> Result<String, FieldError> {
        match self.take(name)? {
            Value::String(s) => Ok(s),
            other => Err(unexpected(name, "a string", &other)),
        }
    }

    pub fn opt_string(&mut self, name: &'static str) -> Result<Option<String>, FieldError> {
        match unwrap_union(self.take(name)?) {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Err(unexpected(name, "a string or null", &other)),
        }
    }

    pub fn uuid(&mut self, name: &'static str) -> Result<Uuid, FieldError> {
        match self.take(name)? {
            Value::Uuid(u) => Ok(u),
            Value::String(s) => Uuid::parse_str(&s).map_err(|e| FieldError::new(name, format!("is not a UUID: {e}"))),
            other => Err(unexpected(name, "a uuid", &other)),
        }
    }

    pub fn timestamp(&mut self, name: &'static str) -> Result<DateTime<Utc>, FieldError> {
        match self.take(name)? {
            Value::TimestampMillis(ms) | Value::Long(ms) => {
                DateTime::from_timestamp_millis(ms).ok_or_else(|| FieldError::new(name, format!("{ms} ms is out of range")))
            }
            other => Err(unexpected(name, "a timestamp-millis", &other)),
        }
    }

    pub fn enum_symbol(&mut self, name: &'static str) -> Result<String, FieldError> {
        match self.take(name)? {
            Value::Enum(_, symbol) => Ok(symbol),
            other => Err(unexpected(name, "an enum symbol", &other)),
        }
    }

    pub fn boolean(&mut self, name: &'static str) -> Result<bool, FieldError> {
        match self.take(name)? {
            Value::Boolean(b) => Ok(b),
            other => Err(unexpected(name, "a boolean", &other)),
        }
    }

    pub fn int(&mut self, name: &'static str) -> Result<i32, FieldError> {
        match self.take(name)? {
            Value::Int(i) => Ok(i),
            other => Err(unexpected(name, "an int", &other)),
        }
    }

    pub fn strings(&mut self, name: &'static str) -> Result<Vec<String>, FieldError> {
        match self.take(name)? {
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(unexpected(name, "an array of strings", &other)),
                })
                .collect(),
            other => Err(unexpected(name, "an array", &other)),
        }
    }

    pub fn opt_int(&mut self, name: &'static str) -> Result<Option<i32>, FieldError> {
        match unwrap_union(self.take(name)?) {
            Value::Null => Ok(None),
            Value::Int(i) => Ok(Some(i)),
            other => Err(unexpected(name, "an int or null", &other)),
        }
    }

    /// An optional `decimal(18,4)` amount.
    pub fn opt_decimal(&mut self, name: &'static str) -> Result<Option<Decimal>, FieldError> {
        match unwrap_union(self.take(name)?) {
            Value::Null => Ok(None),
            value => decimal_of(name, value).map(Some),
        }
    }

    /// A `decimal(18,4)` amount. Rejects values that need more than 18 digits.
    pub fn decimal(&mut self, name: &'static str) -> Result<Decimal, FieldError> {
        let value = self.take(name)?;
        decimal_of(name, value)
    }
}

fn decimal_of(name: &'static str, value: Value) -> Result<Decimal, FieldError> {
    let bytes: Vec<u8> = match value {
        Value::Decimal(d) => Vec::<u8>::try_from(d).map_err(|e| FieldError::new(name, e.to_string()))?,
        Value::Bytes(b) => b,
        other => return Err(unexpected(name, "a decimal", &other)),
    };
    let unscaled = unscaled_from_be(&bytes).ok_or_else(|| FieldError::new(name, "does not fit decimal(18,4)"))?;
    let amount = from_unscaled(unscaled).ok_or_else(|| FieldError::new(name, "does not fit decimal(18,4)"))?;
    refstream_core::money::check_amount(name, amount)?;
    Ok(amount)
}

fn unwrap_union(value: Value) -> Value {
    match value {
        Value::Union(_, inner) => *inner,
        other => other,
    }
}

fn unexpected(name: &'static str, wanted: &str, found: &Value) -> FieldError {
    let mut shown = format!("{found:?}");
    shown.truncate(80);
    FieldError::new(name, format!("expected {wanted}, found {shown}"))
}

/// Big-endian two's complement to an integer; `None` when it needs more than 16 bytes.
fn unscaled_from_be(bytes: &[u8]) -> Option<i128> {
    if bytes.is_empty() {
        return Some(0);
    }
    if bytes.len() > 16 {
        return None;
    }
    let fill = if bytes[0] & 0x80 != 0 { 0xFF } else { 0x00 };
    let mut buf = [fill; 16];
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    Some(i128::from_be_bytes(buf))
}

/// An amount as Avro `decimal(18,4)` bytes: the shortest big-endian two's complement.
pub fn decimal_value(amount: Decimal) -> Value {
    let unscaled = refstream_core::money::to_unscaled(amount);
    let full = unscaled.to_be_bytes();
    let fill = if unscaled < 0 { 0xFF } else { 0x00 };
    let mut start = 0;
    while start < 15 && full[start] == fill && (full[start + 1] & 0x80) == (fill & 0x80) {
        start += 1;
    }
    Value::Decimal(apache_avro::Decimal::from(&full[start..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twos_complement_round_trip() {
        for v in [0_i128, 1, -1, 127, 128, -128, -129, 100_000, -100_000, 999_999_999_999_999_999] {
            let Value::Decimal(d) = decimal_value(from_unscaled(v).unwrap()) else { panic!() };
            let bytes = Vec::<u8>::try_from(d).unwrap();
            assert_eq!(unscaled_from_be(&bytes), Some(v), "{v}");
        }
    }
}
