//! `refstream explain <referral_id>`: everything refstream knows about one referral and why it
//! stands where it stands — the referral, its assessment (score, decision, rule version, each
//! rule that fired with its weight and detail), the evidence the rules saw, every earlier
//! assessment revision, the status transitions with their causes, review decisions and rewards.

use chrono::{DateTime, Utc};
use refstream_api::ops::explain;
use serde_json::Value as Json;
use sqlx::PgPool;

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}

pub async fn run(pool: &PgPool, id: &str) -> anyhow::Result<()> {
    let explain::Explained { referral: r, assessments: revisions, transitions, reviews, rewards } =
        explain::load(pool, id).await?.ok_or_else(|| anyhow::anyhow!("no referral with id {id} (nor one whose referee is {id})"))?;
    println!("referral    {}", r.referral_id);
    println!("referrer    {}", r.referrer_id);
    println!("referee     {} (registered {})", r.referee_id, time(r.referee_registered_at));
    println!("attributed  by {} {} in campaign {} (recorded {})", r.attribution.to_lowercase(), r.code, r.campaign_id, time(r.created_at));
    let why = r.campaign_reason.as_deref().map(|w| format!(": {w}")).unwrap_or_default();
    println!("campaign    {} version {}{why}", r.campaign_id, r.terms_version);
    if let Some(click) = &r.click_id {
        let how = r.click_match.as_deref().unwrap_or("exact");
        let sure = r.match_confidence.filter(|_| how == "probabilistic").map(|c| format!(", confidence {c}")).unwrap_or_default();
        let net = r.network_clicks.map(|n| format!("; {n} clicks on the link from its network in the hour up to it")).unwrap_or_default();
        println!("click       {click} ({how} match{sure}){net}");
    }
    if let Some(touch) = &r.touch {
        println!("touch       {touch}");
    }
    let cleared = if r.cleared_by_review { " (cleared by a reviewer)" } else { "" };
    println!("status      {}{cleared}", r.status);

    println!();
    match revisions.last() {
        None => println!("assessment  none yet (the fraud scorer has not scored it)"),
        Some(a) => {
            println!("assessment  score {} → {}   rule set {}", a.score, a.decision, a.rule_version);
            println!("            revision {} at {}: {}", a.revision, time(a.assessed_at), a.cause);
            print_signals(&a.signals);
            print_evidence(&a.signals);
        }
    }
    if revisions.len() > 1 {
        println!();
        println!("assessment history");
        for a in &revisions {
            println!(
                "  #{} {}  score {:>3} {:<7} [{}]  {}",
                a.revision,
                time(a.assessed_at),
                a.score,
                a.decision,
                a.reasons.join(", "),
                a.cause
            );
        }
    }

    println!();
    println!("status transitions");
    println!("  {}  (created) → pending: attributed", time(r.created_at));
    for t in transitions {
        println!("  {}  {} → {}: {}", time(t.at), t.from_status, t.to_status, t.cause);
    }

    if !reviews.is_empty() {
        println!();
        println!("review decisions");
        for v in reviews {
            println!("  {}  {} by {}: {}", time(v.decided_at), v.decision, v.reviewer, v.reason);
        }
    }

    println!();
    if rewards.is_empty() {
        println!("rewards     none");
    } else {
        println!("rewards");
        for w in rewards {
            let reversed = match (w.reversed_at, w.reversal_reason) {
                (Some(t), Some(why)) if why == "FRAUD" => format!(
                    ", clawed back {} (FRAUD found after payment: assessment revision {} event {})",
                    time(t),
                    w.reversal_assessment_revision.map_or("?".into(), |r| r.to_string()),
                    w.reversal_assessment_event_id.map_or("?".into(), |e| e.to_string())
                ),
                (Some(t), Some(why)) => format!(", reversed {} ({why})", time(t)),
                (Some(t), None) => format!(", reversed {}", time(t)),
                _ => String::new(),
            };
            println!(
                "  {} {} {} to {} for deposit {}, {}{reversed}",
                w.reward_type,
                w.amount.round_dp(2),
                w.currency,
                w.beneficiary_id,
                w.qualifying_deposit_id,
                time(w.granted_at)
            );
            if let (Some(held), Some(barrier)) = (w.hold_ended_at, w.barrier_id) {
                println!("    hold ended {}; settled behind barrier {barrier} (the scorer had applied the stream up to then)", time(held));
            }
        }
    }
    Ok(())
}

fn print_signals(stored: &Json) {
    let signals = stored.get("signals").and_then(Json::as_array).cloned().unwrap_or_default();
    if signals.is_empty() {
        println!("signals     none fired");
        return;
    }
    println!("signals     (weights add up to the score, capped at 100)");
    for s in signals {
        let code = s.get("code").and_then(Json::as_str).unwrap_or("?");
        let weight = s.get("weight").and_then(Json::as_u64).unwrap_or_default();
        let detail = s.get("detail").and_then(Json::as_str).unwrap_or("");
        println!("  +{weight:<3} {code:<27} {detail}");
    }
}

fn print_evidence(stored: &Json) {
    let Some(evidence) = stored.get("evidence") else { return };
    println!("evidence    (what the rules saw, as of the referee's registration)");
    match evidence {
        Json::Object(fields) => {
            // The rules' order (strongest first), then anything a newer scorer added.
            let mut keys: Vec<&str> = EVIDENCE_ORDER.iter().copied().filter(|k| fields.contains_key(*k)).collect();
            let mut rest: Vec<&str> =
                fields.keys().map(String::as_str).filter(|k| !EVIDENCE_ORDER.contains(k) && *k != "component").collect();
            rest.sort_unstable();
            keys.extend(rest);
            for k in keys {
                println!("  {k:<37} {}", plain(&fields[k]));
            }
            if let Some(c) = fields.get("component") {
                let accounts = c.get("accounts").and_then(Json::as_u64).unwrap_or(1);
                let is_ring = c.get("is_ring").and_then(Json::as_bool).unwrap_or(false);
                let members: Vec<String> =
                    c.get("members").and_then(Json::as_array).map(|m| m.iter().map(plain).collect()).unwrap_or_default();
                let hidden = c.get("members_not_shown").and_then(Json::as_u64).unwrap_or(0);
                let more = if hidden > 0 { format!(" and {hidden} more") } else { String::new() };
                println!(
                    "  linked accounts (ring graph)          {accounts}{}: {}{more}",
                    if is_ring { ", a RING" } else { "" },
                    members.join(", ")
                );
                println!(
                    "    shared identifiers {}, referrals inside {}",
                    c.get("shared_identifiers").map(plain).unwrap_or_default(),
                    c.get("inner_referrals").map(plain).unwrap_or_default()
                );
            }
        }
        other => println!("  {}", plain(other)),
    }
}

/// The evidence fields in the order explain prints them.
const EVIDENCE_ORDER: &[&str] = &[
    "referrer_id",
    "referee_id",
    "ring_size",
    "email_matches_referrer",
    "same_device",
    "shared_payment_instrument",
    "email_matches_earlier_account",
    "other_accounts_on_referee_device",
    "registrations_from_device_in_window",
    "email_domain",
    "disposable_email",
    "referrals_by_referrer_in_window",
    "same_ip",
    "registrations_from_ip_in_window",
    "same_ip_prefix",
];

fn plain(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => "-".into(),
        other => other.to_string(),
    }
}
