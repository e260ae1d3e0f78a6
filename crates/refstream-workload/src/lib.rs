//! Workload generators shared by `refstream fraud-eval` and `make bench`: seeded plans of
//! users, registrations and deposits, and the producer that pushes them through a fleet. Pure
//! planning is deterministic per seed; only [`produce`] talks to Kafka and Postgres.

pub mod adversarial;
pub mod bench;
pub mod produce;
