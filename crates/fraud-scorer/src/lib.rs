//! The fraud scorer: consumes `referral-attributed`, gathers what its tables know about the
//! referrer and the referee (device, hashed IP and email, velocity in event-time windows), and
//! scores the referral with the explainable rules of `refstream_core::fraud`. The assessment
//! (score, decision, every signal with its detail, rule version) and the `ReferralScored` that
//! announces it commit in one transaction; a referral is scored once.

use chrono::{DateTime, Duration, Utc};
use refstream_core::events::{ReferralAttributed, ReferralScored};
use refstream_core::fraud::{assess, Assessment, DisposableDomains, Evidence, FraudPolicy};
use refstream_core::DerivedId;
use refstream_runtime::codec::{AvroRecord, Decoder};
use refstream_runtime::consumer::{Batch, Inbound, Rejection, Worker};
use refstream_runtime::metrics::OUTCOMES;
use refstream_runtime::outbox::{enqueue, OutboxMessage};
use refstream_runtime::Settings;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

pub struct FraudScorer {
    decoder: Decoder,
    topic_in: String,
    topic_out: String,
    policy: FraudPolicy,
    disposable: DisposableDomains,
}

impl FraudScorer {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let f = &settings.fraud;
        let policy = FraudPolicy {
            review_at: f.review_at,
            reject_at: f.reject_at,
            ring_min_size: f.ring_min_size,
            velocity_per_referrer: f.velocity_per_referrer,
            velocity_per_device: f.velocity_per_device,
            velocity_per_ip: f.velocity_per_ip,
            velocity_window: Duration::hours(f.velocity_window_hours),
        };
        policy.validate().map_err(|e| anyhow::anyhow!("configuration error in `fraud`: {e:?}"))?;
        let disposable = if f.disposable_domains_file.is_empty() {
            DisposableDomains::builtin()
        } else {
            let path = &f.disposable_domains_file;
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("configuration error in `fraud.disposable_domains_file`: {path}: {e}"))?;
            DisposableDomains::parse(&text)
                .map_err(|e| anyhow::anyhow!("configuration error in `fraud.disposable_domains_file`: {path}: {e:?}"))?
        };
        Ok(Self {
            decoder: Decoder::new(settings.confluent_ids()?),
            topic_in: settings.topics.referral_attributed.clone(),
            topic_out: settings.topics.referral_scored.clone(),
            policy,
            disposable,
        })
    }

    /// Gathers the evidence about one referral from the tables, as of the referee's registration.
    pub async fn evidence(&self, conn: &mut PgConnection, r: &ReferralAttributed) -> sqlx::Result<Evidence> {
        let at = r.referee_registered_at;
        let since = at - self.policy.velocity_window;
        let row: EvidenceRow = sqlx::query_as(
            "WITH e AS (SELECT * FROM users WHERE user_id = $2), r AS (SELECT * FROM users WHERE user_id = $1) \
             SELECT \
               COALESCE((SELECT e.device_id = r.device_id FROM e, r), false) AS same_device, \
               COALESCE((SELECT e.ip_hash = r.ip_hash FROM e, r), false) AS same_ip, \
               COALESCE((SELECT e.ip_prefix_hash = r.ip_prefix_hash FROM e, r), false) AS same_ip_prefix, \
               COALESCE((SELECT e.email_hash = r.email_hash FROM e, r), false) AS email_matches_referrer, \
               EXISTS (SELECT 1 FROM users u, e WHERE u.email_hash = e.email_hash AND u.user_id <> e.user_id \
                       AND (u.registered_at, u.user_id) < (e.registered_at, e.user_id)) AS email_reused, \
               (SELECT email_domain FROM e) AS email_domain, \
               (SELECT count(*) FROM referrals WHERE referrer_id = $1 AND referee_registered_at > $3 AND referee_registered_at <= $4) AS by_referrer, \
               (SELECT count(*) FROM users u, e WHERE u.device_id = e.device_id AND u.registered_at > $3 AND u.registered_at <= $4) AS from_device, \
               (SELECT count(*) FROM users u, e WHERE u.ip_hash = e.ip_hash AND u.registered_at > $3 AND u.registered_at <= $4) AS from_ip, \
               (SELECT count(*) FROM users u, e WHERE u.device_id = e.device_id AND u.user_id <> e.user_id AND u.registered_at <= $4) AS others_on_device, \
               EXISTS (SELECT 1 FROM deposits a JOIN deposits b ON a.payment_fingerprint = b.payment_fingerprint \
                       WHERE a.user_id = $1 AND b.user_id = $2) AS shared_instrument",
        )
        .bind(r.referrer_id.as_str())
        .bind(r.referee_id.as_str())
        .bind(since)
        .bind(at)
        .fetch_one(&mut *conn)
        .await?;
        let count = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Evidence {
            referrer_id: r.referrer_id.to_string(),
            referee_id: r.referee_id.to_string(),
            same_device: row.same_device,
            same_ip: row.same_ip,
            same_ip_prefix: row.same_ip_prefix,
            email_matches_referrer: row.email_matches_referrer,
            email_matches_earlier_account: row.email_reused,
            disposable_email: row.email_domain.is_some_and(|d| self.disposable.contains(&d)),
            referrals_by_referrer_in_window: count(row.by_referrer),
            registrations_from_device_in_window: count(row.from_device),
            registrations_from_ip_in_window: count(row.from_ip),
            other_accounts_on_referee_device: count(row.others_on_device),
            shared_payment_instrument: row.shared_instrument,
            ring_size: 0,
        })
    }
}

#[derive(sqlx::FromRow)]
struct EvidenceRow {
    same_device: bool,
    same_ip: bool,
    same_ip_prefix: bool,
    email_matches_referrer: bool,
    email_reused: bool,
    email_domain: Option<String>,
    by_referrer: i64,
    from_device: i64,
    from_ip: i64,
    others_on_device: i64,
    shared_instrument: bool,
}

/// Stores an assessment; false when the referral was already assessed.
async fn store(conn: &mut PgConnection, r: &ReferralAttributed, a: &Assessment, evidence: &Evidence) -> sqlx::Result<bool> {
    let signals: Vec<_> = a.signals.iter().map(|s| json!({"code": s.code, "weight": s.weight, "detail": s.detail})).collect();
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO assessments (referral_id, referrer_id, referee_id, score, decision, reasons, signals, rule_version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (referral_id) DO NOTHING RETURNING referral_id",
    )
    .bind(r.referral_id)
    .bind(r.referrer_id.as_str())
    .bind(r.referee_id.as_str())
    .bind(i32::from(a.score))
    .bind(a.decision.as_str())
    .bind(a.reasons())
    .bind(json!({"signals": signals, "evidence": format!("{evidence:?}")}))
    .bind(a.rule_version)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(inserted.is_some())
}

impl Worker for FraudScorer {
    type Event = ReferralAttributed;

    fn name(&self) -> &'static str {
        "fraud-scorer"
    }

    fn topics(&self) -> Vec<String> {
        vec![self.topic_in.clone()]
    }

    fn decode(&self, record: &Inbound<'_>, now: DateTime<Utc>) -> Result<ReferralAttributed, Rejection> {
        Ok(self.decoder.decode(record.payload, now)?)
    }

    fn event_id(&self, event: &ReferralAttributed) -> Uuid {
        event.event_id()
    }

    async fn apply(&self, batch: &mut Batch<'_>, events: &[ReferralAttributed]) -> sqlx::Result<()> {
        let mut out = Vec::new();
        for r in events {
            let evidence = self.evidence(batch.conn, r).await?;
            let assessment = assess(&evidence, &self.policy);
            if !store(batch.conn, r, &assessment, &evidence).await? {
                continue;
            }
            OUTCOMES.with_label_values(&["fraud-scorer", assessment.decision.as_str()]).inc();
            let scored = ReferralScored {
                event_id: DerivedId::event("referral-scored", r.referral_id),
                referral_id: r.referral_id,
                referrer_id: r.referrer_id.clone(),
                referee_id: r.referee_id.clone(),
                score: assessment.score,
                decision: assessment.decision,
                reasons: assessment.reasons(),
                rule_version: assessment.rule_version.to_owned(),
                occurred_at: r.occurred_at,
            };
            out.push(OutboxMessage::record(&self.topic_out, scored.referee_id.as_str(), &scored));
        }
        enqueue(batch.conn, 0, &out).await
    }
}
