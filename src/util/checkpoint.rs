//! PyTorch checkpoints without Python: `torch.save`'s zip format (read and written, like
//! `torch.load(weights_only=True)` / `torch.save` in torch/serialization.py) and safetensors.
//!
//! The official MAE checkpoints are `{'model': OrderedDict(state_dict)}` (util/misc.py
//! `save_model`); training checkpoints add `optimizer`, `epoch`, `scaler` and
//! `args: argparse.Namespace`, which load here as opaque [`Value::Object`]s.
//!
//! The file is memory-mapped. [`load`] copies storages from the map straight into their
//! tensors' (not zero-filled) buffers by the rayon threads and drops the map's pages once
//! copied (peak memory ≈ file size); [`load_mapped`] makes them copy-on-write views of a private
//! map (nothing copied; for the checkpoint a process keeps, as `mae eval`). Both check every
//! entry's CRC-32, which torch.load does not (torch 2.11: a flipped storage byte loads silently,
//! with or without `mmap=True`); it costs one read of the data. Every offset and length in the
//! file is bounded by the file size.
use anyhow::{anyhow, bail, ensure, Context, Result};
use memmap2::{Mmap, MmapOptions};
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub use crate::util::pickle::Value;
use crate::util::pickle::{self, TensorRef};

/// Loads a `.pth` written by `torch.save` (zip format) or a `.safetensors` file (detected by
/// magic bytes, not extension). Safetensors give a `Dict` of name → tensor in file order.
pub fn load(path: &Path) -> Result<Value> {
    load_file(path, false).with_context(|| format!("cannot load checkpoint {}", path.display()))
}

/// The containers timm's `load_checkpoint` accepts, in its order of preference (`use_ema=True`):
/// a dict holding one of these (not `None`) gives that entry, else the root is the state dict.
/// The official MAE checkpoints use `model`.
pub const STATE_DICT_KEYS: [&str; 4] = ["state_dict_ema", "model_ema", "state_dict", "model"];

/// Key prefixes of wrapped models, removed in this order as timm's `clean_state_dict` does:
/// `torch.compile` around DDP, DDP (`module.`), `torch.compile` alone.
const WRAPPER_PREFIXES: [&str; 3] = ["_orig_mod.", "module.", "_orig_mod."];

/// Where [`state_dict_from`] found the state dict and what it changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// The top-level entry used (`model`, `state_dict`, ...), `None` for a bare state dict.
    pub entry: Option<&'static str>,
    /// (prefix, number of keys it was stripped from), for each wrapper prefix found.
    pub stripped: Vec<(&'static str, usize)>,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.entry {
            Some(k) => write!(f, "checkpoint['{k}']")?,
            None => write!(f, "the top level")?,
        }
        for (prefix, n) in &self.stripped {
            write!(f, ", `{prefix}` prefix stripped from {n} keys")?;
        }
        Ok(())
    }
}

/// The state dict of a loaded checkpoint (see [`state_dict_from`]).
pub fn state_dict(root: Value) -> Result<Vec<(String, Tensor)>> {
    Ok(state_dict_from(root)?.0)
}

/// The state dict of a loaded checkpoint as timm's `load_state_dict` finds it: the first of
/// [`STATE_DICT_KEYS`] the root dict holds, else the root itself as a name → tensor dict; then
/// the `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes removed from its keys.
pub fn state_dict_from(root: Value) -> Result<(Vec<(String, Tensor)>, Source)> {
    let entry = STATE_DICT_KEYS
        .into_iter()
        .find(|k| root.get(k).is_some_and(|v| !matches!(v, Value::None)));
    let sd = match (entry, root) {
        (Some(key), Value::Dict(items)) => items
            .into_iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v),
        (_, root) => Some(root),
    };
    let items = match sd {
        Some(Value::Dict(items)) => items,
        Some(other) => bail!(
            "expected a state dict (dict of name → tensor), found {}",
            other.type_name()
        ),
        None => bail!("empty checkpoint"),
    };
    let keys: Vec<String> = items.iter().take(8).map(|(k, _)| k.to_string()).collect();
    let mut stripped: Vec<(&'static str, usize)> = vec![];
    let sd = items
        .into_iter()
        .map(|(k, v)| match (k, v) {
            (Value::Str(mut k), Value::Tensor(t)) => {
                for prefix in WRAPPER_PREFIXES {
                    if let Some(rest) = k.strip_prefix(prefix) {
                        k = rest.to_string();
                        match stripped.iter_mut().find(|(p, _)| *p == prefix) {
                            Some((_, n)) => *n += 1,
                            None => stripped.push((prefix, 1)),
                        }
                    }
                }
                Ok((k, t))
            }
            (k, v) => bail!(
                "not a state dict: entry {k} is a {} (no {} entry holds one; keys found: {}{})",
                v.type_name(),
                STATE_DICT_KEYS.map(|k| format!("'{k}'")).join(", "),
                keys.join(", "),
                if keys.len() == 8 { ", ..." } else { "" }
            ),
        })
        .collect::<Result<Vec<_>>>()?;
    let mut seen = std::collections::HashSet::new();
    if let Some((k, _)) = sd.iter().find(|(k, _)| !seen.insert(k.as_str())) {
        bail!("key {k} appears twice once the wrapper prefixes are stripped");
    }
    Ok((sd, Source { entry, stripped }))
}

/// [`load`] for a checkpoint this process keeps until it exits (the model `mae eval`
/// evaluates): the tensors of a `torch.save` zip are copy-on-write views of a private map of
/// the file, not copies. Nothing is allocated or zero-filled; the CRC-32 check reads every page
/// once (from the page cache when warm), and a write to a tensor copies only the page it
/// touches. The map is never unmapped (the tensors cannot hold it), so not for loops over
/// files. Storages misaligned for their dtype, big-endian or bool ones, and safetensors files,
/// are copied as by [`load`].
pub fn load_mapped(path: &Path) -> Result<Value> {
    load_file(path, true).with_context(|| format!("cannot load checkpoint {}", path.display()))
}

/// [`load_mapped`] then [`state_dict`].
pub fn load_state_dict_mapped(path: &Path) -> Result<Vec<(String, Tensor)>> {
    state_dict(load_mapped(path)?).with_context(|| format!("checkpoint {}", path.display()))
}

/// [`load`] then [`state_dict`].
pub fn load_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    state_dict(load(path)?).with_context(|| format!("checkpoint {}", path.display()))
}

/// Writes `value` in `torch.save`'s zip format, atomically.
pub fn save(path: &Path, value: &Value) -> Result<()> {
    atomic_write(path, |w| write_torch_zip(w, path, value))
        .with_context(|| format!("cannot save checkpoint {}", path.display()))
}

/// Writes `{'model': OrderedDict(sd)}` like the official `save_model`; Python reads it with
/// `torch.load(path, weights_only=True)`.
pub fn save_state_dict(path: &Path, sd: &[(String, Tensor)]) -> Result<()> {
    let model = Value::Dict(
        sd.iter()
            .map(|(k, t)| (Value::Str(k.clone()), Value::Tensor(t.shallow_clone())))
            .collect(),
    );
    let ordered = Value::Object {
        class: "collections.OrderedDict".into(),
        args: vec![model],
        state: None,
    };
    save(
        path,
        &Value::Dict(vec![(Value::Str("model".into()), ordered)]),
    )
}

/// Writes a safetensors file (tensors made contiguous one at a time), atomically.
pub fn save_safetensors(path: &Path, sd: &[(String, Tensor)]) -> Result<()> {
    atomic_write(path, |w| write_safetensors(w, sd))
        .with_context(|| format!("cannot save safetensors {}", path.display()))
}

// ------------------------------------------------------------------------------------------
// dtypes
// ------------------------------------------------------------------------------------------

/// `torch.<X>Storage` (the storage types `torch.save` writes) ↔ kind.
const STORAGES: &[(&str, Kind)] = &[
    ("FloatStorage", Kind::Float),
    ("HalfStorage", Kind::Half),
    ("BFloat16Storage", Kind::BFloat16),
    ("DoubleStorage", Kind::Double),
    ("LongStorage", Kind::Int64),
    ("IntStorage", Kind::Int),
    ("ShortStorage", Kind::Int16),
    ("CharStorage", Kind::Int8),
    ("ByteStorage", Kind::Uint8),
    ("BoolStorage", Kind::Bool),
];

/// safetensors dtype names ↔ kind.
const ST_DTYPES: &[(&str, Kind)] = &[
    ("F32", Kind::Float),
    ("F16", Kind::Half),
    ("BF16", Kind::BFloat16),
    ("F64", Kind::Double),
    ("I64", Kind::Int64),
    ("I32", Kind::Int),
    ("I16", Kind::Int16),
    ("I8", Kind::Int8),
    ("U8", Kind::Uint8),
    ("BOOL", Kind::Bool),
];

fn storage_kind(class: &str) -> Result<Kind> {
    if matches!(
        class,
        "torch.UntypedStorage" | "torch.storage.UntypedStorage" | "torch.storage._UntypedStorage"
    ) {
        return Ok(Kind::Uint8);
    }
    let name = class.strip_prefix("torch.").unwrap_or(class);
    STORAGES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, k)| k)
        .ok_or_else(|| anyhow!("unsupported storage type {class}"))
}

fn storage_type(kind: Kind) -> Result<&'static str> {
    STORAGES
        .iter()
        .find(|(_, k)| *k == kind)
        .map(|&(n, _)| n)
        .ok_or_else(|| anyhow!("cannot save tensors of kind {kind:?}"))
}

// ------------------------------------------------------------------------------------------
// Reading
// ------------------------------------------------------------------------------------------

/// Storages are copied in chunks of this size, spread over the rayon threads; each chunk's
/// CRC-32 is taken while it is still in cache, then the chunks' CRCs are combined per entry.
const CHUNK: usize = 4 << 20;

fn load_file(path: &Path, views: bool) -> Result<Value> {
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        bail!("empty file");
    }
    // SAFETY: a read-only shared map; every offset into it is bounds checked against its
    // length. What the OS cannot promise is that no other process truncates the file while it
    // is mapped: that would end this process with SIGBUS (as it would `torch.load(mmap=True)`).
    // Our own writers (`atomic_write`) never change a file in place: they rename over it.
    let map = unsafe { Mmap::map(&file)? };
    let magic = &map[..map.len().min(9)];
    if (magic.starts_with(b"PK\x03\x04") || magic.starts_with(b"PK\x05\x06")) && views {
        // SAFETY: as above; private, so writes through the tensors never reach the file.
        let mut private = unsafe { MmapOptions::new().map_copy(&file)? };
        let base = private.as_mut_ptr();
        let value = read_torch_zip(&private, Mode::View(base))?;
        std::mem::forget(private); // the tensors now point into it, for the process's lifetime
        return Ok(value);
    }
    read_bytes(&map, Some(&map))
}

/// A checkpoint from its bytes, told apart by magic bytes: a `torch.save` zip, the legacy
/// format or safetensors (`map`: the map they are in, whose pages are dropped once copied).
fn read_bytes(bytes: &[u8], map: Option<&Mmap>) -> Result<Value> {
    let magic = &bytes[..bytes.len().min(9)];
    if magic.starts_with(b"PK\x03\x04") || magic.starts_with(b"PK\x05\x06") {
        return read_torch_zip(bytes, Mode::Copy(map));
    }
    if magic.len() >= 2 && magic[0] == 0x80 && magic[1] <= 5 {
        return read_legacy(bytes, map).context("legacy (pre-1.6, non-zip) torch.save format");
    }
    if magic.len() == 9 && magic[8] == b'{' {
        return read_safetensors(bytes, map);
    }
    bail!(
        "not a PyTorch zip checkpoint nor safetensors (starts with {:02x?})",
        magic
    )
}

/// [`load`] of a checkpoint's bytes (the fuzz targets read them so).
pub fn load_from_bytes(bytes: &[u8]) -> Result<Value> {
    ensure!(!bytes.is_empty(), "empty file");
    read_bytes(bytes, None)
}

fn le16(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 2)
        .map_or(0, |x| u16::from_le_bytes([x[0], x[1]]) as u64)
}
fn le32(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 4)
        .map_or(0, |x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]) as u64)
}
fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |x| u64::from_le_bytes(x.try_into().unwrap_or([0; 8])))
}

/// The `n` bytes at `offset`, bounded by the file length.
fn bytes_at<'a>(file: &'a [u8], offset: u64, n: u64, what: &str) -> Result<&'a [u8]> {
    let len = file.len() as u64;
    ensure!(
        offset.checked_add(n).is_some_and(|e| e <= len),
        "{what}: {n} bytes at offset {offset} reach past the end of the file ({len} bytes; truncated?)"
    );
    Ok(&file[offset as usize..(offset + n) as usize])
}

struct Entry {
    crc: u32,
    size: u64,
    header: u64,
}

struct Zip<'a> {
    file: &'a [u8],
    entries: HashMap<String, Entry>,
    first: String,
}

/// The central directory of a stored (uncompressed) zip, zip64 included.
fn read_zip(file: &[u8]) -> Result<Zip<'_>> {
    let len = file.len() as u64;
    ensure!(len >= 22, "truncated zip: {len} bytes");
    let tail_len = len.min(22 + 65535);
    let tail = bytes_at(file, len - tail_len, tail_len, "end of central directory")?;
    let eocd = (0..=tail.len() - 22)
        .rev()
        .find(|&i| tail[i..i + 4] == *b"PK\x05\x06")
        .ok_or_else(|| {
            anyhow!("no zip end-of-central-directory record (truncated or not a zip)")
        })?;
    let eocd_at = len - tail_len + eocd as u64;
    let mut count = le16(tail, eocd + 10);
    let mut cd_size = le32(tail, eocd + 12);
    let mut cd_offset = le32(tail, eocd + 16);
    // zip64: locator just before the EOCD, pointing at the zip64 EOCD record.
    if eocd_at >= 20 {
        let loc = bytes_at(file, eocd_at - 20, 20, "zip64 locator")?;
        if loc[..4] == *b"PK\x06\x07" {
            let rec = bytes_at(file, le64(loc, 8), 56, "zip64 end of central directory")?;
            ensure!(
                rec[..4] == *b"PK\x06\x06",
                "bad zip64 end-of-central-directory signature"
            );
            count = le64(rec, 32);
            cd_size = le64(rec, 40);
            cd_offset = le64(rec, 48);
        }
    }
    ensure!(
        count <= cd_size / 46,
        "zip claims {count} entries in a {cd_size}-byte central directory"
    );
    let cd = bytes_at(file, cd_offset, cd_size, "central directory")?;
    let mut entries = HashMap::new();
    let mut first = String::new();
    let mut p = 0usize;
    for i in 0..count {
        ensure!(
            cd.get(p..p + 4) == Some(b"PK\x01\x02"),
            "central directory entry {i}: bad signature at offset {}",
            cd_offset + p as u64
        );
        ensure!(
            p + 46 <= cd.len(),
            "central directory entry {i} is truncated"
        );
        let method = le16(cd, p + 10);
        let crc = le32(cd, p + 16) as u32;
        let mut csize = le32(cd, p + 20);
        let mut size = le32(cd, p + 24);
        let (n, m, k) = (
            le16(cd, p + 28) as usize,
            le16(cd, p + 30) as usize,
            le16(cd, p + 32) as usize,
        );
        let mut header = le32(cd, p + 42);
        let name = cd
            .get(p + 46..p + 46 + n)
            .ok_or_else(|| anyhow!("central directory entry {i}: truncated name"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        let extra = cd
            .get(p + 46 + n..p + 46 + n + m)
            .ok_or_else(|| anyhow!("entry {name}: truncated extra field"))?;
        // zip64 extended information: the fields that are 0xFFFFFFFF, in this order.
        let mut e = 0;
        while e + 4 <= extra.len() {
            let (id, sz) = (le16(extra, e), le16(extra, e + 2) as usize);
            if id == 1 {
                let mut q = e + 4;
                for field in [&mut size, &mut csize, &mut header] {
                    if *field == 0xFFFF_FFFF {
                        ensure!(q + 8 <= e + 4 + sz, "entry {name}: short zip64 extra field");
                        *field = le64(extra, q);
                        q += 8;
                    }
                }
            }
            e += 4 + sz;
        }
        ensure!(
            method == 0,
            "entry {name}: compressed (method {method}); torch.save writes stored entries only"
        );
        ensure!(
            csize == size,
            "entry {name}: stored sizes disagree ({csize} vs {size})"
        );
        ensure!(
            header.checked_add(30 + size).is_some_and(|end| end <= len),
            "entry {name}: declares {size} bytes at offset {header}, past the end of the {len}-byte file"
        );
        if i == 0 {
            first = name.clone();
        }
        ensure!(
            entries
                .insert(name.clone(), Entry { crc, size, header })
                .is_none(),
            "duplicate zip entry {name}"
        );
        p += 46 + n + m + k;
    }
    Ok(Zip {
        file,
        entries,
        first,
    })
}

impl<'a> Zip<'a> {
    /// An entry's data (located through its local header) and its CRC-32, not yet checked.
    fn data(&self, name: &str) -> Result<(&'a [u8], u32)> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| anyhow!("missing zip entry {name}"))?;
        let h = bytes_at(self.file, e.header, 30, name)?;
        ensure!(
            h[..4] == *b"PK\x03\x04",
            "entry {name}: bad local header signature at offset {}",
            e.header
        );
        let start = e.header + 30 + le16(h, 26) + le16(h, 28);
        Ok((bytes_at(self.file, start, e.size, name)?, e.crc))
    }

    fn read(&self, name: &str) -> Result<&'a [u8]> {
        let (data, crc) = self.data(name)?;
        ensure!(
            crc32fast::hash(data) == crc,
            "entry {name}: CRC-32 mismatch (corrupt file)"
        );
        Ok(data)
    }
}

/// A tensor allocated (not zero-filled) while the pickle is read, filled from the file after;
/// or (`dst: None`) a view of the map, only checked.
struct Fill<'a> {
    name: String,
    src: &'a [u8],
    dst: Option<Tensor>,
    kind: Kind,
    crc: Option<u32>,
    big_endian: bool,
}

/// How storages come out of the map: copied into owned tensors (the map's pages dropped once
/// copied), or as views of a private map at this address, which outlives them.
enum Mode<'m> {
    Copy(Option<&'m Mmap>),
    View(*mut u8),
}

/// Copies every storage from the map into its tensor, in [`CHUNK`]s over the rayon threads.
/// Checks the zip's CRC-32 of each (torch.load does not: its miniz reader is built without the
/// check, and `mmap=True` never reads the data; a flipped bit is refused here), byte-swaps
/// big-endian files and refuses bools other than 0/1. Each chunk's pages are dropped from the
/// map once copied, so the process holds the file's bytes once (in the tensors), not twice.
fn fill(map: &[u8], fills: &[Fill], drop_pages: Option<&Mmap>) -> Result<()> {
    struct Job {
        fill: usize,
        src: (usize, usize), // offset into the map, length
        dst: Option<usize>,  // address in the tensor's buffer (None: only checked)
        elt: usize,          // byte-swapped in groups of `elt` (1: left as is)
        crc: bool,
        bool: bool,
    }
    let mut jobs = vec![];
    for (i, f) in fills.iter().enumerate() {
        let kind = f.kind;
        let (at, dst) = (
            f.src.as_ptr() as usize - map.as_ptr() as usize,
            f.dst.as_ref().map(|t| t.data_ptr() as usize),
        );
        jobs.extend((0..f.src.len()).step_by(CHUNK).map(|o| Job {
            fill: i,
            src: (at + o, CHUNK.min(f.src.len() - o)),
            dst: dst.map(|d| d + o),
            elt: if f.big_endian {
                kind.elt_size_in_bytes()
            } else {
                1
            },
            crc: f.crc.is_some(),
            bool: kind == Kind::Bool,
        }));
    }
    let hashes: Vec<(crc32fast::Hasher, bool)> = jobs
        .par_iter()
        .map(|j| {
            let src = &map[j.src.0..j.src.0 + j.src.1];
            let mut h = crc32fast::Hasher::new();
            let Some(dst) = j.dst else {
                if j.crc {
                    h.update(src);
                }
                return (h, true);
            };
            // SAFETY: `dst` points into a fresh contiguous CPU tensor of `fills[j.fill]`, alive
            // for this whole function; the jobs cover disjoint ranges of it, within its size
            // (a storage's tensor holds exactly its entry's bytes, checked when it is made).
            let dst = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, j.src.1) };
            dst.copy_from_slice(src);
            if j.crc {
                h.update(dst);
            }
            if let Some(m) = drop_pages {
                advise_dont_need(m, j.src.0, j.src.1);
            }
            if j.elt > 1 {
                dst.chunks_exact_mut(j.elt).for_each(|c| c.reverse());
            }
            (h, !j.bool || dst.iter().all(|&b| b <= 1))
        })
        .collect();
    let mut jobs = jobs.iter().zip(hashes).peekable();
    for (i, f) in fills.iter().enumerate() {
        let mut crc = crc32fast::Hasher::new();
        while let Some((_, (h, bools_ok))) = jobs.next_if(|(j, _)| j.fill == i) {
            ensure!(bools_ok, "storage {}: bool values other than 0/1", f.name);
            crc.combine(&h);
        }
        if let Some(want) = f.crc {
            ensure!(
                crc.finalize() == want,
                "entry {}: CRC-32 mismatch (corrupt file)",
                f.name
            );
        }
    }
    Ok(())
}

/// Drops the map's whole pages within `len` bytes at `offset` from this process (the page
/// cache keeps them): a read-only shared file map reads them back from the file if touched.
fn advise_dont_need(map: &Mmap, offset: usize, len: usize) {
    const PAGE: usize = 4096; // the map starts on a page; a larger page size only drops less
    let (start, end) = (offset.next_multiple_of(PAGE), (offset + len) & !(PAGE - 1));
    if end > start {
        // SAFETY: MADV_DONTNEED on a shared read-only file mapping only unmaps pages; the
        // bytes stay those of the file. Advice only: a failure changes nothing.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }
}

fn read_torch_zip(map: &[u8], mode: Mode) -> Result<Value> {
    let zip = read_zip(map)?;
    // torch's reader: the archive name is the first entry's directory.
    let prefix = zip.first.split('/').next().unwrap_or("").to_string();
    let pkl = format!("{prefix}/data.pkl");
    if !zip.entries.contains_key(&pkl) {
        let mut names: Vec<&String> = zip.entries.keys().collect();
        names.sort();
        names.truncate(10);
        bail!("not a torch.save archive: no {pkl} (entries: {names:?})");
    }
    let big_endian = match zip.entries.contains_key(&format!("{prefix}/byteorder")) {
        true => match zip.read(&format!("{prefix}/byteorder"))? {
            b"little" => false,
            b"big" => true,
            other => bail!("unknown byteorder {:?}", String::from_utf8_lossy(other)),
        },
        false => false,
    };
    let data = zip.read(&pkl)?;
    let mut storages: HashMap<String, (Kind, Tensor)> = HashMap::new();
    let mut fills = vec![];
    let mut persistent_load = |pid: Value| -> Result<Value> {
        let (class, key, numel) = match pid.as_list() {
            Some(
                [tag, Value::Object { class, .. }, Value::Str(key), _location, Value::Int(numel)],
            ) if tag.as_str() == Some("storage") => (class.clone(), key.clone(), *numel),
            _ => bail!("unsupported persistent id {pid}"),
        };
        let kind = storage_kind(&class)?;
        if let Some((k, t)) = storages.get(&key) {
            ensure!(
                *k == kind,
                "storage {key} is used as both {k:?} and {kind:?}"
            );
            return Ok(Value::Tensor(t.shallow_clone()));
        }
        let name = format!("{prefix}/data/{key}");
        let (src, crc) = zip.data(&name)?;
        let nbytes = u64::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(kind.elt_size_in_bytes() as u64));
        ensure!(
            nbytes == Some(src.len() as u64),
            "storage {name} claims {numel} elements of {kind:?} but its entry holds {} bytes",
            src.len()
        );
        let elt = kind.elt_size_in_bytes();
        let t = match mode {
            Mode::View(base)
                if numel > 0
                    && !big_endian
                    && kind != Kind::Bool
                    && (src.as_ptr() as usize).is_multiple_of(elt) =>
            {
                // SAFETY: `numel` elements of `kind` are exactly `src`, inside the private map
                // at `base`, which is never unmapped; writable (copy-on-write), aligned.
                unsafe {
                    let at = base.add(src.as_ptr() as usize - map.as_ptr() as usize);
                    Tensor::from_blob(at, &[numel], &[1], kind, Device::Cpu)
                }
            }
            _ => Tensor::f_empty([numel], (kind, Device::Cpu))?,
        };
        let viewed = std::ptr::eq(t.data_ptr() as *const u8, src.as_ptr());
        fills.push(Fill {
            name,
            src,
            dst: (!viewed).then(|| t.shallow_clone()), // a view is only checked
            kind,
            crc: Some(crc),
            big_endian,
        });
        storages.insert(key, (kind, t.shallow_clone()));
        Ok(Value::Tensor(t))
    };
    let value =
        pickle::unpickle(data, &mut persistent_load).with_context(|| format!("in {pkl}"))?;
    let drop_pages = match mode {
        Mode::Copy(m) => m,
        Mode::View(_) => None,
    };
    fill(map, &fills, drop_pages)?;
    Ok(value)
}

/// `torch.save(_use_new_zipfile_serialization=False)`, as `_legacy_load` in
/// torch/serialization.py reads it (its non-tar branch, the one `weights_only=True` takes):
/// five things one after the other: the pickled magic number, protocol version (1001) and
/// sys_info; the pickled object, whose persistent ids are `('storage', storage_type, key,
/// location, numel, view_metadata)`; the pickled list of storage keys; then, for each key in
/// that order, the storage's element count (int64) and its raw little-endian bytes.
fn read_legacy(bytes: &[u8], drop_pages: Option<&Mmap>) -> Result<Value> {
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

/// safetensors: `u64` header length, JSON header, then the raw little-endian data.
fn read_safetensors(map: &[u8], drop_pages: Option<&Mmap>) -> Result<Value> {
    let len = map.len() as u64;
    let n = le64(bytes_at(map, 0, 8, "safetensors header length")?, 0);
    ensure!(
        n <= len - 8 && n <= 100 << 20,
        "safetensors header of {n} bytes in a {len}-byte file"
    );
    let header: serde_json::Value =
        serde_json::from_slice(bytes_at(map, 8, n, "safetensors header")?)
            .context("safetensors header is not valid JSON")?;
    let header = header
        .as_object()
        .ok_or_else(|| anyhow!("safetensors header is not a JSON object"))?;
    let base = 8 + n;
    let mut specs = vec![];
    for (name, spec) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = spec["dtype"].as_str().unwrap_or("");
        let kind = ST_DTYPES
            .iter()
            .find(|(d, _)| *d == dtype)
            .map(|&(_, k)| k)
            .ok_or_else(|| anyhow!("tensor {name}: unsupported dtype {dtype:?}"))?;
        let shape: Vec<i64> = spec["shape"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().and_then(|d| i64::try_from(d).ok()))
                    .collect()
            })
            .ok_or_else(|| anyhow!("tensor {name}: bad shape {}", spec["shape"]))?;
        let offsets: Option<Vec<u64>> = spec["data_offsets"]
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect());
        let (b, e) = match offsets.as_deref() {
            Some(&[b, e]) if b <= e && e <= len - base => (b, e),
            _ => bail!(
                "tensor {name}: data_offsets {} outside the {} data bytes",
                spec["data_offsets"],
                len - base
            ),
        };
        let numel = shape
            .iter()
            .try_fold(1i64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| anyhow!("tensor {name}: shape overflows"))?;
        ensure!(
            (numel as u64).checked_mul(kind.elt_size_in_bytes() as u64) == Some(e - b),
            "tensor {name}: shape {shape:?} of {dtype} needs {} bytes, data_offsets give {}",
            numel as u128 * kind.elt_size_in_bytes() as u128,
            e - b
        );
        specs.push((b, e, name.clone(), kind, shape, numel));
    }
    specs.sort_by_key(|s| s.0);
    let (mut items, mut fills) = (vec![], vec![]);
    for (b, e, name, kind, shape, numel) in specs {
        let t = Tensor::f_empty([numel], (kind, Device::Cpu))?;
        fills.push(Fill {
            src: bytes_at(map, base + b, e - b, &name)?,
            name: format!("tensor {name}"),
            dst: Some(t.shallow_clone()),
            kind,
            crc: None,
            big_endian: false,
        });
        items.push((
            Value::Str(name),
            Value::Tensor(t.f_reshape(shape.as_slice())?),
        ));
    }
    fill(map, &fills, drop_pages)?;
    Ok(Value::Dict(items))
}

// ------------------------------------------------------------------------------------------
// Writing
// ------------------------------------------------------------------------------------------

/// Writes through a temporary file in the same directory, fsyncs, then renames over `path`:
/// the file at `path` is the old complete one or the new complete one, whenever the process is
/// killed. Temporary files a killed writer left for the same `path` are removed first; a failed
/// write removes its own. A full disk is an error naming the file and the space.
pub(crate) fn atomic_write(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("not a file path"))?
        .to_string_lossy();
    let stale = format!(".{name}.tmp");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&stale) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let tmp = dir.join(format!("{stale}{}", std::process::id()));
    let result: Result<()> = (|| {
        let mut w = BufWriter::with_capacity(
            1 << 20,
            File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let written = std::fs::metadata(&tmp).map_or(0, |m| m.len());
        let _ = std::fs::remove_file(&tmp);
        let full = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC))
        });
        if full {
            return Err(e.context(format!(
                "the disk of {} is full: {} needs more than the {written} bytes written, {} bytes \
                 are free (the partial file is removed; nothing was overwritten)",
                dir.display(),
                path.display(),
                free_bytes(&dir).map_or("?".into(), |b| b.to_string()),
            )));
        }
        return Err(e);
    }
    Ok(())
}

/// Bytes available to this user on the file system holding `dir` (`statvfs`).
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: a zeroed statvfs is a valid out-parameter; `c` is a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)] // fsblkcnt_t and c_ulong are u64 on some targets only
    let bytes = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    (r == 0).then_some(bytes)
}

/// A zip writer for stored entries, data aligned to 64 bytes like torch's `PyTorchStreamWriter`.
struct ZipWriter<'a, W: Write> {
    w: &'a mut W,
    pos: u64,
    central: Vec<u8>,
    count: u64,
}

impl<W: Write> ZipWriter<'_, W> {
    fn add(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let size = data.len() as u64;
        let crc = crc32fast::hash(data);
        let big = size >= 0xFFFF_FFFF;
        let mut extra = vec![];
        if big {
            extra.extend_from_slice(&[1, 0, 16, 0]);
            extra.extend_from_slice(&size.to_le_bytes());
            extra.extend_from_slice(&size.to_le_bytes());
        }
        // Padding ("FB" field, as torch) so the data starts at a multiple of 64.
        let unpadded = self.pos + 30 + name.len() as u64 + extra.len() as u64 + 4;
        let pad = (64 - unpadded % 64) % 64;
        extra.extend_from_slice(b"FB");
        extra.extend_from_slice(&(pad as u16).to_le_bytes());
        extra.resize(extra.len() + pad as usize, b'Z');
        let size32 = if big { 0xFFFF_FFFF } else { size as u32 };
        let mut h = vec![];
        h.extend_from_slice(b"PK\x03\x04");
        h.extend_from_slice(&(if big { 45u16 } else { 20 }).to_le_bytes()); // version needed
        h.extend_from_slice(&[0; 8]); // flags, method (stored), time, date
        h.extend_from_slice(&crc.to_le_bytes());
        h.extend_from_slice(&size32.to_le_bytes());
        h.extend_from_slice(&size32.to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        h.extend_from_slice(&extra);
        self.w.write_all(&h)?;
        self.w.write_all(data)?;
        // Central directory record, with zip64 fields where 32 bits do not suffice.
        let far = self.pos >= 0xFFFF_FFFF;
        let mut z64 = vec![];
        if big {
            z64.extend_from_slice(&size.to_le_bytes());
            z64.extend_from_slice(&size.to_le_bytes());
        }
        if far {
            z64.extend_from_slice(&self.pos.to_le_bytes());
        }
        let mut cextra = vec![];
        if !z64.is_empty() {
            cextra.extend_from_slice(&[1, 0]);
            cextra.extend_from_slice(&(z64.len() as u16).to_le_bytes());
            cextra.extend_from_slice(&z64);
        }
        let c = &mut self.central;
        c.extend_from_slice(b"PK\x01\x02");
        c.extend_from_slice(&[45, 3]); // made by: zip 4.5, unix
        c.extend_from_slice(&(if big || far { 45u16 } else { 20 }).to_le_bytes());
        c.extend_from_slice(&[0; 8]);
        c.extend_from_slice(&crc.to_le_bytes());
        c.extend_from_slice(&size32.to_le_bytes());
        c.extend_from_slice(&size32.to_le_bytes());
        c.extend_from_slice(&(name.len() as u16).to_le_bytes());
        c.extend_from_slice(&(cextra.len() as u16).to_le_bytes());
        c.extend_from_slice(&[0; 10]); // comment length, disk, internal and external attributes
        c.extend_from_slice(&(if far { 0xFFFF_FFFF } else { self.pos as u32 }).to_le_bytes());
        c.extend_from_slice(name.as_bytes());
        c.extend_from_slice(&cextra);
        self.pos += h.len() as u64 + size;
        self.count += 1;
        Ok(())
    }

    /// Central directory, zip64 end record and locator (always, as torch), end record.
    fn finish(self) -> Result<()> {
        let (cd_offset, cd_size) = (self.pos, self.central.len() as u64);
        self.w.write_all(&self.central)?;
        let z64_at = cd_offset + cd_size;
        let mut t = vec![];
        t.extend_from_slice(b"PK\x06\x06");
        t.extend_from_slice(&44u64.to_le_bytes());
        t.extend_from_slice(&[45, 3, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        t.extend_from_slice(&self.count.to_le_bytes());
        t.extend_from_slice(&self.count.to_le_bytes());
        t.extend_from_slice(&cd_size.to_le_bytes());
        t.extend_from_slice(&cd_offset.to_le_bytes());
        t.extend_from_slice(b"PK\x06\x07\0\0\0\0");
        t.extend_from_slice(&z64_at.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(b"PK\x05\x06\0\0\0\0");
        let count16 = self.count.min(0xFFFF) as u16;
        t.extend_from_slice(&count16.to_le_bytes());
        t.extend_from_slice(&count16.to_le_bytes());
        t.extend_from_slice(&(cd_size.min(0xFFFF_FFFF) as u32).to_le_bytes());
        t.extend_from_slice(&(cd_offset.min(0xFFFF_FFFF) as u32).to_le_bytes());
        t.extend_from_slice(&[0, 0]);
        self.w.write_all(&t)?;
        Ok(())
    }
}

fn collect_tensors<'a>(v: &'a Value, out: &mut Vec<&'a Tensor>) {
    match v {
        Value::Tensor(t) => out.push(t),
        Value::List(items) | Value::Tuple(items) => {
            items.iter().for_each(|x| collect_tensors(x, out))
        }
        Value::Dict(items) => items.iter().for_each(|(k, x)| {
            collect_tensors(k, out);
            collect_tensors(x, out)
        }),
        Value::Object { args, state, .. } => {
            args.iter().for_each(|x| collect_tensors(x, out));
            if let Some(s) = state {
                collect_tensors(s, out);
            }
        }
        _ => {}
    }
}

/// One storage to write: its first `numel` elements of `kind`; `base` is any tensor on it.
struct Storage<'a> {
    base: &'a Tensor,
    kind: Kind,
    numel: i64,
}

type Plan<'a> = (Vec<Storage<'a>>, Vec<(usize, i64)>);

/// One saved storage per libtorch storage, so that views keep sharing memory in Python as
/// here, with their offsets and strides. Returns the storages and, for each tensor, (storage
/// index, storage offset).
fn plan_storages<'a>(tensors: &[&'a Tensor]) -> Result<Plan<'a>> {
    let mut storages: Vec<Storage> = vec![];
    let mut by_base: HashMap<(String, usize), usize> = HashMap::new();
    let mut place = vec![];
    for t in tensors {
        ensure!(
            !t.is_sparse() && !t.is_mkldnn(),
            "cannot save sparse or mkldnn tensors"
        );
        let kind = t.kind();
        storage_type(kind)?;
        let (size, stride) = (t.size(), t.stride());
        if t.numel() == 0 {
            place.push((storages.len(), 0));
            storages.push(Storage {
                base: t,
                kind,
                numel: 0,
            });
            continue;
        }
        ensure!(
            stride.iter().all(|&s| s >= 0),
            "cannot save a tensor with negative strides {stride:?}"
        );
        // A one-element view at storage offset 0 points at the start of the storage.
        let start = t.f_as_strided([1], [1], 0)?.data_ptr() as usize;
        let elt = kind.elt_size_in_bytes();
        let offset = ((t.data_ptr() as usize - start) / elt) as i64;
        let end = offset
            + 1
            + size
                .iter()
                .zip(&stride)
                .map(|(&n, &s)| (n - 1) * s)
                .sum::<i64>();
        let i = *by_base
            .entry((format!("{:?}", t.device()), start))
            .or_insert_with(|| {
                storages.push(Storage {
                    base: t,
                    kind,
                    numel: 0,
                });
                storages.len() - 1
            });
        let s = &mut storages[i];
        ensure!(
            s.kind == kind,
            "cannot save tensors that view one storage as both {:?} and {kind:?}",
            s.kind
        );
        s.numel = s.numel.max(end);
        place.push((i, offset));
    }
    Ok((storages, place))
}

fn write_torch_zip<W: Write>(w: &mut W, path: &Path, value: &Value) -> Result<()> {
    let mut tensors = vec![];
    collect_tensors(value, &mut tensors);
    let (storages, place) = plan_storages(&tensors)?;
    let mut next = 0;
    let pkl = pickle::pickle(value, &mut |t: &Tensor| {
        let (s, offset) = *place
            .get(next)
            .ok_or_else(|| anyhow!("tensor count changed while saving"))?;
        next += 1;
        let storage = &storages[s];
        Ok(TensorRef {
            storage_type: storage_type(t.kind())?,
            key: s.to_string(),
            numel: storage.numel,
            offset,
            size: t.size(),
            stride: if t.numel() == 0 {
                vec![1; t.dim()]
            } else {
                t.stride()
            },
            requires_grad: t.requires_grad(),
        })
    })?;
    // torch names the archive after the file.
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = if !stem.is_empty()
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        stem
    } else {
        "archive".into()
    };
    let mut zip = ZipWriter {
        w,
        pos: 0,
        central: vec![],
        count: 0,
    };
    zip.add(&format!("{prefix}/data.pkl"), &pkl)?;
    zip.add(&format!("{prefix}/.format_version"), b"1")?;
    zip.add(&format!("{prefix}/.storage_alignment"), b"64")?;
    zip.add(&format!("{prefix}/byteorder"), b"little")?;
    for (key, s) in storages.iter().enumerate() {
        let bytes = storage_bytes(s)?;
        // SAFETY: `bytes` is a contiguous CPU tensor of `numel` elements, alive for the call.
        let data = unsafe {
            std::slice::from_raw_parts(
                bytes.data_ptr() as *const u8,
                s.numel as usize * s.kind.elt_size_in_bytes(),
            )
        };
        zip.add(
            &format!("{prefix}/data/{key}"),
            if s.numel == 0 { &[] } else { data },
        )?;
    }
    zip.add(&format!("{prefix}/version"), b"3\n")?;
    zip.finish()
}

/// The storage's first `numel` elements as one contiguous CPU tensor (a view on the CPU).
fn storage_bytes(s: &Storage) -> Result<Tensor> {
    if s.numel == 0 {
        return Ok(Tensor::f_empty([0], (s.kind, Device::Cpu))?);
    }
    let flat = s.base.f_as_strided([s.numel], [1], 0)?;
    Ok(flat.f_to_device(Device::Cpu)?.f_contiguous()?)
}

fn write_safetensors<W: Write>(w: &mut W, sd: &[(String, Tensor)]) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0u64;
    for (name, t) in sd {
        let kind = t.kind();
        let dtype = ST_DTYPES
            .iter()
            .find(|(_, k)| *k == kind)
            .map(|&(d, _)| d)
            .ok_or_else(|| anyhow!("tensor {name}: cannot save kind {kind:?}"))?;
        let nbytes = (t.numel() * kind.elt_size_in_bytes()) as u64;
        ensure!(header.insert(name.clone(), serde_json::json!({"dtype": dtype, "shape": t.size(), "data_offsets": [offset, offset + nbytes]})).is_none(), "duplicate tensor name {name}");
        offset += nbytes;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header))?;
    json.resize(json.len().div_ceil(8) * 8, b' ');
    w.write_all(&(json.len() as u64).to_le_bytes())?;
    w.write_all(&json)?;
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
