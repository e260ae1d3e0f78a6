//! The attribution worker: consumes `user-registered`, mints every new user a unique referral
//! code, and attributes a user who arrived with a code (or a referral-link click id) to the
//! code's owner. A user is registered once (`users.user_id`), referred at most once
//! (`referrals.referee_id`), and never by themself; an unknown or expired code creates no
//! referral. Each referral and its `ReferralAttributed` commit in one transaction.

use chrono::{DateTime, Utc};
use refstream_core::code;
use refstream_core::events::{AttributionSource, ReferralAttributed, UserRegistered};
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

/// Why a registration produced no referral, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoReferral {
    NoCode,
    UnknownCode,
    OwnCode,
    Expired,
    AlreadyReferred,
    AlreadyRegistered,
}

impl NoReferral {
    fn label(self) -> &'static str {
        match self {
            Self::NoCode => "organic",
            Self::UnknownCode => "unknown_code",
            Self::OwnCode => "own_code",
            Self::Expired => "expired_code",
            Self::AlreadyReferred => "already_referred",
            Self::AlreadyRegistered => "duplicate_registration",
        }
    }
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

    async fn register(&self, conn: &mut PgConnection, e: &UserRegistered) -> sqlx::Result<Result<Option<ReferralAttributed>, NoReferral>> {
        let key = self.hash_key.expose_secret().as_bytes();
        let email = e.email.as_deref().and_then(canonical_email);
        let inserted: Option<String> = sqlx::query_scalar(
            "INSERT INTO users (user_id, registered_at, platform, device_id, ip_hash, ip_prefix_hash, email_hash, email_domain, country) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (user_id) DO NOTHING RETURNING user_id",
        )
        .bind(e.user_id.as_str())
        .bind(e.occurred_at)
        .bind(&e.platform)
        .bind(&e.device_id)
        .bind(e.ip.map(|ip| keyed_hash(key, &ip.to_string())))
        .bind(e.ip.map(|ip| keyed_hash(key, &ip_prefix(ip))))
        .bind(email.as_deref().map(|m| keyed_hash(key, m)))
        .bind(email.as_deref().map(|m| email_domain(m).to_owned()))
        .bind(&e.country)
        .fetch_optional(&mut *conn)
        .await?;
        if inserted.is_none() {
            return Ok(Err(NoReferral::AlreadyRegistered));
        }
        mint_code(conn, &e.user_id, &self.campaign_id, e.occurred_at).await?;
        self.attribute(conn, e).await
    }

    async fn attribute(&self, conn: &mut PgConnection, e: &UserRegistered) -> sqlx::Result<Result<Option<ReferralAttributed>, NoReferral>> {
        let (code, source) = match (e.referral_code.as_deref().and_then(code::normalize), &e.click_id) {
            (Some(c), _) => (c, AttributionSource::Code),
            (None, Some(click)) => {
                let c: Option<String> = sqlx::query_scalar("SELECT code FROM referral_clicks WHERE click_id = $1")
                    .bind(click)
                    .fetch_optional(&mut *conn)
                    .await?;
                match c {
                    Some(c) => (c, AttributionSource::Click),
                    None => return Ok(Err(NoReferral::UnknownCode)),
                }
            }
            (None, None) if e.referral_code.is_some() => return Ok(Err(NoReferral::UnknownCode)),
            (None, None) => return Ok(Err(NoReferral::NoCode)),
        };
        let owner: Option<(String, String, Option<DateTime<Utc>>)> =
            sqlx::query_as("SELECT user_id, campaign_id, expires_at FROM referral_codes WHERE code = $1")
                .bind(&code)
                .fetch_optional(&mut *conn)
                .await?;
        let Some((referrer, campaign_id, expires_at)) = owner else { return Ok(Err(NoReferral::UnknownCode)) };
        if referrer == e.user_id.as_str() {
            return Ok(Err(NoReferral::OwnCode));
        }
        if expires_at.is_some_and(|x| x < e.occurred_at) {
            return Ok(Err(NoReferral::Expired));
        }
        let referral_id = DerivedId::referral(&e.user_id);
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO referrals (referral_id, referrer_id, referee_id, code, campaign_id, attribution, referee_registered_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (referee_id) DO NOTHING RETURNING referral_id",
        )
        .bind(referral_id)
        .bind(&referrer)
        .bind(e.user_id.as_str())
        .bind(&code)
        .bind(&campaign_id)
        .bind(source.as_str())
        .bind(e.occurred_at)
        .fetch_optional(&mut *conn)
        .await?;
        if inserted.is_none() {
            return Ok(Err(NoReferral::AlreadyReferred));
        }
        let referrer_id = UserId::parse(referrer).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        Ok(Ok(Some(ReferralAttributed {
            event_id: DerivedId::event("referral-attributed", referral_id),
            referral_id,
            referrer_id,
            referee_id: e.user_id.clone(),
            referral_code: code,
            campaign_id,
            attribution: source,
            referee_registered_at: e.occurred_at,
            occurred_at: e.occurred_at,
        })))
    }
}

/// Gives `user` a fresh code, drawing again on the (rare: 1 in 2^40 per existing code) collision.
pub async fn mint_code(conn: &mut PgConnection, user: &UserId, campaign_id: &str, at: DateTime<Utc>) -> sqlx::Result<String> {
    loop {
        let candidate = code::mint();
        let inserted: Option<String> = sqlx::query_scalar(
            "INSERT INTO referral_codes (code, user_id, campaign_id, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (code) DO NOTHING RETURNING code",
        )
        .bind(&candidate)
        .bind(user.as_str())
        .bind(campaign_id)
        .bind(at)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(code) = inserted {
            return Ok(code);
        }
        tracing::info!("referral code collision: drawing again");
    }
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
        for e in events {
            match self.register(batch.conn, e).await? {
                Ok(Some(attributed)) => {
                    OUTCOMES.with_label_values(&["attribution", "referral_attributed"]).inc();
                    out.push(OutboxMessage::record(&self.topic_out, attributed.referee_id.as_str(), &attributed));
                }
                Ok(None) => {}
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
