//! When a fresh assessment of an already assessed referral becomes a new revision. Re-scores
//! only tighten: a revision is made when the fresh decision is stricter than the stored one, or
//! as strict and carrying a hard signal (one that holds or rejects on its own) the stored one
//! lacks; a fresh assessment that is looser is never stored. Pure, no I/O.

use super::rules::{ALWAYS_REJECT, AT_LEAST_REVIEW};
use super::Assessment;
use crate::lifecycle::Decision;

/// The strictness of a decision: APPROVE < REVIEW < REJECT.
pub fn rank(decision: Decision) -> u8 {
    match decision {
        Decision::Approve => 0,
        Decision::Review => 1,
        Decision::Reject => 2,
    }
}

/// True when `fresh` should become a new revision over the stored decision and reasons.
pub fn tightens(stored: Decision, stored_reasons: &[String], fresh: &Assessment) -> bool {
    let (before, after) = (rank(stored), rank(fresh.decision));
    if after < before {
        return false;
    }
    let new_hard = fresh
        .signals
        .iter()
        .any(|s| (AT_LEAST_REVIEW.contains(&s.code) || ALWAYS_REJECT.contains(&s.code)) && !stored_reasons.iter().any(|r| r == s.code));
    after > before || new_hard
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fraud::rules::{FRAUD_RING, SAME_DEVICE, VELOCITY_DEVICE};
    use crate::fraud::{assess, tests::clean, Evidence, FraudPolicy};

    fn decision(n: u8) -> Decision {
        [Decision::Approve, Decision::Review, Decision::Reject][usize::from(n % 3)]
    }

    #[test]
    fn stricter_decisions_and_new_hard_signals_make_revisions() {
        let policy = FraudPolicy::default();
        let device = assess(&Evidence { same_device: true, ..clean() }, &policy);
        assert_eq!(device.decision, Decision::Review);
        assert!(tightens(Decision::Approve, &[], &device));
        assert!(!tightens(Decision::Review, &[SAME_DEVICE.into()], &device), "nothing new");
        assert!(tightens(Decision::Review, &[VELOCITY_DEVICE.into()], &device), "a new hard signal at the same decision");
        assert!(!tightens(Decision::Reject, &[FRAUD_RING.into()], &device), "looser");
        let clean = assess(&clean(), &policy);
        assert!(!tightens(Decision::Approve, &[], &clean));
    }

    proptest! {
        #[test]
        fn a_revision_never_loosens(
            stored in 0u8..3,
            same_device in any::<bool>(),
            ring_size in 0u32..5,
            from_device in 0u32..8,
            others in 0u32..3,
            same_ip in any::<bool>(),
        ) {
            let e = Evidence {
                same_device,
                ring_size,
                registrations_from_device_in_window: from_device,
                other_accounts_on_referee_device: others,
                same_ip,
                ..clean()
            };
            let fresh = assess(&e, &FraudPolicy::default());
            if tightens(decision(stored), &[], &fresh) {
                prop_assert!(rank(fresh.decision) >= rank(decision(stored)));
            }
        }
    }
}
