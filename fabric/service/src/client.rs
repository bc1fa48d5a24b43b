//! The CLI client's transport: one HTTP/1.1 request over the daemon's Unix socket, answered
//! with the status and the body (chunked bodies joined).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the API at {} (is the daemon running?): {source}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the API at {}: {source}", socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the API answered something that is not HTTP: {0:?}")]
    Malformed(String),
    #[error("the API answered {code} with a body that is not JSON: {text:?}")]
    NotJson { code: u16, text: String },
    /// The API answered with an error body.
    #[error("{kind} ({code}): {detail}")]
    Api {
        code: u16,
        kind: String,
        detail: String,
    },
}

/// The CLI's one request: an error answer becomes [`ClientError::Api`]; otherwise the JSON
/// is printed pretty (`json`) or handed to `table`.
pub fn call_and_show(
    socket: &Path,
    json: bool,
    method: &str,
    path: &str,
    body: Option<&Value>,
    table: fn(&Value),
) -> Result<(), ClientError> {
    let (code, v) = request(socket, method, path, body)?;
    if code >= 400 {
        return Err(ClientError::Api {
            code,
            kind: v["error"].as_str().unwrap_or("error").to_string(),
            detail: v["detail"].as_str().unwrap_or("").to_string(),
        });
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        );
    } else {
        table(&v);
    }
    Ok(())
}

/// Prints the answer's body as it is (metrics text); an error status is an error.
pub fn show_text(socket: &Path, path: &str) -> Result<(), ClientError> {
    let (code, text) = exchange(socket, "GET", path, None)?;
    if code >= 400 {
        return Err(ClientError::Api {
            code,
            kind: "error".into(),
            detail: text,
        });
    }
    print!("{text}");
    Ok(())
}

/// One request: the status and the body's text.
pub fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String), ClientError> {
    let io = |source| ClientError::Io {
        socket: socket.to_path_buf(),
        source,
    };
    let mut c = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        socket: socket.to_path_buf(),
        source,
    })?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(io)?;
    let mut out = Vec::new();
    c.read_to_end(&mut out).map_err(io)?;
    let out = String::from_utf8_lossy(&out);
    let (head, rest) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::Malformed(out.chars().take(200).collect()))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ClientError::Malformed(head.chars().take(200).collect()))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let text = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((code, text))
}

/// One request: the status and the JSON body (`Null` when empty).
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), ClientError> {
    let (code, text) = exchange(socket, method, path, body)?;
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).map_err(|_| ClientError::NotJson { code, text })?
    };
    Ok((code, v))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
        assert_eq!(dechunk("zz\r\n"), "");
    }

    #[test]
    fn a_missing_daemon_names_the_socket() {
        let e = request(Path::new("/nonexistent/api.sock"), "GET", "/healthz", None)
            .expect_err("no daemon");
        assert!(e.to_string().contains("/nonexistent/api.sock"), "{e}");
    }
}
