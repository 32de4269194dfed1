//! Named sync targets (the `targets` table: name -> URL; URLs parse as `storage::Url`).

use crate::error::{Error, Result};
use crate::storage::redb::{Store, TARGETS};
use redb::ReadableTable;

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
        if !valid_name(name) {
            return Err(Error::Usage(format!(
                "`{name}` is not a valid target name (letters, digits, `.`, `_`, `-`)"
            )));
        }
        crate::storage::Url::parse_target(url)?;
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(TARGETS)?;
            if t.get(name)?.is_some() {
                return Err(Error::Usage(format!(
                    "a target named `{name}` exists; remove it first with `cairn target remove {name}`"
                )));
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
                return Err(Error::NotFound(format!(
                    "no target named `{name}`; see `cairn target list`"
                )));
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
