//! Workload generators shared by `refstream fraud-eval`, `make bench` and the lag test: seeded
//! plans of users, registrations and deposits ([`adversarial`], [`bench`]), and the code that
//! pushes them through a running fleet and waits on it ([`produce`], [`stream`]). Planning is
//! pure and deterministic per seed; only `produce` and `stream` talk to Kafka and Postgres.

pub mod adversarial;
pub mod bench;
pub mod produce;
pub mod stream;
