//! `GET /files/{name}`: the files the `upload_logo` job stored under `UPLOADS_DIR` (team
//! logos), served by name. Only plain names are served: letters, digits, `.`, `_` and `-`,
//! not starting with a dot, so no path can leave the directory.

use std::path::PathBuf;

use poem_openapi::param::Path;
use poem_openapi::payload::Binary;
use poem_openapi::{ApiResponse, OpenApi};

use super::Tag;
use crate::error::ApiError;

/// The file operations.
pub struct FilesApi {
    dir: PathBuf,
}

impl FilesApi {
    /// Serve the files under `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
}

/// A stored file.
#[derive(ApiResponse)]
pub enum FileResponse {
    /// The file's bytes.
    #[oai(status = 200)]
    Ok(
        Binary<Vec<u8>>,
        /// From the name's extension: `image/png`, `image/jpeg`, else
        /// `application/octet-stream`.
        #[oai(header = "Content-Type")]
        String,
        /// Stored files are replaced only by a new upload under the same name.
        #[oai(header = "Cache-Control")]
        String,
    ),
}

/// Longest name served.
const MAX_NAME: usize = 255;

/// True for a name that cannot leave the directory.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The content type of a stored file, from its extension.
pub fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        _ => "application/octet-stream",
    }
}

#[OpenApi(tag = "Tag::Files")]
impl FilesApi {
    /// A stored file (team logos are linked from `logo_url`). 404 for a name that is not a
    /// plain file name or names no file.
    #[oai(path = "/files/:name", method = "get")]
    async fn get(
        &self,
        /// E.g. `icct-001.png`.
        name: Path<String>,
    ) -> Result<FileResponse, ApiError> {
        let not_found = || ApiError::not_found("no such file");
        if !is_safe_name(&name.0) {
            return Err(not_found());
        }
        let bytes = match tokio::fs::read(self.dir.join(&name.0)).await {
            Ok(b) => b,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.kind() == std::io::ErrorKind::IsADirectory =>
            {
                return Err(not_found());
            }
            Err(e) => return Err(ApiError::internal(e)),
        };
        Ok(FileResponse::Ok(
            Binary(bytes),
            content_type(&name.0).to_owned(),
            "public, max-age=300".to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_served() {
        for ok in ["icct-001.png", "a_b.JPG", "x"] {
            assert!(is_safe_name(ok), "{ok}");
        }
        for bad in [
            "", "..", "../x", "a/b", ".env", "a..b", "a\\b", "a b", "%2e%2e",
        ] {
            assert!(!is_safe_name(bad), "{bad}");
        }
        assert_eq!(content_type("icct-001.png"), "image/png");
        assert_eq!(content_type("a.JPEG"), "image/jpeg");
        assert_eq!(content_type("a.exe"), "application/octet-stream");
    }
}
