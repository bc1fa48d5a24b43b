//! Serving a router: on a Unix socket made private before it appears at its path, on TCP
//! behind the bearer token, and with every error answer reported to a callback (metrics).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use axum::Router;

use crate::auth::require_token;

/// Binds the Unix socket at `path`, mode 0600: bound under a temporary name and made private
/// before it appears at `path`, so nobody can connect in the moment between bind and chmod.
pub fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    Ok(listener)
}

/// Serves `router` on the Unix socket at `path` (mode 0600) until `shutdown`.
pub async fn serve_unix(
    path: &Path,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(bind_unix(path)?, router)
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

/// Resolves at SIGTERM or SIGINT (or at once if the handler cannot be installed, so a daemon
/// never runs unstoppable).
pub async fn terminated() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Why a daemon's API stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("api.tcp: binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("api.socket: binding {}: {source}", path.display())]
    BindUnix {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serving the API: {0}")]
    Serve(#[from] std::io::Error),
}

/// Serves `router` on the Unix socket and, when given, on TCP behind `token`, until SIGTERM
/// or SIGINT; `ready` is called once both listen (never before the socket exists), with the
/// TCP listener's address.
pub async fn run_until_terminated(
    socket: &Path,
    tcp: Option<(SocketAddr, String)>,
    router: Router,
    ready: impl FnOnce(Option<SocketAddr>),
) -> Result<(), RunError> {
    let tcp = match tcp {
        Some((addr, token)) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Bind { addr, source })?;
            Some((l, token))
        }
        None => None,
    };
    let unix_listener = bind_unix(socket).map_err(|source| RunError::BindUnix {
        path: socket.to_path_buf(),
        source,
    })?;
    ready(tcp.as_ref().and_then(|(l, _)| l.local_addr().ok()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let unix = std::future::IntoFuture::into_future(
        axum::serve(unix_listener, router.clone()).with_graceful_shutdown(stopped(stop_rx.clone())),
    );
    let tcp_task = async {
        match tcp {
            Some((listener, token)) => {
                serve_tcp(listener, router.clone(), token, stopped(stop_rx.clone())).await
            }
            None => Ok(()),
        }
    };
    let signal = async move {
        terminated().await;
        let _ = stop_tx.send(true);
        Ok::<(), std::io::Error>(())
    };
    tokio::try_join!(unix, tcp_task, signal)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_that_cannot_be_bound_is_named_and_ready_is_never_said() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("absent/api.sock");
        let mut said = false;
        let r = rt.block_on(run_until_terminated(&socket, None, Router::new(), |_| {
            said = true
        }));
        match r {
            Err(RunError::BindUnix { path, .. }) => assert_eq!(path, socket),
            other => panic!("{other:?}"),
        }
        assert!(!said, "ready before the socket existed");
    }
}
