//! What the training scripts take from torch.distributed, on libtorch's own c10d (csrc/c10d.cpp:
//! TCPStore rendezvous, ProcessGroupGloo / ProcessGroupNCCL): util/misc.py's
//! `init_distributed_mode`, the `DistributedDataParallel` wrapper (parameters broadcast from
//! rank 0, gradients averaged in buckets), `DistributedSampler`, and the metric all-reduce of
//! `MetricLogger.synchronize_between_processes`. One process without a launcher is world 1,
//! where every function here is the identity. Which network interface routes to the master
//! (for Gloo and NCCL) is `netif`.

pub mod netif;

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::net::IpAddr;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tch::{nn, Device, Kind, Tensor};

extern "C" {
    fn mae_c10d_last_error() -> *const c_char;
    fn mae_c10d_has_nccl() -> c_int;
    fn mae_c10d_store(
        addr: *const c_char,
        port: c_int,
        world_size: c_int,
        is_server: c_int,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> c_int;
    fn mae_c10d_store_set(store: *mut c_void, key: *const c_char, value: *const c_char) -> c_int;
    fn mae_c10d_store_get_if_set(
        store: *mut c_void,
        key: *const c_char,
        buf: *mut c_char,
        cap: i64,
        len: *mut i64,
    ) -> c_int;
    fn mae_c10d_store_beat(
        store: *mut c_void,
        rank: c_int,
        world_size: c_int,
        counts: *mut i64,
    ) -> c_int;
    fn mae_c10d_store_free(store: *mut c_void);
    #[allow(clippy::too_many_arguments)]
    fn mae_c10d_group(
        store: *mut c_void,
        backend: *const c_char,
        rank: c_int,
        world_size: c_int,
        timeout_ms: i64,
        cuda_device: c_int,
        gloo_host: *const c_char,
        out: *mut *mut c_void,
    ) -> c_int;
    fn mae_c10d_allreduce(group: *mut c_void, tensor: *mut c_void, average: c_int) -> c_int;
    fn mae_c10d_broadcast(group: *mut c_void, tensor: *mut c_void, root: c_int) -> c_int;
    fn mae_c10d_barrier(group: *mut c_void) -> c_int;
    fn mae_c10d_silence_stdout() -> c_int;
}

/// Whether this build has ProcessGroupNCCL (`--features nccl`).
pub fn has_nccl() -> bool {
    unsafe { mae_c10d_has_nccl() != 0 }
}

/// The distributed flags of main_pretrain.py / main_finetune.py / main_linprobe.py, plus the
/// backend and timeout that the official code hard-codes (nccl, torch's 30 min default).
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
#[command(rename_all = "snake_case")]
pub struct DistArgs {
    /// number of distributed processes
    #[arg(long, default_value_t = 1)]
    pub world_size: i64,
    #[arg(long, default_value_t = -1)]
    pub local_rank: i64,
    /// read the rank from mpirun's OMPI_COMM_WORLD_* (also done without this flag when neither
    /// torchrun's nor SLURM's variables are set)
    #[arg(long)]
    pub dist_on_itp: bool,
    /// url used to set up distributed training
    #[arg(long, default_value = "env://")]
    pub dist_url: String,
    /// Not in the official scripts: gloo or nccl (default: nccl on CUDA, gloo on the CPU)
    #[arg(long)]
    pub dist_backend: Option<String>,
    /// Not in the official scripts: seconds a collective or the rendezvous may wait for the
    /// other ranks before this rank stops with an error (torch's default: 1800)
    #[arg(long, default_value_t = 1800.)]
    pub dist_timeout: f64,
}

/// Who this process is: `args.rank`, `args.world_size`, `args.gpu`, `args.distributed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DistInfo {
    pub rank: usize,
    pub world_size: usize,
    pub gpu: usize,
    pub distributed: bool,
}

impl DistInfo {
    pub const SINGLE: DistInfo = DistInfo {
        rank: 0,
        world_size: 1,
        gpu: 0,
        distributed: false,
    };

    /// `torch.cuda.set_device(args.gpu); torch.device(args.device)`: each rank on its GPU.
    pub fn device(&self, device: Device) -> Device {
        match device {
            Device::Cuda(_) if self.distributed => Device::Cuda(self.gpu),
            d => d,
        }
    }
}

/// The launcher's view of one rank, read from the environment as util/misc.py does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub launcher: &'static str,
}

/// `init_distributed_mode`'s reading of the environment: torchrun (`RANK`, `WORLD_SIZE`,
/// `LOCAL_RANK`), else srun (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`), else mpirun
/// (`OMPI_COMM_WORLD_RANK`, `_SIZE`, `_LOCAL_RANK`; first with `--dist_on_itp`, as there).
/// `None`: no launcher, one process.
pub fn rendezvous_from_env(
    env: &dyn Fn(&str) -> Option<String>,
    dist_on_itp: bool,
) -> Result<Option<Rendezvous>> {
    let num = |k: &str| -> Result<Option<usize>> {
        env(k)
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .with_context(|| format!("environment variable {k}={v:?}: expected a number"))
            })
            .transpose()
    };
    let need = |k: &str, launcher: &str| -> Result<usize> {
        num(k)?.with_context(|| format!("{launcher}: environment variable {k} is not set"))
    };
    let ompi = || -> Result<Rendezvous> {
        Ok(Rendezvous {
            rank: need("OMPI_COMM_WORLD_RANK", "mpirun")?,
            world_size: need("OMPI_COMM_WORLD_SIZE", "mpirun")?,
            local_rank: num("OMPI_COMM_WORLD_LOCAL_RANK")?.unwrap_or(0),
            launcher: "mpirun",
        })
    };
    let r = if dist_on_itp {
        ompi()?
    } else if env("RANK").is_some() && env("WORLD_SIZE").is_some() {
        Rendezvous {
            rank: need("RANK", "torchrun")?,
            world_size: need("WORLD_SIZE", "torchrun")?,
            local_rank: num("LOCAL_RANK")?.unwrap_or(0),
            launcher: "torchrun",
        }
    } else if env("SLURM_PROCID").is_some() {
        Rendezvous {
            rank: need("SLURM_PROCID", "srun")?,
            world_size: need("SLURM_NTASKS", "srun")?,
            local_rank: num("SLURM_LOCALID")?.unwrap_or(0),
            launcher: "srun",
        }
    } else if env("OMPI_COMM_WORLD_RANK").is_some() {
        ompi()?
    } else {
        return Ok(None);
    };
    if r.world_size == 0 || r.rank >= r.world_size {
        bail!(
            "{}: rank {} is not below the world size {}",
            r.launcher,
            r.rank,
            r.world_size
        );
    }
    Ok(Some(r))
}

/// `--dist_url`: `env://` (MASTER_ADDR, MASTER_PORT) or `tcp://host:port`.
pub fn master_of(dist_url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<(String, u16)> {
    let (addr, port, what) = if dist_url == "env://" {
        let get = |k: &str| {
            env(k).with_context(|| {
                format!("--dist_url env://: environment variable {k} expected, but not set (torchrun sets it; with srun or mpirun export MASTER_ADDR and MASTER_PORT, or pass --dist_url tcp://HOST:PORT)")
            })
        };
        (get("MASTER_ADDR")?, get("MASTER_PORT")?, "MASTER_PORT")
    } else if let Some(hp) = dist_url.strip_prefix("tcp://") {
        let (h, p) = hp
            .rsplit_once(':')
            .with_context(|| format!("--dist_url {dist_url}: expected tcp://HOST:PORT"))?;
        (h.to_string(), p.to_string(), "--dist_url")
    } else {
        bail!("--dist_url {dist_url}: expected env:// or tcp://HOST:PORT");
    };
    let port = port
        .parse::<u16>()
        .with_context(|| format!("{what} {port:?}: expected a port number"))?;
    Ok((addr, port))
}

// --------------------------------------------------------
// The process group (torch.distributed's default group)

/// The rendezvous TCPStore (thread-safe in libtorch): the group's keys, and mae's own under
/// "mae/" (each rank's whereabouts and Gloo address, the heartbeats).
pub struct Store {
    ptr: *mut c_void,
    addr: String,
    port: u16,
}

unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Drop for Store {
    fn drop(&mut self) {
        unsafe { mae_c10d_store_free(self.ptr) }
    }
}

impl Store {
    /// The TCPStore at `addr:port`, hosted here with `is_server` (waiting for `world_size`
    /// ranks), else joined as a client; both give up after `timeout`.
    pub fn connect(
        addr: &str,
        port: u16,
        world_size: usize,
        is_server: bool,
        timeout: Duration,
    ) -> Result<Store> {
        let a = CString::new(addr)?;
        let mut ptr = std::ptr::null_mut();
        let rc = unsafe {
            mae_c10d_store(
                a.as_ptr(),
                port as c_int,
                world_size as c_int,
                is_server as c_int,
                timeout.as_millis() as i64,
                &mut ptr,
            )
        };
        if rc != 0 {
            bail!("{}", last_error());
        }
        Ok(Store {
            ptr,
            addr: addr.into(),
            port,
        })
    }

    fn set(&self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (CString::new(key)?, CString::new(value)?);
        match unsafe { mae_c10d_store_set(self.ptr, k.as_ptr(), v.as_ptr()) } {
            0 => Ok(()),
            _ => bail!("store.set({key}): {}", last_error()),
        }
    }

    /// The value of `key` if some rank set it already (no waiting).
    fn get_if_set(&self, key: &str) -> Option<String> {
        let k = CString::new(key).ok()?;
        let mut buf = vec![0u8; 1024];
        let mut len = -1i64;
        let rc = unsafe {
            mae_c10d_store_get_if_set(
                self.ptr,
                k.as_ptr(),
                buf.as_mut_ptr() as *mut c_char,
                buf.len() as i64,
                &mut len,
            )
        };
        (rc == 0 && len >= 0).then(|| {
            buf.truncate((len as usize).min(buf.len()));
            String::from_utf8_lossy(&buf).into_owned()
        })
    }

    /// One heartbeat of `rank`; every rank's heartbeat count.
    fn beat(&self, rank: usize, world_size: usize) -> Result<Vec<i64>> {
        let mut counts = vec![0i64; world_size];
        let rc = unsafe {
            mae_c10d_store_beat(
                self.ptr,
                rank as c_int,
                world_size as c_int,
                counts.as_mut_ptr(),
            )
        };
        match rc {
            0 => Ok(counts),
            _ => bail!("{}", last_error()),
        }
    }
}

/// How often each rank beats, and after how long without a beat a rank counts as lost.
const HEARTBEAT: Duration = Duration::from_secs(1);
const SILENT: Duration = Duration::from_secs(3);

/// What this rank last heard through the store: when the store last answered, and when each
/// rank's heartbeat count last changed.
struct Heard {
    store: Instant,
    counts: Vec<i64>,
    changed: Vec<Instant>,
}

/// One c10d process group; collectives wait for completion and fail naming the rank that was
/// lost when it can be told (a peer process on this machine that exited, or a rank whose
/// heartbeat stopped).
pub struct ProcessGroup {
    ptr: *mut c_void,
    pub rank: usize,
    pub world_size: usize,
    pub backend: String,
    timeout: Duration,
    /// (pid, host id) of every rank, once exchanged
    peers: Vec<(i64, i64)>,
    store: Arc<Store>,
    /// every rank's "host H, pid P", once exchanged
    wheres: Vec<String>,
    heard: Option<Arc<Mutex<Heard>>>,
}

// The c10d objects are thread-safe; the handle is only used by one thread at a time here.
unsafe impl Send for ProcessGroup {}

fn last_error() -> String {
    unsafe { CStr::from_ptr(mae_c10d_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// The raw group handle, sent back from the thread that connects it.
struct GroupPtr(*mut c_void);
unsafe impl Send for GroupPtr {}

impl ProcessGroup {
    /// `init_process_group(backend, init_method=tcp://addr:port, world_size, rank, timeout)`;
    /// `is_server`: this rank hosts the TCPStore (rank 0, unless torchrun's agent hosts it).
    /// With NCCL, the current CUDA device becomes `cuda_device` first. Gloo binds its default
    /// device (GLOO_SOCKET_IFNAME, else the host name's address).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backend: &str,
        addr: &str,
        port: u16,
        rank: usize,
        world_size: usize,
        is_server: bool,
        timeout: Duration,
        cuda_device: usize,
    ) -> Result<ProcessGroup> {
        let spec = GroupSpec {
            backend,
            addr,
            port,
            rank,
            world_size,
            is_server,
            timeout,
            cuda_device,
            gloo_address: None,
        };
        ProcessGroup::join(&spec, &netif::describe_gloo_address(None, None))
    }

    /// [`ProcessGroup::new`] with the Gloo address of `spec`, telling the other ranks through
    /// the store that this rank advertises `advertised` (for their error messages). The Gloo
    /// connections are waited for at most `timeout` (+ 2 s): Gloo's own connect retries end
    /// there, but the listening side of a pair waits 5× as long.
    pub fn join(spec: &GroupSpec, advertised: &str) -> Result<ProcessGroup> {
        let GroupSpec {
            backend,
            addr,
            port,
            rank,
            world_size,
            timeout,
            ..
        } = *spec;
        let joining = || {
            format!(
                "rank {rank} of {world_size}: joining the {backend} group at {addr}:{port} failed"
            )
        };
        let store = Store::connect(addr, port, world_size, spec.is_server, timeout)
            .map_err(|e| anyhow!("{} (are all {world_size} ranks started, with the same world size, and is the port free?): {e}", joining()))?;
        let store = Arc::new(store);
        let here = format!("host {}, pid {}", netif::hostname(), std::process::id());
        store.set(&format!("mae/where/{rank}"), &here)?;
        if backend == "gloo" {
            store.set(&format!("mae/gloo/{rank}"), advertised)?;
        }
        // the peers' advertised addresses, read before Gloo connects (a failure may take the
        // store with its host, and reads of a store that went away can block): at most 2 s, as
        // a Python rank publishes none; a peer missing then is named from Gloo's error
        let mut known: Vec<Option<String>> = vec![None; world_size];
        if backend == "gloo" {
            let deadline = Instant::now() + timeout.min(Duration::from_secs(2));
            loop {
                for (r, k) in known.iter_mut().enumerate() {
                    if r != rank && k.is_none() {
                        *k = store.get_if_set(&format!("mae/gloo/{r}"));
                    }
                }
                let all = (known.iter().enumerate()).all(|(r, k)| r == rank || k.is_some());
                if all || Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let (b, host) = (
            CString::new(backend)?,
            CString::new(spec.gloo_address.map(|a| a.to_string()).unwrap_or_default())?,
        );
        let (st, cuda_device) = (store.clone(), spec.cuda_device);
        let connect = move || {
            let mut ptr = std::ptr::null_mut();
            let rc = unsafe {
                mae_c10d_group(
                    st.ptr,
                    b.as_ptr(),
                    rank as c_int,
                    world_size as c_int,
                    timeout.as_millis() as i64,
                    cuda_device as c_int,
                    host.as_ptr(),
                    &mut ptr,
                )
            };
            match rc {
                0 => Ok(GroupPtr(ptr)),
                _ => Err(last_error()),
            }
        };
        let (tx, rx) = mpsc::channel();
        if backend == "gloo" {
            // Gloo connects every pair now: on a thread of its own, waited for at most the timeout
            std::thread::spawn(move || tx.send(connect()));
        } else {
            // NCCL connects at the first collective; set_device must run on this thread
            let _ = tx.send(connect());
        }
        let result = rx.recv_timeout(timeout + Duration::from_secs(2)).ok();
        let peers = |gloo_error: &str| match backend {
            "gloo" => gloo_peers(&known, rank, addr, gloo_error),
            _ => String::new(),
        };
        let ptr = match result {
            Some(Ok(GroupPtr(ptr))) => ptr,
            Some(Err(e)) => bail!("{} (are all {world_size} ranks started, with the same world size?): {e}{}", joining(), peers(&e.to_string())),
            None => bail!(
                "{} (are all {world_size} ranks started, with the same world size?): the {backend} connections between the ranks were not made within --dist_timeout {} s{}",
                joining(),
                timeout.as_secs_f64(),
                peers("")
            ),
        };
        Ok(ProcessGroup {
            ptr,
            rank,
            world_size,
            backend: backend.into(),
            timeout,
            peers: vec![],
            store,
            wheres: vec![],
            heard: None,
        })
    }

    fn check(&self, rc: c_int, op: &str) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        let err = last_error();
        let here = host_id();
        let gone = || -> Vec<String> {
            (self.peers.iter().enumerate())
                .filter(|&(r, &(pid, host))| r != self.rank && host == here && !pid_alive(pid))
                .map(|(r, (pid, _))| format!("rank {r} (pid {pid})"))
                .collect()
        };
        // A killed peer's sockets close before its process is reaped: give it a moment (when
        // a peer runs on this machine at all).
        let mut lost = gone();
        let local_peer =
            (self.peers.iter().enumerate()).any(|(r, &(_, h))| r != self.rank && h == here);
        for _ in 0..40 {
            if !lost.is_empty() || !local_peer {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            lost = gone();
        }
        let who = if !lost.is_empty() {
            format!("lost peer {}: the process is gone", lost.join(", "))
        } else if let Some(silent) = self.silent() {
            format!(
                "lost {silent}: it did not answer within --dist_timeout {} s",
                self.timeout.as_secs_f64()
            )
        } else if self.world_size == 2 && err.contains("Connection") {
            format!("lost peer rank {} (the only peer)", 1 - self.rank)
        } else {
            format!(
                "a peer rank stopped or did not answer within --dist_timeout {} s",
                self.timeout.as_secs_f64()
            )
        };
        bail!(
            "rank {} of {}: {op} failed: {who} ({}: {err})",
            self.rank,
            self.world_size,
            self.backend,
        )
    }

    /// After a failed collective: the store host or the peer ranks whose heartbeat stopped
    /// (waiting up to [`SILENT`] for a peer whose connection just closed to fall silent).
    fn silent(&self) -> Option<String> {
        let heard = self.heard.as_ref()?;
        let deadline = Instant::now() + SILENT + HEARTBEAT;
        loop {
            let now = Instant::now();
            let found = {
                let h = heard.lock().ok()?;
                if now - h.store > SILENT {
                    vec![format!(
                        "the store at {}:{} (rank 0's host, or torchrun's agent): no answer for {:.1} s",
                        self.store.addr,
                        self.store.port,
                        (now - h.store).as_secs_f64()
                    )]
                } else {
                    (h.changed.iter().enumerate())
                        .filter(|&(r, t)| r != self.rank && now - *t > SILENT)
                        .map(|(r, t)| {
                            let at = self.wheres.get(r).map(String::as_str).unwrap_or("?");
                            format!(
                                "peer rank {r} ({at}): no heartbeat for {:.1} s",
                                (now - *t).as_secs_f64()
                            )
                        })
                        .collect()
                }
            };
            if !found.is_empty() {
                return Some(found.join(", "));
            }
            if now > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Beats every [`HEARTBEAT`] through the store from a thread of its own, recording when each
    /// rank was last heard of. The first beat is synchronous, before the caller's barrier, so
    /// that every rank's count exists once any rank starts listening.
    fn start_heartbeat(&mut self) {
        let (rank, world_size) = (self.rank, self.world_size);
        let counts = self.store.beat(rank, world_size);
        let counts = counts.unwrap_or_else(|_| vec![-1; world_size]);
        let now = Instant::now();
        let heard = Arc::new(Mutex::new(Heard {
            store: now,
            counts,
            changed: vec![now; world_size],
        }));
        self.heard = Some(heard.clone());
        let store = self.store.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(HEARTBEAT);
            // a store that stopped answering blocks here or fails: `store` goes stale
            let Ok(counts) = store.beat(rank, world_size) else {
                return;
            };
            let Ok(mut h) = heard.lock() else { return };
            let now = Instant::now();
            h.store = now;
            for (r, c) in counts.into_iter().enumerate() {
                if h.counts[r] != c {
                    h.counts[r] = c;
                    h.changed[r] = now;
                }
            }
        });
    }

    /// `dist.all_reduce(t)` (sum), or the mean over ranks with `average`.
    pub fn all_reduce(&self, t: &Tensor, average: bool) -> Result<()> {
        let rc =
            unsafe { mae_c10d_allreduce(self.ptr, t.as_ptr() as *mut c_void, average as c_int) };
        self.check(rc, "all_reduce")
    }

    /// `dist.broadcast(t, src=root)`.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        let rc = unsafe { mae_c10d_broadcast(self.ptr, t.as_ptr() as *mut c_void, root as c_int) };
        self.check(rc, "broadcast")
    }

    /// `dist.barrier()`.
    pub fn barrier(&self) -> Result<()> {
        let rc = unsafe { mae_c10d_barrier(self.ptr) };
        self.check(rc, "barrier")
    }

    /// Every rank's (pid, host id), so that a failed collective can name the rank it lost.
    fn exchange_peers(&mut self, device: Device) -> Result<()> {
        let t = Tensor::zeros([self.world_size as i64, 2], (Kind::Int64, device));
        t.get(self.rank as i64)
            .copy_(&Tensor::from_slice(&[std::process::id() as i64, host_id()]));
        self.all_reduce(&t, false)?;
        let v = Vec::<i64>::try_from(t.to_device(Device::Cpu).flatten(0, 1))?;
        self.peers = v.chunks(2).map(|p| (p[0], p[1])).collect();
        let unknown = || "host ?".to_string();
        self.wheres = (0..self.world_size)
            .map(|r| (self.store.get_if_set(&format!("mae/where/{r}"))).unwrap_or_else(unknown))
            .collect();
        Ok(())
    }
}

/// What [`ProcessGroup::join`] connects: the arguments of [`ProcessGroup::new`], and the
/// address Gloo binds (`None`: libtorch's default device).
pub struct GroupSpec<'a> {
    pub backend: &'a str,
    pub addr: &'a str,
    pub port: u16,
    pub rank: usize,
    pub world_size: usize,
    pub is_server: bool,
    pub timeout: Duration,
    pub cuda_device: usize,
    pub gloo_address: Option<IpAddr>,
}

/// The addresses Gloo's own error message names (`remote=[127.0.0.1]:56753`), distinct, in order.
fn gloo_remotes(gloo_error: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in gloo_error.split("remote=[").skip(1) {
        if let Some(end) = part.find(']') {
            let a = part[..end].to_string();
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

/// For a failed Gloo connection phase: the address every other rank advertises (as it told the
/// store, or, for the one peer that told nothing yet, the one address Gloo's error names), and
/// what to do when one is a loopback address while MASTER_ADDR is not.
fn gloo_peers(
    known: &[Option<String>],
    rank: usize,
    master_addr: &str,
    gloo_error: &str,
) -> String {
    let mut loopback = false;
    let remotes = gloo_remotes(gloo_error);
    let silent = (known.iter().enumerate())
        .filter(|&(r, k)| r != rank && k.is_none())
        .count();
    let from_gloo = match (silent, remotes.as_slice()) {
        (1, [a]) => Some(format!("{a} (the address in Gloo's error)")),
        _ => None,
    };
    let peers: Vec<String> = (known.iter().enumerate())
        .filter(|&(r, _)| r != rank)
        .map(|(r, k)| match k.as_ref().or(from_gloo.as_ref()) {
            Some(a) => {
                let ip = a.split_whitespace().next();
                loopback |= ip
                    .and_then(|ip| ip.parse::<IpAddr>().ok())
                    .is_some_and(|ip| ip.is_loopback());
                format!("rank {r} at {a}")
            }
            None => format!(
                "rank {r} (no Gloo address published: is it a Python rank, or did it not start?)"
            ),
        })
        .collect();
    if peers.is_empty() {
        return String::new();
    }
    let mut s = format!("; could not reach {}", peers.join(", "));
    if loopback && netif::is_loopback_host(master_addr) == Some(false) {
        s.push_str(": a loopback address cannot be reached from another host; leave GLOO_SOCKET_IFNAME unset on every host (mae then binds the interface whose route reaches MASTER_ADDR) or set it to the interface the other hosts reach that one on");
    }
    s
}

/// This machine, as a number that sums safely in an int64 all-reduce (one rank per row).
fn host_id() -> i64 {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let h = name.trim().bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    (h >> 2) as i64
}

/// Whether `pid` still runs (a zombie, killed but not yet reaped, counts as gone).
fn pid_alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

static INFO: OnceLock<DistInfo> = OnceLock::new();
static GROUP: Mutex<Option<ProcessGroup>> = Mutex::new(None);

/// `is_dist_avail_and_initialized()` and friends.
pub fn info() -> DistInfo {
    INFO.get().copied().unwrap_or(DistInfo::SINGLE)
}
pub fn get_world_size() -> usize {
    info().world_size
}
pub fn get_rank() -> usize {
    info().rank
}
pub fn is_main_process() -> bool {
    get_rank() == 0
}

/// Runs `f` on the default group (`None`: not distributed).
fn with_group<T>(f: impl FnOnce(&ProcessGroup) -> Result<T>) -> Result<Option<T>> {
    let guard = GROUP
        .lock()
        .map_err(|_| anyhow::anyhow!("the process group lock is poisoned"))?;
    guard.as_ref().map(f).transpose()
}

/// util/misc.py `init_distributed_mode(args)`: reads the launcher's environment, binds the rank
/// to its `LOCAL_RANK` GPU, joins the group (`--dist_backend`, `--dist_url`), barriers, and
/// silences stdout on ranks other than 0 (`setup_for_distributed`). Without a launcher: one
/// process ("Not using distributed mode").
pub fn init_distributed_mode(args: &DistArgs, device: Device) -> Result<DistInfo> {
    if let Some(info) = INFO.get() {
        return Ok(*info);
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let Some(r) = rendezvous_from_env(&env, args.dist_on_itp)? else {
        if args.world_size != 1 {
            bail!("--world_size {}: start one process per rank with torchrun, srun or mpirun (README: Multi-GPU and multi-node)", args.world_size);
        }
        println!("Not using distributed mode");
        let _ = INFO.set(DistInfo::SINGLE);
        return Ok(DistInfo::SINGLE);
    };
    if args.world_size != 1 && args.world_size as usize != r.world_size {
        bail!(
            "--world_size {} but {} says the world size is {}",
            args.world_size,
            r.launcher,
            r.world_size
        );
    }
    let gpu = match device {
        Device::Cuda(_) => {
            let n = tch::Cuda::device_count() as usize;
            if r.local_rank >= n {
                bail!("local rank {} but this machine has {n} GPU(s): start at most {n} ranks per node", r.local_rank);
            }
            r.local_rank
        }
        _ => 0,
    };
    let backend = match (&args.dist_backend, device) {
        (Some(b), _) => b.clone(),
        (None, Device::Cuda(_)) => "nccl".into(),
        (None, _) => "gloo".into(),
    };
    if backend != "gloo" && backend != "nccl" {
        bail!("--dist_backend {backend}: expected gloo or nccl");
    }
    if backend == "nccl" && !has_nccl() {
        bail!("--dist_backend nccl (the default on CUDA): this build has no NCCL; rebuild with `cargo build --release --features nccl`, or pass --dist_backend gloo");
    }
    if backend == "nccl" && !device.is_cuda() {
        bail!("--dist_backend nccl needs CUDA (--device cuda); on the CPU use --dist_backend gloo");
    }
    if args.dist_timeout.is_nan() || args.dist_timeout <= 0. {
        bail!("--dist_timeout {}: expected seconds > 0", args.dist_timeout);
    }
    let (addr, port) = master_of(&args.dist_url, &env)?;
    let info = DistInfo {
        rank: r.rank,
        world_size: r.world_size,
        gpu,
        distributed: true,
    };
    println!(
        "| distributed init (rank {}): {}, gpu {} ({} of {}, {backend}, via {})",
        r.rank, args.dist_url, gpu, r.rank, r.world_size, r.launcher
    );
    // Gloo's address: GLOO_SOCKET_IFNAME, else the host name's, unless that is loopback while
    // MASTER_ADDR is another host (util/netif.rs); NCCL reads NCCL_SOCKET_IFNAME itself.
    let ifname = env("GLOO_SOCKET_IFNAME");
    let chosen = match backend.as_str() {
        "gloo" => netif::choose_gloo_device(
            ifname.as_deref(),
            r.world_size,
            &addr,
            netif::gloo_default_address(),
            &netif::route_to,
        )?,
        _ => None,
    };
    if let Some((iface, ip)) = &chosen {
        println!(
            "| gloo: using interface {iface} ({ip}), whose route reaches MASTER_ADDR {addr}: GLOO_SOCKET_IFNAME is unset and this host's name {} resolves to the loopback address {}",
            netif::hostname(),
            netif::gloo_default_address()
        );
    }
    // torchrun's agent hosts the store (TORCHELASTIC_USE_AGENT_STORE), else rank 0 does.
    let agent_store = env("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True");
    let spec = GroupSpec {
        backend: &backend,
        addr: &addr,
        port,
        rank: r.rank,
        world_size: r.world_size,
        is_server: r.rank == 0 && !agent_store,
        timeout: Duration::from_secs_f64(args.dist_timeout),
        cuda_device: gpu,
        gloo_address: chosen.as_ref().map(|(_, ip)| *ip),
    };
    let advertised = netif::describe_gloo_address(ifname.as_deref(), chosen.as_ref());
    let mut pg = ProcessGroup::join(&spec, &advertised)?;
    pg.exchange_peers(info.device(device)).with_context(|| {
        format!(
            "the first collective of the {} ranks (do all of them have world size {}?)",
            r.world_size, r.world_size
        )
    })?;
    pg.start_heartbeat();
    pg.barrier()?;
    *GROUP
        .lock()
        .map_err(|_| anyhow::anyhow!("the process group lock is poisoned"))? = Some(pg);
    let _ = INFO.set(info);
    if r.rank != 0 {
        // setup_for_distributed(is_master=False): print is a no-op; stderr still shows errors
        unsafe { mae_c10d_silence_stdout() };
    }
    Ok(info)
}

/// `dist.barrier()` on the default group (nothing without one).
pub fn barrier() -> Result<()> {
    with_group(|g| g.barrier()).map(|_| ())
}

/// `misc.all_reduce_mean(x)` and `synchronize_between_processes`: the sum over ranks of each
/// value (in float64).
pub fn all_reduce_sum(values: &[f64]) -> Result<Vec<f64>> {
    let out = with_group(|g| {
        let device = match g.backend.as_str() {
            "nccl" => Device::Cuda(info().gpu),
            _ => Device::Cpu,
        };
        let t = Tensor::from_slice(values).to_device(device);
        g.all_reduce(&t, false)?;
        Ok(Vec::<f64>::try_from(t.to_device(Device::Cpu))?)
    })?;
    Ok(out.unwrap_or_else(|| values.to_vec()))
}

// --------------------------------------------------------
// DistributedDataParallel

/// DDP's default `bucket_cap_mb`.
const BUCKET_BYTES: i64 = 25 << 20;

thread_local! {
    /// The trainable parameters of the wrapped model, sorted by name (the same order on every
    /// rank: a VarStore's own order differs between processes).
    static DDP_PARAMS: RefCell<Vec<Tensor>> = const { RefCell::new(Vec::new()) };
}

/// `model = DistributedDataParallel(model, device_ids=[args.gpu])`: broadcasts every variable
/// of `vs` from rank 0 (buffers included, as DDP does at construction) and registers its
/// trainable parameters for [`sync_gradients`]. Nothing without a group.
pub fn distributed_data_parallel(vs: &nn::VarStore) -> Result<()> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let done = with_group(|g| {
        tch::no_grad(|| vars.iter().try_for_each(|(_, t)| g.broadcast(t, 0)))
            .context("broadcasting the parameters from rank 0")
    })?;
    if done.is_some() {
        let params = vars
            .into_iter()
            .map(|(_, t)| t)
            .filter(Tensor::requires_grad);
        DDP_PARAMS.with(|p| *p.borrow_mut() = params.collect());
    }
    Ok(())
}

/// After the backward of an update step: every registered parameter's gradient becomes the
/// mean over ranks, reduced in flattened buckets of at most 25 MB (DDP's reducer). Parameters
/// without a gradient count as zero. Nothing without DDP.
pub fn sync_gradients() -> Result<()> {
    DDP_PARAMS.with(|params| {
        let params = params.borrow();
        if params.is_empty() {
            return Ok(());
        }
        with_group(|g| {
            tch::no_grad(|| {
                let mut bucket: Vec<(&Tensor, Tensor)> = Vec::new();
                let mut bytes = 0;
                for (i, p) in params.iter().enumerate() {
                    bytes += p.numel() as i64 * p.kind().elt_size_in_bytes() as i64;
                    bucket.push((p, p.grad()));
                    let next_kind = params.get(i + 1).map(|q| (q.kind(), q.device()));
                    if bytes >= BUCKET_BYTES || next_kind != Some((p.kind(), p.device())) {
                        reduce_bucket(g, &bucket)?;
                        bucket.clear();
                        bytes = 0;
                    }
                }
                Ok(())
            })
        })
        .map(|_| ())
    })
}

/// One bucket of (parameter, gradient): flatten, average over ranks, copy back. A parameter
/// without a gradient on this rank contributes zeros (and keeps no gradient).
fn reduce_bucket(g: &ProcessGroup, bucket: &[(&Tensor, Tensor)]) -> Result<()> {
    let flat: Vec<Tensor> = bucket
        .iter()
        .map(|(p, grad)| match grad.defined() {
            true => grad.flatten(0, -1),
            false => p.zeros_like().flatten(0, -1),
        })
        .collect();
    let flat = Tensor::cat(&flat, 0);
    g.all_reduce(&flat, true)?;
    let mut offset = 0;
    for (p, grad) in bucket {
        let n = p.numel() as i64;
        if grad.defined() {
            grad.view_as(grad)
                .copy_(&flat.narrow(0, offset, n).view_as(grad));
        }
        offset += n;
    }
    Ok(())
}

/// [`sync_gradients`] where a failure cannot be returned (inside the loss scaler): the error is
/// printed and the process exits, as torch.distributed aborts a rank whose collective failed.
pub fn sync_gradients_or_exit() {
    if let Err(e) = sync_gradients() {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

/// The masking noise of this rank's samples: rows `rank, rank + world, …` of `torch.rand(N *
/// world, L)`, so that the ranks together mask the global batch as one process would (rank r's
/// j-th sample is sample j*world + r of the global batch under [`DistributedSampler`]).
/// `None` in one process: the model draws `torch.rand(N, L)` itself.
pub fn global_batch_noise(n: i64, l: i64, device: Device) -> Option<Tensor> {
    let DistInfo {
        rank, world_size, ..
    } = info();
    (world_size > 1).then(|| {
        let w = world_size as i64;
        Tensor::rand([n * w, l], (Kind::Float, device)).slice(0, rank as i64, n * w, w)
    })
}

// --------------------------------------------------------
// DistributedSampler

/// `DistributedSampler(dataset, num_replicas, rank, shuffle, drop_last=False)` after the
/// shuffle: the list is padded (from its start) to a multiple of `num_replicas`, and rank r
/// takes positions r, r + num_replicas, …
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DistributedSampler {
    pub num_replicas: usize,
    pub rank: usize,
}

impl DistributedSampler {
    /// The default group's sampler (world 1 without one).
    pub fn current() -> DistributedSampler {
        let i = info();
        DistributedSampler {
            num_replicas: i.world_size,
            rank: i.rank,
        }
    }

    /// `num_samples = ceil(len(dataset) / num_replicas)`.
    pub fn num_samples(&self, len: usize) -> usize {
        len.div_ceil(self.num_replicas)
    }

    /// This rank's share of `indices` (the epoch's shuffled or sequential list).
    pub fn subsample(&self, mut indices: Vec<usize>) -> Vec<usize> {
        if self.num_replicas == 1 || indices.is_empty() {
            return indices;
        }
        let total_size = self.num_samples(indices.len()) * self.num_replicas;
        let mut i = 0;
        while indices.len() < total_size {
            indices.push(indices[i]); // add extra samples to make it evenly divisible
            i += 1;
        }
        indices
            .into_iter()
            .skip(self.rank)
            .step_by(self.num_replicas)
            .collect()
    }
}

static DIST_EVAL: OnceLock<bool> = OnceLock::new();

/// `--dist_eval`: the validation loader shards with `DistributedSampler(shuffle=False)` and the
/// metrics are summed over ranks. Set once by the entry point.
pub fn set_dist_eval(on: bool) {
    let _ = DIST_EVAL.set(on && info().world_size > 1);
}

/// The validation indices this rank evaluates: all of them, or its share with `--dist_eval`.
pub fn eval_indices(len: usize) -> Vec<usize> {
    let all = (0..len).collect();
    match DIST_EVAL.get() {
        Some(true) => DistributedSampler::current().subsample(all),
        _ => all,
    }
}

/// Whether the evaluation metrics must be summed over ranks.
pub fn dist_eval() -> bool {
    DIST_EVAL.get().copied().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gloo_peers_names_the_address_of_a_peer_that_published_none() {
        let err = "Gloo connectFullMesh failed with [pair.cc:152] timed out connecting: \
                   SO_ERROR: Connection refused, remote=[127.0.0.1]:56753$1";
        assert_eq!(gloo_remotes(err), vec!["127.0.0.1".to_string()]);
        let s = gloo_peers(&[None, Some("10.0.0.2".into())], 1, "10.0.0.1", err);
        assert!(s.contains("could not reach rank 0 at 127.0.0.1"), "{s}");
        assert!(s.contains("GLOO_SOCKET_IFNAME"), "{s}");
        // a published address wins; with no address anywhere the rank is still named
        let s = gloo_peers(&[Some("10.0.0.1".into()), None], 1, "10.0.0.1", err);
        assert!(s.contains("could not reach rank 0 at 10.0.0.1"), "{s}");
        let s = gloo_peers(&[None, None], 1, "10.0.0.1", "");
        assert!(s.contains("rank 0 (no Gloo address published"), "{s}");
    }

    #[test]
    fn sampler_pads_from_the_start_and_strides_by_rank() {
        // 10 indices on 4 ranks: padded to 12 with the first two, rank r takes r, r+4, r+8
        let shuffled: Vec<usize> = vec![7, 3, 9, 0, 1, 8, 2, 6, 4, 5];
        let parts: Vec<Vec<usize>> = (0..4)
            .map(|rank| {
                DistributedSampler {
                    num_replicas: 4,
                    rank,
                }
                .subsample(shuffled.clone())
            })
            .collect();
        assert_eq!(parts[0], [7, 1, 4]);
        assert_eq!(parts[1], [3, 8, 5]);
        assert_eq!(parts[2], [9, 2, 7]);
        assert_eq!(parts[3], [0, 6, 3]);
        // world 1 is the identity
        let one = DistributedSampler {
            num_replicas: 1,
            rank: 0,
        };
        assert_eq!(one.subsample(shuffled.clone()), shuffled);
    }

    #[test]
    fn rendezvous_reads_torchrun_then_slurm_then_mpirun() {
        let env_of = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let torchrun = env_of(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("SLURM_PROCID", "0"),
        ]);
        let r = rendezvous_from_env(&torchrun, false).unwrap().unwrap();
        assert_eq!(
            (r.rank, r.world_size, r.local_rank, r.launcher),
            (3, 4, 1, "torchrun")
        );
        let slurm = env_of(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
        ]);
        let r = rendezvous_from_env(&slurm, false).unwrap().unwrap();
        assert_eq!(
            (r.rank, r.world_size, r.local_rank, r.launcher),
            (5, 8, 1, "srun")
        );
        let mpi = env_of(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ]);
        let r = rendezvous_from_env(&mpi, false).unwrap().unwrap();
        assert_eq!(
            (r.rank, r.world_size, r.local_rank, r.launcher),
            (1, 2, 1, "mpirun")
        );
        assert_eq!(rendezvous_from_env(&env_of(&[]), false).unwrap(), None);
        let bad = env_of(&[("RANK", "2"), ("WORLD_SIZE", "2")]);
        let e = rendezvous_from_env(&bad, false).unwrap_err().to_string();
        assert!(e.contains("rank 2 is not below the world size 2"), "{e}");
        let e = master_of("env://", &env_of(&[("MASTER_ADDR", "h")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("MASTER_PORT"), "{e}");
        assert_eq!(
            master_of("tcp://10.0.0.1:23456", &env_of(&[])).unwrap(),
            ("10.0.0.1".into(), 23456)
        );
    }
}
