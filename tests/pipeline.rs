//! End to end: the devbroker, a real Postgres and the four binaries as processes, configured
//! only through the three contract variables. Avro records in, `reward-granted` records out;
//! the pending payouts drained on the way are vacuumed by the engine.

use std::time::Duration;

use chrono::Utc;
use refstream_core::events::{RewardGranted, UserRegistered};
use refstream_core::{Currency, Money, UserId};
use refstream_e2e::{deposit, eventually, header, produce, producer, read_topic, Broker, Fleet, TestDb};
use refstream_runtime::codec::{encode, Decoder};
use rust_decimal::Decimal;
use uuid::Uuid;

fn registered(user: &str, code: Option<&str>) -> UserRegistered {
    UserRegistered {
        event_id: Uuid::new_v4(),
        user_id: UserId::parse(user).unwrap(),
        occurred_at: Utc::now(),
        referral_code: code.map(str::to_owned),
        click_id: None,
        platform: "ios".into(),
        device_id: Some(format!("device-{user}")),
        ip: Some(format!("198.51.100.{}", user.len()).parse().unwrap()),
        email: Some(format!("{user}@example.org")),
        country: Some("PT".into()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_qualifying_deposit_pays_the_referrer_once() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    let fleet = Fleet::start(&db.url, &broker.bootstrap);
    let p = producer(&broker.bootstrap);

    produce(&p, "user-registered", "alice", &encode(&registered("alice", None))).await;
    let code = db.minted_code("alice").await;

    produce(&p, "user-registered", "bob", &encode(&registered("bob", Some(&code)))).await;
    produce(&p, "user-registered", "carol", &encode(&registered("carol", Some(&code)))).await;
    produce(&p, "user-registered", "mallory", &encode(&registered("mallory", Some("QQQQ7777")))).await;
    let pool = db.pool.clone();
    eventually(Duration::from_secs(60), "bob and carol scored", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM referrals WHERE status = 'eligible'").fetch_one(&pool).await.unwrap() == 2
        }
    })
    .await;

    // Bob: the same DepositCompleted three times, then a second qualifying deposit.
    let first = encode(&deposit("bob", "bob-1", "25.00"));
    for _ in 0..3 {
        produce(&p, "deposit-completed", "bob", &first).await;
    }
    produce(&p, "deposit-completed", "bob", &encode(&deposit("bob", "bob-2", "30.00"))).await;
    // Carol: below the threshold.
    produce(&p, "deposit-completed", "carol", &encode(&deposit("carol", "carol-1", "19.99"))).await;

    let records = read_topic(&broker.bootstrap, "reward-granted", 1, Duration::from_secs(60));
    assert_eq!(records.len(), 1, "exactly one RewardGranted");
    let m = &records[0];
    let granted: RewardGranted = Decoder::default().decode(rdkafka::Message::payload(m).unwrap(), Utc::now()).unwrap();
    assert_eq!(granted.user_id.as_str(), "alice");
    assert_eq!(granted.amount, Money::new(Decimal::new(1000, 2), Currency::USD));
    assert_eq!(granted.qualifying_deposit_id, "bob-1");
    assert_eq!(rdkafka::Message::key(m), Some(&b"alice"[..]));
    assert_eq!(header(m, "event_id"), Some(granted.event_id.to_string()));

    let balance: Decimal =
        sqlx::query_scalar("SELECT balance FROM balances WHERE account = 'user:alice'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(balance, Decimal::new(10, 0));
    let ledger: Decimal = sqlx::query_scalar("SELECT sum(amount) FROM ledger_entries").fetch_one(&db.pool).await.unwrap();
    assert_eq!(ledger, Decimal::ZERO);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM rewards").await, 1);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM referrals WHERE referee_id = 'mallory'").await, 0);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM deposits").await, 3);
    // The pending payouts the engine drained are vacuumed by the engine, not left to
    // autovacuum's once a minute.
    let pool = db.pool.clone();
    eventually(Duration::from_secs(20), "pending_payouts vacuumed by the engine", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'pending_payouts' AND last_vacuum IS NOT NULL",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                == 1
        }
    })
    .await;
    // Neither queue is ever truncated by a vacuum (a truncation locks out every insert and claim).
    for queue in ["outbox", "pending_payouts"] {
        let options: Vec<String> =
            sqlx::query_scalar("SELECT unnest(reloptions) FROM pg_class WHERE relname = $1").bind(queue).fetch_all(&db.pool).await.unwrap();
        assert!(options.contains(&"vacuum_truncate=false".to_owned()), "{queue}: {options:?}");
    }
    drop(fleet);
}

/// Every text column of refstream's tables compares as bytes (`COLLATE "C"`, migration
/// 20261205100000), whatever locale the database was created with: identifiers are compared in
/// every index lookup, and byte order is the order Rust sorts a batch in. A migration that adds
/// a text column without `COLLATE "C"` fails here. The analytics views, dropped and created
/// again by that migration, still answer. The database is created with a linguistic locale
/// (ICU's en-US, which sorts 'B' after 'a' and 'é' beside 'e').
#[tokio::test(flavor = "multi_thread")]
async fn every_text_column_compares_as_bytes() {
    let db = TestDb::created_with("TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'").await;
    let linguistic_order: Vec<String> =
        sqlx::query_scalar("SELECT v FROM unnest(ARRAY['b', 'B', 'a']) AS v ORDER BY v").fetch_all(&db.pool).await.unwrap();
    assert_eq!(linguistic_order, ["a", "b", "B"], "the test database sorts by a linguistic locale");
    let linguistic: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname || '.' || a.attname FROM pg_class c \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r' AND c.relname NOT LIKE '\\_sqlx%' \
           AND a.atttypid = 'text'::regtype AND a.attcollation <> '\"C\"'::regcollation ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(linguistic.is_empty(), "text columns compared under the database's en-US locale: {linguistic:?}");
    // A stored identifier sorts as Rust sorts it: upper case before lower, accented letters
    // after 'z'.
    let ids = ["b", "B", "a", "é", "z", "A-1", "a1"];
    sqlx::query(
        "INSERT INTO identity_links (kind, value, user_id, first_seen_at) SELECT 'payment', 'card', u, now() FROM unnest($1::text[]) AS u",
    )
    .bind(&ids[..])
    .execute(&db.pool)
    .await
    .unwrap();
    let in_sql: Vec<String> = sqlx::query_scalar("SELECT user_id FROM identity_links ORDER BY user_id").fetch_all(&db.pool).await.unwrap();
    let mut in_rust: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    in_rust.sort();
    assert_eq!(in_sql, in_rust, "identity_links.user_id sorts in byte order");
    for view in
        ["analytics_referral_places", "analytics_referral_facts", "analytics_reward_facts", "analytics_reversal_facts", "analytics_funnel"]
    {
        db.scalar_i64(&format!("SELECT count(*) FROM {view}")).await;
    }
}

/// A referral's first move (pending → eligible, one per registration) is made in place: a new
/// version on the same page and no index entry (Postgres' HOT update), because no index names
/// the status itself. The move out of the open referrals (eligible → rewarded) is not, and
/// must not be: the row leaves an index.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_status_move_writes_no_index_entry() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO users (user_id, registered_at, platform) VALUES ('hot-referrer', now(), 'web'), ('hot-referee', now(), 'web')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO referrals (referral_id, referrer_id, referee_id, code, campaign_id, attribution, referee_registered_at) \
         VALUES ($1, 'hot-referrer', 'hot-referee', 'HOTCODE', 'default', 'CODE', now())",
    )
    .bind(id)
    .execute(&mut *tx)
    .await
    .unwrap();
    let moves = [("eligible", 1), ("rewarded", 1)];
    for (to, hot_after) in moves {
        sqlx::query("UPDATE referrals SET status = $2, updated_at = now() WHERE referral_id = $1")
            .bind(id)
            .bind(to)
            .execute(&mut *tx)
            .await
            .unwrap();
        let (updates, hot): (i64, i64) = sqlx::query_as(
            "SELECT pg_stat_get_xact_tuples_updated('referrals'::regclass), pg_stat_get_xact_tuples_hot_updated('referrals'::regclass)",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!(hot, hot_after, "in-place updates after the move to {to} ({updates} updates)");
    }
    let open: i64 =
        sqlx::query_scalar("SELECT count(*) FROM referrals WHERE status_group IN ('open', 'held')").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(open, 0, "a rewarded referral is not open");
}
