//! What `torch.save` / `torch.load(weights_only=True)` (torch/serialization.py) do for the
//! official scripts, without Python: checkpoints in `torch.save`'s zip format (`zip`, read and
//! written), the legacy pre-1.6 format (`legacy`, read), and safetensors (`safetensors`, read and
//! written). The pickles inside are read and written by `pickle`, which executes nothing.
//!
//! The official MAE checkpoints are `{'model': OrderedDict(state_dict)}` (util/misc.py
//! `save_model`); training checkpoints add `optimizer`, `epoch`, `scaler` and
//! `args: argparse.Namespace`, which load here as opaque [`Value::Object`]s.
//!
//! The file is memory-mapped. [`load`] copies storages from the map straight into their
//! tensors' (not zero-filled) buffers by the rayon threads and drops the map's pages once
//! copied (peak memory ≈ file size); [`load_mapped`] makes them copy-on-write views of a private
//! map (nothing copied; for the checkpoint a process keeps, as `mae eval`). Both check every
//! zip entry's CRC-32, which torch.load does not (torch 2.11: a flipped storage byte loads
//! silently, with or without `mmap=True`); it costs one read of the data. Every offset and
//! length in the file is bounded by the file size.

mod legacy;
pub mod pickle;
mod safetensors;
mod zip;

use anyhow::{anyhow, bail, ensure, Context, Result};
use memmap2::{Mmap, MmapOptions};
use rayon::prelude::*;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub use pickle::Value;

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
/// files. Storages misaligned for their dtype, big-endian or bool ones, and legacy-format
/// files, are copied as by [`load`].
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
    atomic_write(path, |w| zip::write(w, path, value))
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
    atomic_write(path, |w| safetensors::write(w, sd))
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
    if views && !matches!(format(&map), Format::Legacy) {
        // SAFETY: as above; private, so writes through the tensors never reach the file.
        let mut private = unsafe { MmapOptions::new().map_copy(&file)? };
        let base = private.as_mut_ptr();
        let value = read_bytes(&private, Mode::View(base))?;
        std::mem::forget(private); // the tensors now point into it, for the process's lifetime
        return Ok(value);
    }
    read_bytes(&map, Mode::Copy(Some(&map)))
}

enum Format {
    Zip,
    Legacy,
    Safetensors,
    Unknown,
}

/// What the magic bytes say.
fn format(bytes: &[u8]) -> Format {
    let magic = &bytes[..bytes.len().min(9)];
    if magic.starts_with(b"PK\x03\x04") || magic.starts_with(b"PK\x05\x06") {
        Format::Zip
    } else if magic.len() >= 2 && magic[0] == 0x80 && magic[1] <= 5 {
        Format::Legacy
    } else if magic.len() == 9 && magic[8] == b'{' {
        Format::Safetensors
    } else {
        Format::Unknown
    }
}

/// A checkpoint from its bytes, told apart by magic bytes: a `torch.save` zip, the legacy
/// format or safetensors.
fn read_bytes(bytes: &[u8], mode: Mode) -> Result<Value> {
    match format(bytes) {
        Format::Zip => zip::read(bytes, mode),
        Format::Legacy => legacy::read(bytes, mode.drop_pages())
            .context("legacy (pre-1.6, non-zip) torch.save format"),
        Format::Safetensors => safetensors::read(bytes, mode),
        Format::Unknown => bail!(
            "not a PyTorch zip checkpoint nor safetensors (starts with {:02x?})",
            &bytes[..bytes.len().min(9)]
        ),
    }
}

/// [`load`] of a checkpoint's bytes (the fuzz targets read them so).
pub fn load_from_bytes(bytes: &[u8]) -> Result<Value> {
    ensure!(!bytes.is_empty(), "empty file");
    read_bytes(bytes, Mode::Copy(None))
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
#[derive(Clone, Copy)]
enum Mode<'m> {
    Copy(Option<&'m Mmap>),
    View(*mut u8),
}

impl<'m> Mode<'m> {
    /// The map whose pages are dropped once copied.
    fn drop_pages(self) -> Option<&'m Mmap> {
        match self {
            Mode::Copy(m) => m,
            Mode::View(_) => None,
        }
    }

    /// A tensor of `numel` elements of `kind` for the bytes `src` of `map`: a view of them in
    /// the private map (`View` mode, little-endian, aligned, not bool), else a fresh
    /// (unfilled) tensor; and whether it is a view.
    fn tensor(
        self,
        map: &[u8],
        src: &[u8],
        numel: i64,
        kind: Kind,
        big_endian: bool,
    ) -> Result<(Tensor, bool)> {
        match self {
            Mode::View(base)
                if numel > 0
                    && !big_endian
                    && kind != Kind::Bool
                    && (src.as_ptr() as usize).is_multiple_of(kind.elt_size_in_bytes()) =>
            {
                // SAFETY: `numel` elements of `kind` are exactly `src`, inside the private map
                // at `base`, which is never unmapped; writable (copy-on-write), aligned.
                let t = unsafe {
                    let at = base.add(src.as_ptr() as usize - map.as_ptr() as usize);
                    Tensor::from_blob(at, &[numel], &[1], kind, tch::Device::Cpu)
                };
                Ok((t, true))
            }
            _ => Ok((Tensor::f_empty([numel], (kind, tch::Device::Cpu))?, false)),
        }
    }
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
