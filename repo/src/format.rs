//! The plaintext formats of trees, content lists, snapshots and the repository config.
//! Encoded with postcard behind a one-byte format version; every decoder takes hostile bytes
//! (see the fuzz target and DESIGN.md).

use crate::error::{Error, Result};
use crate::id::Id;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub const TREE_VERSION: u8 = 1;
pub const SNAPSHOT_VERSION: u8 = 1;
/// The repository format, written as the config's version: 2 since trees, content lists and
/// snapshots carry public references (DESIGN.md §3). Version 1 configs are read as before;
/// a cairn older than format 2 refuses a version 2 config instead of failing on its objects.
pub const CONFIG_VERSION: u8 = 2;
/// Extents kept inline in a file entry; longer lists go to `List` objects.
pub const INLINE_EXTENTS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, PartialOrd, Ord)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

/// A run of file content: stored data (`id` set) or a hole of zeros (`id` none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub id: Option<Id>,
    pub len: u64,
}

/// A `List` object holding part of a long extent list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRef {
    pub id: Id,
    /// Content bytes the list covers.
    pub len: u64,
    pub count: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Content {
    #[default]
    None,
    Inline(Vec<Extent>),
    Lists(Vec<ListRef>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// One directory entry with everything Linux stores about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: Vec<u8>,
    pub kind: FileType,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    pub group: String,
    pub size: u64,
    pub mtime: Time,
    pub ctime: Time,
    pub atime: Time,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub rdev: u64,
    /// Blocks (512 bytes) the source file occupied; for `du` on the mount.
    pub blocks: u64,
    pub xattrs: Vec<Xattr>,
    pub target: Vec<u8>,
    pub content: Content,
    pub subtree: Option<Id>,
}

impl Entry {
    pub fn new(name: Vec<u8>, kind: FileType) -> Entry {
        Entry {
            name,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            user: String::new(),
            group: String::new(),
            size: 0,
            mtime: Time::default(),
            ctime: Time::default(),
            atime: Time::default(),
            dev: 0,
            ino: 0,
            nlink: 1,
            rdev: 0,
            blocks: 0,
            xattrs: Vec::new(),
            target: Vec::new(),
            content: Content::None,
            subtree: None,
        }
    }

    /// Hard-link identity: set for non-directories whose source had more than one link.
    pub fn link_key(&self) -> Option<(u64, u64)> {
        (self.kind != FileType::Dir && self.nlink > 1).then_some((self.dev, self.ino))
    }
}

/// One directory: entries sorted by name bytes, names unique.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Tree {
    pub entries: Vec<Entry>,
}

impl Tree {
    pub fn find(&self, name: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(TREE_VERSION, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Tree> {
        let t: Tree = decode(TREE_VERSION, bytes, "tree")?;
        let sorted = t.entries.windows(2).all(|w| w[0].name < w[1].name);
        let names_ok = t.entries.iter().all(|e| {
            !e.name.is_empty() && !e.name.contains(&b'/') && e.name != b"." && e.name != b".."
        });
        if !sorted || !names_ok {
            return Err(Error::Format(
                "tree entries unsorted, duplicated or with invalid names".into(),
            ));
        }
        Ok(t)
    }
}

pub fn encode_list(extents: &[Extent]) -> Vec<u8> {
    encode(TREE_VERSION, &extents)
}

pub fn decode_list(bytes: &[u8]) -> Result<Vec<Extent>> {
    decode(TREE_VERSION, bytes, "content list")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SnapshotStats {
    pub files: u64,
    pub dirs: u64,
    pub other: u64,
    pub bytes: u64,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unchanged: u64,
    pub bytes_read: u64,
    pub objects_added: u64,
    pub bytes_added: u64,
    pub bytes_added_stored: u64,
    pub warnings: u64,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub time: Time,
    pub host: String,
    pub user: String,
    pub tags: Vec<String>,
    /// The backed-up absolute paths, as given (raw bytes).
    pub paths: Vec<Vec<u8>>,
    pub root: Id,
    pub parent: Option<Id>,
    pub stats: SnapshotStats,
    pub program: String,
}

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        encode(SNAPSHOT_VERSION, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Snapshot> {
        decode(SNAPSHOT_VERSION, bytes, "snapshot")
    }
}

/// Public repository settings, stored unencrypted (nothing secret: the chunker seed lives with
/// the master keys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub repo_id: [u8; 16],
    pub chunk_min: u32,
    pub chunk_avg: u32,
    pub chunk_max: u32,
    pub piece_size: u32,
    pub pack_max: u64,
    pub created: i64,
}

impl Config {
    pub fn encode(&self) -> Vec<u8> {
        encode(CONFIG_VERSION, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Config> {
        let version = match bytes.first() {
            Some(1) => 1,
            _ => CONFIG_VERSION,
        };
        let c: Config = decode(version, bytes, "config")?;
        let sane = (64..=1 << 20).contains(&c.chunk_min)
            && c.chunk_min <= c.chunk_avg
            && c.chunk_avg <= c.chunk_max
            && c.chunk_max <= 16 << 20
            && (64 << 10..=64 << 20).contains(&c.piece_size)
            && c.pack_max >= c.piece_size as u64;
        if !sane {
            return Err(Error::Format(
                "repository config has out-of-range parameters".into(),
            ));
        }
        Ok(c)
    }
}

fn encode<T: Serialize + ?Sized>(version: u8, value: &T) -> Vec<u8> {
    let out = vec![version];
    // Serializing plain data into a Vec cannot fail.
    if let Ok(v) = postcard::to_extend(value, out) {
        return v;
    }
    vec![version]
}

fn decode<T: DeserializeOwned>(version: u8, bytes: &[u8], what: &str) -> Result<T> {
    match bytes.split_first() {
        Some((v, rest)) if *v == version => {
            let (value, left) = postcard::take_from_bytes(rest)
                .map_err(|e| Error::Format(format!("{what} does not decode: {e}")))?;
            if !left.is_empty() {
                return Err(Error::Format(format!("{what} has trailing bytes")));
            }
            Ok(value)
        }
        Some((v, _)) => Err(Error::Format(format!(
            "{what} format version {v} is not supported"
        ))),
        None => Err(Error::Format(format!("{what} is empty"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(name: &[u8]) -> Entry {
        let mut e = Entry::new(name.to_vec(), FileType::File);
        e.mtime = Time {
            sec: -1_000_000_000,
            nsec: 999_999_999,
        };
        e.content = Content::Inline(vec![
            Extent {
                id: Some(Id([3; 32])),
                len: 5,
            },
            Extent {
                id: None,
                len: 1 << 40,
            },
        ]);
        e.xattrs.push(Xattr {
            name: b"user.x".to_vec(),
            value: vec![0, 255],
        });
        e
    }

    #[test]
    fn tree_round_trip_and_golden_prefix() {
        let t = Tree {
            entries: vec![entry(b"a"), entry(b"\xff\xfe")],
        };
        let bytes = t.encode();
        assert_eq!(bytes[0], TREE_VERSION);
        assert_eq!(bytes[1], 2, "postcard: entry count as varint");
        assert_eq!(
            &bytes[2..4],
            &[1, b'a'],
            "name as length-prefixed raw bytes"
        );
        assert_eq!(Tree::decode(&bytes).unwrap(), t);
    }

    #[test]
    fn unsorted_or_bad_names_are_rejected() {
        let t = Tree {
            entries: vec![entry(b"b"), entry(b"a")],
        };
        assert!(Tree::decode(&t.encode()).is_err());
        let t = Tree {
            entries: vec![entry(b"a/b")],
        };
        assert!(Tree::decode(&t.encode()).is_err());
        let t = Tree {
            entries: vec![entry(b"..")],
        };
        assert!(Tree::decode(&t.encode()).is_err());
    }

    #[test]
    fn wrong_version_and_trailing_bytes_rejected() {
        let mut bytes = Tree::default().encode();
        bytes.push(0);
        assert!(Tree::decode(&bytes).is_err());
        bytes[0] = 9;
        assert!(Tree::decode(&bytes).is_err());
        assert!(Tree::decode(&[]).is_err());
    }

    proptest! {
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Tree::decode(&bytes);
            let _ = Snapshot::decode(&bytes);
            let _ = Config::decode(&bytes);
            let _ = decode_list(&bytes);
        }

        #[test]
        fn tree_encode_decode(names in proptest::collection::btree_set(proptest::collection::vec(1u8..=255, 1..20), 0..20),
                              sec in any::<i64>(), nsec in 0u32..1_000_000_000, size in any::<u64>()) {
            let entries: Vec<Entry> = names.into_iter().filter(|n| !n.contains(&b'/') && n != b"." && n != b"..").map(|n| {
                let mut e = entry(&n);
                e.mtime = Time { sec, nsec };
                e.size = size;
                e
            }).collect();
            let t = Tree { entries };
            prop_assert_eq!(Tree::decode(&t.encode()).unwrap(), t);
        }
    }
}
