//! Packet parsing, shared by the ingress and egress classifiers.
//!
//! The parser itself is `chaos_common::packet::parse`, generic over
//! [`PacketBytes`] so that it is unit-tested on the host. This module is the
//! kernel half: how bytes are read out of a `TcContext`.
//!
//! Fixed-offset reads use direct packet access, every one through
//! [`ptr_at`], which checks the read against `data_end` (the verifier insists
//! on it). Variable-offset reads use `bpf_skb_load_bytes`. Anything we cannot
//! parse is reported as `Err(())`, and the caller lets the packet pass
//! untouched.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use chaos_common::packet::{self, PacketBytes};
pub use chaos_common::packet::{Packet, Parsed};

/// The packet of one `TcContext`, as `chaos_common::packet` reads it.
struct Skb<'a>(&'a TcContext);

/// Returns a pointer to a `T` at `offset` bytes into the packet, or `Err`
/// when the packet is shorter than that.
///
/// The shape matters to the verifier: the pointer that is compared with
/// `data_end` must be the very one that is dereferenced afterwards (the
/// compiler keeps them in one register when the check and the cast are this
/// close), otherwise the access is "invalid access to packet".
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

impl PacketBytes for Skb<'_> {
    #[inline(always)]
    fn u8_at(&self, off: usize) -> Result<u8, ()> {
        // SAFETY: ptr_at checked the byte lies inside the packet.
        Ok(unsafe { *ptr_at::<u8>(self.0, off)? })
    }

    /// Reads a big-endian u16 (packet fields are in network byte order).
    #[inline(always)]
    fn be16_at(&self, off: usize) -> Result<u16, ()> {
        // SAFETY: ptr_at checked both bytes lie inside the packet; the read
        // is unaligned-safe.
        let raw = unsafe { core::ptr::read_unaligned(ptr_at::<[u8; 2]>(self.0, off)?) };
        Ok(u16::from_be_bytes(raw))
    }

    /// Copies byte by byte with volatile reads: a plain copy becomes a call
    /// to the eBPF build's `memmove`, a byte loop several times longer.
    #[inline(always)]
    fn addr_at<const N: usize>(&self, off: usize, out: &mut [u8; 16]) -> Result<(), ()> {
        let src = ptr_at::<[u8; N]>(self.0, off)? as *const u8;
        for (i, byte) in out.iter_mut().take(N).enumerate() {
            // SAFETY: ptr_at checked all N bytes lie inside the packet.
            *byte = unsafe { core::ptr::read_volatile(src.add(i)) };
        }
        Ok(())
    }

    /// Reads a byte at a variable offset with `bpf_skb_load_bytes`. Used
    /// behind IPv4 options and IPv6 extension headers, where the offset is
    /// data-dependent: the helper checks bounds itself, which keeps the
    /// verifier's work (and our program) small on these rare paths.
    #[inline(always)]
    fn u8_var(&self, off: usize) -> Result<u8, ()> {
        self.0.load::<u8>(off).map_err(|_| ())
    }

    /// Reads a big-endian u16 at a variable offset with
    /// `bpf_skb_load_bytes`, for the same reason as `u8_var`.
    #[inline(always)]
    fn be16_var(&self, off: usize) -> Result<u16, ()> {
        let raw: [u8; 2] = self.0.load(off).map_err(|_| ())?;
        Ok(u16::from_be_bytes(raw))
    }
}

/// Parses the packet of `ctx` into `pkt`; see `chaos_common::packet::parse`.
#[inline(always)]
pub fn parse(ctx: &TcContext, pkt: &mut Packet) -> Result<Parsed, ()> {
    packet::parse(&Skb(ctx), pkt)
}
