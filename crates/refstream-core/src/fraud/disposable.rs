//! Disposable-email domains. The built-in list is compiled into the binary; an operator can
//! replace it without a release by pointing `fraud.disposable_domains_file` at a file of the same
//! format, which [`DisposableDomains::parse`] reads. A listed domain also covers its
//! subdomains. A malformed entry is an error naming its line, never silently skipped.

use std::collections::BTreeSet;

/// The list shipped with refstream, `data/disposable_domains.txt`.
const BUILTIN_LIST: &str = include_str!("../../data/disposable_domains.txt");

/// A set of lower-case disposable-email domains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisposableDomains {
    domains: BTreeSet<String>,
}

/// A line of a domain list that is not a domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("disposable-domain list, line {line}: `{entry}` {reason}")]
pub struct DomainListError {
    /// 1-based line number in the text that was parsed.
    pub line: usize,
    /// The entry as written (comment and surrounding space removed).
    pub entry: String,
    pub reason: &'static str,
}

impl DisposableDomains {
    /// The list shipped with refstream.
    pub fn builtin() -> Self {
        Self::parse(BUILTIN_LIST).expect("the built-in disposable-domain list is well-formed")
    }

    /// Reads a list: one domain per line; `#` starts a comment that runs to the end of the line;
    /// blank lines are ignored; domains are lower-cased and a trailing dot is dropped. An
    /// entry that is not a domain (space inside, `@`, no dot, empty label) is an error.
    pub fn parse(text: &str) -> Result<Self, DomainListError> {
        let mut domains = BTreeSet::new();
        for (index, raw_line) in text.lines().enumerate() {
            let entry = raw_line.split_once('#').map_or(raw_line, |(before, _)| before).trim();
            if entry.is_empty() {
                continue;
            }
            let error = |reason| DomainListError { line: index + 1, entry: entry.to_owned(), reason };
            let domain = entry.strip_suffix('.').unwrap_or(entry).to_lowercase();
            if domain.chars().any(|c| c.is_whitespace() || c.is_control() || c == '@' || c == '/') {
                return Err(error("is not a domain (whitespace, `@` or `/` inside)"));
            }
            if !domain.contains('.') || domain.split('.').any(str::is_empty) {
                return Err(error("is not a domain (needs at least two non-empty labels)"));
            }
            domains.insert(domain);
        }
        Ok(Self { domains })
    }

    /// True when `domain` (any case, a trailing dot allowed) or one of its parent domains is
    /// listed: `x.mailinator.com` is covered by `mailinator.com`.
    pub fn contains(&self, domain: &str) -> bool {
        let domain = domain.trim();
        let domain = domain.strip_suffix('.').unwrap_or(domain).to_lowercase();
        let mut candidate = domain.as_str();
        loop {
            if self.domains.contains(candidate) {
                return true;
            }
            match candidate.split_once('.') {
                Some((_, parent)) if !parent.is_empty() => candidate = parent,
                _ => return false,
            }
        }
    }

    /// How many domains are listed.
    pub fn len(&self) -> usize {
        self.domains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// The listed domains, in lexical order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.domains.iter().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_list_names_its_source_and_covers_the_well_known_providers() {
        let source_comment = BUILTIN_LIST.lines().take_while(|l| l.starts_with('#')).collect::<Vec<_>>().join("\n");
        assert!(source_comment.contains("disposable-email-domains"), "{source_comment}");
        assert!(source_comment.contains("fraud.disposable_domains_file"), "{source_comment}");

        let builtin = DisposableDomains::builtin();
        assert!(builtin.len() >= 150, "only {} domains", builtin.len());
        for known in [
            "mailinator.com",
            "guerrillamail.com",
            "10minutemail.com",
            "temp-mail.org",
            "yopmail.com",
            "trashmail.com",
            "sharklasers.com",
            "getnada.com",
            "dispostable.com",
            "maildrop.cc",
        ] {
            assert!(builtin.contains(known), "{known}");
        }
        for ordinary in ["gmail.com", "outlook.com", "yahoo.com", "example.com", "proton.me"] {
            assert!(!builtin.contains(ordinary), "{ordinary}");
        }
    }

    #[test]
    fn subdomains_and_case_match() {
        let list = DisposableDomains::builtin();
        assert!(list.contains("x.mailinator.com"));
        assert!(list.contains("a.b.Mailinator.COM"));
        assert!(list.contains("mailinator.com."));
        assert!(!list.contains("notmailinator.org"));
        assert!(!list.contains("mailinator.com.example.org"));
        assert!(!list.contains("com"));
        assert!(!list.contains(""));
    }

    #[test]
    fn parse_skips_comments_and_blanks_and_lower_cases() {
        let list = DisposableDomains::parse("# header\n\n  Throwaway.EXAMPLE  # trailing comment\nother.test.\n").unwrap();
        assert_eq!(list.iter().collect::<Vec<_>>(), ["other.test", "throwaway.example"]);
        assert!(list.contains("throwaway.example"));
        assert!(!list.contains("mailinator.com"), "a parsed list replaces the built-in one");
    }

    #[test]
    fn parse_rejects_malformed_entries_with_their_line() {
        let err = DisposableDomains::parse("ok.example\n\nuser@bad.example\n").unwrap_err();
        assert_eq!((err.line, err.entry.as_str()), (3, "user@bad.example"));
        assert_eq!(DisposableDomains::parse("localhost").unwrap_err().line, 1);
        assert!(DisposableDomains::parse("two words.example").is_err());
        assert!(DisposableDomains::parse("a..example").is_err());
    }

    #[test]
    fn an_empty_list_is_allowed_and_matches_nothing() {
        let list = DisposableDomains::parse("# nothing listed\n").unwrap();
        assert!(list.is_empty());
        assert!(!list.contains("mailinator.com"));
    }
}
