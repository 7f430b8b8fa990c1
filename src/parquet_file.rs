//! Parquet tables for `facedb export parquet`, written with the `parquet` crate's low-level
//! writer (built without arrow and without compression codecs: measured 1 min 45 s cold on 2
//! busy cores, where the arrow stack took 16 min). Uncompressed; big tables in row groups.

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

/// Writes `columns` (all of the same row count) as one Parquet file of one row group into
/// `out`, with `metadata` as the file's key-value metadata. Returns `out`.
pub fn write_table<W: Write + Send>(out: W, columns: &[Column], metadata: Vec<(String, String)>) -> Result<W> {
    let mut table = TableWriter::new(out, columns, metadata)?;
    table.write_group(columns)?;
    table.finish()
}

/// A Parquet file written one row group at a time (a page of rows each), so a table of any
/// size is written in bounded memory.
pub struct TableWriter<W: Write + Send> {
    writer: SerializedFileWriter<W>,
}

impl<W: Write + Send> TableWriter<W> {
    /// The schema is that of `columns` (their values are not written here).
    pub fn new(out: W, columns: &[Column], metadata: Vec<(String, String)>) -> Result<Self> {
        let message = format!("message schema {{ {} }}", columns.iter().map(Column::schema).collect::<Vec<_>>().join(" "));
        let schema = Arc::new(parse_message_type(&message).context("building the Parquet schema")?);
        let kv = metadata.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
        let props = Arc::new(
            WriterProperties::builder()
                .set_key_value_metadata(Some(kv))
                .set_created_by(format!("facedb {}", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        Ok(Self { writer: SerializedFileWriter::new(out, schema, props)? })
    }

    /// Writes one row group: `columns` in the schema's order, all of the same row count.
    pub fn write_group(&mut self, columns: &[Column]) -> Result<()> {
        let mut group = self.writer.next_row_group()?;
        for column in columns {
            let mut w = group.next_column()?.context("the Parquet schema has fewer columns than the table")?;
            write_column(&mut w, &column.values)?;
            w.close()?;
        }
        group.close()?;
        Ok(())
    }

    pub fn finish(self) -> Result<W> {
        Ok(self.writer.into_inner()?)
    }
}

fn write_column(w: &mut parquet::file::writer::SerializedColumnWriter<'_>, values: &Values) -> Result<()> {
    match values {
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
    Ok(())
}

/// The `ARROW:schema` key-value metadata for `columns` (`None` when a column has no Arrow
/// counterpart written here): what tells pyarrow (and arrow-rs, Polars) to read a list column
/// of fixed length as `fixed_size_list<float>[N]` rather than a plain list. Its value is the
/// base64 of an Arrow IPC Schema message: a continuation marker, a length, and the flatbuffer.
pub fn arrow_schema(columns: &[Column]) -> Option<String> {
    use base64::Engine as _;
    let mut fields = Vec::new();
    for c in columns {
        fields.push(match c.values {
            Values::I64(_) => arrow_field(c.name, Fb::Table(vec![Some(Fb::I32(64)), Some(Fb::Bool(true))]), 2, Vec::new()),
            Values::F32List { len, .. } => {
                let element = arrow_field("element", Fb::Table(vec![Some(Fb::I16(1))]), 3, Vec::new());
                arrow_field(c.name, Fb::Table(vec![Some(Fb::I32(i32::try_from(len).ok()?))]), 16, vec![element])
            }
            _ => return None,
        });
    }
    // Schema { endianness: Little, fields }; Message { version: V5, header: Schema, bodyLength: 0 }.
    let schema = Fb::Table(vec![Some(Fb::I16(0)), Some(Fb::Vector(fields))]);
    let message = Fb::Table(vec![Some(Fb::I16(4)), Some(Fb::U8(1)), Some(schema), Some(Fb::I64(0))]);
    let flatbuffer = flatbuffer(&message);
    let mut ipc = vec![0xff; 4];
    ipc.extend_from_slice(&u32::try_from(flatbuffer.len()).ok()?.to_le_bytes());
    ipc.extend_from_slice(&flatbuffer);
    Some(base64::engine::general_purpose::STANDARD.encode(ipc))
}

/// Field { name, nullable: false, type_type, type, children }.
fn arrow_field(name: &str, ty: Fb, type_id: u8, children: Vec<Fb>) -> Fb {
    Fb::Table(vec![
        Some(Fb::Str(name.to_string())),
        Some(Fb::Bool(false)),
        Some(Fb::U8(type_id)),
        Some(ty),
        None,
        Some(Fb::Vector(children)),
    ])
}

/// Just enough of FlatBuffers for an Arrow schema: tables of scalars, strings and vectors of
/// tables. Objects are laid out after whatever points at them (offsets are unsigned, forward).
enum Fb {
    U8(u8),
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    Str(String),
    Vector(Vec<Fb>),
    /// Fields by id; `None` is absent (its default).
    Table(Vec<Option<Fb>>),
}

fn flatbuffer(root: &Fb) -> Vec<u8> {
    let mut buf = vec![0u8; 4];
    let at = write_fb(&mut buf, root);
    patch(&mut buf, 0, at);
    align(&mut buf, 8);
    buf
}

fn align(buf: &mut Vec<u8>, n: usize) {
    while !buf.len().is_multiple_of(n) {
        buf.push(0);
    }
}

/// Writes the forward offset from `at` to `target` into the u32 at `at`.
fn patch(buf: &mut [u8], at: usize, target: usize) {
    let offset = u32::try_from(target - at).unwrap_or(0);
    buf[at..at + 4].copy_from_slice(&offset.to_le_bytes());
}

/// Writes `obj` (a table, string or vector) and returns where references to it point.
fn write_fb(buf: &mut Vec<u8>, obj: &Fb) -> usize {
    match obj {
        Fb::Str(s) => {
            align(buf, 4);
            let at = buf.len();
            buf.extend_from_slice(&u32::try_from(s.len()).unwrap_or(0).to_le_bytes());
            buf.extend_from_slice(s.as_bytes());
            buf.push(0);
            at
        }
        Fb::Vector(items) => {
            align(buf, 4);
            let at = buf.len();
            buf.extend_from_slice(&u32::try_from(items.len()).unwrap_or(0).to_le_bytes());
            let slots: Vec<usize> = items.iter().map(|_| (buf.len(), buf.extend_from_slice(&[0; 4])).0).collect();
            for (slot, item) in slots.into_iter().zip(items) {
                let target = write_fb(buf, item);
                patch(buf, slot, target);
            }
            at
        }
        Fb::Table(fields) => write_table_fb(buf, fields),
        // Scalars live inside tables only.
        _ => buf.len(),
    }
}

fn write_table_fb(buf: &mut Vec<u8>, fields: &[Option<Fb>]) -> usize {
    // Lay the inline part out first (scalars aligned to their size, offsets as u32) to know the
    // vtable; the vtable goes right before the table.
    let sizes: Vec<usize> = fields
        .iter()
        .map(|f| match f {
            Some(Fb::U8(_) | Fb::Bool(_)) => 1,
            Some(Fb::I16(_)) => 2,
            Some(Fb::I64(_)) => 8,
            Some(_) => 4,
            None => 0,
        })
        .collect();
    let vtable_len = 4 + 2 * fields.len();
    align(buf, 2);
    let vtable_at = buf.len();
    buf.resize(vtable_at + vtable_len, 0);
    align(buf, 8);
    let table_at = buf.len();
    buf.extend_from_slice(&i32::try_from(table_at - vtable_at).unwrap_or(0).to_le_bytes());
    let mut slots = Vec::new();
    for (i, (field, size)) in fields.iter().zip(&sizes).enumerate() {
        let Some(field) = field else { continue };
        align(buf, *size);
        let at = buf.len();
        let entry = vtable_at + 4 + 2 * i;
        buf[entry..entry + 2].copy_from_slice(&u16::try_from(at - table_at).unwrap_or(0).to_le_bytes());
        match field {
            Fb::U8(v) => buf.push(*v),
            Fb::Bool(v) => buf.push(u8::from(*v)),
            Fb::I16(v) => buf.extend_from_slice(&v.to_le_bytes()),
            Fb::I32(v) => buf.extend_from_slice(&v.to_le_bytes()),
            Fb::I64(v) => buf.extend_from_slice(&v.to_le_bytes()),
            other => {
                buf.extend_from_slice(&[0; 4]);
                slots.push((at, other));
            }
        }
    }
    let table_len = buf.len() - table_at;
    buf[vtable_at..vtable_at + 2].copy_from_slice(&u16::try_from(vtable_len).unwrap_or(0).to_le_bytes());
    buf[vtable_at + 2..vtable_at + 4].copy_from_slice(&u16::try_from(table_len).unwrap_or(0).to_le_bytes());
    for (slot, child) in slots {
        let target = write_fb(buf, child);
        patch(buf, slot, target);
    }
    table_at
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

    #[test]
    fn a_big_table_is_written_a_row_group_at_a_time() {
        let page = |ids: Vec<i64>| {
            let n = ids.len();
            [Column::new("id", Values::I64(ids)), Column::new("v", Values::F32List { values: vec![1.0; 2 * n], len: 2 })]
        };
        let mut table = TableWriter::new(Vec::new(), &page(Vec::new()), Vec::new()).unwrap();
        table.write_group(&page(vec![1, 2, 3])).unwrap();
        table.write_group(&page(vec![4])).unwrap();
        let bytes = table.finish().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(file).unwrap();
        use parquet::file::reader::FileReader;
        assert_eq!((reader.metadata().file_metadata().num_rows(), reader.num_row_groups()), (4, 2));
    }
}
