//! The agent: the configuration, the host identity (read or created once), the store,
//! reconcile at start (running vdpa-blk processes adopted, half-done work finished or undone),
//! the supervisor loop (dead vdpa-blk processes restarted with backoff), and the API on its
//! Unix socket and the opt-in TCP listener until SIGTERM. vdpa-blk processes outlive the agent:
//! stopping it stops nothing else.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use fabric::connect::FabricsClient;
use fabric::root::SysRoot;
use nvmf_initiator::api::{self, Service};
use nvmf_initiator::config::Config;
use nvmf_initiator::metrics::Metrics;
use nvmf_initiator::store::Store;
use nvmf_initiator::supervise::{RestartPolicy, Supervised};
use nvmf_initiator::vdpa::BinaryLauncher;
use serde_json::json;

pub fn serve(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
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
    let host = config
        .host
        .load_or_create()
        .context("the host identity (host NQN and host ID)")?;
    let store = Store::open(&config.state_dir)?;
    let launcher = BinaryLauncher::new(config.vdpa_blk.binary.clone(), Duration::from_secs(60));
    let policy = RestartPolicy::default();
    let socket = config.api_socket.clone();
    let service = Arc::new(Mutex::new(Service {
        fabrics: Box::new(FabricsClient::new(root.clone())),
        launcher: Box::new(launcher),
        host,
        root,
        proc_root: "/proc".into(),
        metrics: Arc::new(Metrics::new()),
        supervised: Vec::new(),
        policy,
        namespace_timeout: Duration::from_secs(30),
        config,
        store,
    }));
    {
        let mut svc = service.lock().unwrap_or_else(|e| e.into_inner());
        let r = svc.attachments().reconcile();
        match r {
            Ok(r) => {
                eprintln!(
                    "{}",
                    json!({"event": "reconcile",
                        "adopted": r.adopted.iter().map(|a| &a.id).collect::<Vec<_>>(),
                        "dead": r.dead.iter().map(|d| format!("{}: {}", d.id, d.reason)).collect::<Vec<_>>(),
                        "reconnected": r.reconnected, "finished": r.finished,
                        "rolled_back": r.rolled_back, "removed": r.removed, "failed": r.failed})
                );
                let now = Instant::now();
                for a in r.adopted {
                    svc.supervised
                        .push(Supervised::running(a.id, a.spec, a.running, now));
                }
                for d in r.dead {
                    if let Some(spec) = d.spec {
                        let policy = svc.policy;
                        svc.supervised
                            .push(Supervised::down(d.id, spec, d.reason, &policy, now));
                    }
                }
            }
            Err(e) => eprintln!("{}", json!({"event": "reconcile", "error": e.to_string()})),
        }
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let ticker = Arc::clone(&service);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let s = Arc::clone(&ticker);
                let _ = tokio::task::spawn_blocking(move || {
                    let mut svc = s.lock().unwrap_or_else(|e| e.into_inner());
                    for e in svc.supervise_pass() {
                        eprintln!("{}", json!({"event": "supervise", "what": e}));
                    }
                })
                .await;
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
