//! The attribute map of a session: name → postcard-encoded value.
//!
//! A vector sorted by name rather than a `BTreeMap`: sessions hold a handful
//! of attributes, and a B-tree allocates a whole node (eleven slots, ~450
//! bytes) even for one — per session, that is most of the fixed memory cost.
//! It serializes exactly like a map, so stored sessions read the same.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// A value as an attribute holds it (postcard).
pub(crate) fn encode_value<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Box<[u8]>, Error> {
    postcard::to_allocvec(value)
        .map(Vec::into_boxed_slice)
        .map_err(|source| Error::Encode {
            key: key.to_owned(),
            source,
        })
}

/// An attribute's value as a `T`.
pub(crate) fn decode_value<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, Error> {
    postcard::from_bytes(bytes).map_err(|source| Error::Decode {
        key: key.to_owned(),
        source,
    })
}

/// Attribute name → encoded value, sorted by name, names unique.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Attributes(Vec<(String, Box<[u8]>)>);

impl Attributes {
    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(name, _)| name.as_str().cmp(key))
    }

    pub(crate) fn get(&self, key: &str) -> Option<&[u8]> {
        self.position(key).ok().map(|i| &*self.0[i].1)
    }

    /// Sets `key`; returns the previous value.
    pub(crate) fn insert(&mut self, key: String, value: Box<[u8]>) -> Option<Box<[u8]>> {
        match self.position(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &str) -> Option<Box<[u8]>> {
        self.position(key).ok().map(|i| self.0.remove(i).1)
    }

    pub(crate) fn clear(&mut self) {
        self.0 = Vec::new();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Entries in name order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(k, v)| (k.as_str(), &**v))
    }

    /// Names in order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
}

impl IntoIterator for Attributes {
    type Item = (String, Box<[u8]>);
    type IntoIter = std::vec::IntoIter<(String, Box<[u8]>)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl FromIterator<(String, Box<[u8]>)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (String, Box<[u8]>)>>(entries: I) -> Self {
        let mut attributes = Self::default();
        for (key, value) in entries {
            attributes.insert(key, value);
        }
        attributes
    }
}

impl Serialize for Attributes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AttributesVisitor;

        impl<'de> Visitor<'de> for AttributesVisitor {
            type Value = Attributes;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of attribute names to bytes")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Attributes, A::Error> {
                // The claimed length comes from stored bytes: cap the reservation.
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = map.next_entry::<String, Box<[u8]>>()? {
                    entries.push(entry);
                }
                // Sorted and unique whatever the input (a later duplicate wins, as in a map).
                entries.reverse();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                entries.dedup_by(|later, earlier| later.0 == earlier.0);
                Ok(Attributes(entries))
            }
        }

        deserializer.deserialize_map(AttributesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn bytes(s: &str) -> Box<[u8]> {
        s.as_bytes().into()
    }

    #[test]
    fn behaves_like_a_sorted_map() {
        let mut a = Attributes::default();
        assert_eq!(a.insert("b".into(), bytes("2")), None);
        assert_eq!(a.insert("a".into(), bytes("1")), None);
        assert_eq!(a.insert("b".into(), bytes("3")).as_deref(), Some(&b"2"[..]));
        assert_eq!(a.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(a.get("b"), Some(&b"3"[..]));
        assert_eq!(a.remove("a").as_deref(), Some(&b"1"[..]));
        assert_eq!(a.remove("a"), None);
        assert_eq!(a.len(), 1);
        a.clear();
        assert!(a.is_empty());
    }

    #[test]
    fn serializes_byte_for_byte_like_a_btreemap() {
        let entries = [("zeta", "1"), ("alpha", "22"), ("mid", "")];
        let map: BTreeMap<String, Box<[u8]>> = entries.iter().map(|(k, v)| ((*k).to_owned(), bytes(v))).collect();
        let attributes: Attributes = entries.iter().map(|(k, v)| ((*k).to_owned(), bytes(v))).collect();
        let from_map = postcard::to_allocvec(&map).unwrap();
        assert_eq!(postcard::to_allocvec(&attributes).unwrap(), from_map);
        assert_eq!(postcard::from_bytes::<Attributes>(&from_map).unwrap(), attributes);
    }

    #[test]
    fn unsorted_or_duplicated_input_is_normalized() {
        let raw: Vec<(String, Box<[u8]>)> = vec![
            ("b".into(), bytes("1")),
            ("a".into(), bytes("2")),
            ("b".into(), bytes("3")),
        ];
        // A postcard map is its length followed by the entries, like a sequence of pairs.
        let encoded = postcard::to_allocvec(&raw).unwrap();
        let decoded: Attributes = postcard::from_bytes(&encoded).unwrap();
        assert_eq!(decoded.iter().collect::<Vec<_>>(), [("a", &b"2"[..]), ("b", &b"3"[..])]);
    }
}
