//! Typed decoding of a JSON value in which a struct is only ever read from an
//! object.
//!
//! serde's derived `Deserialize` for a struct also accepts a sequence and
//! fills the fields by position, and `serde_json::Value`'s deserializer
//! offers arrays that way. So `"container_settings": [true]` would decode as
//! `{"allow_ip_forwarding": true}` and silently enable forwarding in the pod.
//! A configuration has no positional form: [`from_value`] walks the value
//! itself and refuses an array wherever a struct (or a map) is expected, at
//! every depth, so no section of any config decoded through it can be read
//! from an array, however deep the section sits.
//!
//! One limit: `#[serde(flatten)]` and `#[serde(untagged)]` buffer their
//! input into serde's private content type and decode it there, out of this
//! deserializer's reach, so a struct under either can still be filled by
//! position. The config types of this workspace use neither around a struct
//! (the `calico` plugin decodes its datastore keys separately instead of
//! flattening them); keep it so.

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde_json::{Map, Value};

/// Decode `T` from `value`, refusing arrays where `T` expects a struct or map.
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, serde_json::Error> {
    T::deserialize(Strict(value))
}

/// A `&Value` as a deserializer that hands out its children wrapped again.
#[derive(Clone, Copy)]
struct Strict<'a>(&'a Value);

fn not_an_object(what: &str, v: &Value) -> serde_json::Error {
    let kind = match v {
        Value::Array(_) => "an array",
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Object(_) => "an object",
    };
    de::Error::custom(format!("expected {what} as a JSON object, found {kind}"))
}

impl<'de> Deserializer<'de> for Strict<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(a) => visitor.visit_seq(Seq { iter: a.iter() }),
            Value::Object(m) => visitor.visit_map(Entries::new(m)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(m) => visitor.visit_map(Entries::new(m)),
            other => Err(not_an_object(name, other)),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(m) => visitor.visit_map(Entries::new(m)),
            other => Err(not_an_object("a map", other)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            // A unit variant by name: the common case in configs.
            Value::String(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            // Externally tagged variants with content keep serde_json's own
            // rules (their content is not a config section of ours).
            other => other.deserialize_enum(name, variants, visitor),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct identifier
    }
}

struct Seq<'a> {
    iter: std::slice::Iter<'a, Value>,
}

impl<'de> SeqAccess<'de> for Seq<'de> {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.iter.next().map(|v| seed.deserialize(Strict(v))).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct Entries<'a> {
    iter: serde_json::map::Iter<'a>,
    value: Option<&'a Value>,
}

impl<'a> Entries<'a> {
    fn new(m: &'a Map<String, Value>) -> Self {
        Entries { iter: m.iter(), value: None }
    }
}

impl<'de> MapAccess<'de> for Entries<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Self::Error> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                let key: de::value::BorrowedStrDeserializer<'de, serde_json::Error> =
                    de::value::BorrowedStrDeserializer::new(k);
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Self::Error> {
        match self.value.take() {
            Some(v) => seed.deserialize(Strict(v)),
            None => Err(de::Error::custom("a map value was asked for before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    struct Inner {
        #[serde(default)]
        on: bool,
        #[serde(default)]
        n: Option<u32>,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    struct Outer {
        #[serde(default)]
        inner: Inner,
        #[serde(default)]
        list: Vec<Inner>,
        #[serde(default)]
        map: BTreeMap<String, u8>,
        #[serde(flatten)]
        rest: Flat,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    struct Flat {
        #[serde(default)]
        name: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(untagged)]
    enum Flag {
        B(bool),
        S(String),
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        Full,
        None,
    }

    #[test]
    fn objects_decode_as_serde_json_would() {
        let v = json!({"inner":{"on":true,"n":3},"list":[{"on":true}],"map":{"a":1},"name":"x","other":[1]});
        let strict: Outer = from_value(&v).unwrap();
        let plain: Outer = serde_json::from_value(v).unwrap();
        assert_eq!(strict, plain);
        assert_eq!(from_value::<Flag>(&json!(true)).unwrap(), Flag::B(true));
        assert_eq!(from_value::<Flag>(&json!("yes")).unwrap(), Flag::S("yes".into()));
        assert_eq!(from_value::<Mode>(&json!("full")).unwrap(), Mode::Full);
        assert!(from_value::<Mode>(&json!("half")).is_err());
        assert_eq!(from_value::<Option<Mode>>(&json!(null)).unwrap(), None);
        assert_eq!(from_value::<Option<Mode>>(&json!("none")).unwrap(), Some(Mode::None));
        assert!(from_value::<u8>(&json!(300)).is_err());
        assert!(from_value::<u32>(&json!(-1)).is_err());
        assert_eq!(from_value::<i64>(&json!(-1)).unwrap(), -1);
        assert_eq!(from_value::<f64>(&json!(1.5)).unwrap(), 1.5);
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    struct Settings {
        #[serde(default)]
        inner: Inner,
        #[serde(default)]
        list: Vec<Inner>,
    }

    #[test]
    fn arrays_never_stand_for_structs_at_any_depth() {
        // serde_json itself reads all of these by position; we refuse them.
        for v in [
            json!([{"on":true}, []]),
            json!({"inner":[true]}),
            json!({"inner":[true, 7]}),
            json!({"list":[[true]]}),
            json!({"list":[{"on":false}, [true]]}),
        ] {
            assert!(serde_json::from_value::<Settings>(v.clone()).is_ok(), "serde_json accepts {v}");
            let e = from_value::<Settings>(&v).unwrap_err();
            assert!(e.to_string().contains("found an array"), "{v}: {e}");
        }
        let e = from_value::<Outer>(&json!({"map":[["a",1]]})).unwrap_err();
        assert!(e.to_string().contains("found an array"), "{e}");
        assert!(from_value::<Outer>(&json!([{}, [], {}])).is_err());
        assert!(from_value::<Outer>(&json!(7)).is_err());
        assert!(from_value::<Outer>(&json!({"inner":null})).is_err());
    }
}
