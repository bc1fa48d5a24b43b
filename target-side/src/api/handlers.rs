//! One function per route; the `utoipa::path` attributes are the OpenAPI document.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use super::views::{self, *};
use super::{with, ApiError, Shared};
use crate::configfs::Configfs;
use crate::connections::Connection;
use crate::hosts::{self, RegisterHost};
use crate::inventory::PfInventory;
use crate::metrics::{Observed, PfObserved};
use crate::store::{VolumeRecord, VolumeState};
use crate::volume::{Backend, CreateVolume};
use nvmf_service::error::ErrorBody;

fn no_volume(name: &str) -> ApiError {
    ApiError::not_found(format!("no volume {name:?}"))
}

fn nqn_of<C: Configfs, B: Backend>(svc: &super::Service<C, B>, name: &str) -> String {
    format!("{}:{name}", svc.config.nqn_prefix)
}

fn view_of<C: Configfs, B: Backend>(svc: &mut super::Service<C, B>, v: VolumeRecord) -> VolumeView {
    let located = match (&v.placement, v.state) {
        (Some(p), VolumeState::Ready) => svc.backend.locate(p).ok().map(|c| Located {
            address: c.address.to_string(),
            cntlid: c.cntlid,
        }),
        _ => None,
    };
    let seen = svc.connections.of(&nqn_of(svc, &v.name));
    volume_view(&svc.config, v, located, &seen)
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Prometheus metrics: volumes by state, capacity used and free and VFs in use per PF,
/// reconcile runs, errors and drift repairs, API errors, connected hosts per volume.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String),
    (status = 500, body = ErrorBody),
))]
pub async fn metrics<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
) -> Result<impl IntoResponse, ApiError> {
    let text = with(s, |svc| {
        let vols = svc.store.volumes()?;
        let mut o = Observed::default();
        for state in ["creating", "ready", "deleting"] {
            let n = vols.iter().filter(|v| v.state.as_str() == state).count();
            o.volumes.push((state.into(), n as i64));
        }
        if let Ok(inv) = svc.backend.inventory() {
            for pf in inv {
                o.pfs.push(observe_pf(&pf, &vols));
            }
        }
        for v in vols.iter().filter(|v| v.state == VolumeState::Ready) {
            if let Some(h) = svc.connections.of(&nqn_of(svc, &v.name)).hosts() {
                o.connected.push((v.name.clone(), h.len() as i64));
            }
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

fn observe_pf(pf: &PfInventory, vols: &[VolumeRecord]) -> PfObserved {
    let ours: Vec<_> = vols
        .iter()
        .filter_map(|v| v.placement.as_ref())
        .filter(|p| p.pf == pf.pf)
        .collect();
    let free_pool: u64 = pf
        .namespaces
        .iter()
        .filter(|n| n.attached.is_empty() && !ours.iter().any(|p| p.nsid == n.nsid))
        .map(|n| n.size_bytes)
        .sum();
    let creatable = if pf.namespace_management {
        pf.unallocated_bytes
    } else {
        0
    };
    let clamp = |v: u128| i64::try_from(v).unwrap_or(i64::MAX);
    PfObserved {
        pf: pf.pf.clone(),
        used_bytes: clamp(ours.iter().map(|p| u128::from(p.size_bytes)).sum()),
        free_bytes: clamp(u128::from(free_pool) + creatable),
        vfs_in_use: ours.len() as i64,
    }
}

/// What every managed PF offers: VFs, flexible resources, secondary controllers, namespace
/// management, capacity, namespaces and their attachments.
#[utoipa::path(get, path = "/v1/inventory", responses(
    (status = 200, body = [PfInventory]),
    (status = 500, body = ErrorBody),
))]
pub async fn inventory<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
) -> Result<Json<Vec<PfInventory>>, ApiError> {
    with(s, |svc| {
        svc.backend
            .inventory()
            .map(Json)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "kernel", e))
    })
    .await
}

#[utoipa::path(get, path = "/v1/listeners", responses((status = 200, body = [ListenerView])))]
pub async fn list_listeners<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
) -> Result<Json<Vec<ListenerView>>, ApiError> {
    with(s, |svc| Ok(Json(views::listeners(&svc.config)))).await
}

#[utoipa::path(get, path = "/v1/volumes", responses(
    (status = 200, body = [VolumeView]),
    (status = 500, body = ErrorBody),
))]
pub async fn list_volumes<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
) -> Result<Json<Vec<VolumeView>>, ApiError> {
    with(s, |svc| {
        let vols = svc.store.volumes()?;
        Ok(Json(vols.into_iter().map(|v| view_of(svc, v)).collect()))
    })
    .await
}

/// Creates a volume; the same request again answers 200 with it, another under the same
/// name 409.
#[utoipa::path(post, path = "/v1/volumes", request_body = CreateVolumeBody, responses(
    (status = 201, description = "created", body = VolumeView),
    (status = 200, description = "the same request was made before", body = VolumeView),
    (status = 400, body = ErrorBody),
    (status = 404, description = "a host is not registered", body = ErrorBody),
    (status = 409, body = ErrorBody),
    (status = 500, description = "a kernel step failed and was undone", body = ErrorBody),
))]
pub async fn create_volume<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
    body: Result<Json<CreateVolumeBody>, JsonRejection>,
) -> Result<(StatusCode, Json<VolumeView>), ApiError> {
    let Json(b) = body?;
    with(s, move |svc| {
        let existed = svc.store.volume(&b.name)?.is_some();
        let v = svc.volumes().create(&CreateVolume {
            name: b.name,
            size_bytes: b.size_bytes,
            hosts: b.hosts,
            pf: b.pf,
        })?;
        if !existed {
            svc.save_copy();
        }
        let code = if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        Ok((code, Json(view_of(svc, v))))
    })
    .await
}

#[utoipa::path(get, path = "/v1/volumes/{name}", params(("name" = String, Path)), responses(
    (status = 200, body = VolumeView),
    (status = 400, body = ErrorBody),
    (status = 404, body = ErrorBody),
))]
pub async fn get_volume<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<VolumeView>, ApiError> {
    let Path(name) = name?;
    with(s, move |svc| {
        let v = svc.store.volume(&name)?.ok_or_else(|| no_volume(&name))?;
        Ok(Json(view_of(svc, v)))
    })
    .await
}

/// Deletes a volume: refused (409 `in_use`) while a host is connected, or when the kernel
/// cannot tell, unless `force=true`.
#[utoipa::path(delete, path = "/v1/volumes/{name}", params(("name" = String, Path), DeleteQuery), responses(
    (status = 204, description = "deleted"),
    (status = 400, body = ErrorBody),
    (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody),
    (status = 500, description = "a kernel step failed; the volume stays `deleting` and the next delete or reconcile finishes it", body = ErrorBody),
))]
pub async fn delete_volume<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
    name: Result<Path<String>, PathRejection>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(name) = name?;
    let Query(q) = q?;
    with(s, move |svc| {
        let r = svc.volumes().delete(&name, q.force.unwrap_or(false));
        svc.save_copy();
        r?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// Resizes a volume within its namespace (NVMe cannot grow a namespace in place: 409
/// `unsupported` beyond it); shrinking is refused. Connected hosts are told through nvmet's
/// `revalidate_size`.
#[utoipa::path(post, path = "/v1/volumes/{name}/resize", params(("name" = String, Path)), request_body = ResizeBody, responses(
    (status = 200, body = VolumeView),
    (status = 400, body = ErrorBody),
    (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody),
    (status = 500, body = ErrorBody),
))]
pub async fn resize_volume<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<ResizeBody>, JsonRejection>,
) -> Result<Json<VolumeView>, ApiError> {
    let Path(name) = name?;
    let Json(b) = body?;
    with(s, move |svc| {
        let v = svc.volumes().resize(&name, b.size_bytes)?;
        Ok(Json(view_of(svc, v)))
    })
    .await
}

/// The hosts allowed on a volume, and those connected where the kernel shows it.
#[utoipa::path(get, path = "/v1/volumes/{name}/hosts", params(("name" = String, Path)), responses(
    (status = 200, body = VolumeHostsView),
    (status = 400, body = ErrorBody),
    (status = 404, body = ErrorBody),
))]
pub async fn volume_hosts<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<VolumeHostsView>, ApiError> {
    let Path(name) = name?;
    with(s, move |svc| {
        let v = svc.store.volume(&name)?.ok_or_else(|| no_volume(&name))?;
        let seen = svc.connections.of(&nqn_of(svc, &name));
        Ok(Json(views::volume_hosts(&v, &seen)))
    })
    .await
}

/// Allows a registered host on a ready volume (201 when new, 200 when it was allowed).
#[utoipa::path(post, path = "/v1/volumes/{name}/hosts", params(("name" = String, Path)), request_body = AllowBody, responses(
    (status = 201, body = VolumeHostsView),
    (status = 200, body = VolumeHostsView),
    (status = 400, body = ErrorBody),
    (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody),
    (status = 500, body = ErrorBody),
))]
pub async fn allow_host<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<AllowBody>, JsonRejection>,
) -> Result<(StatusCode, Json<VolumeHostsView>), ApiError> {
    let Path(name) = name?;
    let Json(b) = body?;
    with(s, move |svc| {
        let new = svc.volumes().allow(&name, &b.nqn)?;
        svc.save_copy();
        let v = svc.store.volume(&name)?.ok_or_else(|| no_volume(&name))?;
        let seen = svc.connections.of(&nqn_of(svc, &name));
        let code = if new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((code, Json(views::volume_hosts(&v, &seen))))
    })
    .await
}

/// Revokes a host on a volume: its new connects are refused at once; a connection already up
/// stays and is listed in the answer.
#[utoipa::path(delete, path = "/v1/volumes/{name}/hosts/{nqn}", params(("name" = String, Path), ("nqn" = String, Path)), responses(
    (status = 200, body = RevokeView),
    (status = 400, body = ErrorBody),
    (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody),
    (status = 500, body = ErrorBody),
))]
pub async fn revoke_host<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<RevokeView>, ApiError> {
    let Path((name, nqn)) = p?;
    with(s, move |svc| {
        let r = svc.volumes().revoke(&name, &nqn)?;
        svc.save_copy();
        let (still_connected, connections_unknown): (Option<Vec<Connection>>, _) =
            match r.still_connected {
                Ok(c) => (Some(c), None),
                Err(why) => (None, Some(why)),
            };
        Ok(Json(RevokeView {
            volume: name,
            host: nqn,
            revoked: r.changed,
            still_connected,
            connections_unknown,
        }))
    })
    .await
}

/// Registered hosts (keys are never listed).
#[utoipa::path(get, path = "/v1/hosts", responses(
    (status = 200, body = [HostView]),
    (status = 500, body = ErrorBody),
))]
pub async fn list_hosts<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
) -> Result<Json<Vec<HostView>>, ApiError> {
    with(s, |svc| {
        Ok(Json(
            svc.store
                .hosts()?
                .iter()
                .map(|h| views::host_view(h, None))
                .collect(),
        ))
    })
    .await
}

/// Registers a host (again: re-keys it). A key generated because the policy requires one and
/// none was given is in this answer only.
#[utoipa::path(post, path = "/v1/hosts", request_body = RegisterHostBody, responses(
    (status = 201, body = HostView),
    (status = 400, body = ErrorBody),
    (status = 500, body = ErrorBody),
))]
pub async fn register_host<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
    body: Result<Json<RegisterHostBody>, JsonRejection>,
) -> Result<(StatusCode, Json<HostView>), ApiError> {
    let Json(b) = body?;
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
        Ok((
            StatusCode::CREATED,
            Json(views::host_view(&rec, generated.map(|k| k.to_string()))),
        ))
    })
    .await
}

/// Forgets a host; refused (409 `in_use`) while a volume allows it.
#[utoipa::path(delete, path = "/v1/hosts/{nqn}", params(("nqn" = String, Path)), responses(
    (status = 204, description = "forgotten"),
    (status = 400, body = ErrorBody),
    (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody),
))]
pub async fn delete_host<C: Configfs + 'static, B: Backend + Send + 'static>(
    State(s): State<Shared<C, B>>,
    nqn: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(nqn) = nqn?;
    with(s, move |svc| {
        svc.store.delete_host(&nqn)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
