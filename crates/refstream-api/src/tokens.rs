//! API bearer tokens: created with a role (and, for a client token, the one user it acts for),
//! shown once, stored only as their SHA-256, revocable, optionally expiring. A token is
//! `rst_` and 64 hex digits (256 random bits), so a hash lookup is as good as a password check
//! and needs no slow hash.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

const PREFIX: &str = "rst_";

/// What a token may do. Staff roles are ordered: a reviewer can do what a viewer can, an admin
/// what a reviewer can. An issuer (the operator's backend) only mints client tokens, which an
/// admin may also do. A client token is outside that order: it reads its own user's data only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Reviewer,
    Admin,
    Issuer,
    Client,
}

impl Role {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "viewer" => Some(Self::Viewer),
            "reviewer" => Some(Self::Reviewer),
            "admin" => Some(Self::Admin),
            "issuer" => Some(Self::Issuer),
            "client" => Some(Self::Client),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Reviewer => "reviewer",
            Self::Admin => "admin",
            Self::Issuer => "issuer",
            Self::Client => "client",
        }
    }

    /// True when this role may do what `needed` may.
    pub fn grants(self, needed: Role) -> bool {
        if needed == Role::Issuer {
            return matches!(self, Role::Issuer | Role::Admin);
        }
        let rank = |r: Role| match r {
            Role::Viewer => Some(1),
            Role::Reviewer => Some(2),
            Role::Admin => Some(3),
            Role::Issuer | Role::Client => None,
        };
        match (rank(self), rank(needed)) {
            (Some(have), Some(need)) => have >= need,
            _ => self == needed,
        }
    }
}

/// The caller a valid token identifies.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: Uuid,
    pub name: String,
    pub role: Role,
    /// The user a client token acts for.
    pub user_id: Option<String>,
}

/// A token as listed (never the secret).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct TokenInfo {
    pub token_id: Uuid,
    pub name: String,
    pub role: String,
    pub user_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_by: String,
}

/// A freshly created token: the secret is shown this once.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Created {
    pub token_id: Uuid,
    pub token: String,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Creates a token. A `client` token needs `user_id` (a registered user); staff tokens must not
/// have one, and their names are unique among unrevoked staff tokens.
pub async fn create(
    conn: &mut PgConnection,
    name: &str,
    role: Role,
    user_id: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
    created_by: &str,
) -> Result<Created, TokenError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(TokenError::Invalid("name: 1 to 100 printable characters".into()));
    }
    match (role, user_id) {
        (Role::Client, None) => return Err(TokenError::Invalid("a client token needs the user it acts for (--user)".into())),
        (Role::Client, Some(u)) => {
            let known: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE user_id = $1)").bind(u).fetch_one(&mut *conn).await?;
            if !known {
                return Err(TokenError::Invalid(format!("no registered user {u}")));
            }
        }
        (_, Some(_)) => return Err(TokenError::Invalid("only a client token acts for a user".into())),
        (_, None) => {}
    }
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!("{PREFIX}{}", hex::encode(secret));
    let token_id = Uuid::new_v4();
    let inserted = sqlx::query(
        "INSERT INTO api_tokens (token_id, name, role, user_id, token_hash, expires_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(token_id)
    .bind(name)
    .bind(role.as_str())
    .bind(user_id)
    .bind(digest(&token))
    .bind(expires_at)
    .bind(created_by)
    .execute(&mut *conn)
    .await;
    match inserted {
        Ok(_) => Ok(Created { token_id, token, expires_at }),
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("api_tokens_staff_name") => {
            Err(TokenError::Invalid(format!("a token named {name} exists: revoke it first or choose another name")))
        }
        Err(e) => Err(e.into()),
    }
}

/// The principal of a presented token, if it is known, unrevoked and unexpired.
pub async fn verify(pool: &PgPool, token: &str) -> sqlx::Result<Option<Principal>> {
    if !token.starts_with(PREFIX) || token.len() != PREFIX.len() + 64 {
        return Ok(None);
    }
    let row: Option<(Uuid, String, String, Option<String>)> = sqlx::query_as(
        "SELECT token_id, name, role, user_id FROM api_tokens \
         WHERE token_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(digest(token))
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(token_id, name, role, user_id)| Role::parse(&role).map(|role| Principal { token_id, name, role, user_id })))
}

/// Revokes the token with this id, or the unrevoked staff token with this name, recording who
/// revoked it. Returns how many were revoked.
pub async fn revoke(pool: &PgPool, id_or_name: &str, revoked_by: &str) -> sqlx::Result<u64> {
    let id = Uuid::parse_str(id_or_name.trim()).ok();
    let done = sqlx::query(
        "UPDATE api_tokens SET revoked_at = now(), revoked_by = $3 \
         WHERE revoked_at IS NULL AND (token_id = $1 OR (role <> 'client' AND name = $2))",
    )
    .bind(id)
    .bind(id_or_name.trim())
    .bind(revoked_by)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Every token, newest first (client tokens included).
pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<TokenInfo>> {
    sqlx::query_as(
        "SELECT token_id, name, role, user_id, created_at, expires_at, revoked_at, created_by FROM api_tokens ORDER BY created_at DESC",
    )
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::Role;

    #[test]
    fn staff_roles_are_ordered_and_clients_stand_apart() {
        assert!(Role::Admin.grants(Role::Reviewer));
        assert!(Role::Reviewer.grants(Role::Viewer));
        assert!(!Role::Viewer.grants(Role::Reviewer));
        assert!(!Role::Admin.grants(Role::Client));
        assert!(!Role::Client.grants(Role::Viewer));
        assert!(Role::Client.grants(Role::Client));
        assert!(Role::Issuer.grants(Role::Issuer) && Role::Admin.grants(Role::Issuer));
        assert!(!Role::Issuer.grants(Role::Viewer) && !Role::Reviewer.grants(Role::Issuer));
        for r in ["viewer", "reviewer", "admin", "issuer", "client"] {
            assert_eq!(Role::parse(r).map(Role::as_str), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
