//! Who may watch at once: the RFB shared flag of ClientInit under the operator's policy (QEMU's
//! `share=` values), and the registry of a server's viewers that carries it out.
//!
//! | policy | a non-shared ClientInit | a shared one while an exclusive viewer is on |
//! |---|---|---|
//! | `allow-exclusive` (default, as QEMU and TigerVNC) | disconnects every other viewer | refused |
//! | `force-shared` | refused | admitted |
//! | `ignore` | admitted, nobody disconnected | admitted |

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::bail;

/// What the server does with the shared flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SharePolicy {
    /// A viewer that asks for exclusive access gets it: the others are disconnected.
    #[default]
    AllowExclusive,
    /// Nobody gets exclusive access: such a request is refused.
    ForceShared,
    /// The flag is ignored: everybody shares.
    Ignore,
}

impl SharePolicy {
    /// The policies with their names.
    pub const ALL: [(&'static str, SharePolicy); 3] = [
        ("allow-exclusive", SharePolicy::AllowExclusive),
        ("force-shared", SharePolicy::ForceShared),
        ("ignore", SharePolicy::Ignore),
    ];
}

impl fmt::Display for SharePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::ALL
            .iter()
            .find(|(_, p)| p == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

impl FromStr for SharePolicy {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match Self::ALL.iter().find(|(n, _)| *n == s) {
            Some((_, p)) => Ok(*p),
            None => bail!("share policy {s:?}: allow-exclusive, force-shared or ignore"),
        }
    }
}

struct Entry {
    id: u64,
    exclusive: bool,
    kicked: Arc<AtomicBool>,
}

/// The viewers of one server that are past ClientInit.
#[derive(Default)]
pub struct Viewers {
    list: Mutex<Vec<Entry>>,
}

/// A registered viewer; dropping it leaves the registry.
pub struct Membership {
    viewers: Arc<Viewers>,
    id: u64,
    kicked: Arc<AtomicBool>,
}

impl Membership {
    /// Whether an exclusive viewer has pushed this one out.
    pub fn kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut l = self.viewers.list.lock().unwrap_or_else(|e| e.into_inner());
        l.retain(|e| e.id != self.id);
    }
}

impl Viewers {
    /// Viewer `id` sent ClientInit with `shared`: admits it (disconnecting others if it gets
    /// exclusive access) or says why not.
    pub fn join(
        self: &Arc<Self>,
        id: u64,
        shared: bool,
        policy: SharePolicy,
    ) -> Result<Membership, &'static str> {
        let mut l = self.list.lock().unwrap_or_else(|e| e.into_inner());
        let exclusive = match policy {
            SharePolicy::Ignore => false,
            SharePolicy::ForceShared if !shared => {
                return Err("exclusive access is not allowed here (share policy force-shared)");
            }
            SharePolicy::ForceShared => false,
            SharePolicy::AllowExclusive => {
                if !shared {
                    for e in l.iter() {
                        e.kicked.store(true, Ordering::Release);
                    }
                    l.clear();
                } else if l.iter().any(|e| e.exclusive) {
                    return Err("another viewer has exclusive access");
                }
                !shared
            }
        };
        let kicked = Arc::new(AtomicBool::new(false));
        l.push(Entry {
            id,
            exclusive,
            kicked: kicked.clone(),
        });
        Ok(Membership {
            viewers: self.clone(),
            id,
            kicked,
        })
    }

    /// Viewers admitted now.
    pub fn len(&self) -> usize {
        self.list.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nobody watches.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_exclusive_disconnects_the_others_and_keeps_newcomers_out() {
        let v = Arc::new(Viewers::default());
        let a = v.join(1, true, SharePolicy::AllowExclusive).unwrap();
        let b = v.join(2, true, SharePolicy::AllowExclusive).unwrap();
        let c = v.join(3, false, SharePolicy::AllowExclusive).unwrap();
        assert!(a.kicked() && b.kicked() && !c.kicked());
        assert_eq!(v.len(), 1);
        assert!(v.join(4, true, SharePolicy::AllowExclusive).is_err());
        drop(c);
        assert!(v.is_empty());
        let d = v.join(5, true, SharePolicy::AllowExclusive).unwrap();
        assert!(!d.kicked());
    }

    #[test]
    fn force_shared_refuses_exclusive_and_ignore_admits_everyone() {
        let v = Arc::new(Viewers::default());
        let a = v.join(1, true, SharePolicy::ForceShared).unwrap();
        assert!(v.join(2, false, SharePolicy::ForceShared).is_err());
        let b = v.join(3, false, SharePolicy::Ignore).unwrap();
        let c = v.join(4, false, SharePolicy::Ignore).unwrap();
        assert!(!a.kicked() && !b.kicked() && !c.kicked());
        assert_eq!(v.len(), 3);
        assert_eq!(
            "force-shared".parse::<SharePolicy>().unwrap(),
            SharePolicy::ForceShared
        );
        assert!("sometimes".parse::<SharePolicy>().is_err());
    }
}
