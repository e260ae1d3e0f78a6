//! The consumer runtime's event-id dedupe forgets what is older than its retention
//! (`kafka.dedupe_retention_hours`): the prune deletes exactly one worker's old rows, against a
//! real Postgres (a fresh database per test).

use refstream_e2e::TestDb;
use refstream_runtime::consumer::prune_processed_events;
use uuid::Uuid;

/// `count` rows of `consumer` processed `hours_ago` hours ago, a millisecond apart.
async fn processed(db: &TestDb, consumer: &str, count: i32, hours_ago: i32) -> Vec<Uuid> {
    processed_apart(db, consumer, count, hours_ago, 1).await
}

/// `count` rows of `consumer` processed `hours_ago` hours ago, `apart_ms` apart (0: one batch's
/// rows, which share their transaction's time).
async fn processed_apart(db: &TestDb, consumer: &str, count: i32, hours_ago: i32, apart_ms: i32) -> Vec<Uuid> {
    sqlx::query_scalar(
        "INSERT INTO processed_events (consumer, event_id, processed_at) \
         SELECT $1, gen_random_uuid(), now() - make_interval(hours => $3) - i * $4 * interval '1 ms' \
         FROM generate_series(1, $2) AS i RETURNING event_id",
    )
    .bind(consumer)
    .bind(count)
    .bind(hours_ago)
    .bind(apart_ms)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn ids_of(db: &TestDb, consumer: &str) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT event_id FROM processed_events WHERE consumer = $1 ORDER BY event_id")
        .bind(consumer)
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_prune_deletes_exactly_the_workers_rows_older_than_the_retention() {
    let db = TestDb::new().await;
    let retention = 336;
    // More old rows than one statement deletes, so the prune goes on from chunk to chunk, and
    // rows sharing their time across a chunk's end.
    processed(&db, "attribution", 12_001, retention + 24).await;
    processed_apart(&db, "attribution", 6_000, retention + 2, 0).await;
    processed(&db, "attribution", 3, retention + 1).await;
    let mut kept = processed(&db, "attribution", 2, retention - 1).await;
    kept.extend(processed(&db, "attribution", 5, 0).await);
    kept.sort();
    let mut others = processed(&db, "fraud-scorer", 4, retention + 24).await;
    others.extend(processed(&db, "fraud-scorer", 2, 0).await);
    others.sort();

    let pruned = prune_processed_events(&db.pool, "attribution", retention, None).await.unwrap();
    assert_eq!(pruned.deleted, 18_004);
    assert_eq!(ids_of(&db, "attribution").await, kept, "the worker's rows within the retention stay");
    assert_eq!(ids_of(&db, "fraud-scorer").await, others, "another worker's rows stay, however old");

    // The next run starts where this one finished and finds nothing more.
    let again = prune_processed_events(&db.pool, "attribution", retention, Some(pruned.done_before)).await.unwrap();
    assert_eq!(again.deleted, 0);
    assert!(again.done_before >= pruned.done_before);
    assert_eq!(ids_of(&db, "attribution").await, kept);
}
