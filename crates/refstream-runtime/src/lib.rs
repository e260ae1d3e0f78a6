//! refstream's plumbing shared by every binary: configuration, telemetry, metrics and the
//! health endpoint, the Avro codec, Postgres (pool, migrations, outbox, dead letters) and the
//! Kafka consumer runtime that gives every worker the same processing contract.

pub mod campaign_store;
pub mod codec;
pub mod config;
pub mod consumer;
pub mod db;
pub mod dead_letter;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod outbox;
pub mod service;
pub mod shutdown;
pub mod telemetry;

pub use config::Settings;
