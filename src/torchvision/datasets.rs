//! torchvision.datasets.folder: `ImageFolder` (same class order, same sample order) and
//! `pil_loader` (`Image.open(f).convert('RGB')`, with the same pixels as Pillow).
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
        match turbojpeg::decompress_image::<image::Rgb<u8>>(bytes) {
            Ok(img) => return Ok(img),
            // CMYK and other colour spaces libjpeg-turbo won't turn into RGB: try the image crate.
            Err(e) => {
                return image::load_from_memory(bytes)
                    .map(|i| i.to_rgb8())
                    .with_context(|| format!("libjpeg-turbo: {e}"));
            }
        }
    }
    Ok(image::load_from_memory(bytes)?.to_rgb8())
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
