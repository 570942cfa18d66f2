//! Docker's `filters` query parameter: `{"name":{"web":true}}` (or the older
//! `{"name":["web"]}`), AND across keys, OR across values of one key.

use std::collections::BTreeMap;

use crate::error::ApiError;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filters(BTreeMap<String, Vec<String>>);

impl Filters {
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let Some(raw) = raw.filter(|r| !r.is_empty()) else {
            return Ok(Filters::default());
        };
        let value: serde_json::Value = serde_json::from_str(raw)
            .map_err(|e| ApiError::BadRequest(format!("invalid filters {raw}: {e}")))?;
        let mut out = BTreeMap::new();
        let object = value
            .as_object()
            .ok_or_else(|| ApiError::BadRequest(format!("invalid filters {raw}: not an object")))?;
        for (key, values) in object {
            // Docker decodes the values as a map of booleans (or, from old clients, a list
            // of strings): anything else is refused rather than half-read.
            let bad = || ApiError::BadRequest(format!("invalid filter '{key}': {values}"));
            let list: Vec<String> = match values {
                serde_json::Value::Object(m) => {
                    let mut list = Vec::new();
                    for (k, v) in m {
                        if v.as_bool().ok_or_else(bad)? {
                            list.push(k.clone());
                        }
                    }
                    list
                }
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
                    .collect::<Result<_, _>>()?,
                _ => return Err(bad()),
            };
            out.insert(key.clone(), list);
        }
        Ok(Filters(out))
    }

    /// Refuses a filter the endpoint does not know, as Docker does (`invalid filter 'x'`),
    /// rather than ignoring it and listing everything.
    pub fn accept(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(bad) => Err(ApiError::BadRequest(format!("invalid filter '{bad}'"))),
            None => Ok(()),
        }
    }

    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.0.get(key).map(Vec::as_slice).filter(|v| !v.is_empty())
    }

    /// True when `key` is not filtered, or when any of its values satisfies `test`.
    pub fn matches(&self, key: &str, test: impl Fn(&str) -> bool) -> bool {
        match self.get(key) {
            None => true,
            Some(values) => values.iter().any(|v| test(v)),
        }
    }

    /// Label filters: `key` or `key=value`, all of which must hold.
    pub fn labels_match(
        &self,
        key: &str,
        labels: Option<&std::collections::HashMap<String, String>>,
    ) -> bool {
        let Some(wanted) = self.get(key) else {
            return true;
        };
        wanted.iter().all(|w| {
            let (k, v) = match w.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (w.as_str(), None),
            };
            match labels.and_then(|l| l.get(k)) {
                Some(have) => v.is_none_or(|v| v == have),
                None => false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_encodings_parse() {
        let f = Filters::parse(Some(r#"{"name":{"web":true},"role":["manager"]}"#)).unwrap();
        assert_eq!(f.get("name"), Some(&["web".to_string()][..]));
        assert_eq!(f.get("role"), Some(&["manager".to_string()][..]));
        assert!(f.matches("id", |_| false));
        assert!(Filters::parse(Some("nope")).is_err());
    }

    #[test]
    fn malformed_and_unknown_filters_are_refused() {
        for raw in [
            r#"{"name":1}"#,
            r#"{"name":{"web":"yes"}}"#,
            r#"{"name":[1]}"#,
            "[]",
        ] {
            let e = Filters::parse(Some(raw)).unwrap_err();
            assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST, "{raw}");
        }
        let f = Filters::parse(Some(r#"{"name":{"web":true},"colour":{"red":true}}"#)).unwrap();
        assert_eq!(
            f.accept(&["name"]).unwrap_err().to_string(),
            "invalid filter 'colour'"
        );
        assert!(f.accept(&["name", "colour"]).is_ok());
        // `false` values are kept out, the key stays known.
        let f = Filters::parse(Some(r#"{"name":{"web":false}}"#)).unwrap();
        assert_eq!(f.get("name"), None);
        assert!(f.accept(&["id"]).is_err());
    }

    #[test]
    fn labels_need_all() {
        let f = Filters::parse(Some(r#"{"label":{"a=1":true,"b":true}}"#)).unwrap();
        let mut l = std::collections::HashMap::new();
        l.insert("a".to_string(), "1".to_string());
        assert!(!f.labels_match("label", Some(&l)));
        l.insert("b".to_string(), "x".to_string());
        assert!(f.labels_match("label", Some(&l)));
    }
}
