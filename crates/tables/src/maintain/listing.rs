//! Listing a folder of the warehouse (iceberg's FileIO cannot list): the local file system,
//! or S3 through OpenDAL with the table's own storage properties.

use std::time::SystemTime;

use iceberg::io::FileIO;

/// A file found under a folder.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its location, in the same form as the table's paths.
    pub path: String,
    /// When it was last written, where the store says.
    pub modified: Option<SystemTime>,
}

/// Every file under `folder` (recursively); an absent folder lists as empty.
pub async fn list(file_io: &FileIO, folder: &str) -> Result<Vec<Listed>, std::io::Error> {
    let folder = folder.trim_end_matches('/');
    if let Some(rest) = folder
        .strip_prefix("s3://")
        .or(folder.strip_prefix("s3a://"))
    {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let scheme = &folder[..folder.len() - rest.len()];
        return list_s3(file_io, bucket, prefix)
            .await
            .map(|files| {
                files
                    .into_iter()
                    .map(|(key, modified)| Listed {
                        path: format!("{scheme}{bucket}/{key}"),
                        modified,
                    })
                    .collect()
            })
            .map_err(std::io::Error::other);
    }
    let local = folder.strip_prefix("file://").unwrap_or(folder).to_string();
    let with_scheme = folder.starts_with("file://");
    tokio::task::spawn_blocking(move || walk(&local, with_scheme))
        .await
        .map_err(std::io::Error::other)?
}

fn walk(root: &str, with_scheme: bool) -> Result<Vec<Listed>, std::io::Error> {
    let mut found = Vec::new();
    let mut folders = vec![std::path::PathBuf::from(root)];
    while let Some(folder) = folders.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                folders.push(entry.path());
            } else {
                let path = entry.path().display().to_string();
                found.push(Listed {
                    path: if with_scheme {
                        format!("file://{path}")
                    } else {
                        path
                    },
                    modified: meta.modified().ok(),
                });
            }
        }
    }
    Ok(found)
}

async fn list_s3(
    file_io: &FileIO,
    bucket: &str,
    prefix: &str,
) -> opendal::Result<Vec<(String, Option<SystemTime>)>> {
    let props = file_io.config().props();
    let get = |key: &str| props.get(key).cloned();
    let mut config = opendal::services::S3Config::default();
    config.bucket = bucket.to_string();
    config.endpoint = get(iceberg::io::S3_ENDPOINT);
    config.region = get(iceberg::io::S3_REGION)
        .or(get(iceberg::io::CLIENT_REGION))
        .or(Some("us-east-1".into()));
    config.access_key_id = get(iceberg::io::S3_ACCESS_KEY_ID);
    config.secret_access_key = get(iceberg::io::S3_SECRET_ACCESS_KEY);
    config.session_token = get(iceberg::io::S3_SESSION_TOKEN);
    config.enable_virtual_host_style = !get(iceberg::io::S3_PATH_STYLE_ACCESS)
        .is_some_and(|v| matches!(v.to_lowercase().as_str(), "true" | "t" | "1" | "on"));
    let operator = opendal::Operator::from_config(config)?.finish();
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    let entries = operator.list_with(&prefix).recursive(true).await?;
    Ok(entries
        .into_iter()
        .filter(|e| e.metadata().is_file())
        .map(|e| {
            let modified = e.metadata().last_modified().map(SystemTime::from);
            (e.path().to_string(), modified)
        })
        .collect())
}
