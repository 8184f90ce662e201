//! Users and groups from the container's own `/etc/passwd` and `/etc/group` (never the host's
//! NSS), with runc's `user[:group]` semantics: names or numbers, supplementary groups from
//! `/etc/group`, and a numeric uid that has no passwd entry still accepted.

use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn read(root: &Path, file: &str) -> String {
    std::fs::read_to_string(root.join(file)).unwrap_or_default()
}

fn passwd(root: &Path) -> Vec<PasswdEntry> {
    read(root, "etc/passwd")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

fn groups(root: &Path) -> Vec<GroupEntry> {
    read(root, "etc/group")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves `user` (`name`, `uid`, `name:group`, `uid:gid`, …) and an optional separate `group`
/// inside the filesystem at `root`. An empty user means root (uid 0).
pub fn resolve(root: &Path, user: &str, group: &str) -> Result<Resolved, UserError> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, g),
        None => (user, group),
    };
    let users = passwd(root);
    let all_groups = groups(root);
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let entry = users.iter().find(|e| e.name == user_part).or_else(|| {
        user_part
            .parse::<u32>()
            .ok()
            .and_then(|n| users.iter().find(|e| e.uid == n))
    });
    let (uid, mut gid, name, home) = match (entry, user_part.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, Some(e.name.clone()), e.home.clone()),
        (None, Ok(n)) => (n, n, None, String::new()),
        (None, Err(_)) => return Err(UserError::NoUser(user_part.to_string())),
    };
    let explicit_group = !group_part.is_empty();
    if explicit_group {
        gid = match all_groups.iter().find(|g| g.name == group_part) {
            Some(g) => g.gid,
            None => group_part
                .parse()
                .map_err(|_| UserError::NoGroup(group_part.to_string()))?,
        };
    }
    // Supplementary groups: those listing the user by name (only when the group was not forced).
    let mut supplementary = vec![gid];
    if let (Some(name), false) = (&name, explicit_group) {
        for g in &all_groups {
            if g.members.iter().any(|m| m == name) && !supplementary.contains(&g.gid) {
                supplementary.push(g.gid);
            }
        }
    }
    Ok(Resolved {
        uid,
        gid,
        groups: supplementary,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

/// The home directory of `uid` in the container, `/` when it has none.
pub fn home_of(root: &Path, uid: u32) -> String {
    passwd(root)
        .into_iter()
        .find(|e| e.uid == uid && !e.home.is_empty())
        .map_or_else(|| "/".to_string(), |e| e.home)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbad line\nnobody:x:65534:65534::/nonexistent:/bin/false\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nalice:x:1000:\nwheel:x:10:alice,bob\naudio:x:29:alice\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn by_name_with_supplementary_groups() {
        let r = resolve(root().path(), "alice", "").unwrap();
        assert_eq!(
            (r.uid, r.gid, r.groups, r.home.as_str()),
            (1000, 1000, vec![1000, 10, 29], "/home/alice")
        );
    }

    #[test]
    fn forms_of_user_and_group() {
        let d = root();
        assert_eq!(resolve(d.path(), "1000", "").unwrap().home, "/home/alice");
        let r = resolve(d.path(), "alice:wheel", "").unwrap();
        assert_eq!((r.gid, r.groups), (10, vec![10]));
        let r = resolve(d.path(), "4242:4343", "").unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (4242, 4343, "/"));
        let r = resolve(d.path(), "nobody", "audio").unwrap();
        assert_eq!((r.uid, r.gid), (65534, 29));
        assert_eq!(resolve(d.path(), "", "").unwrap().home, "/root");
    }

    #[test]
    fn unknown_names_are_errors() {
        let d = root();
        assert_eq!(
            resolve(d.path(), "mallory", "").unwrap_err().to_string(),
            "unable to find user mallory: no matching entries in passwd file"
        );
        assert_eq!(
            resolve(d.path(), "alice:nogroup", "").unwrap_err(),
            UserError::NoGroup("nogroup".into())
        );
    }

    #[test]
    fn home_defaults_to_root() {
        let d = root();
        assert_eq!(home_of(d.path(), 0), "/root");
        assert_eq!(home_of(d.path(), 77), "/");
    }
}
