//! The zkey KMS plug-in protocol, version 1: how zkey (the client) talks to a KMS plug-in
//! executable, and the types both sides share.
//!
//! Plug-ins follow the model of age's plug-ins: an executable per KMS, named in
//! `kms-plugins.conf`, speaking a versioned protocol on stdin/stdout. A crash or a hang of a
//! plug-in is then an error in zkey, never a corrupted repository: zkey writes nothing until a
//! plug-in's answer is complete and checked.
//!
//! # Specification (implementable in any language)
//!
//! **Registration.** `kms-plugins.conf` (path in `$ZKEY_KMS_PLUGINS`, default
//! `/etc/zkey/kms-plugins.conf`) has lines `NAME=EXECUTABLE`; `#` starts a comment. A relative
//! EXECUTABLE is looked up in `$PATH`.
//!
//! **Transport.** zkey starts the executable with no arguments; neither argv nor the
//! environment carries anything secret. Messages are JSON objects, one per line (UTF-8, `\n`
//! terminated, at most 16 MiB), zkey writing to the plug-in's stdin, the plug-in answering on
//! its stdout. The plug-in's stderr is free text for diagnostics and must never hold key
//! material. A session is: handshake, then any number of request/response pairs, one at a
//! time; zkey closes stdin to end it and the plug-in then exits with status 0.
//!
//! **Handshake.** zkey sends `{"op":"hello","versions":[1],"config_dir":"/etc/zkey/repository/KMIP"}`
//! (`config_dir` is null before `bind`). The plug-in answers with
//! `{"ok":{"version":1,"name":"KMIP","description":"..."}}`, choosing the highest version it
//! shares, or with an error of code `unsupported_version` and exits.
//!
//! **Requests** are objects with `"op"` and the operation's fields (see [`Request`], whose
//! serde form is the wire form). **Responses** are `{"ok": RESULT, "notices": [..]}` or
//! `{"error": {"code": CODE, "message": TEXT}, "notices": [..]}`. `notices` are lines zkey shows
//! the user (e.g. that a secondary server was used). CODE is one of [`ErrorCode`] in
//! snake_case; TEXT tells the user what to do next. Binary values (secure keys) are lowercase
//! hex. Operations and results:
//!
//! | op | fields | ok result |
//! |----|--------|-----------|
//! | `bind` | `config_dir` | `null`; prepares the (empty, zkey-created) directory |
//! | `info` | | [`PluginInfo`] |
//! | `command_options` | `command` | list of [`OptionSpec`]: extra options of a zkey kms command |
//! | `configure` | `cca_apqns`, `ep11_apqns` (null: unchanged), `options` (name -> value) | [`ConfigureResult`] |
//! | `deconfigure` | | `null` |
//! | `login` | | `null` |
//! | `supports_key_type` | `key_type` | `true`/`false` |
//! | `generate_key` | `key_type`, `bits`, `xts` (`none`,`xts1`,`xts2`), `label` (optional), `properties` | [`GeneratedKey`] |
//! | `set_key_properties` | `key_id`, `properties` (name -> value or null to remove) | `null` |
//! | `get_key_properties` | `key_id` | name -> value |
//! | `remove_key` | `key_id`, `options` | `null` (the key is revoked in the KMS) |
//! | `list_keys` | `label` (glob, optional), `properties` (all must match), `options` | list of [`KmsKey`] |
//! | `import_key` | `key_id`, `key_type` | [`ImportedKey`]: a secure key under the CURRENT master key |
//! | `reencipher` | `mode` (`auto`,`in_place`,`staged`,`complete`), `direction` (`auto`,`from_old`,`to_new`), `options` | [`ReencipherReport`] |
//! | `key_status` | | [`KeyStatusReport`]: the plug-in's own keys, their master key types, APQNs and MKVPs, read from their tokens (no HSM call, nothing changes) |
//!
//! `reencipher` reports every one of the plug-in's own keys with an `action`: `staged`,
//! `completed`, `re-enciphered` or `skipped` (not affected: no NEW master key of the key's
//! type is loaded on its APQNs, or nothing is staged and the key is under CURRENT; `detail`
//! says which). A key that is affected but cannot be re-enciphered makes the response an
//! error whose message names it and says what to do; the plug-in still does the other keys
//! and reports them in `notices`.
//!
//! **For plug-in authors** (in Rust): implement [`PluginV1`], one typed method per request
//! above, and call [`serve`] with stdin and stdout; zkey's side is [`PluginClient`].
//!
//! Properties are zkey's (`zkey-name`, `volumes`, `cipher`, `xts-key`, ...); a plug-in stores
//! them in the KMS verbatim.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// `$ZKEY_KMS_PLUGINS`: where `kms-plugins.conf` is.
pub const PLUGINS_CONF_ENV: &str = "ZKEY_KMS_PLUGINS";
pub const DEFAULT_PLUGINS_CONF: &str = "/etc/zkey/kms-plugins.conf";
/// Longest message line accepted, both ways.
pub const MAX_LINE: usize = 16 << 20;
/// Default time a plug-in has for one answer. Generous: a KMS behind a slow network plus
/// failover to a second server must fit.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Which part of an XTS key a generated key is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XtsPart {
    None,
    Xts1,
    Xts2,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReencipherMode {
    Auto,
    InPlace,
    Staged,
    Complete,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MkDirection {
    Auto,
    FromOld,
    ToNew,
}

/// The wire form of a re-encipher request: `-o -n` (two steps) has none, a plug-in's keys move
/// one register at a time.
pub fn wire_request(
    r: ap_sim::reencipher::Request,
) -> Result<(ReencipherMode, MkDirection), ap_sim::reencipher::FlagError> {
    use ap_sim::reencipher::{Direction, Mode};
    let mode = match r.mode {
        None => ReencipherMode::Auto,
        Some(Mode::Staged) => ReencipherMode::Staged,
        Some(Mode::InPlace) => ReencipherMode::InPlace,
        Some(Mode::Complete) => ReencipherMode::Complete,
    };
    let direction = match r.one_step()? {
        None => MkDirection::Auto,
        Some(Direction::ToNew) => MkDirection::ToNew,
        Some(Direction::FromOld) => MkDirection::FromOld,
    };
    Ok((mode, direction))
}

/// A request, as sent on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Hello {
        versions: Vec<u32>,
        config_dir: Option<PathBuf>,
    },
    Bind {
        config_dir: PathBuf,
    },
    Info,
    CommandOptions {
        command: String,
    },
    Configure {
        cca_apqns: Option<Vec<String>>,
        ep11_apqns: Option<Vec<String>>,
        #[serde(default)]
        options: BTreeMap<String, String>,
    },
    Deconfigure,
    Login,
    SupportsKeyType {
        key_type: String,
    },
    GenerateKey {
        key_type: String,
        bits: u32,
        xts: XtsPart,
        label: Option<String>,
        #[serde(default)]
        properties: BTreeMap<String, String>,
    },
    SetKeyProperties {
        key_id: String,
        properties: BTreeMap<String, Option<String>>,
    },
    GetKeyProperties {
        key_id: String,
    },
    RemoveKey {
        key_id: String,
        #[serde(default)]
        options: BTreeMap<String, String>,
    },
    ListKeys {
        label: Option<String>,
        #[serde(default)]
        properties: BTreeMap<String, String>,
        #[serde(default)]
        options: BTreeMap<String, String>,
    },
    ImportKey {
        key_id: String,
        key_type: String,
    },
    Reencipher {
        mode: ReencipherMode,
        direction: MkDirection,
        #[serde(default)]
        options: BTreeMap<String, String>,
    },
    KeyStatus,
}

/// Error codes on the wire.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    UnsupportedVersion,
    InvalidRequest,
    NotBound,
    NotConfigured,
    UnsupportedKeyType,
    ServerDown,
    TlsFailure,
    CertificateNotTrusted,
    KeyNotFound,
    KeyRevoked,
    ServerError,
    Hsm,
    Io,
    Internal,
}

/// An error as the plug-in reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError {
            code,
            message: message.into(),
        }
    }
}

/// A response, as sent on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
    #[serde(default)]
    pub notices: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub name: String,
    pub description: String,
}

/// `info`: what zkey shows in `zkey kms info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub configured: bool,
    /// (label, value) lines for display.
    pub details: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptionSpec {
    /// The long option name, without dashes.
    pub name: String,
    /// Whether it takes a value (`--name VALUE`) or is a flag (value "yes").
    pub takes_value: bool,
    pub help: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigureStatus {
    Complete,
    /// The configuration lacks what `missing` lists (each a sentence saying what to do).
    Incomplete,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigureResult {
    pub status: ConfigureStatus,
    pub missing: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratedKey {
    /// The secure key token, hex.
    pub secure_key: String,
    pub key_id: String,
    pub label: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmsKey {
    pub key_id: String,
    pub label: String,
    /// The KMS's word for the key's state (`active`, `deactivated`, ...).
    pub state: String,
    pub bits: Option<u32>,
    pub properties: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedKey {
    /// The secure key token, hex, under the CURRENT master key.
    pub secure_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReencipheredKey {
    /// The plug-in's name for its internal key (`identity-key`, `wrapping-key`).
    pub key: String,
    /// What happened: `staged`, `completed`, `re-enciphered`, `skipped`.
    pub action: String,
    pub detail: String,
    /// The master key type the key is enciphered with (optional on the wire, so that a plug-in
    /// that does not say is still understood).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mktype: Option<ap_sim::MkType>,
}

impl ReencipheredKey {
    pub const STAGED: &'static str = "staged";
    pub const COMPLETED: &'static str = "completed";
    pub const REENCIPHERED: &'static str = "re-enciphered";
    pub const SKIPPED: &'static str = "skipped";

    /// Whether the key was changed (staged, completed or re-enciphered).
    pub fn changed(&self) -> bool {
        self.action != Self::SKIPPED
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReencipherReport {
    pub keys: Vec<ReencipheredKey>,
}

impl ReencipherReport {
    /// The keys that were staged, completed or re-enciphered (not skipped).
    pub fn changed(&self) -> Vec<String> {
        self.keys
            .iter()
            .filter(|k| k.changed())
            .map(|k| k.key.clone())
            .collect()
    }
}

/// `key_status`: one of the plug-in's own keys, as its token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginKeyStatus {
    /// The plug-in's name for the key (`identity-key`, `wrapping-key`).
    pub key: String,
    /// The master key type it is enciphered with (`apka`, `aes`, `ep11`).
    pub mktype: ap_sim::MkType,
    /// The key's type, e.g. `CCA-ECC-P256`, `CCA-AESDATA`.
    pub key_type: String,
    /// The APQNs the plug-in uses the key on.
    pub apqns: Vec<ap_sim::Apqn>,
    /// The master key verification pattern in the live key's token.
    pub mkvp: ap_sim::Mkvp,
    /// That of its staged re-enciphered copy, when one is pending.
    pub staged_mkvp: Option<ap_sim::Mkvp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStatusReport {
    pub keys: Vec<PluginKeyStatus>,
}

// ---------------------------------------------------------------------------------------------
// The plug-in side.

/// What the plug-in said for the user besides its answer (e.g. that a secondary server was used).
pub type Notices = Vec<String>;

fn unsupported(op: &str) -> WireError {
    WireError::new(
        ErrorCode::InvalidRequest,
        format!("this plug-in does not support '{op}'"),
    )
}

/// What a plug-in author implements: one typed method per request of the protocol (age's
/// `age-plugin` model); [`serve`] runs the session, parses each request, calls its method and
/// writes the typed answer. `config_dir` is set by [`PluginV1::hello`] or [`PluginV1::bind`]
/// before any other request reaches the plug-in. A request a plug-in does not support keeps
/// its default, which answers that it is not supported.
pub trait PluginV1 {
    fn hello(&mut self, config_dir: Option<&Path>) -> Result<Hello, WireError>;
    fn bind(&mut self, config_dir: &Path, notices: &mut Notices) -> Result<(), WireError>;
    fn info(&mut self, notices: &mut Notices) -> Result<PluginInfo, WireError>;
    fn command_options(
        &mut self,
        _command: &str,
        _notices: &mut Notices,
    ) -> Result<Vec<OptionSpec>, WireError> {
        Ok(Vec::new())
    }
    fn configure(
        &mut self,
        cca_apqns: Option<Vec<String>>,
        ep11_apqns: Option<Vec<String>>,
        options: BTreeMap<String, String>,
        notices: &mut Notices,
    ) -> Result<ConfigureResult, WireError>;
    fn deconfigure(&mut self, _notices: &mut Notices) -> Result<(), WireError> {
        Err(unsupported("deconfigure"))
    }
    fn login(&mut self, _notices: &mut Notices) -> Result<(), WireError> {
        Ok(())
    }
    fn supports_key_type(
        &mut self,
        key_type: &str,
        notices: &mut Notices,
    ) -> Result<bool, WireError>;
    fn generate_key(
        &mut self,
        key_type: &str,
        bits: u32,
        xts: XtsPart,
        label: Option<String>,
        properties: BTreeMap<String, String>,
        notices: &mut Notices,
    ) -> Result<GeneratedKey, WireError>;
    fn set_key_properties(
        &mut self,
        key_id: &str,
        properties: BTreeMap<String, Option<String>>,
        notices: &mut Notices,
    ) -> Result<(), WireError>;
    fn get_key_properties(
        &mut self,
        key_id: &str,
        notices: &mut Notices,
    ) -> Result<BTreeMap<String, String>, WireError>;
    fn remove_key(
        &mut self,
        key_id: &str,
        options: BTreeMap<String, String>,
        notices: &mut Notices,
    ) -> Result<(), WireError>;
    fn list_keys(
        &mut self,
        label: Option<String>,
        properties: BTreeMap<String, String>,
        options: BTreeMap<String, String>,
        notices: &mut Notices,
    ) -> Result<Vec<KmsKey>, WireError>;
    fn import_key(
        &mut self,
        key_id: &str,
        key_type: &str,
        notices: &mut Notices,
    ) -> Result<ImportedKey, WireError>;
    fn reencipher(
        &mut self,
        _mode: ReencipherMode,
        _direction: MkDirection,
        _options: BTreeMap<String, String>,
        _notices: &mut Notices,
    ) -> Result<ReencipherReport, WireError> {
        Err(unsupported("reencipher"))
    }
    fn key_status(&mut self, _notices: &mut Notices) -> Result<KeyStatusReport, WireError> {
        Ok(KeyStatusReport { keys: Vec::new() })
    }
}

/// One request (after the handshake) to its method, and the answer to its wire value.
fn dispatch(
    p: &mut dyn PluginV1,
    request: Request,
    n: &mut Notices,
) -> Result<serde_json::Value, WireError> {
    match request {
        Request::Hello { .. } => Err(WireError::new(
            ErrorCode::InvalidRequest,
            "the handshake happens once",
        )),
        Request::Bind { config_dir } => to_value(&p.bind(&config_dir, n)?),
        Request::Info => to_value(&p.info(n)?),
        Request::CommandOptions { command } => to_value(&p.command_options(&command, n)?),
        Request::Configure {
            cca_apqns,
            ep11_apqns,
            options,
        } => to_value(&p.configure(cca_apqns, ep11_apqns, options, n)?),
        Request::Deconfigure => to_value(&p.deconfigure(n)?),
        Request::Login => to_value(&p.login(n)?),
        Request::SupportsKeyType { key_type } => to_value(&p.supports_key_type(&key_type, n)?),
        Request::GenerateKey {
            key_type,
            bits,
            xts,
            label,
            properties,
        } => to_value(&p.generate_key(&key_type, bits, xts, label, properties, n)?),
        Request::SetKeyProperties { key_id, properties } => {
            to_value(&p.set_key_properties(&key_id, properties, n)?)
        }
        Request::GetKeyProperties { key_id } => to_value(&p.get_key_properties(&key_id, n)?),
        Request::RemoveKey { key_id, options } => to_value(&p.remove_key(&key_id, options, n)?),
        Request::ListKeys {
            label,
            properties,
            options,
        } => to_value(&p.list_keys(label, properties, options, n)?),
        Request::ImportKey { key_id, key_type } => to_value(&p.import_key(&key_id, &key_type, n)?),
        Request::Reencipher {
            mode,
            direction,
            options,
        } => to_value(&p.reencipher(mode, direction, options, n)?),
        Request::KeyStatus => to_value(&p.key_status(n)?),
    }
}

pub fn serve(
    plugin: &mut dyn PluginV1,
    input: impl Read,
    mut output: impl Write,
) -> std::io::Result<()> {
    let mut input = BufReader::new(input);
    let mut greeted = false;
    loop {
        let line = match read_line(&mut input)? {
            Some(l) => l,
            None => return Ok(()),
        };
        let mut notices = Vec::new();
        let result = match serde_json::from_str::<Request>(&line) {
            Err(e) => Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!("the request is not valid protocol JSON ({e}): zkey and the plug-in may be of different versions"),
            )),
            Ok(Request::Hello { versions, config_dir }) => {
                if !versions.contains(&PROTOCOL_VERSION) {
                    let r = Response {
                        ok: None,
                        error: Some(WireError::new(
                            ErrorCode::UnsupportedVersion,
                            format!("this plug-in speaks protocol version {PROTOCOL_VERSION}, zkey offered {versions:?}: install matching versions of zkey and the plug-in"),
                        )),
                        notices,
                    };
                    write_line(&mut output, &r)?;
                    return Ok(());
                }
                greeted = true;
                plugin
                    .hello(config_dir.as_deref())
                    .and_then(|h| to_value(&h))
            }
            Ok(_) if !greeted => Err(WireError::new(
                ErrorCode::InvalidRequest,
                "the session must start with the 'hello' handshake",
            )),
            Ok(req) => dispatch(plugin, req, &mut notices),
        };
        let r = match result {
            Ok(v) => Response {
                ok: Some(v),
                error: None,
                notices,
            },
            Err(e) => Response {
                ok: None,
                error: Some(e),
                notices,
            },
        };
        write_line(&mut output, &r)?;
    }
}

fn to_value<T: Serialize>(v: &T) -> Result<serde_json::Value, WireError> {
    serde_json::to_value(v).map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
}

/// Reads one message line, as both sides do: at most [`MAX_LINE`] bytes, UTF-8, the line end
/// and trailing white space removed; `None` at the end of the input.
pub fn read_line(r: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "message line too long",
        ));
    }
    String::from_utf8(buf)
        .map(|s| Some(s.trim_end().to_string()))
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "message is not UTF-8"))
}

fn write_line(w: &mut impl Write, r: &impl Serialize) -> std::io::Result<()> {
    let mut s = serde_json::to_string(r).map_err(std::io::Error::other)?;
    s.push('\n');
    w.write_all(s.as_bytes())?;
    w.flush()
}

// ---------------------------------------------------------------------------------------------
// The zkey side.

/// zkey's reading of one response line of a plug-in to a request whose result is a `T`: the
/// result or the plug-in's error, and the notices (kept in both cases). `Err` says why the line
/// is no valid response: not protocol JSON, or a result of another shape.
pub fn parse_response<T: DeserializeOwned>(
    line: &str,
) -> Result<(Result<T, WireError>, Vec<String>), String> {
    let resp: Response =
        serde_json::from_str(line).map_err(|e| format!("invalid response ({e})"))?;
    let result = match (resp.ok, resp.error) {
        (_, Some(e)) => Err(e),
        (Some(v), None) => {
            Ok(serde_json::from_value(v).map_err(|e| format!("unexpected result ({e})"))?)
        }
        (None, None) => Ok(serde_json::from_value(serde_json::Value::Null)
            .map_err(|_| "a response with neither result nor error".to_string())?),
    };
    Ok((result, resp.notices))
}

/// Errors of [`PluginClient`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read the KMS plug-in list {path}: {why}")]
    Conf { path: PathBuf, why: String },
    #[error("no KMS plug-in named '{name}' in {path}: add a line '{name}=EXECUTABLE' there")]
    UnknownPlugin { name: String, path: PathBuf },
    #[error("cannot start KMS plug-in {exe}: {why}")]
    Spawn { exe: PathBuf, why: String },
    #[error("KMS plug-in {exe} did not answer within {secs} s and was stopped; nothing was changed: check the plug-in's KMS connection and retry")]
    Timeout { exe: PathBuf, secs: u64 },
    #[error("KMS plug-in {exe} ended unexpectedly ({status}){stderr}; nothing was changed: check the plug-in's installation")]
    Crashed {
        exe: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("KMS plug-in {exe} broke the protocol: {why}")]
    Protocol { exe: PathBuf, why: String },
    #[error("{0}")]
    Plugin(WireError),
}

impl ClientError {
    /// The plug-in's error code, when the plug-in itself reported the error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Plugin(w) => Some(w.code),
            _ => None,
        }
    }
}

/// Where `kms-plugins.conf` is: `$ZKEY_KMS_PLUGINS`, else [`DEFAULT_PLUGINS_CONF`].
pub fn plugins_conf_path() -> PathBuf {
    std::env::var_os(PLUGINS_CONF_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PLUGINS_CONF))
}

/// The executable registered for `name` in `kms-plugins.conf` (`$ZKEY_KMS_PLUGINS`).
pub fn lookup_plugin(name: &str) -> Result<PathBuf, ClientError> {
    let path = plugins_conf_path();
    let text = infra::input::read_text_bounded(&path, "KMS plug-in list").map_err(|e| {
        ClientError::Conf {
            path: path.clone(),
            why: e.to_string(),
        }
    })?;
    parse_plugins_conf(&text)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, exe)| exe)
        .ok_or(ClientError::UnknownPlugin {
            name: name.to_string(),
            path,
        })
}

/// The `NAME=EXECUTABLE` lines of a `kms-plugins.conf`.
pub fn parse_plugins_conf(text: &str) -> Vec<(String, PathBuf)> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.split_once('='))
        .map(|(n, e)| (n.trim().to_string(), PathBuf::from(e.trim())))
        .filter(|(n, e)| !n.is_empty() && !e.as_os_str().is_empty())
        .collect()
}

/// A running plug-in session. Dropping it ends the session (and kills a plug-in that does not
/// exit in time).
pub struct PluginClient {
    exe: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<std::io::Result<Option<String>>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    timeout: Duration,
    notices: Vec<String>,
    hello: Hello,
}

impl PluginClient {
    /// Starts the plug-in registered as `name` and does the handshake.
    pub fn open(name: &str, config_dir: Option<&Path>) -> Result<PluginClient, ClientError> {
        let exe = lookup_plugin(name)?;
        Self::spawn(&exe, config_dir, DEFAULT_TIMEOUT)
    }

    /// Starts `exe` and does the handshake. `timeout` bounds every answer.
    pub fn spawn(
        exe: &Path,
        config_dir: Option<&Path>,
        timeout: Duration,
    ) -> Result<PluginClient, ClientError> {
        Self::spawn_with_env(exe, config_dir, timeout, &[])
    }

    /// Like [`Self::spawn`], with extra environment variables for the plug-in (e.g.
    /// `AP_SIM_DIR` when zkey was pointed at another simulator). Never pass secrets here.
    pub fn spawn_with_env(
        exe: &Path,
        config_dir: Option<&Path>,
        timeout: Duration,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<PluginClient, ClientError> {
        let mut child = Command::new(exe)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ClientError::Spawn {
                exe: exe.to_path_buf(),
                why: e.to_string(),
            })?;
        let stdout = child.stdout.take().expect("piped");
        let mut stderr_pipe = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let l = read_line(&mut r);
                let end = !matches!(l, Ok(Some(_)));
                if tx.send(l).is_err() || end {
                    break;
                }
            }
        });
        // Keep the last 4 KiB of stderr for crash reports.
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                s.extend_from_slice(&buf[..n]);
                let excess = s.len().saturating_sub(4096);
                s.drain(..excess);
            }
        });
        let mut c = PluginClient {
            exe: exe.to_path_buf(),
            stdin: child.stdin.take(),
            child,
            lines: rx,
            stderr,
            timeout,
            notices: Vec::new(),
            hello: Hello {
                version: 0,
                name: String::new(),
                description: String::new(),
            },
        };
        c.hello = c.request(&Request::Hello {
            versions: vec![PROTOCOL_VERSION],
            config_dir: config_dir.map(Path::to_path_buf),
        })?;
        if c.hello.version != PROTOCOL_VERSION {
            return Err(ClientError::Protocol {
                exe: c.exe.clone(),
                why: format!("it chose protocol version {}", c.hello.version),
            });
        }
        Ok(c)
    }

    /// What the plug-in said in the handshake.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// Takes the notices the plug-in sent so far (lines to show the user).
    pub fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    fn fail_crashed(&mut self) -> ClientError {
        let status = match self.child.wait() {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        };
        // Let the stderr thread catch up with the last words.
        std::thread::sleep(Duration::from_millis(50));
        let tail = String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|p| p.into_inner()))
            .trim()
            .to_string();
        ClientError::Crashed {
            exe: self.exe.clone(),
            status,
            stderr: if tail.is_empty() {
                String::new()
            } else {
                format!(": {tail}")
            },
        }
    }

    /// Sends one request and returns the typed result.
    pub fn request<T: DeserializeOwned>(&mut self, req: &Request) -> Result<T, ClientError> {
        let mut line = serde_json::to_string(req).map_err(|e| ClientError::Protocol {
            exe: self.exe.clone(),
            why: e.to_string(),
        })?;
        line.push('\n');
        let sent = match self.stdin.as_mut() {
            Some(w) => w.write_all(line.as_bytes()).and_then(|_| w.flush()),
            None => Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
        };
        if sent.is_err() {
            return Err(self.fail_crashed());
        }
        let answer = match self.lines.recv_timeout(self.timeout) {
            Ok(Ok(Some(l))) => l,
            Ok(Ok(None)) | Ok(Err(_)) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(self.fail_crashed())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.stdin = None;
                return Err(ClientError::Timeout {
                    exe: self.exe.clone(),
                    secs: self.timeout.as_secs(),
                });
            }
        };
        let (result, notices) = parse_response(&answer).map_err(|why| ClientError::Protocol {
            exe: self.exe.clone(),
            why,
        })?;
        self.notices.extend(notices);
        result.map_err(ClientError::Plugin)
    }

    pub fn bind(&mut self, config_dir: &Path) -> Result<(), ClientError> {
        self.request(&Request::Bind {
            config_dir: config_dir.to_path_buf(),
        })
    }

    pub fn info(&mut self) -> Result<PluginInfo, ClientError> {
        self.request(&Request::Info)
    }

    pub fn command_options(&mut self, command: &str) -> Result<Vec<OptionSpec>, ClientError> {
        self.request(&Request::CommandOptions {
            command: command.to_string(),
        })
    }

    pub fn configure(
        &mut self,
        cca_apqns: Option<Vec<String>>,
        ep11_apqns: Option<Vec<String>>,
        options: BTreeMap<String, String>,
    ) -> Result<ConfigureResult, ClientError> {
        self.request(&Request::Configure {
            cca_apqns,
            ep11_apqns,
            options,
        })
    }

    pub fn deconfigure(&mut self) -> Result<(), ClientError> {
        self.request(&Request::Deconfigure)
    }

    pub fn login(&mut self) -> Result<(), ClientError> {
        self.request(&Request::Login)
    }

    pub fn supports_key_type(&mut self, key_type: &str) -> Result<bool, ClientError> {
        self.request(&Request::SupportsKeyType {
            key_type: key_type.to_string(),
        })
    }

    /// Generates a key in the KMS; returns the secure key bytes, its KMS ID and label.
    pub fn generate_key(
        &mut self,
        key_type: &str,
        bits: u32,
        xts: XtsPart,
        label: Option<&str>,
        properties: BTreeMap<String, String>,
    ) -> Result<(Vec<u8>, String, String), ClientError> {
        let g: GeneratedKey = self.request(&Request::GenerateKey {
            key_type: key_type.to_string(),
            bits,
            xts,
            label: label.map(String::from),
            properties,
        })?;
        let key = self.unhex(&g.secure_key)?;
        Ok((key, g.key_id, g.label))
    }

    pub fn set_key_properties(
        &mut self,
        key_id: &str,
        properties: BTreeMap<String, Option<String>>,
    ) -> Result<(), ClientError> {
        self.request(&Request::SetKeyProperties {
            key_id: key_id.to_string(),
            properties,
        })
    }

    pub fn get_key_properties(
        &mut self,
        key_id: &str,
    ) -> Result<BTreeMap<String, String>, ClientError> {
        self.request(&Request::GetKeyProperties {
            key_id: key_id.to_string(),
        })
    }

    pub fn remove_key(
        &mut self,
        key_id: &str,
        options: BTreeMap<String, String>,
    ) -> Result<(), ClientError> {
        self.request(&Request::RemoveKey {
            key_id: key_id.to_string(),
            options,
        })
    }

    pub fn list_keys(
        &mut self,
        label: Option<&str>,
        properties: BTreeMap<String, String>,
        options: BTreeMap<String, String>,
    ) -> Result<Vec<KmsKey>, ClientError> {
        self.request(&Request::ListKeys {
            label: label.map(String::from),
            properties,
            options,
        })
    }

    /// Fetches the key from the KMS as a secure key under the CURRENT master key.
    pub fn import_key(&mut self, key_id: &str, key_type: &str) -> Result<Vec<u8>, ClientError> {
        let k: ImportedKey = self.request(&Request::ImportKey {
            key_id: key_id.to_string(),
            key_type: key_type.to_string(),
        })?;
        self.unhex(&k.secure_key)
    }

    pub fn reencipher(
        &mut self,
        mode: ReencipherMode,
        direction: MkDirection,
        options: BTreeMap<String, String>,
    ) -> Result<ReencipherReport, ClientError> {
        self.request(&Request::Reencipher {
            mode,
            direction,
            options,
        })
    }

    /// The plug-in's own keys and their master key verification patterns.
    pub fn key_status(&mut self) -> Result<KeyStatusReport, ClientError> {
        self.request(&Request::KeyStatus)
    }

    fn unhex(&self, s: &str) -> Result<Vec<u8>, ClientError> {
        hex::decode(s).map_err(|_| ClientError::Protocol {
            exe: self.exe.clone(),
            why: "a secure key that is not hex".into(),
        })
    }

    /// Ends the session: closes stdin, waits up to the timeout for the plug-in to exit, kills
    /// it otherwise.
    pub fn close(mut self) -> Result<(), ClientError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), ClientError> {
        self.stdin = None;
        let deadline = std::time::Instant::now() + self.timeout.min(Duration::from_secs(10));
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) if s.success() => return Ok(()),
                Ok(Some(_)) => return Err(self.fail_crashed()),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(ClientError::Timeout {
                        exe: self.exe.clone(),
                        secs: self.timeout.as_secs(),
                    });
                }
            }
        }
    }
}

impl Drop for PluginClient {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_plugin_list() {
        let l = parse_plugins_conf(
            "# c\nEKMFWeb=zkey-ekmfweb\n KMIP = /usr/bin/zkey-kms-kmip # x\nbad\n=x\n",
        );
        assert_eq!(
            l,
            vec![
                ("EKMFWeb".to_string(), PathBuf::from("zkey-ekmfweb")),
                ("KMIP".to_string(), PathBuf::from("/usr/bin/zkey-kms-kmip")),
            ]
        );
    }

    #[test]
    fn wire_form_of_requests_is_stable() {
        let r = Request::ImportKey {
            key_id: "7".into(),
            key_type: "CCA-AESDATA".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"op":"import_key","key_id":"7","key_type":"CCA-AESDATA"}"#
        );
        let r: Request =
            serde_json::from_str(r#"{"op":"reencipher","mode":"staged","direction":"auto"}"#)
                .unwrap();
        assert!(matches!(
            r,
            Request::Reencipher {
                mode: ReencipherMode::Staged,
                ..
            }
        ));
        assert_eq!(
            serde_json::to_string(&Request::KeyStatus).unwrap(),
            r#"{"op":"key_status"}"#
        );
        let st = PluginKeyStatus {
            key: "identity-key".into(),
            mktype: ap_sim::MkType::Apka,
            key_type: "CCA-ECC-P256".into(),
            apqns: vec!["08.002f".parse().unwrap()],
            mkvp: "0123456789abcdef".parse().unwrap(),
            staged_mkvp: None,
        };
        let json = serde_json::to_value(&KeyStatusReport {
            keys: vec![st.clone()],
        })
        .unwrap();
        assert_eq!(json["keys"][0]["mktype"], "apka");
        assert_eq!(json["keys"][0]["apqns"][0], "08.002f");
        assert_eq!(json["keys"][0]["staged_mkvp"], serde_json::Value::Null);
        let back: KeyStatusReport = serde_json::from_value(json).unwrap();
        assert_eq!(back.keys, [st]);
        // A report without the optional mktype (an older plug-in) still parses.
        let k: ReencipheredKey =
            serde_json::from_str(r#"{"key":"wrapping-key","action":"skipped","detail":"x"}"#)
                .unwrap();
        assert_eq!(k.mktype, None);
    }

    struct Echo;
    impl PluginV1 for Echo {
        fn hello(&mut self, _: Option<&Path>) -> Result<Hello, WireError> {
            Ok(Hello {
                version: PROTOCOL_VERSION,
                name: "echo".into(),
                description: String::new(),
            })
        }
        fn login(&mut self, n: &mut Notices) -> Result<(), WireError> {
            n.push("note".into());
            Ok(())
        }
        fn bind(&mut self, _: &Path, _: &mut Notices) -> Result<(), WireError> {
            Ok(())
        }
        fn info(&mut self, n: &mut Notices) -> Result<PluginInfo, WireError> {
            n.push("note".into());
            Err(WireError::new(ErrorCode::KeyNotFound, "no"))
        }
        fn configure(
            &mut self,
            _: Option<Vec<String>>,
            _: Option<Vec<String>>,
            _: BTreeMap<String, String>,
            _: &mut Notices,
        ) -> Result<ConfigureResult, WireError> {
            Err(unsupported("configure"))
        }
        fn supports_key_type(&mut self, _: &str, _: &mut Notices) -> Result<bool, WireError> {
            Ok(false)
        }
        fn generate_key(
            &mut self,
            _: &str,
            _: u32,
            _: XtsPart,
            _: Option<String>,
            _: BTreeMap<String, String>,
            _: &mut Notices,
        ) -> Result<GeneratedKey, WireError> {
            Err(unsupported("generate_key"))
        }
        fn set_key_properties(
            &mut self,
            _: &str,
            _: BTreeMap<String, Option<String>>,
            _: &mut Notices,
        ) -> Result<(), WireError> {
            Err(unsupported("set_key_properties"))
        }
        fn get_key_properties(
            &mut self,
            _: &str,
            _: &mut Notices,
        ) -> Result<BTreeMap<String, String>, WireError> {
            Err(unsupported("get_key_properties"))
        }
        fn remove_key(
            &mut self,
            _: &str,
            _: BTreeMap<String, String>,
            _: &mut Notices,
        ) -> Result<(), WireError> {
            Err(unsupported("remove_key"))
        }
        fn list_keys(
            &mut self,
            _: Option<String>,
            _: BTreeMap<String, String>,
            _: BTreeMap<String, String>,
            _: &mut Notices,
        ) -> Result<Vec<KmsKey>, WireError> {
            Ok(Vec::new())
        }
        fn import_key(
            &mut self,
            _: &str,
            _: &str,
            _: &mut Notices,
        ) -> Result<ImportedKey, WireError> {
            Err(unsupported("import_key"))
        }
    }

    #[test]
    fn serve_handshakes_answers_and_refuses() {
        let input = concat!(
            r#"{"op":"login"}"#,
            "\n",
            r#"{"op":"hello","versions":[1],"config_dir":null}"#,
            "\n",
            r#"{"op":"login"}"#,
            "\n",
            r#"{"op":"info"}"#,
            "\n",
            "garbage\n",
        );
        let mut out = Vec::new();
        serve(&mut Echo, input.as_bytes(), &mut out).unwrap();
        let lines: Vec<Response> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(
            lines[0].error.as_ref().unwrap().code,
            ErrorCode::InvalidRequest
        );
        assert!(lines[1].ok.is_some());
        assert!(lines[2].error.is_none() && lines[2].notices == ["note"]);
        assert_eq!(
            lines[3].error.as_ref().unwrap().code,
            ErrorCode::KeyNotFound
        );
        assert_eq!(
            lines[4].error.as_ref().unwrap().code,
            ErrorCode::InvalidRequest
        );
        let mut out = Vec::new();
        serve(
            &mut Echo,
            &b"{\"op\":\"hello\",\"versions\":[9],\"config_dir\":null}\n{\"op\":\"login\"}\n"[..],
            &mut out,
        )
        .unwrap();
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s.lines().count(), 1);
        assert!(s.contains("unsupported_version"));
    }
}
