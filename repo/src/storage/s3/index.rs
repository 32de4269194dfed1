//! Index objects of the S3 store: which pack holds each object, where, and its check. An
//! index object is written once, after every pack it names is stored, and never changed; a
//! collection replaces many of them with one merged object (DESIGN.md §10).
//!
//! Encoding: `CAIRNIX1`, postcard of `File`, BLAKE3 of both (32 bytes). Decoding takes
//! hostile bytes: a bad checksum, kind or pack number is `Error::Corrupt`, never a panic.
//!
//! In memory the index is a few immutable layers shared by every reader that holds them
//! (`Arc`): loading one more index object adds a layer of its entries and merges only the
//! smallest layers, so a reader opened after N new objects costs about O(N log N), not a
//! copy of the whole index, and the readers made before keep their layers unchanged.

use super::super::ObjectInfo;
use crate::crypto::Kind;
use crate::error::{Error, Result};
use crate::id::Id;
use std::collections::HashMap;
use std::sync::Arc;

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

/// Where one object is (`pack` and `file` number into the layer that holds the entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pack: u32,
    /// The index object naming it.
    file: u32,
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

/// An object the index names: where it is, in which pack, and how long that pack is (the
/// end of its last object the same layer knows of; a pack holds nothing after its objects).
#[derive(Clone, Copy, Debug)]
pub struct Found<'a> {
    pub loc: Loc,
    pub pack: &'a str,
    pub pack_end: u64,
    /// The pack's place in the order the index was loaded (sorting by it reads packs
    /// roughly in the order they were written).
    pub pack_rank: (u32, u32),
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

/// One index object naming each of `objects` where the index found it (a collection's
/// merged index).
pub fn encode_found<'a>(objects: impl IntoIterator<Item = (Id, Found<'a>)>) -> Vec<u8> {
    let mut numbers: HashMap<&str, u32> = HashMap::new();
    let mut packs = Vec::new();
    let mut placed = Vec::new();
    for (id, f) in objects {
        let n = *numbers.entry(f.pack).or_insert_with(|| {
            packs.push(f.pack.to_string());
            packs.len() as u32 - 1
        });
        let l = f.loc;
        placed.push((
            n,
            Placed {
                id,
                kind: l.kind,
                offset: l.offset,
                len: l.len,
                check: l.check,
            },
        ));
    }
    encode(&packs, &placed)
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

/// The entries of some index objects, sorted by id, one per id; never changed once built.
#[derive(Default)]
struct Layer {
    /// Names of the index objects merged in (`Loc::file` numbers into it).
    files: Vec<String>,
    /// Pack names (`Loc::pack` numbers into them) and the end of each one's last object.
    packs: Vec<String>,
    pack_ends: Vec<u64>,
    entries: Vec<(Id, Loc)>,
}

impl Layer {
    /// The layer of one index object: its entries by id (an id it names twice keeps its
    /// first place).
    fn of_file(name: &str, file: File) -> Layer {
        let mut pack_ends = vec![0u64; file.packs.len()];
        let mut entries: Vec<(Id, Loc)> = file
            .entries
            .iter()
            .map(|e| {
                let end = &mut pack_ends[e.pack as usize];
                *end = (*end).max(e.offset + e.len as u64);
                let loc = Loc {
                    pack: e.pack,
                    file: 0,
                    offset: e.offset,
                    len: e.len,
                    kind: Kind::from_u8(e.kind).unwrap_or(Kind::Chunk),
                    check: e.check,
                };
                (Id(e.id), loc)
            })
            .collect();
        // Stable: the first of equal ids stays first, and `dedup` keeps it.
        entries.sort_by_key(|(id, _)| *id);
        entries.dedup_by_key(|(id, _)| *id);
        Layer {
            files: vec![name.to_string()],
            packs: file.packs,
            pack_ends,
            entries,
        }
    }

    /// What merging costs and how layers are balanced: entries, and a little per file.
    fn weight(&self) -> usize {
        self.entries.len() + self.files.len()
    }

    fn get(&self, id: &Id) -> Option<&Loc> {
        let i = self.entries.binary_search_by(|(e, _)| e.cmp(id)).ok()?;
        Some(&self.entries[i].1)
    }

    fn file_name(&self, loc: &Loc) -> &str {
        &self.files[loc.file as usize]
    }

    fn found(&self, rank: u32, loc: &Loc) -> Found<'_> {
        Found {
            loc: *loc,
            pack: &self.packs[loc.pack as usize],
            pack_end: self.pack_ends[loc.pack as usize],
            pack_rank: (rank, loc.pack),
        }
    }

    /// One layer holding `older` and `newer`; an id in both keeps `newer`'s entry (a layer
    /// holds only entries that win over every older layer's).
    fn merge(older: &Layer, newer: &Layer) -> Layer {
        let mut out = Layer::default();
        let mut numbers = HashMap::new();
        let (old_packs, old_files) = out.take_names(older, &mut numbers);
        let (new_packs, new_files) = out.take_names(newer, &mut numbers);
        let moved = |(id, loc): &(Id, Loc), packs: &[u32], files: u32| {
            let loc = Loc {
                pack: packs[loc.pack as usize],
                file: loc.file + files,
                ..*loc
            };
            (*id, loc)
        };
        out.entries
            .reserve(older.entries.len() + newer.entries.len());
        let (mut a, mut b) = (
            older.entries.iter().peekable(),
            newer.entries.iter().peekable(),
        );
        loop {
            let take_newer = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(x), Some(y)) => y.0 <= x.0,
            };
            if take_newer {
                let Some(e) = b.next() else { break };
                if a.peek().is_some_and(|x| x.0 == e.0) {
                    a.next();
                }
                out.entries.push(moved(e, &new_packs, new_files));
            } else if let Some(e) = a.next() {
                out.entries.push(moved(e, &old_packs, old_files));
            }
        }
        out
    }

    /// Add `from`'s file and pack names (a pack known already keeps its number); returns
    /// the new number of each of its packs and of its first file.
    fn take_names<'a>(
        &mut self,
        from: &'a Layer,
        numbers: &mut HashMap<&'a str, u32>,
    ) -> (Vec<u32>, u32) {
        let mut packs = Vec::with_capacity(from.packs.len());
        for (name, end) in from.packs.iter().zip(&from.pack_ends) {
            let n = *numbers.entry(name.as_str()).or_insert_with(|| {
                self.packs.push(name.clone());
                self.pack_ends.push(0);
                self.packs.len() as u32 - 1
            });
            let e = &mut self.pack_ends[n as usize];
            *e = (*e).max(*end);
            packs.push(n);
        }
        let first_file = self.files.len() as u32;
        self.files.extend(from.files.iter().cloned());
        (packs, first_file)
    }
}

/// The objects of every index object loaded so far. Cloning it is cheap (its layers are
/// shared); loading more into a clone leaves the original as it was.
#[derive(Clone, Default)]
pub struct Index {
    /// Oldest first, each at least about twice the weight of the next (so there are few).
    /// The first layer from the newest that holds an id holds the entry readers use.
    layers: Vec<Arc<Layer>>,
    /// Distinct ids.
    count: usize,
}

impl Index {
    /// Merge the index object `name` (its bytes `bytes`). When two index objects name the
    /// same id, the entry of the first name (in name order) is used, whatever the order
    /// they were loaded in: both copies hold the same sealed bytes.
    pub fn add_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let mut layer = Layer::of_file(name, decode(name, bytes)?);
        let mut new = 0;
        layer.entries.retain(|(id, _)| match self.winner(id) {
            None => {
                new += 1;
                true
            }
            Some((l, loc)) => name < l.file_name(loc),
        });
        self.count += new;
        self.layers.push(Arc::new(layer));
        self.balance();
        Ok(())
    }

    /// Merge the newest layers while one is not clearly lighter than the one before it.
    fn balance(&mut self) {
        while let [.., older, newer] = self.layers.as_slice() {
            if older.weight() >= 2 * newer.weight() {
                break;
            }
            let merged = Arc::new(Layer::merge(older, newer));
            self.layers.truncate(self.layers.len() - 2);
            self.layers.push(merged);
        }
    }

    /// The entry readers use for `id`, and the layer holding it.
    fn winner(&self, id: &Id) -> Option<(&Layer, &Loc)> {
        self.layers
            .iter()
            .rev()
            .find_map(|l| l.get(id).map(|loc| (&**l, loc)))
    }

    /// Where `id` is, if any index object names it.
    pub fn get(&self, id: &Id) -> Option<Found<'_>> {
        let (rank, (layer, loc)) = self
            .layers
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, l)| l.get(id).map(|loc| (i as u32, (&**l, loc))))?;
        Some(layer.found(rank, loc))
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.winner(id).is_some()
    }

    /// How many objects the index names.
    pub fn len(&self) -> usize {
        self.count
    }

    /// The names of the index objects loaded.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.layers
            .iter()
            .flat_map(|l| l.files.iter().map(String::as_str))
    }

    /// Every object from `from` on, in id order.
    pub fn range(&self, from: &Id) -> Range<'_> {
        let at = self
            .layers
            .iter()
            .map(|l| l.entries.partition_point(|(id, _)| id < from))
            .collect();
        Range { index: self, at }
    }

    /// Every object, in id order.
    pub fn iter(&self) -> Range<'_> {
        self.range(&Id([0; 32]))
    }

    #[cfg(test)]
    fn layer_count(&self) -> usize {
        self.layers.len()
    }
}

/// Objects of an index in id order: a merge of its layers, the newest layer's entry first.
pub struct Range<'a> {
    index: &'a Index,
    /// The next entry of each layer.
    at: Vec<usize>,
}

impl<'a> Iterator for Range<'a> {
    type Item = (Id, Found<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let index: &'a Index = self.index;
        let layers = &index.layers;
        let mut best: Option<(usize, &'a (Id, Loc))> = None;
        for (i, l) in layers.iter().enumerate() {
            let Some(e) = l.entries.get(self.at[i]) else {
                continue;
            };
            // Later layers win ties: `<=` moves to the newer one.
            if best.is_none_or(|(_, b)| e.0 <= b.0) {
                best = Some((i, e));
            }
        }
        let (i, (id, loc)) = best?;
        for (j, l) in layers.iter().enumerate() {
            if l.entries.get(self.at[j]).is_some_and(|e| e.0 == *id) {
                self.at[j] += 1;
            }
        }
        Some((*id, layers[i].found(i as u32, loc)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn placed(n: u8, offset: u64) -> Placed {
        Placed {
            id: Id([n; 32]),
            kind: Kind::Chunk,
            offset,
            len: 10,
            check: [n; 16],
        }
    }

    /// Every entry as (id, pack, offset, len), in id order.
    fn dump(ix: &Index) -> Vec<(Id, String, u64, u32)> {
        ix.iter()
            .map(|(id, f)| (id, f.pack.to_string(), f.loc.offset, f.loc.len))
            .collect()
    }

    #[test]
    fn round_trip_and_first_name_wins_in_any_load_order() {
        let a = encode(&["p1".into()], &[(0, placed(1, 0)), (0, placed(2, 10))]);
        let b = encode(&["p2".into()], &[(0, placed(2, 0)), (0, placed(3, 0))]);
        for order in [[("a", &a), ("b", &b)], [("b", &b), ("a", &a)]] {
            let mut ix = Index::default();
            for (name, bytes) in order {
                ix.add_file(name, bytes).unwrap();
            }
            let f = ix.get(&Id([2; 32])).unwrap();
            assert_eq!((f.pack, f.loc.offset, f.pack_end), ("p1", 10, 20));
            assert_eq!(ix.len(), 3);
            assert_eq!(ix.iter().count(), 3);
            let mut files: Vec<&str> = ix.files().collect();
            files.sort();
            assert_eq!(files, ["a", "b"]);
        }
        let mut ix = Index::default();
        ix.add_file("a", &a).unwrap();
        let merged = encode_found(ix.range(&Id([2; 32])));
        let mut again = Index::default();
        again.add_file("m", &merged).unwrap();
        assert_eq!(dump(&again), vec![(Id([2; 32]), "p1".into(), 10, 10)]);
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
        assert_eq!(ix.len(), 0);
        assert_eq!(ix.files().count(), 0);
    }

    /// Loading one more index object copies none of the big layers: a reader opened after
    /// N new objects costs O(N) (amortized: small layers merge), not a copy of the index.
    #[test]
    fn more_index_objects_share_the_layers_already_loaded() {
        let big: Vec<(u32, Placed)> = (0..50_000u64)
            .map(|i| {
                let mut p = placed(0, i * 10);
                p.id.0[..8].copy_from_slice(&i.to_le_bytes());
                (0, p)
            })
            .collect();
        let mut ix = Index::default();
        ix.add_file("index/0000", &encode(&["base".into()], &big))
            .unwrap();
        let base = ix.layers[0].clone();
        let before = ix.clone();
        for n in 0..2000u64 {
            let mut p = placed(1, 0);
            p.id.0[8..16].copy_from_slice(&n.to_le_bytes());
            let name = format!("index/1{n:06}");
            ix.add_file(&name, &encode(&[format!("p{n}")], &[(0, p)]))
                .unwrap();
            assert!(Arc::ptr_eq(&ix.layers[0], &base), "after {n} more");
            assert!(ix.layer_count() <= 14, "{} layers", ix.layer_count());
        }
        assert_eq!(ix.len(), 52_000);
        assert_eq!(ix.files().count(), 2001);
        // The clone made before is what it was.
        assert_eq!(before.len(), 50_000);
        assert_eq!(before.layer_count(), 1);
        let mut last = placed(1, 0).id;
        last.0[8..16].copy_from_slice(&1999u64.to_le_bytes());
        assert_eq!(ix.get(&last).unwrap().pack, "p1999");
        assert_eq!(before.get(&last).map(|f| f.pack), None);
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
                for (_, f) in ix.iter() {
                    proptest::prop_assert!(f.pack == "p" || f.pack == "q");
                }
            }
        }

        /// Index objects loaded one by one in any order, with readers' copies taken between,
        /// give every copy exactly what loading its objects afresh in name order gives: the
        /// entry of the first name for an id named twice.
        #[test]
        fn any_load_order_is_the_index_of_name_order(
            files in proptest::collection::vec(
                proptest::collection::vec((0u8..40, 0u32..3, 0u64..1000), 0..30), 1..14),
            keys in proptest::collection::vec(proptest::prelude::any::<u64>(), 14),
            from in 0u8..40,
        ) {
            let named: Vec<(String, Vec<u8>)> = files.iter().enumerate().map(|(i, entries)| {
                let packs: Vec<String> = (0..3).map(|p| format!("pack{i}-{p}")).collect();
                let objects: Vec<(u32, Placed)> =
                    entries.iter().map(|(id, pack, off)| (*pack, placed(*id, *off))).collect();
                (format!("index/{i:03}"), encode(&packs, &objects))
            }).collect();
            let mut order: Vec<usize> = (0..named.len()).collect();
            order.sort_by_key(|i| keys[*i]);
            let mut ix = Index::default();
            let mut copies = Vec::new();
            for i in &order {
                ix.add_file(&named[*i].0, &named[*i].1).unwrap();
                copies.push((ix.clone(), named[*i].0.clone()));
            }
            let mut loaded: Vec<&str> = Vec::new();
            for (copy, name) in &copies {
                loaded.push(name);
                // The reference: a plain map filled in name order, first entry kept.
                let mut want: BTreeMap<Id, (String, u64, u32)> = BTreeMap::new();
                let mut sorted = loaded.clone();
                sorted.sort();
                for n in sorted {
                    let i: usize = n["index/".len()..].parse().unwrap();
                    for (id, pack, off) in &files[i] {
                        want.entry(Id([*id; 32])).or_insert((format!("pack{i}-{pack}"), *off, 10));
                    }
                }
                let want: Vec<(Id, String, u64, u32)> =
                    want.into_iter().map(|(id, (p, o, l))| (id, p, o, l)).collect();
                proptest::prop_assert_eq!(&dump(copy), &want);
                proptest::prop_assert_eq!(copy.len(), want.len());
                for (id, pack, off, _) in &want {
                    let f = copy.get(id).unwrap();
                    proptest::prop_assert_eq!((f.pack, f.loc.offset), (pack.as_str(), *off));
                }
                let tail: Vec<Id> = copy.range(&Id([from; 32])).map(|(id, _)| id).collect();
                let want_tail: Vec<Id> =
                    want.iter().map(|w| w.0).filter(|id| *id >= Id([from; 32])).collect();
                proptest::prop_assert_eq!(tail, want_tail);
                proptest::prop_assert_eq!(copy.files().count(), loaded.len());
            }
        }
    }
}
