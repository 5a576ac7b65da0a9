//! Links, bridges, addresses and routes over rtnetlink, synchronously: one request, then its
//! answers read until the kernel's acknowledgement or the end of a dump.
//!
//! A [`Netlink`] handle belongs to the network namespace of the thread that opened it.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage, State,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// What a link dump says about one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    /// The driver kind for virtual links (`bridge`, `veth`, `tun`, ...); `None` for hardware.
    pub kind: Option<String>,
    /// The bridge this link is a port of.
    pub master: Option<u32>,
    pub up: bool,
    pub carrier: bool,
    /// The kernel sees the link operationally up (`IFLA_OPERSTATE` up, or unknown for a
    /// driver that does not say): what a bridge waits for before it enables a port. It follows
    /// carrier through the kernel's link watch, up to a second later.
    pub oper_up: bool,
    pub ether: bool,
    pub loopback: bool,
}

/// A failed rtnetlink request: what was asked and what the kernel said.
#[derive(Debug)]
pub struct NetlinkError {
    pub what: String,
    pub error: io::Error,
}

impl fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "netlink: cannot {}: {}", self.what, self.error)
    }
}

impl std::error::Error for NetlinkError {}

type Result<T> = std::result::Result<T, NetlinkError>;

pub struct Netlink {
    socket: Socket,
    sequence: u32,
}

/// rtnetlink's multicast group of link changes (`RTMGRP_LINK`): a link's carrier, state or
/// name changed, or a link appeared.
const RTMGRP_LINK: u32 = 1;

/// The kernel's announcements of link changes, from the moment this is opened: a wait for
/// carrier sleeps here and looks at the link again when the kernel says a link changed.
pub struct LinkEvents {
    socket: Socket,
}

impl LinkEvents {
    pub fn open() -> Result<LinkEvents> {
        let fail = |error| NetlinkError {
            what: "listen for link changes".into(),
            error,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(fail)?;
        socket
            .bind(&SocketAddr::new(0, RTMGRP_LINK))
            .map_err(fail)?;
        Ok(LinkEvents { socket })
    }

    /// Waits until the kernel announces a link change or `timeout` passes; whether it did.
    /// Every announcement queued is read: the caller looks at the links itself. A socket
    /// error (a full receive buffer drops announcements) counts as a change.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        use std::os::fd::{AsFd, AsRawFd};
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(
            self.socket.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(millis)) {
            Ok(0) => return false,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return true,
        }
        let mut buffer = vec![0u8; 8192];
        while nix::sys::socket::recv(
            self.socket.as_raw_fd(),
            &mut buffer,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        )
        .is_ok()
        {}
        true
    }
}

impl Netlink {
    pub fn open() -> Result<Netlink> {
        let fail = |error| NetlinkError {
            what: "open a route socket".into(),
            error,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(fail)?;
        socket.bind_auto().map_err(fail)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(fail)?;
        Ok(Netlink {
            socket,
            sequence: 0,
        })
    }

    /// Sends one request and gathers the messages of its answer.
    fn request(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let fail = |error| NetlinkError {
            what: what.to_owned(),
            error,
        };
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buffer = vec![0; packet.buffer_len()];
        packet.serialize(&mut buffer);
        self.socket.send(&buffer, 0).map_err(fail)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(fail)?;
            let mut offset = 0;
            while offset < datagram.len() {
                let bytes = &datagram[offset..];
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|error| fail(io::Error::new(io::ErrorKind::InvalidData, error)))?;
                let length = parsed.header.length as usize;
                if length == 0 {
                    break;
                }
                offset += (length + 3) & !3;
                if parsed.header.sequence_number != self.sequence {
                    continue;
                }
                match parsed.payload {
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None if !dump => Ok(answers),
                            None => continue,
                            Some(_) => Err(fail(error.to_io())),
                        };
                    }
                    _ => {}
                }
            }
        }
    }

    pub fn links(&mut self) -> Result<Vec<Link>> {
        let answers = self.request(
            "list links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewLink(message) => Some(link_of(&message)),
                _ => None,
            })
            .collect())
    }

    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|link| link.name == name))
    }

    fn set_link(
        &mut self,
        what: &str,
        index: u32,
        change: impl FnOnce(&mut LinkMessage),
    ) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        change(&mut message);
        self.request(what, RouteNetlinkMessage::SetLink(message), NLM_F_ACK)?;
        Ok(())
    }

    pub fn set_up(&mut self, link: &Link) -> Result<()> {
        self.set_link(&format!("bring {} up", link.name), link.index, |message| {
            message.header.flags = LinkFlags::Up;
            message.header.change_mask = LinkFlags::Up;
        })
    }

    pub fn set_mac(&mut self, link: &Link, mac: [u8; 6]) -> Result<()> {
        self.set_link(
            &format!("set the MAC address of {} to {}", link.name, mac_text(mac)),
            link.index,
            |message| {
                message
                    .attributes
                    .push(LinkAttribute::Address(mac.to_vec()))
            },
        )
    }

    pub fn set_master(&mut self, port: &Link, bridge: &Link) -> Result<()> {
        self.set_link(
            &format!("add {} to bridge {}", port.name, bridge.name),
            port.index,
            |message| {
                message
                    .attributes
                    .push(LinkAttribute::Controller(bridge.index))
            },
        )
    }

    /// Makes a bridge, or finds the one of that name that is already there.
    pub fn bridge(&mut self, name: &str) -> Result<Link> {
        if let Some(link) = self.link(name)? {
            return Ok(link);
        }
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        message
            .attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        let what = format!("create bridge {name}");
        self.request(
            &what,
            RouteNetlinkMessage::NewLink(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        self.link(name)?.ok_or_else(|| NetlinkError {
            what,
            error: io::Error::new(io::ErrorKind::NotFound, "the new bridge is not listed"),
        })
    }

    fn address_message(link: &Link, address: Ipv4Addr, prefix: u8) -> AddressMessage {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = prefix;
        message.header.index = link.index;
        message
            .attributes
            .push(AddressAttribute::Local(address.into()));
        message
            .attributes
            .push(AddressAttribute::Address(address.into()));
        message
    }

    pub fn add_address(&mut self, link: &Link, address: Ipv4Addr, prefix: u8) -> Result<()> {
        let mut message = Self::address_message(link, address, prefix);
        let broadcast = u32::from(address) | !prefix_mask(prefix);
        message
            .attributes
            .push(AddressAttribute::Broadcast(Ipv4Addr::from(broadcast)));
        self.request(
            &format!("add address {address}/{prefix} to {}", link.name),
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    pub fn delete_address(&mut self, link: &Link, address: Ipv4Addr, prefix: u8) -> Result<()> {
        let message = Self::address_message(link, address, prefix);
        self.request(
            &format!("remove address {address}/{prefix} from {}", link.name),
            RouteNetlinkMessage::DelAddress(message),
            NLM_F_ACK,
        )?;
        Ok(())
    }

    /// The IPv4 addresses of a link, with their prefix lengths.
    pub fn addresses(&mut self, link: &Link) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut query = AddressMessage::default();
        query.header.family = AddressFamily::Inet;
        let answers = self.request(
            "list addresses",
            RouteNetlinkMessage::GetAddress(query),
            NLM_F_DUMP,
        )?;
        let mut found = Vec::new();
        for answer in answers {
            if let RouteNetlinkMessage::NewAddress(message) = answer {
                if message.header.index != link.index {
                    continue;
                }
                for attribute in &message.attributes {
                    if let AddressAttribute::Local(std::net::IpAddr::V4(address)) = attribute {
                        found.push((*address, message.header.prefix_len));
                    }
                }
            }
        }
        Ok(found)
    }

    fn default_route(link: &Link, gateway: Ipv4Addr) -> RouteMessage {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Dhcp;
        message.header.scope = RouteScope::Universe;
        message.header.kind = RouteType::Unicast;
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        message.attributes.push(RouteAttribute::Oif(link.index));
        message
    }

    pub fn replace_default_route(&mut self, link: &Link, gateway: Ipv4Addr) -> Result<()> {
        self.request(
            &format!("add the default route via {gateway} on {}", link.name),
            RouteNetlinkMessage::NewRoute(Self::default_route(link, gateway)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    pub fn delete_default_route(&mut self, link: &Link, gateway: Ipv4Addr) -> Result<()> {
        self.request(
            &format!("remove the default route via {gateway} on {}", link.name),
            RouteNetlinkMessage::DelRoute(Self::default_route(link, gateway)),
            NLM_F_ACK,
        )?;
        Ok(())
    }
}

fn link_of(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: None,
        kind: None,
        master: None,
        up: message.header.flags.contains(LinkFlags::Up),
        carrier: message.header.flags.contains(LinkFlags::LowerUp),
        oper_up: false,
        ether: message.header.link_layer_type == LinkLayerType::Ether,
        loopback: message.header.flags.contains(LinkFlags::Loopback)
            || message.header.link_layer_type == LinkLayerType::Loopback,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Address(bytes) => link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            LinkAttribute::Controller(index) => link.master = Some(*index),
            LinkAttribute::Carrier(carrier) => link.carrier = link.up && *carrier != 0,
            LinkAttribute::OperState(state) => {
                link.oper_up = matches!(state, State::Up | State::Unknown)
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn prefix_mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        1..=31 => u32::MAX << (32 - u32::from(prefix)),
        _ => u32::MAX,
    }
}

/// `52:54:00:12:34:56`.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
