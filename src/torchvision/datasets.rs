//! torchvision.datasets: `ImageFolder` (datasets/folder.py: same class order, same sample
//! order), `pil_loader` (`Image.open(f).convert('RGB')`, with the same pixels as Pillow) and
//! `FashionMNIST` (datasets/mnist.py, from the IDX files); and [`ImageSource`], the dataset
//! the data loaders read, which they implement.
use anyhow::{bail, Context, Result};
use image::RgbImage;
use std::path::{Path, PathBuf};

/// torchvision's IMG_EXTENSIONS, matched case-insensitively.
pub const IMG_EXTENSIONS: [&str; 9] = [
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
];

/// Decode an image file to 8-bit RGB as `Image.open(path).convert('RGB')` does. JPEGs go
/// through libjpeg-turbo (Pillow's decoder, so the pixels are identical); other formats through
/// the image crate (lossless formats decode identically; alpha is dropped as Pillow drops it).
pub fn pil_loader(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading image {}", path.display()))?;
    decode(&bytes).with_context(|| format!("decoding image {}", path.display()))
}

/// [`pil_loader`] on bytes already in memory.
pub fn decode(bytes: &[u8]) -> Result<RgbImage> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return decode_jpeg(bytes);
    }
    Ok(image::load_from_memory(bytes)?.to_rgb8())
}

/// A JPEG as Pillow's JpegImagePlugin + `convert('RGB')` gives it, through the same
/// libjpeg-turbo. Like Pillow: a truncated file is an error ("image file is truncated"), other
/// libjpeg warnings (corrupt data it decodes through) are not; CMYK and YCCK JPEGs are read as
/// Adobe's inverted CMYK (`rawmode = "CMYK;I"`) and converted with Pillow's `cmyk2rgb`.
fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage> {
    Ok(Jpeg::open(bytes)?.decode(None)?.0)
}

/// A JPEG whose header libjpeg-turbo has read: its size is known before any pixel is decoded,
/// and a part of it can be decoded alone ([`Jpeg::decode`]).
pub struct Jpeg<'a> {
    handle: JpegHandle,
    bytes: &'a [u8],
    pub width: u32,
    pub height: u32,
    /// the iMCU (width, height): 8 or 16 pixels with chroma subsampling
    imcu: Option<(u32, u32)>,
    cmyk: bool,
}

/// Pillow's `Image.MAX_IMAGE_PIXELS`: twice as many pixels raise `DecompressionBombError`.
pub const MAX_IMAGE_PIXELS: u64 = 89_478_485;

/// Whether a JPEG holds its end-of-image marker (FF D9) after the first start-of-scan: the
/// segments before the scan are skipped by their lengths (an EXIF thumbnail holds its own FF
/// D9; junk between segments is skipped to the next 0xFF, as libjpeg does); in
/// entropy-coded data a 0xFF byte is followed by 00 or a marker, never a stray D9.
fn has_eoi(bytes: &[u8]) -> bool {
    let mut p = 2; // after SOI
    while p + 4 <= bytes.len() {
        if bytes[p] != 0xFF {
            p += 1; // junk before a marker, skipped as libjpeg does (with a warning)
            continue;
        }
        let marker = bytes[p + 1];
        if marker == 0xFF {
            p += 1; // fill byte
            continue;
        }
        if marker == 0xDA {
            return bytes[p..].windows(2).any(|w| w == [0xFF, 0xD9]);
        }
        p += 2 + u16::from_be_bytes([bytes[p + 2], bytes[p + 3]]) as usize;
    }
    false
}

struct JpegHandle(turbojpeg::raw::tjhandle);

impl Drop for JpegHandle {
    fn drop(&mut self) {
        unsafe { turbojpeg::raw::tj3Destroy(self.0) }
    }
}

// The handle is only used by the Jpeg that owns it (TurboJPEG handles may change threads).
unsafe impl Send for JpegHandle {}

impl<'a> Jpeg<'a> {
    pub fn open(bytes: &'a [u8]) -> Result<Self> {
        use turbojpeg::raw;
        let handle = JpegHandle(unsafe { raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as i32) });
        if handle.0.is_null() {
            bail!("libjpeg-turbo: cannot create a decompressor");
        }
        let mut jpeg = Jpeg {
            handle,
            bytes,
            width: 0,
            height: 0,
            imcu: None,
            cmyk: false,
        };
        let len = bytes.len() as raw::size_t;
        jpeg.check(unsafe { raw::tj3DecompressHeader(jpeg.handle.0, bytes.as_ptr(), len) })?;
        let param = |p: raw::TJPARAM| unsafe { raw::tj3Get(jpeg.handle.0, p as i32) };
        let (w, h) = (
            param(raw::TJPARAM_TJPARAM_JPEGWIDTH),
            param(raw::TJPARAM_TJPARAM_JPEGHEIGHT),
        );
        if w <= 0 || h <= 0 {
            bail!("libjpeg-turbo: bad image size {w}x{h}");
        }
        if w as u64 * h as u64 > 2 * MAX_IMAGE_PIXELS {
            bail!(
                "image size {w}x{h} exceeds the limit of {} pixels (Pillow: \
                 DecompressionBombError, could be decompression bomb DOS attack)",
                2 * MAX_IMAGE_PIXELS
            );
        }
        // A region decode stops after the box's rows: a file cut short below them would go
        // unnoticed, where Pillow (which decodes it all) raises "image file is truncated".
        if !has_eoi(bytes) {
            bail!("no end-of-image marker (Pillow: image file is truncated)");
        }
        let cs = param(raw::TJPARAM_TJPARAM_COLORSPACE) as raw::TJCS;
        let subsamp = param(raw::TJPARAM_TJPARAM_SUBSAMP);
        (jpeg.width, jpeg.height) = (w as u32, h as u32);
        jpeg.cmyk = cs == raw::TJCS_TJCS_CMYK || cs == raw::TJCS_TJCS_YCCK;
        // turbojpeg.h's tjMCUWidth / tjMCUHeight (static in the header, not exported), indexed
        // by TJSAMP: 444, 422, 420, GRAY, 440, 411, 441
        const IMCU: [(u32, u32); 7] =
            [(8, 8), (16, 8), (16, 16), (8, 8), (8, 16), (32, 8), (8, 32)];
        jpeg.imcu = usize::try_from(subsamp)
            .ok()
            .and_then(|s| IMCU.get(s).copied());
        Ok(jpeg)
    }

    /// Fatal errors and truncation fail; other warnings leave a usable result, as in Pillow.
    fn check(&self, r: i32) -> Result<()> {
        use turbojpeg::raw;
        if r == 0 {
            return Ok(());
        }
        let msg = unsafe { std::ffi::CStr::from_ptr(raw::tj3GetErrorStr(self.handle.0)) };
        let msg = msg.to_string_lossy();
        let warning =
            unsafe { raw::tj3GetErrorCode(self.handle.0) } == raw::TJERR_TJERR_WARNING as i32;
        if !warning || msg.contains("Premature end of JPEG file") {
            bail!("libjpeg-turbo: {msg} (Pillow: image file is truncated or corrupt)");
        }
        Ok(())
    }

    /// The pixels of the whole image, or of an area holding the box (left, top, width, height):
    /// libjpeg-turbo decodes only the iMCU columns and rows it needs (`tj3SetCroppingRegion`).
    /// The box's pixels are those of the whole image (tests/pipeline/loader.rs); the area has
    /// one iMCU of margin on each side because its outermost pixels may not be (the fancy chroma
    /// upsampling sees an edge there). Returns the pixels and the area's top-left corner.
    pub fn decode(&self, bx: Option<(u32, u32, u32, u32)>) -> Result<(RgbImage, (u32, u32))> {
        self.decode_scaled(bx, 1)
    }

    /// [`decode`](Self::decode) at 1/`denom` of the size (1, 2, 4 or 8), scaled in the DCT
    /// domain (`tj3SetScalingFactor`): not Pillow's pixels, the `--fast_decode` of the loader.
    /// The box is given in the whole image's coordinates, the returned corner in the scaled
    /// image's.
    pub fn decode_scaled(
        &self,
        bx: Option<(u32, u32, u32, u32)>,
        denom: u32,
    ) -> Result<(RgbImage, (u32, u32))> {
        use turbojpeg::raw;
        let (w, h) = (self.width.div_ceil(denom), self.height.div_ceil(denom));
        let area = match (bx, self.imcu) {
            (Some((x, y, bw, bh)), Some((mw, mh)))
                if x + bw <= self.width && y + bh <= self.height =>
            {
                let (mw, mh) = (mw.div_ceil(denom), mh.div_ceil(denom));
                let (x, y) = (x / denom, y / denom);
                let (bw, bh) = (bw.div_ceil(denom), bh.div_ceil(denom));
                let x0 = (x / mw).saturating_sub(1) * mw;
                let y0 = y.saturating_sub(mh);
                let (x1, y1) = ((x + bw + mw).min(w), (y + bh + mh).min(h));
                (x0, y0, x1 - x0, y1 - y0)
            }
            _ => (0, 0, w, h),
        };
        if denom != 1 {
            let factor = raw::tjscalingfactor {
                num: 1,
                denom: denom as i32,
            };
            self.check(unsafe { raw::tj3SetScalingFactor(self.handle.0, factor) })?;
        }
        let region = raw::tjregion {
            x: area.0 as i32,
            y: area.1 as i32,
            w: area.2 as i32,
            h: area.3 as i32,
        };
        if area != (0, 0, w, h) {
            self.check(unsafe { raw::tj3SetCroppingRegion(self.handle.0, region) })?;
        }
        let (format, channels) = if self.cmyk {
            (raw::TJPF_TJPF_CMYK, 4)
        } else {
            (raw::TJPF_TJPF_RGB, 3)
        };
        let mut px = vec![0u8; area.2 as usize * area.3 as usize * channels];
        let len = self.bytes.len() as raw::size_t;
        self.check(unsafe {
            raw::tj3Decompress8(
                self.handle.0,
                self.bytes.as_ptr(),
                len,
                px.as_mut_ptr(),
                0,
                format,
            )
        })?;
        if self.cmyk {
            // CMYK;I then cmyk2rgb: nk = 255 - (255 - k); out = nk - MULDIV255(255 - c, nk)
            let muldiv255 = |a: i32, b: i32| {
                let t = a * b + 128;
                ((t >> 8) + t) >> 8
            };
            px = px
                .chunks_exact(4)
                .flat_map(|p| {
                    let nk = p[3] as i32;
                    [0, 1, 2].map(|c| (nk - muldiv255(255 - p[c] as i32, nk)).clamp(0, 255) as u8)
                })
                .collect();
        }
        let img = RgbImage::from_raw(area.2, area.3, px).expect("w*h*3 pixels");
        Ok((img, (area.0, area.1)))
    }
}

fn has_image_extension(name: &str) -> bool {
    let lower = name.to_lowercase();
    IMG_EXTENSIONS.iter().any(|e| lower.ends_with(e))
}

/// `datasets.ImageFolder(root)`: one class per sub-directory, sorted by name; samples listed as
/// `make_dataset` does (directories walked in sorted path order, files sorted within each).
#[derive(Debug, Clone)]
pub struct ImageFolder {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub samples: Vec<(PathBuf, i64)>,
}

impl ImageFolder {
    pub fn new(root: &Path) -> Result<Self> {
        let mut classes = Vec::new();
        let entries = std::fs::read_dir(root)
            .with_context(|| format!("ImageFolder: cannot read {}", root.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", root.display()))?;
            if entry.path().is_dir() {
                classes.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        classes.sort();
        if classes.is_empty() {
            bail!("Couldn't find any class folder in {}", root.display());
        }
        let mut samples = Vec::new();
        for (idx, class) in classes.iter().enumerate() {
            let mut dirs = Vec::new();
            walk(&root.join(class), &mut dirs)?;
            dirs.sort_by(|a, b| a.0.cmp(&b.0));
            let before = samples.len();
            for (dir, mut files) in dirs {
                files.sort();
                for f in files.into_iter().filter(|f| has_image_extension(f)) {
                    samples.push((PathBuf::from(&dir).join(f), idx as i64));
                }
            }
            if samples.len() == before {
                bail!(
                    "Found no valid file for the class {class} in {}. Supported extensions are: {}",
                    root.display(),
                    IMG_EXTENSIONS.join(", ")
                );
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            classes,
            samples,
        })
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// `os.walk(dir, followlinks=True)`: (directory path as a string, file names) for every directory.
fn walk(dir: &Path, out: &mut Vec<(String, Vec<String>)>) -> Result<()> {
    let mut files = Vec::new();
    let mut subdirs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        if path.is_dir() {
            subdirs.push(path);
        } else {
            files.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    out.push((dir.to_string_lossy().into_owned(), files));
    for sub in subdirs {
        walk(&sub, out)?;
    }
    Ok(())
}

impl std::fmt::Display for ImageFolder {
    /// As `print(dataset)` in build_dataset.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Dataset ImageFolder\n    Number of datapoints: {}\n    Root location: {}",
            self.len(),
            self.root.display()
        )
    }
}

// --------------------------------------------------------
// torchvision.datasets.FashionMNIST, read from the IDX files (gzip-compressed or not).

/// Where Debian's `dataset-fashion-mnist` installs the IDX files (tools/setup.sh installs it).
pub const FASHION_MNIST_ROOT: &str = "/usr/share/datasets/fashion-mnist";

/// `datasets.FashionMNIST(root, train)`: 28×28 grey images and their labels in file order.
#[derive(Debug, Clone)]
pub struct FashionMNIST {
    pub data: Vec<u8>, // [N, rows, cols]
    pub targets: Vec<i64>,
    pub rows: u32,
    pub cols: u32,
}

impl FashionMNIST {
    pub fn new(root: &Path, train: bool) -> Result<Self> {
        let prefix = if train { "train" } else { "t10k" };
        let images = read_idx(root, &format!("{prefix}-images-idx3-ubyte"))?;
        let labels = read_idx(root, &format!("{prefix}-labels-idx1-ubyte"))?;
        let (dims, data) = images;
        let (ldims, targets) = labels;
        if dims.len() != 3 || ldims.len() != 1 || dims[0] != ldims[0] {
            bail!(
                "FashionMNIST in {}: image dims {dims:?} and label dims {ldims:?} do not match",
                root.display()
            );
        }
        if let Some(t) = targets.iter().find(|&&t| t >= 10) {
            bail!(
                "FashionMNIST in {}: label {t} in {prefix}-labels-idx1-ubyte, the 10 classes are 0..=9",
                root.display()
            );
        }
        Ok(FashionMNIST {
            data,
            targets: targets.into_iter().map(i64::from).collect(),
            rows: dims[1],
            cols: dims[2],
        })
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Image `index` as `Image.fromarray(img, mode='L').convert('RGB')`: grey in 3 channels.
    pub fn rgb(&self, index: usize) -> RgbImage {
        let n = (self.rows * self.cols) as usize;
        let px = &self.data[index * n..(index + 1) * n];
        RgbImage::from_fn(self.cols, self.rows, |x, y| {
            let v = px[(y * self.cols + x) as usize];
            image::Rgb([v, v, v])
        })
    }
}

/// An IDX file of unsigned bytes (`NAME` or `NAME.gz` in `root`): its dims and data.
fn read_idx(root: &Path, name: &str) -> Result<(Vec<u32>, Vec<u8>)> {
    use std::io::Read;
    let plain = root.join(name);
    let gz = root.join(format!("{name}.gz"));
    let (path, bytes) = if plain.exists() {
        let b = std::fs::read(&plain).with_context(|| format!("reading {}", plain.display()))?;
        (plain, b)
    } else {
        let f = std::fs::File::open(&gz).with_context(|| {
            format!(
                "FashionMNIST: neither {} nor {} exists (install dataset-fashion-mnist: tools/setup.sh)",
                plain.display(),
                gz.display()
            )
        })?;
        let mut b = Vec::new();
        flate2::read::GzDecoder::new(f)
            .read_to_end(&mut b)
            .with_context(|| format!("decompressing {}", gz.display()))?;
        (gz, b)
    };
    parse_idx(&bytes).with_context(|| path.display().to_string())
}

/// The dims and data of an IDX file of unsigned bytes (magic `00 00 08 ndim`, big-endian u32
/// dims, then exactly the product of the dims in bytes).
pub fn parse_idx(bytes: &[u8]) -> Result<(Vec<u32>, Vec<u8>)> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        bail!("not an IDX file of unsigned bytes");
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    let Some(dims) = bytes.get(4..header) else {
        bail!("truncated IDX header ({ndim} dims)");
    };
    let dims: Vec<u32> = dims
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
        .collect();
    let numel = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d as usize));
    let data = &bytes[header..];
    if numel != Some(data.len()) {
        bail!(
            "IDX dims {dims:?} need {} bytes of data, the file has {}",
            numel.map_or("more than 2^64".into(), |n| n.to_string()),
            data.len()
        );
    }
    Ok((dims, data.to_vec()))
}

// ------------------------------------------------------------------------------------------
// The datasets as the data loaders see them (torch.utils.data.Dataset before its transform)
// ------------------------------------------------------------------------------------------

/// A crop box as torchvision's `get_params` return it: (top, left, height, width).
pub type CropBox = (i64, i64, i64, i64);

/// A dataset before its transform: `len` images, loaded by index.
pub trait ImageSource: Send + Sync {
    fn len(&self) -> usize;
    fn load(&self, index: usize) -> Result<RgbImage>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Image `index` for a crop whose box `params(width, height)` draws from its size: the
    /// image, or an area of it holding the box with the same pixels, and the box in the
    /// returned image's coordinates. By default the whole image.
    ///
    /// `fast: Some(size)` allows a smaller image (JPEG DCT-domain scaling) as long as the box
    /// keeps at least `size` pixels a side: not Pillow's pixels.
    fn load_box(
        &self,
        index: usize,
        params: &mut dyn FnMut(u32, u32) -> CropBox,
        fast: Option<u32>,
    ) -> Result<(RgbImage, CropBox)> {
        let _ = fast;
        let img = self.load(index)?;
        let bx = params(img.width(), img.height());
        Ok((img, bx))
    }
}

impl ImageSource for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn load(&self, index: usize) -> Result<RgbImage> {
        pil_loader(&self.samples[index].0)
    }
    /// JPEGs: the box is drawn from the header's size and only the area around it is decoded.
    fn load_box(
        &self,
        index: usize,
        params: &mut dyn FnMut(u32, u32) -> CropBox,
        fast: Option<u32>,
    ) -> Result<(RgbImage, CropBox)> {
        let path = &self.samples[index].0;
        let bytes =
            std::fs::read(path).with_context(|| format!("reading image {}", path.display()))?;
        decode_box(&bytes, params, fast)
            .with_context(|| format!("decoding image {}", path.display()))
    }
}

/// [`ImageSource::load_box`] of an image file's bytes: a JPEG's box is drawn from the header's
/// size and only the area around it is decoded (at 1/2, 1/4 or 1/8 with `fast`); other formats
/// are decoded whole.
pub fn decode_box(
    bytes: &[u8],
    params: &mut dyn FnMut(u32, u32) -> CropBox,
    fast: Option<u32>,
) -> Result<(RgbImage, CropBox)> {
    if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let img = decode(bytes)?;
        let bx = params(img.width(), img.height());
        return Ok((img, bx));
    }
    let jpeg = Jpeg::open(bytes)?;
    let (i, j, h, w) = params(jpeg.width, jpeg.height);
    let area = [j, i, w, h].map(|v| u32::try_from(v).ok());
    let area = match area {
        [Some(x), Some(y), Some(w), Some(h)] => Some((x, y, w, h)),
        _ => None, // not inside the image: decode it whole
    };
    let short = h.min(w);
    let denom = match fast {
        Some(size) if area.is_some() => [8, 4, 2]
            .into_iter()
            .find(|&d| short / d >= size as i64)
            .unwrap_or(1),
        _ => 1,
    };
    let (img, (x0, y0)) = jpeg.decode_scaled(area, denom as u32)?;
    if denom == 1 {
        return Ok((img, (i - y0 as i64, j - x0 as i64, h, w)));
    }
    // the box in the scaled area, its size rounded and kept inside
    let (top, left) = (i / denom - y0 as i64, j / denom - x0 as i64);
    let bh = ((h as f64 / denom as f64).round() as i64).clamp(1, img.height() as i64 - top);
    let bw = ((w as f64 / denom as f64).round() as i64).clamp(1, img.width() as i64 - left);
    Ok((img, (top, left, bh, bw)))
}

impl ImageSource for FashionMNIST {
    fn len(&self) -> usize {
        self.targets.len()
    }
    fn load(&self, index: usize) -> Result<RgbImage> {
        Ok(self.rgb(index))
    }
}
