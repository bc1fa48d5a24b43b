//! The TCP listener's bearer token: every request carries `Authorization: Bearer <token>` or
//! gets 401 (the Unix socket's mode 0600 is its access control instead); the token file's
//! checks; and the scheme with its 401 answers in an OpenAPI document.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::Modify;

use crate::error::ApiError;

/// Shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {path}: mode {mode:o} lets others read the token; chmod 600 it")]
    Readable { path: String, mode: u32 },
    #[error("token file {path}: the token must be at least {MIN_TOKEN_LEN} characters on the first line")]
    Short { path: String },
}

/// The token: the file's first line, at least [`MIN_TOKEN_LEN`] characters, in a file only
/// its owner can read.
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display().to_string();
    let read = |source| TokenError::Read {
        path: shown.clone(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(read)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(TokenError::Readable {
            path: shown,
            mode: mode & 0o777,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenError::Short { path: shown });
    }
    Ok(token)
}

/// Compares without stopping at the first difference (the time does not tell how much of a
/// guess was right).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn check(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if same(g.trim().as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this listener needs an Authorization: Bearer header with the configured token",
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

/// `router` behind the token check.
pub fn require_token(router: Router, token: String) -> Router {
    router.layer(axum::middleware::from_fn_with_state(Arc::new(token), check))
}

/// Declares the bearer scheme (`bearer`) in an OpenAPI document, and the 401 every
/// operation answers on the TCP listener without it (the document must reference the
/// `ErrorBody` schema).
pub struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let unauthorized = ResponseBuilder::new()
            .description("the TCP listener's bearer token is missing or wrong")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.delete,
                &mut item.put,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                op.responses
                    .responses
                    .insert("401".into(), RefOr::T(unauthorized.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }

    #[test]
    fn a_token_file_must_be_private_and_long_enough() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("token");
        std::fs::write(&p, "0123456789abcdef\nignored\n").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            read_token(&p),
            Err(TokenError::Readable { mode: 0o644, .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_token(&p).expect("token"), "0123456789abcdef");
        std::fs::write(&p, "short\n").expect("write");
        assert!(matches!(read_token(&p), Err(TokenError::Short { .. })));
        assert!(matches!(
            read_token(&dir.path().join("absent")),
            Err(TokenError::Read { .. })
        ));
    }
}
