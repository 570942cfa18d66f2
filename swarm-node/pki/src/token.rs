//! Join tokens in Docker's v1 format: `SWMTKN-1-<digest>-<secret>`.

use std::fmt;

use rand::RngCore;

use crate::{PkiError, RootCa};

const PREFIX: &str = "SWMTKN";
const VERSION: &str = "1";
/// SHA-256 in base 36.
const DIGEST_LEN: usize = 50;
/// 16 random bytes in base 36.
const SECRET_LEN: usize = 25;
const SECRET_BYTES: usize = 16;

/// Makes and reads join tokens. Worker and manager tokens differ only in their secret;
/// both pin the root CA through its digest.
#[derive(Debug, Clone, Copy)]
pub struct JoinToken;

/// The two variable parts of a join token.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedToken {
    /// [`RootCa::digest`] of the CA the joining node must accept.
    pub digest: String,
    pub secret: String,
}

impl fmt::Debug for ParsedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret is a credential: keep it out of logs.
        f.debug_struct("ParsedToken")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ParsedToken {
    /// The full token text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}-{VERSION}-{}-{}", self.digest, self.secret)
    }
}

impl JoinToken {
    /// A new token for `ca` with a fresh random secret.
    pub fn generate(ca: &RootCa) -> String {
        let mut secret = [0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        JoinToken::from_parts(&ca.digest(), secret)
    }

    /// The token for a CA digest and a given secret.
    pub fn from_parts(digest: &str, secret: [u8; SECRET_BYTES]) -> String {
        ParsedToken {
            digest: digest.to_owned(),
            secret: swarm_state::ids::base36(&secret, SECRET_LEN),
        }
        .to_string()
    }

    /// Splits a token into its digest and secret, rejecting anything that is not a v1
    /// token. Surrounding whitespace (from copy and paste) is ignored.
    pub fn parse(token: &str) -> Result<ParsedToken, PkiError> {
        let token = token.trim();
        let invalid = |why: String| PkiError::InvalidToken(why);
        if token.is_empty() {
            return Err(invalid(
                "it is empty: pass the token printed by `docker swarm join-token worker` (or manager)"
                    .into(),
            ));
        }
        let parts: Vec<&str> = token.split('-').collect();
        if parts[0] != PREFIX {
            return Err(invalid(format!(
                "it must start with {PREFIX}-{VERSION}- (the form is {PREFIX}-{VERSION}-<digest>-<secret>)"
            )));
        }
        if parts.len() >= 2 && parts[1] == "2" {
            return Err(invalid(
                "version 2 (FIPS) tokens are not supported: use a SWMTKN-1 token".into(),
            ));
        }
        if parts.len() < 2 || parts[1] != VERSION {
            return Err(invalid(format!(
                "unknown version {:?}: expected {PREFIX}-{VERSION}-<digest>-<secret>",
                parts.get(1).copied().unwrap_or("")
            )));
        }
        if parts.len() != 4 {
            return Err(invalid(format!(
                "it has {} dash-separated parts, expected 4 ({PREFIX}-{VERSION}-<digest>-<secret>): was it cut while copying?",
                parts.len()
            )));
        }
        let (digest, secret) = (parts[2], parts[3]);
        check_base36("CA digest", digest, DIGEST_LEN)?;
        check_base36("secret", secret, SECRET_LEN)?;
        Ok(ParsedToken {
            digest: digest.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

fn check_base36(what: &str, value: &str, len: usize) -> Result<(), PkiError> {
    if value.len() != len {
        return Err(PkiError::InvalidToken(format!(
            "the {what} must be {len} characters, got {}: was the token cut while copying?",
            value.len()
        )));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_digit() || c.is_ascii_lowercase()))
    {
        return Err(PkiError::InvalidToken(format!(
            "the {what} holds {bad:?}; only 0-9 and a-z are allowed"
        )));
    }
    Ok(())
}

/// Compares two tokens in time that depends only on their lengths, so that a caller
/// cannot find a valid token byte by byte.
pub fn tokens_match(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        JoinToken::from_parts(&"1".repeat(DIGEST_LEN), [7; SECRET_BYTES])
    }

    #[test]
    fn generated_tokens_parse_back() {
        let ca = RootCa::generate("cluster1").unwrap();
        let token = JoinToken::generate(&ca);
        assert!(token.starts_with("SWMTKN-1-"));
        assert_eq!(token.len(), "SWMTKN-1-".len() + DIGEST_LEN + 1 + SECRET_LEN);
        let parsed = JoinToken::parse(&format!("  {token}\n")).unwrap();
        assert_eq!(parsed.digest, ca.digest());
        assert_eq!(parsed.secret.len(), SECRET_LEN);
        assert_eq!(parsed.to_string(), token);
        assert_ne!(JoinToken::generate(&ca), token, "secrets are random");
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let good = sample();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "empty"),
            ("hello".into(), "must start with SWMTKN-1-"),
            (good.replacen("SWMTKN-1", "SWMTKN-2-0", 1), "version 2"),
            (
                good.replacen("SWMTKN-1", "SWMTKN-7", 1),
                "unknown version \"7\"",
            ),
            (
                good[..good.len() - 3].to_string(),
                "secret must be 25 characters, got 22",
            ),
            (
                good.replacen("-1111", "-111", 1),
                "CA digest must be 50 characters, got 49",
            ),
            (format!("{good}-extra"), "5 dash-separated parts"),
            (good.replacen("11111", "1111X", 1), "holds 'X'"),
        ];
        for (token, expected) in cases {
            let err = JoinToken::parse(&token).unwrap_err().to_string();
            assert!(err.starts_with("invalid join token: "), "{err}");
            assert!(err.contains(expected), "{token:?}: {err}");
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let parsed = JoinToken::parse(&sample()).unwrap();
        assert!(!format!("{parsed:?}").contains(&parsed.secret));
    }

    #[test]
    fn tokens_match_compares_whole_strings() {
        let a = sample();
        assert!(tokens_match(&a, &a.clone()));
        assert!(!tokens_match(&a, &a[..a.len() - 1]));
        let mut b = a.clone().into_bytes();
        *b.last_mut().unwrap() ^= 1;
        assert!(!tokens_match(&a, std::str::from_utf8(&b).unwrap()));
    }
}
