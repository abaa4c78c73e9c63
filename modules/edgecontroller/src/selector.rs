//! Kubernetes label and field selectors, as list options carry them (`labelSelector`,
//! `fieldSelector`), so an edge's list is answered with exactly what an API server would
//! give. A selector this cannot read is an error, never "everything": the caller refuses
//! the list and a KubeEdge edge then answers its client from its own store.

use serde_json::Value;

/// One label requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelOp {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

/// A parsed label selector; empty selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Vec<(String, LabelOp)>);

/// A parsed field selector; empty selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields(Vec<(FieldPath, bool, String)>);

/// The fields an API server lets every kind edgecontroller serves be selected by (and
/// Pods by their node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldPath {
    Name,
    Namespace,
    NodeName,
}

impl Labels {
    /// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    pub fn parse(text: &str) -> Result<Labels, String> {
        let mut reqs = Vec::new();
        for part in split_top(text)? {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(requirement(part)?);
        }
        Ok(Labels(reqs))
    }

    /// True when `object`'s labels satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.0.iter().all(|(key, op)| {
            let value = labels.get(key).and_then(Value::as_str);
            match op {
                LabelOp::In(vs) => value.is_some_and(|v| vs.iter().any(|w| w == v)),
                LabelOp::NotIn(vs) => value.is_none_or(|v| vs.iter().all(|w| w != v)),
                LabelOp::Exists => value.is_some(),
                LabelOp::NotExists => value.is_none(),
            }
        })
    }
}

impl Fields {
    /// Parses `metadata.name=x,spec.nodeName!=y`; only the fields this serves.
    pub fn parse(text: &str) -> Result<Fields, String> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("field selector term {part:?} has no operator"));
            };
            let path = match field.trim() {
                "metadata.name" => FieldPath::Name,
                "metadata.namespace" => FieldPath::Namespace,
                "spec.nodeName" => FieldPath::NodeName,
                other => return Err(format!("field {other:?} is not a supported field selector")),
            };
            terms.push((path, equal, value.trim().to_owned()));
        }
        Ok(Fields(terms))
    }

    /// True when `object` satisfies every term.
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, equal, want)| {
            let got = match path {
                FieldPath::Name => &object["metadata"]["name"],
                FieldPath::Namespace => &object["metadata"]["namespace"],
                FieldPath::NodeName => &object["spec"]["nodeName"],
            };
            (got.as_str().unwrap_or("") == want) == *equal
        })
    }

    /// The node a `spec.nodeName=<node>` term names, if any.
    pub fn node(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(p, eq, _)| *p == FieldPath::NodeName && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

/// Splits at commas outside parentheses.
fn split_top(text: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!("unbalanced parentheses in {text:?}"));
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced parentheses in {text:?}"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn requirement(part: &str) -> Result<(String, LabelOp), String> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok((label_key(key)?, LabelOp::NotExists));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok((label_key(k)?, LabelOp::NotIn(vec![label_value(v)?])));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok((label_key(k)?, LabelOp::In(vec![label_value(v)?])));
    }
    let mut words = part.splitn(2, char::is_whitespace);
    let key = label_key(words.next().unwrap_or_default())?;
    let Some(rest) = words.next().map(str::trim) else {
        return Ok((key, LabelOp::Exists));
    };
    let (negated, list) = if let Some(l) = rest.strip_prefix("notin") {
        (true, l)
    } else if let Some(l) = rest.strip_prefix("in") {
        (false, l)
    } else {
        return Err(format!("label requirement {part:?} is not understood"));
    };
    let inner = list
        .trim()
        .strip_prefix('(')
        .and_then(|l| l.strip_suffix(')'))
        .ok_or_else(|| format!("label requirement {part:?}: values must be in parentheses"))?;
    let values = inner
        .split(',')
        .map(label_value)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        key,
        if negated {
            LabelOp::NotIn(values)
        } else {
            LabelOp::In(values)
        },
    ))
}

fn label_key(key: &str) -> Result<String, String> {
    let key = key.trim();
    let ok = !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    ok.then(|| key.to_owned())
        .ok_or_else(|| format!("{key:?} is not a label key"))
}

fn label_value(value: &str) -> Result<String, String> {
    let value = value.trim();
    let ok = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    ok.then(|| value.to_owned())
        .ok_or_else(|| format!("{value:?} is not a label value"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels},
               "spec": {"nodeName": "edge-1"}})
    }

    #[test]
    fn label_selectors_select_as_an_api_server_does() {
        let web = obj(json!({"app": "web", "tier": "front"}));
        let headless = obj(json!({"service.kubernetes.io/headless": ""}));
        let cases = [
            ("", true, true),
            ("app=web", true, false),
            ("app==web,tier=front", true, false),
            ("app!=web", false, true),
            ("app in (web, db)", true, false),
            ("app notin (web)", false, true),
            ("tier", true, false),
            // What kube-proxy lists Services with.
            (
                "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name",
                true,
                false,
            ),
        ];
        for (text, want_web, want_headless) in cases {
            let sel = Labels::parse(text).unwrap();
            assert_eq!(sel.matches(&web), want_web, "{text} on web");
            assert_eq!(sel.matches(&headless), want_headless, "{text} on headless");
        }
    }

    #[test]
    fn what_cannot_be_read_is_an_error_not_everything() {
        for bad in ["app in web", "app in (web", "a b c", "app=(x)", "=x"] {
            assert!(Labels::parse(bad).is_err(), "{bad}");
        }
        assert!(Fields::parse("status.phase=Running").is_err());
        assert!(Fields::parse("metadata.name").is_err());
    }

    #[test]
    fn field_selectors_cover_name_namespace_and_node() {
        let o = obj(json!({}));
        assert!(
            Fields::parse("metadata.name=a,metadata.namespace==ns")
                .unwrap()
                .matches(&o)
        );
        assert!(!Fields::parse("spec.nodeName!=edge-1").unwrap().matches(&o));
        let f = Fields::parse("spec.nodeName=edge-1").unwrap();
        assert!(f.matches(&o));
        assert_eq!(f.node(), Some("edge-1"));
    }
}
