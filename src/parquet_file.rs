//! Parquet tables for `facedb export parquet`, written with the `parquet` crate's low-level
//! writer (built without arrow and without compression codecs: measured 1 min 45 s cold on 2
//! busy cores, where the arrow stack took 16 min). One row group per file, uncompressed.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, FloatType, Int32Type, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// A column's values; `Opt*` columns are nullable.
pub enum Values {
    I64(Vec<i64>),
    OptI64(Vec<Option<i64>>),
    I32(Vec<i32>),
    OptI32(Vec<Option<i32>>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    OptStr(Vec<Option<String>>),
    OptBytes(Vec<Option<Vec<u8>>>),
    /// A list of `len` floats per row, rows one after another (a LIST of FLOAT in Parquet).
    F32List {
        values: Vec<f32>,
        len: usize,
    },
}

pub struct Column {
    pub name: &'static str,
    pub values: Values,
}

impl Column {
    pub fn new(name: &'static str, values: Values) -> Self {
        Self { name, values }
    }

    fn schema(&self) -> String {
        let n = self.name;
        match self.values {
            Values::I64(_) => format!("required int64 {n};"),
            Values::OptI64(_) => format!("optional int64 {n};"),
            Values::I32(_) => format!("required int32 {n};"),
            Values::OptI32(_) => format!("optional int32 {n};"),
            Values::F32(_) => format!("required float {n};"),
            Values::Bool(_) => format!("required boolean {n};"),
            Values::Str(_) => format!("required binary {n} (STRING);"),
            Values::OptStr(_) => format!("optional binary {n} (STRING);"),
            Values::OptBytes(_) => format!("optional binary {n};"),
            // The three-level LIST the Parquet spec prescribes (what arrow and DuckDB write).
            Values::F32List { .. } => format!("required group {n} (LIST) {{ repeated group list {{ required float element; }} }}"),
        }
    }
}

/// Values and definition levels (1 present, 0 null) of a nullable column.
fn split<T: Clone, U>(values: &[Option<T>], convert: impl Fn(&T) -> U) -> (Vec<U>, Vec<i16>) {
    let present = values.iter().flatten().map(convert).collect();
    (present, values.iter().map(|v| i16::from(v.is_some())).collect())
}

fn bytes(s: &[u8]) -> ByteArray {
    ByteArray::from(s.to_vec())
}

/// Writes `columns` (all of the same row count) as one Parquet file into `out`, with
/// `metadata` as the file's key-value metadata. Returns `out`.
pub fn write_table<W: Write + Send>(out: W, columns: &[Column], metadata: Vec<(String, String)>) -> Result<W> {
    let message = format!("message schema {{ {} }}", columns.iter().map(Column::schema).collect::<Vec<_>>().join(" "));
    let schema = Arc::new(parse_message_type(&message).context("building the Parquet schema")?);
    let kv = metadata.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
    let props = Arc::new(
        WriterProperties::builder()
            .set_key_value_metadata(Some(kv))
            .set_created_by(format!("facedb {}", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    let mut writer = SerializedFileWriter::new(out, schema, props)?;
    let mut group = writer.next_row_group()?;
    for column in columns {
        let mut w = group.next_column()?.context("the Parquet schema has fewer columns than the table")?;
        match &column.values {
            Values::I64(v) => w.typed::<Int64Type>().write_batch(v, None, None)?,
            Values::OptI64(v) => {
                let (present, def) = split(v, |x| *x);
                w.typed::<Int64Type>().write_batch(&present, Some(&def), None)?
            }
            Values::I32(v) => w.typed::<Int32Type>().write_batch(v, None, None)?,
            Values::OptI32(v) => {
                let (present, def) = split(v, |x| *x);
                w.typed::<Int32Type>().write_batch(&present, Some(&def), None)?
            }
            Values::F32(v) => w.typed::<FloatType>().write_batch(v, None, None)?,
            Values::Bool(v) => w.typed::<BoolType>().write_batch(v, None, None)?,
            Values::Str(v) => {
                let v: Vec<ByteArray> = v.iter().map(|s| bytes(s.as_bytes())).collect();
                w.typed::<ByteArrayType>().write_batch(&v, None, None)?
            }
            Values::OptStr(v) => {
                let (present, def) = split(v, |s| bytes(s.as_bytes()));
                w.typed::<ByteArrayType>().write_batch(&present, Some(&def), None)?
            }
            Values::OptBytes(v) => {
                let (present, def) = split(v, |b| bytes(b));
                w.typed::<ByteArrayType>().write_batch(&present, Some(&def), None)?
            }
            Values::F32List { values, len } => {
                // Every element present (definition level 1); repetition level 0 starts a row.
                let def = vec![1i16; values.len()];
                let rep: Vec<i16> = (0..values.len()).map(|i| i16::from(i % (*len).max(1) != 0)).collect();
                w.typed::<FloatType>().write_batch(values, Some(&def), Some(&rep))?
            }
        };
        w.close()?;
    }
    group.close()?;
    Ok(writer.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_a_parquet_file_with_its_schema() {
        let columns = [
            Column::new("id", Values::I64(vec![1, 2])),
            Column::new("name", Values::OptStr(vec![Some("a".into()), None])),
            Column::new("v", Values::F32List { values: vec![0.5; 6], len: 3 }),
        ];
        let bytes = write_table(Vec::new(), &columns, vec![("k".into(), "v".into())]).unwrap();
        assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(file).unwrap();
        use parquet::file::reader::FileReader;
        let meta = reader.metadata().file_metadata();
        assert_eq!(meta.num_rows(), 2);
        assert_eq!(meta.schema_descr().num_columns(), 3);
    }
}
