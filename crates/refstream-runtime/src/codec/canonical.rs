//! The Parsing Canonical Form of the Avro specification, and the schema fingerprint computed
//! from it. Written here because the canonical form must strip every attribute but `name`,
//! `type`, `fields`, `symbols`, `items`, `values` and `size` — logical types included — and
//! the fingerprint on the wire must equal what every other Avro implementation computes.

use serde_json::{json, Map, Value};

const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];

/// The canonical form of the schema written as JSON in `source`.
pub fn canonical_form(source: &str) -> Result<String, String> {
    let json: Value = serde_json::from_str(source).map_err(|e| e.to_string())?;
    Ok(canon(&json, "")?.to_string())
}

/// The 8-byte little-endian CRC-64-AVRO fingerprint of the canonical form.
/// The algorithm is the one the specification gives (a Rabin fingerprint over the
/// polynomial whose empty value is `EMPTY`).
pub fn fingerprint(canonical: &str) -> [u8; 8] {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let table: [u64; 256] = std::array::from_fn(|i| {
        let mut fp = i as u64;
        for _ in 0..8 {
            fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
        }
        fp
    });
    let fp = canonical.bytes().fold(EMPTY, |fp, b| (fp >> 8) ^ table[((fp ^ u64::from(b)) & 0xff) as usize]);
    fp.to_le_bytes()
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    }
}

fn canon(schema: &Value, namespace: &str) -> Result<Value, String> {
    match schema {
        Value::String(name) if PRIMITIVES.contains(&name.as_str()) => Ok(json!(name)),
        Value::String(name) => Ok(json!(full_name(name, namespace))),
        Value::Array(branches) => Ok(Value::Array(branches.iter().map(|b| canon(b, namespace)).collect::<Result<_, _>>()?)),
        Value::Object(obj) => {
            let kind = obj.get("type").ok_or("schema object without a type")?;
            let Value::String(kind) = kind else { return canon(kind, namespace) };
            let ns = obj.get("namespace").and_then(Value::as_str).unwrap_or(namespace);
            let named = |obj: &Map<String, Value>| -> Result<(String, String), String> {
                let name = obj.get("name").and_then(Value::as_str).ok_or("named type without a name")?;
                let full = full_name(name, ns);
                let inner_ns = full.rsplit_once('.').map(|(n, _)| n.to_owned()).unwrap_or_default();
                Ok((full, inner_ns))
            };
            let mut out = Map::new();
            match kind.as_str() {
                "record" | "error" => {
                    let (full, inner) = named(obj)?;
                    let fields = obj.get("fields").and_then(Value::as_array).ok_or("record without fields")?;
                    let fields = fields
                        .iter()
                        .map(|f| {
                            let name = f.get("name").ok_or("field without a name")?;
                            let ty = canon(f.get("type").ok_or("field without a type")?, &inner)?;
                            let mut m = Map::new();
                            m.insert("name".into(), name.clone());
                            m.insert("type".into(), ty);
                            Ok(Value::Object(m))
                        })
                        .collect::<Result<Vec<_>, String>>()?;
                    out.insert("name".into(), json!(full));
                    out.insert("type".into(), json!("record"));
                    out.insert("fields".into(), Value::Array(fields));
                }
                "enum" => {
                    let (full, _) = named(obj)?;
                    out.insert("name".into(), json!(full));
                    out.insert("type".into(), json!("enum"));
                    out.insert("symbols".into(), obj.get("symbols").cloned().ok_or("enum without symbols")?);
                }
                "fixed" => {
                    let (full, _) = named(obj)?;
                    out.insert("name".into(), json!(full));
                    out.insert("type".into(), json!("fixed"));
                    out.insert("size".into(), obj.get("size").cloned().ok_or("fixed without size")?);
                }
                "array" => {
                    out.insert("type".into(), json!("array"));
                    out.insert("items".into(), canon(obj.get("items").ok_or("array without items")?, ns)?);
                }
                "map" => {
                    out.insert("type".into(), json!("map"));
                    out.insert("values".into(), canon(obj.get("values").ok_or("map without values")?, ns)?);
                }
                primitive if PRIMITIVES.contains(&primitive) => return Ok(json!(primitive)),
                other => return Ok(json!(full_name(other, ns))),
            }
            Ok(Value::Object(out))
        }
        other => Err(format!("not a schema: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_logical_types_and_docs() {
        let src = r#"{"type":"record","name":"R","namespace":"a.b","doc":"x","fields":[
            {"name":"id","type":{"type":"string","logicalType":"uuid"}},
            {"name":"amt","type":{"type":"bytes","logicalType":"decimal","precision":18,"scale":4}},
            {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
            {"name":"o","type":["null","string"],"default":null}]}"#;
        assert_eq!(
            canonical_form(src).unwrap(),
            r#"{"name":"a.b.R","type":"record","fields":[{"name":"id","type":"string"},{"name":"amt","type":"bytes"},{"name":"e","type":{"name":"a.b.E","type":"enum","symbols":["X","Y"]}},{"name":"o","type":["null","string"]}]}"#
        );
    }

    #[test]
    fn fingerprint_of_the_specification_example() {
        // The specification's fingerprint of the schema "int": 0x7275d51a3f395c8f, written LE.
        assert_eq!(fingerprint(r#""int""#), 0x7275_d51a_3f39_5c8f_u64.to_le_bytes());
    }
}
