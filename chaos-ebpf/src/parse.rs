//! Packet parsing, shared by the ingress and egress classifiers.
//!
//! Direct packet access only: every read goes through [`ptr_at`], which
//! checks the read against `data_end` (the verifier insists on it). Anything
//! we cannot parse is reported as `Err(())`, and the caller lets the packet
//! pass untouched.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use chaos_common::{FAMILY_V4, FAMILY_V6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;
const IPV6_HLEN: usize = 40;

/// IPv6 extension headers walked before giving up (fail open). Real stacks
/// send one or two; eight covers every legitimate chain we know of.
const MAX_IPV6_EXT: usize = 8;
/// Offsets past this many bytes are not followed: keeps every offset the
/// verifier sees bounded, and no header chain we care about is longer.
const MAX_L4_OFFSET: usize = 512;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

/// What the classifier needs to know about a packet. Lives in per-CPU
/// scratch memory (see `SCRATCH`), not on the 512-byte stack.
#[repr(C)]
pub struct Packet {
    pub family: u8,
    pub proto: u8,
    /// Network byte order, IPv4 in the first four bytes, rest zero.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Host byte order; 0 when the protocol has no ports.
    pub sport: u16,
    pub dport: u16,
    /// 1 for TCP and UDP (ports are meaningful), 0 otherwise.
    pub has_ports: u8,
}

/// Outcome of parsing a packet.
pub enum Parsed {
    /// `Packet` was filled in.
    Ip,
    /// Not IP, or a non-first fragment: never touched.
    Skip,
}

/// Returns a pointer to a `T` at `offset` bytes into the packet, or `Err`
/// when the packet is shorter than that.
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    let ptr = start + offset;
    if ptr + size_of::<T>() > end {
        return Err(());
    }
    Ok(ptr as *const T)
}

/// Reads a big-endian u16 at a variable offset with `bpf_skb_load_bytes`.
/// Used behind IPv4 options and IPv6 extension headers, where the offset
/// is data-dependent: the helper checks bounds itself, which keeps the
/// verifier's work (and our program) small on these rare paths.
#[inline(always)]
fn load_be16_var(ctx: &TcContext, offset: usize) -> Result<u16, ()> {
    let raw: [u8; 2] = ctx.load(offset).map_err(|_| ())?;
    Ok(u16::from_be_bytes(raw))
}

#[inline(always)]
fn load_u8_var(ctx: &TcContext, offset: usize) -> Result<u8, ()> {
    ctx.load::<u8>(offset).map_err(|_| ())
}

#[inline(always)]
fn load_u8(ctx: &TcContext, offset: usize) -> Result<u8, ()> {
    // SAFETY: ptr_at checked the byte lies inside the packet.
    Ok(unsafe { *ptr_at::<u8>(ctx, offset)? })
}

/// Reads a big-endian u16 (packet fields are in network byte order).
#[inline(always)]
fn load_be16(ctx: &TcContext, offset: usize) -> Result<u16, ()> {
    // SAFETY: ptr_at checked both bytes lie inside the packet; the read is
    // unaligned-safe.
    let raw = unsafe { core::ptr::read_unaligned(ptr_at::<[u8; 2]>(ctx, offset)?) };
    Ok(u16::from_be_bytes(raw))
}

#[inline(always)]
fn load_addr<const N: usize>(ctx: &TcContext, offset: usize, out: &mut [u8; 16]) -> Result<(), ()> {
    // SAFETY: ptr_at checked all N bytes lie inside the packet.
    let raw = unsafe { core::ptr::read_unaligned(ptr_at::<[u8; N]>(ctx, offset)?) };
    out[..N].copy_from_slice(&raw);
    Ok(())
}

pub fn parse(ctx: &TcContext, pkt: &mut Packet) -> Result<Parsed, ()> {
    let mut l3 = ETH_HLEN;
    let mut ethertype = load_be16(ctx, 12)?;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        // One tag: the TCI, then the encapsulated EtherType.
        ethertype = load_be16(ctx, ETH_HLEN + 2)?;
        l3 += VLAN_HLEN;
    }
    pkt.src = [0; 16];
    pkt.dst = [0; 16];
    pkt.sport = 0;
    pkt.dport = 0;
    pkt.has_ports = 0;
    let l4 = match ethertype {
        ETH_P_IP => match parse_ipv4(ctx, l3, pkt)? {
            Some(l4) => l4,
            None => return Ok(Parsed::Skip),
        },
        ETH_P_IPV6 => match parse_ipv6(ctx, l3, pkt)? {
            Some(l4) => l4,
            None => return Ok(Parsed::Skip),
        },
        _ => return Ok(Parsed::Skip),
    };
    if pkt.proto == IPPROTO_TCP || pkt.proto == IPPROTO_UDP {
        // The common case (no IP options, no extension headers) reads the
        // ports directly; anything else through the helper.
        if l4 == l3 + 20 || l4 == l3 + IPV6_HLEN {
            pkt.sport = load_be16(ctx, l4)?;
            pkt.dport = load_be16(ctx, l4 + 2)?;
        } else {
            pkt.sport = load_be16_var(ctx, l4)?;
            pkt.dport = load_be16_var(ctx, l4 + 2)?;
        }
        pkt.has_ports = 1;
    } else if pkt.proto == IPPROTO_ICMP || pkt.proto == IPPROTO_ICMPV6 {
        // Check the ICMP header is there, so a truncated packet fails open
        // like any other.
        load_u8_var(ctx, l4)?;
    }
    Ok(Parsed::Ip)
}

/// Returns the L4 offset, or `None` for a non-first fragment.
#[inline(always)]
fn parse_ipv4(ctx: &TcContext, l3: usize, pkt: &mut Packet) -> Result<Option<usize>, ()> {
    let ver_ihl = load_u8(ctx, l3)?;
    if ver_ihl >> 4 != 4 {
        return Err(());
    }
    // The mask bounds the header length to 60 bytes for the verifier.
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(());
    }
    let frag = load_be16(ctx, l3 + 6)?;
    if frag & 0x1fff != 0 {
        // Fragment offset != 0: no L4 header here.
        return Ok(None);
    }
    pkt.family = FAMILY_V4;
    pkt.proto = load_u8(ctx, l3 + 9)?;
    load_addr::<4>(ctx, l3 + 12, &mut pkt.src)?;
    load_addr::<4>(ctx, l3 + 16, &mut pkt.dst)?;
    Ok(Some(l3 + ihl))
}

/// Returns the L4 offset after walking the extension headers, or `None` for
/// a non-first fragment.
#[inline(always)]
fn parse_ipv6(ctx: &TcContext, l3: usize, pkt: &mut Packet) -> Result<Option<usize>, ()> {
    if load_u8(ctx, l3)? >> 4 != 6 {
        return Err(());
    }
    pkt.family = FAMILY_V6;
    load_addr::<16>(ctx, l3 + 8, &mut pkt.src)?;
    load_addr::<16>(ctx, l3 + 24, &mut pkt.dst)?;
    let mut next = load_u8(ctx, l3 + 6)?;
    let mut off = l3 + IPV6_HLEN;
    for _ in 0..MAX_IPV6_EXT {
        let len = match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                (load_u8_var(ctx, off + 1)? as usize + 1) * 8
            }
            NEXTHDR_AUTH => (load_u8_var(ctx, off + 1)? as usize + 2) * 4,
            NEXTHDR_FRAGMENT => {
                // Offset field: upper 13 bits of bytes 2..4.
                if load_be16_var(ctx, off + 2)? & 0xfff8 != 0 {
                    return Ok(None);
                }
                8
            }
            _ => {
                pkt.proto = next;
                return Ok(Some(off));
            }
        };
        next = load_u8_var(ctx, off)?;
        off += len;
        if off > MAX_L4_OFFSET {
            return Err(());
        }
    }
    // Longer chains than we walk: fail open.
    Err(())
}
