//! The storage node's HTTP/JSON API (axum): on a Unix socket (mode 0600) by default, and on an
//! opt-in TCP listener that answers 401 without the bearer token. Errors are
//! `{ "error": KIND, "detail": TEXT }` with a 4xx for the caller's mistakes (which change
//! nothing) and a 5xx when a kernel step failed (and was undone). Every handler runs the
//! blocking service work (configfs, sysfs, SQLite) off the async threads, one request at a
//! time. The OpenAPI document is generated from these handlers ([`ApiDoc`]) and committed as
//! `target-side/openapi.json`.

mod handlers;
pub mod views;

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use nvmf_service::auth::BearerScheme;
use utoipa::OpenApi;

use crate::config::Config;
use crate::configfs::Configfs;
use crate::connections::Connections;
use crate::hosts::HostError;
use crate::metrics::Metrics;
use crate::nvmet::Nvmet;
use crate::store::{Store, StoreError};
use crate::volume::{Backend, VolumeError, Volumes};

pub use nvmf_service::error::ApiError;
pub use nvmf_service::serve::{serve_tcp, serve_unix};

/// Everything a request may touch, behind one lock.
pub struct Service<C: Configfs, B: Backend> {
    pub config: Config,
    pub store: Store,
    pub nvmet: Nvmet<C>,
    pub backend: B,
    pub connections: Connections,
    pub metrics: Arc<Metrics>,
}

impl<C: Configfs, B: Backend> Service<C, B> {
    pub fn volumes(&mut self) -> Volumes<'_, C, B> {
        Volumes {
            config: &self.config,
            store: &mut self.store,
            nvmet: &self.nvmet,
            backend: &mut self.backend,
            connections: &self.connections,
        }
    }

    /// Rewrites the nvmetcli copy; a failure is logged, never fails the request that
    /// changed the kernel (the store and the kernel are right; the copy is the operator's).
    pub fn save_copy(&self) {
        if let Err(e) = crate::copy::save(&self.config, &self.store, &self.nvmet) {
            eprintln!(
                "{}",
                serde_json::json!({"event": "nvmetcli copy", "error": e})
            );
        }
    }
}

pub type Shared<C, B> = Arc<Mutex<Service<C, B>>>;

impl From<VolumeError> for ApiError {
    fn from(e: VolumeError) -> Self {
        let detail = e.to_string();
        match e {
            VolumeError::Invalid(_) => ApiError::new(StatusCode::BAD_REQUEST, "invalid", detail),
            VolumeError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", detail),
            VolumeError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", detail),
            VolumeError::Busy(_) => ApiError::new(StatusCode::CONFLICT, "in_use", detail),
            VolumeError::Unsupported(_) => {
                ApiError::new(StatusCode::CONFLICT, "unsupported", detail)
            }
            VolumeError::NoRoom(_) => ApiError::new(StatusCode::CONFLICT, "no_capacity", detail),
            VolumeError::Store(s) => s.into(),
            VolumeError::Step { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "kernel", detail)
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let detail = e.to_string();
        match e {
            StoreError::Duplicate { .. } => ApiError::new(StatusCode::CONFLICT, "conflict", detail),
            StoreError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", detail)
            }
            StoreError::HostInUse { .. } => ApiError::new(StatusCode::CONFLICT, "in_use", detail),
            StoreError::Sqlite { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store", detail)
            }
        }
    }
}

impl From<HostError> for ApiError {
    fn from(e: HostError) -> Self {
        match e {
            HostError::Invalid(d) => ApiError::new(StatusCode::BAD_REQUEST, "invalid", d),
            HostError::Store(s) => s.into(),
        }
    }
}

/// Runs `f` on the service off the async threads.
async fn with<C, B, T>(
    s: Shared<C, B>,
    f: impl FnOnce(&mut Service<C, B>) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError>
where
    C: Configfs + 'static,
    B: Backend + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let mut guard = s.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
}

/// The OpenAPI document of the routes below.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "nvmf-target",
        description = "Storage node API: volumes carved as NVMe SR-IOV VFs and exported over NVMe-oF",
        version = "1"
    ),
    paths(
        handlers::healthz,
        handlers::metrics,
        handlers::inventory,
        handlers::list_listeners,
        handlers::list_volumes,
        handlers::create_volume,
        handlers::get_volume,
        handlers::delete_volume,
        handlers::resize_volume,
        handlers::volume_hosts,
        handlers::allow_host,
        handlers::revoke_host,
        handlers::list_hosts,
        handlers::register_host,
        handlers::delete_host,
    ),
    modifiers(&BearerScheme),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// The committed document's text (`nvmf-target openapi` prints the generated one).
pub fn openapi_json() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// The routes, with every error response counted in the metrics.
pub fn router<C, B>(service: Shared<C, B>) -> Router
where
    C: Configfs + 'static,
    B: Backend + Send + 'static,
{
    let counts = Arc::clone(&service.lock().unwrap_or_else(|e| e.into_inner()).metrics);
    use handlers::*;
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::<C, B>))
        .route("/v1/inventory", get(inventory::<C, B>))
        .route("/v1/listeners", get(list_listeners::<C, B>))
        .route(
            "/v1/volumes",
            get(list_volumes::<C, B>).post(create_volume::<C, B>),
        )
        .route(
            "/v1/volumes/{name}",
            get(get_volume::<C, B>).delete(delete_volume::<C, B>),
        )
        .route("/v1/volumes/{name}/resize", post(resize_volume::<C, B>))
        .route(
            "/v1/volumes/{name}/hosts",
            get(volume_hosts::<C, B>).post(allow_host::<C, B>),
        )
        .route(
            "/v1/volumes/{name}/hosts/{nqn}",
            axum::routing::delete(revoke_host::<C, B>),
        )
        .route(
            "/v1/hosts",
            get(list_hosts::<C, B>).post(register_host::<C, B>),
        )
        .route(
            "/v1/hosts/{nqn}",
            axum::routing::delete(delete_host::<C, B>),
        )
        .fallback(nvmf_service::error::no_route)
        .with_state(service);
    nvmf_service::serve::report_errors(
        routes,
        Arc::new(move |status: StatusCode| counts.error(status.as_str())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configfs::FakeNvmet;
    use crate::testing::FakeBackend;
    use serde_json::{json, Value};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::PathBuf;

    struct Server {
        dir: tempfile::TempDir,
        socket: PathBuf,
        service: Shared<FakeNvmet, FakeBackend>,
        rt: tokio::runtime::Runtime,
    }

    /// The service over fakes; its debugfs tree (connections) is `<dir>/debugfs`, present.
    fn service(dir: &std::path::Path) -> Shared<FakeNvmet, FakeBackend> {
        let mut config = Config::parse(
            include_str!("../../nvmf-target.example.toml"),
            std::path::Path::new("example"),
        )
        .expect("config");
        config.state_dir = dir.to_path_buf();
        let store = Store::open(dir).expect("store");
        std::fs::create_dir_all(dir.join("debugfs")).expect("debugfs");
        Arc::new(Mutex::new(Service {
            config,
            store,
            nvmet: Nvmet::new(FakeNvmet::new()),
            backend: FakeBackend::default(),
            connections: Connections::new(dir.join("debugfs")),
            metrics: Arc::new(Metrics::new()),
        }))
    }

    fn server() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let service = service(dir.path());
        let socket = dir.path().join("api.sock");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (s, r) = (socket.clone(), router(Arc::clone(&service)));
        rt.spawn(async move { serve_unix(&s, r, std::future::pending()).await });
        for _ in 0..100 {
            if UnixStream::connect(&socket).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Server {
            dir,
            socket,
            service,
            rt,
        }
    }

    /// One request over the socket; the status and the JSON body (Null when empty).
    fn call(s: &Server, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (code, rest) = raw(s, method, path, body);
        // Bodies may be chunked; the JSON is the part between the first { or [ and the last } or ].
        let json = match (rest.find(['{', '[']), rest.rfind(['}', ']'])) {
            (Some(a), Some(b)) => serde_json::from_str(&rest[a..=b]).expect("json body"),
            _ => Value::Null,
        };
        (code, json)
    }

    /// One request over the socket; the status and the body as text.
    fn raw(s: &Server, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut c = UnixStream::connect(&s.socket).expect("connect");
        let body = body.unwrap_or("");
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut out = String::new();
        c.read_to_string(&mut out).expect("read");
        let (head, rest) = out.split_once("\r\n\r\n").expect("a response");
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status");
        (code, rest.to_string())
    }

    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";

    #[test]
    fn the_socket_is_private_and_health_and_listeners_answer() {
        let s = server();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&s.socket)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            call(&s, "GET", "/healthz", None),
            (200, json!({"status": "ok"}))
        );
        let (code, l) = call(&s, "GET", "/v1/listeners", None);
        assert_eq!(
            (
                code,
                l[0]["trtype"].clone(),
                l[0]["traddr"].clone(),
                l[0]["trsvcid"].clone()
            ),
            (200, json!("rdma"), json!("192.0.2.1"), json!(4420))
        );
        let (code, e) = call(&s, "GET", "/v1/nothing", None);
        assert_eq!((code, e["error"].clone()), (404, json!("not_found")));
    }

    #[test]
    fn hosts_and_volumes_go_through_their_life_over_the_socket() {
        let s = server();
        let (code, h) = call(
            &s,
            "POST",
            "/v1/hosts",
            Some(&format!(r#"{{"nqn": "{HOST}"}}"#)),
        );
        assert_eq!(code, 201, "{h}");
        assert!(
            h["dhchap_key"]
                .as_str()
                .is_some_and(|k| k.starts_with("DHHC-1:00:")),
            "generated once: {h}"
        );
        let (_, list) = call(&s, "GET", "/v1/hosts", None);
        assert_eq!(list[0].get("dhchap_key"), None, "never listed: {list}");
        let body = format!(r#"{{"name": "vol1", "size_bytes": 104857600, "hosts": ["{HOST}"]}}"#);
        let (code, v) = call(&s, "POST", "/v1/volumes", Some(&body));
        assert_eq!(code, 201, "{v}");
        assert_eq!(v["subsystem_nqn"], "nqn.2026-12.io.example.storage:vol1");
        assert_eq!(
            (v["state"].clone(), v["size_bytes"].clone(), v["vf"].clone()),
            (json!("ready"), json!(1u64 << 30), json!(1))
        );
        assert_eq!(v["listeners"][0]["traddr"], "192.0.2.1");
        assert_eq!(
            (v["nsid"].clone(), v["drive_nsid"].clone()),
            (json!(1), json!(1))
        );
        let (code, again) = call(&s, "POST", "/v1/volumes", Some(&body));
        assert_eq!(
            (code, again["uuid"].clone()),
            (200, v["uuid"].clone()),
            "idempotent"
        );
        let other = body.replace("104857600", "204857600");
        assert_eq!(call(&s, "POST", "/v1/volumes", Some(&other)).0, 409);
        assert_eq!(call(&s, "GET", "/v1/volumes/vol1", None).1["name"], "vol1");
        let (code, e) = call(&s, "DELETE", &format!("/v1/hosts/{HOST}"), None);
        assert_eq!((code, e["error"].clone()), (409, json!("in_use")));
        assert_eq!(call(&s, "DELETE", "/v1/volumes/vol1", None).0, 204);
        assert_eq!(call(&s, "GET", "/v1/volumes/vol1", None).0, 404);
        assert_eq!(
            call(&s, "DELETE", &format!("/v1/hosts/{HOST}"), None).0,
            204
        );
        assert_eq!(call(&s, "GET", "/v1/volumes", None).1, json!([]));
    }

    #[test]
    fn bad_input_is_a_4xx_with_a_json_body_and_changes_nothing() {
        let s = server();
        let before = s.service.lock().expect("lock").nvmet.fs().snapshot();
        for (body, code, kind) in [
            ("{not json", 400, "invalid"),
            (
                r#"{"name": "v", "size_bytes": 1, "colour": "red"}"#,
                400,
                "invalid",
            ),
            (r#"{"name": "Bad Name", "size_bytes": 1}"#, 400, "invalid"),
            (r#"{"name": "v", "size_bytes": 0}"#, 400, "invalid"),
            (r#"{"name": "v", "size_bytes": -1}"#, 400, "invalid"),
            (
                r#"{"name": "v", "size_bytes": 4294967296}"#,
                409,
                "no_capacity",
            ),
            (
                r#"{"name": "v", "size_bytes": 1, "pf": "0000:99:00.0"}"#,
                404,
                "not_found",
            ),
            (r#"{"name": "v", "size_bytes": "1G"}"#, 400, "invalid"),
            (
                r#"{"name": "v", "size_bytes": 1, "hosts": ["nqn.2014-08.org.example:nobody"]}"#,
                404,
                "not_found",
            ),
        ] {
            let (c, e) = call(&s, "POST", "/v1/volumes", Some(body));
            assert_eq!((c, e["error"].clone()), (code, json!(kind)), "{body}: {e}");
            assert!(
                e["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{body}: {e}"
            );
        }
        let (c, e) = call(&s, "POST", "/v1/hosts", Some(r#"{"nqn": "host1"}"#));
        assert_eq!((c, e["error"].clone()), (400, json!("invalid")));
        assert_eq!(
            s.service.lock().expect("lock").nvmet.fs().snapshot(),
            before
        );
        assert!(s
            .service
            .lock()
            .expect("lock")
            .store
            .volumes()
            .expect("list")
            .is_empty());
    }

    #[test]
    fn a_failed_kernel_step_is_a_5xx_naming_it_and_is_rolled_back() {
        let s = server();
        call(
            &s,
            "POST",
            "/v1/hosts",
            Some(&format!(r#"{{"nqn": "{HOST}"}}"#)),
        );
        s.service.lock().expect("lock").backend.fail_at = Some(2); // place, then carve
        let before = s.service.lock().expect("lock").nvmet.fs().snapshot();
        let body = format!(r#"{{"name": "vol1", "size_bytes": 1048576, "hosts": ["{HOST}"]}}"#);
        let (code, e) = call(&s, "POST", "/v1/volumes", Some(&body));
        assert_eq!((code, e["error"].clone()), (500, json!("kernel")));
        assert!(
            e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("carve the VF")),
            "{e}"
        );
        assert_eq!(
            s.service.lock().expect("lock").nvmet.fs().snapshot(),
            before
        );
        assert_eq!(call(&s, "GET", "/v1/volumes", None).1, json!([]));
    }

    fn with_volume(s: &Server) {
        let (code, _) = call(
            s,
            "POST",
            "/v1/hosts",
            Some(&format!(r#"{{"nqn": "{HOST}"}}"#)),
        );
        assert_eq!(code, 201);
        let body = format!(r#"{{"name": "vol1", "size_bytes": 104857600, "hosts": ["{HOST}"]}}"#);
        assert_eq!(call(s, "POST", "/v1/volumes", Some(&body)).0, 201);
    }

    const SUB1: &str = "nqn.2026-12.io.example.storage:vol1";

    #[test]
    fn inventory_resize_volume_hosts_and_metrics_answer_over_the_socket() {
        let s = server();
        with_volume(&s);
        let (code, inv) = call(&s, "GET", "/v1/inventory", None);
        assert_eq!((code, inv[0]["pf"].clone()), (200, json!("0000:01:00.0")));
        assert_eq!(inv[0]["namespaces"][0]["attached"], json!([1]), "{inv}");
        let (code, v) = call(&s, "GET", "/v1/volumes/vol1", None);
        assert_eq!(code, 200);
        assert_eq!(
            (
                v["vf_address"].clone(),
                v["cntlid"].clone(),
                v["connected_hosts"].clone()
            ),
            (json!("0000:01:00.1"), json!(1), json!([]))
        );
        let (code, v) = call(
            &s,
            "POST",
            "/v1/volumes/vol1/resize",
            Some(r#"{"size_bytes": 536870912}"#),
        );
        assert_eq!(
            (code, v["requested_bytes"].clone()),
            (200, json!(536870912)),
            "{v}"
        );
        let (code, e) = call(
            &s,
            "POST",
            "/v1/volumes/vol1/resize",
            Some(r#"{"size_bytes": 4294967296}"#),
        );
        assert_eq!(
            (code, e["error"].clone()),
            (409, json!("unsupported")),
            "{e}"
        );
        crate::connections::tests::fake_ctrl(&s.dir.path().join("debugfs"), SUB1, 2, HOST);
        let (code, h) = call(&s, "GET", "/v1/volumes/vol1/hosts", None);
        assert_eq!(code, 200);
        assert_eq!(h["allowed"], json!([HOST]));
        assert_eq!(h["connected"][0]["cntlid"], 2, "{h}");
        let (code, e) = call(&s, "DELETE", "/v1/volumes/vol1", None);
        assert_eq!((code, e["error"].clone()), (409, json!("in_use")), "{e}");
        let (code, r) = call(
            &s,
            "DELETE",
            &format!("/v1/volumes/vol1/hosts/{HOST}"),
            None,
        );
        assert_eq!((code, r["revoked"].clone()), (200, json!(true)), "{r}");
        assert_eq!(r["still_connected"][0]["cntlid"], 2, "{r}");
        let (code, h) = call(
            &s,
            "POST",
            "/v1/volumes/vol1/hosts",
            Some(&format!(r#"{{"nqn": "{HOST}"}}"#)),
        );
        assert_eq!((code, h["allowed"].clone()), (201, json!([HOST])));
        let (code, text) = raw(&s, "GET", "/metrics", None);
        assert_eq!(code, 200);
        for line in [
            "nvmf_target_volumes{state=\"ready\"} 1",
            "nvmf_target_vfs_in_use{pf=\"0000:01:00.0\"} 1",
            "nvmf_target_capacity_bytes{pf=\"0000:01:00.0\",kind=\"used\"} 1073741824",
            "nvmf_target_capacity_bytes{pf=\"0000:01:00.0\",kind=\"free\"} 1073741824",
            "nvmf_target_connected_hosts{volume=\"vol1\"} 1",
            "nvmf_target_api_errors_total{status=\"409\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert_eq!(
            call(&s, "DELETE", "/v1/volumes/vol1?force=true", None).0,
            204
        );
        let (code, e) = call(&s, "DELETE", "/v1/volumes/vol1?force=maybe", None);
        assert_eq!((code, e["error"].clone()), (400, json!("invalid")));
    }

    #[test]
    fn the_nvmetcli_copy_follows_every_change() {
        let s = server();
        with_volume(&s);
        let path = s.dir.path().join("nvmet.json");
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("copy")).expect("json");
        assert_eq!(doc["subsystems"][0]["nqn"], SUB1);
        assert_eq!(
            doc["subsystems"][0]["namespaces"][0]["device"]["path"],
            "/dev/nvme1n1"
        );
        assert_eq!(doc["hosts"][0]["nqn"], HOST);
        assert!(doc["hosts"][0]["dhchap"]["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("DHHC-1:")));
        assert_eq!(doc["ports"][0]["subsystems"], json!([SUB1]));
        assert_eq!(call(&s, "DELETE", "/v1/volumes/vol1", None).0, 204);
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("copy")).expect("json");
        assert_eq!(doc["subsystems"], json!([]));
        assert_eq!(doc["hosts"], json!([]));
    }

    #[test]
    fn the_committed_openapi_document_is_the_generated_one() {
        let committed = include_str!("../../openapi.json");
        assert!(
            committed == openapi_json(),
            "target-side/openapi.json differs from the API: run \
             `cargo run -p nvmf-target -- openapi > target-side/openapi.json` and commit it"
        );
    }

    /// Serves the fake service on TCP behind `token`; the port.
    fn tcp_server(s: &Server, token: &str) -> u16 {
        let r = router(Arc::clone(&s.service));
        let token = token.to_string();
        let listener =
            s.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        s.rt.spawn(async move { serve_tcp(listener, r, token, std::future::pending()).await });
        port
    }

    fn tcp_call(port: u16, auth: Option<&str>) -> (u16, String) {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        write!(
            c,
            "GET /v1/volumes HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
        )
        .expect("write");
        let mut out = String::new();
        c.read_to_string(&mut out).expect("read");
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status");
        (code, out)
    }

    #[test]
    fn the_tcp_listener_answers_401_without_the_token() {
        let s = server();
        let port = tcp_server(&s, "s3cret-token-0123456789");
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Basic s3cret-token-0123456789"),
        ] {
            let (code, out) = tcp_call(port, auth);
            assert_eq!(code, 401, "{auth:?}");
            assert!(out.contains("\"unauthorized\""), "{out}");
            assert!(
                out.to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
                "{out}"
            );
        }
        assert_eq!(
            tcp_call(port, Some("Bearer s3cret-token-0123456789")).0,
            200
        );
        // The CLI's transport over TCP: the token opens it, a wrong one is the API's 401.
        use nvmf_service::client::{request, Endpoint};
        let ep = |token: &str| Endpoint::Tcp {
            addr: format!("127.0.0.1:{port}"),
            token: token.into(),
        };
        assert_eq!(
            request(&ep("s3cret-token-0123456789"), "GET", "/v1/volumes", None).expect("over tcp"),
            (200, json!([]))
        );
        let (code, body) = request(&ep("wrong"), "GET", "/v1/volumes", None).expect("answer");
        assert_eq!((code, body["error"].clone()), (401, json!("unauthorized")));
    }

    /// schemathesis (PyPI; `.ci/run` installs it) against the committed document, on the TCP
    /// listener over the fakes: no 5xx, and every answer in the schema (status, content type,
    /// body). A missing schemathesis fails here with the command that installs it.
    #[test]
    fn schemathesis_finds_no_server_error_and_no_answer_outside_the_schema() {
        let s = server();
        let doc = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"));
        let r = router(Arc::clone(&s.service));
        if let Err(e) = nvmf_service::testing::schemathesis(&s.rt, r, doc, s.dir.path()) {
            panic!("{e}");
        }
    }
}
