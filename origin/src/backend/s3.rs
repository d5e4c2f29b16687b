//! The S3 backend: blobs as objects in a bucket, on AWS or any S3-compatible server
//! (MinIO, Ceph, s3s-fs in tests), through `aws-sdk-s3`.
//!
//! Invariants: `get` streams the `GetObject` body and yields exactly `Content-Length` bytes
//! or an error; a read (the answer's start, or the body's next bytes) that waits longer than
//! `read_timeout` fails as transient, so a stalled object never holds its reader for good; `put` uploads from the local file, never from memory, with one `PutObject` up
//! to `multipart_threshold` and a multipart upload above it (aborted on failure, so no
//! orphaned parts are left to bill); every SDK error is classified once, in [`classify`],
//! into not found, transient or permanent.
//!
//! Checksums: the SDK's default CRC request checksums and response validation are turned
//! down to "when required", because several S3-compatible servers reject or mishandle the
//! `aws-chunked` trailers they need, and Shoal verifies every blob's sha256 end to end anyway.
//!
//! Credentials: static keys from the config when given, otherwise the standard AWS chain
//! (environment, profile, web identity, ECS/IMDS), the one place this crate reads the
//! environment, because that is how pods get IAM roles.

use std::fmt;
use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use shoal_core::Digest;
use shoal_runtime::{ByteSize, Duration};

use super::{Backend, BackendError, BlobStream, Layout};

/// S3's smallest part (every part but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest part, and its largest single `PutObject`.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// S3's limit on the number of parts of one upload.
pub const MAX_PARTS: u64 = 10_000;
/// Parts uploaded at once per multipart upload (hard-coded): enough to fill a link from
/// one origin, few enough that many concurrent uploads do not exhaust connections.
const PART_CONCURRENCY: usize = 4;

/// Configuration of the S3 backend (`type: s3`).
#[derive(Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name. Required.
    pub bucket: String,
    /// Key prefix where the layout starts (a registry's `rootdirectory`); default empty.
    #[serde(default)]
    pub prefix: String,
    /// Key layout: `flat` for a bucket Shoal owns, `docker_registry` to serve an existing
    /// registry's bucket. Required, because guessing wrong makes every blob "missing".
    pub layout: Layout,
    /// Endpoint of an S3-compatible server (`http://127.0.0.1:9000`); default AWS.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// PEM CA certificates trusted for the endpoint beside the system's roots (an
    /// S3-compatible server with a private CA); default none.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Signing region; default `us-east-1`.
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style URLs (`http://host/bucket/key`) instead of virtual-hosted ones. Default:
    /// true when `endpoint_url` is set (what S3-compatible servers expect), false for AWS.
    #[serde(default)]
    pub force_path_style: Option<bool>,
    /// Static access key; with `secret_access_key`, or neither to use the AWS default chain.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Static secret key; never printed by `Debug`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Files larger than this are uploaded in parts; default 64MiB, at most 5GiB.
    #[serde(default = "default_multipart_threshold")]
    pub multipart_threshold: ByteSize,
    /// Size of each part; default 16MiB, between 5MiB and 5GiB. Raised automatically for a
    /// file that would otherwise need more than 10,000 parts.
    #[serde(default = "default_part_size")]
    pub part_size: ByteSize,
    /// Longest wait for a read: the answer to a `GetObject` or `HeadObject`, or the next
    /// bytes of an object's body. Past it the read fails as transient. Default 30s.
    #[serde(default = "default_read_timeout")]
    pub read_timeout: Duration,
}

fn default_region() -> String {
    "us-east-1".to_string()
}

fn default_multipart_threshold() -> ByteSize {
    ByteSize(64 << 20)
}

fn default_part_size() -> ByteSize {
    ByteSize(16 << 20)
}

fn default_read_timeout() -> Duration {
    Duration::from_secs(30)
}

impl S3Config {
    /// A config for `bucket` with every other field at its default.
    pub fn new(bucket: impl Into<String>, layout: Layout) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            prefix: String::new(),
            layout,
            endpoint_url: None,
            ca_file: None,
            region: default_region(),
            force_path_style: None,
            access_key_id: None,
            secret_access_key: None,
            multipart_threshold: default_multipart_threshold(),
            part_size: default_part_size(),
            read_timeout: default_read_timeout(),
        }
    }

    /// Checks what S3 itself would reject later, so a bad config fails at startup.
    pub fn validate(&self) -> Result<(), BackendError> {
        let invalid = |why: String| Err(BackendError::permanent(format!("invalid s3 config: {why}")));
        if self.bucket.is_empty() {
            return invalid("bucket is empty".into());
        }
        super::validate_prefix(&self.prefix)?;
        if let Some(f) = &self.ca_file {
            read_ca_file(f)?;
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return invalid("set both access_key_id and secret_access_key, or neither".into());
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size.0) {
            return invalid(format!("part_size {} is outside 5MiB..=5GiB", self.part_size));
        }
        if self.multipart_threshold.0 > MAX_PART_SIZE {
            return invalid(format!(
                "multipart_threshold {} is above the 5GiB single upload limit",
                self.multipart_threshold
            ));
        }
        if self.read_timeout.get().is_zero() {
            return invalid("read_timeout must be more than 0s".into());
        }
        Ok(())
    }

    fn path_style(&self) -> bool {
        self.force_path_style.unwrap_or(self.endpoint_url.is_some())
    }
}

/// The PEM bundle at `path`, checked to hold at least one certificate.
fn read_ca_file(path: &Path) -> Result<Vec<u8>, BackendError> {
    let bad = |why: String| BackendError::permanent(format!("invalid s3 config: ca_file {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(pem),
        Ok(_) => Err(bad("no PEM certificate in it".into())),
        Err(e) => Err(bad(e.to_string())),
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("layout", &self.layout)
            .field("endpoint_url", &self.endpoint_url)
            .field("ca_file", &self.ca_file)
            .field("region", &self.region)
            .field("force_path_style", &self.force_path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .field("read_timeout", &self.read_timeout)
            .finish()
    }
}

/// Blobs in an S3 bucket.
#[derive(Debug)]
pub struct S3Backend {
    client: Client,
    cfg: S3Config,
}

impl S3Backend {
    /// Validates the config and builds the client. Sends no request.
    pub async fn new(cfg: S3Config) -> Result<S3Backend, BackendError> {
        cfg.validate()?;
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).region(Region::new(cfg.region.clone()));
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(f) = &cfg.ca_file {
            use aws_smithy_http_client::tls;
            // The native roots stay (TrustStore's default); the bundle is added to them.
            let trust = tls::TrustStore::default().with_pem_certificate(read_ca_file(f)?);
            let ctx = tls::TlsContext::builder()
                .with_trust_store(trust)
                .build()
                .map_err(|e| BackendError::permanent(format!("s3 ca_file {}: {e}", f.display())))?;
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
                .tls_context(ctx)
                .build_https();
            loader = loader.http_client(http);
        }
        if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(id, secret, None, None, "shoal-config"));
        }
        let sdk = loader.load().await;
        let s3 = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(cfg.path_style())
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        Ok(S3Backend { client: Client::from_conf(s3), cfg })
    }

    /// The object key of `digest`.
    pub fn blob_key(&self, digest: &Digest) -> String {
        super::blob_key(self.cfg.layout, &self.cfg.prefix, digest)
    }

    /// `call`'s result, or a transient error if it has not answered within `read_timeout`.
    async fn within<T>(&self, op: &str, key: &str, call: impl Future<Output = T>) -> Result<T, BackendError> {
        let idle = self.cfg.read_timeout.get();
        tokio::time::timeout(idle, call).await.map_err(|_| stalled(op, key, idle))
    }

    async fn put_single(&self, key: &str, path: &Path, length: u64) -> Result<(), BackendError> {
        let body = file_body(path, 0, length).await?;
        self.client
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .content_length(to_i64(length))
            .body(body)
            .send()
            .await
            .map_err(|e| classify("put_object", key, e))?;
        Ok(())
    }

    async fn put_multipart(&self, key: &str, path: &Path, length: u64) -> Result<(), BackendError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("create_multipart_upload", key, e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| BackendError::transient(format!("s3 create_multipart_upload {key}: no upload id")))?
            .to_string();
        let res = self.upload_parts(key, path, length, &upload_id).await;
        if res.is_err() {
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(&self.cfg.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
            if let Err(e) = abort {
                tracing::warn!(key, upload_id, "cannot abort multipart upload: {:#}", DisplayErrorContext(&e));
            }
        }
        res
    }

    async fn upload_parts(&self, key: &str, path: &Path, length: u64, upload_id: &str) -> Result<(), BackendError> {
        let parts = plan_parts(length, self.cfg.part_size.0);
        tracing::debug!(key, length, n_parts = parts.len(), "multipart upload");
        let completed: Vec<CompletedPart> = futures::stream::iter(parts.into_iter().enumerate())
            .map(|(idx, (offset, len))| async move {
                let part_number = i32::try_from(idx + 1).expect("at most 10,000 parts");
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.cfg.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(part_number)
                    .content_length(to_i64(len))
                    .body(file_body(path, offset, len).await?)
                    .send()
                    .await
                    .map_err(|e| classify("upload_part", key, e))?;
                Ok::<_, BackendError>(CompletedPart::builder().set_e_tag(out.e_tag).part_number(part_number).build())
            })
            .buffered(PART_CONCURRENCY)
            .try_collect()
            .await?;
        self.client
            .complete_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed)).build())
            .send()
            .await
            .map_err(|e| classify("complete_multipart_upload", key, e))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Backend for S3Backend {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, BackendError> {
        let key = self.blob_key(digest);
        let head = self.client.head_object().bucket(&self.cfg.bucket).key(&key).send();
        match self.within("head_object", &key, head).await? {
            Ok(out) => Ok(Some(content_length("head_object", &key, out.content_length())?)),
            Err(e) => match classify("head_object", &key, e) {
                BackendError::NotFound => Ok(None),
                e => Err(e),
            },
        }
    }

    async fn get(&self, digest: &Digest) -> Result<BlobStream, BackendError> {
        let key = self.blob_key(digest);
        let get = self.client.get_object().bucket(&self.cfg.bucket).key(&key).send();
        let out = self.within("get_object", &key, get).await?.map_err(|e| classify("get_object", &key, e))?;
        let length = content_length("get_object", &key, out.content_length())?;
        let idle = self.cfg.read_timeout.get();
        let chunks = futures::stream::unfold(out.body, move |mut body| {
            let key = key.clone();
            async move {
                let item = match tokio::time::timeout(idle, body.next()).await {
                    Err(_) => Err(stalled("get_object", &key, idle)),
                    Ok(next) => next?.map_err(|e| {
                        BackendError::transient(format!(
                            "s3 get_object {key}: reading body: {}",
                            DisplayErrorContext(&e)
                        ))
                    }),
                };
                Some((item, body))
            }
        });
        Ok(BlobStream { length, stream: super::exact_length(length, chunks.boxed()) })
    }

    async fn put(&self, digest: &Digest, path: &Path, length: u64) -> Result<(), BackendError> {
        let file_len = tokio::fs::metadata(path).await?.len();
        if file_len != length {
            return Err(BackendError::permanent(format!(
                "file {} has {file_len} bytes, expected {length}",
                path.display()
            )));
        }
        let key = self.blob_key(digest);
        if length > self.cfg.multipart_threshold.0 {
            self.put_multipart(&key, path, length).await
        } else {
            self.put_single(&key, path, length).await
        }
    }

    async fn get_small(&self, key: &str, max: usize) -> Result<Option<Bytes>, BackendError> {
        let full_key = super::object_key(&self.cfg.prefix, key)?;
        let get = self.client.get_object().bucket(&self.cfg.bucket).key(&full_key).send();
        let out = match self.within("get_object", &full_key, get).await? {
            Ok(out) => out,
            Err(e) => {
                return match classify("get_object", &full_key, e) {
                    BackendError::NotFound => Ok(None),
                    e => Err(e),
                };
            }
        };
        let length = content_length("get_object", &full_key, out.content_length())?;
        if length > max as u64 {
            return Err(super::too_large(key, length, max));
        }
        let mut body = out.body;
        let mut buf = BytesMut::with_capacity(usize::try_from(length).unwrap_or(max).min(max));
        let idle = self.cfg.read_timeout.get();
        while let Some(chunk) =
            tokio::time::timeout(idle, body.next()).await.map_err(|_| stalled("get_object", &full_key, idle))?
        {
            let chunk = chunk.map_err(|e| {
                BackendError::transient(format!("s3 get_object {full_key}: reading body: {}", DisplayErrorContext(&e)))
            })?;
            if buf.len() + chunk.len() > max {
                return Err(super::too_large(key, (buf.len() + chunk.len()) as u64, max));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Some(buf.freeze()))
    }

    async fn put_small(&self, key: &str, data: Bytes) -> Result<(), BackendError> {
        let full_key = super::object_key(&self.cfg.prefix, key)?;
        self.client
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(&full_key)
            .content_length(to_i64(data.len() as u64))
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| classify("put_object", &full_key, e))?;
        Ok(())
    }

    fn name(&self) -> &str {
        "s3"
    }
}

/// Splits `length` bytes into `(offset, len)` parts of `part_size` (the last one shorter),
/// raising the part size when needed to stay within [`MAX_PARTS`].
pub fn plan_parts(length: u64, part_size: u64) -> Vec<(u64, u64)> {
    let part_size = part_size.max(length.div_ceil(MAX_PARTS)).max(1);
    (0..length.div_ceil(part_size))
        .map(|i| {
            let offset = i * part_size;
            (offset, part_size.min(length - offset))
        })
        .collect()
}

/// What a failed S3 call means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    NotFound,
    Transient,
    Permanent,
}

/// Classifies an S3 error response by its error code, then its HTTP status.
/// `NoSuchBucket` is a 404 but a configuration error, not a missing blob.
fn classify_response(status: Option<u16>, code: Option<&str>) -> Class {
    match code {
        Some("NoSuchKey" | "NotFound") => return Class::NotFound,
        Some("NoSuchBucket" | "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
            return Class::Permanent;
        }
        Some(
            "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "RequestTimeout"
            | "InternalError"
            | "ServiceUnavailable"
            | "RequestTimeTooSkewed",
        ) => return Class::Transient,
        _ => {}
    }
    match status {
        Some(404) => Class::NotFound,
        Some(408 | 429) | Some(500..=599) | None => Class::Transient,
        Some(_) => Class::Permanent,
    }
}

/// Turns an SDK error into a [`BackendError`] whose message names the operation and key and
/// carries the SDK's whole error chain.
fn classify<E>(op: &str, key: &str, err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let class = match &err {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) if err.raw_response().is_some() => {
            let status = err.raw_response().map(|r| r.status().as_u16());
            // A response that did not parse with a 2xx status is a broken transfer, not a verdict.
            match (&err, status) {
                (SdkError::ResponseError(_), Some(200..=299)) => Class::Transient,
                _ => classify_response(status, err.code()),
            }
        }
        SdkError::ConstructionFailure(_) => Class::Permanent,
        SdkError::DispatchFailure(d) if d.is_user() => Class::Permanent,
        _ => Class::Transient,
    };
    let message = format!("s3 {op} {key}: {}", DisplayErrorContext(&err));
    match class {
        Class::NotFound => BackendError::NotFound,
        Class::Transient => BackendError::Transient { message },
        Class::Permanent => BackendError::Permanent { message },
    }
}

/// A read that waited longer than `read_timeout`.
fn stalled(op: &str, key: &str, idle: std::time::Duration) -> BackendError {
    BackendError::transient(format!("s3 {op} {key}: no answer for {}s (read_timeout)", idle.as_secs_f64()))
}

fn content_length(op: &str, key: &str, len: Option<i64>) -> Result<u64, BackendError> {
    len.and_then(|l| u64::try_from(l).ok())
        .ok_or_else(|| BackendError::transient(format!("s3 {op} {key}: response has no valid content-length")))
}

/// A request body reading `len` bytes of the file at `path` from `offset`, streamed from disk.
async fn file_body(path: &Path, offset: u64, len: u64) -> Result<ByteStream, BackendError> {
    ByteStream::read_from().path(path).offset(offset).length(Length::Exact(len)).build().await.map_err(|e| {
        BackendError::Io(std::io::Error::other(format!("{}: {}", path.display(), DisplayErrorContext(&e))))
    })
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).expect("object sizes fit in i64")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[tokio::test]
    async fn an_endpoint_with_a_private_ca_is_reached_with_ca_file() {
        use crate::upstream::tls_tests::{Ca, tls_server, write_pem};
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("shoal test S3 CA");
        let ca_file = write_pem(dir.path(), "ca.pem", ca.cert.pem());
        // What HeadObject wants: a 200 with the object's length.
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n".to_vec();
        let addr = tls_server(&ca, None, answer).await;
        let cfg = |ca_file: Option<&str>| S3Config {
            endpoint_url: Some(format!("https://localhost:{}", addr.port())),
            ca_file: ca_file.map(Into::into),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
            ..S3Config::new("bucket", Layout::Flat)
        };
        let digest = Digest::of(b"hello");
        let trusted = S3Backend::new(cfg(Some(&ca_file))).await.unwrap();
        assert_eq!(trusted.stat(&digest).await.unwrap(), Some(5));
        let untrusted = S3Backend::new(cfg(None)).await.unwrap();
        let err = untrusted.stat(&digest).await.unwrap_err();
        assert!(err.to_string().contains("head_object"), "an unknown CA fails the request: {err}");

        let junk = write_pem(dir.path(), "junk.pem", "not a certificate\n".into());
        let err = S3Backend::new(cfg(Some(&junk))).await.unwrap_err().to_string();
        assert!(err.contains("ca_file") && err.contains("no PEM certificate"), "{err}");
    }

    /// A plain HTTP server on loopback that reads each request's head, answers `answer`, and
    /// then holds the connection open without a byte more.
    async fn stalling_server(answer: &'static [u8]) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Test-only server: its tasks end with the test's runtime.
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = socket.write_all(answer).await;
                    std::future::pending::<()>().await;
                });
            }
        });
        addr
    }

    async fn stalling_backend(answer: &'static [u8]) -> S3Backend {
        let addr = stalling_server(answer).await;
        S3Backend::new(S3Config {
            endpoint_url: Some(format!("http://{addr}")),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
            read_timeout: Duration::from_millis(300),
            ..S3Config::new("bucket", Layout::Flat)
        })
        .await
        .unwrap()
    }

    /// An object that stops sending part way, and a server that never answers: each read
    /// fails as transient after `read_timeout` instead of waiting for good.
    #[tokio::test]
    async fn a_stalled_read_fails_after_read_timeout() {
        let wait = std::time::Duration::from_secs(20);
        let digest = Digest::of(b"x");
        let s3 = stalling_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789").await;
        let blob = tokio::time::timeout(wait, s3.get(&digest)).await.expect("the answer starts").unwrap();
        assert_eq!(blob.length, 1000);
        let read: Vec<_> = tokio::time::timeout(wait, blob.stream.collect::<Vec<_>>()).await.expect("the body ends");
        assert_eq!(read.len(), 2, "ten bytes, then the error");
        assert_eq!(read[0].as_ref().unwrap().len(), 10);
        let err = read[1].as_ref().unwrap_err();
        assert!(err.is_transient() && err.to_string().contains("read_timeout"), "{err}");

        let silent = stalling_backend(b"").await;
        let err = tokio::time::timeout(wait, silent.get(&digest)).await.expect("the get ends").unwrap_err();
        assert!(err.is_transient() && err.to_string().contains("read_timeout"), "{err}");
        let err = tokio::time::timeout(wait, silent.stat(&digest)).await.expect("the head ends").unwrap_err();
        assert!(err.is_transient(), "{err}");
        let err = tokio::time::timeout(wait, silent.get_small("a/link", 100)).await.expect("the get ends").unwrap_err();
        assert!(err.is_transient(), "{err}");
    }

    #[test]
    fn parts_cover_the_file_exactly() {
        assert_eq!(plan_parts(12 * MIB, 5 * MIB), vec![(0, 5 * MIB), (5 * MIB, 5 * MIB), (10 * MIB, 2 * MIB)]);
        assert_eq!(plan_parts(10 * MIB, 5 * MIB), vec![(0, 5 * MIB), (5 * MIB, 5 * MIB)]);
        assert_eq!(plan_parts(1, 5 * MIB), vec![(0, 1)]);
        assert_eq!(plan_parts(0, 5 * MIB), vec![]);
    }

    #[test]
    fn part_size_grows_to_stay_under_the_part_limit() {
        let length = 100_000 * MIB;
        let parts = plan_parts(length, 5 * MIB);
        assert_eq!(parts.len() as u64, MAX_PARTS);
        assert_eq!(parts.iter().map(|p| p.1).sum::<u64>(), length);
        let parts = plan_parts(length + 1, 5 * MIB);
        assert!(parts.len() as u64 <= MAX_PARTS);
        assert_eq!(parts.iter().map(|p| p.1).sum::<u64>(), length + 1);
    }

    fn check(status: Option<u16>, code: Option<&str>, expect: Class) {
        assert_eq!(classify_response(status, code), expect, "status {status:?} code {code:?}");
    }

    #[test]
    fn error_classes() {
        check(Some(404), Some("NoSuchKey"), Class::NotFound);
        check(Some(404), None, Class::NotFound);
        check(Some(404), Some("NoSuchBucket"), Class::Permanent);
        check(Some(403), Some("AccessDenied"), Class::Permanent);
        check(Some(403), None, Class::Permanent);
        check(Some(400), Some("InvalidArgument"), Class::Permanent);
        check(Some(400), Some("RequestTimeout"), Class::Transient);
        check(Some(503), Some("SlowDown"), Class::Transient);
        check(Some(500), None, Class::Transient);
        check(Some(429), None, Class::Transient);
        check(None, None, Class::Transient);
    }

    fn parse(yaml: &str) -> Result<S3Config, String> {
        let cfg: S3Config = shoal_runtime::config::parse(yaml).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    #[test]
    fn config_defaults_and_path_style() {
        let cfg = parse("bucket: b\nlayout: flat\n").unwrap();
        assert_eq!(cfg, S3Config::new("b", Layout::Flat));
        assert_eq!(
            (cfg.region.as_str(), cfg.part_size.0, cfg.multipart_threshold.0),
            ("us-east-1", 16 * MIB, 64 * MIB)
        );
        assert!(!cfg.path_style());
        let cfg = parse("bucket: b\nlayout: flat\nendpoint_url: http://127.0.0.1:9000\n").unwrap();
        assert!(cfg.path_style());
        let cfg = parse("bucket: b\nlayout: flat\nendpoint_url: http://x\nforce_path_style: false\n").unwrap();
        assert!(!cfg.path_style());
    }

    #[test]
    fn config_rejects_mistakes() {
        let check_err = |yaml: &str, needle: &str| {
            let err = parse(yaml).unwrap_err();
            assert!(err.contains(needle), "{yaml:?}: {err}");
        };
        check_err("bucket: b\n", "layout");
        check_err("bucket: b\nlayout: flat\nbukket: c\n", "bukket");
        check_err("bucket: ''\nlayout: flat\n", "bucket is empty");
        check_err("bucket: b\nlayout: flat\naccess_key_id: k\n", "both");
        check_err("bucket: b\nlayout: flat\npart_size: 1MiB\n", "part_size");
        check_err("bucket: b\nlayout: flat\nmultipart_threshold: 6GiB\n", "multipart_threshold");
        check_err("bucket: b\nlayout: flat\nprefix: a/../b\n", "invalid prefix");
        check_err("bucket: b\nlayout: flat\nread_timeout: 0s\n", "read_timeout");
    }

    #[test]
    fn debug_hides_the_secret() {
        let mut cfg = S3Config::new("b", Layout::Flat);
        cfg.access_key_id = Some("AKID".into());
        cfg.secret_access_key = Some("hunter2".into());
        let dbg = format!("{cfg:?}");
        assert!(dbg.contains("AKID") && !dbg.contains("hunter2"), "{dbg}");
    }
}
