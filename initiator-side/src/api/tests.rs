//! The attach API over a real socket, on the fake kernel and fake launcher the attachment
//! service's tests use; its OpenAPI document against the committed one; schemathesis.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::attach::tests::{bed, host, Bed, NGUID, SECRET, VOL};

struct Server {
    dir: tempfile::TempDir,
    socket: PathBuf,
    service: Shared,
    rt: tokio::runtime::Runtime,
    /// The fake kernel's tree and its store (kept alive with the server).
    _bed_dir: tempfile::TempDir,
}

fn server() -> Server {
    let Bed {
        dir: bed_dir,
        config,
        store,
        fabrics,
        launcher,
        proc_root,
    } = bed();
    let root = fabrics.sysfs.root();
    let service = Arc::new(Mutex::new(Service {
        config,
        store,
        fabrics: Box::new(fabrics),
        launcher: Box::new(launcher),
        host: host(),
        root,
        proc_root,
        metrics: Arc::new(Metrics::new()),
        supervised: Vec::new(),
        policy: RestartPolicy::default(),
        namespace_timeout: Duration::from_millis(300),
    }));
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("api.sock");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (s, r) = (socket.clone(), router(Arc::clone(&service)));
    rt.spawn(async move { nvmf_service::serve::serve_unix(&s, r, std::future::pending()).await });
    for _ in 0..100 {
        if UnixStream::connect(&socket).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Server {
        dir,
        socket,
        service,
        rt,
        _bed_dir: bed_dir,
    }
}

/// One request over the socket; the status and the body's text.
fn raw(s: &Server, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut c = UnixStream::connect(&s.socket).expect("connect");
    let body = body.unwrap_or("");
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut out = String::new();
    c.read_to_string(&mut out).expect("read");
    let (head, rest) = out.split_once("\r\n\r\n").expect("a response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (code, rest.to_string())
}

/// The same, with the JSON body (Null when empty; chunked bodies cut to the JSON).
fn call(s: &Server, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (code, rest) = raw(s, method, path, body);
    let json = match (rest.find(['{', '[']), rest.rfind(['}', ']'])) {
        (Some(a), Some(b)) => serde_json::from_str(&rest[a..=b]).expect("json body"),
        _ => Value::Null,
    };
    (code, json)
}

fn attach_body(mode: &str) -> String {
    json!({
        "nqn": VOL,
        "paths": [{"trtype": "rdma", "traddr": "192.0.2.1", "trsvcid": 4420}],
        "mode": mode,
        "nguid": NGUID,
        "dhchap_secret": SECRET,
    })
    .to_string()
}

#[test]
fn an_attachment_goes_through_its_life_over_the_socket() {
    let s = server();
    assert_eq!(
        call(&s, "GET", "/healthz", None),
        (200, json!({"status": "ok"}))
    );
    let (code, v) = call(
        &s,
        "POST",
        "/v1/attachments",
        Some(&attach_body("vhost-vdpa")),
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["state"], "ready");
    assert_eq!(v["copy_mode"], "zero-copy", "{v}");
    assert!(
        v["snippets"]["qemu_fastest"]["command_line"]
            .as_str()
            .is_some_and(|c| c.contains("vhost-vdpa-device-pci")),
        "{v}"
    );
    assert!(
        v.to_string().find(SECRET).is_none(),
        "a secret in the answer"
    );
    let id = v["id"].as_str().expect("id").to_string();
    let (code, again) = call(
        &s,
        "POST",
        "/v1/attachments",
        Some(&attach_body("vhost-vdpa")),
    );
    assert_eq!((code, again["id"].clone()), (200, json!(id)), "idempotent");
    let (code, e) = call(
        &s,
        "POST",
        "/v1/attachments",
        Some(&attach_body("virtio-vdpa")),
    );
    assert_eq!((code, e["error"].clone()), (409, json!("conflict")), "{e}");
    assert_eq!(
        s.service.lock().expect("lock").supervised.len(),
        1,
        "supervised"
    );
    let (code, list) = call(&s, "GET", "/v1/attachments", None);
    assert_eq!((code, list[0]["id"].clone()), (200, json!(id)));
    let (code, one) = call(&s, "GET", &format!("/v1/attachments/{id}"), None);
    assert_eq!(code, 200);
    assert_eq!(one["vdpa"]["alive"], true, "{one}");
    assert_eq!(one["controllers"][0]["state"], "live", "{one}");
    let (code, text) = raw(&s, "GET", "/metrics", None);
    assert_eq!(code, 200);
    for line in [
        "nvmf_initiator_attachments{state=\"ready\"} 1".to_string(),
        format!("nvmf_initiator_io{{attachment=\"{id}\",counter=\"bytes_read\"}} 4096"),
        "nvmf_initiator_api_errors_total{status=\"409\"} 1".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
    }
    assert_eq!(
        call(&s, "DELETE", &format!("/v1/attachments/{id}"), None).0,
        204
    );
    assert_eq!(s.service.lock().expect("lock").supervised.len(), 0);
    let (code, e) = call(&s, "GET", &format!("/v1/attachments/{id}"), None);
    assert_eq!((code, e["error"].clone()), (404, json!("not_found")));
    assert_eq!(call(&s, "GET", "/v1/attachments", None).1, json!([]));
}

#[test]
fn bad_input_and_refused_connects_are_4xx_naming_the_cause_and_change_nothing() {
    let s = server();
    let wrong = attach_body("virtio-vdpa").replace(
        SECRET,
        "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:"
            .replace("AAEC", "AAED")
            .as_str(),
    );
    for (body, code, kind) in [
        ("{not json".to_string(), 400, "invalid"),
        (
            attach_body("virtio-vdpa").replace("\"mode\"", "\"colour\": 1, \"mode\""),
            400,
            "invalid",
        ),
        (
            attach_body("virtio-vdpa").replace(VOL, "not an nqn"),
            400,
            "invalid",
        ),
        (attach_body("vhost-net"), 400, "invalid"),
        (
            attach_body("virtio-vdpa").replace("192.0.2.1", "203.0.113.9"),
            422,
            "unreachable",
        ),
    ] {
        let (c, e) = call(&s, "POST", "/v1/attachments", Some(&body));
        assert_eq!((c, e["error"].clone()), (code, json!(kind)), "{body}: {e}");
        assert!(e["detail"].as_str().is_some_and(|d| !d.is_empty()), "{e}");
    }
    let (c, e) = call(&s, "POST", "/v1/attachments", Some(&wrong));
    assert!(c == 400 || c == 422, "{c} {e}");
    assert!(
        s.service
            .lock()
            .expect("lock")
            .store
            .attachments()
            .expect("list")
            .is_empty(),
        "a refused attach left a record"
    );
    let (c, e) = call(&s, "DELETE", "/v1/attachments/nope?force=maybe", None);
    assert_eq!((c, e["error"].clone()), (400, json!("invalid")));
    let (c, e) = call(&s, "GET", "/v2/nothing", None);
    assert_eq!((c, e["error"].clone()), (404, json!("not_found")));
}

#[test]
fn the_committed_openapi_document_is_the_generated_one() {
    let committed = include_str!("../../openapi.json");
    assert!(
        committed == openapi_json(),
        "initiator-side/openapi.json differs from the API: run \
         `cargo run -p nvmf-initiator -- openapi > initiator-side/openapi.json` and commit it"
    );
}

/// schemathesis (PyPI; `.ci/run` installs it) against the committed document, on the TCP
/// listener over the fakes: no 5xx, every answer in the schema.
#[test]
fn schemathesis_finds_no_server_error_and_no_answer_outside_the_schema() {
    let s = server();
    let doc = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"));
    let r = router(Arc::clone(&s.service));
    if let Err(e) = nvmf_service::testing::schemathesis(&s.rt, r, doc, s.dir.path()) {
        panic!("{e}");
    }
}
