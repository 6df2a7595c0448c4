//! The plug-in's identity key: a P-256 private key that exists only as an APKA-wrapped
//! [`EccKeyToken`] (a secure key), and everything that signs with it.
//!
//! The KMIP server authenticates the plug-in by its TLS client certificate. The certificate's
//! private key is the identity key, and it must never be in the clear outside the (simulated)
//! adapter: so the TLS handshake signature ([`HsmSigningKey`], a rustls `SigningKey`) and the
//! certificate and CSR signatures ([`IdentityKey::csr_pem`], through rcgen's `RemoteKeyPair`)
//! all call [`Hsm::sign_ecc`], which unwraps the key inside the adapter for one signature.
//!
//! On disk the token lives in `<config dir>/identity-key.skey` (mode 0600, written atomically);
//! around an APKA master key change a staged copy lives in `identity-key.reenc` (see
//! `kmip_plugin`'s reencipher). The public key never changes across a re-encipher, so the
//! certificate the CA issued stays valid.

use std::fmt;
use std::sync::Arc;

use ap_sim::hsm::Hsm;
use ap_sim::token::ecc::EccKeyToken;
use ap_sim::Apqn;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rustls::pki_types::CertificateDer;
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

/// Errors of certificate and CSR generation.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the identity key cannot sign: {0}")]
    Hsm(#[from] ap_sim::hsm::HsmError),
    #[error("cannot build the certificate or CSR: {0}")]
    Cert(String),
}

/// The identity key with the HSM and the APQNs that can use it.
#[derive(Clone)]
pub struct IdentityKey {
    token: EccKeyToken,
    hsm: Hsm,
    apqns: Option<Vec<Apqn>>,
    /// SEC1 uncompressed public point, 65 bytes.
    public: Vec<u8>,
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a secure key (wrapped); still, print only what identifies it.
        write!(f, "IdentityKey(P-256, APKA MKVP {})", self.token.mkvp())
    }
}

impl IdentityKey {
    pub fn new(token: EccKeyToken, hsm: Hsm, apqns: Option<Vec<Apqn>>) -> IdentityKey {
        let public = token
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        IdentityKey {
            token,
            hsm,
            apqns,
            public,
        }
    }

    pub fn token(&self) -> &EccKeyToken {
        &self.token
    }

    /// The SEC1 uncompressed public point.
    pub fn public_point(&self) -> &[u8] {
        &self.public
    }

    /// Signs `message` (ECDSA P-256 with SHA-256, DER) inside the adapter.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, ap_sim::hsm::HsmError> {
        self.hsm
            .sign_ecc(&self.token, message, self.apqns.as_deref())
    }

    fn rcgen_key_pair(&self) -> Result<rcgen::KeyPair, IdentityError> {
        rcgen::KeyPair::from_remote(Box::new(RemoteIdentity(self.clone())))
            .map_err(|e| IdentityError::Cert(e.to_string()))
    }

    fn params(&self, common_name: &str) -> Result<rcgen::CertificateParams, IdentityError> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| IdentityError::Cert(e.to_string()))?;
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, common_name);
        p.distinguished_name = dn;
        // KMIP servers (PyKMIP with enable_tls_client_auth) require the clientAuth usage.
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        Ok(p)
    }

    /// A PKCS#10 certificate signing request for the identity key, PEM. The CA signs it into
    /// the client certificate that `configure --client-cert` takes.
    pub fn csr_pem(&self, common_name: &str) -> Result<String, IdentityError> {
        let kp = self.rcgen_key_pair()?;
        let csr = self
            .params(common_name)?
            .serialize_request(&kp)
            .map_err(|e| IdentityError::Cert(e.to_string()))?;
        csr.pem().map_err(|e| IdentityError::Cert(e.to_string()))
    }

    /// A self-signed certificate for the identity key, PEM: for servers that trust client
    /// certificates individually rather than through a CA.
    pub fn self_signed_cert_pem(&self, common_name: &str) -> Result<String, IdentityError> {
        let kp = self.rcgen_key_pair()?;
        let cert = self
            .params(common_name)?
            .self_signed(&kp)
            .map_err(|e| IdentityError::Cert(e.to_string()))?;
        Ok(cert.pem())
    }

    /// Whether the DER certificate `cert` certifies this key: it parses as X.509 and its
    /// subject's public key is an EC key (id-ecPublicKey on P-256) whose point is ours. (The
    /// bytes of our point elsewhere in a certificate, e.g. in an extension, do not count.)
    pub fn matches_certificate(&self, cert: &[u8]) -> bool {
        use x509_cert::der::{oid::ObjectIdentifier, Decode};
        const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
        const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
        let Ok(c) = x509_cert::Certificate::from_der(cert) else {
            return false;
        };
        let spki = &c.tbs_certificate.subject_public_key_info;
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        spki.algorithm.oid == EC_PUBLIC_KEY
            && curve == Some(P256)
            && spki.subject_public_key.raw_bytes() == self.public.as_slice()
    }

    /// The rustls client credential: `cert_chain` with a signer that signs through the HSM.
    pub fn certified_key(&self, cert_chain: Vec<CertificateDer<'static>>) -> Arc<CertifiedKey> {
        Arc::new(CertifiedKey::new(
            cert_chain,
            Arc::new(HsmSigningKey(self.clone())),
        ))
    }
}

/// rcgen's view of the identity key.
struct RemoteIdentity(IdentityKey);

impl rcgen::RemoteKeyPair for RemoteIdentity {
    fn public_key(&self) -> &[u8] {
        &self.0.public
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg).map_err(|_| rcgen::Error::RemoteKeyError)
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// rustls's view of the identity key: ECDSA P-256/SHA-256 signatures made by the HSM.
#[derive(Debug)]
pub struct HsmSigningKey(IdentityKey);

impl SigningKey for HsmSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(HsmSigner(self.0.clone())) as Box<dyn Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct HsmSigner(IdentityKey);

impl Signer for HsmSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        // The HSM error says why (e.g. the APKA master key changed and the identity key was not
        // re-enciphered); rustls carries it as text into the handshake error.
        self.0
            .sign(message)
            .map_err(|e| rustls::Error::General(format!("the identity key cannot sign: {e}")))
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ap_sim::sim::{Layout, Simulator};
    use p256::ecdsa::signature::Verifier;

    #[test]
    fn signs_through_the_hsm_and_builds_a_csr_and_certificate() {
        let d = tempfile::tempdir().unwrap();
        let hsm = Hsm::new(Simulator::init(d.path(), &Layout::default(), false).unwrap());
        let token = hsm.generate_ecc(None).unwrap();
        let id = IdentityKey::new(token.clone(), hsm, None);
        let sig = id.sign(b"hello").unwrap();
        let vk = p256::ecdsa::VerifyingKey::from(&token.public_key());
        let sig = p256::ecdsa::Signature::from_der(&sig).unwrap();
        vk.verify(b"hello", &sig).unwrap();
        let csr = id.csr_pem("zkey-test").unwrap();
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let cert = id.self_signed_cert_pem("zkey-test").unwrap();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert.as_bytes())
            .map(|c: CertificateDer<'static>| c.to_vec())
            .unwrap();
        assert!(id.matches_certificate(&der));
        // Another identity key's certificate does not match, nor do bytes that are no X.509.
        let other = IdentityKey::new(
            hsm_again(&d).generate_ecc(None).unwrap(),
            hsm_again(&d),
            None,
        );
        assert!(!other.matches_certificate(&der));
        let mut point_only = vec![0x03, 0x42, 0x00];
        point_only.extend_from_slice(&token.public_key().to_sec1_bytes());
        assert!(
            !id.matches_certificate(&point_only),
            "the point alone is no certificate"
        );
        let mut truncated = der.clone();
        truncated.truncate(der.len() - 10);
        assert!(!id.matches_certificate(&truncated));
    }

    fn hsm_again(d: &tempfile::TempDir) -> Hsm {
        Hsm::new(Simulator::open(d.path()).unwrap())
    }
}
