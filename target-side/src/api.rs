//! The storage node's HTTP/JSON API (axum), served on a Unix socket. Errors are
//! `{ "error": KIND, "detail": TEXT }` with a 4xx for the caller's mistakes (which change
//! nothing) and a 5xx when a kernel step failed (and was undone). Every handler runs the
//! blocking service work (configfs, sysfs, SQLite) off the async threads, one request at a
//! time.

use std::sync::{Arc, Mutex};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::Config;
use crate::configfs::Configfs;
use crate::hosts::{self, HostError, RegisterHost};
use crate::nvmet::Nvmet;
use crate::store::{HostRecord, Store, StoreError, VolumeRecord, VolumeState};
use crate::volume::{Backend, CreateVolume, VolumeError, Volumes};

/// Everything a request may touch, behind one lock.
pub struct Service<C: Configfs, B: Backend> {
    pub config: Config,
    pub store: Store,
    pub nvmet: Nvmet<C>,
    pub backend: B,
}

impl<C: Configfs, B: Backend> Service<C, B> {
    pub fn volumes(&mut self) -> Volumes<'_, C, B> {
        Volumes {
            config: &self.config,
            store: &mut self.store,
            nvmet: &self.nvmet,
            backend: &mut self.backend,
        }
    }
}

type Shared<C, B> = Arc<Mutex<Service<C, B>>>;

/// An API error: status, kind, detail.
#[derive(Debug)]
pub struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1, "detail": self.2}))).into_response()
    }
}

impl From<VolumeError> for ApiError {
    fn from(e: VolumeError) -> Self {
        let detail = e.to_string();
        match e {
            VolumeError::Invalid(_) => ApiError(StatusCode::BAD_REQUEST, "invalid", detail),
            VolumeError::NotFound(_) => ApiError(StatusCode::NOT_FOUND, "not_found", detail),
            VolumeError::Conflict(_) => ApiError(StatusCode::CONFLICT, "conflict", detail),
            VolumeError::Store(s) => s.into(),
            VolumeError::Step { .. } => {
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, "kernel", detail)
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let detail = e.to_string();
        match e {
            StoreError::Duplicate { .. } => ApiError(StatusCode::CONFLICT, "conflict", detail),
            StoreError::NotFound { .. } => ApiError(StatusCode::NOT_FOUND, "not_found", detail),
            StoreError::HostInUse { .. } => ApiError(StatusCode::CONFLICT, "in_use", detail),
            StoreError::Sqlite { .. } => {
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, "store", detail)
            }
        }
    }
}

impl From<HostError> for ApiError {
    fn from(e: HostError) -> Self {
        match e {
            HostError::Invalid(d) => ApiError(StatusCode::BAD_REQUEST, "invalid", d),
            HostError::Store(s) => s.into(),
        }
    }
}

fn bad_json(e: JsonRejection) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, "invalid", e.body_text())
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
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

/// A volume as an initiator needs it.
#[derive(Debug, Serialize)]
struct VolumeView {
    name: String,
    state: &'static str,
    subsystem_nqn: String,
    requested_bytes: u64,
    size_bytes: Option<u64>,
    hosts: Vec<String>,
    listeners: Vec<Value>,
    pf: Option<String>,
    vf: Option<u16>,
    /// The namespace ID hosts see in the subsystem (always 1: one namespace per volume).
    nsid: u32,
    /// The namespace's ID on the drive (attached to the VF).
    drive_nsid: Option<u32>,
    uuid: String,
    nguid: String,
}

fn view(config: &Config, v: VolumeRecord) -> VolumeView {
    VolumeView {
        subsystem_nqn: format!("{}:{}", config.nqn_prefix, v.name),
        state: match v.state {
            VolumeState::Creating => "creating",
            VolumeState::Ready => "ready",
            VolumeState::Deleting => "deleting",
        },
        requested_bytes: v.requested_bytes,
        size_bytes: v.placement.as_ref().map(|p| p.size_bytes),
        hosts: v.hosts,
        listeners: listeners(config),
        pf: v.placement.as_ref().map(|p| p.pf.clone()),
        vf: v.placement.as_ref().map(|p| p.vf),
        nsid: 1,
        drive_nsid: v.placement.as_ref().map(|p| p.nsid),
        uuid: v.uuid,
        nguid: v.nguid,
        name: v.name,
    }
}

fn listeners(config: &Config) -> Vec<Value> {
    config
        .listeners
        .iter()
        .map(|l| {
            json!({
                "trtype": l.trtype().as_str(),
                "traddr": l.traddr().map(|a| a.to_string()),
                "trsvcid": l.trsvcid(),
            })
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    size_bytes: u64,
    #[serde(default)]
    hosts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostBody {
    nqn: String,
    dhchap_key: Option<String>,
    dhchap_ctrl_key: Option<String>,
    hash: Option<String>,
    dhgroup: Option<String>,
}

fn host_view(h: &HostRecord) -> Value {
    json!({
        "nqn": h.nqn,
        "hash": h.hash,
        "dhgroup": h.dhgroup,
        "has_key": h.dhchap_key.is_some(),
        "bidirectional": h.dhchap_ctrl_key.is_some(),
    })
}

/// The routes.
pub fn router<C, B>(service: Shared<C, B>) -> Router
where
    C: Configfs + 'static,
    B: Backend + Send + 'static,
{
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/listeners", get(list_listeners::<C, B>))
        .route(
            "/v1/volumes",
            get(list_volumes::<C, B>).post(create_volume::<C, B>),
        )
        .route(
            "/v1/volumes/{name}",
            get(get_volume::<C, B>).delete(delete_volume::<C, B>),
        )
        .route(
            "/v1/hosts",
            get(list_hosts::<C, B>).post(register_host::<C, B>),
        )
        .route(
            "/v1/hosts/{nqn}",
            axum::routing::delete(delete_host::<C, B>),
        )
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such resource".into(),
            )
        })
        .with_state(service)
}

async fn list_listeners<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
) -> Result<Json<Value>, ApiError> {
    with(s, |svc| Ok(Json(json!(listeners(&svc.config))))).await
}

async fn list_volumes<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
) -> Result<Json<Value>, ApiError> {
    with(s, |svc| {
        let vols = svc.store.volumes()?;
        Ok(Json(json!(vols
            .into_iter()
            .map(|v| view(&svc.config, v))
            .collect::<Vec<_>>())))
    })
    .await
}

async fn get_volume<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
    Path(name): Path<String>,
) -> Result<Json<VolumeView>, ApiError> {
    with(s, move |svc| {
        let v = svc.store.volume(&name)?.ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no volume {name:?}"),
            )
        })?;
        Ok(Json(view(&svc.config, v)))
    })
    .await
}

async fn create_volume<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Result<(StatusCode, Json<VolumeView>), ApiError> {
    let Json(b) = body.map_err(bad_json)?;
    with(s, move |svc| {
        let existed = svc.store.volume(&b.name)?.is_some();
        let v = svc.volumes().create(&CreateVolume {
            name: b.name,
            size_bytes: b.size_bytes,
            hosts: b.hosts,
        })?;
        let code = if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        Ok((code, Json(view(&svc.config, v))))
    })
    .await
}

async fn delete_volume<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    with(s, move |svc| {
        svc.volumes().delete(&name)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

async fn list_hosts<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
) -> Result<Json<Value>, ApiError> {
    with(s, |svc| {
        Ok(Json(json!(svc
            .store
            .hosts()?
            .iter()
            .map(host_view)
            .collect::<Vec<_>>())))
    })
    .await
}

async fn register_host<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
    body: Result<Json<HostBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(b) = body.map_err(bad_json)?;
    with(s, move |svc| {
        let require = svc.config.require_dhchap;
        let (rec, generated) = hosts::register(
            &mut svc.store,
            &RegisterHost {
                nqn: b.nqn,
                dhchap_key: b.dhchap_key,
                dhchap_ctrl_key: b.dhchap_ctrl_key,
                hash: b.hash,
                dhgroup: b.dhgroup,
            },
            require,
        )?;
        let mut v = host_view(&rec);
        if let Some(k) = generated {
            // The only time the generated key is shown.
            v["dhchap_key"] = json!(k);
        }
        Ok((StatusCode::CREATED, Json(v)))
    })
    .await
}

async fn delete_host<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
    Path(nqn): Path<String>,
) -> Result<StatusCode, ApiError> {
    with(s, move |svc| {
        svc.store.delete_host(&nqn)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// Serves `router` on the Unix socket at `path` (created with mode 0600) until `shutdown`.
pub async fn serve_unix(
    path: &std::path::Path,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configfs::FakeNvmet;
    use crate::testing::FakeBackend;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::PathBuf;

    struct Server {
        _dir: tempfile::TempDir,
        socket: PathBuf,
        service: Shared<FakeNvmet, FakeBackend>,
        _rt: tokio::runtime::Runtime,
    }

    fn server() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::parse(
            include_str!("../nvmf-target.example.toml"),
            std::path::Path::new("example"),
        )
        .expect("config");
        let store = Store::open(dir.path()).expect("store");
        let service = Arc::new(Mutex::new(Service {
            config,
            store,
            nvmet: Nvmet::new(FakeNvmet::new()),
            backend: FakeBackend::default(),
        }));
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
            _dir: dir,
            socket,
            service,
            _rt: rt,
        }
    }

    /// One request over the socket; the status and the JSON body (Null when empty).
    fn call(s: &Server, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
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
        // Bodies may be chunked; the JSON is the part between the first { or [ and the last } or ].
        let json = match (rest.find(['{', '[']), rest.rfind(['}', ']'])) {
            (Some(a), Some(b)) => serde_json::from_str(&rest[a..=b]).expect("json body"),
            _ => Value::Null,
        };
        (code, json)
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
}
