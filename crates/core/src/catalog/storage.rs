//! The `storage:` block as iceberg FileIO properties (`s3.*`), the one storage stack for data
//! files, metadata, manifests and window-state checkpoints.

use std::collections::HashMap;

use crate::config::StorageConfig;

/// FileIO properties for `storage`; empty when nothing is set (the AWS defaults apply).
pub fn storage_properties(storage: &StorageConfig) -> HashMap<String, String> {
    let mut props = HashMap::new();
    let mut set = |key: &str, value: Option<&str>| {
        if let Some(value) = value {
            props.insert(key.to_string(), value.to_string());
        }
    };
    set(iceberg::io::S3_ENDPOINT, storage.endpoint.as_deref());
    set(iceberg::io::S3_REGION, storage.region.as_deref());
    set(
        iceberg::io::S3_ACCESS_KEY_ID,
        storage.access_key_id.as_ref().map(|s| s.expose()),
    );
    set(
        iceberg::io::S3_SECRET_ACCESS_KEY,
        storage.secret_access_key.as_ref().map(|s| s.expose()),
    );
    set(
        iceberg::io::S3_SESSION_TOKEN,
        storage.session_token.as_ref().map(|s| s.expose()),
    );
    if storage.path_style_access {
        props.insert(
            iceberg::io::S3_PATH_STYLE_ACCESS.to_string(),
            "true".to_string(),
        );
    }
    props
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(yaml: &str) -> StorageConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn settings_become_fileio_properties_and_secrets_are_never_shown() {
        let config = storage(
            "endpoint: http://127.0.0.1:8333\nregion: eu-west-1\npath_style_access: true\naccess_key_id: AKIA123\nsecret_access_key: s3cr3t\n",
        );
        let props = storage_properties(&config);
        assert_eq!(props["s3.endpoint"], "http://127.0.0.1:8333");
        assert_eq!(props["s3.region"], "eu-west-1");
        assert_eq!(props["s3.path-style-access"], "true");
        assert_eq!(props["s3.access-key-id"], "AKIA123");
        assert_eq!(props["s3.secret-access-key"], "s3cr3t");
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("AKIA123"),
            "{shown}"
        );
        assert!(storage_properties(&StorageConfig::default()).is_empty());
    }
}
