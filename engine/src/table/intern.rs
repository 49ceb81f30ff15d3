//! Bounded string interning: apps, label keys and label string values become
//! small integers so the hot path compares integers, never strings.

use std::collections::HashMap;

use crate::error::EngineError;

/// Maps strings to dense ids `0..len`, up to a fixed bound.
///
/// Ids are never reused: an interned string stays until the table is dropped,
/// so compiled queries holding ids stay valid. The bound is what keeps this
/// from growing forever; reaching it is an error, never an eviction.
#[derive(Debug)]
pub(crate) struct Interner {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
    limit: usize,
    what: &'static str,
    hint: &'static str,
}

impl Interner {
    pub(crate) fn new(limit: usize, what: &'static str, hint: &'static str) -> Interner {
        Interner {
            ids: HashMap::new(),
            names: Vec::new(),
            limit,
            what,
            hint,
        }
    }

    /// The id of `s`, if interned.
    pub(crate) fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    /// The id of `s`, interning it if new.
    pub(crate) fn intern(&mut self, s: &str) -> Result<u32, EngineError> {
        if let Some(id) = self.ids.get(s) {
            return Ok(*id);
        }
        if self.names.len() >= self.limit {
            return Err(EngineError::LimitReached {
                what: self.what,
                limit: self.limit,
                hint: self.hint,
            });
        }
        let id = self.names.len() as u32;
        self.names.push(s.into());
        self.ids.insert(s.into(), id);
        Ok(id)
    }

    /// The string of an id issued by this interner.
    pub(crate) fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("?", |s| s)
    }

    /// How many strings are interned.
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_bounded() {
        let mut i = Interner::new(2, "things", "hint");
        assert_eq!(i.intern("a"), Ok(0));
        assert_eq!(i.intern("b"), Ok(1));
        assert_eq!(i.intern("a"), Ok(0));
        assert_eq!(i.get("b"), Some(1));
        assert_eq!(i.name(1), "b");
        assert!(matches!(
            i.intern("c"),
            Err(EngineError::LimitReached { limit: 2, .. })
        ));
        assert_eq!(i.len(), 2);
    }
}
