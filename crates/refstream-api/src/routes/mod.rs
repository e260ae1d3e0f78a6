//! The API's routes, by audience.

pub mod admin;
pub mod client;
pub mod meta;
