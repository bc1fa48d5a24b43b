//! The compute node's attach API (axum), with the conventions and plumbing it shares with
//! `nvmf-target` through `nvmf-service`: a Unix socket (mode 0600), an opt-in TCP listener
//! behind a bearer token, `{ "error": KIND, "detail": TEXT }` errors, `/healthz`, `/metrics`.
//! Every handler runs the service work (sysfs, /dev/nvme-fabrics, vdpa-blk, SQLite) off the
//! async threads, one request at a time. The OpenAPI document is generated from these
//! handlers ([`ApiDoc`]) and committed as `initiator-side/openapi.json`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use fabric::host::HostIdentity;
use fabric::root::SysRoot;
use nvmf_service::auth::BearerScheme;
use nvmf_service::error::{ApiError, ErrorBody};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::attach::{AttachError, AttachRequest, AttachmentView, Attachments, ErrorKind};
use crate::config::Config;
use crate::metrics::{AttachmentObserved, IoObserved, Metrics, Observed};
use crate::paths::Fabrics;
use crate::store::Store;
use crate::supervise::{supervise_once, ProcessState, RestartPolicy, SuperviseEvent, Supervised};
use crate::vdpa::Launcher;

/// Everything a request may touch, behind one lock.
pub struct Service {
    pub config: Config,
    pub store: Store,
    pub fabrics: Box<dyn Fabrics + Send>,
    pub launcher: Box<dyn Launcher>,
    pub host: HostIdentity,
    pub root: SysRoot,
    pub proc_root: PathBuf,
    pub metrics: Arc<Metrics>,
    /// The vdpa-blk processes under supervision.
    pub supervised: Vec<Supervised>,
    pub policy: RestartPolicy,
    /// How long a new namespace's block device may take to appear.
    pub namespace_timeout: std::time::Duration,
}

impl Service {
    pub fn attachments(&mut self) -> Attachments<'_, dyn Fabrics + Send, dyn Launcher> {
        Attachments::new(
            &self.config,
            &mut self.store,
            self.fabrics.as_ref(),
            self.launcher.as_ref(),
            self.host.clone(),
        )
        .with_roots(self.root.clone(), &self.proc_root)
        .with_timeouts(self.namespace_timeout, std::time::Duration::from_secs(10))
    }

    /// Puts attachment `id`'s running vdpa-blk under supervision (after an attach).
    fn supervise(&mut self, id: &str) -> Result<(), AttachError> {
        let spec = self.attachments().launch_spec_for(id)?;
        let running = self.attachments().running(id)?;
        self.supervised.retain(|s| s.id != id);
        if let Some(r) = running {
            self.supervised
                .push(Supervised::running(id, spec, r, Instant::now()));
        }
        Ok(())
    }

    /// One supervision pass: dead vdpa-blk processes are restarted when the policy allows,
    /// and each restart is recorded in the store and the metrics.
    pub fn supervise_pass(&mut self) -> Vec<SuperviseEvent> {
        let events = supervise_once(
            self.launcher.as_ref(),
            &self.policy,
            Instant::now(),
            &mut self.supervised,
        );
        for e in &events {
            let kind = match e {
                SuperviseEvent::Died { .. } => "died",
                SuperviseEvent::Restarted { .. } => "restarted",
                SuperviseEvent::RestartFailed { .. } => "restart_failed",
                SuperviseEvent::GaveUp { .. } => "gave_up",
            };
            self.metrics.supervisor(kind);
            if let SuperviseEvent::Restarted { id, .. } = e {
                let now =
                    self.supervised
                        .iter()
                        .find(|s| &s.id == id)
                        .and_then(|s| match &s.state {
                            ProcessState::Running(r) => Some((r.process.pid, r.process.start_time)),
                            _ => None,
                        });
                if let Some((pid, start)) = now {
                    if let Err(err) = self.store.record_restart(id, pid, start) {
                        eprintln!(
                            "{}",
                            serde_json::json!({"event": "supervise", "id": id, "error": err.to_string()})
                        );
                    }
                }
            }
        }
        events
    }
}

pub type Shared = Arc<Mutex<Service>>;

fn api_error(e: AttachError) -> ApiError {
    let status = match e.kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict | ErrorKind::Busy => StatusCode::CONFLICT,
        ErrorKind::Unreachable | ErrorKind::Refused | ErrorKind::WrongNamespace => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Kernel | ErrorKind::Vdpa | ErrorKind::Store => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.kind.as_str(), e.to_string())
}

/// Runs `f` on the service off the async threads.
async fn with<T: Send + 'static>(
    s: Shared,
    f: impl FnOnce(&mut Service) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || {
        let mut guard = s.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DetachQuery {
    /// Detach even while a process holds the device.
    pub force: Option<bool>,
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Prometheus metrics: attachments by state, path states, vdpa-blk restarts and I/O counters
/// per attachment, supervision events, API errors.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String),
    (status = 500, body = ErrorBody),
))]
async fn metrics(State(s): State<Shared>) -> Result<impl IntoResponse, ApiError> {
    let text = with(s, |svc| {
        let views = svc.attachments().list().map_err(api_error)?;
        let mut o = Observed::default();
        for state in ["attaching", "ready", "detaching"] {
            let n = views.iter().filter(|v| v.state.as_str() == state).count();
            o.by_state.push((state.into(), n as i64));
        }
        for v in &views {
            o.attachments.push(AttachmentObserved {
                id: v.id.clone(),
                paths: v
                    .controllers
                    .iter()
                    .map(|c| (c.address.to_string(), c.state.clone()))
                    .collect(),
                restarts: v.vdpa.as_ref().map(|p| u64::from(p.restarts)),
                io: v.vdpa.as_ref().and_then(|p| p.stats.as_ref()).map(|st| {
                    st.queues
                        .iter()
                        .fold(IoObserved::default(), |a, q| IoObserved {
                            requests: a.requests + q.requests,
                            bytes_read: a.bytes_read + q.bytes_read,
                            bytes_written: a.bytes_written + q.bytes_written,
                            errors: a.errors + q.errors,
                        })
                }),
            });
        }
        svc.metrics
            .render(&o)
            .map_err(|e| ApiError::internal(e.to_string()))
    })
    .await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}

/// Every attachment with its live health.
#[utoipa::path(get, path = "/v1/attachments", responses(
    (status = 200, body = [AttachmentView]),
    (status = 500, body = ErrorBody),
))]
async fn list(State(s): State<Shared>) -> Result<Json<Vec<AttachmentView>>, ApiError> {
    with(s, |svc| {
        svc.attachments().list().map(Json).map_err(api_error)
    })
    .await
}

/// Attaches a remote volume: connects its paths, waits for the namespace, starts vdpa-blk;
/// 201 with the attachment and what to hand the guest; the same request again 200; another
/// for an attached subsystem 409. A failed call leaves the node as it was.
#[utoipa::path(post, path = "/v1/attachments", request_body = AttachRequest, responses(
    (status = 201, description = "attached", body = AttachmentView),
    (status = 200, description = "the same request was made before", body = AttachmentView),
    (status = 400, body = ErrorBody),
    (status = 409, body = ErrorBody),
    (status = 422, description = "unreachable address, refused connect (unknown NQN, host not allowed, wrong secret), or not the namespace asked for", body = ErrorBody),
    (status = 500, body = ErrorBody),
    (status = 504, description = "the namespace's block device did not appear in time", body = ErrorBody),
))]
async fn attach(
    State(s): State<Shared>,
    body: Result<Json<AttachRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<AttachmentView>), ApiError> {
    let Json(req) = body?;
    with(s, move |svc| {
        let (view, created) = svc.attachments().attach(&req).map_err(api_error)?;
        if created {
            if let Err(e) = svc.supervise(&view.id) {
                eprintln!(
                    "{}",
                    serde_json::json!({"event": "supervise", "id": view.id, "error": e.to_string()})
                );
            }
        }
        let code = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((code, Json(view)))
    })
    .await
}

#[utoipa::path(get, path = "/v1/attachments/{id}", params(("id" = String, Path)), responses(
    (status = 200, body = AttachmentView),
    (status = 400, body = ErrorBody),
    (status = 404, body = ErrorBody),
))]
async fn get_one(
    State(s): State<Shared>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<AttachmentView>, ApiError> {
    let Path(id) = id?;
    with(s, move |svc| {
        svc.attachments().get(&id).map(Json).map_err(api_error)
    })
    .await
}

/// Detaches: stops vdpa-blk and disconnects the controllers no other attachment uses;
/// refused (409 `busy`) while a process holds the device or it is mounted, unless
/// `force=true`. Nothing is left: no controller, no vdpa device, no record.
#[utoipa::path(delete, path = "/v1/attachments/{id}", params(("id" = String, Path), DetachQuery), responses(
    (status = 204, description = "detached"),
    (status = 400, body = ErrorBody),
    (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody),
    (status = 500, description = "a step failed; the attachment stays `detaching` and the next detach finishes it", body = ErrorBody),
))]
async fn detach(
    State(s): State<Shared>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<DetachQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    let Query(q) = q?;
    with(s, move |svc| {
        svc.attachments()
            .detach(&id, q.force.unwrap_or(false))
            .map_err(api_error)?;
        svc.supervised.retain(|p| p.id != id);
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// The OpenAPI document of the routes below.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "nvmf-initiator",
        description = "Compute node attach API: remote NVMe-oF volumes served as vDPA virtio-blk devices",
        version = "1"
    ),
    paths(healthz, metrics, list, attach, get_one, detach),
    components(schemas(ErrorBody)),
    modifiers(&BearerScheme),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// The committed document's text (`nvmf-initiator openapi` prints the generated one).
pub fn openapi_json() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// The routes, with every error response counted in the metrics.
pub fn router(service: Shared) -> Router {
    let counts = Arc::clone(&service.lock().unwrap_or_else(|e| e.into_inner()).metrics);
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/attachments", get(list).post(attach))
        .route("/v1/attachments/{id}", get(get_one).delete(detach))
        .fallback(nvmf_service::error::no_route)
        .with_state(service);
    nvmf_service::serve::report_errors(
        routes,
        Arc::new(move |status: StatusCode| counts.error(status.as_str())),
    )
}

#[cfg(test)]
mod tests;
