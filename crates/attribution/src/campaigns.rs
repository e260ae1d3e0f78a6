//! Binds each new referral to the campaign and terms version in force at its referee's
//! registration (`refstream_core::campaigns::bind`): the code's campaign, else the targeted one
//! of highest priority, else the default campaign (version 0). Reads the campaigns' recorded
//! versions and the referees' country and platform, one query each per batch; the referral's
//! `campaign_id` (and its ReferralAttributed's), `terms_version` and `campaign_reason` follow.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use refstream_core::campaigns::{bind, Definition, Version};
use sqlx::PgConnection;

use crate::Referral;

/// A stored version: id, version, active, in force from, definition.
type VersionRow = (String, i32, bool, DateTime<Utc>, sqlx::types::Json<Definition>);

/// Every recorded version of every data campaign (a small table: one row per change).
pub async fn versions(conn: &mut PgConnection) -> sqlx::Result<Vec<Version>> {
    let rows: Vec<VersionRow> = sqlx::query_as("SELECT campaign_id, version, active, effective_from, definition FROM campaign_versions")
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(campaign_id, version, active, effective_from, definition)| match definition.0.validate() {
            Ok((_, targeting)) => {
                Some(Version { campaign_id, version, active, effective_from, priority: definition.0.priority, targeting })
            }
            Err(e) => {
                // Validated when applied: one edited by hand into nonsense binds nobody.
                tracing::error!(campaign = %campaign_id, version, error = %e, "stored campaign version does not validate: skipped");
                None
            }
        })
        .collect())
}

/// The stored versions as last read, with how many rows `campaign_versions` had then. The
/// table is append-only (its triggers refuse updates and deletes), so the same count means the
/// same rows: a batch reads the count (one index-only count) and decodes and validates every
/// version again only when it grew — not each batch, which at a low load is each registration,
/// however many versions years of edits, pauses and resumes left.
#[derive(Default)]
pub struct VersionCache(std::sync::Mutex<Option<(i64, std::sync::Arc<Vec<Version>>)>>);

impl VersionCache {
    /// The stored versions, as of the caller's transaction's snapshot.
    pub async fn get(&self, conn: &mut PgConnection) -> sqlx::Result<std::sync::Arc<Vec<Version>>> {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM campaign_versions").fetch_one(&mut *conn).await?;
        if let Some((n, cached)) = self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            if *n == rows {
                return Ok(cached.clone());
            }
        }
        // Read after the count, so at least the rows counted (the table only grows); one added
        // in between is read now, and the next batch's count differs and reads them again.
        let fresh = std::sync::Arc::new(versions(conn).await?);
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((rows, fresh.clone()));
        Ok(fresh)
    }
}

/// Country and platform by user id.
pub(crate) type Profiles = HashMap<String, (Option<String>, String)>;

/// Binds `referrals` (their events carry the code's campaign) to their campaign versions.
/// `known`: referees' country and platform already at hand (users not stored yet); the others
/// are read from `users`.
pub(crate) async fn bind_all(
    conn: &mut PgConnection,
    cache: &VersionCache,
    referrals: Vec<&mut Referral>,
    default_id: &str,
    known: &Profiles,
) -> sqlx::Result<()> {
    if referrals.is_empty() {
        return Ok(());
    }
    let versions = cache.get(conn).await?;
    let referees: Vec<String> = referrals.iter().map(|r| r.event.referee_id.to_string()).filter(|u| !known.contains_key(u)).collect();
    let rows: Vec<(String, Option<String>, String)> = if referees.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as("SELECT user_id, country, platform FROM users WHERE user_id = ANY($1)").bind(&referees).fetch_all(&mut *conn).await?
    };
    let mut users: Profiles = rows.into_iter().map(|(u, c, p)| (u, (c, p))).collect();
    users.extend(known.iter().map(|(u, p)| (u.clone(), p.clone())));
    for r in referrals {
        let user = users.get(r.event.referee_id.as_str());
        let (country, platform) = user.map_or((None, ""), |(c, p)| (c.as_deref(), p.as_str()));
        let b = bind(&versions, &r.event.campaign_id, country, platform, r.event.referee_registered_at, default_id);
        r.event.campaign_id = b.campaign_id;
        r.terms_version = b.version;
        r.campaign_reason = b.reason;
    }
    Ok(())
}
