//! NVMe Qualified Names, validated per the NVMe Base Specification.
//!
//! An NQN names a host or an NVM subsystem. Two forms are valid:
//!
//! * `nqn.YYYY-MM.<reverse domain>[:<user part>]`, e.g.
//!   `nqn.2014-08.com.example:nvme:disk1`;
//! * `nqn.2014-08.org.nvmexpress:uuid:<uuid>`.
//!
//! The well-known discovery NQN `nqn.2014-08.org.nvmexpress.discovery` is of
//! the first form. Both are at most 223 bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The longest NQN the specification allows, in bytes.
pub const NQN_MAX_LEN: usize = 223;

/// The NQN of every discovery controller.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

const UUID_PREFIX: &str = "nqn.2014-08.org.nvmexpress:uuid:";

/// The rule an invalid NQN breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NqnRule {
    /// The name is empty.
    Empty,
    /// Longer than [`NQN_MAX_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Does not start with `nqn.`.
    MissingPrefix,
    /// The `YYYY-MM.` date after `nqn.` is missing or malformed.
    BadDate,
    /// The reverse domain name is missing or has an invalid label.
    BadDomain,
    /// A `:` is present but nothing follows it.
    EmptyUserPart,
    /// The `nqn.2014-08.org.nvmexpress:uuid:` form has no valid UUID.
    BadUuid,
    /// Contains a control character (NUL, newline, ...), which cannot travel
    /// through sysfs, configfs or NUL-terminated protocol fields.
    ControlCharacter,
}

impl fmt::Display for NqnRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NqnRule::Empty => write!(f, "an NQN must not be empty"),
            NqnRule::TooLong { len } => {
                write!(
                    f,
                    "an NQN is at most {NQN_MAX_LEN} bytes, this one is {len}"
                )
            }
            NqnRule::MissingPrefix => write!(f, "an NQN starts with \"nqn.\""),
            NqnRule::BadDate => write!(
                f,
                "\"nqn.\" is followed by a date \"YYYY-MM.\" with month 01-12"
            ),
            NqnRule::BadDomain => write!(
                f,
                "the date is followed by a reverse domain name of labels made of \
                 letters, digits and inner hyphens, separated by dots"
            ),
            NqnRule::EmptyUserPart => write!(f, "a ':' must be followed by a user part"),
            NqnRule::BadUuid => write!(
                f,
                "the form \"{UUID_PREFIX}\" must end in a UUID like \
                 01234567-89ab-cdef-0123-456789abcdef"
            ),
            NqnRule::ControlCharacter => write!(f, "an NQN has no control characters"),
        }
    }
}

/// An invalid NQN and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid NQN {nqn:?}: {rule}")]
pub struct NqnError {
    /// The rejected text (cut to 300 bytes so logs stay readable).
    pub nqn: String,
    /// The rule it breaks.
    pub rule: NqnRule,
}

/// A validated NVMe Qualified Name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Nqn(String);

impl Nqn {
    /// Validates `s` as an NQN.
    pub fn new(s: &str) -> Result<Self, NqnError> {
        validate(s).map_err(|rule| NqnError {
            nqn: s.chars().take(300).collect(),
            rule,
        })?;
        Ok(Self(s.to_string()))
    }

    /// The well-known discovery NQN.
    pub fn discovery() -> Self {
        Self(DISCOVERY_NQN.to_string())
    }

    /// The UUID form `nqn.2014-08.org.nvmexpress:uuid:<uuid>`, as nvme-cli
    /// builds host NQNs.
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(format!("{UUID_PREFIX}{}", uuid.hyphenated()))
    }

    /// Whether this is the well-known discovery NQN.
    pub fn is_discovery(&self) -> bool {
        self.0 == DISCOVERY_NQN
    }

    /// The UUID of a UUID-form NQN.
    pub fn uuid(&self) -> Option<Uuid> {
        self.0
            .strip_prefix(UUID_PREFIX)
            .and_then(|u| Uuid::try_parse(u).ok())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Nqn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Nqn {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for Nqn {
    type Err = NqnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for Nqn {
    type Error = NqnError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<Nqn> for String {
    fn from(n: Nqn) -> String {
        n.0
    }
}

fn validate(s: &str) -> Result<(), NqnRule> {
    if s.is_empty() {
        return Err(NqnRule::Empty);
    }
    if s.len() > NQN_MAX_LEN {
        return Err(NqnRule::TooLong { len: s.len() });
    }
    if s.chars().any(char::is_control) {
        return Err(NqnRule::ControlCharacter);
    }
    if let Some(uuid) = s.strip_prefix(UUID_PREFIX) {
        return if is_hyphenated_uuid(uuid) {
            Ok(())
        } else {
            Err(NqnRule::BadUuid)
        };
    }
    let rest = s.strip_prefix("nqn.").ok_or(NqnRule::MissingPrefix)?;
    let rest = check_date(rest)?;
    let (domain, user) = match rest.split_once(':') {
        Some((d, u)) => (d, Some(u)),
        None => (rest, None),
    };
    if domain.is_empty() || !domain.split('.').all(is_domain_label) {
        return Err(NqnRule::BadDomain);
    }
    if user == Some("") {
        return Err(NqnRule::EmptyUserPart);
    }
    Ok(())
}

/// Checks `YYYY-MM.` and returns what follows it.
fn check_date(s: &str) -> Result<&str, NqnRule> {
    let b = s.as_bytes();
    if b.len() < 8 {
        return Err(NqnRule::BadDate);
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if !digits(0..4) || b[4] != b'-' || !digits(5..7) || b[7] != b'.' {
        return Err(NqnRule::BadDate);
    }
    let month = (b[5] - b'0') * 10 + (b[6] - b'0');
    if !(1..=12).contains(&month) {
        return Err(NqnRule::BadDate);
    }
    Ok(&s[8..])
}

fn is_domain_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// Accepts only the 8-4-4-4-12 hex form (the uuid crate also takes other
/// spellings, which the specification does not).
fn is_hyphenated_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> NqnRule {
        Nqn::new(s).unwrap_err().rule
    }

    #[test]
    fn domain_form_with_user_part_is_valid() {
        let n = Nqn::new("nqn.2014-08.com.example:nvme:nvm-subsystem-sn-d78432").unwrap();
        assert_eq!(
            n.as_str(),
            "nqn.2014-08.com.example:nvme:nvm-subsystem-sn-d78432"
        );
        assert!(!n.is_discovery());
        assert_eq!(n.uuid(), None);
    }

    #[test]
    fn domain_form_without_user_part_is_valid() {
        Nqn::new("nqn.2016-06.io.spdk").unwrap();
    }

    #[test]
    fn discovery_nqn_is_accepted_and_recognised() {
        let n = Nqn::new(DISCOVERY_NQN).unwrap();
        assert!(n.is_discovery());
        assert_eq!(n, Nqn::discovery());
    }

    #[test]
    fn uuid_form_is_valid_and_yields_its_uuid() {
        let s = "nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6";
        let n = Nqn::new(s).unwrap();
        assert_eq!(
            n.uuid().unwrap().to_string(),
            "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
        );
        let u = Uuid::parse_str("f81d4fae-7dec-11d0-a765-00a0c91e6bf6").unwrap();
        assert_eq!(Nqn::from_uuid(u), n);
    }

    #[test]
    fn uuid_form_with_bad_uuid_names_the_uuid_rule() {
        assert_eq!(
            rule("nqn.2014-08.org.nvmexpress:uuid:not-a-uuid"),
            NqnRule::BadUuid
        );
        assert_eq!(
            rule("nqn.2014-08.org.nvmexpress:uuid:f81d4fae7dec11d0a76500a0c91e6bf6"),
            NqnRule::BadUuid
        );
    }

    #[test]
    fn nqn_of_223_bytes_is_accepted() {
        let base = "nqn.2014-08.com.example:";
        let s = format!("{base}{}", "a".repeat(NQN_MAX_LEN - base.len()));
        assert_eq!(s.len(), 223);
        Nqn::new(&s).unwrap();
    }

    #[test]
    fn nqn_of_224_bytes_is_rejected_as_too_long() {
        let base = "nqn.2014-08.com.example:";
        let s = format!("{base}{}", "a".repeat(NQN_MAX_LEN + 1 - base.len()));
        assert_eq!(s.len(), 224);
        assert_eq!(rule(&s), NqnRule::TooLong { len: 224 });
        let msg = Nqn::new(&s).unwrap_err().to_string();
        assert!(msg.contains("at most 223 bytes"), "{msg}");
    }

    #[test]
    fn each_broken_rule_is_named() {
        assert_eq!(rule(""), NqnRule::Empty);
        assert_eq!(rule("iqn.2014-08.com.example:x"), NqnRule::MissingPrefix);
        assert_eq!(rule("nqn.14-08.com.example"), NqnRule::BadDate);
        assert_eq!(rule("nqn.2014-13.com.example"), NqnRule::BadDate);
        assert_eq!(rule("nqn.2014-00.com.example"), NqnRule::BadDate);
        assert_eq!(rule("nqn.2014-08com.example"), NqnRule::BadDate);
        assert_eq!(rule("nqn.2014-08."), NqnRule::BadDomain);
        assert_eq!(rule("nqn.2014-08.com..example"), NqnRule::BadDomain);
        assert_eq!(rule("nqn.2014-08.com.-example"), NqnRule::BadDomain);
        assert_eq!(rule("nqn.2014-08.com.ex_ample:x"), NqnRule::BadDomain);
        assert_eq!(rule("nqn.2014-08.:user"), NqnRule::BadDomain);
        assert_eq!(rule("nqn.2014-08.com.example:"), NqnRule::EmptyUserPart);
        assert_eq!(
            rule("nqn.2014-08.com.example:a\nb"),
            NqnRule::ControlCharacter
        );
    }

    #[test]
    fn serde_round_trips_as_a_string_and_rejects_invalid_names() {
        let n = Nqn::new("nqn.2014-08.com.example:vol1").unwrap();
        let j = serde_json::to_string(&n).unwrap();
        assert_eq!(j, "\"nqn.2014-08.com.example:vol1\"");
        assert_eq!(serde_json::from_str::<Nqn>(&j).unwrap(), n);
        assert!(serde_json::from_str::<Nqn>("\"bogus\"").is_err());
    }
}
