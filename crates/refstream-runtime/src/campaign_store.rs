//! What every binary reads of the campaigns' stored data, one query each: the latest version's
//! definition of campaigns, the definitions of given versions, and the exchange rates. Versions
//! and rates are never changed once written (append-only tables), so readers may cache them.

use chrono::{DateTime, Utc};
use refstream_core::campaigns::Definition;
use refstream_core::fx::{Rate, Rates};
use refstream_core::Currency;
use rust_decimal::Decimal;
use sqlx::types::Json;
use sqlx::PgConnection;

/// A rate row as read: base, quote (char(3), read as text), rate, in force from.
type RateRow = (String, String, Decimal, DateTime<Utc>);

/// The rates of `rows`; a row whose currency does not parse (written by hand) converts nothing.
fn rates_of(rows: Vec<RateRow>) -> Rates {
    Rates(
        rows.into_iter()
            .filter_map(|(b, q, rate, effective_at)| {
                Some(Rate { base: Currency::parse(b.trim()).ok()?, quote: Currency::parse(q.trim()).ok()?, rate, effective_at })
            })
            .collect(),
    )
}

/// Every recorded exchange rate (for the audit, which reads them once).
pub async fn exchange_rates(conn: &mut PgConnection) -> sqlx::Result<Rates> {
    let rows: Vec<RateRow> =
        sqlx::query_as("SELECT base::text, quote::text, rate, effective_at FROM fx_rates").fetch_all(&mut *conn).await?;
    Ok(rates_of(rows))
}

/// The rates a set of conversions needs: for each `(from, to, at)`, the latest rate of each
/// direction in force at `at` (what [`Rates::convert`] picks from), looked up through the
/// table's key instead of reading every rate ever recorded, which grows by a row per pair and
/// day (or hour) forever.
pub async fn rates_in_force(conn: &mut PgConnection, needs: &[(Currency, Currency, DateTime<Utc>)]) -> sqlx::Result<Rates> {
    if needs.is_empty() {
        return Ok(Rates::default());
    }
    let from: Vec<&str> = needs.iter().map(|(f, _, _)| f.as_str()).collect();
    let to: Vec<&str> = needs.iter().map(|(_, t, _)| t.as_str()).collect();
    let at: Vec<DateTime<Utc>> = needs.iter().map(|(_, _, a)| *a).collect();
    // The pair's key columns are char(3): the arrays' elements are cast to it, not the columns
    // to text, so the lookups use the primary key.
    let rows: Vec<RateRow> = sqlx::query_as(
        "SELECT DISTINCT x.base::text, x.quote::text, x.rate, x.effective_at \
         FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS n(f, t, at) \
         CROSS JOIN LATERAL ( \
           (SELECT base, quote, rate, effective_at FROM fx_rates \
            WHERE base = n.f::bpchar AND quote = n.t::bpchar AND effective_at <= n.at ORDER BY effective_at DESC LIMIT 1) \
           UNION ALL \
           (SELECT base, quote, rate, effective_at FROM fx_rates \
            WHERE base = n.t::bpchar AND quote = n.f::bpchar AND effective_at <= n.at ORDER BY effective_at DESC LIMIT 1)) AS x",
    )
    .bind(&from)
    .bind(&to)
    .bind(&at)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rates_of(rows))
}

/// The current (latest) version's definition of each campaign of `campaigns`, or of every
/// campaign when `None`.
pub async fn latest_definitions(conn: &mut PgConnection, campaigns: Option<&[String]>) -> sqlx::Result<Vec<(String, Definition)>> {
    let rows: Vec<(String, Json<Definition>)> = sqlx::query_as(
        "SELECT DISTINCT ON (campaign_id) campaign_id, definition FROM campaign_versions \
         WHERE $1::text[] IS NULL OR campaign_id = ANY($1) ORDER BY campaign_id, version DESC",
    )
    .bind(campaigns)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(id, d)| (id, d.0)).collect())
}

/// The definitions of the given (campaign, version) pairs that exist.
pub async fn definitions(conn: &mut PgConnection, keys: &[(String, i32)]) -> sqlx::Result<Vec<(String, i32, Definition)>> {
    let ids: Vec<&str> = keys.iter().map(|(id, _)| id.as_str()).collect();
    let versions: Vec<i32> = keys.iter().map(|(_, v)| *v).collect();
    let rows: Vec<(String, i32, Json<Definition>)> = sqlx::query_as(
        "SELECT v.campaign_id, v.version, v.definition FROM unnest($1::text[], $2::int[]) AS k(id, version) \
         JOIN campaign_versions v ON v.campaign_id = k.id AND v.version = k.version",
    )
    .bind(&ids)
    .bind(&versions)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(id, v, d)| (id, v, d.0)).collect())
}
