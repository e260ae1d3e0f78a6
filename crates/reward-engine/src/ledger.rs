//! Money movements. A grant books two entries that sum to zero (the beneficiary's account up,
//! the campaign's account down) and a reversal books their exact negation; balances change
//! by the same amounts in the same transaction, so every balance equals the sum of its
//! entries. Nothing here runs unless the `rewards` row it belongs to was really inserted (or
//! really marked reversed) by this transaction.

use chrono::{DateTime, Utc};
use refstream_core::campaign::Role;
use refstream_core::events::{RewardGranted, RewardReversed};
use refstream_core::{Currency, DerivedId, Money, UserId};
use refstream_runtime::metrics::OUTCOMES;
use refstream_runtime::outbox::OutboxMessage;
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::referral::{Deposit, Referral};
use crate::RewardEngine;

/// The ledger account of a user's reward balance.
pub fn user_account(user: &str) -> String {
    format!("user:{user}")
}

/// The ledger account a campaign's rewards are paid from.
pub fn campaign_account(campaign: &str) -> String {
    format!("campaign:{campaign}")
}

async fn book(
    conn: &mut PgConnection,
    transaction: Uuid,
    reward: Uuid,
    kind: &str,
    entries: [(&str, Decimal); 2],
    currency: &str,
) -> sqlx::Result<()> {
    for (account, amount) in entries {
        sqlx::query(
            "INSERT INTO ledger_entries (transaction_id, account, amount, currency, reward_id, kind) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(transaction)
        .bind(account)
        .bind(amount)
        .bind(currency)
        .bind(reward)
        .bind(kind)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO balances (account, currency, balance) VALUES ($1, $2, $3) \
             ON CONFLICT (account, currency) DO UPDATE SET balance = balances.balance + EXCLUDED.balance, updated_at = now()",
        )
        .bind(account)
        .bind(currency)
        .bind(amount)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Credits every reward of the campaign for `referral`; returns how many were new.
pub(crate) async fn grant(
    conn: &mut PgConnection,
    engine: &RewardEngine,
    referral: &Referral,
    deposit: &Deposit,
    out: &mut Vec<OutboxMessage>,
) -> sqlx::Result<usize> {
    let campaign = &engine.campaign;
    let mut granted = 0;
    for spec in &campaign.rewards {
        let beneficiary = match spec.role {
            Role::Referrer => &referral.referrer_id,
            Role::Referee => &referral.referee_id,
        };
        let reward_id = DerivedId::reward(referral.referral_id, &spec.reward_type);
        let granted_at: Option<DateTime<Utc>> = sqlx::query_scalar(
            "INSERT INTO rewards (reward_id, referral_id, reward_type, beneficiary_id, role, amount, currency, campaign_id, qualifying_deposit_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (referral_id, reward_type) DO NOTHING RETURNING granted_at",
        )
        .bind(reward_id)
        .bind(referral.referral_id)
        .bind(&spec.reward_type)
        .bind(beneficiary)
        .bind(spec.role.as_str())
        .bind(spec.amount.amount)
        .bind(spec.amount.currency.as_str())
        .bind(&campaign.id)
        .bind(&deposit.deposit_id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(granted_at) = granted_at else { continue };
        let currency = spec.amount.currency.as_str();
        let (user, pool) = (user_account(beneficiary), campaign_account(&campaign.id));
        let amount = spec.amount.amount;
        book(conn, DerivedId::ledger_transaction("grant", reward_id), reward_id, "grant", [(&user, amount), (&pool, -amount)], currency)
            .await?;
        let event = RewardGranted {
            event_id: DerivedId::event("reward-granted", reward_id),
            reward_id,
            referral_id: referral.referral_id,
            user_id: UserId::parse(beneficiary.clone()).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            role: spec.role,
            reward_type: spec.reward_type.clone(),
            amount: spec.amount,
            campaign_id: campaign.id.clone(),
            qualifying_deposit_id: deposit.deposit_id.clone(),
            granted_at,
        };
        out.push(OutboxMessage::record(&engine.topics.reward_granted, beneficiary, &event));
        OUTCOMES.with_label_values(&["reward-engine", "reward_granted"]).inc();
        granted += 1;
    }
    Ok(granted)
}

#[derive(sqlx::FromRow)]
struct GrantedReward {
    reward_id: Uuid,
    referral_id: Uuid,
    beneficiary_id: String,
    amount: Decimal,
    currency: String,
    campaign_id: String,
}

/// Takes back every reward paid for `deposit_id`; returns how many.
pub(crate) async fn reverse_rewards_of_deposit(
    conn: &mut PgConnection,
    engine: &RewardEngine,
    deposit_id: &str,
    reason: &str,
    at: DateTime<Utc>,
    out: &mut Vec<OutboxMessage>,
) -> sqlx::Result<usize> {
    let rewards: Vec<GrantedReward> = sqlx::query_as(
        "UPDATE rewards SET reversed_at = $2, reversal_reason = $3 \
         WHERE qualifying_deposit_id = $1 AND reversed_at IS NULL \
         RETURNING reward_id, referral_id, beneficiary_id, amount, currency, campaign_id",
    )
    .bind(deposit_id)
    .bind(at)
    .bind(reason)
    .fetch_all(&mut *conn)
    .await?;
    for r in &rewards {
        let currency = r.currency.trim();
        let (user, pool) = (user_account(&r.beneficiary_id), campaign_account(&r.campaign_id));
        book(
            conn,
            DerivedId::ledger_transaction("reverse", r.reward_id),
            r.reward_id,
            "reverse",
            [(&user, -r.amount), (&pool, r.amount)],
            currency,
        )
        .await?;
        let currency = Currency::parse(currency).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let event = RewardReversed {
            event_id: DerivedId::event("reward-reversed", r.reward_id),
            reward_id: r.reward_id,
            referral_id: r.referral_id,
            user_id: UserId::parse(r.beneficiary_id.clone()).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            amount: Money::new(r.amount, currency),
            reason: reason.to_owned(),
            deposit_id: deposit_id.to_owned(),
            reversed_at: at,
        };
        out.push(OutboxMessage::record(&engine.topics.reward_reversed, &r.beneficiary_id, &event));
        OUTCOMES.with_label_values(&["reward-engine", "reward_reversed"]).inc();
    }
    Ok(rewards.len())
}
