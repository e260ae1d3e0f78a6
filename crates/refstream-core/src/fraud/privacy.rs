//! Keyed hashing of personal data: emails and IP addresses are stored only as HMAC-SHA256
//! digests under a secret key, so equal values can still be matched while the stored tables
//! reveal neither the values nor (without the key) a way to test guesses against them.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// HMAC-SHA256 of `value` under `key`, as 64 lower-case hex digits. Deterministic: the same key
/// and value always give the same digest. Hash the canonical form (for example
/// [`canonical_email`](super::canonical_email)) so that variants of one value match.
pub fn keyed_hash(key: &[u8], value: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_and_value_give_the_same_hash() {
        assert_eq!(keyed_hash(b"k1", "alice@example.com"), keyed_hash(b"k1", "alice@example.com"));
    }

    #[test]
    fn different_keys_or_values_give_different_hashes() {
        assert_ne!(keyed_hash(b"k1", "alice@example.com"), keyed_hash(b"k2", "alice@example.com"));
        assert_ne!(keyed_hash(b"k1", "alice@example.com"), keyed_hash(b"k1", "bob@example.com"));
    }

    #[test]
    fn digest_is_64_lower_hex_digits() {
        let h = keyed_hash(b"", "");
        assert_eq!(h.len(), 64);
        assert!(h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn matches_the_rfc_4231_test_vector() {
        // RFC 4231, test case 2.
        assert_eq!(keyed_hash(b"Jefe", "what do ya want for nothing?"), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
