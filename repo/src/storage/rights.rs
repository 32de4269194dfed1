//! What a client of `cairn serve` may do (DESIGN.md §6 and §9, "Rights"): the rights of
//! `cairn serve --allow backup,restore,forget,prune`, given per ssh key in the server's
//! `authorized_keys`. The server maps every request to the right it needs (`needed`, one
//! exhaustive match: a new request does not compile until it is given one) and refuses what
//! the key lacks with `Error::NotAllowed`.

use crate::crypto::Kind;
use crate::error::{Error, Result};
use crate::sync::proto::Request;
use serde::{Deserialize, Serialize};

/// One right of a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Right {
    /// Add objects and snapshots; ask which ids exist; list and read snapshots, trees and
    /// content lists (what an incremental backup and a sync to the server need), but no chunk.
    Backup,
    /// List and read every object, file contents included (restore, mount, `check
    /// --read-data`, syncing from the repository); no writing.
    Restore,
    /// Remove snapshots.
    Forget,
    /// Collect garbage, remove key slots, change the state records.
    Prune,
}

const ALL: [Right; 4] = [Right::Backup, Right::Restore, Right::Forget, Right::Prune];

impl Right {
    /// The name `--allow` takes.
    pub fn name(self) -> &'static str {
        match self {
            Right::Backup => "backup",
            Right::Restore => "restore",
            Right::Forget => "forget",
            Right::Prune => "prune",
        }
    }

    /// The right `--allow` names so.
    pub(crate) fn named(name: &str) -> Option<Right> {
        ALL.into_iter().find(|r| r.name() == name)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// What the right is for, as the end of "does not let this key …".
    fn what(self) -> &'static str {
        match self {
            Right::Backup => "back up (add objects and snapshots, list them)",
            Right::Restore => {
                "read file contents (restore, mount, check --read-data, sync from it)"
            }
            Right::Forget => "remove snapshots (forget)",
            Right::Prune => {
                "collect garbage, remove key slots or change the repository's records (prune)"
            }
        }
    }
}

impl std::fmt::Display for Right {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a request needs (`needed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// What every client needs to open the repository, and the framing of an exchange.
    Nothing,
    Right(Right),
    /// Listing and reading the structure: `backup` or `restore`, either will do (a restore
    /// lists snapshots and reads trees as a backup does).
    Read,
}

/// A set of rights. On the wire a bit set (`u32`), so rights added later do not change the
/// encoding; a client ignores bits it does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rights(u32);

impl Default for Rights {
    /// `full`: what `cairn serve` grants without `--allow` or `--append-only`, and every
    /// store that is not behind a server.
    fn default() -> Self {
        Rights::FULL
    }
}

impl Rights {
    pub const FULL: Rights = Rights(0b1111);
    /// `--append-only`: `backup,restore`.
    pub const APPEND_ONLY: Rights = Rights(0b0011);

    /// The rights of `cairn serve`, with or without `--append-only`.
    pub fn append_only_if(append_only: bool) -> Rights {
        if append_only {
            Rights::APPEND_ONLY
        } else {
            Rights::FULL
        }
    }

    pub fn has(self, r: Right) -> bool {
        self.0 & r.bit() != 0
    }

    /// Whether nothing stored can be removed through these rights.
    pub fn append_only(self) -> bool {
        !self.has(Right::Forget) && !self.has(Right::Prune)
    }

    /// Both sets at once (a store that is itself limited, served with `--allow`).
    pub(crate) fn and(self, other: Rights) -> Rights {
        Rights(self.0 & other.0 & Rights::FULL.0)
    }

    /// `Ok` if `r` is granted; `Error::NotAllowed` naming it otherwise.
    pub fn require(self, r: Right, location: &str) -> Result<()> {
        if self.has(r) {
            return Ok(());
        }
        Err(Error::NotAllowed {
            right: r,
            granted: self,
            location: location.to_string(),
        })
    }

    /// `Ok` if `need` is met; `Error::NotAllowed` naming the right to grant otherwise (for
    /// `Need::Read`, `backup`).
    pub(crate) fn allow(self, need: Need, location: &str) -> Result<()> {
        match need {
            Need::Nothing => Ok(()),
            Need::Right(r) => self.require(r, location),
            Need::Read if self.has(Right::Restore) => Ok(()),
            Need::Read => self.require(Right::Backup, location),
        }
    }

    /// Parse `--allow`: a comma list of `backup`, `restore`, `forget`, `prune`, or `full`.
    pub fn parse(s: &str) -> std::result::Result<Rights, String> {
        let mut bits = 0;
        for word in s.split(',').map(str::trim) {
            bits |= match word {
                "full" => Rights::FULL.0,
                w => match Right::named(w) {
                    Some(r) => r.bit(),
                    None => {
                        return Err(format!(
                            "`{w}` is not a right; give a comma list of backup, restore, forget, prune, or full"
                        ))
                    }
                },
            };
        }
        Ok(Rights(bits))
    }

    /// The rights this side knows of a set from the wire (bits of rights added later dropped).
    pub(crate) fn known(self) -> Rights {
        self.and(Rights::FULL)
    }

    /// These rights plus `r`, as `--allow` takes them.
    fn with(self, r: Right) -> Rights {
        Rights(self.0 | r.bit())
    }
}

impl std::fmt::Display for Rights {
    /// The `--allow` form: `full`, or the rights in order, `backup,restore`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if *self == Rights::FULL {
            return f.write_str("full");
        }
        let names: Vec<&str> = ALL
            .iter()
            .filter(|r| self.has(**r))
            .map(|r| r.name())
            .collect();
        f.write_str(&names.join(","))
    }
}

/// The message of `Error::NotAllowed`.
pub(crate) fn refusal(right: Right, granted: Rights, location: &str) -> String {
    let served = if granted == Rights::APPEND_ONLY {
        "append-only, `--allow backup,restore`".to_string()
    } else {
        format!("with `--allow {granted}`")
    };
    format!(
        "{location} does not let this key {} (it is served {served}); the server's administrator grants it in the key's line of authorized_keys: `cairn serve … --allow {}`",
        right.what(),
        granted.with(right)
    )
}

/// What a request needs: nothing for what every client needs to open the repository and for
/// the framing of an exchange (a hello, goodbye, marks inside a collection); `backup` or
/// `restore` for listings and reads (and, per object read, `to_read` of its kind); `backup`
/// for every write; `forget` and `prune` for removals.
pub(crate) fn needed(req: &Request) -> Need {
    use Right::*;
    match req {
        Request::Hello { .. } | Request::Bye | Request::Marks(_) | Request::MarksEnd => {
            Need::Nothing
        }
        // Opening: the config and the key slots are what a password opens.
        Request::OpenStore { create: None, .. } | Request::Config | Request::KeySlots => {
            Need::Nothing
        }
        Request::Info
        | Request::ListSnapshots
        | Request::ListSnapshotChecks
        | Request::Snapshots(_)
        | Request::GetSnapshot(_)
        | Request::Have(_)
        | Request::ObjectInfo(_)
        | Request::List { .. }
        | Request::Count
        | Request::Space
        | Request::State(_)
        | Request::Sessions
        | Request::GetObject(_)
        | Request::ReadMany(_) => Need::Read,
        Request::OpenStore {
            create: Some(_), ..
        }
        | Request::Create { .. }
        | Request::PutObjects(_)
        | Request::PutSnapshots(_)
        | Request::AddKeySlots(_)
        | Request::AddKeySlot(_)
        | Request::BeginWriter { .. }
        | Request::Checkpoint
        | Request::Commit(_)
        | Request::BeginSession
        | Request::EndSession(_)
        | Request::Recover
        | Request::Repair { .. } => Need::Right(Backup),
        Request::DeleteSnapshots(_) | Request::RemoveSnapshots(_) => Need::Right(Forget),
        Request::RemoveKeySlot(_)
        | Request::SetState { .. }
        | Request::Collect(_)
        | Request::Compact => Need::Right(Prune),
    }
}

/// How a repair's copy is stored (`may_repair`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mend {
    /// The object is missing: added as a writer adds it (the first copy stored wins).
    Add,
    /// The copy takes the stored object's place (`Storage::repair`).
    Replace,
}

/// Whether a client with `rights` may store `copy` in place of what `reader` holds under
/// its id (`Request::Repair`, which needs `backup`; DESIGN.md §9 "Repair through the
/// seam"), and how. A missing object is added, like any backup's. With `prune`, any stored
/// object may be replaced: that right can remove any object anyway. Without it, only one
/// whose stored bytes fail the checksum recorded for them, and only by bytes that match that
/// checksum: such a key can mend damage but never replace an intact object. `Err` says why
/// not. (Replacing a snapshot blob needs `forget`; the server checks that.)
pub(crate) fn may_repair(
    rights: Rights,
    reader: &dyn super::Reader,
    copy: &super::ObjectCopy,
) -> std::result::Result<Mend, String> {
    let Some(recorded) = reader.info(&copy.id).map_err(|e| e.to_string())? else {
        return Ok(Mend::Add);
    };
    if rights.has(Right::Prune) {
        return Ok(Mend::Replace);
    }
    if recorded != super::ObjectInfo::of(copy.kind, &copy.sealed) {
        return Err(
            "the copy does not match the checksum recorded for this object; only a key with the prune right may store it"
                .into(),
        );
    }
    match reader.read(&copy.id) {
        Ok((kind, sealed)) if super::ObjectInfo::of(kind, &sealed) == recorded => Err(
            "the stored copy is intact (it matches its recorded checksum); only a key with the prune right may replace it"
                .into(),
        ),
        _ => Ok(Mend::Replace),
    }
}

/// What reading an object of `kind` needs: file contents (chunks) `restore`; the structure a
/// backup builds on (trees, content lists, snapshots) `backup` or `restore`.
pub(crate) fn to_read(kind: Kind) -> Need {
    match kind {
        Kind::Chunk => Need::Right(Right::Restore),
        Kind::Tree | Kind::List | Kind::Snapshot => Need::Read,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::id::Id;
    use crate::sync::proto::{self, WireGcOptions};
    use Right::*;

    const B: Need = Need::Right(Backup);
    const R: Need = Need::Read;

    /// One request of every variant, in wire order, with what it needs.
    fn every_request() -> Vec<(Request, Need)> {
        let id = Id([1; 32]);
        vec![
            (
                Request::Hello {
                    magic: proto::MAGIC,
                    version: 2,
                    repo_id: [0; 16],
                },
                Need::Nothing,
            ),
            (
                Request::Create {
                    config: vec![],
                    key_slots: vec![],
                },
                B,
            ),
            (Request::Info, R),
            (Request::ListSnapshots, R),
            (Request::Have(vec![id]), R),
            (Request::PutObjects(vec![]), B),
            (Request::PutSnapshots(vec![]), B),
            (Request::AddKeySlots(vec![]), B),
            (Request::DeleteSnapshots(vec![id]), Need::Right(Forget)),
            (Request::Bye, Need::Nothing),
            (Request::GetObject(id), R),
            (Request::GetSnapshot(id), R),
            (Request::ListSnapshotChecks, R),
            (
                Request::OpenStore {
                    magic: proto::MAGIC,
                    version: 4,
                    create: None,
                },
                Need::Nothing,
            ),
            (Request::Config, Need::Nothing),
            (Request::KeySlots, Need::Nothing),
            (Request::AddKeySlot(vec![]), B),
            (Request::RemoveKeySlot(1), Need::Right(Prune)),
            (Request::Snapshots(None), R),
            (Request::RemoveSnapshots(vec![id]), Need::Right(Forget)),
            (Request::ObjectInfo(id), R),
            (Request::ReadMany(vec![id]), R),
            (Request::List { from: id, limit: 1 }, R),
            (Request::Count, R),
            (
                Request::BeginWriter {
                    batch_bytes: 1,
                    index_every: 0,
                },
                B,
            ),
            (Request::Checkpoint, B),
            (Request::Commit(vec![]), B),
            (Request::BeginSession, B),
            (Request::EndSession(1), B),
            (Request::Sessions, R),
            (Request::Recover, B),
            (Request::Space, R),
            (Request::State("k".into()), R),
            (
                Request::SetState {
                    key: "k".into(),
                    value: vec![],
                },
                Need::Right(Prune),
            ),
            (
                Request::Collect(WireGcOptions::of(&crate::prune::PruneOptions::default())),
                Need::Right(Prune),
            ),
            (Request::Marks(vec![]), Need::Nothing),
            (Request::MarksEnd, Need::Nothing),
            (
                Request::Repair {
                    objects: vec![],
                    snapshots: vec![],
                },
                B,
            ),
            (Request::Compact, Need::Right(Prune)),
        ]
    }

    #[test]
    fn every_request_variant_needs_the_right_it_is_listed_with() {
        let all = every_request();
        for (n, (req, right)) in all.iter().enumerate() {
            // The list is in wire order and has every variant: the n-th has tag n ...
            assert_eq!(proto::encode(req).unwrap()[0] as usize, n, "{req:?}");
            assert_eq!(needed(req), *right, "{req:?}");
        }
        // ... and the tag after the last is no request at all.
        assert!(proto::decode::<Request>(&[all.len() as u8]).is_err());
        // Creating a repository is adding to it.
        let create = Request::OpenStore {
            magic: proto::MAGIC,
            version: 4,
            create: Some(vec![1]),
        };
        assert_eq!(needed(&create), B);
    }

    #[test]
    fn chunks_need_restore_and_the_structure_backup_or_restore() {
        assert_eq!(to_read(Kind::Chunk), Need::Right(Restore));
        for k in [Kind::Tree, Kind::List, Kind::Snapshot] {
            assert_eq!(to_read(k), R);
        }
        let (backup, restore) = (
            Rights::parse("backup").unwrap(),
            Rights::parse("restore").unwrap(),
        );
        let forget = Rights::parse("forget").unwrap();
        assert!(backup.allow(R, "x").is_ok() && restore.allow(R, "x").is_ok());
        assert!(restore.allow(to_read(Kind::Chunk), "x").is_ok());
        assert!(backup.allow(to_read(Kind::Chunk), "x").is_err());
        assert!(restore.allow(B, "x").is_err());
        assert!(matches!(
            forget.allow(R, "x"),
            Err(Error::NotAllowed { right: Backup, .. })
        ));
        assert!(forget.allow(Need::Nothing, "x").is_ok());
    }

    #[test]
    fn allow_lists_parse_print_and_refuse_clearly() {
        assert_eq!(Rights::parse("full").unwrap(), Rights::FULL);
        assert_eq!(
            Rights::parse("backup,restore").unwrap(),
            Rights::APPEND_ONLY
        );
        assert_eq!(
            Rights::parse("prune, backup,forget,restore").unwrap(),
            Rights::FULL
        );
        let b = Rights::parse("backup").unwrap();
        assert!(b.has(Backup) && !b.has(Restore) && b.append_only());
        assert!(!Rights::parse("backup,forget").unwrap().append_only());
        assert_eq!(b.to_string(), "backup");
        assert_eq!(
            Rights::parse("forget,backup").unwrap().to_string(),
            "backup,forget"
        );
        assert_eq!(Rights::FULL.to_string(), "full");
        for bad in ["", "backup,", "all", "Backup"] {
            assert!(Rights::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Rights(0xff).known(), Rights::FULL);
        assert!(b.require(Backup, "x").is_ok());
        let e = b.require(Forget, "ssh://h/acme").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::NotAllowed { right: Forget, .. }), "{e}");
        for part in [
            "refused",
            "ssh://h/acme",
            "remove snapshots",
            "--allow backup,forget",
            "authorized_keys",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
    }
}
