//! The CLI client of the agent's API: one request over the Unix socket (`nvmf-service`'s
//! transport), the answer as a table for people or the API's JSON (`--json`) for scripts; an
//! error answer is the exit status and its `error (status): detail` line.

use nvmf_service::client::{call_and_show, show_text};
use serde_json::Value;

pub const DEFAULT_SOCKET: &str = "/run/nvmf-initiator/api.sock";

pub use nvmf_service::client::ClientArgs;

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

pub fn attachment_rows(v: &Value) {
    let rows: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Null => {
            println!("done");
            return;
        }
        one => vec![one],
    };
    println!(
        "{:<18} {:<9} {:<11} {:<20} {:<6} PATHS / NQN",
        "ID", "STATE", "MODE", "DEVICE", "ALIVE"
    );
    for r in &rows {
        let paths: Vec<String> = r["controllers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                format!(
                    "{}={}",
                    c["controller"].as_str().unwrap_or("?"),
                    c["state"].as_str().unwrap_or("?")
                )
            })
            .collect();
        println!(
            "{:<18} {:<9} {:<11} {:<20} {:<6} {} {}",
            r["id"].as_str().unwrap_or(""),
            r["state"].as_str().unwrap_or(""),
            r["mode"].as_str().unwrap_or(""),
            r["device"].as_str().unwrap_or("-"),
            r["vdpa"]["alive"]
                .as_bool()
                .map_or("-", |a| if a { "yes" } else { "no" }),
            paths.join(","),
            r["nqn"].as_str().unwrap_or(""),
        );
    }
    if let [one] = rows.as_slice() {
        if let Some(cmd) = one["snippets"]["qemu_fastest"]["command_line"].as_str() {
            println!("\nQEMU (fastest, not migratable): {cmd}");
        }
        if let Some(cmd) = one["snippets"]["qemu_migratable"]["command_line"].as_str() {
            println!("QEMU (migratable, libblkio): {cmd}");
        }
        if let Some(note) = one["snippets"]["shared_memory"].as_str() {
            println!("{note}");
        }
        if let Some(dev) = one["snippets"]["block_device"].as_str() {
            println!("\nblock device: {dev}");
        }
    }
}

/// Prints the answer as it is (metrics text).
pub fn raw_text(args: &ClientArgs, path: &str) -> anyhow::Result<()> {
    Ok(show_text(&args.endpoint(DEFAULT_SOCKET)?, path)?)
}
