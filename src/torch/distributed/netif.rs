//! Which address a rank's Gloo device binds and advertises to the other ranks. Not in the
//! reference: torch.distributed leaves it to GLOO_SOCKET_IFNAME, else binds the address this
//! machine's host name resolves to, which on many machines (Debian's `127.0.1.1 HOST` line in
//! /etc/hosts) is a loopback address that no other host can reach. Here, where that would happen
//! while MASTER_ADDR is another host, the interface whose route reaches MASTER_ADDR is used.

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, ToSocketAddrs, UdpSocket};

use anyhow::{bail, Result};

/// Every (interface name, address) of this machine, in getifaddrs(3) order.
pub fn interfaces() -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut ifa = ifap;
    while let Some(i) = unsafe { ifa.as_ref() } {
        let addr = unsafe { i.ifa_addr.as_ref() };
        let ip = match addr.map(|a| a.sa_family as i32) {
            Some(libc::AF_INET) => {
                let sin = unsafe { &*(i.ifa_addr as *const libc::sockaddr_in) };
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))))
            }
            Some(libc::AF_INET6) => {
                let sin6 = unsafe { &*(i.ifa_addr as *const libc::sockaddr_in6) };
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
            }
            _ => None,
        };
        if let Some(ip) = ip {
            let name = unsafe { CStr::from_ptr(i.ifa_name) };
            out.push((name.to_string_lossy().into_owned(), ip));
        }
        ifa = i.ifa_next;
    }
    unsafe { libc::freeifaddrs(ifap) };
    out
}

/// The local address the kernel picks to reach `dest` (what `ip route get DEST` calls `src`):
/// connect(2) on a UDP socket chooses the route and sends nothing.
pub fn route_source(dest: IpAddr) -> std::io::Result<IpAddr> {
    let any: IpAddr = match dest {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((any, 0))?;
    socket.connect((dest, 9))?;
    Ok(socket.local_addr()?.ip())
}

/// The interface that holds `addr`, if one does.
pub fn interface_of(addr: IpAddr) -> Option<String> {
    interfaces()
        .into_iter()
        .find(|(_, a)| *a == addr)
        .map(|(name, _)| name)
}

/// This machine's host name, as Python's `socket.gethostname()` (gethostname(2)), for the
/// rendezvous messages and TensorBoard's file names; `localhost` when it has none.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its whole length, which is what gethostname is told.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match String::from_utf8_lossy(&buf[..end]).trim() {
        name if r == 0 && !name.is_empty() => name.to_string(),
        _ => "localhost".into(),
    }
}

/// The address Gloo's default device binds (ProcessGroupGloo::createDefaultDevice): the first
/// address the host name resolves to that bind(2) accepts, else 127.0.0.1.
pub fn gloo_default_address() -> IpAddr {
    let resolved = (hostname().as_str(), 0).to_socket_addrs();
    resolved
        .into_iter()
        .flatten()
        .map(|a| a.ip())
        .find(|ip| TcpListener::bind((*ip, 0)).is_ok())
        .unwrap_or(Ipv4Addr::LOCALHOST.into())
}

/// Whether every address `host` resolves to is a loopback address (`None`: it does not resolve).
pub fn is_loopback_host(host: &str) -> Option<bool> {
    let ips: Vec<IpAddr> = (host, 0).to_socket_addrs().ok()?.map(|a| a.ip()).collect();
    (!ips.is_empty()).then(|| ips.iter().all(IpAddr::is_loopback))
}

/// The Gloo device of one rank: `None` keeps libtorch's default (GLOO_SOCKET_IFNAME when set,
/// else the host name's address); `Some((interface, address))` binds that address instead.
///
/// The rule: with GLOO_SOCKET_IFNAME unset, more than one rank, the default address
/// (`default_addr`) a loopback address and MASTER_ADDR not, the address `route` gives for
/// MASTER_ADDR (the route's source and the interface holding it) is used; an error naming
/// GLOO_SOCKET_IFNAME if there is none, or only a loopback one.
pub fn choose_gloo_device(
    gloo_socket_ifname: Option<&str>,
    world_size: usize,
    master_addr: &str,
    default_addr: IpAddr,
    route: &dyn Fn(IpAddr) -> Option<(String, IpAddr)>,
) -> Result<Option<(String, IpAddr)>> {
    if gloo_socket_ifname.is_some() || world_size <= 1 || !default_addr.is_loopback() {
        return Ok(None);
    }
    let master: Vec<IpAddr> = (master_addr, 0)
        .to_socket_addrs()
        .map(|a| a.map(|a| a.ip()).collect())
        .unwrap_or_default();
    if master.is_empty() || master.iter().all(IpAddr::is_loopback) {
        // one machine (or an address the store will report it cannot resolve)
        return Ok(None);
    }
    let found = master
        .iter()
        .filter(|ip| !ip.is_loopback())
        .find_map(|ip| route(*ip).filter(|(_, src)| !src.is_loopback()));
    match found {
        Some(dev) => Ok(Some(dev)),
        None => bail!(
            "GLOO_SOCKET_IFNAME is unset and this host's name ({}) resolves to the loopback address {default_addr}, which the ranks on other hosts cannot reach, and no interface of this host routes to MASTER_ADDR {master_addr}: set GLOO_SOCKET_IFNAME to the interface the other hosts reach this one on (`ip -br addr` lists them)",
            hostname()
        ),
    }
}

/// `route` for [`choose_gloo_device`]: the source address towards `dest` and its interface.
pub fn route_to(dest: IpAddr) -> Option<(String, IpAddr)> {
    let src = route_source(dest).ok()?;
    Some((interface_of(src)?, src))
}

/// The address the Gloo device advertises, in words, for error messages: `addr (how)`.
pub fn describe_gloo_address(
    gloo_socket_ifname: Option<&str>,
    chosen: Option<&(String, IpAddr)>,
) -> String {
    if let Some((iface, addr)) = chosen {
        return format!("{addr} (interface {iface}, the route to MASTER_ADDR)");
    }
    if let Some(names) = gloo_socket_ifname {
        let first = names.split(',').next().unwrap_or(names);
        return match interfaces().into_iter().find(|(n, _)| n == first) {
            Some((_, addr)) => format!("{addr} (GLOO_SOCKET_IFNAME={names})"),
            None => format!("no address (GLOO_SOCKET_IFNAME={names}: no such interface)"),
        };
    }
    format!(
        "{} (the address of this host's name {})",
        gloo_default_address(),
        hostname()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_interface_replaces_a_loopback_default_only() {
        let lo: IpAddr = Ipv4Addr::new(127, 0, 1, 1).into();
        let lan: IpAddr = Ipv4Addr::new(10, 99, 0, 2).into();
        let eth = |_: IpAddr| Some(("eth1".to_string(), lan));
        let none = |_: IpAddr| None;
        let via_lo = |_: IpAddr| Some(("lo".to_string(), lo));
        let pick = |ifname, world, master: &str, default, route: &dyn Fn(IpAddr) -> _| {
            choose_gloo_device(ifname, world, master, default, route)
        };
        // the trap: loopback default, MASTER_ADDR elsewhere
        assert_eq!(
            pick(None, 2, "10.99.0.1", lo, &eth).unwrap(),
            Some(("eth1".into(), lan))
        );
        // an explicit GLOO_SOCKET_IFNAME always wins; one rank, a routable default or a
        // loopback MASTER_ADDR keep the default
        assert_eq!(pick(Some("lo"), 2, "10.99.0.1", lo, &eth).unwrap(), None);
        assert_eq!(pick(None, 1, "10.99.0.1", lo, &eth).unwrap(), None);
        assert_eq!(pick(None, 2, "10.99.0.1", lan, &eth).unwrap(), None);
        assert_eq!(pick(None, 2, "127.0.0.1", lo, &eth).unwrap(), None);
        assert_eq!(pick(None, 2, "localhost", lo, &eth).unwrap(), None);
        // no route, or only a loopback one: an error naming GLOO_SOCKET_IFNAME
        for route in [&none as &dyn Fn(IpAddr) -> _, &via_lo] {
            let e = pick(None, 2, "10.99.0.1", lo, route)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("GLOO_SOCKET_IFNAME") && e.contains("10.99.0.1"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_route_to_this_machines_loopback_leaves_by_lo() {
        let src = route_source(Ipv4Addr::LOCALHOST.into()).unwrap();
        assert!(src.is_loopback(), "{src}");
        let (iface, _) = route_to(Ipv4Addr::LOCALHOST.into()).unwrap();
        assert!(interfaces()
            .iter()
            .any(|(n, a)| *n == iface && a.is_loopback()));
    }
}
