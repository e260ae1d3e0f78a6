//! The API's routes, by audience.

pub mod admin;
pub mod campaigns;
pub mod client;
pub mod meta;
