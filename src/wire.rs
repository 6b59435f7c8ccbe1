//! The agent ↔ aggregator wire format in one place: conversions between the protocol
//! ([`crate::proto`], from `proto/pullwatch/v1`) and the shared types both binaries
//! check with (statuses, check modes, credentials). The agent and the aggregator
//! convert only through these, so the two ends cannot drift apart.
//!
//! Protocol enums travel as `i32` (proto3 keeps unknown values); an unspecified or
//! unknown value converts to [`NotOnWire`], and the caller decides what it means (the
//! agent's default mode, a result without a status).

use std::sync::Arc;

use crate::credentials::{RegistryCredential, SourcedCredential};
use crate::proto;
use crate::status::{CheckMode, CheckStatus};

/// `source` of a credential the aggregator sent without naming where it came from.
pub(crate) const UNNAMED_CREDENTIAL_SOURCE: &str = "aggregator";

/// A protocol enum value that stands for none of ours: unspecified, or a value this
/// build does not know (a newer peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the wire value {0} is unspecified or unknown")]
pub struct NotOnWire(pub i32);

impl From<CheckStatus> for proto::Status {
    fn from(status: CheckStatus) -> Self {
        match status {
            CheckStatus::Available => proto::Status::Available,
            CheckStatus::Absent => proto::Status::Absent,
            CheckStatus::BadImageFormat => proto::Status::BadImageFormat,
            CheckStatus::RegistryUnavailable => proto::Status::RegistryUnavailable,
            CheckStatus::AuthenticationFailure => proto::Status::AuthenticationFailure,
            CheckStatus::AuthorizationFailure => proto::Status::AuthorizationFailure,
            CheckStatus::RateLimited => proto::Status::RateLimited,
            CheckStatus::UnknownError => proto::Status::UnknownError,
        }
    }
}

impl TryFrom<i32> for CheckStatus {
    type Error = NotOnWire;

    /// The status a wire `Status` field stands for.
    fn try_from(wire: i32) -> Result<Self, NotOnWire> {
        Ok(
            match proto::Status::try_from(wire).map_err(|_| NotOnWire(wire))? {
                proto::Status::Unspecified => return Err(NotOnWire(wire)),
                proto::Status::Available => CheckStatus::Available,
                proto::Status::Absent => CheckStatus::Absent,
                proto::Status::BadImageFormat => CheckStatus::BadImageFormat,
                proto::Status::RegistryUnavailable => CheckStatus::RegistryUnavailable,
                proto::Status::AuthenticationFailure => CheckStatus::AuthenticationFailure,
                proto::Status::AuthorizationFailure => CheckStatus::AuthorizationFailure,
                proto::Status::RateLimited => CheckStatus::RateLimited,
                proto::Status::UnknownError => CheckStatus::UnknownError,
            },
        )
    }
}

impl From<CheckMode> for proto::CheckMode {
    fn from(mode: CheckMode) -> Self {
        match mode {
            CheckMode::Auto => proto::CheckMode::Auto,
            CheckMode::Pull => proto::CheckMode::Pull,
            CheckMode::Resolve => proto::CheckMode::Resolve,
        }
    }
}

impl TryFrom<i32> for CheckMode {
    type Error = NotOnWire;

    /// The mode a wire `CheckMode` field stands for.
    fn try_from(wire: i32) -> Result<Self, NotOnWire> {
        match proto::CheckMode::try_from(wire).map_err(|_| NotOnWire(wire))? {
            proto::CheckMode::Unspecified => Err(NotOnWire(wire)),
            proto::CheckMode::Auto => Ok(CheckMode::Auto),
            proto::CheckMode::Pull => Ok(CheckMode::Pull),
            proto::CheckMode::Resolve => Ok(CheckMode::Resolve),
        }
    }
}

impl From<&SourcedCredential> for proto::PullCredential {
    fn from(sourced: &SourcedCredential) -> Self {
        let credential = &sourced.credential;
        proto::PullCredential {
            source: sourced.source.to_string(),
            username: credential.username.clone(),
            password: credential.password.clone(),
            identity_token: credential.identity_token.clone().unwrap_or_default(),
            registry_token: credential.registry_token.clone().unwrap_or_default(),
        }
    }
}

impl From<&proto::PullCredential> for SourcedCredential {
    /// Empty strings on the wire are absent tokens; an unnamed source is
    /// [`UNNAMED_CREDENTIAL_SOURCE`].
    fn from(wire: &proto::PullCredential) -> Self {
        let present = |value: &String| (!value.is_empty()).then(|| value.clone());
        SourcedCredential {
            source: if wire.source.is_empty() {
                Arc::from(UNNAMED_CREDENTIAL_SOURCE)
            } else {
                Arc::from(wire.source.as_str())
            },
            credential: RegistryCredential {
                username: wire.username.clone(),
                password: wire.password.clone(),
                identity_token: present(&wire.identity_token),
                registry_token: present(&wire.registry_token),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_and_unspecified_is_none() {
        for status in CheckStatus::ALL {
            let wire = proto::Status::from(status);
            assert_ne!(wire, proto::Status::Unspecified);
            // The wire enum names end in the same words as the status names.
            assert_eq!(
                wire.as_str_name(),
                format!("STATUS_{}", status.as_str().to_uppercase())
            );
            assert_eq!(CheckStatus::try_from(wire as i32), Ok(status));
        }
        let unspecified = proto::Status::Unspecified as i32;
        assert_eq!(
            CheckStatus::try_from(unspecified),
            Err(NotOnWire(unspecified))
        );
        assert_eq!(CheckStatus::try_from(99), Err(NotOnWire(99)));
    }

    #[test]
    fn every_mode_round_trips_and_unspecified_is_none() {
        for mode in CheckMode::ALL {
            let wire = proto::CheckMode::from(mode);
            assert_eq!(
                wire.as_str_name(),
                format!("CHECK_MODE_{}", mode.as_str().to_uppercase())
            );
            assert_eq!(CheckMode::try_from(wire as i32), Ok(mode));
        }
        let unspecified = proto::CheckMode::Unspecified as i32;
        assert_eq!(
            CheckMode::try_from(unspecified),
            Err(NotOnWire(unspecified))
        );
        assert_eq!(CheckMode::try_from(-1), Err(NotOnWire(-1)));
    }

    #[test]
    fn credentials_round_trip() {
        let full = SourcedCredential {
            source: Arc::from("secret/ns/pull"),
            credential: RegistryCredential {
                username: "u".into(),
                password: "p".into(),
                identity_token: Some("idt".into()),
                registry_token: Some("rt".into()),
            },
        };
        let bare = SourcedCredential {
            source: Arc::from("config.json:/root/.docker/config.json"),
            credential: RegistryCredential {
                username: "u".into(),
                password: "p".into(),
                identity_token: None,
                registry_token: None,
            },
        };
        for sourced in [full, bare] {
            let wire = proto::PullCredential::from(&sourced);
            assert_eq!(SourcedCredential::from(&wire), sourced);
        }
        // Absent tokens travel as empty strings and come back absent; a credential
        // without a source is the aggregator's.
        let wire = proto::PullCredential {
            username: "u".into(),
            ..Default::default()
        };
        let back = SourcedCredential::from(&wire);
        assert_eq!(&*back.source, UNNAMED_CREDENTIAL_SOURCE);
        assert_eq!(back.credential.identity_token, None);
        assert_eq!(back.credential.registry_token, None);
    }
}
