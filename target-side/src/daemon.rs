//! The daemon: the configuration, the store, nvmet, each configured PF resolved to its
//! controller and admin device, reconcile at start and every period (with the nvmetcli copy
//! rewritten after each), and the API on its Unix socket and the opt-in TCP listener until
//! SIGTERM.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use fabric::admin::AdminDevice;
use fabric::root::SysRoot;
use fabric::sysfs::sriov::{PciAddress, PciFunction};
use nvmf_target::api::{self, Service};
use nvmf_target::backend::{PfBackend, Pfs};
use nvmf_target::config::{Config, PfRef};
use nvmf_target::configfs::HostConfigfs;
use nvmf_target::connections::{self, Connections};
use nvmf_target::metrics::Metrics;
use nvmf_target::nvmet::Nvmet;
use nvmf_target::store::Store;
use serde_json::json;

/// The PCI address and controller name of a configured PF.
fn resolve(root: &SysRoot, pf: &PfRef) -> anyhow::Result<(PciAddress, String)> {
    match pf {
        PfRef::Pci(a) => {
            let addr: PciAddress = a.parse().with_context(|| format!("PF {a}"))?;
            let f = PciFunction::read(root, &addr).with_context(|| format!("PF {a}"))?;
            let ctrl = f.nvme_controllers.first().cloned().with_context(|| {
                format!("PF {a} carries no NVMe controller (is it bound to nvme?)")
            })?;
            Ok((addr, ctrl))
        }
        PfRef::Controller(c) => {
            let dev = std::fs::read_link(root.sys_class_nvme().join(c).join("device"))
                .with_context(|| format!("controller {c}: no PCI device"))?;
            let name = dev
                .file_name()
                .and_then(|n| n.to_str())
                .with_context(|| format!("controller {c}: no PCI device"))?;
            Ok((
                name.parse().with_context(|| format!("controller {c}"))?,
                c.clone(),
            ))
        }
    }
}

pub fn serve(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    if let Some(dir) = config.api_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tcp = match &config.api_tcp {
        Some(t) => Some((
            t.addr,
            nvmf_service::auth::read_token(&t.token_file).context("api.token_file")?,
        )),
        None => None,
    };
    let root = SysRoot::host();
    let mut pfs = Vec::new();
    for pf in &config.pfs {
        let (addr, ctrl) = resolve(&root, pf)?;
        let admin = AdminDevice::open_controller(&root, &ctrl)?;
        pfs.push(PfBackend {
            root: root.clone(),
            pf: addr,
            admin,
            resources: config.vf_resources,
            probe_wait: Duration::from_secs(30),
        });
    }
    let nvmet_dir = root.path("/sys/kernel/config/nvmet");
    if !nvmet_dir.is_dir() {
        bail!(
            "{} does not exist: load the kernel target (modprobe nvmet nvmet-rdma) and mount configfs (mount -t configfs none /sys/kernel/config)",
            nvmet_dir.display()
        );
    }
    let store = Store::open(&config.state_dir)?;
    let nvmet = Nvmet::new(HostConfigfs::new(nvmet_dir));
    let period = config.reconcile_period;
    let socket = config.api_socket.clone();
    let connections = Connections::new(root.path(connections::DEFAULT_ROOT))
        .with_transport_fallback(config.listeners.clone(), root.path("/proc/net"));
    let service = Arc::new(Mutex::new(Service {
        config,
        store,
        nvmet,
        backend: Pfs { pfs },
        connections,
        metrics: Arc::new(Metrics::new()),
    }));
    let reconcile = |s: &Arc<Mutex<Service<HostConfigfs, Pfs<fabric::admin::NvmeCharDevice>>>>| {
        let mut guard = s.lock().unwrap_or_else(|e| e.into_inner());
        match guard.volumes().reconcile() {
            Ok(r) => {
                guard
                    .metrics
                    .reconciled(r.repaired.len() + r.finished.len(), r.failed.len());
                let v = json!({"event": "reconcile", "repaired": r.repaired, "finished": r.finished,
                    "unclaimed": r.unclaimed, "removed": r.removed, "failed": r.failed});
                eprintln!("{v}");
            }
            Err(e) => {
                guard.metrics.reconciled(0, 1);
                eprintln!("{}", json!({"event": "reconcile", "error": e.to_string()}));
            }
        }
        guard.save_copy();
    };
    reconcile(&service);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let ticker = Arc::clone(&service);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let s = Arc::clone(&ticker);
                let _ = tokio::task::spawn_blocking(move || reconcile(&s)).await;
            }
        });
        let router = api::router(service);
        nvmf_service::serve::run_until_terminated(&socket, tcp, router, |tcp| {
            eprintln!(
                "{}",
                json!({"event": "ready", "socket": socket.display().to_string(),
                       "tcp": tcp.map(|a| a.to_string())})
            )
        })
        .await?;
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}
