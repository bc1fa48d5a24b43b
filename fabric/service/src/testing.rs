//! For the daemons' API tests: schemathesis (PyPI; `.ci/run` installs it) against a committed
//! OpenAPI document, on a TCP listener serving the daemon's router over its fakes. Checks: no
//! 5xx, and every answer in the schema (status, content type, body). A missing schemathesis is
//! a failure naming the command that installs it, never a skip.

use std::path::Path;
use std::sync::Arc;

use axum::Router;

/// Serves `router` behind `token` on 127.0.0.1 in `rt`, runs `st run` against `doc` from
/// `workdir` (its cache and reports stay there); schemathesis's output when it fails.
pub fn schemathesis(
    rt: &tokio::runtime::Runtime,
    router: Router,
    doc: &Path,
    workdir: &Path,
) -> Result<(), String> {
    let token = "schemathesis-token-0123456789".to_string();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| format!("bind: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?
        .port();
    let t = Arc::new(token.clone());
    rt.spawn(async move {
        crate::serve::serve_tcp(listener, router, t.to_string(), std::future::pending()).await
    });
    let out = std::process::Command::new("st")
        .current_dir(workdir)
        .arg("run")
        .arg(doc)
        .arg("--url")
        .arg(format!("http://127.0.0.1:{port}"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "40",
            "--workers",
            "1",
            "--seed",
            "1",
            "--no-color",
        ])
        .output()
        .map_err(|e| format!("cannot run schemathesis (pip install schemathesis): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "schemathesis failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
