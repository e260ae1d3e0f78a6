//! The funnel report, read from the analytics worker's facts (CONTRACT used by refstream-api:
//! names and field types stay; fields may be added).
//!
//! What it guarantees:
//! - **A function of the facts only**: every number is computed when read, by the views of the
//!   `analytics` migration (`analytics_funnel`, `analytics_referral_facts`, ...) over the fact
//!   tables, so it does not depend on the order the records were read in, and a replay from
//!   offset zero (which leaves the facts as they are) leaves it unchanged.
//! - **One snapshot**: all of a report's queries run in one read-only REPEATABLE READ
//!   transaction, so its rows, totals, rates and money agree with each other.
//! - **Where things count**: see the crate documentation (clicks under their own campaign, day
//!   and platform; a signup and everything about a referee under the referral's campaign, the
//!   referee's registration day and platform; unreferred signups under campaign `"none"`). A
//!   [`Filter`] selects rows by those three; `from` and `to` are inclusive UTC days.
//! - **Money is exact**: `numeric` in Postgres, [`Decimal`] here; percentages are [`Decimal`]
//!   rounded half away from zero to two places.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::rules;

/// Which slice of the funnel to read. Every field optional; days are UTC, `to` inclusive.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct Filter {
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub campaign_id: Option<String>,
    pub platform: Option<String>,
}

/// The count of each funnel stage. `approved`, `held` and `rejected` are referrals by their
/// verdict (a reviewer's latest, else the scorer's latest decision); `first_deposits` are
/// referrals whose referee made a first qualifying deposit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Stages {
    pub clicks: i64,
    pub signups: i64,
    pub attributed: i64,
    pub approved: i64,
    pub held: i64,
    pub rejected: i64,
    pub first_deposits: i64,
    /// RewardGranted records (reward rows: a referral paying referrer and referee counts two).
    pub rewards: i64,
    /// RewardReversed records (rewards taken back).
    pub reversals: i64,
    /// Referrals with at least one reward.
    pub rewarded: i64,
}

/// One row of the funnel: a campaign, a UTC day and a platform.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FunnelRow {
    pub campaign_id: String,
    pub day: NaiveDate,
    pub platform: String,
    #[serde(flatten)]
    pub stages: Stages,
}

/// Conversion from one stage to the next, in percent (two decimals), absent when the first is 0.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Conversion {
    pub from: String,
    pub to: String,
    #[schema(value_type = Option<String>)]
    pub percent: Option<Decimal>,
}

/// Money by currency: granted, reversed, net.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MoneyRow {
    pub currency: String,
    #[schema(value_type = String)]
    pub granted: Decimal,
    #[schema(value_type = String)]
    pub reversed: Decimal,
    #[schema(value_type = String)]
    pub net: Decimal,
}

/// The whole funnel report for a filter.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Report {
    pub rows: Vec<FunnelRow>,
    pub totals: Stages,
    pub conversion: Vec<Conversion>,
    /// Seconds from registration to the first qualifying deposit, over the referees that made one.
    pub time_to_first_deposit_p50_secs: Option<i64>,
    pub time_to_first_deposit_p90_secs: Option<i64>,
    /// Referrals scored REVIEW or REJECT, and rejected, as percent of scored referrals.
    #[schema(value_type = Option<String>)]
    pub fraud_flag_percent: Option<Decimal>,
    #[schema(value_type = Option<String>)]
    pub rejection_percent: Option<Decimal>,
    pub money: Vec<MoneyRow>,
}

/// One referrer on the leaderboard (user ids only: no personal data).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Leader {
    pub referrer_id: String,
    pub attributed: i64,
    pub rewarded: i64,
    pub earned: Vec<MoneyRow>,
}

/// The conversions a report gives, by the names of [`Stages`] fields: from each stage to the one
/// a marketer reads next. Not every pair is a subset (codes typed at signup attribute without a
/// click; organic signups have no click), so a percentage may exceed 100.
pub const CONVERSIONS: [(&str, &str); 5] = [
    ("clicks", "signups"),
    ("signups", "attributed"),
    ("attributed", "approved"),
    ("attributed", "first_deposits"),
    ("first_deposits", "rewarded"),
];

/// The most referrers a leaderboard lists.
pub const MAX_LEADERS: i64 = 1000;

/// The filter as SQL over a view with `campaign_id`, `day` and `platform` columns, its
/// parameters `$1..$4` bound by [`bind_filter`].
const FILTER: &str = "($1::date IS NULL OR day >= $1) AND ($2::date IS NULL OR day <= $2) \
                      AND ($3::text IS NULL OR campaign_id = $3) AND ($4::text IS NULL OR platform = $4)";

fn bind_filter<'q, O>(
    q: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    f: &'q Filter,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    q.bind(f.from).bind(f.to).bind(f.campaign_id.as_deref()).bind(f.platform.as_deref())
}

impl Stages {
    /// The value of the stage named like its field.
    pub fn get(&self, stage: &str) -> Option<i64> {
        Some(match stage {
            "clicks" => self.clicks,
            "signups" => self.signups,
            "attributed" => self.attributed,
            "approved" => self.approved,
            "held" => self.held,
            "rejected" => self.rejected,
            "first_deposits" => self.first_deposits,
            "rewards" => self.rewards,
            "reversals" => self.reversals,
            "rewarded" => self.rewarded,
            _ => return None,
        })
    }

    fn add(&mut self, o: &Stages) {
        self.clicks += o.clicks;
        self.signups += o.signups;
        self.attributed += o.attributed;
        self.approved += o.approved;
        self.held += o.held;
        self.rejected += o.rejected;
        self.first_deposits += o.first_deposits;
        self.rewards += o.rewards;
        self.reversals += o.reversals;
        self.rewarded += o.rewarded;
    }
}

/// The conversions of [`CONVERSIONS`] over `totals`.
pub fn conversions(totals: &Stages) -> Vec<Conversion> {
    CONVERSIONS
        .iter()
        .map(|(from, to)| Conversion {
            from: (*from).to_owned(),
            to: (*to).to_owned(),
            percent: rules::percent(totals.get(to).unwrap_or(0), totals.get(from).unwrap_or(0)),
        })
        .collect()
}

#[derive(sqlx::FromRow)]
struct Row {
    campaign_id: String,
    day: NaiveDate,
    platform: String,
    clicks: i64,
    signups: i64,
    attributed: i64,
    approved: i64,
    held: i64,
    rejected: i64,
    first_deposits: i64,
    rewards: i64,
    reversals: i64,
    rewarded: i64,
}

#[derive(sqlx::FromRow)]
struct ReferralStats {
    scored: i64,
    flagged: i64,
    rejected: i64,
    p50: Option<i64>,
    p90: Option<i64>,
}

/// Begins the read-only snapshot a report is read in.
async fn snapshot(pool: &PgPool) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    Ok(tx)
}

/// Money by currency among the rewards and reversals `filter` selects; with `by_referrer`, only
/// the referrer rewards of those referrers, by referrer.
async fn money(
    conn: &mut sqlx::PgConnection,
    filter: &Filter,
    by_referrer: Option<&[String]>,
) -> sqlx::Result<Vec<(Option<String>, MoneyRow)>> {
    let (select, group, reward_extra, reversal_extra) = match by_referrer {
        Some(_) => (
            "who, currency",
            "GROUP BY who, currency ORDER BY who, currency",
            "AND role = 'REFERRER' AND beneficiary_id = ANY($5)",
            "AND user_id = ANY($5) AND EXISTS (SELECT 1 FROM analytics_rewards w WHERE w.reward_id = v.reward_id AND w.role = 'REFERRER')",
        ),
        None => ("NULL::text AS who, currency", "GROUP BY currency ORDER BY currency", "", ""),
    };
    let sql = format!(
        "SELECT {select}, sum(granted) AS granted, sum(reversed) AS reversed FROM ( \
             SELECT beneficiary_id AS who, currency, amount AS granted, 0::numeric AS reversed \
             FROM analytics_reward_facts WHERE {FILTER} {reward_extra} \
             UNION ALL \
             SELECT user_id, currency, 0::numeric, amount FROM analytics_reversal_facts v WHERE {FILTER} {reversal_extra} \
         ) m {group}"
    );
    let mut q = bind_filter(sqlx::query_as::<_, (Option<String>, String, Decimal, Decimal)>(&sql), filter);
    if let Some(referrers) = by_referrer {
        q = q.bind(referrers);
    }
    let rows = q.fetch_all(conn).await?;
    Ok(rows
        .into_iter()
        .map(|(who, currency, granted, reversed)| {
            (who, MoneyRow { currency: currency.trim().to_owned(), granted, reversed, net: granted - reversed })
        })
        .collect())
}

/// The funnel for `filter`: its rows (by day, campaign, platform), their totals, the
/// conversions between stages, the time from registration to the first qualifying deposit
/// (p50 and p90, whole seconds, over the referees that made one), the fraud flag and rejection
/// rates over scored referrals, and money per currency.
pub async fn report(pool: &PgPool, filter: &Filter) -> sqlx::Result<Report> {
    let mut tx = snapshot(pool).await?;
    let sql = format!(
        "SELECT campaign_id, day, platform, clicks, signups, attributed, approved, held, rejected, first_deposits, rewards, \
                reversals, rewarded \
         FROM analytics_funnel WHERE {FILTER} ORDER BY day, campaign_id, platform"
    );
    let rows: Vec<Row> = bind_filter(sqlx::query_as(&sql), filter).fetch_all(&mut *tx).await?;
    let rows: Vec<FunnelRow> = rows
        .into_iter()
        .map(|r| FunnelRow {
            campaign_id: r.campaign_id,
            day: r.day,
            platform: r.platform,
            stages: Stages {
                clicks: r.clicks,
                signups: r.signups,
                attributed: r.attributed,
                approved: r.approved,
                held: r.held,
                rejected: r.rejected,
                first_deposits: r.first_deposits,
                rewards: r.rewards,
                reversals: r.reversals,
                rewarded: r.rewarded,
            },
        })
        .collect();
    let mut totals = Stages::default();
    for r in &rows {
        totals.add(&r.stages);
    }

    let sql = format!(
        "SELECT count(*) FILTER (WHERE score_decision IS NOT NULL) AS scored, \
                count(*) FILTER (WHERE score_decision IN ('REVIEW', 'REJECT')) AS flagged, \
                count(*) FILTER (WHERE score_decision IS NOT NULL AND verdict = 'rejected') AS rejected, \
                percentile_disc(0.5) WITHIN GROUP (ORDER BY secs) AS p50, \
                percentile_disc(0.9) WITHIN GROUP (ORDER BY secs) AS p90 \
         FROM (SELECT score_decision, verdict, \
                      CASE WHEN first_deposit_at IS NOT NULL \
                           THEN greatest(0, floor(extract(epoch FROM first_deposit_at - registered_at)))::bigint END AS secs \
               FROM analytics_referral_facts WHERE {FILTER}) f"
    );
    let stats: ReferralStats = bind_filter(sqlx::query_as(&sql), filter).fetch_one(&mut *tx).await?;
    let money = money(&mut tx, filter, None).await?.into_iter().map(|(_, m)| m).collect();
    tx.commit().await?;

    Ok(Report {
        conversion: conversions(&totals),
        rows,
        totals,
        time_to_first_deposit_p50_secs: stats.p50,
        time_to_first_deposit_p90_secs: stats.p90,
        fraud_flag_percent: rules::percent(stats.flagged, stats.scored),
        rejection_percent: rules::percent(stats.rejected, stats.scored),
        money,
    })
}

/// The top `limit` referrers (at most [`MAX_LEADERS`]) among the referrals `filter` selects:
/// by rewarded referrals, then attributed referrals, then referrer id; each with what it earned
/// as referrer per currency (granted, reversed, net) from the rewards of those referrals.
pub async fn leaderboard(pool: &PgPool, filter: &Filter, limit: i64) -> sqlx::Result<Vec<Leader>> {
    let limit = limit.clamp(0, MAX_LEADERS);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut tx = snapshot(pool).await?;
    let sql = format!(
        "SELECT referrer_id, count(*) AS attributed, count(*) FILTER (WHERE rewarded) AS rewarded \
         FROM (SELECT p.referrer_id, EXISTS (SELECT 1 FROM analytics_rewards w WHERE w.referral_id = p.referral_id) AS rewarded \
               FROM analytics_referral_places p WHERE {FILTER}) r \
         GROUP BY referrer_id ORDER BY rewarded DESC, attributed DESC, referrer_id LIMIT $5"
    );
    let top: Vec<(String, i64, i64)> = bind_filter(sqlx::query_as(&sql), filter).bind(limit).fetch_all(&mut *tx).await?;
    let ids: Vec<String> = top.iter().map(|t| t.0.clone()).collect();
    let earned = money(&mut tx, filter, Some(&ids)).await?;
    tx.commit().await?;
    Ok(top
        .into_iter()
        .map(|(referrer_id, attributed, rewarded)| {
            let earned = earned.iter().filter(|(who, _)| who.as_deref() == Some(referrer_id.as_str())).map(|(_, m)| m.clone()).collect();
            Leader { referrer_id, attributed, rewarded, earned }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_name_stages_and_skip_empty_denominators() {
        let totals = Stages { clicks: 4, signups: 10, attributed: 7, approved: 3, first_deposits: 5, rewarded: 3, ..Stages::default() };
        let c = conversions(&totals);
        let got: Vec<(String, String, Option<String>)> = c.into_iter().map(|c| (c.from, c.to, c.percent.map(|p| p.to_string()))).collect();
        let want = [
            ("clicks", "signups", Some("250.00")),
            ("signups", "attributed", Some("70.00")),
            ("attributed", "approved", Some("42.86")),
            ("attributed", "first_deposits", Some("71.43")),
            ("first_deposits", "rewarded", Some("60.00")),
        ];
        let want: Vec<(String, String, Option<String>)> =
            want.iter().map(|(a, b, p)| (a.to_string(), b.to_string(), p.map(str::to_owned))).collect();
        assert_eq!(got, want);
        assert!(conversions(&Stages::default()).iter().all(|c| c.percent.is_none()));
        for (from, to) in CONVERSIONS {
            assert!(Stages::default().get(from).is_some() && Stages::default().get(to).is_some(), "{from} -> {to}");
        }
    }
}
