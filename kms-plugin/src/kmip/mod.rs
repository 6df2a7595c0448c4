//! A small KMIP 1.x client: TTLV messages over mutual TLS, the operations zkey needs, and the
//! failover over several servers.
//!
//! Why our own: the Rust KMIP crates are unmaintained (`kmip-protocol`, last released 2022) or
//! very heavy (`cosmian_kmip`); zkey needs a dozen operations, and a strict codec whose every
//! refusal is a typed error is easier to trust than a general one. See [`ttlv`] for the
//! encoding.
//!
//! Layers:
//! - [`ttlv`]: the encoding.
//! - [`tls`]: connections (rustls, TLS 1.2/1.3, the client key signing in the HSM), the server
//!   list tried in order, timeouts, and the mapping of network and TLS failures to
//!   [`KmipError`].
//! - [`Client`]: request messages with one or more batch items, response parsing, and one
//!   method per operation: DiscoverVersions, Query, Create, Register, Activate, Get (also
//!   wrapped with a registered key, NIST AES key wrap), GetAttributes, AddAttribute,
//!   ModifyAttribute, DeleteAttribute, Locate, Revoke, Destroy.
//!
//! Attributes are the KMIP 1.x form (Attribute Name as text, Attribute Value) that PyKMIP and
//! most appliances speak. Custom attributes (`x-...`) are encodable, but PyKMIP 0.11 does not
//! store them (nor implement AddAttribute), so the plug-in keeps zkey's properties in an
//! Application Specific Information attribute, which PyKMIP stores, returns and lets a client
//! modify (see `kmip_plugin`).

pub mod tls;
pub mod ttlv;

use std::time::Duration;

use ttlv::{Item, Value};
use zeroize::Zeroizing;

pub use tls::{Endpoint, TlsSettings};

/// KMIP tags used here (KMIP 1.4 section 9.1.3.1).
pub mod tag {
    pub const APPLICATION_DATA: u32 = 0x420002;
    pub const APPLICATION_NAMESPACE: u32 = 0x420003;
    pub const APPLICATION_SPECIFIC_INFORMATION: u32 = 0x420004;
    pub const ATTRIBUTE: u32 = 0x420008;
    pub const ATTRIBUTE_INDEX: u32 = 0x420009;
    pub const ATTRIBUTE_NAME: u32 = 0x42000A;
    pub const ATTRIBUTE_VALUE: u32 = 0x42000B;
    pub const BATCH_COUNT: u32 = 0x42000D;
    pub const BATCH_ITEM: u32 = 0x42000F;
    pub const BLOCK_CIPHER_MODE: u32 = 0x420011;
    pub const CRYPTOGRAPHIC_ALGORITHM: u32 = 0x420028;
    pub const CRYPTOGRAPHIC_LENGTH: u32 = 0x42002A;
    pub const CRYPTOGRAPHIC_PARAMETERS: u32 = 0x42002B;
    pub const CRYPTOGRAPHIC_USAGE_MASK: u32 = 0x42002C;
    pub const ENCRYPTION_KEY_INFORMATION: u32 = 0x420036;
    pub const KEY_BLOCK: u32 = 0x420040;
    pub const KEY_FORMAT_TYPE: u32 = 0x420042;
    pub const KEY_MATERIAL: u32 = 0x420043;
    pub const KEY_VALUE: u32 = 0x420045;
    pub const KEY_WRAPPING_DATA: u32 = 0x420046;
    pub const KEY_WRAPPING_SPECIFICATION: u32 = 0x420047;
    pub const MAXIMUM_ITEMS: u32 = 0x42004F;
    pub const NAME: u32 = 0x420053;
    pub const NAME_TYPE: u32 = 0x420054;
    pub const NAME_VALUE: u32 = 0x420055;
    pub const OBJECT_GROUP: u32 = 0x420056;
    pub const OBJECT_TYPE: u32 = 0x420057;
    pub const OPERATION: u32 = 0x42005C;
    pub const PROTOCOL_VERSION: u32 = 0x420069;
    pub const PROTOCOL_VERSION_MAJOR: u32 = 0x42006A;
    pub const PROTOCOL_VERSION_MINOR: u32 = 0x42006B;
    pub const QUERY_FUNCTION: u32 = 0x420074;
    pub const REQUEST_HEADER: u32 = 0x420077;
    pub const REQUEST_MESSAGE: u32 = 0x420078;
    pub const REQUEST_PAYLOAD: u32 = 0x420079;
    pub const RESPONSE_HEADER: u32 = 0x42007A;
    pub const RESPONSE_MESSAGE: u32 = 0x42007B;
    pub const RESPONSE_PAYLOAD: u32 = 0x42007C;
    pub const RESULT_MESSAGE: u32 = 0x42007D;
    pub const RESULT_REASON: u32 = 0x42007E;
    pub const RESULT_STATUS: u32 = 0x42007F;
    pub const REVOCATION_MESSAGE: u32 = 0x420080;
    pub const REVOCATION_REASON: u32 = 0x420081;
    pub const REVOCATION_REASON_CODE: u32 = 0x420082;
    pub const STATE: u32 = 0x42008D;
    pub const SYMMETRIC_KEY: u32 = 0x42008F;
    pub const TEMPLATE_ATTRIBUTE: u32 = 0x420091;
    pub const UNIQUE_BATCH_ITEM_ID: u32 = 0x420093;
    pub const UNIQUE_IDENTIFIER: u32 = 0x420094;
    pub const WRAPPING_METHOD: u32 = 0x42009E;
    pub const ENCODING_OPTION: u32 = 0x4200A3;
}

/// KMIP operations (the Operation enumeration).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Operation {
    Create = 0x01,
    Register = 0x03,
    Locate = 0x08,
    Get = 0x0A,
    GetAttributes = 0x0B,
    AddAttribute = 0x0D,
    ModifyAttribute = 0x0E,
    DeleteAttribute = 0x0F,
    Activate = 0x12,
    Revoke = 0x13,
    Destroy = 0x14,
    Query = 0x18,
    DiscoverVersions = 0x1E,
}

/// Enumeration values used here.
pub mod enums {
    pub const OBJECT_TYPE_SYMMETRIC_KEY: u32 = 0x02;
    pub const ALGORITHM_AES: u32 = 0x03;
    pub const KEY_FORMAT_RAW: u32 = 0x01;
    pub const NAME_TYPE_TEXT: u32 = 0x01;
    pub const WRAPPING_METHOD_ENCRYPT: u32 = 0x01;
    pub const BLOCK_CIPHER_MODE_NIST_KEY_WRAP: u32 = 0x0D;
    pub const ENCODING_OPTION_NONE: u32 = 0x01;
    pub const REVOCATION_CESSATION_OF_OPERATION: u32 = 0x06;
    pub const QUERY_OPERATIONS: u32 = 0x01;
    pub const QUERY_SERVER_INFORMATION: u32 = 0x03;
    pub const RESULT_SUCCESS: u32 = 0x00;
    pub const REASON_ITEM_NOT_FOUND: u32 = 0x01;
    pub const REASON_PERMISSION_DENIED: u32 = 0x0C;
    // Cryptographic Usage Mask bits.
    pub const USAGE_ENCRYPT: i32 = 0x04;
    pub const USAGE_DECRYPT: i32 = 0x08;
    pub const USAGE_WRAP_KEY: i32 = 0x10;
    pub const USAGE_UNWRAP_KEY: i32 = 0x20;
    pub const USAGE_EXPORT: i32 = 0x40;
}

/// The lifecycle state of a managed object.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    PreActive,
    Active,
    Deactivated,
    Compromised,
    Destroyed,
    DestroyedCompromised,
    Unknown,
}

impl State {
    fn from_enum(v: u32) -> State {
        match v {
            1 => State::PreActive,
            2 => State::Active,
            3 => State::Deactivated,
            4 => State::Compromised,
            5 => State::Destroyed,
            6 => State::DestroyedCompromised,
            _ => State::Unknown,
        }
    }

    /// Revoked (deactivated or compromised): the key must no longer protect new data.
    pub fn is_revoked(self) -> bool {
        matches!(self, State::Deactivated | State::Compromised)
    }

    pub fn is_destroyed(self) -> bool {
        matches!(self, State::Destroyed | State::DestroyedCompromised)
    }
}

/// Everything that can go wrong talking KMIP; each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum KmipError {
    #[error("no KMIP server is reachable ({0}): check that the server runs and the address and port in the plug-in configuration are right ('zkey kms configure --servers ...')")]
    ServerDown(String),
    #[error("TLS with KMIP server {server} failed: {why}")]
    Tls { server: String, why: String },
    #[error("KMIP server {server} presented a certificate that is not trusted ({why}): configure the CA that issued the server's certificate with 'zkey kms configure --server-ca FILE'")]
    CertificateNotTrusted { server: String, why: String },
    #[error("the connection to KMIP server {server} failed: {why}")]
    Io { server: String, why: String },
    #[error("KMIP key {0} does not exist on the server: check the key ID ('zkey kms list' shows the keys)")]
    KeyNotFound(String),
    #[error("KMIP key {id} is revoked (state {state:?}): it must not be used any more; generate a new key")]
    KeyRevoked { id: String, state: State },
    #[error("the KMIP server refused the operation {operation:?}: {reason} ({message})")]
    Server {
        operation: Operation,
        reason: String,
        message: String,
    },
    #[error("the KMIP server sent a response this client cannot use: {0}")]
    Protocol(String),
    #[error(transparent)]
    Ttlv(#[from] ttlv::TtlvError),
}

/// One batch item of a request.
#[derive(Debug)]
pub struct BatchItem {
    pub operation: Operation,
    pub payload: Vec<Item>,
}

/// The Result Reason names of KMIP 1.4, for messages.
fn reason_name(v: u32) -> String {
    let names = [
        "",
        "Item Not Found",
        "Response Too Large",
        "Authentication Not Successful",
        "Invalid Message",
        "Operation Not Supported",
        "Missing Data",
        "Invalid Field",
        "Feature Not Supported",
        "Operation Canceled By Requester",
        "Cryptographic Failure",
        "Illegal Operation",
        "Permission Denied",
        "Object archived",
        "Index Out of Bounds",
        "Application Namespace Not Supported",
        "Key Format Type Not Supported",
        "Key Compression Type Not Supported",
        "Encoding Option Error",
        "Key Value Not Present",
        "Attestation Required",
        "Attestation Failed",
    ];
    match names.get(v as usize) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!("reason {v:#x}"),
    }
}

/// Attributes of a key as the plug-in reads them.
#[derive(Clone, Debug, Default)]
pub struct KeyAttributes {
    pub names: Vec<String>,
    pub state: Option<State>,
    pub length: Option<i32>,
    pub object_groups: Vec<String>,
    /// Application Specific Information: (namespace, data) pairs, in the server's order.
    pub app_info: Vec<(String, String)>,
}

/// A key wrapped by the server: the wrapped bytes (RFC 3394 output). Not secret in itself,
/// but zeroed on drop anyway.
pub struct WrappedKey(pub Zeroizing<Vec<u8>>);

/// The client side of a connection to one of the configured servers.
pub struct Client {
    conn: tls::Connection,
    version: (i32, i32),
}

impl Client {
    /// Connects to the first reachable server of `settings` and agrees on a protocol version
    /// (DiscoverVersions; the highest 1.x both sides know, 1.2 if the server does not answer).
    /// `notices` receives a line for every server that was skipped.
    pub fn connect(settings: &TlsSettings, notices: &mut Vec<String>) -> Result<Client, KmipError> {
        let conn = tls::Connection::open(settings, notices)?;
        let mut c = Client {
            conn,
            version: (1, 2),
        };
        match c.discover_versions() {
            Ok(versions) => {
                if let Some(v) = versions
                    .into_iter()
                    .filter(|(maj, min)| *maj == 1 && *min <= 4)
                    .max()
                {
                    c.version = v;
                }
            }
            // A TLS 1.2 server checks the client certificate after our side of the handshake
            // is done, and PyKMIP then just closes the connection: the first request fails.
            Err(KmipError::Io { server, why }) => {
                return Err(KmipError::Tls {
                    server,
                    why: format!("the server closed the connection right after the handshake ({why}): it may not trust the client certificate; have the server's CA sign the plug-in's CSR ('zkey kms configure --gen-csr FILE') and configure the result with --client-cert"),
                })
            }
            // A server without DiscoverVersions (KMIP 1.0): keep 1.2, which most speak.
            Err(_) => {}
        }
        Ok(c)
    }

    /// The server this client is connected to (`host:port`).
    pub fn server(&self) -> &str {
        self.conn.server()
    }

    pub fn protocol_version(&self) -> (i32, i32) {
        self.version
    }

    /// Sends one request message with every item of `batch` and returns each item's response
    /// payload (or its error), in order. Items are matched by their Unique Batch Item ID when
    /// the server echoes it, else by position.
    pub fn batch(
        &mut self,
        batch: Vec<BatchItem>,
    ) -> Result<Vec<Result<Item, KmipError>>, KmipError> {
        let n = batch.len();
        let ops: Vec<Operation> = batch.iter().map(|b| b.operation).collect();
        let mut items = vec![Item::structure(
            tag::REQUEST_HEADER,
            vec![
                Item::structure(
                    tag::PROTOCOL_VERSION,
                    vec![
                        Item::int(tag::PROTOCOL_VERSION_MAJOR, self.version.0),
                        Item::int(tag::PROTOCOL_VERSION_MINOR, self.version.1),
                    ],
                ),
                Item::int(tag::BATCH_COUNT, n as i32),
            ],
        )];
        for (i, b) in batch.into_iter().enumerate() {
            let mut bi = vec![Item::enumeration(tag::OPERATION, b.operation as u32)];
            if n > 1 {
                bi.push(Item::bytes(tag::UNIQUE_BATCH_ITEM_ID, vec![i as u8 + 1]));
            }
            bi.push(Item::structure(tag::REQUEST_PAYLOAD, b.payload));
            items.push(Item::structure(tag::BATCH_ITEM, bi));
        }
        // The request may hold a clear key (Register): zero the encoding after sending.
        let request = Zeroizing::new(Item::structure(tag::REQUEST_MESSAGE, items).encode()?);
        let response = self.conn.round_trip(&request)?;
        #[cfg(feature = "failpoints")]
        capture::response(&ops, &response);
        read_response(&response, &ops)
    }

    /// One operation, one response payload.
    pub fn call(&mut self, operation: Operation, payload: Vec<Item>) -> Result<Item, KmipError> {
        self.batch(vec![BatchItem { operation, payload }])?
            .pop()
            .unwrap_or_else(|| Err(KmipError::Protocol("empty response".into())))
    }

    /// The protocol versions the server supports, best first.
    pub fn discover_versions(&mut self) -> Result<Vec<(i32, i32)>, KmipError> {
        let p = self.call(Operation::DiscoverVersions, vec![])?;
        Ok(p.all(tag::PROTOCOL_VERSION)
            .filter_map(|v| {
                Some((
                    v.child(tag::PROTOCOL_VERSION_MAJOR)?.as_int()?,
                    v.child(tag::PROTOCOL_VERSION_MINOR)?.as_int()?,
                ))
            })
            .collect())
    }

    /// Query: the operations the server supports, and its vendor identification if it tells.
    pub fn query(&mut self) -> Result<(Vec<u32>, Option<String>), KmipError> {
        let p = self.call(
            Operation::Query,
            vec![
                Item::enumeration(tag::QUERY_FUNCTION, enums::QUERY_OPERATIONS),
                Item::enumeration(tag::QUERY_FUNCTION, enums::QUERY_SERVER_INFORMATION),
            ],
        )?;
        let ops = p.all(tag::OPERATION).filter_map(Item::as_enum).collect();
        let vendor = p.child(0x42009D).and_then(Item::as_text).map(String::from);
        Ok((ops, vendor))
    }

    /// Creates an AES key of `bits` with `extra` attributes (Name, Object Group, ...) and
    /// activates it. Two requests: PyKMIP does not accept an Activate without a Unique
    /// Identifier, so the ID placeholder of a Create+Activate batch is not an option.
    pub fn create_active_aes_key(
        &mut self,
        bits: u32,
        usage_mask: i32,
        extra: Vec<Item>,
    ) -> Result<String, KmipError> {
        let mut attrs = vec![
            attribute(
                "Cryptographic Algorithm",
                Value::Enumeration(enums::ALGORITHM_AES),
            ),
            attribute("Cryptographic Length", Value::Integer(bits as i32)),
            attribute("Cryptographic Usage Mask", Value::Integer(usage_mask)),
        ];
        attrs.extend(extra);
        let created = self.call(
            Operation::Create,
            vec![
                Item::enumeration(tag::OBJECT_TYPE, enums::OBJECT_TYPE_SYMMETRIC_KEY),
                Item::structure(tag::TEMPLATE_ATTRIBUTE, attrs),
            ],
        )?;
        let id = unique_id(&created)?;
        self.activate(&id)?;
        Ok(id)
    }

    /// Registers a clear AES key (the plug-in's wrapping key) and activates it. The clear
    /// key is zeroed after encoding.
    pub fn register_aes_key(
        &mut self,
        clear: &[u8],
        usage_mask: i32,
        extra: Vec<Item>,
    ) -> Result<String, KmipError> {
        let bits = (clear.len() * 8) as i32;
        let mut attrs = vec![attribute(
            "Cryptographic Usage Mask",
            Value::Integer(usage_mask),
        )];
        attrs.extend(extra);
        let key = Item::structure(
            tag::SYMMETRIC_KEY,
            vec![Item::structure(
                tag::KEY_BLOCK,
                vec![
                    Item::enumeration(tag::KEY_FORMAT_TYPE, enums::KEY_FORMAT_RAW),
                    Item::structure(
                        tag::KEY_VALUE,
                        vec![Item::bytes(tag::KEY_MATERIAL, clear.to_vec())],
                    ),
                    Item::enumeration(tag::CRYPTOGRAPHIC_ALGORITHM, enums::ALGORITHM_AES),
                    Item::int(tag::CRYPTOGRAPHIC_LENGTH, bits),
                ],
            )],
        );
        let mut payload = vec![
            Item::enumeration(tag::OBJECT_TYPE, enums::OBJECT_TYPE_SYMMETRIC_KEY),
            Item::structure(tag::TEMPLATE_ATTRIBUTE, attrs),
            key,
        ];
        let res = self.call(Operation::Register, std::mem::take(&mut payload));
        let id = unique_id(&res?)?;
        self.activate(&id)?;
        Ok(id)
    }

    pub fn activate(&mut self, id: &str) -> Result<(), KmipError> {
        self.call(Operation::Activate, vec![uid(id)]).map(drop)
    }

    /// Get, with the key wrapped (NIST AES key wrap, RFC 3394) under the server-side key
    /// `wrapping_key_id`. Returns the wrapped key material.
    pub fn get_wrapped(
        &mut self,
        id: &str,
        wrapping_key_id: &str,
    ) -> Result<WrappedKey, KmipError> {
        let spec = Item::structure(
            tag::KEY_WRAPPING_SPECIFICATION,
            vec![
                Item::enumeration(tag::WRAPPING_METHOD, enums::WRAPPING_METHOD_ENCRYPT),
                Item::structure(
                    tag::ENCRYPTION_KEY_INFORMATION,
                    vec![
                        uid(wrapping_key_id),
                        Item::structure(
                            tag::CRYPTOGRAPHIC_PARAMETERS,
                            vec![Item::enumeration(
                                tag::BLOCK_CIPHER_MODE,
                                enums::BLOCK_CIPHER_MODE_NIST_KEY_WRAP,
                            )],
                        ),
                    ],
                ),
                Item::enumeration(tag::ENCODING_OPTION, enums::ENCODING_OPTION_NONE),
            ],
        );
        let p = self
            .call(Operation::Get, vec![uid(id), spec])
            .map_err(|e| not_found_as(e, id))?;
        let block = p
            .child(tag::SYMMETRIC_KEY)
            .and_then(|k| k.child(tag::KEY_BLOCK))
            .ok_or_else(|| KmipError::Protocol("Get returned no symmetric key block".into()))?;
        let wrapping = block.child(tag::KEY_WRAPPING_DATA).ok_or_else(|| {
            // Refuse a clear key: the plug-in asked for a wrapped one and must never hold a
            // volume key in the clear.
            KmipError::Protocol(
                "the server returned the key unwrapped although wrapping was requested".into(),
            )
        })?;
        if wrapping
            .child(tag::WRAPPING_METHOD)
            .and_then(Item::as_enum)
            .is_some_and(|m| m != enums::WRAPPING_METHOD_ENCRYPT)
        {
            return Err(KmipError::Protocol(
                "the server wrapped the key with another method than Encrypt".into(),
            ));
        }
        let material = block
            .child(tag::KEY_VALUE)
            .and_then(|v| match &v.value {
                // KMIP allows a wrapped Key Value as a plain byte string ...
                Value::ByteString(b) => Some(b.clone()),
                // ... and PyKMIP sends it as a Key Value structure holding the Key Material.
                _ => v.child(tag::KEY_MATERIAL)?.as_bytes().map(<[u8]>::to_vec),
            })
            .ok_or_else(|| KmipError::Protocol("Get returned no key material".into()))?;
        Ok(WrappedKey(Zeroizing::new(material)))
    }

    /// GetAttributes for `names` (all attributes when empty).
    pub fn get_attributes(&mut self, id: &str, names: &[&str]) -> Result<KeyAttributes, KmipError> {
        self.get_attributes_batch(&[id.to_string()], names)?
            .pop()
            .unwrap_or_else(|| Err(KmipError::Protocol("empty response".into())))
    }

    /// GetAttributes of several objects in one request message (one batch item each).
    pub fn get_attributes_batch(
        &mut self,
        ids: &[String],
        names: &[&str],
    ) -> Result<Vec<Result<KeyAttributes, KmipError>>, KmipError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let batch = ids
            .iter()
            .map(|id| {
                let mut payload = vec![uid(id)];
                payload.extend(names.iter().map(|n| Item::text(tag::ATTRIBUTE_NAME, *n)));
                BatchItem {
                    operation: Operation::GetAttributes,
                    payload,
                }
            })
            .collect();
        Ok(self
            .batch(batch)?
            .into_iter()
            .zip(ids)
            .map(|(r, id)| {
                r.map(|p| parse_attributes(&p))
                    .map_err(|e| not_found_as(e, id))
            })
            .collect())
    }

    /// AddAttribute (KMIP 1.x form). Not implemented by PyKMIP 0.11.
    pub fn add_attribute(&mut self, id: &str, name: &str, value: Value) -> Result<(), KmipError> {
        self.call(
            Operation::AddAttribute,
            vec![uid(id), attribute(name, value)],
        )
        .map(drop)
    }

    /// ModifyAttribute of instance `index` of attribute `name` (KMIP 1.x form).
    pub fn modify_attribute(
        &mut self,
        id: &str,
        name: &str,
        index: Option<i32>,
        value: Value,
    ) -> Result<(), KmipError> {
        let mut a = vec![Item::text(tag::ATTRIBUTE_NAME, name)];
        if let Some(i) = index {
            a.push(Item::int(tag::ATTRIBUTE_INDEX, i));
        }
        a.push(Item::new(tag::ATTRIBUTE_VALUE, value));
        self.call(
            Operation::ModifyAttribute,
            vec![uid(id), Item::structure(tag::ATTRIBUTE, a)],
        )
        .map_err(|e| not_found_as(e, id))
        .map(drop)
    }

    /// DeleteAttribute (KMIP 1.x form).
    pub fn delete_attribute(
        &mut self,
        id: &str,
        name: &str,
        index: Option<i32>,
    ) -> Result<(), KmipError> {
        let mut p = vec![uid(id), Item::text(tag::ATTRIBUTE_NAME, name)];
        if let Some(i) = index {
            p.push(Item::int(tag::ATTRIBUTE_INDEX, i));
        }
        self.call(Operation::DeleteAttribute, p).map(drop)
    }

    /// Locate the symmetric keys that match `attributes` (ANDed). Servers may ignore filters
    /// they do not implement, so callers check what they get back.
    pub fn locate(&mut self, attributes: Vec<Item>) -> Result<Vec<String>, KmipError> {
        let mut p = vec![attribute(
            "Object Type",
            Value::Enumeration(enums::OBJECT_TYPE_SYMMETRIC_KEY),
        )];
        p.extend(attributes);
        let r = self.call(Operation::Locate, p)?;
        Ok(r.all(tag::UNIQUE_IDENTIFIER)
            .filter_map(Item::as_text)
            .map(String::from)
            .collect())
    }

    /// Revoke with reason Cessation of Operation: the key becomes Deactivated.
    pub fn revoke(&mut self, id: &str, message: &str) -> Result<(), KmipError> {
        self.call(
            Operation::Revoke,
            vec![
                uid(id),
                Item::structure(
                    tag::REVOCATION_REASON,
                    vec![
                        Item::enumeration(
                            tag::REVOCATION_REASON_CODE,
                            enums::REVOCATION_CESSATION_OF_OPERATION,
                        ),
                        Item::text(tag::REVOCATION_MESSAGE, message),
                    ],
                ),
            ],
        )
        .map_err(|e| not_found_as(e, id))
        .map(drop)
    }

    pub fn destroy(&mut self, id: &str) -> Result<(), KmipError> {
        self.call(Operation::Destroy, vec![uid(id)])
            .map_err(|e| not_found_as(e, id))
            .map(drop)
    }

    /// Sets the I/O timeout for the following requests.
    pub fn set_timeout(&mut self, t: Duration) {
        self.conn.set_timeout(t);
    }
}

/// Test builds only (feature `failpoints`): with `$ZKEY_KMIP_CAPTURE_DIR` set, every response
/// message the plug-in receives is saved there as `PID-SEQ-OPERATIONS.ttlv`, for the fuzzing
/// seed corpus (`tests/tests/kmip_seeds.rs`). A release build has no such code.
#[cfg(feature = "failpoints")]
mod capture {
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub const DIR_ENV: &str = "ZKEY_KMIP_CAPTURE_DIR";

    pub fn response(ops: &[super::Operation], response: &[u8]) {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let Some(dir) = std::env::var_os(DIR_ENV).filter(|d| !d.is_empty()) else {
            return;
        };
        let names: Vec<String> = ops.iter().map(|o| format!("{o:?}")).collect();
        let file = std::path::Path::new(&dir).join(format!(
            "{}-{:03}-{}.ttlv",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            names.join("+")
        ));
        let _ = infra::durable::write_atomic(&file, response, 0o600);
    }
}

/// The plug-in's reading of a server's Response Message to a request whose batch items were
/// `ops`: each item's response payload or its error, in the request's order. Items are matched
/// by their Unique Batch Item ID when the server echoes it, else by position. Its input is
/// the network's, so it refuses (never panics on) anything malformed.
pub fn read_response(
    response: &[u8],
    ops: &[Operation],
) -> Result<Vec<Result<Item, KmipError>>, KmipError> {
    let n = ops.len();
    let msg = Item::decode(response)?;
    if msg.tag != tag::RESPONSE_MESSAGE {
        return Err(KmipError::Protocol(format!(
            "expected a Response Message, got tag {:06X}",
            msg.tag
        )));
    }
    let mut out: Vec<Option<Result<Item, KmipError>>> = (0..n).map(|_| None).collect();
    for (pos, bi) in msg.all(tag::BATCH_ITEM).enumerate() {
        let idx = match bi.child(tag::UNIQUE_BATCH_ITEM_ID).and_then(Item::as_bytes) {
            Some([id]) if (1..=n).contains(&(*id as usize)) => *id as usize - 1,
            _ => pos,
        };
        let Some(slot) = out.get_mut(idx) else {
            return Err(KmipError::Protocol(format!(
                "the response has more batch items than the request ({n})"
            )));
        };
        *slot = Some(batch_result(ops[idx], bi));
    }
    // A server that stops at the first failure (batch error continuation "stop") leaves
    // later items unanswered.
    Ok(out
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| {
                Err(KmipError::Protocol(format!(
                    "the server did not answer batch item {} ({:?})",
                    i + 1,
                    ops[i]
                )))
            })
        })
        .collect())
}

/// The attributes of a Get Attributes response payload; what is not understood is skipped.
pub fn parse_attributes(p: &Item) -> KeyAttributes {
    let mut a = KeyAttributes::default();
    for attr in p.all(tag::ATTRIBUTE) {
        let (Some(name), Some(v)) = (
            attr.child(tag::ATTRIBUTE_NAME).and_then(Item::as_text),
            attr.child(tag::ATTRIBUTE_VALUE),
        ) else {
            continue;
        };
        match name {
            "Name" => {
                if let Some(s) = v.child(tag::NAME_VALUE).and_then(Item::as_text) {
                    a.names.push(s.to_string());
                }
            }
            "State" => a.state = v.as_enum().map(State::from_enum),
            "Cryptographic Length" => a.length = v.as_int(),
            "Object Group" => {
                if let Some(s) = v.as_text() {
                    a.object_groups.push(s.to_string());
                }
            }
            "Application Specific Information" => {
                let ns = v.child(tag::APPLICATION_NAMESPACE).and_then(Item::as_text);
                let data = v.child(tag::APPLICATION_DATA).and_then(Item::as_text);
                if let (Some(ns), Some(data)) = (ns, data) {
                    a.app_info.push((ns.to_string(), data.to_string()));
                }
            }
            _ => {}
        }
    }
    a
}

fn uid(id: &str) -> Item {
    Item::text(tag::UNIQUE_IDENTIFIER, id)
}

/// A KMIP 1.x Attribute structure.
pub fn attribute(name: &str, value: Value) -> Item {
    Item::structure(
        tag::ATTRIBUTE,
        vec![
            Item::text(tag::ATTRIBUTE_NAME, name),
            Item::new(tag::ATTRIBUTE_VALUE, value),
        ],
    )
}

/// The Name attribute with a text name.
pub fn name_attribute(name: &str) -> Item {
    attribute(
        "Name",
        Value::Structure(vec![
            Item::text(tag::NAME_VALUE, name),
            Item::enumeration(tag::NAME_TYPE, enums::NAME_TYPE_TEXT),
        ]),
    )
}

/// An Application Specific Information attribute.
pub fn app_info_attribute(namespace: &str, data: &str) -> Item {
    attribute(
        "Application Specific Information",
        app_info_value(namespace, data),
    )
}

pub fn app_info_value(namespace: &str, data: &str) -> Value {
    Value::Structure(vec![
        Item::text(tag::APPLICATION_NAMESPACE, namespace),
        Item::text(tag::APPLICATION_DATA, data),
    ])
}

fn unique_id(payload: &Item) -> Result<String, KmipError> {
    payload
        .child(tag::UNIQUE_IDENTIFIER)
        .and_then(Item::as_text)
        .map(String::from)
        .ok_or_else(|| KmipError::Protocol("the response has no Unique Identifier".into()))
}

/// Turns an "item not found" (or PyKMIP's "permission denied" for another client's object)
/// into [`KmipError::KeyNotFound`] for `id`.
fn not_found_as(e: KmipError, id: &str) -> KmipError {
    match &e {
        KmipError::Server { reason, .. }
            if reason == &reason_name(enums::REASON_ITEM_NOT_FOUND) =>
        {
            KmipError::KeyNotFound(id.to_string())
        }
        _ => e,
    }
}

fn batch_result(op: Operation, bi: &Item) -> Result<Item, KmipError> {
    let status = bi
        .child(tag::RESULT_STATUS)
        .and_then(Item::as_enum)
        .ok_or_else(|| KmipError::Protocol("a batch item has no Result Status".into()))?;
    if status == enums::RESULT_SUCCESS {
        return Ok(bi
            .child(tag::RESPONSE_PAYLOAD)
            .cloned()
            .unwrap_or_else(|| Item::structure(tag::RESPONSE_PAYLOAD, vec![])));
    }
    let reason = bi
        .child(tag::RESULT_REASON)
        .and_then(Item::as_enum)
        .map(reason_name)
        .unwrap_or_else(|| "no reason given".into());
    let message = bi
        .child(tag::RESULT_MESSAGE)
        .and_then(Item::as_text)
        .unwrap_or("")
        .to_string();
    Err(KmipError::Server {
        operation: op,
        reason,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_failed_batch_item() {
        let bi = Item::structure(
            tag::BATCH_ITEM,
            vec![
                Item::enumeration(tag::OPERATION, Operation::Get as u32),
                Item::enumeration(tag::RESULT_STATUS, 1),
                Item::enumeration(tag::RESULT_REASON, 1),
                Item::text(tag::RESULT_MESSAGE, "Could not locate object: 9"),
            ],
        );
        let e = batch_result(Operation::Get, &bi).unwrap_err();
        assert!(matches!(not_found_as(e, "9"), KmipError::KeyNotFound(id) if id == "9"));
    }
}
