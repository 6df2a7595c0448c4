//! The cryptography shared by every token format: key derivation from a master key, AES-CTR,
//! AES-CBC (for the one format whose layout forces it), HMAC-SHA256 tags and random nonces.
//!
//! Each format calls [`WrapKeys::derive`] with its own domain label, so the encryption and MAC
//! keys of one format are unrelated to those of every other format under the same master key: a
//! token of one type can never be reinterpreted (or have its parts transplanted) as another.
//! No format implements its own cipher or MAC plumbing; they only decide which bytes go where.

use aes::Aes256;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::mkvp::MasterKey;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of every derivation label. Changing the token formats in an incompatible way
/// means changing the version here, so old and new tokens can never be confused.
const KDF_PREFIX: &str = "zkey-suite/ap-sim/token-wrap/v1/";

/// The encryption and MAC keys one format derives from one master key. Both are zeroed on drop.
pub(crate) struct WrapKeys {
    enc: Zeroizing<[u8; 32]>,
    mac: Zeroizing<[u8; 32]>,
}

impl WrapKeys {
    /// Derives the keys of format `domain` from `mk`: HMAC-SHA256(mk, prefix || domain || "/enc")
    /// and the same with "/mac". HMAC is a PRF keyed by the master key, so distinct labels give
    /// independent keys.
    pub(crate) fn derive(mk: &MasterKey, domain: &str) -> Self {
        let derive_one = |purpose: &str| {
            let mut h = hmac_with(mk.as_bytes());
            h.update(KDF_PREFIX.as_bytes());
            h.update(domain.as_bytes());
            h.update(purpose.as_bytes());
            Zeroizing::new(<[u8; 32]>::from(h.finalize().into_bytes()))
        };
        WrapKeys {
            enc: derive_one("/enc"),
            mac: derive_one("/mac"),
        }
    }

    /// XORs the AES-256-CTR key stream for counter block `nonce` into `data` (encrypts and
    /// decrypts alike). Every caller uses a fresh random nonce per wrap.
    pub(crate) fn ctr_apply(&self, nonce: &[u8; 16], data: &mut [u8]) {
        let mut c = ctr::Ctr128BE::<Aes256>::new(self.enc.as_ref().into(), nonce.into());
        c.apply_keystream(data);
    }

    /// AES-256-CBC with a zero IV over exactly two blocks, in place. Only CCA-AESDATA uses it:
    /// its layout has no room for a nonce, so the encryption is deterministic (as on a real
    /// CCA card, equal keys under one master key give equal ciphertexts).
    pub(crate) fn cbc_encrypt(&self, block: &mut [u8; 32]) {
        let e = cbc::Encryptor::<Aes256>::new(self.enc.as_ref().into(), &[0u8; 16].into());
        // NoPadding over a whole number of blocks cannot fail.
        let _ = e.encrypt_padded_mut::<NoPadding>(block, 32);
    }

    /// The inverse of [`WrapKeys::cbc_encrypt`].
    pub(crate) fn cbc_decrypt(&self, block: &mut [u8; 32]) {
        let d = cbc::Decryptor::<Aes256>::new(self.enc.as_ref().into(), &[0u8; 16].into());
        let _ = d.decrypt_padded_mut::<NoPadding>(block);
    }

    /// HMAC-SHA256 under the MAC key over the concatenation of `parts`.
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        self.mac_state(parts).finalize().into_bytes().into()
    }

    /// Whether `tag` equals the first `tag.len()` bytes of [`WrapKeys::mac`] over `parts`,
    /// compared in constant time. An empty or over-long tag never verifies.
    pub(crate) fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        self.mac_state(parts).verify_truncated_left(tag).is_ok()
    }

    fn mac_state(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut h = hmac_with(self.mac.as_ref());
        for p in parts {
            h.update(p);
        }
        h
    }
}

fn hmac_with(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// `N` bytes from the operating system's CSPRNG.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_and_master_keys_separate_keys() {
        let mk = MasterKey::from_bytes([7; 32]);
        let a = WrapKeys::derive(&mk, "A");
        let b = WrapKeys::derive(&mk, "B");
        let a2 = WrapKeys::derive(&MasterKey::from_bytes([8; 32]), "A");
        assert_ne!(*a.enc, *b.enc);
        assert_ne!(*a.mac, *b.mac);
        assert_ne!(*a.enc, *a.mac);
        assert_ne!(*a.enc, *a2.enc);
        assert_eq!(*a.enc, *WrapKeys::derive(&mk, "A").enc);
    }

    #[test]
    fn ctr_and_cbc_invert() {
        let k = WrapKeys::derive(&MasterKey::from_bytes([1; 32]), "t");
        let n = random::<16>();
        let mut d = *b"0123456789abcdef0123456789abcdef";
        k.ctr_apply(&n, &mut d);
        assert_ne!(&d, b"0123456789abcdef0123456789abcdef");
        k.ctr_apply(&n, &mut d);
        assert_eq!(&d, b"0123456789abcdef0123456789abcdef");
        k.cbc_encrypt(&mut d);
        assert_ne!(&d, b"0123456789abcdef0123456789abcdef");
        k.cbc_decrypt(&mut d);
        assert_eq!(&d, b"0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn truncated_tags_verify_and_bad_ones_do_not() {
        let k = WrapKeys::derive(&MasterKey::from_bytes([1; 32]), "t");
        let t = k.mac(&[b"ab", b"c"]);
        assert_eq!(t, k.mac(&[b"abc"]));
        assert!(k.verify(&[b"abc"], &t));
        assert!(k.verify(&[b"abc"], &t[..4]));
        assert!(!k.verify(&[b"abd"], &t[..4]));
        assert!(!k.verify(&[b"abc"], &[]));
        let mut bad = t;
        bad[31] ^= 1;
        assert!(!k.verify(&[b"abc"], &bad));
    }
}
