//! The rules of the links service that need no I/O: click ids, the platform a User-Agent
//! names, and how sure a signal match is that a freshly installed app belongs to an earlier
//! click (deferred attribution). Confidence is a whole percentage, never a float.

use chrono::{DateTime, Duration, Utc};
use rand::Rng;

/// Where a click or an app came from, as far as its User-Agent tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    Ios,
    Android,
    /// A desktop or laptop browser (Windows, macOS, Linux, ChromeOS).
    Desktop,
    /// Anything else: another mobile browser, a bot, no User-Agent at all.
    Web,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ios => "ios",
            Self::Android => "android",
            Self::Desktop => "desktop",
            Self::Web => "web",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ios" | "iphone" | "ipad" => Some(Self::Ios),
            "android" => Some(Self::Android),
            "desktop" => Some(Self::Desktop),
            "web" => Some(Self::Web),
            _ => None,
        }
    }

    /// Guesses the platform from a User-Agent header.
    pub fn from_user_agent(ua: &str) -> Self {
        let ua = ua.to_ascii_lowercase();
        if ["iphone", "ipad", "ipod"].iter().any(|k| ua.contains(k)) {
            Self::Ios
        } else if ua.contains("android") {
            Self::Android
        } else if ua.contains("mobile") {
            Self::Web
        } else if ["windows nt", "macintosh", "mac os x", "x11", "linux", "cros"].iter().any(|k| ua.contains(k)) {
            Self::Desktop
        } else {
            Self::Web
        }
    }
}

/// Characters of a click id after its `c_` prefix: 26 × 5 bits = 130 bits from the CSPRNG,
/// so click ids cannot be guessed to claim someone else's click.
pub const CLICK_ID_CHARS: usize = 26;

/// A fresh click id, e.g. `c_8ZK3…`.
pub fn mint_click_id() -> String {
    let mut rng = rand::rng();
    let body: String = (0..CLICK_ID_CHARS).map(|_| char::from(crate::code::ALPHABET[rng.random_range(0..32)])).collect();
    format!("c_{body}")
}

/// Whether `s` has the shape of a click id refstream issues (cheap check before any lookup).
pub fn is_click_id(s: &str) -> bool {
    s.len() == CLICK_ID_CHARS + 2 && s.starts_with("c_") && s.bytes().skip(2).all(|b| crate::code::ALPHABET.contains(&b))
}

/// Whether a device id is a placeholder many devices report (an advertising id zeroed by the
/// user's privacy settings, "unknown", "null"...): such an id says nothing about who clicked,
/// so it never links a click to a registration.
pub fn is_placeholder_device(id: &str) -> bool {
    let id = id.trim();
    id.is_empty()
        || id.chars().all(|c| c == '0' || c == '-')
        || ["unknown", "null", "undefined", "none", "n/a", "default"].iter().any(|p| id.eq_ignore_ascii_case(p))
}

/// A click that shares the claiming app's network, as the claim endpoint loads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub click_id: String,
    pub code: String,
    pub clicked_at: DateTime<Utc>,
    /// The click's keyed User-Agent hash equals the app's.
    pub same_user_agent: bool,
    pub platform: Option<Platform>,
}

/// A probabilistic match: the click and how sure the match is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalMatch {
    pub click_id: String,
    pub confidence_pct: u8,
    /// Clicks from the same network inside the window (more means more doubt).
    pub candidates: usize,
}

/// Matches an app's first open (`claimed_at`, `platform`) against the clicks made from its IP
/// address within `window` before it. Same IP and User-Agent: 90; same IP and platform: 60;
/// anything else does not match. A click older than half the window loses 10; when clicks on
/// different codes score alike the confidence is shared between them. Below `min_pct`: no match.
pub fn match_signals(
    candidates: &[Candidate],
    platform: Option<Platform>,
    claimed_at: DateTime<Utc>,
    window: Duration,
    min_pct: u8,
) -> Option<SignalMatch> {
    let score = |c: &Candidate| -> u32 {
        if c.clicked_at > claimed_at + Duration::seconds(5) || c.clicked_at < claimed_at - window {
            return 0;
        }
        let base: u32 = if c.same_user_agent {
            90
        } else if platform.is_some() && c.platform == platform {
            60
        } else {
            return 0;
        };
        if claimed_at - c.clicked_at > window / 2 {
            base - 10
        } else {
            base
        }
    };
    let scored: Vec<(u32, &Candidate)> = candidates.iter().map(|c| (score(c), c)).filter(|(s, _)| *s > 0).collect();
    let best = scored.iter().map(|(s, _)| *s).max()?;
    let mut top: Vec<&Candidate> = scored.iter().filter(|(s, _)| *s == best).map(|(_, c)| *c).collect();
    top.sort_by(|a, b| (b.clicked_at, &b.click_id).cmp(&(a.clicked_at, &a.click_id)));
    let mut codes: Vec<&str> = top.iter().map(|c| c.code.as_str()).collect();
    codes.sort_unstable();
    codes.dedup();
    let shared = u32::try_from(codes.len()).unwrap_or(u32::MAX).max(1);
    let confidence = u8::try_from(best / shared).unwrap_or(0);
    (confidence >= min_pct).then(|| SignalMatch { click_id: top[0].click_id.clone(), confidence_pct: confidence, candidates: scored.len() })
}

/// A stored confidence (`numeric(3,2)`, 0.00–1.00) as a whole percentage, truncated.
pub fn confidence_pct(fraction: rust_decimal::Decimal) -> u8 {
    use rust_decimal::prelude::ToPrimitive;
    (fraction * rust_decimal::Decimal::ONE_HUNDRED).trunc().to_u8().unwrap_or(0)
}

/// `pct` as a decimal fraction for JSON (`90` → `"0.90"`), without floating point.
pub fn confidence_text(pct: u8) -> String {
    format!("{}.{:02}", pct / 100, pct % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_are_guessed_from_common_user_agents() {
        let cases = [
            ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148", Platform::Ios),
            ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120 Mobile Safari/537.36", Platform::Android),
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120 Safari/537.36", Platform::Desktop),
            ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Version/17.0 Safari/605.1.15", Platform::Desktop),
            ("Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/148.0 Safari/537.36", Platform::Desktop),
            ("Mozilla/5.0 (Mobile; rv:48.0) Gecko/48.0 Firefox/48.0 KAIOS/2.5", Platform::Web),
            ("curl/8.0", Platform::Web),
            ("", Platform::Web),
        ];
        for (ua, want) in cases {
            assert_eq!(Platform::from_user_agent(ua), want, "{ua}");
        }
    }

    #[test]
    fn placeholder_device_ids_are_recognised() {
        for p in ["00000000-0000-0000-0000-000000000000", "0", "unknown", "NULL", " undefined ", ""] {
            assert!(is_placeholder_device(p), "{p}");
        }
        assert!(!is_placeholder_device("6D92078A-8246-4BA4-AE5B-76104861E7DC"));
        assert!(!is_placeholder_device("device-ana"));
    }

    #[test]
    fn click_ids_are_unique_and_recognisable() {
        let a = mint_click_id();
        assert!(is_click_id(&a), "{a}");
        assert_ne!(a, mint_click_id());
        assert!(!is_click_id("c_short") && !is_click_id("clk-1") && !is_click_id(&a.to_lowercase()));
    }

    fn t(s: i64) -> DateTime<Utc> {
        "2026-01-10T12:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::seconds(s)
    }

    fn cand(id: &str, code: &str, at: i64, same_ua: bool, platform: Platform) -> Candidate {
        Candidate { click_id: id.into(), code: code.into(), clicked_at: t(at), same_user_agent: same_ua, platform: Some(platform) }
    }

    #[test]
    fn the_same_network_and_user_agent_match_with_high_confidence() {
        let m = match_signals(&[cand("c1", "A", -30, true, Platform::Ios)], Some(Platform::Ios), t(0), Duration::hours(1), 50).unwrap();
        assert_eq!((m.click_id.as_str(), m.confidence_pct), ("c1", 90));
        let m = match_signals(&[cand("c1", "A", -30, false, Platform::Ios)], Some(Platform::Ios), t(0), Duration::hours(1), 50).unwrap();
        assert_eq!(m.confidence_pct, 60, "the browser's UA differs from the app's, the platform agrees");
    }

    #[test]
    fn doubt_lowers_confidence_below_the_threshold() {
        let w = Duration::hours(1);
        assert_eq!(match_signals(&[cand("c1", "A", -30, false, Platform::Android)], Some(Platform::Ios), t(0), w, 50), None);
        assert_eq!(match_signals(&[cand("c1", "A", -3700, true, Platform::Ios)], Some(Platform::Ios), t(0), w, 50), None);
        assert_eq!(
            match_signals(&[cand("c1", "A", -2000, true, Platform::Ios)], Some(Platform::Ios), t(0), w, 50).unwrap().confidence_pct,
            80
        );
        let two = [cand("c1", "A", -30, true, Platform::Ios), cand("c2", "B", -20, true, Platform::Ios)];
        assert_eq!(match_signals(&two, Some(Platform::Ios), t(0), w, 50), None, "two referrers alike: 45 each");
        let m = match_signals(&two, Some(Platform::Ios), t(0), w, 40).unwrap();
        assert_eq!((m.click_id.as_str(), m.confidence_pct, m.candidates), ("c2", 45, 2));
        let same_code = [cand("c1", "A", -30, true, Platform::Ios), cand("c2", "A", -20, true, Platform::Ios)];
        assert_eq!(match_signals(&same_code, Some(Platform::Ios), t(0), w, 50).unwrap().confidence_pct, 90);
    }

    #[test]
    fn confidence_reads_as_a_fraction() {
        assert_eq!(confidence_text(90), "0.90");
        assert_eq!(confidence_text(5), "0.05");
        assert_eq!(confidence_text(100), "1.00");
        assert_eq!(confidence_pct(rust_decimal::Decimal::new(60, 2)), 60);
        assert_eq!(confidence_pct(rust_decimal::Decimal::ONE), 100);
    }
}
