//! Keeps the nvmetcli-format copy (`<state_dir>/nvmet.json`) current: what this daemon owns,
//! gathered from the store (hosts, grants, identities) and nvmet (the block device each
//! namespace has now, since device names change across boots), written after every change
//! and every reconcile.

use std::collections::BTreeSet;
use std::path::PathBuf;

use fabric::nqn::Nqn;

use crate::config::Config;
use crate::configfs::Configfs;
use crate::nvmet::{HostAuth, NamespaceSpec, Nvmet};
use crate::nvmetcli::{self, OwnedHost, OwnedPort, OwnedSubsystem};
use crate::store::{Store, VolumeState};

/// Where the copy goes.
pub fn path(config: &Config) -> PathBuf {
    config.state_dir.join("nvmet.json")
}

/// Gathers what we own and writes the copy; the error says which part failed.
pub fn save<C: Configfs>(config: &Config, store: &Store, nvmet: &Nvmet<C>) -> Result<(), String> {
    let volumes = store.volumes().map_err(|e| e.to_string())?;
    let known = store.hosts().map_err(|e| e.to_string())?;
    let mut subsystems = Vec::new();
    let mut host_names = BTreeSet::new();
    for v in volumes.iter().filter(|v| v.state == VolumeState::Ready) {
        let nqn = format!("{}:{}", config.nqn_prefix, v.name);
        let Ok(checked) = Nqn::new(&nqn) else {
            continue;
        };
        // A volume whose namespace is not in the kernel right now (being repaired) is left
        // out rather than written with a device it may not have.
        let Some(device_path) = nvmet.device_path(&checked, 1) else {
            continue;
        };
        host_names.extend(v.hosts.iter().cloned());
        subsystems.push(OwnedSubsystem {
            nqn,
            model: "nvmf-target".into(),
            serial: v.serial.clone(),
            namespaces: vec![NamespaceSpec {
                nsid: 1,
                device_path,
                uuid: v.uuid.clone(),
                nguid: v.nguid.clone(),
            }],
            allowed_hosts: v.hosts.clone(),
        });
    }
    let hosts: Vec<OwnedHost> = known
        .iter()
        .filter(|h| host_names.contains(&h.nqn))
        .map(|h| OwnedHost {
            nqn: h.nqn.clone(),
            auth: h.dhchap_key.as_ref().map(|key| HostAuth {
                key: key.clone(),
                ctrl_key: h.dhchap_ctrl_key.clone(),
                hash: h.hash.clone(),
                dhgroup: h.dhgroup.clone(),
            }),
        })
        .collect();
    let ports: Vec<OwnedPort> = config
        .listeners
        .iter()
        .enumerate()
        .filter_map(|(i, addr)| {
            Some(OwnedPort {
                id: u16::try_from(i + 1).ok()?,
                addr: addr.clone(),
                subsystems: subsystems.iter().map(|s| s.nqn.clone()).collect(),
            })
        })
        .collect();
    let doc = nvmetcli::document(&hosts, &subsystems, &ports);
    let p = path(config);
    nvmetcli::write_atomic(&p, &doc).map_err(|e| format!("write {}: {e}", p.display()))
}
