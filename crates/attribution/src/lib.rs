//! The attribution worker: consumes `user-registered`, mints every new user a unique referral
//! code, and attributes a user who arrived with a code (or a referral-link click id) to the
//! code's owner. A user is registered once (`users.user_id`), referred at most once
//! (`referrals.referee_id`), and never by themself; an unknown or expired code creates no
//! referral. Each referral and its `ReferralAttributed` commit in one transaction.
//!
//! A batch is set-based: users, codes and referrals are each written with one `UNNEST` insert
//! (codes drawn again only for the rare collision), the clicks and codes the batch claims are
//! read with one query each, and every decision is a pure function of
//! `refstream_core::attribution` over what was loaded. Within a batch the first registration
//! of a user id wins, as it would one event at a time.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use refstream_core::attribution::{claim, referrer, Claim, CodeOwner, NoReferral};
use refstream_core::code;
use refstream_core::events::{ReferralAttributed, UserRegistered};
use refstream_core::fraud::{canonical_email, email_domain, ip_prefix, keyed_hash};
use refstream_core::{DerivedId, UserId};
use refstream_runtime::codec::{AvroRecord, Decoder};
use refstream_runtime::consumer::{Batch, Inbound, Rejection, Worker};
use refstream_runtime::metrics::OUTCOMES;
use refstream_runtime::outbox::{enqueue, OutboxMessage};
use refstream_runtime::Settings;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgConnection;
use uuid::Uuid;

pub struct Attribution {
    decoder: Decoder,
    topic_in: String,
    topic_out: String,
    campaign_id: String,
    /// Key of the HMAC that turns emails and IPs into stored hashes.
    hash_key: SecretString,
}

/// A `users` row as attribution writes it (hashes already keyed).
struct UserRow<'a> {
    event: &'a UserRegistered,
    ip_hash: Option<String>,
    ip_prefix_hash: Option<String>,
    email_hash: Option<String>,
    email_domain: Option<String>,
}

impl Attribution {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            decoder: Decoder::new(settings.confluent_ids()?),
            topic_in: settings.topics.user_registered.clone(),
            topic_out: settings.topics.referral_attributed.clone(),
            campaign_id: settings.campaign.id.clone(),
            hash_key: settings.fraud.hash_key.clone(),
        })
    }

    fn user_row<'a>(&self, e: &'a UserRegistered) -> UserRow<'a> {
        let key = self.hash_key.expose_secret().as_bytes();
        let email = e.email.as_deref().and_then(canonical_email);
        UserRow {
            event: e,
            ip_hash: e.ip.map(|ip| keyed_hash(key, &ip.to_string())),
            ip_prefix_hash: e.ip.map(|ip| keyed_hash(key, &ip_prefix(ip))),
            email_hash: email.as_deref().map(|m| keyed_hash(key, m)),
            email_domain: email.as_deref().map(|m| email_domain(m).to_owned()),
        }
    }

    /// Registers the batch's users and attributes the new ones; one outcome per event, in order.
    async fn register(
        &self,
        conn: &mut PgConnection,
        events: &[UserRegistered],
    ) -> sqlx::Result<Vec<Result<ReferralAttributed, NoReferral>>> {
        let mut first = HashSet::new();
        let rows: Vec<UserRow> = events.iter().filter(|e| first.insert(e.user_id.as_str())).map(|e| self.user_row(e)).collect();
        let inserted = insert_users(conn, &rows).await?;
        let fresh: Vec<&UserRegistered> = rows.iter().map(|r| r.event).filter(|e| inserted.contains(e.user_id.as_str())).collect();
        mint_codes(conn, &fresh, &self.campaign_id).await?;

        let clicks = click_codes(conn, fresh.iter().filter_map(|e| e.click_id.clone()).collect()).await?;
        let claims: HashMap<&str, Result<Claim, NoReferral>> = fresh
            .iter()
            .map(|e| (e.user_id.as_str(), claim(e.referral_code.as_deref(), e.click_id.as_deref(), |id| clicks.get(id).cloned())))
            .collect();
        let owners = code_owners(conn, claims.values().filter_map(|c| c.as_ref().ok()).map(|c| c.code.clone()).collect()).await?;

        let mut decided: HashMap<&str, Result<ReferralAttributed, NoReferral>> = HashMap::new();
        for e in &fresh {
            let outcome = claims[e.user_id.as_str()].clone().and_then(|c| {
                let owner = referrer(owners.get(&c.code), e.user_id.as_str(), e.occurred_at)?;
                // Stored owners were written from validated ids; one that no longer reads as an id
                // (edited by hand) attributes nobody rather than stopping the partition.
                attributed(e, c, owner).ok_or(NoReferral::UnknownCode)
            });
            decided.insert(e.user_id.as_str(), outcome);
        }
        let referred = insert_referrals(conn, decided.values().filter_map(|d| d.as_ref().ok()).collect()).await?;

        let mut outcomes = Vec::with_capacity(events.len());
        let mut answered = HashSet::new();
        for e in events {
            let user = e.user_id.as_str();
            let outcome = match decided.get(user) {
                Some(_) if !answered.insert(user) => Err(NoReferral::AlreadyRegistered),
                None => Err(NoReferral::AlreadyRegistered),
                Some(Ok(_)) if !referred.contains(user) => Err(NoReferral::AlreadyReferred),
                Some(d) => d.clone(),
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }
}

fn attributed(e: &UserRegistered, c: Claim, owner: &CodeOwner) -> Option<ReferralAttributed> {
    let referral_id = DerivedId::referral(&e.user_id);
    Some(ReferralAttributed {
        event_id: DerivedId::event("referral-attributed", referral_id),
        referral_id,
        referrer_id: UserId::parse(owner.user_id.clone()).ok()?,
        referee_id: e.user_id.clone(),
        referral_code: c.code,
        campaign_id: owner.campaign_id.clone(),
        attribution: c.source,
        referee_registered_at: e.occurred_at,
        occurred_at: e.occurred_at,
    })
}

/// Inserts the users not registered yet; returns their ids.
async fn insert_users(conn: &mut PgConnection, rows: &[UserRow<'_>]) -> sqlx::Result<HashSet<String>> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let col = |f: &dyn Fn(&UserRow) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let ids: Vec<String> = sqlx::query_scalar(
        "INSERT INTO users (user_id, registered_at, platform, device_id, ip_hash, ip_prefix_hash, email_hash, email_domain, country) \
         SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[]) \
         ON CONFLICT (user_id) DO NOTHING RETURNING user_id",
    )
    .bind(col(&|r| Some(r.event.user_id.to_string())))
    .bind(rows.iter().map(|r| r.event.occurred_at).collect::<Vec<_>>())
    .bind(col(&|r| Some(r.event.platform.clone())))
    .bind(col(&|r| r.event.device_id.clone()))
    .bind(col(&|r| r.ip_hash.clone()))
    .bind(col(&|r| r.ip_prefix_hash.clone()))
    .bind(col(&|r| r.email_hash.clone()))
    .bind(col(&|r| r.email_domain.clone()))
    .bind(col(&|r| r.event.country.clone()))
    .fetch_all(&mut *conn)
    .await?;
    Ok(ids.into_iter().collect())
}

/// Gives each of `users` a fresh code, drawing again for the (rare: 1 in 2^40 per existing
/// code) collision.
async fn mint_codes(conn: &mut PgConnection, users: &[&UserRegistered], campaign_id: &str) -> sqlx::Result<()> {
    let mut pending: Vec<&UserRegistered> = users.to_vec();
    while !pending.is_empty() {
        let mut draws: Vec<(String, &UserRegistered)> = pending.iter().map(|u| (code::mint(), *u)).collect();
        draws.sort_by(|a, b| a.0.cmp(&b.0));
        let minted: HashSet<String> = sqlx::query_scalar(
            "INSERT INTO referral_codes (code, user_id, campaign_id, created_at) \
             SELECT c, u, $3, t FROM unnest($1::text[], $2::text[], $4::timestamptz[]) AS d(c, u, t) \
             ON CONFLICT (code) DO NOTHING RETURNING user_id",
        )
        .bind(draws.iter().map(|d| d.0.clone()).collect::<Vec<_>>())
        .bind(draws.iter().map(|d| d.1.user_id.to_string()).collect::<Vec<_>>())
        .bind(campaign_id)
        .bind(draws.iter().map(|d| d.1.occurred_at).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
        if minted.len() < pending.len() {
            tracing::info!(collisions = pending.len() - minted.len(), "referral code collision: drawing again");
        }
        pending.retain(|u| !minted.contains(u.user_id.as_str()));
    }
    Ok(())
}

/// The codes of the links these click ids were issued for.
async fn click_codes(conn: &mut PgConnection, click_ids: Vec<String>) -> sqlx::Result<HashMap<String, String>> {
    if click_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT click_id, code FROM referral_clicks WHERE click_id = ANY($1)").bind(click_ids).fetch_all(&mut *conn).await?;
    Ok(rows.into_iter().collect())
}

/// Who owns each of `codes` (codes nobody owns are absent).
async fn code_owners(conn: &mut PgConnection, codes: Vec<String>) -> sqlx::Result<BTreeMap<String, CodeOwner>> {
    if codes.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows: Vec<(String, String, String, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT code, user_id, campaign_id, expires_at FROM referral_codes WHERE code = ANY($1)")
            .bind(codes)
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows.into_iter().map(|(code, user_id, campaign_id, expires_at)| (code, CodeOwner { user_id, campaign_id, expires_at })).collect())
}

/// Inserts the referrals of referees not referred yet (in `referral_id` order); returns those
/// referees.
async fn insert_referrals(conn: &mut PgConnection, mut referrals: Vec<&ReferralAttributed>) -> sqlx::Result<HashSet<String>> {
    if referrals.is_empty() {
        return Ok(HashSet::new());
    }
    referrals.sort_by_key(|r| r.referral_id);
    let referees: Vec<String> = sqlx::query_scalar(
        "INSERT INTO referrals (referral_id, referrer_id, referee_id, code, campaign_id, attribution, referee_registered_at) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[]) \
         ON CONFLICT (referee_id) DO NOTHING RETURNING referee_id",
    )
    .bind(referrals.iter().map(|r| r.referral_id).collect::<Vec<Uuid>>())
    .bind(referrals.iter().map(|r| r.referrer_id.to_string()).collect::<Vec<_>>())
    .bind(referrals.iter().map(|r| r.referee_id.to_string()).collect::<Vec<_>>())
    .bind(referrals.iter().map(|r| r.referral_code.clone()).collect::<Vec<_>>())
    .bind(referrals.iter().map(|r| r.campaign_id.clone()).collect::<Vec<_>>())
    .bind(referrals.iter().map(|r| r.attribution.as_str().to_owned()).collect::<Vec<_>>())
    .bind(referrals.iter().map(|r| r.referee_registered_at).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    Ok(referees.into_iter().collect())
}

impl Worker for Attribution {
    type Event = UserRegistered;

    fn name(&self) -> &'static str {
        "attribution"
    }

    fn topics(&self) -> Vec<String> {
        vec![self.topic_in.clone()]
    }

    fn decode(&self, record: &Inbound<'_>, now: DateTime<Utc>) -> Result<UserRegistered, Rejection> {
        Ok(self.decoder.decode(record.payload, now)?)
    }

    fn event_id(&self, event: &UserRegistered) -> Uuid {
        event.event_id()
    }

    async fn apply(&self, batch: &mut Batch<'_>, events: &[UserRegistered]) -> sqlx::Result<()> {
        let mut out = Vec::new();
        for (e, outcome) in events.iter().zip(self.register(batch.conn, events).await?) {
            match outcome {
                Ok(attributed) => {
                    OUTCOMES.with_label_values(&["attribution", "referral_attributed"]).inc();
                    out.push(OutboxMessage::record(&self.topic_out, attributed.referee_id.as_str(), &attributed));
                }
                Err(why) => {
                    OUTCOMES.with_label_values(&["attribution", why.label()]).inc();
                    if why != NoReferral::NoCode {
                        tracing::info!(user = %e.user_id, outcome = why.label(), "no referral");
                    }
                }
            }
        }
        enqueue(batch.conn, 0, &out).await
    }
}
