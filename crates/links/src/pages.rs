//! The HTML pages a person can see: the landing page of a valid link without a destination
//! for its platform, and the pages of invalid, expired, rate-limited and unavailable links.
//! Self-contained (inline style, no scripts, no external resources) and every value put into
//! the markup goes through [`escape`].

use refstream_runtime::config::CampaignSettings;

/// `s` with the five HTML-significant characters escaped (safe in text and quoted attributes).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The `Content-Security-Policy` of every page: nothing loads, only the inline style applies.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = "body{font-family:system-ui,-apple-system,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;\
color:#1b1b1f;line-height:1.5}h1{font-size:1.5rem}.code{font-family:ui-monospace,monospace;font-weight:bold;letter-spacing:.1em}\
a.button{display:inline-block;margin-top:1rem;padding:.75rem 1.5rem;background:#1b5fd6;color:#fff;border-radius:.5rem;\
text-decoration:none;font-weight:600}";

/// A complete page; `title` is escaped here, `body` must already be markup.
fn page(title: &str, body: &str) -> String {
    let title = escape(title);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{title}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
}

/// For a code that is malformed or unknown.
pub fn invalid_link() -> String {
    page(
        "This invitation link is not valid",
        "<h1>This invitation link is not valid</h1>\n<p>Check that you copied the whole link, or ask your friend to send it again.</p>",
    )
}

/// For a code whose validity ended.
pub fn expired_link() -> String {
    page("This invitation has expired", "<h1>This invitation has expired</h1>\n<p>Ask your friend for a new invitation.</p>")
}

/// For a client over its rate limit.
pub fn too_many_requests(retry_after_secs: u64) -> String {
    page("Too many requests", &format!("<h1>Too many requests</h1>\n<p>Please try again in {retry_after_secs} seconds.</p>"))
}

/// When the click cannot be recorded right now.
pub fn unavailable() -> String {
    page("Temporarily unavailable", "<h1>Temporarily unavailable</h1>\n<p>Please try again in a moment.</p>")
}

/// What the landing page shows.
#[derive(Debug, Clone)]
pub struct Landing<'a> {
    pub code: &'a str,
    pub campaign: &'a CampaignSettings,
    /// Where "Continue" goes (click id included); `None`: the person enters the code at signup.
    pub continue_to: Option<&'a str>,
}

/// The landing page: who invited you, what you both get, and how to go on.
pub fn landing(l: &Landing<'_>) -> String {
    let c = l.campaign;
    let code = escape(l.code);
    let currency = escape(c.currency.trim());
    let amount = |raw: &str| format!("{} {currency}", escape(raw.trim()));
    let mut body = format!(
        "<h1>You have been invited</h1>\n<p>A friend invited you with code <span class=\"code\">{code}</span>.</p>\n\
         <p>Deposit at least {min} within {days} days of signing up",
        min = amount(&c.min_deposit),
        days = c.window_days,
    );
    if c.referee_reward.trim().is_empty() {
        body.push_str(&format!(" and your friend gets {}.</p>", amount(&c.referrer_reward)));
    } else {
        body.push_str(&format!(": you get {} and your friend gets {}.</p>", amount(&c.referee_reward), amount(&c.referrer_reward)));
    }
    match l.continue_to {
        Some(url) => body.push_str(&format!("\n<p><a class=\"button\" href=\"{}\">Continue</a></p>", escape(url))),
        None => body.push_str(&format!("\n<p>Enter the code <span class=\"code\">{code}</span> when you sign up.</p>")),
    }
    page("You have been invited", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default campaign of the embedded settings, with `referee` as the referee's reward.
    fn campaign(referee: &str) -> CampaignSettings {
        let mut c = refstream_runtime::Settings::load_dev(vec![]).expect("the embedded defaults load").campaign;
        c.referee_reward = referee.into();
        c
    }

    #[test]
    fn escaping_covers_text_and_attributes() {
        assert_eq!(escape(r#"<a href="x" onclick='y'>&</a>"#), "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;");
        assert_eq!(escape("ABCD1234"), "ABCD1234");
    }

    #[test]
    fn the_landing_page_says_who_invited_and_what_each_gets() {
        let c = campaign("");
        let html = landing(&Landing { code: "ABCD1234", campaign: &c, continue_to: Some("https://x.test/s?a=1&click_id=c_1") });
        assert!(html.contains("A friend invited you with code <span class=\"code\">ABCD1234</span>"), "{html}");
        assert!(html.contains("Deposit at least 20.00 USD within 30 days of signing up and your friend gets 10.00 USD."), "{html}");
        assert!(html.contains("href=\"https://x.test/s?a=1&amp;click_id=c_1\">Continue</a>"), "{html}");
        assert!(!html.contains("<script") && !html.contains("src="), "self-contained: {html}");

        let c = campaign("5.00");
        let html = landing(&Landing { code: "ABCD1234", campaign: &c, continue_to: None });
        assert!(html.contains("you get 5.00 USD and your friend gets 10.00 USD."), "{html}");
        assert!(html.contains("Enter the code <span class=\"code\">ABCD1234</span> when you sign up."), "{html}");
        assert!(!html.contains("Continue"), "{html}");
    }

    #[test]
    fn values_are_escaped_in_the_landing_page() {
        let mut c = campaign("");
        c.currency = "<b>".into();
        let html = landing(&Landing { code: "<x>", campaign: &c, continue_to: Some("https://x.test/\"><script>") });
        assert!(!html.contains("<x>") && !html.contains("<b>") && !html.contains("<script>"), "{html}");
    }

    #[test]
    fn error_pages_name_the_problem() {
        assert!(invalid_link().contains("This invitation link is not valid"));
        assert!(expired_link().contains("This invitation has expired"));
        assert!(too_many_requests(42).contains("42 seconds"));
    }
}
