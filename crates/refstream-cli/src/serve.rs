//! `refstream serve` (the HTTP API and dashboard, [`refstream_api`]) and `refstream api-token`
//! (create, list, revoke its bearer tokens; a token is printed once and stored only hashed).

use clap::{Subcommand, ValueEnum};
use refstream_api::tokens::{self, Role};
use refstream_runtime::Settings;
use sqlx::PgPool;

#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Viewer,
    Reviewer,
    Admin,
    /// Mints client tokens only (the operator's backend).
    Issuer,
    Client,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Reviewer => Role::Reviewer,
            RoleArg::Admin => Role::Admin,
            RoleArg::Issuer => Role::Issuer,
            RoleArg::Client => Role::Client,
        }
    }
}

#[derive(Subcommand)]
pub enum TokenAction {
    /// Create a token and print it (this once). Staff roles: viewer reads, reviewer also decides
    /// reviews, admin also replays dead letters, issues client tokens and reads the audit log;
    /// issuer only issues client tokens. A client token acts for one user (--user).
    Create {
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Who or what holds it (unique among live staff tokens).
        #[arg(long)]
        name: String,
        /// The user a client token acts for.
        #[arg(long)]
        user: Option<String>,
        /// Expire after this many days (default: never for staff tokens).
        #[arg(long)]
        days: Option<i64>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id, or the live staff token with this name.
    Revoke { id_or_name: String },
}

/// The API on `api.listen`; `/healthz` and `/metrics` for operators on `metrics.listen`
/// (default 127.0.0.1:9107), as every refstream binary serves them.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    settings.api_addr()?;
    let metrics = settings.metrics_addr(9107)?;
    let stop = refstream_runtime::shutdown::on_signal(settings.shutdown_deadline());
    let health = refstream_runtime::http::Health::starting();
    refstream_runtime::http::serve(metrics, health.clone(), stop.clone()).await?;
    let pool = refstream_runtime::db::connect(&settings, "refstream-api", &stop).await?;
    refstream_runtime::db::migrate(&pool).await?;
    health.ready();
    refstream_api::serve(settings, pool, stop).await
}

pub async fn token(action: TokenAction, pool: &PgPool) -> anyhow::Result<()> {
    let operator = std::env::var("USER").map(|u| format!("cli:{u}")).unwrap_or_else(|_| "cli".into());
    match action {
        TokenAction::Create { role, name, user, days } => {
            if days.is_some_and(|d| !(1..=3650).contains(&d)) {
                anyhow::bail!("--days must be between 1 and 3650");
            }
            let expires = days.map(|d| chrono::Utc::now() + chrono::Duration::days(d));
            let mut conn = pool.acquire().await?;
            let created = tokens::create(&mut conn, &name, role.into(), user.as_deref(), expires, &operator).await?;
            eprintln!("token {} created for {name}; it is shown once, store it now:", created.token_id);
            println!("{}", created.token);
        }
        TokenAction::List => {
            println!("{:<36}  {:<8}  {:<24} {:<10} name", "token id", "role", "created", "state");
            for t in tokens::list(pool).await? {
                let state = match (t.revoked_at, t.expires_at) {
                    (Some(_), _) => "revoked",
                    (None, Some(e)) if e <= chrono::Utc::now() => "expired",
                    _ => "live",
                };
                let user = t.user_id.map(|u| format!(" (user {u})")).unwrap_or_default();
                println!(
                    "{:<36}  {:<8}  {:<24} {state:<10} {}{user}",
                    t.token_id,
                    t.role,
                    t.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    t.name
                );
            }
        }
        TokenAction::Revoke { id_or_name } => match tokens::revoke(pool, &id_or_name, &operator).await? {
            0 => anyhow::bail!("no live token {id_or_name}"),
            n => println!("revoked {n} token(s)"),
        },
    }
    Ok(())
}
