//! Email canonicalization: two addresses that reach the same mailbox get the same canonical
//! form, so one person cannot pose as several referees with `+tags`, Gmail dots or
//! googlemail.com. Anything that is not a plausible address has no canonical form.

/// Domains whose mailboxes ignore dots in the local part; all map to the first one.
const GMAIL_DOMAINS: &[&str] = &["gmail.com", "googlemail.com"];

/// The canonical form of `raw`: trimmed and lower-cased; a `+tag` suffix of the local part
/// removed for every domain; for gmail.com and googlemail.com (written as gmail.com) the dots
/// of the local part removed. `None` when `raw` has not exactly one `@`, when the local part is
/// empty (also once the tag and dots are gone), when the domain has no dot or an empty label,
/// or when the address contains whitespace or control characters.
pub fn canonical_email(raw: &str) -> Option<String> {
    let lowered = raw.trim().to_lowercase();
    if lowered.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let (local, domain) = lowered.split_once('@')?;
    if domain.contains('@') || !is_plausible_domain(domain) {
        return None;
    }
    let untagged = local.split_once('+').map_or(local, |(before_tag, _)| before_tag);
    let (local, domain) =
        if GMAIL_DOMAINS.contains(&domain) { (untagged.replace('.', ""), GMAIL_DOMAINS[0]) } else { (untagged.to_owned(), domain) };
    if local.is_empty() {
        return None;
    }
    Some(format!("{local}@{domain}"))
}

/// The domain of a canonical address (the text after its `@`); empty when there is no `@`.
pub fn email_domain(canonical: &str) -> &str {
    canonical.rsplit_once('@').map_or("", |(_, domain)| domain)
}

/// A domain with at least two labels and no empty one.
fn is_plausible_domain(domain: &str) -> bool {
    domain.contains('.') && domain.split('.').all(|label| !label.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> Option<String> {
        canonical_email(raw)
    }

    #[test]
    fn case_and_surrounding_space_are_ignored() {
        assert_eq!(canon("  Alice@Example.COM ").as_deref(), Some("alice@example.com"));
    }

    #[test]
    fn gmail_dots_are_ignored_elsewhere_kept() {
        assert_eq!(canon("a.l.i.c.e@gmail.com").as_deref(), Some("alice@gmail.com"));
        assert_eq!(canon("a.lice@example.com").as_deref(), Some("a.lice@example.com"));
    }

    #[test]
    fn plus_tags_are_stripped_for_every_domain() {
        assert_eq!(canon("alice+promo@example.com").as_deref(), Some("alice@example.com"));
        assert_eq!(canon("a.lice+one+two@gmail.com").as_deref(), Some("alice@gmail.com"));
    }

    #[test]
    fn googlemail_is_gmail() {
        assert_eq!(canon("A.Lice+x@GoogleMail.com").as_deref(), Some("alice@gmail.com"));
        assert_eq!(canon("alice@googlemail.com"), canon("alice@gmail.com"));
    }

    #[test]
    fn junk_has_no_canonical_form() {
        for junk in [
            "",
            "   ",
            "alice",
            "alice@",
            "@example.com",
            "alice@localhost",
            "alice@@example.com",
            "a@b@example.com",
            "alice@example.",
            "alice@.com",
            "alice@exa..mple.com",
            "al ice@example.com",
            "alice@exam\tple.com",
            "+tag@example.com",
            "...@gmail.com",
        ] {
            assert_eq!(canon(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn domain_of_a_canonical_address() {
        assert_eq!(email_domain("alice@example.com"), "example.com");
        assert_eq!(email_domain("no-at-sign"), "");
    }
}
