//! Label selectors: validation as the API server does it, and matching.
//!
//! Design note: a `metav1.LabelSelector` is validated once (keys are qualified names,
//! values are label values, operators are one of the four set-based ones with the
//! right number of values) and turned into a [`Selector`] that matches a label map
//! without further checks. Validation returns [`FieldError`]s in the API server's
//! style (`field: Invalid value: "x": reason`), so a message names the field.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// One invalid field, named by its path (`spec.ingress[0].ports[1].endPort`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// `field: Invalid value: <value>: <reason>`.
    pub fn invalid(field: impl Into<String>, value: impl fmt::Display, reason: &str) -> Self {
        FieldError {
            field: field.into(),
            message: format!("Invalid value: {value}: {reason}"),
        }
    }

    /// `field: Required value: <reason>`.
    pub fn required(field: impl Into<String>, reason: &str) -> Self {
        FieldError {
            field: field.into(),
            message: format!("Required value: {reason}"),
        }
    }

    /// `field: Forbidden: <reason>`.
    pub fn forbidden(field: impl Into<String>, reason: &str) -> Self {
        FieldError {
            field: field.into(),
            message: format!("Forbidden: {reason}"),
        }
    }

    /// `field: Unsupported value: <value>: supported values: <list>`.
    pub fn unsupported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        FieldError {
            field: field.into(),
            message: format!(
                "Unsupported value: \"{value}\": supported values: {}",
                list.join(", ")
            ),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// One set-based requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// The label is present with one of the values.
    In(String, BTreeSet<String>),
    /// The label is absent or has none of the values.
    NotIn(String, BTreeSet<String>),
    /// The label is present.
    Exists(String),
    /// The label is absent.
    DoesNotExist(String),
}

/// A validated label selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

/// A label value or the name part of a key: ≤ 63 characters, alphanumerics with
/// `-`, `_`, `.` inside.
fn valid_name_part(s: &str, allow_empty: bool) -> bool {
    if s.is_empty() {
        return allow_empty;
    }
    s.len() <= 63
        && s.chars().all(is_name_char)
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A DNS-1123 subdomain (the optional prefix of a label key).
fn valid_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// Validates a label key (a qualified name, optionally `prefix/name`).
pub fn validate_label_key(key: &str, field: &str) -> Result<(), FieldError> {
    let ok = match key.split_once('/') {
        Some((prefix, name)) => valid_dns_subdomain(prefix) && valid_name_part(name, false),
        None => valid_name_part(key, false),
    };
    if ok {
        Ok(())
    } else {
        Err(FieldError::invalid(
            field,
            format!("\"{key}\""),
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (max 63 characters), with an optional DNS subdomain prefix and '/'",
        ))
    }
}

/// Validates a label value.
pub fn validate_label_value(value: &str, field: &str) -> Result<(), FieldError> {
    if valid_name_part(value, true) {
        Ok(())
    } else {
        Err(FieldError::invalid(
            field,
            format!("\"{value}\""),
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (max 63 characters)",
        ))
    }
}

impl Selector {
    /// Validates `sel` (found at `field`) and compiles it; every problem is reported.
    pub fn parse(sel: &LabelSelector, field: &str) -> Result<Selector, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            let f = format!("{field}.matchLabels");
            if let Err(e) = validate_label_key(k, &f) {
                errors.push(e);
            }
            if let Err(e) = validate_label_value(v, &format!("{f}[{k}]")) {
                errors.push(e);
            }
            requirements.push(Requirement::In(k.clone(), BTreeSet::from([v.clone()])));
        }
        for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
            let f = format!("{field}.matchExpressions[{i}]");
            if let Err(e) = validate_label_key(&expr.key, &format!("{f}.key")) {
                errors.push(e);
            }
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            let has_values = expr.values.as_ref().is_some_and(|v| !v.is_empty());
            for (j, v) in expr.values.iter().flatten().enumerate() {
                if let Err(e) = validate_label_value(v, &format!("{f}.values[{j}]")) {
                    errors.push(e);
                }
            }
            let key = expr.key.clone();
            match expr.operator.as_str() {
                "In" | "NotIn" if !has_values => errors.push(FieldError::required(
                    format!("{f}.values"),
                    "must be specified when `operator` is 'In' or 'NotIn'",
                )),
                "Exists" | "DoesNotExist" if has_values => errors.push(FieldError::forbidden(
                    format!("{f}.values"),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                )),
                "In" => requirements.push(Requirement::In(key, values)),
                "NotIn" => requirements.push(Requirement::NotIn(key, values)),
                "Exists" => requirements.push(Requirement::Exists(key)),
                "DoesNotExist" => requirements.push(Requirement::DoesNotExist(key)),
                other => errors.push(FieldError::unsupported(
                    format!("{f}.operator"),
                    other,
                    &["In", "NotIn", "Exists", "DoesNotExist"],
                )),
            }
        }
        if errors.is_empty() {
            Ok(Selector { requirements })
        } else {
            Err(errors)
        }
    }

    /// The selector that matches everything.
    pub fn everything() -> Selector {
        Selector::default()
    }

    /// True for the selector that matches everything (`{}`).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Its requirements (all must hold).
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// True when every requirement holds for `labels`.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn sel(exprs: Vec<LabelSelectorRequirement>, ml: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(exprs),
            match_labels: Some(labels(ml).into_iter().collect()),
        }
    }

    #[test]
    fn operators_match_like_kubernetes() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let db = labels(&[("app", "db")]);
        let none = labels(&[]);
        let check = |e: LabelSelectorRequirement, want: [bool; 3]| {
            let s = Selector::parse(&sel(vec![e.clone()], &[]), "spec.podSelector").unwrap();
            assert_eq!(
                [s.matches(&web), s.matches(&db), s.matches(&none)],
                want,
                "{e:?}"
            );
        };
        check(expr("app", "In", Some(&["web", "x"])), [true, false, false]);
        check(expr("app", "NotIn", Some(&["web"])), [false, true, true]);
        check(expr("tier", "Exists", None), [true, false, false]);
        check(expr("tier", "DoesNotExist", Some(&[])), [false, true, true]);
        let both = Selector::parse(
            &sel(vec![expr("tier", "Exists", None)], &[("app", "web")]),
            "s",
        )
        .unwrap();
        assert!(both.matches(&web) && !both.matches(&db));
        let empty = Selector::parse(&LabelSelector::default(), "s").unwrap();
        assert!(empty.is_empty() && empty.matches(&none));
    }

    #[test]
    fn invalid_selectors_name_the_field() {
        let err = |e: LabelSelectorRequirement| {
            Selector::parse(&sel(vec![e], &[]), "spec.podSelector").unwrap_err()[0].to_string()
        };
        assert_eq!(
            err(expr("app", "in", Some(&["a"]))),
            "spec.podSelector.matchExpressions[0].operator: Unsupported value: \"in\": supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""
        );
        assert_eq!(
            err(expr("app", "In", Some(&[]))),
            "spec.podSelector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
        );
        assert_eq!(
            err(expr("app", "NotIn", None)),
            "spec.podSelector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
        );
        assert!(err(expr("app", "Exists", Some(&["x"]))).starts_with(
            "spec.podSelector.matchExpressions[0].values: Forbidden: may not be specified"
        ));
        assert!(err(expr("bad key!", "Exists", None))
            .starts_with("spec.podSelector.matchExpressions[0].key: Invalid value: \"bad key!\""));
        let bad_value = Selector::parse(&sel(vec![], &[("app", "-x")]), "s").unwrap_err();
        assert!(bad_value[0]
            .to_string()
            .starts_with("s.matchLabels[app]: Invalid value: \"-x\""));
    }

    #[test]
    fn label_keys() {
        for ok in ["app", "kubernetes.io/metadata.name", "a.b-c_d", "x/y"] {
            assert!(validate_label_key(ok, "f").is_ok(), "{ok}");
        }
        for bad in ["", "/x", "Bad_Prefix/x", "x/", "-a", &"a".repeat(64)] {
            assert!(validate_label_key(bad, "f").is_err(), "{bad}");
        }
    }
}
