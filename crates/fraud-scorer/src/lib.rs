//! The fraud scorer: consumes `referral-attributed` and `deposit-completed`, gathers what its
//! tables know about the referrer and the referee (device, hashed IP and email, velocity in
//! event-time windows, payment instruments, the ring graph of hard links), and scores the
//! referral with the explainable rules of `refstream_core::fraud`. The assessment (score,
//! decision, every signal with its detail, the evidence, rule version) and the `ReferralScored`
//! that announces it commit in one transaction.
//!
//! Rings do not depend on arrival order. Hard links (device, email, payment instrument) are kept
//! in `identity_links`; whenever new links or a new referral make an account's component a ring
//! (or reveal a payment instrument shared by a referrer and their referee, or an account arrives
//! after accounts on its device or mailbox that registered later than it), the referrals already
//! scored without that knowledge are scored again. A re-score that is stricter, or carries a
//! hard signal the stored one lacks, becomes a new assessment revision and a second
//! `ReferralScored` with its own deterministic event id; it never loosens. The reward engine lets
//! a re-score only tighten an unpaid referral.

pub mod graph;

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use refstream_core::events::{DepositCompleted, ReferralAttributed, ReferralScored};
use refstream_core::fraud::rules::{
    ALWAYS_REJECT, AT_LEAST_REVIEW, FRAUD_RING, SHARED_PAYMENT_INSTRUMENT, VELOCITY_DEVICE, VELOCITY_REFERRER,
};
use refstream_core::fraud::{assess, Assessment, DisposableDomains, Evidence, FraudPolicy};
use refstream_core::lifecycle::Decision;
use refstream_core::{DerivedId, UserId};
use refstream_runtime::codec::{AvroRecord, Decoder};
use refstream_runtime::consumer::{Batch, Inbound, Rejection, Worker};
use refstream_runtime::metrics::OUTCOMES;
use refstream_runtime::outbox::{enqueue, OutboxMessage};
use refstream_runtime::Settings;
use serde_json::{json, Value as Json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::graph::Component;

/// Serializes ring maintenance across scorer instances: two transactions adding links at once
/// could otherwise each miss the ring their links complete together.
const RING_LOCK: i64 = 0x7265_6673_7269_6e67; // "refsring"

/// Why an assessment revision was made: a sentence, and the input event whose processing made it.
#[derive(Debug, Clone)]
pub struct Cause {
    pub text: String,
    pub event_id: Uuid,
}

/// One input of the scorer.
#[derive(Debug, Clone)]
pub enum Input {
    Attributed(ReferralAttributed),
    Deposit(DepositCompleted),
}

pub struct FraudScorer {
    decoder: Decoder,
    topic_attributed: String,
    topic_deposits: String,
    topic_out: String,
    policy: FraudPolicy,
    disposable: DisposableDomains,
}

/// A referral as the scorer needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Subject {
    pub referral_id: Uuid,
    pub referrer_id: String,
    pub referee_id: String,
    pub referee_registered_at: DateTime<Utc>,
}

impl From<&ReferralAttributed> for Subject {
    fn from(r: &ReferralAttributed) -> Self {
        Self {
            referral_id: r.referral_id,
            referrer_id: r.referrer_id.to_string(),
            referee_id: r.referee_id.to_string(),
            referee_registered_at: r.referee_registered_at,
        }
    }
}

/// The stored, latest assessment of a referral.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Stored {
    revision: i32,
    decision: String,
    reasons: Vec<String>,
}

fn rank(d: Decision) -> u8 {
    match d {
        Decision::Approve => 0,
        Decision::Review => 1,
        Decision::Reject => 2,
    }
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
            topic_attributed: settings.topics.referral_attributed.clone(),
            topic_deposits: settings.topics.deposit_completed.clone(),
            topic_out: settings.topics.referral_scored.clone(),
            policy,
            disposable,
        })
    }

    pub fn policy(&self) -> &FraudPolicy {
        &self.policy
    }

    /// Gathers the evidence about one referral from the tables, as of the referee's
    /// registration; `component` is the referee's component in the ring graph.
    pub async fn evidence(&self, conn: &mut PgConnection, r: &Subject, component: &Component) -> sqlx::Result<(Evidence, Option<String>)> {
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
               (SELECT count(*) FROM referrals WHERE referrer_id = $1 AND referee_registered_at > $3 AND referee_registered_at <= $4 + ($4 - $3)) AS by_referrer, \
               (SELECT count(*) FROM users u, e WHERE u.device_id = e.device_id AND u.registered_at > $3 AND u.registered_at <= $4 + ($4 - $3)) AS from_device, \
               (SELECT count(*) FROM users u, e WHERE u.ip_hash = e.ip_hash AND u.registered_at > $3 AND u.registered_at <= $4) AS from_ip, \
               (SELECT count(*) FROM users u, e WHERE u.device_id = e.device_id AND u.user_id <> e.user_id AND u.registered_at <= $4) AS others_on_device, \
               EXISTS (SELECT 1 FROM identity_links a JOIN identity_links b ON b.kind = a.kind AND b.value = a.value \
                       WHERE a.kind = 'payment' AND a.user_id = $1 AND b.user_id = $2) AS shared_instrument",
        )
        .bind(r.referrer_id.as_str())
        .bind(r.referee_id.as_str())
        .bind(since)
        .bind(at)
        .fetch_one(&mut *conn)
        .await?;
        let count = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
        let evidence = Evidence {
            referrer_id: r.referrer_id.clone(),
            referee_id: r.referee_id.clone(),
            same_device: row.same_device,
            same_ip: row.same_ip,
            same_ip_prefix: row.same_ip_prefix,
            email_matches_referrer: row.email_matches_referrer,
            email_matches_earlier_account: row.email_reused,
            disposable_email: row.email_domain.as_deref().is_some_and(|d| self.disposable.contains(d)),
            referrals_by_referrer_in_window: count(row.by_referrer),
            registrations_from_device_in_window: count(row.from_device),
            registrations_from_ip_in_window: count(row.from_ip),
            other_accounts_on_referee_device: count(row.others_on_device),
            shared_payment_instrument: row.shared_instrument,
            ring_size: component.ring_size(),
        };
        Ok((evidence, row.email_domain))
    }

    /// Scores `r` from what the tables know now.
    async fn score(&self, conn: &mut PgConnection, r: &Subject) -> sqlx::Result<(Assessment, Json)> {
        let component = graph::component_of(conn, &r.referee_id, self.policy.ring_min_size).await?;
        let (evidence, domain) = self.evidence(conn, r, &component).await?;
        let assessment = assess(&evidence, &self.policy);
        Ok((assessment, evidence_json(&evidence, domain.as_deref(), &component)))
    }

    async fn on_attributed(&self, conn: &mut PgConnection, r: &ReferralAttributed, out: &mut Vec<OutboxMessage>) -> sqlx::Result<()> {
        let subject = Subject::from(r);
        let new_links = graph::link_users(conn, &[&subject.referrer_id, &subject.referee_id], r.occurred_at).await?;
        let (assessment, evidence) = self.score(conn, &subject).await?;
        let event_id = DerivedId::event("referral-scored", r.referral_id);
        if !store(conn, &subject, &assessment, &evidence, event_id, r.event_id).await? {
            return Ok(());
        }
        OUTCOMES.with_label_values(&["fraud-scorer", assessment.decision.as_str()]).inc();
        out.push(self.scored(&subject, &assessment, event_id, r.occurred_at));
        // This referral, or the links of its two accounts, may have completed a ring whose
        // other referrals were scored before it existed; and an account that arrives late may
        // change the evidence of accounts on its device or mailbox that registered after it.
        let cause = Cause {
            text: format!("referral {} ({} referred {}) arrived", r.referral_id, r.referrer_id, r.referee_id),
            event_id: r.event_id,
        };
        let mut around = vec![subject.referee_id.as_str()];
        if new_links > 0 {
            around.push(subject.referrer_id.as_str());
        }
        let mut candidates = BTreeSet::new();
        for user in around {
            candidates.extend(self.ring_candidates(conn, user).await?);
            candidates.extend(later_on_same_device_or_email(conn, user).await?);
        }
        candidates.extend(velocity_clusters(conn, &subject.referee_id, &subject.referrer_id, &self.policy).await?);
        candidates.remove(&r.referral_id);
        self.rescore_all(conn, candidates, &cause, r.occurred_at, out).await
    }

    async fn on_deposit(&self, conn: &mut PgConnection, d: &DepositCompleted, out: &mut Vec<OutboxMessage>) -> sqlx::Result<()> {
        let Some(fingerprint) = d.payment_fingerprint.as_deref() else { return Ok(()) };
        let user = d.user_id.as_str();
        if !graph::link_payment(conn, user, fingerprint, d.occurred_at).await? {
            return Ok(());
        }
        let mut candidates = self.ring_candidates(conn, user).await?;
        // The referrals between this account and an account that paid with the same instrument.
        let shared: Vec<Uuid> = sqlx::query_scalar(
            "SELECT a.referral_id FROM assessments a \
             JOIN identity_links l ON l.kind = 'payment' AND l.value = $2 \
               AND l.user_id = CASE WHEN a.referee_id = $1 THEN a.referrer_id ELSE a.referee_id END \
             WHERE (a.referee_id = $1 OR a.referrer_id = $1) AND NOT ($3 = ANY(a.reasons))",
        )
        .bind(user)
        .bind(fingerprint)
        .bind(SHARED_PAYMENT_INSTRUMENT)
        .fetch_all(&mut *conn)
        .await?;
        candidates.extend(shared);
        let cause = Cause { text: format!("deposit {} by {user} linked a payment instrument", d.deposit_id), event_id: d.event_id };
        self.rescore_all(conn, candidates, &cause, d.occurred_at, out).await
    }

    /// The scored referrals in `user`'s component that do not carry FRAUD_RING yet, when that
    /// component is a ring.
    async fn ring_candidates(&self, conn: &mut PgConnection, user: &str) -> sqlx::Result<BTreeSet<Uuid>> {
        let component = graph::component_of(conn, user, self.policy.ring_min_size).await?;
        if !component.is_ring {
            return Ok(BTreeSet::new());
        }
        let ids: Vec<Uuid> =
            sqlx::query_scalar("SELECT referral_id FROM assessments WHERE referee_id = ANY($1) AND NOT ($2 = ANY(reasons))")
                .bind(&component.members)
                .bind(FRAUD_RING)
                .fetch_all(&mut *conn)
                .await?;
        Ok(ids.into_iter().collect())
    }

    async fn rescore_all(
        &self,
        conn: &mut PgConnection,
        candidates: BTreeSet<Uuid>,
        cause: &Cause,
        at: DateTime<Utc>,
        out: &mut Vec<OutboxMessage>,
    ) -> sqlx::Result<()> {
        for referral_id in candidates {
            self.rescore(conn, referral_id, cause, at, out).await?;
        }
        Ok(())
    }

    /// Scores an already scored referral again; stores and announces the new assessment when it
    /// is stricter or carries a hard signal the stored one lacks. Never loosens.
    async fn rescore(
        &self,
        conn: &mut PgConnection,
        referral_id: Uuid,
        cause: &Cause,
        at: DateTime<Utc>,
        out: &mut Vec<OutboxMessage>,
    ) -> sqlx::Result<()> {
        let Some(stored) =
            sqlx::query_as::<_, Stored>("SELECT revision, decision, reasons FROM assessments WHERE referral_id = $1 FOR UPDATE")
                .bind(referral_id)
                .fetch_optional(&mut *conn)
                .await?
        else {
            return Ok(());
        };
        let Some(subject) = sqlx::query_as::<_, Subject>(
            "SELECT referral_id, referrer_id, referee_id, referee_registered_at FROM referrals WHERE referral_id = $1",
        )
        .bind(referral_id)
        .fetch_optional(&mut *conn)
        .await?
        else {
            return Ok(());
        };
        let (assessment, evidence) = self.score(conn, &subject).await?;
        let before = stored.decision.parse::<Decision>().unwrap_or(Decision::Approve);
        let new_hard = assessment
            .signals
            .iter()
            .any(|s| (AT_LEAST_REVIEW.contains(&s.code) || ALWAYS_REJECT.contains(&s.code)) && !stored.reasons.iter().any(|r| r == s.code));
        if rank(assessment.decision) < rank(before) || !(rank(assessment.decision) > rank(before) || new_hard) {
            return Ok(());
        }
        let revision = stored.revision + 1;
        let event_id = DerivedId::event(&format!("referral-rescored:{revision}"), referral_id);
        let signals = signals_json(&assessment, &evidence);
        sqlx::query(
            "UPDATE assessments SET score = $2, decision = $3, reasons = $4, signals = $5, rule_version = $6, \
             revision = $7, cause = $8, cause_event_id = $9, assessed_at = now() WHERE referral_id = $1",
        )
        .bind(referral_id)
        .bind(i32::from(assessment.score))
        .bind(assessment.decision.as_str())
        .bind(assessment.reasons())
        .bind(&signals)
        .bind(assessment.rule_version)
        .bind(revision)
        .bind(&cause.text)
        .bind(cause.event_id)
        .execute(&mut *conn)
        .await?;
        history(conn, referral_id, revision, &assessment, &signals, cause, event_id).await?;
        OUTCOMES.with_label_values(&["fraud-scorer", "rescored"]).inc();
        tracing::info!(referral = %referral_id, from = before.as_str(), to = assessment.decision.as_str(), reasons = ?assessment.reasons(), cause = %cause.text, "re-scored");
        out.push(self.scored(&subject, &assessment, event_id, at));
        Ok(())
    }

    fn scored(&self, r: &Subject, a: &Assessment, event_id: Uuid, at: DateTime<Utc>) -> OutboxMessage {
        // Both ids come from validated events or from rows written from them.
        let id = |s: &str| UserId::parse(s).unwrap_or_else(|_| UserId::parse("invalid").expect("a valid id"));
        let scored = ReferralScored {
            event_id,
            referral_id: r.referral_id,
            referrer_id: id(&r.referrer_id),
            referee_id: id(&r.referee_id),
            score: a.score,
            decision: a.decision,
            reasons: a.reasons(),
            rule_version: a.rule_version.to_owned(),
            occurred_at: at,
        };
        OutboxMessage::record(&self.topic_out, &r.referee_id, &scored)
    }
}

/// The most referrals one late arrival re-scores through its device or email (the soonest after
/// it first): bounds the work a hot device id can cause.
const MAX_LATE_RESCORES: i64 = 200;

/// The scored referrals of accounts that share `user`'s device or email and registered after it
/// (event time): only their evidence, taken as of their registration, can count `user`. Empty
/// when registrations arrive in order.
async fn later_on_same_device_or_email(conn: &mut PgConnection, user: &str) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT referral_id FROM ( \
           SELECT a.referral_id, u.registered_at FROM users n \
           JOIN users u ON u.device_id = n.device_id AND (u.registered_at, u.user_id) > (n.registered_at, n.user_id) \
           JOIN assessments a ON a.referee_id = u.user_id WHERE n.user_id = $1 \
           UNION \
           SELECT a.referral_id, u.registered_at FROM users n \
           JOIN users u ON u.email_hash = n.email_hash AND (u.registered_at, u.user_id) > (n.registered_at, n.user_id) \
           JOIN assessments a ON a.referee_id = u.user_id WHERE n.user_id = $1 \
         ) later ORDER BY registered_at, referral_id LIMIT $2",
    )
    .bind(user)
    .bind(MAX_LATE_RESCORES)
    .fetch_all(&mut *conn)
    .await
}

/// Velocity clusters, counted as known now: a referral's device (or referrer) velocity counts
/// the registrations on its device (the referrals by its referrer) within the velocity window on
/// either side of its own registration. When `user`'s registration arrives, it can only change
/// the counts of referrals registered within a window of it; those whose own count is now over
/// the limit and that do not carry the signal yet are returned for re-assessment — the first
/// accounts of a device burst or a referral farm included. The result is the same whatever
/// order the registrations arrive in.
async fn velocity_clusters(conn: &mut PgConnection, user: &str, referrer: &str, policy: &FraudPolicy) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "WITH n AS (SELECT device_id, registered_at FROM users WHERE user_id = $1), \
         w AS (SELECT make_interval(hours => $3) AS w), \
         device AS (SELECT a.referral_id FROM n, w, users u JOIN assessments a ON a.referee_id = u.user_id \
            WHERE u.device_id = n.device_id AND u.registered_at BETWEEN n.registered_at - w.w AND n.registered_at + w.w \
              AND NOT ($5 = ANY(a.reasons)) \
              AND (SELECT count(*) FROM users o WHERE o.device_id = u.device_id \
                   AND o.registered_at > u.registered_at - w.w AND o.registered_at <= u.registered_at + w.w) > $4), \
         farm AS (SELECT a.referral_id FROM n, w, referrals r JOIN assessments a USING (referral_id) \
            WHERE r.referrer_id = $2 AND r.referee_registered_at BETWEEN n.registered_at - w.w AND n.registered_at + w.w \
              AND NOT ($7 = ANY(a.reasons)) \
              AND (SELECT count(*) FROM referrals o WHERE o.referrer_id = r.referrer_id \
                   AND o.referee_registered_at > r.referee_registered_at - w.w AND o.referee_registered_at <= r.referee_registered_at + w.w) > $6) \
         SELECT referral_id FROM (SELECT referral_id FROM device UNION SELECT referral_id FROM farm) c ORDER BY referral_id LIMIT $8",
    )
    .bind(user)
    .bind(referrer)
    .bind(i32::try_from(policy.velocity_window.num_hours()).unwrap_or(i32::MAX))
    .bind(i64::from(policy.velocity_per_device))
    .bind(VELOCITY_DEVICE)
    .bind(i64::from(policy.velocity_per_referrer))
    .bind(VELOCITY_REFERRER)
    .bind(MAX_LATE_RESCORES)
    .fetch_all(&mut *conn)
    .await
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

/// The evidence as stored with the assessment, for `refstream explain`.
fn evidence_json(e: &Evidence, email_domain: Option<&str>, component: &Component) -> Json {
    json!({
        "referrer_id": e.referrer_id,
        "referee_id": e.referee_id,
        "same_device": e.same_device,
        "same_ip": e.same_ip,
        "same_ip_prefix": e.same_ip_prefix,
        "email_matches_referrer": e.email_matches_referrer,
        "email_matches_earlier_account": e.email_matches_earlier_account,
        "email_domain": email_domain,
        "disposable_email": e.disposable_email,
        "referrals_by_referrer_in_window": e.referrals_by_referrer_in_window,
        "registrations_from_device_in_window": e.registrations_from_device_in_window,
        "registrations_from_ip_in_window": e.registrations_from_ip_in_window,
        "other_accounts_on_referee_device": e.other_accounts_on_referee_device,
        "shared_payment_instrument": e.shared_payment_instrument,
        "ring_size": e.ring_size,
        "component": component.to_json(),
    })
}

fn signals_json(a: &Assessment, evidence: &Json) -> Json {
    let signals: Vec<_> = a.signals.iter().map(|s| json!({"code": s.code, "weight": s.weight, "detail": s.detail})).collect();
    json!({"signals": signals, "evidence": evidence})
}

async fn history(
    conn: &mut PgConnection,
    referral_id: Uuid,
    revision: i32,
    a: &Assessment,
    signals: &Json,
    cause: &Cause,
    event_id: Uuid,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO assessment_history (referral_id, revision, score, decision, reasons, signals, rule_version, cause, event_id, cause_event_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
    )
    .bind(referral_id)
    .bind(revision)
    .bind(i32::from(a.score))
    .bind(a.decision.as_str())
    .bind(a.reasons())
    .bind(signals)
    .bind(a.rule_version)
    .bind(&cause.text)
    .bind(event_id)
    .bind(cause.event_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Stores a first assessment; false when the referral was already assessed.
async fn store(conn: &mut PgConnection, r: &Subject, a: &Assessment, evidence: &Json, event_id: Uuid, input: Uuid) -> sqlx::Result<bool> {
    let signals = signals_json(a, evidence);
    let cause = Cause { text: "referral attributed".into(), event_id: input };
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO assessments (referral_id, referrer_id, referee_id, score, decision, reasons, signals, rule_version, revision, cause, cause_event_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $10) ON CONFLICT (referral_id) DO NOTHING RETURNING referral_id",
    )
    .bind(r.referral_id)
    .bind(&r.referrer_id)
    .bind(&r.referee_id)
    .bind(i32::from(a.score))
    .bind(a.decision.as_str())
    .bind(a.reasons())
    .bind(&signals)
    .bind(a.rule_version)
    .bind(&cause.text)
    .bind(cause.event_id)
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_some() {
        history(conn, r.referral_id, 1, a, &signals, &cause, event_id).await?;
    }
    Ok(inserted.is_some())
}

impl Worker for FraudScorer {
    type Event = Input;

    fn name(&self) -> &'static str {
        "fraud-scorer"
    }

    fn topics(&self) -> Vec<String> {
        vec![self.topic_attributed.clone(), self.topic_deposits.clone()]
    }

    fn decode(&self, record: &Inbound<'_>, now: DateTime<Utc>) -> Result<Input, Rejection> {
        Ok(match record.topic {
            t if t == self.topic_attributed => Input::Attributed(self.decoder.decode(record.payload, now)?),
            t if t == self.topic_deposits => Input::Deposit(self.decoder.decode(record.payload, now)?),
            other => return Err(Rejection { label: "unknown_topic", reason: format!("no handler for topic {other}") }),
        })
    }

    fn event_id(&self, event: &Input) -> Uuid {
        match event {
            Input::Attributed(e) => e.event_id(),
            Input::Deposit(e) => e.event_id(),
        }
    }

    async fn apply(&self, batch: &mut Batch<'_>, events: &[Input]) -> sqlx::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        // Payment instruments are locked per value first (sorted, so batches cannot deadlock):
        // two batches linking one card to two accounts run one after the other, and the second
        // sees the first's link.
        let cards: Vec<(&str, &str)> = events
            .iter()
            .filter_map(|e| match e {
                Input::Deposit(d) => Some((d.user_id.as_str(), d.payment_fingerprint.as_deref()?)),
                Input::Attributed(_) => None,
            })
            .collect();
        if !cards.is_empty() {
            graph::lock_payment_values(batch.conn, &cards).await?;
        }
        let only_deposits = events.iter().all(|e| matches!(e, Input::Deposit(_)));
        if only_deposits && !graph::any_card_shared(batch.conn, &cards).await? {
            // No card of the batch is used by another account: no ring, no shared instrument,
            // nothing to re-score. Record the links in one insert, without the ring lock.
            return graph::link_payments(
                batch.conn,
                &cards,
                &events
                    .iter()
                    .filter_map(|e| match e {
                        Input::Deposit(d) if d.payment_fingerprint.is_some() => Some(d.occurred_at),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            )
            .await;
        }
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(RING_LOCK).execute(&mut *batch.conn).await?;
        let mut out = Vec::new();
        for event in events {
            match event {
                Input::Attributed(r) => self.on_attributed(batch.conn, r, &mut out).await?,
                Input::Deposit(d) => self.on_deposit(batch.conn, d, &mut out).await?,
            }
        }
        enqueue(batch.conn, 0, &out).await
    }
}
