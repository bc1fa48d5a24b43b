//! Registering hosts: an NQN with its DH-HMAC-CHAP settings, checked before they are stored
//! (a bad key or an unknown hash or group is refused and changes nothing). A host that comes
//! without a key under a policy that requires one gets a generated key, returned once.

use fabric::nqn::Nqn;

use crate::store::{HostRecord, Store, StoreError};
use fabric::dhchap::DhchapKey;

/// A registration request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterHost {
    pub nqn: String,
    pub dhchap_key: Option<String>,
    /// The controller's key, for bidirectional authentication.
    pub dhchap_ctrl_key: Option<String>,
    /// `hmac(sha256)` (default), `hmac(sha384)` or `hmac(sha512)`.
    pub hash: Option<String>,
    /// `null` (default) or an ffdhe group.
    pub dhgroup: Option<String>,
}

/// Why a registration was refused (nothing was stored).
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

const HASHES: [&str; 3] = ["hmac(sha256)", "hmac(sha384)", "hmac(sha512)"];
const GROUPS: [&str; 6] = [
    "null",
    "ffdhe2048",
    "ffdhe3072",
    "ffdhe4096",
    "ffdhe6144",
    "ffdhe8192",
];

/// Registers (or re-keys) a host; the generated key, if one was made, is returned once.
pub fn register(
    store: &mut Store,
    req: &RegisterHost,
    require_dhchap: bool,
) -> Result<(HostRecord, Option<String>), HostError> {
    let nqn = Nqn::new(&req.nqn).map_err(|e| HostError::Invalid(e.to_string()))?;
    if nqn.is_discovery() {
        return Err(HostError::Invalid("the discovery NQN is not a host".into()));
    }
    let check = |what: &str, k: &Option<String>| -> Result<Option<String>, HostError> {
        k.as_ref()
            .map(|t| {
                DhchapKey::parse(t)
                    .map(|k| k.to_text())
                    .map_err(|e| HostError::Invalid(format!("{what}: {e}")))
            })
            .transpose()
    };
    let key = check("dhchap_key", &req.dhchap_key)?;
    let ctrl_key = check("dhchap_ctrl_key", &req.dhchap_ctrl_key)?;
    if ctrl_key.is_some() && key.is_none() && !require_dhchap {
        return Err(HostError::Invalid(
            "dhchap_ctrl_key without dhchap_key: bidirectional authentication needs both".into(),
        ));
    }
    let hash = req.hash.clone().unwrap_or_else(|| HASHES[0].to_string());
    if !HASHES.contains(&hash.as_str()) {
        return Err(HostError::Invalid(format!(
            "hash {hash:?}: expected one of {HASHES:?}"
        )));
    }
    let dhgroup = req.dhgroup.clone().unwrap_or_else(|| GROUPS[0].to_string());
    if !GROUPS.contains(&dhgroup.as_str()) {
        return Err(HostError::Invalid(format!(
            "dhgroup {dhgroup:?}: expected one of {GROUPS:?}"
        )));
    }
    let (key, generated) = match key {
        Some(k) => (Some(k), None),
        None if require_dhchap => {
            let k = DhchapKey::generate(32)
                .map_err(|e| HostError::Invalid(e.to_string()))?
                .to_text();
            (Some(k.clone()), Some(k))
        }
        None => (None, None),
    };
    let record = HostRecord {
        nqn: nqn.as_str().to_string(),
        dhchap_key: key,
        dhchap_ctrl_key: ctrl_key,
        hash,
        dhgroup,
    };
    store.put_host(&record)?;
    Ok((record, generated))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
    const KEY: &str = "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("store");
        (dir, s)
    }

    #[test]
    fn a_host_without_a_key_gets_one_under_the_default_policy_returned_once() {
        let (_d, mut s) = store();
        let (rec, generated) = register(
            &mut s,
            &RegisterHost {
                nqn: HOST.into(),
                ..Default::default()
            },
            true,
        )
        .expect("register");
        let key = generated.expect("generated");
        assert!(DhchapKey::parse(&key).is_ok());
        assert_eq!(rec.dhchap_key.as_deref(), Some(key.as_str()));
        assert_eq!(
            (rec.hash.as_str(), rec.dhgroup.as_str()),
            ("hmac(sha256)", "null")
        );
        // A given key: nothing generated; re-registering re-keys.
        let (rec, generated) = register(
            &mut s,
            &RegisterHost {
                nqn: HOST.into(),
                dhchap_key: Some(KEY.into()),
                ..Default::default()
            },
            true,
        )
        .expect("rekey");
        assert_eq!((rec.dhchap_key.as_deref(), generated), (Some(KEY), None));
        assert_eq!(s.hosts().expect("hosts").len(), 1);
        // Without the policy, a host may go without a key.
        let other = "nqn.2014-08.org.example:h2";
        let (rec, generated) = register(
            &mut s,
            &RegisterHost {
                nqn: other.into(),
                ..Default::default()
            },
            false,
        )
        .expect("no key");
        assert_eq!((rec.dhchap_key, generated), (None, None));
    }

    #[test]
    fn bad_registrations_are_refused_and_change_nothing() {
        let (_d, mut s) = store();
        for (req, needle) in [
            (
                RegisterHost {
                    nqn: "host1".into(),
                    ..Default::default()
                },
                "NQN",
            ),
            (
                RegisterHost {
                    nqn: "nqn.2014-08.org.nvmexpress.discovery".into(),
                    ..Default::default()
                },
                "discovery",
            ),
            (
                RegisterHost {
                    nqn: HOST.into(),
                    dhchap_key: Some(KEY.replace("KfiaR", "KfiaS")),
                    ..Default::default()
                },
                "CRC",
            ),
            (
                RegisterHost {
                    nqn: HOST.into(),
                    dhchap_ctrl_key: Some("nope".into()),
                    ..Default::default()
                },
                "dhchap_ctrl_key",
            ),
            (
                RegisterHost {
                    nqn: HOST.into(),
                    hash: Some("md5".into()),
                    ..Default::default()
                },
                "hash",
            ),
            (
                RegisterHost {
                    nqn: HOST.into(),
                    dhgroup: Some("ffdhe1024".into()),
                    ..Default::default()
                },
                "dhgroup",
            ),
        ] {
            let e = register(&mut s, &req, true).expect_err("refused");
            assert!(e.to_string().contains(needle), "{req:?}: {e}");
        }
        assert!(s.hosts().expect("hosts").is_empty());
    }
}
