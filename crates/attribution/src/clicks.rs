//! Loading what attribution needs about clicks, one query per kind of lookup whatever the batch
//! size: the clicks registrations carry, the other clicks of their cookie or device, and the
//! registrations still waiting for a click. Every click comes with how the app got it (a
//! probabilistic claim without an exact one marks it probabilistic) and how many clicks its
//! code had from the click's network in the hour before it.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use refstream_core::attribution::{Click, ClickMatch};
use rust_decimal::Decimal;
use sqlx::PgConnection;

/// A click as loaded, with what the referral records about it.
#[derive(Debug, Clone)]
pub struct LoadedClick {
    pub click: Click,
    pub cookie_id: Option<String>,
    /// Clicks on the same code from the same network (/24, /64) in the hour up to this one.
    pub network_clicks: i32,
}

/// The columns every click query selects, from `referral_clicks c`.
const CLICK_COLUMNS: &str = "c.click_id, c.code, c.clicked_at, c.expired, c.cookie_id, \
     COALESCE(m.exact, false) AS exact_claim, m.confidence AS probabilistic_confidence, \
     (SELECT count(*) FROM referral_clicks o WHERE o.code = c.code AND o.ip_prefix_hash = c.ip_prefix_hash \
        AND o.clicked_at > c.clicked_at - interval '1 hour' AND o.clicked_at <= c.clicked_at)::int AS network_clicks";

/// The claims made for click `c`.
const CLAIMS_JOIN: &str = "LEFT JOIN LATERAL (SELECT bool_or(method = 'exact') AS exact, \
     max(confidence) FILTER (WHERE method = 'probabilistic') AS confidence \
     FROM click_claims WHERE click_id = c.click_id) AS m ON true";

#[derive(sqlx::FromRow)]
struct ClickRow {
    click_id: String,
    code: String,
    clicked_at: DateTime<Utc>,
    expired: bool,
    cookie_id: Option<String>,
    exact_claim: bool,
    probabilistic_confidence: Option<Decimal>,
    network_clicks: i32,
}

impl From<ClickRow> for LoadedClick {
    fn from(r: ClickRow) -> Self {
        let matched = match r.probabilistic_confidence {
            Some(c) if !r.exact_claim => ClickMatch::Probabilistic { confidence_pct: refstream_core::links::confidence_pct(c) },
            _ => ClickMatch::Exact,
        };
        LoadedClick {
            click: Click { click_id: r.click_id, code: r.code, clicked_at: r.clicked_at, expired: r.expired, matched },
            cookie_id: r.cookie_id,
            network_clicks: r.network_clicks,
        }
    }
}

/// Serialises attribution per click id: a registration waiting for a click and the click's
/// arrival cannot both miss each other (each reads after the other committed, or waits).
/// Two-key advisory locks of their own class, in ascending order.
pub async fn lock_click_ids(conn: &mut PgConnection, click_ids: &[&str]) -> sqlx::Result<()> {
    if click_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT pg_advisory_xact_lock(1129072467, h) FROM \
         (SELECT DISTINCT hashtext(k) AS h FROM unnest($1::text[]) AS k) AS locks ORDER BY h",
    )
    .bind(click_ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// The recorded clicks among `click_ids`.
pub async fn by_id(conn: &mut PgConnection, click_ids: Vec<String>) -> sqlx::Result<HashMap<String, LoadedClick>> {
    if click_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<ClickRow> =
        sqlx::query_as(&format!("SELECT {CLICK_COLUMNS} FROM referral_clicks c {CLAIMS_JOIN} WHERE c.click_id = ANY($1)"))
            .bind(click_ids)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().map(|r| (r.click_id.clone(), LoadedClick::from(r))).collect())
}

/// Who asks for related clicks: a registration, the cookie of the click it carries, its device.
pub struct RelatedTo<'a> {
    pub user_id: &'a str,
    pub cookie_id: Option<&'a str>,
    pub device_id: Option<&'a str>,
    pub registered_at: DateTime<Utc>,
}

/// Clicks of each registration's cookie or device made within `window` before it (at most 20
/// each, the latest), keyed by user id.
pub async fn related(conn: &mut PgConnection, who: &[RelatedTo<'_>], window: Duration) -> sqlx::Result<HashMap<String, Vec<LoadedClick>>> {
    let asking: Vec<&RelatedTo> = who.iter().filter(|w| w.cookie_id.is_some() || w.device_id.is_some()).collect();
    if asking.is_empty() {
        return Ok(HashMap::new());
    }
    #[derive(sqlx::FromRow)]
    struct Row {
        user_id: String,
        #[sqlx(flatten)]
        click: ClickRow,
    }
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT b.user_id, {CLICK_COLUMNS} \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS b(user_id, cookie_id, device_id, at) \
         CROSS JOIN LATERAL (SELECT * FROM referral_clicks x \
            WHERE ((b.cookie_id IS NOT NULL AND x.cookie_id = b.cookie_id) OR (b.device_id IS NOT NULL AND x.device_id = b.device_id)) \
              AND x.clicked_at >= b.at - $5 * interval '1 second' AND x.clicked_at <= b.at \
            ORDER BY x.clicked_at DESC LIMIT 20) AS c \
         {CLAIMS_JOIN}"
    ))
    .bind(asking.iter().map(|w| w.user_id).collect::<Vec<_>>())
    .bind(asking.iter().map(|w| w.cookie_id).collect::<Vec<_>>())
    .bind(asking.iter().map(|w| w.device_id).collect::<Vec<_>>())
    .bind(asking.iter().map(|w| w.registered_at).collect::<Vec<_>>())
    .bind(window.num_seconds())
    .fetch_all(conn)
    .await?;
    let mut out: HashMap<String, Vec<LoadedClick>> = HashMap::new();
    for r in rows {
        out.entry(r.user_id).or_default().push(r.click.into());
    }
    Ok(out)
}

/// A registration as stored, for deciding it again when its click lands.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Waiting {
    pub user_id: String,
    pub registered_at: DateTime<Utc>,
    pub typed_code: Option<String>,
    pub click_id: Option<String>,
    pub device_id: Option<String>,
}

/// Registrations still waiting for one of `click_ids` (decided ones are never decided again).
pub async fn waiting_for(conn: &mut PgConnection, click_ids: Vec<String>) -> sqlx::Result<Vec<Waiting>> {
    sqlx::query_as(
        "SELECT u.user_id, u.registered_at, u.typed_code, u.click_id, u.device_id FROM users u \
         WHERE u.click_id = ANY($1) AND u.attribution = 'awaiting_click' ORDER BY u.user_id",
    )
    .bind(click_ids)
    .fetch_all(conn)
    .await
}

/// The click ids of registrations that have waited past `wait` (at most `limit`, oldest first).
pub async fn overdue(conn: &mut PgConnection, wait: Duration, limit: i64) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT click_id FROM users WHERE attribution = 'awaiting_click' \
           AND registered_at < now() - $1 * interval '1 second' ORDER BY registered_at LIMIT $2",
    )
    .bind(wait.num_seconds())
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Records how attribution decided each user (`attributed`, `awaiting_click` or a reason).
pub async fn record_outcomes(conn: &mut PgConnection, outcomes: &[(&str, &str)]) -> sqlx::Result<()> {
    if outcomes.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE users u SET attribution = d.outcome FROM unnest($1::text[], $2::text[]) AS d(user_id, outcome) \
         WHERE u.user_id = d.user_id",
    )
    .bind(outcomes.iter().map(|o| o.0).collect::<Vec<_>>())
    .bind(outcomes.iter().map(|o| o.1).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}
