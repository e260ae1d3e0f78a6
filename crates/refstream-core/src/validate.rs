//! Field validation shared by every decoder: a value that fails here never reaches a handler, it
//! becomes a dead letter whose reason names the field.

use std::fmt;

/// Longest free-text field accepted anywhere (64 KiB); longer values are rejected.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// A field that failed validation, with a human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for FieldError {}

/// Checks a required text field: not blank, at most `max_chars` characters, no control
/// characters.
pub fn check_text(field: &'static str, value: &str, max_chars: usize) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "is missing or empty"));
    }
    check_optional_text(field, value, max_chars)
}

/// Checks an optional text field's content when present (empty is allowed).
pub fn check_optional_text(field: &'static str, value: &str, max_chars: usize) -> Result<(), FieldError> {
    if value.len() > MAX_TEXT_BYTES {
        return Err(FieldError::new(field, format!("is {} bytes, over the 64 KiB limit", value.len())));
    }
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(FieldError::new(field, format!("is {chars} characters, over the limit of {max_chars}")));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(field, "contains control characters"));
    }
    Ok(())
}

/// Turns an optional field into `None` when it is absent or blank, validating it otherwise.
pub fn optional_text(field: &'static str, value: Option<String>, max_chars: usize) -> Result<Option<String>, FieldError> {
    match value {
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => check_optional_text(field, &v, max_chars).map(|()| Some(v)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_limits() {
        assert!(check_text("f", "ok", 10).is_ok());
        assert!(check_text("f", "", 10).is_err());
        assert!(check_text("f", "01234567890", 10).is_err());
        assert!(check_text("f", "tab\there", 100).is_err());
        let huge = "a".repeat(MAX_TEXT_BYTES + 1);
        let err = check_text("f", &huge, usize::MAX).unwrap_err();
        assert!(err.reason.contains("64 KiB"), "{err}");
        assert_eq!(optional_text("f", Some("  ".into()), 5).unwrap(), None);
    }
}
