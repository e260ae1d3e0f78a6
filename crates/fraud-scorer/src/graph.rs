//! The scorer's graph of hard links: accounts that share a device id, a normalized email (its
//! keyed hash) or a payment instrument are linked, and a connected component of at least
//! `ring_min_size` accounts within which one account referred another is a fraud ring. A
//! device or mailbox links the accounts the scorer has met (the referees and referrers of the
//! referrals it has assessed) through their `users` rows; a payment instrument links the
//! accounts that paid with it (`identity_links`, written from the deposits the scorer reads).
//! This module only reads the graph and writes the payment links, set-based: a batch's links
//! are written in one statement and the components of all the accounts a batch touches are
//! loaded in one, whatever the batch's size. What counts as a ring is decided by the pure
//! [`refstream_core::fraud::Graph`], so the rule is the one the domain tests pin down.
//!
//! Guarantees: an account's device and mailbox enter the graph when the batch that assesses its
//! first referral commits, and a card when the batch that reads its first deposit with it
//! commits: the graph is what the scorer has read, whatever attribution has written ahead of
//! it. The components are read as of the statement, with the lock key of every identifier they
//! contain, which is what [`crate::locks`] locks to make that read complete.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use refstream_core::fraud::{ComponentSummary, Graph};
use serde_json::{json, Value as Json};
use sqlx::PgConnection;

/// The most accounts followed when exploring the components of one batch. Components that large
/// are a ring or a data problem either way; the cap keeps one hot identifier (an emulator's
/// device id) from turning every batch into a walk over the whole table.
pub const MAX_WALK: i64 = 20_000;

/// The component of one account, as explain shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Component {
    /// Every account in the component, sorted; at least the account itself.
    pub members: Vec<String>,
    /// The exploration stopped at [`MAX_WALK`] accounts.
    pub truncated: bool,
    /// Identifiers shared by two or more members, counted by kind.
    pub shared: BTreeMap<String, u32>,
    /// Referrals whose referrer and referee are both members.
    pub inner_referrals: u32,
    /// The component is a ring under the policy's `ring_min_size`.
    pub is_ring: bool,
}

impl Component {
    fn from_summary(s: ComponentSummary, truncated: bool) -> Self {
        Self { members: s.members, truncated, shared: s.shared, inner_referrals: s.inner_referrals, is_ring: s.is_ring }
    }

    /// The evidence's `ring_size`: the component's size when it is a ring, 0 otherwise.
    pub fn ring_size(&self) -> u32 {
        if self.is_ring {
            u32::try_from(self.members.len()).unwrap_or(u32::MAX)
        } else {
            0
        }
    }

    /// What explain shows about the component.
    pub fn to_json(&self) -> Json {
        const SHOWN: usize = 25;
        json!({
            "accounts": self.members.len(),
            "members": self.members.iter().take(SHOWN).collect::<Vec<_>>(),
            "members_not_shown": self.members.len().saturating_sub(SHOWN),
            "truncated": self.truncated,
            "shared_identifiers": self.shared,
            "inner_referrals": self.inner_referrals,
            "is_ring": self.is_ring,
        })
    }
}

/// The components of every account a batch touches.
#[derive(Debug, Default)]
pub struct Components {
    graph: Graph,
    members: BTreeSet<String>,
    truncated: bool,
    /// The lock key (`kind:value`) of every identifier the walk reached.
    identifiers: BTreeSet<String>,
}

impl Components {
    /// True when `user`'s component was loaded.
    pub fn covers(&self, user: &str) -> bool {
        self.members.contains(user)
    }

    /// The component of `user`.
    pub fn of(&self, user: &str) -> Component {
        Component::from_summary(self.graph.of(user), self.truncated)
    }

    /// The members of every ring, each with the representative of its ring.
    pub fn ring_members(&self) -> Vec<(&str, &str)> {
        self.graph.rings().flat_map(|r| r.members.iter().map(|m| (self.graph.representative(m), m.as_str()))).collect()
    }

    /// The representative of `user`'s component.
    pub fn representative<'a>(&'a self, user: &'a str) -> &'a str {
        self.graph.representative(user)
    }

    /// The walk stopped at [`MAX_WALK`] accounts.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The lock key (`kind:value`) of every identifier the walk reached.
    pub fn identifiers(&self) -> &BTreeSet<String> {
        &self.identifiers
    }
}

/// The accounts of `accounts` the scorer meets for the first time: neither the referee nor the
/// referrer of a referral it has assessed. An account's device and mailbox are in the graph once
/// it is met (see [`components`]), so a batch that meets one locks its identifiers and walks from
/// it ([`crate::locks`]). Index probes per account and per referral, whatever the tables'
/// statistics (`OFFSET 0` keeps them probes: as anti-joins, or as a join inside the `EXISTS`,
/// the planner hashed every referral or assessment for a batch while the tables filled up).
pub async fn newly_met(conn: &mut PgConnection, accounts: &[&str]) -> sqlx::Result<BTreeSet<String>> {
    let first: Vec<String> = sqlx::query_scalar(
        "SELECT b.u FROM (SELECT DISTINCT u FROM unnest($1::text[]) AS u) AS b \
         CROSS JOIN LATERAL (SELECT EXISTS (SELECT 1 FROM referrals rf \
               CROSS JOIN LATERAL (SELECT 1 FROM assessments a WHERE a.referral_id = rf.referral_id OFFSET 0) AS a WHERE rf.referrer_id = b.u) \
           OR EXISTS (SELECT 1 FROM referrals rf \
               CROSS JOIN LATERAL (SELECT 1 FROM assessments a WHERE a.referral_id = rf.referral_id OFFSET 0) AS a WHERE rf.referee_id = b.u) \
           AS met OFFSET 0) AS m \
         WHERE NOT m.met",
    )
    .bind(accounts)
    .fetch_all(conn)
    .await?;
    Ok(first.into_iter().collect())
}

/// The lock keys of the payment instruments in `cards` (`(user, fingerprint)`).
pub fn payment_keys(cards: &[(&str, &str)]) -> BTreeSet<String> {
    cards.iter().map(|(_, v)| format!("payment:{v}")).collect()
}

/// What recording a batch's payment links found: whether a card of the batch is used by more
/// than one account, and the `(user, card)` links that are new.
pub struct Linked {
    pub shared: bool,
    pub new: BTreeSet<(String, String)>,
}

/// Records every `(user, card)` link of a batch (`at`: when each card was used) in one sorted
/// insert and, in the same statement, asks whether a card of the batch was already used by
/// another account: the statement's reads see the table as it was before its insert, so
/// `shared` is exactly what a check before the insert would answer (cards the batch itself
/// gives to two accounts count too). The caller holds the cards' locks, so a concurrent batch
/// linking one of them has committed before this statement began, or waits for this one.
pub async fn link_payments(conn: &mut PgConnection, cards: &[(&str, &str)], at: &[DateTime<Utc>]) -> sqlx::Result<Linked> {
    let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
    let shared_within = cards.iter().any(|(user, card)| owners.insert(card, user).is_some_and(|other| other != *user));
    let users: Vec<&str> = cards.iter().map(|(u, _)| *u).collect();
    let values: Vec<&str> = cards.iter().map(|(_, v)| *v).collect();
    let (shared_before, new_users, new_values): (bool, Vec<String>, Vec<String>) = sqlx::query_as(
        "WITH b AS (SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS b(u, v, t)), \
         ins AS (INSERT INTO identity_links (kind, value, user_id, first_seen_at) \
           SELECT 'payment', v, u, min(t) FROM b GROUP BY v, u ORDER BY v, u ON CONFLICT DO NOTHING RETURNING user_id, value) \
         SELECT EXISTS (SELECT 1 FROM b CROSS JOIN LATERAL ( \
                  SELECT 1 FROM identity_links l WHERE l.kind = 'payment' AND l.value = b.v AND l.user_id <> b.u LIMIT 1) AS l), \
                i.users, i.cards \
         FROM (SELECT COALESCE(array_agg(user_id), '{}') AS users, COALESCE(array_agg(value), '{}') AS cards FROM ins) i",
    )
    .bind(&users)
    .bind(&values)
    .bind(at)
    .fetch_one(conn)
    .await?;
    let inserted = new_users.into_iter().zip(new_values);
    Ok(Linked { shared: shared_within || shared_before, new: inserted.collect() })
}

/// The components of `users` and of `alone`, and which of them are rings of at least
/// `ring_min_size` accounts: one statement whatever the number of users. `alone`: accounts the
/// caller read, under the locks of their identifiers, as sharing no identifier with another
/// account; each is a component of its own, not walked. `meeting`: the accounts the caller's
/// batch meets (its referrals' referees and referrers), met here though their assessments are
/// not written yet.
///
/// An account's payment instruments are its `identity_links`; its device and mailbox are its
/// `users` row's, and they link it only once the scorer has met it: it is in `meeting`, or the
/// referee or referrer of an assessed referral. So the graph is what the scorer has read, not
/// what attribution has written ahead of it, exactly as when those links were copied into
/// `identity_links` by the batch that met the account (migration 20261210100000).
pub async fn components(
    conn: &mut PgConnection,
    users: &[String],
    alone: &[String],
    meeting: &[String],
    ring_min_size: u32,
) -> sqlx::Result<Components> {
    if users.is_empty() && alone.is_empty() {
        return Ok(Components::default());
    }
    // Tagged rows: 'g' a shared identifier (kind, its accounts), 'r' a referral among linked
    // accounts ([referrer, referee]), 'k' the lock keys of every identifier reached, 'n' how many
    // accounts the walk reached. Each account of the walk carries whether it is met (computed
    // once, `OFFSET 0` keeping it a subquery instead of a copy in each use): an account reached
    // through a device or a mailbox counts only when met, one reached through a card always.
    // `OFFSET 0` keeps every lookup an index lookup per account: flattened, the planner (which
    // guesses 2,000 rows for a recursive step) merge-joins whole tables instead, so each batch's
    // walk grew with the table (368 ms for 330 seeds over 80,000 links, 20 ms as lookups). The
    // seeds take the collation of the user ids ("C", migration 20261205100000): a recursive
    // query's terms must agree.
    let rows: Vec<(String, Option<String>, Vec<String>)> = if users.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "WITH RECURSIVE comp(user_id, met) AS ( \
           SELECT s.u, m.met FROM (SELECT DISTINCT u COLLATE \"C\" AS u FROM unnest($1::text[]) AS u) AS s \
             CROSS JOIN LATERAL (SELECT s.u IN (SELECT unnest($3::text[])) \
               OR EXISTS (SELECT 1 FROM referrals rf JOIN assessments a USING (referral_id) WHERE rf.referee_id = s.u) \
               OR EXISTS (SELECT 1 FROM referrals rf JOIN assessments a USING (referral_id) WHERE rf.referrer_id = s.u) AS met OFFSET 0) AS m \
           UNION \
           SELECT b.user_id, b.met FROM comp \
             CROSS JOIN LATERAL ((SELECT kind, value FROM identity_links WHERE user_id = comp.user_id OFFSET 0) \
               UNION ALL \
               SELECT x.kind, x.value FROM users s CROSS JOIN LATERAL (VALUES ('device', s.device_id), ('email', s.email_hash)) AS x(kind, value) \
                 WHERE comp.met AND s.user_id = comp.user_id AND x.value IS NOT NULL) AS i \
             CROSS JOIN LATERAL (SELECT c.user_id, m.met FROM ( \
                 (SELECT user_id FROM identity_links WHERE i.kind = 'payment' AND kind = 'payment' AND value = i.value OFFSET 0) \
                 UNION ALL SELECT user_id FROM users WHERE i.kind = 'device' AND device_id = i.value \
                 UNION ALL SELECT user_id FROM users WHERE i.kind = 'email' AND email_hash = i.value) AS c \
               CROSS JOIN LATERAL (SELECT c.user_id IN (SELECT unnest($3::text[])) \
                 OR EXISTS (SELECT 1 FROM referrals rf JOIN assessments a USING (referral_id) WHERE rf.referee_id = c.user_id) \
                 OR EXISTS (SELECT 1 FROM referrals rf JOIN assessments a USING (referral_id) WHERE rf.referrer_id = c.user_id) AS met OFFSET 0) AS m \
               WHERE i.kind = 'payment' OR m.met) AS b \
         ), \
         m AS MATERIALIZED (SELECT user_id, met FROM comp LIMIT $2), \
         ids AS MATERIALIZED (SELECT l.kind, l.value, m.user_id FROM m \
           CROSS JOIN LATERAL ((SELECT kind, value FROM identity_links WHERE user_id = m.user_id OFFSET 0) \
             UNION ALL \
             SELECT x.kind, x.value FROM users s CROSS JOIN LATERAL (VALUES ('device', s.device_id), ('email', s.email_hash)) AS x(kind, value) \
               WHERE m.met AND s.user_id = m.user_id AND x.value IS NOT NULL) AS l), \
         g AS MATERIALIZED (SELECT kind, array_agg(user_id ORDER BY user_id) AS users FROM ids \
           GROUP BY kind, value HAVING count(*) > 1), \
         linked AS MATERIALIZED (SELECT DISTINCT unnest(users) AS user_id FROM g) \
         SELECT 'g', kind, users FROM g \
         UNION ALL \
         SELECT 'r', NULL, ARRAY[r.referrer_id, r.referee_id] FROM linked e \
           CROSS JOIN LATERAL (SELECT referrer_id, referee_id FROM referrals WHERE referee_id = e.user_id) AS r \
           WHERE r.referrer_id IN (SELECT user_id FROM linked) \
         UNION ALL \
         SELECT 'k', NULL, COALESCE(array_agg(DISTINCT kind || ':' || value), '{}') FROM ids \
         UNION ALL \
         SELECT 'n', NULL, ARRAY[count(*)::text] FROM m",
        )
        .bind(users)
        .bind(MAX_WALK + 1)
        .bind(meeting)
        .fetch_all(&mut *conn)
        .await?
    };
    let mut groups = Vec::new();
    let mut referrals = Vec::new();
    let mut truncated = false;
    let mut identifiers = BTreeSet::new();
    for (tag, kind, mut users) in rows {
        match (tag.as_str(), kind) {
            ("g", Some(kind)) => groups.push((kind, users)),
            ("r", _) if users.len() == 2 => {
                let referee = users.pop().unwrap_or_default();
                let referrer = users.pop().unwrap_or_default();
                referrals.push((referrer, referee));
            }
            ("k", _) => identifiers.extend(users),
            ("n", _) => truncated = users.first().and_then(|n| n.parse::<i64>().ok()).is_some_and(|n| n > MAX_WALK),
            _ => {}
        }
    }
    // Every account the walk reached beyond the seeds shares an identifier with another.
    let members: BTreeSet<String> = users.iter().chain(alone).cloned().chain(groups.iter().flat_map(|(_, u)| u.iter().cloned())).collect();
    let accounts: Vec<String> = members.iter().cloned().collect();
    let min = usize::try_from(ring_min_size).unwrap_or(usize::MAX);
    Ok(Components { graph: Graph::build(&accounts, &groups, &referrals, min), members, truncated, identifiers })
}
