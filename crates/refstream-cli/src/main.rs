//! `refstream`: the operator's command line — migrate, create topics, show codes, drive the
//! demo workload, print the summary, inspect and re-drive dead letters, work the review queue,
//! explain a referral's decision, measure the fraud rules on a labeled adversarial stream, serve
//! the HTTP API and dashboard, and manage the API's tokens.

mod audit;
mod campaigns;
mod demo;
mod dlq;
mod explain;
mod fraud_eval;
mod fx;
mod review;
mod serve;
mod summary;
mod topics;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use refstream_runtime::Settings;

#[derive(Parser)]
#[command(name = "refstream", about = "Operate a refstream deployment")]
struct Cli {
    /// A configuration file layered over the defaults (environment variables still win).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the database migrations.
    Migrate,
    /// Manage Kafka topics.
    Topics {
        #[command(subcommand)]
        action: topics::Action,
    },
    /// Show a user's referral code.
    Code { user_id: String },
    /// Produce the demo workload through a running fleet and print the summary.
    Demo(demo::Args),
    /// Print what the fleet has done: users, referrals, rewards, money.
    Summary,
    /// Inspect and re-drive dead letters.
    Dlq {
        #[command(subcommand)]
        action: dlq::Action,
    },
    /// The manual review queue: list held referrals, approve or reject them.
    Review {
        #[command(subcommand)]
        action: review::Action,
    },
    /// Explain a referral: its assessment, the rules that fired, the evidence, its transitions.
    Explain {
        /// The referral's id (or its referee's user id).
        referral_id: String,
    },
    /// Produce a labeled adversarial stream through a running fleet and measure the fraud rules.
    FraudEval(fraud_eval::Args),
    /// Prove from Postgres and Kafka that every cent is explained (one line per check; exits
    /// non-zero on any failure).
    Audit,
    /// Exchange rates deposits in other currencies qualify by.
    Fx {
        #[command(subcommand)]
        action: fx::Action,
    },
    /// Campaigns as data: apply a campaign file, list, show, pause, resume.
    Campaigns {
        #[command(subcommand)]
        action: campaigns::Action,
    },
    /// Serve the HTTP API, its OpenAPI document and the dashboard on `api.listen`.
    Serve,
    /// Print the API's OpenAPI 3.1 document.
    Openapi,
    /// Manage the API's bearer tokens.
    ApiToken {
        #[command(subcommand)]
        action: serve::TokenAction,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("refstream: {e}");
            return ExitCode::from(2);
        }
    };
    refstream_runtime::telemetry::init(&settings.telemetry);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("refstream: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("refstream: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Topics { action } => return topics::run(action, &settings).await,
        Command::Demo(args) => return demo::run(args, &settings).await,
        Command::FraudEval(args) => return fraud_eval::run(args, &settings).await,
        Command::Serve => return serve::serve(settings).await,
        Command::Openapi => {
            println!("{}", refstream_api::openapi().to_pretty_json()?);
            return Ok(());
        }
        _ => {}
    }
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect_with(settings.database_options()?).await?;
    match command {
        Command::Migrate => {
            refstream_runtime::db::migrate(&pool).await?;
            println!("migrations applied");
        }
        Command::Code { user_id } => {
            let code: Option<String> =
                sqlx::query_scalar("SELECT code FROM referral_codes WHERE user_id = $1").bind(&user_id).fetch_optional(&pool).await?;
            match code {
                Some(c) => println!("{c}"),
                None => anyhow::bail!("no referral code for user {user_id} (not registered yet?)"),
            }
        }
        Command::Summary => summary::print(&pool).await?,
        Command::Dlq { action } => dlq::run(action, &settings, &pool).await?,
        Command::Review { action } => review::run(action, &settings, &pool).await?,
        Command::Explain { referral_id } => explain::run(&pool, &referral_id).await?,
        Command::Audit => audit::run(&settings, &pool).await?,
        Command::Fx { action } => {
            refstream_runtime::db::migrate(&pool).await?;
            fx::run(action, &settings, &pool).await?
        }
        Command::Campaigns { action } => {
            refstream_runtime::db::migrate(&pool).await?;
            campaigns::run(action, &settings, &pool).await?
        }
        Command::ApiToken { action } => {
            refstream_runtime::db::migrate(&pool).await?;
            serve::token(action, &pool).await?
        }
        Command::Topics { .. } | Command::Demo(_) | Command::FraudEval(_) | Command::Serve | Command::Openapi => {
            unreachable!("handled above")
        }
    }
    Ok(())
}
