//! Who may use the device nodes build machines need. There is no udev on a host, so the
//! kernel's devtmpfs leaves every node root's 0600; init sets these once the modules are
//! loaded, as Debian's udev rules do.

use std::path::Path;

use crate::host::Host;

/// A device node, the group it gets (`None`: root's), its mode, and why.
pub struct Grant {
    pub path: &'static str,
    pub group: Option<&'static str>,
    pub mode: u32,
    pub reason: &'static str,
}

/// The nodes, relative to `/dev`.
pub const GRANTS: &[Grant] = &[
    Grant {
        path: "kvm",
        group: Some("kvm"),
        mode: 0o660,
        reason: "accelerated build machines for the members of kvm (build)",
    },
    Grant {
        path: "net/tun",
        group: None,
        mode: 0o666,
        reason: "tap devices; the kernel checks who may attach to each",
    },
];

/// The group id of `name` in the group file text `group`.
pub fn group_id(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [n, _, gid, ..] if *n == name => gid.parse().ok(),
            _ => None,
        }
    })
}

/// Applies [`GRANTS`] under `dev` with the groups of the group file text `group`. Returns a
/// line per node for the console; a node that is not there (no KVM on this CPU) or a group the
/// image does not have is said, not an error; what cannot be set is an error naming the node
/// and what was wanted.
pub fn grant(host: &dyn Host, dev: &Path, group: &str) -> (Vec<String>, Vec<String>) {
    let (mut lines, mut problems) = (Vec::new(), Vec::new());
    for grant in GRANTS {
        let path = dev.join(grant.path);
        if std::fs::symlink_metadata(&path).is_err() {
            lines.push(format!(
                "no {}: {} unavailable",
                path.display(),
                grant.reason
            ));
            continue;
        }
        let gid = match grant.group {
            None => 0,
            Some(name) => match group_id(group, name) {
                Some(gid) => gid,
                None => {
                    // An image without the group (the minimal one) runs no build machines:
                    // said, not a problem, so it does not count against every boot.
                    lines.push(format!(
                        "{} left root's 0600: this image has no group {name} (a profile that \
                         runs build machines makes it)",
                        path.display()
                    ));
                    continue;
                }
            },
        };
        let set = host
            .chown(&path, 0, gid)
            .map_err(|e| e.desc().to_string())
            .and_then(|()| host.chmod(&path, grant.mode).map_err(|e| e.to_string()));
        match set {
            Ok(()) => lines.push(format!(
                "{} is root:{} {:04o}: {}",
                path.display(),
                grant.group.unwrap_or("root"),
                grant.mode,
                grant.reason
            )),
            Err(e) => problems.push(format!(
                "cannot make {} root:{} {:04o}: {e}",
                path.display(),
                grant.group.unwrap_or("root"),
                grant.mode
            )),
        }
    }
    (lines, problems)
}
