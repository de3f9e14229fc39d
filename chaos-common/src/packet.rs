//! Packet parsing, shared by the ingress and egress classifiers.
//!
//! The logic lives here, generic over [`PacketBytes`], so that it builds for
//! the BPF target (where `chaos-ebpf` implements the trait for `TcContext`
//! with bounds-checked direct packet access and `bpf_skb_load_bytes`) and
//! for the host, where the unit tests below run it on hand-built byte slices
//! without root.
//!
//! Anything we cannot parse is reported as `Err(())`, and the caller lets the
//! packet pass untouched (fail open). The error carries nothing on purpose:
//! the only thing a caller may do with it is pass the packet.
//!
//! Everything is `#[inline(always)]`: the parser is instantiated once per
//! program, and the verifier tracks packet pointers far better within one
//! function than across BPF-to-BPF calls.

// `Result<_, ()>` is the kernel side's convention (see the module comment);
// a richer error type would only be thrown away by the caller.
#![allow(clippy::result_unit_err)]

use crate::{FAMILY_V4, FAMILY_V6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;

/// IPv6 extension headers walked before giving up (fail open). Real stacks
/// send one or two; eight covers every legitimate chain we know of.
pub const MAX_IPV6_EXT: usize = 8;
/// Offsets past this many bytes are not followed: keeps every offset the
/// verifier sees bounded, and no header chain we care about is longer.
pub const MAX_L4_OFFSET: usize = 512;

pub const NEXTHDR_HOP: u8 = 0;
pub const NEXTHDR_ROUTING: u8 = 43;
pub const NEXTHDR_FRAGMENT: u8 = 44;
pub const NEXTHDR_AUTH: u8 = 51;
pub const NEXTHDR_DEST: u8 = 60;

/// Reads from the packet's bytes, offsets counted from the start of the
/// Ethernet header. Every read fails (`Err`) rather than reading past the
/// end of the packet.
///
/// Two kinds of reads, because the verifier treats them differently:
/// fixed-offset reads (`*_at`) sit at offsets the compiler knows up to a
/// small bound (Ethernet, VLAN tag, the fixed IP headers), where direct
/// packet access is cheap to verify; variable-offset reads (`*_var`) sit
/// behind IPv4 options and IPv6 extension headers, where the offset depends
/// on packet data and proving a direct access safe would cost the verifier
/// (and us) far more than one helper call.
pub trait PacketBytes {
    /// The byte at `off` (fixed offset).
    fn u8_at(&self, off: usize) -> Result<u8, ()>;
    /// The big-endian `u16` at `off` (fixed offset); packet fields are in
    /// network byte order, the result is in host order.
    fn be16_at(&self, off: usize) -> Result<u16, ()>;
    /// Copies the `N` bytes at `off` (fixed offset) into `out[..N]`, leaving
    /// the rest of `out` as it is. `N` is 4 or 16.
    fn addr_at<const N: usize>(&self, off: usize, out: &mut [u8; 16]) -> Result<(), ()>;
    /// The byte at `off` (variable offset).
    fn u8_var(&self, off: usize) -> Result<u8, ()>;
    /// The big-endian `u16` at `off` (variable offset), in host order.
    fn be16_var(&self, off: usize) -> Result<u16, ()>;
}

/// Plain bytes, for tests and any userspace use: every read is a checked
/// slice access, fixed and variable alike.
impl PacketBytes for [u8] {
    #[inline(always)]
    fn u8_at(&self, off: usize) -> Result<u8, ()> {
        self.get(off).copied().ok_or(())
    }

    #[inline(always)]
    fn be16_at(&self, off: usize) -> Result<u16, ()> {
        let end = off.checked_add(2).ok_or(())?;
        match self.get(off..end) {
            Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
            _ => Err(()),
        }
    }

    #[inline(always)]
    fn addr_at<const N: usize>(&self, off: usize, out: &mut [u8; 16]) -> Result<(), ()> {
        let end = off.checked_add(N).ok_or(())?;
        let src = self.get(off..end).ok_or(())?;
        out.get_mut(..N).ok_or(())?.copy_from_slice(src);
        Ok(())
    }

    #[inline(always)]
    fn u8_var(&self, off: usize) -> Result<u8, ()> {
        self.u8_at(off)
    }

    #[inline(always)]
    fn be16_var(&self, off: usize) -> Result<u16, ()> {
        self.be16_at(off)
    }
}

/// What the classifier needs to know about a packet. In the kernel it lives
/// in per-CPU scratch memory (`CHAOS_SCRATCH`), not on the 512-byte stack.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    /// Network byte order, IPv4 in the first four bytes, rest zero. First
    /// and 8-byte aligned, so the classifier can mask them a word at a time.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Host byte order; 0 when the protocol has no ports.
    pub sport: u16,
    pub dport: u16,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// IP protocol number: for IPv6, the first header after the extension
    /// headers we walk.
    pub proto: u8,
    /// 1 for TCP and UDP (ports are meaningful), 0 otherwise.
    pub has_ports: u8,
    pub _pad: u8,
    /// Offset of the L4 header from the start of the Ethernet header (the
    /// actions that rewrite payload bytes start from it).
    pub l4_off: u16,
    pub _pad2: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<Packet>() == 48);

impl Packet {
    /// Zeroes the addresses, ports and `has_ports`, a 64-bit word at a time.
    /// Plain assignments get merged into one `memset` call, and the eBPF
    /// build's `memset` is a byte loop: 180 instructions on every packet.
    /// Volatile stores cannot be merged.
    #[inline(always)]
    fn clear_fields(&mut self) {
        let words = self as *mut Packet as *mut u64;
        // SAFETY: `Packet` is `repr(C, align(8))` and 48 bytes: words 0..4
        // are `src` and `dst`, aligned and inside the struct.
        unsafe {
            for i in 0..4 {
                core::ptr::write_volatile(words.add(i), 0);
            }
        }
        self.sport = 0;
        self.dport = 0;
        self.has_ports = 0;
    }
}

/// Outcome of parsing a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// `Packet` was filled in.
    Ip,
    /// Not IP, or a non-first fragment: never touched.
    Skip,
}

/// Parses the Ethernet frame in `p` into `pkt`.
///
/// Ethernet with at most one 802.1Q or 802.1ad tag, then IPv4 (options
/// skipped) or IPv6 (extension headers walked), then the TCP/UDP ports.
/// Returns `Ok(Parsed::Skip)` for non-IP frames and non-first fragments,
/// `Err(())` for anything malformed or truncated, and never reads past the
/// end of the packet. After `Err` or `Skip` the contents of `pkt` mean
/// nothing.
#[inline(always)]
pub fn parse<P: PacketBytes + ?Sized>(p: &P, pkt: &mut Packet) -> Result<Parsed, ()> {
    let mut l3 = ETH_HLEN;
    let mut ethertype = p.be16_at(12)?;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        // One tag: the TCI, then the encapsulated EtherType. A second tag
        // (QinQ) leaves a VLAN EtherType here and the frame is skipped.
        ethertype = p.be16_at(ETH_HLEN + 2)?;
        l3 += VLAN_HLEN;
    }
    pkt.clear_fields();
    let l4 = match ethertype {
        ETH_P_IP => match parse_ipv4(p, l3, pkt)? {
            Some(l4) => l4,
            None => return Ok(Parsed::Skip),
        },
        ETH_P_IPV6 => match parse_ipv6(p, l3, pkt)? {
            Some(l4) => l4,
            None => return Ok(Parsed::Skip),
        },
        _ => return Ok(Parsed::Skip),
    };
    // Bounded by MAX_L4_OFFSET, so it fits.
    pkt.l4_off = l4 as u16;
    if pkt.proto == IPPROTO_TCP || pkt.proto == IPPROTO_UDP {
        // The common case (no IP options, no extension headers) reads the
        // ports directly; anything else through the helper.
        if l4 == l3 + IPV4_HLEN || l4 == l3 + IPV6_HLEN {
            pkt.sport = p.be16_at(l4)?;
            pkt.dport = p.be16_at(l4 + 2)?;
        } else {
            pkt.sport = p.be16_var(l4)?;
            pkt.dport = p.be16_var(l4 + 2)?;
        }
        pkt.has_ports = 1;
    } else if pkt.proto == IPPROTO_ICMP || pkt.proto == IPPROTO_ICMPV6 {
        // Check the ICMP header is there, so a truncated packet fails open
        // like any other.
        p.u8_var(l4)?;
    }
    Ok(Parsed::Ip)
}

/// Returns the L4 offset, or `None` for a non-first fragment.
#[inline(always)]
fn parse_ipv4<P: PacketBytes + ?Sized>(
    p: &P,
    l3: usize,
    pkt: &mut Packet,
) -> Result<Option<usize>, ()> {
    let ver_ihl = p.u8_at(l3)?;
    if ver_ihl >> 4 != 4 {
        return Err(());
    }
    // The mask bounds the header length to 60 bytes for the verifier.
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ihl < IPV4_HLEN {
        return Err(());
    }
    let frag = p.be16_at(l3 + 6)?;
    if frag & 0x1fff != 0 {
        // Fragment offset != 0: no L4 header here. A first fragment (offset
        // 0, more-fragments set) carries the ports and is parsed.
        return Ok(None);
    }
    pkt.family = FAMILY_V4;
    pkt.proto = p.u8_at(l3 + 9)?;
    p.addr_at::<4>(l3 + 12, &mut pkt.src)?;
    p.addr_at::<4>(l3 + 16, &mut pkt.dst)?;
    Ok(Some(l3 + ihl))
}

/// Returns the L4 offset after walking the extension headers, or `None` for
/// a non-first fragment.
#[inline(always)]
fn parse_ipv6<P: PacketBytes + ?Sized>(
    p: &P,
    l3: usize,
    pkt: &mut Packet,
) -> Result<Option<usize>, ()> {
    if p.u8_at(l3)? >> 4 != 6 {
        return Err(());
    }
    pkt.family = FAMILY_V6;
    p.addr_at::<16>(l3 + 8, &mut pkt.src)?;
    p.addr_at::<16>(l3 + 24, &mut pkt.dst)?;
    let mut next = p.u8_at(l3 + 6)?;
    let mut off = l3 + IPV6_HLEN;
    // A constant trip count the verifier can see; each pass walks one
    // extension header or returns.
    for _ in 0..MAX_IPV6_EXT {
        let len = match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => (p.u8_var(off + 1)? as usize + 1) * 8,
            NEXTHDR_AUTH => (p.u8_var(off + 1)? as usize + 2) * 4,
            NEXTHDR_FRAGMENT => {
                // Offset field: upper 13 bits of bytes 2..4.
                if p.be16_var(off + 2)? & 0xfff8 != 0 {
                    return Ok(None);
                }
                8
            }
            _ => {
                pkt.proto = next;
                return Ok(Some(off));
            }
        };
        next = p.u8_var(off)?;
        off += len;
        if off > MAX_L4_OFFSET {
            return Err(());
        }
    }
    // All MAX_IPV6_EXT headers walked: what follows is the L4 header, unless
    // the chain is longer still, which we do not follow (fail open).
    if is_ipv6_ext(next) {
        return Err(());
    }
    pkt.proto = next;
    Ok(Some(off))
}

/// The extension headers `parse_ipv6` walks.
#[inline(always)]
fn is_ipv6_ext(next: u8) -> bool {
    matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_AUTH | NEXTHDR_DEST
    )
}

#[cfg(test)]
mod tests {
    extern crate std;

    use core::cell::Cell;
    use std::{vec, vec::Vec};

    use super::*;

    // ---- builders: real header bytes, written out by hand ----

    const V4_SRC: [u8; 4] = [198, 18, 0, 1];
    const V4_DST: [u8; 4] = [198, 18, 1, 1];
    /// fd00:c4a0::1 and fd00:c4a0::2
    const V6_SRC: [u8; 16] = [0xfd, 0, 0xc4, 0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const V6_DST: [u8; 16] = [0xfd, 0, 0xc4, 0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const SPORT: u16 = 40_000;
    const DPORT: u16 = 7000;
    const NEXTHDR_NONE: u8 = 59;
    const ETH_P_ARP: u16 = 0x0806;
    /// IPv4 flags/fragment-offset field bits.
    const IP_MF: u16 = 0x2000;
    const IP_DF: u16 = 0x4000;

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut b = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
        b.extend_from_slice(&ethertype.to_be_bytes());
        b
    }

    /// Ethernet with one tag: `tpid` (0x8100 or 0x88a8), VLAN id 42, then
    /// the inner EtherType.
    fn eth_tagged(tpid: u16, inner: u16) -> Vec<u8> {
        let mut b = eth(tpid);
        b.extend_from_slice(&42u16.to_be_bytes());
        b.extend_from_slice(&inner.to_be_bytes());
        b
    }

    /// An IPv4 header with `options` (a multiple of 4 bytes, NOPs here), so
    /// IHL = 5 + options / 4, and the flags/fragment-offset field `frag`.
    fn ipv4_hdr(proto: u8, options: &[u8], frag: u16, l4_len: usize) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let hlen = IPV4_HLEN + options.len();
        let ihl = (hlen / 4) as u8;
        let total = (hlen + l4_len) as u16;
        let mut b = vec![0x40 | (ihl & 0x0f), 0];
        b.extend_from_slice(&total.to_be_bytes());
        b.extend_from_slice(&[0x12, 0x34]); // id
        b.extend_from_slice(&frag.to_be_bytes());
        b.extend_from_slice(&[64, proto, 0, 0]); // ttl, proto, checksum
        b.extend_from_slice(&V4_SRC);
        b.extend_from_slice(&V4_DST);
        b.extend_from_slice(options);
        b
    }

    fn ipv6_hdr(next: u8, payload_len: usize) -> Vec<u8> {
        let mut b = vec![0x60, 0, 0, 0];
        b.extend_from_slice(&(payload_len as u16).to_be_bytes());
        b.extend_from_slice(&[next, 64]);
        b.extend_from_slice(&V6_SRC);
        b.extend_from_slice(&V6_DST);
        b
    }

    /// Hop-by-hop, routing or destination options: `(len8 + 1) * 8` bytes,
    /// next header and length, then options that are all Pad1 (zero).
    fn ext_hdr(next: u8, len8: u8) -> Vec<u8> {
        let mut b = vec![0u8; (usize::from(len8) + 1) * 8];
        b[0] = next;
        b[1] = len8;
        b
    }

    /// Authentication header: `(len4 + 2) * 4` bytes.
    fn ah_hdr(next: u8, len4: u8) -> Vec<u8> {
        let mut b = vec![0xa5u8; (usize::from(len4) + 2) * 4];
        b[0] = next;
        b[1] = len4;
        b[2] = 0;
        b[3] = 0;
        b
    }

    /// Fragment header; `offset` in 8-byte units.
    fn frag_hdr(next: u8, offset: u16, more: bool) -> Vec<u8> {
        let field = (offset << 3) | u16::from(more);
        let mut b = vec![next, 0];
        b.extend_from_slice(&field.to_be_bytes());
        b.extend_from_slice(&0xdead_beefu32.to_be_bytes());
        b
    }

    fn udp(sport: u16, dport: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b.extend_from_slice(&12u16.to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(b"ping");
        b
    }

    fn tcp(sport: u16, dport: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // seq, ack
        b.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]); // SYN
        b
    }

    /// ICMP / ICMPv6 echo request.
    fn icmp(kind: u8) -> Vec<u8> {
        vec![kind, 0, 0, 0, 0, 1, 0, 1]
    }

    fn v4_frame(l2: Vec<u8>, proto: u8, options: &[u8], frag: u16, l4: &[u8]) -> Vec<u8> {
        [l2, ipv4_hdr(proto, options, frag, l4.len()), l4.to_vec()].concat()
    }

    fn v4_udp() -> Vec<u8> {
        v4_frame(eth(ETH_P_IP), IPPROTO_UDP, &[], 0, &udp(SPORT, DPORT))
    }

    /// IPv6 behind `l2`: the extension headers in `exts` (already chained
    /// by the caller), `first` the next-header value of the fixed header.
    fn v6_frame(l2: Vec<u8>, first: u8, exts: &[Vec<u8>], l4: &[u8]) -> Vec<u8> {
        let body = [exts.concat(), l4.to_vec()].concat();
        [l2, ipv6_hdr(first, body.len()), body].concat()
    }

    fn v6_udp() -> Vec<u8> {
        v6_frame(eth(ETH_P_IPV6), IPPROTO_UDP, &[], &udp(SPORT, DPORT))
    }

    // ---- expectations ----

    fn v4_addr(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    fn expect(family: u8, proto: u8, ports: Option<(u16, u16)>) -> Packet {
        let (src, dst) = if family == FAMILY_V4 {
            (v4_addr(V4_SRC), v4_addr(V4_DST))
        } else {
            (V6_SRC, V6_DST)
        };
        let (sport, dport) = ports.unwrap_or((0, 0));
        Packet {
            family,
            proto,
            src,
            dst,
            sport,
            dport,
            has_ports: u8::from(ports.is_some()),
            _pad: 0,
            l4_off: 0,
            _pad2: [0; 6],
        }
    }

    /// A `Packet` full of leftovers from an earlier packet, as the per-CPU
    /// scratch slot is in the kernel: every field `parse` reports must be
    /// overwritten.
    fn dirty() -> Packet {
        Packet {
            family: 0xee,
            proto: 0xee,
            src: [0xee; 16],
            dst: [0xee; 16],
            sport: 0xeeee,
            dport: 0xeeee,
            has_ports: 0xee,
            _pad: 0,
            l4_off: 0xeeee,
            _pad2: [0; 6],
        }
    }

    /// Parses `bytes` into a dirty `Packet`; `Skip` comes back with the
    /// packet zeroed, since its contents mean nothing then.
    fn run(bytes: &[u8]) -> Result<(Parsed, Packet), ()> {
        let mut pkt = dirty();
        match parse(bytes, &mut pkt)? {
            Parsed::Ip => {
                // The L4 offset is checked by `l4_offset` below; here only
                // that it was written and is bounded (it may lie past the
                // end of a truncated non-TCP/UDP packet: users read it with
                // bounds-checked helpers).
                assert!(usize::from(pkt.l4_off) <= MAX_L4_OFFSET, "{pkt:?}");
                pkt.l4_off = 0;
                Ok((Parsed::Ip, pkt))
            }
            Parsed::Skip => Ok((Parsed::Skip, Packet::default())),
        }
    }

    fn ip(bytes: &[u8]) -> Packet {
        match run(bytes) {
            Ok((Parsed::Ip, pkt)) => pkt,
            other => panic!("expected Ip, got {other:?} for {bytes:02x?}"),
        }
    }

    fn assert_skip(bytes: &[u8]) {
        assert_eq!(
            run(bytes),
            Ok((Parsed::Skip, Packet::default())),
            "{bytes:02x?}"
        );
    }

    fn assert_err(bytes: &[u8]) {
        assert_eq!(run(bytes), Err(()), "{bytes:02x?}");
    }

    /// Wraps a byte slice and records how it is read, to check the split
    /// between direct (fixed-offset) and helper (variable-offset) reads
    /// that the kernel side depends on.
    struct Recorder<'a> {
        bytes: &'a [u8],
        /// One past the furthest byte a fixed-offset read asked for.
        fixed_end: Cell<usize>,
        var_reads: Cell<usize>,
    }

    impl<'a> Recorder<'a> {
        fn new(bytes: &'a [u8]) -> Self {
            Recorder {
                bytes,
                fixed_end: Cell::new(0),
                var_reads: Cell::new(0),
            }
        }
        fn fixed(&self, off: usize, len: usize) {
            self.fixed_end.set(self.fixed_end.get().max(off + len));
        }
        fn var(&self) {
            self.var_reads.set(self.var_reads.get() + 1);
        }
    }

    impl PacketBytes for Recorder<'_> {
        fn u8_at(&self, off: usize) -> Result<u8, ()> {
            self.fixed(off, 1);
            self.bytes.u8_at(off)
        }
        fn be16_at(&self, off: usize) -> Result<u16, ()> {
            self.fixed(off, 2);
            self.bytes.be16_at(off)
        }
        fn addr_at<const N: usize>(&self, off: usize, out: &mut [u8; 16]) -> Result<(), ()> {
            self.fixed(off, N);
            self.bytes.addr_at::<N>(off, out)
        }
        fn u8_var(&self, off: usize) -> Result<u8, ()> {
            self.var();
            self.bytes.u8_var(off)
        }
        fn be16_var(&self, off: usize) -> Result<u16, ()> {
            self.var();
            self.bytes.be16_var(off)
        }
    }

    /// The furthest a direct packet access may reach: tagged Ethernet, the
    /// fixed IPv6 header, the two ports.
    const MAX_FIXED_END: usize = ETH_HLEN + VLAN_HLEN + IPV6_HLEN + 4;

    fn recorded(bytes: &[u8]) -> (Result<Parsed, ()>, usize, usize) {
        let r = Recorder::new(bytes);
        let mut pkt = dirty();
        let res = parse(&r, &mut pkt);
        (res, r.fixed_end.get(), r.var_reads.get())
    }

    // ---- the slice impl itself ----

    #[test]
    fn slice_reads_are_bounds_checked() {
        let b: &[u8] = &[1, 2, 3, 4, 5];
        assert_eq!(b.u8_at(4), Ok(5));
        assert_eq!(b.u8_at(5), Err(()));
        assert_eq!(b.be16_at(3), Ok(0x0405));
        assert_eq!(b.be16_at(4), Err(()));
        assert_eq!(b.be16_var(usize::MAX), Err(()));
        let mut out = [0xffu8; 16];
        assert_eq!(b.addr_at::<4>(1, &mut out), Ok(()));
        assert_eq!(out[..5], [2, 3, 4, 5, 0xff]);
        assert_eq!(b.addr_at::<4>(2, &mut out), Err(()));
        assert_eq!(b.addr_at::<16>(usize::MAX - 3, &mut out), Err(()));
    }

    // ---- IPv4 ----

    #[test]
    fn ipv4_udp() {
        let bytes = v4_udp();
        assert_eq!(
            ip(&bytes),
            expect(FAMILY_V4, IPPROTO_UDP, Some((SPORT, DPORT)))
        );
        // The common case needs no helper call in the kernel.
        let (res, fixed_end, var_reads) = recorded(&bytes);
        assert_eq!(res, Ok(Parsed::Ip));
        assert_eq!(var_reads, 0);
        assert_eq!(fixed_end, ETH_HLEN + IPV4_HLEN + 4);
    }

    #[test]
    fn ipv4_tcp() {
        let bytes = v4_frame(eth(ETH_P_IP), IPPROTO_TCP, &[], IP_DF, &tcp(443, 51_000));
        assert_eq!(
            ip(&bytes),
            expect(FAMILY_V4, IPPROTO_TCP, Some((443, 51_000)))
        );
    }

    #[test]
    fn ipv4_options_every_ihl() {
        for ihl in 6..=15usize {
            let options = vec![1u8; (ihl - 5) * 4]; // NOPs
            for (proto, l4) in [
                (IPPROTO_UDP, udp(SPORT, DPORT)),
                (IPPROTO_TCP, tcp(SPORT, DPORT)),
            ] {
                let bytes = v4_frame(eth(ETH_P_IP), proto, &options, 0, &l4);
                assert_eq!(bytes[ETH_HLEN] & 0x0f, ihl as u8);
                assert_eq!(
                    ip(&bytes),
                    expect(FAMILY_V4, proto, Some((SPORT, DPORT))),
                    "IHL {ihl}"
                );
                let (_, fixed_end, _) = recorded(&bytes);
                assert!(fixed_end <= MAX_FIXED_END, "IHL {ihl}: {fixed_end}");
            }
        }
        // Options that are not a whole header's worth of NOPs make no
        // difference: only IHL counts. Router alert (RFC 2113) + EOL.
        let bytes = v4_frame(
            eth(ETH_P_IP),
            IPPROTO_UDP,
            &[0x94, 0x04, 0, 0],
            0,
            &udp(SPORT, DPORT),
        );
        assert_eq!(
            ip(&bytes),
            expect(FAMILY_V4, IPPROTO_UDP, Some((SPORT, DPORT)))
        );
    }

    #[test]
    fn ipv4_options_use_the_helper() {
        let bytes = v4_frame(eth(ETH_P_IP), IPPROTO_UDP, &[1; 4], 0, &udp(SPORT, DPORT));
        let (res, fixed_end, var_reads) = recorded(&bytes);
        assert_eq!(res, Ok(Parsed::Ip));
        assert_eq!(var_reads, 2, "both ports behind the options");
        assert_eq!(fixed_end, ETH_HLEN + IPV4_HLEN);
    }

    #[test]
    fn ipv4_ihl_below_5_is_err() {
        for ihl in 0..5u8 {
            let mut bytes = v4_udp();
            bytes[ETH_HLEN] = 0x40 | ihl;
            assert_err(&bytes);
        }
    }

    #[test]
    fn ipv4_options_truncated_is_err() {
        // IHL 15 says 40 bytes of options, the frame ends after 8 of them.
        let mut bytes = v4_frame(eth(ETH_P_IP), IPPROTO_UDP, &[1; 8], 0, &[]);
        bytes[ETH_HLEN] = 0x4f;
        assert_err(&bytes);
    }

    #[test]
    fn ipv4_non_first_fragment_is_skipped() {
        for frag in [1, 185, 0x1fff, IP_MF | 185, IP_DF | 1] {
            // What sits where the ports would be is payload: never read.
            let bytes = v4_frame(eth(ETH_P_IP), IPPROTO_UDP, &[], frag, &udp(SPORT, DPORT));
            assert_skip(&bytes);
            // Also when the fragment is too short to hold "ports".
            let bytes = v4_frame(eth(ETH_P_IP), IPPROTO_UDP, &[], frag, &[]);
            assert_skip(&bytes);
        }
    }

    #[test]
    fn ipv4_first_fragment_is_parsed() {
        for frag in [IP_MF, IP_DF, 0] {
            let bytes = v4_frame(eth(ETH_P_IP), IPPROTO_UDP, &[], frag, &udp(SPORT, DPORT));
            assert_eq!(
                ip(&bytes),
                expect(FAMILY_V4, IPPROTO_UDP, Some((SPORT, DPORT))),
                "frag field {frag:#06x}"
            );
        }
    }

    #[test]
    fn ipv4_other_protocol_has_no_ports() {
        // GRE: parsed as IP, nothing past the IP header is read.
        let bytes = v4_frame(eth(ETH_P_IP), 47, &[], 0, &[]);
        assert_eq!(ip(&bytes), expect(FAMILY_V4, 47, None));
    }

    // ---- L2 ----

    #[test]
    fn vlan_tags() {
        for tpid in [ETH_P_8021Q, ETH_P_8021AD] {
            let bytes = v4_frame(
                eth_tagged(tpid, ETH_P_IP),
                IPPROTO_UDP,
                &[],
                0,
                &udp(SPORT, DPORT),
            );
            assert_eq!(
                ip(&bytes),
                expect(FAMILY_V4, IPPROTO_UDP, Some((SPORT, DPORT))),
                "tpid {tpid:#06x} v4"
            );
            let bytes = v6_frame(
                eth_tagged(tpid, ETH_P_IPV6),
                IPPROTO_TCP,
                &[],
                &tcp(SPORT, DPORT),
            );
            assert_eq!(
                ip(&bytes),
                expect(FAMILY_V6, IPPROTO_TCP, Some((SPORT, DPORT))),
                "tpid {tpid:#06x} v6"
            );
            let (_, fixed_end, var_reads) = recorded(&bytes);
            assert_eq!((fixed_end, var_reads), (MAX_FIXED_END, 0));
            // With options behind the tag.
            let bytes = v4_frame(
                eth_tagged(tpid, ETH_P_IP),
                IPPROTO_UDP,
                &[1; 12],
                0,
                &udp(SPORT, DPORT),
            );
            assert_eq!(
                ip(&bytes),
                expect(FAMILY_V4, IPPROTO_UDP, Some((SPORT, DPORT)))
            );
        }
    }

    #[test]
    fn double_tag_is_skipped() {
        // QinQ: only one tag is looked through; the inner tag's EtherType is
        // not IP, so the frame passes untouched.
        let mut l2 = eth_tagged(ETH_P_8021AD, ETH_P_8021Q);
        l2.extend_from_slice(&7u16.to_be_bytes());
        l2.extend_from_slice(&ETH_P_IP.to_be_bytes());
        let bytes = v4_frame(l2, IPPROTO_UDP, &[], 0, &udp(SPORT, DPORT));
        assert_skip(&bytes);
    }

    #[test]
    fn non_ip_is_skipped() {
        // ARP request (28 bytes), LLDP, an unassigned EtherType, an 802.3
        // length field, and ARP behind a tag.
        let mut arp = eth(ETH_P_ARP);
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&[0; 20]);
        assert_skip(&arp);
        assert_skip(&eth(0x88cc));
        assert_skip(&eth(0xffff));
        assert_skip(&[eth(0x0040), vec![0; 64]].concat());
        assert_skip(&eth_tagged(ETH_P_8021Q, ETH_P_ARP));
    }

    #[test]
    fn version_mismatch_is_err() {
        // EtherType IPv4, version 6 (a real IPv6 header behind it).
        let mut bytes = v6_udp();
        bytes[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        assert_err(&bytes);
        // EtherType IPv6, version 4.
        let mut bytes = v4_udp();
        bytes[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        bytes.resize(bytes.len() + 40, 0);
        assert_err(&bytes);
        // Nonsense versions.
        for version in [0u8, 5, 15] {
            let mut bytes = v4_udp();
            bytes[ETH_HLEN] = version << 4 | 5;
            assert_err(&bytes);
            let mut bytes = v6_udp();
            bytes[ETH_HLEN] = version << 4;
            assert_err(&bytes);
        }
    }

    // ---- IPv6 ----

    #[test]
    fn ipv6_udp() {
        let bytes = v6_udp();
        assert_eq!(
            ip(&bytes),
            expect(FAMILY_V6, IPPROTO_UDP, Some((SPORT, DPORT)))
        );
        let (_, fixed_end, var_reads) = recorded(&bytes);
        assert_eq!((fixed_end, var_reads), (ETH_HLEN + IPV6_HLEN + 4, 0));
    }

    #[test]
    fn ipv6_chain_hop_dest_routing_then_tcp() {
        let exts = [
            ext_hdr(NEXTHDR_DEST, 0),
            ext_hdr(NEXTHDR_ROUTING, 1),
            ext_hdr(IPPROTO_TCP, 2),
        ];
        let bytes = v6_frame(eth(ETH_P_IPV6), NEXTHDR_HOP, &exts, &tcp(SPORT, DPORT));
        assert_eq!(
            ip(&bytes),
            expect(FAMILY_V6, IPPROTO_TCP, Some((SPORT, DPORT)))
        );
        // Everything past the fixed header goes through the helper.
        let (_, fixed_end, var_reads) = recorded(&bytes);
        assert_eq!(fixed_end, ETH_HLEN + IPV6_HLEN);
        assert!(var_reads > 0);
    }

    #[test]
    fn ipv6_ah() {
        // AH with a 96-bit ICV (payload length 4: 24 bytes), then UDP.
        let bytes = v6_frame(
            eth(ETH_P_IPV6),
            NEXTHDR_AUTH,
            &[ah_hdr(IPPROTO_UDP, 4)],
            &udp(SPORT, DPORT),
        );
        assert_eq!(
            ip(&bytes),
            expect(FAMILY_V6, IPPROTO_UDP, Some((SPORT, DPORT)))
        );
        // AH counts its length in 4-byte units, not 8: a 20-byte AH
        // (length 3) must not be read as 32 bytes.
        let bytes = v6_frame(
            eth(ETH_P_IPV6),
            NEXTHDR_HOP,
            &[ext_hdr(NEXTHDR_AUTH, 0), ah_hdr(IPPROTO_TCP, 3)],
            &tcp(SPORT, DPORT),
        );
        assert_eq!(
            ip(&bytes),
            expect(FAMILY_V6, IPPROTO_TCP, Some((SPORT, DPORT)))
        );
    }

    #[test]
    fn ipv6_first_fragment_is_parsed() {
        for more in [true, false] {
            let bytes = v6_frame(
                eth(ETH_P_IPV6),
                NEXTHDR_FRAGMENT,
                &[frag_hdr(IPPROTO_UDP, 0, more)],
                &udp(SPORT, DPORT),
            );
            assert_eq!(
                ip(&bytes),
                expect(FAMILY_V6, IPPROTO_UDP, Some((SPORT, DPORT))),
                "more fragments {more}"
            );
        }
    }

    #[test]
    fn ipv6_non_first_fragment_is_skipped() {
        for (offset, more) in [(1, true), (1, false), (185, true), (0x1fff, false)] {
            let bytes = v6_frame(
                eth(ETH_P_IPV6),
                NEXTHDR_FRAGMENT,
                &[frag_hdr(IPPROTO_UDP, offset, more)],
                &udp(SPORT, DPORT),
            );
            assert_skip(&bytes);
            // Behind hop-by-hop, and with no payload at all.
            let bytes = v6_frame(
                eth(ETH_P_IPV6),
                NEXTHDR_HOP,
                &[
                    ext_hdr(NEXTHDR_FRAGMENT, 0),
                    frag_hdr(IPPROTO_UDP, offset, more),
                ],
                &[],
            );
            assert_skip(&bytes);
        }
    }

    /// `n` destination-options headers chained before UDP.
    fn v6_chain(n: usize) -> Vec<u8> {
        let exts: Vec<Vec<u8>> = (1..=n)
            .map(|i| {
                let next = if i == n { IPPROTO_UDP } else { NEXTHDR_DEST };
                ext_hdr(next, 0)
            })
            .collect();
        v6_frame(eth(ETH_P_IPV6), NEXTHDR_DEST, &exts, &udp(SPORT, DPORT))
    }

    #[test]
    fn ipv6_chain_up_to_the_walk_limit() {
        for n in 1..=MAX_IPV6_EXT {
            assert_eq!(
                ip(&v6_chain(n)),
                expect(FAMILY_V6, IPPROTO_UDP, Some((SPORT, DPORT))),
                "{n} extension headers"
            );
        }
    }

    #[test]
    fn ipv6_chain_longer_than_the_walk_limit_is_err() {
        for n in MAX_IPV6_EXT + 1..=MAX_IPV6_EXT + 3 {
            assert_err(&v6_chain(n));
        }
    }

    #[test]
    fn ipv6_chain_past_the_offset_limit_is_err() {
        // One hop-by-hop header of 2048 bytes: all there, but past
        // MAX_L4_OFFSET, so not followed.
        let bytes = v6_frame(
            eth(ETH_P_IPV6),
            NEXTHDR_HOP,
            &[ext_hdr(IPPROTO_UDP, 255)],
            &udp(SPORT, DPORT),
        );
        assert_err(&bytes);
        // The largest header that still ends within the limit is followed.
        let len8 = ((MAX_L4_OFFSET - ETH_HLEN - IPV6_HLEN) / 8 - 1) as u8;
        let bytes = v6_frame(
            eth(ETH_P_IPV6),
            NEXTHDR_HOP,
            &[ext_hdr(IPPROTO_UDP, len8)],
            &udp(SPORT, DPORT),
        );
        assert_eq!(
            ip(&bytes),
            expect(FAMILY_V6, IPPROTO_UDP, Some((SPORT, DPORT)))
        );
    }

    #[test]
    fn ipv6_no_next_header() {
        let bytes = v6_frame(eth(ETH_P_IPV6), NEXTHDR_NONE, &[], &[]);
        assert_eq!(ip(&bytes), expect(FAMILY_V6, NEXTHDR_NONE, None));
    }

    // ---- ICMP ----

    #[test]
    fn icmp_has_no_ports() {
        let bytes = v4_frame(eth(ETH_P_IP), IPPROTO_ICMP, &[], 0, &icmp(8));
        assert_eq!(ip(&bytes), expect(FAMILY_V4, IPPROTO_ICMP, None));
        let bytes = v6_frame(eth(ETH_P_IPV6), IPPROTO_ICMPV6, &[], &icmp(128));
        assert_eq!(ip(&bytes), expect(FAMILY_V6, IPPROTO_ICMPV6, None));
        // Behind options and extension headers too.
        let bytes = v4_frame(eth(ETH_P_IP), IPPROTO_ICMP, &[1; 4], 0, &icmp(8));
        assert_eq!(ip(&bytes), expect(FAMILY_V4, IPPROTO_ICMP, None));
        let bytes = v6_frame(
            eth(ETH_P_IPV6),
            NEXTHDR_HOP,
            &[ext_hdr(IPPROTO_ICMPV6, 0)],
            &icmp(128),
        );
        assert_eq!(ip(&bytes), expect(FAMILY_V6, IPPROTO_ICMPV6, None));
    }

    #[test]
    fn icmp_without_header_is_err() {
        assert_err(&v4_frame(eth(ETH_P_IP), IPPROTO_ICMP, &[], 0, &[]));
        assert_err(&v6_frame(eth(ETH_P_IPV6), IPPROTO_ICMPV6, &[], &[]));
    }

    // ---- truncation and robustness ----

    /// Valid frames of every kind above.
    fn corpus() -> Vec<Vec<u8>> {
        let mut c = vec![
            v4_udp(),
            v6_udp(),
            v4_frame(eth(ETH_P_IP), IPPROTO_TCP, &[], 0, &tcp(SPORT, DPORT)),
            v4_frame(eth(ETH_P_IP), IPPROTO_UDP, &[1; 40], 0, &udp(SPORT, DPORT)),
            v4_frame(eth(ETH_P_IP), IPPROTO_UDP, &[1; 20], 0, &udp(SPORT, DPORT)),
            v4_frame(eth(ETH_P_IP), IPPROTO_UDP, &[], IP_MF, &udp(SPORT, DPORT)),
            v4_frame(eth(ETH_P_IP), IPPROTO_UDP, &[], 185, &udp(SPORT, DPORT)),
            v4_frame(eth(ETH_P_IP), IPPROTO_ICMP, &[], 0, &icmp(8)),
            v4_frame(eth(ETH_P_IP), IPPROTO_ICMP, &[1; 8], 0, &icmp(8)),
            v4_frame(
                eth_tagged(ETH_P_8021Q, ETH_P_IP),
                IPPROTO_UDP,
                &[],
                0,
                &udp(SPORT, DPORT),
            ),
            v4_frame(
                eth_tagged(ETH_P_8021AD, ETH_P_IP),
                IPPROTO_TCP,
                &[1; 4],
                0,
                &tcp(SPORT, DPORT),
            ),
            v6_frame(
                eth_tagged(ETH_P_8021Q, ETH_P_IPV6),
                IPPROTO_UDP,
                &[],
                &udp(SPORT, DPORT),
            ),
            v6_frame(
                eth(ETH_P_IPV6),
                NEXTHDR_HOP,
                &[
                    ext_hdr(NEXTHDR_DEST, 0),
                    ext_hdr(NEXTHDR_ROUTING, 1),
                    ext_hdr(IPPROTO_TCP, 2),
                ],
                &tcp(SPORT, DPORT),
            ),
            v6_frame(
                eth(ETH_P_IPV6),
                NEXTHDR_AUTH,
                &[ah_hdr(IPPROTO_UDP, 4)],
                &udp(SPORT, DPORT),
            ),
            v6_frame(
                eth(ETH_P_IPV6),
                NEXTHDR_FRAGMENT,
                &[frag_hdr(IPPROTO_UDP, 0, true)],
                &udp(SPORT, DPORT),
            ),
            v6_frame(
                eth(ETH_P_IPV6),
                NEXTHDR_FRAGMENT,
                &[frag_hdr(IPPROTO_UDP, 9, true)],
                &udp(SPORT, DPORT),
            ),
            v6_frame(eth(ETH_P_IPV6), IPPROTO_ICMPV6, &[], &icmp(128)),
            v6_frame(eth(ETH_P_IPV6), NEXTHDR_NONE, &[], &[]),
            v6_chain(MAX_IPV6_EXT),
            eth_tagged(ETH_P_8021Q, ETH_P_ARP),
        ];
        let mut arp = eth(ETH_P_ARP);
        arp.extend_from_slice(&[0; 28]);
        c.push(arp);
        c
    }

    #[test]
    fn truncated_plain_headers_are_err_until_the_ports() {
        // For the fixed-size cases the exact cut-off is known: every byte up
        // to the end of the destination port is needed.
        for (bytes, needed) in [
            (v4_udp(), ETH_HLEN + IPV4_HLEN + 4),
            (v6_udp(), ETH_HLEN + IPV6_HLEN + 4),
            (
                v4_frame(eth(ETH_P_IP), IPPROTO_UDP, &[1; 8], 0, &udp(SPORT, DPORT)),
                ETH_HLEN + IPV4_HLEN + 8 + 4,
            ),
        ] {
            let whole = run(&bytes);
            assert!(whole.is_ok());
            for len in 0..=bytes.len() {
                let got = run(&bytes[..len]);
                if len < needed {
                    assert_eq!(got, Err(()), "prefix of {len} bytes");
                } else {
                    assert_eq!(got, whole, "prefix of {len} bytes");
                }
            }
        }
    }

    /// Every prefix of every valid frame parses to the whole frame's answer
    /// or to `Err`, never to something else, and never panics.
    #[test]
    fn every_prefix_is_err_or_the_same_answer() {
        for bytes in corpus() {
            let whole = run(&bytes);
            assert!(whole.is_ok(), "corpus frame must parse: {bytes:02x?}");
            for len in 0..=bytes.len() {
                let got = run(&bytes[..len]);
                assert!(
                    got.is_err() || got == whole,
                    "prefix of {len} bytes: {got:?}, whole: {whole:?}, frame {bytes:02x?}"
                );
            }
            // Trailing bytes (Ethernet padding, payload) change nothing.
            let mut padded = bytes.clone();
            padded.extend_from_slice(&[0; 64]);
            assert_eq!(run(&padded), whole);
        }
    }

    /// Deterministic xorshift, so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Whatever the bytes: no panic, a consistent `Packet` when it is IP, and
    /// direct reads never beyond `MAX_FIXED_END` (the kernel side relies on
    /// it to keep direct-access offsets small and constant-bounded).
    #[test]
    fn mutated_frames_never_panic() {
        let corpus = corpus();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..20_000 {
            let mut bytes = corpus[round % corpus.len()].clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(bytes.len());
                bytes[i] = rng.next() as u8;
            }
            bytes.truncate(rng.below(bytes.len() + 1).max(bytes.len() / 2));
            let (res, fixed_end, _) = recorded(&bytes);
            assert!(fixed_end <= MAX_FIXED_END, "{bytes:02x?}");
            if let Ok((Parsed::Ip, pkt)) = run(&bytes) {
                assert_eq!(res, Ok(Parsed::Ip));
                assert!(pkt.family == FAMILY_V4 || pkt.family == FAMILY_V6);
                let ported = pkt.proto == IPPROTO_TCP || pkt.proto == IPPROTO_UDP;
                assert_eq!(pkt.has_ports, u8::from(ported), "{pkt:?}");
                if !ported {
                    assert_eq!((pkt.sport, pkt.dport), (0, 0));
                }
                if pkt.family == FAMILY_V4 {
                    assert_eq!(pkt.src[4..], [0; 12]);
                    assert_eq!(pkt.dst[4..], [0; 12]);
                }
            }
        }
        // Random garbage of every small length.
        for len in 0..128 {
            for _ in 0..50 {
                let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                let _ = run(&bytes);
            }
        }
    }

    #[test]
    fn stale_scratch_does_not_leak() {
        // The kernel reuses one scratch slot per CPU: an IPv4 packet after
        // an IPv6 one must not keep the IPv6 address bytes, an ICMP packet
        // after a UDP one must not keep its ports.
        let mut pkt = Packet::default();
        assert_eq!(parse(&v6_udp()[..], &mut pkt), Ok(Parsed::Ip));
        assert_eq!(parse(&v4_udp()[..], &mut pkt), Ok(Parsed::Ip));
        pkt.l4_off = 0;
        assert_eq!(pkt, expect(FAMILY_V4, IPPROTO_UDP, Some((SPORT, DPORT))));
        let icmp_frame = v4_frame(eth(ETH_P_IP), IPPROTO_ICMP, &[], 0, &icmp(8));
        assert_eq!(parse(&icmp_frame[..], &mut pkt), Ok(Parsed::Ip));
        pkt.l4_off = 0;
        assert_eq!(pkt, expect(FAMILY_V4, IPPROTO_ICMP, None));
    }

    #[test]
    fn l4_offset() {
        let mut pkt = Packet::default();
        assert_eq!(parse(&v4_udp()[..], &mut pkt), Ok(Parsed::Ip));
        assert_eq!(usize::from(pkt.l4_off), ETH_HLEN + IPV4_HLEN);
        assert_eq!(parse(&v6_udp()[..], &mut pkt), Ok(Parsed::Ip));
        assert_eq!(usize::from(pkt.l4_off), ETH_HLEN + IPV6_HLEN);
    }
}
