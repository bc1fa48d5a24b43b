//! Prometheus metrics (`prometheus-client`): counters the supervisor and the API bump, and
//! gauges set at each scrape from what the store, sysfs and the vdpa-blk control sockets said
//! then (an attachment whose stats could not be read has no I/O gauges, rather than zeros).

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

/// One attachment as a scrape saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachmentObserved {
    pub id: String,
    /// Each path: (address, controller state as sysfs shows it, or `gone`).
    pub paths: Vec<(String, String)>,
    /// vdpa-blk restarts so far (none without a vdpa-blk record).
    pub restarts: Option<u64>,
    /// I/O counters summed over the queues, when the control socket answered.
    pub io: Option<IoObserved>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoObserved {
    pub requests: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub errors: u64,
}

/// What a scrape measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Attachments per state.
    pub by_state: Vec<(String, i64)>,
    pub attachments: Vec<AttachmentObserved>,
}

/// The registry and every metric in it.
pub struct Metrics {
    registry: Registry,
    errors: Family<Labels, Counter>,
    supervisor_events: Family<Labels, Counter>,
    attachments: Family<Labels, Gauge>,
    path_state: Family<Labels, Gauge>,
    restarts: Family<Labels, Gauge>,
    io: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("nvmf_initiator");
        let m = Metrics {
            registry: Registry::default(),
            errors: Family::default(),
            supervisor_events: Family::default(),
            attachments: Family::default(),
            path_state: Family::default(),
            restarts: Family::default(),
            io: Family::default(),
        };
        registry.register(
            "api_errors",
            "API requests answered with an error, by HTTP status",
            m.errors.clone(),
        );
        registry.register(
            "supervisor_events",
            "vdpa-blk processes found dead, restarted, failed to restart, given up",
            m.supervisor_events.clone(),
        );
        registry.register("attachments", "Attachments by state", m.attachments.clone());
        registry.register(
            "path_state",
            "1 for each path of an attachment in the state its label says",
            m.path_state.clone(),
        );
        registry.register(
            "vdpa_blk_restarts",
            "Restarts of an attachment's vdpa-blk process",
            m.restarts.clone(),
        );
        registry.register(
            "io",
            "An attachment's I/O counters from its vdpa-blk, summed over queues",
            m.io.clone(),
        );
        Metrics { registry, ..m }
    }

    /// An API request answered with error status `status`.
    pub fn error(&self, status: &str) {
        self.errors
            .get_or_create(&labels(&[("status", status)]))
            .inc();
    }

    /// A supervision event of `kind` (`died`, `restarted`, `restart_failed`, `gave_up`).
    pub fn supervisor(&self, kind: &str) {
        self.supervisor_events
            .get_or_create(&labels(&[("event", kind)]))
            .inc();
    }

    /// The text exposition, with the gauges set to `o`.
    pub fn render(&self, o: &Observed) -> Result<String, std::fmt::Error> {
        self.attachments.clear();
        for (state, n) in &o.by_state {
            self.attachments
                .get_or_create(&labels(&[("state", state)]))
                .set(*n);
        }
        self.path_state.clear();
        self.restarts.clear();
        self.io.clear();
        for a in &o.attachments {
            for (addr, state) in &a.paths {
                self.path_state
                    .get_or_create(&labels(&[
                        ("attachment", &a.id),
                        ("path", addr),
                        ("state", state),
                    ]))
                    .set(1);
            }
            if let Some(r) = a.restarts {
                self.restarts
                    .get_or_create(&labels(&[("attachment", &a.id)]))
                    .set(i64::try_from(r).unwrap_or(i64::MAX));
            }
            if let Some(io) = a.io {
                for (what, v) in [
                    ("requests", io.requests),
                    ("bytes_read", io.bytes_read),
                    ("bytes_written", io.bytes_written),
                    ("errors", io.errors),
                ] {
                    self.io
                        .get_or_create(&labels(&[("attachment", &a.id), ("counter", what)]))
                        .set(i64::try_from(v).unwrap_or(i64::MAX));
                }
            }
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
    fn gauges_show_what_the_scrape_saw_and_counters_count() {
        let m = Metrics::new();
        m.error("409");
        m.supervisor("restarted");
        m.supervisor("restarted");
        let text = m
            .render(&Observed {
                by_state: vec![("ready".into(), 1)],
                attachments: vec![
                    AttachmentObserved {
                        id: "a1".into(),
                        paths: vec![("rdma:192.0.2.1:4420".into(), "live".into())],
                        restarts: Some(2),
                        io: Some(IoObserved {
                            requests: 10,
                            bytes_read: 4096,
                            bytes_written: 0,
                            errors: 0,
                        }),
                    },
                    AttachmentObserved {
                        id: "a2".into(),
                        paths: vec![],
                        restarts: None,
                        io: None,
                    },
                ],
            })
            .expect("render");
        for line in [
            "nvmf_initiator_api_errors_total{status=\"409\"} 1",
            "nvmf_initiator_supervisor_events_total{event=\"restarted\"} 2",
            "nvmf_initiator_attachments{state=\"ready\"} 1",
            "nvmf_initiator_path_state{attachment=\"a1\",path=\"rdma:192.0.2.1:4420\",state=\"live\"} 1",
            "nvmf_initiator_vdpa_blk_restarts{attachment=\"a1\"} 2",
            "nvmf_initiator_io{attachment=\"a1\",counter=\"bytes_read\"} 4096",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(
            !text.contains("attachment=\"a2\",counter"),
            "no I/O gauges without stats"
        );
        assert!(
            !text.contains("vdpa_blk_restarts{attachment=\"a2\"}"),
            "no restart gauge without a vdpa-blk record"
        );
        let later = m.render(&Observed::default()).expect("render");
        assert!(!later.contains("a1"), "a gauge outlived its observation");
    }
}
