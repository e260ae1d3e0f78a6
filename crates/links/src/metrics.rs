//! The links service's metrics, in the process's default Prometheus registry (rendered by
//! `refstream_runtime::metrics::render`). Every label takes its value from a fixed set, so the
//! series count is bounded whatever clients send; every series exists from start (at zero).

use std::sync::LazyLock;

use prometheus::{register_int_counter_vec, IntCounterVec};
use refstream_core::links::Platform;

/// Clicks recorded, by platform and what the client got.
pub static CLICKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "refstream_links_clicks_total",
        "Clicks recorded, by platform and outcome (redirect, landing, sdk, expired)",
        &["platform", "outcome"]
    )
    .expect("metric")
});

/// Deferred-attribution claims answered, by how they matched.
pub static CLAIMS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "refstream_links_claims_total",
        "Attribution claims answered, by match (exact, probabilistic, none)",
        &["match"]
    )
    .expect("metric")
});

/// Requests refused, by reason.
pub static REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("refstream_links_rejected_total", "Requests refused, by reason", &["reason"]).expect("metric")
});

/// What a recorded click led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClickOutcome {
    /// A 302 to the platform's destination.
    Redirect,
    /// The landing page (no destination for the platform).
    Landing,
    /// Reported by an app (`POST /v1/clicks`).
    Sdk,
    /// The code had expired: recorded, answered 404.
    Expired,
}

impl ClickOutcome {
    const ALL: [Self; 4] = [Self::Redirect, Self::Landing, Self::Sdk, Self::Expired];

    fn label(self) -> &'static str {
        match self {
            Self::Redirect => "redirect",
            Self::Landing => "landing",
            Self::Sdk => "sdk",
            Self::Expired => "expired",
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    UnknownCode,
    RateLimitedIp,
    RateLimitedCode,
    InvalidRequest,
    BodyTooLarge,
    Unavailable,
}

impl Rejection {
    const ALL: [Self; 6] =
        [Self::UnknownCode, Self::RateLimitedIp, Self::RateLimitedCode, Self::InvalidRequest, Self::BodyTooLarge, Self::Unavailable];

    fn label(self) -> &'static str {
        match self {
            Self::UnknownCode => "unknown_code",
            Self::RateLimitedIp => "rate_limited_ip",
            Self::RateLimitedCode => "rate_limited_code",
            Self::InvalidRequest => "invalid_request",
            Self::BodyTooLarge => "body_too_large",
            Self::Unavailable => "unavailable",
        }
    }
}

/// The match labels of [`CLAIMS`].
pub const MATCHES: [&str; 3] = ["exact", "probabilistic", "none"];

pub fn click(platform: Platform, outcome: ClickOutcome) {
    CLICKS.with_label_values(&[platform.as_str(), outcome.label()]).inc();
}

/// `matched` is one of [`MATCHES`].
pub fn claim(matched: &'static str) {
    CLAIMS.with_label_values(&[matched]).inc();
}

pub fn rejected(why: Rejection) {
    REJECTED.with_label_values(&[why.label()]).inc();
}

/// Registers every series at zero, so dashboards and alerts see them before the first event.
pub fn init() {
    for p in [Platform::Ios, Platform::Android, Platform::Desktop, Platform::Web] {
        for o in ClickOutcome::ALL {
            CLICKS.with_label_values(&[p.as_str(), o.label()]);
        }
    }
    for m in MATCHES {
        CLAIMS.with_label_values(&[m]);
    }
    for r in Rejection::ALL {
        REJECTED.with_label_values(&[r.label()]);
    }
}
