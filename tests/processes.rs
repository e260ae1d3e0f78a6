//! Process-level behaviour of the binaries: a bad setting stops a worker at start with a
//! message naming it; SIGTERM drains, commits and exits within the deadline.

use std::time::{Duration, Instant};

use refstream_e2e::{free_port, healthy, spawn, worker_env, Broker, TestDb, WORKERS};

#[test]
fn a_bad_setting_stops_every_binary_naming_the_setting() {
    for w in WORKERS {
        let env = vec![("REFSTREAM__METRICS__LISTEN".to_owned(), "not-an-address".to_owned())];
        let mut p = spawn(w, &[], &env);
        let status = p.child.wait().unwrap();
        assert_eq!(status.code(), Some(2), "{w}: {}", p.log_text());
        assert!(p.log_text().contains("metrics.listen"), "{w}: {}", p.log_text());
        assert!(p.log_text().contains("REFSTREAM__METRICS__LISTEN"), "{w}: {}", p.log_text());
    }
    for (w, hours) in WORKERS.iter().zip(["0", "-1", "0", "-336"]) {
        let env = vec![("REFSTREAM__KAFKA__DEDUPE_RETENTION_HOURS".to_owned(), hours.to_owned())];
        let mut p = spawn(w, &[], &env);
        assert_eq!(p.child.wait().unwrap().code(), Some(2), "{w} with {hours}: {}", p.log_text());
        assert!(p.log_text().contains("kafka.dedupe_retention_hours"), "{w}: {}", p.log_text());
    }
    let env = vec![("REFSTREAM__CAMPAIGN__MIN_DEPOSIT".to_owned(), "twenty".to_owned())];
    let mut p = spawn("reward-engine", &[], &env);
    assert_eq!(p.child.wait().unwrap().code(), Some(2));
    assert!(p.log_text().contains("campaign.min_deposit"), "{}", p.log_text());
}

/// Outside development mode no binary runs with the public development hash key of the
/// defaults, nor with an empty one: it exits 2 naming `fraud.hash_key`, before touching
/// Postgres or Kafka.
#[test]
fn outside_dev_mode_the_development_hash_key_and_an_empty_one_are_refused() {
    let binaries = WORKERS.iter().copied().chain(["analytics", "links", "refstream"]);
    for w in binaries {
        for key in [None, Some("")] {
            let mut env = vec![("REFSTREAM__DEV_MODE".to_owned(), "false".to_owned())];
            if let Some(k) = key {
                env.push(("REFSTREAM__FRAUD__HASH_KEY".to_owned(), k.to_owned()));
            }
            let args: &[&str] = if w == "refstream" { &["summary"] } else { &[] };
            let mut p = spawn(w, args, &env);
            let status = p.child.wait().unwrap();
            assert_eq!(status.code(), Some(2), "{w} with key {key:?}: {}", p.log_text());
            assert!(p.log_text().contains("fraud.hash_key"), "{w}: {}", p.log_text());
            assert!(p.log_text().contains("REFSTREAM__FRAUD__HASH_KEY"), "{w}: {}", p.log_text());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_and_exits_within_the_deadline_and_connections_name_their_worker() {
    let db = TestDb::new().await;
    let broker = Broker::start();
    for w in WORKERS {
        let port = free_port();
        let mut p = spawn(w, &[], &worker_env(&db.url, &broker.bootstrap, port));
        let started = Instant::now();
        while !healthy(port) {
            assert!(started.elapsed() < Duration::from_secs(60), "{w} never became ready: {}", p.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
        // Let the consumer join its group, so shutdown has partitions to revoke.
        std::thread::sleep(Duration::from_secs(2));
        // Its Postgres connections say whose they are (pg_stat_activity, Postgres' logs).
        let named: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1")
                .bind(w)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert!(named > 0, "{w} has no Postgres connection named after it: {}", p.log_text());
        let began = Instant::now();
        let status =
            p.terminate(Duration::from_secs(15)).unwrap_or_else(|| panic!("{w} did not exit within 15 s of SIGTERM: {}", p.log_text()));
        assert!(status.success(), "{w} exited with {status}: {}", p.log_text());
        assert!(p.log_text().contains("exited cleanly"), "{w}: {}", p.log_text());
        eprintln!("{w}: exited {:?} after SIGTERM", began.elapsed());
    }
}
