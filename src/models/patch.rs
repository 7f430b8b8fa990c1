//! Minimal protobuf rewriting of ONNX model bytes, so the shipped YuNet file loads in ONNX
//! Runtime 1.31 without any external tooling.
//!
//! The int8bq YuNet carries `block_size=64` on `DequantizeLinear` nodes whose scale is
//! per-tensor (dims `[1]` or `[]`); ORT 1.31 rejects that combination. We drop the attribute
//! from exactly those nodes and leave everything else byte-for-byte intact. Input bytes are
//! untrusted, so every length is bounds-checked and errors are returned, never panics.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};

// ONNX field numbers (onnx.proto3).
const MODEL_GRAPH: u32 = 7;
const GRAPH_NODE: u32 = 1;
const GRAPH_INITIALIZER: u32 = 5;
const GRAPH_INPUT: u32 = 11;
const GRAPH_OUTPUT: u32 = 12;
const VALUE_INFO_NAME: u32 = 1;
const VALUE_INFO_TYPE: u32 = 2;
const TYPE_TENSOR: u32 = 1;
const TENSOR_TYPE_SHAPE: u32 = 2;
const SHAPE_DIM: u32 = 1;
const DIM_PARAM: u32 = 2;
const NODE_INPUT: u32 = 1;
const NODE_OP_TYPE: u32 = 4;
const NODE_ATTRIBUTE: u32 = 5;
const ATTRIBUTE_NAME: u32 = 1;
const TENSOR_DIMS: u32 = 1;
const TENSOR_NAME: u32 = 8;

const WIRE_VARINT: u8 = 0;
const WIRE_I64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_I32: u8 = 5;

/// One top-level field of a protobuf message: its number, wire type, the whole encoded field
/// (tag included) and, for length-delimited fields, the payload.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    pub number: u32,
    pub wire: u8,
    pub raw: &'a [u8],
    pub payload: &'a [u8],
    pub varint: u64,
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&byte) = buf.get(*pos) else { bail!("truncated varint") };
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    bail!("varint longer than 10 bytes")
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Splits a message into its top-level fields.
pub fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let tag = read_varint(buf, &mut pos)?;
        let number = u32::try_from(tag >> 3).context("field number out of range")?;
        let wire = (tag & 7) as u8;
        let (payload, varint) = match wire {
            WIRE_VARINT => (&buf[pos..pos], read_varint(buf, &mut pos)?),
            WIRE_I64 | WIRE_I32 => {
                let n = if wire == WIRE_I64 { 8 } else { 4 };
                let end = pos.checked_add(n).filter(|&e| e <= buf.len()).context("truncated fixed field")?;
                let p = &buf[pos..end];
                pos = end;
                (p, 0)
            }
            WIRE_LEN => {
                let len = usize::try_from(read_varint(buf, &mut pos)?).context("length out of range")?;
                let end = pos.checked_add(len).filter(|&e| e <= buf.len()).context("truncated length-delimited field")?;
                let p = &buf[pos..end];
                pos = end;
                (p, 0)
            }
            other => bail!("unsupported protobuf wire type {other}"),
        };
        out.push(Field { number, wire, raw: &buf[start..pos], payload, varint });
    }
    Ok(out)
}

fn push_len_field(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    write_varint(out, (u64::from(number) << 3) | u64::from(WIRE_LEN));
    write_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

fn string_field(msg: &[u8], number: u32) -> Result<Option<&[u8]>> {
    Ok(fields(msg)?.into_iter().find(|f| f.number == number && f.wire == WIRE_LEN).map(|f| f.payload))
}

/// Dims of a TensorProto (packed or unpacked repeated int64).
fn tensor_dims(tensor: &[u8]) -> Result<Vec<i64>> {
    let mut dims = Vec::new();
    for f in fields(tensor)?.into_iter().filter(|f| f.number == TENSOR_DIMS) {
        match f.wire {
            WIRE_VARINT => dims.push(f.varint as i64),
            WIRE_LEN => {
                let mut pos = 0;
                while pos < f.payload.len() {
                    dims.push(read_varint(f.payload, &mut pos)? as i64);
                }
            }
            _ => bail!("bad wire type for tensor dims"),
        }
    }
    Ok(dims)
}

/// Returns the patched model and how many nodes were changed. Besides the `block_size` fix, the
/// input's height and width (and the outputs' cell count) become symbolic, so the detector runs
/// on any input whose sides are multiples of 32, as OpenCV's FaceDetectorYN does.
pub fn patch_yunet(model: &[u8]) -> Result<(Vec<u8>, usize)> {
    let model_fields = fields(model).context("not an ONNX protobuf")?;
    let graph = model_fields.iter().find(|f| f.number == MODEL_GRAPH && f.wire == WIRE_LEN).context("ONNX model has no graph")?;
    let graph_fields = fields(graph.payload)?;

    let mut init_dims: HashMap<&[u8], Vec<i64>> = HashMap::new();
    for f in graph_fields.iter().filter(|f| f.number == GRAPH_INITIALIZER && f.wire == WIRE_LEN) {
        if let Some(name) = string_field(f.payload, TENSOR_NAME)? {
            init_dims.insert(name, tensor_dims(f.payload)?);
        }
    }

    let mut changed = 0;
    let mut new_graph = Vec::with_capacity(graph.payload.len());
    for f in &graph_fields {
        if f.number == GRAPH_NODE && f.wire == WIRE_LEN {
            if let Some(node) = strip_per_tensor_block_size(f.payload, &init_dims)? {
                push_len_field(&mut new_graph, GRAPH_NODE, &node);
                changed += 1;
                continue;
            }
        }
        if f.number == GRAPH_INPUT && f.wire == WIRE_LEN && string_field(f.payload, VALUE_INFO_NAME)? == Some(b"input".as_slice()) {
            push_len_field(&mut new_graph, GRAPH_INPUT, &symbolic_dims(f.payload, &[(2, "height"), (3, "width")])?);
            continue;
        }
        if f.number == GRAPH_OUTPUT && f.wire == WIRE_LEN {
            push_len_field(&mut new_graph, GRAPH_OUTPUT, &symbolic_dims(f.payload, &[(1, "cells")])?);
            continue;
        }
        new_graph.extend_from_slice(f.raw);
    }

    let mut out = Vec::with_capacity(model.len());
    for f in &model_fields {
        if f.number == MODEL_GRAPH && f.wire == WIRE_LEN {
            push_len_field(&mut out, MODEL_GRAPH, &new_graph);
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    Ok((out, changed))
}

/// Rewrites a ValueInfoProto so the listed dimensions are named parameters instead of fixed sizes.
fn symbolic_dims(value_info: &[u8], dims: &[(usize, &str)]) -> Result<Vec<u8>> {
    let rewrite = |msg: &[u8], number: u32, inner: &dyn Fn(&[u8]) -> Result<Vec<u8>>| -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(msg.len() + 16);
        for f in fields(msg)? {
            if f.number == number && f.wire == WIRE_LEN {
                push_len_field(&mut out, number, &inner(f.payload)?);
            } else {
                out.extend_from_slice(f.raw);
            }
        }
        Ok(out)
    };
    let shape = |shape: &[u8]| -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(shape.len() + 16);
        let mut index = 0;
        for f in fields(shape)? {
            if f.number == SHAPE_DIM && f.wire == WIRE_LEN {
                if let Some((_, name)) = dims.iter().find(|(i, _)| *i == index) {
                    let mut dim = Vec::new();
                    push_len_field(&mut dim, DIM_PARAM, name.as_bytes());
                    push_len_field(&mut out, SHAPE_DIM, &dim);
                } else {
                    out.extend_from_slice(f.raw);
                }
                index += 1;
            } else {
                out.extend_from_slice(f.raw);
            }
        }
        Ok(out)
    };
    let tensor = |t: &[u8]| rewrite(t, TENSOR_TYPE_SHAPE, &shape);
    let ty = |t: &[u8]| rewrite(t, TYPE_TENSOR, &tensor);
    rewrite(value_info, VALUE_INFO_TYPE, &ty)
}

/// `Some(rewritten node)` if the node is a DequantizeLinear with a per-tensor scale and a
/// `block_size` attribute, else `None`.
fn strip_per_tensor_block_size(node: &[u8], init_dims: &HashMap<&[u8], Vec<i64>>) -> Result<Option<Vec<u8>>> {
    let node_fields = fields(node)?;
    let is_dequantize = node_fields.iter().any(|f| f.number == NODE_OP_TYPE && f.wire == WIRE_LEN && f.payload == b"DequantizeLinear");
    if !is_dequantize {
        return Ok(None);
    }
    let Some(scale) = node_fields.iter().filter(|f| f.number == NODE_INPUT && f.wire == WIRE_LEN).nth(1) else {
        return Ok(None);
    };
    let per_tensor = matches!(init_dims.get(scale.payload), Some(d) if d.is_empty() || d == &[1]);
    if !per_tensor {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(node.len());
    let mut removed = false;
    for f in &node_fields {
        if f.number == NODE_ATTRIBUTE && f.wire == WIRE_LEN && string_field(f.payload, ATTRIBUTE_NAME)? == Some(b"block_size".as_slice()) {
            removed = true;
            continue;
        }
        out.extend_from_slice(f.raw);
    }
    Ok(removed.then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(name: &str) -> Vec<u8> {
        let mut a = Vec::new();
        push_len_field(&mut a, ATTRIBUTE_NAME, name.as_bytes());
        a
    }

    fn node(op: &str, inputs: &[&str], attrs: &[&str]) -> Vec<u8> {
        let mut n = Vec::new();
        for i in inputs {
            push_len_field(&mut n, NODE_INPUT, i.as_bytes());
        }
        push_len_field(&mut n, NODE_OP_TYPE, op.as_bytes());
        for a in attrs {
            push_len_field(&mut n, NODE_ATTRIBUTE, &attr(a));
        }
        n
    }

    fn initializer(name: &str, dims: &[u64]) -> Vec<u8> {
        let mut t = Vec::new();
        for d in dims {
            write_varint(&mut t, u64::from(TENSOR_DIMS) << 3);
            write_varint(&mut t, *d);
        }
        push_len_field(&mut t, TENSOR_NAME, name.as_bytes());
        t
    }

    fn model(graph_parts: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut g = Vec::new();
        for (n, p) in graph_parts {
            push_len_field(&mut g, *n, p);
        }
        let mut m = Vec::new();
        write_varint(&mut m, 1 << 3); // ir_version
        write_varint(&mut m, 8);
        push_len_field(&mut m, MODEL_GRAPH, &g);
        m
    }

    #[test]
    fn strips_block_size_only_from_per_tensor_nodes() {
        let m = model(&[
            (GRAPH_INITIALIZER, initializer("s_scalar", &[])),
            (GRAPH_INITIALIZER, initializer("s_one", &[1])),
            (GRAPH_INITIALIZER, initializer("s_block", &[1, 1])),
            (GRAPH_NODE, node("DequantizeLinear", &["w", "s_scalar", "z"], &["axis", "block_size"])),
            (GRAPH_NODE, node("DequantizeLinear", &["w", "s_one"], &["block_size"])),
            (GRAPH_NODE, node("DequantizeLinear", &["w", "s_block"], &["block_size"])),
            (GRAPH_NODE, node("Conv", &["x", "s_one"], &["block_size"])),
        ]);
        let (patched, changed) = patch_yunet(&m).unwrap();
        assert_eq!(changed, 2);
        let graph = fields(&patched).unwrap().into_iter().find(|f| f.number == MODEL_GRAPH).unwrap();
        let nodes: Vec<_> = fields(graph.payload).unwrap().into_iter().filter(|f| f.number == GRAPH_NODE).collect();
        let attr_names = |n: &Field| -> Vec<Vec<u8>> {
            fields(n.payload)
                .unwrap()
                .into_iter()
                .filter(|f| f.number == NODE_ATTRIBUTE)
                .map(|f| string_field(f.payload, ATTRIBUTE_NAME).unwrap().unwrap().to_vec())
                .collect()
        };
        assert_eq!(attr_names(&nodes[0]), vec![b"axis".to_vec()]);
        assert!(attr_names(&nodes[1]).is_empty());
        assert_eq!(attr_names(&nodes[2]), vec![b"block_size".to_vec()]);
        assert_eq!(attr_names(&nodes[3]), vec![b"block_size".to_vec()]);
        // Other model fields survive untouched.
        assert_eq!(&patched[..2], &m[..2]);
    }

    #[test]
    fn hostile_bytes_error_instead_of_panicking() {
        for bad in [&[0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f][..], &[0x0b], &[0x80; 12], &[0x3a, 0x05, 0x01]] {
            assert!(patch_yunet(bad).is_err(), "{bad:?}");
        }
        assert!(patch_yunet(&[]).is_err());
    }
}
