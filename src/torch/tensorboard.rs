//! `torch.utils.tensorboard.SummaryWriter`, the scalar part the official scripts use
//! (`add_scalar(tag, value, step)`, `flush()`): an `events.out.tfevents.*` file that TensorBoard
//! reads.
//!
//! The file is a TFRecord stream (tensorflow/core/lib/io/record_writer.cc): each record is
//! `u64 length (LE) | masked crc32c(length) | data | masked crc32c(data)`, and each `data` an
//! `Event` protobuf (tensorboard/compat/proto/event.proto, summary.proto). The first event holds
//! `file_version: "brain.Event:2"`, the others one `Summary.Value{tag, simple_value}` each, as
//! torch's `add_scalar` writes them.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use prost::Message;

use crate::torch::distributed::netif;

// --------------------------------------------------------
// event.proto / summary.proto, the fields a scalar uses

/// `message Event { double wall_time = 1; int64 step = 2; oneof what {...} }`
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    /// `string file_version = 3`
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// `Summary summary = 5`
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `message Summary { repeated Value value = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// `Summary.Value { string tag = 1; oneof value { float simple_value = 2; ... } }`; a oneof
/// member is written even when it is 0 (a warm-up lr of 0 is a scalar, not a missing one).
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(oneof = "SummaryValueKind", tags = "2")]
    value: Option<SummaryValueKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum SummaryValueKind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
}

// --------------------------------------------------------
// TFRecord framing

/// tensorflow/core/lib/hash/crc32c.h `Mask`: the CRC rotated right by 15 bits plus a constant.
fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the data, the data's masked CRC.
fn tf_record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0., |d| d.as_secs_f64())
}

/// `SummaryWriter(log_dir=...)`. Each record reaches the file in one `write` as it is added
/// (torch queues up to 10 and writes them every 120 s), so a run killed mid-epoch leaves every
/// scalar logged so far, and at worst a truncated last record, which readers skip.
pub struct SummaryWriter {
    pub log_dir: PathBuf,
    path: PathBuf,
    file: File,
}

impl SummaryWriter {
    /// Creates `log_dir` and `events.out.tfevents.{secs}.{hostname}.{pid}.0` in it (torch's
    /// name), starting with the `brain.Event:2` version record.
    pub fn new(log_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating --log_dir {}", log_dir.display()))?;
        let now = wall_time();
        let name = format!(
            "events.out.tfevents.{:010}.{}.{}.0",
            now as u64,
            netif::hostname(),
            std::process::id()
        );
        let path = log_dir.join(name);
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut writer = SummaryWriter {
            log_dir: log_dir.to_path_buf(),
            path,
            file,
        };
        writer.write_event(Event {
            wall_time: now,
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".into())),
        })?;
        Ok(writer)
    }

    /// The events file this writer appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `add_scalar(tag, scalar_value, global_step)`; the value is stored as float32, as
    /// `Summary.Value.simple_value` is.
    pub fn add_scalar(&mut self, tag: &str, value: f64, step: i64) -> Result<()> {
        self.write_event(Event {
            wall_time: wall_time(),
            step,
            what: Some(What::Summary(Summary {
                value: vec![SummaryValue {
                    tag: tag.into(),
                    value: Some(SummaryValueKind::SimpleValue(value as f32)),
                }],
            })),
        })
    }

    /// `flush()`: the records are already in the file; this also asks the OS to put them on disk.
    pub fn flush(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .with_context(|| format!("flushing {}", self.path.display()))
    }

    fn write_event(&mut self, event: Event) -> Result<()> {
        let record = tf_record(&event.encode_to_vec());
        self.file
            .write_all(&record)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// The official `log_writer`: `SummaryWriter(log_dir=args.log_dir)` when `global_rank == 0`,
/// `None` on the other ranks and (not in the official, which has no way to turn it off) when
/// `--log_dir` is empty.
pub fn main_process_writer(log_dir: &str) -> Result<Option<SummaryWriter>> {
    if log_dir.is_empty() || crate::torch::distributed::get_rank() != 0 {
        return Ok(None);
    }
    SummaryWriter::new(Path::new(log_dir)).map(Some)
}

/// The x-axis of the official training curves: `int((data_iter_step / len(data_loader) + epoch)
/// * 1000)`, which "calibrates different curves when batch size changes".
pub fn epoch_1000x(epoch_f: f64) -> i64 {
    (epoch_f * 1000.) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_mask_like_tensorflow() {
        // the CRC-32C check value (RFC 3720 B.4); the masked values are those of tensorboard's
        // own writer (tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c)
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
        // an empty record: length 0 and its CRC, then the empty data's CRC
        let r = tf_record(b"");
        assert_eq!(&r[..8], &[0; 8]);
        assert_eq!(&r[8..12], &0x0798_0329u32.to_le_bytes());
        assert_eq!(&r[12..], &0xa282_ead8u32.to_le_bytes());
    }

    #[test]
    fn scalar_event_bytes() {
        // Event{step: 1500, summary{value{tag:"lr", simple_value: 0}}}, wall_time 0: the zero
        // value is still written (field 2, fixed32), as the oneof in summary.proto asks
        let e = Event {
            wall_time: 0.,
            step: 1500,
            what: Some(What::Summary(Summary {
                value: vec![SummaryValue {
                    tag: "lr".into(),
                    value: Some(SummaryValueKind::SimpleValue(0.)),
                }],
            })),
        };
        let bytes = e.encode_to_vec();
        let value = [0x0a, 2, b'l', b'r', 0x15, 0, 0, 0, 0];
        let mut expect = vec![0x10, 0xdc, 0x0b, 0x2a, 11, 0x0a, 9];
        expect.extend_from_slice(&value);
        assert_eq!(bytes, expect);
    }

    #[test]
    fn epoch_1000x_truncates() {
        assert_eq!(epoch_1000x(2. + 1. / 3.), 2333);
        assert_eq!(epoch_1000x(0.), 0);
    }
}
