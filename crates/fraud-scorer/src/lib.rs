//! The fraud scorer: consumes `referral-attributed` and `deposit-completed`, gathers what its
//! tables know about the referrer and the referee (device, hashed IP and email, velocity in
//! event-time windows, payment instruments, the ring graph of hard links), and scores each
//! referral with the explainable rules of `refstream_core::fraud`.
//!
//! # What it guarantees
//!
//! - **One transaction per batch, the input's offset included.** Every assessment revision an
//!   input record causes (the first assessment of its referral, and every re-assessment of the
//!   cluster it makes suspicious) commits in the transaction that consumes that record, where the
//!   consumer runtime also writes `consumer_progress`. `assessments` always holds the latest
//!   revision (its decision, score, reasons and cause); `assessment_history` every revision with
//!   its signals and evidence (written once, there), each with `cause_event_id`, the event id of
//!   the input record (`ReferralAttributed` or `DepositCompleted`) whose processing made it, and
//!   a deterministic event id (`DerivedId::event`) for its `ReferralScored`.
//! - **Set-based.** A batch (one partition of one topic, offset order) is applied with a bounded
//!   number of statements whatever its size: links in one insert, the evidence of every referral
//!   in one query, the ring graph walked only from the accounts that share a link (once
//!   before the locks, once under them, more only while a component grows; an account that
//!   shares none is its own component), the candidates for re-assessment in one, the stored
//!   assessments locked in one, assessments, history and outbox written through `UNNEST`.
//! - **Re-assessment of clusters, tighten only.** When a batch makes a cluster suspicious (a ring
//!   completed by its links, a device or referrer over its velocity limit counted on both sides
//!   of each registration, an account that arrived late on a device or mailbox, a card on a
//!   second account), every referral of that cluster already assessed is assessed again; a
//!   stricter result, or one with a hard signal the stored one lacks, becomes a new revision
//!   ([`refstream_core::fraud::tightens`]). Nothing is ever loosened. IP signals are soft: they
//!   never hold a referral alone.
//!
//! # Locking, with partitions applied concurrently, and no lock for the whole graph
//!
//! Evidence is read from `users` and `referrals`, which attribution commits before it publishes
//! the `ReferralAttributed` that brings a referral here, so every registration a batch's events
//! refer to is visible to it. What concurrent scorer batches write are links and assessments, and
//! two of them could each miss what the other writes. A batch locks what it touches
//! ([`locks`]), never the whole graph:
//!
//! 1. Without waiting on anyone: its links are inserted (one sorted statement that skips links
//!    another batch is inserting) and the identifiers of its seeds read, with the components
//!    of the seeds that share a link walked once, to name what to lock.
//! 2. In one statement, in hash order: the devices and mailboxes of its referees, every
//!    identifier so named, the accounts it linked, and its referrers (shared; exclusive
//!    where the referrer's referrals already exceed the velocity limit). Under these, held to
//!    the commit: the seeds' own identifiers read again and the components of those that share
//!    one walked (locking and walking again while the walk reaches an identifier not locked
//!    yet), the evidence, the first assessments, the candidates for re-assessment (ring
//!    members, velocity clusters, late arrivals, shared cards — its own fresh rows included),
//!    locked `FOR UPDATE` in `referral_id` order, re-assessed, written.
//!
//! Why no ring or cluster is missed: two batches that could each miss the other's links or
//! fresh assessments always hold a common lock, so one of them reads only after the other
//! committed and re-assesses what the two made suspicious together.
//! - A ring: their links meet in one component, and both lock an identifier (or an account)
//!   on the way between them ([`locks`] has the argument).
//! - A device or mailbox cluster, a late arrival: both lock that device or mailbox before
//!   reading evidence or writing a first assessment.
//! - A referrer's velocity window: every batch with a referral of that referrer holds the
//!   referrer's lock, shared, from before its first assessments to its commit. The referral
//!   that pushes a window over the limit was attributed before its batch locks, so that batch
//!   sees the window over the limit and takes the referrer's lock exclusively: it waits for every
//!   batch holding the referrer and sees their assessments; a batch that locks the referrer later
//!   counts that referral itself and re-assesses its own.
//!
//! Unrelated batches (different devices, mailboxes and components; referrers under their limits)
//! share no exclusive lock and run side by side. Deposit batches whose cards no other account
//! uses take only the per-card locks: such a link joins no component, and the card locks make
//! two batches linking one card to two accounts run one after the other, the second seeing the
//! first's link.

pub mod graph;
pub mod locks;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use refstream_core::events::{DepositCompleted, ReferralAttributed, ReferralScored};
use refstream_core::fraud::rules::{FRAUD_RING, SHARED_PAYMENT_INSTRUMENT, VELOCITY_DEVICE, VELOCITY_REFERRER};
use refstream_core::fraud::{assess, tightens, Assessment, DisposableDomains, Evidence, FraudPolicy, RULE_VERSION};
use refstream_core::lifecycle::Decision;
use refstream_core::{DerivedId, UserId};
use refstream_runtime::codec::{AvroRecord, Decoder};
use refstream_runtime::consumer::{Batch, BatchLocks, Inbound, Rejection, Worker};
use refstream_runtime::metrics::OUTCOMES;
use refstream_runtime::outbox::{enqueue, OutboxMessage};
use refstream_runtime::Settings;
use serde_json::{json, Value as Json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::graph::{Component, Components};

pub use locks::RING_LOCK;

/// The most referrals one account re-assesses through its device, email or referrer: bounds the
/// work a hot device id can cause.
const MAX_CLUSTER_RESCORES: i64 = 200;

/// Why an assessment revision was made: a sentence, the input event whose processing made it,
/// and that event's time.
#[derive(Debug, Clone)]
pub struct Cause {
    pub text: String,
    pub event_id: Uuid,
    pub at: DateTime<Utc>,
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
    /// Bounds the `referral-attributed` batches worked on at once (`fraud.attributed_batches_in_flight`):
    /// each holds its evidence and components in memory, and on two cores more in flight only
    /// compete for Postgres' CPU.
    attributed_slots: tokio::sync::Semaphore,
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

/// The stored, latest assessment of a referral, locked for re-assessment.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Stored {
    referral_id: Uuid,
    revision: i32,
    decision: String,
    reasons: Vec<String>,
    referrer_id: String,
    referee_id: String,
    referee_registered_at: DateTime<Utc>,
}

/// One assessment revision to write.
struct Revision {
    referral_id: Uuid,
    revision: i32,
    assessment: Assessment,
    signals: Json,
    cause: usize,
    event_id: Uuid,
}

/// What a batch writes, accumulated and written set-based at its end.
#[derive(Default)]
struct Writes {
    history: Vec<Revision>,
    out: Vec<OutboxMessage>,
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
            click_flood_per_network: f.click_flood_per_network,
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
            attributed_slots: tokio::sync::Semaphore::new(f.attributed_batches_in_flight),
        })
    }

    pub fn policy(&self) -> &FraudPolicy {
        &self.policy
    }

    fn window_secs(&self) -> i64 {
        self.policy.velocity_window.num_seconds()
    }

    /// Gathers the evidence about each referral of `subjects` from the tables, in one query, as
    /// of the referee's registration (device and referrer velocity count the window on both
    /// sides of it). `ring_size` is left at 0: the ring graph fills it. Returns each referral's
    /// evidence and the referee's email domain, in the order of `subjects`. Every lookup is by
    /// one account's keys (the shared-card test reads the referrer's links by account, `OFFSET
    /// 0` keeping it so: otherwise the planner hashes every payment link per batch), so the
    /// query's cost follows the batch, not the tables; the device's window and its earlier
    /// accounts are counted in one scan of the device's registrations.
    pub async fn evidence(&self, conn: &mut PgConnection, subjects: &[Subject]) -> sqlx::Result<Vec<(Evidence, Option<String>)>> {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        let referrers: Vec<&str> = subjects.iter().map(|s| s.referrer_id.as_str()).collect();
        let referees: Vec<&str> = subjects.iter().map(|s| s.referee_id.as_str()).collect();
        let at: Vec<DateTime<Utc>> = subjects.iter().map(|s| s.referee_registered_at).collect();
        let rows: Vec<EvidenceRow> = sqlx::query_as(
            "SELECT \
               COALESCE(e.device_id = r.device_id, false) AS same_device, \
               COALESCE(e.ip_hash = r.ip_hash, false) AS same_ip, \
               COALESCE(e.ip_prefix_hash = r.ip_prefix_hash, false) AS same_ip_prefix, \
               COALESCE(e.email_hash = r.email_hash, false) AS email_matches_referrer, \
               EXISTS (SELECT 1 FROM users u WHERE u.email_hash = e.email_hash AND u.user_id <> e.user_id \
                       AND (u.registered_at, u.user_id) < (e.registered_at, e.user_id)) AS email_reused, \
               e.email_domain, \
               (SELECT count(*) FROM referrals x WHERE x.referrer_id = b.referrer \
                  AND x.referee_registered_at > b.at - w.w AND x.referee_registered_at <= b.at + w.w) AS by_referrer, \
               d.from_device, \
               (SELECT count(*) FROM users u WHERE u.ip_hash = e.ip_hash AND u.registered_at > b.at - w.w AND u.registered_at <= b.at) AS from_ip, \
               d.others_on_device, \
               EXISTS (SELECT 1 FROM (SELECT kind, value FROM identity_links WHERE user_id = b.referrer OFFSET 0) AS a \
                       WHERE a.kind = 'payment' AND EXISTS (SELECT 1 FROM identity_links c \
                         WHERE c.kind = 'payment' AND c.value = a.value AND c.user_id = b.referee)) AS shared_instrument, \
               x.match_confidence AS probabilistic_confidence, COALESCE(x.network_clicks, 0) AS network_clicks \
             FROM unnest($1::text[], $2::text[], $3::timestamptz[]) WITH ORDINALITY AS b(referrer, referee, at, n) \
             CROSS JOIN (SELECT $4::bigint * interval '1 second' AS w) AS w \
             LEFT JOIN LATERAL (SELECT * FROM users WHERE user_id = b.referrer) AS r ON true \
             LEFT JOIN LATERAL (SELECT * FROM users WHERE user_id = b.referee) AS e ON true \
             LEFT JOIN LATERAL (SELECT count(*) FILTER (WHERE u.registered_at > b.at - w.w) AS from_device, \
                                       count(*) FILTER (WHERE u.user_id <> e.user_id AND u.registered_at <= b.at) AS others_on_device \
                                FROM users u WHERE u.device_id = e.device_id AND u.registered_at <= b.at + w.w) AS d ON true \
             LEFT JOIN LATERAL (SELECT CASE WHEN click_match = 'probabilistic' THEN match_confidence END AS match_confidence, network_clicks \
                                FROM referrals WHERE referee_id = b.referee) AS x ON true \
             ORDER BY b.n",
        )
        .bind(&referrers)
        .bind(&referees)
        .bind(&at)
        .bind(self.window_secs())
        .fetch_all(&mut *conn)
        .await?;
        let count = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(subjects
            .iter()
            .zip(rows)
            .map(|(s, row)| {
                let evidence = Evidence {
                    referrer_id: s.referrer_id.clone(),
                    referee_id: s.referee_id.clone(),
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
                    ring_size: 0,
                    probabilistic_match_pct: row.probabilistic_confidence.map(refstream_core::links::confidence_pct),
                    network_clicks_on_code: u32::try_from(row.network_clicks).unwrap_or(0),
                };
                (evidence, row.email_domain)
            })
            .collect())
    }

    /// Assesses one referral from its gathered evidence and its referee's component.
    fn assess_one(&self, mut evidence: Evidence, email_domain: Option<&str>, component: &Component) -> (Assessment, Json) {
        evidence.ring_size = component.ring_size();
        let assessment = assess(&evidence, &self.policy);
        let signals = signals_json(&assessment, &evidence_json(&evidence, email_domain, component));
        (assessment, signals)
    }

    /// A batch of `referral-attributed`: links, first assessments, and the clusters they make
    /// suspicious.
    async fn apply_attributed(&self, conn: &mut PgConnection, events: &[&ReferralAttributed], w: &mut Writes) -> sqlx::Result<Vec<Cause>> {
        let mut seen = BTreeSet::new();
        let events: Vec<&ReferralAttributed> = events.iter().copied().filter(|r| seen.insert(r.referral_id)).collect();
        let subjects: Vec<Subject> = events.iter().map(|r| Subject::from(*r)).collect();
        let causes: Vec<Cause> = events
            .iter()
            .map(|r| Cause {
                text: format!("referral {} ({} referred {}) arrived", r.referral_id, r.referrer_id, r.referee_id),
                event_id: r.event_id,
                at: r.occurred_at,
            })
            .collect();
        let referees: Vec<&str> = subjects.iter().map(|s| s.referee_id.as_str()).collect();
        let referrers: Vec<&str> = subjects.iter().map(|s| s.referrer_id.as_str()).collect();
        // (1) The referrers this batch meets first (no assessed referral names them yet): with
        // the referees, the accounts whose device and mailbox enter the graph at its commit.
        let first_met = graph::newly_met(conn, &referrers).await?;
        // Where the graph walks start: the referees, and the referrers met first. A referrer met
        // before needs no walk of its own: its component changes only through a new link, and
        // the batch that makes a link walks from that link's account; a ring the new referral
        // closes contains its referee, whose walk reaches the referrer.
        let seeds: Vec<String> =
            referees.iter().map(|u| (*u).to_owned()).chain(first_met.iter().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
        // (2) The batch's locks, in one statement (see `locks`): its seeds' devices, mailboxes
        // and cards, the identifiers of its seeds' components (walked first only for seeds that
        // share one), the referrers it meets first, its referrers. Then, under them, the
        // components walked and the evidence of the new
        // referrals (a concurrent batch on the same device or mailbox has committed and is seen,
        // or waits and will see these).
        let referrer_at: Vec<(&str, DateTime<Utc>)> = subjects.iter().map(|s| (s.referrer_id.as_str(), s.referee_registered_at)).collect();
        let referee_set: BTreeSet<&str> = referees.iter().copied().collect();
        let touched = locks::Touched {
            meeting: &seeds,
            accounts: first_met.iter().map(String::as_str).filter(|u| !referee_set.contains(u)).collect(),
            held: BTreeSet::new(),
            referrers: Some(locks::Referrers {
                at: &referrer_at,
                window_secs: self.window_secs(),
                limit: i64::from(self.policy.velocity_per_referrer),
            }),
        };
        let components = locks::lock_and_walk(conn, &seeds, touched, self.policy.ring_min_size).await?;
        let evidence = self.evidence(conn, &subjects).await?;
        let firsts: Vec<(Assessment, Json)> = subjects
            .iter()
            .zip(evidence)
            .map(|(s, (e, domain))| self.assess_one(e, domain.as_deref(), &components.of(&s.referee_id)))
            .collect();
        let inserted = insert_first(conn, &subjects, &firsts, &causes).await?;
        let mut candidates: BTreeMap<Uuid, usize> = BTreeMap::new();
        for (i, (s, (assessment, _))) in subjects.iter().zip(&firsts).enumerate() {
            if !inserted.contains(&s.referral_id) {
                // Already assessed (a replay under another event id): only a re-assessment can apply.
                candidates.insert(s.referral_id, i);
                continue;
            }
            OUTCOMES.with_label_values(&["fraud-scorer", assessment.decision.as_str()]).inc();
            w.out.push(self.scored(s, assessment, first_event_id(s.referral_id), causes[i].at));
        }
        // In one statement, the referrals to re-assess (own fresh rows included: their evidence
        // may predate a registration committed since), each with the latest batch event that
        // found it: the device clusters each referee completes (its device's window, counted on
        // both sides of every registration in it) and the later accounts on its device or
        // mailbox, read through values this batch holds the locks of, so a concurrent batch on
        // the same device or mailbox has either committed (and is seen) or waits (and will see
        // this one); the referrals of every ring the batch touches that lack FRAUD_RING; the
        // referrer windows the batch completes (under the referrers' locks); and the later
        // accounts on the devices and mailboxes of referrers the scorer meets for the first time
        // (their identifiers are locked: they are seeds, whose own identifiers the batch locks).
        // Then every re-assessment.
        let touched: Vec<(&str, usize)> =
            subjects.iter().enumerate().flat_map(|(i, s)| [(s.referrer_id.as_str(), i), (s.referee_id.as_str(), i)]).collect();
        let ring = ring_candidates(&components, &touched);
        let referrer_linked: Vec<bool> = subjects.iter().map(|s| first_met.contains(&s.referrer_id)).collect();
        let found = self.clusters(conn, &referees, &referrers, &referrer_linked, &ring).await?;
        merge(&mut candidates, found);
        self.revise(conn, candidates, &causes, &components, w).await?;
        Ok(causes)
    }

    /// The referrals a batch of referrals makes suspicious, each with the index of the latest
    /// batch event that found it, in one statement (see [`Self::apply_attributed`]): for each
    /// referee, the later assessed accounts on its device or mailbox and its device's window
    /// (when over the limit); the same later accounts for each referrer met for the first time
    /// (`referrer_linked`); each referrer's window (when over the limit); and the members of the
    /// rings the batch touched (`ring`: account, event index). Each referee's `users` row is
    /// read once, for every part that needs it.
    async fn clusters(
        &self,
        conn: &mut PgConnection,
        referees: &[&str],
        referrers: &[&str],
        referrer_linked: &[bool],
        ring: &(Vec<String>, Vec<i32>),
    ) -> sqlx::Result<Vec<(Uuid, i32)>> {
        let index: Vec<i32> = (0..referees.len()).map(|i| i32::try_from(i).unwrap_or(i32::MAX)).collect();
        sqlx::query_as(
            "WITH b AS (SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bool[]) AS b(referee, referrer, n, referrer_linked)), \
             w AS (SELECT $5::bigint * interval '1 second' AS w), \
             e AS MATERIALIZED (SELECT b.n, b.referrer, u.user_id, u.device_id, u.email_hash, u.registered_at \
                 FROM b CROSS JOIN LATERAL (SELECT * FROM users WHERE user_id = b.referee) AS u), \
             met AS (SELECT n, user_id, device_id, email_hash, registered_at FROM e \
                 UNION ALL \
                 SELECT b.n, u.user_id, u.device_id, u.email_hash, u.registered_at \
                 FROM b CROSS JOIN LATERAL (SELECT * FROM users WHERE user_id = b.referrer) AS u WHERE b.referrer_linked), \
             late AS (SELECT l.referral_id, m.n FROM met m, LATERAL ( \
                 SELECT x.referral_id FROM ( \
                   SELECT s.referral_id, u.registered_at FROM users u CROSS JOIN LATERAL (SELECT a.referral_id FROM referrals rf JOIN assessments a USING (referral_id) WHERE rf.referee_id = u.user_id) AS s \
                    WHERE u.device_id = m.device_id AND (u.registered_at, u.user_id) > (m.registered_at, m.user_id) \
                   UNION \
                   SELECT s.referral_id, u.registered_at FROM users u CROSS JOIN LATERAL (SELECT a.referral_id FROM referrals rf JOIN assessments a USING (referral_id) WHERE rf.referee_id = u.user_id) AS s \
                    WHERE u.email_hash = m.email_hash AND (u.registered_at, u.user_id) > (m.registered_at, m.user_id) \
                 ) x ORDER BY x.registered_at, x.referral_id LIMIT $10) l), \
             device AS (SELECT d.referral_id, e.n FROM e CROSS JOIN w, LATERAL ( \
                 SELECT s.referral_id FROM users u CROSS JOIN LATERAL (SELECT a.referral_id, a.reasons FROM referrals rf JOIN assessments a USING (referral_id) WHERE rf.referee_id = u.user_id) AS s \
                 WHERE u.device_id = e.device_id AND u.registered_at BETWEEN e.registered_at - w.w AND e.registered_at + w.w \
                   AND NOT ($6 = ANY(s.reasons)) \
                   AND (SELECT count(*) FROM users o WHERE o.device_id = u.device_id \
                        AND o.registered_at > u.registered_at - w.w AND o.registered_at <= u.registered_at + w.w) > $7 \
                 LIMIT $10) d \
               WHERE (SELECT count(*) FROM users o WHERE o.device_id = e.device_id \
                      AND o.registered_at BETWEEN e.registered_at - 2 * w.w AND e.registered_at + 2 * w.w) > $7), \
             farm AS (SELECT f.referral_id, e.n FROM e CROSS JOIN w, LATERAL ( \
                 SELECT s.referral_id FROM referrals r CROSS JOIN LATERAL (SELECT referral_id, reasons FROM assessments WHERE referral_id = r.referral_id) AS s \
                 WHERE r.referrer_id = e.referrer AND r.referee_registered_at BETWEEN e.registered_at - w.w AND e.registered_at + w.w \
                   AND NOT ($8 = ANY(s.reasons)) \
                   AND (SELECT count(*) FROM referrals o WHERE o.referrer_id = r.referrer_id \
                        AND o.referee_registered_at > r.referee_registered_at - w.w AND o.referee_registered_at <= r.referee_registered_at + w.w) > $9 \
                 LIMIT $10) f \
               WHERE (SELECT count(*) FROM referrals o WHERE o.referrer_id = e.referrer \
                      AND o.referee_registered_at BETWEEN e.registered_at - 2 * w.w AND e.registered_at + 2 * w.w) > $9), \
             ring AS (SELECT s.referral_id, m.n FROM unnest($11::text[], $12::int[]) AS m(user_id, n) \
                 CROSS JOIN LATERAL (SELECT a.referral_id, a.reasons FROM referrals rf JOIN assessments a USING (referral_id) WHERE rf.referee_id = m.user_id) AS s WHERE NOT ($13 = ANY(s.reasons))) \
             SELECT referral_id, max(n) FROM (SELECT * FROM late UNION ALL SELECT * FROM device UNION ALL SELECT * FROM farm \
               UNION ALL SELECT * FROM ring) c \
             GROUP BY referral_id",
        )
        .bind(referees)
        .bind(referrers)
        .bind(&index)
        .bind(referrer_linked)
        .bind(self.window_secs())
        .bind(VELOCITY_DEVICE)
        .bind(i64::from(self.policy.velocity_per_device))
        .bind(VELOCITY_REFERRER)
        .bind(i64::from(self.policy.velocity_per_referrer))
        .bind(MAX_CLUSTER_RESCORES)
        .bind(&ring.0)
        .bind(&ring.1)
        .bind(FRAUD_RING)
        .fetch_all(conn)
        .await
    }

    /// A batch of `deposit-completed`: payment links, and the referrals between accounts that now
    /// share a card or a ring.
    async fn apply_deposits(&self, conn: &mut PgConnection, events: &[&DepositCompleted], w: &mut Writes) -> sqlx::Result<Vec<Cause>> {
        let with_card: Vec<&DepositCompleted> = events.iter().copied().filter(|d| d.payment_fingerprint.is_some()).collect();
        let cards: Vec<(&str, &str)> =
            with_card.iter().filter_map(|d| Some((d.user_id.as_str(), d.payment_fingerprint.as_deref()?))).collect();
        if cards.is_empty() {
            return Ok(Vec::new());
        }
        let at: Vec<DateTime<Utc>> = with_card.iter().map(|d| d.occurred_at).collect();
        // Payment instruments are locked per value before anything is read (in hash order, so
        // batches cannot deadlock): two batches linking one card to two accounts run one after
        // the other, and the second sees the first's link. The runtime took these locks in the
        // batch's first statement ([`Worker::batch_locks`]).
        let payments = graph::payment_keys(&cards);
        let graph::Linked { shared, new } = graph::link_payments(conn, &cards, &at).await?;
        if !shared {
            // No card of the batch is used by another account: no ring, no shared instrument,
            // nothing to re-assess, and the graph is not walked.
            return Ok(Vec::new());
        }
        // The deposits whose link is new, the first of each (user, card).
        let mut causes = Vec::new();
        let mut fresh: Vec<(&str, &str)> = Vec::new();
        let mut seen = BTreeSet::new();
        for (d, (user, card)) in with_card.iter().zip(&cards) {
            if new.contains(&((*user).to_owned(), (*card).to_owned())) && seen.insert((*user, *card)) {
                fresh.push((user, card));
                causes.push(Cause {
                    text: format!("deposit {} by {user} linked a payment instrument", d.deposit_id),
                    event_id: d.event_id,
                    at: d.occurred_at,
                });
            }
        }
        if fresh.is_empty() {
            return Ok(causes);
        }
        // The depositors' devices, mailboxes and accounts, and every identifier of their
        // components (see `locks`).
        let seeds: Vec<String> = fresh.iter().map(|(u, _)| (*u).to_owned()).collect::<BTreeSet<_>>().into_iter().collect();
        let seed_refs: Vec<&str> = seeds.iter().map(String::as_str).collect();
        let touched = locks::Touched { meeting: &[], accounts: seed_refs, held: payments, referrers: None };
        let components = locks::lock_and_walk(conn, &seeds, touched, self.policy.ring_min_size).await?;
        let touched: Vec<(&str, usize)> = fresh.iter().enumerate().map(|(i, (u, _))| (*u, i)).collect();
        let ring = ring_candidates(&components, &touched);
        let users: Vec<&str> = fresh.iter().map(|(u, _)| *u).collect();
        let values: Vec<&str> = fresh.iter().map(|(_, v)| *v).collect();
        let index: Vec<i32> = (0..fresh.len()).map(|i| i32::try_from(i).unwrap_or(i32::MAX)).collect();
        // The referrals between a depositor and an account that paid with the same instrument,
        // and the ring members' referrals.
        let found: Vec<(Uuid, i32)> = sqlx::query_as(
            "SELECT referral_id, max(n) FROM ( \
               SELECT a.referral_id, b.n FROM unnest($1::text[], $2::text[], $3::int[]) AS b(u, v, n) \
               CROSS JOIN LATERAL ( \
                 SELECT a.referral_id, rf.referrer_id AS other, a.reasons FROM referrals rf JOIN assessments a USING (referral_id) WHERE rf.referee_id = b.u \
                 UNION ALL \
                 SELECT a.referral_id, rf.referee_id, a.reasons FROM referrals rf JOIN assessments a USING (referral_id) WHERE rf.referrer_id = b.u) AS a \
               WHERE NOT ($4 = ANY(a.reasons)) \
                 AND EXISTS (SELECT 1 FROM identity_links l WHERE l.kind = 'payment' AND l.value = b.v AND l.user_id = a.other) \
               UNION ALL \
               SELECT s.referral_id, m.n FROM unnest($5::text[], $6::int[]) AS m(user_id, n) \
               CROSS JOIN LATERAL (SELECT a.referral_id, a.reasons FROM referrals rf JOIN assessments a USING (referral_id) WHERE rf.referee_id = m.user_id) AS s WHERE NOT ($7 = ANY(s.reasons)) \
             ) c GROUP BY referral_id",
        )
        .bind(&users)
        .bind(&values)
        .bind(&index)
        .bind(SHARED_PAYMENT_INSTRUMENT)
        .bind(&ring.0)
        .bind(&ring.1)
        .bind(FRAUD_RING)
        .fetch_all(&mut *conn)
        .await?;
        let candidates = found.into_iter().map(|(id, n)| (id, usize::try_from(n).unwrap_or(0))).collect();
        self.revise(conn, candidates, &causes, &components, w).await?;
        Ok(causes)
    }

    /// Re-assesses `candidates` (referral → index of its cause in `causes`) from what the tables
    /// know now: locks their assessments in `referral_id` order, gathers their evidence in one
    /// query, and makes a new revision of each whose fresh assessment tightens the stored one.
    async fn revise(
        &self,
        conn: &mut PgConnection,
        candidates: BTreeMap<Uuid, usize>,
        causes: &[Cause],
        components: &Components,
        w: &mut Writes,
    ) -> sqlx::Result<()> {
        if candidates.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = candidates.keys().copied().collect();
        let stored: Vec<Stored> = sqlx::query_as(
            "SELECT a.referral_id, a.revision, a.decision, a.reasons, r.referrer_id, r.referee_id, r.referee_registered_at \
             FROM assessments a JOIN referrals r USING (referral_id) WHERE a.referral_id = ANY($1) \
             ORDER BY a.referral_id FOR UPDATE OF a",
        )
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        let subjects: Vec<Subject> = stored
            .iter()
            .map(|s| Subject {
                referral_id: s.referral_id,
                referrer_id: s.referrer_id.clone(),
                referee_id: s.referee_id.clone(),
                referee_registered_at: s.referee_registered_at,
            })
            .collect();
        // Candidates found through a device, email or referrer may lie outside the components
        // already loaded: load theirs too (one more graph read, within the same lock). The
        // batch's first assessments are written by now, so every account it meets counts as
        // met without naming them.
        let outside: Vec<String> = subjects
            .iter()
            .filter(|s| !components.covers(&s.referee_id))
            .map(|s| s.referee_id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let more = graph::components(conn, &outside, &[], &[], self.policy.ring_min_size).await?;
        let evidence = self.evidence(conn, &subjects).await?;
        let mut updates = Vec::new();
        for ((s, subject), (e, domain)) in stored.iter().zip(&subjects).zip(evidence) {
            let component =
                if components.covers(&subject.referee_id) { components.of(&subject.referee_id) } else { more.of(&subject.referee_id) };
            let (assessment, signals) = self.assess_one(e, domain.as_deref(), &component);
            let before = s.decision.parse::<Decision>().unwrap_or(Decision::Approve);
            if !tightens(before, &s.reasons, &assessment) {
                continue;
            }
            let cause = candidates.get(&s.referral_id).copied().unwrap_or(0).min(causes.len().saturating_sub(1));
            let revision = s.revision + 1;
            let event_id = DerivedId::event(&format!("referral-rescored:{revision}"), s.referral_id);
            OUTCOMES.with_label_values(&["fraud-scorer", "rescored"]).inc();
            tracing::info!(referral = %s.referral_id, from = before.as_str(), to = assessment.decision.as_str(), reasons = ?assessment.reasons(), cause = %causes[cause].text, "re-scored");
            w.out.push(self.scored(subject, &assessment, event_id, causes[cause].at));
            updates.push(Revision { referral_id: s.referral_id, revision, assessment, signals, cause, event_id });
        }
        update_latest(conn, &updates, causes).await?;
        w.history.extend(updates);
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

/// Adds `found` (referral, index of the batch event that found it) to `candidates`, keeping the
/// latest event for each referral.
fn merge(candidates: &mut BTreeMap<Uuid, usize>, found: Vec<(Uuid, i32)>) {
    for (referral_id, n) in found {
        let n = usize::try_from(n).unwrap_or(0);
        candidates.entry(referral_id).and_modify(|c| *c = (*c).max(n)).or_insert(n);
    }
}

/// The members of the rings the batch touched, each with the latest batch event that touched
/// its ring (`touched`: account, event index), as two parallel arrays for a query.
fn ring_candidates(components: &Components, touched: &[(&str, usize)]) -> (Vec<String>, Vec<i32>) {
    let mut latest: BTreeMap<&str, usize> = BTreeMap::new();
    for (user, i) in touched {
        let representative = components.representative(user);
        latest.entry(representative).and_modify(|n| *n = (*n).max(*i)).or_insert(*i);
    }
    components
        .ring_members()
        .into_iter()
        .filter_map(|(representative, member)| {
            latest.get(representative).map(|n| (member.to_owned(), i32::try_from(*n).unwrap_or(i32::MAX)))
        })
        .unzip()
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
    probabilistic_confidence: Option<rust_decimal::Decimal>,
    network_clicks: i32,
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
        "probabilistic_match_pct": e.probabilistic_match_pct,
        "network_clicks_on_code": e.network_clicks_on_code,
        "component": component.to_json(),
    })
}

fn signals_json(a: &Assessment, evidence: &Json) -> Json {
    let signals: Vec<_> = a.signals.iter().map(|s| json!({"code": s.code, "weight": s.weight, "detail": s.detail})).collect();
    json!({"signals": signals, "evidence": evidence})
}

/// The event id of a referral's first `ReferralScored` (revision 1).
fn first_event_id(referral_id: Uuid) -> Uuid {
    DerivedId::event("referral-scored", referral_id)
}

/// Stores the first assessments of a batch and, for each that was really inserted, its
/// revision 1 in `assessment_history`, in one statement; returns the referrals that had none.
/// The signals and evidence are written once, to the history: `assessments` holds a referral's
/// latest decision, score and reasons, and explain reads the signals of every revision from
/// `assessment_history` (migration 20261209100000).
async fn insert_first(
    conn: &mut PgConnection,
    subjects: &[Subject],
    firsts: &[(Assessment, Json)],
    causes: &[Cause],
) -> sqlx::Result<BTreeSet<Uuid>> {
    if subjects.is_empty() {
        return Ok(BTreeSet::new());
    }
    let ids: Vec<Uuid> = subjects.iter().map(|s| s.referral_id).collect();
    let referrers: Vec<&str> = subjects.iter().map(|s| s.referrer_id.as_str()).collect();
    let referees: Vec<&str> = subjects.iter().map(|s| s.referee_id.as_str()).collect();
    let scores: Vec<i32> = firsts.iter().map(|(a, _)| i32::from(a.score)).collect();
    let decisions: Vec<&str> = firsts.iter().map(|(a, _)| a.decision.as_str()).collect();
    let reasons: Vec<Json> = firsts.iter().map(|(a, _)| json!(a.reasons())).collect();
    let signals: Vec<&Json> = firsts.iter().map(|(_, s)| s).collect();
    let cause_ids: Vec<Uuid> = causes.iter().map(|c| c.event_id).collect();
    let event_ids: Vec<Uuid> = ids.iter().map(|id| first_event_id(*id)).collect();
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "WITH b AS MATERIALIZED (SELECT b.*, ARRAY(SELECT jsonb_array_elements_text(b.reasons)) AS reason_list \
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[], $6::jsonb[], $7::jsonb[], $8::uuid[], $9::uuid[]) \
           AS b(id, referrer, referee, score, decision, reasons, signals, cause, event_id)), \
         a AS (INSERT INTO assessments (referral_id, referrer_id, referee_id, score, decision, reasons, rule_version, revision, cause, cause_event_id) \
           SELECT id, referrer, referee, score, decision, reason_list, $10, 1, 'referral attributed', cause FROM b \
           ORDER BY id ON CONFLICT (referral_id) DO NOTHING RETURNING referral_id), \
         h AS (INSERT INTO assessment_history (referral_id, revision, score, decision, reasons, signals, rule_version, cause, event_id, cause_event_id) \
           SELECT b.id, 1, b.score, b.decision, b.reason_list, b.signals, $10, 'referral attributed', b.event_id, b.cause \
           FROM b JOIN a ON a.referral_id = b.id ORDER BY b.id ON CONFLICT DO NOTHING) \
         SELECT referral_id FROM a",
    )
    .bind(&ids)
    .bind(&referrers)
    .bind(&referees)
    .bind(&scores)
    .bind(&decisions)
    .bind(&reasons)
    .bind(&signals)
    .bind(&cause_ids)
    .bind(&event_ids)
    .bind(RULE_VERSION)
    .fetch_all(&mut *conn)
    .await?;
    Ok(inserted.into_iter().collect())
}

/// Makes each revision of `updates` the latest assessment of its referral, in one statement.
async fn update_latest(conn: &mut PgConnection, updates: &[Revision], causes: &[Cause]) -> sqlx::Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = updates.iter().map(|u| u.referral_id).collect();
    let scores: Vec<i32> = updates.iter().map(|u| i32::from(u.assessment.score)).collect();
    let decisions: Vec<&str> = updates.iter().map(|u| u.assessment.decision.as_str()).collect();
    let reasons: Vec<Json> = updates.iter().map(|u| json!(u.assessment.reasons())).collect();
    let revisions: Vec<i32> = updates.iter().map(|u| u.revision).collect();
    let cause_texts: Vec<&str> = updates.iter().map(|u| causes[u.cause].text.as_str()).collect();
    let cause_ids: Vec<Uuid> = updates.iter().map(|u| causes[u.cause].event_id).collect();
    sqlx::query(
        "UPDATE assessments a SET score = b.score, decision = b.decision, reasons = ARRAY(SELECT jsonb_array_elements_text(b.reasons)), \
           signals = '[]', rule_version = $8, revision = b.revision, cause = b.cause, cause_event_id = b.cause_id, assessed_at = now() \
         FROM unnest($1::uuid[], $2::int[], $3::text[], $4::jsonb[], $5::int[], $6::text[], $7::uuid[]) \
           AS b(id, score, decision, reasons, revision, cause, cause_id) \
         WHERE a.referral_id = b.id",
    )
    .bind(&ids)
    .bind(&scores)
    .bind(&decisions)
    .bind(&reasons)
    .bind(&revisions)
    .bind(&cause_texts)
    .bind(&cause_ids)
    .bind(RULE_VERSION)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Appends the batch's re-assessments to `assessment_history`, in one insert (first assessments
/// are written with their history by [`insert_first`]).
async fn insert_history(conn: &mut PgConnection, history: &[Revision], causes: &[Cause]) -> sqlx::Result<()> {
    if history.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = history.iter().map(|h| h.referral_id).collect();
    let revisions: Vec<i32> = history.iter().map(|h| h.revision).collect();
    let scores: Vec<i32> = history.iter().map(|h| i32::from(h.assessment.score)).collect();
    let decisions: Vec<&str> = history.iter().map(|h| h.assessment.decision.as_str()).collect();
    let reasons: Vec<Json> = history.iter().map(|h| json!(h.assessment.reasons())).collect();
    let signals: Vec<&Json> = history.iter().map(|h| &h.signals).collect();
    let cause_texts: Vec<&str> = history.iter().map(|h| causes[h.cause].text.as_str()).collect();
    let event_ids: Vec<Uuid> = history.iter().map(|h| h.event_id).collect();
    let cause_ids: Vec<Uuid> = history.iter().map(|h| causes[h.cause].event_id).collect();
    sqlx::query(
        "INSERT INTO assessment_history (referral_id, revision, score, decision, reasons, signals, rule_version, cause, event_id, cause_event_id) \
         SELECT b.id, b.revision, b.score, b.decision, ARRAY(SELECT jsonb_array_elements_text(b.reasons)), b.signals, $10, b.cause, b.event_id, b.cause_id \
         FROM unnest($1::uuid[], $2::int[], $3::int[], $4::text[], $5::jsonb[], $6::jsonb[], $7::text[], $8::uuid[], $9::uuid[]) \
           AS b(id, revision, score, decision, reasons, signals, cause, event_id, cause_id) \
         ORDER BY b.id, b.revision ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(&revisions)
    .bind(&scores)
    .bind(&decisions)
    .bind(&reasons)
    .bind(&signals)
    .bind(&cause_texts)
    .bind(&event_ids)
    .bind(&cause_ids)
    .bind(RULE_VERSION)
    .execute(&mut *conn)
    .await?;
    Ok(())
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

    /// A deposit batch's payment instruments, locked before [`Self::apply`] reads any link.
    fn batch_locks(&self, events: &[&Input]) -> BatchLocks {
        let cards: Vec<(&str, &str)> = events
            .iter()
            .filter_map(|e| match e {
                Input::Deposit(d) => Some((d.user_id.as_str(), d.payment_fingerprint.as_deref()?)),
                Input::Attributed(_) => None,
            })
            .collect();
        BatchLocks { seed: locks::KEY_SEED, keys: graph::payment_keys(&cards).into_iter().collect() }
    }

    async fn apply(&self, batch: &mut Batch<'_>, events: &[Input]) -> sqlx::Result<()> {
        let attributed: Vec<&ReferralAttributed> = events
            .iter()
            .filter_map(|e| match e {
                Input::Attributed(r) => Some(r),
                Input::Deposit(_) => None,
            })
            .collect();
        let deposits: Vec<&DepositCompleted> = events
            .iter()
            .filter_map(|e| match e {
                Input::Deposit(d) => Some(d),
                Input::Attributed(_) => None,
            })
            .collect();
        // A batch is one partition of one topic, so one of the two is empty.
        let mut writes = Writes::default();
        let mut causes = Vec::new();
        if !attributed.is_empty() {
            let _slot = self.attributed_slots.acquire().await.map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
            causes = self.apply_attributed(batch.conn, &attributed, &mut writes).await?;
        }
        if !deposits.is_empty() {
            let offset = causes.len();
            let mut more = Writes::default();
            causes.extend(self.apply_deposits(batch.conn, &deposits, &mut more).await?);
            for mut h in more.history {
                h.cause += offset;
                writes.history.push(h);
            }
            writes.out.extend(more.out);
        }
        insert_history(batch.conn, &writes.history, &causes).await?;
        enqueue(batch.conn, &writes.out).await
    }
}
