//! The CLI client's transport: one HTTP/1.1 request to the daemon, over its Unix socket or
//! its TCP listener with the bearer token, answered with the status and the body (chunked
//! bodies joined); the CLI's common flags.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use serde_json::Value;

/// Where the daemon's API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`, and the token the listener wants.
    Tcp {
        addr: String,
        token: String,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp { addr, .. } => write!(f, "tcp://{addr}"),
        }
    }
}

/// The flags every CLI command of both daemons takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The daemon's API socket (default: the daemon's own, under /run).
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// The daemon's TCP listener, HOST:PORT, instead of the socket (needs --token-file).
    #[arg(long, global = true)]
    pub tcp: Option<String>,
    /// The file holding the TCP listener's bearer token (mode 0600).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Why the flags name no usable endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("--tcp needs --token-file: the TCP listener answers 401 without the token")]
    NoToken,
    #[error("--token-file without --tcp: the socket needs no token")]
    TokenWithoutTcp,
    #[error("--socket and --tcp name two endpoints: give one")]
    Both,
    #[error(transparent)]
    Token(#[from] crate::auth::TokenError),
}

impl ClientArgs {
    /// The endpoint the flags name, `default_socket` when they name none.
    pub fn endpoint(&self, default_socket: &str) -> Result<Endpoint, EndpointError> {
        match (&self.socket, &self.tcp, &self.token_file) {
            (Some(_), Some(_), _) => Err(EndpointError::Both),
            (_, None, Some(_)) => Err(EndpointError::TokenWithoutTcp),
            (_, Some(_), None) => Err(EndpointError::NoToken),
            (_, Some(addr), Some(t)) => Ok(Endpoint::Tcp {
                addr: addr.clone(),
                token: crate::auth::read_token(t)?,
            }),
            (Some(p), None, None) => Ok(Endpoint::Unix(p.clone())),
            (None, None, None) => Ok(Endpoint::Unix(PathBuf::from(default_socket))),
        }
    }
}

/// The request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the API at {endpoint} (is the daemon running?): {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the API at {endpoint}: {source}")]
    Io {
        endpoint: String,
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
    socket: &Endpoint,
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
pub fn show_text(socket: &Endpoint, path: &str) -> Result<(), ClientError> {
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
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String), ClientError> {
    let shown = endpoint.to_string();
    let io = |source| ClientError::Io {
        endpoint: shown.clone(),
        source,
    };
    let connect = |source| ClientError::Connect {
        endpoint: shown.clone(),
        source,
    };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (mut c, auth): (Box<dyn ReadWrite>, String) = match endpoint {
        Endpoint::Unix(p) => (
            Box::new(UnixStream::connect(p).map_err(connect)?),
            String::new(),
        ),
        Endpoint::Tcp { addr, token } => (
            Box::new(TcpStream::connect(addr).map_err(connect)?),
            format!("Authorization: Bearer {token}\r\n"),
        ),
    };
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
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

/// A connection to the API, whichever transport.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// One request: the status and the JSON body (`Null` when empty).
pub fn request(
    socket: &Endpoint,
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
        let e = request(
            &Endpoint::Unix("/nonexistent/api.sock".into()),
            "GET",
            "/healthz",
            None,
        )
        .expect_err("no daemon");
        assert!(e.to_string().contains("/nonexistent/api.sock"), "{e}");
    }

    #[test]
    fn the_flags_name_one_endpoint_and_tcp_needs_a_private_token() {
        use std::os::unix::fs::PermissionsExt;
        let args = |socket: Option<&str>, tcp: Option<&str>, token: Option<PathBuf>| ClientArgs {
            socket: socket.map(PathBuf::from),
            tcp: tcp.map(String::from),
            token_file: token,
            json: false,
        };
        assert_eq!(
            args(None, None, None)
                .endpoint("/run/d/api.sock")
                .expect("default"),
            Endpoint::Unix("/run/d/api.sock".into())
        );
        assert_eq!(
            args(Some("/x.sock"), None, None)
                .endpoint("/d")
                .expect("socket"),
            Endpoint::Unix("/x.sock".into())
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let t = dir.path().join("token");
        std::fs::write(&t, "0123456789abcdef0123\n").expect("token");
        std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            args(None, Some("127.0.0.1:8470"), Some(t.clone()))
                .endpoint("/d")
                .expect("tcp"),
            Endpoint::Tcp {
                addr: "127.0.0.1:8470".into(),
                token: "0123456789abcdef0123".into()
            }
        );
        assert!(matches!(
            args(None, Some("127.0.0.1:8470"), None).endpoint("/d"),
            Err(EndpointError::NoToken)
        ));
        assert!(matches!(
            args(Some("/x"), Some("127.0.0.1:1"), Some(t.clone())).endpoint("/d"),
            Err(EndpointError::Both)
        ));
        assert!(matches!(
            args(None, None, Some(t)).endpoint("/d"),
            Err(EndpointError::TokenWithoutTcp)
        ));
    }
}
