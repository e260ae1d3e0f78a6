//! Where Postgres spent its time in each phase of the bench: when the database has the
//! `pg_stat_statements` extension (`BENCH_PG_PROFILE=1 make bench` loads and creates it), the
//! statements that took most of the phase's execution time are printed after it, and the
//! counters reset for the next phase. Without the extension this does nothing. Times are wall
//! time inside Postgres (lock waits and CPU contention included), for finding what to look at;
//! with the buffers each read (a proxy for its CPU, which contention does not inflate) and
//! the WAL it wrote; beside them, how many of each table's updates were made in place (HOT).

use sqlx::PgPool;

/// True when `pg_stat_statements` is installed in the bench's database.
pub async fn available(pool: &PgPool) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')")
        .fetch_one(pool)
        .await
        .unwrap_or(false)
}

/// Prints the `top` statements of the phase just ended (this database only) and resets.
pub async fn report_and_reset(pool: &PgPool, phase: &str, top: i64) -> anyhow::Result<()> {
    let rows: Vec<(i64, i64, String, i64, i64, i64, String)> = sqlx::query_as(
        "SELECT round(s.total_exec_time)::int8, s.calls, round(s.mean_exec_time::numeric, 2)::text, s.rows, \
           (s.shared_blks_hit + s.shared_blks_read)::int8, round(s.wal_bytes / 1024)::int8, \
           left(regexp_replace(s.query, '\\s+', ' ', 'g'), 100) \
         FROM pg_stat_statements s WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         ORDER BY s.total_exec_time DESC LIMIT $1",
    )
    .bind(top)
    .fetch_all(pool)
    .await?;
    let (planning, executing): (i64, i64) = sqlx::query_as(
        "SELECT round(COALESCE(sum(total_plan_time), 0))::int8, round(COALESCE(sum(total_exec_time), 0))::int8 FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await?;
    println!("Postgres time by statement, {phase} (pg_stat_statements; {planning} ms planning, {executing} ms executing):");
    println!("{:>9} {:>8} {:>8} {:>8} {:>9} {:>7}  statement", "total ms", "calls", "mean ms", "rows", "buffers", "WAL kB");
    for (total, calls, mean, n, buffers, wal_kb, query) in rows {
        println!("{total:>9} {calls:>8} {mean:>8} {n:>8} {buffers:>9} {wal_kb:>7}  {query}");
    }
    // Updates made in place (HOT: no index entry) beside all updates, since Postgres started;
    // other sessions report theirs within a second or so.
    let updated: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE n_tup_upd > 0 ORDER BY n_tup_upd DESC LIMIT 8",
    )
    .fetch_all(pool)
    .await?;
    let updated: Vec<String> = updated.iter().map(|(t, all, hot)| format!("{t} {hot}/{all}")).collect();
    println!("updates in place / all updates so far: {}", updated.join(", "));
    sqlx::query("SELECT pg_stat_statements_reset()").execute(pool).await?;
    Ok(())
}
