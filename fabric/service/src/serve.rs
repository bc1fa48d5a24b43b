//! Serving a router: on a Unix socket made private before it appears at its path, on TCP
//! behind the bearer token, and with every error answer reported to a callback (metrics).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use axum::Router;

use crate::auth::require_token;

/// Serves `router` on the Unix socket at `path` (mode 0600) until `shutdown`.
pub async fn serve_unix(
    path: &Path,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Bound under a temporary name and made private before it appears at `path`: nobody can
    // connect in the moment between bind and chmod.
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves `router` on TCP at `listener`, every request checked for `Bearer <token>`.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    router: Router,
    token: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, require_token(router, token))
        .with_graceful_shutdown(shutdown)
        .await
}

/// `router` with `on_error` called with the status of every 4xx and 5xx answer.
pub fn report_errors(router: Router, on_error: Arc<dyn Fn(StatusCode) + Send + Sync>) -> Router {
    router.layer(axum::middleware::map_response(move |r: Response| {
        let on_error = Arc::clone(&on_error);
        async move {
            if r.status().is_client_error() || r.status().is_server_error() {
                on_error(r.status());
            }
            r
        }
    }))
}
