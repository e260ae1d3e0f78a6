//! The Avro codec of the event contract. Writes Avro single-object encoding (`C3 01`, the
//! schema's 8-byte little-endian CRC-64-AVRO fingerprint, the body); reads that and the
//! Confluent framing (`00`, a 4-byte big-endian schema id, the body) when the id is
//! configured. Anything else — a short record, an unknown framing, an unknown fingerprint, a
//! record of another schema, a malformed body, trailing bytes, a field that fails
//! validation — is a [`DecodeError`] naming what is wrong, never a panic.

mod canonical;
mod fields;
mod records;
mod schemas;

use std::collections::HashMap;
use std::io::Cursor;

use apache_avro::types::Value;
use chrono::{DateTime, Utc};

pub use records::AvroRecord;
pub use schemas::{fingerprint, schema, EventKind};

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is truncated: {0} bytes is shorter than any framing")]
    Truncated(usize),
    #[error("unknown framing: first bytes {0:02x} {1:02x} are neither Avro single-object (c3 01) nor Confluent (00)")]
    UnknownFraming(u8, u8),
    #[error("unknown schema fingerprint {0}: not one of refstream's schemas")]
    UnknownFingerprint(String),
    #[error("unknown Confluent schema id {0}: not configured in avro.confluent_schema_ids")]
    UnknownSchemaId(u32),
    #[error("wrong schema: expected {expected}, found {found}")]
    WrongSchema { expected: &'static str, found: &'static str },
    #[error("malformed Avro body for {kind}: {detail}")]
    Malformed { kind: &'static str, detail: String },
    #[error("invalid {kind}: {detail}")]
    Invalid { kind: &'static str, detail: String },
}

impl DecodeError {
    /// A short stable label for metrics and the dead-letter table.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Truncated(_) => "truncated",
            Self::UnknownFraming(..) => "unknown_framing",
            Self::UnknownFingerprint(_) => "unknown_fingerprint",
            Self::UnknownSchemaId(_) => "unknown_schema_id",
            Self::WrongSchema { .. } => "wrong_schema",
            Self::Malformed { .. } => "malformed",
            Self::Invalid { .. } => "invalid",
        }
    }
}

/// Decodes records for one reader; holds the Confluent schema ids it was configured with.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    confluent_ids: HashMap<u32, EventKind>,
}

impl Decoder {
    pub fn new(confluent_ids: HashMap<u32, EventKind>) -> Self {
        Self { confluent_ids }
    }

    /// Reads the framing and returns the record's schema and the body.
    pub fn frame<'a>(&self, bytes: &'a [u8]) -> Result<(EventKind, &'a [u8]), DecodeError> {
        self.framed(bytes).map(|(kind, _, body)| (kind, body))
    }

    /// The framing: the record's schema, the reader from its writer's version, and the body.
    fn framed<'a>(&self, bytes: &'a [u8]) -> Result<(EventKind, &'static schemas::Parsed, &'a [u8]), DecodeError> {
        match bytes {
            [0xC3, 0x01, rest @ ..] => {
                let (fp, body) = rest.split_first_chunk::<8>().ok_or(DecodeError::Truncated(bytes.len()))?;
                let writer = EventKind::by_fingerprint(fp).ok_or_else(|| DecodeError::UnknownFingerprint(hex(fp)))?;
                Ok((writer.kind, writer, body))
            }
            [0x00, rest @ ..] => {
                let (id, body) = rest.split_first_chunk::<4>().ok_or(DecodeError::Truncated(bytes.len()))?;
                let id = u32::from_be_bytes(*id);
                let kind = *self.confluent_ids.get(&id).ok_or(DecodeError::UnknownSchemaId(id))?;
                Ok((kind, schemas::current(kind), body))
            }
            [a, b, ..] => Err(DecodeError::UnknownFraming(*a, *b)),
            _ => Err(DecodeError::Truncated(bytes.len())),
        }
    }

    /// Decodes and validates a record of type `T`, as of `now` (for the future-date check).
    pub fn decode<T: AvroRecord>(&self, bytes: &[u8], now: DateTime<Utc>) -> Result<T, DecodeError> {
        let (kind, reader, body) = self.framed(bytes)?;
        if kind != T::KIND {
            return Err(DecodeError::WrongSchema { expected: T::KIND.name(), found: kind.name() });
        }
        let value = read_body(kind, reader, body)?;
        T::from_value(value, now).map_err(|e| DecodeError::Invalid { kind: kind.name(), detail: e.to_string() })
    }
}

fn read_body(kind: EventKind, writer: &schemas::Parsed, body: &[u8]) -> Result<Value, DecodeError> {
    let mut cursor = Cursor::new(body);
    let value = writer.read(&mut cursor).map_err(|e| DecodeError::Malformed { kind: kind.name(), detail: e.to_string() })?;
    let read = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
    if read != body.len() {
        return Err(DecodeError::Malformed { kind: kind.name(), detail: format!("{} trailing bytes after the record", body.len() - read) });
    }
    Ok(value)
}

/// The `event_id` of any contract record in single-object encoding, without validating the
/// rest (auditing tools read whole topics with it).
pub fn event_id_of(bytes: &[u8]) -> Option<uuid::Uuid> {
    let (kind, reader, body) = Decoder::default().framed(bytes).ok()?;
    match read_body(kind, reader, body).ok()? {
        Value::Record(fields) => fields.into_iter().find(|(n, _)| n == "event_id").and_then(|(_, v)| match v {
            Value::Uuid(u) => Some(u),
            Value::String(s) => uuid::Uuid::parse_str(&s).ok(),
            _ => None,
        }),
        _ => None,
    }
}

/// Encodes a record in Avro single-object encoding.
pub fn encode<T: AvroRecord>(record: &T) -> Vec<u8> {
    let body = schemas::writer(T::KIND)
        .write_value_to_vec(record.to_value())
        // The value is built from the same schema by `to_value`: failure is a programming error
        // that every round-trip test would catch.
        .unwrap_or_else(|e| panic!("{} does not match its own schema: {e}", T::KIND.name()));
    let mut out = Vec::with_capacity(10 + body.len());
    out.extend_from_slice(&[0xC3, 0x01]);
    out.extend_from_slice(&fingerprint(T::KIND));
    out.extend_from_slice(&body);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
