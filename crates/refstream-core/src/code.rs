//! Referral codes: 8 characters from Crockford's base-32 alphabet (no I, L, O or U, so nothing
//! reads as another character), drawn from the operating system's CSPRNG: 40 bits, so codes
//! cannot be guessed or enumerated. Uniqueness is enforced by the database; a collision is
//! retried with a fresh code.

use rand::Rng;

/// Crockford's base-32 alphabet: digits and upper-case letters without I, L, O and U.
pub const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in a minted code: 8 × 5 bits = 40 bits of entropy.
pub const CODE_LEN: usize = 8;

/// Mints a fresh code from the thread-local CSPRNG (ChaCha, seeded from the OS).
pub fn mint() -> String {
    mint_with(&mut rand::rng())
}

/// Mints a code with the given generator (tests use a seeded one).
pub fn mint_with<R: Rng + ?Sized>(rng: &mut R) -> String {
    (0..CODE_LEN).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

/// Normalizes a code as a person might type it: trims, upper-cases, drops hyphens and spaces,
/// and reads O as 0 and I or L as 1. Returns `None` for anything that cannot be a code.
pub fn normalize(typed: &str) -> Option<String> {
    let mut out = String::with_capacity(CODE_LEN);
    for c in typed.trim().chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' => continue,
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        };
        if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) {
            return None;
        }
        out.push(c);
        if out.len() > CODE_LEN {
            return None;
        }
    }
    (out.len() == CODE_LEN).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn minted_codes_have_the_shape() {
        for _ in 0..1000 {
            let c = mint();
            assert_eq!(c.len(), CODE_LEN);
            assert!(c.bytes().all(|b| ALPHABET.contains(&b)));
            assert_eq!(normalize(&c).as_deref(), Some(c.as_str()));
        }
    }

    #[test]
    fn entropy_is_at_least_40_bits() {
        let bits = (ALPHABET.len() as u32).ilog2() * CODE_LEN as u32;
        assert!(bits >= 40);
    }

    #[test]
    fn typed_variants_normalize() {
        assert_eq!(normalize(" abcd-efgh ").as_deref(), Some("ABCDEFGH"));
        assert_eq!(normalize("oil0oil0").as_deref(), Some("01100110"));
        assert_eq!(normalize("ABCDEFG"), None);
        assert_eq!(normalize("ABCDEFGHJ"), None);
        assert_eq!(normalize("ABCDEFGU"), None);
        assert_eq!(normalize("ÄBCDEFGH"), None);
    }

    proptest! {
        #[test]
        fn normalize_never_panics_and_is_idempotent(s in ".{0,40}") {
            if let Some(n) = normalize(&s) {
                prop_assert_eq!(normalize(&n), Some(n.clone()));
            }
        }
    }
}
