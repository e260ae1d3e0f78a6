//! `links`: the edge service referral links point at (clicks, deferred attribution).

use std::process::ExitCode;

fn main() -> ExitCode {
    refstream_runtime::service::main("links", 9105, links::run)
}
