//! The CLI client of the daemon's API: one HTTP request over the Unix socket, the answer as
//! a table for people or the API's JSON (`--json`) for scripts; an error answer is the exit
//! status and its `error (status): detail` line.

use nvmf_service::client::{call_and_show, show_text};

use anyhow::Context;
use serde_json::Value;

pub const DEFAULT_SOCKET: &str = "/run/nvmf-target/api.sock";

pub use nvmf_service::client::ClientArgs;

/// A size with an optional K/M/G/T suffix (powers of 1024).
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .with_context(|| format!("size {s:?}: expected a number with an optional K/M/G/T suffix"))
}

pub fn client(
    args: &ClientArgs,
    method: &str,
    path: &str,
    body: Option<Value>,
    table: fn(&Value),
) -> anyhow::Result<()> {
    Ok(call_and_show(
        &args.endpoint(DEFAULT_SOCKET)?,
        args.json,
        method,
        path,
        body.as_ref(),
        table,
    )?)
}

/// The rows of an answer (a list, one object, or nothing: `None` after printing "done").
fn rows(v: &Value) -> Option<Vec<&Value>> {
    match v {
        Value::Array(a) => Some(a.iter().collect()),
        Value::Null => {
            println!("done");
            None
        }
        one => Some(vec![one]),
    }
}

pub fn volume_rows(v: &Value) {
    let Some(rows) = rows(v) else { return };
    println!(
        "{:<20} {:<9} {:>14} {:<14} {:>3} SUBSYSTEM NQN",
        "NAME", "STATE", "SIZE", "PF", "VF"
    );
    for r in rows {
        println!(
            "{:<20} {:<9} {:>14} {:<14} {:>3} {}",
            r["name"].as_str().unwrap_or(""),
            r["state"].as_str().unwrap_or(""),
            r["size_bytes"]
                .as_u64()
                .map(|b| b.to_string())
                .unwrap_or_else(|| "-".into()),
            r["pf"].as_str().unwrap_or("-"),
            r["vf"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            r["subsystem_nqn"].as_str().unwrap_or(""),
        );
    }
}

pub fn host_rows(v: &Value) {
    let Some(rows) = rows(v) else { return };
    for r in &rows {
        if let Some(k) = r["dhchap_key"].as_str() {
            println!("generated DH-HMAC-CHAP key (shown once): {k}");
        }
    }
    println!("{:<64} {:<13} {:<9} KEY", "NQN", "HASH", "DHGROUP");
    for r in rows {
        println!(
            "{:<64} {:<13} {:<9} {}",
            r["nqn"].as_str().unwrap_or(""),
            r["hash"].as_str().unwrap_or(""),
            r["dhgroup"].as_str().unwrap_or(""),
            if r["has_key"] == true { "yes" } else { "no" }
        );
    }
}

pub fn volume_host_rows(v: &Value) {
    println!("volume {}", v["volume"].as_str().unwrap_or(""));
    for h in v["allowed"].as_array().into_iter().flatten() {
        println!("  allowed   {}", h.as_str().unwrap_or(""));
    }
    match v["connected"].as_array() {
        Some(c) => {
            for h in c {
                println!(
                    "  connected {} (controller {}, from {})",
                    h["hostnqn"].as_str().unwrap_or(""),
                    h["cntlid"],
                    h["host_traddr"].as_str().unwrap_or("?")
                );
            }
        }
        None => println!(
            "  connected: unknown ({})",
            v["connections_unknown"].as_str().unwrap_or("")
        ),
    }
    if let Some(r) = v.get("revoked") {
        println!("  {} revoked: {r}", v["host"].as_str().unwrap_or(""));
        if let Some(c) = v["still_connected"].as_array() {
            for h in c {
                println!("  still connected on controller {}", h["cntlid"]);
            }
        }
    }
}

pub fn inventory_rows(v: &Value) {
    for pf in v.as_array().into_iter().flatten() {
        println!(
            "PF {} {} ({}): VFs {}/{} enabled, VQ {} of {} assigned, VI {} of {} assigned, namespace management {}",
            pf["pf"].as_str().unwrap_or(""),
            pf["model"].as_str().unwrap_or("").trim(),
            pf["serial"].as_str().unwrap_or("").trim(),
            pf["enabled_vfs"],
            pf["total_vfs"],
            pf["vq"]["assigned"],
            pf["vq"]["total"],
            pf["vi"]["assigned"],
            pf["vi"]["total"],
            pf["namespace_management"],
        );
        println!("  {:>5} {:>14} {:>6} ATTACHED", "NSID", "SIZE", "BLOCK");
        for n in pf["namespaces"].as_array().into_iter().flatten() {
            println!(
                "  {:>5} {:>14} {:>6} {}",
                n["nsid"].to_string(),
                n["size_bytes"].to_string(),
                n["block_bytes"].to_string(),
                n["attached"]
            );
        }
    }
}

/// Prints the answer as it is (metrics text).
pub fn raw_text(args: &ClientArgs, path: &str) -> anyhow::Result<()> {
    Ok(show_text(&args.endpoint(DEFAULT_SOCKET)?, path)?)
}
