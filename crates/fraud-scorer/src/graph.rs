//! The scorer's graph of hard links (`identity_links`): accounts that share a device id, a
//! normalized email (its keyed hash) or a payment instrument are linked, and a connected
//! component of at least `ring_min_size` accounts within which one account referred another is a
//! fraud ring. The links are gathered here; what counts as a ring is decided by the pure
//! [`refstream_core::fraud::ring_members`], so the rule is the one the domain tests pin down.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use refstream_core::fraud::ring_members;
use serde_json::{json, Value as Json};
use sqlx::PgConnection;

/// The most accounts followed when exploring one component. A component that large is a ring
/// or a data problem either way; the cap keeps one hot identifier (an emulator's device id)
/// from turning every score into a walk over the whole table.
pub const MAX_COMPONENT: i64 = 2_000;

/// The component of one account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Component {
    /// Every account in the component, sorted; at least the account itself.
    pub members: Vec<String>,
    /// The exploration stopped at [`MAX_COMPONENT`] accounts.
    pub truncated: bool,
    /// Identifiers shared by two or more members, counted by kind.
    pub shared: BTreeMap<String, u32>,
    /// Referrals whose referrer and referee are both members.
    pub inner_referrals: u32,
    /// The component is a ring under the policy's `ring_min_size`.
    pub is_ring: bool,
}

impl Component {
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

/// Records the device and email links of `users` from their `users` rows.
pub async fn link_users(conn: &mut PgConnection, users: &[&str], at: DateTime<Utc>) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "INSERT INTO identity_links (kind, value, user_id, first_seen_at) \
         SELECT x.kind, x.value, u.user_id, $2 FROM users u, \
           LATERAL (VALUES ('device', u.device_id), ('email', u.email_hash)) AS x(kind, value) \
         WHERE u.user_id = ANY($1) AND x.value IS NOT NULL \
         ON CONFLICT DO NOTHING",
    )
    .bind(users)
    .bind(at)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Takes the transaction's advisory lock of every payment instrument in `cards`
/// (`(user, fingerprint)`), in lock order.
pub async fn lock_payment_values(conn: &mut PgConnection, cards: &[(&str, &str)]) -> sqlx::Result<()> {
    let values: Vec<&str> = cards.iter().map(|(_, v)| *v).collect();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(h) FROM \
         (SELECT DISTINCT hashtextextended('payment:' || v, 2718) AS h FROM unnest($1::text[]) AS v) AS locks ORDER BY h",
    )
    .bind(&values)
    .execute(conn)
    .await?;
    Ok(())
}

/// True when a card of `cards` is (or becomes, within the batch) used by more than one account.
pub async fn any_card_shared(conn: &mut PgConnection, cards: &[(&str, &str)]) -> sqlx::Result<bool> {
    let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
    for (user, card) in cards {
        if owners.insert(card, user).is_some_and(|other| other != *user) {
            return Ok(true);
        }
    }
    let users: Vec<&str> = cards.iter().map(|(u, _)| *u).collect();
    let values: Vec<&str> = cards.iter().map(|(_, v)| *v).collect();
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM identity_links l JOIN unnest($1::text[], $2::text[]) AS b(u, v) \
         ON l.kind = 'payment' AND l.value = b.v AND l.user_id <> b.u)",
    )
    .bind(&users)
    .bind(&values)
    .fetch_one(conn)
    .await
}

/// Records every `(user, card)` link of a batch in one insert (`at`: when each card was used).
pub async fn link_payments(conn: &mut PgConnection, cards: &[(&str, &str)], at: &[DateTime<Utc>]) -> sqlx::Result<()> {
    let users: Vec<&str> = cards.iter().map(|(u, _)| *u).collect();
    let values: Vec<&str> = cards.iter().map(|(_, v)| *v).collect();
    sqlx::query(
        "INSERT INTO identity_links (kind, value, user_id, first_seen_at) \
         SELECT 'payment', v, u, t FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS b(u, v, t) ON CONFLICT DO NOTHING",
    )
    .bind(&users)
    .bind(&values)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that `user` paid with `fingerprint`; true when the link is new.
pub async fn link_payment(conn: &mut PgConnection, user: &str, fingerprint: &str, at: DateTime<Utc>) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO identity_links (kind, value, user_id, first_seen_at) VALUES ('payment', $1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(fingerprint)
    .bind(user)
    .bind(at)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1)
}

/// The component of `user` and whether it is a ring of at least `ring_min_size` accounts.
pub async fn component_of(conn: &mut PgConnection, user: &str, ring_min_size: u32) -> sqlx::Result<Component> {
    let mut members: Vec<String> = sqlx::query_scalar(
        "WITH RECURSIVE comp(user_id) AS ( \
           SELECT $1::text \
           UNION \
           SELECT b.user_id FROM comp \
             JOIN identity_links a ON a.user_id = comp.user_id \
             JOIN identity_links b ON b.kind = a.kind AND b.value = a.value \
         ) SELECT user_id FROM comp LIMIT $2",
    )
    .bind(user)
    .bind(MAX_COMPONENT + 1)
    .fetch_all(&mut *conn)
    .await?;
    let truncated = members.len() > usize::try_from(MAX_COMPONENT).unwrap_or(usize::MAX);
    members.truncate(usize::try_from(MAX_COMPONENT).unwrap_or(usize::MAX));
    members.sort();
    if members.len() < 2 {
        return Ok(Component { members, ..Component::default() });
    }
    let groups: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT kind, array_agg(user_id ORDER BY user_id) FROM identity_links WHERE user_id = ANY($1) \
         GROUP BY kind, value HAVING count(*) > 1",
    )
    .bind(&members)
    .fetch_all(&mut *conn)
    .await?;
    let referrals: Vec<(String, String)> =
        sqlx::query_as("SELECT referrer_id, referee_id FROM referrals WHERE referee_id = ANY($1) AND referrer_id = ANY($1)")
            .bind(&members)
            .fetch_all(&mut *conn)
            .await?;
    let mut shared: BTreeMap<String, u32> = BTreeMap::new();
    let mut links = Vec::new();
    for (kind, users) in groups {
        *shared.entry(kind).or_default() += 1;
        // A star per identifier connects its users as well as every pair would.
        for other in users.iter().skip(1) {
            links.push((users[0].clone(), other.clone()));
        }
    }
    let min = usize::try_from(ring_min_size).unwrap_or(usize::MAX);
    let is_ring = ring_members(&links, &referrals, min).contains(user);
    Ok(Component { members, truncated, shared, inner_referrals: u32::try_from(referrals.len()).unwrap_or(u32::MAX), is_ring })
}
