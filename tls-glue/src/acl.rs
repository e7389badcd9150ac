//! Access control on the client certificate's distinguished name, like QEMU's
//! `authz-simple` (one exact identity) and `authz-list` (ordered rules, `format=exact|glob`).

use alloc::string::String;
use alloc::vec::Vec;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclPolicy {
    /// Accept the client.
    Allow,
    /// Refuse the client.
    Deny,
}

/// How a rule's pattern is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclFormat {
    /// Byte-for-byte equality.
    Exact,
    /// `*` matches any run of characters (also empty), `?` exactly one character.
    Glob,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    pattern: String,
    policy: AclPolicy,
    format: AclFormat,
}

/// An ordered list of rules over RFC 4514 DN strings as gnutls/QEMU print them
/// (`C=GB,ST=London,L=City Of London,O=Test Org,CN=client.example.com`). The first matching
/// rule decides; if none matches, the default policy does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    rules: Vec<Rule>,
    default: AclPolicy,
}

impl Acl {
    /// An empty list with a default policy (QEMU `authz-list,policy=deny`).
    pub fn new(default: AclPolicy) -> Self {
        Self {
            rules: Vec::new(),
            default,
        }
    }

    /// Allows exactly these identities, denies everything else (QEMU `authz-simple`).
    pub fn allow_only<I, S>(identities: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut acl = Self::new(AclPolicy::Deny);
        for id in identities {
            acl = acl.rule(AclPolicy::Allow, AclFormat::Exact, id);
        }
        acl
    }

    /// Appends a rule.
    pub fn rule(
        mut self,
        policy: AclPolicy,
        format: AclFormat,
        pattern: impl Into<String>,
    ) -> Self {
        self.rules.push(Rule {
            pattern: pattern.into(),
            policy,
            format,
        });
        self
    }

    /// Whether the DN is allowed.
    pub fn is_allowed(&self, dn: &str) -> bool {
        for r in &self.rules {
            let hit = match r.format {
                AclFormat::Exact => r.pattern == dn,
                AclFormat::Glob => glob_match(&r.pattern, dn),
            };
            if hit {
                return r.policy == AclPolicy::Allow;
            }
        }
        self.default == AclPolicy::Allow
    }
}

/// Glob match with `*` and `?` (GLib `g_pattern_match_simple`, which QEMU uses).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match(
            "C=GB,*,CN=*.example.com",
            "C=GB,O=X,CN=a.example.com"
        ));
        assert!(!glob_match(
            "C=GB,*,CN=*.example.com",
            "C=FR,O=X,CN=a.example.com"
        ));
        assert!(glob_match("CN=?", "CN=x"));
        assert!(!glob_match("CN=?", "CN=xy"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
    }

    #[test]
    fn list_order_and_default() {
        let acl = Acl::new(AclPolicy::Deny)
            .rule(AclPolicy::Deny, AclFormat::Exact, "CN=bad")
            .rule(AclPolicy::Allow, AclFormat::Glob, "CN=*");
        assert!(!acl.is_allowed("CN=bad"));
        assert!(acl.is_allowed("CN=good"));
        assert!(!acl.is_allowed("O=x"));
        let simple = Acl::allow_only(["CN=a"]);
        assert!(simple.is_allowed("CN=a"));
        assert!(!simple.is_allowed("CN=a "));
    }
}
