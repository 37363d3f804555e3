//! The cluster registry: hosts that joined, and the join tokens that let them. Kept in the
//! gateway's state directory (`registry.json`), or in etcd when `[gateway] etcd_endpoints` is set,
//! so that several gateways share one cluster: a host joined through one is served by every one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tonic::Status;

/// A host added by JoinHost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinedHost {
    pub name: String,
    /// `unix:///RUN-DIR` (a vireod on the gateway's machine) or `https://HOST:PORT` (its gateway).
    pub address: String,
    pub joined_unix_ms: i64,
    pub vireo_version: String,
}

/// A join token as stored: only its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredToken {
    pub expires_unix_ms: i64,
    /// Only this host may join with it; any when empty.
    pub host_name: String,
}

const HOSTS_PREFIX: &str = "/vireo/hosts/";
const TOKENS_PREFIX: &str = "/vireo/join-tokens/";

pub enum Registry {
    File(FileRegistry),
    Etcd(Box<EtcdRegistry>),
}

/// etcd, connected on first use and again after a failed connect, so that a gateway starts
/// while etcd is still coming up.
pub struct EtcdRegistry {
    endpoints: Vec<String>,
    client: tokio::sync::OnceCell<etcd_client::Client>,
}

impl EtcdRegistry {
    async fn client(&self) -> Result<etcd_client::Client, Status> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_timeout(std::time::Duration::from_secs(5));
        self.client
            .get_or_try_init(|| etcd_client::Client::connect(&self.endpoints, Some(options)))
            .await
            .cloned()
            .map_err(etcd_down)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RegistryFile {
    hosts: BTreeMap<String, JoinedHost>,
    /// By token SHA-256.
    tokens: BTreeMap<String, StoredToken>,
}

pub struct FileRegistry {
    path: PathBuf,
    /// Serialises read-modify-write of the file.
    lock: tokio::sync::Mutex<()>,
}

fn etcd_down(err: etcd_client::Error) -> Status {
    Status::unavailable(format!("the cluster store (etcd) is unavailable: {err}"))
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> Status {
    Status::internal(format!(
        "the cluster registry's {what} is unreadable: {err}"
    ))
}

impl Registry {
    /// The file registry at `path`.
    pub fn file(path: PathBuf) -> Registry {
        Registry::File(FileRegistry {
            path,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn etcd(endpoints: &[String]) -> Registry {
        Registry::Etcd(Box::new(EtcdRegistry {
            endpoints: endpoints.to_vec(),
            client: tokio::sync::OnceCell::new(),
        }))
    }

    pub async fn hosts(&self) -> Result<Vec<JoinedHost>, Status> {
        match self {
            Registry::File(file) => Ok(file.read().await?.hosts.into_values().collect()),
            Registry::Etcd(etcd) => {
                let client = etcd.client().await?;
                let reply = client
                    .kv_client()
                    .get(HOSTS_PREFIX, Some(GetOptions::new().with_prefix()))
                    .await
                    .map_err(etcd_down)?;
                reply
                    .kvs()
                    .iter()
                    .map(|kv| {
                        serde_json::from_slice(kv.value()).map_err(|err| corrupt("host", err))
                    })
                    .collect()
            }
        }
    }

    /// Adds `host`; AlreadyExists when its name is taken.
    pub async fn add_host(&self, host: &JoinedHost) -> Result<(), Status> {
        let taken = || Status::already_exists(format!("name: host `{}` already exists", host.name));
        match self {
            Registry::File(file) => {
                file.update(|contents| {
                    if contents.hosts.contains_key(&host.name) {
                        return Err(taken());
                    }
                    contents.hosts.insert(host.name.clone(), host.clone());
                    Ok(())
                })
                .await
            }
            Registry::Etcd(etcd) => {
                let client = etcd.client().await?;
                let key = format!("{HOSTS_PREFIX}{}", host.name);
                let value = serde_json::to_vec(host).map_err(|err| corrupt("host", err))?;
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key, value, None)]);
                let reply = client.kv_client().txn(txn).await.map_err(etcd_down)?;
                if reply.succeeded() {
                    Ok(())
                } else {
                    Err(taken())
                }
            }
        }
    }

    /// Removes a joined host; false when there was none of that name.
    pub async fn remove_host(&self, name: &str) -> Result<bool, Status> {
        match self {
            Registry::File(file) => {
                let mut removed = false;
                file.update(|contents| {
                    removed = contents.hosts.remove(name).is_some();
                    Ok(())
                })
                .await?;
                Ok(removed)
            }
            Registry::Etcd(etcd) => {
                let client = etcd.client().await?;
                let reply = client
                    .kv_client()
                    .delete(format!("{HOSTS_PREFIX}{name}"), None)
                    .await
                    .map_err(etcd_down)?;
                Ok(reply.deleted() > 0)
            }
        }
    }

    /// Stores a token by its hash, for `ttl_s` seconds.
    pub async fn add_token(
        &self,
        sha256: &str,
        token: &StoredToken,
        ttl_s: u64,
    ) -> Result<(), Status> {
        match self {
            Registry::File(file) => {
                let now = crate::cluster_views::now_ms();
                file.update(|contents| {
                    // Expired tokens go as new ones come.
                    contents
                        .tokens
                        .retain(|_, stored| stored.expires_unix_ms > now);
                    contents.tokens.insert(sha256.to_string(), token.clone());
                    Ok(())
                })
                .await
            }
            Registry::Etcd(etcd) => {
                let client = etcd.client().await?;
                let mut client = client;
                // A lease makes etcd forget the token when it expires.
                let lease = client
                    .lease_grant(i64::try_from(ttl_s).unwrap_or(i64::MAX), None)
                    .await
                    .map_err(etcd_down)?;
                let value = serde_json::to_vec(token).map_err(|err| corrupt("token", err))?;
                client
                    .put(
                        format!("{TOKENS_PREFIX}{sha256}"),
                        value,
                        Some(PutOptions::new().with_lease(lease.id())),
                    )
                    .await
                    .map_err(etcd_down)?;
                Ok(())
            }
        }
    }

    /// The token with this hash, if any, without using it up.
    pub async fn peek_token(&self, sha256: &str) -> Result<Option<StoredToken>, Status> {
        match self {
            Registry::File(file) => Ok(file.read().await?.tokens.remove(sha256)),
            Registry::Etcd(etcd) => {
                let client = etcd.client().await?;
                let reply = client
                    .kv_client()
                    .get(format!("{TOKENS_PREFIX}{sha256}"), None)
                    .await
                    .map_err(etcd_down)?;
                reply
                    .kvs()
                    .first()
                    .map(|kv| {
                        serde_json::from_slice(kv.value()).map_err(|err| corrupt("token", err))
                    })
                    .transpose()
            }
        }
    }

    /// Uses up the token with this hash: true for exactly one caller, even across gateways.
    pub async fn take_token(&self, sha256: &str) -> Result<bool, Status> {
        match self {
            Registry::File(file) => {
                let mut taken = false;
                file.update(|contents| {
                    taken = contents.tokens.remove(sha256).is_some();
                    Ok(())
                })
                .await?;
                Ok(taken)
            }
            Registry::Etcd(etcd) => {
                let client = etcd.client().await?;
                let key = format!("{TOKENS_PREFIX}{sha256}");
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Greater, 0)])
                    .and_then([TxnOp::delete(key, None)]);
                let reply = client.kv_client().txn(txn).await.map_err(etcd_down)?;
                Ok(reply.succeeded())
            }
        }
    }
}

impl FileRegistry {
    async fn read(&self) -> Result<RegistryFile, Status> {
        match tokio::fs::read(&self.path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| corrupt("file", err)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(RegistryFile::default()),
            Err(err) => Err(corrupt("file", err)),
        }
    }

    async fn update(
        &self,
        change: impl FnOnce(&mut RegistryFile) -> Result<(), Status>,
    ) -> Result<(), Status> {
        let _held = self.lock.lock().await;
        let mut contents = self.read().await?;
        change(&mut contents)?;
        let bytes = serde_json::to_vec_pretty(&contents).map_err(|err| corrupt("file", err))?;
        vireo_runtime::store::write_atomically(&self.path, &bytes)
            .map_err(|err| Status::internal(format!("cannot write {}: {err}", self.path.display())))
    }
}
