//! The attribution worker: consumes `user-registered` and `referral-clicked`, mints every new
//! user a unique referral code, and attributes a user who arrived with a code, a referral-link
//! click id, or earlier clicks of the same cookie or device, to the owner of the winning touch
//! (`campaign.touch`: first or last). A user is registered once (`users.user_id`), referred at
//! most once (`referrals.referee_id`), and never by themself; an unknown or expired code, or a
//! click outside `attribution.click_window_days`, creates no referral. A registration whose
//! click id is not recorded yet waits, and is decided when the click lands, from the same
//! event times: the outcome does not depend on which of the two was read first. Each referral
//! and its `ReferralAttributed` commit in one transaction.
//!
//! A batch is set-based: users, codes and referrals are each written with one `UNNEST` insert
//! (codes drawn again only for the rare collision), the clicks and codes the batch needs are
//! read with one query each, and every decision is a pure function of
//! `refstream_core::attribution` over what was loaded. Within a batch the first registration
//! of a user id wins, as it would one event at a time.

mod campaigns;
mod clicks;

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use refstream_core::attribution::{
    decide, decide_without_click, ClickMatch, CodeOwner, Decision, NoReferral, Registration, TouchRules, Won,
};
use refstream_core::code;
use refstream_core::events::{ReferralAttributed, ReferralClicked, UserRegistered};
use refstream_core::fraud::{canonical_email, email_domain, ip_prefix, keyed_hash};
use refstream_core::{DerivedId, UserId};
use refstream_runtime::codec::{AvroRecord, Decoder};
use refstream_runtime::consumer::{Batch, Inbound, Rejection, Worker};
use refstream_runtime::metrics::OUTCOMES;
use refstream_runtime::outbox::{enqueue, OutboxMessage};
use refstream_runtime::Settings;
use rust_decimal::Decimal;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgConnection;
use uuid::Uuid;

use clicks::{RelatedTo, Waiting};

pub struct Attribution {
    decoder: Decoder,
    topic_registered: String,
    topic_clicked: String,
    topic_out: String,
    campaign_id: String,
    rules: TouchRules,
    /// How long a minted code attributes (`None`: for ever).
    code_validity: Option<chrono::Duration>,
    /// Key of the HMAC that turns emails and IPs into stored hashes.
    hash_key: SecretString,
    /// The campaigns' stored versions, read again only when one was added.
    versions: campaigns::VersionCache,
}

/// One input of the attribution worker.
#[derive(Debug, Clone)]
pub enum Input {
    Registered(UserRegistered),
    Clicked(ReferralClicked),
}

/// A `users` row as attribution writes it (hashes already keyed).
struct UserRow<'a> {
    event: &'a UserRegistered,
    ip_hash: Option<String>,
    ip_prefix_hash: Option<String>,
    email_hash: Option<String>,
    email_domain: Option<String>,
}

/// A decided referral, ready to insert and announce.
struct Referral {
    event: ReferralAttributed,
    won: Won,
    network_clicks: Option<i32>,
    /// The campaign version the referral pays by (0: the default campaign) and why.
    terms_version: i32,
    campaign_reason: String,
}

type Outcome = Result<Referral, Option<NoReferral>>;

impl Attribution {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            decoder: Decoder::new(settings.confluent_ids()?),
            topic_registered: settings.topics.user_registered.clone(),
            topic_clicked: settings.topics.referral_clicked.clone(),
            topic_out: settings.topics.referral_attributed.clone(),
            campaign_id: settings.campaign.id.clone(),
            rules: settings.touch_rules()?,
            code_validity: settings.code_validity(),
            hash_key: settings.fraud.hash_key.clone(),
            versions: campaigns::VersionCache::default(),
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

    /// Registers the batch's users and attributes the new ones. One outcome per event, in
    /// order: the referral, or why there is none (`None`: waiting for its click).
    ///
    /// A new user is decided before its row is written, so the row is inserted with its
    /// outcome (`users.attribution`) instead of being updated right after: one index entry per
    /// index, not two. Codes minted in this batch cannot be typed by a registration of the same
    /// batch (a code is drawn at random when its owner registers).
    async fn register(
        &self,
        conn: &mut PgConnection,
        events: &[&UserRegistered],
    ) -> sqlx::Result<Vec<Result<ReferralAttributed, Option<NoReferral>>>> {
        let mut first = HashSet::new();
        let rows: Vec<UserRow> = events.iter().filter(|e| first.insert(e.user_id.as_str())).map(|e| self.user_row(e)).collect();
        let ids: Vec<&str> = rows.iter().map(|r| r.event.user_id.as_str()).collect();
        let known = existing_users(conn, &ids).await?;
        let new_rows: Vec<&UserRow> = rows.iter().filter(|r| !known.contains(r.event.user_id.as_str())).collect();
        let pending: Vec<Waiting> = new_rows
            .iter()
            .map(|r| Waiting {
                user_id: r.event.user_id.to_string(),
                registered_at: r.event.occurred_at,
                typed_code: r.event.referral_code.clone(),
                click_id: r.event.click_id.clone(),
                device_id: r.event.device_id.clone(),
            })
            .collect();
        let mut click_ids: Vec<&str> = pending.iter().filter_map(|p| p.click_id.as_deref()).collect();
        click_ids.sort_unstable();
        click_ids.dedup();
        clicks::lock_click_ids(conn, &click_ids).await?;
        let profiles: campaigns::Profiles =
            new_rows.iter().map(|r| (r.event.user_id.to_string(), (r.event.country.clone(), r.event.platform.clone()))).collect();
        let mut decided = self.decide(conn, &pending, false, &profiles).await?;
        let outcome_of: HashMap<&str, &str> = decided.iter().map(|(u, o)| (u.as_str(), label(o))).collect();
        let inserted = insert_users(conn, &new_rows, &outcome_of).await?;
        drop(outcome_of);
        // A row another transaction wrote first is that transaction's to attribute.
        decided.retain(|user, _| inserted.contains(user));
        let fresh: Vec<&UserRegistered> = new_rows.iter().map(|r| r.event).filter(|e| inserted.contains(e.user_id.as_str())).collect();
        mint_codes(conn, &fresh, &self.campaign_id, self.code_validity).await?;
        let relabelled = insert_decided(conn, &mut decided).await?;
        let labels: Vec<(&str, &str)> = relabelled.iter().filter_map(|u| decided.get(u).map(|o| (u.as_str(), label(o)))).collect();
        clicks::record_outcomes(conn, &labels).await?;

        let mut outcomes = Vec::with_capacity(events.len());
        let mut answered = HashSet::new();
        for e in events {
            let user = e.user_id.as_str();
            let outcome = match decided.get_mut(user) {
                Some(_) if !answered.insert(user) => Err(Some(NoReferral::AlreadyRegistered)),
                None => Err(Some(NoReferral::AlreadyRegistered)),
                Some(d) => std::mem::replace(d, Err(Some(NoReferral::AlreadyRegistered))).map(|r| r.event),
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Decides `pending` registrations of stored users (none referred yet) from the clicks and
    /// codes they name, inserts the referrals, records each user's outcome on
    /// `users.attribution`, and returns the outcomes. The caller holds the click locks of
    /// `pending` (so a waiting registration and its click's arrival cannot miss each other).
    /// `wait_over`: a click still not recorded is given up on.
    async fn attribute(&self, conn: &mut PgConnection, pending: &[Waiting], wait_over: bool) -> sqlx::Result<HashMap<String, Outcome>> {
        let mut decided = self.decide(conn, pending, wait_over, &campaigns::Profiles::new()).await?;
        insert_decided(conn, &mut decided).await?;
        let labels: Vec<(&str, &str)> = decided.iter().map(|(user, outcome)| (user.as_str(), label(outcome))).collect();
        clicks::record_outcomes(conn, &labels).await?;
        Ok(decided)
    }

    /// Decides `pending` registrations from the clicks and codes they name and binds each
    /// referral to its campaign version (`profiles`: country and platform of users not stored
    /// yet). Writes nothing.
    async fn decide(
        &self,
        conn: &mut PgConnection,
        pending: &[Waiting],
        wait_over: bool,
        profiles: &campaigns::Profiles,
    ) -> sqlx::Result<HashMap<String, Outcome>> {
        let mut click_ids: Vec<String> = pending.iter().filter_map(|p| p.click_id.clone()).collect();
        click_ids.sort_unstable();
        click_ids.dedup();
        let carried = clicks::by_id(conn, click_ids).await?;
        let asking: Vec<RelatedTo> = pending
            .iter()
            .map(|p| RelatedTo {
                user_id: &p.user_id,
                cookie_id: p.click_id.as_ref().and_then(|c| carried.get(c)).and_then(|c| c.cookie_id.as_deref()),
                // A placeholder device id (zeroed advertising id, "unknown") links nobody.
                device_id: p.device_id.as_deref().filter(|d| !refstream_core::links::is_placeholder_device(d)),
                registered_at: p.registered_at,
            })
            .collect();
        let related = clicks::related(conn, &asking, self.rules.click_window).await?;
        let no_related = Vec::new();

        let mut codes: Vec<String> = pending.iter().filter_map(|p| p.typed_code.as_deref().and_then(code::normalize)).collect();
        codes.extend(carried.values().chain(related.values().flatten()).map(|c| c.click.code.clone()));
        let owners = code_owners(conn, codes).await?;

        let mut decided: HashMap<String, Outcome> = HashMap::new();
        for p in pending {
            let carried_click = p.click_id.as_ref().and_then(|c| carried.get(c));
            let related_clicks = related.get(&p.user_id).unwrap_or(&no_related);
            let plain: Vec<_> = related_clicks.iter().map(|c| c.click.clone()).collect();
            let reg = Registration {
                user_id: &p.user_id,
                registered_at: p.registered_at,
                typed_code: p.typed_code.as_deref(),
                click_id: p.click_id.as_deref(),
            };
            let decision = match decide(reg, carried_click.map(|c| &c.click), &plain, |c| owners.get(c), self.rules) {
                Decision::AwaitClick if wait_over => decide_without_click(reg, &plain, |c| owners.get(c), self.rules),
                other => other,
            };
            let outcome = match decision {
                Decision::AwaitClick => Err(None),
                Decision::NoReferral(why) => Err(Some(why)),
                Decision::Attribute(won) => {
                    let network = won.click.as_ref().and_then(|w| {
                        carried_click.into_iter().chain(related_clicks).find(|c| c.click.click_id == w.click_id).map(|c| c.network_clicks)
                    });
                    // Stored owners were written from validated ids; one that no longer reads as an id
                    // (edited by hand) attributes nobody rather than stopping the partition.
                    attributed(p, &won)
                        .map(|event| Referral { event, won, network_clicks: network, terms_version: 0, campaign_reason: String::new() })
                        .ok_or(Some(NoReferral::UnknownCode))
                }
            };
            decided.insert(p.user_id.clone(), outcome);
        }
        campaigns::bind_all(
            conn,
            &self.versions,
            decided.values_mut().filter_map(|d| d.as_mut().ok()).collect(),
            &self.campaign_id,
            profiles,
        )
        .await?;
        Ok(decided)
    }

    /// Decides the registrations waiting for the clicks of `events`.
    async fn clicked(&self, conn: &mut PgConnection, events: &[&ReferralClicked]) -> sqlx::Result<Vec<ReferralAttributed>> {
        self.decide_waiting(conn, events.iter().map(|e| e.click_id.as_str()).collect(), false).await
    }

    /// Ends the wait of registrations whose click was not recorded within
    /// `attribution.click_wait_secs` (plus a minute for clocks and commits): each is decided
    /// with its click if it was recorded meanwhile (its event not read yet), else without it.
    /// Returns how many were decided. Safe to run from several processes at once.
    pub async fn end_overdue_waits(&self, pool: &sqlx::PgPool) -> sqlx::Result<usize> {
        let mut tx = pool.begin().await?;
        let overdue = clicks::overdue(&mut tx, self.rules.click_wait + chrono::Duration::minutes(1), 500).await?;
        if overdue.is_empty() {
            return Ok(0);
        }
        let events = self.decide_waiting(&mut tx, overdue.iter().map(String::as_str).collect(), true).await?;
        let out: Vec<OutboxMessage> = events.iter().map(|a| OutboxMessage::record(&self.topic_out, a.referee_id.as_str(), a)).collect();
        enqueue(&mut tx, &out).await?;
        tx.commit().await?;
        Ok(overdue.len())
    }

    /// Decides the registrations still waiting for one of `click_ids`, under their click locks.
    async fn decide_waiting(&self, conn: &mut PgConnection, mut ids: Vec<&str>, wait_over: bool) -> sqlx::Result<Vec<ReferralAttributed>> {
        ids.sort_unstable();
        ids.dedup();
        clicks::lock_click_ids(conn, &ids).await?;
        let waiting = clicks::waiting_for(conn, ids.iter().map(|c| c.to_string()).collect()).await?;
        if waiting.is_empty() {
            return Ok(Vec::new());
        }
        let decided = self.attribute(conn, &waiting, wait_over).await?;
        let mut out = Vec::new();
        for w in &waiting {
            match decided.get(&w.user_id) {
                Some(Ok(r)) => {
                    OUTCOMES.with_label_values(&["attribution", "referral_attributed_on_click"]).inc();
                    out.push(r.event.clone());
                }
                Some(Err(Some(why))) => {
                    OUTCOMES.with_label_values(&["attribution", why.label()]).inc();
                    tracing::info!(user = %w.user_id, outcome = why.label(), "wait for the click ended: no referral");
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

fn attributed(p: &Waiting, won: &Won) -> Option<ReferralAttributed> {
    let referee = UserId::parse(p.user_id.clone()).ok()?;
    let referral_id = DerivedId::referral(&referee);
    Some(ReferralAttributed {
        event_id: DerivedId::event("referral-attributed", referral_id),
        referral_id,
        referrer_id: UserId::parse(won.owner.user_id.clone()).ok()?,
        referee_id: referee,
        referral_code: won.code.clone(),
        campaign_id: won.owner.campaign_id.clone(),
        attribution: won.source,
        referee_registered_at: p.registered_at,
        occurred_at: p.registered_at,
    })
}

/// The users of `ids` already stored: a lookup per id (`OFFSET 0` keeps it one, as in
/// [`code_owners`]).
async fn existing_users(conn: &mut PgConnection, ids: &[&str]) -> sqlx::Result<HashSet<String>> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT u.user_id FROM (SELECT DISTINCT i FROM unnest($1::text[]) AS i) AS b \
         CROSS JOIN LATERAL (SELECT user_id FROM users WHERE user_id = b.i OFFSET 0) AS u",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(found.into_iter().collect())
}

/// Inserts the users not registered yet, each with its attribution outcome (`outcome_of`:
/// user → label); returns their ids.
async fn insert_users(conn: &mut PgConnection, rows: &[&UserRow<'_>], outcome_of: &HashMap<&str, &str>) -> sqlx::Result<HashSet<String>> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let col = |f: &dyn Fn(&UserRow) -> Option<String>| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    let ids: Vec<String> = sqlx::query_scalar(
        "INSERT INTO users (user_id, registered_at, platform, device_id, ip_hash, ip_prefix_hash, email_hash, email_domain, country, typed_code, click_id, attribution) \
         SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[]) \
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
    .bind(col(&|r| r.event.referral_code.clone()))
    .bind(col(&|r| r.event.click_id.clone()))
    .bind(col(&|r| outcome_of.get(r.event.user_id.as_str()).map(|l| (*l).to_owned())))
    .fetch_all(&mut *conn)
    .await?;
    Ok(ids.into_iter().collect())
}

/// How a user's attribution is recorded on `users.attribution`.
fn label(outcome: &Outcome) -> &'static str {
    match outcome {
        Ok(_) => "attributed",
        Err(None) => "awaiting_click",
        Err(Some(why)) => why.label(),
    }
}

/// Inserts the referrals of `decided`; a referee referred meanwhile becomes `AlreadyReferred`.
/// Returns the users whose outcome changed so.
async fn insert_decided(conn: &mut PgConnection, decided: &mut HashMap<String, Outcome>) -> sqlx::Result<Vec<String>> {
    let referred = insert_referrals(conn, decided.values().filter_map(|d| d.as_ref().ok()).collect()).await?;
    let mut changed = Vec::new();
    for (user, outcome) in decided.iter_mut() {
        if outcome.is_ok() && !referred.contains(user) {
            *outcome = Err(Some(NoReferral::AlreadyReferred));
            changed.push(user.clone());
        }
    }
    Ok(changed)
}

/// Gives each of `users` a fresh code, drawing again for the (rare: 1 in 2^40 per existing
/// code) collision.
async fn mint_codes(
    conn: &mut PgConnection,
    users: &[&UserRegistered],
    campaign_id: &str,
    validity: Option<chrono::Duration>,
) -> sqlx::Result<()> {
    let mut pending: Vec<&UserRegistered> = users.to_vec();
    while !pending.is_empty() {
        let mut draws: Vec<(String, &UserRegistered)> = pending.iter().map(|u| (code::mint(), *u)).collect();
        draws.sort_by(|a, b| a.0.cmp(&b.0));
        let minted: HashSet<String> = sqlx::query_scalar(
            "INSERT INTO referral_codes (code, user_id, campaign_id, created_at, expires_at) \
             SELECT c, u, $3, t, x FROM unnest($1::text[], $2::text[], $4::timestamptz[], $5::timestamptz[]) AS d(c, u, t, x) \
             ON CONFLICT (code) DO NOTHING RETURNING user_id",
        )
        .bind(draws.iter().map(|d| d.0.clone()).collect::<Vec<_>>())
        .bind(draws.iter().map(|d| d.1.user_id.to_string()).collect::<Vec<_>>())
        .bind(campaign_id)
        .bind(draws.iter().map(|d| d.1.occurred_at).collect::<Vec<_>>())
        .bind(draws.iter().map(|d| validity.map(|v| d.1.occurred_at + v)).collect::<Vec<_>>())
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

/// Who owns each of `codes` (codes nobody owns are absent): a lookup per code (`OFFSET 0` keeps
/// it one; as `code = ANY($1)` the planner read every code while its statistics called the
/// table small).
async fn code_owners(conn: &mut PgConnection, codes: Vec<String>) -> sqlx::Result<BTreeMap<String, CodeOwner>> {
    if codes.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows: Vec<(String, String, String, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT c.code, c.user_id, c.campaign_id, c.expires_at FROM (SELECT DISTINCT k FROM unnest($1::text[]) AS k) AS b \
         CROSS JOIN LATERAL (SELECT * FROM referral_codes WHERE code = b.k OFFSET 0) AS c",
    )
    .bind(codes)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(code, user_id, campaign_id, expires_at)| (code, CodeOwner { user_id, campaign_id, expires_at })).collect())
}

/// Inserts the referrals of referees not referred yet (in `referral_id` order), with how each
/// was attributed; returns those referees.
async fn insert_referrals(conn: &mut PgConnection, mut referrals: Vec<&Referral>) -> sqlx::Result<HashSet<String>> {
    if referrals.is_empty() {
        return Ok(HashSet::new());
    }
    referrals.sort_by_key(|r| r.event.referral_id);
    let click = |f: &dyn Fn(&refstream_core::attribution::Click) -> Option<String>| -> Vec<Option<String>> {
        referrals.iter().map(|r| r.won.click.as_ref().and_then(f)).collect()
    };
    let confidence: Vec<Option<Decimal>> = referrals
        .iter()
        .map(|r| match r.won.click.as_ref().map(|c| c.matched) {
            Some(ClickMatch::Probabilistic { confidence_pct }) => Some(Decimal::new(i64::from(confidence_pct), 2)),
            Some(ClickMatch::Exact) => Some(Decimal::ONE),
            None => None,
        })
        .collect();
    let referees: Vec<String> = sqlx::query_scalar(
        "INSERT INTO referrals (referral_id, referrer_id, referee_id, code, campaign_id, attribution, referee_registered_at, \
                                click_id, click_match, match_confidence, touch, network_clicks, terms_version, campaign_reason) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], \
                              $8::text[], $9::text[], $10::numeric[], $11::text[], $12::int[], $13::int[], $14::text[]) \
         ON CONFLICT (referee_id) DO NOTHING RETURNING referee_id",
    )
    .bind(referrals.iter().map(|r| r.event.referral_id).collect::<Vec<Uuid>>())
    .bind(referrals.iter().map(|r| r.event.referrer_id.to_string()).collect::<Vec<_>>())
    .bind(referrals.iter().map(|r| r.event.referee_id.to_string()).collect::<Vec<_>>())
    .bind(referrals.iter().map(|r| r.event.referral_code.clone()).collect::<Vec<_>>())
    .bind(referrals.iter().map(|r| r.event.campaign_id.clone()).collect::<Vec<_>>())
    .bind(referrals.iter().map(|r| r.event.attribution.as_str().to_owned()).collect::<Vec<_>>())
    .bind(referrals.iter().map(|r| r.event.referee_registered_at).collect::<Vec<_>>())
    .bind(click(&|c| Some(c.click_id.clone())))
    .bind(click(&|c| Some(c.matched.as_str().to_owned())))
    .bind(confidence)
    .bind(referrals.iter().map(|r| r.won.touch.clone()).collect::<Vec<_>>())
    .bind(referrals.iter().map(|r| r.network_clicks).collect::<Vec<_>>())
    .bind(referrals.iter().map(|r| r.terms_version).collect::<Vec<_>>())
    .bind(referrals.iter().map(|r| r.campaign_reason.clone()).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    Ok(referees.into_iter().collect())
}

impl Worker for Attribution {
    type Event = Input;

    fn name(&self) -> &'static str {
        "attribution"
    }

    fn topics(&self) -> Vec<String> {
        vec![self.topic_registered.clone(), self.topic_clicked.clone()]
    }

    fn decode(&self, record: &Inbound<'_>, now: DateTime<Utc>) -> Result<Input, Rejection> {
        Ok(match record.topic {
            t if t == self.topic_registered => Input::Registered(self.decoder.decode(record.payload, now)?),
            t if t == self.topic_clicked => Input::Clicked(self.decoder.decode(record.payload, now)?),
            other => return Err(Rejection { label: "unknown_topic", reason: format!("no handler for topic {other}") }),
        })
    }

    fn event_id(&self, event: &Input) -> Uuid {
        match event {
            Input::Registered(e) => e.event_id(),
            Input::Clicked(e) => e.event_id(),
        }
    }

    async fn apply(&self, batch: &mut Batch<'_>, events: &[Input]) -> sqlx::Result<()> {
        let registered: Vec<&UserRegistered> =
            events.iter().filter_map(|e| if let Input::Registered(r) = e { Some(r) } else { None }).collect();
        let clicked: Vec<&ReferralClicked> = events.iter().filter_map(|e| if let Input::Clicked(c) = e { Some(c) } else { None }).collect();
        let mut out = Vec::new();
        if !registered.is_empty() {
            for (e, outcome) in registered.iter().zip(self.register(batch.conn, &registered).await?) {
                match outcome {
                    Ok(attributed) => {
                        OUTCOMES.with_label_values(&["attribution", "referral_attributed"]).inc();
                        out.push(OutboxMessage::record(&self.topic_out, attributed.referee_id.as_str(), &attributed));
                    }
                    Err(None) => {
                        OUTCOMES.with_label_values(&["attribution", "awaiting_click"]).inc();
                        tracing::info!(user = %e.user_id, "click not recorded yet: the registration waits for it");
                    }
                    Err(Some(why)) => {
                        OUTCOMES.with_label_values(&["attribution", why.label()]).inc();
                        if why != NoReferral::NoCode {
                            tracing::info!(user = %e.user_id, outcome = why.label(), "no referral");
                        }
                    }
                }
            }
        }
        if !clicked.is_empty() {
            for attributed in self.clicked(batch.conn, &clicked).await? {
                out.push(OutboxMessage::record(&self.topic_out, attributed.referee_id.as_str(), &attributed));
            }
        }
        enqueue(batch.conn, &out).await
    }
}
