//! A compact text form for the analysis state's number vectors (the log-likelihood grids):
//! base64 of each number's 8 little-endian IEEE 754 bytes. Exact, about half the size of a
//! JSON array, and one line in `kubectl describe` instead of one line per number. The array
//! form of older statuses is still read.

use base64::Engine;
use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub fn encode(values: &[f64]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    B64.encode(bytes)
}

pub fn decode(text: &str) -> Result<Vec<f64>, String> {
    let bytes = B64.decode(text).map_err(|e| format!("not base64: {e}"))?;
    if bytes.len() % 8 != 0 {
        return Err(format!(
            "{} bytes is not a whole number of 8-byte numbers",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")))
        .collect())
}

/// `#[serde(with = "crate::compact::f64s")]` for a `Vec<f64>`.
pub mod f64s {
    use super::*;

    pub fn serialize<S: Serializer>(values: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(values))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            List(Vec<f64>),
        }
        match Form::deserialize(d)? {
            Form::Text(t) => decode(&t).map_err(D::Error::custom),
            Form::List(v) => Ok(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Holder {
        #[serde(with = "super::f64s")]
        v: Vec<f64>,
    }

    #[test]
    fn numbers_round_trip_exactly_and_the_array_form_is_still_read() {
        let h = Holder {
            v: vec![0.0, -1.5, 1e-300, -123456.789, f64::MIN_POSITIVE],
        };
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Holder>(&text).unwrap(), h);
        let old = r#"{"v": [0.0, -1.5, 1e-300, -123456.789, 2.2250738585072014e-308]}"#;
        assert_eq!(serde_json::from_str::<Holder>(old).unwrap(), h);
        // A likelihood grid as the analysis writes it: about half the size of the array.
        let grid = Holder {
            v: (1..=27)
                .map(|i| -f64::from(i) * 1.234_567_890_123_456_7)
                .collect(),
        };
        let (compact, array) = (
            serde_json::to_string(&grid).unwrap().len(),
            serde_json::to_string(&grid.v).unwrap().len(),
        );
        assert!(compact * 10 < array * 6, "{compact} vs {array}");
        let bad = serde_json::from_str::<Holder>(r#"{"v": "AAAA"}"#).unwrap_err();
        assert!(bad.to_string().contains("8-byte"), "{bad}");
    }
}
