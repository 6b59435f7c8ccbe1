//! Redacting `Debug` for the generated messages that carry registry secrets
//! (`pullwatch.v1.PullCredential`, CRI `AuthConfig`): build.rs tells prost to skip their
//! derived `Debug`, and these print which fields are set, never their values, so a
//! `{:?}` of a `CheckTask` or a `PullImageRequest` in a log line shows no secret.

use std::fmt;

/// Shows whether a secret field is set, never its value.
struct Secret<'a>(&'a str);

impl fmt::Debug for Secret<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("<redacted>")
        }
    }
}

impl fmt::Debug for crate::proto::PullCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullCredential")
            .field("source", &self.source)
            .field("username", &Secret(&self.username))
            .field("password", &Secret(&self.password))
            .field("identity_token", &Secret(&self.identity_token))
            .field("registry_token", &Secret(&self.registry_token))
            .finish()
    }
}

impl fmt::Debug for crate::cri::AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("username", &Secret(&self.username))
            .field("password", &Secret(&self.password))
            .field("auth", &Secret(&self.auth))
            .field("server_address", &self.server_address)
            .field("identity_token", &Secret(&self.identity_token))
            .field("registry_token", &Secret(&self.registry_token))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use crate::cri::{AuthConfig, ImageSpec, PullImageRequest};
    use crate::proto::{CheckTask, PullCredential};

    const SECRET: &str = "pw-CANARY-redact-7f3";

    #[test]
    fn debug_of_credential_messages_shows_no_secret() {
        let task = CheckTask {
            image: "reg.io/app:v1".into(),
            credentials: vec![PullCredential {
                source: "secret/ns/regcred".into(),
                username: SECRET.into(),
                password: SECRET.into(),
                identity_token: SECRET.into(),
                registry_token: String::new(),
            }],
            ..Default::default()
        };
        let printed = format!("{task:?} {task:#?}");
        assert!(!printed.contains(SECRET), "{printed}");
        assert!(printed.contains("secret/ns/regcred"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
        assert!(printed.contains("registry_token: \"\""), "{printed}");

        let pull = PullImageRequest {
            image: Some(ImageSpec {
                image: "reg.io/app:v1".into(),
                ..Default::default()
            }),
            auth: Some(AuthConfig {
                username: SECRET.into(),
                password: SECRET.into(),
                auth: SECRET.into(),
                server_address: "reg.io".into(),
                identity_token: SECRET.into(),
                registry_token: SECRET.into(),
            }),
            ..Default::default()
        };
        let printed = format!("{pull:?} {pull:#?}");
        assert!(!printed.contains(SECRET), "{printed}");
        assert!(printed.contains("reg.io"), "{printed}");
    }
}
