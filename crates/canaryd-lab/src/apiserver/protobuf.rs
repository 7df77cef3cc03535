//! The protobuf request bodies kubectl's typed clients send for `kubectl create namespace`
//! and `kubectl create secret`: the `k8s\0` envelope (`runtime.Unknown`) around a Namespace or
//! Secret, decoded to JSON by field number. Every other kind in protobuf is refused (the
//! caller answers 415). Pure: bytes in, JSON out.

use serde_json::{json, Map, Value};

use super::builtins::base64;

const MAGIC: &[u8] = b"k8s\0";

/// One field of a protobuf message: its number and its payload.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or("truncated varint")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

fn fields(bytes: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < bytes.len() {
        let tag = varint(bytes, &mut at)?;
        let field = match tag & 7 {
            0 => Field::Varint(varint(bytes, &mut at)?),
            1 => {
                at += 8;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(varint(bytes, &mut at)?).map_err(|e| e.to_string())?;
                let end = at
                    .checked_add(len)
                    .filter(|e| *e <= bytes.len())
                    .ok_or("truncated field")?;
                let payload = &bytes[at..end];
                at = end;
                Field::Bytes(payload)
            }
            5 => {
                at += 4;
                Field::Fixed
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        out.push((tag >> 3, field));
    }
    Ok(out)
}

fn text(bytes: &[u8]) -> Result<Value, String> {
    std::str::from_utf8(bytes)
        .map(|s| json!(s))
        .map_err(|e| e.to_string())
}

/// A `map<string, V>` entry (field 1 key, field 2 value).
fn map_entry(bytes: &[u8]) -> Result<(String, &[u8]), String> {
    let mut key = String::new();
    let mut value: &[u8] = &[];
    for (number, field) in fields(bytes)? {
        match (number, field) {
            (1, Field::Bytes(k)) => key = std::str::from_utf8(k).map_err(|e| e.to_string())?.into(),
            (2, Field::Bytes(v)) => value = v,
            _ => {}
        }
    }
    Ok((key, value))
}

fn push_string_entry(target: &mut Map<String, Value>, entry: &[u8]) -> Result<(), String> {
    let (key, value) = map_entry(entry)?;
    target.insert(key, text(value)?);
    Ok(())
}

/// `ObjectMeta`: the fields a client sets on create.
fn object_meta(bytes: &[u8]) -> Result<Value, String> {
    let mut meta = Map::new();
    let (mut labels, mut annotations, mut finalizers) = (Map::new(), Map::new(), Vec::new());
    for (number, field) in fields(bytes)? {
        match (number, field) {
            (1, Field::Bytes(v)) => {
                meta.insert("name".into(), text(v)?);
            }
            (2, Field::Bytes(v)) => {
                meta.insert("generateName".into(), text(v)?);
            }
            (3, Field::Bytes(v)) => {
                meta.insert("namespace".into(), text(v)?);
            }
            (11, Field::Bytes(v)) => push_string_entry(&mut labels, v)?,
            (12, Field::Bytes(v)) => push_string_entry(&mut annotations, v)?,
            (14, Field::Bytes(v)) => finalizers.push(text(v)?),
            _ => {}
        }
    }
    if !labels.is_empty() {
        meta.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        meta.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(meta))
}

fn namespace(bytes: &[u8]) -> Result<Value, String> {
    let mut object = json!({"apiVersion": "v1", "kind": "Namespace"});
    for (number, field) in fields(bytes)? {
        if let (1, Field::Bytes(v)) = (number, field) {
            object["metadata"] = object_meta(v)?;
        }
    }
    Ok(object)
}

fn secret(bytes: &[u8]) -> Result<Value, String> {
    let mut object = json!({"apiVersion": "v1", "kind": "Secret"});
    let (mut data, mut string_data) = (Map::new(), Map::new());
    for (number, field) in fields(bytes)? {
        match (number, field) {
            (1, Field::Bytes(v)) => object["metadata"] = object_meta(v)?,
            (2, Field::Bytes(v)) => {
                let (key, value) = map_entry(v)?;
                data.insert(key, json!(base64(value)));
            }
            (3, Field::Bytes(v)) => object["type"] = text(v)?,
            (4, Field::Bytes(v)) => push_string_entry(&mut string_data, v)?,
            (5, Field::Varint(v)) => object["immutable"] = json!(v != 0),
            _ => {}
        }
    }
    if !data.is_empty() {
        object["data"] = Value::Object(data);
    }
    if !string_data.is_empty() {
        object["stringData"] = Value::Object(string_data);
    }
    Ok(object)
}

/// Decodes a `application/vnd.kubernetes.protobuf` body of a Namespace or a Secret.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or("not a Kubernetes protobuf body (no k8s\\0 prefix)")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (number, field) in fields(envelope)? {
        match (number, field) {
            (1, Field::Bytes(type_meta)) => {
                for (n, f) in fields(type_meta)? {
                    match (n, f) {
                        (1, Field::Bytes(v)) => api_version = String::from_utf8_lossy(v).into(),
                        (2, Field::Bytes(v)) => kind = String::from_utf8_lossy(v).into(),
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(v)) => raw = v,
            _ => {}
        }
    }
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => namespace(raw),
        ("v1", "Secret") => secret(raw),
        _ => Err(format!("{api_version} {kind} in protobuf")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(number: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3) | 2, u8::try_from(payload.len()).unwrap()];
        out.extend_from_slice(payload);
        out
    }

    fn envelope(kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = [tagged(1, b"v1"), tagged(2, kind.as_bytes())].concat();
        [MAGIC.to_vec(), tagged(1, &type_meta), tagged(2, raw)].concat()
    }

    #[test]
    fn kubectl_create_namespace_decodes() {
        let label = [tagged(1, b"team"), tagged(2, b"canary")].concat();
        let meta = [tagged(1, b"stage"), tagged(11, &label)].concat();
        let body = envelope("Namespace", &tagged(1, &meta));
        assert_eq!(
            decode(&body).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "stage", "labels": {"team": "canary"}}})
        );
    }

    #[test]
    fn kubectl_create_secret_decodes_with_data_base64() {
        let meta = [tagged(1, b"sig"), tagged(3, b"prod")].concat();
        let entry = [tagged(1, b"key"), tagged(2, b"s3cret")].concat();
        let raw = [tagged(1, &meta), tagged(2, &entry), tagged(3, b"Opaque")].concat();
        let secret = decode(&envelope("Secret", &raw)).unwrap();
        assert_eq!(secret["data"]["key"], json!("czNjcmV0"));
        assert_eq!(secret["metadata"]["namespace"], json!("prod"));
        assert_eq!(secret["type"], json!("Opaque"));
    }

    #[test]
    fn other_kinds_are_refused() {
        assert!(decode(&envelope("Pod", &[])).is_err());
        assert!(decode(b"{}").is_err());
    }
}
