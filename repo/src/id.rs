//! Object and snapshot identifiers: 32 bytes, shown as lowercase hex.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// The id right after this one in order (`None` after the last possible id): where a
    /// listing that ended here goes on.
    pub fn next(&self) -> Option<Id> {
        let mut b = self.0;
        for i in (0..32).rev() {
            if b[i] == 0xff {
                b[i] = 0;
            } else {
                b[i] += 1;
                return Some(Id(b));
            }
        }
        None
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The short form printed in tables (like restic's 8 hex digits).
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    pub fn from_hex(s: &str) -> Option<Id> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Id(out))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = Id([0xab; 32]);
        assert_eq!(Id::from_hex(&id.to_hex()), Some(id));
        assert_eq!(id.short(), "abababab");
        assert_eq!(Id::from_hex("zz"), None);
    }
}
