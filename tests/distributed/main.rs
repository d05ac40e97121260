//! Data-parallel training on c10d with Gloo: ranks on one host (127.0.0.1) and on two hosts
//! (network namespaces), their failures, and a Python rank in the same group.
//!
//! - one_host: 2 ranks end where 1 process with the whole batch ends; killed, hung and
//!   mismatched ranks; a Rust and a Python rank in one group; the NCCL shim links
//! - two_hosts: the same across two hosts, launched by hand or by torchrun; a lost host, an
//!   unreachable peer
#[path = "../common/mod.rs"]
mod common;

mod one_host;
mod two_hosts;
