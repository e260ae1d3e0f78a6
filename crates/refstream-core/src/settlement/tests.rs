//! The gate over random interleavings: registrations and deposits arrive on partitions,
//! attribution, the relay and the scorer make progress in any order and at any pace, holds end
//! at any moment, and the barrier protocol (`step`) advances as the engine drives it. Whatever
//! the interleaving, a payout never settles before the scorer has applied every registration
//! (through its referral-attributed record) and every deposit that had arrived when its hold
//! ended.

use proptest::prelude::*;

use super::*;

const PARTITIONS: i32 = 3;

fn tp(topic: &str, p: i32) -> (String, i32) {
    (topic.to_owned(), p)
}

/// One thing that can happen next.
#[derive(Debug, Clone)]
enum Action {
    Register(i32),
    Deposit(i32),
    Attribute(i32, usize),
    Relay(usize),
    ScoreAttributed(i32, usize),
    ScoreDeposits(i32, usize),
    /// A hold ends: the engine reads attribution's progress and whether the outbox holds a
    /// referral-attributed row...
    HoldEnds,
    /// ...and, any time later, the end offsets (one request), making the barrier.
    ReadEnds,
    Sweep,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (0..PARTITIONS).prop_map(Action::Register),
        (0..PARTITIONS).prop_map(Action::Deposit),
        (0..PARTITIONS, 1..4usize).prop_map(|(p, n)| Action::Attribute(p, n)),
        (1..4usize).prop_map(Action::Relay),
        (0..PARTITIONS, 1..4usize).prop_map(|(p, n)| Action::ScoreAttributed(p, n)),
        (0..PARTITIONS, 1..4usize).prop_map(|(p, n)| Action::ScoreDeposits(p, n)),
        Just(Action::HoldEnds),
        Just(Action::ReadEnds),
        Just(Action::Sweep),
    ]
}

/// The pipeline in front of the scorer, simulated.
#[derive(Default)]
struct World {
    /// Registration ids per user-registered partition, in offset order.
    registered: BTreeMap<i32, Vec<u32>>,
    /// Deposit ids per deposit-completed partition.
    deposited: BTreeMap<i32, Vec<u32>>,
    /// referral-attributed records per partition (registration ids).
    attributed: BTreeMap<i32, Vec<u32>>,
    /// Outbox: (id, registration id), unpublished, in id order.
    outbox: Vec<(i64, u32)>,
    next_outbox_id: i64,
    next_id: u32,
    attribution: Position,
    scorer: Position,
    /// What the scorer has applied.
    assessed: Vec<u32>,
    seen_deposits: Vec<u32>,
    /// Barriers with what had arrived when their hold ended.
    barriers: Vec<(Barrier, Vec<u32>, Vec<u32>)>,
    /// Holds ended whose ends are not read yet: what had arrived, attribution's progress and
    /// whether a referral-attributed row was unpublished, as read then.
    capturing: Vec<(Vec<u32>, Vec<u32>, Position, bool)>,
    /// Barriers that started at the scorer stage (attribution and relay already caught up).
    fast: usize,
    opened: usize,
}

impl World {
    fn ends(log: &BTreeMap<i32, Vec<u32>>, topic: &str) -> Position {
        (0..PARTITIONS).map(|p| (tp(topic, p), log.get(&p).map_or(0, |l| l.len() as i64))).collect()
    }

    fn apply(&mut self, a: &Action) {
        match *a {
            Action::Register(p) => {
                self.next_id += 1;
                self.registered.entry(p).or_default().push(self.next_id);
            }
            Action::Deposit(p) => {
                self.next_id += 1;
                self.deposited.entry(p).or_default().push(self.next_id);
            }
            Action::Attribute(p, n) => {
                let log = self.registered.get(&p).cloned().unwrap_or_default();
                let next = self.attribution.entry(tp("ur", p)).or_insert(0);
                let upto = (*next as usize + n).min(log.len());
                for &id in &log[*next as usize..upto] {
                    self.next_outbox_id += 1;
                    self.outbox.push((self.next_outbox_id, id));
                }
                *next = upto as i64;
            }
            Action::Relay(n) => {
                for (_, id) in self.outbox.drain(..n.min(self.outbox.len())) {
                    self.attributed.entry((id % PARTITIONS as u32) as i32).or_default().push(id);
                }
            }
            Action::ScoreAttributed(p, n) => {
                let log = self.attributed.get(&p).cloned().unwrap_or_default();
                let next = self.scorer.entry(tp("ra", p)).or_insert(0);
                let upto = (*next as usize + n).min(log.len());
                self.assessed.extend_from_slice(&log[*next as usize..upto]);
                *next = upto as i64;
            }
            Action::ScoreDeposits(p, n) => {
                let log = self.deposited.get(&p).cloned().unwrap_or_default();
                let next = self.scorer.entry(tp("dc", p)).or_insert(0);
                let upto = (*next as usize + n).min(log.len());
                self.seen_deposits.extend_from_slice(&log[*next as usize..upto]);
                *next = upto as i64;
            }
            Action::HoldEnds => {
                let known_regs = self.registered.values().flatten().copied().collect();
                let known_deps = self.deposited.values().flatten().copied().collect();
                self.capturing.push((known_regs, known_deps, self.attribution.clone(), !self.outbox.is_empty()));
            }
            Action::ReadEnds => {
                for (known_regs, known_deps, attribution, unpublished) in std::mem::take(&mut self.capturing) {
                    let at = Captured {
                        registrations: Self::ends(&self.registered, "ur"),
                        deposits: Self::ends(&self.deposited, "dc"),
                        verifications: Position::new(),
                        attributed: Self::ends(&self.attributed, "ra"),
                    };
                    let barrier = barrier_at(at, &attribution, unpublished);
                    self.fast += usize::from(barrier.stage == Stage::Scorer);
                    self.barriers.push((barrier, known_regs, known_deps));
                }
            }
            Action::Sweep => self.sweep(),
        }
    }

    /// The engine's sweep: advance every barrier as far as it goes, check the opened ones.
    fn sweep(&mut self) {
        for i in 0..self.barriers.len() {
            loop {
                let b = &self.barriers[i].0;
                let published = b.outbox_through.is_some_and(|through| self.outbox.iter().all(|(id, _)| *id > through));
                let progress = Progress { attribution: &self.attribution, scorer: &self.scorer, engine: &Position::new() };
                match step(b, progress, published) {
                    Step::Wait => break,
                    Step::CaptureOutbox => {
                        let b = &mut self.barriers[i].0;
                        b.outbox_through = Some(self.next_outbox_id);
                        b.stage = Stage::Relay;
                    }
                    Step::CaptureAttributed => {
                        let ends = Self::ends(&self.attributed, "ra");
                        let b = &mut self.barriers[i].0;
                        b.attributed = Some(ends);
                        b.stage = Stage::Scorer;
                    }
                    Step::Open => {
                        self.barriers[i].0.stage = Stage::Open;
                        self.opened += 1;
                        let (_, regs, deps) = &self.barriers[i];
                        for r in regs {
                            assert!(self.assessed.contains(r), "registration {r} arrived before the hold ended but was not assessed");
                        }
                        for d in deps {
                            assert!(self.seen_deposits.contains(d), "deposit {d} arrived before the hold ended but was not seen");
                        }
                    }
                }
            }
        }
    }

    /// Everything drains: attribution, relay and scorer catch up completely.
    fn drain(&mut self) {
        self.apply(&Action::ReadEnds);
        for _ in 0..64 {
            for p in 0..PARTITIONS {
                self.apply(&Action::Attribute(p, usize::MAX / 4));
            }
            self.apply(&Action::Relay(usize::MAX / 4));
            for p in 0..PARTITIONS {
                self.apply(&Action::ScoreAttributed(p, usize::MAX / 4));
                self.apply(&Action::ScoreDeposits(p, usize::MAX / 4));
            }
            self.sweep();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_payout_settles_before_the_scorer_covers_what_arrived_before_its_hold_ended(actions in proptest::collection::vec(action(), 0..120)) {
        let mut w = World::default();
        for a in &actions {
            w.apply(a);
        }
        // Once every worker catches up, every barrier opens: the gate never waits forever.
        w.drain();
        prop_assert_eq!(w.opened, w.barriers.len());
    }
}

#[test]
fn a_barrier_skips_to_the_scorer_only_when_attribution_and_the_relay_were_caught_up() {
    let ends = |n| -> Position { [(tp("ur", 0), n)].into_iter().collect() };
    let at = || Captured { registrations: ends(5), attributed: [(tp("ra", 0), 5)].into_iter().collect(), ..Captured::default() };
    let fast = barrier_at(at(), &ends(5), false);
    assert_eq!(fast.stage, Stage::Scorer);
    assert_eq!(fast.attributed, Some([(tp("ra", 0), 5)].into_iter().collect()));
    // A referral-attributed row still in the outbox, or attribution behind: the slow path.
    for (progress, unpublished) in [(ends(5), true), (ends(4), false)] {
        let slow = barrier_at(at(), &progress, unpublished);
        assert_eq!((slow.stage, slow.attributed), (Stage::Attribution, None));
    }
}

#[test]
fn with_the_pipeline_caught_up_most_barriers_take_the_fast_path() {
    let mut w = World::default();
    for a in [Action::Register(0), Action::Attribute(0, 1), Action::Relay(1)] {
        w.apply(&a);
    }
    for p in 0..PARTITIONS {
        w.apply(&Action::ScoreAttributed(p, 1));
    }
    for _ in 0..3 {
        for a in [Action::Deposit(1), Action::HoldEnds, Action::ReadEnds, Action::ScoreDeposits(1, 1), Action::Sweep] {
            w.apply(&a);
        }
    }
    assert_eq!((w.fast, w.opened), (3, 3));
}

#[test]
fn covers_needs_every_partition_and_ignores_empty_ones() {
    let ends: Position = [(tp("t", 0), 5), (tp("t", 1), 0)].into_iter().collect();
    assert!(!covers(&Position::new(), &ends));
    assert!(!covers(&[(tp("t", 0), 4)].into_iter().collect(), &ends));
    assert!(covers(&[(tp("t", 0), 5)].into_iter().collect(), &ends));
    assert!(covers(&[(tp("t", 0), 9)].into_iter().collect(), &ends), "a worker past the ends covers them");
    assert_eq!(behind(&[(tp("t", 0), 2)].into_iter().collect(), &ends), 3);
}

fn at(status: ReferralStatus, verdict: Option<Decision>) -> AtSettlement {
    AtSettlement {
        status,
        cleared_by_review: false,
        verdict: verdict.map(|decision| Verdict { decision, revision: 2 }),
        shared_instrument: false,
        qualifying_deposit: true,
        kyc: crate::campaign::KycState::Clear,
    }
}

#[test]
fn settlement_applies_the_latest_assessment_before_paying() {
    use ReferralStatus::*;
    assert!(settle(at(Eligible, Some(Decision::Approve))).pay);
    assert!(settle(at(Pending, Some(Decision::Approve))).pay, "the score's event may still be on its way");
    let s = settle(at(Eligible, Some(Decision::Reject)));
    assert!(!s.pay);
    assert_eq!(s.moves[0].0.to, Rejected);
    let s = settle(at(Eligible, Some(Decision::Review)));
    assert!(!s.pay);
    assert_eq!(s.moves[0].0.to, Held);
    assert!(!settle(at(Held, Some(Decision::Review))).pay);
    assert!(!settle(at(Pending, None)).pay, "never paid unscored");
    assert!(!settle(AtSettlement { shared_instrument: true, ..at(Eligible, Some(Decision::Approve)) }).pay);
    let cleared = AtSettlement { cleared_by_review: true, shared_instrument: true, ..at(Eligible, Some(Decision::Review)) };
    assert!(settle(cleared).pay, "a reviewer's approval stands against REVIEW and a shared card");
    assert!(!settle(AtSettlement { qualifying_deposit: false, ..at(Eligible, Some(Decision::Approve)) }).pay);
    for s in [Rewarded, Reversed, Rejected, Expired] {
        for d in [Decision::Approve, Decision::Review, Decision::Reject] {
            assert!(!settle(at(s, Some(d))).pay, "{s} {d:?}");
        }
    }
}

#[test]
fn fraud_after_payment_defaults_to_clawback_on_reject_and_review_on_review() {
    let p = FraudAfterPayment::default();
    assert_eq!(p.on_paid(Decision::Reject, false), Some(AfterPayment::Clawback));
    assert_eq!(p.on_paid(Decision::Review, false), Some(AfterPayment::Review));
    assert_eq!(p.on_paid(Decision::Approve, false), None);
    assert_eq!(p.on_paid(Decision::Reject, true), Some(AfterPayment::Review), "a reviewer approved it: a person decides");
    let strict = FraudAfterPayment { on_reject: AfterPayment::Clawback, on_review: AfterPayment::Clawback };
    assert_eq!(strict.on_paid(Decision::Review, false), Some(AfterPayment::Clawback));
}

#[test]
fn kyc_waiting_holds_the_payout_and_a_rejection_rejects() {
    use crate::campaign::KycState;
    use ReferralStatus::*;
    let waiting = settle(AtSettlement { kyc: KycState::Waiting, ..at(Eligible, Some(Decision::Approve)) });
    assert!(!waiting.pay && waiting.moves.is_empty(), "waits, eligible, for the verification");
    let rejected =
        settle(AtSettlement { kyc: KycState::Rejected("KYC rejected the referee".into()), ..at(Eligible, Some(Decision::Approve)) });
    assert!(!rejected.pay);
    assert_eq!(rejected.moves, vec![(lifecycle::KYC_REJECT, "KYC rejected the referee".to_owned())]);
    assert!(settle(at(Eligible, Some(Decision::Approve))).pay);
}

#[test]
fn a_barrier_opens_only_once_the_engine_applied_the_kyc_verdicts_that_had_arrived() {
    let ends = |topic: &str, end: i64| Position::from([((topic.to_owned(), 0), end)]);
    let b = Barrier {
        stage: Stage::Scorer,
        registrations: ends("ur", 3),
        deposits: ends("dc", 2),
        outbox_through: Some(7),
        attributed: Some(ends("ra", 3)),
        verifications: ends("uv", 5),
    };
    let scorer: Position = ends("ra", 3).into_iter().chain(ends("dc", 2)).collect();
    let attribution = ends("ur", 3);
    let behind = ends("uv", 4);
    assert_eq!(step(&b, Progress { attribution: &attribution, scorer: &scorer, engine: &behind }, true), Step::Wait);
    let caught_up = ends("uv", 5);
    assert_eq!(step(&b, Progress { attribution: &attribution, scorer: &scorer, engine: &caught_up }, true), Step::Open);
}
