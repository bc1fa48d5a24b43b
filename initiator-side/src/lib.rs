//! `nvmf-initiator`: the compute node agent.
//!
//! What exists so far (see ARCHITECTURE.md in this folder for the whole plan):
//!
//! | module | job |
//! |---|---|
//! | [`api`] | the attach API: routes, the service behind one lock with its supervised processes, the OpenAPI document |
//! | [`config`] | the TOML configuration, checked whole; the host identity files |
//! | [`store`] | the attachment records in SQLite (`<state_dir>/state.db`, private: it holds secrets) |
//! | [`paths`] | one path: reuse the subsystem's controller at that address or connect one; disconnect only what the agent made and nobody else uses; the `Fabrics` trait |
//! | [`namespace`] | wait (bounded) for the subsystem's namespace block device, multipath head first; NGUID check, size |
//! | [`vdpa`] | the vdpa-blk processes: the `Launcher` trait, start detached and read the ready line, alive by pid and start time, stop, stats over the control socket, adoption after an agent restart |
//! | [`metrics`] | the Prometheus registry: API errors, supervision events, attachments by state, path states, restarts, I/O counters |
//! | [`holders`] | who uses a device: processes with it open, stacked block devices, mounts |
//! | [`supervise`] | restart policy with backoff and the supervision pass over the running processes |
//! | [`attach`] | the attachment service: attach (paths, namespace, vdpa-blk; rollback of what the call made), idempotent on the same spec, conflict on another; detach (refused while the device is used unless forced); list/get with live health; reconcile after a crash |
//! | [`snippets`] | what to hand a VMM (QEMU, libvirt) or a container, with the shared-memory requirement |
pub mod api;
pub mod attach;
pub mod config;
pub mod holders;
pub mod metrics;
pub mod namespace;
pub mod paths;
pub mod snippets;
pub mod store;
pub mod supervise;
pub mod vdpa;
