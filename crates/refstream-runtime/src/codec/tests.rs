use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use refstream_core::campaign::RewardKind;
use refstream_core::events::{DepositCompleted, DepositReversed, ReferralClicked, ReversalReason, RewardGranted, UserRegistered};
use refstream_core::links::Platform;
use refstream_core::{Currency, Money, UserId};
use serde_json::Value as Json;
use uuid::Uuid;

use super::*;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn deposit(amount: &str) -> DepositCompleted {
    DepositCompleted {
        event_id: Uuid::new_v4(),
        deposit_id: "d-1".into(),
        user_id: UserId::parse("u-1").unwrap(),
        amount: Money::new(amount.parse().unwrap(), Currency::USD),
        payment_fingerprint: Some("fp".into()),
        occurred_at: now() - Duration::days(1),
    }
}

fn registered() -> UserRegistered {
    UserRegistered {
        event_id: Uuid::new_v4(),
        user_id: UserId::parse("u-1").unwrap(),
        occurred_at: now() - Duration::hours(1),
        referral_code: Some("ABCD2345".into()),
        click_id: None,
        platform: "web".into(),
        device_id: Some("dev".into()),
        ip: Some("2001:db8::1".parse().unwrap()),
        email: Some("a@example.com".into()),
        country: None,
    }
}

fn decoder() -> Decoder {
    Decoder::default()
}

#[test]
fn round_trips_every_input_record() {
    let d = deposit("20.0000");
    assert_eq!(decoder().decode::<DepositCompleted>(&encode(&d), now()).unwrap(), d);
    let r = registered();
    assert_eq!(decoder().decode::<UserRegistered>(&encode(&r), now()).unwrap(), r);
    let rev = DepositReversed {
        event_id: Uuid::new_v4(),
        deposit_id: "d-1".into(),
        user_id: UserId::parse("u-1").unwrap(),
        reason: ReversalReason::Chargeback,
        occurred_at: now(),
    };
    assert_eq!(decoder().decode::<DepositReversed>(&encode(&rev), now()).unwrap(), rev);
    for (platform, from_sdk, expired) in [(Platform::Ios, false, false), (Platform::Desktop, true, true), (Platform::Web, false, true)] {
        let click = ReferralClicked {
            event_id: Uuid::new_v4(),
            click_id: "c_0123456789ABCDEFGHJKMNPQRS".into(),
            code: "ABCD2345".into(),
            referrer_id: UserId::parse("u-1").unwrap(),
            campaign_id: "default".into(),
            platform,
            from_sdk,
            expired,
            occurred_at: DateTime::from_timestamp_millis(now().timestamp_millis() - 5).unwrap(),
        };
        assert_eq!(decoder().decode::<ReferralClicked>(&encode(&click), now()).unwrap(), click);
    }
}

#[test]
fn single_object_header_is_c301_and_the_fingerprint() {
    let bytes = encode(&deposit("1"));
    assert_eq!(&bytes[..2], &[0xC3, 0x01]);
    assert_eq!(&bytes[2..10], &fingerprint(EventKind::DepositCompleted));
}

#[test]
fn every_schema_parses_with_a_distinct_fingerprint() {
    let mut seen = std::collections::HashSet::new();
    for k in EventKind::ALL {
        assert!(seen.insert(fingerprint(k)), "{} shares a fingerprint", k.name());
    }
}

#[test]
fn rejects_truncated_records() {
    let bytes = encode(&deposit("20"));
    for cut in [0, 1, 5, 10, bytes.len() - 1] {
        let err = decoder().decode::<DepositCompleted>(&bytes[..cut], now()).unwrap_err();
        assert!(matches!(err, DecodeError::Truncated(_) | DecodeError::Malformed { .. }), "{cut}: {err}");
    }
}

#[test]
fn rejects_unknown_framing_and_fingerprint() {
    let mut bytes = encode(&deposit("20"));
    assert_eq!(decoder().decode::<DepositCompleted>(b"{\"json\":1}", now()).unwrap_err().label(), "unknown_framing");
    bytes[5] ^= 0xFF;
    let err = decoder().decode::<DepositCompleted>(&bytes, now()).unwrap_err();
    assert_eq!(err.label(), "unknown_fingerprint", "{err}");
    assert_eq!(decoder().decode::<DepositCompleted>(&[0, 0, 0, 0, 9, 1], now()).unwrap_err(), DecodeError::UnknownSchemaId(9));
}

#[test]
fn rejects_a_record_of_the_wrong_schema() {
    let err = decoder().decode::<DepositCompleted>(&encode(&registered()), now()).unwrap_err();
    assert_eq!(err, DecodeError::WrongSchema { expected: "DepositCompleted", found: "UserRegistered" });
}

#[test]
fn rejects_trailing_bytes() {
    let mut bytes = encode(&deposit("20"));
    bytes.push(0);
    assert_eq!(decoder().decode::<DepositCompleted>(&bytes, now()).unwrap_err().label(), "malformed");
}

#[test]
fn rejects_bad_amounts_and_currencies() {
    for (amount, why) in [("0", "positive"), ("-5", "positive")] {
        let err = decoder().decode::<DepositCompleted>(&encode(&deposit(amount)), now()).unwrap_err();
        assert!(err.to_string().contains(why), "{amount}: {err}");
    }
    let mut bad = deposit("20");
    bad.amount.currency = Currency::USD;
    let mut bytes = encode(&bad);
    // Replace the currency string "USD" by "XYZ" in place: same length, same framing.
    let pos = bytes.windows(3).position(|w| w == b"USD").unwrap();
    bytes[pos..pos + 3].copy_from_slice(b"XYZ");
    let err = decoder().decode::<DepositCompleted>(&bytes, now()).unwrap_err();
    assert!(err.to_string().contains("ISO 4217"), "{err}");
}

#[test]
fn rejects_over_precise_amounts_written_by_another_writer() {
    // decimal(18,4) bytes hold an unscaled integer; 10^14 * 10^4 needs 19 digits.
    let mut f = fields_for_deposit();
    f.insert("amount", apache_avro::types::Value::Decimal(apache_avro::Decimal::from((10_i128.pow(18)).to_be_bytes()[7..].to_vec())));
    let err = decoder().decode::<DepositCompleted>(&raw_deposit(f), now()).unwrap_err();
    assert!(err.to_string().contains("precision"), "{err}");
}

#[test]
fn rejects_missing_user_ids_long_strings_and_future_dates() {
    let mut f = fields_for_deposit();
    f.insert("user_id", apache_avro::types::Value::String(String::new()));
    assert!(decoder().decode::<DepositCompleted>(&raw_deposit(f), now()).unwrap_err().to_string().contains("user_id"));

    let mut f = fields_for_deposit();
    f.insert("deposit_id", apache_avro::types::Value::String("x".repeat(65 * 1024)));
    assert!(decoder().decode::<DepositCompleted>(&raw_deposit(f), now()).unwrap_err().to_string().contains("64 KiB"));

    let mut d = deposit("20");
    d.occurred_at = now() + Duration::days(3);
    assert!(decoder().decode::<DepositCompleted>(&encode(&d), now()).unwrap_err().to_string().contains("future"));
}

#[test]
fn rejects_invalid_utf8() {
    let mut bytes = encode(&deposit("20"));
    let pos = bytes.windows(3).position(|w| w == b"d-1").unwrap();
    bytes[pos] = 0xFF;
    let err = decoder().decode::<DepositCompleted>(&bytes, now()).unwrap_err();
    assert_eq!(err.label(), "malformed", "{err}");
}

fn fields_for_deposit() -> hostile::Fields {
    hostile::Fields::from_value(deposit("20").to_value())
}

fn raw_deposit(f: hostile::Fields) -> Vec<u8> {
    let body = apache_avro::writer::datum::GenericDatumWriter::builder(schema(EventKind::DepositCompleted))
        .build()
        .unwrap()
        .write_value_to_vec(f.into_value())
        .unwrap();
    let mut out = vec![0xC3, 0x01];
    out.extend_from_slice(&fingerprint(EventKind::DepositCompleted));
    out.extend_from_slice(&body);
    out
}

/// A record's fields, editable by name, for building hostile inputs.
mod hostile {
    use apache_avro::types::Value;

    pub struct Fields(Vec<(String, Value)>);

    impl Fields {
        pub fn from_value(v: Value) -> Self {
            match v {
                Value::Record(f) => Self(f),
                _ => panic!("not a record"),
            }
        }
        pub fn insert(&mut self, name: &str, value: Value) {
            let slot = self.0.iter_mut().find(|(n, _)| n == name).expect("field exists");
            slot.1 = value;
        }
        pub fn into_value(self) -> Value {
            Value::Record(self.0)
        }
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/../../schemas/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn decodes_records_written_by_fastavro() {
    let expected: Json = serde_json::from_slice(&fixture("expected.json")).unwrap();
    let at = |v: &Json| DateTime::from_timestamp_millis(v["occurred_at_ms"].as_i64().unwrap()).unwrap();

    let reg = decoder().decode::<UserRegistered>(&fixture("user_registered.bin"), now()).unwrap();
    let e = &expected["user_registered"];
    assert_eq!(reg.event_id.to_string(), e["event_id"].as_str().unwrap());
    assert_eq!(reg.user_id.as_str(), e["user_id"].as_str().unwrap());
    assert_eq!(reg.occurred_at, at(e));
    assert_eq!(reg.referral_code.as_deref(), e["referral_code"].as_str());
    assert_eq!(reg.click_id, None);
    assert_eq!(reg.ip.map(|i| i.to_string()).as_deref(), e["ip"].as_str());
    assert_eq!(reg.email.as_deref(), e["email"].as_str());

    let dep = decoder().decode::<DepositCompleted>(&fixture("deposit_completed.bin"), now()).unwrap();
    let e = &expected["deposit_completed"];
    assert_eq!(dep.amount.amount, e["amount"].as_str().unwrap().parse().unwrap());
    assert_eq!(dep.amount.currency, Currency::USD);
    assert_eq!(dep.deposit_id, e["deposit_id"].as_str().unwrap());
    assert_eq!(dep.payment_fingerprint.as_deref(), e["payment_fingerprint"].as_str());
    assert_eq!(dep.occurred_at, at(e));

    let rev = decoder().decode::<DepositReversed>(&fixture("deposit_reversed.bin"), now()).unwrap();
    assert_eq!(rev.reason, ReversalReason::Chargeback);
    assert_eq!(rev.occurred_at, at(&expected["deposit_reversed"]));

    let negative = decoder().decode::<DepositCompleted>(&fixture("deposit_negative.bin"), now()).unwrap_err();
    assert!(negative.to_string().contains("positive"), "{negative}");

    let confluent = Decoder::new(HashMap::from([(7, EventKind::DepositCompleted)]));
    assert_eq!(confluent.decode::<DepositCompleted>(&fixture("deposit_completed_confluent.bin"), now()).unwrap(), dep);
    assert_eq!(
        decoder().decode::<DepositCompleted>(&fixture("deposit_completed_confluent.bin"), now()).unwrap_err(),
        DecodeError::UnknownSchemaId(7)
    );
}

#[test]
fn our_fingerprints_match_the_independent_writer() {
    let ours = encode(&deposit("1"));
    assert_eq!(&fixture("deposit_completed.bin")[..10], &ours[..10]);
}

proptest! {
    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decoder().decode::<DepositCompleted>(&bytes, now());
        let _ = decoder().decode::<UserRegistered>(&bytes, now());
    }

    #[test]
    fn decoder_never_panics_on_mutated_records(pos in 0usize..100, byte in any::<u8>()) {
        let mut bytes = encode(&deposit("42.5"));
        let p = pos % bytes.len();
        bytes[p] = byte;
        let _ = decoder().decode::<DepositCompleted>(&bytes, now());
    }

    #[test]
    fn amounts_round_trip(unscaled in -999_999_999_999_999_999_i64..999_999_999_999_999_999) {
        prop_assume!(unscaled > 0);
        let amount = rust_decimal::Decimal::new(unscaled, 4);
        let mut d = deposit("1");
        d.amount = Money::new(amount, Currency::USD);
        prop_assert_eq!(decoder().decode::<DepositCompleted>(&encode(&d), now()).unwrap().amount.amount, amount);
    }
}

fn granted() -> RewardGranted {
    RewardGranted {
        event_id: Uuid::new_v4(),
        reward_id: Uuid::new_v4(),
        referral_id: Uuid::new_v4(),
        user_id: UserId::parse("u-1").unwrap(),
        role: refstream_core::campaign::Role::Referrer,
        reward_type: "milestone_5".into(),
        amount: Money::new("50".parse().unwrap(), Currency::USD),
        campaign_id: "spring".into(),
        qualifying_deposit_id: "d-1".into(),
        granted_at: now(),
        level: 1,
        milestone: Some(5),
        kind: RewardKind::Bonus,
        wagering_requirement: Some("500".parse().unwrap()),
    }
}

#[test]
fn reward_granted_round_trips_with_its_version_2_fields() {
    let g = granted();
    assert_eq!(decoder().decode::<RewardGranted>(&encode(&g), now()).unwrap(), g);
}

#[test]
fn a_reward_granted_written_with_version_1_still_decodes_with_the_defaults() {
    let g = granted();
    let v1 = schemas::earlier().iter().find(|p| p.kind == EventKind::RewardGranted).expect("version 1 is kept");
    assert_ne!(v1.fingerprint, fingerprint(EventKind::RewardGranted), "an evolved schema has a new fingerprint");
    let Value::Record(fields) = g.to_value() else { unreachable!() };
    let old: Vec<(String, Value)> =
        fields.into_iter().filter(|(n, _)| !["level", "milestone", "kind", "wagering_requirement"].contains(&n.as_str())).collect();
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&v1.fingerprint);
    bytes.extend(v1.writer.write_value_to_vec(Value::Record(old)).unwrap());
    let read = decoder().decode::<RewardGranted>(&bytes, now()).unwrap();
    assert_eq!(read, RewardGranted { level: 1, milestone: None, kind: RewardKind::Cash, wagering_requirement: None, ..g });
    assert_eq!(event_id_of(&bytes), Some(g.event_id));
}
