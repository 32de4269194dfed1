//! Random access to a stored file's content: O(log n) seek over its extents.

use crate::crypto::Kind;
use crate::error::Result;
use crate::format::Extent;
use crate::id::Id;
use crate::repo::Repository;
use crate::storage::Reader;

/// A file's extents with their start offsets.
#[derive(Clone, Debug, Default)]
pub struct ExtentMap {
    extents: Vec<Extent>,
    starts: Vec<u64>,
    size: u64,
}

impl ExtentMap {
    pub fn new(extents: Vec<Extent>) -> ExtentMap {
        let mut starts = Vec::with_capacity(extents.len());
        let mut pos = 0u64;
        for x in &extents {
            starts.push(pos);
            pos += x.len;
        }
        ExtentMap {
            extents,
            starts,
            size: pos,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// Where extent `i` starts in the file.
    pub fn start(&self, i: usize) -> u64 {
        self.starts[i]
    }

    /// Index of the extent holding `offset`, and that extent's start.
    pub fn find(&self, offset: u64) -> Option<(usize, u64)> {
        if offset >= self.size {
            return None;
        }
        let i = self.starts.partition_point(|s| *s <= offset) - 1;
        Some((i, self.starts[i]))
    }

    /// Fill `buf` from `offset`, fetching chunks with `load`; returns bytes written (short only
    /// at end of file).
    pub fn read_at(
        &self,
        offset: u64,
        buf: &mut [u8],
        mut load: impl FnMut(&Id) -> Result<std::sync::Arc<Vec<u8>>>,
    ) -> Result<usize> {
        let mut done = 0usize;
        let mut pos = offset;
        while done < buf.len() {
            let Some((i, start)) = self.find(pos) else {
                break;
            };
            let x = self.extents[i];
            let within = (pos - start) as usize;
            let n = ((x.len as usize) - within).min(buf.len() - done);
            match x.id {
                None => buf[done..done + n].fill(0),
                Some(id) => {
                    let data = load(&id)?;
                    let avail = data.len().saturating_sub(within).min(n);
                    buf[done..done + avail].copy_from_slice(&data[within..within + avail]);
                    buf[done + avail..done + n].fill(0);
                }
            }
            done += n;
            pos += n as u64;
        }
        Ok(done)
    }
}

/// Load a chunk's plaintext.
pub fn load_chunk(repo: &Repository, reader: &dyn Reader, id: &Id) -> Result<Vec<u8>> {
    repo.load(reader, id, Kind::Chunk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    proptest! {
        /// Random reads through the extent map equal reads of a plain byte vector.
        #[test]
        fn random_reads_match_plain_bytes(lens in proptest::collection::vec((1u64..300, any::<bool>()), 1..30),
                                          reads in proptest::collection::vec((0u64..10_000, 0usize..700), 1..40)) {
            let mut plain = Vec::new();
            let mut chunks = HashMap::new();
            let mut extents = Vec::new();
            for (i, (len, hole)) in lens.iter().enumerate() {
                if *hole {
                    plain.extend(std::iter::repeat_n(0u8, *len as usize));
                    extents.push(Extent { id: None, len: *len });
                } else {
                    let data: Vec<u8> = (0..*len).map(|j| (i as u64 * 31 + j) as u8 | 1).collect();
                    let id = Id([i as u8; 32]);
                    plain.extend_from_slice(&data);
                    chunks.insert(id, Arc::new(data));
                    extents.push(Extent { id: Some(id), len: *len });
                }
            }
            let map = ExtentMap::new(extents);
            prop_assert_eq!(map.size(), plain.len() as u64);
            for (off, len) in reads {
                let off = off % (plain.len() as u64 + 10);
                let mut buf = vec![0xAAu8; len];
                let n = map.read_at(off, &mut buf, |id| Ok(chunks[id].clone())).unwrap();
                let start = (off as usize).min(plain.len());
                let end = (start + len).min(plain.len());
                prop_assert_eq!(n, end - start);
                prop_assert_eq!(&buf[..n], &plain[start..end]);
            }
        }
    }
}
