//! `refstream topics create`: creates every topic with its configured partition count on a
//! real cluster through the Kafka admin API; existing topics are left as they are.

use std::time::Duration;

use clap::Subcommand;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use refstream_runtime::consumer::client_config;
use refstream_runtime::Settings;

#[derive(Subcommand)]
pub enum Action {
    /// Create every topic refstream uses (dead-letter topics included).
    Create,
    /// List the topics the configuration names.
    List,
}

pub async fn run(action: Action, settings: &Settings) -> anyhow::Result<()> {
    let names = settings.topics.all();
    match action {
        Action::List => {
            for n in names {
                println!("{n}");
            }
        }
        Action::Create => {
            let admin: AdminClient<DefaultClientContext> = client_config(settings).create()?;
            let t = &settings.topics;
            let topics: Vec<NewTopic<'_>> =
                names.iter().map(|n| NewTopic::new(n, t.partitions, TopicReplication::Fixed(t.replication_factor))).collect();
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))).request_timeout(Some(Duration::from_secs(30)));
            let results = tokio::time::timeout(Duration::from_secs(45), admin.create_topics(&topics, &opts))
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "no answer from {} within 45 s to CreateTopics (librdkafka's mock cluster does not implement it: the devbroker creates its topics itself)",
                        settings.kafka.brokers
                    )
                })??;
            for result in results {
                match result {
                    Ok(name) => println!("created {name} ({} partitions)", t.partitions),
                    Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => println!("exists  {name}"),
                    Err((name, e)) => anyhow::bail!("cannot create topic {name}: {e}"),
                }
            }
        }
    }
    Ok(())
}
