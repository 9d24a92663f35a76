//! A small JSON tree for spool files that keeps what `serde_json::Value` loses: the exact text
//! of every number (money never passes through a binary float) and every duplicated key (which
//! `serde_json` would silently resolve to the last one).

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// A JSON value with numbers kept as their source text and objects as ordered key lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum J {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, exactly as written (`2`, `118.50`, `5e-07`).
    Num(String),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<J>),
    /// An object, keys in file order, duplicates kept.
    Obj(Vec<(String, J)>),
}

impl J {
    /// Parses JSON text. Fails with serde_json's message (line and column) on invalid JSON.
    pub fn parse(text: &str) -> Result<J, serde_json::Error> {
        let raw: &RawValue = serde_json::from_str(text)?;
        J::from_raw(raw)
    }

    fn from_raw(raw: &RawValue) -> Result<J, serde_json::Error> {
        let t = raw.get().trim_start();
        match t.as_bytes().first() {
            Some(b'{') => {
                let RawObj(pairs) = serde_json::from_str(t)?;
                let mut out = Vec::with_capacity(pairs.len());
                for (k, v) in pairs {
                    out.push((k, J::from_raw(v)?));
                }
                Ok(J::Obj(out))
            }
            Some(b'[') => {
                let items: Vec<&RawValue> = serde_json::from_str(t)?;
                items
                    .into_iter()
                    .map(J::from_raw)
                    .collect::<Result<_, _>>()
                    .map(J::Arr)
            }
            Some(b'"') => Ok(J::Str(serde_json::from_str(t)?)),
            Some(b't') | Some(b'f') => Ok(J::Bool(serde_json::from_str(t)?)),
            Some(b'n') => Ok(J::Null),
            _ => Ok(J::Num(t.trim_end().to_string())),
        }
    }

    /// The JSON type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            J::Null => "null",
            J::Bool(_) => "a boolean",
            J::Num(_) => "a number",
            J::Str(_) => "a string",
            J::Arr(_) => "an array",
            J::Obj(_) => "an object",
        }
    }

    /// The object's pairs, if this is an object.
    pub fn as_obj(&self) -> Option<&[(String, J)]> {
        match self {
            J::Obj(p) => Some(p),
            _ => None,
        }
    }
}

impl fmt::Display for J {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            J::Null => f.write_str("null"),
            J::Bool(b) => write!(f, "{b}"),
            J::Num(n) => f.write_str(n),
            J::Str(s) => write!(f, "{}", serde_json::Value::String(s.clone())),
            J::Arr(_) => f.write_str("[…]"),
            J::Obj(_) => f.write_str("{…}"),
        }
    }
}

/// One object's members as raw JSON, duplicates kept.
struct RawObj<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for RawObj<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawObj<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    let v: &'de RawValue = map.next_value()?;
                    out.push((k, v));
                }
                Ok(RawObj(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
                Err(de::Error::custom("expected an object"))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The members of an object looked up case-insensitively, as Go readers do. Duplicates (also
/// case variants of one key) are reported by [`Fields::duplicates`] rather than resolved.
#[derive(Debug)]
pub struct Fields<'a> {
    pairs: &'a [(String, J)],
}

impl<'a> Fields<'a> {
    /// Wraps an object's pairs.
    pub fn new(pairs: &'a [(String, J)]) -> Fields<'a> {
        Fields { pairs }
    }

    /// Keys that occur more than once, compared case-insensitively, each named once.
    pub fn duplicates(&self) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        let mut dups: Vec<String> = Vec::new();
        for (k, _) in self.pairs {
            let low = k.to_ascii_lowercase();
            if seen.contains(&low) {
                if !dups.contains(&low) {
                    dups.push(low);
                }
            } else {
                seen.push(low);
            }
        }
        dups
    }

    /// The value of `key` (case-insensitive); the first one if duplicated.
    pub fn get(&self, key: &str) -> Option<&'a J> {
        self.pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    }

    /// Whether a key is present (even as `null`).
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Keys that are not in `known` (lower-case), in file order.
    pub fn unknown(&self, known: &[&str]) -> Vec<&'a str> {
        self.pairs
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !known.iter().any(|n| n.eq_ignore_ascii_case(k)))
            .collect()
    }

    /// A nested object's fields, if `key` holds an object.
    pub fn object(&self, key: &str) -> Option<Fields<'a>> {
        self.get(key).and_then(J::as_obj).map(Fields::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_text_and_duplicates_survive() {
        let j =
            J::parse(r#"{"a": 5e-07, "A": 2, "b": [1.10, "x", null, true], "c": {"d": 118.50}}"#)
                .unwrap();
        let pairs = j.as_obj().unwrap();
        let f = Fields::new(pairs);
        assert_eq!(f.get("a"), Some(&J::Num("5e-07".into())));
        assert_eq!(f.duplicates(), vec!["a".to_string()]);
        assert_eq!(
            f.get("B"),
            Some(&J::Arr(vec![
                J::Num("1.10".into()),
                J::Str("x".into()),
                J::Null,
                J::Bool(true)
            ]))
        );
        assert_eq!(
            f.object("c").unwrap().get("d"),
            Some(&J::Num("118.50".into()))
        );
        assert_eq!(f.unknown(&["a", "b"]), vec!["c"]);
    }

    #[test]
    fn invalid_json_is_an_error_and_scalars_parse() {
        assert!(J::parse("{\"a\": ").is_err());
        assert!(J::parse("").is_err());
        assert!(J::parse("{\"a\":1} x").is_err());
        assert_eq!(J::parse(" \"s\" ").unwrap(), J::Str("s".into()));
        assert_eq!(J::parse("[]").unwrap(), J::Arr(vec![]));
        assert_eq!(J::parse("-0.5").unwrap(), J::Num("-0.5".into()));
    }
}
