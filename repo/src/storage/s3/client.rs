//! The S3 requests the store makes, blocking, through `object_store` (SigV4, retries with
//! backoff on 5xx, throttling and timeouts are the crate's). Every request is counted, and
//! every failure becomes one of the engine's errors naming the bucket and what to do.

use crate::error::{Error, Result};
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where the bucket is and how to sign: the AWS way (see `Endpoint::from_env`).
#[derive(Clone, Debug, Default)]
pub struct Endpoint {
    pub bucket: String,
    pub url: Option<String>,
    pub region: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub session_token: Option<String>,
}

impl Endpoint {
    /// `AWS_ENDPOINT_URL`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`/
    /// `AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`; without keys in the environment, the
    /// profile `AWS_PROFILE` (else `default`) of `~/.aws/credentials` (and its region and
    /// endpoint in `~/.aws/config`), as the AWS tools read them.
    pub fn from_env(bucket: &str) -> Endpoint {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut e = Endpoint {
            bucket: bucket.to_string(),
            url: var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            access_key: var("AWS_ACCESS_KEY_ID"),
            secret_key: var("AWS_SECRET_ACCESS_KEY"),
            session_token: var("AWS_SESSION_TOKEN"),
        };
        let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
        if let Some(home) = var("HOME") {
            let aws = std::path::Path::new(&home).join(".aws");
            let creds = var("AWS_SHARED_CREDENTIALS_FILE")
                .map(Into::into)
                .unwrap_or(aws.join("credentials"));
            let config = var("AWS_CONFIG_FILE")
                .map(Into::into)
                .unwrap_or(aws.join("config"));
            e.fill_from_profile(&creds, &config, &profile);
        }
        e
    }

    fn fill_from_profile(&mut self, creds: &std::path::Path, config: &std::path::Path, name: &str) {
        let get = |file: &std::path::Path, section: &str, key: &str| -> Option<String> {
            let ini = ini::Ini::load_from_file(file).ok()?;
            ini.section(Some(section))?.get(key).map(str::to_string)
        };
        if self.access_key.is_none() {
            self.access_key = get(creds, name, "aws_access_key_id");
            self.secret_key = get(creds, name, "aws_secret_access_key");
            self.session_token = get(creds, name, "aws_session_token");
        }
        let section = if name == "default" {
            "default".to_string()
        } else {
            format!("profile {name}")
        };
        if self.region.is_none() {
            self.region = get(config, &section, "region");
        }
        if self.url.is_none() {
            self.url = get(config, &section, "endpoint_url");
        }
    }
}

/// Requests made, by kind, for `--json` reports and the cost goals.
#[derive(Debug, Default)]
pub struct Counters {
    pub get: AtomicU64,
    pub put: AtomicU64,
    pub list: AtomicU64,
    pub delete: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> super::Requests {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        super::Requests {
            total: self.total(),
            get: v(&self.get),
            put: v(&self.put),
            list: v(&self.list),
            delete: v(&self.delete),
            bytes_up: v(&self.bytes_up),
            bytes_down: v(&self.bytes_down),
        }
    }

    pub fn total(&self) -> u64 {
        [&self.get, &self.put, &self.list, &self.delete]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Requests of every S3 store of this process (what one command cost).
pub static PROCESS: Counters = Counters {
    get: AtomicU64::new(0),
    put: AtomicU64::new(0),
    list: AtomicU64::new(0),
    delete: AtomicU64::new(0),
    bytes_up: AtomicU64::new(0),
    bytes_down: AtomicU64::new(0),
};

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Count on a client's counters and the process's at once.
macro_rules! count {
    ($client:expr, $field:ident, $n:expr) => {{
        let n = $n as u64;
        bump(&$client.counters.$field, n);
        bump(&PROCESS.$field, n);
    }};
}

/// One bucket (and prefix) reached through a runtime of its own.
pub struct Client {
    store: Arc<AmazonS3>,
    rt: tokio::runtime::Runtime,
    /// `s3://bucket/prefix`, for messages.
    pub url: String,
    prefix: String,
    pub counters: Counters,
}

/// An object's name below the prefix and its size.
pub struct Listed {
    pub name: String,
    pub size: u64,
    /// The server's tag of this version of the object (a changed object has another).
    pub etag: String,
}

/// Bytes at or above which a pack goes up in parts (and the size of each part).
pub const PART_BYTES: usize = 8 << 20;

impl Client {
    pub fn new(endpoint: &Endpoint, prefix: &str, url: String) -> Result<Client> {
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&endpoint.bucket)
            .with_region(endpoint.region.as_deref().unwrap_or("us-east-1"))
            .with_retry(RetryConfig {
                max_retries: 6,
                retry_timeout: Duration::from_secs(120),
                ..RetryConfig::default()
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(Duration::from_secs(120)),
            );
        if let Some(u) = &endpoint.url {
            b = b.with_endpoint(u).with_allow_http(u.starts_with("http://"));
        }
        match (&endpoint.access_key, &endpoint.secret_key) {
            (Some(k), Some(s)) => {
                b = b.with_access_key_id(k).with_secret_access_key(s);
                if let Some(t) = &endpoint.session_token {
                    b = b.with_token(t);
                }
            }
            _ => {
                return Err(Error::Usage(format!(
                    "{url}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with ~/.aws/credentials"
                )))
            }
        }
        let store = b.build().map_err(|e| Error::Usage(format!("{url}: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cairn-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the S3 client", e))?;
        Ok(Client {
            store: Arc::new(store),
            rt,
            url,
            prefix: prefix.trim_matches('/').to_string(),
            counters: Counters::default(),
        })
    }

    fn path(&self, name: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(name)
        } else {
            Path::from(format!("{}/{name}", self.prefix))
        }
    }

    fn error(&self, what: &str, name: &str, e: object_store::Error) -> Error {
        s3_error(&self.url, what, name, e)
    }

    /// The whole object, or `None` when there is none.
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        count!(self, get, 1);
        let path = self.path(name);
        let r = self.rt.block_on(async {
            let got = self.store.get(&path).await?;
            got.bytes().await
        });
        match r {
            Ok(b) => {
                count!(self, bytes_down, b.len() as u64);
                Ok(Some(b.to_vec()))
            }
            Err(e @ object_store::Error::NotFound { .. }) if !no_bucket(&e) => Ok(None),
            Err(e) => Err(self.error("reading", name, e)),
        }
    }

    /// Store `bytes` under `name`: one PUT, or a multipart upload of `PART_BYTES` parts for
    /// big objects (memory stays what the caller holds).
    pub fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let pending = self.put_in_background(name, bytes);
        self.wait(pending)
    }

    /// Delete `name`; an absent object is not an error.
    pub fn delete(&self, name: &str) -> Result<()> {
        count!(self, delete, 1);
        match self.rt.block_on(self.store.delete(&self.path(name))) {
            Ok(()) => Ok(()),
            Err(e @ object_store::Error::NotFound { .. }) if !no_bucket(&e) => Ok(()),
            Err(e) => Err(self.error("deleting", name, e)),
        }
    }

    /// Every object whose name starts with `dir/`, names relative to the prefix.
    pub fn list(&self, dir: &str) -> Result<Vec<Listed>> {
        let path = self.path(dir);
        let strip = match self.prefix.is_empty() {
            true => String::new(),
            false => format!("{}/", self.prefix),
        };
        let (out, pages) = self
            .rt
            .block_on(async {
                let mut out = Vec::new();
                let mut stream = self.store.list(Some(&path));
                while let Some(meta) = stream.next().await {
                    let meta = meta?;
                    let full = meta.location.to_string();
                    let name = full.strip_prefix(&strip).unwrap_or(&full).to_string();
                    out.push(Listed {
                        name,
                        size: meta.size,
                        etag: meta.e_tag.unwrap_or_default(),
                    });
                }
                Ok::<_, object_store::Error>((out.len(), out))
            })
            .map(|(n, out)| (out, n / 1000 + 1))
            .map_err(|e| self.error("listing", dir, e))?;
        count!(self, list, pages as u64);
        Ok(out)
    }

    /// Ranges of several objects at once (up to `READS_AT_ONCE` requests in flight), one
    /// answer per object in the order asked.
    pub fn get_ranges_many(&self, asks: &[(String, Vec<Range<u64>>)]) -> Vec<Result<Vec<Vec<u8>>>> {
        use futures::stream::{self, StreamExt as _};
        let fetched: Vec<_> = self.rt.block_on(
            stream::iter(asks.iter().map(|(name, ranges)| {
                let path = self.path(name);
                async move { self.store.get_ranges(&path, ranges).await }
            }))
            .buffered(READS_AT_ONCE)
            .collect(),
        );
        count!(self, get, asks.len() as u64);
        fetched
            .into_iter()
            .zip(asks)
            .map(|(r, (name, _))| match r {
                Ok(parts) => Ok(parts
                    .into_iter()
                    .map(|b| {
                        count!(self, bytes_down, b.len() as u64);
                        b.to_vec()
                    })
                    .collect()),
                Err(e @ object_store::Error::NotFound { .. }) if !no_bucket(&e) => {
                    Err(Error::Missing(format!("{name} in {}", self.url)))
                }
                Err(e) => Err(self.error("reading", name, e)),
            })
            .collect()
    }

    /// Start storing `bytes` under `name` beside the caller; `wait` gives the result.
    pub fn put_in_background(&self, name: &str, bytes: Vec<u8>) -> Pending {
        let len = bytes.len();
        count!(self, bytes_up, len as u64);
        count!(
            self,
            put,
            if len < 2 * PART_BYTES {
                1
            } else {
                len.div_ceil(PART_BYTES) as u64 + 2
            }
        );
        let store = self.store.clone();
        let path = self.path(name);
        let (url, owned) = (self.url.clone(), name.to_string());
        Pending(self.rt.spawn(async move {
            let r = if len < 2 * PART_BYTES {
                store.put(&path, PutPayload::from(bytes)).await.map(|_| ())
            } else {
                put_parts(&store, &path, bytes).await
            };
            r.map_err(|e| s3_error(&url, "writing", &owned, e))
        }))
    }

    /// The result of an upload started with `put_in_background`.
    pub fn wait(&self, p: Pending) -> Result<()> {
        self.rt
            .block_on(p.0)
            .map_err(|e| Error::Internal(format!("an S3 upload task failed: {e}")))?
    }
}

/// How many reads the client keeps in flight at once.
const READS_AT_ONCE: usize = 8;

/// An upload running beside its caller.
pub struct Pending(tokio::task::JoinHandle<Result<()>>);

async fn put_parts(store: &AmazonS3, path: &Path, bytes: Vec<u8>) -> object_store::Result<()> {
    let bytes = bytes::Bytes::from(bytes);
    let mut up = store.put_multipart(path).await?;
    let mut parts = Vec::new();
    for start in (0..bytes.len()).step_by(PART_BYTES) {
        let end = (start + PART_BYTES).min(bytes.len());
        parts.push(up.put_part(PutPayload::from(bytes.slice(start..end))));
    }
    let sent = futures::future::try_join_all(parts).await;
    match sent {
        Ok(_) => up.complete().await.map(|_| ()),
        Err(e) => {
            let _ = up.abort().await;
            Err(e)
        }
    }
}

/// Whether the server said the bucket itself does not exist.
fn no_bucket(e: &object_store::Error) -> bool {
    format!("{e:?}").contains("NoSuchBucket")
}

/// An S3 failure as the engine's error: what was done to which object, and what to do.
fn s3_error(url: &str, what: &str, name: &str, e: object_store::Error) -> Error {
    use object_store::Error as E;
    if no_bucket(&e) {
        return Error::RepoNotFound {
            path: url.into(),
            reason: "the bucket does not exist; create it (or check the name and AWS_ENDPOINT_URL)"
                .into(),
        };
    }
    match e {
        E::Unauthenticated { .. } | E::PermissionDenied { .. } => Error::Refused(format!(
            "{url}: the S3 server refused the credentials while {what} {name} ({e}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the key's rights on the bucket"
        )),
        E::NotFound { .. } => Error::Missing(format!("{name} in {url}")),
        other => {
            let text = other.to_string();
            Error::io(
                format!("{url}: S3 request failed while {what} {name}; check AWS_ENDPOINT_URL and that the server is up, then run it again"),
                std::io::Error::other(text),
            )
        }
    }
}
