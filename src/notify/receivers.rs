//! The receivers named in the daemon's config: where each sends, and the secrets it needs
//! (read from files once, never shown in logs or `Debug` output).

use std::collections::HashMap;
use std::path::Path;

use super::NotifyError;
use crate::config::NotifierConfig;

pub(super) enum Receiver {
    Alertmanager { url: String },
    Slack { url: Secret },
    Webhook { url: String, key: Option<Secret> },
}

/// Bytes that never appear in `Debug` output or logs.
pub(super) struct Secret(pub(super) Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

fn read_secret(name: &str, path: &Path) -> Result<Secret, NotifyError> {
    let text = std::fs::read(path).map_err(|source| NotifyError::Secret {
        name: name.into(),
        path: path.display().to_string(),
        source,
    })?;
    let trimmed = text.trim_ascii().to_vec();
    if trimmed.is_empty() {
        return Err(NotifyError::EmptySecret {
            name: name.into(),
            path: path.display().to_string(),
        });
    }
    Ok(Secret(trimmed))
}

/// Every configured receiver by its name; reads the secret files.
pub(super) fn from_config(
    configs: &[NotifierConfig],
) -> Result<HashMap<String, Receiver>, NotifyError> {
    let mut receivers = HashMap::new();
    for c in configs {
        let r = match c {
            NotifierConfig::Alertmanager { url, .. } => Receiver::Alertmanager {
                url: format!("{}/api/v2/alerts", url.trim_end_matches('/')),
            },
            NotifierConfig::Slack { name, url_file } => Receiver::Slack {
                url: read_secret(name, url_file)?,
            },
            NotifierConfig::Webhook {
                name,
                url,
                secret_file,
            } => Receiver::Webhook {
                url: url.clone(),
                // The HMAC key: `whsec_<base64>` decoded, other text as it is.
                key: secret_file
                    .as_deref()
                    .map(|p| read_secret(name, p))
                    .transpose()?
                    .map(|s| Secret(super::signing::decode_key(&s.0))),
            },
        };
        receivers.insert(c.name().to_string(), r);
    }
    Ok(receivers)
}
