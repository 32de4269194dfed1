//! Named sync targets: name -> URL (URLs parse as `storage::Url`). A local repository keeps
//! them in its `targets` table; any other store (a repository on a server, a bucket) in the
//! state record `sync.targets`, which its server can read (DESIGN.md §6).

use crate::error::{Error, Result};
use crate::storage::redb::{Store, TARGETS};
use crate::storage::Storage;
use redb::ReadableTable;

/// The state record holding the named targets of a store that is not a local repository.
const STATE_KEY: &str = "sync.targets";

/// The named targets of `store`, sorted by name.
pub fn list(store: &dyn Storage) -> Result<Vec<(String, String)>> {
    match crate::storage::local(store, "") {
        Ok(local) => local.targets(),
        Err(_) => in_state(store),
    }
}

/// Add a named target to `store`; refuses a name already in use and an invalid URL.
pub fn add(store: &dyn Storage, name: &str, url: &str) -> Result<()> {
    if let Ok(local) = crate::storage::local(store, "") {
        return local.add_target(name, url);
    }
    let mut all = in_state(store)?;
    check_new(name, url, &all)?;
    all.push((name.to_string(), url.to_string()));
    save_state(store, all)
}

/// Remove the named target `name` from `store`.
pub fn remove(store: &dyn Storage, name: &str) -> Result<()> {
    if let Ok(local) = crate::storage::local(store, "") {
        return local.remove_target(name);
    }
    let mut all = in_state(store)?;
    let before = all.len();
    all.retain(|(n, _)| n != name);
    if all.len() == before {
        return Err(no_target(name));
    }
    save_state(store, all)
}

fn in_state(store: &dyn Storage) -> Result<Vec<(String, String)>> {
    match store.state(STATE_KEY)? {
        None => Ok(Vec::new()),
        Some(bytes) => postcard::from_bytes(&bytes).map_err(|e| {
            Error::corrupt(
                STATE_KEY,
                format!("the named targets cannot be read ({e}); add them again"),
            )
        }),
    }
}

fn save_state(store: &dyn Storage, mut all: Vec<(String, String)>) -> Result<()> {
    all.sort();
    let bytes = postcard::to_stdvec(&all)
        .map_err(|e| Error::Internal(format!("encoding the named targets: {e}")))?;
    store.set_state(STATE_KEY, &bytes)
}

/// A valid name not in use yet, and a valid URL.
fn check_new(name: &str, url: &str, existing: &[(String, String)]) -> Result<()> {
    if !valid_name(name) {
        return Err(Error::Usage(format!(
            "`{name}` is not a valid target name (letters, digits, `.`, `_`, `-`)"
        )));
    }
    crate::storage::Url::parse_target(url)?;
    if existing.iter().any(|(n, _)| n == name) {
        return Err(exists(name));
    }
    Ok(())
}

fn exists(name: &str) -> Error {
    Error::Usage(format!(
        "a target named `{name}` exists; remove it first with `cairn target remove {name}`"
    ))
}

fn no_target(name: &str) -> Error {
    Error::NotFound(format!("no target named `{name}`; see `cairn target list`"))
}

/// Target names: letters, digits, `.`, `_`, `-`; not starting with `-` or `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Store {
    /// Named targets, sorted by name.
    pub fn targets(&self) -> Result<Vec<(String, String)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(TARGETS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    /// Add a named target; refuses a name already in use and an invalid URL.
    pub fn add_target(&self, name: &str, url: &str) -> Result<()> {
        check_new(name, url, &[])?;
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(TARGETS)?;
            if t.get(name)?.is_some() {
                return Err(exists(name));
            }
            t.insert(name, url)?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn remove_target(&self, name: &str) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(TARGETS)?;
            if t.remove(name)?.is_none() {
                return Err(no_target(name));
            }
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::storage::Url as TargetUrl;

    #[test]
    fn urls_and_names() {
        assert_eq!(
            TargetUrl::parse_target("/mnt/b").unwrap(),
            TargetUrl::Local("/mnt/b".into())
        );
        assert_eq!(
            TargetUrl::parse_target("file:///mnt/b").unwrap(),
            TargetUrl::Local("/mnt/b".into())
        );
        assert!(matches!(
            TargetUrl::parse_target("ssh://h/p").unwrap(),
            TargetUrl::Ssh(_)
        ));
        assert!(TargetUrl::parse_target("rel/path").is_err());
        assert!(matches!(
            TargetUrl::parse_target("s3://bucket/x").unwrap(),
            TargetUrl::S3(_)
        ));
        assert!(TargetUrl::parse_target("s3://Bad_Bucket/x").is_err());
        assert!(valid_name("nas-1.home_x"));
        assert!(!valid_name("-x") && !valid_name("a/b") && !valid_name(""));
    }
}
