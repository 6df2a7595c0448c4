//! OpenBao's REST API, the part of the transit engine the plug-in uses, over several servers
//! tried in order.
//!
//! Every request goes to the first server that answers; a server that cannot be reached (no
//! connection, a timeout) or that answers 503 (sealed, or a standby that cannot serve) is
//! skipped with a notice, the next one tried. An answer from a server, even an error, ends the
//! search: a 403 from one server is the policy's answer, and asking another would not change it.
//!
//! The token is sent only in the `X-Vault-Token` header, held in a zeroizing buffer, and never
//! shown in an error or `Debug` output.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use reqwest::blocking::{Client, Response};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use zeroize::Zeroizing;

/// The transit key type of the volume keys: AES-256 in GCM mode, the one AES type transit has
/// in the size zkey uses (`aes128-gcm96` also exists).
pub const VOLUME_KEY_TYPE: &str = "aes256-gcm96";

#[derive(Debug, thiserror::Error)]
pub enum BaoError {
    #[error("no OpenBao server could be reached ({0}): check that the servers run and that --servers names them")]
    ServerDown(String),
    #[error("OpenBao denied {method} {path} (HTTP 403, permission denied): the token's policy does not allow it, or the token expired; ask the OpenBao administrator for the host policy the README documents")]
    PermissionDenied { method: Method, path: String },
    #[error("OpenBao has no transit key '{name}' (HTTP 404 on {path}): it was deleted in OpenBao or never created there; check the key name, or restore the key in OpenBao")]
    KeyNotFound { name: String, path: String },
    #[error("OpenBao answered {method} {path} with HTTP {status}: {errors}")]
    Server {
        method: Method,
        path: String,
        status: StatusCode,
        errors: String,
    },
    #[error("OpenBao's answer to {method} {path} is not what its API documents ({detail}): check that the server is OpenBao 2.x")]
    BadResponse {
        method: Method,
        path: String,
        detail: String,
    },
    #[error("the OpenBao server URL '{0}' is not an http:// or https:// URL")]
    BadUrl(String),
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}

/// A transit key's state, as `GET transit/keys/NAME` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub name: String,
    /// `aes256-gcm96`, `rsa-3072`, ...
    pub key_type: String,
    pub latest_version: u32,
    pub exportable: bool,
}

/// A client of one OpenBao cluster: its servers in the order to try them, and a token.
pub struct BaoClient {
    servers: Vec<String>,
    http: Client,
    token: Zeroizing<String>,
    mount: String,
    notices: Vec<String>,
}

impl fmt::Debug for BaoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BaoClient")
            .field("servers", &self.servers)
            .field("mount", &self.mount)
            .finish_non_exhaustive()
    }
}

impl BaoClient {
    /// A client of `servers` (base URLs such as `https://bao1:8200`, tried in this order),
    /// authenticated with `token`, for the transit engine at `mount`. `ca_pem`, when given, is
    /// the only CA an https:// server certificate may chain to.
    pub fn new(
        servers: &[String],
        token: Zeroizing<String>,
        mount: &str,
        ca_pem: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<BaoClient, BaoError> {
        if servers.is_empty() {
            return Err(BaoError::BadUrl(String::new()));
        }
        let servers = servers
            .iter()
            .map(|s| {
                let s = s.trim_end_matches('/');
                match reqwest::Url::parse(s) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {
                        Ok(s.to_string())
                    }
                    _ => Err(BaoError::BadUrl(s.to_string())),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut b = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect would send the token to wherever the server points: not followed.
            .redirect(reqwest::redirect::Policy::none())
            .tls_built_in_root_certs(false);
        if let Some(pem) = ca_pem {
            let ca = reqwest::Certificate::from_pem(pem).map_err(|e| {
                BaoError::Client(format!("the server CA is not a PEM certificate: {e}"))
            })?;
            b = b.add_root_certificate(ca);
        }
        let http = b.build().map_err(|e| BaoError::Client(e.to_string()))?;
        Ok(BaoClient {
            servers,
            http,
            token,
            mount: mount.trim_matches('/').to_string(),
            notices: Vec::new(),
        })
    }

    /// What the user should be told about the requests so far (a server skipped), once.
    pub fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    /// Creates the exportable volume key `name` (byok-export exports only exportable keys).
    /// Refuses a name that exists: a new volume key must be new, never one already in use.
    pub fn create_volume_key(&mut self, name: &str) -> Result<KeyInfo, BaoError> {
        match self.key_info(name) {
            Err(BaoError::KeyNotFound { .. }) => {}
            Ok(_) => {
                let path = self.key_path(name);
                return Err(BaoError::Server {
                    method: Method::POST,
                    path,
                    status: StatusCode::CONFLICT,
                    errors: format!(
                        "a transit key named '{name}' exists already: choose another name"
                    ),
                });
            }
            Err(e) => return Err(e),
        }
        let path = self.key_path(name);
        self.call(
            Method::POST,
            &path,
            Some(json!({"type": VOLUME_KEY_TYPE, "exportable": true})),
        )?;
        self.key_info(name)
    }

    /// Registers the host's RSA public key (SPKI PEM) as transit key `name`, of type
    /// `rsa-BITS`: an import of only a public key, so OpenBao can wrap keys for it and holds
    /// nothing it could unwrap them with.
    pub fn import_public_key(&mut self, name: &str, pem: &str, bits: u32) -> Result<(), BaoError> {
        let path = format!("{}/import", self.key_path(name));
        self.call(
            Method::POST,
            &path,
            Some(json!({"public_key": pem, "type": format!("rsa-{bits}")})),
        )?;
        Ok(())
    }

    /// `GET transit/keys/NAME`.
    pub fn key_info(&mut self, name: &str) -> Result<KeyInfo, BaoError> {
        let path = self.key_path(name);
        let v = self
            .call(Method::GET, &path, None)
            .map_err(|e| not_found(e, name))?;
        let d = &v["data"];
        let bad = |detail: &str| BaoError::BadResponse {
            method: Method::GET,
            path: path.clone(),
            detail: detail.into(),
        };
        Ok(KeyInfo {
            name: name.to_string(),
            key_type: d["type"]
                .as_str()
                .ok_or_else(|| bad("no data.type"))?
                .to_string(),
            latest_version: d["latest_version"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad("no data.latest_version"))?,
            exportable: d["exportable"].as_bool().unwrap_or(false),
        })
    }

    /// The latest version of transit key `src` wrapped for the public key `dest`
    /// (`transit/byok-export/DEST/SRC/VERSION`): a `CKM_RSA_AES_KEY_WRAP` blob, and the version.
    pub fn byok_export(&mut self, dest: &str, src: &str) -> Result<(u32, Vec<u8>), BaoError> {
        let version = self.key_info(src)?.latest_version;
        let path = format!("{}/byok-export/{dest}/{src}/{version}", self.mount);
        let v = self.call(Method::GET, &path, None)?;
        let bad = |detail: String| BaoError::BadResponse {
            method: Method::GET,
            path: path.clone(),
            detail,
        };
        let b64 = v["data"]["keys"][version.to_string()]
            .as_str()
            .ok_or_else(|| bad(format!("no data.keys.{version}")))?;
        let blob = B64
            .decode(b64)
            .map_err(|e| bad(format!("data.keys.{version} is not base64: {e}")))?;
        Ok((version, blob))
    }

    fn key_path(&self, name: &str) -> String {
        format!("{}/keys/{name}", self.mount)
    }

    /// One API call, on the first server that answers. `path` is below `/v1/`.
    fn call(&mut self, method: Method, path: &str, body: Option<Value>) -> Result<Value, BaoError> {
        let mut down = Vec::new();
        for (i, server) in self.servers.clone().iter().enumerate() {
            let url = format!("{server}/v1/{path}");
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header("X-Vault-Token", self.token.as_str());
            if let Some(b) = &body {
                req = req.json(b);
            }
            let resp = match req.send() {
                Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    down.push(format!("{server}: HTTP 503 (sealed or standby)"));
                    continue;
                }
                Ok(r) => r,
                Err(e) => {
                    // No answer at all: the next server may have one.
                    down.push(format!("{server}: {}", transport_error(&e)));
                    continue;
                }
            };
            if i > 0 {
                self.notices.push(format!(
                    "OpenBao server {server} was used: {}",
                    down.join("; ")
                ));
            }
            return answer(method, path, resp);
        }
        Err(BaoError::ServerDown(down.join("; ")))
    }
}

/// The JSON of a 2xx answer (null for 204), or the error the status means.
fn answer(method: Method, path: &str, resp: Response) -> Result<Value, BaoError> {
    let status = resp.status();
    let text = resp.text().unwrap_or_default();
    let v: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).map_err(|e| BaoError::BadResponse {
            method: method.clone(),
            path: path.to_string(),
            detail: format!("HTTP {status} with a body that is no JSON: {e}"),
        })?
    };
    if status.is_success() {
        return Ok(v);
    }
    let errors = v["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| {
                    s.replace("1 error occurred:", "")
                        .replace(['\n', '\t', '*'], " ")
                })
                .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    let path = path.to_string();
    Err(match status {
        StatusCode::FORBIDDEN => BaoError::PermissionDenied { method, path },
        _ => BaoError::Server {
            method,
            path,
            status,
            errors: if errors.is_empty() {
                "no message".into()
            } else {
                errors
            },
        },
    })
}

/// A 404 on a key's path: the key does not exist.
fn not_found(e: BaoError, name: &str) -> BaoError {
    match e {
        BaoError::Server {
            status: StatusCode::NOT_FOUND,
            path,
            ..
        } => BaoError::KeyNotFound {
            name: name.to_string(),
            path,
        },
        e => e,
    }
}

/// A transport error's kind and causes, without the URL (the caller names the server).
fn transport_error(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
