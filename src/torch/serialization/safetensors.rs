//! safetensors files through the `safetensors` crate, the format's reference implementation
//! (the one Python's `safetensors.torch` runs, fuzzed upstream). The crate parses and validates
//! the header (a JSON object of at most 100 MB, data offsets contiguous and covering exactly the
//! data, shape × dtype = size, no overflow); the data itself is never read through it: storages
//! are copied from the memory map straight into their tensors by [`super::fill`], or viewed in
//! place by [`super::load_mapped`], and written from the tensors' own memory.

use std::collections::{HashMap, HashSet};
use std::io::Write;

use anyhow::{anyhow, ensure, Context, Result};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use super::pickle::Value;
use super::{fill, Fill, Mode};

/// safetensors dtypes ↔ kind.
const DTYPES: &[(Dtype, Kind)] = &[
    (Dtype::F32, Kind::Float),
    (Dtype::F16, Kind::Half),
    (Dtype::BF16, Kind::BFloat16),
    (Dtype::F64, Kind::Double),
    (Dtype::I64, Kind::Int64),
    (Dtype::I32, Kind::Int),
    (Dtype::I16, Kind::Int16),
    (Dtype::I8, Kind::Int8),
    (Dtype::U8, Kind::Uint8),
    (Dtype::BOOL, Kind::Bool),
];

/// Reads a safetensors file: a `Dict` of name → tensor, in the order of the data.
pub(super) fn read(map: &[u8], mode: Mode) -> Result<Value> {
    let (n, metadata) = SafeTensors::read_metadata(map).map_err(|e| {
        anyhow!(
            "safetensors header: {e} (its data_offsets, dtypes and shapes must cover the {} bytes \
             after the header exactly)",
            map.len()
        )
    })?;
    let base = 8 + n;
    let (mut items, mut fills) = (vec![], vec![]);
    for name in metadata.offset_keys() {
        let info = metadata
            .info(&name)
            .ok_or_else(|| anyhow!("tensor {name}: not in the header"))?;
        let kind = DTYPES
            .iter()
            .find(|(d, _)| *d == info.dtype)
            .map(|&(_, k)| k)
            .ok_or_else(|| anyhow!("tensor {name}: unsupported dtype {:?}", info.dtype))?;
        let shape = info
            .shape
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<Result<Vec<i64>, _>>()
            .with_context(|| format!("tensor {name}: shape {:?}", info.shape))?;
        let (b, e) = info.data_offsets;
        // bounded by read_metadata: the offsets cover the data after the header exactly
        let src = &map[base + b..base + e];
        let numel = (src.len() / kind.elt_size_in_bytes()) as i64;
        let (t, viewed) = mode.tensor(map, src, numel, kind, false)?;
        fills.push(Fill {
            name: format!("tensor {name}"),
            src,
            dst: (!viewed).then(|| t.shallow_clone()),
            kind,
            crc: None,
            big_endian: false,
        });
        items.push((
            Value::Str(name),
            Value::Tensor(t.f_reshape(shape.as_slice())?),
        ));
    }
    fill(map, &fills, mode.drop_pages())?;
    Ok(Value::Dict(items))
}

/// Writes `sd` as safetensors, in its order, with `{"format": "pt"}` as metadata (as
/// transformers' `save_pretrained` does); the header is the crate's.
pub(super) fn write<W: Write>(w: &mut W, sd: &[(String, Tensor)]) -> Result<()> {
    let (mut infos, mut offset, mut names) = (vec![], 0usize, HashSet::new());
    for (name, t) in sd {
        ensure!(names.insert(name.as_str()), "duplicate tensor name {name}");
        let kind = t.kind();
        let dtype = DTYPES
            .iter()
            .find(|(_, k)| *k == kind)
            .map(|&(d, _)| d)
            .ok_or_else(|| anyhow!("tensor {name}: cannot save kind {kind:?}"))?;
        let nbytes = t.numel() * kind.elt_size_in_bytes();
        let info = TensorInfo {
            dtype,
            shape: t.size().iter().map(|&d| d as usize).collect(),
            data_offsets: (offset, offset + nbytes),
        };
        infos.push((name.clone(), info));
        offset += nbytes;
    }
    let format = HashMap::from([("format".to_string(), "pt".to_string())]);
    let metadata = Metadata::new(Some(format), infos).map_err(|e| anyhow!("safetensors: {e}"))?;
    let mut header = serde_json::to_vec(&metadata)?;
    header.resize(header.len().next_multiple_of(8), b' ');
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)?;
    for (_, t) in sd {
        if t.numel() == 0 {
            continue;
        }
        let c = t.f_to_device(Device::Cpu)?.f_contiguous()?;
        // SAFETY: `c` is a contiguous CPU tensor, alive for the call.
        let data = unsafe {
            std::slice::from_raw_parts(
                c.data_ptr() as *const u8,
                c.numel() * c.kind().elt_size_in_bytes(),
            )
        };
        w.write_all(data)?;
    }
    Ok(())
}
