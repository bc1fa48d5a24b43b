//! What the API reads and writes: request bodies (unknown fields refused) and responses, with
//! their OpenAPI schemas.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::config::Config;
use crate::connections::{Connection, Seen};
use crate::store::{HostRecord, VolumeRecord};

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// An NVMe-oF listener hosts connect to.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ListenerView {
    /// `rdma` or `tcp`.
    pub trtype: String,
    pub traddr: Option<String>,
    pub trsvcid: Option<u16>,
}

pub fn listeners(config: &Config) -> Vec<ListenerView> {
    config
        .listeners
        .iter()
        .map(|l| ListenerView {
            trtype: l.trtype().as_str().to_string(),
            traddr: l.traddr().map(|a| a.to_string()),
            trsvcid: l.trsvcid(),
        })
        .collect()
}

/// A volume, with what an initiator needs to connect to it.
#[derive(Debug, Serialize, ToSchema)]
pub struct VolumeView {
    pub name: String,
    /// `creating`, `ready` or `deleting`.
    pub state: String,
    pub subsystem_nqn: String,
    /// The size asked for.
    pub requested_bytes: u64,
    /// The namespace's real size (what hosts see).
    pub size_bytes: Option<u64>,
    /// Host NQNs allowed to connect.
    pub hosts: Vec<String>,
    pub listeners: Vec<ListenerView>,
    pub pf: Option<String>,
    /// The VF's number on the PF (1-based).
    pub vf: Option<u16>,
    /// The VF's PCI address.
    pub vf_address: Option<String>,
    /// The VF's secondary controller ID.
    pub cntlid: Option<u16>,
    /// The namespace ID hosts see in the subsystem (always 1: one namespace per volume).
    pub nsid: u32,
    /// The namespace's ID on the drive (attached to the VF).
    pub drive_nsid: Option<u32>,
    pub uuid: String,
    pub nguid: String,
    /// Hosts connected now; absent when the kernel does not show it (see
    /// `connections_unknown`).
    pub connected_hosts: Option<Vec<String>>,
    pub connections_unknown: Option<String>,
}

/// Where a carved VF is, when the drive answers.
pub struct Located {
    pub address: String,
    pub cntlid: u16,
}

pub fn volume_view(
    config: &Config,
    v: VolumeRecord,
    located: Option<Located>,
    seen: &Seen,
) -> VolumeView {
    let (connected_hosts, connections_unknown) = split(seen);
    VolumeView {
        subsystem_nqn: format!("{}:{}", config.nqn_prefix, v.name),
        state: v.state.as_str().to_string(),
        requested_bytes: v.requested_bytes,
        size_bytes: v.placement.as_ref().map(|p| p.size_bytes),
        hosts: v.hosts,
        listeners: listeners(config),
        pf: v.placement.as_ref().map(|p| p.pf.clone()),
        vf: v.placement.as_ref().map(|p| p.vf),
        vf_address: located.as_ref().map(|l| l.address.clone()),
        cntlid: located.as_ref().map(|l| l.cntlid),
        nsid: 1,
        drive_nsid: v.placement.as_ref().map(|p| p.nsid),
        uuid: v.uuid,
        nguid: v.nguid,
        name: v.name,
        connected_hosts: connected_hosts.map(|c| {
            let mut h: Vec<String> = c.into_iter().map(|c| c.hostnqn).collect();
            h.sort();
            h.dedup();
            h
        }),
        connections_unknown,
    }
}

fn split(seen: &Seen) -> (Option<Vec<Connection>>, Option<String>) {
    match seen {
        Seen::Known(c) => (Some(c.clone()), None),
        Seen::Unknown(why) => (None, Some(why.clone())),
    }
}

/// A registered host. The key itself is shown only once, in the answer to the registration
/// that generated it.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostView {
    pub nqn: String,
    pub hash: String,
    pub dhgroup: String,
    pub has_key: bool,
    /// A controller key is set: the host authenticates the target too.
    pub bidirectional: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhchap_key: Option<String>,
}

pub fn host_view(h: &HostRecord, generated: Option<String>) -> HostView {
    HostView {
        nqn: h.nqn.clone(),
        hash: h.hash.clone(),
        dhgroup: h.dhgroup.clone(),
        has_key: h.dhchap_key.is_some(),
        bidirectional: h.dhchap_ctrl_key.is_some(),
        dhchap_key: generated,
    }
}

/// The hosts of one volume: allowed, and connected where the kernel shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct VolumeHostsView {
    pub volume: String,
    pub allowed: Vec<String>,
    pub connected: Option<Vec<Connection>>,
    pub connections_unknown: Option<String>,
}

pub fn volume_hosts(v: &VolumeRecord, seen: &Seen) -> VolumeHostsView {
    let (connected, connections_unknown) = split(seen);
    VolumeHostsView {
        volume: v.name.clone(),
        allowed: v.hosts.clone(),
        connected,
        connections_unknown,
    }
}

/// What a revoke did. New connects are refused at once; connections already up stay and
/// are listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokeView {
    pub volume: String,
    pub host: String,
    /// Whether the host had been allowed.
    pub revoked: bool,
    pub still_connected: Option<Vec<Connection>>,
    pub connections_unknown: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeBody {
    /// 1 to 64 of a-z, 0-9, '-' and '_', starting with a letter or digit.
    pub name: String,
    /// Rounded up to the drive's LBA size, or a pool namespace at least this large.
    pub size_bytes: u64,
    /// Registered host NQNs allowed to connect.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Put it on this managed PF (PCI address) rather than the first with room.
    pub pf: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeBody {
    pub size_bytes: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowBody {
    /// A registered host NQN.
    pub nqn: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterHostBody {
    pub nqn: String,
    /// `DHHC-1:..:...:` as `nvme gen-dhchap-key` prints; generated when absent and the
    /// policy requires one.
    pub dhchap_key: Option<String>,
    /// The controller's key, for bidirectional authentication.
    pub dhchap_ctrl_key: Option<String>,
    /// `hmac(sha256)` (default), `hmac(sha384)` or `hmac(sha512)`.
    pub hash: Option<String>,
    /// `null` (default), `ffdhe2048`, `ffdhe3072`, `ffdhe4096`, `ffdhe6144`, `ffdhe8192`.
    pub dhgroup: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete even while hosts are connected (or the kernel cannot tell).
    pub force: Option<bool>,
}
