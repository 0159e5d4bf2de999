//! The `upload_logo` handler: take a registered team's logo bytes from PostgreSQL, store them
//! through a [`Storage`], set the team's `logo_url`, and drop the bytes.
//!
//! Idempotent: a retry after the file was written but before the row was updated writes the
//! same file again under the same name; a retry after the update finds no bytes and reports
//! the stored URL. No connection is held while the storage call runs.

pub mod cloudinary;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use domain::jobs::upload_logo::UploadLogo;
use domain::registrations::{self, LogoState};
use engine::config::{ConfigError, Source, boolean};
use futures::future::BoxFuture;

use crate::runtime::breaker::Guards;
use crate::runtime::handlers::JobContext;
use crate::runtime::job::{JobError, JobResult};
use cloudinary::CloudinarySettings;

/// Where logos go and what happens to their bytes afterwards.
#[derive(Debug, Clone)]
pub struct UploadSettings {
    /// `UPLOADS_DIR`: where logos are stored (the API serves them at `/files/<name>`).
    pub uploads_dir: PathBuf,
    /// Cloudinary, when configured: logos go there instead of `uploads_dir`.
    pub cloudinary: Option<CloudinarySettings>,
    /// `LOGO_KEEP_AFTER_UPLOAD` (default false): keep a logo's bytes in PostgreSQL after its
    /// upload succeeded, for `LOGO_RETENTION_HOURS` after it (as for a given-up upload), so
    /// that it can be uploaded again elsewhere; by default they are dropped with the upload.
    pub keep_logo_bytes: bool,
}

/// Default `UPLOADS_DIR` (the API's default too).
pub const DEFAULT_UPLOADS_DIR: &str = "./.data/uploads";

impl UploadSettings {
    /// Read and validate.
    pub fn from_source(src: &(impl Source + ?Sized)) -> Result<Self, ConfigError> {
        let uploads_dir = src
            .get("UPLOADS_DIR")
            .unwrap_or_else(|| DEFAULT_UPLOADS_DIR.to_owned());
        if uploads_dir.trim().is_empty() {
            return Err(ConfigError::new("UPLOADS_DIR", "must name a directory"));
        }
        Ok(Self {
            uploads_dir: PathBuf::from(uploads_dir),
            cloudinary: CloudinarySettings::from_source(src)?,
            keep_logo_bytes: boolean(src, "LOGO_KEEP_AFTER_UPLOAD", false)?,
        })
    }
}

/// Where logos go: [`LocalStorage`] (the embedded default) or [`cloudinary::Cloudinary`],
/// chosen once at start-up.
pub trait Storage: Send + Sync {
    /// Store `bytes` under `name` (from [`file_name`]) and return the URL they are served at.
    /// A store behind an external service passes each call to it through `guards`.
    fn put<'a>(
        &'a self,
        name: &'a str,
        content_type: &'a str,
        bytes: Vec<u8>,
        guards: &'a Guards,
    ) -> BoxFuture<'a, Result<String, StorageError>>;
}

/// Why a logo could not be stored, said as what the queue should do.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum StorageError {
    /// A transient failure (disk, network, a 5xx): retry with the kind's backoff.
    #[error("storage failed: {0}")]
    Transient(String),
    /// A transient failure with a known wait (a 429's Retry-After).
    #[error("storage failed: {message}")]
    RetryAfter {
        /// What went wrong.
        message: String,
        /// How long the service asked us to wait.
        after: Duration,
    },
    /// The storage refuses this logo for good (bad credentials, a bad file).
    #[error("storage refused the logo: {0}")]
    Refused(String),
    /// The service's breaker or rate limit said not now: nothing was called.
    #[error("storage call held back for {0:?}")]
    Snoozed(Duration),
}

impl From<StorageError> for JobError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Transient(_) => JobError::Retry(e.to_string()),
            StorageError::RetryAfter { ref message, after } => JobError::RetryAfter {
                message: format!("storage failed: {message}"),
                after,
            },
            StorageError::Refused(_) => JobError::Permanent(e.to_string()),
            StorageError::Snoozed(d) => JobError::Snooze(d),
        }
    }
}

/// Files in one directory, served by the API at `/files/<name>`.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    dir: PathBuf,
}

impl LocalStorage {
    /// Files under `dir`, created on first use.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

impl Storage for LocalStorage {
    fn put<'a>(
        &'a self,
        name: &'a str,
        _content_type: &'a str,
        bytes: Vec<u8>,
        _guards: &'a Guards,
    ) -> BoxFuture<'a, Result<String, StorageError>> {
        Box::pin(async move {
            let io = |e: std::io::Error| StorageError::Transient(e.to_string());
            tokio::fs::create_dir_all(&self.dir).await.map_err(io)?;
            // Written beside the target and renamed over it, so a reader (the API) never sees
            // half a file, and a crash leaves at worst a stray temporary file.
            let tmp = self
                .dir
                .join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
            let write = async {
                let mut f = tokio::fs::File::create(&tmp).await?;
                tokio::io::AsyncWriteExt::write_all(&mut f, &bytes).await?;
                f.sync_all().await?;
                tokio::fs::rename(&tmp, self.dir.join(name)).await
            };
            if let Err(e) = write.await {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(io(e));
            }
            Ok(format!("/files/{name}"))
        })
    }
}

/// The stored file's name: the team id in lower case and the extension of its type, e.g.
/// `icct-001.png`. Deterministic, so a retry overwrites rather than duplicates, and made of
/// `[a-z0-9.-]` only (team ids are checked by the job's args).
pub fn file_name(team_id: &str, content_type: &str) -> Option<String> {
    let ext = match content_type {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        _ => return None,
    };
    registrations::is_team_id(team_id).then(|| format!("{}.{ext}", team_id.to_ascii_lowercase()))
}

/// Run one `upload_logo` job.
pub async fn run(
    args: UploadLogo,
    ctx: JobContext,
    pool: Pool,
    storage: Arc<dyn Storage>,
    keep_bytes: bool,
) -> JobResult {
    let conn = pool
        .get()
        .await
        .map_err(|e| JobError::Retry(e.to_string()))?;
    let state = registrations::logo(&conn, &args.team_id)
        .await
        .map_err(|e| JobError::Retry(e.to_string()))?;
    drop(conn);
    let (content_type, bytes) = match state {
        LogoState::NoTeam => {
            return Err(JobError::Permanent(format!("no team {:?}", args.team_id)));
        }
        // Stored by an earlier attempt: a retry after an ambiguous failure succeeds as is.
        LogoState::Stored(Some(url)) => {
            return Ok(Some(serde_json::json!({ "logo_url": url })));
        }
        // Neither stored nor kept: the bytes were cleaned up after the upload was given up
        // (LOGO_RETENTION_HOURS). Saying "done" would hide that the team has no logo.
        LogoState::Stored(None) => {
            return Err(JobError::Permanent(format!(
                "team {:?} has no logo to upload: its bytes are no longer kept",
                args.team_id
            )));
        }
        LogoState::Pending {
            content_type,
            bytes,
        } => (content_type, bytes),
    };
    let name = file_name(&args.team_id, &content_type).ok_or_else(|| {
        JobError::Permanent(format!("cannot store a logo of type {content_type:?}"))
    })?;
    let url = storage
        .put(&name, &content_type, bytes, &ctx.guards)
        .await?;
    let conn = pool
        .get()
        .await
        .map_err(|e| JobError::Retry(e.to_string()))?;
    let found = registrations::logo_stored(&conn, &args.team_id, &url, keep_bytes)
        .await
        .map_err(|e| JobError::Retry(e.to_string()))?;
    if !found {
        return Err(JobError::Permanent(format!(
            "team {:?} was deleted during the upload",
            args.team_id
        )));
    }
    Ok(Some(serde_json::json!({ "logo_url": url })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_and_follow_the_type() {
        assert_eq!(
            file_name("ICCT-001", "image/png").as_deref(),
            Some("icct-001.png")
        );
        assert_eq!(
            file_name("ICCT-1000", "image/jpeg").as_deref(),
            Some("icct-1000.jpg")
        );
        assert_eq!(file_name("ICCT-001", "image/gif"), None);
        assert_eq!(file_name("../../etc-001", "image/png"), None);
    }

    #[test]
    fn settings_default_to_local_files_and_take_overrides() {
        let none: &[(&str, &str)] = &[];
        let s = UploadSettings::from_source(none).unwrap();
        assert_eq!(s.uploads_dir, PathBuf::from(DEFAULT_UPLOADS_DIR));
        assert!(s.cloudinary.is_none());
        assert!(!s.keep_logo_bytes, "bytes go with the upload by default");
        let s = UploadSettings::from_source(&[("LOGO_KEEP_AFTER_UPLOAD", "true")][..]).unwrap();
        assert!(s.keep_logo_bytes);
        for (name, value) in [("UPLOADS_DIR", " "), ("LOGO_KEEP_AFTER_UPLOAD", "maybe")] {
            let err = UploadSettings::from_source(&[(name, value)][..]).unwrap_err();
            assert_eq!(err.name, name, "{value}: {err}");
        }
    }

    #[tokio::test]
    async fn local_storage_writes_atomically_and_overwrites_on_retry() {
        let dir = std::env::temp_dir().join(format!("quayside-store-{}", uuid::Uuid::new_v4()));
        let s = LocalStorage::new(&dir);
        let g = Guards::default();
        let url = s
            .put("a.png", "image/png", b"one".to_vec(), &g)
            .await
            .unwrap();
        assert_eq!(url, "/files/a.png");
        s.put("a.png", "image/png", b"two".to_vec(), &g)
            .await
            .unwrap();
        assert_eq!(std::fs::read(dir.join("a.png")).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.png"], "no temporary file is left behind");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
