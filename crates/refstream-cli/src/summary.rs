//! `refstream summary`: what the fleet has done, read from Postgres
//! ([`refstream_api::ops::summary`]): the same numbers an auditor would check (the ledger must
//! sum to zero per currency; an imbalance fails the command).

use sqlx::PgPool;

pub async fn print(pool: &PgPool) -> anyhow::Result<()> {
    let s = refstream_api::ops::summary::load(pool).await?;
    println!("users registered      {}", s.users);
    println!("referrals attributed  {}", s.referrals);
    for c in &s.by_status {
        println!("  {:<19} {}", c.label, c.count);
    }
    println!("rewards granted       {}", s.rewards_granted);
    println!("rewards reversed      {}", s.rewards_reversed);
    for a in &s.credited {
        println!("net credited          {} {}", a.amount.round_dp(2), a.currency);
    }
    println!("dead letters          {}", s.dead_letters);
    if !s.top_reasons.is_empty() {
        let reasons: Vec<String> = s.top_reasons.iter().map(|c| format!("{} ({})", c.label, c.count)).collect();
        println!("top hold/reject reasons {}", reasons.join(", "));
    }
    if s.ledger_imbalance.is_empty() {
        println!("ledger                balanced (sums to zero per currency)");
    } else {
        let off: Vec<String> = s.ledger_imbalance.iter().map(|a| format!("{} {}", a.amount, a.currency)).collect();
        anyhow::bail!("LEDGER IMBALANCE: {}", off.join(", "));
    }
    Ok(())
}
