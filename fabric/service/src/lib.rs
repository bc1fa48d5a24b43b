//! `nvmf-service`: the daemon plumbing `nvmf-target` and `nvmf-initiator` share, written
//! once: the API's JSON error body ([`error`]), serving a router on a private Unix socket and
//! on an opt-in TCP listener behind a bearer token ([`serve`], [`auth`]), opening the SQLite
//! store with the durability both need ([`store`]), and the CLI client's transport
//! ([`client`]); and, for the daemons' tests, schemathesis against a committed OpenAPI
//! document ([`testing`]). No NVMe logic and no policy live here.

pub mod auth;
pub mod client;
pub mod error;
pub mod serve;
pub mod store;
pub mod testing;
