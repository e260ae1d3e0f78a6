//! Who is calling: every API endpoint except the public ones (health, the OpenAPI document, the
//! dashboard page, which holds no data) takes `Authorization: Bearer <token>`. A missing,
//! unknown, revoked or expired token is 401; a valid token without the role an endpoint needs
//! is 403. Request bodies are JSON within `api.max_body_bytes`, and every rejection is a problem.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::problem::Problem;
use crate::tokens::{self, Principal, Role};
use crate::AppState;

/// The authenticated caller.
pub struct Caller(pub Principal);

impl Caller {
    /// The caller, if its role grants `needed`; else 403 naming the role.
    pub fn require(&self, needed: Role) -> Result<&Principal, Problem> {
        if self.0.role.grants(needed) {
            Ok(&self.0)
        } else {
            Err(Problem::forbidden(format!("this needs a {} token; yours is {}", needed.as_str(), self.0.role.as_str())))
        }
    }

    /// The user a client token acts for; 403 for staff tokens.
    pub fn user(&self) -> Result<&str, Problem> {
        match (&self.0.role, &self.0.user_id) {
            (Role::Client, Some(user)) => Ok(user),
            _ => Err(Problem::forbidden("this needs a client token, which acts for one user")),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| Problem::unauthorized("missing Authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| Problem::unauthorized("the Authorization header must be `Bearer <token>`"))?;
        match tokens::verify(&state.pool, token).await? {
            Some(principal) => Ok(Self(principal)),
            None => Err(Problem::unauthorized("unknown, revoked or expired token")),
        }
    }
}

/// A role an endpoint needs, as a type: [`As`] checks it before the body is read, so a caller
/// without the role gets 403 whatever it sent.
pub trait Required {
    const ROLE: Role;
}

/// A reviewer (or admin).
pub struct ReviewerRole;
impl Required for ReviewerRole {
    const ROLE: Role = Role::Reviewer;
}

/// An issuer of client tokens (or an admin).
pub struct IssuerRole;
impl Required for IssuerRole {
    const ROLE: Role = Role::Issuer;
}

/// The caller, known to hold role `R`.
pub struct As<R>(pub Principal, pub std::marker::PhantomData<R>);

impl<R: Required + Send + Sync> FromRequestParts<AppState> for As<R> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require(R::ROLE)?;
        Ok(Self(caller.0, std::marker::PhantomData))
    }
}

/// A JSON request body whose every rejection (not JSON, too large, wrong fields) is a problem.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(problem_of(&rejection)),
        }
    }
}

/// Bad input is 400 (a body of the wrong shape too: axum says 422), too large 413, not JSON 415.
fn problem_of(rejection: &JsonRejection) -> Problem {
    let status = match rejection.status() {
        axum::http::StatusCode::UNPROCESSABLE_ENTITY => axum::http::StatusCode::BAD_REQUEST,
        other => other,
    };
    Problem::new(status, rejection.body_text())
}

/// Query parameters whose rejections are problems (400 naming the parameter).
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(Problem::new(rejection.status(), rejection.body_text())),
        }
    }
}

/// One path segment, as text (the handler parses it and answers 400 when it is malformed).
pub struct Segment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(Problem::new(rejection.status(), rejection.body_text())),
        }
    }
}
