//! What taskpulse reads from inside `outputData`, without failing on what it cannot take.

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// What taskpulse reads from `outputData`: `progressPercent`, `progressMessage`, and `progress`
/// when it is a number (the Conductor SDK's examples use it). Everything else in the map is
/// skipped without being built, and a non-object `outputData` is ignored. A progress field of
/// the wrong type fails nothing here: it is noted in `invalid`, and the validation decides
/// (a request is rejected naming it, an engine's row loses the field).
#[derive(Debug, Default, PartialEq)]
pub struct OutputProgress {
    pub progress_percent: Option<f64>,
    pub progress: Option<f64>,
    pub progress_message: Option<String>,
    /// Progress fields of the wrong type: (field, what it must be, what it was).
    pub invalid: Vec<(&'static str, &'static str, &'static str)>,
}

impl<'de> Deserialize<'de> for OutputProgress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OutputProgress;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = OutputProgress::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "progressPercent" => match map.next_value::<Loose>()? {
                            Loose::Number(n) => out.progress_percent = Some(n),
                            Loose::Null => {}
                            other => out.wrong("outputData.progressPercent", "a number", &other),
                        },
                        "progressMessage" => match map.next_value::<Loose>()? {
                            Loose::Text(t) => out.progress_message = Some(t),
                            Loose::Null => {}
                            other => out.wrong("outputData.progressMessage", "a string", &other),
                        },
                        "progress" => {
                            if let Loose::Number(n) = map.next_value::<Loose>()? {
                                out.progress = Some(n);
                            }
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
            // Anything but an object: nothing to read, nothing to reject.
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(OutputProgress::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(OutputProgress::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(OutputProgress::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(OutputProgress::default())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(OutputProgress::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(OutputProgress::default())
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(OutputProgress::default())
            }
        }
        d.deserialize_any(V)
    }
}

impl OutputProgress {
    fn wrong(&mut self, field: &'static str, wanted: &'static str, got: &Loose) {
        self.invalid.push((field, wanted, got.kind()));
    }
}

/// A JSON value where a number or a string is wanted, read without failing on the wrong type
/// (whatever else it is, it is skipped without being built).
enum Loose {
    Number(f64),
    Text(String),
    Null,
    Other(&'static str),
}

impl Loose {
    fn kind(&self) -> &'static str {
        match self {
            Loose::Number(_) => "a number",
            Loose::Text(_) => "a string",
            Loose::Null => "null",
            Loose::Other(k) => k,
        }
    }
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Loose;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Loose::Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Loose::Number(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Loose::Number(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Loose::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Loose::Text(v))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Loose::Other("a boolean"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Loose::Null)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Loose::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Loose::Other("an object"))
            }
        }
        d.deserialize_any(V)
    }
}
