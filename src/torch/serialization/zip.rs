//! `torch.save`'s zip format: stored (uncompressed) entries `ARCHIVE/data.pkl`,
//! `ARCHIVE/data/KEY` (one per storage, aligned to 64 bytes), `byteorder`, `version`, zip64.
//! Hand-written because no zip crate serves: the storages must be read lazily from the memory
//! map (copied into their tensors or viewed in place, never through a read buffer), every
//! offset bounded by the file, and writing needs torch's 64-byte data alignment.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use tch::{Device, Kind, Tensor};

use super::pickle::{self, TensorRef, Value};
use super::{bytes_at, fill, le16, le32, le64, storage_kind, storage_type, Fill, Mode};

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

/// Reads a `torch.save` zip archive (torch/serialization.py `_load`, `weights_only=True`).
pub(super) fn read(map: &[u8], mode: Mode) -> Result<Value> {
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
        let (t, viewed) = mode.tensor(map, src, numel, kind, big_endian)?;
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
    fill(map, &fills, mode.drop_pages())?;
    Ok(value)
}

// ------------------------------------------------------------------------------------------
// Writing
// ------------------------------------------------------------------------------------------

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

/// Writes `value` as `torch.save` does (`_save` with the zip writer of `PyTorchStreamWriter`).
pub(super) fn write<W: Write>(w: &mut W, path: &Path, value: &Value) -> Result<()> {
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
