//! DH-HMAC-CHAP secrets in the text form `nvme gen-dhchap-key` writes and the kernel takes
//! (`DHHC-1:<hmac>:<base64(secret || crc32(secret))>:`): generated for a host that has none,
//! and checked when given, so a mistyped key is refused at registration instead of failing
//! every connect.

use std::io::Read;

/// Why a key text is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not `DHHC-1:NN:BASE64:`.
    #[error("a DH-HMAC-CHAP key has the form DHHC-1:NN:BASE64: (as `nvme gen-dhchap-key` prints)")]
    Form,
    #[error("key transformation {0:?} is not one of 00 (none), 01 (SHA-256), 02 (SHA-384), 03 (SHA-512)")]
    /// An unknown transformation (hash) number.
    Hmac(String),
    /// The key part is not base64.
    #[error("the key is not valid base64")]
    Base64,
    #[error("a {len}-byte secret: expected 32, 48 or 64 bytes ({hint})")]
    /// A secret of a length no transformation takes.
    Length {
        /// Its length in bytes.
        len: usize,
        /// What lengths fit.
        hint: &'static str,
    },
    /// The CRC-32 after the secret does not match it.
    #[error("the key's CRC does not match: it was mistyped or cut")]
    Crc,
    /// `/dev/urandom` could not be read.
    #[error("no random bytes for a new key: {0}")]
    Random(String),
}

/// A checked secret.
#[derive(Clone, PartialEq, Eq)]
pub struct DhchapKey {
    /// 0 none, 1 SHA-256, 2 SHA-384, 3 SHA-512.
    pub hmac: u8,
    secret: Vec<u8>,
}

impl std::fmt::Debug for DhchapKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        write!(
            f,
            "DhchapKey {{ hmac: {}, {} bytes }}",
            self.hmac,
            self.secret.len()
        )
    }
}

impl DhchapKey {
    /// Parses and checks `text`.
    pub fn parse(text: &str) -> Result<DhchapKey, KeyError> {
        let rest = text.trim().strip_prefix("DHHC-1:").ok_or(KeyError::Form)?;
        let (hmac, rest) = rest.split_once(':').ok_or(KeyError::Form)?;
        let b64 = rest.strip_suffix(':').ok_or(KeyError::Form)?;
        let hmac_id = match hmac {
            "00" => 0,
            "01" => 1,
            "02" => 2,
            "03" => 3,
            other => return Err(KeyError::Hmac(other.to_string())),
        };
        let raw = base64_decode(b64).ok_or(KeyError::Base64)?;
        let len = raw.len().checked_sub(4).ok_or(KeyError::Length {
            len: 0,
            hint: "nothing before the CRC",
        })?;
        let want = match hmac_id {
            1 => Some(32),
            2 => Some(48),
            3 => Some(64),
            _ => None,
        };
        if !matches!(len, 32 | 48 | 64) || want.is_some_and(|w| w != len) {
            return Err(KeyError::Length {
                len,
                hint: "SHA-256 keys are 32 bytes, SHA-384 48, SHA-512 64",
            });
        }
        let (secret, crc) = raw.split_at(len);
        if crc32(secret).to_le_bytes() != crc {
            return Err(KeyError::Crc);
        }
        Ok(DhchapKey {
            hmac: hmac_id,
            secret: secret.to_vec(),
        })
    }

    /// A new untransformed secret of `len` bytes (32, 48 or 64) from the kernel's random source.
    pub fn generate(len: usize) -> Result<DhchapKey, KeyError> {
        if !matches!(len, 32 | 48 | 64) {
            return Err(KeyError::Length {
                len,
                hint: "choose one of these",
            });
        }
        let mut secret = vec![0u8; len];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut secret))
            .map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(DhchapKey { hmac: 0, secret })
    }

    /// The text form (what `nvme gen-dhchap-key` prints, and `dhchap_key` takes).
    pub fn to_text(&self) -> String {
        let mut raw = self.secret.clone();
        raw.extend_from_slice(&crc32(&self.secret).to_le_bytes());
        format!("DHHC-1:{:02}:{}:", self.hmac, base64_encode(&raw))
    }
}

/// CRC-32 (IEEE 802.3, reflected), as zlib's `crc32()` that nvme-cli uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (ci, chunk) in bytes.chunks(4).enumerate() {
        let last = ci == bytes.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|b| **b == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for (i, b) in chunk.iter().enumerate() {
            let v = if i >= 4 - pad {
                0
            } else {
                B64.iter().position(|c| c == b)? as u32
            };
            n |= v << (18 - 6 * i);
        }
        let take = 3 - pad;
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Printed by nvme-cli 2.3: `nvme gen-dhchap-key -s 000102...1f`.
    const NVME_CLI_00: &str = "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
    /// `nvme gen-dhchap-key -m 2 -l 48 -n nqn.2014-08.org.example:h1 -s 00..2f` (transformed).
    const NVME_CLI_02: &str =
        "DHHC-1:02:WMVN3y3d0PH7Y9W2VWttKhADvYw4gjHSeoHe2ikRN2T1LTF8RHyoaqRKqaJYpiCQWjyAkw==:";

    #[test]
    fn keys_nvme_cli_printed_are_accepted_and_written_back_the_same() {
        let k = DhchapKey::parse(NVME_CLI_00).expect("accepted");
        assert_eq!(k.hmac, 0);
        assert_eq!(k.secret, (0u8..32).collect::<Vec<_>>());
        assert_eq!(k.to_text(), NVME_CLI_00);
        let k = DhchapKey::parse(NVME_CLI_02).expect("accepted");
        assert_eq!((k.hmac, k.secret.len()), (2, 48));
        assert_eq!(k.to_text(), NVME_CLI_02);
    }

    #[test]
    fn mistyped_cut_or_malformed_keys_are_refused_saying_why() {
        let typo = NVME_CLI_00.replace("KfiaR", "KfiaS");
        assert_eq!(DhchapKey::parse(&typo), Err(KeyError::Crc));
        assert_eq!(
            DhchapKey::parse("DHHC-1:00:AAEC:"),
            Err(KeyError::Length {
                len: 0,
                hint: "nothing before the CRC"
            })
        );
        assert_eq!(DhchapKey::parse("secret"), Err(KeyError::Form));
        assert_eq!(
            DhchapKey::parse("DHHC-1:07:AAAA:"),
            Err(KeyError::Hmac("07".into()))
        );
        assert_eq!(DhchapKey::parse("DHHC-1:00:A*AA:"), Err(KeyError::Base64));
        // A SHA-256 transformation with a 48-byte secret.
        let k = DhchapKey {
            hmac: 1,
            secret: vec![7; 48],
        };
        assert!(matches!(
            DhchapKey::parse(&k.to_text()),
            Err(KeyError::Length { len: 48, .. })
        ));
    }

    #[test]
    fn generated_keys_are_random_valid_and_never_printed_by_debug() {
        let a = DhchapKey::generate(32).expect("key");
        let b = DhchapKey::generate(32).expect("key");
        assert_ne!(a, b);
        assert_eq!(DhchapKey::parse(&a.to_text()).expect("valid"), a);
        assert_eq!(DhchapKey::generate(64).expect("key").secret.len(), 64);
        assert!(DhchapKey::generate(16).is_err());
        assert!(!format!("{a:?}").contains(&a.to_text()[10..20]));
    }

    #[test]
    fn crc32_and_base64_match_their_standards() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(base64_encode(b"foob"), "Zm9vYg==");
        assert_eq!(base64_decode("Zm9vYg==").as_deref(), Some(&b"foob"[..]));
        assert_eq!(base64_decode("Zm9=Yg=="), None);
    }
}
