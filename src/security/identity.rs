//! Who is calling: the identity comes from the client certificate (a DNS
//! subject alternative name ending in `.proofgate`), the role from the
//! configuration or, by default, from the name itself (`<name>.<role>.proofgate`).

use std::collections::HashMap;
use std::fmt;

use rustls_pki_types::CertificateDer;

/// What a caller may do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// A service hall system: submits and follows its own applications.
    ServiceHall { hall_id: String },
    /// A department: registers its own data sources, completes its own tickets.
    Department { department_id: String },
    /// Reads the log; never writes.
    Auditor,
    /// Lists accesses for the subject it asks about.
    CitizenPortal,
    /// Operates the gateway.
    Admin,
    /// The gateway itself: `gateway.proofgate`, or one node of a shared PKI,
    /// `<node-id>.gateway.proofgate` (as a client of departments, of peer
    /// nodes, and as a mirror reading another node's AuditService).
    Gateway,
}

impl Role {
    /// The role's name in configuration and in rate-limit settings.
    pub fn kind(&self) -> &'static str {
        match self {
            Role::ServiceHall { .. } => "hall",
            Role::Department { .. } => "department",
            Role::Auditor => "auditor",
            Role::CitizenPortal => "citizen-portal",
            Role::Admin => "admin",
            Role::Gateway => "gateway",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub identity: String,
    pub role: Role,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.identity, self.role.kind())
    }
}

/// Maps identities to roles: explicit entries first, then the naming convention.
#[derive(Debug, Clone, Default)]
pub struct RoleMap {
    explicit: HashMap<String, Role>,
}

impl RoleMap {
    pub fn with(mut self, identity: &str, role: Role) -> Self {
        self.explicit.insert(identity.to_owned(), role);
        self
    }

    pub fn role_of(&self, identity: &str) -> Option<Role> {
        if let Some(role) = self.explicit.get(identity) {
            return Some(role.clone());
        }
        // `gateway.proofgate` (one node) or `<node-id>.gateway.proofgate`
        // (a node of a shared PKI).
        if super::certs::is_gateway_identity(identity) {
            return Some(Role::Gateway);
        }
        let rest = identity.strip_suffix(".proofgate")?;
        let (name, kind) = rest.split_once('.')?;
        if name.is_empty() || name.contains('.') {
            return None;
        }
        match kind {
            "hall" => Some(Role::ServiceHall {
                hall_id: name.to_owned(),
            }),
            "department" => Some(Role::Department {
                department_id: name.to_owned(),
            }),
            "auditor" => Some(Role::Auditor),
            "citizen-portal" => Some(Role::CitizenPortal),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The `.proofgate` DNS name of a client certificate (the first one).
pub fn identity_of(certs: &[CertificateDer<'_>]) -> Option<String> {
    let leaf = certs.first()?;
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    cert.valid_dns_names()
        .find(|name| name.ends_with(".proofgate"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_naming_convention_unless_configured() {
        let map = RoleMap::default().with("ops.example.proofgate", Role::Admin);
        assert_eq!(
            map.role_of("hall-wucheng.hall.proofgate"),
            Some(Role::ServiceHall {
                hall_id: "hall-wucheng".into()
            })
        );
        assert_eq!(
            map.role_of("civil-affairs.department.proofgate"),
            Some(Role::Department {
                department_id: "civil-affairs".into()
            })
        );
        assert_eq!(
            map.role_of("auditor.auditor.proofgate"),
            Some(Role::Auditor)
        );
        assert_eq!(map.role_of("ops.example.proofgate"), Some(Role::Admin));
        assert_eq!(map.role_of("x.unknown.proofgate"), None);
        assert_eq!(map.role_of("a.b.hall.proofgate"), None);
        assert_eq!(map.role_of("hall.proofgate"), None);
        assert_eq!(map.role_of("gateway.proofgate"), Some(Role::Gateway));
        assert_eq!(map.role_of("node-2.gateway.proofgate"), Some(Role::Gateway));
        assert_eq!(map.role_of(".gateway.proofgate"), None);
        assert_eq!(map.role_of("a.b.gateway.proofgate"), None);
    }
}
