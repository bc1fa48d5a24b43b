//! Creating and deleting volumes: the store first (the intent survives a crash), then the drive
//! (placement, a carved VF, its block device), then nvmet (hosts, subsystem, namespace, grants,
//! ports, links). A step that fails undoes what this request made, in reverse, and the error
//! names the step; what existed before (a shared port, a host another volume uses) stays.

use std::collections::BTreeSet;
use std::path::PathBuf;

use fabric::nqn::Nqn;
use fabric::transport::TransportAddress;

use crate::carve::CarvedVf;
use crate::config::Config;
use crate::configfs::Configfs;
use crate::connections::{Connection, Connections, Seen};
use crate::inventory::PfInventory;
use crate::nvmet::{Change, HostAuth, NamespaceSpec, Nvmet, NvmetError};
use crate::store::{Owned, Placement, Store, StoreError, VolumeRecord, VolumeState};

/// The drive side of a volume: where it goes, its VF, its block device.
pub trait Backend {
    /// Chooses the PF, VF and namespace for `size_bytes`, avoiding what `taken` holds.
    fn place(
        &mut self,
        size_bytes: u64,
        taken: &Taken,
        only_pf: Option<&str>,
    ) -> Result<Placement, PlaceError>;
    /// The managed PFs' PCI addresses.
    fn pfs(&self) -> Vec<String>;
    /// Carves the VF and attaches the namespace.
    fn carve(&mut self, p: &Placement) -> Result<CarvedVf, String>;
    /// Waits for the namespace's block device behind the carved VF (and checks its identity).
    fn block_device(&mut self, p: &Placement, vf: &CarvedVf) -> Result<PathBuf, String>;
    /// Undoes `carve`.
    fn release(&mut self, p: &Placement) -> Result<(), String>;
    /// Where a carved VF is now (PCI address, controller), changing nothing.
    fn locate(&mut self, p: &Placement) -> Result<CarvedVf, String>;
    /// What every managed PF offers.
    fn inventory(&mut self) -> Result<Vec<PfInventory>, String>;
}

/// Why a volume could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// No PF has the capacity, a free VF or the flexible resources: the caller's request is
    /// too large for what is left (nothing was changed).
    #[error("no room: {0}")]
    NoRoom(String),
    /// Reading or asking the drive failed.
    #[error("{0}")]
    Failed(String),
}

/// VFs and namespaces other volumes hold, per PF.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Taken {
    pub vfs: BTreeSet<(String, u16)>,
    pub nsids: BTreeSet<(String, u32)>,
}

/// A create request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateVolume {
    pub name: String,
    pub size_bytes: u64,
    /// Registered host NQNs allowed to connect.
    pub hosts: Vec<String>,
    /// Put it on this PF (PCI address) rather than the first with room.
    pub pf: Option<String>,
}

/// Why a volume request failed; `Invalid`, `Conflict` and `NotFound` change nothing.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// Hosts are connected (or the kernel cannot say): refused unless forced.
    #[error("in use: {0}")]
    Busy(String),
    /// The drive cannot do it.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// No managed PF has room for it (nothing was changed).
    #[error("{0}")]
    NoRoom(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A step failed; what the request made was undone (`undo` says if that failed too).
    #[error("volume {volume}: {step}: {reason}{}", undo.as_ref().map(|u| format!(" (and undoing it failed: {u})")).unwrap_or_default())]
    Step {
        volume: String,
        step: String,
        reason: String,
        undo: Option<String>,
    },
}

/// What a reconcile run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Volumes whose kernel side had drifted and was rebuilt.
    pub repaired: Vec<String>,
    /// Creates and deletes a crash had left half done, now finished.
    pub finished: Vec<String>,
    /// Subsystems under our prefix no record wants (kept).
    pub unclaimed: Vec<String>,
    /// The same, removed because the configuration says so.
    pub removed: Vec<String>,
    /// What could not be converged this time, with why.
    pub failed: Vec<String>,
}

/// Whose a port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortUse {
    Made,
    Ours,
    /// Someone else's at our address: subsystems are linked to it, nothing else.
    Theirs,
}

/// What a create made, for undoing it.
#[derive(Debug)]
enum Made {
    Carved(Placement),
    Host(Nqn),
    Subsystem(Nqn),
    Port(u16),
}

/// Volume names: what fits in an NQN and a path segment.
pub fn check_name(name: &str) -> Result<(), VolumeError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(VolumeError::Invalid(format!(
            "volume name {name:?}: 1 to 64 of a-z, 0-9, '-' and '_', starting with a letter or digit"
        )))
    }
}

/// The service over one store, one nvmet and one backend.
pub struct Volumes<'a, C: Configfs, B: Backend> {
    pub config: &'a Config,
    pub store: &'a mut Store,
    pub nvmet: &'a Nvmet<C>,
    pub backend: &'a mut B,
    pub connections: &'a Connections,
}

/// What a revoke left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Whether the grant existed.
    pub changed: bool,
    /// The host's connections that stay up (nvmet does not end them), or why unknown.
    pub still_connected: Result<Vec<Connection>, String>,
}

impl<C: Configfs, B: Backend> Volumes<'_, C, B> {
    fn subsystem_nqn(&self, name: &str) -> Result<Nqn, VolumeError> {
        Nqn::new(&format!("{}:{name}", self.config.nqn_prefix))
            .map_err(|e| VolumeError::Invalid(e.to_string()))
    }

    /// Creates a volume (idempotent: the same request again answers with the volume; a
    /// different one under the same name is a conflict).
    pub fn create(&mut self, req: &CreateVolume) -> Result<VolumeRecord, VolumeError> {
        check_name(&req.name)?;
        if req.size_bytes == 0 {
            return Err(VolumeError::Invalid("size 0".into()));
        }
        let nqn = self.subsystem_nqn(&req.name)?;
        let mut hosts = req.hosts.clone();
        hosts.sort();
        hosts.dedup();
        let known = self.store.hosts()?;
        for h in &hosts {
            Nqn::new(h).map_err(|e| VolumeError::Invalid(e.to_string()))?;
            if !known.iter().any(|k| &k.nqn == h) {
                return Err(VolumeError::NotFound(format!("host {h} is not registered")));
            }
            if self.config.require_dhchap
                && known.iter().any(|k| &k.nqn == h && k.dhchap_key.is_none())
            {
                return Err(VolumeError::Invalid(format!(
                    "host {h} has no DH-HMAC-CHAP key and the policy requires one"
                )));
            }
        }
        if let Some(pf) = &req.pf {
            let managed = self.backend.pfs();
            if !managed.contains(pf) {
                return Err(VolumeError::NotFound(format!(
                    "PF {pf} is not managed by this daemon (managed: {})",
                    managed.join(", ")
                )));
            }
        }
        if let Some(v) = self.store.volume(&req.name)? {
            let same_pf = match (&req.pf, &v.placement) {
                (None, _) => true,
                (Some(want), Some(p)) => &p.pf == want,
                (Some(_), None) => false,
            };
            return if v.requested_bytes == req.size_bytes && v.hosts == hosts && same_pf {
                Ok(v)
            } else {
                Err(VolumeError::Conflict(format!(
                    "volume {} exists with another size or other hosts",
                    req.name
                )))
            };
        }
        let id = uuid::Uuid::new_v4();
        let record = VolumeRecord {
            name: req.name.clone(),
            requested_bytes: req.size_bytes,
            uuid: id.to_string(),
            nguid: id.simple().to_string(),
            serial: id.simple().to_string()[..20].to_string(),
            state: VolumeState::Creating,
            placement: None,
            hosts: hosts.clone(),
        };
        // The intent first: a crash from here on is converged by reconcile.
        self.store.create_volume(&record)?;
        let mut made = Vec::new();
        let placed = match self.place(&record, req.pf.as_deref()) {
            Ok(p) => Ok(p),
            Err(Err(no_room)) => {
                self.store.delete_volume(&record.name)?;
                return Err(VolumeError::NoRoom(format!(
                    "volume {}: {no_room}",
                    record.name
                )));
            }
            Err(Ok(step)) => Err(step),
        };
        let built = placed.and_then(|p| self.export(&record, &nqn, &p, &mut made).map(|_| p));
        match built {
            Ok(placement) => {
                self.store
                    .update_volume(&record.name, VolumeState::Ready, Some(&placement))?;
                Ok(self
                    .store
                    .volume(&record.name)?
                    .ok_or_else(|| VolumeError::NotFound(record.name.clone()))?)
            }
            Err((step, reason)) => {
                let undo = self.undo(made).err();
                let forgot = self.store.delete_volume(&record.name).err();
                Err(VolumeError::Step {
                    volume: record.name.clone(),
                    step,
                    reason,
                    undo: match (undo, forgot) {
                        (None, None) => None,
                        (u, f) => Some(
                            [u, f.map(|e| e.to_string())]
                                .into_iter()
                                .flatten()
                                .collect::<Vec<_>>()
                                .join("; "),
                        ),
                    },
                })
            }
        }
    }

    /// Deletes a volume: marked `deleting` first, then unexported (links, grants, namespace,
    /// subsystem), hosts no other volume allows removed from nvmet, the VF released, and the
    /// record forgotten last. A failure leaves the volume `deleting`; calling again finishes.
    ///
    /// Refused while a host is connected, or when the kernel cannot tell, unless `force`; a
    /// delete already under way (`deleting`) goes on.
    pub fn delete(&mut self, name: &str, force: bool) -> Result<(), VolumeError> {
        check_name(name)?;
        let v = self
            .store
            .volume(name)?
            .ok_or_else(|| VolumeError::NotFound(format!("volume {name}")))?;
        let nqn = self.subsystem_nqn(name)?;
        if !force && v.state != VolumeState::Deleting {
            match self.connections.of(nqn.as_str()) {
                Seen::Known(c) if c.is_empty() => {}
                Seen::Known(c) => {
                    return Err(VolumeError::Busy(format!(
                        "volume {name} has connected hosts ({}); disconnect them, or force",
                        c.iter()
                            .map(|c| format!("{} on controller {}", c.hostnqn, c.cntlid))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
                Seen::Unknown(why) => {
                    return Err(VolumeError::Busy(format!(
                        "cannot tell whether hosts are connected to volume {name} ({why}); \
                         force the delete once no host uses it"
                    )))
                }
            }
        }
        self.store
            .update_volume(name, VolumeState::Deleting, None)?;
        let fail = |step: &str, reason: String| VolumeError::Step {
            volume: name.to_string(),
            step: step.to_string(),
            reason,
            undo: None,
        };
        self.nvmet
            .remove_subsystem(&nqn)
            .map_err(|e| fail("remove the subsystem", e.to_string()))?;
        let others: BTreeSet<String> = self
            .store
            .volumes()?
            .into_iter()
            .filter(|o| o.name != name)
            .flat_map(|o| o.hosts)
            .collect();
        for h in v.hosts.iter().filter(|h| !others.contains(*h)) {
            let host = Nqn::new(h).map_err(|e| fail("remove the host", e.to_string()))?;
            self.drop_host_if_unused(&host)
                .map_err(|e| fail("remove the host", e))?;
        }
        for id in 1..=self.config.listeners.len() {
            let id = u16::try_from(id)
                .map_err(|_| fail("remove the port", "too many listeners".into()))?;
            self.drop_port_if_unused(id)
                .map_err(|e| fail("remove the port", e))?;
        }
        if let Some(p) = &v.placement {
            self.backend
                .release(p)
                .map_err(|e| fail("release the VF", e))?;
        }
        self.store.delete_volume(name)?;
        Ok(())
    }

    fn ready(&self, name: &str) -> Result<VolumeRecord, VolumeError> {
        check_name(name)?;
        let v = self
            .store
            .volume(name)?
            .ok_or_else(|| VolumeError::NotFound(format!("volume {name}")))?;
        if v.state != VolumeState::Ready {
            return Err(VolumeError::Conflict(format!(
                "volume {name} is {}, not ready",
                v.state.as_str()
            )));
        }
        Ok(v)
    }

    fn host_auth(&self, host: &str) -> Result<Option<HostAuth>, VolumeError> {
        let known = self.store.hosts()?;
        let h = known
            .iter()
            .find(|k| k.nqn == host)
            .ok_or_else(|| VolumeError::NotFound(format!("host {host} is not registered")))?;
        if self.config.require_dhchap && h.dhchap_key.is_none() {
            return Err(VolumeError::Invalid(format!(
                "host {host} has no DH-HMAC-CHAP key and the policy requires one"
            )));
        }
        Ok(h.dhchap_key.as_ref().map(|key| HostAuth {
            key: key.clone(),
            ctrl_key: h.dhchap_ctrl_key.clone(),
            hash: h.hash.clone(),
            dhgroup: h.dhgroup.clone(),
        }))
    }

    /// Allows a registered host on a ready volume: the store, then nvmet (the host object
    /// with its keys, then the grant). Whether the grant is new.
    pub fn allow(&mut self, name: &str, host: &str) -> Result<bool, VolumeError> {
        let v = self.ready(name)?;
        let host_nqn = Nqn::new(host).map_err(|e| VolumeError::Invalid(e.to_string()))?;
        let auth = self.host_auth(host)?;
        let nqn = self.subsystem_nqn(name)?;
        let changed = self.store.set_allowed(name, host, true)?;
        let fail = |step: &str, e: NvmetError| VolumeError::Step {
            volume: v.name.clone(),
            step: step.to_string(),
            reason: e.to_string(),
            undo: None,
        };
        let made_host = match self.take_host(&host_nqn) {
            Ok(m) => m,
            Err(e) => {
                if changed {
                    self.store.set_allowed(name, host, false)?;
                }
                return Err(VolumeError::Conflict(e));
            }
        };
        let applied = self
            .nvmet
            .ensure_host(&host_nqn, auth.as_ref())
            .map_err(|e| fail("register the host", e))
            .and_then(|_| {
                self.nvmet
                    .ensure_allowed(&nqn, &host_nqn)
                    .map_err(|e| fail("allow the host", e))
            });
        if let Err(mut e) = applied {
            // Undo: the grant, the host object if this call made it.
            let mut undo = Vec::new();
            if changed {
                if let Err(u) = self.store.set_allowed(name, host, false) {
                    undo.push(u.to_string());
                }
            }
            if made_host {
                if let Err(u) = self.drop_host_if_unused(&host_nqn) {
                    undo.push(u);
                }
            }
            if let VolumeError::Step { undo: slot, .. } = &mut e {
                *slot = (!undo.is_empty()).then(|| undo.join("; "));
            }
            return Err(e);
        }
        Ok(changed)
    }

    /// Revokes a host on a volume: new connects are refused at once; a connection already up
    /// stays (nvmet does not end it) and is reported. The host object goes from nvmet when no
    /// other volume allows it.
    pub fn revoke(&mut self, name: &str, host: &str) -> Result<Revoked, VolumeError> {
        let v = self.ready(name)?;
        let host_nqn = Nqn::new(host).map_err(|e| VolumeError::Invalid(e.to_string()))?;
        let nqn = self.subsystem_nqn(name)?;
        let changed = self.store.set_allowed(name, host, false)?;
        let fail = |step: &str, e: NvmetError| VolumeError::Step {
            volume: v.name.clone(),
            step: step.to_string(),
            reason: e.to_string(),
            undo: None,
        };
        self.nvmet
            .revoke(&nqn, &host_nqn)
            .map_err(|e| fail("revoke the host", e))?;
        let elsewhere = self
            .store
            .volumes()?
            .iter()
            .any(|o| o.hosts.iter().any(|h| h == host));
        if !elsewhere {
            self.drop_host_if_unused(&host_nqn)
                .map_err(|e| VolumeError::Step {
                    volume: v.name.clone(),
                    step: "remove the host".into(),
                    reason: e,
                    undo: None,
                })?;
        }
        let still_connected = match self.connections.of(nqn.as_str()) {
            Seen::Known(c) => Ok(c.into_iter().filter(|c| c.hostnqn == host).collect()),
            Seen::Unknown(why) => Err(why),
        };
        Ok(Revoked {
            changed,
            still_connected,
        })
    }

    /// Resizes a volume. NVMe has no namespace resize (Namespace Management creates and
    /// deletes), so a volume grows only within the namespace it was given (a pool namespace
    /// or LBA rounding can hold more than was asked for); beyond that the answer says so.
    /// Shrinking is refused (it would cut off data the guest wrote). nvmet is told to
    /// re-read the device's size, which announces a change to connected hosts.
    pub fn resize(&mut self, name: &str, size_bytes: u64) -> Result<VolumeRecord, VolumeError> {
        let v = self.ready(name)?;
        let placed = v.placement.as_ref().ok_or_else(|| {
            VolumeError::Conflict(format!("volume {name} is ready without a placement"))
        })?;
        if size_bytes < v.requested_bytes {
            return Err(VolumeError::Invalid(format!(
                "volume {name}: {size_bytes} bytes is smaller than its {} bytes; shrinking \
                 would cut off data",
                v.requested_bytes
            )));
        }
        if size_bytes > placed.size_bytes {
            return Err(VolumeError::Unsupported(format!(
                "volume {name}: its namespace {} on {} holds {} bytes and NVMe cannot grow a \
                 namespace in place; create a larger volume and copy",
                placed.nsid, placed.pf, placed.size_bytes
            )));
        }
        let nqn = self.subsystem_nqn(name)?;
        self.nvmet
            .revalidate_size(&nqn, 1)
            .map_err(|e| VolumeError::Step {
                volume: name.to_string(),
                step: "revalidate the namespace size".into(),
                reason: e.to_string(),
                undo: None,
            })?;
        self.store.set_requested(name, size_bytes)?;
        self.store
            .volume(name)?
            .ok_or_else(|| VolumeError::NotFound(format!("volume {name}")))
    }

    fn taken(&self) -> Result<Taken, VolumeError> {
        let mut t = Taken::default();
        for v in self.store.volumes()? {
            if let Some(p) = v.placement {
                t.vfs.insert((p.pf.clone(), p.vf));
                t.nsids.insert((p.pf, p.nsid));
            }
        }
        Ok(t)
    }

    /// Places the volume and records where, before anything on the drive changes (so that a
    /// crash from here on is converged by reconcile, which finds the placement).
    fn place(
        &mut self,
        v: &VolumeRecord,
        only_pf: Option<&str>,
    ) -> Result<Placement, Result<(String, String), PlaceError>> {
        let taken = self
            .taken()
            .map_err(|e| Ok(("read the store".to_string(), e.to_string())))?;
        let placement = match self.backend.place(v.requested_bytes, &taken, only_pf) {
            Ok(p) => p,
            Err(e @ PlaceError::NoRoom(_)) => return Err(Err(e)),
            Err(PlaceError::Failed(e)) => return Err(Ok(("place the volume".to_string(), e))),
        };
        self.store
            .update_volume(&v.name, VolumeState::Creating, Some(&placement))
            .map_err(|e| Ok(("record the placement".to_string(), e.to_string())))?;
        Ok(placement)
    }

    /// Makes the drive and nvmet side of a placed volume, skipping what exists; whether
    /// anything in nvmet had to be made or repaired. `made` collects what a rollback removes.
    fn export(
        &mut self,
        v: &VolumeRecord,
        nqn: &Nqn,
        placement: &Placement,
        made: &mut Vec<Made>,
    ) -> Result<bool, (String, String)> {
        let step = |s: &str| {
            let s = s.to_string();
            move |e: String| (s, e)
        };
        let nv = |s: &str| {
            let s = s.to_string();
            move |e: NvmetError| (s, e.to_string())
        };
        let mut changed = false;
        let mut note = |c: Change| changed |= c != Change::Unchanged;
        // Recorded before each call: a failure half-way leaves something to take back.
        made.push(Made::Carved(placement.clone()));
        let carved = self
            .backend
            .carve(placement)
            .map_err(step("carve the VF"))?;
        let device = self
            .backend
            .block_device(placement, &carved)
            .map_err(step("find the namespace's block device"))?;
        let known = self
            .store
            .hosts()
            .map_err(|e| ("read the hosts".to_string(), e.to_string()))?;
        for h in &v.hosts {
            let host = Nqn::new(h).map_err(|e| ("host".to_string(), e.to_string()))?;
            let auth = known.iter().find(|k| &k.nqn == h).and_then(|k| {
                k.dhchap_key.as_ref().map(|key| HostAuth {
                    key: key.clone(),
                    ctrl_key: k.dhchap_ctrl_key.clone(),
                    hash: k.hash.clone(),
                    dhgroup: k.dhgroup.clone(),
                })
            });
            if self
                .take_host(&host)
                .map_err(|e| ("register the host".to_string(), e))?
            {
                made.push(Made::Host(host.clone()));
            }
            note(
                self.nvmet
                    .ensure_host(&host, auth.as_ref())
                    .map_err(nv("register the host"))?,
            );
        }
        if !self.nvmet.subsystem_exists(nqn) {
            made.push(Made::Subsystem(nqn.clone()));
        }
        note(
            self.nvmet
                .ensure_subsystem(nqn, "nvmf-target", &v.serial)
                .map_err(nv("create the subsystem"))?,
        );
        note(
            self.nvmet
                .ensure_namespace(
                    nqn,
                    &NamespaceSpec {
                        nsid: 1,
                        device_path: device,
                        uuid: v.uuid.clone(),
                        nguid: v.nguid.clone(),
                    },
                )
                .map_err(nv("create the namespace"))?,
        );
        for h in &v.hosts {
            let host = Nqn::new(h).map_err(|e| ("host".to_string(), e.to_string()))?;
            note(
                self.nvmet
                    .ensure_allowed(nqn, &host)
                    .map_err(nv("allow the host"))?,
            );
        }
        // A grant nobody recorded (made by hand) is drift: taken back.
        for extra in self
            .nvmet
            .allowed(nqn)
            .map_err(nv("list the allowed hosts"))?
            .into_iter()
            .filter(|h| !v.hosts.contains(h))
        {
            let host = Nqn::new(&extra).map_err(|e| ("host".to_string(), e.to_string()))?;
            if self
                .nvmet
                .revoke(nqn, &host)
                .map_err(nv("revoke a host nobody allowed"))?
            {
                note(Change::Repaired);
            }
        }
        for (i, addr) in self.config.listeners.iter().enumerate() {
            let id = u16::try_from(i + 1)
                .map_err(|_| ("ports".to_string(), "too many listeners".to_string()))?;
            match self
                .take_port(id, addr)
                .map_err(|e| ("create the port".to_string(), e))?
            {
                PortUse::Theirs => {}
                use_ => {
                    if use_ == PortUse::Made {
                        made.push(Made::Port(id));
                    }
                    note(
                        self.nvmet
                            .ensure_port(id, addr)
                            .map_err(nv("create the port"))?,
                    );
                }
            }
            note(
                self.nvmet
                    .ensure_linked(id, nqn)
                    .map_err(nv("export on the port"))?,
            );
        }
        Ok(changed)
    }

    /// Makes the kernel match the store: volumes left `creating` by a crash are finished
    /// (without a placement nothing was touched yet, and the record is forgotten), `deleting`
    /// ones are deleted, `ready` ones rebuilt where they drifted (after a reboot: all of
    /// them); subsystems under our prefix that no record wants are reported, and removed
    /// when the configuration says so. One volume failing does not stop the others.
    pub fn reconcile(&mut self) -> Result<Reconciled, VolumeError> {
        let mut r = Reconciled::default();
        let records = self.store.volumes()?;
        for v in &records {
            let nqn = match self.subsystem_nqn(&v.name) {
                Ok(n) => n,
                Err(e) => {
                    r.failed.push(format!("{}: {e}", v.name));
                    continue;
                }
            };
            match (v.state, &v.placement) {
                (VolumeState::Deleting, _) => match self.delete(&v.name, true) {
                    Ok(()) => r.finished.push(format!("{}: deleted", v.name)),
                    Err(e) => r.failed.push(e.to_string()),
                },
                (VolumeState::Creating, None) => match self.store.delete_volume(&v.name) {
                    Ok(()) => r
                        .finished
                        .push(format!("{}: forgotten (never placed)", v.name)),
                    Err(e) => r.failed.push(format!("{}: {e}", v.name)),
                },
                (state, Some(p)) => {
                    let mut made = Vec::new();
                    match self.export(v, &nqn, p, &mut made) {
                        Ok(_) if state == VolumeState::Creating => {
                            match self
                                .store
                                .update_volume(&v.name, VolumeState::Ready, Some(p))
                            {
                                Ok(()) => r.finished.push(format!("{}: created", v.name)),
                                Err(e) => r.failed.push(format!("{}: {e}", v.name)),
                            }
                        }
                        Ok(true) => r.repaired.push(v.name.clone()),
                        Ok(false) => {}
                        Err((step, reason)) => {
                            r.failed.push(format!("{}: {step}: {reason}", v.name))
                        }
                    }
                }
                (VolumeState::Ready, None) => r
                    .failed
                    .push(format!("{}: ready without a placement", v.name)),
            }
        }
        let wanted: BTreeSet<String> = self
            .store
            .volumes()?
            .into_iter()
            .map(|v| format!("{}:{}", self.config.nqn_prefix, v.name))
            .collect();
        let present = self
            .nvmet
            .subsystems_under(&self.config.nqn_prefix)
            .map_err(|e| VolumeError::Step {
                volume: "*".into(),
                step: "list subsystems".into(),
                reason: e.to_string(),
                undo: None,
            })?;
        for s in present.into_iter().filter(|s| !wanted.contains(s)) {
            if self.config.remove_unclaimed {
                let nqn = Nqn::new(&s).map_err(|e| VolumeError::Invalid(e.to_string()))?;
                match self.nvmet.remove_subsystem(&nqn) {
                    Ok(_) => r.removed.push(s),
                    Err(e) => r.failed.push(e.to_string()),
                }
            } else {
                r.unclaimed.push(s);
            }
        }
        Ok(r)
    }

    /// The host object is ours to write: claimed when absent (`true`: made now), ours
    /// already, or refused when someone else made it (its keys are theirs).
    fn take_host(&mut self, host: &Nqn) -> Result<bool, String> {
        let owned = self
            .store
            .owns(Owned::Host, host.as_str())
            .map_err(|e| e.to_string())?;
        if self.nvmet.host_exists(host) {
            return if owned {
                Ok(false)
            } else {
                Err(format!(
                    "host {host} exists in nvmet and was not made by nvmf-target: its \
                     DH-HMAC-CHAP settings are someone else's (remove it or use another NQN)"
                ))
            };
        }
        self.store
            .claim(Owned::Host, host.as_str())
            .map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// Port `id` for `addr`: made now (claimed), ours, or someone else's at the same
    /// address (shared, never changed); someone else's at another address is refused.
    fn take_port(&mut self, id: u16, addr: &TransportAddress) -> Result<PortUse, String> {
        let name = id.to_string();
        let owned = self
            .store
            .owns(Owned::Port, &name)
            .map_err(|e| e.to_string())?;
        if self.nvmet.port_exists(id) {
            if owned {
                return Ok(PortUse::Ours);
            }
            return match self.nvmet.port_is_at(id, addr) {
                Ok(true) => Ok(PortUse::Theirs),
                Ok(false) => Err(format!(
                    "nvmet port {id} exists at another address and was not made by \
                     nvmf-target; it is left as it is (free the port id or move the listener)"
                )),
                Err(e) => Err(e.to_string()),
            };
        }
        self.store
            .claim(Owned::Port, &name)
            .map_err(|e| e.to_string())?;
        Ok(PortUse::Made)
    }

    /// Removes a host object this daemon made once no subsystem allows it.
    fn drop_host_if_unused(&mut self, host: &Nqn) -> Result<(), String> {
        let s = |e: &dyn std::fmt::Display| e.to_string();
        if !self
            .store
            .owns(Owned::Host, host.as_str())
            .map_err(|e| s(&e))?
            || self.nvmet.allowed_anywhere(host).map_err(|e| s(&e))?
        {
            return Ok(());
        }
        self.nvmet.remove_host(host).map_err(|e| s(&e))?;
        self.store
            .disown(Owned::Host, host.as_str())
            .map_err(|e| s(&e))
    }

    /// Removes a port this daemon made once nothing is exported on it.
    fn drop_port_if_unused(&mut self, id: u16) -> Result<(), String> {
        let name = id.to_string();
        if !self
            .store
            .owns(Owned::Port, &name)
            .map_err(|e| e.to_string())?
        {
            return Ok(());
        }
        if self
            .nvmet
            .remove_port_if_unused(id)
            .map_err(|e| e.to_string())?
            || !self.nvmet.port_exists(id)
        {
            self.store
                .disown(Owned::Port, &name)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Undoes what a failed create made, newest first; the first failure is reported after
    /// trying the rest.
    fn undo(&mut self, made: Vec<Made>) -> Result<(), String> {
        let mut first = None;
        for m in made.into_iter().rev() {
            let r = match &m {
                Made::Port(id) => self.drop_port_if_unused(*id),
                Made::Subsystem(nqn) => self
                    .nvmet
                    .remove_subsystem(nqn)
                    .map(drop)
                    .map_err(|e| e.to_string()),
                Made::Host(h) => self.drop_host_if_unused(h),
                Made::Carved(p) => self.backend.release(p),
            };
            if let Err(e) = r {
                first.get_or_insert(format!("{m:?}: {e}"));
            }
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configfs::FakeNvmet;
    use crate::store::HostRecord;
    use crate::testing::FakeBackend;
    use std::path::Path;

    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";

    struct World {
        _dir: tempfile::TempDir,
        config: Config,
        store: Store,
        nvmet: Nvmet<FakeNvmet>,
        backend: FakeBackend,
        /// A debugfs tree: present, so connections are known (none until a test adds one).
        debugfs: tempfile::TempDir,
        connections: Connections,
    }

    impl World {
        fn volumes(&mut self) -> Volumes<'_, FakeNvmet, FakeBackend> {
            Volumes {
                config: &self.config,
                store: &mut self.store,
                nvmet: &self.nvmet,
                backend: &mut self.backend,
                connections: &self.connections,
            }
        }
    }

    fn world() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::parse(
            include_str!("../nvmf-target.example.toml"),
            Path::new("example"),
        )
        .expect("config");
        let debugfs = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("store");
        store
            .put_host(&HostRecord {
                nqn: HOST.into(),
                dhchap_key: Some("DHHC-1:00:a2V5:".into()),
                dhchap_ctrl_key: None,
                hash: "hmac(sha256)".into(),
                dhgroup: "null".into(),
            })
            .expect("host");
        World {
            _dir: dir,
            config,
            store,
            nvmet: Nvmet::new(FakeNvmet::new()),
            backend: FakeBackend::default(),
            connections: Connections::new(debugfs.path()),
            debugfs,
        }
    }

    fn req(name: &str) -> CreateVolume {
        CreateVolume {
            name: name.into(),
            size_bytes: 100 << 20,
            hosts: vec![HOST.into()],
            pf: None,
        }
    }

    fn create(w: &mut World, r: &CreateVolume) -> Result<VolumeRecord, VolumeError> {
        w.volumes().create(r)
    }

    #[test]
    fn a_volume_is_recorded_carved_and_exported_and_a_repeat_is_the_same_volume() {
        let mut w = world();
        let v = create(&mut w, &req("vol1")).expect("create");
        assert_eq!(v.state, VolumeState::Ready);
        assert_eq!(
            v.placement.as_ref().map(|p| (p.vf, p.size_bytes)),
            Some((1, 1 << 30))
        );
        let sub = "nqn.2026-12.io.example.storage:vol1";
        assert_eq!(w.nvmet.linked(1).expect("linked"), vec![sub.to_string()]);
        assert_eq!(
            w.nvmet
                .fs()
                .read(Path::new(&format!(
                    "subsystems/{sub}/namespaces/1/device_path"
                )))
                .expect("dev"),
            "/dev/nvme1n1"
        );
        assert_eq!(
            w.nvmet
                .fs()
                .read(Path::new(&format!(
                    "subsystems/{sub}/namespaces/1/device_uuid"
                )))
                .expect("uuid"),
            v.uuid
        );
        assert_eq!(
            w.nvmet
                .fs()
                .read(Path::new(&format!("hosts/{HOST}/dhchap_key")))
                .expect("key"),
            "DHHC-1:00:a2V5:"
        );
        let again = create(&mut w, &req("vol1")).expect("idempotent");
        assert_eq!(again, v);
        let mut bigger = req("vol1");
        bigger.size_bytes *= 2;
        assert!(matches!(
            create(&mut w, &bigger),
            Err(VolumeError::Conflict(_))
        ));
        let second = create(&mut w, &req("vol2")).expect("second");
        assert_eq!(second.placement.map(|p| p.vf), Some(2), "the next free VF");
    }

    #[test]
    fn bad_requests_change_nothing() {
        let mut w = world();
        let before = w.nvmet.fs().snapshot();
        for (r, kind) in [
            (
                CreateVolume {
                    name: "Bad Name".into(),
                    ..req("x")
                },
                "invalid",
            ),
            (
                CreateVolume {
                    size_bytes: 0,
                    ..req("x")
                },
                "invalid",
            ),
            (
                CreateVolume {
                    hosts: vec!["nqn.2014-08.org.example:unknown".into()],
                    ..req("x")
                },
                "not found",
            ),
            (
                CreateVolume {
                    hosts: vec!["not-an-nqn".into()],
                    ..req("x")
                },
                "invalid",
            ),
            (
                CreateVolume {
                    pf: Some("0000:99:00.0".into()),
                    ..req("x")
                },
                "not found",
            ),
        ] {
            let e = create(&mut w, &r).expect_err("refused");
            assert!(e.to_string().starts_with(kind), "{r:?}: {e}");
        }
        assert_eq!(w.nvmet.fs().snapshot(), before);
        assert!(w.store.volumes().expect("list").is_empty());
        assert_eq!(w.backend.calls, 0);
    }

    /// A failure at every backend call and at every configfs operation of a create: the error
    /// names the step, and the tree, the store and the drive are as they were.
    #[test]
    fn a_failure_at_any_step_rolls_back_everything_the_create_made() {
        // A first volume, so that shared objects (the port, the host) exist beforehand too.
        for with_first in [false, true] {
            let mut k = 1;
            loop {
                let mut w = world();
                if with_first {
                    create(&mut w, &req("first")).expect("first");
                }
                let tree = w.nvmet.fs().snapshot();
                let records = w.store.volumes().expect("list");
                let carved = w.backend.carved.clone();
                // Backend calls first (3 of them), then configfs operations.
                w.backend.calls = 0;
                if k <= 3 {
                    w.backend.fail_at = Some(k);
                } else {
                    w.nvmet.fs().fail_op(k - 3);
                }
                match create(&mut w, &req("vol1")) {
                    Ok(_) => {
                        assert!(k > 4, "some step must have been failed");
                        break;
                    }
                    Err(e) => {
                        assert!(
                            matches!(e, VolumeError::Step { undo: None, .. }),
                            "k={k}: {e}"
                        );
                        assert_eq!(w.nvmet.fs().snapshot(), tree, "k={k}: {e}");
                        assert_eq!(w.store.volumes().expect("list"), records, "k={k}: {e}");
                        assert_eq!(w.backend.carved, carved, "k={k}: {e}");
                    }
                }
                k += 1;
                assert!(k < 100, "create never succeeded");
            }
        }
    }

    fn delete(w: &mut World, name: &str) -> Result<(), VolumeError> {
        w.volumes().delete(name, false)
    }

    #[test]
    fn delete_takes_everything_back_and_keeps_what_another_volume_uses() {
        let mut w = world();
        let empty = w.nvmet.fs().snapshot();
        create(&mut w, &req("vol1")).expect("vol1");
        let one = w.nvmet.fs().snapshot();
        create(&mut w, &req("vol2")).expect("vol2");
        delete(&mut w, "vol2").expect("delete vol2");
        assert_eq!(
            w.nvmet.fs().snapshot(),
            one,
            "the host and port vol1 uses stay"
        );
        assert_eq!(w.backend.carved, BTreeSet::from([1]));
        delete(&mut w, "vol1").expect("delete vol1");
        assert_eq!(w.nvmet.fs().snapshot(), empty);
        assert!(w.backend.carved.is_empty());
        assert!(w.store.volumes().expect("list").is_empty());
        assert!(matches!(
            delete(&mut w, "vol1"),
            Err(VolumeError::NotFound(_))
        ));
    }

    #[test]
    fn a_delete_that_fails_part_way_stays_deleting_and_finishes_when_called_again() {
        let mut failed = 0;
        for k in 1..=12 {
            let mut w = world();
            let empty = w.nvmet.fs().snapshot();
            create(&mut w, &req("vol1")).expect("create");
            w.nvmet.fs().fail_op(k);
            w.backend.fail_release = k == 12;
            match delete(&mut w, "vol1") {
                Ok(()) => continue,
                Err(e) => {
                    failed += 1;
                    assert!(matches!(e, VolumeError::Step { .. }), "k={k}: {e}");
                    let v = w
                        .store
                        .volume("vol1")
                        .expect("read")
                        .expect("still recorded");
                    assert_eq!(v.state, VolumeState::Deleting, "k={k}");
                }
            }
            w.backend.fail_release = false;
            delete(&mut w, "vol1").unwrap_or_else(|e| panic!("k={k}: the retry finishes: {e}"));
            assert_eq!(w.nvmet.fs().snapshot(), empty, "k={k}");
            assert!(w.backend.carved.is_empty(), "k={k}");
        }
        assert!(failed >= 5, "only {failed} deletes were made to fail");
    }

    fn reconcile(w: &mut World) -> Reconciled {
        w.volumes().reconcile().expect("reconcile")
    }

    #[test]
    fn reconcile_rebuilds_drift_and_a_lost_kernel_state_and_then_has_nothing_to_do() {
        let mut w = world();
        create(&mut w, &req("vol1")).expect("create");
        let built = w.nvmet.fs().snapshot();
        assert_eq!(reconcile(&mut w), Reconciled::default(), "nothing drifted");
        // By hand: unlinked from its port.
        let sub = "nqn.2026-12.io.example.storage:vol1";
        w.nvmet
            .fs()
            .unlink(Path::new(&format!("ports/1/subsystems/{sub}")))
            .expect("unlink");
        assert_eq!(reconcile(&mut w).repaired, vec!["vol1".to_string()]);
        assert_eq!(w.nvmet.fs().snapshot(), built);
        // A reboot: configfs is empty again (and the VF with it).
        w.nvmet = Nvmet::new(FakeNvmet::new());
        w.backend.carved.clear();
        assert_eq!(reconcile(&mut w).repaired, vec!["vol1".to_string()]);
        assert_eq!(w.nvmet.fs().snapshot(), built);
        assert_eq!(w.backend.carved, BTreeSet::from([1]));
        assert_eq!(reconcile(&mut w), Reconciled::default());
    }

    #[test]
    fn reconcile_finishes_what_a_crash_left_half_done_without_duplicates() {
        let mut w = world();
        // A crash after the placement was recorded and the host made, before the rest.
        let mut v = VolumeRecord {
            name: "vol1".into(),
            requested_bytes: 100 << 20,
            uuid: "00000000-0000-4000-8000-000000000001".into(),
            nguid: "00000000000040008000000000000001".into(),
            serial: "00000000000040008000".into(),
            state: VolumeState::Creating,
            placement: None,
            hosts: vec![HOST.into()],
        };
        w.store.create_volume(&v).expect("record");
        let p = Placement {
            pf: "0000:01:00.0".into(),
            vf: 1,
            nsid: 1,
            size_bytes: 1 << 30,
        };
        w.store
            .update_volume("vol1", VolumeState::Creating, Some(&p))
            .expect("placed");
        // The daemon claims the host before making it.
        w.store.claim(Owned::Host, HOST).expect("claim");
        w.nvmet
            .ensure_host(&Nqn::new(HOST).expect("nqn"), None)
            .expect("host");
        // One create that never got placed, and one delete cut short.
        v.name = "ghost".into();
        v.uuid = "00000000-0000-4000-8000-000000000002".into();
        v.nguid = "00000000000040008000000000000002".into();
        w.store.create_volume(&v).expect("ghost");
        create(&mut w, &req("gone")).expect("gone");
        w.store
            .update_volume("gone", VolumeState::Deleting, None)
            .expect("deleting");
        let r = reconcile(&mut w);
        assert_eq!(
            r.finished,
            vec![
                "ghost: forgotten (never placed)".to_string(),
                "gone: deleted".into(),
                "vol1: created".into()
            ]
        );
        assert!(r.failed.is_empty(), "{r:?}");
        let names: Vec<_> = w
            .store
            .volumes()
            .expect("list")
            .into_iter()
            .map(|v| (v.name, v.state))
            .collect();
        assert_eq!(names, vec![("vol1".to_string(), VolumeState::Ready)]);
        assert_eq!(
            w.nvmet
                .subsystems_under("nqn.2026-12.io.example.storage")
                .expect("subsystems"),
            vec!["nqn.2026-12.io.example.storage:vol1".to_string()]
        );
        assert_eq!(reconcile(&mut w), Reconciled::default(), "converged");
    }

    #[test]
    fn unclaimed_subsystems_under_our_prefix_are_reported_or_removed_and_others_left_alone() {
        let mut w = world();
        let stray = Nqn::new("nqn.2026-12.io.example.storage:stray").expect("nqn");
        let theirs = Nqn::new("nqn.2020-01.org.other:disk").expect("nqn");
        w.nvmet.ensure_subsystem(&stray, "x", "y").expect("stray");
        w.nvmet.ensure_subsystem(&theirs, "x", "y").expect("theirs");
        assert_eq!(
            reconcile(&mut w).unclaimed,
            vec![stray.as_str().to_string()]
        );
        assert!(w.nvmet.subsystem_exists(&stray));
        w.config.remove_unclaimed = true;
        assert_eq!(reconcile(&mut w).removed, vec![stray.as_str().to_string()]);
        assert!(!w.nvmet.subsystem_exists(&stray));
        assert!(w.nvmet.subsystem_exists(&theirs));
    }

    const SUB1: &str = "nqn.2026-12.io.example.storage:vol1";
    const OTHER: &str = "nqn.2014-08.org.nvmexpress:uuid:99999999-2222-3333-4444-555555555555";

    fn register(w: &mut World, nqn: &str) {
        w.store
            .put_host(&HostRecord {
                nqn: nqn.into(),
                dhchap_key: Some("DHHC-1:00:b3RoZXI=:".into()),
                dhchap_ctrl_key: None,
                hash: "hmac(sha256)".into(),
                dhgroup: "null".into(),
            })
            .expect("host");
    }

    #[test]
    fn delete_is_refused_while_a_host_is_connected_or_the_kernel_cannot_tell_unless_forced() {
        let mut w = world();
        create(&mut w, &req("vol1")).expect("create");
        crate::connections::tests::fake_ctrl(w.debugfs.path(), SUB1, 3, HOST);
        let before = w.nvmet.fs().snapshot();
        match delete(&mut w, "vol1") {
            Err(VolumeError::Busy(d)) => {
                assert!(d.contains(HOST) && d.contains("controller 3"), "{d}")
            }
            r => panic!("{r:?}"),
        }
        assert_eq!(
            w.nvmet.fs().snapshot(),
            before,
            "a refused delete changed nvmet"
        );
        assert_eq!(
            w.store.volume("vol1").expect("read").map(|v| v.state),
            Some(VolumeState::Ready)
        );
        // A kernel without nvmet debugfs: unknown is refused too.
        w.connections = Connections::new(w.debugfs.path().join("absent"));
        match delete(&mut w, "vol1") {
            Err(VolumeError::Busy(d)) => assert!(d.contains("CONFIG_NVME_TARGET_DEBUGFS"), "{d}"),
            r => panic!("{r:?}"),
        }
        w.volumes().delete("vol1", true).expect("forced");
        assert_eq!(w.store.volume("vol1").expect("read"), None);
        assert!(!w.nvmet.subsystem_exists(&Nqn::new(SUB1).expect("nqn")));
    }

    #[test]
    fn hosts_are_allowed_and_revoked_on_a_live_volume_and_a_live_connection_is_reported() {
        let mut w = world();
        register(&mut w, OTHER);
        create(&mut w, &req("vol1")).expect("create");
        let sub = Nqn::new(SUB1).expect("nqn");
        let other = Nqn::new(OTHER).expect("nqn");
        assert!(w.volumes().allow("vol1", OTHER).expect("allow"));
        assert!(
            !w.volumes().allow("vol1", OTHER).expect("again"),
            "idempotent"
        );
        assert!(w
            .nvmet
            .allowed(&sub)
            .expect("allowed")
            .contains(&OTHER.to_string()));
        assert_eq!(
            w.nvmet
                .fs()
                .read(Path::new(&format!("hosts/{OTHER}/dhchap_key")))
                .expect("key"),
            "DHHC-1:00:b3RoZXI=:"
        );
        crate::connections::tests::fake_ctrl(w.debugfs.path(), SUB1, 4, OTHER);
        let r = w.volumes().revoke("vol1", OTHER).expect("revoke");
        assert!(r.changed);
        let still = r.still_connected.expect("known");
        assert_eq!((still.len(), still[0].cntlid), (1, 4));
        assert!(!w
            .nvmet
            .allowed(&sub)
            .expect("allowed")
            .contains(&OTHER.to_string()));
        assert!(!w.nvmet.host_exists(&other), "no volume allows it any more");
        assert!(
            w.nvmet.host_exists(&Nqn::new(HOST).expect("nqn")),
            "the other host stays"
        );
        assert_eq!(
            w.store.volume("vol1").expect("read").map(|v| v.hosts),
            Some(vec![HOST.to_string()])
        );
        // Bad input changes nothing.
        let before = w.nvmet.fs().snapshot();
        assert!(matches!(
            w.volumes().allow("vol1", "nqn.2014-08.org.example:nobody"),
            Err(VolumeError::Store(StoreError::NotFound { .. }) | VolumeError::NotFound(_))
        ));
        assert!(matches!(
            w.volumes().allow("nope", OTHER),
            Err(VolumeError::NotFound(_))
        ));
        assert!(matches!(
            w.volumes().allow("vol1", "not an nqn"),
            Err(VolumeError::Invalid(_))
        ));
        assert_eq!(w.nvmet.fs().snapshot(), before);
    }

    #[test]
    fn allowing_a_host_that_fails_in_nvmet_takes_the_grant_back() {
        let mut w = world();
        register(&mut w, OTHER);
        create(&mut w, &req("vol1")).expect("create");
        let before = w.nvmet.fs().snapshot();
        // Find an operation number that fails inside allow: each one in turn.
        for k in 1..20 {
            w.nvmet.fs().fail_op(k);
            let r = w.volumes().allow("vol1", OTHER);
            w.nvmet.fs().fail_op(0);
            match r {
                Err(VolumeError::Step { .. }) => {
                    assert_eq!(w.nvmet.fs().snapshot(), before, "k={k}");
                    assert_eq!(
                        w.store.volume("vol1").expect("read").map(|v| v.hosts),
                        Some(vec![HOST.to_string()]),
                        "k={k}"
                    );
                }
                Ok(_) => return,
                Err(e) => panic!("k={k}: {e}"),
            }
        }
        panic!("allow never succeeded");
    }

    #[test]
    fn resize_grows_within_the_namespace_announces_it_and_refuses_the_rest() {
        let mut w = world();
        create(&mut w, &req("vol1")).expect("create");
        let v = w.volumes().resize("vol1", 512 << 20).expect("grow within");
        assert_eq!(v.requested_bytes, 512 << 20);
        assert_eq!(
            w.nvmet
                .fs()
                .read(Path::new(&format!(
                    "subsystems/{SUB1}/namespaces/1/revalidate_size"
                )))
                .expect("revalidate"),
            "1",
            "nvmet was told to re-read the size"
        );
        let before = (
            w.nvmet.fs().snapshot(),
            w.store.volume("vol1").expect("read"),
        );
        match w.volumes().resize("vol1", 2 << 30) {
            Err(VolumeError::Unsupported(d)) => assert!(d.contains("cannot grow"), "{d}"),
            r => panic!("{r:?}"),
        }
        assert!(matches!(
            w.volumes().resize("vol1", 100 << 20),
            Err(VolumeError::Invalid(_))
        ));
        assert!(matches!(
            w.volumes().resize("nope", 1 << 30),
            Err(VolumeError::NotFound(_))
        ));
        assert_eq!(
            (
                w.nvmet.fs().snapshot(),
                w.store.volume("vol1").expect("read")
            ),
            before
        );
    }

    #[test]
    fn reconcile_takes_back_a_grant_made_by_hand() {
        let mut w = world();
        register(&mut w, OTHER);
        create(&mut w, &req("vol1")).expect("create");
        let sub = Nqn::new(SUB1).expect("nqn");
        let other = Nqn::new(OTHER).expect("nqn");
        w.nvmet.ensure_host(&other, None).expect("host by hand");
        w.nvmet.ensure_allowed(&sub, &other).expect("grant by hand");
        assert_eq!(reconcile(&mut w).repaired, vec!["vol1".to_string()]);
        assert_eq!(
            w.nvmet.allowed(&sub).expect("allowed"),
            vec![HOST.to_string()]
        );
        assert_eq!(reconcile(&mut w), Reconciled::default(), "converged");
    }

    #[test]
    fn hosts_and_ports_someone_else_made_are_used_as_they_are_or_refused_never_changed() {
        let mut w = world();
        let theirs = w.config.listeners[0].clone();
        // Their port 1 at our address: shared, and left when our last volume goes.
        w.nvmet.ensure_port(1, &theirs).expect("their port");
        create(&mut w, &req("vol1")).expect("create on a shared port");
        assert_eq!(w.nvmet.linked(1).expect("linked"), vec![SUB1.to_string()]);
        w.volumes().delete("vol1", false).expect("delete");
        assert!(w.nvmet.port_exists(1), "their port was removed");
        // Their port 1 at another address: refused, nothing changed.
        let other: TransportAddress =
            TransportAddress::rdma("198.51.100.9".parse().expect("ip"), 4420).expect("addr");
        w.nvmet.remove_port_if_unused(1).expect("rm");
        w.nvmet.ensure_port(1, &other).expect("their other port");
        let before = w.nvmet.fs().snapshot();
        match create(&mut w, &req("vol2")) {
            Err(VolumeError::Step { step, reason, .. }) => {
                assert_eq!(step, "create the port");
                assert!(reason.contains("not made by nvmf-target"), "{reason}");
            }
            r => panic!("{r:?}"),
        }
        assert_eq!(w.nvmet.fs().snapshot(), before);
        assert!(w.store.volumes().expect("list").is_empty());
        // Their host object under our host's NQN: refused, its keys untouched.
        w.nvmet.remove_port_if_unused(1).expect("rm");
        let host = Nqn::new(HOST).expect("nqn");
        w.nvmet.ensure_host(&host, None).expect("their host");
        let before = w.nvmet.fs().snapshot();
        match create(&mut w, &req("vol3")) {
            Err(VolumeError::Step { step, reason, .. }) => {
                assert_eq!(step, "register the host");
                assert!(reason.contains("not made by nvmf-target"), "{reason}");
            }
            r => panic!("{r:?}"),
        }
        assert_eq!(w.nvmet.fs().snapshot(), before);
    }
}
