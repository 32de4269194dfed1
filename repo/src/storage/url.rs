//! Where a repository is: the one parser of repository and target locations (design.md §5).
//! A path, `file://PATH`, `ssh://[user@]host[:port]/path` or `s3://bucket/prefix`; any other
//! scheme is refused, and something that looks like a URL is never taken for a relative
//! directory.

use crate::error::{Error, Result};
use crate::sync::SshUrl;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Url {
    Local(PathBuf),
    Ssh(SshUrl),
    S3(super::s3::S3Url),
}

impl Url {
    /// A repository location as `--repo` takes it: relative paths are paths.
    pub fn parse(raw: &OsStr) -> Result<Url> {
        let bytes = raw.as_bytes();
        if let Some(rest) = bytes.strip_prefix(b"file://") {
            return Ok(Url::Local(PathBuf::from(OsStr::from_bytes(rest))));
        }
        let Some(scheme) = scheme_of(bytes) else {
            return Ok(Url::Local(PathBuf::from(raw)));
        };
        let text = raw.to_string_lossy();
        match scheme {
            b"ssh" => Ok(Url::Ssh(SshUrl::parse(&text)?)),
            b"s3" => Ok(Url::S3(super::s3::S3Url::parse(&text)?)),
            _ => Err(Error::Usage(format!(
                "{text}: unknown repository URL scheme `{}://`; give a path, file://PATH or ssh://[user@]host[:port]/path",
                String::from_utf8_lossy(scheme)
            ))),
        }
    }

    /// A sync target: like `parse`, but a local target must be an absolute path (a target
    /// is stored in the repository and used from any working directory).
    pub fn parse_target(url: &str) -> Result<Url> {
        let parsed = Url::parse(OsStr::new(url))?;
        if let Url::Local(p) = &parsed {
            if !p.is_absolute() {
                return Err(Error::Usage(format!(
                    "`{url}`: a local target must be an absolute path"
                )));
            }
        }
        Ok(parsed)
    }

    /// Whether `s` reads as a URL or path rather than a target name.
    pub fn looks_like_url(s: &str) -> bool {
        s.contains('/') || s.contains("://")
    }
}

/// The scheme of `scheme://…`, if `bytes` starts with one (letters, digits, `+.-`).
fn scheme_of(bytes: &[u8]) -> Option<&[u8]> {
    let end = bytes.windows(3).position(|w| w == b"://")?;
    let scheme = &bytes[..end];
    let ok = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(b));
    ok.then_some(scheme)
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Url::Local(p) => write!(f, "{}", p.display()),
            Url::Ssh(u) => {
                write!(f, "ssh://")?;
                if let Some(user) = &u.user {
                    write!(f, "{user}@")?;
                }
                if u.host.contains(':') {
                    write!(f, "[{}]", u.host)?;
                } else {
                    write!(f, "{}", u.host)?;
                }
                if let Some(p) = u.port {
                    write!(f, ":{p}")?;
                }
                write!(f, "{}", u.path)
            }
            Url::S3(u) => write!(f, "{u}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Url> {
        Url::parse(OsStr::new(s))
    }

    #[test]
    fn paths_urls_and_refusals() {
        assert_eq!(parse("repo").unwrap(), Url::Local("repo".into()));
        assert_eq!(parse("file:///a/b").unwrap(), Url::Local("/a/b".into()));
        assert_eq!(parse("./x://y").unwrap(), Url::Local("./x://y".into()));
        let u = parse("ssh://me@h:2222/srv/r").unwrap();
        assert_eq!(u.to_string(), "ssh://me@h:2222/srv/r");
        let s3 = parse("s3://my-bucket/a/b/").unwrap();
        assert_eq!(s3.to_string(), "s3://my-bucket/a/b");
        for bad in [
            "s3://B/p",
            "s3://b/../x",
            "http://h/p",
            "ssh://h",
            "sftp://h/p",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(parse("gopher://x/y"), Err(Error::Usage(_))));
        assert!(Url::parse_target("rel/dir").is_err());
        assert!(Url::parse_target("/abs").is_ok());
    }
}
