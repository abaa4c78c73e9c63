//! The desired state: every object the source holds, and the changes a new view of it makes.

use std::collections::BTreeMap;

use crate::object::{Kind, ObjKey, Object};

/// One change to the desired state.
#[derive(Clone, Debug, PartialEq)]
pub enum Delta {
    /// Created (`old` is `None`) or changed.
    Upsert {
        /// What was there before.
        old: Option<Object>,
        /// What is there now.
        new: Object,
    },
    /// Removed; the last known object.
    Delete(Object),
}

/// Every object, by identity.
#[derive(Debug, Default)]
pub struct State {
    objects: BTreeMap<ObjKey, Object>,
}

impl State {
    /// Takes a new or changed object; `None` when its version is the one held.
    pub fn apply(&mut self, obj: Object) -> Option<Delta> {
        let key = obj.key();
        match self.objects.get(&key) {
            Some(held) if held.rv == obj.rv && !obj.rv.is_empty() => None,
            _ => {
                let old = self.objects.insert(key, obj.clone());
                Some(Delta::Upsert { old, new: obj })
            }
        }
    }

    /// Removes an object; `None` when it was not held.
    pub fn delete(&mut self, key: &ObjKey) -> Option<Delta> {
        self.objects.remove(key).map(Delta::Delete)
    }

    /// Takes the complete current set of one kind (a relist, or a rescan of the folder):
    /// what changed is upserted, what is missing is deleted, the rest makes no delta.
    pub fn replace(&mut self, kind: Kind, objects: Vec<Object>) -> Vec<Delta> {
        let mut fresh: BTreeMap<ObjKey, Object> = BTreeMap::new();
        for obj in objects.into_iter().filter(|o| o.kind == kind) {
            fresh.insert(obj.key(), obj);
        }
        let gone: Vec<ObjKey> = self
            .of_kind(kind)
            .map(Object::key)
            .filter(|k| !fresh.contains_key(k))
            .collect();
        let mut deltas: Vec<Delta> = gone.iter().filter_map(|k| self.delete(k)).collect();
        deltas.extend(fresh.into_values().filter_map(|o| self.apply(o)));
        deltas
    }

    /// Every object of one kind, in key order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        self.objects
            .range((kind, String::new(), String::new())..)
            .take_while(move |((k, _, _), _)| *k == kind)
            .map(|(_, o)| o)
    }

    /// One object.
    pub fn get(&self, key: &ObjKey) -> Option<&Object> {
        self.objects.get(key)
    }

    /// What `node` should hold: every Service and Endpoints, and the Pods scheduled on it.
    pub fn desired_for<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Object> + 'a {
        self.of_kind(Kind::Service)
            .chain(self.of_kind(Kind::Endpoints))
            .chain(
                self.of_kind(Kind::Pod)
                    .filter(move |p| p.pod_node() == Some(node)),
            )
    }

    /// Names of Nodes that carry `label`.
    pub fn labelled_nodes(&self, label: &str) -> Vec<String> {
        self.of_kind(Kind::Node)
            .filter(|n| n.labels().is_some_and(|l| l.contains_key(label)))
            .map(|n| n.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, ip: &str) -> Object {
        Object::from_value(
            json!({"kind": "Service", "metadata": {"name": name}, "spec": {"clusterIP": ip}}),
            true,
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn replace_yields_only_real_changes() {
        let mut state = State::default();
        assert_eq!(
            state
                .replace(Kind::Service, vec![svc("a", "1"), svc("b", "2")])
                .len(),
            2
        );
        assert!(
            state
                .replace(Kind::Service, vec![svc("a", "1"), svc("b", "2")])
                .is_empty()
        );
        let deltas = state.replace(Kind::Service, vec![svc("a", "9"), svc("c", "3")]);
        assert_eq!(deltas.len(), 3);
        assert!(
            deltas
                .iter()
                .any(|d| matches!(d, Delta::Delete(o) if o.name == "b"))
        );
        assert!(
            deltas
                .iter()
                .any(|d| matches!(d, Delta::Upsert { old: Some(_), new } if new.name == "a"))
        );
        assert!(
            deltas
                .iter()
                .any(|d| matches!(d, Delta::Upsert { old: None, new } if new.name == "c"))
        );
        // Other kinds are untouched by a replace of services.
        assert!(state.replace(Kind::Pod, vec![]).is_empty());
        assert_eq!(state.of_kind(Kind::Service).count(), 2);
    }

    #[test]
    fn a_node_is_due_its_pods_and_every_service() {
        let mut state = State::default();
        state.apply(svc("a", "1"));
        for (pod, node) in [("p1", "n1"), ("p2", "n2")] {
            let p = json!({"kind": "Pod", "metadata": {"name": pod}, "spec": {"nodeName": node}});
            state.apply(Object::from_value(p, true).unwrap().unwrap());
        }
        let names: Vec<&str> = state.desired_for("n1").map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["a", "p1"]);
    }
}
