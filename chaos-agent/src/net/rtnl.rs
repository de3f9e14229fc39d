//! Route netlink from the agent itself: the few qdisc, filter and link
//! requests that delay, bandwidth, the kernel probe and netlink clean-up
//! need. The agent is one static binary that must also work where there is
//! no `tc` or `ip` (a distroless container, a minimal host), so it spawns
//! neither.
//!
//! Requests are built with `netlink-packet-route`'s message types. Answers
//! are read with `netlink-packet-core`'s buffer types, and of a dumped
//! qdisc or filter only the header and `TCA_KIND` are decoded: a qdisc
//! dump covers every interface of the namespace, and one attribute the
//! crate cannot decode (a newer kernel's statistics, say) must not stop us
//! from finding ours.
//!
//! A netlink socket belongs to the network namespace its thread was in
//! when it was opened, so an [`Rtnl`] is opened where it is used (callers
//! are inside their `NetnsGuard`) and dropped before they leave.

use std::fmt;

use netlink_packet_core::{
    DefaultNla, ErrorBuffer, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    tc::{TcAttribute, TcHandle, TcHeader, TcMessage, TcOption},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// `TCA_KIND` (include/uapi/linux/rtnetlink.h): the qdisc's or filter's
/// kind, a NUL-terminated string.
const TCA_KIND: u16 = 1;
/// `NLMSGERR_ATTR_MSG` (include/uapi/linux/netlink.h): the extended ack's
/// message, the text iproute2 prints after "Error:".
const NLMSGERR_ATTR_MSG: u16 = 1;
/// `TCA_OPTIONS`: the qdisc's options.
const TCA_OPTIONS: u16 = 2;
/// `tc qdisc add ... netem`'s default queue limit, in packets.
const NETEM_LIMIT: u32 = 1000;

/// The options a qdisc kind refuses to be made without: netem's
/// `TCA_OPTIONS` starts with a `struct tc_netem_qopt` (latency, limit,
/// loss, gap, duplicate, jitter; six u32s), and netem_init fails with
/// EINVAL when there is none. `tc qdisc add ... netem` sends one with only
/// the limit set, which is what this gives. Other kinds need none.
fn default_options(kind: &str) -> Option<TcAttribute> {
    (kind == "netem").then(|| {
        let qopt: Vec<u8> = [0, NETEM_LIMIT, 0, 0, 0, 0]
            .iter()
            .flat_map(|v: &u32| v.to_ne_bytes())
            .collect();
        TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, qopt))
    })
}

/// The parent of a root qdisc (`TC_H_ROOT`).
pub const TC_H_ROOT: u32 = 0xffff_ffff;
/// The parent (and handle major) of a clsact or ingress qdisc.
pub const TC_H_CLSACT: u32 = 0xffff_fff1;
/// The parents of filters on clsact's ingress and egress hooks.
pub const TC_H_CLSACT_INGRESS: u32 = 0xffff_fff2;
pub const TC_H_CLSACT_EGRESS: u32 = 0xffff_fff3;

/// fq's attributes inside `TCA_OPTIONS` (include/uapi/linux/pkt_sched.h,
/// `enum { TCA_FQ_UNSPEC, TCA_FQ_PLIMIT, ... }`).
const TCA_FQ_PLIMIT: u16 = 1;
const TCA_FQ_FLOW_PLIMIT: u16 = 2;
const TCA_FQ_HORIZON: u16 = 14;

/// The options we give an fq qdisc (`tc qdisc ... fq limit L flow_limit F
/// horizon H`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FqOptions {
    /// Packets in all flows together.
    pub limit: u32,
    /// Packets per flow.
    pub flow_limit: u32,
    /// Packets whose departure time lies further ahead are dropped.
    pub horizon_us: u32,
}

impl FqOptions {
    /// netlink-packet-route types the options of fq_codel and ingress but
    /// not fq's, so each fq attribute is the crate's generic attribute
    /// (`TcOption::Other` holding a `DefaultNla`: type and raw value, a
    /// native-endian u32 for all three); the crate still frames them in
    /// `TCA_OPTIONS` and the message around it. Kernels before 5.7 have no
    /// horizon and ignore that attribute (fq parses unknown trailing
    /// attributes leniently); their fq has no horizon to drop by either.
    pub fn to_options(self) -> Vec<TcOption> {
        [
            (TCA_FQ_PLIMIT, self.limit),
            (TCA_FQ_FLOW_PLIMIT, self.flow_limit),
            (TCA_FQ_HORIZON, self.horizon_us),
        ]
        .into_iter()
        .map(|(kind, value)| TcOption::Other(DefaultNla::new(kind, value.to_ne_bytes().to_vec())))
        .collect()
    }
}

/// A failed request.
#[derive(Debug)]
pub enum RtnlError {
    /// The socket could not be opened, written or read.
    Io(std::io::Error),
    /// The kernel refused: its errno and, from Linux 4.12, its message.
    Kernel { errno: i32, message: Option<String> },
    /// An answer we could not read.
    Decode(String),
}

impl RtnlError {
    /// The kernel's errno, when it refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RtnlError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// Whether the kernel refused because it does not know the qdisc or
    /// link kind asked for: "Specified qdisc kind is unknown" is ENOENT,
    /// "Unknown device type" EOPNOTSUPP (both after trying to load the
    /// module).
    pub fn is_unknown_kind(&self) -> bool {
        matches!(self.errno(), Some(libc::ENOENT | libc::EOPNOTSUPP))
    }
}

impl fmt::Display for RtnlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RtnlError::Io(e) => write!(f, "netlink socket: {e}"),
            RtnlError::Kernel { errno, message } => {
                let os = std::io::Error::from_raw_os_error(*errno);
                match message {
                    Some(m) => write!(f, "{} ({os})", m.trim_end_matches('.')),
                    None => write!(f, "{os}"),
                }
            }
            RtnlError::Decode(e) => write!(f, "unreadable netlink answer: {e}"),
        }
    }
}

impl std::error::Error for RtnlError {}

pub type Result<T> = std::result::Result<T, RtnlError>;

/// One qdisc of an interface: what `tc qdisc show` prints of it that we
/// decide by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qdisc {
    pub kind: String,
    pub handle: u32,
    pub parent: u32,
}

impl Qdisc {
    pub fn is_root(&self) -> bool {
        self.parent == TC_H_ROOT
    }
}

/// A route netlink socket in the calling thread's network namespace.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(RtnlError::Io)?;
        socket.bind_auto().map_err(RtnlError::Io)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(RtnlError::Io)?;
        // The kernel's reason in words (4.12+), and errors that quote only
        // our request's header, not all of it. Older kernels say neither.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends `msg` with `flags` and collects the payloads of the answers
    /// (a dump's messages; nothing for an acknowledged change).
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(RtnlError::Io)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        // A dump ends with NLMSG_DONE, an acknowledged change with its
        // NLMSG_ERROR (errno 0 for success); either may take several reads.
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(RtnlError::Io)?;
            let mut at = 0;
            while at + 16 <= datagram.len() {
                let nl = NetlinkBuffer::new_checked(&datagram[at..])
                    .map_err(|e| RtnlError::Decode(e.to_string()))?;
                at += (nl.length() as usize + 3) & !3;
                if nl.sequence_number() != self.seq {
                    continue;
                }
                match nl.message_type() {
                    // A dump that failed half-way says so here.
                    NLMSG_DONE => {
                        return match kernel_error(nl.flags(), nl.payload())? {
                            None => Ok(out),
                            Some(e) => Err(e),
                        };
                    }
                    NLMSG_ERROR => match kernel_error(nl.flags(), nl.payload())? {
                        None if dump => {}
                        None => return Ok(out),
                        Some(e) => return Err(e),
                    },
                    _ => out.push(nl.payload().to_vec()),
                }
            }
        }
    }

    /// Sends a change and waits for the kernel's acknowledgement.
    fn change(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
        self.request(msg, flags | NLM_F_ACK).map(|_| ())
    }

    /// The qdiscs of every interface of the namespace, with their
    /// interfaces' indexes.
    pub fn all_qdiscs(&mut self) -> Result<Vec<(u32, Qdisc)>> {
        let msg = RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default());
        let mut out = Vec::new();
        for payload in self.request(msg, NLM_F_DUMP)? {
            let (header, kind) = tc_header_and_kind(&payload)?;
            let qdisc = Qdisc {
                kind,
                handle: header.handle.into(),
                parent: header.parent.into(),
            };
            out.push((header.index as u32, qdisc));
        }
        Ok(out)
    }

    /// The qdiscs of interface `ifindex`.
    pub fn qdiscs(&mut self, ifindex: u32) -> Result<Vec<Qdisc>> {
        // The kernel dumps every interface's qdiscs.
        Ok(self
            .all_qdiscs()?
            .into_iter()
            .filter(|(index, _)| *index == ifindex)
            .map(|(_, q)| q)
            .collect())
    }

    /// Whether any filter hangs off `parent` (e.g. [`TC_H_CLSACT_INGRESS`])
    /// of interface `ifindex`; none when there is no such qdisc.
    pub fn has_filters(&mut self, ifindex: u32, parent: u32) -> Result<bool> {
        let msg = RouteNetlinkMessage::GetTrafficFilter(tc_message(ifindex, parent, 0, vec![]));
        Ok(!self.request(msg, NLM_F_DUMP)?.is_empty())
    }

    /// `tc qdisc replace dev IF parent PARENT handle HANDLE KIND OPTIONS`.
    pub fn replace_qdisc(
        &mut self,
        ifindex: u32,
        parent: u32,
        handle: u32,
        kind: &str,
        options: Vec<TcOption>,
    ) -> Result<()> {
        let mut attributes = vec![TcAttribute::Kind(kind.to_owned())];
        if !options.is_empty() {
            attributes.push(TcAttribute::Options(options));
        }
        let msg = tc_message(ifindex, parent, handle, attributes);
        self.change(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// `tc qdisc add dev IF root KIND`: fails when there is one already.
    /// A qdisc that cannot be made without options gets the ones `tc`
    /// would send (see [`default_options`]).
    pub fn add_root_qdisc(&mut self, ifindex: u32, kind: &str) -> Result<()> {
        let mut attributes = vec![TcAttribute::Kind(kind.into())];
        attributes.extend(default_options(kind));
        let msg = tc_message(ifindex, TC_H_ROOT, 0, attributes);
        self.change(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// `tc qdisc del dev IF parent PARENT [KIND]`: with a kind, only a
    /// qdisc of that kind is deleted (the kernel checks).
    pub fn delete_qdisc(&mut self, ifindex: u32, parent: u32, kind: Option<&str>) -> Result<()> {
        let attributes = kind
            .map(|k| vec![TcAttribute::Kind(k.to_owned())])
            .unwrap_or_default();
        let msg = tc_message(ifindex, parent, 0, attributes);
        self.change(RouteNetlinkMessage::DelQueueDiscipline(msg), 0)
    }

    /// `ip link add name NAME type ifb`.
    pub fn add_ifb(&mut self, name: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(name.to_owned()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]),
        ];
        self.change(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// `ip link set dev IF up`.
    pub fn set_up(&mut self, ifindex: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.change(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// `ip link del dev IF`.
    pub fn delete_link(&mut self, ifindex: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        self.change(RouteNetlinkMessage::DelLink(msg), 0)
    }
}

fn tc_message(ifindex: u32, parent: u32, handle: u32, attributes: Vec<TcAttribute>) -> TcMessage {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = TcHandle::from(parent);
    msg.header.handle = TcHandle::from(handle);
    msg.attributes = attributes;
    msg
}

/// The header of a dumped qdisc or filter and its `TCA_KIND`.
fn tc_header_and_kind(payload: &[u8]) -> Result<(TcHeader, String)> {
    let header = TcHeader::parse(payload).map_err(|e| RtnlError::Decode(e.to_string()))?;
    // struct tcmsg is 20 bytes, attributes follow.
    let attributes = payload.get(20..).unwrap_or_default();
    let kind = NlasIterator::new(attributes)
        .flatten()
        .find(|nla| nla.kind() == TCA_KIND)
        .map(|nla| c_string(nla.value()))
        .unwrap_or_default();
    Ok((header, kind))
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The kernel's answer in an `NLMSG_ERROR`: None for an acknowledgement.
/// After the errno comes our request (its header alone when capped), then,
/// with `NLM_F_ACK_TLVS`, the extended ack's attributes.
fn kernel_error(flags: u16, payload: &[u8]) -> Result<Option<RtnlError>> {
    let err = ErrorBuffer::new_checked(payload).map_err(|e| RtnlError::Decode(e.to_string()))?;
    let Some(code) = err.code() else {
        return Ok(None);
    };
    let quoted = err.payload();
    let mut message = None;
    if flags & NLM_F_ACK_TLVS != 0 && quoted.len() >= 16 {
        // The quoted request: its 16-byte header when capped, else all of
        // it (its length is the header's first field).
        let skip = if flags & NLM_F_CAPPED != 0 {
            16
        } else {
            let len = u32::from_ne_bytes([quoted[0], quoted[1], quoted[2], quoted[3]]);
            (len as usize + 3) & !3
        };
        message = NlasIterator::new(quoted.get(skip..).unwrap_or_default())
            .flatten()
            .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
            .map(|nla| c_string(nla.value()))
            .filter(|m| !m.is_empty());
    }
    Ok(Some(RtnlError::Kernel {
        errno: -code.get(),
        message,
    }))
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::Emitable;

    use super::*;

    /// The attributes of a serialised tc message (after its 20-byte
    /// header) as (type, value).
    fn attributes(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
        NlasIterator::new(bytes)
            .flatten()
            .map(|nla| (nla.kind(), nla.value().to_vec()))
            .collect()
    }

    #[test]
    fn fq_options_are_framed_as_the_kernel_reads_them() {
        let options = FqOptions {
            limit: 100_000,
            flow_limit: 10_000,
            horizon_us: 10_000_000,
        };
        let mut msg = tc_message(
            7,
            TC_H_ROOT,
            0xca05_0000,
            vec![TcAttribute::Kind("fq".into())],
        );
        msg.attributes
            .push(TcAttribute::Options(options.to_options()));
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);

        let header = TcHeader::parse(&buf[..]).unwrap();
        assert_eq!(header.index, 7);
        assert_eq!(u32::from(header.parent), TC_H_ROOT);
        assert_eq!(u32::from(header.handle), 0xca05_0000);
        let top = attributes(&buf[20..]);
        assert_eq!(top[0], (TCA_KIND, b"fq\0".to_vec()));
        // TCA_OPTIONS is 2; the kernel accepts it with or without
        // NLA_F_NESTED.
        assert_eq!(top[1].0 & 0x3fff, 2);
        let fq = attributes(&top[1].1);
        assert_eq!(
            fq,
            vec![
                (1, 100_000u32.to_ne_bytes().to_vec()),
                (2, 10_000u32.to_ne_bytes().to_vec()),
                (14, 10_000_000u32.to_ne_bytes().to_vec()),
            ]
        );
    }

    #[test]
    fn netem_is_asked_for_with_the_options_tc_sends() {
        let msg = tc_message(1, TC_H_ROOT, 0, {
            let mut a = vec![TcAttribute::Kind("netem".into())];
            a.extend(default_options("netem"));
            a
        });
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        let top = attributes(&buf[20..]);
        assert_eq!(top[0], (TCA_KIND, b"netem\0".to_vec()));
        assert_eq!(top[1].0, TCA_OPTIONS);
        let mut qopt = vec![0u8; 24];
        qopt[4..8].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(top[1].1, qopt);
        assert!(default_options("fq").is_none());
    }

    #[test]
    fn a_dumped_qdisc_gives_its_header_and_kind() {
        let msg = tc_message(
            3,
            TC_H_CLSACT,
            0xffff_0000,
            vec![
                TcAttribute::Kind("clsact".into()),
                TcAttribute::Options(vec![TcOption::Other(DefaultNla::new(99, vec![1, 2, 3, 4]))]),
            ],
        );
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        let (header, kind) = tc_header_and_kind(&buf).unwrap();
        assert_eq!(kind, "clsact");
        assert_eq!(header.index, 3);
        assert_eq!(u32::from(header.parent), TC_H_CLSACT);
    }

    #[test]
    fn unknown_kinds_are_told_from_other_refusals() {
        let kernel = |errno| RtnlError::Kernel {
            errno,
            message: Some("Specified qdisc kind is unknown.".into()),
        };
        assert!(kernel(libc::ENOENT).is_unknown_kind());
        assert!(kernel(libc::EOPNOTSUPP).is_unknown_kind());
        assert!(!kernel(libc::EPERM).is_unknown_kind());
        assert!(!RtnlError::Io(std::io::Error::from_raw_os_error(libc::ENOENT)).is_unknown_kind());
        let text = kernel(libc::ENOENT).to_string();
        assert!(
            text.starts_with("Specified qdisc kind is unknown ("),
            "{text}"
        );
    }
}
