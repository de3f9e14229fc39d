//! Actions that change or copy a packet instead of dropping it: corruption
//! and duplication. Both return `Err(())` when they could not act; the
//! caller then lets the packet pass unchanged and does not count it as
//! injected (fail open).

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, BPF_F_INGRESS, BPF_F_MARK_MANGLED_0},
    helpers::bpf_get_prandom_u32,
    programs::TcContext,
};
use chaos_common::{
    DIR_INGRESS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, packet::MAX_L4_OFFSET,
    packet::Packet,
};

/// Slots of `__sk_buff::cb` (the qdisc control block's private bytes) that
/// carry the duplicate marker. The mark field is left alone: firewalls,
/// policy routing and CNIs use it.
const DUP_CB_SLOTS: (usize, usize) = (3, 4);
/// Two words, so a control block holding leftovers of another layer is
/// taken for our duplicate with probability 2^-64.
const DUP_MARKER: (u32, u32) = (0x6368_616f, 0x7364_7570);

/// Size argument of `bpf_l4_csum_replace`: the changed field is 16 bits.
const CSUM_FIELD_16: u64 = 2;

/// Flips one random bit in one random byte of the L4 payload and fixes the
/// L4 checksum, so the packet is accepted and the receiving application
/// reads the corrupted byte (a fault the network checksum would have
/// caught is invisible to applications, which is the less useful test).
///
/// Only TCP, UDP and ICMP/ICMPv6 packets with at least one payload byte are
/// corrupted; headers are never touched, so the packet still reaches the
/// same socket. The byte is rewritten with `bpf_skb_store_bytes` without
/// `BPF_F_RECOMPUTE_CSUM`: `bpf_l4_csum_replace` changes the checksum field
/// by exactly the data's change, so a `CHECKSUM_COMPLETE` sum stays right,
/// and with `CHECKSUM_PARTIAL` (checksum offload) the helper leaves the field
/// alone and the device sums the corrupted data.
#[inline(always)]
pub fn corrupt(ctx: &TcContext, pkt: &Packet) -> Result<(), ()> {
    let l4 = usize::from(pkt.l4_off);
    // The parser bounds it; repeated so every offset below is bounded too.
    if l4 > MAX_L4_OFFSET {
        return Err(());
    }
    let (payload, csum_off, flags) = payload_span(ctx, pkt)?;
    let len = ctx.len() as usize;
    if payload >= len {
        return Err(());
    }
    // SAFETY: helpers without arguments.
    let (r1, r2) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    let off = payload + (r1 as usize) % (len - payload);
    let bit = 1u8 << (r2 & 7);
    // The checksum sums 16-bit words counted from the start of the L4
    // header; an odd last byte is padded with a zero.
    let word = l4 + ((off - l4) & !1);
    let hi: u8 = ctx.load(word).map_err(|_| ())?;
    let lo: u8 = if word + 1 < len {
        ctx.load(word + 1).map_err(|_| ())?
    } else {
        0
    };
    let (new_hi, new_lo) = if off == word {
        (hi ^ bit, lo)
    } else {
        (hi, lo ^ bit)
    };
    let byte = if off == word { new_hi } else { new_lo };
    ctx.store(off, &byte, 0).map_err(|_| ())?;
    // Both words in packet byte order, as the helper expects.
    let from = u64::from(u16::from_ne_bytes([hi, lo]));
    let to = u64::from(u16::from_ne_bytes([new_hi, new_lo]));
    ctx.l4_csum_replace(csum_off, from, to, flags | CSUM_FIELD_16)
        .map_err(|_| ())
}

/// Where a packet's L4 payload starts, where its checksum is, and the
/// checksum flags: `Err` when [`corrupt`] has nothing to act on (no
/// payload, another protocol). Shadow mode asks this alone.
#[inline(always)]
pub fn payload_span(ctx: &TcContext, pkt: &Packet) -> Result<(usize, usize, u64), ()> {
    let l4 = usize::from(pkt.l4_off);
    if l4 > MAX_L4_OFFSET {
        return Err(());
    }
    let span = match pkt.proto {
        IPPROTO_TCP => {
            let data_off: u8 = ctx.load(l4 + 12).map_err(|_| ())?;
            (l4 + usize::from(data_off >> 4) * 4, l4 + 16, 0)
        }
        // A zero UDP checksum (IPv4 only) means "none": leave it zero.
        IPPROTO_UDP => (l4 + 8, l4 + 6, u64::from(BPF_F_MARK_MANGLED_0)),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => (l4 + 8, l4 + 2, 0),
        _ => return Err(()),
    };
    if span.0 >= ctx.len() as usize {
        return Err(());
    }
    Ok(span)
}

/// True for the copy [`duplicate`] made, seen again as it passes the same
/// hook; clears the marker so nothing downstream sees it.
#[inline(always)]
pub fn is_our_duplicate(ctx: &TcContext) -> bool {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    // SAFETY: the context is this packet's __sk_buff; cb is writable in tc
    // programs.
    unsafe {
        let cb = &mut (*skb).cb;
        if cb[DUP_CB_SLOTS.0] == DUP_MARKER.0 && cb[DUP_CB_SLOTS.1] == DUP_MARKER.1 {
            cb[DUP_CB_SLOTS.0] = 0;
            cb[DUP_CB_SLOTS.1] = 0;
            return true;
        }
    }
    false
}

/// Sends a copy of the packet out of (egress) or into (ingress) the same
/// interface with `bpf_clone_redirect`; the original continues as usual.
///
/// The copy passes this hook again (synchronously on egress, from the
/// backlog on ingress). The recursion guard is a marker in the control
/// block, set on the original just for the clone and restored right after:
/// the clone inherits it, the original leaves with its own bytes back.
#[inline(always)]
pub fn duplicate(ctx: &TcContext, ifindex: u32, direction: u32) -> Result<(), ()> {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    let flags = if direction == DIR_INGRESS {
        u64::from(BPF_F_INGRESS)
    } else {
        0
    };
    // SAFETY: as in `is_our_duplicate`.
    let saved = unsafe {
        let cb = &mut (*skb).cb;
        let saved = (cb[DUP_CB_SLOTS.0], cb[DUP_CB_SLOTS.1]);
        cb[DUP_CB_SLOTS.0] = DUP_MARKER.0;
        cb[DUP_CB_SLOTS.1] = DUP_MARKER.1;
        saved
    };
    let result = ctx.clone_redirect(ifindex, flags);
    // SAFETY: as above.
    unsafe {
        let cb = &mut (*skb).cb;
        cb[DUP_CB_SLOTS.0] = saved.0;
        cb[DUP_CB_SLOTS.1] = saved.1;
    }
    result.map_err(|_| ())
}
