//! Configuration: embedded defaults, then an optional file, then `REFSTREAM__…` environment
//! variables (`__` separates sections). [`Settings::load`] returns every problem as an error
//! that names the setting, so a bad value stops a binary at start instead of at first use.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use refstream_core::attribution::{TouchPolicy, TouchRules};
use refstream_core::campaign::{Campaign, RewardSpec, Role};
use refstream_core::settlement::{AfterPayment, FraudAfterPayment};
use refstream_core::{Currency, Money};
use rust_decimal::Decimal;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;

use crate::codec::EventKind;

const DEFAULTS: &str = include_str!("defaults.toml");

/// The `fraud.hash_key` shipped in the embedded defaults: public, so hashes made with it can be
/// reversed by anyone who reads the repository. Accepted only with `dev_mode = true`.
pub const DEVELOPMENT_HASH_KEY: &str = "refstream-development-key";

/// A setting that is missing or malformed, by its name.
#[derive(Debug, thiserror::Error)]
#[error("configuration error in `{setting}` (env REFSTREAM__{env}): {reason}")]
pub struct ConfigError {
    pub setting: String,
    env: String,
    pub reason: String,
}

impl ConfigError {
    fn new(setting: &str, reason: impl Into<String>) -> Self {
        Self { setting: setting.to_owned(), env: setting.replace('.', "__").to_uppercase(), reason: reason.into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Development mode (`REFSTREAM__DEV_MODE=true`, set by `make demo` and the tests): allows
    /// the development `fraud.hash_key` of the embedded defaults. Off in production.
    pub dev_mode: bool,
    pub database: DatabaseSettings,
    pub kafka: KafkaSettings,
    pub topics: Topics,
    pub metrics: MetricsSettings,
    pub telemetry: TelemetrySettings,
    pub campaign: CampaignSettings,
    pub settlement: SettlementSettings,
    pub fraud: FraudSettings,
    pub relay: RelaySettings,
    pub deposits: DepositSettings,
    pub shutdown: ShutdownSettings,
    pub avro: AvroSettings,
    pub attribution: AttributionSettings,
    pub links: LinksSettings,
    pub api: ApiSettings,
}

/// The HTTP API and dashboard (`refstream serve`).
#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    pub listen: String,
    /// Request bodies larger than this are refused with 413.
    pub max_body_bytes: usize,
    /// The base of the share links the API gives users (where the `links` service is reachable
    /// from the internet), e.g. `https://r.example.com`: a link is `<base>/r/<code>`.
    pub share_base_url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    pub connect_timeout_secs: u64,
    /// Server settings for every session refstream opens (`-c key=value` at connect).
    #[serde(default)]
    pub session: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KafkaSettings {
    pub brokers: String,
    pub group_prefix: String,
    pub batch_max_records: usize,
    pub batch_linger_ms: u64,
    /// How many partitions' batches a worker applies at once, each in its own transaction; the
    /// other partitions' records queue up meanwhile and go in larger batches.
    pub batches_in_flight: usize,
    /// The consumers' `fetch.wait.max.ms`: how long a broker may hold a fetch that found nothing.
    pub fetch_wait_max_ms: u32,
    pub session_timeout_ms: u32,
    /// How long a worker remembers an event id it applied (`processed_events`): older ids are
    /// deleted (`consumer::prune_processed_events`).
    pub dedupe_retention_hours: i32,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Topics {
    pub user_registered: String,
    pub deposit_completed: String,
    pub deposit_reversed: String,
    pub referral_attributed: String,
    pub referral_scored: String,
    pub review_decided: String,
    pub referral_clicked: String,
    pub reward_granted: String,
    pub reward_reversed: String,
    pub user_verified: String,
    pub partitions: i32,
    pub replication_factor: i32,
}

impl Topics {
    /// Every topic refstream reads or writes, dead-letter topics included.
    pub fn all(&self) -> Vec<String> {
        let main = [
            &self.user_registered,
            &self.deposit_completed,
            &self.deposit_reversed,
            &self.referral_attributed,
            &self.referral_scored,
            &self.review_decided,
            &self.referral_clicked,
            &self.reward_granted,
            &self.reward_reversed,
            &self.user_verified,
        ];
        let mut all: Vec<String> = main.iter().map(|t| t.to_string()).collect();
        all.extend(main.iter().map(|t| dead_letter_topic(t)));
        all
    }
}

/// The dead-letter topic of `topic`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

#[derive(Debug, Clone, Deserialize)]
pub struct MetricsSettings {
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    pub format: String,
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CampaignSettings {
    pub id: String,
    pub currency: String,
    pub referrer_reward: String,
    pub referee_reward: String,
    pub min_deposit: String,
    pub window_days: i64,
    pub settle_delay_secs: u64,
    /// What happens to a paid referral the scorer later rejects: `clawback` or `review`.
    pub fraud_after_payment_reject: String,
    /// What happens to a paid referral the scorer later sends to review: `clawback` or `review`.
    pub fraud_after_payment_review: String,
    /// Which touch wins when a registration has several (a typed code, clicks): `first` or `last`.
    pub touch: String,
    /// Codes minted from now on stop attributing this many days after their owner registered
    /// (`referral_codes.expires_at`); 0: they never expire.
    pub code_valid_days: i64,
    /// A campaign change or exchange rate recorded now is in force from this long after it was
    /// written (covering its commit and producers' clock skew), so nothing is decided by it
    /// before it is visible.
    pub changes_in_force_after_ms: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SettlementSettings {
    /// How often the settlement sweep looks for due payouts when nothing woke it.
    pub idle_sweep_ms: u64,
    /// How often it looks while payouts wait on their barrier.
    pub busy_sweep_ms: u64,
    /// Payouts waiting on the pipeline in front of the scorer longer than this raise
    /// `refstream_settlement_gate_stalled`.
    pub gate_alert_secs: u64,
    /// Most payouts settled in one transaction.
    pub batch_size: i64,
    /// Settlement transactions one engine runs at once while a backlog of open payouts lasts.
    pub concurrency: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FraudSettings {
    pub review_at: u8,
    pub reject_at: u8,
    pub ring_min_size: u32,
    pub velocity_window_hours: i64,
    pub velocity_per_referrer: u32,
    pub velocity_per_device: u32,
    pub velocity_per_ip: u32,
    pub disposable_domains_file: String,
    pub hash_key: SecretString,
    pub attributed_batches_in_flight: usize,
    /// Clicks on one code from one network (/24, /64) within an hour before the referee's click
    /// at which CLICK_FLOOD fires.
    pub click_flood_per_network: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AttributionSettings {
    /// A click attributes a registration made at most this many days after it.
    pub click_window_days: i64,
    /// A registration whose click id is not recorded yet waits for it: a click recorded at most
    /// this long after the registration still attributes it.
    pub click_wait_secs: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LinksSettings {
    pub listen: String,
    /// Mark cookies `Secure` (HTTPS only). Keep true in production.
    pub cookie_secure: bool,
    /// Take the client address from the first `X-Forwarded-For` hop (behind a trusted proxy).
    pub trust_forwarded_for: bool,
    /// Requests per minute one client address may make to the public endpoints.
    pub rate_limit_per_ip_per_min: u32,
    /// Clicks per minute one code may receive.
    pub rate_limit_per_code_per_min: u32,
    pub max_body_bytes: usize,
    /// A deferred-attribution claim matches clicks made at most this long before it.
    pub probabilistic_window_secs: i64,
    /// Probabilistic matches below this confidence (percent) are not returned.
    pub probabilistic_min_confidence_pct: u8,
    pub destinations: LinkDestinations,
}

/// Where `/r/{code}` sends each platform; an empty value has no destination.
#[derive(Debug, Clone, Deserialize)]
pub struct LinkDestinations {
    pub web: String,
    pub desktop: String,
    pub ios: String,
    pub android: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RelaySettings {
    pub batch_size: i64,
    pub idle_poll_ms: u64,
    pub fault_pause_before_delete_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DepositSettings {
    pub unknown_user_hold_secs: u64,
    pub unknown_user_check_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ShutdownSettings {
    pub deadline_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AvroSettings {
    #[serde(default)]
    pub confluent_schema_ids: HashMap<String, String>,
}

impl Settings {
    /// Loads defaults, then `file` (or the file named by `REFSTREAM_CONFIG`), then the
    /// environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, vars)
    }

    /// As [`Settings::load_from`] in development mode (`dev_mode = true` unless `vars` says
    /// otherwise): what tests and the demo use.
    pub fn load_dev(vars: Vec<(String, String)>) -> Result<Self, ConfigError> {
        let mut all = vec![("REFSTREAM__DEV_MODE".to_owned(), "true".to_owned())];
        all.extend(vars);
        Self::load_from(None, all)
    }

    /// As [`Settings::load`], with the environment given explicitly (tests).
    pub fn load_from(file: Option<&Path>, vars: Vec<(String, String)>) -> Result<Self, ConfigError> {
        let env_file = vars.iter().find(|(k, _)| k == "REFSTREAM_CONFIG").map(|(_, v)| v.clone());
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = file.map(Path::to_path_buf).or(env_file.map(Into::into)) {
            if !path.exists() {
                return Err(ConfigError::new("config file", format!("{} does not exist", path.display())));
            }
            builder = builder.add_source(File::from(path));
        }
        let env: HashMap<String, String> = vars.into_iter().filter(|(k, _)| k.starts_with("REFSTREAM__")).collect();
        builder = builder.add_source(Environment::with_prefix("REFSTREAM").prefix_separator("__").separator("__").source(Some(env)));
        let cfg = builder.build().map_err(|e| ConfigError::new(&setting_of(&e), e.to_string()))?;
        let mut settings: Settings = cfg.try_deserialize().map_err(|e| ConfigError::new(&setting_of(&e), e.to_string()))?;
        // librdkafka names use dots; an environment variable can only carry underscores.
        settings.kafka.options = settings.kafka.options.into_iter().map(|(k, v)| (k.replace('_', "."), v)).collect();
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.database_options()?;
        if self.kafka.brokers.trim().is_empty() {
            return Err(ConfigError::new("kafka.brokers", "is empty"));
        }
        if self.kafka.batch_max_records == 0 {
            return Err(ConfigError::new("kafka.batch_max_records", "must be at least 1"));
        }
        if self.kafka.fetch_wait_max_ms > 300_000 {
            return Err(ConfigError::new("kafka.fetch_wait_max_ms", "must be at most 300000 (librdkafka's limit)"));
        }
        if !(1..=87_600).contains(&self.kafka.dedupe_retention_hours) {
            return Err(ConfigError::new(
                "kafka.dedupe_retention_hours",
                "must be between 1 and 87600 (ten years), and at least the input topics' retention",
            ));
        }
        if !self.metrics.listen.is_empty() {
            self.metrics_addr(0)?;
        }
        if !matches!(self.telemetry.format.as_str(), "text" | "json") {
            return Err(ConfigError::new("telemetry.format", format!("`{}` is neither text nor json", self.telemetry.format)));
        }
        if self.topics.partitions < 1 {
            return Err(ConfigError::new("topics.partitions", "must be at least 1"));
        }
        self.campaign()?;
        self.fraud_after_payment()?;
        if !(1..=64).contains(&self.kafka.batches_in_flight) {
            return Err(ConfigError::new("kafka.batches_in_flight", "must be between 1 and 64"));
        }
        if self.fraud.attributed_batches_in_flight < 1 {
            return Err(ConfigError::new("fraud.attributed_batches_in_flight", "must be at least 1"));
        }
        if !(1..=16).contains(&self.settlement.concurrency) {
            return Err(ConfigError::new("settlement.concurrency", "must be between 1 and 16"));
        }
        if self.settlement.batch_size < 1 {
            return Err(ConfigError::new("settlement.batch_size", "must be at least 1"));
        }
        if self.settlement.busy_sweep_ms < 1 || self.settlement.idle_sweep_ms < 1 {
            return Err(ConfigError::new("settlement.busy_sweep_ms", "sweep intervals must be at least 1 ms"));
        }
        if self.fraud.review_at > self.fraud.reject_at || self.fraud.reject_at > 100 {
            return Err(ConfigError::new("fraud.review_at", "must satisfy review_at <= reject_at <= 100"));
        }
        self.check_hash_key()?;
        self.confluent_ids()?;
        self.touch_rules()?;
        self.links_addr()?;
        self.api_addr()?;
        if self.api.max_body_bytes < 256 {
            return Err(ConfigError::new("api.max_body_bytes", "must be at least 256"));
        }
        let base = &self.api.share_base_url;
        if !(base.starts_with("https://") || base.starts_with("http://")) || base.contains(char::is_whitespace) {
            return Err(ConfigError::new("api.share_base_url", format!("`{base}` is not an http(s) URL")));
        }
        if self.fraud.click_flood_per_network < 2 {
            return Err(ConfigError::new("fraud.click_flood_per_network", "must be at least 2"));
        }
        let l = &self.links;
        for (name, url) in [
            ("web", &l.destinations.web),
            ("desktop", &l.destinations.desktop),
            ("ios", &l.destinations.ios),
            ("android", &l.destinations.android),
        ] {
            let ok = url.is_empty()
                || ((url.starts_with("https://") || url.starts_with("http://"))
                    && !url.contains(char::is_whitespace)
                    && !url.contains('#'));
            if !ok {
                return Err(ConfigError::new(
                    &format!("links.destinations.{name}"),
                    format!("`{url}` is not an http(s) URL without a fragment"),
                ));
            }
        }
        if l.rate_limit_per_ip_per_min < 1 || l.rate_limit_per_code_per_min < 1 {
            return Err(ConfigError::new("links.rate_limit_per_ip_per_min", "rate limits must be at least 1 per minute"));
        }
        if l.max_body_bytes < 256 {
            return Err(ConfigError::new("links.max_body_bytes", "must be at least 256"));
        }
        if l.probabilistic_window_secs < 1 {
            return Err(ConfigError::new("links.probabilistic_window_secs", "must be at least 1"));
        }
        if l.probabilistic_min_confidence_pct > 100 {
            return Err(ConfigError::new("links.probabilistic_min_confidence_pct", "is a percentage: at most 100"));
        }
        Ok(())
    }

    /// The hash key must be a secret of at least 16 characters; the development key of the
    /// embedded defaults is refused outside `dev_mode`.
    fn check_hash_key(&self) -> Result<(), ConfigError> {
        let key = self.fraud.hash_key.expose_secret();
        if key.trim().is_empty() {
            return Err(ConfigError::new("fraud.hash_key", "is empty: set it to a secret of at least 16 characters"));
        }
        if key.len() < 16 {
            return Err(ConfigError::new("fraud.hash_key", "must be at least 16 characters"));
        }
        if key == DEVELOPMENT_HASH_KEY && !self.dev_mode {
            return Err(ConfigError::new(
                "fraud.hash_key",
                "is the development key shipped in the defaults, which makes the stored email and IP hashes reversible by \
                 anyone who reads the repository: set REFSTREAM__FRAUD__HASH_KEY to a secret of at least 16 characters \
                 (or REFSTREAM__DEV_MODE=true on a development machine)",
            ));
        }
        Ok(())
    }

    /// The address the API (`refstream serve`) listens on.
    pub fn api_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.api.listen.parse().map_err(|e| ConfigError::new("api.listen", format!("`{}` is not host:port: {e}", self.api.listen)))
    }

    /// The attribution rules between touches.
    pub fn touch_rules(&self) -> Result<TouchRules, ConfigError> {
        let policy = TouchPolicy::parse(self.campaign.touch.trim())
            .ok_or_else(|| ConfigError::new("campaign.touch", format!("`{}` is neither first nor last", self.campaign.touch)))?;
        if self.attribution.click_window_days < 1 {
            return Err(ConfigError::new("attribution.click_window_days", "must be at least 1"));
        }
        if self.attribution.click_wait_secs < 0 {
            return Err(ConfigError::new("attribution.click_wait_secs", "must not be negative"));
        }
        Ok(TouchRules {
            policy,
            click_window: chrono::Duration::days(self.attribution.click_window_days),
            click_wait: chrono::Duration::seconds(self.attribution.click_wait_secs),
        })
    }

    /// How long a minted code attributes, `None` for ever (`campaign.code_valid_days`).
    pub fn code_validity(&self) -> Option<chrono::Duration> {
        (self.campaign.code_valid_days > 0).then(|| chrono::Duration::days(self.campaign.code_valid_days))
    }

    /// The address the links service listens on.
    pub fn links_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.links.listen.parse().map_err(|e| ConfigError::new("links.listen", format!("`{}` is not host:port: {e}", self.links.listen)))
    }

    /// Connection options for Postgres.
    pub fn database_options(&self) -> Result<PgConnectOptions, ConfigError> {
        let url = self.database.url.expose_secret();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::new("database.url", "must start with postgres:// or postgresql://"));
        }
        let options = PgConnectOptions::from_str(url).map_err(|e| ConfigError::new("database.url", format!("not a Postgres URL: {e}")))?;
        for (key, value) in &self.database.session {
            let plain = |t: &str, extra: &str| {
                !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || "_.".contains(c) || extra.contains(c))
            };
            if !plain(key, "") || !plain(value, "-:") {
                return Err(ConfigError::new(
                    &format!("database.session.{key}"),
                    format!("`{key} = {value}` is not a plain Postgres setting (letters, digits, `_`, `.`; values also `-`, `:`)"),
                ));
            }
        }
        Ok(options.options(&self.database.session))
    }

    /// The metrics address, or `127.0.0.1:<default_port>` when unset.
    pub fn metrics_addr(&self, default_port: u16) -> Result<SocketAddr, ConfigError> {
        if self.metrics.listen.is_empty() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], default_port)));
        }
        self.metrics
            .listen
            .parse()
            .map_err(|e| ConfigError::new("metrics.listen", format!("`{}` is not host:port: {e}", self.metrics.listen)))
    }

    /// The campaign the reward engine pays.
    pub fn campaign(&self) -> Result<Campaign, ConfigError> {
        let c = &self.campaign;
        let currency = Currency::parse(&c.currency).map_err(|e| ConfigError::new("campaign.currency", e.reason))?;
        let amount = |name: &str, raw: &str| -> Result<Decimal, ConfigError> {
            let d = Decimal::from_str(raw.trim()).map_err(|e| ConfigError::new(name, format!("`{raw}` is not a decimal: {e}")))?;
            Money::positive("amount", d, currency).map_err(|e| ConfigError::new(name, e.reason))?;
            Ok(d)
        };
        let mut rewards = vec![RewardSpec::fixed(
            "referrer_bonus",
            Role::Referrer,
            Money::new(amount("campaign.referrer_reward", &c.referrer_reward)?, currency),
        )];
        if !c.referee_reward.trim().is_empty() {
            rewards.push(RewardSpec::fixed(
                "referee_bonus",
                Role::Referee,
                Money::new(amount("campaign.referee_reward", &c.referee_reward)?, currency),
            ));
        }
        if c.window_days < 1 {
            return Err(ConfigError::new("campaign.window_days", "must be at least 1"));
        }
        if c.id.trim().is_empty() {
            return Err(ConfigError::new("campaign.id", "is empty"));
        }
        if c.code_valid_days < 0 {
            return Err(ConfigError::new("campaign.code_valid_days", "must not be negative (0: codes never expire)"));
        }
        Ok(Campaign {
            id: c.id.clone(),
            rewards,
            min_deposit: amount("campaign.min_deposit", &c.min_deposit)?,
            currency,
            window: chrono::Duration::days(c.window_days),
            kyc: refstream_core::campaign::Kyc::default(),
            levels: Vec::new(),
            milestones: Vec::new(),
        })
    }

    /// What the campaign does with fraud the scorer finds after payment.
    pub fn fraud_after_payment(&self) -> Result<FraudAfterPayment, ConfigError> {
        let parse = |name: &str, raw: &str| {
            AfterPayment::parse(raw.trim()).ok_or_else(|| ConfigError::new(name, format!("`{raw}` is neither clawback nor review")))
        };
        Ok(FraudAfterPayment {
            on_reject: parse("campaign.fraud_after_payment_reject", &self.campaign.fraud_after_payment_reject)?,
            on_review: parse("campaign.fraud_after_payment_review", &self.campaign.fraud_after_payment_review)?,
        })
    }

    /// The Confluent schema ids this deployment accepts.
    pub fn confluent_ids(&self) -> Result<HashMap<u32, EventKind>, ConfigError> {
        self.avro
            .confluent_schema_ids
            .iter()
            .map(|(id, name)| {
                let setting = format!("avro.confluent_schema_ids.{id}");
                let id = id.parse::<u32>().map_err(|e| ConfigError::new(&setting, format!("not a schema id: {e}")))?;
                let kind =
                    EventKind::parse(name).ok_or_else(|| ConfigError::new(&setting, format!("`{name}` is not a refstream record")))?;
                Ok((id, kind))
            })
            .collect()
    }

    pub fn shutdown_deadline(&self) -> Duration {
        Duration::from_secs(self.shutdown.deadline_secs)
    }

    /// The consumer group of `worker`.
    pub fn group_id(&self, worker: &str) -> String {
        format!("{}.{worker}", self.kafka.group_prefix)
    }
}

/// The setting a `config` error is about, when it says.
fn setting_of(e: &config::ConfigError) -> String {
    let text = e.to_string();
    text.split("for key `").nth(1).and_then(|rest| rest.split('`').next()).map(str::to_owned).unwrap_or_else(|| "configuration".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_load() {
        let s = Settings::load_dev(vec![]).unwrap();
        assert_eq!(s.topics.user_registered, "user-registered");
        assert_eq!(s.kafka.dedupe_retention_hours, 336, "14 days: twice Kafka's default topic retention");
        let c = s.campaign().unwrap();
        assert_eq!(c.rewards[0].amount.to_string(), "10.00 USD");
        assert_eq!(c.min_deposit, Decimal::new(20, 0));
        assert_eq!(s.database_options().unwrap().get_options(), Some("-c jit=off -c random_page_cost=1.1"));
    }

    #[test]
    fn the_three_contract_variables_override() {
        let s = Settings::load_dev(env(&[
            ("REFSTREAM__DATABASE__URL", "postgres://u:p@db:5433/x"),
            ("REFSTREAM__KAFKA__BROKERS", "k1:9092,k2:9092"),
            ("REFSTREAM__METRICS__LISTEN", "0.0.0.0:9400"),
            ("REFSTREAM__KAFKA__OPTIONS__FETCH_MAX_BYTES", "1048576"),
        ]))
        .unwrap();
        assert_eq!(s.database_options().unwrap().get_port(), 5433);
        assert_eq!(s.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(s.metrics_addr(1).unwrap().port(), 9400);
        assert_eq!(s.kafka.options.get("fetch.max.bytes").map(String::as_str), Some("1048576"));
    }

    #[test]
    fn bad_settings_name_the_setting() {
        for (var, value, setting) in [
            ("REFSTREAM__METRICS__LISTEN", "nonsense", "metrics.listen"),
            ("REFSTREAM__DATABASE__URL", "mysql://x", "database.url"),
            ("REFSTREAM__CAMPAIGN__REFERRER_REWARD", "ten", "campaign.referrer_reward"),
            ("REFSTREAM__CAMPAIGN__CURRENCY", "XXQ", "campaign.currency"),
            ("REFSTREAM__TELEMETRY__FORMAT", "xml", "telemetry.format"),
            ("REFSTREAM__KAFKA__BATCH_MAX_RECORDS", "many", "kafka.batch_max_records"),
            ("REFSTREAM__KAFKA__FETCH_WAIT_MAX_MS", "400000", "kafka.fetch_wait_max_ms"),
            ("REFSTREAM__KAFKA__BATCHES_IN_FLIGHT", "0", "kafka.batches_in_flight"),
            ("REFSTREAM__KAFKA__DEDUPE_RETENTION_HOURS", "0", "kafka.dedupe_retention_hours"),
            ("REFSTREAM__KAFKA__DEDUPE_RETENTION_HOURS", "-24", "kafka.dedupe_retention_hours"),
            ("REFSTREAM__KAFKA__DEDUPE_RETENTION_HOURS", "two weeks", "kafka.dedupe_retention_hours"),
            ("REFSTREAM__DATABASE__SESSION__JIT", "off -c x=y", "database.session.jit"),
            ("REFSTREAM__CAMPAIGN__TOUCH", "middle", "campaign.touch"),
            ("REFSTREAM__LINKS__LISTEN", "port 80", "links.listen"),
            ("REFSTREAM__LINKS__DESTINATIONS__IOS", "itms://x y", "links.destinations.ios"),
            ("REFSTREAM__ATTRIBUTION__CLICK_WINDOW_DAYS", "0", "attribution.click_window_days"),
            ("REFSTREAM__LINKS__PROBABILISTIC_MIN_CONFIDENCE_PCT", "150", "links.probabilistic_min_confidence_pct"),
            ("REFSTREAM__API__LISTEN", "localhost", "api.listen"),
            ("REFSTREAM__API__SHARE_BASE_URL", "r.example.com", "api.share_base_url"),
            ("REFSTREAM__FRAUD__HASH_KEY", "", "fraud.hash_key"),
            ("REFSTREAM__FRAUD__HASH_KEY", "short", "fraud.hash_key"),
        ] {
            let err = Settings::load_dev(env(&[(var, value)])).err().unwrap_or_else(|| panic!("{var} accepted"));
            assert_eq!(err.setting, setting, "{var}: {err}");
            assert!(err.to_string().contains(setting));
        }
    }

    #[test]
    fn the_development_hash_key_is_refused_outside_dev_mode() {
        let err = Settings::load_from(None, vec![]).expect_err("the development key is refused without dev_mode");
        assert_eq!(err.setting, "fraud.hash_key");
        assert!(err.to_string().contains("REFSTREAM__FRAUD__HASH_KEY"), "{err}");
        let prod = env(&[("REFSTREAM__FRAUD__HASH_KEY", "a-production-secret-of-some-length")]);
        assert!(!Settings::load_from(None, prod).unwrap().dev_mode);
        assert!(Settings::load_dev(vec![]).unwrap().dev_mode);
        let empty = env(&[("REFSTREAM__DEV_MODE", "true"), ("REFSTREAM__FRAUD__HASH_KEY", "")]);
        assert_eq!(Settings::load_from(None, empty).expect_err("empty key refused").setting, "fraud.hash_key");
    }
}
