//! `devbroker`: a local Kafka-protocol broker for demos and tests, on librdkafka's mock
//! cluster (no JVM, no Docker). It creates refstream's topics with their configured partition
//! counts, writes its bootstrap address to a file (it binds random ports), and runs until
//! SIGTERM or ctrl-c. It is a development tool: nothing is persisted.
//!
//! Fault injection for tests: write commands, one per line, to the control file
//! (`<bootstrap-file>.ctl`); the broker executes and deletes it within 100 ms:
//! `down` and `up` (every broker), `produce-errors N`, `fetch-errors N`, `commit-errors N`
//! (the next N requests of that kind fail with a retriable error).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use refstream_runtime::Settings;

#[derive(Parser)]
#[command(about = "A local Kafka-protocol broker (librdkafka's mock cluster) for refstream demos and tests")]
struct Args {
    /// Where to write the bootstrap address (host:port,...).
    #[arg(long, default_value = ".local/broker.addr")]
    bootstrap_file: PathBuf,
    /// Number of brokers in the mock cluster.
    #[arg(long, default_value_t = 1)]
    brokers: i32,
    /// Extra topics to create, as name:partitions.
    #[arg(long = "topic")]
    extra_topics: Vec<String>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("devbroker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Executes one control command on the mock cluster.
fn inject<C: rdkafka::ClientContext>(cluster: &MockCluster<'_, C>, brokers: i32, command: &str) -> anyhow::Result<()> {
    let mut words = command.split_whitespace();
    let verb = words.next().unwrap_or_default();
    let count: usize = words.next().map(str::parse).transpose()?.unwrap_or(1);
    let errors = |api: RDKafkaApiKey, err: RDKafkaRespErr| cluster.request_errors(api, &vec![err; count]);
    match verb {
        "down" => (1..=brokers).try_for_each(|b| cluster.broker_down(b))?,
        "up" => (1..=brokers).try_for_each(|b| cluster.broker_up(b))?,
        "produce-errors" => errors(RDKafkaApiKey::Produce, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS),
        "fetch-errors" => errors(RDKafkaApiKey::Fetch, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION),
        "commit-errors" => errors(RDKafkaApiKey::OffsetCommit, RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT),
        other => anyhow::bail!("unknown command `{other}`"),
    }
    Ok(())
}

fn run(args: Args) -> anyhow::Result<()> {
    let settings = Settings::load(None)?;
    let cluster = MockCluster::new(args.brokers)?;
    let partitions = settings.topics.partitions;
    for topic in settings.topics.all() {
        cluster.create_topic(&topic, partitions, 1)?;
    }
    for spec in &args.extra_topics {
        let (name, n) = spec.split_once(':').unwrap_or((spec.as_str(), "1"));
        cluster.create_topic(name, n.parse()?, 1)?;
    }
    let bootstrap = cluster.bootstrap_servers();
    if let Some(dir) = args.bootstrap_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = args.bootstrap_file.with_extension("tmp");
    std::fs::write(&tmp, &bootstrap)?;
    std::fs::rename(&tmp, &args.bootstrap_file)?;
    println!("devbroker: {bootstrap} ({} topics, {partitions} partitions each)", settings.topics.all().len());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let control = args.bootstrap_file.with_extension("ctl");
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                    if let Ok(commands) = std::fs::read_to_string(&control) {
                        let _ = std::fs::remove_file(&control);
                        for line in commands.lines().filter(|l| !l.trim().is_empty()) {
                            match inject(&cluster, args.brokers, line.trim()) {
                                Ok(()) => println!("devbroker: fault `{line}` injected"),
                                Err(e) => eprintln!("devbroker: fault `{line}` failed: {e:#}"),
                            }
                        }
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    let _ = std::fs::remove_file(&args.bootstrap_file);
    drop(cluster);
    println!("devbroker: stopped");
    Ok(())
}
