//! Prometheus metrics (`prometheus-client`): counters the reconcile loop and the API bump, and
//! gauges set from what the store, the drives and nvmet say at each scrape (so a gauge never
//! shows a value nobody measured: a PF whose inventory fails has no capacity gauge, a kernel
//! that hides connections has no connected-hosts gauge).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What a scrape measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Volumes per state (`creating`, `ready`, `deleting`).
    pub volumes: Vec<(String, i64)>,
    /// Per PF whose inventory answered: bytes used by volumes, bytes free for new ones
    /// (unattached pool namespaces nobody holds, plus unallocated capacity on a drive that
    /// creates), VFs holding a volume.
    pub pfs: Vec<PfObserved>,
    /// Connected hosts per volume, where the kernel shows them.
    pub connected: Vec<(String, i64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PfObserved {
    pub pf: String,
    pub used_bytes: i64,
    pub free_bytes: i64,
    pub vfs_in_use: i64,
}

/// The registry and every metric in it.
pub struct Metrics {
    registry: Registry,
    reconcile_runs: Counter,
    reconcile_errors: Counter,
    drift_repairs: Counter,
    errors: Family<Labels, Counter>,
    volumes: Family<Labels, Gauge>,
    capacity: Family<Labels, Gauge>,
    vfs_in_use: Family<Labels, Gauge>,
    connected: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("nvmf_target");
        let m = Metrics {
            reconcile_runs: Counter::default(),
            reconcile_errors: Counter::default(),
            drift_repairs: Counter::default(),
            errors: Family::default(),
            volumes: Family::default(),
            capacity: Family::default(),
            vfs_in_use: Family::default(),
            connected: Family::default(),
            registry: Registry::default(),
        };
        registry.register("reconcile_runs", "Reconcile runs", m.reconcile_runs.clone());
        registry.register(
            "reconcile_errors",
            "Volumes a reconcile run could not converge",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "drift_repairs",
            "Volumes whose kernel state had drifted and was rebuilt, or half-done work finished",
            m.drift_repairs.clone(),
        );
        registry.register(
            "api_errors",
            "API requests answered with an error, by HTTP status",
            m.errors.clone(),
        );
        registry.register("volumes", "Volumes by state", m.volumes.clone());
        registry.register(
            "capacity_bytes",
            "Bytes used by volumes and free for new ones, per PF",
            m.capacity.clone(),
        );
        registry.register(
            "vfs_in_use",
            "VFs holding a volume, per PF",
            m.vfs_in_use.clone(),
        );
        registry.register(
            "connected_hosts",
            "Hosts connected to a volume's subsystem (kernels that show nvmet controllers)",
            m.connected.clone(),
        );
        Metrics { registry, ..m }
    }

    /// One reconcile run: how many volumes it repaired or finished, how many failed.
    pub fn reconciled(&self, repaired: usize, failed: usize) {
        self.reconcile_runs.inc();
        self.drift_repairs.inc_by(repaired as u64);
        self.reconcile_errors.inc_by(failed as u64);
    }

    /// An API request answered with error status `status`.
    pub fn error(&self, status: &str) {
        self.errors
            .get_or_create(&labels(&[("status", status)]))
            .inc();
    }

    /// The text exposition, with the gauges set to `o`.
    pub fn render(&self, o: &Observed) -> Result<String, std::fmt::Error> {
        self.volumes.clear();
        for (state, n) in &o.volumes {
            self.volumes
                .get_or_create(&labels(&[("state", state)]))
                .set(*n);
        }
        self.capacity.clear();
        self.vfs_in_use.clear();
        for p in &o.pfs {
            self.capacity
                .get_or_create(&labels(&[("pf", &p.pf), ("kind", "used")]))
                .set(p.used_bytes);
            self.capacity
                .get_or_create(&labels(&[("pf", &p.pf), ("kind", "free")]))
                .set(p.free_bytes);
            self.vfs_in_use
                .get_or_create(&labels(&[("pf", &p.pf)]))
                .set(p.vfs_in_use);
        }
        self.connected.clear();
        for (volume, n) in &o.connected {
            self.connected
                .get_or_create(&labels(&[("volume", volume)]))
                .set(*n);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_count_and_gauges_show_only_what_was_observed() {
        let m = Metrics::new();
        m.reconciled(2, 1);
        m.reconciled(0, 0);
        m.error("409");
        let text = m
            .render(&Observed {
                volumes: vec![("ready".into(), 2)],
                pfs: vec![PfObserved {
                    pf: "0000:01:00.0".into(),
                    used_bytes: 100,
                    free_bytes: 50,
                    vfs_in_use: 2,
                }],
                connected: vec![("vol1".into(), 1)],
            })
            .expect("render");
        for line in [
            "nvmf_target_reconcile_runs_total 2",
            "nvmf_target_drift_repairs_total 2",
            "nvmf_target_reconcile_errors_total 1",
            "nvmf_target_api_errors_total{status=\"409\"} 1",
            "nvmf_target_volumes{state=\"ready\"} 2",
            "nvmf_target_capacity_bytes{pf=\"0000:01:00.0\",kind=\"free\"} 50",
            "nvmf_target_vfs_in_use{pf=\"0000:01:00.0\"} 2",
            "nvmf_target_connected_hosts{volume=\"vol1\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        let later = m.render(&Observed::default()).expect("render");
        assert!(!later.contains("vol1"), "a gauge outlived its observation");
    }
}
