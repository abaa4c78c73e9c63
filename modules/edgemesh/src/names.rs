//! Service names as apps write them: `web`, `web.shop`, `web.shop.svc`,
//! `web.shop.svc.cluster.local`, read the way the cluster's DNS search path would.

/// How names are completed on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The namespace a bare name is in.
    pub namespace: String,
    /// The cluster domain (`cluster.local`).
    pub domain: String,
}

/// A name read as a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceName {
    /// Its namespace.
    pub namespace: String,
    /// The Service.
    pub name: String,
    /// Written in full (inside the cluster domain): when no such Service exists the
    /// name does not exist at all, rather than belonging to the outside world.
    pub qualified: bool,
}

impl Names {
    /// Whether `host` (lowercase, without the final dot) lies in the cluster domain.
    pub fn in_domain(&self, host: &str) -> bool {
        host == self.domain
            || host
                .strip_suffix(self.domain.as_str())
                .is_some_and(|rest| rest.ends_with('.'))
    }

    /// The Service `host` names, if it has a Service's shape.
    pub fn service(&self, host: &str) -> Option<ServiceName> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let full = format!(".svc.{}", self.domain);
        let (short, qualified) = match host.strip_suffix(full.as_str()) {
            Some(short) => (short, true),
            None => (host.strip_suffix(".svc").unwrap_or(&host), false),
        };
        let mut labels = short.split('.');
        let (name, namespace) = match (labels.next(), labels.next(), labels.next()) {
            (Some(name), None, None) if !qualified => (name, self.namespace.as_str()),
            (Some(name), Some(ns), None) => (name, ns),
            _ => return None,
        };
        if name.is_empty() || namespace.is_empty() {
            return None;
        }
        Some(ServiceName {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            qualified,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_complete_like_the_search_path() {
        let names = Names {
            namespace: "shop".into(),
            domain: "cluster.local".into(),
        };
        let s = |ns: &str, name: &str, qualified| {
            Some(ServiceName {
                namespace: ns.into(),
                name: name.into(),
                qualified,
            })
        };
        assert_eq!(names.service("web"), s("shop", "web", false));
        assert_eq!(names.service("web.default"), s("default", "web", false));
        assert_eq!(names.service("web.default.svc"), s("default", "web", false));
        assert_eq!(
            names.service("Web.Default.svc.cluster.local."),
            s("default", "web", true)
        );
        assert_eq!(names.service("a.b.c.example.com"), None);
        assert_eq!(names.service("svc.cluster.local"), None);
        assert!(names.in_domain("x.svc.cluster.local"));
        assert!(!names.in_domain("notcluster.local"));
    }
}
