//! The legacy (pre-1.6, non-zip) `torch.save` format, read as torch/serialization.py
//! `_legacy_load` reads it. Hand-written: a sequence of pickles and raw storages that no crate
//! reads; the pickles go through [`super::pickle`], which executes nothing.

use std::collections::HashMap;

use anyhow::{anyhow, bail, ensure, Context, Result};
use memmap2::Mmap;
use tch::{Device, Kind, Tensor};

use super::pickle::{self, Value};
use super::{bytes_at, fill, le64, storage_kind, Fill};

/// Reads `torch.save(_use_new_zipfile_serialization=False)`, as `_legacy_load` in
/// torch/serialization.py reads it (its non-tar branch, the one `weights_only=True` takes):
/// five things one after the other: the pickled magic number, protocol version (1001) and
/// sys_info; the pickled object, whose persistent ids are `('storage', storage_type, key,
/// location, numel, view_metadata)`; the pickled list of storage keys; then, for each key in
/// that order, the storage's element count (int64) and its raw little-endian bytes.
pub(super) fn read(bytes: &[u8], drop_pages: Option<&Mmap>) -> Result<Value> {
    // the magic number 0x1950a86a20f9469cfc6c does not fit an i64: its pickle (PROTO, LONG1 of
    // 10 bytes, STOP) is compared as bytes
    const MAGIC: [u8; 13] = [
        0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
    ];
    ensure!(
        bytes.get(2..15) == Some(&MAGIC[..]),
        "invalid magic number; corrupt file?"
    );
    let mut no_ids = |pid: Value| -> Result<Value> { bail!("unexpected persistent id {pid}") };
    let mut pos = 15;
    let next = |pos: &mut usize,
                what: &str,
                pl: &mut dyn FnMut(Value) -> Result<Value>|
     -> Result<Value> {
        let (v, n) = pickle::unpickle_prefix(&bytes[*pos..], pl)
            .with_context(|| format!("{what} (pickle at offset {pos})"))?;
        *pos += n;
        Ok(v)
    };
    let protocol = next(&mut pos, "protocol version", &mut no_ids)?;
    ensure!(
        protocol.as_int() == Some(1001),
        "invalid protocol version: {protocol}"
    );
    let sys_info = next(&mut pos, "sys_info", &mut no_ids)?;
    let big_endian = sys_info.get("little_endian").and_then(Value::as_bool) == Some(false);

    // storages by key: (kind, numel, the tensor its data is read into)
    let mut storages: HashMap<String, (Kind, i64, Tensor)> = HashMap::new();
    let mut persistent_load = |pid: Value| -> Result<Value> {
        let (class, key, numel, view) = match pid.as_list() {
            Some(
                [tag, Value::Object { class, .. }, Value::Str(key), _location, Value::Int(numel), view],
            ) if tag.as_str() == Some("storage") => {
                (class.clone(), key.clone(), *numel, view.clone())
            }
            _ => bail!("unsupported persistent id {pid}"),
        };
        let kind = storage_kind(&class)?;
        ensure!(numel >= 0, "storage {key}: {numel} elements");
        let root = match storages.get(&key) {
            Some((k, n, t)) => {
                ensure!(
                    *k == kind && *n == numel,
                    "storage {key} is used as both {n} × {k:?} and {numel} × {kind:?}"
                );
                t.shallow_clone()
            }
            None => {
                let nbytes = (numel as u64).checked_mul(kind.elt_size_in_bytes() as u64);
                ensure!(
                    nbytes.is_some_and(|n| n <= bytes.len() as u64),
                    "storage {key} claims {numel} elements of {kind:?}, more than the file holds"
                );
                let t = Tensor::f_empty([numel], (kind, Device::Cpu))?;
                storages.insert(key.clone(), (kind, numel, t.shallow_clone()));
                t
            }
        };
        Ok(Value::Tensor(match view {
            Value::None => root,
            v => match v.as_list() {
                Some([Value::Str(_), Value::Int(offset), Value::Int(size)])
                    if *offset >= 0
                        && *size >= 0
                        && offset.checked_add(*size).is_some_and(|e| e <= numel) =>
                {
                    root.f_narrow(0, *offset, *size)?
                }
                _ => bail!("storage {key}: bad view {v} of its {numel} elements"),
            },
        }))
    };
    let value = next(&mut pos, "the saved object", &mut persistent_load)?;
    let keys = next(&mut pos, "the storage keys", &mut no_ids)?;
    let keys = keys
        .as_list()
        .ok_or_else(|| anyhow!("storage keys: expected a list, found {}", keys.type_name()))?;
    ensure!(
        keys.len() == storages.len(),
        "{} storage keys for {} storages",
        keys.len(),
        storages.len()
    );
    let mut fills = vec![];
    for key in keys {
        let key = key
            .as_str()
            .ok_or_else(|| anyhow!("storage key {key} is not a string"))?;
        let (kind, numel, t) = storages
            .remove(key)
            .ok_or_else(|| anyhow!("storage key {key} names no storage (or twice)"))?;
        let header = bytes_at(bytes, pos as u64, 8, &format!("storage {key}"))?;
        let mut n = le64(header, 0);
        if big_endian {
            n = n.swap_bytes();
        }
        ensure!(
            n == numel as u64,
            "storage {key} has {n} elements in the file, {numel} in the pickle"
        );
        let nbytes = numel as u64 * kind.elt_size_in_bytes() as u64;
        let src = bytes_at(bytes, pos as u64 + 8, nbytes, &format!("storage {key}"))?;
        pos += 8 + nbytes as usize;
        fills.push(Fill {
            name: format!("storage {key}"),
            src,
            dst: Some(t),
            kind,
            crc: None,
            big_endian: false, // _set_from_file: the data is little-endian
        });
    }
    fill(bytes, &fills, drop_pages)?;
    Ok(value)
}
