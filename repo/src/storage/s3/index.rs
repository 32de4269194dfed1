//! Index objects of the S3 store: which pack holds each object, where, and its check. An
//! index object is written once, after every pack it names is stored, and never changed; a
//! collection replaces many of them with one merged object (DESIGN.md §11).
//!
//! Encoding: `CAIRNIX1`, postcard of `File`, BLAKE3 of both (32 bytes). Decoding takes
//! hostile bytes: a bad checksum, kind or pack number is `Error::Corrupt`, never a panic.

use super::super::ObjectInfo;
use crate::crypto::Kind;
use crate::error::{Error, Result};
use crate::id::Id;
use std::collections::{BTreeMap, BTreeSet, HashMap};

const MAGIC: &[u8; 8] = b"CAIRNIX1";
/// Largest index object a reader accepts (about 10 M objects).
const MAX_BYTES: usize = 1 << 30;

#[derive(serde::Serialize, serde::Deserialize)]
struct File {
    packs: Vec<String>,
    entries: Vec<Entry>,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Copy)]
struct Entry {
    id: [u8; 32],
    kind: u8,
    pack: u32,
    offset: u64,
    len: u32,
    check: [u8; 16],
}

/// Where one object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub pack: u32,
    pub offset: u64,
    pub len: u32,
    pub kind: Kind,
    pub check: [u8; 16],
}

impl Loc {
    pub fn info(&self) -> ObjectInfo {
        ObjectInfo {
            kind: self.kind,
            len: self.len,
            check: self.check,
        }
    }

    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + self.len as u64
    }
}

/// One object as a writer records it in the pack it is filling.
#[derive(Clone, Copy)]
pub struct Placed {
    pub id: Id,
    pub kind: Kind,
    pub offset: u64,
    pub len: u32,
    pub check: [u8; 16],
}

/// Encode an index object for objects placed in the packs `packs` (`pack` numbers into it).
pub fn encode(packs: &[String], objects: &[(u32, Placed)]) -> Vec<u8> {
    let file = File {
        packs: packs.to_vec(),
        entries: objects
            .iter()
            .map(|(pack, p)| Entry {
                id: p.id.0,
                kind: p.kind as u8,
                pack: *pack,
                offset: p.offset,
                len: p.len,
                check: p.check,
            })
            .collect(),
    };
    let mut out = MAGIC.to_vec();
    out.extend(postcard::to_stdvec(&file).unwrap_or_default());
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

fn decode(name: &str, bytes: &[u8]) -> Result<File> {
    let bad = |why: &str| Error::corrupt(name, format!("index object: {why}"));
    if bytes.len() > MAX_BYTES {
        return Err(bad("larger than any index cairn writes"));
    }
    if bytes.len() < MAGIC.len() + 32 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(bad("not an index object"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err(bad("checksum mismatch (damaged in storage)"));
    }
    let file: File = postcard::from_bytes(&body[MAGIC.len()..]).map_err(|_| bad("undecodable"))?;
    for e in &file.entries {
        if Kind::from_u8(e.kind).is_none() || e.pack as usize >= file.packs.len() {
            return Err(bad("an entry names an unknown kind or pack"));
        }
    }
    Ok(file)
}

/// The objects of every index object loaded so far.
#[derive(Clone, Default)]
pub struct Index {
    pub packs: Vec<String>,
    /// The end of the last object of each pack: the pack's length (a pack holds nothing else).
    pub pack_ends: Vec<u64>,
    pack_numbers: HashMap<String, u32>,
    pub map: BTreeMap<Id, Loc>,
    /// Names of the index objects merged in.
    pub files: BTreeSet<String>,
}

impl Index {
    /// Merge the index object `name` (its bytes `bytes`). An id already known keeps its first
    /// place: both copies hold the same sealed bytes.
    pub fn add_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let file = decode(name, bytes)?;
        let numbers: Vec<u32> = file.packs.iter().map(|p| self.pack_number(p)).collect();
        for e in file.entries {
            let loc = Loc {
                pack: numbers[e.pack as usize],
                offset: e.offset,
                len: e.len,
                kind: Kind::from_u8(e.kind).unwrap_or(Kind::Chunk),
                check: e.check,
            };
            self.note_end(&loc);
            self.map.entry(Id(e.id)).or_insert(loc);
        }
        self.files.insert(name.to_string());
        Ok(())
    }

    fn pack_number(&mut self, pack: &str) -> u32 {
        if let Some(n) = self.pack_numbers.get(pack) {
            return *n;
        }
        let n = self.packs.len() as u32;
        self.packs.push(pack.to_string());
        self.pack_ends.push(0);
        self.pack_numbers.insert(pack.to_string(), n);
        n
    }

    /// Record `id` at `loc` within the pack named `pack` (unless `id` is known already).
    pub fn insert(&mut self, id: Id, pack: &str, loc: Loc) {
        let loc = Loc {
            pack: self.pack_number(pack),
            ..loc
        };
        self.note_end(&loc);
        self.map.entry(id).or_insert(loc);
    }

    fn note_end(&mut self, loc: &Loc) {
        let end = &mut self.pack_ends[loc.pack as usize];
        *end = (*end).max(loc.offset + loc.len as u64);
    }

    pub fn pack_name(&self, loc: &Loc) -> &str {
        &self.packs[loc.pack as usize]
    }

    /// One index object holding the entries of `ids` (a collection's merged index).
    pub fn encode_subset<'a>(&self, ids: impl Iterator<Item = &'a Id>) -> Vec<u8> {
        let mut numbers: HashMap<u32, u32> = HashMap::new();
        let mut packs = Vec::new();
        let mut objects = Vec::new();
        for id in ids {
            let Some(loc) = self.map.get(id) else {
                continue;
            };
            let n = *numbers.entry(loc.pack).or_insert_with(|| {
                packs.push(self.packs[loc.pack as usize].clone());
                packs.len() as u32 - 1
            });
            objects.push((
                n,
                Placed {
                    id: *id,
                    kind: loc.kind,
                    offset: loc.offset,
                    len: loc.len,
                    check: loc.check,
                },
            ));
        }
        encode(&packs, &objects)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn placed(n: u8, offset: u64) -> Placed {
        Placed {
            id: Id([n; 32]),
            kind: Kind::Chunk,
            offset,
            len: 10,
            check: [n; 16],
        }
    }

    #[test]
    fn round_trip_and_first_place_wins() {
        let a = encode(&["p1".into()], &[(0, placed(1, 0)), (0, placed(2, 10))]);
        let b = encode(&["p2".into()], &[(0, placed(2, 0))]);
        let mut ix = Index::default();
        ix.add_file("a", &a).unwrap();
        ix.add_file("b", &b).unwrap();
        let loc = ix.map[&Id([2; 32])];
        assert_eq!((ix.pack_name(&loc), loc.offset), ("p1", 10));
        assert_eq!(ix.map.len(), 2);
        let merged = ix.encode_subset([Id([2; 32])].iter());
        let mut again = Index::default();
        again.add_file("m", &merged).unwrap();
        assert_eq!(again.map.len(), 1);
    }

    #[test]
    fn hostile_bytes_are_errors() {
        let good = encode(&["p".into()], &[(0, placed(1, 0))]);
        let mut ix = Index::default();
        for cut in 0..good.len() {
            assert!(ix.add_file("x", &good[..cut]).is_err());
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(ix.add_file("x", &bad).is_err(), "flip at {i}");
        }
        // A well-formed object naming a pack it does not list.
        let mut body = MAGIC.to_vec();
        let file = File {
            packs: vec![],
            entries: vec![Entry {
                id: [0; 32],
                kind: 1,
                pack: 3,
                offset: 0,
                len: 1,
                check: [0; 16],
            }],
        };
        body.extend(postcard::to_stdvec(&file).unwrap());
        let sum = blake3::hash(&body);
        body.extend_from_slice(sum.as_bytes());
        assert!(ix.add_file("x", &body).is_err());
        assert!(ix.map.is_empty());
    }

    proptest::proptest! {
        /// Whatever a bucket holds under `index/`, loading it is an error or a well-formed
        /// index, never a panic: random bytes, and valid objects with bytes changed.
        #[test]
        fn any_bytes_load_or_fail_cleanly(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            at in 0usize..200,
            with in proptest::prelude::any::<u8>(),
        ) {
            let mut ix = Index::default();
            let _ = ix.add_file("junk", &junk);
            let mut body = MAGIC.to_vec();
            body.extend(&junk);
            let _ = ix.add_file("magic", &body);
            let mut good = encode(&["p".into(), "q".into()], &[(0, placed(1, 0)), (1, placed(2, 5))]);
            let i = at % good.len();
            good[i] = with;
            if ix.add_file("changed", &good).is_ok() {
                for loc in ix.map.values() {
                    proptest::prop_assert!((loc.pack as usize) < ix.packs.len());
                }
            }
        }
    }
}
