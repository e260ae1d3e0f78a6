//! `devbroker`: a local Kafka-protocol broker for demos and tests, on librdkafka's mock
//! cluster (no JVM, no Docker). It creates refstream's topics with their configured partition
//! counts, writes its bootstrap address to a file (it binds random ports), and runs until
//! SIGTERM or ctrl-c. It is a development tool: nothing is persisted.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rdkafka::mocking::MockCluster;
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
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    })?;
    let _ = std::fs::remove_file(&args.bootstrap_file);
    drop(cluster);
    println!("devbroker: stopped");
    Ok(())
}
