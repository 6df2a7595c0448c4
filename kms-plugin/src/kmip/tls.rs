//! Mutual TLS to a KMIP server, with failover over an ordered list of servers.
//!
//! - The server certificate is verified (webpki) against the configured CA file only, never
//!   the system roots: a KMS is trusted because the administrator said so.
//! - The client certificate's private key is the plug-in's identity key; rustls signs the
//!   handshake through the HSM ([`crate::identity::HsmSigningKey`]).
//! - rustls's ring provider, TLS 1.2 and 1.3: PyKMIP 0.11 speaks TLS 1.2 only, and with an
//!   EC P-256 server key the two agree on ECDHE-ECDSA-AES128-GCM-SHA256.
//! - Servers are tried in the configured order. Only a server that cannot be reached (refused,
//!   timed out, reset, unresolvable) makes the client move on to the next, with a notice; a TLS
//!   failure (untrusted certificate, refused client certificate) is a configuration or security
//!   problem and stops at once, so that a misconfigured primary is noticed rather than
//!   silently bypassed. Each server is tried [`TlsSettings::attempts`] times.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ClientConnection, RootCertStore, SignatureScheme, StreamOwned};

use super::ttlv;
use super::KmipError;
use crate::identity::IdentityKey;

/// Largest response accepted (a KMIP response for zkey is a few KiB).
const MAX_MESSAGE: usize = 4 << 20;

/// A server address, `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    /// `host`, `host:port`, `[v6]:port`; the port defaults to 5696, the KMIP port.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest
                .split_once(']')
                .ok_or_else(|| format!("'{s}': a bracketed IPv6 address needs a closing ']'"))?;
            (h, p.strip_prefix(':'))
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                _ => (s, None),
            }
        };
        if host.is_empty() {
            return Err(format!("'{s}': the server address has no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("'{s}': '{p}' is not a TCP port"))?,
            None => 5696,
        };
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }
}

/// What a connection needs.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// Tried in this order.
    pub servers: Vec<Endpoint>,
    /// PEM: the CA (or CAs) that issue the servers' certificates.
    pub server_ca_pem: Vec<u8>,
    /// PEM: the client certificate (chain) for the identity key.
    pub client_cert_pem: Vec<u8>,
    pub identity: IdentityKey,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    /// Connection attempts per server before moving on.
    pub attempts: u32,
}

#[derive(Debug)]
struct Resolver(Arc<CertifiedKey>);

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _hints: &[&[u8]], schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        schemes
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn config(s: &TlsSettings) -> Result<Arc<ClientConfig>, KmipError> {
    let local = |why: String| KmipError::Tls {
        server: "(local configuration)".into(),
        why,
    };
    let mut roots = RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&s.server_ca_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| local(format!("the server CA file is not PEM: {e}")))?;
    if cas.is_empty() {
        return Err(local(
            "the server CA file holds no certificate: configure one with --server-ca".into(),
        ));
    }
    for c in cas {
        roots
            .add(c)
            .map_err(|e| local(format!("the server CA certificate is not usable: {e}")))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&s.client_cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| local(format!("the client certificate file is not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(local(
            "the client certificate file holds no certificate: configure one with --client-cert"
                .into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| local(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(Resolver(s.identity.certified_key(chain))));
    Ok(Arc::new(cfg))
}

/// A TLS connection to one server.
pub struct Connection {
    stream: StreamOwned<ClientConnection, TcpStream>,
    server: String,
}

enum Failure {
    /// Try the next server.
    Unreachable(String),
    /// Stop.
    Fatal(KmipError),
}

impl Connection {
    /// Connects to the first server that answers; see the module doc for the failover rules.
    pub fn open(s: &TlsSettings, notices: &mut Vec<String>) -> Result<Connection, KmipError> {
        if s.servers.is_empty() {
            return Err(KmipError::ServerDown("no server is configured".to_string()));
        }
        let cfg = config(s)?;
        let mut down = Vec::new();
        for (i, ep) in s.servers.iter().enumerate() {
            let mut last = String::new();
            for _ in 0..s.attempts.max(1) {
                match Self::open_one(&cfg, ep, s) {
                    Ok(c) => {
                        if i > 0 {
                            notices.push(format!(
                                "using KMIP server {ep}: {} not reachable",
                                down.join(", ")
                            ));
                        }
                        return Ok(c);
                    }
                    Err(Failure::Fatal(e)) => return Err(e),
                    Err(Failure::Unreachable(why)) => last = why,
                }
            }
            if i + 1 < s.servers.len() {
                notices.push(format!(
                    "KMIP server {ep} is not reachable ({last}): trying {}",
                    s.servers[i + 1]
                ));
            }
            down.push(format!("{ep} ({last})"));
        }
        Err(KmipError::ServerDown(down.join("; ")))
    }

    fn open_one(
        cfg: &Arc<ClientConfig>,
        ep: &Endpoint,
        s: &TlsSettings,
    ) -> Result<Connection, Failure> {
        let server = ep.to_string();
        let addrs: Vec<_> = (ep.host.as_str(), ep.port)
            .to_socket_addrs()
            .map_err(|e| Failure::Unreachable(format!("cannot resolve {}: {e}", ep.host)))?
            .collect();
        let mut last = format!("{} has no address", ep.host);
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, s.connect_timeout) {
                Ok(t) => {
                    tcp = Some(t);
                    break;
                }
                Err(e) => last = net_why(&e),
            }
        }
        let tcp = tcp.ok_or(Failure::Unreachable(last))?;
        let io = |e: io::Error| Failure::Unreachable(net_why(&e));
        tcp.set_read_timeout(Some(s.io_timeout)).map_err(io)?;
        tcp.set_write_timeout(Some(s.io_timeout)).map_err(io)?;
        tcp.set_nodelay(true).map_err(io)?;
        let name = ServerName::try_from(ep.host.clone()).map_err(|_| {
            Failure::Fatal(KmipError::Tls {
                server: server.clone(),
                why: format!("'{}' is not a valid host name", ep.host),
            })
        })?;
        let conn = ClientConnection::new(cfg.clone(), name).map_err(|e| {
            Failure::Fatal(KmipError::Tls {
                server: server.clone(),
                why: e.to_string(),
            })
        })?;
        let mut stream = StreamOwned::new(conn, tcp);
        // Drive the handshake now, so that its failures are reported as such.
        while stream.conn.is_handshaking() {
            if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
                return Err(handshake_failure(&server, e));
            }
        }
        Ok(Connection { stream, server })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn set_timeout(&mut self, t: Duration) {
        let _ = self.stream.sock.set_read_timeout(Some(t));
        let _ = self.stream.sock.set_write_timeout(Some(t));
    }

    /// Sends one TTLV message and reads one back.
    pub fn round_trip(&mut self, request: &[u8]) -> Result<Vec<u8>, KmipError> {
        let io = |server: &str, e: io::Error| {
            if let Some(t) = tls_error(&e) {
                return classify_tls(server, t);
            }
            KmipError::Io {
                server: server.to_string(),
                why: if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    "the server did not answer in time".into()
                } else if e.kind() == io::ErrorKind::UnexpectedEof {
                    "the server closed the connection (it may have refused the client certificate or the request)".into()
                } else {
                    e.to_string()
                },
            }
        };
        self.stream
            .write_all(request)
            .and_then(|_| self.stream.flush())
            .map_err(|e| io(&self.server, e))?;
        let mut header = [0u8; 8];
        self.stream
            .read_exact(&mut header)
            .map_err(|e| io(&self.server, e))?;
        let total = ttlv::encoded_len(&header)
            .filter(|n| *n <= MAX_MESSAGE)
            .ok_or_else(|| {
                KmipError::Protocol(format!(
                    "the server announced a response larger than {MAX_MESSAGE} bytes"
                ))
            })?;
        let mut buf = vec![0u8; total];
        buf[..8].copy_from_slice(&header);
        self.stream
            .read_exact(&mut buf[8..])
            .map_err(|e| io(&self.server, e))?;
        Ok(buf)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // A polite close_notify; errors do not matter any more.
        self.stream.conn.send_close_notify();
        let _ = self.stream.conn.write_tls(&mut self.stream.sock);
    }
}

fn net_why(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "connection timed out".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    }
}

fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

fn classify_tls(server: &str, e: &rustls::Error) -> KmipError {
    match e {
        rustls::Error::InvalidCertificate(c) => KmipError::CertificateNotTrusted {
            server: server.to_string(),
            why: format!("{c:?}"),
        },
        rustls::Error::AlertReceived(a) => KmipError::Tls {
            server: server.to_string(),
            why: format!(
                "the server ended the handshake ({a:?}): it may not trust the client certificate; have the server's CA sign the plug-in's CSR ('zkey kms configure --gen-csr FILE') and configure the result with --client-cert"
            ),
        },
        other => KmipError::Tls {
            server: server.to_string(),
            why: other.to_string(),
        },
    }
}

fn handshake_failure(server: &str, e: io::Error) -> Failure {
    if let Some(t) = tls_error(&e) {
        return Failure::Fatal(classify_tls(server, t));
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            Failure::Unreachable(net_why(&e))
        }
        // The server hung up during the handshake: PyKMIP does that when it rejects the
        // client certificate (no alert).
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
            Failure::Fatal(KmipError::Tls {
                server: server.to_string(),
                why: "the server closed the connection during the handshake: it may not trust the client certificate; have the server's CA sign the plug-in's CSR and configure it with --client-cert".into(),
            })
        }
        _ => Failure::Unreachable(net_why(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        let e: Endpoint = "127.0.0.1:5697".parse().unwrap();
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 5697));
        let e: Endpoint = "kms.example".parse().unwrap();
        assert_eq!(e.port, 5696);
        let e: Endpoint = "[::1]:99".parse().unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 99));
        assert_eq!(e.to_string(), "[::1]:99");
        assert!("h:0".parse::<Endpoint>().is_err());
        assert!("h:x".parse::<Endpoint>().is_err());
        assert!(":1".parse::<Endpoint>().is_err());
    }
}
