//! Keys, object sealing and key slots.
//!
//! Sealed object layout (see DESIGN.md §3): version 1 is
//! `1 | nonce [24] | ciphertext | tag [16]` with associated data `kind u8 | id [32]`, so a
//! sealed blob cannot be passed off as another object; version 2 (trees, content lists and
//! snapshots) is `2 | public_len u32 LE | public | nonce [24] | ciphertext | tag [16]` with
//! associated data `kind | id | public`: a part anyone can read (what the object references,
//! `graph::Refs`) that nobody without the key can change. The plaintext is
//! `codec u8 (0 raw, 1 zstd) | payload`.

use crate::error::{Error, Result};
use crate::id::Id;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub const SEAL_VERSION: u8 = 1;
/// The envelope with a public part.
pub const SEAL_VERSION_PUBLIC: u8 = 2;
/// Largest public part an envelope may carry (a tree naming a million chunks is 32 MiB).
const MAX_PUBLIC: usize = 64 << 20;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a sealed object adds to its (compressed) payload.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + 1 + TAG_LEN;
/// Largest plaintext an object may decode to; guards decoders against hostile sizes.
pub const MAX_OBJECT_PLAINTEXT: u64 = 1 << 30;

const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;

/// What an object is; part of its id derivation and of the AEAD associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum Kind {
    Chunk = 1,
    Tree = 2,
    List = 3,
    Snapshot = 4,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Chunk),
            2 => Some(Kind::Tree),
            3 => Some(Kind::List),
            4 => Some(Kind::Snapshot),
            _ => None,
        }
    }
}

/// The repository's master secrets. Random at `init`, never derived from a password;
/// stored only wrapped in key slots. Zeroed when dropped.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct MasterKeys {
    data: [u8; 32],
    id: [u8; 32],
    chunker_seed: u64,
}

impl MasterKeys {
    pub fn random() -> Self {
        let mut rng = rand::rng();
        let mut k = MasterKeys {
            data: [0; 32],
            id: [0; 32],
            chunker_seed: rng.next_u64(),
        };
        rng.fill_bytes(&mut k.data);
        rng.fill_bytes(&mut k.id);
        k
    }

    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }

    /// A snapshot's retention group (host and sorted path set) as a keyed tag: equal for the
    /// snapshots of one group, meaningless without the id key (DESIGN.md §3, §6).
    pub fn group_tag(&self, host: &str, paths: &[Vec<u8>]) -> [u8; 16] {
        let mut sorted: Vec<&Vec<u8>> = paths.iter().collect();
        sorted.sort();
        let mut h = blake3::Hasher::new_keyed(&self.id);
        h.update(b"cairn snapshot group v1\0");
        h.update(&(host.len() as u64).to_le_bytes());
        h.update(host.as_bytes());
        for p in sorted {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&h.finalize().as_bytes()[..16]);
        tag
    }

    /// Keyed BLAKE3 of `kind | data`: the object's id. Without the id key ids reveal nothing.
    pub fn id_of(&self, kind: Kind, data: &[u8]) -> Id {
        let mut h = blake3::Hasher::new_keyed(&self.id);
        h.update(&[kind as u8]);
        h.update(data);
        Id(*h.finalize().as_bytes())
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.data).into())
    }

    /// Compress (when it helps) and encrypt one object. `level` 0 stores it uncompressed.
    pub fn seal(&self, kind: Kind, id: &Id, plain: &[u8], level: i32) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(plain.len() + SEAL_OVERHEAD);
        out.push(SEAL_VERSION);
        self.seal_body(&aad(kind, id), plain, level, out)
    }

    /// `seal` in the version 2 envelope: `public` is stored in clear and authenticated with
    /// the object (an `open` of it changed fails).
    pub fn seal_public(
        &self,
        kind: Kind,
        id: &Id,
        public: &[u8],
        plain: &[u8],
        level: i32,
    ) -> Result<Vec<u8>> {
        if public.len() > MAX_PUBLIC {
            return Err(Error::Internal(format!(
                "public part of {} bytes exceeds the envelope limit",
                public.len()
            )));
        }
        let mut out = Vec::with_capacity(plain.len() + public.len() + SEAL_OVERHEAD + 4);
        out.push(SEAL_VERSION_PUBLIC);
        out.extend_from_slice(&(public.len() as u32).to_le_bytes());
        out.extend_from_slice(public);
        let mut ad = aad(kind, id).to_vec();
        ad.extend_from_slice(public);
        self.seal_body(&ad, plain, level, out)
    }

    /// Append nonce, ciphertext and tag of `plain` to the envelope header in `out`.
    fn seal_body(&self, ad: &[u8], plain: &[u8], level: i32, mut out: Vec<u8>) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        let body = out.len();
        out.push(CODEC_ZSTD);
        let compressed = level != 0 && compress_into(plain, level, &mut out);
        if !compressed {
            out.truncate(body);
            out.push(CODEC_RAW);
            out.extend_from_slice(plain);
        }
        let tag = self
            .cipher()
            .encrypt_inout_detached(
                &XNonce::try_from(&nonce[..]).map_err(|_| Error::Crypto("nonce".into()))?,
                ad,
                (&mut out[body..]).into(),
            )
            .map_err(|_| Error::Crypto("object too large to encrypt".into()))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Decrypt and decompress one object, verifying that it is the object `kind`/`id` names.
    pub fn open(&self, kind: Kind, id: &Id, sealed: &[u8]) -> Result<Vec<u8>> {
        let mut body = self.decrypt(kind, id, sealed)?;
        let payload_start = 1;
        match body.first().copied() {
            Some(CODEC_RAW) => {
                body.drain(..payload_start);
                Ok(body)
            }
            Some(CODEC_ZSTD) => {
                decompress(&body[payload_start..]).map_err(|r| Error::corrupt(id, r))
            }
            _ => Err(Error::corrupt(id, "unknown compression codec")),
        }
    }

    /// Open and also check that the plaintext hashes to `id` (content-addressed kinds).
    pub fn open_verified(&self, kind: Kind, id: &Id, sealed: &[u8]) -> Result<Vec<u8>> {
        let plain = self.open(kind, id, sealed)?;
        if kind != Kind::Snapshot && self.id_of(kind, &plain) != *id {
            return Err(Error::corrupt(id, "content does not match its id"));
        }
        Ok(plain)
    }

    fn decrypt(&self, kind: Kind, id: &Id, sealed: &[u8]) -> Result<Vec<u8>> {
        let (public, rest) = split_envelope(sealed).map_err(|r| Error::corrupt(id, r))?;
        if rest.len() < NONCE_LEN + 1 + TAG_LEN {
            return Err(Error::corrupt(id, "sealed object too short"));
        }
        let mut ad = aad(kind, id).to_vec();
        ad.extend_from_slice(public.unwrap_or_default());
        let nonce =
            XNonce::try_from(&rest[..NONCE_LEN]).map_err(|_| Error::corrupt(id, "bad nonce"))?;
        let (ct, tag) = rest[NONCE_LEN..].split_at(rest.len() - NONCE_LEN - TAG_LEN);
        let mut body = ct.to_vec();
        self.cipher()
            .decrypt_inout_detached(&nonce, &ad, body.as_mut_slice().into(), &tag_of(tag)?)
            .map_err(|_| {
                Error::corrupt(id, "authentication failed (tampered, truncated or swapped)")
            })?;
        Ok(body)
    }
}

/// The public part of a sealed object, readable without any key (`None` for a version 1
/// envelope, which has none). Not authenticated until the object is opened with the key.
pub fn public_part(sealed: &[u8]) -> std::result::Result<Option<&[u8]>, &'static str> {
    split_envelope(sealed).map(|(public, _)| public)
}

/// An envelope's public part (version 2) and what follows the header (nonce onwards).
fn split_envelope(sealed: &[u8]) -> std::result::Result<(Option<&[u8]>, &[u8]), &'static str> {
    match sealed.split_first() {
        None => Err("sealed object too short"),
        Some((&SEAL_VERSION, rest)) => Ok((None, rest)),
        Some((&SEAL_VERSION_PUBLIC, rest)) => {
            let (len, rest) = rest
                .split_first_chunk::<4>()
                .ok_or("sealed object too short")?;
            let len = u32::from_le_bytes(*len) as usize;
            if len > MAX_PUBLIC || len > rest.len() {
                return Err("public part longer than the object");
            }
            let (public, rest) = rest.split_at(len);
            Ok((Some(public), rest))
        }
        Some(_) => Err("unknown envelope version"),
    }
}

fn tag_of(b: &[u8]) -> Result<Tag> {
    Tag::try_from(b).map_err(|_| Error::Format("bad tag length".into()))
}

fn aad(kind: Kind, id: &Id) -> [u8; 33] {
    let mut a = [0u8; 33];
    a[0] = kind as u8;
    a[1..].copy_from_slice(&id.0);
    a
}

/// Append the zstd frame of `plain` to `out`; false (and `out` unspecified past its old length)
/// when compression would not make it smaller.
fn compress_into(plain: &[u8], level: i32, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let limit = plain.len().saturating_sub(plain.len() / 64 + 16);
    out.reserve(zstd::zstd_safe::compress_bound(plain.len()));
    // One compression context per thread: creating one per object costs more than compressing
    // a small file.
    thread_local! {
        static CCTX: std::cell::RefCell<zstd::zstd_safe::CCtx<'static>> = std::cell::RefCell::new(zstd::zstd_safe::CCtx::create());
    }
    let ok = CCTX.with(|c| {
        let mut cctx = c.borrow_mut();
        let _ = cctx.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(level));
        let mut spare = zstd::zstd_safe::OutBuffer::around_pos(out, start);
        let mut input = zstd::zstd_safe::InBuffer::around(plain);
        let r = cctx.compress_stream2(
            &mut spare,
            &mut input,
            zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_end,
        );
        if !matches!(r, Ok(0)) {
            let _ = cctx.reset(zstd::zstd_safe::ResetDirective::SessionAndParameters);
            return false;
        }
        true
    });
    ok && out.len() - start <= limit
}

fn decompress(frame: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n <= MAX_OBJECT_PLAINTEXT => n as usize,
        Ok(Some(n)) => return Err(format!("declared size {n} exceeds the object limit")),
        _ => return Err("zstd frame without a valid content size".into()),
    };
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
    }
    let out = DCTX
        .with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new()?);
            }
            match d.as_mut() {
                Some(d) => d.decompress(frame, size),
                None => Err(std::io::Error::other("no zstd context")),
            }
        })
        .map_err(|e| format!("zstd: {e}"))?;
    if out.len() != size {
        return Err("zstd frame shorter than declared".into());
    }
    Ok(out)
}

/// Argon2id parameters of one key slot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub salt: [u8; 16],
}

impl KdfParams {
    pub fn new_default() -> Self {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
            salt,
        }
    }

    /// Whether these parameters are within what Cairn derives keys with (DESIGN.md, "Key
    /// slots"): a key slot may come from a hostile peer (`AddKeySlots`), and every
    /// wrong-password open tries every slot, so one slot's cost is bounded.
    pub fn check_limits(&self) -> Result<()> {
        let cost = self.memory_kib as u64 * self.iterations as u64;
        if self.memory_kib > KDF_MAX_MEMORY_KIB
            || self.iterations == 0
            || self.iterations > KDF_MAX_ITERATIONS
            || self.parallelism == 0
            || self.parallelism > KDF_MAX_PARALLELISM
            || cost > KDF_MAX_COST
        {
            return Err(Error::Refused(format!(
                "key slot asks for Argon2 memory {} KiB, {} iterations, {} lanes; accepted are at most {} KiB, {} iterations, {} lanes and {} KiB x iterations",
                self.memory_kib,
                self.iterations,
                self.parallelism,
                KDF_MAX_MEMORY_KIB,
                KDF_MAX_ITERATIONS,
                KDF_MAX_PARALLELISM,
                KDF_MAX_COST
            )));
        }
        Ok(())
    }

    fn derive(&self, password: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        self.check_limits()?;
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|e| Error::Format(format!("bad Argon2 parameters in key slot: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(password, &self.salt, key.as_mut())
            .map_err(|e| Error::Crypto(format!("key derivation failed: {e}")))?;
        Ok(key)
    }
}

/// Largest Argon2 memory a key slot may ask for: 256 MiB (the default is 64 MiB).
pub const KDF_MAX_MEMORY_KIB: u32 = 256 * 1024;
pub const KDF_MAX_ITERATIONS: u32 = 10;
pub const KDF_MAX_PARALLELISM: u32 = 16;
/// Memory times iterations: four times the default (64 MiB x 3), about 0.5 s here.
pub const KDF_MAX_COST: u64 = 4 * 64 * 1024 * 3;
/// Most key slots one repository holds; a receiver refuses more.
pub const MAX_KEY_SLOTS: usize = 16;

/// One password's wrapping of the master keys.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeySlot {
    pub created: i64,
    pub host: String,
    pub user: String,
    pub kdf: KdfParams,
    pub nonce: [u8; 24],
    pub wrapped: Vec<u8>,
}

impl KeySlot {
    pub fn wrap(
        keys: &MasterKeys,
        password: &[u8],
        repo_id: &[u8; 16],
        kdf: KdfParams,
    ) -> Result<KeySlot> {
        let kek = kdf.derive(password)?;
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let mut plain =
            Zeroizing::new(postcard::to_stdvec(keys).map_err(|e| Error::Internal(e.to_string()))?);
        let cipher = XChaCha20Poly1305::new(&chacha20poly1305::Key::from(*kek));
        let tag = cipher
            .encrypt_inout_detached(
                &XNonce::try_from(&nonce[..]).map_err(|_| Error::Crypto("nonce".into()))?,
                &slot_aad(repo_id),
                plain.as_mut_slice().into(),
            )
            .map_err(|_| Error::Crypto("key wrapping failed".into()))?;
        let mut wrapped = plain.to_vec();
        wrapped.extend_from_slice(&tag);
        Ok(KeySlot {
            created: crate::util::now_unix(),
            host: crate::util::hostname(),
            user: crate::util::username(),
            kdf,
            nonce,
            wrapped,
        })
    }

    /// The master keys if `password` opens this slot.
    pub fn unwrap_keys(&self, password: &[u8], repo_id: &[u8; 16]) -> Result<Option<MasterKeys>> {
        if self.wrapped.len() < TAG_LEN {
            return Err(Error::Format("key slot too short".into()));
        }
        let kek = self.kdf.derive(password)?;
        let cipher = XChaCha20Poly1305::new(&chacha20poly1305::Key::from(*kek));
        let (ct, tag) = self.wrapped.split_at(self.wrapped.len() - TAG_LEN);
        let mut plain = Zeroizing::new(ct.to_vec());
        let opened = cipher.decrypt_inout_detached(
            &XNonce::from(self.nonce),
            &slot_aad(repo_id),
            plain.as_mut_slice().into(),
            &tag_of(tag)?,
        );
        if opened.is_err() {
            return Ok(None);
        }
        let keys: MasterKeys = postcard::from_bytes(&plain)
            .map_err(|e| Error::Format(format!("key slot contents: {e}")))?;
        Ok(Some(keys))
    }
}

fn slot_aad(repo_id: &[u8; 16]) -> Vec<u8> {
    let mut a = b"cairn keyslot v1".to_vec();
    a.extend_from_slice(repo_id);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast_kdf() -> KdfParams {
        KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            salt: [7; 16],
        }
    }

    #[test]
    fn seal_round_trip_compressible_and_random() {
        let k = MasterKeys::random();
        let text = b"hello world ".repeat(1000);
        let mut random = vec![0u8; 100_000];
        rand::rng().fill_bytes(&mut random);
        for data in [&text[..], &random[..], &[][..]] {
            let id = k.id_of(Kind::Chunk, data);
            let sealed = k.seal(Kind::Chunk, &id, data, 3).unwrap();
            assert_eq!(k.open_verified(Kind::Chunk, &id, &sealed).unwrap(), data);
        }
        let id = k.id_of(Kind::Chunk, &text);
        assert!(k.seal(Kind::Chunk, &id, &text, 3).unwrap().len() < text.len() / 10);
        assert!(
            k.seal(Kind::Chunk, &id, &random, 3).unwrap().len() <= random.len() + SEAL_OVERHEAD
        );
    }

    #[test]
    fn tampering_is_detected() {
        let k = MasterKeys::random();
        let data = b"some secret file content".repeat(10);
        let id = k.id_of(Kind::Chunk, &data);
        let sealed = k.seal(Kind::Chunk, &id, &data, 3).unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert!(
                k.open(Kind::Chunk, &id, &bad).is_err(),
                "flip at {i} not detected"
            );
        }
        // Swapping: the same bytes presented as another id or kind fail.
        let other = k.id_of(Kind::Chunk, b"other");
        assert!(k.open(Kind::Chunk, &other, &sealed).is_err());
        assert!(k.open(Kind::Tree, &id, &sealed).is_err());
        assert!(k.open(Kind::Chunk, &id, &sealed[..10]).is_err());
        // Another repository's keys fail.
        assert!(MasterKeys::random()
            .open(Kind::Chunk, &id, &sealed)
            .is_err());
    }

    #[test]
    fn ids_are_keyed_and_kind_separated() {
        let a = MasterKeys::random();
        let b = MasterKeys::random();
        assert_ne!(a.id_of(Kind::Chunk, b"x"), b.id_of(Kind::Chunk, b"x"));
        assert_ne!(a.id_of(Kind::Chunk, b"x"), a.id_of(Kind::Tree, b"x"));
        assert_eq!(a.id_of(Kind::Chunk, b"x"), a.id_of(Kind::Chunk, b"x"));
    }

    #[test]
    fn key_slot_wraps_and_rejects_wrong_password() {
        let k = MasterKeys::random();
        let rid = [1u8; 16];
        let slot = KeySlot::wrap(&k, b"correct horse", &rid, fast_kdf()).unwrap();
        let opened = slot.unwrap_keys(b"correct horse", &rid).unwrap().unwrap();
        assert_eq!(opened.id_of(Kind::Chunk, b"q"), k.id_of(Kind::Chunk, b"q"));
        assert!(slot.unwrap_keys(b"wrong", &rid).unwrap().is_none());
        assert!(slot
            .unwrap_keys(b"correct horse", &[2u8; 16])
            .unwrap()
            .is_none());
    }

    #[test]
    fn hostile_zstd_sizes_are_refused() {
        assert!(decompress(b"\x28\xb5\x2f\xfd garbage").is_err());
        assert!(decompress(&[]).is_err());
    }
}
