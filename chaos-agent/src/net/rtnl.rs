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
    ErrorBuffer, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NlasIterator,
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
/// The parent of a root qdisc (`TC_H_ROOT`).
pub const TC_H_ROOT: u32 = 0xffff_ffff;
/// The parent (and handle major) of a clsact or ingress qdisc.
pub const TC_H_CLSACT: u32 = 0xffff_fff1;
/// The parents of filters on clsact's ingress and egress hooks.
pub const TC_H_CLSACT_INGRESS: u32 = 0xffff_fff2;
pub const TC_H_CLSACT_EGRESS: u32 = 0xffff_fff3;

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
}

impl fmt::Display for RtnlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RtnlError::Io(e) => write!(f, "netlink socket: {e}"),
            RtnlError::Kernel { errno, message } => {
                let os = std::io::Error::from_raw_os_error(*errno);
                match message {
                    Some(m) => write!(f, "{m} ({os})"),
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

    /// The qdiscs of interface `ifindex`.
    pub fn qdiscs(&mut self, ifindex: u32) -> Result<Vec<Qdisc>> {
        let msg = RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default());
        let mut out = Vec::new();
        for payload in self.request(msg, NLM_F_DUMP)? {
            let (header, kind) = tc_header_and_kind(&payload)?;
            // The kernel dumps every interface's qdiscs.
            if header.index as u32 == ifindex {
                out.push(Qdisc {
                    kind,
                    handle: header.handle.into(),
                    parent: header.parent.into(),
                });
            }
        }
        Ok(out)
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
    pub fn add_root_qdisc(&mut self, ifindex: u32, kind: &str) -> Result<()> {
        let msg = tc_message(ifindex, TC_H_ROOT, 0, vec![TcAttribute::Kind(kind.into())]);
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
        self.change(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
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
