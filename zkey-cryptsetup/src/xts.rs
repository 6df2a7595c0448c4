//! AES-XTS sector encryption, bit-compatible with dm-crypt's `aes-xts-plain64`.
//!
//! This is the cipher of the data path: the FUSE server ([`crate::fuse`]) decrypts every read and
//! encrypts every write with it, because the kernels this suite runs on may have no dm-crypt.
//!
//! # What it computes
//!
//! XTS-AES as IEEE 1619-2007 defines it, without ciphertext stealing (every data unit is a whole
//! number of 16-byte blocks, which disk sectors always are). The key is the concatenation of two
//! equal-length AES keys: the first half encrypts the data, the second the tweak. A 32-byte key
//! is AES-128-XTS, a 64-byte key AES-256-XTS; LUKS2 volumes made by `zkey` use the latter.
//!
//! The tweak of a data unit is its *data unit sequence number* as a little-endian 128-bit
//! integer. For disk sectors, dm-crypt's `plain64` IV generator makes that number the sector's
//! position in **512-byte units**, whatever the encryption sector size: `iv_large_sectors` is not
//! set by cryptsetup for LUKS2, so sector `n` of a 4096-byte-sector volume is encrypted with tweak
//! `n * 8`. [`XtsEngine::encrypt_sectors`] takes the sector number in units of the sector size and
//! does that scaling, so callers never have to.
//!
//! # Why it is fast
//!
//! The per-block loop of a textbook XTS implementation calls AES once per 16-byte block, which
//! leaves AES-NI's pipeline mostly idle (about 0.85 GB/s here). This engine instead computes the
//! whole tweak chain of a sector first (multiplication by the primitive element α of GF(2^128) is
//! a shift and a conditional XOR on a `u128`), whitens the sector into a stack buffer, and hands
//! the whole sector to the `aes` crate's multi-block `encrypt_blocks`/`decrypt_blocks`, which
//! interleaves eight blocks per AES-NI round. Large buffers can additionally be split across all
//! cores ([`XtsEngine::encrypt_sectors_parallel`]): sectors are independent in XTS.
//!
//! # Key hygiene
//!
//! The engine keeps only the *expanded* AES keys, never the raw key bytes. The `aes` crate is
//! built with its `zeroize` feature: its AES-NI and software back ends then overwrite their round
//! keys in `Drop` (checked in the 0.8.4 sources, `ni.rs` and `soft.rs`, and by the
//! `drop_clears_round_keys` test of this module, which inspects the engine's memory after it has
//! been dropped). The engine is never cloned, so no copy of the schedule outlives it. What this
//! cannot clear: copies the compiler may leave in registers or on the stack during key expansion;
//! the per-call scratch buffers that hold whitened blocks and tweaks are zeroized by this module.

use aes::cipher::consts::U16;
use aes::cipher::{BlockDecrypt, BlockEncrypt, BlockSizeUser, KeyInit};
use aes::{Aes128Dec, Aes128Enc, Aes256Dec, Aes256Enc, Block};
use rayon::prelude::*;
use zeroize::Zeroize;

/// AES block size; XTS works on whole blocks.
pub const BLOCK_SIZE: usize = 16;

/// The encryption sector sizes dm-crypt and LUKS2 accept.
pub const SECTOR_SIZES: [usize; 4] = [512, 1024, 2048, 4096];

/// dm-crypt's `plain64` IV counts in these units, whatever the sector size.
const IV_UNIT: usize = 512;

/// Blocks processed per `encrypt_blocks` call: one 4096-byte sector. Long enough for the AES-NI
/// back end's 8-way interleaving to dominate, short enough for the scratch buffers to stay in L1.
const BATCH_BLOCKS: usize = 4096 / BLOCK_SIZE;

/// Below this buffer size the parallel entry points stay on the calling thread: splitting a
/// FUSE-sized request (128 KiB) across threads costs more in wake-ups than it saves.
pub const PARALLEL_THRESHOLD: usize = 512 * 1024;

/// Bytes handed to one rayon task by the parallel entry points.
const PARALLEL_CHUNK: usize = 256 * 1024;

/// Why an XTS operation was refused. Nothing is modified when an error is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XtsError {
    #[error("an AES-XTS key is 32 or 64 bytes (AES-128-XTS or AES-256-XTS), not {0}")]
    KeyLength(usize),
    #[error("the two halves of the AES-XTS key are equal, which XTS forbids (IEEE 1619 5.1)")]
    EqualHalves,
    #[error("sector size {0} is not one of 512, 1024, 2048 or 4096")]
    SectorSize(usize),
    #[error("{len} bytes is not a whole number of {sector_size}-byte sectors")]
    NotWholeSectors { len: usize, sector_size: usize },
    #[error("an XTS data unit must be a non-empty multiple of 16 bytes, not {0} bytes")]
    UnitLength(usize),
    #[error("sector number out of range of the 64-bit plain64 IV")]
    SectorOverflow,
}

/// The three AES key schedules of one XTS key: data encryption, data decryption, tweak
/// encryption (the tweak is only ever encrypted, also when decrypting data).
struct Schedules<E, D> {
    data_enc: E,
    data_dec: D,
    tweak_enc: E,
}

// The AES-256 schedules are larger; boxing them would only add an indirection to every call of
// an object that is built once per mapping.
#[allow(clippy::large_enum_variant)]
enum Inner {
    Aes128(Schedules<Aes128Enc, Aes128Dec>),
    Aes256(Schedules<Aes256Enc, Aes256Dec>),
}

/// An AES-XTS cipher with its expanded keys; see the module documentation.
///
/// `Sync`: one engine serves any number of threads; every call has its own scratch state.
pub struct XtsEngine {
    inner: Inner,
}

impl std::fmt::Debug for XtsEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "XtsEngine(AES-{}-XTS, <keys redacted>)", self.key_bits())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Encrypt,
    Decrypt,
}

/// Per-call scratch: whitened blocks and their tweaks. Both are key-derived, so they are
/// cleared when the call ends.
struct Scratch {
    blocks: [Block; BATCH_BLOCKS],
    tweaks: [u128; BATCH_BLOCKS],
}

impl Scratch {
    fn new() -> Box<Self> {
        // Boxed: 8 KiB is fine on a main thread but rayon and FUSE worker stacks are small
        // enough that there is no point risking it.
        Box::new(Scratch {
            blocks: [Block::default(); BATCH_BLOCKS],
            tweaks: [0; BATCH_BLOCKS],
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for b in self.blocks.iter_mut() {
            b.as_mut_slice().zeroize();
        }
        self.tweaks.zeroize();
    }
}

/// Multiplication by α (x) in GF(2^128) with the XTS polynomial x^128 + x^7 + x^2 + x + 1, on
/// the little-endian integer view of the tweak. Branch-free, so constant time.
#[inline(always)]
fn mul_alpha(t: u128) -> u128 {
    (t << 1) ^ ((t >> 127) * 0x87)
}

#[inline(always)]
fn load(bytes: &[u8]) -> u128 {
    let mut a = [0u8; BLOCK_SIZE];
    a.copy_from_slice(bytes);
    u128::from_le_bytes(a)
}

/// XTS on one data unit (`unit.len()` a non-zero multiple of 16, checked by the callers).
fn process_unit<E, D>(
    keys: &Schedules<E, D>,
    scratch: &mut Scratch,
    unit: &mut [u8],
    tweak: u128,
    dir: Direction,
) where
    E: BlockEncrypt + BlockSizeUser<BlockSize = U16>,
    D: BlockDecrypt + BlockSizeUser<BlockSize = U16>,
{
    let mut t_block = Block::from(tweak.to_le_bytes());
    keys.tweak_enc.encrypt_block(&mut t_block);
    let mut t = u128::from_le_bytes(t_block.into());
    t_block.as_mut_slice().zeroize();

    for chunk in unit.chunks_mut(BATCH_BLOCKS * BLOCK_SIZE) {
        let n = chunk.len() / BLOCK_SIZE;
        let (blocks, tweaks) = (&mut scratch.blocks[..n], &mut scratch.tweaks[..n]);
        // Pass 1: compute the tweak chain and whiten the input into the scratch blocks.
        for ((src, dst), tw) in chunk
            .chunks_exact(BLOCK_SIZE)
            .zip(blocks.iter_mut())
            .zip(tweaks.iter_mut())
        {
            *tw = t;
            *dst = Block::from((load(src) ^ t).to_le_bytes());
            t = mul_alpha(t);
        }
        // One multi-block call per batch: this is where the speed comes from.
        match dir {
            Direction::Encrypt => keys.data_enc.encrypt_blocks(blocks),
            Direction::Decrypt => keys.data_dec.decrypt_blocks(blocks),
        }
        // Pass 2: whiten the output with the same tweaks, back into the caller's buffer.
        for ((dst, blk), tw) in chunk
            .chunks_exact_mut(BLOCK_SIZE)
            .zip(blocks.iter())
            .zip(tweaks.iter())
        {
            dst.copy_from_slice(&(load(blk.as_slice()) ^ tw).to_le_bytes());
        }
    }
    t.zeroize();
}

impl XtsEngine {
    /// Builds the engine from a 32-byte (AES-128-XTS) or 64-byte (AES-256-XTS) key: the first
    /// half is the data key, the second the tweak key. Refuses a key whose halves are equal, as
    /// IEEE 1619 and the Linux kernel's `xts_verify_key` (in FIPS mode) do: with equal halves the
    /// tweak of unit 0 is the encryption of 0 under the data key, which leaks.
    pub fn new(key: &[u8]) -> Result<Self, XtsError> {
        if key.len() != 32 && key.len() != 64 {
            return Err(XtsError::KeyLength(key.len()));
        }
        let (k1, k2) = key.split_at(key.len() / 2);
        // Constant-time comparison: the halves are secret.
        let diff = k1.iter().zip(k2).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            return Err(XtsError::EqualHalves);
        }
        Self::new_unchecked(key)
    }

    /// [`XtsEngine::new`] without the equal-halves check, for the IEEE vectors that use an
    /// all-zero key. Key length is still checked.
    pub(crate) fn new_unchecked(key: &[u8]) -> Result<Self, XtsError> {
        let (k1, k2) = key.split_at(key.len() / 2);
        let inner = match key.len() {
            32 => Inner::Aes128(Schedules {
                data_enc: Aes128Enc::new_from_slice(k1).map_err(|_| XtsError::KeyLength(32))?,
                data_dec: Aes128Dec::new_from_slice(k1).map_err(|_| XtsError::KeyLength(32))?,
                tweak_enc: Aes128Enc::new_from_slice(k2).map_err(|_| XtsError::KeyLength(32))?,
            }),
            64 => Inner::Aes256(Schedules {
                data_enc: Aes256Enc::new_from_slice(k1).map_err(|_| XtsError::KeyLength(64))?,
                data_dec: Aes256Dec::new_from_slice(k1).map_err(|_| XtsError::KeyLength(64))?,
                tweak_enc: Aes256Enc::new_from_slice(k2).map_err(|_| XtsError::KeyLength(64))?,
            }),
            n => return Err(XtsError::KeyLength(n)),
        };
        Ok(XtsEngine { inner })
    }

    /// AES key size of one half: 128 or 256.
    pub fn key_bits(&self) -> u32 {
        match self.inner {
            Inner::Aes128(_) => 128,
            Inner::Aes256(_) => 256,
        }
    }

    /// Encrypts one IEEE 1619 data unit in place with the given data unit sequence number
    /// (the tweak, as a little-endian 128-bit integer). `unit` must be a non-empty multiple of
    /// 16 bytes. This is the primitive the sector functions are built on.
    pub fn encrypt_unit(&self, unit: &mut [u8], tweak: u128) -> Result<(), XtsError> {
        self.unit(unit, tweak, Direction::Encrypt)
    }

    /// Decrypts one data unit in place; see [`XtsEngine::encrypt_unit`].
    pub fn decrypt_unit(&self, unit: &mut [u8], tweak: u128) -> Result<(), XtsError> {
        self.unit(unit, tweak, Direction::Decrypt)
    }

    fn unit(&self, unit: &mut [u8], tweak: u128, dir: Direction) -> Result<(), XtsError> {
        if unit.is_empty() || !unit.len().is_multiple_of(BLOCK_SIZE) {
            return Err(XtsError::UnitLength(unit.len()));
        }
        let mut scratch = Scratch::new();
        self.dispatch(&mut scratch, unit, tweak, dir);
        Ok(())
    }

    fn dispatch(&self, scratch: &mut Scratch, unit: &mut [u8], tweak: u128, dir: Direction) {
        match &self.inner {
            Inner::Aes128(k) => process_unit(k, scratch, unit, tweak, dir),
            Inner::Aes256(k) => process_unit(k, scratch, unit, tweak, dir),
        }
    }

    /// Encrypts whole sectors in place, as dm-crypt `aes-xts-plain64` with this `sector_size`
    /// does: `buf` holds sectors `first_sector`, `first_sector + 1`, ... counted in units of
    /// `sector_size` from the start of the encrypted payload, and sector `n` is encrypted with
    /// tweak `n * sector_size / 512`. Runs on the calling thread.
    pub fn encrypt_sectors(
        &self,
        buf: &mut [u8],
        first_sector: u64,
        sector_size: usize,
    ) -> Result<(), XtsError> {
        self.sectors(buf, first_sector, sector_size, Direction::Encrypt, false)
    }

    /// Decrypts whole sectors in place; see [`XtsEngine::encrypt_sectors`].
    pub fn decrypt_sectors(
        &self,
        buf: &mut [u8],
        first_sector: u64,
        sector_size: usize,
    ) -> Result<(), XtsError> {
        self.sectors(buf, first_sector, sector_size, Direction::Decrypt, false)
    }

    /// [`XtsEngine::encrypt_sectors`] spread over the current rayon pool (all cores by
    /// default) when `buf` is at least [`PARALLEL_THRESHOLD`] bytes; identical output.
    pub fn encrypt_sectors_parallel(
        &self,
        buf: &mut [u8],
        first_sector: u64,
        sector_size: usize,
    ) -> Result<(), XtsError> {
        self.sectors(buf, first_sector, sector_size, Direction::Encrypt, true)
    }

    /// [`XtsEngine::decrypt_sectors`] spread over the current rayon pool; see
    /// [`XtsEngine::encrypt_sectors_parallel`].
    pub fn decrypt_sectors_parallel(
        &self,
        buf: &mut [u8],
        first_sector: u64,
        sector_size: usize,
    ) -> Result<(), XtsError> {
        self.sectors(buf, first_sector, sector_size, Direction::Decrypt, true)
    }

    fn sectors(
        &self,
        buf: &mut [u8],
        first_sector: u64,
        sector_size: usize,
        dir: Direction,
        parallel: bool,
    ) -> Result<(), XtsError> {
        if !SECTOR_SIZES.contains(&sector_size) {
            return Err(XtsError::SectorSize(sector_size));
        }
        if !buf.len().is_multiple_of(sector_size) {
            return Err(XtsError::NotWholeSectors {
                len: buf.len(),
                sector_size,
            });
        }
        let count = (buf.len() / sector_size) as u64;
        if count == 0 {
            return Ok(());
        }
        let scale = (sector_size / IV_UNIT) as u64;
        // plain64 carries the sector number in 64 bits: refuse, rather than wrap, past that.
        first_sector
            .checked_add(count - 1)
            .and_then(|last| last.checked_mul(scale))
            .ok_or(XtsError::SectorOverflow)?;

        if parallel && buf.len() >= PARALLEL_THRESHOLD && rayon::current_num_threads() > 1 {
            let per_task = PARALLEL_CHUNK / sector_size;
            buf.par_chunks_mut(per_task * sector_size)
                .enumerate()
                .for_each(|(i, chunk)| {
                    let first = first_sector + (i * per_task) as u64;
                    self.sectors_serial(chunk, first, sector_size, scale, dir);
                });
        } else {
            self.sectors_serial(buf, first_sector, sector_size, scale, dir);
        }
        Ok(())
    }

    /// Range and overflow already checked by the caller.
    fn sectors_serial(
        &self,
        buf: &mut [u8],
        first_sector: u64,
        sector_size: usize,
        scale: u64,
        dir: Direction,
    ) {
        let mut scratch = Scratch::new();
        for (i, sector) in buf.chunks_exact_mut(sector_size).enumerate() {
            let iv = (first_sector + i as u64) * scale;
            self.dispatch(&mut scratch, sector, u128::from(iv), dir);
        }
    }
}

#[cfg(test)]
mod tests;
