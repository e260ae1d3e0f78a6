//! Settlement: every reward is credited here, by a sweep, and only behind an open barrier
//! ([`crate::gate`]): its hold (`campaign.settle_delay_secs` after the qualifying deposit was
//! recorded, by Postgres's clock) has ended AND the fraud scorer has applied everything that
//! had arrived in the stream by then. The sweep then applies the scorer's latest committed
//! assessment (only tightening, as its `ReferralScored` will), re-checks the payment
//! instrument, and pays through the unique reward key — set-based: one transaction settles up to
//! `settlement.batch_size` payouts with a handful of statements. Several engines may sweep at
//! once: payouts are claimed with `FOR UPDATE SKIP LOCKED`, referrals locked in id order. The
//! sweep vacuums `pending_payouts` every two seconds while it settles ([`vacuum_payouts`]): the
//! claim reads the table's deleted rows until then.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use refstream_core::lifecycle::{self, Decision};
use refstream_core::settlement::{settle, AtSettlement, Verdict};
use refstream_runtime::ledger::book;
use refstream_runtime::metrics::OUTCOMES;
use refstream_runtime::outbox::enqueue;
use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::gate::{self, EndOffsets};
use crate::ledger::{self, Payment};
use crate::store::{self, Move};
use crate::RewardEngine;
use crate::{limits, plan};

/// A claimed payout: its referral and the barrier that let it settle.
struct Claimed {
    referral_id: Uuid,
    barrier_id: i64,
    hold_ended_at: DateTime<Utc>,
}

/// A claimed payout as the claim returns it: with its referral, locked.
#[derive(sqlx::FromRow)]
struct ClaimedRow {
    #[sqlx(flatten)]
    referral: store::Referral,
    barrier_id: i64,
    hold_ended_at: DateTime<Utc>,
}

/// The deposit that pays a referral at settlement: its id, amount in the campaign's currency,
/// event time and the exchange rate that converted it.
struct ToPay {
    deposit_id: String,
    amount: Decimal,
    at: DateTime<Utc>,
    fx: Option<(Decimal, DateTime<Utc>)>,
}

/// Settles up to `limit` payouts whose barrier is open; returns how many were settled (paid
/// or not). `claimed_full`, when given, is told as soon as the claim returns whether it took
/// `limit` payouts (a backlog: more are likely waiting), before the rest of the transaction.
async fn settle_open(engine: &RewardEngine, pool: &PgPool, limit: i64, claimed_full: Option<oneshot::Sender<bool>>) -> sqlx::Result<usize> {
    let mut tx = pool.begin().await?;
    // The claim takes the payouts an open barrier covers (due by the latest open barrier's
    // moment), oldest first, deletes them, names the first open barrier that covered each, and
    // locks their referrals (in id order, as every writer of referrals does) in one statement; a
    // referral it waited for is returned as committed. The delete finds the claimed payouts by
    // key: joined to the claim, the planner hashed the whole queue (20,000 rows in a burst) for
    // each claim.
    let rows: Vec<ClaimedRow> = sqlx::query_as(&format!(
        "WITH due AS (SELECT p.referral_id FROM pending_payouts p \
                      WHERE p.due_at <= (SELECT max(hold_ended_at) FROM settlement_barriers WHERE stage = 'open') \
                      ORDER BY p.due_at LIMIT $1 FOR UPDATE OF p SKIP LOCKED), \
              claimed AS (DELETE FROM pending_payouts p WHERE p.referral_id = ANY (ARRAY(SELECT referral_id FROM due)) \
                          RETURNING p.referral_id, p.due_at) \
         SELECT {}, b.barrier_id, b.hold_ended_at FROM referrals r JOIN claimed c USING (referral_id) \
         CROSS JOIN LATERAL (SELECT o.barrier_id, o.hold_ended_at FROM settlement_barriers o \
                             WHERE o.stage = 'open' AND o.hold_ended_at >= c.due_at \
                             ORDER BY o.hold_ended_at, o.barrier_id LIMIT 1) b \
         ORDER BY r.referral_id FOR UPDATE OF r",
        store::REFERRAL_COLUMNS
    ))
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if let Some(told) = claimed_full {
        // The receiver may have stopped listening; nothing to do then.
        let _ = told.send(i64::try_from(rows.len()).is_ok_and(|n| n >= limit));
    }
    if rows.is_empty() {
        return Ok(0);
    }
    let claimed: Vec<Claimed> = rows
        .iter()
        .map(|r| Claimed { referral_id: r.referral.referral_id, barrier_id: r.barrier_id, hold_ended_at: r.hold_ended_at })
        .collect();
    engine.terms.load(&mut tx, rows.iter().map(|r| &r.referral)).await?;
    let mut referrals: BTreeMap<Uuid, store::Referral> = rows.into_iter().map(|r| (r.referral.referral_id, r.referral)).collect();
    // A payout is never settled without the terms it pays by: rolled back (the payout stays)
    // and the sweep reports the failure until the campaign version is readable again.
    if let Some(r) = referrals.values().find(|r| engine.terms.of(r).is_none()) {
        return Err(sqlx::Error::Protocol(format!(
            "referral {} is bound to campaign {} version {}, which cannot be read: not settled",
            r.referral_id, r.campaign_id, r.terms_version
        )));
    }
    // The scorer's latest verdict on each, and whether its referrer and referee have paid with
    // one instrument, in one statement (after the referrals' locks, as everything below), from
    // the claimed referrals' ids and users (the claim read them; read again by key they cost a
    // lookup each). The instrument check is a lateral lookup per referral, by each user's
    // deposits: as an EXISTS in the select list, the planner could hash every deposit instead
    // (33 ms a call). The verdict is a lookup per referral too (`OFFSET 0` keeps it one):
    // joined, the planner hashed every assessment for each batch (10 ms of 1,000 payouts at
    // 26,000 assessments).
    let mut verdicts: BTreeMap<Uuid, Verdict> = BTreeMap::new();
    let mut shared: BTreeSet<Uuid> = BTreeSet::new();
    let found: Vec<(Uuid, Option<String>, Option<i32>, bool)> = sqlx::query_as(
        "SELECT c.id, a.decision, a.revision, s.shared IS NOT NULL \
         FROM unnest($1::uuid[], $2::text[], $3::text[]) AS c(id, referrer, referee) \
         LEFT JOIN LATERAL (SELECT decision, revision FROM assessments WHERE referral_id = c.id OFFSET 0) a ON true \
         LEFT JOIN LATERAL (SELECT true AS shared FROM deposits x JOIN deposits y ON y.payment_fingerprint = x.payment_fingerprint \
                            WHERE x.user_id = c.referrer AND y.user_id = c.referee LIMIT 1) s ON true",
    )
    .bind(referrals.values().map(|r| r.referral_id).collect::<Vec<_>>())
    .bind(referrals.values().map(|r| r.referrer_id.as_str()).collect::<Vec<_>>())
    .bind(referrals.values().map(|r| r.referee_id.as_str()).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    for (id, decision, revision, same_instrument) in found {
        if let (Some(decision), Some(revision)) = (decision.and_then(|d| d.parse::<Decision>().ok()), revision) {
            verdicts.insert(id, Verdict { decision, revision });
        }
        if same_instrument {
            shared.insert(id);
        }
    }
    let referees: Vec<String> = referrals.values().map(|r| r.referee_id.clone()).collect();
    let deposits = store::deposits_of(&mut tx, &referees).await?;
    let rates = store::rates_for(&mut tx, engine, referrals.values(), &deposits).await?;
    let kyc = crate::kyc::states_of(&mut tx, engine, referrals.values()).await?;

    let mut moves: Vec<Move> = Vec::new();
    // (referral, the deposit that pays it, its claimed payout)
    let mut to_pay: Vec<(Uuid, ToPay, &Claimed)> = Vec::new();
    for c in &claimed {
        let Some(referral) = referrals.get_mut(&c.referral_id) else { continue };
        let qualifying = deposits.get(&referral.referee_id).and_then(|d| store::qualifying(engine, referral, d, &rates));
        let decision = settle(AtSettlement {
            status: referral.status(),
            cleared_by_review: referral.cleared_by_review,
            verdict: verdicts.get(&c.referral_id).copied(),
            shared_instrument: shared.contains(&c.referral_id),
            qualifying_deposit: qualifying.is_some(),
            kyc: kyc.get(&c.referral_id).cloned().unwrap_or(refstream_core::campaign::KycState::Waiting),
        });
        if decision.moves.is_empty() && !decision.pay && qualifying.is_some() && referral.status() == lifecycle::ReferralStatus::Eligible {
            OUTCOMES.with_label_values(&["reward-engine", "awaiting_kyc"]).inc();
        }
        for (t, cause) in decision.moves {
            if t == lifecycle::BACK_TO_REVIEW {
                OUTCOMES.with_label_values(&["reward-engine", "held_shared_instrument"]).inc();
            } else {
                OUTCOMES.with_label_values(&["reward-engine", "tightened_at_settlement"]).inc();
            }
            moves.extend(Move::of(referral, t, cause));
        }
        if let (true, Some(d)) = (decision.pay, qualifying) {
            let deposit = d.recorded.deposit.clone();
            to_pay.push((c.referral_id, ToPay { deposit_id: deposit.deposit_id, amount: d.amount, at: deposit.occurred_at, fx: d.fx }, c));
        }
    }
    let payments: Vec<Payment<'_>> = to_pay
        .iter()
        .filter_map(|(id, d, c)| {
            Some(Payment {
                referral: referrals.get(id)?,
                deposit_id: d.deposit_id.clone(),
                deposit_amount: d.amount,
                deposited_at: d.at,
                fx: d.fx,
                barrier_id: c.barrier_id,
                hold_ended_at: c.hold_ended_at,
            })
        })
        .collect();
    // What each payment credits; caps and budgets: what a limit refuses is not paid, and its
    // referral is capped.
    let (planned, capped) = plan::plan(&mut tx, engine, payments).await?;
    let mut out = Vec::new();
    let granted = ledger::grant(&mut tx, engine, &planned, &mut out).await?;
    drop(planned);
    for (id, reason) in capped {
        if let Some(referral) = referrals.get_mut(&id) {
            OUTCOMES.with_label_values(&["reward-engine", "reward_capped"]).inc();
            moves.extend(Move::of(referral, lifecycle::CAP, reason));
        }
    }
    let deposit_of: BTreeMap<Uuid, &str> = to_pay.iter().map(|(id, d, _)| (*id, d.deposit_id.as_str())).collect();
    for id in &granted.paid {
        if let Some(referral) = referrals.get_mut(id) {
            let cause = format!("qualifying deposit {}", deposit_of.get(id).copied().unwrap_or_default());
            moves.extend(Move::of(referral, lifecycle::REWARD, cause));
        }
    }
    store::apply_moves(&mut tx, &moves).await?;
    // Last, the rows other settlement transactions wait for: the balances (the campaign's is in
    // every one) and the outbox keys (a referrer's rewards in two batches). From here to the
    // commit concurrent settlements run one at a time, so nothing else is done in between.
    book(&mut tx, &granted.entries).await?;
    enqueue(&mut tx, &out).await?;
    tx.commit().await?;
    Ok(claimed.len())
}

/// One round: releases capped referrals a raised limit admits, makes a barrier for payouts
/// whose hold ended, advances the closed barriers, and settles what the open ones let through.
/// Returns (settled, barriers still closed).
pub async fn sweep<E: EndOffsets>(engine: &RewardEngine, pool: &PgPool, ends: &E) -> anyhow::Result<(usize, usize)> {
    let r = round(engine, pool, ends, true, true).await?;
    Ok((r.settled, r.closed))
}

/// What a round did.
struct Round {
    settled: usize,
    /// Barriers still closed.
    closed: usize,
    /// The gate opened barriers while this round drained a backlog: their payouts may have
    /// come after the drain's last claims, so the next round settles even if it opens none.
    opened_while_draining: bool,
}

/// One round; `rare_steps`: whether it also runs the steps that usually find nothing —
/// releasing capped referrals (only a campaign raising its limits gives any), and looking for
/// open payouts when this round opened no barrier (another engine's that it did not settle
/// because it stopped, or a settlement that failed). The background loop runs them once a
/// second ([`RARE_STEPS_EVERY`]), so a round that waits on a closed barrier costs two
/// statements: the capture's "anything due?" and the advance's read. `settle_anyway`: look for
/// open payouts even if this round opens no barrier (the last drain's gate opened some). While a
/// backlog drains ([`drain`]), the gate's two steps run alongside it.
async fn round<E: EndOffsets>(
    engine: &RewardEngine,
    pool: &PgPool,
    ends: &E,
    rare_steps: bool,
    settle_anyway: bool,
) -> anyhow::Result<Round> {
    if rare_steps {
        limits::uncap(engine, pool).await?;
    }
    let waiting = capture_and_advance(engine, pool, ends).await?;
    if waiting.opened == 0 && !waiting.covered && !rare_steps && !settle_anyway {
        return Ok(Round { settled: 0, closed: waiting.closed, opened_while_draining: false });
    }
    // A round drains once and returns, so the loop's other duties (vacuum, expiry, metrics)
    // keep their pace under a sustained backlog.
    let (settled, gate) = drain(engine, pool, ends).await?;
    let (closed, opened_while_draining) = gate.map_or((waiting.closed, false), |(last, opened)| (last.closed, opened));
    Ok(Round { settled, closed, opened_while_draining })
}

/// How often the gate's two steps run while a backlog drains.
const DRAIN_GATE_EVERY: Duration = Duration::from_millis(20);

/// The lanes of one drain: how many wait for work, how many full batches they have taken (a
/// full batch says a backlog is left, and wakes the waiting lanes), and whether the drain is
/// over (every lane waiting, or one failed).
struct Crew {
    lanes: usize,
    state: std::sync::Mutex<CrewState>,
    wake: Notify,
}

#[derive(Default)]
struct CrewState {
    waiting: usize,
    full_batches: u64,
    over: bool,
}

impl Crew {
    fn new(lanes: usize) -> Self {
        Self { lanes, state: std::sync::Mutex::new(CrewState::default()), wake: Notify::new() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CrewState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many full batches the lanes have taken so far.
    fn full_batches(&self) -> u64 {
        self.state().full_batches
    }

    /// A lane took a full batch: the waiting lanes claim again.
    fn took_full(&self) {
        self.state().full_batches += 1;
        self.wake.notify_waiters();
    }

    /// A lane failed: the drain is over for every lane.
    fn fail(&self) {
        self.state().over = true;
        self.wake.notify_waiters();
    }

    /// A lane's batch came back short; `seen`: [`Crew::full_batches`] when it began. True when
    /// the lane should claim again: another lane has taken a full batch since (at once, or
    /// after waiting for one); false when the drain is over: every lane is waiting.
    async fn came_back_short(&self, seen: u64) -> bool {
        let woken = self.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        {
            let mut state = self.state();
            if state.over {
                return false;
            }
            if state.full_batches != seen {
                return true;
            }
            state.waiting += 1;
            if state.waiting == self.lanes {
                state.over = true;
                drop(state);
                self.wake.notify_waiters();
                return false;
            }
        }
        loop {
            woken.as_mut().await;
            let mut state = self.state();
            if state.over {
                return false;
            }
            if state.full_batches != seen {
                state.waiting -= 1;
                return true;
            }
            // Woken for nothing new: wait again.
            drop(state);
            woken.set(self.wake.notified());
            woken.as_mut().enable();
        }
    }
}

/// Drains a backlog of open payouts: `settlement.concurrency` lanes, each settling batch after
/// batch (a transaction each). The first lane starts alone: a quiet stream's few payouts take
/// one transaction. The other lanes start as soon as its first claim comes back full (a
/// backlog), not after its transaction: alone, a batch of 1,000 left a core idle for its whole
/// length at the start of every drain. A lane whose batch comes back short waits until another
/// lane takes a full batch, then claims again; the drain is over when every lane waits. (A lane
/// that stopped at its first short batch left the rest of a burst to one lane whenever a
/// barrier opened after that batch: a third of the burst's runs drained at half speed.) A lane
/// starts its next batch as soon as its last commits, never waiting for the others: concurrent
/// settlements wait on each other only for the tail of their transactions (the balances and
/// outbox keys they share), so the lanes overlap one's tail with the others' work. Meanwhile
/// the gate's two steps run every [`DRAIN_GATE_EVERY`]: payouts whose hold ends while the
/// backlog drains get a barrier and join the drain once it opens, instead of waiting for the
/// whole drain (seconds, in a burst) for the next round's capture. Returns the payouts settled
/// and, when there was a backlog, the gate's last view and whether it opened a barrier meanwhile.
async fn drain<E: EndOffsets>(engine: &RewardEngine, pool: &PgPool, ends: &E) -> anyhow::Result<(usize, Option<(gate::Waiting, bool)>)> {
    let full = usize::try_from(engine.settlement_batch).unwrap_or(usize::MAX);
    let lanes_left = &AtomicUsize::new(engine.settlement_concurrency);
    let crew = &Crew::new(engine.settlement_concurrency);
    let lane = |claimed_full: Option<oneshot::Sender<bool>>| async move {
        let outcome: sqlx::Result<usize> = async {
            let mut claimed_full = claimed_full;
            let mut settled = 0;
            loop {
                // The first lane's first batch (the one that tells whether the others start)
                // is alone: short, it ends the drain without waiting for lanes never started.
                let alone = claimed_full.is_some();
                let seen = crew.full_batches();
                let n = settle_open(engine, pool, engine.settlement_batch, claimed_full.take()).await?;
                settled += n;
                if n >= full {
                    crew.took_full();
                } else if alone || !crew.came_back_short(seen).await {
                    return Ok(settled);
                }
            }
        }
        .await;
        if outcome.is_err() {
            crew.fail();
        }
        lanes_left.fetch_sub(1, Ordering::Release);
        outcome
    };
    let (backlog_tx, backlog_rx) = oneshot::channel();
    let others = async {
        // No backlog (or the first batch failed before its claim answered): the first lane is
        // the whole drain, and the gate's steps are left to the next round.
        if !backlog_rx.await.unwrap_or(false) {
            return anyhow::Ok(None);
        }
        let gate_steps = async {
            let mut opened = false;
            loop {
                let waiting = capture_and_advance(engine, pool, ends).await?;
                opened |= waiting.opened > 0;
                if lanes_left.load(Ordering::Acquire) == 0 {
                    return anyhow::Ok((waiting, opened));
                }
                tokio::time::sleep(DRAIN_GATE_EVERY).await;
            }
        };
        let (lanes, gate) =
            futures_util::future::join(futures_util::future::join_all((1..engine.settlement_concurrency).map(|_| lane(None))), gate_steps)
                .await;
        let mut settled = 0;
        for n in lanes {
            settled += n?;
        }
        Ok(Some((settled, gate?)))
    };
    let (first, others) = futures_util::future::join(lane(Some(backlog_tx)), others).await;
    let first = first?;
    Ok(match others? {
        Some((settled, gate)) => (first + settled, Some(gate)),
        None => (first, None),
    })
}

/// The gate's two steps on one connection: a barrier for the payouts whose hold ended, and the
/// closed barriers advanced (opened when the workers have read past them).
async fn capture_and_advance<E: EndOffsets>(engine: &RewardEngine, pool: &PgPool, ends: &E) -> anyhow::Result<gate::Waiting> {
    let mut conn = pool.acquire().await?;
    let covered = gate::capture(&mut conn, engine, ends).await?;
    Ok(gate::Waiting { covered, ..gate::advance(&mut conn, engine, ends).await? })
}

/// Sweeps until nothing is left to settle and no barrier is closed (or `rounds` rounds):
/// for driving the engine without its background task (tests).
pub async fn settle_all<E: EndOffsets>(engine: &RewardEngine, pool: &PgPool, ends: &E) -> anyhow::Result<usize> {
    let mut total = 0;
    for _ in 0..20 {
        let (settled, closed) = sweep(engine, pool, ends).await?;
        total += settled;
        if settled == 0 && closed == 0 {
            break;
        }
    }
    Ok(total)
}

/// How often the expiry sweep runs (a barrier captured in one round expires referrals in a later one).
const EXPIRY_EVERY: Duration = Duration::from_secs(5);

/// How often the sweep vacuums `pending_payouts` while it keeps settling ([`vacuum_payouts`]).
const VACUUM_EVERY: Duration = Duration::from_secs(2);

/// Vacuums `pending_payouts`, the sweep's queue: every payout is deleted seconds after it was
/// inserted, and the claim reads from the front of the table, over the deleted rows, until a
/// vacuum removes them. Autovacuum visits a database once a minute by default: at a steady load
/// that is a minute of dead rows under every claim (in the bench the claim read 300 pages of
/// them, 1.9 ms a call, the costliest statement of the paced load; 0.4 ms vacuumed), and a lower
/// `autovacuum_naptime` for the whole server vacuumed the large tables during a bulk load too,
/// which cost more than it saved. `SKIP_LOCKED`: never waits when a vacuum already runs on it;
/// `TRUNCATE false` (and migration `20261207100000`): a truncation would lock the queue against
/// every insert and claim while it runs. A role that may not vacuum the table gets a warning
/// from Postgres, and autovacuum alone keeps the table. (The outbox is left to autovacuum: its
/// vacuum read its large indexes whole, 120 ms a time in the bench, more than its claims saved.)
async fn vacuum_payouts(pool: &PgPool) {
    if let Err(e) = sqlx::raw_sql("VACUUM (SKIP_LOCKED, TRUNCATE false) pending_payouts").execute(pool).await {
        tracing::debug!(error = %e, "pending_payouts not vacuumed");
    }
}

/// How often a round of the background loop runs the rare steps ([`round`]).
const RARE_STEPS_EVERY: Duration = Duration::from_secs(1);

/// Sweeps until `stop` ([`settle_loop`]), and beside it, on the same task but never in its way,
/// does the housekeeping that used to run between rounds ([`housekeeping`]): the expiry sweep's
/// scan of open referrals, the queue's vacuum, the gate's gauges and the removal of old
/// barriers each took a round's place, and every payout whose hold ended meanwhile waited for
/// them (tens of milliseconds for the expiry scan on a loaded host).
pub async fn run<E: EndOffsets + 'static>(engine: Arc<RewardEngine>, pool: PgPool, ends: E, stop: CancellationToken) {
    // Payouts settled since the last vacuum of their table.
    let settled = AtomicUsize::new(0);
    tokio::join!(settle_loop(&engine, &pool, &ends, &stop, &settled), housekeeping(&engine, &pool, &ends, &stop, &settled));
}

/// Sweeps until `stop`: at once when a batch scheduled a payout, every
/// `settlement.busy_sweep_ms` while barriers are closed, else every `settlement.idle_sweep_ms`;
/// the rarely fruitful steps every second ([`round`]). A failed sweep is logged and tried
/// again (its settlement within a second). Adds what it settles to `settled`.
async fn settle_loop<E: EndOffsets>(engine: &RewardEngine, pool: &PgPool, ends: &E, stop: &CancellationToken, settled: &AtomicUsize) {
    let mut last_rare_steps = Instant::now() - RARE_STEPS_EVERY;
    let mut busy = false;
    // The last round's drain opened barriers: settle in the next round whatever it opens.
    let mut opened_while_draining = false;
    loop {
        let pause = if busy { engine.busy_sweep } else { engine.idle_sweep };
        tokio::select! {
            () = stop.cancelled() => return,
            () = engine.wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
        let rare_steps = last_rare_steps.elapsed() >= RARE_STEPS_EVERY;
        if rare_steps {
            last_rare_steps = Instant::now();
        }
        match round(engine, pool, ends, rare_steps, opened_while_draining).await {
            Ok(r) => {
                opened_while_draining = r.opened_while_draining;
                busy = r.settled > 0 || r.closed > 0 || opened_while_draining;
                settled.fetch_add(r.settled, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "settlement sweep failed");
                busy = false;
            }
        }
    }
}

/// How often [`housekeeping`] looks for a step that is due.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(250);

/// Until `stop`: the gate's gauges every second, the expiry sweep every [`EXPIRY_EVERY`], a
/// vacuum of `pending_payouts` every [`VACUUM_EVERY`] while payouts are settled (`settled`
/// counts them), and old barriers removed every minute. Each step is logged and tried again at
/// its next turn when it fails. Runs beside [`settle_loop`]: the expiry sweep locks referrals
/// with `SKIP LOCKED` (then again in id order, rows it holds), so it never waits for a
/// settlement, and a settlement waits for it only on the referrals it is expiring, as it would
/// for another engine's sweep.
async fn housekeeping<E: EndOffsets>(engine: &RewardEngine, pool: &PgPool, ends: &E, stop: &CancellationToken, settled: &AtomicUsize) {
    let mut last_metrics = Instant::now() - Duration::from_secs(60);
    let mut last_cleanup = Instant::now();
    let mut last_vacuum = Instant::now();
    let mut last_expiry = Instant::now() - EXPIRY_EVERY;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(HOUSEKEEPING_EVERY) => {}
        }
        if last_metrics.elapsed() >= Duration::from_secs(1) {
            if let Err(e) = gate::record_waiting(pool).await {
                tracing::debug!(error = %e, "gate metrics not refreshed");
            }
            last_metrics = Instant::now();
        }
        if last_expiry.elapsed() >= EXPIRY_EVERY {
            if let Err(e) = crate::expiry::sweep(engine, pool, ends).await {
                tracing::warn!(error = %format!("{e:#}"), "expiry sweep failed");
            }
            last_expiry = Instant::now();
        }
        if last_vacuum.elapsed() >= VACUUM_EVERY && settled.load(Ordering::Relaxed) > 0 {
            settled.store(0, Ordering::Relaxed);
            vacuum_payouts(pool).await;
            last_vacuum = Instant::now();
        }
        if last_cleanup.elapsed() >= Duration::from_secs(60) {
            if let Err(e) = gate::forget_old(pool, Duration::from_secs(600)).await {
                tracing::debug!(error = %e, "old barriers not removed");
            }
            last_cleanup = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::Crew;

    /// A lane whose batch came back short, waiting on its own task.
    fn wait_in(crew: &Arc<Crew>, seen: u64) -> tokio::task::JoinHandle<bool> {
        let crew = Arc::clone(crew);
        tokio::spawn(async move { crew.came_back_short(seen).await })
    }

    /// Whether `f` finishes within a short while (a lane left waiting does not).
    async fn finishes<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(Duration::from_millis(100), f).await.ok()
    }

    #[tokio::test]
    async fn a_short_lane_waits_and_claims_again_when_another_takes_a_full_batch() {
        let crew = Arc::new(Crew::new(2));
        let seen = crew.full_batches();
        let waiting = wait_in(&crew, seen);
        assert!(
            finishes(async {
                while !waiting.is_finished() {
                    tokio::task::yield_now().await
                }
            })
            .await
            .is_none(),
            "waits while the other lane works"
        );
        crew.took_full();
        assert_eq!(finishes(waiting).await.map(Result::unwrap), Some(true), "claims again");
    }

    #[tokio::test]
    async fn a_lane_claims_again_at_once_when_a_full_batch_came_during_its_own() {
        let crew = Crew::new(2);
        let seen = crew.full_batches();
        crew.took_full();
        assert_eq!(finishes(crew.came_back_short(seen)).await, Some(true));
    }

    #[tokio::test]
    async fn the_drain_is_over_when_every_lane_waits() {
        let crew = Arc::new(Crew::new(2));
        let seen = crew.full_batches();
        let first = wait_in(&crew, seen);
        tokio::task::yield_now().await;
        assert_eq!(finishes(crew.came_back_short(seen)).await, Some(false), "the last lane to wait ends the drain");
        assert_eq!(finishes(first).await.map(Result::unwrap), Some(false), "and the waiting lane stops");
    }

    #[tokio::test]
    async fn a_failed_lane_stops_the_waiting_ones() {
        let crew = Arc::new(Crew::new(3));
        let seen = crew.full_batches();
        let waiting = wait_in(&crew, seen);
        tokio::task::yield_now().await;
        crew.fail();
        assert_eq!(finishes(waiting).await.map(Result::unwrap), Some(false));
    }
}
