//! Named sync targets (the `targets` table: name -> URL) and target URLs.

use super::remote::SshUrl;
use crate::error::{Error, Result};
use crate::store::{Store, TARGETS};
use redb::ReadableTable;
use std::path::PathBuf;

/// Where a target lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetUrl {
    Local(PathBuf),
    Ssh(SshUrl),
}

impl TargetUrl {
    /// `ssh://[user@]host[:port]/path`, `file:///path`, or an absolute path.
    pub fn parse(url: &str) -> Result<TargetUrl> {
        if url.starts_with("ssh://") {
            return Ok(TargetUrl::Ssh(SshUrl::parse(url)?));
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        if url.contains("://") && !url.starts_with("file://") {
            return Err(Error::Invalid(format!(
                "`{url}`: unsupported target scheme; use a path or ssh://"
            )));
        }
        if !path.starts_with('/') {
            return Err(Error::Invalid(format!(
                "`{url}`: a local target must be an absolute path"
            )));
        }
        Ok(TargetUrl::Local(PathBuf::from(path)))
    }

    /// Whether `s` reads as a URL or path rather than a target name.
    pub fn looks_like_url(s: &str) -> bool {
        s.contains('/') || s.contains("://")
    }
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
        if !valid_name(name) {
            return Err(Error::Invalid(format!(
                "`{name}` is not a valid target name (letters, digits, `.`, `_`, `-`)"
            )));
        }
        TargetUrl::parse(url)?;
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(TARGETS)?;
            if t.get(name)?.is_some() {
                return Err(Error::Invalid(format!(
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
                return Err(Error::Invalid(format!(
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

    #[test]
    fn urls_and_names() {
        assert_eq!(
            TargetUrl::parse("/mnt/b").unwrap(),
            TargetUrl::Local("/mnt/b".into())
        );
        assert_eq!(
            TargetUrl::parse("file:///mnt/b").unwrap(),
            TargetUrl::Local("/mnt/b".into())
        );
        assert!(matches!(
            TargetUrl::parse("ssh://h/p").unwrap(),
            TargetUrl::Ssh(_)
        ));
        assert!(TargetUrl::parse("rel/path").is_err());
        assert!(TargetUrl::parse("s3://bucket/x").is_err());
        assert!(valid_name("nas-1.home_x"));
        assert!(!valid_name("-x") && !valid_name("a/b") && !valid_name(""));
    }
}
