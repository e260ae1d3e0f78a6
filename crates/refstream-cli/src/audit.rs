//! `refstream audit`: proves, from Postgres and the Kafka topics, that every cent is explained.
//! One line per check (`ok` or `FAIL` with the first offenders); exits non-zero on any failure.
//! Read-only: it takes no lock and writes nothing, so it can run against a live fleet (records
//! still in the outbox count as on their way, not as missing).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use refstream_core::campaign::{Campaign, Qualification};
use refstream_core::events::{RewardGranted, RewardReversed};
use refstream_core::rewards::{self, Paid};
use refstream_core::{Currency, DerivedId, Money};
use refstream_runtime::campaign_store;
use refstream_runtime::codec::Decoder;
use refstream_runtime::consumer::client_config;
use refstream_runtime::Settings;
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

/// One check's outcome: what was checked, how many, and the first offenders.
struct Check {
    name: String,
    offenders: Vec<String>,
    detail: String,
}

impl Check {
    fn new(name: &str, detail: String, offenders: Vec<String>) -> Self {
        Self { name: name.to_owned(), offenders, detail }
    }
}

pub async fn run(settings: &Settings, pool: &PgPool) -> anyhow::Result<()> {
    let mut checks = ledger(pool).await?;
    checks.extend(rewards(settings, pool).await?);
    checks.push(limits(pool).await?);
    checks.extend(topics(settings, pool).await?);
    let mut failed = 0;
    for c in &checks {
        if c.offenders.is_empty() {
            println!("ok    {} ({})", c.name, c.detail);
        } else {
            failed += 1;
            println!(
                "FAIL  {} ({}): {} offender(s), first: {}",
                c.name,
                c.detail,
                c.offenders.len(),
                c.offenders.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            );
        }
    }
    if failed > 0 {
        anyhow::bail!("audit failed: {failed} of {} checks", checks.len());
    }
    println!("audit passed: {} checks", checks.len());
    Ok(())
}

async fn strings(pool: &PgPool, sql: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(sql).fetch_all(pool).await
}

/// The books: per currency and per transaction the ledger sums to zero; balances equal it.
async fn ledger(pool: &PgPool) -> anyhow::Result<Vec<Check>> {
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_entries").fetch_one(pool).await?;
    let currencies =
        strings(pool, "SELECT currency || ' off by ' || sum(amount) FROM ledger_entries GROUP BY currency HAVING sum(amount) <> 0").await?;
    let transactions =
        strings(pool, "SELECT transaction_id::text || ' off by ' || sum(amount) FROM ledger_entries GROUP BY transaction_id HAVING sum(amount) <> 0 OR count(*) <> 2")
            .await?;
    let balances = strings(
        pool,
        "SELECT account || ' ' || currency || ': balance ' || COALESCE(b.balance, 0) || ', ledger ' || COALESCE(l.s, 0) \
         FROM balances b FULL JOIN (SELECT account, currency, sum(amount) s FROM ledger_entries GROUP BY 1, 2) l USING (account, currency) \
         WHERE COALESCE(b.balance, 0) <> COALESCE(l.s, 0)",
    )
    .await?;
    // Grants and reversals name their reward (a funding names none); the schema no longer
    // checks it (migration 20261213100000), so the audit does.
    let orphans = strings(
        pool,
        "SELECT e.entry_id || ' (' || e.kind || ') names reward ' || COALESCE(e.reward_id::text, 'none') FROM ledger_entries e \
         WHERE (e.kind <> 'fund' OR e.reward_id IS NOT NULL) \
           AND NOT EXISTS (SELECT 1 FROM rewards w WHERE w.reward_id = e.reward_id) ORDER BY e.entry_id",
    )
    .await?;
    Ok(vec![
        Check::new("the ledger sums to zero per currency", format!("{entries} entries"), currencies),
        Check::new("every grant and reversal entry names a recorded reward", format!("{entries} entries"), orphans),
        Check::new("every ledger transaction is two entries summing to zero", format!("{} transactions", entries / 2), transactions),
        Check::new("every balance equals its ledger", "balances against sums of entries".into(), balances),
    ])
}

#[derive(sqlx::FromRow)]
struct RewardRow {
    reward_id: Uuid,
    reward_type: String,
    beneficiary_id: String,
    role: String,
    amount: Decimal,
    currency: String,
    campaign_id: String,
    terms_version: i32,
    qualifying_deposit_id: String,
    fx_rate: Option<Decimal>,
    reversed_at: Option<DateTime<Utc>>,
    reversal_reason: Option<String>,
    reversal_assessment_event_id: Option<Uuid>,
    kind: String,
    wagering_requirement: Option<Decimal>,
    level: i16,
    milestone: Option<i32>,
    /// Milestone: the referrer's rewarded referrals in the campaign when it was granted.
    referrals_by_then: Option<i64>,
    referrer_id: Option<String>,
    referee_id: Option<String>,
    registered_at: Option<DateTime<Utc>>,
    referral_campaign: Option<String>,
    referral_version: Option<i32>,
    deposit_user: Option<String>,
    deposit_amount: Option<Decimal>,
    deposit_currency: Option<String>,
    deposit_at: Option<DateTime<Utc>>,
    refund: Option<String>,
    grant_user: Option<Decimal>,
    grant_campaign: Option<Decimal>,
    reverse_user: Option<Decimal>,
    reverse_campaign: Option<Decimal>,
}

/// The campaign versions rewards say they were paid by (version 0: the default campaign).
async fn terms(settings: &Settings, pool: &PgPool, keys: BTreeSet<(String, i32)>) -> anyhow::Result<HashMap<(String, i32), Campaign>> {
    let default = settings.campaign()?;
    let (defaults, stored): (Vec<_>, Vec<_>) = keys.into_iter().partition(|(_, v)| *v == 0);
    let mut out: HashMap<(String, i32), Campaign> = defaults.into_iter().map(|k| (k, default.clone())).collect();
    for (id, version, definition) in campaign_store::definitions(&mut *pool.acquire().await?, &stored).await? {
        if let Ok((campaign, _)) = definition.validate() {
            out.insert((id, version), campaign);
        }
    }
    Ok(out)
}

/// Every reward against its referral, its qualifying deposit, its terms and its ledger entries;
/// every reversal against its cause.
async fn rewards(settings: &Settings, pool: &PgPool) -> anyhow::Result<Vec<Check>> {
    // The beneficiary's balance of the reward's kind: cash or bonus. Each reward's entries are
    // summed in one pass over the ledger, joined by reward (a sum per reward as a correlated
    // subquery scanned the campaign's entries once per reward: 138 s for 26,000 rewards).
    let account = "CASE w.kind WHEN 'BONUS' THEN 'user:' || w.beneficiary_id || ':bonus' ELSE 'user:' || w.beneficiary_id END";
    let rows: Vec<RewardRow> = sqlx::query_as(&format!(
        "SELECT w.reward_id, w.reward_type, w.beneficiary_id, w.role, w.amount, w.currency::text AS currency, w.campaign_id, w.terms_version, \
                w.qualifying_deposit_id, w.fx_rate, w.reversed_at, w.reversal_reason, w.reversal_assessment_event_id, \
                w.kind, w.wagering_requirement, w.level, w.milestone, \
                CASE WHEN w.milestone IS NOT NULL THEN (SELECT count(DISTINCT o.referral_id) FROM rewards o JOIN referrals orf USING (referral_id) \
                     WHERE o.campaign_id = w.campaign_id AND orf.referrer_id = r.referrer_id AND o.level = 1 AND o.milestone IS NULL \
                       AND o.granted_at <= w.granted_at) END AS referrals_by_then, \
                r.referrer_id, r.referee_id, r.referee_registered_at AS registered_at, r.campaign_id AS referral_campaign, \
                r.terms_version AS referral_version, d.user_id AS deposit_user, d.amount AS deposit_amount, \
                d.currency::text AS deposit_currency, d.occurred_at AS deposit_at, x.reason AS refund, \
                l.grant_user, l.grant_campaign, l.reverse_user, l.reverse_campaign \
         FROM rewards w LEFT JOIN referrals r USING (referral_id) LEFT JOIN deposits d ON d.deposit_id = w.qualifying_deposit_id \
         LEFT JOIN deposit_reversals x ON x.deposit_id = w.qualifying_deposit_id \
         LEFT JOIN (SELECT e.reward_id, \
                      sum(e.amount) FILTER (WHERE e.kind = 'grant' AND e.account = {account}) AS grant_user, \
                      sum(e.amount) FILTER (WHERE e.kind = 'grant' AND e.account LIKE 'campaign:%') AS grant_campaign, \
                      sum(e.amount) FILTER (WHERE e.kind = 'reverse' AND e.account = {account}) AS reverse_user, \
                      sum(e.amount) FILTER (WHERE e.kind = 'reverse' AND e.account LIKE 'campaign:%') AS reverse_campaign \
                    FROM ledger_entries e JOIN rewards w ON w.reward_id = e.reward_id GROUP BY e.reward_id) l ON l.reward_id = w.reward_id \
         ORDER BY w.reward_id"
    ))
    .fetch_all(pool)
    .await?;
    let keys = rows.iter().map(|r| (r.campaign_id.clone(), r.terms_version)).collect();
    let terms = terms(settings, pool, keys).await?;
    let rates = campaign_store::exchange_rates(&mut *pool.acquire().await?).await?;
    // Who referred whom, for multi-level rewards (read only when there are any).
    let parent_of: HashMap<String, String> = if rows.iter().any(|r| r.level > 1) {
        sqlx::query_as::<_, (String, String)>("SELECT referee_id, referrer_id FROM referrals").fetch_all(pool).await?.into_iter().collect()
    } else {
        HashMap::new()
    };
    let (mut mapped, mut under_terms, mut booked, mut reversals) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in &rows {
        let id = r.reward_id;
        // One referral and one deposit of its referee, bound to the campaign stamped on the reward.
        let (Some(referee), Some(referrer), Some(registered_at)) = (&r.referee_id, &r.referrer_id, r.registered_at) else {
            mapped.push(format!("{id}: no referral"));
            continue;
        };
        let (Some(deposit_user), Some(amount), Some(currency), Some(at)) =
            (&r.deposit_user, r.deposit_amount, &r.deposit_currency, r.deposit_at)
        else {
            mapped.push(format!("{id}: qualifying deposit {} not recorded", r.qualifying_deposit_id));
            continue;
        };
        if deposit_user != referee {
            mapped.push(format!("{id}: deposit {} is {deposit_user}'s, the referee is {referee}", r.qualifying_deposit_id));
        }
        if r.referral_campaign.as_deref() != Some(r.campaign_id.as_str()) || r.referral_version != Some(r.terms_version) {
            mapped.push(format!(
                "{id}: paid by {} v{}, the referral is bound to {:?} v{:?}",
                r.campaign_id, r.terms_version, r.referral_campaign, r.referral_version
            ));
        }
        // The terms: the deposit qualifies, the reward is one of the campaign's, to the right
        // person, of the right amount.
        let Some(campaign) = terms.get(&(r.campaign_id.clone(), r.terms_version)) else {
            under_terms.push(format!("{id}: campaign {} version {} unknown", r.campaign_id, r.terms_version));
            continue;
        };
        let Ok(currency) = Currency::parse(currency.trim()) else {
            under_terms.push(format!("{id}: deposit currency {currency}"));
            continue;
        };
        // In another currency: converted at the rate in force at the deposit's time, the one
        // stamped on the reward.
        let Some(converted) = rates.convert(Money::new(amount, currency), campaign.currency, at) else {
            under_terms
                .push(format!("{id}: no {currency}->{} rate was in force at deposit {}", campaign.currency, r.qualifying_deposit_id));
            continue;
        };
        if converted.rate.map(|(rate, _)| rate) != r.fx_rate {
            under_terms.push(format!("{id}: stamped rate {:?}, the rate in force {:?}", r.fx_rate, converted.rate.map(|x| x.0)));
        }
        let amount = converted.amount.amount;
        let q = campaign.qualifies(&converted.amount, at, registered_at);
        if q != Qualification::Qualifies {
            under_terms.push(format!("{id}: deposit {} does not qualify ({q:?})", r.qualifying_deposit_id));
        }
        let upline =
            if r.level > 1 { rewards::upline(referee, referrer, &parent_of, usize::from(r.level.unsigned_abs())) } else { Vec::new() };
        let expected = rewards::grants(
            campaign,
            Paid {
                referrer,
                referee,
                upline: &upline,
                deposit: amount,
                rewarded_before: r.milestone.and_then(|m| u32::try_from(m - 1).ok()).unwrap_or(u32::MAX - 1),
            },
        );
        match expected.iter().find(|g| g.reward_type == r.reward_type) {
            None => under_terms.push(format!(
                "{id}: {} (level {}) is not a reward of {} v{} for this referral",
                r.reward_type, r.level, r.campaign_id, r.terms_version
            )),
            Some(want) => {
                let paid = (&r.beneficiary_id, r.role.as_str(), r.level, r.milestone, r.kind.as_str(), r.wagering_requirement);
                let terms = (
                    &want.beneficiary,
                    want.role.as_str(),
                    i16::from(want.level),
                    want.milestone.and_then(|m| i32::try_from(m).ok()),
                    want.kind.as_str(),
                    want.wagering_requirement,
                );
                if want.amount.amount != r.amount || want.amount.currency.as_str() != r.currency.trim() {
                    under_terms.push(format!("{id}: paid {} {}, the terms say {}", r.amount, r.currency, want.amount));
                }
                if paid != terms {
                    under_terms.push(format!(
                        "{id}: paid as (beneficiary, role, level, milestone, kind, wagering) {paid:?}, the terms say {terms:?}"
                    ));
                }
                // A milestone: the referrer had reached it when it was granted.
                if let Some(m) = r.milestone {
                    if r.referrals_by_then.unwrap_or(0) < i64::from(m) {
                        under_terms.push(format!("{id}: milestone {m} granted after {:?} rewarded referrals", r.referrals_by_then));
                    }
                }
            }
        }
        // The ledger: the grant credits the user and debits the campaign by the amount; a
        // reversal books exactly its negation, and only a reversal does.
        if r.grant_user != Some(r.amount) || r.grant_campaign != Some(-r.amount) {
            booked.push(format!("{id}: grant entries {:?} / {:?} for {}", r.grant_user, r.grant_campaign, r.amount));
        }
        let reversed_booked = r.reverse_user.is_some() || r.reverse_campaign.is_some();
        if r.reversed_at.is_some() != reversed_booked
            || (reversed_booked && (r.reverse_user != Some(-r.amount) || r.reverse_campaign != Some(r.amount)))
        {
            booked.push(format!("{id}: reversed {:?}, reverse entries {:?} / {:?}", r.reversed_at, r.reverse_user, r.reverse_campaign));
        }
        // Every reversal has its cause: a refund or chargeback of the qualifying deposit, or the
        // assessment that found fraud after payment.
        if r.reversed_at.is_some() {
            let ok = match r.reversal_reason.as_deref() {
                Some("FRAUD") => r.reversal_assessment_event_id.is_some(),
                Some(reason) => r.refund.as_deref() == Some(reason),
                None => false,
            };
            if !ok {
                reversals
                    .push(format!("{id}: reversed ({:?}) without a matching refund, chargeback or fraud assessment", r.reversal_reason));
            }
        }
    }
    let n = rows.len();
    let reversed = rows.iter().filter(|r| r.reversed_at.is_some()).count();
    Ok(vec![
        Check::new(
            "every reward maps to one referral and one deposit of its referee, under the terms bound to it",
            format!("{n} rewards"),
            mapped,
        ),
        Check::new(
            "no reward exceeds its campaign's terms (qualifying deposit, reward type, beneficiary, level, milestone, kind, amount or tier)",
            format!("{n} rewards, {} campaign versions", terms.len()),
            under_terms,
        ),
        Check::new("every reward is booked once, and every reversal books its exact negation", format!("{n} rewards"), booked),
        Check::new("every reversal matches a refund, a chargeback or a fraud assessment", format!("{reversed} reversals"), reversals),
    ])
}

/// No campaign has paid beyond the caps and budget of its current version.
async fn limits(pool: &PgPool) -> anyhow::Result<Check> {
    let latest = campaign_store::latest_definitions(&mut *pool.acquire().await?, None).await?;
    let mut offenders = Vec::new();
    let mut limited = 0;
    for (id, d) in latest {
        let Ok(l) = d.limits() else { continue };
        if l.is_empty() {
            continue;
        }
        limited += 1;
        let (referrals, spent): (i64, Decimal) = sqlx::query_as(
            "SELECT count(DISTINCT referral_id), COALESCE(sum(amount), 0) FROM rewards WHERE campaign_id = $1 AND reversed_at IS NULL",
        )
        .bind(&id)
        .fetch_one(pool)
        .await?;
        if l.max_rewarded_referrals.is_some_and(|m| referrals > i64::from(m)) {
            offenders.push(format!("{id}: {referrals} rewarded referrals, limit {:?}", l.max_rewarded_referrals));
        }
        if let Some(budget) = l.budget {
            if spent > budget.amount {
                offenders.push(format!("{id}: paid {spent}, budget {budget}"));
            }
            // Its account holds the budget, less what it paid: never below zero.
            let (funded, balance): (Decimal, Decimal) = sqlx::query_as(
                "SELECT (SELECT COALESCE(sum(amount), 0) FROM ledger_entries WHERE account = 'campaign:' || $1 AND currency = $2 AND kind = 'fund'), \
                        (SELECT COALESCE(sum(balance), 0) FROM balances WHERE account = 'campaign:' || $1 AND currency = $2)",
            )
            .bind(&id)
            .bind(budget.currency.as_str())
            .fetch_one(pool)
            .await?;
            if funded != budget.amount || balance != budget.amount - spent || balance < Decimal::ZERO {
                offenders.push(format!("{id}: account funded {funded} of budget {budget}, holds {balance}, paid {spent}"));
            }
        }
        if let Some(max) = l.per_referrer {
            let over: Vec<String> = sqlx::query_scalar(
                "SELECT r.referrer_id || ' has ' || count(DISTINCT w.referral_id) FROM rewards w JOIN referrals r USING (referral_id)                  WHERE w.campaign_id = $1 AND w.reversed_at IS NULL GROUP BY r.referrer_id HAVING count(DISTINCT w.referral_id) > $2",
            )
            .bind(&id)
            .bind(i64::from(max))
            .fetch_all(pool)
            .await?;
            offenders.extend(over.into_iter().map(|o| format!("{id}: {o} rewarded referrals, per-referrer cap {max}")));
        }
    }
    Ok(Check::new(
        "no campaign paid beyond its caps and budget; a budgeted campaign's account holds its budget less what it paid, never below zero",
        format!("{limited} limited campaign(s)"),
        offenders,
    ))
}

/// Reads a topic from the beginning to its end offsets; returns each record's payload.
fn read_all(settings: &Settings, topic: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let consumer: BaseConsumer = client_config(settings)
        .set("group.id", format!("refstream-audit-{}", Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(10))?;
        if high > low {
            ends.insert(*p, high);
            tpl.add_partition_offset(topic, *p, Offset::Offset(low))?;
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ends.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "reading {topic}: partitions {:?} did not reach their end offsets", ends.keys());
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(m.payload().unwrap_or_default().to_vec());
                if ends.get(&m.partition()).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(&m.partition());
                }
            }
            Some(Err(e)) => anyhow::bail!("reading {topic}: {e}"),
            None => {}
        }
    }
    Ok(out)
}

/// A reward row as the topic check needs it: id, beneficiary, amount, currency, reversed at.
type Stored = (Uuid, String, Decimal, String, Option<DateTime<Utc>>);

/// Every RewardGranted / RewardReversed on Kafka has its row, and every row its record (or its
/// record is still in the outbox, on its way).
async fn topics(settings: &Settings, pool: &PgPool) -> anyhow::Result<Vec<Check>> {
    // Rows and the outbox first (one snapshot), then the topics: a reward relayed meanwhile is
    // on Kafka, and one granted meanwhile is looked up again below, so a live fleet raises no
    // false alarm either way.
    let mut snapshot = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *snapshot).await?;
    let mut rows: Vec<Stored> = sqlx::query_as("SELECT reward_id, beneficiary_id, amount, currency::text, reversed_at FROM rewards")
        .fetch_all(&mut *snapshot)
        .await?;
    let in_outbox: BTreeSet<Uuid> =
        sqlx::query_scalar::<_, Uuid>("SELECT event_id FROM outbox").fetch_all(&mut *snapshot).await?.into_iter().collect();
    snapshot.commit().await?;
    let granted_topic = settings.topics.reward_granted.clone();
    let reversed_topic = settings.topics.reward_reversed.clone();
    let s = settings.clone();
    let (granted, reversed) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> { Ok((read_all(&s, &granted_topic)?, read_all(&s, &reversed_topic)?)) })
            .await??;
    let now = Utc::now();
    let decoder = Decoder::default();
    let known: BTreeSet<Uuid> = rows.iter().map(|r| r.0).collect();
    let mut later: Vec<Uuid> = Vec::new();
    for payload in &granted {
        if let Ok(g) = decoder.decode::<RewardGranted>(payload, now) {
            later.push(g.reward_id);
        }
    }
    for payload in &reversed {
        if let Ok(r) = decoder.decode::<RewardReversed>(payload, now) {
            later.push(r.reward_id);
        }
    }
    later.retain(|id| !known.contains(id));
    if !later.is_empty() {
        let late: Vec<Stored> =
            sqlx::query_as("SELECT reward_id, beneficiary_id, amount, currency::text, reversed_at FROM rewards WHERE reward_id = ANY($1)")
                .bind(&later)
                .fetch_all(pool)
                .await?;
        rows.extend(late);
    }
    let by_id: HashMap<Uuid, &Stored> = rows.iter().map(|r| (r.0, r)).collect();

    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for payload in &granted {
        match decoder.decode::<RewardGranted>(payload, now) {
            Ok(g) => {
                seen.insert(g.reward_id);
                match by_id.get(&g.reward_id) {
                    None => problems.push(format!("RewardGranted {} has no reward row", g.reward_id)),
                    Some((_, who, amount, currency, _)) => {
                        if g.user_id.as_str() != who || g.amount.amount != *amount || g.amount.currency.as_str() != currency.trim() {
                            problems.push(format!(
                                "RewardGranted {} says {} {} to {}, the row {amount} {currency} to {who}",
                                g.reward_id,
                                g.amount.amount,
                                g.amount.currency.as_str(),
                                g.user_id
                            ));
                        }
                    }
                }
            }
            Err(e) => problems.push(format!("a reward-granted record does not decode: {e}")),
        }
    }
    for (id, ..) in &rows {
        if !seen.contains(id) && !in_outbox.contains(&DerivedId::event("reward-granted", *id)) {
            problems.push(format!("reward {id} has no RewardGranted record"));
        }
    }
    let mut reverse_problems = Vec::new();
    let mut seen_reversed = BTreeSet::new();
    for payload in &reversed {
        match decoder.decode::<RewardReversed>(payload, now) {
            Ok(r) => {
                seen_reversed.insert(r.reward_id);
                match by_id.get(&r.reward_id) {
                    Some((_, _, amount, _, Some(_))) if r.amount.amount == *amount => {}
                    Some(_) => {
                        reverse_problems.push(format!("RewardReversed {} does not match a reversed reward of that amount", r.reward_id))
                    }
                    None => reverse_problems.push(format!("RewardReversed {} has no reward row", r.reward_id)),
                }
            }
            Err(e) => reverse_problems.push(format!("a reward-reversed record does not decode: {e}")),
        }
    }
    for (id, _, _, _, reversed_at) in &rows {
        if reversed_at.is_some() && !seen_reversed.contains(id) && !in_outbox.contains(&DerivedId::event("reward-reversed", *id)) {
            reverse_problems.push(format!("reversed reward {id} has no RewardReversed record"));
        }
    }
    Ok(vec![
        Check::new(
            "every RewardGranted on Kafka has its reward row and every reward its record",
            format!(
                "{} records ({} distinct), {} rows, {} on their way in the outbox",
                granted.len(),
                seen.len(),
                rows.len(),
                in_outbox.len()
            ),
            problems,
        ),
        Check::new(
            "every RewardReversed on Kafka has its reversed reward and every reversal its record",
            format!("{} records ({} distinct)", reversed.len(), seen_reversed.len()),
            reverse_problems,
        ),
    ])
}
