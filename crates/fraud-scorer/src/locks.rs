//! What a scorer batch locks, so that concurrent batches never both miss a ring, a velocity
//! cluster or each other's fresh assessments, without one lock for the whole graph. Every lock
//! is a transaction-scoped Postgres advisory lock, held to the batch's commit, keyed by the
//! 64-bit hash of a text key:
//!
//! - `device:<id>`, `email:<hash>`, `payment:<fingerprint>`: an identifier of the ring graph
//!   (and of the device and mailbox clusters). A batch locks, exclusively, the identifiers of
//!   its seeds: the device and mailbox of their `users` rows (so before the accounts it meets
//!   are met for anyone else) and their cards; and every identifier its graph walk reaches.
//! - `account:<user>`: a seed that is not one of the batch's referees (a referrer the scorer
//!   meets for the first time, a depositor).
//! - `referrer:<user>`: shared by every batch with a referral of that referrer, exclusive when
//!   the referrer's referrals around the batch's registrations already exceed the velocity
//!   limit (a farm the batch must re-assess whole).
//! - [`RING_LOCK`]: shared by every graph section; exclusive only for a walk that hit
//!   [`graph::MAX_WALK`] (a component too large to lock identifier by identifier), which then
//!   runs alone as every section once did.
//!
//! Why this is enough. A batch's new links are the device and mailbox of each account it meets
//! (the referees and first-time referrers of its referrals: they count as met from its commit,
//! [`graph::components`]) and the cards it records; every such account is one of its seeds. A
//! batch's ring verdicts come from a walk (the components of its seeds)
//! made while it holds the lock of every identifier the walk reached. A seed whose identifiers,
//! read while all of them are locked, have no other account is not walked: it is its own
//! component, which is what the walk would read, so below "walk" covers that read too. Take two
//! concurrent batches A and B whose new links end up in one component, and a shortest path
//! between a link of A and a link of B: its inner links were committed before either walked, so both walks reach every
//! node on it. If the path has a link, it has an identifier, which both lock; if it has none,
//! the two links share a node: an identifier (both lock it) or an account both meet or link
//! (both lock its device and email, or its `account:` key). So A and B hold a common lock
//! and one walks only after the other committed: the later sees both batches' links and fresh
//! assessments, and re-assesses the earlier one's referrals in a ring it completed. A walk that
//! reaches an identifier not locked yet locks it and walks again, until its walk is covered.
//!
//! Deadlocks: the first locks of a batch are taken in one statement in hash order; only a
//! component that grew, or a seed that gained a link, between the first reads and the locks
//! takes more, out of that order. Postgres detects the rare cycle and the batch is retried (a
//! transient failure).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::graph::{self, Components};

/// The seed of `hashtextextended` that turns a lock key into the advisory lock's id.
pub const KEY_SEED: i64 = 2718;

/// Key of the ring graph's shared/exclusive lock (see the module documentation).
pub const RING_LOCK: i64 = 0x7265_6673_7269_6e67; // "refsring"

/// Walks (and lock rounds) before a batch gives up on per-identifier locks and takes
/// [`RING_LOCK`] exclusively.
const MAX_ROUNDS: usize = 4;

/// The lock keys (`kind:value`) of every identifier of `seeds` (their payment links, and the
/// device and mailbox of their `users` rows), and the seeds with an identifier another account
/// has: a card another account paid with, or a device or mailbox on another `users` row, met
/// or not (a seed no other account shares anything with is its whole component; one that
/// shares only with accounts not met yet is walked, and the walk finds it alone). One read of
/// each seed's `users` row and of its links, each a lookup (`OFFSET 0` keeps it one: as
/// `user_id = ANY($1)` the planner read every user or link while its statistics called the
/// table small); the keys are deduplicated here, not by Postgres.
async fn own_identifiers(conn: &mut PgConnection, seeds: &[String]) -> sqlx::Result<(BTreeSet<String>, Vec<String>)> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "WITH b AS (SELECT DISTINCT s FROM unnest($1::text[]) AS s) \
         SELECT x.kind || ':' || x.value, CASE WHEN x.shared THEN u.user_id END \
         FROM b CROSS JOIN LATERAL (SELECT * FROM users WHERE user_id = b.s OFFSET 0) AS u, LATERAL (VALUES \
             ('device', u.device_id, EXISTS (SELECT 1 FROM users o WHERE o.device_id = u.device_id AND o.user_id <> u.user_id)), \
             ('email', u.email_hash, EXISTS (SELECT 1 FROM users o WHERE o.email_hash = u.email_hash AND o.user_id <> u.user_id))) \
             AS x(kind, value, shared) \
           WHERE x.value IS NOT NULL \
         UNION ALL SELECT l.kind || ':' || l.value, CASE WHEN EXISTS (SELECT 1 FROM identity_links o \
                  WHERE o.kind = l.kind AND o.value = l.value AND o.user_id <> l.user_id) THEN l.user_id END \
           FROM b CROSS JOIN LATERAL (SELECT * FROM identity_links WHERE user_id = b.s OFFSET 0) AS l",
    )
    .bind(seeds)
    .fetch_all(conn)
    .await?;
    let mut keys = BTreeSet::new();
    let mut shared = BTreeSet::new();
    for (key, sharer) in rows {
        keys.insert(key);
        shared.extend(sharer);
    }
    Ok((keys, shared.into_iter().collect()))
}

/// The referrers of a batch with the registration time of each of their referees in it, and
/// the velocity window and limit that decide whether a referrer is locked exclusively.
pub struct Referrers<'a> {
    pub at: &'a [(&'a str, DateTime<Utc>)],
    pub window_secs: i64,
    pub limit: i64,
}

/// Locks `exclusive` and the referrers' keys in one statement, in hash order.
pub async fn lock(conn: &mut PgConnection, exclusive: &BTreeSet<String>, referrers: Option<Referrers<'_>>) -> sqlx::Result<()> {
    let keys: Vec<&str> = exclusive.iter().map(String::as_str).collect();
    let (ids, at, window, limit) = match &referrers {
        Some(r) => (r.at.iter().map(|(u, _)| *u).collect(), r.at.iter().map(|(_, t)| *t).collect(), r.window_secs, r.limit),
        None => (Vec::new(), Vec::new(), 0, 0),
    };
    sqlx::query(
        "WITH b AS (SELECT * FROM unnest($2::text[], $3::timestamptz[]) AS b(referrer, at)), \
         keys AS (SELECT k, true AS ex FROM unnest($1::text[]) AS k \
           UNION ALL \
           SELECT 'referrer:' || b.referrer, (SELECT count(*) FROM referrals o WHERE o.referrer_id = b.referrer \
             AND o.referee_registered_at BETWEEN b.at - 2 * $4 * interval '1 second' AND b.at + 2 * $4 * interval '1 second') > $5 \
           FROM b), \
         locks AS (SELECT hashtextextended(k, $6) AS h, bool_or(ex) AS ex FROM keys GROUP BY 1) \
         SELECT CASE WHEN ex THEN pg_advisory_xact_lock(h) ELSE pg_advisory_xact_lock_shared(h) END FROM locks ORDER BY h",
    )
    .bind(&keys)
    .bind(&ids)
    .bind(&at)
    .bind(window)
    .bind(limit)
    .bind(KEY_SEED)
    .execute(conn)
    .await?;
    Ok(())
}

async fn ring_lock(conn: &mut PgConnection, exclusive: bool) -> sqlx::Result<()> {
    let sql = if exclusive { "SELECT pg_advisory_xact_lock($1)" } else { "SELECT pg_advisory_xact_lock_shared($1)" };
    sqlx::query(sql).bind(RING_LOCK).execute(conn).await?;
    Ok(())
}

/// What a batch touches, for [`lock_and_walk`].
pub struct Touched<'a> {
    /// The accounts the batch meets (its referees and the referrers it meets first), which
    /// count as met in its walks although their assessments are not written yet
    /// ([`graph::components`]).
    pub meeting: &'a [String],
    /// Accounts it locks by their `account:` key.
    pub accounts: Vec<&'a str>,
    /// Keys it holds already (its cards).
    pub held: BTreeSet<String>,
    /// Its referrers, locked shared or exclusive.
    pub referrers: Option<Referrers<'a>>,
}

/// Takes a batch's locks and returns the components of `seeds` read under them. First the
/// identifiers to lock are named: the seeds' own (a seed whose links no other account shares is
/// its whole component), and, walked without locks, the components of the seeds that share one.
/// They are locked in one statement, in hash order, with the batch's devices, mailboxes,
/// accounts and referrers; then the components are walked under those locks
/// ([`locked_components`]). Naming them first only keeps the usual batch to one round of locks
/// in hash order: the locked walk is what makes the read complete, whatever was named.
pub async fn lock_and_walk(
    conn: &mut PgConnection,
    seeds: &[String],
    touched: Touched<'_>,
    ring_min_size: u32,
) -> sqlx::Result<Components> {
    let (mut keys, sharing) = own_identifiers(conn, seeds).await?;
    if !sharing.is_empty() {
        keys.extend(graph::components(conn, &sharing, &[], touched.meeting, ring_min_size).await?.identifiers().iter().cloned());
    }
    keys.extend(touched.accounts.iter().map(|u| format!("account:{u}")));
    lock(conn, &keys, touched.referrers).await?;
    keys.extend(touched.held);
    locked_components(conn, seeds, keys, touched.meeting, ring_min_size).await
}

/// The components of `seeds`, read while this transaction holds the lock of every identifier
/// they contain. `held`: the identifier keys already locked (the batch's own). Takes
/// [`RING_LOCK`] shared first; reads the seeds' own identifiers (locking any not held yet and
/// reading again), then walks from the seeds that share one, locks what the walk reached, and
/// walks again until a walk reaches nothing unlocked; a walk cut at [`graph::MAX_WALK`], or one
/// still growing after [`MAX_ROUNDS`], is done again under [`RING_LOCK`] taken exclusively.
///
/// A seed that shares none of its identifiers, read while they are all locked, is its own
/// component without a walk: the walk would read exactly that (its identifiers, each with no
/// other account), and a batch linking another account to one of them waits for these locks.
async fn locked_components(
    conn: &mut PgConnection,
    seeds: &[String],
    mut held: BTreeSet<String>,
    meeting: &[String],
    ring_min_size: u32,
) -> sqlx::Result<Components> {
    ring_lock(conn, false).await?;
    for _ in 0..MAX_ROUNDS {
        let (own, sharing) = own_identifiers(conn, seeds).await?;
        let unlocked: BTreeSet<String> = own.difference(&held).cloned().collect();
        if !unlocked.is_empty() {
            lock(conn, &unlocked, None).await?;
            held.extend(unlocked);
            continue;
        }
        let walked_from: BTreeSet<&String> = sharing.iter().collect();
        let alone: Vec<String> = seeds.iter().filter(|s| !walked_from.contains(s)).cloned().collect();
        let walked = graph::components(conn, &sharing, &alone, meeting, ring_min_size).await?;
        if walked.truncated() {
            break;
        }
        let new: BTreeSet<String> = walked.identifiers().difference(&held).cloned().collect();
        if new.is_empty() {
            return Ok(walked);
        }
        lock(conn, &new, None).await?;
        held.extend(new);
    }
    ring_lock(conn, true).await?;
    graph::components(conn, seeds, &[], meeting, ring_min_size).await
}
