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
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            for result in admin.create_topics(&topics, &opts).await? {
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
