//! The contract's schemas, embedded from `schemas/*.avsc` at build time and parsed once.

use std::sync::OnceLock;

use apache_avro::reader::datum::GenericDatumReader;
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

    pub(super) fn by_fingerprint(fp: &[u8; 8]) -> Option<Self> {
        Self::ALL.into_iter().find(|k| &fingerprint(*k) == fp)
    }
}

struct Parsed {
    schema: &'static Schema,
    fingerprint: [u8; 8],
    reader: GenericDatumReader<'static>,
    writer: GenericDatumWriter<'static>,
}

fn parsed() -> &'static [Parsed] {
    static PARSED: OnceLock<Vec<Parsed>> = OnceLock::new();
    PARSED.get_or_init(|| {
        EventKind::ALL
            .iter()
            .map(|k| {
                let schema: &'static Schema = Box::leak(Box::new(
                    Schema::parse_str(k.source()).unwrap_or_else(|e| panic!("schemas/{}.avsc does not parse: {e}", k.name())),
                ));
                let canonical = super::canonical::canonical_form(k.source())
                    .unwrap_or_else(|e| panic!("schemas/{}.avsc has no canonical form: {e}", k.name()));
                let fingerprint = super::canonical::fingerprint(&canonical);
                let reader = GenericDatumReader::builder(schema).build().expect("schema resolves");
                let writer = GenericDatumWriter::builder(schema).build().expect("schema resolves");
                Parsed { schema, fingerprint, reader, writer }
            })
            .collect()
    })
}

fn index(kind: EventKind) -> usize {
    EventKind::ALL.iter().position(|k| *k == kind).unwrap_or_default()
}

/// The parsed schema of `kind`.
pub fn schema(kind: EventKind) -> &'static Schema {
    parsed()[index(kind)].schema
}

/// The datum reader of `kind`, resolved once.
pub(super) fn reader(kind: EventKind) -> &'static GenericDatumReader<'static> {
    &parsed()[index(kind)].reader
}

/// The datum writer of `kind`, resolved once.
pub(super) fn writer(kind: EventKind) -> &'static GenericDatumWriter<'static> {
    &parsed()[index(kind)].writer
}

/// The CRC-64-AVRO fingerprint of `kind`'s canonical form, little-endian as framed on the wire.
pub fn fingerprint(kind: EventKind) -> [u8; 8] {
    parsed()[index(kind)].fingerprint
}
