//! The contract's schemas, embedded from `schemas/*.avsc` at build time and parsed once, with
//! the earlier versions of evolved schemas (`schemas/history/`): a record written with an
//! earlier version is found by its fingerprint and resolved to the current schema (new fields
//! take their defaults), so upgrading never stops old records on a topic from decoding.

use std::sync::OnceLock;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::RecordField;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

/// The record types of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    UserRegistered,
    DepositCompleted,
    DepositReversed,
    ReferralAttributed,
    ReferralScored,
    RewardGranted,
    RewardReversed,
    ReviewDecided,
    ReferralClicked,
    UserVerified,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        Self::UserRegistered,
        Self::DepositCompleted,
        Self::DepositReversed,
        Self::ReferralAttributed,
        Self::ReferralScored,
        Self::RewardGranted,
        Self::RewardReversed,
        Self::ReviewDecided,
        Self::ReferralClicked,
        Self::UserVerified,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::UserRegistered => "UserRegistered",
            Self::DepositCompleted => "DepositCompleted",
            Self::DepositReversed => "DepositReversed",
            Self::ReferralAttributed => "ReferralAttributed",
            Self::ReferralScored => "ReferralScored",
            Self::RewardGranted => "RewardGranted",
            Self::RewardReversed => "RewardReversed",
            Self::ReviewDecided => "ReviewDecided",
            Self::ReferralClicked => "ReferralClicked",
            Self::UserVerified => "UserVerified",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    fn source(self) -> &'static str {
        match self {
            Self::UserRegistered => include_str!("../../../../schemas/UserRegistered.avsc"),
            Self::DepositCompleted => include_str!("../../../../schemas/DepositCompleted.avsc"),
            Self::DepositReversed => include_str!("../../../../schemas/DepositReversed.avsc"),
            Self::ReferralAttributed => include_str!("../../../../schemas/ReferralAttributed.avsc"),
            Self::ReferralScored => include_str!("../../../../schemas/ReferralScored.avsc"),
            Self::RewardGranted => include_str!("../../../../schemas/RewardGranted.avsc"),
            Self::RewardReversed => include_str!("../../../../schemas/RewardReversed.avsc"),
            Self::ReviewDecided => include_str!("../../../../schemas/ReviewDecided.avsc"),
            Self::ReferralClicked => include_str!("../../../../schemas/ReferralClicked.avsc"),
            Self::UserVerified => include_str!("../../../../schemas/UserVerified.avsc"),
        }
    }

    /// The writer's schema of a record whose fingerprint is `fp`: current or earlier.
    pub(super) fn by_fingerprint(fp: &[u8; 8]) -> Option<&'static Parsed> {
        parsed().iter().chain(earlier()).find(|p| &p.fingerprint == fp)
    }
}

/// Earlier versions of evolved schemas, oldest first: records written with them still decode.
const HISTORY: &[(EventKind, &str, &str)] =
    &[(EventKind::RewardGranted, "history/RewardGranted.v1", include_str!("../../../../schemas/history/RewardGranted.v1.avsc"))];

pub(super) struct Parsed {
    pub(super) kind: EventKind,
    schema: &'static Schema,
    pub(super) fingerprint: [u8; 8],
    reader: GenericDatumReader<'static>,
    pub(super) writer: GenericDatumWriter<'static>,
    /// An earlier version: the current schema its records are upgraded to.
    current: Option<&'static Schema>,
}

/// Parses `source` (the file `name`); an earlier version carries the `current` schema its
/// records are upgraded to.
fn parse(kind: EventKind, name: &str, source: &str, current: Option<&'static Schema>) -> Parsed {
    let schema: &'static Schema =
        Box::leak(Box::new(Schema::parse_str(source).unwrap_or_else(|e| panic!("schemas/{name}.avsc does not parse: {e}"))));
    let canonical = super::canonical::canonical_form(source).unwrap_or_else(|e| panic!("schemas/{name}.avsc has no canonical form: {e}"));
    let fingerprint = super::canonical::fingerprint(&canonical);
    let reader = GenericDatumReader::builder(schema).build().expect("schema resolves");
    let writer = GenericDatumWriter::builder(schema).build().expect("schema resolves");
    if let Some(current) = current {
        // Every field added since must have a default we can fill in.
        let (Schema::Record(old), Schema::Record(new)) = (schema, current) else { panic!("schemas/{name}.avsc is not a record") };
        for f in new.fields.iter().filter(|f| !old.fields.iter().any(|o| o.name == f.name)) {
            default_of(f).unwrap_or_else(|| panic!("{}.{} was added without a usable default", kind.name(), f.name));
        }
    }
    Parsed { kind, schema, fingerprint, reader, writer, current }
}

/// The value of a field's declared default (the forms the contract uses: null in a union, an
/// int or long, an enum symbol, a string).
fn default_of(field: &RecordField) -> Option<Value> {
    use serde_json::Value as Json;
    match (field.default.as_ref()?, &field.schema) {
        (Json::Null, Schema::Union(_)) => Some(Value::Union(0, Box::new(Value::Null))),
        (Json::Number(n), Schema::Int) => Some(Value::Int(i32::try_from(n.as_i64()?).ok()?)),
        (Json::Number(n), Schema::Long) => Some(Value::Long(n.as_i64()?)),
        (Json::String(sym), Schema::Enum(e)) => {
            Some(Value::Enum(u32::try_from(e.symbols.iter().position(|x| x == sym)?).ok()?, sym.clone()))
        }
        (Json::String(s), Schema::String) => Some(Value::String(s.clone())),
        _ => None,
    }
}

impl Parsed {
    /// Reads one record's body; a record of an earlier version gains the fields added since,
    /// with their defaults (fields are read by name, so their order does not matter).
    pub(super) fn read(&self, body: &mut impl std::io::Read) -> apache_avro::AvroResult<Value> {
        match (self.current, self.reader.read_value(body)?) {
            (Some(Schema::Record(current)), Value::Record(mut fields)) => {
                for f in &current.fields {
                    if !fields.iter().any(|(n, _)| n == &f.name) {
                        fields.extend(default_of(f).map(|v| (f.name.clone(), v)));
                    }
                }
                Ok(Value::Record(fields))
            }
            (_, value) => Ok(value),
        }
    }
}

fn parsed() -> &'static [Parsed] {
    static PARSED: OnceLock<Vec<Parsed>> = OnceLock::new();
    PARSED.get_or_init(|| EventKind::ALL.iter().map(|k| parse(*k, k.name(), k.source(), None)).collect())
}

pub(super) fn earlier() -> &'static [Parsed] {
    static EARLIER: OnceLock<Vec<Parsed>> = OnceLock::new();
    EARLIER.get_or_init(|| HISTORY.iter().map(|(k, name, source)| parse(*k, name, source, Some(schema(*k)))).collect())
}

fn index(kind: EventKind) -> usize {
    EventKind::ALL.iter().position(|k| *k == kind).unwrap_or_default()
}

/// The parsed schema of `kind`.
pub fn schema(kind: EventKind) -> &'static Schema {
    parsed()[index(kind)].schema
}

/// The current version of `kind`.
pub(super) fn current(kind: EventKind) -> &'static Parsed {
    &parsed()[index(kind)]
}

/// The datum writer of `kind`, resolved once.
pub(super) fn writer(kind: EventKind) -> &'static GenericDatumWriter<'static> {
    &parsed()[index(kind)].writer
}

/// The CRC-64-AVRO fingerprint of `kind`'s canonical form, little-endian as framed on the wire.
pub fn fingerprint(kind: EventKind) -> [u8; 8] {
    parsed()[index(kind)].fingerprint
}
